//! Component health: each component builds its own check beside itself (vector's
//! `SinkConfig::build → (sink, healthcheck)`), and [`Health`] runs the checks when someone
//! asks — `/v1.0/healthz/outbound`, the status page, a `/metrics` scrape — so no timer wakes an
//! idle gateway for them.
//!
//! A result is reused for [`MAX_AGE`], so a status page refreshing every two seconds and
//! Prometheus scraping at once cause one round of checks; callers arriving while a round runs
//! wait for it instead of starting another. Each check gets [`CHECK_TIMEOUT`]: a Redis whose
//! host stopped answering shows as unhealthy after that long, not never.
//!
//! What a check proves is named by [`HealthCheck::what`] and shown beside the result, since a
//! component with nothing outside the process that can fail (in-memory stores, cron) is healthy
//! by construction, not because something was probed.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::task::JoinSet;

use crate::clock::unix_ms;
use crate::storage::Storage;

/// How long a check's result stands before the next reader runs it again.
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// How long one check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// One component's health check.
#[async_trait]
pub trait HealthCheck: Send + Sync {
    /// What the check looks at, for the status page (`"PING"`, `"broker connection"`, ...).
    fn what(&self) -> &'static str;

    /// `Err` says what is wrong, in words an operator can act on.
    async fn check(&self) -> Result<(), String>;
}

/// The embedded database's disk, for the sled components: unhealthy while writes are refused
/// because the disk is (nearly) full.
pub struct Disk(pub Storage);

#[async_trait]
impl HealthCheck for Disk {
    fn what(&self) -> &'static str {
        "free disk space"
    }

    async fn check(&self) -> Result<(), String> {
        self.0.writable().map_err(|e| e.to_string())
    }
}

/// A file the component reads (secret files, configuration files) is still there and readable.
pub struct File(pub std::path::PathBuf);

#[async_trait]
impl HealthCheck for File {
    fn what(&self) -> &'static str {
        "file readable"
    }

    async fn check(&self) -> Result<(), String> {
        tokio::fs::File::open(&self.0)
            .await
            .map(drop)
            .map_err(|e| format!("{}: {e}", self.0.display()))
    }
}

/// A component's health as last checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentHealth {
    /// `metadata.name`.
    pub name: String,
    /// `spec.type`.
    pub type_name: String,
    /// What is checked (`None`: nothing outside the process can fail).
    pub check: Option<&'static str>,
    /// Whether the last check passed (true before the first check, and for components with
    /// nothing to check).
    pub healthy: bool,
    /// What the last failed check said.
    pub error: Option<String>,
    /// Since when (Unix ms) the component has been as it is now: loaded, or its last change
    /// between healthy and unhealthy.
    pub since_ms: u64,
    /// When (Unix ms) it was last checked; `None` if never.
    pub checked_ms: Option<u64>,
}

struct Entry {
    check: Option<Arc<dyn HealthCheck>>,
    /// The result, and when (monotonic) it was taken.
    state: Mutex<(ComponentHealth, Option<Instant>)>,
}

/// Every loaded component's health check and last result.
#[derive(Default)]
pub struct Health {
    entries: Vec<Arc<Entry>>,
    /// Held while a round of checks runs, so concurrent readers share one round.
    round: tokio::sync::Mutex<()>,
}

impl Health {
    /// Adds a loaded component and its check (`None`: nothing to check).
    pub fn add(&mut self, name: &str, type_name: &str, check: Option<Arc<dyn HealthCheck>>) {
        let h = ComponentHealth {
            name: name.to_owned(),
            type_name: type_name.to_owned(),
            check: check.as_ref().map(|c| c.what()),
            healthy: true,
            error: None,
            since_ms: unix_ms(),
            checked_ms: None,
        };
        self.entries.push(Arc::new(Entry {
            check,
            state: Mutex::new((h, None)),
        }));
    }

    /// Every component's health, checking again those whose result is older than [`MAX_AGE`].
    pub async fn report(&self) -> Vec<ComponentHealth> {
        let _round = self.round.lock().await;
        let mut checks = JoinSet::new();
        for entry in &self.entries {
            let Some(check) = entry.check.clone() else {
                continue;
            };
            let fresh = lock(&entry.state)
                .1
                .is_some_and(|at| at.elapsed() < MAX_AGE);
            if fresh {
                continue;
            }
            let entry = entry.clone();
            checks.spawn(async move {
                let result = match tokio::time::timeout(CHECK_TIMEOUT, check.check()).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
                };
                record(&entry, result);
            });
        }
        while checks.join_next().await.is_some() {}
        self.last()
    }

    /// Every component's health as last checked, without checking.
    pub fn last(&self) -> Vec<ComponentHealth> {
        self.entries
            .iter()
            .map(|e| lock(&e.state).0.clone())
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn record(entry: &Entry, result: Result<(), String>) {
    let now = unix_ms();
    let mut state = lock(&entry.state);
    let (h, at) = &mut *state;
    let healthy = result.is_ok();
    if healthy != h.healthy {
        h.since_ms = now;
        if healthy {
            tracing::info!(component = %h.name, r#type = %h.type_name, "component healthy again");
        } else if let Err(e) = &result {
            tracing::warn!(component = %h.name, r#type = %h.type_name, error = %e, "component unhealthy");
        }
    }
    h.healthy = healthy;
    h.error = result.err();
    h.checked_ms = Some(now);
    *at = Some(Instant::now());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    struct Flaky {
        up: AtomicBool,
        runs: AtomicUsize,
        slow: bool,
    }

    #[async_trait]
    impl HealthCheck for Flaky {
        fn what(&self) -> &'static str {
            "flaky"
        }
        async fn check(&self) -> Result<(), String> {
            self.runs.fetch_add(1, Ordering::SeqCst);
            if self.slow {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            if self.up.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("connection refused".into())
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn results_are_reused_for_a_while_then_checked_again() {
        let flaky = Arc::new(Flaky {
            up: AtomicBool::new(true),
            runs: AtomicUsize::new(0),
            slow: false,
        });
        let mut h = Health::default();
        h.add("store", "state.redis", Some(flaky.clone()));
        h.add("mem", "state.in-memory", None);
        let r = h.report().await;
        assert!(r.iter().all(|c| c.healthy));
        assert_eq!(r[0].check, Some("flaky"));
        assert_eq!(r[1].check, None);
        assert_eq!(r[1].checked_ms, None, "nothing to check");
        flaky.up.store(false, Ordering::SeqCst);
        let r = h.report().await;
        assert!(r[0].healthy, "reused within MAX_AGE");
        assert_eq!(flaky.runs.load(Ordering::SeqCst), 1);
        // std's Instant does not follow paused time: wait out MAX_AGE for real.
        std::thread::sleep(MAX_AGE);
        let r = h.report().await;
        assert!(!r[0].healthy);
        assert_eq!(r[0].error.as_deref(), Some("connection refused"));
        flaky.up.store(true, Ordering::SeqCst);
        std::thread::sleep(MAX_AGE);
        let r = h.report().await;
        assert!(r[0].healthy && r[0].error.is_none());
        assert_eq!(flaky.runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_that_hangs_fails_after_the_timeout() {
        let mut h = Health::default();
        h.add(
            "store",
            "state.redis",
            Some(Arc::new(Flaky {
                up: AtomicBool::new(true),
                runs: AtomicUsize::new(0),
                slow: true,
            })),
        );
        let r = h.report().await;
        assert!(!r[0].healthy);
        assert!(
            r[0].error.as_deref().unwrap().contains("no answer"),
            "{r:?}"
        );
    }
}
