//! The capabilities building block: the smart proxy of `edgecar_capabilities` on the request path.
//!
//! It adapts the gateway to the engine's small interfaces (service invocation becomes the
//! engine's [`Invoker`]), turns calls into engine requests and replies into [`Reply`]s that say
//! which offer served them and the cache status (`x-edgecar-offer`, `x-edgecar-cache`), maps the
//! engine's errors to Dapr-style ones, and reloads manifests when their files change, keeping the
//! previous set when the new one is invalid.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use edgecar_capabilities::{
    CACHE_HEADER, CapabilityError, CapabilityRequest, Engine, ErrorKind as CapErrorKind, Invoker,
    OFFER_HEADER, UpstreamError, UpstreamReply,
};
use http::Method;
use tracing::{error, info};

use crate::blocks::invoke::{InvokeBlock, InvokeError};
use crate::call::{Caller, Reply};
use crate::error::{Error, ErrorKind};
use crate::setup;

/// Service invocation as the engine sees it (`invoke` offers).
pub struct AppInvoker(pub Arc<InvokeBlock>);

#[async_trait]
impl Invoker for AppInvoker {
    async fn invoke(
        &self,
        app_id: &str,
        method: &str,
        http_method: &Method,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<UpstreamReply, UpstreamError> {
        let method = if method.starts_with('/') {
            method.to_owned()
        } else {
            format!("/{method}")
        };
        match self
            .0
            .call(app_id, &method, http_method, headers, body)
            .await
        {
            Ok(r) => Ok(UpstreamReply {
                status: r.status,
                headers: r.headers,
                body: r.body,
            }),
            Err(
                e @ (InvokeError::UnknownApp(_)
                | InvokeError::Unreachable { .. }
                | InvokeError::BreakerOpen { .. }),
            ) => Err(UpstreamError::Unreachable(e.to_string())),
            Err(InvokeError::Timeout(_)) => Err(UpstreamError::Timeout),
            Err(e @ InvokeError::Other { .. }) => Err(UpstreamError::Other(e.to_string())),
        }
    }
}

/// The engine's view of a call: method path after the name, query, verb, headers, body.
pub fn request(
    method: &str,
    query: Option<&str>,
    verb: &Method,
    headers: &[(String, String)],
    body: Bytes,
) -> CapabilityRequest {
    let mut req = CapabilityRequest::new(verb.clone(), method, body);
    req.query = query.map(str::to_owned);
    req.headers = headers.to_vec();
    req
}

/// The capabilities building block.
pub struct CapabilitiesBlock {
    /// The smart-proxy engine (cheap to clone; clones share state).
    engine: Engine,
}

fn to_error(e: &CapabilityError) -> Error {
    let kind = match e.kind() {
        CapErrorKind::NotFound => ErrorKind::NotFound,
        CapErrorKind::BadRequest => ErrorKind::BadRequest,
        CapErrorKind::Unavailable => ErrorKind::Unavailable,
        CapErrorKind::Timeout => ErrorKind::Timeout,
        CapErrorKind::Internal => ErrorKind::Internal,
    };
    Error::new(kind, e.error_code(), e.to_string())
}

impl CapabilitiesBlock {
    /// Wraps an engine whose manifests are already loaded.
    pub fn new(engine: Engine) -> Self {
        CapabilitiesBlock { engine }
    }

    /// `/v1.0/capabilities/<name>/<method...>`; `req` from [`request`].
    pub async fn call(
        &self,
        _caller: &Caller,
        name: &str,
        req: CapabilityRequest,
    ) -> Result<Reply, Error> {
        let reply = self
            .engine
            .call(name, req)
            .await
            .map_err(|e| to_error(&e))?;
        // Offer and cache status first: transports that cap how many headers they carry (MQTT 5
        // user properties) must never drop these two.
        let mut meta = vec![
            (OFFER_HEADER.to_owned(), reply.offer),
            (CACHE_HEADER.to_owned(), reply.cache.as_str().to_owned()),
        ];
        meta.extend(reply.headers);
        Ok(Reply {
            status: reply.status.as_u16(),
            body: reply.body,
            meta,
            content_type: None,
        })
    }

    /// `GET /v1.0/capabilities`: every capability with offer health, breakers and cache statistics.
    pub async fn list(&self) -> Result<Reply, Error> {
        let status = self.engine.status().await;
        Ok(Reply::json(serde_json::to_vec(&status).unwrap_or_default()))
    }

    /// Every capability's offers (health, breakers, counters) and cache statistics, for
    /// `/metrics` and the status page.
    pub async fn status(&self) -> edgecar_capabilities::EngineStatus {
        self.engine.status().await
    }
}

/// Newest modification time among the resource files and their directories (a removed file
/// changes its directory's), to notice edits cheaply.
pub fn newest_change(paths: &[PathBuf]) -> Option<SystemTime> {
    let files = paths
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(|e| e.ok()?.metadata().ok()?.modified().ok());
    let dirs = paths
        .iter()
        .filter_map(|d| std::fs::metadata(d).ok()?.modified().ok());
    files.chain(dirs).max()
}

/// Watches the resource directories and reloads capability manifests (and the resiliency
/// policies they may name) when files change. A change is acted on once the files have been quiet
/// for one poll, so a file caught half-written by an editor is not read. An invalid set is
/// reported and the previous one stays in force. Polling keeps this free of inotify quirks on SD
/// cards and bind mounts. `seen` is the state the running set was loaded from.
pub async fn watch(engine: Engine, cfg: crate::Config, every: Duration, seen: Option<SystemTime>) {
    let paths = cfg.resources_paths.clone();
    crate::watch::on_quiet_change(every, seen, move || newest_change(&paths), || {
        let (engine, cfg) = (engine.clone(), cfg.clone());
        async move {
            let Ok((loaded, errors)) =
                tokio::task::spawn_blocking(move || setup::capabilities(&cfg)).await
            else {
                return;
            };
            if !errors.is_empty() {
                for e in &errors {
                    error!(error = %e, "capability reload refused; previous manifests stay in force");
                }
                return;
            }
            match engine.reload(loaded.manifests, loaded.policies) {
                Ok(()) => info!(capabilities = ?engine.capability_names(), "capabilities reloaded"),
                Err(errs) => {
                    for e in errs {
                        error!(error = %e, "capability reload refused; previous manifests stay in force");
                    }
                }
            }
        }
    })
    .await;
}
