//! The HTTP transport: a hyper 1 server speaking the Dapr HTTP API v1.0.
//!
//! It owns the listener loop and its limits, per-connection settings (keep-alive, `TCP_NODELAY`),
//! the API token check (before routing, so routes cannot be enumerated without the token), the
//! body limits, and graceful shutdown: stop accepting, let in-flight requests finish within the
//! drain timeout, then close.
//!
//! Limits, so that no client can hold the daemon's sockets: at most `http.maxConnections`
//! connections are served at once (one semaphore permit each; beyond it a connection gets a canned
//! 503 and is closed); `http.readTimeout` bounds the request headers and, separately, the whole
//! body (408 + `Connection: close`); hyper's header timer also runs while a keep-alive connection
//! waits for its next request, so idle connections give their permit back after the same time;
//! and a write the client does not read for that long ends the connection ([`stall`]), so a
//! client that stops reading its replies cannot keep its slot either. The body size is checked
//! against `Content-Length` before reading and enforced while reading.

mod stall;

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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use crate::api::{self, Route};
use crate::call::{Call, Caller, Params, Reply};
use crate::error::{Error, ErrorKind, codes};
use crate::runtime::Runtime;

/// Refused connections being closed politely at once (each lingers briefly so that the client
/// reads the 503 rather than a reset); beyond this, refused connections are dropped at once.
const MAX_REFUSING: usize = 64;

/// How long a refused connection may linger while its request is read and discarded.
const REFUSE_LINGER: Duration = Duration::from_millis(500);

/// Settings and shared state of the HTTP API.
pub struct HttpApi {
    /// The request path every call takes.
    pub runtime: Arc<Runtime>,
    /// Required `dapr-api-token`, if any.
    pub api_token: Option<String>,
    /// Largest body accepted, in bytes.
    pub max_body: u64,
    /// Time allowed for the request headers, and then for the whole body (`http.readTimeout`).
    pub read_timeout: Duration,
    /// Connections served at once (`http.maxConnections`).
    pub max_connections: usize,
}

type Resp = Response<Full<Bytes>>;

fn error_response(e: &Error) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(api::error_body(e))));
    *r.status_mut() = api::status(e.kind);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if e.kind == ErrorKind::RequestTimeout {
        // The rest of the body may still be on its way: the connection cannot be reused.
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
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

    /// The API token, checked before routing: without it, only the two health endpoints answer
    /// (and `/metrics`, for scrapers), and every other path — known or not — gets 401.
    fn check_token(&self, req: &Request<Incoming>) -> Result<(), Error> {
        let Some(want) = &self.api_token else {
            return Ok(());
        };
        let path = req.uri().path();
        let exempt = *req.method() == http::Method::GET
            && matches!(
                path,
                "/v1.0/healthz"
                    | "/v1.0/healthz/"
                    | "/v1.0/healthz/outbound"
                    | "/v1.0/healthz/outbound/"
                    | "/metrics"
            );
        let given = req
            .headers()
            .get("dapr-api-token")
            .map(HeaderValue::as_bytes);
        if exempt || given.is_some_and(|g| token_matches(g, want.as_bytes())) {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Unauthorized,
            codes::UNAUTHORIZED,
            "invalid api token",
        ))
    }

    async fn dispatch(&self, req: Request<Incoming>) -> Result<Reply, Error> {
        self.check_token(&req)?;
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
            Route::Healthz
                if !self
                    .runtime
                    .ready
                    .load(std::sync::atomic::Ordering::Acquire) =>
            {
                return Err(Error::new(
                    ErrorKind::Upstream,
                    codes::HEALTH_NOT_READY,
                    "dapr is not ready: the app's subscriptions are not loaded yet",
                ));
            }
            Route::Healthz => {
                self.runtime.health()?;
                return Ok(Reply::no_content());
            }
            Route::HealthzOutbound => {
                self.runtime.outbound_health().await?;
                return Ok(Reply::no_content());
            }
            Route::Call(op) => op,
        };
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
        let read = tokio::time::timeout(
            self.read_timeout,
            Limited::new(req.into_body(), limit).collect(),
        );
        let Ok(collected) = read.await else {
            return Err(Error::new(
                ErrorKind::RequestTimeout,
                codes::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {:?} (http.readTimeout)",
                    self.read_timeout
                ),
            ));
        };
        match collected {
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

/// The canned answer to a connection over `http.maxConnections`: 503 and `Connection: close`.
fn busy_response() -> Bytes {
    let e = Error::new(
        ErrorKind::Unavailable,
        codes::TOO_MANY_CONNECTIONS,
        "too many open connections to the HTTP API (http.maxConnections); retry shortly",
    );
    let body = api::error_body(&e);
    let status = api::status(e.kind);
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or_default(),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    Bytes::from(out)
}

/// Answers a connection over the limit and closes it. The request is read and discarded for a
/// moment first, so the client gets the 503 and an orderly close rather than a reset.
async fn refuse(mut stream: TcpStream, busy: Bytes, _slot: OwnedSemaphorePermit) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(REFUSE_LINGER, async {
        stream.write_all(&busy).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
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
    // hyper runs this timer for every request's headers, including the wait for the next request
    // on a keep-alive connection, so an idle connection is closed after it too.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(api.read_timeout);
    let slots = Arc::new(Semaphore::new(api.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let busy = busy_response();
    let read_timeout = api.read_timeout;
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
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    debug!(%peer, limit = api.max_connections, "connection refused: http.maxConnections reached");
                    if let Ok(r) = refusing.clone().try_acquire_owned() {
                        tokio::spawn(refuse(stream, busy.clone(), r));
                    }
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let api = api.clone();
                let svc = service_fn(move |req| {
                    let api = api.clone();
                    async move { Ok::<_, Infallible>(api.handle(req).await) }
                });
                let conn = graceful.watch(builder.serve_connection(
                    TokioIo::new(stall::StallGuard::new(stream, read_timeout)),
                    svc,
                ));
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        debug!(%peer, error = %e, "connection ended with an error");
                    }
                    drop(slot);
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
