//! A device's request, whatever carried it: the operation it names in the table
//! ([`crate::ops`]), the device as the caller, and the device protocol's own rules, the same for
//! MQTT and QUIC so that a device notices no difference between them.
//!
//! - A data body (publish, telemetry) without a content type that is valid JSON is JSON: MQTT
//!   3.1.1 and most firmware cannot send a content type. Other bytes keep none; the pub/sub block
//!   then carries UTF-8 text as text and anything else as `data_base64`, byte for byte.
//! - Headers passed to an app or a capability are the request's own (MQTT 5 user properties, a
//!   QUIC header's `headers`) minus hop-by-hop names, plus its content type (default JSON).

use bytes::Bytes;

use crate::call::{Call, Caller, Params, Transport};
use crate::error::Error;
use crate::ops::{self, Args, Op};

/// What a transport read from a device's request besides its named arguments.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    /// The body's media type, if the transport carries one.
    pub content_type: Option<String>,
    /// W3C trace context.
    pub traceparent: Option<String>,
    /// The request's headers as the device sent them (MQTT 5 user properties).
    pub headers: Vec<(String, String)>,
}

/// The JSON type for a body that parses as JSON.
fn json_type(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .is_ok()
        .then(|| "application/json".to_owned())
}

/// The call a device's request makes: operation `op` (its name or a legacy one) reading `args`.
pub fn call(
    device: &str,
    transport: Transport,
    op: &str,
    mut args: Args,
    meta: Meta,
    body: Bytes,
) -> Result<Call, Error> {
    let caller = Caller::Device {
        id: device.to_owned(),
    };
    let Some(spec) = ops::lookup(op) else {
        return Err(ops::unknown(op, Some(&caller)));
    };
    let p = &mut args.params;
    p.transport = transport;
    p.traceparent = meta.traceparent;
    if spec.forwards_headers {
        p.headers = forwarded_headers(meta.headers, meta.content_type.as_deref());
    }
    p.content_type = match meta.content_type {
        None if spec.data_body => json_type(&body),
        ct => ct,
    };
    let (op, params) = spec.read(args)?;
    Ok(Call {
        caller,
        op,
        body,
        params,
    })
}

/// The call storing a device's telemetry reading ([`Op::Telemetry`]), built without the table's
/// lookup: it is most of what devices send.
pub fn telemetry(
    device: &str,
    transport: Transport,
    stream: String,
    body: Bytes,
    content_type: Option<String>,
    traceparent: Option<String>,
) -> Call {
    let content_type = content_type.or_else(|| json_type(&body));
    Call {
        caller: Caller::Device {
            id: device.to_owned(),
        },
        op: Op::Telemetry { stream },
        body,
        params: Params {
            content_type,
            traceparent,
            transport,
            ..Params::default()
        },
    }
}

/// Headers an app or capability sees from a device request, as an HTTP caller's would pass.
fn forwarded_headers(
    headers: Vec<(String, String)>,
    content_type: Option<&str>,
) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = headers
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .filter(|(k, _)| {
            crate::blocks::invoke::forwardable(k)
                && k != "content-type"
                && http::HeaderName::from_bytes(k.as_bytes()).is_ok()
        })
        .collect();
    h.push((
        "content-type".into(),
        content_type.unwrap_or("application/json").to_owned(),
    ));
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_body_without_a_type_is_json_only_where_the_body_is_data() {
        let publish = call(
            "d1",
            Transport::Mqtt,
            "publish",
            Args::new().with("topic", "t"),
            Meta::default(),
            Bytes::from_static(b"{\"a\":1}"),
        )
        .unwrap();
        assert_eq!(
            publish.params.content_type.as_deref(),
            Some("application/json")
        );
        let cbor = call(
            "d1",
            Transport::Quic,
            "pubsub.publish",
            Args::new().with("topic", "t"),
            Meta::default(),
            Bytes::from_static(&[0xa1, 0x61, 0x61, 0x01]),
        )
        .unwrap();
        assert_eq!(cbor.params.content_type, None);
        assert_eq!(cbor.params.transport, Transport::Quic);
        let t = telemetry(
            "d1",
            Transport::Mqtt,
            String::new(),
            Bytes::from_static(b"1"),
            None,
            None,
        );
        assert_eq!(t.params.content_type.as_deref(), Some("application/json"));
    }

    #[test]
    fn invocation_forwards_the_devices_headers() {
        let c = call(
            "d1",
            Transport::Mqtt,
            "invoke",
            Args::new().with("app", "a").with("method", "m"),
            Meta {
                content_type: Some("text/plain".into()),
                traceparent: None,
                headers: vec![
                    ("X-Trace".into(), "1".into()),
                    ("connection".into(), "close".into()),
                    ("bad header".into(), "x".into()),
                ],
            },
            Bytes::new(),
        )
        .unwrap();
        assert_eq!(
            c.params.headers,
            vec![
                ("x-trace".to_owned(), "1".to_owned()),
                ("content-type".to_owned(), "text/plain".to_owned())
            ]
        );
    }
}
