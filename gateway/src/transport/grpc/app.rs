//! The app's side of gRPC (`--app-protocol grpc`): edgecar calls the app's `AppCallback`
//! service, as daprd does, for invocations (`OnInvoke`), its subscriptions
//! (`ListTopicSubscriptions`), topic events (`OnTopicEvent`) and input binding events
//! (`OnBindingEvent`).
//!
//! It implements the blocks' [`AppCallbacks`] with their neutral shapes (HTTP-style answers,
//! Dapr's JSON), so the invocation, pub/sub and bindings blocks stay free of gRPC. One lazily
//! connected HTTP/2 channel serves every call.

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use tonic::transport::Channel;

use super::proto::common::v1 as common;
use super::proto::runtime::v1 as rt;
use crate::blocks::invoke::{AppCallbacks, AppReply};

type Client = rt::app_callback_client::AppCallbackClient<Channel>;

/// The local app's `AppCallback` service.
pub struct GrpcApp {
    client: Client,
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
        Ok(GrpcApp {
            client: Client::new(endpoint.connect_lazy()).max_decoding_message_size(16 << 20),
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

/// The event's data as bytes, as daprd hands it to gRPC apps: `data_base64` decoded, a string
/// as its text, anything else as JSON.
fn event_data(ev: &Value) -> Vec<u8> {
    if let Some(b64) = ev.get("data_base64").and_then(Value::as_str) {
        return base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_default();
    }
    match ev.get("data") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s.clone().into_bytes(),
        Some(v) => v.to_string().into_bytes(),
    }
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

/// The app's empty default path, as the route the pub/sub block needs.
fn or_root(path: String) -> String {
    if path.is_empty() {
        "/".to_owned()
    } else {
        path
    }
}

/// A stored CloudEvent as `TopicEventRequest`, as daprd builds it for gRPC subscribers.
pub(super) fn topic_event_request(path: &str, event: &[u8]) -> rt::TopicEventRequest {
    let ev: Value = serde_json::from_slice(event).unwrap_or(Value::Null);
    let known = [
        "id",
        "source",
        "type",
        "specversion",
        "datacontenttype",
        "data",
        "data_base64",
        "topic",
        "pubsubname",
    ];
    let extensions = ev.as_object().map(|o| prost_types::Struct {
        fields: o
            .iter()
            .filter(|(k, _)| !known.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), pb_value(v)))
            .collect(),
    });
    rt::TopicEventRequest {
        id: field(&ev, "id"),
        source: field(&ev, "source"),
        r#type: field(&ev, "type"),
        spec_version: field(&ev, "specversion"),
        data_content_type: field(&ev, "datacontenttype"),
        data: event_data(&ev),
        topic: field(&ev, "topic"),
        pubsub_name: field(&ev, "pubsubname"),
        path: if path == "/" {
            String::new()
        } else {
            path.to_owned()
        },
        extensions,
    }
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

    async fn subscriptions(&self) -> Result<Bytes, String> {
        let subs = match self.client.clone().list_topic_subscriptions(()).await {
            Ok(r) => r.into_inner().subscriptions,
            Err(s) if s.code() == tonic::Code::Unimplemented => Vec::new(),
            Err(s) => return Err(format!("ListTopicSubscriptions: {}", s.message())),
        };
        let list: Vec<Value> = subs
            .into_iter()
            .map(|s| {
                let routes = s.routes.unwrap_or_default();
                let rules: Vec<Value> = routes
                    .rules
                    .iter()
                    .map(|r| json!({"match": r.r#match, "path": r.path}))
                    .collect();
                let mut v = json!({
                    "pubsubname": s.pubsub_name,
                    "topic": s.topic,
                    "metadata": s.metadata,
                });
                // A gRPC app's events all go to OnTopicEvent; the path only travels in the event,
                // and the app's empty default path is carried as "/" (see `topic_event`).
                if rules.is_empty() {
                    v["route"] = Value::String(or_root(routes.default));
                } else {
                    v["routes"] = json!({"rules": rules, "default": or_root(routes.default)});
                }
                if !s.dead_letter_topic.is_empty() {
                    v["deadLetterTopic"] = Value::String(s.dead_letter_topic);
                }
                v
            })
            .collect();
        Ok(Bytes::from(Value::from(list).to_string()))
    }

    async fn topic_event(&self, path: &str, event: Bytes) -> Result<AppReply, String> {
        let req = topic_event_request(path, &event);
        match self.client.clone().on_topic_event(req).await {
            Ok(r) => {
                use rt::topic_event_response::TopicEventResponseStatus as S;
                let status = match r.into_inner().status() {
                    S::Success => "SUCCESS",
                    S::Retry => "RETRY",
                    S::Drop => "DROP",
                };
                Ok(AppReply {
                    status: StatusCode::OK,
                    headers: Vec::new(),
                    body: Bytes::from(json!({ "status": status }).to_string()),
                })
            }
            Err(s) => answer(s),
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
