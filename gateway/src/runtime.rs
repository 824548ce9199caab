//! The runtime: the one request path from a decoded [`Call`] to a [`Reply`].
//!
//! `authorize(caller, op)` first, then the building block that owns the operation. Transports hold
//! an `Arc<Runtime>` and call [`Runtime::handle`]; nothing here knows which transport asked.

use std::sync::Arc;
use std::time::Instant;

use tracing::{Instrument, debug};

use crate::blocks::bindings::BindingsBlock;
use crate::blocks::capabilities::{self, CapabilitiesBlock};
use crate::blocks::configuration::ConfigurationBlock;
use crate::blocks::devices::{Command, DevicesBlock};
use crate::blocks::invoke::InvokeBlock;
use crate::blocks::lock::LockBlock;
use crate::blocks::metadata::MetadataBlock;
use crate::blocks::pubsub::PubSubBlock;
use crate::blocks::secrets::SecretsBlock;
use crate::blocks::state::StateBlock;
use crate::blocks::telemetry::{Receipt, TelemetryBlock};
use crate::call::{Call, Reply};
use crate::error::Error;
use crate::observability::metrics::{self, CallMetrics};
use crate::ops::Op;
use crate::policy;

/// Everything a request may need, built once at start-up.
pub struct Runtime {
    /// This sidecar's app id (the local app's identity).
    pub app_id: String,
    /// The state building block.
    pub state: StateBlock,
    /// The service-invocation building block (shared with the capability engine's invoke offers).
    pub invoke: std::sync::Arc<InvokeBlock>,
    /// The bindings building block (output bindings).
    pub bindings: BindingsBlock,
    /// The configuration building block.
    pub configuration: ConfigurationBlock,
    /// The distributed-lock building block.
    pub lock: LockBlock,
    /// The secrets building block (shared with the capability engine's secret resolution).
    pub secrets: std::sync::Arc<SecretsBlock>,
    /// The capabilities building block (the smart proxy).
    pub capabilities: CapabilitiesBlock,
    /// The metadata building block.
    pub metadata: MetadataBlock,
    /// The pub/sub building block (shared with the subscription manager).
    pub pubsub: Arc<PubSubBlock>,
    /// Devices: commands from apps, presence.
    pub devices: DevicesBlock,
    /// Device telemetry, stored in batches.
    pub telemetry: TelemetryBlock,
    /// The embedded database, whose disk health the health routes report.
    pub storage: crate::storage::Storage,
    /// Every loaded component's health check: `/v1.0/healthz/outbound`, the status page and
    /// `/metrics` report them.
    pub component_health: Arc<crate::components::health::Health>,
    /// Fired by [`Op::Shutdown`]; `run` treats it as its shutdown signal.
    pub shutdown: tokio::sync::Notify,
    /// Components are loaded and the app's subscriptions are running (or there is no app):
    /// daprd's readiness, answered on `/v1.0/healthz`.
    pub ready: Arc<std::sync::atomic::AtomicBool>,
    /// Counters and latency histograms every call feeds (`/metrics` on the admin listener).
    pub metrics: Arc<CallMetrics>,
    /// Spans for every call, when trace export is on.
    pub tracer: Option<crate::observability::traces::Tracer>,
}

impl Runtime {
    /// Whether the sidecar is healthy: `Err` names what is wrong (today: a full disk, which
    /// refuses writes while reads still work). `/v1.0/healthz` and `/v1.0/healthz/outbound`
    /// answer 500 with it.
    pub fn health(&self) -> Result<(), Error> {
        self.storage.writable().map_err(|e| {
            Error::new(
                crate::error::ErrorKind::Upstream,
                crate::error::codes::HEALTH_NOT_READY,
                e.to_string(),
            )
        })
    }

    /// `/v1.0/healthz/outbound`: as [`Runtime::health`], and every component's health check
    /// passes (checked now unless checked within the last second); `Err` names each failing
    /// component and what its check said.
    pub async fn outbound_health(&self) -> Result<(), Error> {
        self.health()?;
        let failing: Vec<String> = self
            .component_health
            .report()
            .await
            .into_iter()
            .filter(|c| !c.healthy)
            .map(|c| {
                format!(
                    "component {} ({}) is unhealthy: {}",
                    c.name,
                    c.type_name,
                    c.error.unwrap_or_default()
                )
            })
            .collect();
        if failing.is_empty() {
            return Ok(());
        }
        Err(Error::new(
            crate::error::ErrorKind::Upstream,
            crate::error::codes::HEALTH_NOT_READY,
            failing.join("; "),
        ))
    }

    /// The `/metrics` exposition: call metrics and the gauges read now.
    pub async fn metrics_text(&self) -> String {
        let outboxes = self.devices.outbox_backlogs().await;
        let snap = metrics::Snapshot {
            now_ms: crate::clock::unix_ms(),
            devices_registered: self.devices.registered_count(),
            devices_connected: self.devices.connected_count(),
            outbox_messages: outboxes.values().map(|s| s.messages).sum(),
            outbox_oldest_appended_ms: outboxes.values().filter_map(|s| s.oldest_appended_ms).min(),
            capabilities: self.capabilities.status().await,
            queues: self.pubsub.queue_stats().await,
            components: self.component_health.report().await,
        };
        metrics::encode(&self.metrics, &snap)
    }

    /// Starts a device telemetry call ([`Op::Telemetry`]) on the request path without waiting:
    /// authorized now, stored by the telemetry block in its next batch; the receipt resolves
    /// once the reading is stored. For transports that keep many readings in flight without a
    /// task each; [`Runtime::handle`] runs the same call to completion.
    pub fn submit_telemetry(&self, call: Call) -> Result<Receipt, Error> {
        let started = Instant::now();
        let transport = call.params.transport;
        let op = call.op.name();
        let result = self.submit_telemetry_inner(call);
        // Counted when queued for storage: the receipt resolves later, on the transport's side.
        self.metrics.record(
            transport,
            op,
            &result
                .as_ref()
                .map(|_| Reply::no_content())
                .map_err(Clone::clone),
            started.elapsed(),
        );
        result
    }

    fn submit_telemetry_inner(&self, call: Call) -> Result<Receipt, Error> {
        policy::authorize(&call.caller, &call.op)?;
        match call.op {
            Op::Telemetry { stream } => {
                self.telemetry
                    .submit(call.caller, stream, call.body, call.params)
            }
            other => Err(Error::new(
                crate::error::ErrorKind::Internal,
                crate::error::codes::INTERNAL,
                format!("{} is not a telemetry call", other.name()),
            )),
        }
    }

    /// Runs one call along the request path; every call is counted and timed here, once.
    pub async fn handle(&self, mut call: Call) -> Result<Reply, Error> {
        let started = Instant::now();
        let transport = call.params.transport;
        let op = call.op.name();
        // With export on, the call continues as a child of the gateway's span.
        let trace = self.tracer.as_ref().map(|t| {
            let s = t.start(call.params.traceparent.as_deref());
            let tp = s.traceparent();
            // Forwarded headers (invocation, capabilities) carry it on too.
            if matches!(call.op, Op::Invoke { .. } | Op::Capability { .. }) {
                call.params.headers.retain(|(k, _)| k != "traceparent");
                call.params.headers.push(("traceparent".into(), tp.clone()));
            }
            call.params.traceparent = Some(tp);
            s
        });
        let span = tracing::debug_span!(
            "call",
            transport = transport.as_str(),
            op,
            traceparent = call.params.traceparent.as_deref()
        );
        let result = self.dispatch(call).instrument(span).await;
        self.metrics
            .record(transport, op, &result, started.elapsed());
        if let (Some(t), Some(s)) = (&self.tracer, trace) {
            t.finish(s, op, transport, &result);
        }
        result
    }

    async fn dispatch(&self, call: Call) -> Result<Reply, Error> {
        policy::authorize(&call.caller, &call.op)?;
        let caller = &call.caller;
        let result = match &call.op {
            Op::StateGet { store, key } => self.state.get(caller, store, key).await,
            Op::StateBulkGet { store } => {
                self.state
                    .bulk_get(caller, store, &call.body, &call.params)
                    .await
            }
            Op::StateSave { store } => {
                self.state
                    .save(caller, store, &call.body, &call.params)
                    .await
            }
            Op::StateDelete { store, key } => {
                self.state.delete(caller, store, key, &call.params).await
            }
            Op::StateQuery { store } => self.state.query(caller, store, &call.body).await,
            Op::StateTransaction { store } => {
                self.state
                    .transaction(caller, store, &call.body, &call.params)
                    .await
            }
            Op::Invoke {
                app_id,
                method,
                verb,
            } if !self.invoke.knows(app_id) && self.devices.is_device(app_id) => {
                // Resolution order: local app, then local device.
                let header = |n: &str| {
                    call.params
                        .headers
                        .iter()
                        .find(|(k, _)| k == n)
                        .map(|(_, v)| v.clone())
                };
                let mailbox_ttl = match header(crate::blocks::devices::MAILBOX_HEADER) {
                    Some(v) => Some(crate::blocks::devices::mailbox_ttl(
                        &v,
                        self.devices.max_command_ttl(),
                    )?),
                    None => None,
                };
                let cmd = Command {
                    method: method.clone(),
                    verb: verb.clone(),
                    content_type: header("content-type"),
                    traceparent: call.params.traceparent.clone(),
                    body: call.body.clone(),
                    mailbox_ttl,
                };
                self.devices.command(caller, app_id, cmd).await
            }
            Op::Invoke {
                app_id,
                method,
                verb,
            } => {
                let body = call.body.clone();
                self.invoke
                    .invoke(caller, app_id, method, verb, &call.params.headers, body)
                    .await
            }
            Op::Capability {
                name,
                method,
                query,
                verb,
            } => {
                let req = capabilities::request(
                    method,
                    query.as_deref(),
                    verb,
                    &call.params.headers,
                    call.body.clone(),
                );
                self.capabilities.call(caller, name, req).await
            }
            Op::CapabilityList => self.capabilities.list().await,
            Op::SecretGet { store, name } => self.secrets.get(store, name),
            Op::SecretBulk { store } => self.secrets.bulk(store),
            Op::Lock { store } => self.lock.lock(caller, store, &call.body).await,
            Op::Unlock { store } => self.lock.unlock(caller, store, &call.body).await,
            Op::ConfigurationGet { store, keys } => self.configuration.get(store, keys).await,
            Op::ConfigurationSubscribe { store, keys } => {
                self.configuration.subscribe(store, keys.clone())
            }
            Op::ConfigurationUnsubscribe { store, id } => self.configuration.unsubscribe(store, id),
            Op::Binding { name } => {
                self.bindings
                    .invoke(name, &call.body, call.params.binary_values)
                    .await
            }
            Op::MetadataGet => self.metadata.get(&[
                (
                    "devicesConnected",
                    self.devices.connected_count().to_string(),
                ),
                (
                    "devicesRegistered",
                    self.devices.registered_count().to_string(),
                ),
            ]),
            Op::MetadataSet { attribute } => self.metadata.set(attribute, &call.body),
            Op::Shutdown => {
                tracing::info!(caller = %call.caller, "shutdown requested through the API");
                self.shutdown.notify_one();
                Ok(Reply::no_content())
            }
            Op::Publish { pubsub, topic } => {
                self.pubsub
                    .publish(caller, pubsub, topic, &call.body, &call.params)
                    .await
            }
            Op::BulkPublish { pubsub, topic } => {
                self.pubsub
                    .bulk_publish(caller, pubsub, topic, &call.body, &call.params)
                    .await
            }
            Op::Telemetry { stream } => {
                self.telemetry
                    .store(caller, stream, call.body.clone(), &call.params)
                    .await
            }
            Op::DevicesList => self.devices.list(),
            Op::DeviceGet { id } => self.devices.get(id).await,
            Op::MailboxGet { device, id } => self.devices.mailbox_get(device, id),
            Op::DeviceSubscribe { pubsub, topic } => {
                self.pubsub.resolve(pubsub, topic)?;
                self.devices.subscribe(caller, pubsub, topic).await
            }
            Op::DeviceUnsubscribe { pubsub, topic } => {
                self.devices.unsubscribe(caller, pubsub, topic).await
            }
        };
        if let Err(e) = &result {
            debug!(caller = %call.caller, op = call.op.name(), code = e.code, error = %e.message, "call failed");
        }
        result
    }
}
