//! CloudEvents 1.0 envelopes exactly as Dapr builds them (components-contrib `pubsub/envelope.go`).
//!
//! An envelope is a map from attribute name to *raw* JSON text: serialising it gives sorted keys,
//! as Go's `json.Marshal` of a map does, and the event's `data` keeps its numbers and text exactly
//! as the publisher sent them (Dapr decodes with `UseNumber` for the same reason).
//!
//! - [`new_envelope`]: wraps published data (`data` for JSON and text, `data_base64` for
//!   `application/octet-stream` and for untyped data that is not UTF-8), with id, source (the app id), type `com.dapr.event.sent`,
//!   specversion 1.0, datacontenttype (default `text/plain`), time, topic, pubsubname and trace
//!   context.
//! - [`from_cloudevent`]: a body published as `application/cloudevents+json`, passed through with
//!   topic, pubsubname and trace context set and missing source/type/specversion/time filled.
//! - [`from_raw_payload`]: what a `rawPayload` subscription receives: the bytes as `data_base64`.
//! - [`apply_ttl`] and [`has_expired`]: the `expiration` attribute behind `ttlInSeconds`.
//! - [`attributes`]: an event read back for routing and expiry without ever failing on deeply
//!   nested `data` (which is forwarded as the publisher's bytes, never re-parsed).

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::value::RawValue;

use crate::clock::{parse_rfc3339_ms, rfc3339, write_rfc3339};

/// An envelope: attribute → raw JSON value.
pub type Envelope = BTreeMap<String, Box<RawValue>>;

/// `Content-Type` of a CloudEvent in structured mode.
pub const CLOUDEVENT_CONTENT_TYPE: &str = "application/cloudevents+json";
/// Dapr's event type for published events.
pub const DEFAULT_TYPE: &str = "com.dapr.event.sent";
/// Dapr's source when none is known.
pub const DEFAULT_SOURCE: &str = "Dapr";
/// Dapr's `datacontenttype` when the publisher gave none.
pub const DEFAULT_DATA_CONTENT_TYPE: &str = "text/plain";
/// The CloudEvents version Dapr speaks.
pub const SPEC_VERSION: &str = "1.0";

fn media_type(content_type: &str) -> String {
    let lower = content_type.to_ascii_lowercase();
    match lower.split_once(';') {
        Some((t, _)) => t.to_owned(),
        None => lower,
    }
}

/// `application/cloudevents+json` (parameters allowed), as Dapr tests it.
pub fn is_cloudevent(content_type: &str) -> bool {
    media_type(content_type) == CLOUDEVENT_CONTENT_TYPE
}

/// `application/json` (parameters allowed); other `+json` types are text to Dapr.
pub fn is_json(content_type: &str) -> bool {
    media_type(content_type) == "application/json"
}

/// `application/octet-stream`, the one type Dapr carries as `data_base64`.
pub fn is_binary(content_type: &str) -> bool {
    media_type(content_type) == "application/octet-stream"
}

/// `text/*` or `application/xml`: what Dapr's bulk publish accepts as a string event.
pub fn is_string(content_type: &str) -> bool {
    content_type.to_ascii_lowercase().starts_with("text/")
        || media_type(content_type) == "application/xml"
}

/// A JSON string as a raw value.
pub fn raw_string(s: &str) -> Box<RawValue> {
    // Serialising a &str cannot fail; the fallback keeps the type total without a panic path.
    serde_json::value::to_raw_value(s).unwrap_or_else(|_| empty_string())
}

fn empty_string() -> Box<RawValue> {
    RawValue::from_string("\"\"".to_owned()).unwrap_or_else(|_| Box::<RawValue>::default())
}

/// A random UUID v4. Event and trace ids need uniqueness, not secrecy, so they come from a
/// fast per-thread generator (seeded from the OS per process) instead of a system call each.
fn random_uuid() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid()
}

/// A fresh random id in the UUID v4 text form Dapr uses for event ids.
pub fn new_id() -> String {
    random_uuid().to_string()
}

/// The W3C `traceparent` of a new span: a child of `parent` when it is a valid traceparent (same
/// trace id and flags, new span id), else the root of a new, unsampled trace. Dapr records its
/// publish span this way and puts the span's context in the envelope.
pub fn child_traceparent(parent: Option<&str>) -> String {
    // W3C: an all-zero span or trace id is invalid.
    let span_id = fastrand::u64(1..);
    if let Some(p) = parent {
        let mut parts = p.trim().split('-');
        let (version, trace, _, flags) = (parts.next(), parts.next(), parts.next(), parts.next());
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        if let (Some(version), Some(trace), Some(flags)) = (version, trace, flags)
            && hex(version, 2)
            && version != "ff"
            && hex(trace, 32)
            && trace.bytes().any(|b| b != b'0')
            && hex(flags, 2)
        {
            return traceparent(trace, span_id, flags);
        }
    }
    let mut trace = [0u8; 32];
    hex(&mut trace, fastrand::u128(1..));
    traceparent(
        std::str::from_utf8(&trace).unwrap_or_default(),
        span_id,
        "00",
    )
}

/// Writes `v` as lower-case hex filling `out` (most significant digit first).
fn hex(out: &mut [u8], mut v: u128) {
    for b in out.iter_mut().rev() {
        *b = b"0123456789abcdef"[(v & 0xf) as usize];
        v >>= 4;
    }
}

/// `00-<trace>-<span>-<flags>` in one allocation.
fn traceparent(trace: &str, span_id: u64, flags: &str) -> String {
    let mut span = [0u8; 16];
    hex(&mut span, u128::from(span_id));
    let mut s = String::with_capacity(55);
    s.push_str("00-");
    s.push_str(trace);
    s.push('-');
    s.push_str(std::str::from_utf8(&span).unwrap_or_default());
    s.push('-');
    s.push_str(flags);
    s
}

/// What [`new_envelope`] needs besides the data. Borrowed: building an event allocates only
/// its bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attributes<'a> {
    /// `id`; a new UUID when empty.
    pub id: &'a str,
    /// `source`; `Dapr` when empty (the publish API passes the app id).
    pub source: &'a str,
    /// `type`; `com.dapr.event.sent` when empty.
    pub event_type: &'a str,
    /// `datacontenttype`; `text/plain` when empty.
    pub data_content_type: &'a str,
    /// `topic`.
    pub topic: &'a str,
    /// `pubsub`.
    pub pubsub: &'a str,
    /// `traceparent` (and `traceid`, its older name).
    pub traceparent: &'a str,
    /// `tracestate`.
    pub tracestate: &'a str,
    /// `subject` (`cloudevent.subject` metadata); absent when `None`.
    pub subject: Option<&'a str>,
    /// `expiration` in Unix seconds (from `ttlInSeconds`); absent when `None`.
    pub expires_at_secs: Option<u64>,
}

/// Appends `"name":` and a JSON string to `out`, with the separator when `out` already holds a
/// member.
fn member_str(out: &mut Vec<u8>, name: &str, value: &str) {
    member_name(out, name);
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// Appends `"name":` and a time as an RFC 3339 JSON string (nothing in it needs escaping).
fn member_time(out: &mut Vec<u8>, name: &str, unix_secs: u64) {
    member_name(out, name);
    out.push(b'"');
    write_rfc3339(out, unix_secs);
    out.push(b'"');
}

fn member_name(out: &mut Vec<u8>, name: &str) {
    if out.len() > 1 {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

/// Wraps published data in a new envelope, as Dapr's `NewCloudEventsEnvelope` does, and
/// serialises it: the same bytes [`to_bytes`] gives for the equivalent [`Envelope`] (keys in
/// byte order, as Go's `json.Marshal` writes a map; `data` verbatim when it is JSON), written
/// directly because every publish and every device reading takes this path.
pub fn new_envelope(attrs: &Attributes<'_>, data: &[u8], now_unix_ms: u64) -> Vec<u8> {
    fn or<'a>(s: &'a str, default: &'static str) -> &'a str {
        if s.is_empty() { default } else { s }
    }
    // Data without a type that is not text (CBOR from an MQTT 3.1.1 device, which cannot say
    // its content type) is binary: carried as `data_base64`, byte for byte, never as text with
    // its invalid bytes replaced.
    let untyped_binary = attrs.data_content_type.is_empty() && std::str::from_utf8(data).is_err();
    let content_type = if untyped_binary {
        "application/octet-stream"
    } else {
        or(attrs.data_content_type, DEFAULT_DATA_CONTENT_TYPE)
    };
    let mut out = Vec::with_capacity(data.len() + 400);
    out.push(b'{');
    if is_binary(content_type) {
        member_str(
            &mut out,
            "data_base64",
            &base64::engine::general_purpose::STANDARD.encode(data),
        );
    } else {
        // Invalid JSON under a JSON type is carried as a string, as Dapr does.
        let json = is_json(content_type)
            .then(|| serde_json::from_slice::<&RawValue>(data).ok())
            .flatten();
        match json {
            Some(raw) => {
                member_name(&mut out, "data");
                out.extend_from_slice(raw.get().as_bytes());
            }
            None => member_str(&mut out, "data", &String::from_utf8_lossy(data)),
        }
    }
    member_str(&mut out, "datacontenttype", content_type);
    if let Some(at) = attrs.expires_at_secs {
        member_time(&mut out, "expiration", at);
    }
    if attrs.id.is_empty() {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        member_str(
            &mut out,
            "id",
            random_uuid().hyphenated().encode_lower(&mut buf),
        );
    } else {
        member_str(&mut out, "id", attrs.id);
    }
    member_str(&mut out, "pubsubname", attrs.pubsub);
    member_str(&mut out, "source", or(attrs.source, DEFAULT_SOURCE));
    member_str(&mut out, "specversion", SPEC_VERSION);
    if let Some(subject) = attrs.subject {
        member_str(&mut out, "subject", subject);
    }
    member_time(&mut out, "time", now_unix_ms / 1000);
    member_str(&mut out, "topic", attrs.topic);
    member_str(&mut out, "traceid", attrs.traceparent);
    member_str(&mut out, "traceparent", attrs.traceparent);
    member_str(&mut out, "tracestate", attrs.tracestate);
    member_str(&mut out, "type", or(attrs.event_type, DEFAULT_TYPE));
    out.push(b'}');
    out
}

/// Takes a body published as `application/cloudevents+json`, as Dapr's `FromCloudEvent` does:
/// topic, pubsubname and trace context are set; source, type, specversion and time are filled
/// when missing; everything else passes through unchanged.
pub fn from_cloudevent(
    body: &[u8],
    topic: &str,
    pubsub: &str,
    traceparent: &str,
    tracestate: &str,
    now_unix_ms: u64,
) -> Result<Envelope, String> {
    let mut ce: Envelope = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not a JSON object (a CloudEvent): {e}"))?;
    let mut fill = |k: &str, v: &str| {
        let missing = ce.get(k).is_none_or(|v| v.get() == "null");
        if missing {
            ce.insert(k.to_owned(), raw_string(v));
        }
    };
    fill("time", &rfc3339(now_unix_ms / 1000));
    fill("source", DEFAULT_SOURCE);
    fill("type", DEFAULT_TYPE);
    fill("specversion", SPEC_VERSION);
    ce.insert("traceid".into(), raw_string(traceparent));
    ce.insert("traceparent".into(), raw_string(traceparent));
    ce.insert("tracestate".into(), raw_string(tracestate));
    ce.insert("topic".into(), raw_string(topic));
    ce.insert("pubsubname".into(), raw_string(pubsub));
    Ok(ce)
}

/// The envelope a `rawPayload` subscription receives for a message that is not a CloudEvent, as
/// Dapr's `FromRawPayload`: a new id, and the bytes as `data_base64` (their type is unknown).
pub fn from_raw_payload(data: &[u8], topic: &str, pubsub: &str) -> Envelope {
    let mut ce = Envelope::new();
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    ce.insert("id".into(), raw_string(&new_id()));
    ce.insert("specversion".into(), raw_string(SPEC_VERSION));
    ce.insert(
        "datacontenttype".into(),
        raw_string("application/octet-stream"),
    );
    ce.insert("source".into(), raw_string(DEFAULT_SOURCE));
    ce.insert("type".into(), raw_string(DEFAULT_TYPE));
    ce.insert("topic".into(), raw_string(topic));
    ce.insert("pubsubname".into(), raw_string(pubsub));
    ce.insert("data_base64".into(), raw_string(&b64));
    ce
}

/// Sets `expiration` to now + `ttl_secs`, as Dapr does for `ttlInSeconds` when the component
/// does not expire messages itself.
pub fn apply_ttl(ce: &mut Envelope, ttl_secs: u64, now_unix_ms: u64) {
    let at = (now_unix_ms / 1000).saturating_add(ttl_secs);
    ce.insert("expiration".into(), raw_string(&rfc3339(at)));
}

/// Whether an event's `expiration` has passed (an unreadable one never expires, as in Dapr).
pub fn has_expired(event: &serde_json::Value, now_unix_ms: u64) -> bool {
    event
        .get("expiration")
        .and_then(serde_json::Value::as_str)
        .filter(|s| !s.is_empty())
        .and_then(parse_rfc3339_ms)
        .is_some_and(|at| at < i128::from(now_unix_ms))
}

/// An event's attributes as JSON values, for routing rules and expiry, each attribute parsed on
/// its own: one nested too deep for `serde_json::Value` (128 levels, in practice `data`) reads as
/// `null` here, while the event itself is forwarded as its original bytes. An error when `bytes`
/// are not a JSON object (`is_data()` when they are JSON of another type).
pub fn attributes(bytes: &[u8]) -> Result<serde_json::Value, serde_json::Error> {
    let envelope: Envelope = serde_json::from_slice(bytes)?;
    Ok(serde_json::Value::Object(
        envelope
            .into_iter()
            .map(|(k, raw)| {
                let v = serde_json::from_str(raw.get()).unwrap_or(serde_json::Value::Null);
                (k, v)
            })
            .collect(),
    ))
}

/// Serialises an envelope (sorted keys, raw values verbatim).
pub fn to_bytes(ce: &Envelope) -> Vec<u8> {
    // A map of strings to already-valid JSON cannot fail to serialise.
    serde_json::to_vec(ce).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn value(ce: &Envelope) -> Value {
        serde_json::from_slice(&to_bytes(ce)).unwrap()
    }

    fn parsed(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn untyped_binary_data_is_carried_byte_for_byte() {
        let cbor = [0xa1, 0x61, 0x74, 0xf9, 0x4d, 0x60, 0xff, 0x00];
        let bytes = new_envelope(&attrs(""), &cbor, 0);
        let v = parsed(&bytes);
        assert_eq!(v["datacontenttype"], "application/octet-stream");
        let back = base64::engine::general_purpose::STANDARD
            .decode(v["data_base64"].as_str().unwrap())
            .unwrap();
        assert_eq!(back, cbor);
        assert!(v.get("data").is_none());
        // Untyped text stays text.
        let v = parsed(&new_envelope(&attrs(""), b"hello", 0));
        assert_eq!(
            (&v["datacontenttype"], &v["data"]),
            (&json!("text/plain"), &json!("hello"))
        );
    }

    #[test]
    fn attributes_survive_deeply_nested_data() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let event = format!(r#"{{"id":"e1","expiration":"","data":{deep}}}"#);
        let v = attributes(event.as_bytes()).unwrap();
        assert_eq!(v["id"], "e1");
        assert!(v["data"].is_null());
        assert!(attributes(b"[1]").unwrap_err().is_data());
        // A number beyond f64 (accepted at publish) does not make the event undeliverable.
        let v = attributes(br#"{"id":"e2","data":{"big":1e400}}"#).unwrap();
        assert_eq!((v["id"].as_str(), v["data"].is_null()), (Some("e2"), true));
        assert!(!attributes(b"{").unwrap_err().is_data());
    }

    fn attrs(ct: &str) -> Attributes<'_> {
        Attributes {
            source: "checkout",
            data_content_type: ct,
            topic: "orders",
            pubsub: "pubsub",
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ..Attributes::default()
        }
    }

    #[test]
    fn json_data_is_embedded_with_every_dapr_attribute() {
        let ce = new_envelope(
            &attrs("application/json"),
            br#" {"n": 12345678901234567890, "f": 1.10}"#,
            1_700_000_000_123,
        );
        let text = String::from_utf8(ce.clone()).unwrap();
        // Numbers keep their exact text; keys are sorted like Go's map marshalling.
        assert!(
            text.contains(r#""data":{"n": 12345678901234567890, "f": 1.10}"#),
            "{text}"
        );
        assert!(text.starts_with(r#"{"data":"#), "{text}");
        let v = parsed(&ce);
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["type"], "com.dapr.event.sent");
        assert_eq!(v["source"], "checkout");
        assert_eq!(v["datacontenttype"], "application/json");
        assert_eq!(v["topic"], "orders");
        assert_eq!(v["pubsubname"], "pubsub");
        assert_eq!(v["traceid"], v["traceparent"]);
        assert_eq!(v["tracestate"], "");
        assert_eq!(v["time"], "2023-11-14T22:13:20Z");
        let id = v["id"].as_str().unwrap();
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(id.matches('-').count(), 4);
    }

    #[test]
    fn text_binary_default_and_invalid_json_data() {
        let v = parsed(&new_envelope(&attrs(""), b"hello", 0));
        assert_eq!(
            (v["datacontenttype"].clone(), v["data"].clone()),
            (json!("text/plain"), json!("hello"))
        );
        let v = parsed(&new_envelope(
            &attrs("application/octet-stream"),
            &[0, 255, 1],
            0,
        ));
        assert_eq!(v["data_base64"], "AP8B");
        assert!(v.get("data").is_none());
        let v = parsed(&new_envelope(
            &attrs("application/json; charset=utf-8"),
            b"{not json",
            0,
        ));
        assert_eq!(v["data"], "{not json");
        let v = parsed(&new_envelope(&attrs("application/xml"), b"<a/>", 0));
        assert_eq!(v["data"], "<a/>");
    }

    #[test]
    fn a_published_cloudevent_passes_through_with_gaps_filled() {
        let body = br#"{"id":"my-id","source":"sensor-7","specversion":"1.0","type":"reading","data":{"t":21.5},"datacontenttype":"application/json","traceparent":"theirs"}"#;
        let v = value(&from_cloudevent(body, "t", "ps", "00-ab-cd-01", "k=v", 0).unwrap());
        assert_eq!(v["id"], "my-id");
        assert_eq!(v["source"], "sensor-7");
        assert_eq!(v["type"], "reading");
        assert_eq!(v["data"], json!({"t": 21.5}));
        assert_eq!(v["topic"], "t");
        assert_eq!(v["pubsubname"], "ps");
        assert_eq!(
            v["traceparent"], "00-ab-cd-01",
            "Dapr overwrites trace context"
        );
        assert_eq!(v["tracestate"], "k=v");
        assert_eq!(v["time"], "1970-01-01T00:00:00Z");
        let v = value(&from_cloudevent(br#"{"data":"x"}"#, "t", "ps", "", "", 0).unwrap());
        assert_eq!(v["source"], "Dapr");
        assert_eq!(v["type"], "com.dapr.event.sent");
        assert_eq!(v["specversion"], "1.0");
        assert!(from_cloudevent(b"[1]", "t", "ps", "", "", 0).is_err());
    }

    #[test]
    fn raw_payload_envelope_carries_base64() {
        let v = value(&from_raw_payload(b"raw!", "t", "ps"));
        assert_eq!(v["data_base64"], "cmF3IQ==");
        assert_eq!(v["datacontenttype"], "application/octet-stream");
        assert_eq!(v["source"], "Dapr");
    }

    #[test]
    fn ttl_sets_an_expiration_that_expires() {
        let v = parsed(&new_envelope(
            &Attributes {
                expires_at_secs: Some(1_000 + 10),
                ..attrs("text/plain")
            },
            b"x",
            1_000_000,
        ));
        assert_eq!(v["expiration"], "1970-01-01T00:16:50Z");
        let mut passed = from_cloudevent(br#"{"data":1}"#, "t", "ps", "", "", 0).unwrap();
        apply_ttl(&mut passed, 10, 1_000_000);
        assert_eq!(value(&passed)["expiration"], "1970-01-01T00:16:50Z");
        assert!(!has_expired(&v, 1_009_999));
        assert!(has_expired(&v, 1_010_001));
        assert!(!has_expired(&json!({"expiration": "soon"}), u64::MAX));
    }

    /// The envelope as a sorted map of raw values, the way the writer must serialise it.
    fn reference(attrs: &Attributes, data: &[u8], now_ms: u64) -> Vec<u8> {
        let ct = if attrs.data_content_type.is_empty() && std::str::from_utf8(data).is_err() {
            "application/octet-stream"
        } else if attrs.data_content_type.is_empty() {
            DEFAULT_DATA_CONTENT_TYPE
        } else {
            attrs.data_content_type
        };
        let mut ce = Envelope::new();
        if is_binary(ct) {
            let b64 = base64::engine::general_purpose::STANDARD.encode(data);
            ce.insert("data_base64".into(), raw_string(&b64));
        } else {
            let json = serde_json::from_slice::<Box<RawValue>>(data)
                .ok()
                .filter(|_| is_json(ct));
            let v = json.unwrap_or_else(|| raw_string(&String::from_utf8_lossy(data)));
            ce.insert("data".into(), v);
        }
        let mut put = |k: &str, v: &str| ce.insert(k.into(), raw_string(v));
        put("datacontenttype", ct);
        put("id", attrs.id);
        put("pubsubname", attrs.pubsub);
        put(
            "source",
            if attrs.source.is_empty() {
                DEFAULT_SOURCE
            } else {
                attrs.source
            },
        );
        put("specversion", SPEC_VERSION);
        put("time", &rfc3339(now_ms / 1000));
        put("topic", attrs.topic);
        put("traceid", attrs.traceparent);
        put("traceparent", attrs.traceparent);
        put("tracestate", attrs.tracestate);
        put(
            "type",
            if attrs.event_type.is_empty() {
                DEFAULT_TYPE
            } else {
                attrs.event_type
            },
        );
        if let Some(s) = attrs.subject {
            put("subject", s);
        }
        if let Some(at) = attrs.expires_at_secs {
            put("expiration", &rfc3339(at));
        }
        to_bytes(&ce)
    }

    #[test]
    fn the_envelope_writer_gives_the_sorted_map_bytes() {
        let datas: [&[u8]; 7] = [
            br#"{"t":21.5,"s":"\u00e9\n"}"#,
            b" [1, 2]\n",
            b"{broken",
            "caf\u{e9} \"quoted\"\t".as_bytes(),
            &[0, 159, 146, 150],
            b"",
            b"12",
        ];
        let types = [
            "application/json",
            "text/plain",
            "application/octet-stream",
            "",
            "application/JSON; charset=utf-8",
        ];
        for data in datas {
            for ct in types {
                for extra in [false, true] {
                    let pick = |s: &'static str| if extra { s } else { "" };
                    let a = Attributes {
                        id: "e-1",
                        source: pick("dev\"ice"),
                        event_type: pick("io.edgecar.telemetry"),
                        subject: extra.then_some("line3/temp"),
                        expires_at_secs: extra.then_some(1_700_000_060),
                        tracestate: pick("k=v"),
                        ..attrs(ct)
                    };
                    let got = new_envelope(&a, data, 1_700_000_000_999);
                    let want = reference(&a, data, 1_700_000_000_999);
                    assert_eq!(
                        String::from_utf8_lossy(&got),
                        String::from_utf8_lossy(&want),
                        "data {data:?}, type {ct:?}, extra {extra}"
                    );
                }
            }
        }
    }

    #[test]
    fn new_ids_are_uuid_v4_and_differ() {
        let a = uuid::Uuid::parse_str(&new_id()).unwrap();
        let b = uuid::Uuid::parse_str(&new_id()).unwrap();
        assert_eq!(a.get_version_num(), 4);
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
        assert_ne!(a, b);
        let v = parsed(&new_envelope(&attrs("text/plain"), b"x", 0));
        let id = uuid::Uuid::parse_str(v["id"].as_str().unwrap()).unwrap();
        assert_eq!(id.get_version_num(), 4);
    }

    #[test]
    fn traceparent_children_keep_the_trace() {
        let p = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let c = child_traceparent(Some(p));
        assert!(c.starts_with("00-0af7651916cd43dd8448eb211c80319c-"), "{c}");
        assert!(c.ends_with("-01"));
        assert_ne!(c, p);
        let fresh = child_traceparent(Some("garbage"));
        assert_eq!(fresh.len(), 55);
        assert!(fresh.ends_with("-00"));
    }
}
