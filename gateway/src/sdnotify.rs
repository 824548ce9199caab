//! systemd's notification protocol (`Type=notify`): `READY=1` once the gateway serves,
//! `WATCHDOG=1` while its async runtime keeps running, `STOPPING=1` when it drains.
//!
//! Datagrams to `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace), as
//! `sd_notify(3)` sends them; without the variable (not under systemd) every call does nothing.
//! Hand-written because it is one `sendto` and a crate would add more than that.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tracing::debug;

/// Sends `state` (e.g. `READY=1`) to the service manager, if there is one.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|sock| {
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)
        } else {
            sock.send_to(state.as_bytes(), &path)
        }
    });
    if let Err(e) = sent {
        debug!(error = %e, state, "could not notify the service manager");
    }
}

/// How often systemd wants `WATCHDOG=1` (half its `WatchdogSec=`), if it watches this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        && pid != std::process::id()
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Pings the watchdog every `every` for as long as the runtime runs this task.
pub async fn watchdog(every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        notify("WATCHDOG=1");
    }
}
