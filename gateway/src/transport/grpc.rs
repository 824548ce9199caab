//! The gRPC transport: Dapr's `dapr.proto.runtime.v1.Dapr` service, as daprd serves it on
//! `--dapr-grpc-port`.
//!
//! It owns the listener (hyper's HTTP/2 server on the listener skeleton, with its connection
//! limit, on a socket the caller bound), the `dapr-api-token` check on request metadata, and the
//! one map from [`ErrorKind`] to gRPC status codes ([`status`]), with Dapr's
//! `google.rpc.ErrorInfo` detail so SDKs read the `errorCode`. Each RPC is a thin adapter in
//! [`dapr`]: request message → [`Call`](crate::Call) → the one request path → reply message. RPCs
//! edgecar does not serve answer `UNIMPLEMENTED` (the generated default stubs), which SDK
//! fallbacks rely on. [`app`] is the other direction: the
//! app's `AppCallback` service, for `--app-protocol grpc`.

pub mod app;
pub mod dapr;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use prost::Message;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Code;
use tracing::{debug, info, warn};

use crate::error::{Error, ErrorKind};
use crate::runtime::Runtime;
use crate::transport::listener::{self, Admission, Protocol, Session, Stop};

/// The code generated from Dapr's protos (pinned from dapr/dapr v1.18.3 in `gateway/proto`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    /// `dapr.proto.common.v1`.
    pub mod common {
        /// Version 1.
        pub mod v1 {
            tonic::include_proto!("dapr.proto.common.v1");
        }
    }
    /// `dapr.proto.runtime.v1`.
    pub mod runtime {
        /// Version 1.
        pub mod v1 {
            tonic::include_proto!("dapr.proto.runtime.v1");
        }
    }
}

/// `google.rpc.ErrorInfo`, the detail daprd attaches to its errors (reason = Dapr's errorCode).
#[derive(Clone, PartialEq, prost::Message)]
struct ErrorInfo {
    #[prost(string, tag = "1")]
    reason: String,
    #[prost(string, tag = "2")]
    domain: String,
    #[prost(map = "string, string", tag = "3")]
    metadata: std::collections::HashMap<String, String>,
}

/// `google.rpc.Status`, carried in the `grpc-status-details-bin` trailer.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// The gRPC code for an error kind: the only place this mapping lives (HTTP's is `api::status`).
pub fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::BadRequest => Code::InvalidArgument,
        ErrorKind::Unauthorized => Code::Unauthenticated,
        ErrorKind::Forbidden => Code::PermissionDenied,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::Conflict => Code::Aborted,
        ErrorKind::TooLarge | ErrorKind::QueueFull | ErrorKind::InsufficientStorage => {
            Code::ResourceExhausted
        }
        ErrorKind::RequestTimeout => Code::DeadlineExceeded,
        ErrorKind::Upstream | ErrorKind::Internal => Code::Internal,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Timeout => Code::DeadlineExceeded,
        ErrorKind::NotImplemented => Code::Unimplemented,
    }
}

/// An [`Error`] as a gRPC status: the code from [`code`], the message as daprd words it
/// (`errorCode: message`), and an `ErrorInfo` detail whose reason is the errorCode.
pub fn status(e: &Error) -> tonic::Status {
    let code = code(e.kind);
    let info = ErrorInfo {
        reason: e.code.to_owned(),
        domain: "dapr.io".to_owned(),
        metadata: Default::default(),
    };
    let details = RpcStatus {
        code: code as i32,
        message: e.message.clone(),
        details: vec![prost_types::Any {
            type_url: "type.googleapis.com/google.rpc.ErrorInfo".to_owned(),
            value: info.encode_to_vec(),
        }],
    };
    tonic::Status::with_details(
        code,
        e.message.clone(),
        bytes::Bytes::from(details.encode_to_vec()),
    )
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

/// Serves the Dapr gRPC API on `listener` until `stop` turns true; in-flight calls then get
/// `drain` to finish. At most `max_connections` app connections are served at once (the
/// `http.maxConnections` setting, counted per API); beyond it a connection is closed at once.
pub async fn serve(
    listener: TcpListener,
    runtime: Arc<Runtime>,
    api_token: Option<String>,
    max_connections: usize,
    stop: Stop,
    drain: Duration,
) {
    let svc = dapr::DaprApi::new(runtime, stop.clone());
    let check = move |req: tonic::Request<()>| -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(want) = &api_token {
            let given = req.metadata().get("dapr-api-token").map(|v| v.as_bytes());
            if !given.is_some_and(|g| token_matches(g, want.as_bytes())) {
                return Err(tonic::Status::unauthenticated(
                    "authentication error: invalid api token",
                ));
            }
        }
        Ok(req)
    };
    let service = tonic::service::interceptor::InterceptedService::new(
        proto::runtime::v1::dapr_server::DaprServer::new(svc).max_decoding_message_size(16 << 20),
        check,
    );
    let api = Api {
        service: TowerToHyperService::new(service),
        builder: hyper::server::conn::http2::Builder::new(TokioExecutor::new()),
        slots: Arc::new(Semaphore::new(max_connections)),
        max_connections,
    };
    listener::serve(listener, Arc::new(api), stop, drain).await;
    info!(listener = "grpc", "stopped");
}

/// The Dapr gRPC API on the listener skeleton: one HTTP/2 connection per app channel.
struct Api<S> {
    service: S,
    builder: hyper::server::conn::http2::Builder<TokioExecutor>,
    slots: Arc<Semaphore>,
    max_connections: usize,
}

impl<S, B> Protocol for Api<S>
where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Conn = TcpStream;
    type Permit = OwnedSemaphorePermit;

    fn name(&self) -> &'static str {
        "grpc"
    }

    fn admit(&self, stream: TcpStream, peer: SocketAddr) -> Admission<TcpStream, Self::Permit> {
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => Admission::Accept(stream, slot),
            Err(_) => {
                warn!(%peer, limit = self.max_connections, "gRPC connection refused: http.maxConnections reached");
                Admission::Refuse(None)
            }
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
        let conn = self
            .builder
            .serve_connection(TokioIo::new(stream), self.service.clone());
        Some(Box::pin(async move {
            let _slot = slot;
            let ended = listener::until_stopped(conn, stop, |c| c.graceful_shutdown()).await;
            if let Err(e) = ended {
                debug!(%peer, error = %e, "gRPC connection ended with an error");
            }
        }))
    }
}
