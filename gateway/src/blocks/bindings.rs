//! The bindings building block: Dapr's output bindings (`POST /v1.0/bindings/<name>`) and the
//! input bindings that call the app at `POST /<name>`.
//!
//! Types: `bindings.http` (output), `bindings.cron` (input), `bindings.mqtt3` (both ways, on
//! the same broker connection as `pubsub.mqtt` uses).
//!
//! Output: the request body is Dapr's `{"data", "metadata", "operation"}`; the binding's answer
//! comes back as the body (204 when empty), its status as `metadata.statusCode`. Input: each
//! event is POSTed to the app at the binding's route (`route` metadata, else `/<name>`) through
//! service invocation, so the app's resiliency policy applies. Which input bindings start is
//! decided as daprd decides it: a gRPC app's `ListInputBindings`, an HTTP app's answer to
//! `OPTIONS <route>`, or the binding's own `direction: input`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use tracing::{debug, info, warn};

use crate::blocks::invoke::{AppCallbacks, InvokeBlock, InvokeError};
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

/// An input binding as loaded.
pub struct Input {
    /// The component's name: the binding's name towards the app.
    pub name: String,
    /// What it reads from.
    pub binding: InputBinding,
    /// Its `direction` metadata names `input`: it runs without asking the app (a gRPC app's
    /// `ListInputBindings`, an HTTP app's `OPTIONS <route>`), as in daprd.
    pub declared_input: bool,
    /// The HTTP app path its events are POSTed to (`/<name>`, or the `route` metadata).
    pub route: String,
}

impl Input {
    /// The binding `name`, called at `route` over HTTP; `declared_input` when its metadata says
    /// `direction: input`.
    pub fn new(name: &str, binding: InputBinding, declared_input: bool, route: String) -> Self {
        Input {
            name: name.to_owned(),
            binding,
            declared_input,
            route,
        }
    }
}

/// Delivers an MQTT input binding's messages to the app; the broker keeps (and redelivers) a
/// message the app did not take.
struct ToApp {
    name: String,
    route: String,
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
            .binding_event(&self.app_id, &self.name, &self.route, &headers, msg.data)
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

/// The bytes a binding sends for Dapr's `data`: a JSON string's content as is, anything else as
/// JSON. With `binary` (gRPC's `bytes`, see [`crate::call::Params::binary_values`]) `data` is a
/// base64 string and the binding gets the bytes it encodes.
fn data_bytes(data: Option<Box<RawValue>>, binary: bool) -> Result<Bytes, Error> {
    let Some(raw) = data else {
        return Ok(Bytes::new());
    };
    if binary {
        let b64: String = serde_json::from_str(raw.get())
            .map_err(|_| Error::malformed("binding data must be a base64 string"))?;
        return base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(Bytes::from)
            .map_err(|e| Error::malformed(format!("binding data is not base64: {e}")));
    }
    Ok(match serde_json::from_str::<String>(raw.get()) {
        Ok(s) => Bytes::from(s),
        Err(_) => Bytes::from(raw.get().to_owned()),
    })
}

impl BindingsBlock {
    /// Takes the loaded output bindings.
    pub fn new(outputs: HashMap<String, OutputBinding>, calls: Arc<ComponentCalls>) -> Self {
        BindingsBlock { outputs, calls }
    }

    /// `POST|PUT /v1.0/bindings/<name>` and gRPC's `InvokeBinding` (`binary`: `data` is base64
    /// of the bytes to send).
    pub async fn invoke(&self, name: &str, body: &[u8], binary: bool) -> Result<Reply, Error> {
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
        let data = data_bytes(req.data, binary)?;
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
                    data,
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
                let metadata = req.metadata.unwrap_or_default();
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

/// Runs the input bindings the app wants for as long as the gateway does (aborting this task
/// stops them all).
///
/// A binding whose metadata says `direction: input` always runs. Otherwise, as daprd decides
/// (`startInputBinding` in `pkg/runtime/processor/binding/send.go`): a gRPC app is asked once,
/// when it is up, which bindings it wants (`ListInputBindings`); an HTTP app is asked
/// `OPTIONS <route>` per binding once it accepts connections ([`http_app_wants`]). A binding the
/// app does not want is not started and its events never reach the app.
pub async fn run_inputs(inputs: Vec<Input>, invoke: Arc<InvokeBlock>, app_id: String) {
    let undeclared = inputs.iter().any(|i| !i.declared_input);
    let grpc = invoke.grpc_app(&app_id);
    let listed = match &grpc {
        Some(app) if undeclared => Some(listed_by(app.as_ref()).await),
        _ => None,
    };
    let mut running = tokio::task::JoinSet::new();
    for input in inputs {
        if let Some(listed) = &listed
            && !input.declared_input
            && !listed.contains(&input.name)
        {
            info!(binding = %input.name, "the app does not list this input binding (ListInputBindings); not started");
            continue;
        }
        let (invoke, app_id) = (invoke.clone(), app_id.clone());
        // Each HTTP probe waits for the app on its own: no binding waits for another's.
        let probe = grpc.is_none() && !input.declared_input;
        running.spawn(async move {
            if probe && !http_app_wants(&invoke, &app_id, &input.name, &input.route).await {
                return;
            }
            run_input(input, invoke, app_id).await;
        });
    }
    while running.join_next().await.is_some() {}
}

/// Whether an HTTP app wants the input binding `name`: daprd's `isAppSubscribedToBinding` asks
/// `OPTIONS <route>` and starts the binding on a 2xx or 405 only (a 404, or any other status, and
/// it stays off). daprd asks once the app's port is open, so a refused connection here waits for
/// the app; an answer that does not come within 3 s, as daprd's `appBindingOptionsTimeout`, or
/// breaks off leaves the binding off, as daprd's error does.
async fn http_app_wants(invoke: &InvokeBlock, app_id: &str, name: &str, route: &str) -> bool {
    let mut backoff = crate::backoff::Backoff::new(
        std::time::Duration::from_millis(200),
        std::time::Duration::from_secs(5),
    );
    let mut logged = false;
    loop {
        let probe = invoke.call_once(app_id, route, &http::Method::OPTIONS);
        let answer = tokio::time::timeout(std::time::Duration::from_secs(3), probe).await;
        let status = match answer {
            Ok(Ok(r)) => r.status,
            Ok(Err(InvokeError::Unreachable { reason, .. })) => {
                debug!(binding = %name, error = %reason, "OPTIONS probe: the app cannot be reached yet");
                if !logged {
                    info!(binding = %name, "waiting for the app before starting the input binding");
                    logged = true;
                }
                tokio::time::sleep(backoff.next_wait()).await;
                continue;
            }
            Ok(Err(e)) => {
                warn!(binding = %name, %route, error = %e, "OPTIONS probe failed; input binding not started");
                return false;
            }
            Err(_) => {
                warn!(binding = %name, %route, "OPTIONS probe not answered within 3s; input binding not started");
                return false;
            }
        };
        let wanted = status.is_success() || status == http::StatusCode::METHOD_NOT_ALLOWED;
        if wanted {
            debug!(binding = %name, %route, status = status.as_u16(), "the app answers OPTIONS; input binding starts");
        } else {
            info!(binding = %name, %route, status = status.as_u16(), "the app answers OPTIONS with neither 2xx nor 405: it has not subscribed to this input binding; not started");
        }
        return wanted;
    }
}

/// The input bindings a gRPC app lists, asked once it answers.
async fn listed_by(app: &dyn AppCallbacks) -> Vec<String> {
    let mut backoff = crate::backoff::Backoff::new(
        std::time::Duration::from_millis(200),
        std::time::Duration::from_secs(5),
    );
    let mut logged = false;
    loop {
        if app.healthy().await {
            match app.input_bindings().await {
                Ok(names) => {
                    info!(bindings = ?names, "the app's input bindings (ListInputBindings)");
                    return names;
                }
                Err(e) => debug!(error = %e, "ListInputBindings: the app cannot be reached yet"),
            }
        }
        if !logged {
            info!("waiting for the app before starting input bindings");
            logged = true;
        }
        tokio::time::sleep(backoff.next_wait()).await;
    }
}

/// Runs an input binding for as long as the gateway does: each event is POSTed to the app at
/// its route (`OnBindingEvent` for a gRPC app).
pub async fn run_input(input: Input, invoke: Arc<InvokeBlock>, app_id: String) {
    let Input {
        name,
        binding,
        route,
        ..
    } = input;
    match binding {
        InputBinding::Mqtt { bus, topic } => {
            // Runs until the runtime aborts it at shutdown; the sender only has to outlive it.
            let (_stop_tx, stop) = tokio::sync::watch::channel(false);
            let handler = Arc::new(ToApp {
                name: name.clone(),
                route,
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
                    .binding_event(&app_id, &name, &route, &headers, Bytes::new())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Option<Box<RawValue>> {
        Some(RawValue::from_string(json.to_owned()).unwrap())
    }

    #[test]
    fn binding_data_is_text_over_http_and_any_bytes_over_grpc() {
        assert_eq!(data_bytes(raw(r#""hi""#), false).unwrap(), "hi");
        assert_eq!(data_bytes(raw(r#"{"a":1}"#), false).unwrap(), r#"{"a":1}"#);
        assert_eq!(data_bytes(None, true).unwrap(), "");
        // gRPC's bytes arrive as base64 and leave as they were, UTF-8 or not.
        assert_eq!(
            data_bytes(raw(r#""/wD+""#), true).unwrap().as_ref(),
            [0xff, 0x00, 0xfe]
        );
        assert!(data_bytes(raw(r#""not base64!""#), true).is_err());
        assert!(data_bytes(raw("{}"), true).is_err());
    }
}
