//! The service-invocation building block: `/v1.0/invoke/<app-id>/method/<method>` to local apps.
//!
//! It owns the app table (the gateway's own app on `--app-port`, plus apps declared under `apps:`
//! in edgecar.yaml), a pooled HTTP/1.1 client to them, the access-control check on the callee side
//! (Dapr's `accessControl`), and resiliency (timeouts, retries, breakers from a Resiliency document
//! that targets the app). The verb, the raw method path with its query, the headers (minus
//! hop-by-hop ones) and the body pass through; so do the app's status, headers and body.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use edgecar_capabilities::Resiliency;
use edgecar_capabilities::resiliency::Matching;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::call::{Caller, Reply};
use crate::error::{Error, ErrorKind, codes};
use crate::policy::AccessControl;
use crate::resilience::{self, Breakers, Stopped};

/// edgecar's own headers, which describe the call to edgecar, not the call to the app.
const EDGECAR_HEADERS: &[&str] = &["host", "dapr-api-token", "dapr-app-id"];

/// Whether a header may cross a hop: not hop-by-hop (RFC 9110 §7.6.1, the rule the capability
/// engine's offers follow too) and not one of edgecar's own.
pub fn forwardable(name: &str) -> bool {
    !edgecar_capabilities::is_hop_by_hop(name)
        && !EDGECAR_HEADERS.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// An app's answer, before it becomes a [`Reply`].
#[derive(Debug)]
pub struct AppReply {
    /// The app's status.
    pub status: StatusCode,
    /// The app's headers, hop-by-hop ones removed, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The app's body.
    pub body: Bytes,
}

/// Why an invocation got no answer from the app.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    /// No app with this id is known to the gateway.
    #[error("app id {0:?} is not known to this gateway")]
    UnknownApp(String),
    /// The app could not be reached (nothing was processed).
    #[error("app {app:?} is unreachable: {reason}")]
    Unreachable {
        /// The app id.
        app: String,
        /// What the connection attempt said.
        reason: String,
    },
    /// The app did not answer within the resiliency timeout.
    #[error("app {0:?} did not answer in time")]
    Timeout(String),
    /// The app's circuit breaker is open.
    #[error("app {app:?}: {reason}")]
    BreakerOpen {
        /// The app id.
        app: String,
        /// The breaker's state.
        reason: String,
    },
    /// Anything else (bad response, too large).
    #[error("app {app:?}: {reason}")]
    Other {
        /// The app id.
        app: String,
        /// What went wrong.
        reason: String,
    },
}

/// The local app's callbacks when it speaks gRPC (`--app-protocol grpc`, Dapr's `AppCallback`
/// service). The gRPC transport implements it; blocks call it where they would speak HTTP to the
/// app, with the same neutral shapes (HTTP-style answers, Dapr's JSON).
#[async_trait::async_trait]
pub trait AppCallbacks: Send + Sync {
    /// A service invocation (`OnInvoke`); `method` may carry `?query`.
    async fn invoke(
        &self,
        method: &str,
        verb: &Method,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<AppReply, String>;
    /// The app's programmatic subscriptions (`ListTopicSubscriptions`), in the JSON shape of
    /// `GET /dapr/subscribe`.
    async fn subscriptions(&self) -> Result<Bytes, String>;
    /// One topic event (`OnTopicEvent`) for the subscription to `topic` of `pubsub`: the
    /// CloudEvent JSON and the route it matched; the
    /// answer as an HTTP app gives it (`{"status": "SUCCESS" | "RETRY" | "DROP"}`), 404 when the
    /// app has no handler for it (`UNIMPLEMENTED`, which daprd drops).
    async fn topic_event(
        &self,
        pubsub: &str,
        topic: &str,
        path: &str,
        event: Bytes,
    ) -> Result<AppReply, String>;
    /// A batch for a bulk subscription (`OnBulkTopicEvent`, else `OnBulkTopicEventAlpha1`): the
    /// body an HTTP app would get (Dapr's bulk envelope JSON) and the route it matched; the
    /// answer as an HTTP app gives it (`{"statuses": [{"entryId", "status"}]}`), 404 when the
    /// app serves neither RPC.
    async fn bulk_topic_event(&self, path: &str, batch: Bytes) -> Result<AppReply, String>;
    /// The input bindings the app wants events from (`ListInputBindings`); `Err` only while the
    /// app cannot be reached.
    async fn input_bindings(&self) -> Result<Vec<String>, String>;
    /// Whether the app answers its health check (`AppCallbackHealthCheck`); an app without
    /// one counts as healthy once it answers at all.
    async fn healthy(&self) -> bool;
    /// An input binding event (`OnBindingEvent`).
    async fn binding_event(
        &self,
        name: &str,
        data: Bytes,
        metadata: &[(String, String)],
    ) -> Result<AppReply, String>;
}

/// Whether an app's answer is a failure to retry (and to count against the circuit breaker).
///
/// Without a `matching` list, a 5xx is (as daprd retries HTTP errors). With one, the statuses it
/// lists are and no others: `httpStatusCodes` for HTTP answers, `gRPCStatusCodes` for a gRPC
/// app's errors (their `grpc-status`). No answer at all is always a failure.
fn retried(reply: &AppReply, matching: Option<&Matching>) -> bool {
    let grpc = reply
        .headers
        .iter()
        .find(|(k, _)| k == "grpc-status")
        .and_then(|(_, v)| v.parse::<u16>().ok());
    match (matching, grpc) {
        (Some(m), Some(code)) if !m.grpc_status_codes.is_empty() => {
            m.grpc_status_codes.contains(code)
        }
        (Some(m), None) if !m.http_status_codes.is_empty() => {
            m.http_status_codes.contains(reply.status.as_u16())
        }
        _ => reply.status.is_server_error(),
    }
}

/// HTTP/1.1 to local apps, pooled (cloning shares the pool).
pub type AppClient = Client<HttpConnector, Full<Bytes>>;

/// The invocation building block.
pub struct InvokeBlock {
    /// The local app, when it speaks gRPC: its id and its callbacks.
    grpc_app: std::sync::OnceLock<(String, std::sync::Arc<dyn AppCallbacks>)>,
    /// App id → base URL (`http://host:port`), without a trailing slash.
    apps: HashMap<String, String>,
    /// Pooled keep-alive connections to the apps.
    client: AppClient,
    /// Who may call which methods (Dapr's accessControl).
    acl: AccessControl,
    /// Resiliency documents in force.
    resiliency: Vec<Resiliency>,
    /// One breaker per app id.
    breakers: Breakers,
    /// Largest app response passed through.
    max_response: usize,
}

impl InvokeBlock {
    /// Builds the block over `apps` (id → base URL).
    pub fn new(
        apps: HashMap<String, String>,
        acl: AccessControl,
        resiliency: Vec<Resiliency>,
        max_response: usize,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        InvokeBlock {
            grpc_app: std::sync::OnceLock::new(),
            apps: apps
                .into_iter()
                .map(|(k, v)| (k, v.trim_end_matches('/').to_owned()))
                .collect(),
            client,
            acl,
            resiliency,
            breakers: Breakers::default(),
            max_response,
        }
    }

    /// The HTTP client to local apps, for the subscription manager's deliveries: one pool of
    /// keep-alive connections and one set of settings (connect timeout, no Nagle) for every
    /// request the sidecar makes to an app.
    pub fn app_client(&self) -> AppClient {
        self.client.clone()
    }

    /// Makes `app_id` a gRPC app: invocations and binding events go to `callbacks`.
    pub fn set_grpc_app(&self, app_id: &str, callbacks: std::sync::Arc<dyn AppCallbacks>) {
        let _ = self.grpc_app.set((app_id.to_owned(), callbacks));
    }

    /// The callbacks of `app_id` when it is the gRPC app.
    pub fn grpc_app(&self, app_id: &str) -> Option<std::sync::Arc<dyn AppCallbacks>> {
        self.grpc_app
            .get()
            .filter(|(id, _)| id == app_id)
            .map(|(_, cb)| cb.clone())
    }

    /// Delivers an input binding's event to the app: `POST <route>` over HTTP (`/<name>` unless
    /// the binding's `route` metadata says otherwise), or `OnBindingEvent` for `name` to a gRPC
    /// app (with the headers as its metadata).
    pub async fn binding_event(
        &self,
        app_id: &str,
        name: &str,
        route: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<AppReply, InvokeError> {
        match self.grpc_app(app_id) {
            Some(cb) => cb
                .binding_event(name, body, headers)
                .await
                .map_err(|reason| InvokeError::Unreachable {
                    app: app_id.to_owned(),
                    reason,
                }),
            None => self.call(app_id, route, &Method::POST, headers, body).await,
        }
    }

    /// Every app this gateway can invoke, as (app id, base URL), sorted by id.
    pub fn apps(&self) -> Vec<(String, String)> {
        let mut apps: Vec<_> = self
            .apps
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        apps.sort();
        apps
    }

    /// Whether `app_id` is an app this gateway invokes.
    pub fn knows(&self, app_id: &str) -> bool {
        self.apps.contains_key(app_id)
    }

    /// App ids this gateway can invoke, sorted, for `/v1.0/metadata`.
    pub fn app_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.apps.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// `/v1.0/invoke/<app-id>/method/<method>`: checks access, calls the app, passes its answer on.
    pub async fn invoke(
        &self,
        caller: &Caller,
        app_id: &str,
        method: &str,
        verb: &Method,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<Reply, Error> {
        if !self.acl.allows(caller.owner(), method, verb) {
            return Err(Error::new(
                ErrorKind::Forbidden,
                codes::DIRECT_INVOKE,
                format!(
                    "access control policy has denied access to id: {} operation: {} verb: {verb}",
                    caller.owner(),
                    method.split('?').next().unwrap_or(method)
                ),
            ));
        }
        match self.call(app_id, method, verb, headers, body).await {
            Ok(r) => Ok(Reply {
                status: r.status.as_u16(),
                body: r.body,
                meta: r.headers,
                content_type: None,
            }),
            Err(e) => Err(Error::new(
                ErrorKind::Upstream,
                codes::DIRECT_INVOKE,
                format!("failed to invoke, id: {app_id}, err: {e}"),
            )),
        }
    }

    /// The URL of `method` on the app `app_id`.
    fn uri(&self, app_id: &str, method: &str) -> Result<String, InvokeError> {
        let base = self
            .apps
            .get(app_id)
            .ok_or_else(|| InvokeError::UnknownApp(app_id.to_owned()))?;
        Ok(format!("{base}{method}"))
    }

    /// One call to an HTTP app outside its resiliency policies and breaker, for probes (daprd
    /// asks `OPTIONS <route>` straight on its app channel). Any status is `Ok`.
    pub async fn call_once(
        &self,
        app_id: &str,
        method: &str,
        verb: &Method,
    ) -> Result<AppReply, InvokeError> {
        let uri = self.uri(app_id, method)?;
        self.once(app_id, &uri, verb, &[], Bytes::new()).await
    }

    /// Calls an app under its resiliency policies. Any status is `Ok`; `Err` means no answer.
    pub async fn call(
        &self,
        app_id: &str,
        method: &str,
        verb: &Method,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<AppReply, InvokeError> {
        let uri = self.uri(app_id, method)?;
        let policies =
            resilience::first_policies(self.resiliency.iter().map(|r| r.policies_for_app(app_id)));
        let grpc = self.grpc_app(app_id);
        let attempt = || async {
            match &grpc {
                Some(cb) => cb
                    .invoke(method, verb, headers, body.clone())
                    .await
                    .map_err(|reason| InvokeError::Unreachable {
                        app: app_id.to_owned(),
                        reason,
                    }),
                None => self.once(app_id, &uri, verb, headers, body.clone()).await,
            }
        };
        let matching = policies.retry.as_ref().map(|r| r.matching());
        let failed = |r: &Result<AppReply, InvokeError>| match r {
            Ok(reply) => retried(reply, matching),
            Err(_) => true,
        };
        match resilience::run(&policies, &self.breakers, app_id, attempt, failed).await {
            Ok(result) => result,
            Err(Stopped::Timeout(_)) => Err(InvokeError::Timeout(app_id.to_owned())),
            Err(Stopped::BreakerOpen(r)) => Err(InvokeError::BreakerOpen {
                app: app_id.to_owned(),
                reason: r.to_string(),
            }),
        }
    }

    async fn once(
        &self,
        app_id: &str,
        uri: &str,
        verb: &Method,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<AppReply, InvokeError> {
        let other = |reason: String| InvokeError::Other {
            app: app_id.to_owned(),
            reason,
        };
        let mut req = Request::builder().method(verb.clone()).uri(uri);
        for (k, v) in headers.iter().filter(|(k, _)| forwardable(k)) {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| other(format!("bad request: {e}")))?;
        let resp = self.client.request(req).await.map_err(|e| {
            if e.is_connect() {
                InvokeError::Unreachable {
                    app: app_id.to_owned(),
                    reason: std::error::Error::source(&e)
                        .map_or_else(|| e.to_string(), |s| s.to_string()),
                }
            } else {
                other(e.to_string())
            }
        })?;
        let status = resp.status();
        let headers = resp
            .headers()
            .iter()
            .filter(|(k, _)| forwardable(k.as_str()))
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let body = Limited::new(resp.into_body(), self.max_response)
            .collect()
            .await
            .map_err(|e| other(format!("reading the response: {e}")))?
            .to_bytes();
        Ok(AppReply {
            status,
            headers,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgecar_capabilities::resiliency::StatusCodes;

    fn reply(status: u16, grpc: Option<&str>) -> AppReply {
        AppReply {
            status: StatusCode::from_u16(status).unwrap(),
            headers: grpc
                .map(|c| vec![("grpc-status".to_owned(), c.to_owned())])
                .unwrap_or_default(),
            body: Bytes::new(),
        }
    }

    #[test]
    fn matching_decides_which_answers_are_retried() {
        // No list: 5xx, as before.
        assert!(retried(&reply(503, None), None));
        assert!(!retried(&reply(429, None), None));
        let m = Matching {
            http_status_codes: StatusCodes::parse("429", 100..=599).unwrap(),
            grpc_status_codes: StatusCodes::parse("14", 0..=16).unwrap(),
        };
        assert!(retried(&reply(429, None), Some(&m)));
        assert!(!retried(&reply(503, None), Some(&m)));
        // A gRPC app's error is judged by its gRPC code, not the HTTP status it maps to.
        assert!(retried(&reply(500, Some("14")), Some(&m)));
        assert!(!retried(&reply(500, Some("13")), Some(&m)));
        assert!(!retried(&reply(200, None), Some(&m)));
    }
}
