//! Capability delivery for edgecar: manifests, the smart-proxy engine and built-in capabilities.
//!
//! A *capability* is work a device wants done ("detect-objects", "geocode", "aggregate") without
//! caring where it runs. Its manifest lists *offers* of the same capability in order of
//! preference; the [`Engine`] calls the best healthy one, falls back on failure, caches results,
//! and says in every reply which offer served it and whether it came from the cache. This crate
//! never depends on the gateway: the gateway implements the small [`Invoker`] and
//! [`SecretResolver`] traits and maps [`CapabilityError`] to HTTP.
//!
//! # Layout
//!
//! - `duration`: Go-style durations (`500ms`, `1m30s`) as Dapr YAML writes them.
//! - `yaml`: field-by-field reading of YAML values, collecting every problem as a [`FieldError`].
//! - [`resiliency`]: Dapr's Resiliency document (timeouts, retries, circuit breakers, targets)
//!   and the pure retry-backoff and circuit-breaker state machines; reusable by the gateway.
//! - [`manifest`]: the `kind: Capability` document, its defaults and validation.
//! - `engine`: the [`Engine`]: offer choice, fallback, per-offer timeout/retry/breaker, status and
//!   Prometheus metrics.
//! - `cache`: the per-capability result cache (moka), its keys, the stale window, coalescing.
//! - `offer`: the offer types — `http` (hyper + rustls/ring), `invoke` (through [`Invoker`]),
//!   `process` (JSON on stdin/stdout; the protocol is documented there) — and their interfaces.
//! - `builtin`: capabilities compiled in: `aggregate` (sensor statistics), `json-validate` (a
//!   JSON Schema subset), `thumbnail` (PNG/JPEG resizing), `echo`.
//! - `error`: [`CapabilityError`] with its Dapr-style codes and [`ErrorKind`].
//!
//! # Wiring
//!
//! ```no_run
//! use std::sync::Arc;
//! use edgecar_capabilities::{CapabilityRequest, Engine, EngineOptions, parse_manifest_str};
//!
//! # async fn demo(invoker: Arc<dyn edgecar_capabilities::Invoker>) {
//! let engine = Engine::new(EngineOptions::default().with_invoker(invoker));
//! let manifest = parse_manifest_str(
//!     "apiVersion: edgecar.io/v1alpha1\nkind: Capability\nmetadata: {name: stats}\n\
//!      spec: {offers: [{name: local, type: builtin, builtin: aggregate}]}",
//! )
//! .expect("valid manifest");
//! engine.replace_manifests(vec![manifest]).expect("loads");
//! let req = CapabilityRequest::new(http::Method::POST, "summary", "[1, 2, 3]")
//!     .with_header("content-type", "application/json");
//! match engine.call("stats", req).await {
//!     Ok(reply) => println!("{} from {} ({})", reply.status, reply.offer, reply.cache.as_str()),
//!     Err(e) => println!("{}: {e}", e.error_code()),
//! }
//! # }
//! ```
//!
//! # Features
//!
//! - `thumbnail` (default): the `thumbnail` builtin, through the `image` crate reduced to PNG and
//!   JPEG. It adds about 0.55 MB to a stripped release binary and about 25 s to a clean build on
//!   two cores (measured on x86_64); without it, manifests naming the builtin are refused.

pub mod manifest;
pub mod resiliency;

mod builtin;
mod cache;
mod duration;
mod engine;
mod error;
mod offer;
mod yaml;

pub use cache::CacheStats;
pub use duration::{DurationError, format_go_duration, parse_go_duration};
pub use engine::{
    BreakerStatus, CACHE_HEADER, CacheStatus, CapabilityReply, CapabilityRequest, CapabilityStatus,
    Engine, EngineOptions, EngineStatus, OFFER_HEADER, OfferCounters, OfferHealth, OfferStatus,
};
pub use error::{CapabilityError, ErrorKind, FailureReason, OfferFailure};
pub use manifest::{Manifest, parse_manifest, parse_manifest_str};
pub use offer::{
    Invoker, SecretError, SecretResolver, UpstreamError, UpstreamReply, is_hop_by_hop,
};
pub use resiliency::{Policies, Resiliency, parse_resiliency, parse_resiliency_str};
pub use yaml::FieldError;
