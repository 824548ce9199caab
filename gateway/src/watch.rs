//! Noticing edited files: polling with a quiet period.
//!
//! Polling (rather than inotify) behaves the same on SD cards, bind mounts and network file
//! systems. A change is acted on only once the file's stamp has held for one more poll, so a file
//! caught half-written by an editor or another tool is never read. The capability manifests and
//! the device registry are reloaded this way.

use std::future::Future;
use std::time::Duration;

/// Polls `stamp` every `every` and runs `changed` once a new stamp has held for one more poll.
/// `seen` is the stamp of what is loaded now. Runs until its task is aborted.
pub async fn on_quiet_change<S, St, C, Fut>(every: Duration, mut seen: S, stamp: St, mut changed: C)
where
    S: PartialEq + Send + 'static,
    St: Fn() -> S + Clone + Send + 'static,
    C: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut pending: Option<S> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let st = stamp.clone();
        let Ok(now) = tokio::task::spawn_blocking(st).await else {
            continue;
        };
        if now == seen {
            pending = None;
            continue;
        }
        if pending.as_ref() != Some(&now) {
            pending = Some(now);
            continue;
        }
        seen = now;
        pending = None;
        changed().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn acts_once_per_change_after_a_quiet_poll() {
        let stamp = Arc::new(AtomicU32::new(0));
        let calls = Arc::new(AtomicU32::new(0));
        let (s, c) = (stamp.clone(), calls.clone());
        let task = tokio::spawn(on_quiet_change(
            Duration::from_secs(1),
            0,
            move || s.load(Ordering::SeqCst),
            move || {
                c.fetch_add(1, Ordering::SeqCst);
                async {}
            },
        ));
        let step = || tokio::time::sleep(Duration::from_millis(1001));
        step().await;
        stamp.store(1, Ordering::SeqCst); // an edit...
        step().await;
        stamp.store(2, Ordering::SeqCst); // ...still being written
        step().await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "not while it keeps changing"
        );
        step().await;
        step().await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "once, after a quiet poll");
        step().await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "and not again without a change"
        );
        task.abort();
    }
}
