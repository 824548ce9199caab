//! The `Dapr` service's RPCs as thin adapters: each turns its request message into an
//! [`Op`] with Dapr's JSON body and [`Params`], runs it on the one request path
//! ([`Runtime::handle`]), and turns the [`Reply`] back into its response message.
//!
//! The per-RPC mapping is kept to a few lines each so it can move into the operation table
//! (issue 12). Values that gRPC carries as `bytes` (state values, an output binding's data)
//! travel as base64 with [`Params::binary_values`], so they are stored (or sent) and returned
//! unchanged.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::proto::common::v1 as common;
use super::proto::runtime::v1 as rt;
use super::status;
use crate::call::{Call, Caller, Params, Reply};
use crate::error::Error;
use crate::ops::Op;
use crate::policy;
use crate::runtime::Runtime;

type GrpcResult<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The `dapr.proto.runtime.v1.Dapr` service.
pub struct DaprApi {
    /// The request path every call takes.
    runtime: Arc<Runtime>,
    /// Flips to `true` when shutdown begins: open streams end so the server can drain.
    stop: watch::Receiver<bool>,
}

impl DaprApi {
    /// A service over `runtime`; streams end when `stop` turns true.
    pub fn new(runtime: Arc<Runtime>, stop: watch::Receiver<bool>) -> Self {
        DaprApi { runtime, stop }
    }

    fn caller(&self) -> Caller {
        Caller::LocalApp {
            app_id: self.runtime.app_id.clone(),
        }
    }

    /// Runs one operation on the request path.
    async fn run(&self, op: Op, body: impl Into<Bytes>, params: Params) -> Result<Reply, Status> {
        let params = Params {
            transport: crate::call::Transport::Grpc,
            ..params
        };
        let call = Call {
            caller: self.caller(),
            op,
            body: body.into(),
            params,
        };
        self.runtime.handle(call).await.map_err(|e| status(&e))
    }
}

/// Trace context and request metadata from a gRPC request.
fn params<T>(req: &Request<T>, metadata: HashMap<String, String>) -> Params {
    let header = |n: &str| {
        req.metadata()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    Params {
        metadata,
        traceparent: header("traceparent"),
        tracestate: header("tracestate"),
        ..Params::default()
    }
}

fn json_reply(reply: &Reply) -> Result<Value, Status> {
    if reply.body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&reply.body)
        .map_err(|e| Status::internal(format!("edgecar: reply is not JSON: {e}")))
}

fn string_map(v: &Value) -> HashMap<String, String> {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    let s = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                    (k.clone(), s)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn str_of(v: &Value, name: &str) -> String {
    v.get(name)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn concurrency(o: Option<&common::StateOptions>) -> Option<&'static str> {
    use common::state_options::StateConcurrency as C;
    match o.map(|o| o.concurrency()) {
        Some(C::ConcurrencyFirstWrite) => Some("first-write"),
        Some(C::ConcurrencyLastWrite) => Some("last-write"),
        _ => None,
    }
}

/// A gRPC state item in Dapr's JSON shape, its value as base64 ([`Params::binary_values`]).
fn state_item(item: &common::StateItem) -> Value {
    let mut v = json!({
        "key": item.key,
        "value": B64.encode(&item.value),
        "metadata": item.metadata,
    });
    if let Some(etag) = item.etag.as_ref().filter(|e| !e.value.is_empty()) {
        v["etag"] = etag.value.clone().into();
    }
    if let Some(c) = concurrency(item.options.as_ref()) {
        v["options"] = json!({ "concurrency": c });
    }
    v
}

fn etag_of(reply: &Reply) -> String {
    reply
        .meta
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("etag"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

fn config_items(v: &Value) -> HashMap<String, common::ConfigurationItem> {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, i)| {
                    let item = common::ConfigurationItem {
                        value: str_of(i, "value"),
                        version: str_of(i, "version"),
                        metadata: string_map(i.get("metadata").unwrap_or(&Value::Null)),
                    };
                    (k.clone(), item)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The gRPC code daprd answers when an HTTP app answered `status`.
fn app_status(status: u16, body: &[u8]) -> Status {
    let code = match status {
        400 => tonic::Code::InvalidArgument,
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        404 => tonic::Code::NotFound,
        409 => tonic::Code::Aborted,
        429 => tonic::Code::ResourceExhausted,
        501 => tonic::Code::Unimplemented,
        503 => tonic::Code::Unavailable,
        504 => tonic::Code::DeadlineExceeded,
        _ => tonic::Code::Unknown,
    };
    Status::new(
        code,
        format!(
            "the app answered status {status}: {}",
            String::from_utf8_lossy(body)
        ),
    )
}

fn verb(ext: Option<&common::HttpExtension>) -> http::Method {
    use common::http_extension::Verb;
    match ext.map(|e| e.verb()) {
        Some(Verb::Get) => http::Method::GET,
        Some(Verb::Head) => http::Method::HEAD,
        Some(Verb::Put) => http::Method::PUT,
        Some(Verb::Delete) => http::Method::DELETE,
        Some(Verb::Connect) => http::Method::CONNECT,
        Some(Verb::Options) => http::Method::OPTIONS,
        Some(Verb::Trace) => http::Method::TRACE,
        Some(Verb::Patch) => http::Method::PATCH,
        _ => http::Method::POST,
    }
}

/// A bulk publish entry in Dapr's HTTP JSON shape: JSON events as they are, text as a string,
/// anything else as base64 with an octet-stream type (Dapr's `ConvertEventToBytes` reads it back).
fn bulk_entry(e: &rt::BulkPublishRequestEntry) -> Value {
    let ct = if e.content_type.is_empty() {
        "application/json"
    } else {
        e.content_type.as_str()
    };
    let text = std::str::from_utf8(&e.event).ok();
    let is_json_type = ct.contains("json");
    let (event, ct) = match text {
        Some(t)
            if is_json_type && serde_json::from_str::<&serde_json::value::RawValue>(t).is_ok() =>
        {
            (
                serde_json::from_str::<Value>(t).unwrap_or(Value::Null),
                ct.to_owned(),
            )
        }
        Some(t) if ct.starts_with("text/") || is_json_type => (
            Value::String(t.to_owned()),
            if is_json_type {
                "text/plain".to_owned()
            } else {
                ct.to_owned()
            },
        ),
        _ => (
            Value::String(B64.encode(&e.event)),
            "application/octet-stream".to_owned(),
        ),
    };
    json!({"entryId": e.entry_id, "event": event, "contentType": ct, "metadata": e.metadata})
}

#[tonic::async_trait]
impl rt::dapr_server::Dapr for DaprApi {
    async fn get_state(
        &self,
        req: Request<rt::GetStateRequest>,
    ) -> GrpcResult<rt::GetStateResponse> {
        let p = params(&req, HashMap::new());
        let r = req.into_inner();
        let op = Op::StateGet {
            store: r.store_name,
            key: r.key,
        };
        let reply = self
            .run(
                op,
                Bytes::new(),
                Params {
                    metadata: r.metadata,
                    ..p
                },
            )
            .await?;
        Ok(Response::new(rt::GetStateResponse {
            etag: etag_of(&reply),
            data: reply.body.to_vec(),
            metadata: HashMap::new(),
        }))
    }

    async fn get_bulk_state(
        &self,
        req: Request<rt::GetBulkStateRequest>,
    ) -> GrpcResult<rt::GetBulkStateResponse> {
        let p = params(&req, HashMap::new());
        let r = req.into_inner();
        let body = json!({"keys": r.keys, "parallelism": r.parallelism.max(0)});
        let p = Params {
            metadata: r.metadata,
            binary_values: true,
            ..p
        };
        let reply = self
            .run(
                Op::StateBulkGet {
                    store: r.store_name,
                },
                body.to_string(),
                p,
            )
            .await?;
        let items = json_reply(&reply)?
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|i| rt::BulkStateItem {
                        key: str_of(i, "key"),
                        data: B64.decode(str_of(i, "data")).unwrap_or_default(),
                        etag: str_of(i, "etag"),
                        error: str_of(i, "error"),
                        metadata: HashMap::new(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Response::new(rt::GetBulkStateResponse { items }))
    }

    async fn save_state(&self, req: Request<rt::SaveStateRequest>) -> GrpcResult<()> {
        let p = params(&req, HashMap::new());
        let r = req.into_inner();
        let body: Vec<Value> = r.states.iter().map(state_item).collect();
        let p = Params {
            binary_values: true,
            ..p
        };
        self.run(
            Op::StateSave {
                store: r.store_name,
            },
            Value::from(body).to_string(),
            p,
        )
        .await?;
        Ok(Response::new(()))
    }

    async fn delete_state(&self, req: Request<rt::DeleteStateRequest>) -> GrpcResult<()> {
        let mut p = params(&req, HashMap::new());
        let r = req.into_inner();
        p.metadata = r.metadata;
        p.if_match = r.etag.map(|e| e.value).filter(|e| !e.is_empty());
        if let Some(c) = concurrency(r.options.as_ref()) {
            p.options.insert("concurrency".into(), c.into());
        }
        self.run(
            Op::StateDelete {
                store: r.store_name,
                key: r.key,
            },
            Bytes::new(),
            p,
        )
        .await?;
        Ok(Response::new(()))
    }

    async fn delete_bulk_state(&self, req: Request<rt::DeleteBulkStateRequest>) -> GrpcResult<()> {
        let base = params(&req, HashMap::new());
        let r = req.into_inner();
        for item in r.states {
            let mut p = Params {
                metadata: item.metadata,
                ..base.clone()
            };
            p.if_match = item.etag.map(|e| e.value).filter(|e| !e.is_empty());
            if let Some(c) = concurrency(item.options.as_ref()) {
                p.options.insert("concurrency".into(), c.into());
            }
            let op = Op::StateDelete {
                store: r.store_name.clone(),
                key: item.key,
            };
            self.run(op, Bytes::new(), p).await?;
        }
        Ok(Response::new(()))
    }

    async fn execute_state_transaction(
        &self,
        req: Request<rt::ExecuteStateTransactionRequest>,
    ) -> GrpcResult<()> {
        let p = params(&req, HashMap::new());
        let r = req.into_inner();
        let ops: Vec<Value> = r
            .operations
            .iter()
            .map(|o| {
                let item = o.request.as_ref().map_or(Value::Null, state_item);
                json!({"operation": o.operation_type, "request": item})
            })
            .collect();
        let body = json!({"operations": ops, "metadata": r.metadata});
        let p = Params {
            metadata: r.metadata,
            binary_values: true,
            ..p
        };
        self.run(
            Op::StateTransaction {
                store: r.store_name,
            },
            body.to_string(),
            p,
        )
        .await?;
        Ok(Response::new(()))
    }

    async fn query_state_alpha1(
        &self,
        req: Request<rt::QueryStateRequest>,
    ) -> GrpcResult<rt::QueryStateResponse> {
        let p = params(&req, HashMap::new());
        let r = req.into_inner();
        let op = Op::StateQuery {
            store: r.store_name,
        };
        let p = Params {
            metadata: r.metadata,
            ..p
        };
        let v = json_reply(&self.run(op, r.query, p).await?)?;
        let results = v
            .get("results")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|i| rt::QueryStateItem {
                        key: str_of(i, "key"),
                        data: i
                            .get("data")
                            .map(|d| d.to_string().into_bytes())
                            .unwrap_or_default(),
                        etag: str_of(i, "etag"),
                        error: String::new(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Response::new(rt::QueryStateResponse {
            results,
            token: str_of(&v, "token"),
            metadata: HashMap::new(),
        }))
    }

    async fn publish_event(&self, req: Request<rt::PublishEventRequest>) -> GrpcResult<()> {
        let p = params(&req, HashMap::new());
        let r = req.into_inner();
        let p = Params {
            metadata: r.metadata,
            content_type: Some(r.data_content_type).filter(|c| !c.is_empty()),
            ..p
        };
        let op = Op::Publish {
            pubsub: r.pubsub_name,
            topic: r.topic,
        };
        self.run(op, r.data, p).await?;
        Ok(Response::new(()))
    }

    async fn bulk_publish_event(
        &self,
        req: Request<rt::BulkPublishRequest>,
    ) -> GrpcResult<rt::BulkPublishResponse> {
        let p = params(&req, HashMap::new());
        let r = req.into_inner();
        let entries: Vec<Value> = r.entries.iter().map(bulk_entry).collect();
        let op = Op::BulkPublish {
            pubsub: r.pubsub_name,
            topic: r.topic,
        };
        let reply = self
            .run(
                op,
                Value::from(entries).to_string(),
                Params {
                    metadata: r.metadata,
                    ..p
                },
            )
            .await?;
        let failed = json_reply(&reply)?
            .get("failedEntries")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|f| rt::BulkPublishResponseFailedEntry {
                        entry_id: str_of(f, "entryId"),
                        error: str_of(f, "error"),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Response::new(rt::BulkPublishResponse {
            failed_entries: failed,
        }))
    }

    async fn bulk_publish_event_alpha1(
        &self,
        req: Request<rt::BulkPublishRequest>,
    ) -> GrpcResult<rt::BulkPublishResponse> {
        self.bulk_publish_event(req).await
    }

    async fn subscribe_topic_events_alpha1(
        &self,
        req: Request<tonic::Streaming<rt::SubscribeTopicEventsRequestAlpha1>>,
    ) -> GrpcResult<BoxStream<rt::SubscribeTopicEventsResponseAlpha1>> {
        use rt::subscribe_topic_events_request_alpha1::SubscribeTopicEventsRequestType as In;
        use rt::subscribe_topic_events_response_alpha1::SubscribeTopicEventsResponseType as Out;
        let mut inbound = req.into_inner();
        let initial = match inbound.message().await? {
            Some(rt::SubscribeTopicEventsRequestAlpha1 {
                subscribe_topic_events_request_type: Some(In::InitialRequest(i)),
            }) => i,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be an initial request naming the pubsub and topic",
                ));
            }
        };
        // One stop per stream: the consumer ends with the stream or with edgecar.
        let (stream_stop_tx, stream_stop) = watch::channel(false);
        let (events_tx, mut events) = tokio::sync::mpsc::channel(1);
        let consumer = self
            .runtime
            .pubsub
            .stream_subscribe(&initial.pubsub_name, &initial.topic, events_tx, stream_stop)
            .await
            .map_err(|e| status(&e))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let first = rt::SubscribeTopicEventsResponseAlpha1 {
            subscribe_topic_events_response_type: Some(Out::InitialResponse(
                rt::SubscribeTopicEventsResponseInitialAlpha1 {},
            )),
        };
        let stop = stopped(self.stop.clone());
        let (pubsub, topic) = (initial.pubsub_name.clone(), initial.topic.clone());
        tokio::spawn(async move {
            let consuming = tokio::spawn(consumer);
            tokio::pin!(stop);
            let mut pending: HashMap<String, tokio::sync::oneshot::Sender<bool>> = HashMap::new();
            if tx.send(Ok(first)).await.is_ok() {
                loop {
                    tokio::select! {
                        ev = events.recv() => {
                            let Some(ev) = ev else { break };
                            // daprd's streaming subscription routes to `/` (`AddStreamSubscription`).
                            let msg = super::app::topic_event_request(&pubsub, &topic, "/", &ev.data);
                            let id = msg.id.clone();
                            pending.insert(id, ev.done);
                            let out = rt::SubscribeTopicEventsResponseAlpha1 {
                                subscribe_topic_events_response_type: Some(Out::EventMessage(msg)),
                            };
                            if tx.send(Ok(out)).await.is_err() {
                                break;
                            }
                        }
                        answer = inbound.message() => {
                            let Ok(Some(m)) = answer else { break };
                            if let Some(In::EventProcessed(p)) = m.subscribe_topic_events_request_type {
                                use rt::topic_event_response::TopicEventResponseStatus as S;
                                // No status is proto3's SUCCESS; a status this version does not
                                // know is retried, as RETRY is (never read as SUCCESS).
                                let settled = p.status.is_none_or(|s| {
                                    S::try_from(s.status).is_ok_and(|st| st != S::Retry)
                                });
                                if let Some(done) = pending.remove(&p.id) {
                                    let _ = done.send(settled);
                                }
                            }
                        }
                        () = &mut stop => break,
                    }
                }
            }
            // Unanswered events are redelivered (their senders drop); then the consumer stops.
            drop(pending);
            let _ = stream_stop_tx.send(true);
            let _ = consuming.await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn invoke_service(
        &self,
        req: Request<rt::InvokeServiceRequest>,
    ) -> GrpcResult<common::InvokeResponse> {
        let p = params(&req, HashMap::new());
        let r = req.into_inner();
        let msg = r.message.unwrap_or_default();
        let query = msg
            .http_extension
            .as_ref()
            .map(|e| e.querystring.clone())
            .unwrap_or_default();
        let path = msg.method.trim_start_matches('/');
        let method = if query.is_empty() {
            format!("/{path}")
        } else {
            format!("/{path}?{query}")
        };
        let mut p = p;
        if !msg.content_type.is_empty() {
            p.headers
                .push(("content-type".into(), msg.content_type.clone()));
        }
        if let Some(tp) = &p.traceparent {
            p.headers.push(("traceparent".into(), tp.clone()));
        }
        let op = Op::Invoke {
            app_id: r.id,
            method,
            verb: verb(msg.http_extension.as_ref()),
        };
        let body = msg.data.map(|d| d.value).unwrap_or_default();
        let reply = self.run(op, body, p).await?;
        if reply.status >= 300 {
            return Err(app_status(reply.status, &reply.body));
        }
        let content_type = reply
            .content_type
            .map(str::to_owned)
            .or_else(|| {
                reply
                    .meta
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                    .map(|(_, v)| v.clone())
            })
            .unwrap_or_default();
        Ok(Response::new(common::InvokeResponse {
            data: Some(prost_types::Any {
                type_url: String::new(),
                value: reply.body.to_vec(),
            }),
            content_type,
        }))
    }

    async fn invoke_binding(
        &self,
        req: Request<rt::InvokeBindingRequest>,
    ) -> GrpcResult<rt::InvokeBindingResponse> {
        let p = params(&req, HashMap::new());
        let r = req.into_inner();
        // `data` is bytes: carried as base64 so that any bytes reach the binding unchanged.
        let body =
            json!({"data": B64.encode(&r.data), "metadata": r.metadata, "operation": r.operation});
        let p = Params {
            binary_values: true,
            ..p
        };
        let reply = self
            .run(Op::Binding { name: r.name }, body.to_string(), p)
            .await?;
        let metadata = reply
            .meta
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("metadata.")?.to_owned(), v.clone())))
            .collect();
        Ok(Response::new(rt::InvokeBindingResponse {
            data: reply.body.to_vec(),
            metadata,
        }))
    }

    async fn get_secret(
        &self,
        req: Request<rt::GetSecretRequest>,
    ) -> GrpcResult<rt::GetSecretResponse> {
        let p = params(&req, HashMap::new());
        let r = req.into_inner();
        let op = Op::SecretGet {
            store: r.store_name,
            name: r.key,
        };
        let reply = self
            .run(
                op,
                Bytes::new(),
                Params {
                    metadata: r.metadata,
                    ..p
                },
            )
            .await?;
        Ok(Response::new(rt::GetSecretResponse {
            data: string_map(&json_reply(&reply)?),
        }))
    }

    async fn get_bulk_secret(
        &self,
        req: Request<rt::GetBulkSecretRequest>,
    ) -> GrpcResult<rt::GetBulkSecretResponse> {
        let p = params(&req, HashMap::new());
        let r = req.into_inner();
        let op = Op::SecretBulk {
            store: r.store_name,
        };
        let reply = self
            .run(
                op,
                Bytes::new(),
                Params {
                    metadata: r.metadata,
                    ..p
                },
            )
            .await?;
        let v = json_reply(&reply)?;
        let data = v
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, s)| {
                        (
                            k.clone(),
                            rt::SecretResponse {
                                secrets: string_map(s),
                            },
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Response::new(rt::GetBulkSecretResponse { data }))
    }

    async fn get_configuration(
        &self,
        req: Request<rt::GetConfigurationRequest>,
    ) -> GrpcResult<rt::GetConfigurationResponse> {
        let p = params(&req, HashMap::new());
        let r = req.into_inner();
        let op = Op::ConfigurationGet {
            store: r.store_name,
            keys: r.keys,
        };
        let reply = self
            .run(
                op,
                Bytes::new(),
                Params {
                    metadata: r.metadata,
                    ..p
                },
            )
            .await?;
        Ok(Response::new(rt::GetConfigurationResponse {
            items: config_items(&json_reply(&reply)?),
        }))
    }

    async fn get_configuration_alpha1(
        &self,
        req: Request<rt::GetConfigurationRequest>,
    ) -> GrpcResult<rt::GetConfigurationResponse> {
        self.get_configuration(req).await
    }

    async fn subscribe_configuration(
        &self,
        req: Request<rt::SubscribeConfigurationRequest>,
    ) -> GrpcResult<BoxStream<rt::SubscribeConfigurationResponse>> {
        let r = req.into_inner();
        let op = Op::ConfigurationSubscribe {
            store: r.store_name.clone(),
            keys: r.keys.clone(),
        };
        policy::authorize(&self.caller(), &op).map_err(|e| status(&e))?;
        let (id, mut changes) = self
            .runtime
            .configuration
            .watch(&r.store_name, r.keys)
            .map_err(|e: Error| status(&e))?;
        let guard = Unsubscribe {
            runtime: self.runtime.clone(),
            store: r.store_name,
            id: id.clone(),
        };
        let stop = stopped(self.stop.clone());
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        // The first message carries only the id, as daprd sends it: SDKs read it to unsubscribe.
        let first = rt::SubscribeConfigurationResponse {
            id: id.clone(),
            items: HashMap::new(),
        };
        tokio::spawn(async move {
            let _guard = guard;
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    note = changes.recv() => {
                        let Some(note) = note else { return };
                        let items = config_items(note.get("items").unwrap_or(&Value::Null));
                        let msg = rt::SubscribeConfigurationResponse { id: id.clone(), items };
                        if tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                    }
                    () = tx.closed() => return,
                    () = &mut stop => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn subscribe_configuration_alpha1(
        &self,
        req: Request<rt::SubscribeConfigurationRequest>,
    ) -> GrpcResult<BoxStream<rt::SubscribeConfigurationResponse>> {
        self.subscribe_configuration(req).await
    }

    async fn unsubscribe_configuration(
        &self,
        req: Request<rt::UnsubscribeConfigurationRequest>,
    ) -> GrpcResult<rt::UnsubscribeConfigurationResponse> {
        let p = params(&req, HashMap::new());
        let r = req.into_inner();
        let op = Op::ConfigurationUnsubscribe {
            store: r.store_name,
            id: r.id,
        };
        match self.run(op, Bytes::new(), p).await {
            Ok(_) => Ok(Response::new(rt::UnsubscribeConfigurationResponse {
                ok: true,
                message: String::new(),
            })),
            Err(e) => Ok(Response::new(rt::UnsubscribeConfigurationResponse {
                ok: false,
                message: e.message().to_owned(),
            })),
        }
    }

    async fn unsubscribe_configuration_alpha1(
        &self,
        req: Request<rt::UnsubscribeConfigurationRequest>,
    ) -> GrpcResult<rt::UnsubscribeConfigurationResponse> {
        self.unsubscribe_configuration(req).await
    }

    async fn try_lock_alpha1(
        &self,
        req: Request<rt::TryLockRequest>,
    ) -> GrpcResult<rt::TryLockResponse> {
        let p = params(&req, HashMap::new());
        let r = req.into_inner();
        let body = json!({
            "resourceId": r.resource_id,
            "lockOwner": r.lock_owner,
            "expiryInSeconds": r.expiry_in_seconds,
        });
        let reply = self
            .run(
                Op::Lock {
                    store: r.store_name,
                },
                body.to_string(),
                p,
            )
            .await?;
        let success = json_reply(&reply)?
            .get("success")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(Response::new(rt::TryLockResponse { success }))
    }

    async fn unlock_alpha1(
        &self,
        req: Request<rt::UnlockRequest>,
    ) -> GrpcResult<rt::UnlockResponse> {
        let p = params(&req, HashMap::new());
        let r = req.into_inner();
        let body = json!({"resourceId": r.resource_id, "lockOwner": r.lock_owner});
        let reply = self
            .run(
                Op::Unlock {
                    store: r.store_name,
                },
                body.to_string(),
                p,
            )
            .await?;
        let status = json_reply(&reply)?
            .get("status")
            .and_then(Value::as_i64)
            .unwrap_or(3);
        Ok(Response::new(rt::UnlockResponse {
            status: status as i32,
        }))
    }

    async fn get_metadata(
        &self,
        req: Request<rt::GetMetadataRequest>,
    ) -> GrpcResult<rt::GetMetadataResponse> {
        let p = params(&req, HashMap::new());
        let reply = self.run(Op::MetadataGet, Bytes::new(), p).await?;
        Ok(Response::new(metadata_response(&json_reply(&reply)?)))
    }

    async fn set_metadata(&self, req: Request<rt::SetMetadataRequest>) -> GrpcResult<()> {
        let p = params(&req, HashMap::new());
        let r = req.into_inner();
        self.run(Op::MetadataSet { attribute: r.key }, r.value, p)
            .await?;
        Ok(Response::new(()))
    }

    async fn shutdown(&self, req: Request<rt::ShutdownRequest>) -> GrpcResult<()> {
        let p = params(&req, HashMap::new());
        self.run(Op::Shutdown, Bytes::new(), p).await?;
        Ok(Response::new(()))
    }
}

/// Resolves once shutdown has begun.
pub(super) async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Ends a configuration subscription when its stream goes away.
struct Unsubscribe {
    runtime: Arc<Runtime>,
    store: String,
    id: String,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        let _ = self
            .runtime
            .configuration
            .unsubscribe(&self.store, &self.id);
    }
}

/// `GET /v1.0/metadata`'s JSON as `GetMetadataResponse`.
fn metadata_response(v: &Value) -> rt::GetMetadataResponse {
    let list = |name: &str| {
        v.get(name)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let components = list("components")
        .iter()
        .map(|c| rt::RegisteredComponents {
            name: str_of(c, "name"),
            r#type: str_of(c, "type"),
            version: str_of(c, "version"),
            capabilities: c
                .get("capabilities")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    let subscriptions = list("subscriptions")
        .iter()
        .map(|s| rt::PubsubSubscription {
            pubsub_name: str_of(s, "pubsubname"),
            topic: str_of(s, "topic"),
            metadata: string_map(s.get("metadata").unwrap_or(&Value::Null)),
            rules: Some(rt::PubsubSubscriptionRules {
                rules: s
                    .get("rules")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .map(|r| rt::PubsubSubscriptionRule {
                                r#match: str_of(r, "match"),
                                path: str_of(r, "path"),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
            dead_letter_topic: str_of(s, "deadLetterTopic"),
            r#type: match str_of(s, "type").to_ascii_uppercase().as_str() {
                "DECLARATIVE" => rt::PubsubSubscriptionType::Declarative as i32,
                "PROGRAMMATIC" => rt::PubsubSubscriptionType::Programmatic as i32,
                "STREAMING" => rt::PubsubSubscriptionType::Streaming as i32,
                _ => rt::PubsubSubscriptionType::Unknown as i32,
            },
        })
        .collect();
    let app = v
        .get("appConnectionProperties")
        .map(|a| rt::AppConnectionProperties {
            port: a.get("port").and_then(Value::as_i64).unwrap_or(0) as i32,
            protocol: str_of(a, "protocol"),
            channel_address: str_of(a, "channelAddress"),
            max_concurrency: a
                .get("maxConcurrency")
                .and_then(Value::as_i64)
                .unwrap_or(-1) as i32,
            health: None,
        });
    rt::GetMetadataResponse {
        id: str_of(v, "id"),
        registered_components: components,
        extended_metadata: string_map(v.get("extended").unwrap_or(&Value::Null)),
        subscriptions,
        app_connection_properties: app,
        runtime_version: str_of(v, "runtimeVersion"),
        enabled_features: list("enabledFeatures")
            .iter()
            .filter_map(|f| f.as_str().map(str::to_owned))
            .collect(),
        actor_runtime: Some(rt::ActorRuntime {
            runtime_status: rt::actor_runtime::ActorRuntimeStatus::Disabled as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}
