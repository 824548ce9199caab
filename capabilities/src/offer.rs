//! Offer types: the internal [`Offer`] trait each type implements, the interfaces the gateway
//! implements for them ([`Invoker`], [`SecretResolver`]), and the reply and error they exchange.
//!
//! An offer only performs one attempt; timeouts, retries, breakers, fallback and caching are the
//! engine's, so every type gets them the same way.

mod invoke;
mod process;
mod remote;

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, StatusCode};

use crate::builtin::BuiltinOffer;
use crate::manifest::{OfferSpec, OfferTarget};

pub(crate) use remote::HttpClient;

/// What an offer answered: status, headers and body, before the engine adds which offer served it
/// and the cache status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamReply {
    /// The status code. 2xx/3xx are successes, 4xx are passed back to the caller as they are,
    /// 5xx make the engine fall back to the next offer.
    pub status: StatusCode,
    /// Response headers worth passing back (hop-by-hop headers removed), names lower-case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

impl UpstreamReply {
    /// A reply with no headers.
    pub fn new(status: StatusCode, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// A JSON reply (`content-type: application/json`).
    pub fn json(status: StatusCode, value: &serde_json::Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from(value.to_string()),
        }
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why an offer produced no reply at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// The target could not be reached: connection refused, no route, unknown app id, program
    /// not found. Nothing was processed; falling back is safe.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The target did not answer in time.
    #[error("timed out")]
    Timeout,
    /// Any other failure (protocol error, reply too large, bad output, crashed process).
    #[error("{0}")]
    Other(String),
}

/// Service invocation, implemented by the gateway for `invoke` offers: local apps, devices, peer
/// gateways and other sites (`app.site`).
#[async_trait]
pub trait Invoker: Send + Sync {
    /// Calls `method` (a path, with `?query` appended when the caller sent one) on `app_id`.
    ///
    /// A reply with any status is `Ok`; `Err` only when there is no reply. The engine applies the
    /// offer's timeout around this call, so an implementation need not add its own.
    async fn invoke(
        &self,
        app_id: &str,
        method: &str,
        http_method: &Method,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<UpstreamReply, UpstreamError>;
}

/// Why a secret could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The store exists but has no such secret or key.
    #[error("secret {name:?} key {key:?} not found in store {store:?}")]
    NotFound {
        /// The store.
        store: String,
        /// The secret.
        name: String,
        /// The key.
        key: String,
    },
    /// The store does not exist or could not be read.
    #[error("secret store {store:?}: {reason}")]
    Store {
        /// The store.
        store: String,
        /// What went wrong (never the secret itself).
        reason: String,
    },
}

/// Secret lookup, implemented by the gateway for `secretKeyRef` headers of `http` offers.
#[async_trait]
pub trait SecretResolver: Send + Sync {
    /// The value of `key` in secret `name` of store `store` (Dapr's `secretKeyRef` semantics).
    /// Called on every request that needs it, so a rotated secret needs no reload; cache in the
    /// implementation if the store is slow.
    async fn resolve(&self, store: &str, name: &str, key: &str) -> Result<String, SecretError>;
}

/// One attempt's request, as an offer sees it.
#[derive(Debug, Clone)]
pub(crate) struct OfferRequest {
    /// The capability's name (the process offer passes it on).
    pub capability: Arc<str>,
    /// The method path for this offer (the caller's, or the offer's `method` override), no
    /// leading `/`.
    pub method: String,
    /// The HTTP method.
    pub http_method: Method,
    /// The query string, without `?`.
    pub query: Option<String>,
    /// Request headers to forward (already filtered by the engine).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

/// One way to serve a capability.
#[async_trait]
pub(crate) trait Offer: Send + Sync {
    /// Makes one attempt.
    async fn call(&self, req: &OfferRequest) -> Result<UpstreamReply, UpstreamError>;

    /// What it calls, for status pages (URL without query or credentials, app id, program).
    fn target(&self) -> String;
}

/// What offers need from the engine's owner.
pub(crate) struct Deps {
    /// For `invoke` offers.
    pub invoker: Option<Arc<dyn Invoker>>,
    /// For `secretKeyRef` headers.
    pub secrets: Option<Arc<dyn SecretResolver>>,
    /// Shared by every `http` offer (one connection pool); built on first use because loading the
    /// system's root certificates reads files.
    pub http: OnceLock<Result<HttpClient, String>>,
    /// Largest reply body an offer may return.
    pub max_response_bytes: usize,
}

/// Builds the offer `spec` describes; `Err` says why it cannot run here (e.g. no invoker).
pub(crate) fn build(spec: &OfferSpec, deps: &Arc<Deps>) -> Result<Arc<dyn Offer>, String> {
    Ok(match &spec.target {
        OfferTarget::Http { url, headers } => {
            let needs_secrets = headers
                .iter()
                .any(|h| matches!(h.value, crate::manifest::HeaderSource::SecretKeyRef(_)));
            if needs_secrets && deps.secrets.is_none() {
                return Err(
                    "secretKeyRef headers need a secret resolver, and the engine has none"
                        .to_owned(),
                );
            }
            Arc::new(remote::HttpOffer::new(url, headers.clone(), deps.clone())?)
        }
        OfferTarget::Invoke { app_id } => {
            let Some(invoker) = deps.invoker.clone() else {
                return Err(
                    "invoke offers need the gateway's invoker, and the engine has none".to_owned(),
                );
            };
            Arc::new(invoke::InvokeOffer::new(app_id.clone(), invoker))
        }
        OfferTarget::Process { command } => Arc::new(process::ProcessOffer::new(
            command.clone(),
            spec.name.clone(),
            deps.max_response_bytes,
        )),
        OfferTarget::Builtin { builtin } => Arc::new(BuiltinOffer::new(builtin)?),
    })
}

/// Headers that describe one connection rather than the message; never passed along. The
/// gateway's invocation path uses the same rule.
pub fn is_hop_by_hop(name: &str) -> bool {
    const HOP: &[&str] = &[
        "connection",
        "content-length",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}
