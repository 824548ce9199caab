//! The device protocol (docs/device-protocol.md): which topic in a device's tree means what, how a
//! request becomes a [`Call`], and how a reply, an error or a command becomes a message.
//!
//! Decoding and encoding only: the JSON bodies are the HTTP API's, passed through untouched for
//! the building blocks to parse, and the errors are theirs. Everything a device can publish gets
//! exactly one answer: a reply, an error reply, or (for command replies) the app's waiting call.
//!
//! ```text
//! edgecar/v1/<id>/req/<op>/<rid>[?params]     device -> edgecar   request
//! edgecar/v1/<id>/res/<op>/<rid>/<status>     edgecar -> device   reply (MQTT 5: or its response topic)
//! edgecar/v1/<id>/cmd/<method...>/<rid>       edgecar -> device   command from an app
//! edgecar/v1/<id>/cmdres/<rid>[/<status>]     device -> edgecar   reply to a command
//! edgecar/v1/<id>/telemetry[/<stream>]        device -> edgecar   telemetry (persisted, then PUBACK)
//! edgecar/v1/<id>/sub/<pubsub>/<topic...>     edgecar -> device   events of subscribed pub/sub topics
//! ```

use std::borrow::Cow;

use bytes::Bytes;
use http::Method;

use super::codec::{Message, Properties};
use super::topics::{self, ROOT};
use crate::api;
use crate::blocks::devices::{Command, CommandReply};
use crate::call::{Call, Caller, Reply, Transport};
use crate::devices::link::DeviceMessage;
use crate::devices::request::{self, Meta};
use crate::error::{Error, ErrorKind, codes};
use crate::ops::{self, Args};

/// Longest request id accepted.
pub const MAX_RID: usize = 64;
/// Most reply headers copied into MQTT 5 user properties.
const MAX_META: usize = 16;

/// Where a reply goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo {
    /// The operation as the device named it (`-` if it named none). Borrowed for the names
    /// edgecar knows, so a telemetry reading allocates nothing for it.
    pub op: Cow<'static, str>,
    /// The request id (`-` if it gave none).
    pub rid: Cow<'static, str>,
    /// MQTT 5 response topic, already checked to be in the device's tree.
    pub response_topic: Option<String>,
    /// MQTT 5 correlation data, returned unchanged.
    pub correlation: Option<Bytes>,
}

/// What an in-tree publish from a device is.
#[derive(Debug)]
pub enum Inbound {
    /// A request for the request path.
    Request {
        /// The call.
        call: Box<Call>,
        /// Where its reply goes.
        reply_to: ReplyTo,
    },
    /// Telemetry: stored (durably) before the PUBACK; only a failure is answered with a message.
    Telemetry {
        /// The call storing the reading ([`Op::Telemetry`]).
        call: Box<Call>,
        /// Where an error reply goes.
        reply_to: ReplyTo,
    },
    /// A device's answer to a command.
    CommandReply {
        /// The command's request id.
        rid: String,
        /// The answer.
        reply: CommandReply,
    },
    /// Not something edgecar can act on: answered with this error.
    Invalid {
        /// The error.
        error: Error,
        /// Where the error reply goes.
        reply_to: ReplyTo,
    },
}

fn valid_rid(rid: &str) -> bool {
    !rid.is_empty() && rid.len() <= MAX_RID && rid != "-"
}

/// Reads an in-tree publish from `device`.
pub fn classify(device: &str, msg: &Message) -> Inbound {
    let rest = topics::in_tree(device, &msg.topic).unwrap_or_default();
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let mut reply_to = ReplyTo {
        op: Cow::Borrowed("-"),
        rid: Cow::Borrowed("-"),
        response_topic: None,
        correlation: msg.props.correlation_data.clone(),
    };
    // Telemetry first and without splitting the topic: it is most of what devices send.
    if let Some(stream) = path
        .strip_prefix("telemetry")
        .filter(|s| s.is_empty() || s.starts_with('/'))
    {
        reply_to.op = Cow::Borrowed("telemetry");
        let call = request::telemetry(
            device,
            Transport::Mqtt,
            stream.strip_prefix('/').unwrap_or_default().to_owned(),
            msg.payload.clone(),
            msg.props.content_type.clone(),
            msg.props.user("traceparent").map(str::to_owned),
        );
        return Inbound::Telemetry {
            call: Box::new(call),
            reply_to,
        };
    }
    let levels: Vec<&str> = path.split('/').collect();
    let invalid = |error: Error, reply_to: ReplyTo| Inbound::Invalid { error, reply_to };
    match levels[..] {
        ["req", ref more @ ..] => {
            if let Some(op) = more.first().filter(|o| !o.is_empty()) {
                reply_to.op = Cow::Owned((*op).to_owned());
            }
            if let Some(rid) = more.get(1).filter(|r| valid_rid(r)) {
                reply_to.rid = Cow::Owned((*rid).to_owned());
            }
            if let Some(rt) = &msg.props.response_topic {
                if topics::in_tree(device, rt).is_none() {
                    return invalid(
                        Error::new(
                            ErrorKind::Forbidden,
                            codes::PERMISSION_DENIED,
                            format!("the response topic must be inside {}", topics::tree(device)),
                        ),
                        reply_to,
                    );
                }
                reply_to.response_topic = Some(rt.clone());
            }
            if more.len() > 2 {
                return invalid(
                    Error::malformed(
                        "too many topic levels: a request is req/<op>/<request-id>[?params] \
                         (percent-encode '/' in parameters as %2F)",
                    ),
                    reply_to,
                );
            }
            if reply_to.op == "-" {
                return invalid(
                    Error::malformed(format!(
                        "no operation: publish to req/<op>/<request-id>; operations: {}",
                        ops::names_for(&Caller::Device {
                            id: device.to_owned()
                        })
                    )),
                    reply_to,
                );
            }
            // An MQTT 5 requester that names a response topic needs no id: the topic (and its
            // correlation data, if any) tell its replies apart.
            if reply_to.rid == "-" && reply_to.response_topic.is_none() {
                return invalid(
                    Error::malformed(format!(
                        "missing or invalid request id: publish to req/{}/<request-id> \
                         (1 to {MAX_RID} characters)",
                        reply_to.op
                    )),
                    reply_to,
                );
            }
            match request(device, &reply_to.op, query, msg) {
                Ok(call) => Inbound::Request {
                    call: Box::new(call),
                    reply_to,
                },
                Err(error) => invalid(error, reply_to),
            }
        }
        ["cmdres", rid, ref status @ ..] if valid_rid(rid) && status.len() <= 1 => {
            let status = match status.first().or(msg.props.user("status").as_ref()) {
                None => Some(200),
                Some(s) => s.parse::<u16>().ok().filter(|s| (100..600).contains(s)),
            };
            let Some(status) = status else {
                reply_to.op = Cow::Borrowed("cmdres");
                reply_to.rid = Cow::Owned(rid.to_owned());
                return invalid(
                    Error::malformed("a command reply's status must be a number from 100 to 599"),
                    reply_to,
                );
            };
            Inbound::CommandReply {
                rid: rid.to_owned(),
                reply: CommandReply {
                    status,
                    body: msg.payload.clone(),
                    content_type: msg.props.content_type.clone().or_else(|| {
                        serde_json::from_slice::<serde::de::IgnoredAny>(&msg.payload)
                            .is_ok()
                            .then(|| "application/json".to_owned())
                    }),
                },
            }
        }
        ["cmdres", ..] => {
            reply_to.op = Cow::Borrowed("cmdres");
            invalid(
                Error::malformed("a command reply goes to cmdres/<request-id>[/<status>]"),
                reply_to,
            )
        }
        [kind, ..] => {
            reply_to.op = match kind {
                "" => Cow::Borrowed("-"),
                kind => Cow::Owned(kind.to_owned()),
            };
            invalid(
                Error::new(
                    ErrorKind::NotFound,
                    codes::NOT_FOUND,
                    format!(
                        "{} is not a topic devices publish to: requests go to {}req/<op>/<request-id>, \
                         command replies to {}cmdres/<request-id>",
                        msg.topic,
                        topics::tree(device),
                        topics::tree(device)
                    ),
                ),
                reply_to,
            )
        }
        [] => invalid(Error::malformed("empty topic"), reply_to),
    }
}

/// Builds the call for a request: the operation and its parameters from the topic, the rest from
/// the MQTT 5 properties.
fn request(device: &str, op: &str, query: Option<&str>, msg: &Message) -> Result<Call, Error> {
    let mut args = Args::new();
    args.push_query(query)?;
    let meta = Meta {
        content_type: msg.props.content_type.clone(),
        traceparent: msg.props.user("traceparent").map(str::to_owned),
        headers: msg.props.user.clone(),
    };
    request::call(device, Transport::Mqtt, op, args, meta, msg.payload.clone())
}

/// Percent-encodes what may not appear in a topic level or a query value.
fn encode_param(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b));
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The message answering a request: `result` as the HTTP API would answer it (same body, same
/// status), on the device's response topic or `res/<op>/<rid>/<status>[?etag=...]`.
pub fn reply(device: &str, to: &ReplyTo, result: Result<Reply, Error>) -> Message {
    let (status, body, meta, content_type) = match result {
        Ok(r) if ops::lookup(&to.op).is_some_and(|s| s.name == "devices.subscribe") => {
            let body = with_delivery_topic(device, &r.body).unwrap_or(r.body);
            (r.status, body, r.meta, r.content_type.map(str::to_owned))
        }
        Ok(r) => (r.status, r.body, r.meta, r.content_type.map(str::to_owned)),
        Err(e) => (
            api::status(e.kind).as_u16(),
            Bytes::from(api::error_body(&e)),
            Vec::new(),
            Some("application/json".to_owned()),
        ),
    };
    let etag = meta
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("etag"))
        .map(|(_, v)| v.clone());
    let topic = match &to.response_topic {
        Some(t) => t.clone(),
        None => {
            let mut t = format!(
                "{ROOT}/{device}/res/{}/{}/{status}",
                level(&to.op),
                level(&to.rid)
            );
            // MQTT 3.1.1 has no properties: what a reply says besides its status and body rides
            // in the topic, as query parameters.
            let header = |name: &str| {
                meta.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.clone())
            };
            let params: Vec<String> = [
                ("etag", etag.clone()),
                ("offer", header("x-edgecar-offer")),
                ("cache", header("x-edgecar-cache")),
            ]
            .into_iter()
            .filter_map(|(k, v)| Some(format!("{k}={}", encode_param(&v?))))
            .collect();
            if !params.is_empty() {
                t.push('?');
                t.push_str(&params.join("&"));
            }
            t
        }
    };
    let mut user = vec![("status".to_owned(), status.to_string())];
    let content_type = content_type.or_else(|| {
        meta.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.clone())
    });
    user.extend(
        meta.into_iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("content-type"))
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .take(MAX_META),
    );
    Message {
        topic,
        payload: body,
        qos: 1,
        retain: false,
        props: Properties {
            response_topic: None,
            correlation_data: to.correlation.clone(),
            content_type,
            user,
            topic_alias: None,
        },
    }
}

/// A level of a reply topic built from what the device sent: wildcards and separators replaced,
/// so that a reply topic is always a valid name with exactly the documented levels.
fn level(s: &str) -> String {
    s.replace(['/', '+', '#', '\0'], "_")
}

/// The topic a device subscribes to for commands.
pub fn command_filter(device: &str) -> String {
    format!("{ROOT}/{device}/cmd/#")
}

/// The message delivering `cmd` to `device` as request `rid`: `cmd/<method path>/<rid>`; MQTT 5
/// clients also get a response topic, the request id as correlation data, and the verb, query and
/// trace context as user properties.
pub fn command_message(device: &str, rid: &str, cmd: &Command) -> Result<Message, String> {
    let (path, query) = match cmd.method.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (cmd.method.as_str(), None),
    };
    crate::devices::link::check_method(&cmd.method)?;
    let path = path.trim_start_matches('/');
    let topic = format!("{ROOT}/{device}/cmd/{path}/{rid}");
    let mut user = vec![("verb".to_owned(), cmd.verb.to_string())];
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        user.push(("query".into(), q.to_owned()));
    }
    if let Some(t) = &cmd.traceparent {
        user.push(("traceparent".into(), t.clone()));
    }
    Ok(Message {
        topic,
        payload: cmd.body.clone(),
        qos: 1,
        retain: false,
        props: Properties {
            response_topic: Some(format!("{ROOT}/{device}/cmdres/{rid}")),
            correlation_data: Some(Bytes::copy_from_slice(rid.as_bytes())),
            content_type: cmd.content_type.clone(),
            user,
            topic_alias: None,
        },
    })
}

/// The MQTT message that delivers a stored [`DeviceMessage`] to `device`: a mailbox command on
/// its command topic (the mailbox id as request id), an event on its subscription topic.
pub fn device_message(device: &str, msg: DeviceMessage) -> Result<Message, String> {
    match msg {
        DeviceMessage::Command {
            id,
            method,
            verb,
            content_type,
            traceparent,
            body,
        } => {
            let verb = Method::from_bytes(verb.as_bytes())
                .map_err(|_| format!("{verb:?} is not an HTTP verb"))?;
            let cmd = Command {
                method,
                verb,
                content_type,
                traceparent,
                body,
                mailbox_ttl: None,
            };
            command_message(device, &id, &cmd)
        }
        DeviceMessage::Event {
            pubsub,
            topic,
            content_type,
            body,
        } => {
            let mut m = Message::new(subscription_topic(device, &pubsub, &topic), body);
            m.props.content_type = content_type;
            Ok(m)
        }
    }
}

/// A `subscribe` reply (`{"pubsub","topic","created"}`) with the MQTT topic the events arrive on
/// (`deliveredTo`): where they arrive is this transport's business.
fn with_delivery_topic(device: &str, body: &[u8]) -> Option<Bytes> {
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    let pubsub = v.get("pubsub")?.as_str()?;
    let topic = v.get("topic")?.as_str()?;
    let at = subscription_topic(device, pubsub, topic);
    v.insert("deliveredTo".into(), at.into());
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

/// The topic a device receives a pub/sub topic's events on.
pub fn subscription_topic(device: &str, pubsub: &str, topic: &str) -> String {
    format!("{ROOT}/{device}/sub/{pubsub}/{topic}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{DEFAULT_PUBSUB, DEFAULT_STORE, Op};

    fn msg(topic: &str, payload: &str) -> Message {
        Message::new(topic.into(), Bytes::from(payload.to_owned()))
    }

    #[test]
    fn telemetry_and_publish_are_decoded() {
        match classify("d1", &msg("edgecar/v1/d1/telemetry/line3/temp", "21.5")) {
            Inbound::Telemetry { call, reply_to } => {
                assert_eq!(
                    call.op,
                    Op::Telemetry {
                        stream: "line3/temp".into()
                    }
                );
                assert_eq!(&call.body[..], b"21.5");
                assert_eq!(call.caller, Caller::Device { id: "d1".into() });
                assert_eq!(
                    call.params.content_type.as_deref(),
                    Some("application/json"),
                    "a JSON reading without a content type is JSON"
                );
                assert_eq!(reply_to.op, "telemetry");
            }
            other => panic!("{other:?}"),
        }
        match classify("d1", &msg("edgecar/v1/d1/telemetry", "warm")) {
            Inbound::Telemetry { call, .. } => {
                assert_eq!(call.op, Op::Telemetry { stream: "".into() });
                assert_eq!(call.params.content_type, None);
            }
            other => panic!("{other:?}"),
        }
        match classify("d1", &msg("edgecar/v1/d1/telemetry/a?x=1", "1")) {
            Inbound::Telemetry { call, .. } => {
                assert_eq!(call.op, Op::Telemetry { stream: "a".into() })
            }
            other => panic!("{other:?}"),
        }
        let (e, to) = error(classify("d1", &msg("edgecar/v1/d1/telemetryx", "1")));
        assert_eq!(
            (e.kind, &*to.op),
            (ErrorKind::NotFound, "telemetryx"),
            "only the telemetry level itself is telemetry"
        );
        let (c, _) = call(classify(
            "d1",
            &msg("edgecar/v1/d1/req/publish/7?topic=orders", "{}"),
        ));
        assert_eq!(
            c.op,
            Op::Publish {
                pubsub: DEFAULT_PUBSUB.into(),
                topic: "orders".into()
            }
        );
        assert_eq!(c.caller, Caller::Device { id: "d1".into() });
        let (e, _) = error(classify("d1", &msg("edgecar/v1/d1/req/publish/7", "{}")));
        assert_eq!(e.kind, ErrorKind::BadRequest, "publish needs a topic: {e}");
    }

    fn call(i: Inbound) -> (Call, ReplyTo) {
        match i {
            Inbound::Request { call, reply_to } => (*call, reply_to),
            other => panic!("{other:?}"),
        }
    }

    fn error(i: Inbound) -> (Error, ReplyTo) {
        match i {
            Inbound::Invalid { error, reply_to } => (error, reply_to),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn requests_become_calls_in_the_devices_namespace() {
        let (c, to) = call(classify(
            "d1",
            &msg(
                "edgecar/v1/d1/req/state.get/42?key=a%2Fb&store=s&metadata.x=1",
                "",
            ),
        ));
        assert_eq!(c.caller, Caller::Device { id: "d1".into() });
        assert_eq!(
            c.op,
            Op::StateGet {
                store: "s".into(),
                key: "a/b".into()
            }
        );
        assert_eq!(c.params.metadata["x"], "1");
        assert_eq!((&*to.op, &*to.rid), ("state.get", "42"));
        let (c, _) = call(classify(
            "d1",
            &msg(
                "edgecar/v1/d1/req/state.save/1",
                r#"[{"key":"k","value":1}]"#,
            ),
        ));
        assert_eq!(
            c.op,
            Op::StateSave {
                store: DEFAULT_STORE.into()
            }
        );
        assert_eq!(&c.body[..], br#"[{"key":"k","value":1}]"#);
        let (c, _) = call(classify(
            "d1",
            &msg(
                "edgecar/v1/d1/req/state.delete/2?key=k&etag=7&concurrency=first-write",
                "",
            ),
        ));
        assert_eq!(c.params.if_match.as_deref(), Some("7"));
        assert_eq!(c.params.options["concurrency"], "first-write");
        let (c, _) = call(classify(
            "d1",
            &msg(
                "edgecar/v1/d1/req/invoke/3?app=orders&method=v2%2Fnew&verb=put",
                "{}",
            ),
        ));
        assert_eq!(
            c.op,
            Op::Invoke {
                app_id: "orders".into(),
                method: "/v2/new".into(),
                verb: Method::PUT
            }
        );
        let (c, _) = call(classify(
            "d1",
            &msg("edgecar/v1/d1/req/capability/4?name=echo", "{}"),
        ));
        assert!(matches!(c.op, Op::Capability { ref name, .. } if name == "echo"));
    }

    #[test]
    fn every_malformed_request_gets_an_error_reply() {
        let cases = [
            (
                "edgecar/v1/d1/req/state.get",
                ErrorKind::BadRequest,
                "state.get",
                "-",
            ),
            ("edgecar/v1/d1/req", ErrorKind::BadRequest, "-", "-"),
            ("edgecar/v1/d1/req/nope/9", ErrorKind::NotFound, "nope", "9"),
            (
                "edgecar/v1/d1/req/state.get/9",
                ErrorKind::BadRequest,
                "state.get",
                "9",
            ),
            (
                "edgecar/v1/d1/req/state.get/9?key=%zz",
                ErrorKind::BadRequest,
                "state.get",
                "9",
            ),
            (
                "edgecar/v1/d1/req/state.get/9/x",
                ErrorKind::BadRequest,
                "state.get",
                "9",
            ),
            (
                "edgecar/v1/d1/req/subscribe/9",
                ErrorKind::BadRequest,
                "subscribe",
                "9",
            ),
            ("edgecar/v1/d1/res/x/1/200", ErrorKind::NotFound, "res", "-"),
            ("edgecar/v1/d1/cmdres", ErrorKind::BadRequest, "cmdres", "-"),
            (
                "edgecar/v1/d1/cmdres/r1/abc",
                ErrorKind::BadRequest,
                "cmdres",
                "r1",
            ),
        ];
        for (topic, kind, op, rid) in cases {
            let (e, to) = error(classify("d1", &msg(topic, "")));
            assert_eq!((e.kind, &*to.op, &*to.rid), (kind, op, rid), "{topic}");
            let r = reply("d1", &to, Err(e));
            assert!(topics::valid_name(&r.topic), "{}", r.topic);
            assert!(topics::in_tree("d1", &r.topic).is_some());
            let body: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
            assert!(body["errorCode"].as_str().unwrap().starts_with("ERR_"));
        }
        let long = format!("edgecar/v1/d1/req/state.get/{}?key=k", "r".repeat(65));
        assert_eq!(
            error(classify("d1", &msg(&long, ""))).0.kind,
            ErrorKind::BadRequest
        );
    }

    #[test]
    fn mqtt5_response_topic_and_correlation() {
        let mut m = msg("edgecar/v1/d1/req/state.get?key=k", "");
        m.props.response_topic = Some("edgecar/v1/d1/my/replies".into());
        m.props.correlation_data = Some(Bytes::from_static(b"\x01\x02"));
        let (_, to) = call(classify("d1", &m));
        let r = reply(
            "d1",
            &to,
            Ok(Reply::json("1").with_meta("ETag", "3".into())),
        );
        assert_eq!(r.topic, "edgecar/v1/d1/my/replies");
        assert_eq!(r.props.correlation_data.as_deref(), Some(&b"\x01\x02"[..]));
        assert_eq!(r.props.user("status"), Some("200"));
        assert_eq!(r.props.user("etag"), Some("3"));
        // A response topic in another tree is refused, and the refusal goes to the default topic.
        m.props.response_topic = Some("edgecar/v1/d2/res".into());
        let (e, to) = error(classify("d1", &m));
        assert_eq!(e.kind, ErrorKind::Forbidden);
        assert!(
            reply("d1", &to, Err(e))
                .topic
                .starts_with("edgecar/v1/d1/res/state.get/-/403")
        );
    }

    #[test]
    fn default_reply_topics_carry_status_and_etag() {
        let to = ReplyTo {
            op: "state.get".into(),
            rid: "7".into(),
            response_topic: None,
            correlation: None,
        };
        let r = reply(
            "d1",
            &to,
            Ok(Reply::json("1").with_meta("ETag", "a b".into())),
        );
        assert_eq!(r.topic, "edgecar/v1/d1/res/state.get/7/200?etag=a%20b");
        let r = reply("d1", &to, Ok(Reply::no_content()));
        assert_eq!(r.topic, "edgecar/v1/d1/res/state.get/7/204");
        assert!(r.payload.is_empty());
    }

    #[test]
    fn commands_and_their_replies() {
        let cmd = Command {
            method: "/led/on?level=3".into(),
            verb: Method::POST,
            content_type: Some("application/json".into()),
            traceparent: None,
            body: Bytes::from_static(b"{}"),
            mailbox_ttl: None,
        };
        let m = command_message("d1", "c9", &cmd).unwrap();
        assert_eq!(m.topic, "edgecar/v1/d1/cmd/led/on/c9");
        assert_eq!(
            m.props.response_topic.as_deref(),
            Some("edgecar/v1/d1/cmdres/c9")
        );
        assert_eq!(m.props.user("query"), Some("level=3"));
        assert!(
            command_message(
                "d1",
                "c9",
                &Command {
                    method: "/a+b".into(),
                    ..cmd.clone()
                }
            )
            .is_err()
        );
        match classify("d1", &msg("edgecar/v1/d1/cmdres/c9/404", "nope")) {
            Inbound::CommandReply { rid, reply } => {
                assert_eq!((rid.as_str(), reply.status), ("c9", 404));
                assert_eq!(reply.content_type, None, "not JSON");
            }
            other => panic!("{other:?}"),
        }
        match classify("d1", &msg("edgecar/v1/d1/cmdres/c9", "{\"ok\":true}")) {
            Inbound::CommandReply { reply, .. } => {
                assert_eq!(reply.status, 200);
                assert_eq!(reply.content_type.as_deref(), Some("application/json"));
            }
            other => panic!("{other:?}"),
        }
    }
}
