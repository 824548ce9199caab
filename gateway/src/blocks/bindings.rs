//! The bindings building block: Dapr's output bindings (`POST /v1.0/bindings/<name>`) and the
//! input bindings that call the app at `POST /<name>`.
//!
//! Types: `bindings.http` (output), `bindings.cron` (input), `bindings.mqtt3` (both ways, on
//! the same broker connection as `pubsub.mqtt` uses).
//!
//! Output: the request body is Dapr's `{"data", "metadata", "operation"}`; the binding's answer
//! comes back as the body (204 when empty), its status as `metadata.statusCode`. Input: each
//! event is POSTed to the app through service invocation, so the app's resiliency policy applies.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use tracing::{info, warn};

use crate::blocks::invoke::InvokeBlock;
use crate::call::Reply;
use crate::components::binding_cron::Schedule;
use crate::components::binding_http::{HttpBinding, HttpResult};
use crate::components::pubsub::{
    Handler, InMessage, OutMessage, Outcome, PubSub, PubSubError, SubscribeRequest,
};
use crate::components::pubsub_mqtt::MqttPubSub;
use crate::error::{Error, ErrorKind, codes};
use crate::resilience::ComponentCalls;

/// A loaded output binding.
pub enum OutputBinding {
    /// `bindings.http`.
    Http(Box<HttpBinding>),
    /// `bindings.mqtt3`: publishes to `topic` (request metadata `topic` overrides it).
    Mqtt {
        /// The broker connection (shared with the binding's input side).
        bus: Arc<MqttPubSub>,
        /// Default topic.
        topic: String,
    },
}

/// A loaded input binding.
pub enum InputBinding {
    /// `bindings.cron`.
    Cron(Schedule),
    /// `bindings.mqtt3`: every message on `topic` goes to the app.
    Mqtt {
        /// The broker connection.
        bus: Arc<MqttPubSub>,
        /// The topic (MQTT wildcards allowed).
        topic: String,
    },
}

/// Delivers an MQTT input binding's messages to the app; the broker keeps (and redelivers) a
/// message the app did not take.
struct ToApp {
    name: String,
    invoke: Arc<InvokeBlock>,
    app_id: String,
}

#[async_trait]
impl Handler for ToApp {
    async fn handle(&self, msg: InMessage) -> Outcome {
        let headers = [
            (
                "content-type".to_owned(),
                "application/octet-stream".to_owned(),
            ),
            ("x-edgecar-topic".to_owned(), msg.topic.clone()),
        ];
        match self
            .invoke
            .binding_event(&self.app_id, &self.name, &headers, msg.data)
            .await
        {
            Ok(r) if r.status.is_success() => Outcome::Ack,
            Ok(r) => {
                warn!(binding = %self.name, status = %r.status, "app refused an MQTT binding message; the broker keeps it");
                Outcome::Nack
            }
            Err(e) => {
                warn!(binding = %self.name, error = %e, "MQTT binding message not delivered; the broker keeps it");
                Outcome::Nack
            }
        }
    }
}

#[derive(Deserialize)]
struct BindingRequest {
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    operation: String,
}

/// The bindings building block.
pub struct BindingsBlock {
    outputs: HashMap<String, OutputBinding>,
    /// Outbound resiliency per binding.
    calls: Arc<ComponentCalls>,
}

/// The bytes a binding sends for Dapr's `data`: a JSON string's content as is, anything else as JSON.
fn data_bytes(data: Option<Box<RawValue>>) -> Bytes {
    match data {
        None => Bytes::new(),
        Some(raw) => match serde_json::from_str::<String>(raw.get()) {
            Ok(s) => Bytes::from(s),
            Err(_) => Bytes::from(raw.get().to_owned()),
        },
    }
}

impl BindingsBlock {
    /// Takes the loaded output bindings.
    pub fn new(outputs: HashMap<String, OutputBinding>, calls: Arc<ComponentCalls>) -> Self {
        BindingsBlock { outputs, calls }
    }

    /// `POST|PUT /v1.0/bindings/<name>`.
    pub async fn invoke(&self, name: &str, body: &[u8]) -> Result<Reply, Error> {
        let binding = self.outputs.get(name).ok_or_else(|| {
            // Dapr answers 500 here, not 404.
            Error::new(
                ErrorKind::Upstream,
                codes::INVOKE_OUTPUT_BINDING,
                format!("couldn't find output binding {name}"),
            )
        })?;
        let req: BindingRequest = serde_json::from_slice(body)
            .map_err(|e| Error::malformed(format!("failed deserializing HTTP body: {e}")))?;
        let failed = |m: String| {
            Error::new(
                ErrorKind::Upstream,
                codes::INVOKE_OUTPUT_BINDING,
                format!("error invoking output binding {name}: {m}"),
            )
        };
        match binding {
            OutputBinding::Mqtt { bus, topic } => {
                if !req.operation.eq_ignore_ascii_case("create") {
                    return Err(Error::new(
                        ErrorKind::Upstream,
                        codes::INVOKE_OUTPUT_BINDING,
                        format!(
                            "binding {name} supports only the create operation, not {:?}",
                            req.operation
                        ),
                    ));
                }
                let mut metadata: HashMap<String, String> =
                    req.metadata.unwrap_or_default().into_iter().collect();
                let topic = metadata.remove("topic").unwrap_or_else(|| topic.clone());
                let msg = OutMessage {
                    topic,
                    data: data_bytes(req.data),
                    metadata,
                    expires_at_ms: None,
                };
                let publish = || bus.publish(msg.clone());
                let backend =
                    |r: &Result<(), PubSubError>| matches!(r, Err(PubSubError::Backend(_)));
                match self.calls.run(name, publish, backend).await {
                    Ok(r) => r.map_err(|e| failed(e.to_string()))?,
                    Err(stopped) => return Err(failed(stopped.to_string())),
                }
                Ok(Reply::no_content())
            }
            OutputBinding::Http(h) => {
                let verb = HttpBinding::verb(&req.operation).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Upstream,
                        codes::INVOKE_OUTPUT_BINDING,
                        format!(
                            "binding {name} does not support operation {:?}",
                            req.operation
                        ),
                    )
                })?;
                let (data, metadata) = (data_bytes(req.data), req.metadata.unwrap_or_default());
                let call = || h.invoke(verb.clone(), data.clone(), &metadata);
                let server_error = |r: &Result<HttpResult, String>| match r {
                    Ok(r) => r.status.is_server_error(),
                    Err(_) => true,
                };
                let r = match self.calls.run(name, call, server_error).await {
                    Ok(r) => r.map_err(failed)?,
                    Err(stopped) => return Err(failed(stopped.to_string())),
                };
                if r.status.as_u16() >= 400 {
                    return Err(failed(format!(
                        "received status code {}",
                        r.status.as_u16()
                    )));
                }
                let mut reply = if r.body.is_empty() {
                    Reply::no_content()
                } else {
                    Reply::json(r.body)
                };
                if reply.status == 200 {
                    reply.content_type = None;
                }
                Ok(reply.with_meta("metadata.statuscode", r.status.as_u16().to_string()))
            }
        }
    }
}

/// Runs an input binding for as long as the gateway does: each event is POSTed to the app at
/// `/<name>`.
pub async fn run_input(
    name: String,
    binding: InputBinding,
    invoke: Arc<InvokeBlock>,
    app_id: String,
) {
    match binding {
        InputBinding::Mqtt { bus, topic } => {
            // Runs until the runtime aborts it at shutdown; the sender only has to outlive it.
            let (_stop_tx, stop) = tokio::sync::watch::channel(false);
            let handler = Arc::new(ToApp {
                name: name.clone(),
                invoke,
                app_id: app_id.clone(),
            });
            let req = SubscribeRequest {
                topic: topic.clone(),
                max_concurrency: 1,
                app_id,
            };
            match bus.subscribe(req, handler, stop).await {
                Ok(consumer) => {
                    info!(binding = %name, %topic, "MQTT input binding started");
                    consumer.await;
                }
                Err(e) => {
                    warn!(binding = %name, error = %e, "MQTT input binding could not subscribe")
                }
            }
        }
        InputBinding::Cron(schedule) => {
            info!(binding = %name, "cron input binding started");
            while let Some(wait) = schedule.until_next() {
                tokio::time::sleep(wait).await;
                let fired = chrono::Utc::now().to_rfc3339();
                let headers = [
                    ("content-type".to_owned(), "application/json".to_owned()),
                    ("x-edgecar-cron-time".to_owned(), fired),
                ];
                match invoke
                    .binding_event(&app_id, &name, &headers, Bytes::new())
                    .await
                {
                    Ok(r) if r.status.is_success() => {}
                    Ok(r) => {
                        warn!(binding = %name, status = %r.status, "app refused the cron event")
                    }
                    Err(e) => warn!(binding = %name, error = %e, "cron event not delivered"),
                }
            }
        }
    }
}
