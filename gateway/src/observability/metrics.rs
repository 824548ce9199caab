//! `/metrics`: what the gateway counts, in the Prometheus project's own client
//! (`prometheus-client`, OpenMetrics text).
//!
//! Calls are counted once, in [`crate::runtime::Runtime::handle`], where every call passes
//! whatever transport brought it; HTTP requests additionally feed Dapr's own HTTP server metrics
//! so Dapr dashboards work. Gauges (devices, outboxes, capabilities, the process) are read when
//! scraped, from the blocks that own the figures, into a registry built for that scrape.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `edgecar_calls_total` | counter | `transport` (`http`, `grpc`, `mqtt`, `quic`, `internal`), `op` (`state.get`, ...), `outcome` (`ok` or the Dapr error code) |
//! | `edgecar_call_duration_seconds` | histogram | `transport`, `op` |
//! | `dapr_http_server_request_count_total` | counter | `app_id`, `method`, `status` (Dapr's name; OpenMetrics adds `_total`) |
//! | `dapr_http_server_latency` | histogram, milliseconds | `app_id`, `method`, `status` (Dapr's name and unit) |
//! | `edgecar_devices_registered`, `edgecar_devices_connected` | gauge | |
//! | `edgecar_outbox_messages` | gauge | messages waiting in device outboxes (mailbox commands and events) |
//! | `edgecar_outbox_oldest_age_seconds` | gauge | how long the oldest message in any open device outbox has waited (absent when none waits) |
//! | `edgecar_queue_messages` | gauge | `pubsub`, `topic`: messages waiting in a `pubsub.sled` queue |
//! | `edgecar_queue_oldest_age_seconds` | gauge | `pubsub`, `topic`: how long that queue's oldest message has waited (0 when empty) |
//! | `edgecar_component_healthy` | gauge | `component`, `type`: 1 while the component's health check passes, else 0 |
//! | `edgecar_capability_*` | counter/gauge | see [`capability_metrics`] |
//! | `process_*` | counter/gauge | CPU seconds, resident and virtual memory, open and max fds, start time (Linux `/proc`) |

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::call::{Reply, Transport};
use crate::error::Error;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of the per-call metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    transport: &'static str,
    op: &'static str,
    outcome: &'static str,
}

/// Labels of the latency histogram (the outcome would multiply its buckets for little).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    transport: &'static str,
    op: &'static str,
}

/// Labels of Dapr's HTTP server metrics (its low-cardinality set: no path).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DaprHttpLabels {
    app_id: String,
    method: String,
    status: String,
}

fn call_buckets() -> Histogram {
    // 0.25 ms .. ~8 s, doubling: state reads on sled sit in the first buckets, invocations and
    // capability calls to the cloud in the last.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.000_25, 2.0, 16,
    ))
}

fn dapr_buckets() -> Histogram {
    // Milliseconds, a subset of Dapr's default latency distribution.
    Histogram::new([
        1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
    ])
}

/// The counters and histograms calls feed. Cheap to share: every family is reference-counted.
pub struct CallMetrics {
    /// Whether anything is recorded (`--enable-metrics=false` turns recording off with the
    /// admin listener).
    enabled: bool,
    /// The app id, Dapr's `app_id` label.
    app_id: String,
    calls: Family<CallLabels, Counter>,
    durations: Family<OpLabels, Histogram, fn() -> Histogram>,
    dapr_requests: Family<DaprHttpLabels, Counter>,
    dapr_latency: Family<DaprHttpLabels, Histogram, fn() -> Histogram>,
    /// Every call and every failed call, for the status page (families cannot be summed).
    total: AtomicU64,
    failed: AtomicU64,
}

impl CallMetrics {
    /// Empty metrics for the gateway whose app id is `app_id`; `enabled: false` records nothing.
    pub fn new(app_id: &str, enabled: bool) -> Self {
        CallMetrics {
            enabled,
            app_id: app_id.to_owned(),
            calls: Family::default(),
            durations: Family::new_with_constructor(call_buckets),
            dapr_requests: Family::default(),
            dapr_latency: Family::new_with_constructor(dapr_buckets),
            total: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// Calls counted so far, and how many of them failed.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.total.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// Counts one call of `op` that came by `transport` and took `took`.
    pub fn record(
        &self,
        transport: Transport,
        op: &'static str,
        result: &Result<Reply, Error>,
        took: Duration,
    ) {
        if !self.enabled {
            return;
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                e.code
            }
        };
        let transport = transport.as_str();
        self.calls
            .get_or_create(&CallLabels {
                transport,
                op,
                outcome,
            })
            .inc();
        self.durations
            .get_or_create(&OpLabels { transport, op })
            .observe(took.as_secs_f64());
    }

    /// Counts one HTTP request as Dapr's HTTP server does.
    pub fn http_served(&self, method: &str, status: u16, took: Duration) {
        if !self.enabled {
            return;
        }
        let labels = DaprHttpLabels {
            app_id: self.app_id.clone(),
            method: method.to_owned(),
            status: status.to_string(),
        };
        self.dapr_latency
            .get_or_create(&labels)
            .observe(took.as_secs_f64() * 1000.0);
        self.dapr_requests.get_or_create(&labels).inc();
    }

    /// Registers the call metrics in `registry` (the families are shared, not copied).
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "edgecar_calls",
            "Calls on the request path, by transport, operation and outcome (ok or the error code)",
            self.calls.clone(),
        );
        registry.register(
            "edgecar_call_duration_seconds",
            "Time from authorization to reply, by transport and operation",
            self.durations.clone(),
        );
        registry.register(
            "dapr_http_server_request_count",
            "HTTP requests served (Dapr's metric)",
            self.dapr_requests.clone(),
        );
        registry.register(
            "dapr_http_server_latency",
            "HTTP request latency in milliseconds (Dapr's metric)",
            self.dapr_latency.clone(),
        );
    }
}

/// Figures read when scraped.
pub struct Snapshot {
    /// When they were read (Unix ms), for ages.
    pub now_ms: u64,
    /// Devices in the registry.
    pub devices_registered: usize,
    /// Devices with an open connection.
    pub devices_connected: usize,
    /// Messages waiting in device outboxes.
    pub outbox_messages: u64,
    /// When the oldest of them was appended (Unix ms), if any waits and its time is known.
    pub outbox_oldest_appended_ms: Option<u64>,
    /// The capability engine's status.
    pub capabilities: edgecar_capabilities::EngineStatus,
    /// This process's pub/sub queues.
    pub queues: Vec<crate::blocks::pubsub::TopicQueue>,
    /// Every component's health.
    pub components: Vec<crate::components::health::ComponentHealth>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentLabels {
    component: String,
    r#type: String,
}

/// A gauge of seconds (fractional).
type Seconds = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    pubsub: String,
    topic: String,
}

fn gauge(registry: &mut Registry, name: &str, help: &str, v: i64) {
    let g: Gauge = Gauge::default();
    g.set(v);
    registry.register(name, help, g);
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The whole exposition: call metrics, `snap`'s gauges, the process.
pub fn encode(calls: &CallMetrics, snap: &Snapshot) -> String {
    let mut registry = Registry::default();
    calls.register(&mut registry);
    gauge(
        &mut registry,
        "edgecar_devices_registered",
        "Devices in the registry",
        count(snap.devices_registered),
    );
    gauge(
        &mut registry,
        "edgecar_devices_connected",
        "Devices with at least one open connection",
        count(snap.devices_connected),
    );
    gauge(
        &mut registry,
        "edgecar_outbox_messages",
        "Messages waiting in device outboxes (mailbox commands and subscribed events)",
        i64::try_from(snap.outbox_messages).unwrap_or(i64::MAX),
    );
    if let Some(at) = snap.outbox_oldest_appended_ms {
        let age = Seconds::default();
        age.set(snap.now_ms.saturating_sub(at) as f64 / 1000.0);
        registry.register(
            "edgecar_outbox_oldest_age_seconds",
            "How long the oldest message in any open device outbox has waited",
            age,
        );
    }
    let queues = Family::<QueueLabels, Gauge>::default();
    let ages = Family::<QueueLabels, Seconds>::default();
    for q in &snap.queues {
        let labels = QueueLabels {
            pubsub: q.pubsub.clone(),
            topic: q.topic.clone(),
        };
        queues
            .get_or_create(&labels)
            .set(i64::try_from(q.stats.messages).unwrap_or(i64::MAX));
        // An empty queue's oldest message has waited 0 s; one whose oldest message has no
        // recorded time (written by an older edgecar) gets no sample.
        let age = match q.stats.oldest_age_seconds(snap.now_ms) {
            Some(a) => Some(a),
            None if q.stats.messages == 0 => Some(0.0),
            None => None,
        };
        if let Some(a) = age {
            ages.get_or_create(&labels).set(a);
        }
    }
    registry.register(
        "edgecar_queue_messages",
        "Messages waiting in a durable pub/sub queue (pubsub.sled), by pub/sub and topic",
        queues,
    );
    registry.register(
        "edgecar_queue_oldest_age_seconds",
        "How long the oldest message in a durable pub/sub queue (pubsub.sled) has waited, by pub/sub and topic",
        ages,
    );
    let healthy = Family::<ComponentLabels, Gauge>::default();
    for c in &snap.components {
        healthy
            .get_or_create(&ComponentLabels {
                component: c.name.clone(),
                r#type: c.type_name.clone(),
            })
            .set(i64::from(c.healthy));
    }
    registry.register(
        "edgecar_component_healthy",
        "1 while the component's health check passes (or it has nothing to check), 0 while it fails",
        healthy,
    );
    capability_metrics(&mut registry, &snap.capabilities);
    process_metrics(&mut registry);
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out.clear();
    }
    out
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CapLabels {
    capability: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OfferLabels {
    capability: String,
    offer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OfferOutcomeLabels {
    capability: String,
    offer: String,
    outcome: &'static str,
}

/// The capability engine's figures, under the names it has always exposed:
/// `edgecar_capability_calls_total{capability,offer,outcome}`,
/// `edgecar_capability_retries_total{capability,offer}`,
/// `edgecar_capability_breaker_state{capability,offer}` (0 closed, 1 half-open, 2 open),
/// `edgecar_capability_unavailable_total{capability}`,
/// `edgecar_capability_cache_{hits,misses,stale,coalesced}_total{capability}` and
/// `edgecar_capability_cache_{entries,bytes}{capability}`.
pub fn capability_metrics(registry: &mut Registry, status: &edgecar_capabilities::EngineStatus) {
    use edgecar_capabilities::resiliency::BreakerState;
    let calls = Family::<OfferOutcomeLabels, Counter>::default();
    let retries = Family::<OfferLabels, Counter>::default();
    let breaker = Family::<OfferLabels, Gauge>::default();
    let unavailable = Family::<CapLabels, Counter>::default();
    let [hits, misses, stale, coalesced] =
        std::array::from_fn::<_, 4, _>(|_| Family::<CapLabels, Counter>::default());
    let entries = Family::<CapLabels, Gauge>::default();
    let bytes = Family::<CapLabels, Gauge>::default();
    for cap in &status.capabilities {
        let c = CapLabels {
            capability: cap.name.clone(),
        };
        unavailable.get_or_create(&c).inc_by(cap.unavailable);
        if let Some(s) = &cap.cache {
            hits.get_or_create(&c).inc_by(s.hits);
            misses.get_or_create(&c).inc_by(s.misses);
            stale.get_or_create(&c).inc_by(s.stale);
            coalesced.get_or_create(&c).inc_by(s.coalesced);
            entries
                .get_or_create(&c)
                .set(i64::try_from(s.entries).unwrap_or(i64::MAX));
            bytes
                .get_or_create(&c)
                .set(i64::try_from(s.bytes).unwrap_or(i64::MAX));
        }
        for o in &cap.offers {
            let l = OfferLabels {
                capability: cap.name.clone(),
                offer: o.name.clone(),
            };
            let n = &o.counters;
            for (outcome, v) in [
                ("success", n.success),
                ("client_error", n.client_error),
                ("server_error", n.server_error),
                ("timeout", n.timeout),
                ("unreachable", n.unreachable),
                ("error", n.error),
                ("skipped", n.skipped),
            ] {
                calls
                    .get_or_create(&OfferOutcomeLabels {
                        capability: cap.name.clone(),
                        offer: o.name.clone(),
                        outcome,
                    })
                    .inc_by(v);
            }
            retries.get_or_create(&l).inc_by(n.retries);
            if let Some(b) = &o.breaker {
                breaker.get_or_create(&l).set(match b.state {
                    BreakerState::Closed => 0,
                    BreakerState::HalfOpen => 1,
                    BreakerState::Open => 2,
                });
            }
        }
    }
    registry.register(
        "edgecar_capability_calls",
        "Capability offer attempts by outcome",
        calls,
    );
    registry.register(
        "edgecar_capability_retries",
        "Capability offer retries (attempts after the first)",
        retries,
    );
    registry.register(
        "edgecar_capability_breaker_state",
        "Circuit breaker state per offer: 0 closed, 1 half-open, 2 open",
        breaker,
    );
    registry.register(
        "edgecar_capability_unavailable",
        "Capability calls no offer and no stale cache entry could answer",
        unavailable,
    );
    registry.register(
        "edgecar_capability_cache_hits",
        "Capability calls answered from the cache",
        hits,
    );
    registry.register(
        "edgecar_capability_cache_misses",
        "Capability calls not in the cache",
        misses,
    );
    registry.register(
        "edgecar_capability_cache_stale",
        "Stale cache entries served because every offer failed",
        stale,
    );
    registry.register(
        "edgecar_capability_cache_coalesced",
        "Calls that waited for an identical call in flight instead of calling upstream",
        coalesced,
    );
    registry.register(
        "edgecar_capability_cache_entries",
        "Entries in the capability cache",
        entries,
    );
    registry.register(
        "edgecar_capability_cache_bytes",
        "Bytes in the capability cache",
        bytes,
    );
}

/// The process, as Prometheus's client libraries name it (Linux `/proc/self`; absent elsewhere).
fn process_metrics(registry: &mut Registry) {
    let Some(p) = process() else { return };
    let cpu: Counter<f64, std::sync::atomic::AtomicU64> = Counter::default();
    cpu.inc_by(p.cpu_seconds);
    registry.register(
        "process_cpu_seconds",
        "User and system CPU time spent, in seconds",
        cpu,
    );
    gauge(
        registry,
        "process_resident_memory_bytes",
        "Resident memory size in bytes",
        p.rss_bytes,
    );
    gauge(
        registry,
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes",
        p.vsize_bytes,
    );
    gauge(
        registry,
        "process_open_fds",
        "Open file descriptors",
        p.open_fds,
    );
    if let Some(max) = p.max_fds {
        gauge(
            registry,
            "process_max_fds",
            "Maximum number of open file descriptors",
            max,
        );
    }
    if let Some(start) = p.start_time_seconds {
        gauge(
            registry,
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds",
            start,
        );
    }
}

/// Figures about this process from `/proc/self`.
pub struct ProcessStats {
    /// User + system CPU seconds.
    pub cpu_seconds: f64,
    /// Resident set size in bytes.
    pub rss_bytes: i64,
    /// Virtual size in bytes.
    pub vsize_bytes: i64,
    /// Open file descriptors.
    pub open_fds: i64,
    /// The soft limit on open file descriptors.
    pub max_fds: Option<i64>,
    /// Start time, Unix seconds.
    pub start_time_seconds: Option<i64>,
}

/// Reads [`ProcessStats`]; `None` where `/proc` is not there.
pub fn process() -> Option<ProcessStats> {
    // Linux's USER_HZ is 100 and pages are 4 KiB on every board edgecar ships to (aarch64
    // Raspberry Pi OS kernels use 4 KiB pages too); statm and stat are in those units.
    const TICKS: f64 = 100.0;
    const PAGE: i64 = 4096;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime 15, starttime 22, vsize 23, rss 24.
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let cpu_seconds = (field(14)? + field(15)?) as f64 / TICKS;
    let vsize_bytes = i64::try_from(field(23)?).unwrap_or(i64::MAX);
    let rss_bytes = i64::try_from(field(24)?).unwrap_or(0) * PAGE;
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| count(d.count()));
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse::<i64>().ok())
        });
    let start_time_seconds = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        let btime = s
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse::<u64>()
            .ok()?;
        let since_boot = field(22)? as f64 / TICKS;
        i64::try_from(btime).ok().map(|b| b + since_boot as i64)
    });
    Some(ProcessStats {
        cpu_seconds,
        rss_bytes,
        vsize_bytes,
        open_fds,
        max_fds,
        start_time_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::pubsub::TopicQueue;
    use crate::components::health::ComponentHealth;
    use crate::error::{Error, ErrorKind, codes};
    use crate::queue::Stats;

    #[test]
    fn calls_are_counted_by_transport_op_and_outcome() {
        let m = CallMetrics::new("app", true);
        m.record(
            Transport::Http,
            "state.get",
            &Ok(Reply::no_content()),
            Duration::from_millis(1),
        );
        m.record(
            Transport::Mqtt,
            "state.get",
            &Err(Error::new(ErrorKind::NotFound, codes::NOT_FOUND, "x")),
            Duration::from_millis(1),
        );
        m.http_served("GET", 204, Duration::from_millis(3));
        let out = encode(
            &m,
            &Snapshot {
                now_ms: 100_000,
                devices_registered: 2,
                devices_connected: 1,
                outbox_messages: 4,
                outbox_oldest_appended_ms: Some(40_000),
                capabilities: edgecar_capabilities::EngineStatus {
                    capabilities: vec![],
                },
                queues: vec![
                    TopicQueue {
                        pubsub: "pubsub".into(),
                        topic: "orders".into(),
                        stats: Stats {
                            messages: 3,
                            bytes: 30,
                            oldest_appended_ms: Some(97_500),
                        },
                    },
                    TopicQueue {
                        pubsub: "pubsub".into(),
                        topic: "idle".into(),
                        stats: Stats {
                            messages: 0,
                            bytes: 0,
                            oldest_appended_ms: None,
                        },
                    },
                ],
                components: vec![ComponentHealth {
                    name: "statestore".into(),
                    type_name: "state.redis".into(),
                    check: Some("Redis PING"),
                    healthy: false,
                    error: Some("redis: connection refused".into()),
                    since_ms: 0,
                    checked_ms: Some(0),
                }],
            },
        );
        assert!(
            out.contains(r#"edgecar_calls_total{transport="http",op="state.get",outcome="ok"} 1"#),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                r#"edgecar_calls_total{{transport="mqtt",op="state.get",outcome="{}"}} 1"#,
                codes::NOT_FOUND
            )),
            "{out}"
        );
        assert!(
            out.contains(
                r#"dapr_http_server_request_count_total{app_id="app",method="GET",status="204"} 1"#
            ),
            "{out}"
        );
        assert!(out.contains("edgecar_devices_connected 1"), "{out}");
        assert!(
            out.contains(r#"edgecar_queue_messages{pubsub="pubsub",topic="orders"} 3"#),
            "{out}"
        );
        assert!(
            out.contains(r#"edgecar_queue_oldest_age_seconds{pubsub="pubsub",topic="orders"} 2.5"#),
            "{out}"
        );
        assert!(
            out.contains(r#"edgecar_queue_oldest_age_seconds{pubsub="pubsub",topic="idle"} 0.0"#),
            "{out}"
        );
        assert!(
            out.contains("edgecar_outbox_oldest_age_seconds 60.0"),
            "{out}"
        );
        assert!(
            out.contains(
                r#"edgecar_component_healthy{component="statestore",type="state.redis"} 0"#
            ),
            "{out}"
        );
        assert!(out.ends_with("# EOF\n"), "{out}");
    }

    #[test]
    fn process_figures_are_read() {
        let p = process().expect("/proc/self");
        assert!(p.rss_bytes > 0 && p.open_fds > 0);
    }
}
