//! The HTTP transport: a hyper 1 server speaking the Dapr HTTP API v1.0.
//!
//! It owns HTTP/1 connections on the listener skeleton ([`super::listener`]) and their limits,
//! for the Dapr API and the admin listener alike (a [`Handler`] each): per-connection settings
//! (keep-alive, `TCP_NODELAY`) and graceful shutdown (the request in progress finishes within the
//! drain timeout, then the connection closes). For the Dapr API ([`HttpApi`]) it also owns the
//! API token check (before routing, so routes cannot be enumerated without the token) and the
//! body limits.
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
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info};

use crate::api::{self, Route};
use crate::call::{Call, Caller, Reply};
use crate::error::{Error, ErrorKind, codes};
use crate::runtime::Runtime;
use crate::transport::listener::{self, Admission, Protocol, Session, Stop};

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
    /// Time allowed for the request body (`http.readTimeout`).
    pub read_timeout: Duration,
}

/// A response as handlers build it.
pub type Resp = Response<Full<Bytes>>;

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
        let route = api::request(req.method(), req.uri(), req.headers())?;
        let (op, params) = match route {
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
            Route::Call(op, params) => (op, params),
        };
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

/// The canned answer to a connection over the limit: 503 and `Connection: close`.
fn busy_response(limits: &Limits) -> Bytes {
    let e = Error::new(
        ErrorKind::Unavailable,
        codes::TOO_MANY_CONNECTIONS,
        format!(
            "too many open connections ({}); retry shortly",
            limits.setting
        ),
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

/// What answers the requests of an HTTP/1 listener: the Dapr API, the admin listener.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(&self, req: Request<Incoming>) -> impl Future<Output = Resp> + Send;
}

impl Handler for HttpApi {
    fn handle(&self, req: Request<Incoming>) -> impl Future<Output = Resp> + Send {
        HttpApi::handle(self, req)
    }
}

/// An HTTP/1 listener's connection limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; beyond it, a canned 503 and close.
    pub max_connections: usize,
    /// Time allowed for a request's headers (and an idle keep-alive connection), and for a write
    /// the client does not read.
    pub read_timeout: Duration,
    /// The setting that raises `max_connections`, named in the 503.
    pub setting: &'static str,
}

/// An HTTP/1 listener on the listener skeleton.
struct Server<H> {
    name: &'static str,
    handler: Arc<H>,
    builder: hyper::server::conn::http1::Builder,
    slots: Arc<Semaphore>,
    refusing: Arc<Semaphore>,
    busy: Bytes,
    limits: Limits,
}

impl<H: Handler> Protocol for Server<H> {
    type Conn = TcpStream;
    type Permit = OwnedSemaphorePermit;

    fn name(&self) -> &'static str {
        self.name
    }

    fn admit(&self, stream: TcpStream, peer: SocketAddr) -> Admission<TcpStream, Self::Permit> {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Admission::Accept(stream, slot);
        }
        debug!(%peer, listener = self.name, limit = self.limits.max_connections, "connection refused: connection limit reached");
        match self.refusing.clone().try_acquire_owned() {
            Ok(r) => Admission::Refuse(Some(Box::pin(refuse(stream, self.busy.clone(), r)))),
            Err(_) => Admission::Refuse(None),
        }
    }

    async fn handshake(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        slot: Self::Permit,
        stop: Stop,
    ) -> Option<Session> {
        let _ = stream.set_nodelay(true);
        let handler = self.handler.clone();
        let svc = service_fn(move |req| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler.handle(req).await) }
        });
        let io = TokioIo::new(stall::StallGuard::new(stream, self.limits.read_timeout));
        let conn = self.builder.serve_connection(io, svc);
        Some(Box::pin(async move {
            let _slot = slot;
            let ended = listener::until_stopped(conn, stop, |c| c.graceful_shutdown()).await;
            if let Err(e) = ended {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        }))
    }
}

/// Serves `handler` on `listener` until `stop` turns true, then drains for at most `drain`.
pub async fn serve<H: Handler>(
    name: &'static str,
    listener: TcpListener,
    handler: Arc<H>,
    limits: Limits,
    stop: Stop,
    drain: Duration,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    // hyper runs this timer for every request's headers, including the wait for the next request
    // on a keep-alive connection, so an idle connection is closed after it too.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout);
    let server = Server {
        name,
        handler,
        builder,
        slots: Arc::new(Semaphore::new(limits.max_connections)),
        refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
        busy: busy_response(&limits),
        limits,
    };
    listener::serve(listener, Arc::new(server), stop, drain).await;
    info!(listener = name, "stopped");
}
