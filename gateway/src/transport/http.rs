//! The HTTP transport: a hyper 1 server speaking the Dapr HTTP API v1.0.
//!
//! It owns the listener loop, per-connection settings (keep-alive, header timeout, `TCP_NODELAY`),
//! the API token check, the body size limit (checked against `Content-Length` before reading and
//! enforced while reading), and graceful shutdown: stop accepting, let in-flight requests finish
//! within the drain timeout, then close.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::api::{self, Route};
use crate::call::{Call, Caller, Params, Reply};
use crate::error::{Error, ErrorKind, codes};
use crate::runtime::Runtime;

/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings and shared state of the HTTP API.
pub struct HttpApi {
    /// The request path every call takes.
    pub runtime: Arc<Runtime>,
    /// Required `dapr-api-token`, if any.
    pub api_token: Option<String>,
    /// Largest body accepted, in bytes.
    pub max_body: u64,
}

type Resp = Response<Full<Bytes>>;

fn error_response(e: &Error) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(api::error_body(e))));
    *r.status_mut() = api::status(e.kind);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn reply_response(reply: Reply) -> Resp {
    let mut r = Response::new(Full::new(reply.body));
    *r.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    let h = r.headers_mut();
    if let Some(ct) = reply.content_type {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    for (name, value) in reply.meta {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            h.append(n, v);
        }
    }
    r
}

/// Compares without leaking, through timing, how much of the token matched.
fn token_matches(given: &[u8], want: &[u8]) -> bool {
    given.len() == want.len()
        && given
            .iter()
            .zip(want)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

impl HttpApi {
    async fn handle(&self, req: Request<Incoming>) -> Resp {
        let (started, method) = (std::time::Instant::now(), req.method().clone());
        let resp = match self.dispatch(req).await {
            Ok(reply) => reply_response(reply),
            Err(e) => error_response(&e),
        };
        let metrics = &self.runtime.metrics;
        metrics.http_served(method.as_str(), resp.status().as_u16(), started.elapsed());
        resp
    }

    async fn dispatch(&self, req: Request<Incoming>) -> Result<Reply, Error> {
        let by_header = req
            .headers()
            .get("dapr-app-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|id| {
                api::route_by_app_id_header(id, req.method(), req.uri().path(), req.uri().query())
            });
        let route = match by_header {
            Some(r) => r,
            None => api::route(req.method(), req.uri().path(), req.uri().query())?,
        };
        let op = match route {
            Route::Healthz | Route::HealthzOutbound => return Ok(Reply::no_content()),
            Route::Call(op) => op,
        };
        if let Some(want) = &self.api_token {
            let given = req
                .headers()
                .get("dapr-api-token")
                .map(HeaderValue::as_bytes);
            if !given.is_some_and(|g| token_matches(g, want.as_bytes())) {
                return Err(Error::new(
                    ErrorKind::Unauthorized,
                    codes::UNAUTHORIZED,
                    "invalid api token",
                ));
            }
        }
        let mut params = Params {
            transport: crate::call::Transport::Http,
            ..Params::default()
        };
        api::parse_query(req.uri().query(), &mut params)?;
        let header_str = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        params.if_match = header_str("if-match").map(|e| e.trim_matches('"').to_owned());
        params.traceparent = header_str("traceparent");
        if matches!(
            op,
            crate::call::Op::Invoke { .. } | crate::call::Op::Capability { .. }
        ) {
            params.headers = req
                .headers()
                .iter()
                .filter(|(k, _)| crate::blocks::invoke::forwardable(k.as_str()))
                .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                .collect();
        }
        params.tracestate = header_str("tracestate");
        params.content_type = header_str("content-type");
        let body = self.read_body(req).await?;
        let call = Call {
            caller: Caller::LocalApp {
                app_id: self.runtime.app_id.clone(),
            },
            op,
            body,
            params,
        };
        self.runtime.handle(call).await
    }

    async fn read_body(&self, req: Request<Incoming>) -> Result<Bytes, Error> {
        let too_large = || {
            Error::new(
                ErrorKind::TooLarge,
                codes::BODY_TOO_LARGE,
                format!(
                    "request body exceeds the limit of {} bytes (http.maxBodySize)",
                    self.max_body
                ),
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body) {
            return Err(too_large());
        }
        let limit = usize::try_from(self.max_body).unwrap_or(usize::MAX);
        match Limited::new(req.into_body(), limit).collect().await {
            Ok(c) => Ok(c.to_bytes()),
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                Err(too_large())
            }
            Err(e) => Err(Error::malformed(format!(
                "failed reading request body: {e}"
            ))),
        }
    }
}

/// Serves the API on `listener` until `shutdown` resolves, then drains for at most `drain`.
pub async fn serve(
    listener: TcpListener,
    api: Arc<HttpApi>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Usually EMFILE: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let api = api.clone();
                let svc = service_fn(move |req| {
                    let api = api.clone();
                    async move { Ok::<_, Infallible>(api.handle(req).await) }
                });
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    info!("shutting down: draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => info!("all connections closed"),
        () = tokio::time::sleep(drain) => warn!(timeout = ?drain, "drain timeout passed; closing remaining connections"),
    }
}
