//! `type: builtin` offers: capabilities compiled into edgecar, useful on a gateway with nothing
//! else installed. The capability method path is the builtin's *operation*.
//!
//! | builtin | operations | input → output |
//! | --- | --- | --- |
//! | `aggregate` | `` (empty), `summary` | sensor readings → count, sum, min, max, mean, stddev, p50/p90/p99, optionally per group ([`aggregate`]) |
//! | `json-validate` | `` (empty), `validate` | `{"schema", "document"}` → `{"valid", "errors"}` (a documented subset of JSON Schema 2020-12, [`json_validate`]) |
//! | `thumbnail` | `` (empty), `resize` | a PNG/JPEG body → the image shrunk to fit `?width=&height=` (`thumbnail` module; cargo feature `thumbnail`, on by default) |
//! | `echo` | any | the request body back, same content type (smoke tests, wiring checks) |
//!
//! Bad input is the caller's fault: a 400 with `{"errorCode": "ERR_MALFORMED_REQUEST", ...}`, which
//! the engine passes back without falling back. An unknown operation is a 404
//! (`ERR_CAPABILITY_METHOD_NOT_FOUND`). Inputs over 16 KiB are processed on the blocking pool so a
//! large batch cannot stall the runtime.

pub(crate) mod aggregate;
pub(crate) mod json_validate;
#[cfg(feature = "thumbnail")]
pub(crate) mod thumbnail;

use async_trait::async_trait;
use bytes::Bytes;
use http::StatusCode;
use serde_json::json;

use crate::offer::{Offer, OfferRequest, UpstreamError, UpstreamReply};

/// Names accepted in `builtin:`.
#[cfg(feature = "thumbnail")]
pub(crate) const NAMES: &[&str] = &["aggregate", "echo", "json-validate", "thumbnail"];
/// Names accepted in `builtin:`.
#[cfg(not(feature = "thumbnail"))]
pub(crate) const NAMES: &[&str] = &["aggregate", "echo", "json-validate"];

/// Inputs above this size are handled on the blocking pool.
const INLINE_LIMIT: usize = 16 * 1024;

/// A builtin's entry point: operation, request → reply.
type Handler = fn(&str, &OfferRequest) -> UpstreamReply;

/// One `builtin` offer.
pub(crate) struct BuiltinOffer {
    /// Which builtin.
    name: &'static str,
    /// Its entry point.
    handler: Handler,
}

impl BuiltinOffer {
    /// The builtin called `name`.
    pub(crate) fn new(name: &str) -> Result<Self, String> {
        let (name, handler): (&'static str, Handler) = match name {
            "aggregate" => ("aggregate", aggregate::handle),
            "echo" => ("echo", echo),
            "json-validate" => ("json-validate", json_validate::handle),
            #[cfg(feature = "thumbnail")]
            "thumbnail" => ("thumbnail", thumbnail::handle),
            other => return Err(format!("unknown builtin {other:?}")),
        };
        Ok(Self { name, handler })
    }
}

#[async_trait]
impl Offer for BuiltinOffer {
    async fn call(&self, req: &OfferRequest) -> Result<UpstreamReply, UpstreamError> {
        let handler = self.handler;
        let op = req.method.trim_matches('/').to_owned();
        if req.body.len() <= INLINE_LIMIT {
            return Ok(handler(&op, req));
        }
        let req = req.clone();
        tokio::task::spawn_blocking(move || handler(&op, &req))
            .await
            .map_err(|e| UpstreamError::Other(format!("builtin {} panicked: {e}", self.name)))
    }

    fn target(&self) -> String {
        self.name.to_owned()
    }
}

/// A Dapr-style error reply.
pub(crate) fn error_reply(
    status: StatusCode,
    code: &str,
    message: impl Into<String>,
) -> UpstreamReply {
    UpstreamReply::json(
        status,
        &json!({ "errorCode": code, "message": message.into() }),
    )
}

/// 400 for input the builtin cannot use.
pub(crate) fn bad_input(message: impl Into<String>) -> UpstreamReply {
    error_reply(StatusCode::BAD_REQUEST, "ERR_MALFORMED_REQUEST", message)
}

/// 404 for an operation the builtin does not have.
pub(crate) fn unknown_operation(builtin: &str, op: &str, known: &str) -> UpstreamReply {
    error_reply(
        StatusCode::NOT_FOUND,
        "ERR_CAPABILITY_METHOD_NOT_FOUND",
        format!("builtin {builtin} has no operation {op:?} (operations: {known})"),
    )
}

fn echo(_op: &str, req: &OfferRequest) -> UpstreamReply {
    let mut reply = UpstreamReply::new(StatusCode::OK, req.body.clone());
    let content_type = req
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map_or_else(|| "application/octet-stream".to_owned(), |(_, v)| v.clone());
    reply.headers.push(("content-type".into(), content_type));
    reply
}

/// Parses a JSON body or produces the 400 reply.
pub(crate) fn json_body(body: &Bytes) -> Result<serde_json::Value, UpstreamReply> {
    if body.is_empty() {
        return Err(bad_input("request body is empty; expected a JSON document"));
    }
    serde_json::from_slice(body).map_err(|e| bad_input(format!("request body is not JSON: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use http::Method;

    use super::*;

    /// A request for builtin unit tests.
    pub(crate) fn request(op: &str, body: &[u8]) -> OfferRequest {
        OfferRequest {
            capability: "test".into(),
            method: op.into(),
            http_method: Method::POST,
            query: None,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::copy_from_slice(body),
        }
    }

    #[tokio::test]
    async fn echo_and_large_inputs_on_the_blocking_pool() {
        let offer = BuiltinOffer::new("echo").unwrap();
        let big = vec![b'x'; INLINE_LIMIT * 2];
        let reply = offer.call(&request("", &big)).await.unwrap();
        assert_eq!(reply.body.len(), big.len());
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert!(BuiltinOffer::new("resize-video").is_err());
    }
}
