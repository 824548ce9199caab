//! The admin listener (daprd's `--metrics-port`, `127.0.0.1:9090` by default): what an operator
//! and Prometheus read, kept off the Dapr API port so that the API's token guards all of the API.
//!
//! | path | what |
//! | --- | --- |
//! | `GET /metrics` | OpenMetrics text ([`super::metrics`]) |
//! | `GET /` | the status page: one self-contained HTML file (no CDN: a Pi may be offline) that renders `/status.json` and refreshes it every 2 s |
//! | `GET /status.json` | devices, capabilities, queues (depth, age of the oldest message), components (health), version, uptime ([`Admin::status`]) |
//! | `GET /healthz` | 204 while the gateway runs |
//!
//! It asks for no token and binds loopback unless `metrics.address` says otherwise.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;

use crate::components::ComponentInfo;
use crate::runtime::Runtime;

/// The status page; it fetches `/status.json`.
const STATUS_PAGE: &str = include_str!("status.html");

/// Devices listed on the status page (connected ones first); totals always count them all.
const STATUS_DEVICES: usize = 200;

/// What the admin listener serves from.
pub struct Admin {
    /// The request path: its metrics and the blocks whose figures are shown.
    pub runtime: Arc<Runtime>,
    /// The site this gateway belongs to.
    pub site: String,
    /// Loaded components, as `/v1.0/metadata` lists them.
    pub components: Vec<ComponentInfo>,
    /// When the gateway started, for the uptime.
    pub started: Instant,
}

type Resp = Response<Full<Bytes>>;

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

impl Admin {
    async fn handle(&self, req: Request<Incoming>) -> Resp {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return respond(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                "GET only\n",
            );
        }
        match req.uri().path() {
            "/metrics" => respond(
                StatusCode::OK,
                super::metrics::CONTENT_TYPE,
                self.runtime.metrics_text().await,
            ),
            "/" | "/status" => {
                let mut r = respond(StatusCode::OK, "text/html; charset=utf-8", STATUS_PAGE);
                r.headers_mut().insert(
                    "content-security-policy",
                    HeaderValue::from_static(
                        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
                    ),
                );
                r
            }
            "/status.json" => respond(
                StatusCode::OK,
                "application/json",
                serde_json::to_vec(&self.status().await).unwrap_or_default(),
            ),
            "/healthz" => respond(StatusCode::NO_CONTENT, "text/plain; charset=utf-8", ""),
            _ => respond(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "not found: the admin listener serves /, /status.json, /metrics and /healthz\n",
            ),
        }
    }

    /// The status page's figures, read now.
    pub async fn status(&self) -> serde_json::Value {
        let rt = &self.runtime;
        let devices = rt.devices.status_rows(STATUS_DEVICES).await;
        let backlogs = rt.devices.outbox_backlogs().await;
        let caps = rt.capabilities.status().await;
        let capabilities: Vec<_> = caps
            .capabilities
            .iter()
            .map(|c| {
                let cache = c.cache.as_ref().map(|s| {
                    let looked = s.hits + s.misses + s.stale;
                    json!({
                        "hits": s.hits,
                        "misses": s.misses,
                        "stale": s.stale,
                        "entries": s.entries,
                        "hitRatio": (looked > 0).then(|| s.hits as f64 / looked as f64),
                    })
                });
                json!({
                    "name": c.name,
                    "unavailable": c.unavailable,
                    "cache": cache,
                    "offers": c.offers.iter().map(|o| json!({
                        "name": o.name,
                        "type": o.offer_type,
                        "target": o.target,
                        "health": o.health,
                        "breaker": o.breaker.as_ref().map(|b| &b.state),
                        "lastError": o.last_error,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let process = super::metrics::process();
        let (calls, failed) = rt.metrics.totals();
        let now_ms = crate::clock::unix_ms();
        let age = |s: &crate::queue::Stats| match s.oldest_age_seconds(now_ms) {
            None if s.messages == 0 => Some(0.0),
            a => a,
        };
        let outbox_oldest = backlogs.values().filter_map(|s| s.oldest_appended_ms).min();
        let health = rt.component_health.report().await;
        let components: Vec<_> = self
            .components
            .iter()
            .map(|c| {
                let h = health.iter().find(|h| h.name == c.name);
                json!({
                    "name": c.name,
                    "type": c.type_name,
                    "version": c.version,
                    "status": match h {
                        Some(h) if !h.healthy => "unhealthy",
                        _ => "healthy",
                    },
                    "check": h.and_then(|h| h.check),
                    "error": h.and_then(|h| h.error.clone()),
                    "since": h.map(|h| crate::clock::rfc3339(h.since_ms / 1000)),
                    "checked": h.and_then(|h| h.checked_ms).map(|ms| crate::clock::rfc3339(ms / 1000)),
                })
            })
            .collect();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "appId": rt.app_id,
            "site": self.site,
            "uptimeSeconds": self.started.elapsed().as_secs(),
            "now": crate::clock::rfc3339(crate::clock::unix_ms() / 1000),
            "process": process.map(|p| json!({
                "rssBytes": p.rss_bytes,
                "cpuSeconds": p.cpu_seconds,
                "openFds": p.open_fds,
            })),
            "calls": { "total": calls, "failed": failed },
            "devices": {
                "registered": rt.devices.registered_count(),
                "connected": rt.devices.connected_count(),
                "list": devices,
                "listLimit": STATUS_DEVICES,
            },
            // Peers and links arrive with mDNS and QUIC links; the page shows this section empty
            // until then.
            "links": [],
            "capabilities": capabilities,
            "queues": {
                "outboxes": backlogs.len(),
                "outboxMessages": backlogs.values().map(|s| s.messages).sum::<u64>(),
                // How long the oldest message in any open outbox has waited (null: none waits).
                "outboxOldestAgeSeconds": outbox_oldest.map(|at| now_ms.saturating_sub(at) as f64 / 1000.0),
                "topics": rt.pubsub.queue_stats().await.into_iter().map(|q| json!({
                    "pubsub": q.pubsub,
                    "topic": q.topic,
                    "depth": q.stats.messages,
                    // null: the oldest message was written by an edgecar that kept no times.
                    "oldestAgeSeconds": age(&q.stats),
                })).collect::<Vec<_>>(),
            },
            "components": components,
        })
    }
}

/// The admin listener's limits: a few scrapers and browsers at a time.
pub const LIMITS: crate::transport::http::Limits = crate::transport::http::Limits {
    max_connections: 32,
    read_timeout: Duration::from_secs(10),
    setting: "the admin listener serves 32",
};

impl crate::transport::http::Handler for Admin {
    fn handle(&self, req: Request<Incoming>) -> impl std::future::Future<Output = Resp> + Send {
        Admin::handle(self, req)
    }
}
