//! Observability: logging set-up, and (in its modules) what the operator reads.
//!
//! - [`metrics`]: call counters and latency histograms recorded once on the request path, the
//!   gauges read when scraped, the OpenMetrics text.
//! - [`admin`]: the admin listener (`--metrics-port`): `/metrics`, the status page and its data.
//! - [`traces`]: a span per call, W3C trace context carried on, OTLP/HTTP export (off by default).
//!
//! Logs go to stderr through `tracing`, structured fields first. Under systemd (`JOURNAL_STREAM`
//! set) timestamps are left to journald and colours are off, so `journalctl -u edgecar` reads
//! cleanly. `RUST_LOG` overrides the configured level.

pub mod admin;
pub mod metrics;
pub mod traces;

use tracing_subscriber::EnvFilter;

/// Installs the global logger. Safe to call once; later calls are ignored.
pub fn init_logging(level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let ansi = !journald && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = if journald {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
}
