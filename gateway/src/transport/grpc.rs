//! The gRPC transport: Dapr's `dapr.proto.runtime.v1.Dapr` service, as daprd serves it on
//! `--dapr-grpc-port`.
//!
//! It owns the listener (tonic's HTTP/2 server on a socket the caller bound), the
//! `dapr-api-token` check on request metadata, and the one map from [`ErrorKind`] to gRPC status
//! codes ([`status`]), with Dapr's `google.rpc.ErrorInfo` detail so SDKs read the `errorCode`.
//! Each RPC is a thin adapter in [`dapr`]: request message → [`Call`](crate::Call) → the one
//! request path → reply message. RPCs edgecar does not serve answer `UNIMPLEMENTED` (the
//! generated default stubs), which SDK fallbacks rely on. [`app`] is the other direction: the
//! app's `AppCallback` service, for `--app-protocol grpc`.

pub mod app;
pub mod dapr;

use std::sync::Arc;

use prost::Message;
use tokio::net::TcpListener;
use tonic::Code;
use tracing::warn;

use crate::error::{Error, ErrorKind};
use crate::runtime::Runtime;

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

/// Serves the Dapr gRPC API on `listener` until `shutdown` resolves; in-flight calls finish
/// within `drain`.
pub async fn serve(
    listener: TcpListener,
    runtime: Arc<Runtime>,
    api_token: Option<String>,
    stop: tokio::sync::watch::Receiver<bool>,
    drain: std::time::Duration,
) {
    let mut stopping = stop.clone();
    let shutdown = async move {
        let _ = stopping.wait_for(|s| *s).await;
    };
    let svc = dapr::DaprApi::new(runtime, stop);
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
    let server = tonic::service::interceptor::InterceptedService::new(
        proto::runtime::v1::dapr_server::DaprServer::new(svc).max_decoding_message_size(16 << 20),
        check,
    );
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tonic::transport::Server::builder().serve_with_incoming_shutdown(
        server,
        incoming,
        async move {
            shutdown.await;
            let _ = stopped_tx.send(());
        },
    );
    tokio::pin!(serving);
    tokio::select! {
        r = &mut serving => {
            if let Err(e) = r {
                warn!(error = %e, "gRPC API stopped with an error");
            }
        }
        _ = async {
            let _ = stopped_rx.await;
            tokio::time::sleep(drain).await;
        } => warn!(timeout = ?drain, "gRPC drain timeout passed; closing remaining streams"),
    }
}
