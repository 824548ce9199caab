//! The QUIC device protocol's bytes (docs/device-protocol.md#quic), as pure functions: no
//! streams, no sockets, so every decoder of outside bytes is unit-tested and fuzzable.
//!
//! Every stream, whichever side opens it, carries one **header frame** and then the **body**:
//!
//! ```text
//! frame = length (u32, big-endian) || that many bytes of JSON (an object)
//! stream = frame || body bytes until the stream's FIN (raw, never base64)
//! ```
//!
//! A device's request carries a [`Request`] header, its answer a [`Reply`] header; what the
//! gateway opens (commands, subscribed events) carries a [`Push`] header and is answered with a
//! [`Reply`] header. The connection's close codes are in [`close`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The ALPN protocol of device connections.
pub const DEVICE_ALPN: &[u8] = b"edgecar-device/1";

/// Bytes of a frame's length prefix.
pub const PREFIX: usize = 4;

/// QUIC application close codes (`CONNECTION_CLOSE` with an application error code). The reason
/// phrase says more, in words.
pub mod close {
    /// The device or the gateway is done (a normal end).
    pub const DONE: u32 = 0x0;
    /// Unknown device, wrong password, or a client certificate naming no registered device.
    /// The same code for all of them, so that device ids cannot be probed.
    pub const UNAUTHORIZED: u32 = 0x1;
    /// The first stream was not an `auth` request, or its header could not be read.
    pub const PROTOCOL: u32 = 0x2;
    /// The handshake and authentication took longer than `quic.handshakeTimeout`.
    pub const AUTH_TIMEOUT: u32 = 0x3;
    /// Too many connections: for this device (`quic.maxConnectionsPerDevice`) or in all.
    pub const TOO_MANY_CONNECTIONS: u32 = 0x4;
    /// The device was removed from the registry, or its password replaced.
    pub const REVOKED: u32 = 0x5;
    /// The gateway is shutting down.
    pub const SHUTTING_DOWN: u32 = 0x6;
}

/// Why a frame cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The announced length is beyond the limit; the frame is not read.
    #[error("a header of {len} bytes is larger than the limit of {max} bytes (quic.maxHeaderSize)")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An empty frame (length 0).
    #[error("an empty header frame")]
    Empty,
    /// The frame is not the JSON object expected.
    #[error("the header is not valid: {0}")]
    Invalid(String),
}

/// A device's request header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// The operation (`state.get`, `telemetry`, `auth`, ...).
    pub op: String,
    /// Its parameters, as strings (`metadata.<name>` become request metadata).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
    /// W3C trace context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The device's id for this request, echoed in the reply (1 to 64 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Media type of the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Headers passed to apps and capabilities (`invoke`, `capability`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// A reply header: to a device's request, or the device's answer to a [`Push`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reply {
    /// The HTTP status the Dapr HTTP API would answer with (2xx is success).
    pub status: u16,
    /// Reply metadata (`etag`, `x-edgecar-offer`, ...), lower-case names.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    /// Media type of the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The request's `id`, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// What the gateway sends on a stream it opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Push {
    /// A command from an app (live, or from the mailbox).
    #[serde(rename_all = "camelCase")]
    Command {
        /// The command's id (a mailbox command's id; a device should recognise a repeat).
        id: String,
        /// The method path with its query, with a leading `/` (`/led/on`).
        method: String,
        /// The app's HTTP verb.
        verb: String,
        /// Media type of the body.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content_type: Option<String>,
        /// W3C trace context.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traceparent: Option<String>,
    },
    /// An event of a pub/sub topic the device subscribed to.
    #[serde(rename_all = "camelCase")]
    Event {
        /// The pub/sub component.
        pubsub: String,
        /// The topic.
        topic: String,
        /// Media type of the body.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content_type: Option<String>,
    },
}

/// A header frame: the length prefix and the JSON.
pub fn encode<T: Serialize>(header: &T) -> Vec<u8> {
    let json = serde_json::to_vec(header).unwrap_or_else(|_| b"{}".to_vec());
    let len = u32::try_from(json.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(PREFIX + json.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&json);
    out
}

/// The length a prefix announces, if within `max`.
pub fn length(prefix: [u8; PREFIX], max: usize) -> Result<usize, FrameError> {
    let len = usize::try_from(u32::from_be_bytes(prefix)).unwrap_or(usize::MAX);
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

fn decode<'a, T: Deserialize<'a>>(json: &'a [u8]) -> Result<T, FrameError> {
    serde_json::from_slice(json).map_err(|e| FrameError::Invalid(e.to_string()))
}

/// Reads a request header (the frame's bytes, without the prefix).
pub fn request(json: &[u8]) -> Result<Request, FrameError> {
    let r: Request = decode(json)?;
    if r.op.is_empty() {
        return Err(FrameError::Invalid("\"op\" must name an operation".into()));
    }
    if let Some(id) = &r.id
        && (id.is_empty() || id.len() > 64)
    {
        return Err(FrameError::Invalid(
            "\"id\" must have 1 to 64 characters".into(),
        ));
    }
    Ok(r)
}

/// Reads a reply header.
pub fn reply(json: &[u8]) -> Result<Reply, FrameError> {
    let r: Reply = decode(json)?;
    if !(100..600).contains(&r.status) {
        return Err(FrameError::Invalid(format!(
            "status {} is not from 100 to 599",
            r.status
        )));
    }
    Ok(r)
}

/// Reads a push header (what the gateway opens a stream with).
pub fn push(json: &[u8]) -> Result<Push, FrameError> {
    decode(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_header_round_trips_and_unknown_fields_are_ignored() {
        let r = Request {
            op: "state.get".into(),
            params: [("key".to_owned(), "temp".to_owned())].into(),
            id: Some("7".into()),
            ..Default::default()
        };
        let bytes = encode(&r);
        assert_eq!(&bytes[..4], &(bytes.len() as u32 - 4).to_be_bytes());
        assert_eq!(
            &bytes[4..],
            br#"{"op":"state.get","params":{"key":"temp"},"id":"7"}"#
        );
        assert_eq!(request(&bytes[4..]).unwrap(), r);
        let later = br#"{"op":"state.get","params":{"key":"k"},"future":[1,2]}"#;
        assert_eq!(request(later).unwrap().params["key"], "k");
    }

    #[test]
    fn malformed_headers_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"{",
            b"[]",
            b"null",
            b"{\"op\":\"\"}",
            b"{\"op\":7}",
            b"{\"op\":\"x\",\"params\":{\"a\":1}}",
            b"{\"op\":\"x\",\"id\":\"\"}",
            b"\xff\xfe",
        ] {
            assert!(request(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(request(deep.as_bytes()).is_err());
        assert!(reply(br#"{"status":99}"#).is_err());
        assert!(reply(br#"{"status":600}"#).is_err());
        assert!(push(br#"{"kind":"nope"}"#).is_err());
    }

    #[test]
    fn lengths_are_bounded_before_anything_is_read() {
        assert_eq!(length([0, 0, 0, 5], 4096), Ok(5));
        assert_eq!(length([0, 0, 0, 0], 4096), Err(FrameError::Empty));
        assert_eq!(
            length([0xff, 0xff, 0xff, 0xff], 4096),
            Err(FrameError::TooLarge {
                len: u32::MAX as usize,
                max: 4096
            })
        );
    }

    #[test]
    fn pushes_are_tagged_by_kind() {
        let p = Push::Command {
            id: "c1".into(),
            method: "/led/on".into(),
            verb: "POST".into(),
            content_type: None,
            traceparent: None,
        };
        let bytes = encode(&p);
        assert_eq!(
            &bytes[4..],
            br#"{"kind":"command","id":"c1","method":"/led/on","verb":"POST"}"#
        );
        assert_eq!(push(&bytes[4..]).unwrap(), p);
        let e = push(br#"{"kind":"event","pubsub":"pubsub","topic":"alerts"}"#).unwrap();
        assert!(matches!(e, Push::Event { .. }));
    }
}
