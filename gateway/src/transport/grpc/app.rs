//! The app's side of gRPC (`--app-protocol grpc`): edgecar calls the app's `AppCallback`
//! service, as daprd does, for invocations (`OnInvoke`), its subscriptions
//! (`ListTopicSubscriptions`), topic events (`OnTopicEvent`), batches for bulk subscriptions
//! (`OnBulkTopicEvent`, else `AppCallbackAlpha.OnBulkTopicEventAlpha1`), the input bindings it
//! wants (`ListInputBindings`), their events (`OnBindingEvent`), and `AppCallbackHealthCheck`
//! before subscribing.
//!
//! It implements the blocks' [`AppCallbacks`] with their neutral shapes (HTTP-style answers,
//! Dapr's JSON), so the invocation, pub/sub and bindings blocks stay free of gRPC. One lazily
//! connected HTTP/2 channel serves every call.

use std::collections::HashMap;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use tonic::transport::Channel;
use tracing::warn;

use super::proto::common::v1 as common;
use super::proto::runtime::v1 as rt;
use crate::blocks::invoke::{AppCallbacks, AppReply};

type Client = rt::app_callback_client::AppCallbackClient<Channel>;
type Alpha = rt::app_callback_alpha_client::AppCallbackAlphaClient<Channel>;

/// The local app's `AppCallback` service.
pub struct GrpcApp {
    client: Client,
    /// The same connection, for `AppCallbackHealthCheck` and `AppCallbackAlpha`.
    channel: Channel,
    /// The app answered `OnBulkTopicEvent` with `UNIMPLEMENTED`: batches go straight to
    /// `OnBulkTopicEventAlpha1` (daprd asks both every time; this saves a round trip and a
    /// warning per batch).
    alpha_bulk_only: std::sync::atomic::AtomicBool,
}

impl GrpcApp {
    /// A client for the app at `address:port`; it connects on first use and reconnects as needed.
    pub fn new(address: &str, port: u16) -> Result<GrpcApp, String> {
        let host = if address.contains(':') && !address.starts_with('[') {
            format!("[{address}]")
        } else {
            address.to_owned()
        };
        let endpoint = Channel::from_shared(format!("http://{host}:{port}"))
            .map_err(|e| format!("app address {host}:{port}: {e}"))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .tcp_nodelay(true);
        let channel = endpoint.connect_lazy();
        Ok(GrpcApp {
            client: Client::new(channel.clone()).max_decoding_message_size(16 << 20),
            channel,
            alpha_bulk_only: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

/// An app's gRPC error as the HTTP-style answer the blocks read; `Err` when nothing was
/// processed (the app is not there).
fn answer(status: tonic::Status) -> Result<AppReply, String> {
    let http = match status.code() {
        tonic::Code::Unavailable => return Err(format!("app unreachable: {}", status.message())),
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Ok(AppReply {
        status: http,
        headers: vec![("grpc-status".into(), (status.code() as i32).to_string())],
        body: Bytes::from(status.message().to_owned()),
    })
}

fn verb(m: &Method) -> common::http_extension::Verb {
    use common::http_extension::Verb;
    match *m {
        Method::GET => Verb::Get,
        Method::HEAD => Verb::Head,
        Method::PUT => Verb::Put,
        Method::DELETE => Verb::Delete,
        Method::CONNECT => Verb::Connect,
        Method::OPTIONS => Verb::Options,
        Method::TRACE => Verb::Trace,
        Method::PATCH => Verb::Patch,
        _ => Verb::Post,
    }
}

/// A CloudEvent field as a string.
fn field(ev: &Value, name: &str) -> String {
    ev.get(name)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// The event's data as bytes, as daprd hands it to gRPC apps (`GRPCEnvelopeFromSubscriptionMessage`
/// and `extractCloudEvent` in daprd's `pkg/runtime/pubsub/subscriptions.go`, shared by
/// `OnTopicEvent`, bulk entries and streaming subscriptions): `data_base64` decoded; for a
/// `datacontenttype` of `text/*` or `application/xml` a string as its text; for
/// `application/json` or `application/cloudevents+json` the JSON encoding (a JSON string keeps
/// its quotes); for any other type, nothing.
///
/// daprd retries a text-typed event whose `data` is not a string; edgecar hands over its JSON
/// instead of retrying an event that can never be delivered.
fn event_data(ev: &Value) -> Vec<u8> {
    use crate::blocks::pubsub::cloudevent::{is_cloudevent, is_json, is_string};
    if let Some(b64) = ev.get("data_base64").and_then(Value::as_str) {
        return base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_default();
    }
    let content_type = ev
        .get("datacontenttype")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match ev.get("data") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) if is_string(content_type) => s.clone().into_bytes(),
        Some(v) if is_string(content_type) => v.to_string().into_bytes(),
        Some(v) if is_json(content_type) || is_cloudevent(content_type) => go_json(v),
        Some(_) => Vec::new(),
    }
}

/// A JSON value encoded as Go's `json.Marshal` encodes it (daprd's encoder): keys sorted, as
/// serde_json's map keeps them, and `<`, `>`, `&`, U+2028 and U+2029 escaped. They can only occur
/// inside strings, so escaping the encoded text is safe.
fn go_json(v: &Value) -> Vec<u8> {
    let text = v.to_string();
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(ch)));
            }
            _ => out.push(ch),
        }
    }
    out.into_bytes()
}

/// A JSON value as a protobuf `Value`.
fn pb_value(v: &Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(pb_value).collect(),
        }),
        Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), pb_value(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A stored CloudEvent as `TopicEventRequest` for a subscription to `topic` of `pubsub`, as
/// daprd builds it for gRPC subscribers; `path` is the subscription rule's path as given: a
/// declarative route `/` is sent as `/`, a gRPC app's own default as `""`.
pub(super) fn topic_event_request(
    pubsub: &str,
    topic: &str,
    path: &str,
    event: &[u8],
) -> rt::TopicEventRequest {
    let ev: Value = serde_json::from_slice(event).unwrap_or(Value::Null);
    let ce = cloud_event(&ev);
    rt::TopicEventRequest {
        id: ce.id,
        source: ce.source,
        r#type: ce.r#type,
        spec_version: ce.spec_version,
        data_content_type: ce.data_content_type,
        data: ce.data,
        // The subscription's, as daprd sends them: an event forwarded to a dead-letter topic
        // still says `"topic": "<original>"` inside.
        topic: topic.to_owned(),
        pubsub_name: pubsub.to_owned(),
        path: path.to_owned(),
        extensions: ce.extensions,
    }
}

/// A CloudEvent's attributes, data and extensions, as daprd hands them to gRPC apps.
fn cloud_event(ev: &Value) -> rt::TopicEventCeRequest {
    // daprd leaves out only what the message carries in its own fields: `topic`, `pubsubname`,
    // `traceparent` and the rest stay among the extensions.
    let known = [
        "id",
        "source",
        "type",
        "specversion",
        "datacontenttype",
        "data",
        "data_base64",
    ];
    let extensions = ev.as_object().map(|o| prost_types::Struct {
        fields: o
            .iter()
            .filter(|(k, _)| !known.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), pb_value(v)))
            .collect(),
    });
    rt::TopicEventCeRequest {
        id: field(ev, "id"),
        source: field(ev, "source"),
        r#type: field(ev, "type"),
        spec_version: field(ev, "specversion"),
        data_content_type: field(ev, "datacontenttype"),
        data: event_data(ev),
        extensions,
    }
}

/// A string map from Dapr's JSON (`{"k": "v"}`); anything else is empty.
fn string_map(v: Option<&Value>) -> HashMap<String, String> {
    v.and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// A batch in the shape HTTP apps get it (Dapr's bulk envelope: `{"id", "entries": [{"entryId",
/// "event", "contentType", "metadata"}], "metadata", "pubsubname", "topic", "type"}`) as
/// `TopicEventBulkRequest`, as daprd builds it: a CloudEvent entry becomes `cloud_event`, a
/// raw-payload entry (its `event` the base64 of the message) becomes `bytes`.
fn bulk_request(path: &str, batch: &[u8]) -> Result<rt::TopicEventBulkRequest, String> {
    use rt::topic_event_bulk_request_entry::Event;
    let b: Value =
        serde_json::from_slice(batch).map_err(|e| format!("not a bulk envelope: {e}"))?;
    let entries = b
        .get("entries")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let content_type = field(e, "contentType");
            let event = match e.get("event") {
                Some(Value::String(b64)) => Event::Bytes(
                    base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .unwrap_or_else(|_| b64.clone().into_bytes()),
                ),
                Some(ev) => Event::CloudEvent(cloud_event(ev)),
                None => Event::Bytes(Vec::new()),
            };
            rt::TopicEventBulkRequestEntry {
                entry_id: field(e, "entryId"),
                event: Some(event),
                content_type,
                metadata: string_map(e.get("metadata")),
            }
        })
        .collect();
    Ok(rt::TopicEventBulkRequest {
        id: field(&b, "id"),
        entries,
        metadata: string_map(b.get("metadata")),
        topic: field(&b, "topic"),
        pubsub_name: field(&b, "pubsubname"),
        r#type: field(&b, "type"),
        path: path.to_owned(),
    })
}

/// The app's `TopicEventBulkResponse` as an HTTP app words it: `{"statuses": [{"entryId",
/// "status"}]}`.
fn bulk_answer(r: rt::TopicEventBulkResponse) -> AppReply {
    let statuses: Vec<Value> = r
        .statuses
        .iter()
        .map(|s| json!({"entryId": s.entry_id, "status": status_name(s.status)}))
        .collect();
    AppReply {
        status: StatusCode::OK,
        headers: Vec::new(),
        body: Bytes::from(json!({ "statuses": statuses }).to_string()),
    }
}

/// A `TopicEventResponseStatus` by its name; an unknown number is retried, as daprd does.
fn status_name(status: i32) -> &'static str {
    use rt::topic_event_response::TopicEventResponseStatus as S;
    match S::try_from(status) {
        Ok(S::Success) => "SUCCESS",
        Ok(S::Drop) => "DROP",
        Ok(S::Retry) | Err(_) => "RETRY",
    }
}

/// The app serves no handler for this event: daprd drops it (a gRPC `UNIMPLEMENTED` is its
/// HTTP 404), and so does the pub/sub block on a 404.
fn not_served(status: &tonic::Status) -> AppReply {
    AppReply {
        status: StatusCode::NOT_FOUND,
        headers: vec![("grpc-status".into(), (status.code() as i32).to_string())],
        body: Bytes::from(status.message().to_owned()),
    }
}

/// A `ListTopicSubscriptions` entry in the JSON shape of `GET /dapr/subscribe`.
fn subscription_json(s: rt::TopicSubscription) -> Value {
    let routes = s.routes.unwrap_or_default();
    let rules: Vec<Value> = routes
        .rules
        .iter()
        .map(|r| json!({"match": r.r#match, "path": r.path}))
        .collect();
    // Empty stays empty: the pub/sub block gives a gRPC app's subscription with neither rules nor
    // a default the app's default path `""`, and one with rules but no default none, as daprd.
    let default = routes.default;
    let mut v = json!({
        "pubsubname": s.pubsub_name,
        "topic": s.topic,
        "metadata": s.metadata,
    });
    // A gRPC app's events all go to OnTopicEvent; the path only travels in the event, as the
    // app gave it.
    if rules.is_empty() {
        v["route"] = Value::String(default);
    } else {
        v["routes"] = json!({"rules": rules, "default": default});
    }
    if !s.dead_letter_topic.is_empty() {
        v["deadLetterTopic"] = Value::String(s.dead_letter_topic);
    }
    if let Some(b) = s.bulk_subscribe {
        let mut bulk = json!({ "enabled": b.enabled });
        // Unset (0) means the default, as for daprd.
        if b.max_messages_count > 0 {
            bulk["maxMessagesCount"] = b.max_messages_count.into();
        }
        if b.max_await_duration_ms > 0 {
            bulk["maxAwaitDurationMs"] = b.max_await_duration_ms.into();
        }
        v["bulkSubscribe"] = bulk;
    }
    v
}

#[async_trait::async_trait]
impl AppCallbacks for GrpcApp {
    async fn invoke(
        &self,
        method: &str,
        verb_: &Method,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<AppReply, String> {
        let (path, query) = method.split_once('?').unwrap_or((method, ""));
        let content_type = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let req = common::InvokeRequest {
            method: path.trim_start_matches('/').to_owned(),
            data: Some(prost_types::Any {
                type_url: String::new(),
                value: body.to_vec(),
            }),
            content_type,
            http_extension: Some(common::HttpExtension {
                verb: verb(verb_) as i32,
                querystring: query.to_owned(),
            }),
        };
        match self.client.clone().on_invoke(req).await {
            Ok(r) => {
                let r = r.into_inner();
                let mut headers = Vec::new();
                if !r.content_type.is_empty() {
                    headers.push(("content-type".to_owned(), r.content_type));
                }
                Ok(AppReply {
                    status: StatusCode::OK,
                    headers,
                    body: Bytes::from(r.data.map(|d| d.value).unwrap_or_default()),
                })
            }
            Err(s) => answer(s),
        }
    }

    async fn healthy(&self) -> bool {
        type Health = rt::app_callback_health_check_client::AppCallbackHealthCheckClient<Channel>;
        match Health::new(self.channel.clone()).health_check(()).await {
            Ok(_) => true,
            Err(s) => s.code() == tonic::Code::Unimplemented,
        }
    }

    async fn subscriptions(&self) -> Result<Bytes, String> {
        let subs = match self.client.clone().list_topic_subscriptions(()).await {
            Ok(r) => r.into_inner().subscriptions,
            Err(s) if s.code() == tonic::Code::Unimplemented => Vec::new(),
            Err(s) => return Err(format!("ListTopicSubscriptions: {}", s.message())),
        };
        let list: Vec<Value> = subs.into_iter().map(subscription_json).collect();
        Ok(Bytes::from(Value::from(list).to_string()))
    }

    async fn topic_event(
        &self,
        pubsub: &str,
        topic: &str,
        path: &str,
        event: Bytes,
    ) -> Result<AppReply, String> {
        let req = topic_event_request(pubsub, topic, path, &event);
        match self.client.clone().on_topic_event(req).await {
            Ok(r) => Ok(AppReply {
                status: StatusCode::OK,
                headers: Vec::new(),
                body: Bytes::from(
                    json!({ "status": status_name(r.into_inner().status) }).to_string(),
                ),
            }),
            Err(s) if s.code() == tonic::Code::Unimplemented => Ok(not_served(&s)),
            Err(s) => answer(s),
        }
    }

    async fn bulk_topic_event(&self, path: &str, batch: Bytes) -> Result<AppReply, String> {
        use std::sync::atomic::Ordering;
        let req = bulk_request(path, &batch)?;
        // daprd asks AppCallback first and AppCallbackAlpha when that is not implemented.
        let alpha = || async {
            // Deprecated in the proto, and still daprd's fallback.
            #[allow(deprecated)]
            Alpha::new(self.channel.clone())
                .max_decoding_message_size(16 << 20)
                .on_bulk_topic_event_alpha1(req.clone())
                .await
        };
        let answered = if self.alpha_bulk_only.load(Ordering::Relaxed) {
            alpha().await
        } else {
            match self.client.clone().on_bulk_topic_event(req.clone()).await {
                Err(s) if s.code() == tonic::Code::Unimplemented => {
                    warn!(error = %s.message(), "the app has no OnBulkTopicEvent; batches go to OnBulkTopicEventAlpha1");
                    self.alpha_bulk_only.store(true, Ordering::Relaxed);
                    alpha().await
                }
                other => other,
            }
        };
        match answered {
            Ok(r) => Ok(bulk_answer(r.into_inner())),
            Err(s) if s.code() == tonic::Code::Unimplemented => Ok(not_served(&s)),
            Err(s) => answer(s),
        }
    }

    async fn input_bindings(&self) -> Result<Vec<String>, String> {
        // daprd gives the app 3 s and counts any failure as "no bindings".
        let mut client = self.client.clone();
        let call = client.list_input_bindings(());
        match tokio::time::timeout(std::time::Duration::from_secs(3), call).await {
            Ok(Ok(r)) => Ok(r.into_inner().bindings),
            Ok(Err(s)) if s.code() == tonic::Code::Unavailable => {
                Err(format!("app unreachable: {}", s.message()))
            }
            Ok(Err(s)) => {
                if s.code() != tonic::Code::Unimplemented {
                    warn!(code = ?s.code(), error = %s.message(), "ListInputBindings failed; no input binding events go to the app");
                }
                Ok(Vec::new())
            }
            Err(_) => {
                warn!(
                    "ListInputBindings did not answer within 3s; no input binding events go to the app"
                );
                Ok(Vec::new())
            }
        }
    }

    async fn binding_event(
        &self,
        name: &str,
        data: Bytes,
        metadata: &[(String, String)],
    ) -> Result<AppReply, String> {
        let req = rt::BindingEventRequest {
            name: name.to_owned(),
            data: data.to_vec(),
            metadata: metadata.iter().cloned().collect(),
        };
        match self.client.clone().on_binding_event(req).await {
            Ok(r) => Ok(AppReply {
                status: StatusCode::OK,
                headers: Vec::new(),
                body: Bytes::from(r.into_inner().data),
            }),
            Err(s) => answer(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::pubsub::subscription::parse_programmatic;

    #[test]
    fn a_grpc_apps_bulk_subscribe_reaches_the_subscription() {
        let sub = rt::TopicSubscription {
            pubsub_name: "pubsub".into(),
            topic: "orders".into(),
            bulk_subscribe: Some(rt::BulkSubscribeConfig {
                enabled: true,
                max_messages_count: 7,
                max_await_duration_ms: 0,
            }),
            ..Default::default()
        };
        let body = Value::from(vec![subscription_json(sub)]).to_string();
        let (subs, errors) = parse_programmatic(body.as_bytes(), true);
        assert!(errors.is_empty(), "{errors:?}");
        let bulk = subs[0].bulk.clone().expect("bulk subscription");
        assert_eq!(bulk.max_messages, 7);
        // Unset in the proto (0): the default, not "no wait".
        assert_eq!(bulk.max_await, std::time::Duration::from_millis(1000));
    }

    #[test]
    fn events_carry_the_path_the_app_gave() {
        let sub = |topic: &str, default: &str, rule: Option<&str>| rt::TopicSubscription {
            pubsub_name: "pubsub".into(),
            topic: topic.into(),
            routes: Some(rt::TopicRoutes {
                rules: rule
                    .map(|p| rt::TopicRule {
                        r#match: "event.type == \"x\"".into(),
                        path: p.into(),
                    })
                    .into_iter()
                    .collect(),
                default: default.into(),
            }),
            ..Default::default()
        };
        let list: Vec<Value> = vec![
            subscription_json(sub("a", "", Some("handler"))),
            subscription_json(sub("b", "/orders", None)),
            subscription_json(sub("c", "", None)),
            subscription_json(sub("d", "/", None)),
        ];
        let (subs, errors) = parse_programmatic(Value::from(list).to_string().as_bytes(), true);
        assert!(errors.is_empty(), "{errors:?}");
        let sent: Vec<Vec<&str>> = subs
            .iter()
            .map(|s| s.rules.iter().map(|r| r.path.as_str()).collect())
            .collect();
        // daprd sends a rule's path as the app gave it; with rules and no default, nothing else
        // matches; with neither, the app's default path "".
        assert_eq!(
            sent,
            [vec!["handler"], vec!["/orders"], vec![""], vec!["/"]]
        );
    }

    #[test]
    fn a_batch_becomes_a_topic_event_bulk_request_as_daprd_builds_it() {
        use rt::topic_event_bulk_request_entry::Event;
        let batch = json!({
            "id": "b1",
            "entries": [
                {"entryId": "e1", "contentType": "application/cloudevents+json", "metadata": {"k": "v"},
                 "event": {"id": "ev1", "source": "s", "type": "t", "specversion": "1.0",
                           "datacontenttype": "application/json", "data": {"n": 1},
                           "topic": "orders", "pubsubname": "pubsub", "traceparent": "00-x"}},
                {"entryId": "e2", "contentType": "application/octet-stream", "metadata": {},
                 "event": base64::engine::general_purpose::STANDARD.encode([0xff, 0x00, 0xfe])},
            ],
            "metadata": {"pubsubName": "pubsub"},
            "pubsubname": "pubsub",
            "topic": "orders",
            "type": "com.dapr.event.sent.bulk",
        });
        let req = bulk_request("", batch.to_string().as_bytes()).unwrap();
        assert_eq!(
            (
                req.id.as_str(),
                req.topic.as_str(),
                req.pubsub_name.as_str()
            ),
            ("b1", "orders", "pubsub")
        );
        assert_eq!(req.r#type, "com.dapr.event.sent.bulk");
        assert_eq!(req.path, "", "the app's default path");
        assert_eq!(req.metadata["pubsubName"], "pubsub");
        let e1 = &req.entries[0];
        assert_eq!(e1.entry_id, "e1");
        assert_eq!(e1.metadata["k"], "v");
        let Some(Event::CloudEvent(ce)) = &e1.event else {
            panic!("{e1:?}")
        };
        assert_eq!((ce.id.as_str(), ce.spec_version.as_str()), ("ev1", "1.0"));
        assert_eq!(ce.data, br#"{"n":1}"#);
        let ext = &ce.extensions.as_ref().unwrap().fields;
        assert!(ext.contains_key("traceparent") && ext.contains_key("topic"));
        assert!(!ext.contains_key("data") && !ext.contains_key("id"));
        let e2 = &req.entries[1];
        assert_eq!(e2.event, Some(Event::Bytes(vec![0xff, 0x00, 0xfe])));
        assert_eq!(e2.content_type, "application/octet-stream");
    }

    #[test]
    fn event_data_follows_the_content_type_as_daprd_does() {
        let data = |ct: &str, data: Value| {
            let ev = json!({"datacontenttype": ct, "data": data});
            String::from_utf8(event_data(&ev)).unwrap()
        };
        // JSON types: the JSON encoding, so a JSON string keeps its quotes.
        assert_eq!(data("application/json", json!("hello")), r#""hello""#);
        assert_eq!(
            data("application/json; charset=utf-8", json!("hi")),
            r#""hi""#
        );
        assert_eq!(data("application/cloudevents+json", json!("hi")), r#""hi""#);
        assert_eq!(data("application/json", json!({"n": 1})), r#"{"n":1}"#);
        assert_eq!(data("application/json", json!(7)), "7");
        // As Go's json.Marshal: HTML characters escaped, keys sorted.
        assert_eq!(
            data("application/json", json!({"b": "<a&b>", "a": 1})),
            r#"{"a":1,"b":"\u003ca\u0026b\u003e"}"#
        );
        // Text types: a string's text.
        assert_eq!(data("text/plain", json!("hello")), "hello");
        assert_eq!(data("application/xml", json!("<a/>")), "<a/>");
        assert_eq!(data("TEXT/CSV", json!("a,b")), "a,b");
        // Any other type (or none): daprd sends no data.
        assert_eq!(data("application/vnd.x+json", json!("hello")), "");
        assert_eq!(data("", json!({"n": 1})), "");
        // data_base64 wins, whatever the type.
        let ev = json!({"datacontenttype": "application/json", "data_base64": "aGk="});
        assert_eq!(event_data(&ev), b"hi");
        // The bulk entries' CloudEvents share the rule.
        let ev = json!({"datacontenttype": "application/json", "data": "s"});
        assert_eq!(cloud_event(&ev).data, br#""s""#);
    }

    #[test]
    fn statuses_read_as_daprd_reads_them() {
        let r = rt::TopicEventBulkResponse {
            statuses: vec![
                rt::TopicEventBulkResponseEntry {
                    entry_id: "a".into(),
                    status: 0,
                },
                rt::TopicEventBulkResponseEntry {
                    entry_id: "b".into(),
                    status: 2,
                },
                rt::TopicEventBulkResponseEntry {
                    entry_id: "c".into(),
                    status: 42,
                },
            ],
        };
        let body: Value = serde_json::from_slice(&bulk_answer(r).body).unwrap();
        assert_eq!(
            body,
            json!({"statuses": [
                {"entryId": "a", "status": "SUCCESS"},
                {"entryId": "b", "status": "DROP"},
                {"entryId": "c", "status": "RETRY"},
            ]})
        );
    }
}
