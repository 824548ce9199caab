//! The one request path's vocabulary: [`Call`] in, [`Reply`] out.
//!
//! A transport decodes its bytes into a `Call` (who is asking, what operation, the body and the
//! operation's parameters) and encodes the `Reply` or [`Error`](crate::Error) it gets back. It
//! knows nothing of stores or components; building blocks know nothing of transports. The body of
//! an operation keeps Dapr's JSON shape whatever carried it, so blocks parse it once for all
//! transports.

use std::collections::HashMap;
use std::fmt;

use bytes::Bytes;

/// Who is asking. Policy decisions and key namespaces depend on it, never on the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An app on the gateway or the LAN, using the Dapr HTTP API. `app_id` is the gateway's app id
    /// (Dapr's sidecar model: one sidecar, one app).
    LocalApp {
        /// The app id the caller's keys are prefixed with.
        app_id: String,
    },
    /// A device authenticated by a device endpoint (MQTT today).
    Device {
        /// The device id from authentication (never from a topic the device chose).
        id: String,
    },
}

impl Caller {
    /// The owner a state key is namespaced under when the store uses the default `appid` prefix.
    pub fn owner(&self) -> &str {
        match self {
            Caller::LocalApp { app_id } => app_id,
            Caller::Device { id } => id,
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::LocalApp { app_id } => write!(f, "app:{app_id}"),
            Caller::Device { id } => write!(f, "device:{id}"),
        }
    }
}

/// The operation a call asks for, with the parameters that come from its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Read one key.
    StateGet {
        /// State store component name.
        store: String,
        /// The key as the caller sees it (before namespacing).
        key: String,
    },
    /// Read many keys; body `{"keys": [...], "parallelism": n}`.
    StateBulkGet {
        /// State store component name.
        store: String,
    },
    /// Save items; body is Dapr's JSON array of state items.
    StateSave {
        /// State store component name.
        store: String,
    },
    /// Delete one key; ETag from [`Params::if_match`].
    StateDelete {
        /// State store component name.
        store: String,
        /// The key as the caller sees it.
        key: String,
    },
    /// Query JSON values (`/v1.0-alpha1/state/<store>/query`); body is Dapr's query.
    StateQuery {
        /// State store component name.
        store: String,
    },
    /// Run upserts and deletes all-or-nothing; body `{"operations": [...]}`.
    StateTransaction {
        /// State store component name.
        store: String,
    },
    /// Call a method on an app (`/v1.0/invoke/<app-id>/method/<method>`); the body and the
    /// headers in [`Params::headers`] pass through to the app.
    Invoke {
        /// Target app id.
        app_id: String,
        /// The method path as the app will see it (leading `/`, raw, with `?query` if any).
        method: String,
        /// The HTTP verb to use on the app.
        verb: http::Method,
    },
    /// Call a capability through the smart proxy (`/v1.0/capabilities/<name>/<method...>`).
    Capability {
        /// Capability name.
        name: String,
        /// Method path after the name, raw (may be empty).
        method: String,
        /// Query string without `?`.
        query: Option<String>,
        /// The HTTP verb.
        verb: http::Method,
    },
    /// List capabilities with their offers' health, breakers and cache statistics.
    CapabilityList,
    /// Read one secret (`GET /v1.0/secrets/<store>/<name>`).
    SecretGet {
        /// Secret store component name.
        store: String,
        /// Secret name.
        name: String,
    },
    /// Read every secret the scopes allow (`GET /v1.0/secrets/<store>/bulk`).
    SecretBulk {
        /// Secret store component name.
        store: String,
    },
    /// Try to take a lock (`POST /v1.0-alpha1/lock/<store>`).
    Lock {
        /// Lock store component name.
        store: String,
    },
    /// Release a lock (`POST /v1.0-alpha1/unlock/<store>`).
    Unlock {
        /// Lock store component name.
        store: String,
    },
    /// Read configuration items (`GET /v1.0/configuration/<store>?key=...`).
    ConfigurationGet {
        /// Configuration store component name.
        store: String,
        /// Keys asked for; empty means all.
        keys: Vec<String>,
    },
    /// Subscribe the app to changes (`GET /v1.0/configuration/<store>/subscribe?key=...`).
    ConfigurationSubscribe {
        /// Configuration store component name.
        store: String,
        /// Keys to watch; empty means all.
        keys: Vec<String>,
    },
    /// End a subscription (`GET /v1.0/configuration/<store>/<id>/unsubscribe`).
    ConfigurationUnsubscribe {
        /// Configuration store component name.
        store: String,
        /// The subscription id.
        id: String,
    },
    /// Invoke an output binding (`POST /v1.0/bindings/<name>`).
    Binding {
        /// Binding component name.
        name: String,
    },
    /// Describe the sidecar (`GET /v1.0/metadata`).
    MetadataGet,
    /// Stop the sidecar gracefully (`POST /v1.0/shutdown`, gRPC `Shutdown`).
    Shutdown,
    /// Set an extended metadata attribute; body is the value.
    MetadataSet {
        /// Attribute name.
        attribute: String,
    },
    /// Publish one event; the body is the event's data, [`Params::content_type`] its type.
    Publish {
        /// Pub/sub component name.
        pubsub: String,
        /// Topic (may contain `/`).
        topic: String,
    },
    /// Publish many events; body is Dapr's JSON array of `{entryId, event, contentType, metadata}`.
    BulkPublish {
        /// Pub/sub component name.
        pubsub: String,
        /// Topic (may contain `/`).
        topic: String,
    },
    /// Store a device's telemetry reading on the configured pub/sub topic (device protocol
    /// `telemetry`); the body is the reading, [`Params::content_type`] its type.
    Telemetry {
        /// The stream: the topic levels after `telemetry/` (may be empty).
        stream: String,
    },
    /// List registered devices with their presence (`GET /v1.0/devices`, edgecar's own).
    DevicesList,
    /// One device's presence (`GET /v1.0/devices/<id>`).
    DeviceGet {
        /// Device id.
        id: String,
    },
    /// A mailbox command's state or the device's answer
    /// (`GET /v1.0/devices/<id>/mailbox/<mailbox-id>`).
    MailboxGet {
        /// Device id.
        device: String,
        /// Mailbox id, as the 202 answer gave it.
        id: String,
    },
    /// A device subscribes to a pub/sub topic (device protocol `subscribe`).
    DeviceSubscribe {
        /// Pub/sub component name.
        pubsub: String,
        /// Topic.
        topic: String,
    },
    /// A device ends a pub/sub subscription (device protocol `unsubscribe`).
    DeviceUnsubscribe {
        /// Pub/sub component name.
        pubsub: String,
        /// Topic.
        topic: String,
    },
}

impl Op {
    /// A short stable name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Op::StateGet { .. } => "state.get",
            Op::StateBulkGet { .. } => "state.bulk_get",
            Op::StateSave { .. } => "state.save",
            Op::StateDelete { .. } => "state.delete",
            Op::StateTransaction { .. } => "state.transaction",
            Op::StateQuery { .. } => "state.query",
            Op::Invoke { .. } => "invoke",
            Op::Capability { .. } => "capability.call",
            Op::CapabilityList => "capability.list",
            Op::SecretGet { .. } => "secrets.get",
            Op::SecretBulk { .. } => "secrets.bulk",
            Op::Lock { .. } => "lock.lock",
            Op::Unlock { .. } => "lock.unlock",
            Op::ConfigurationGet { .. } => "configuration.get",
            Op::ConfigurationSubscribe { .. } => "configuration.subscribe",
            Op::ConfigurationUnsubscribe { .. } => "configuration.unsubscribe",
            Op::Binding { .. } => "bindings.invoke",
            Op::MetadataGet => "metadata.get",
            Op::MetadataSet { .. } => "metadata.set",
            Op::Shutdown => "shutdown",
            Op::Publish { .. } => "pubsub.publish",
            Op::BulkPublish { .. } => "pubsub.bulk_publish",
            Op::Telemetry { .. } => "devices.telemetry",
            Op::DevicesList => "devices.list",
            Op::DeviceGet { .. } => "devices.get",
            Op::MailboxGet { .. } => "devices.mailbox.get",
            Op::DeviceSubscribe { .. } => "devices.subscribe",
            Op::DeviceUnsubscribe { .. } => "devices.unsubscribe",
        }
    }
}

/// Parameters of a call that are not its address or body: Dapr's query-string and header options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    /// Request metadata (`metadata.<name>=<value>` query parameters in HTTP).
    pub metadata: HashMap<String, String>,
    /// Named options such as `concurrency` and `consistency`.
    pub options: HashMap<String, String>,
    /// An ETag the caller expects (`If-Match`).
    pub if_match: Option<String>,
    /// W3C trace context, carried across hops.
    pub traceparent: Option<String>,
    /// Request headers to pass on, for operations that forward them (invocation). Names are
    /// lower-case; hop-by-hop headers and edgecar's own (`dapr-api-token`) are already removed.
    pub headers: Vec<(String, String)>,
    /// W3C `tracestate`, carried with `traceparent`.
    pub tracestate: Option<String>,
    /// Media type of the body (`Content-Type` in HTTP), for operations whose body is opaque data.
    pub content_type: Option<String>,
    /// State values in the body (save, transaction, bulk get replies) and an output binding's
    /// `data` are opaque bytes carried as base64 strings, not JSON: gRPC's `bytes` values, stored
    /// (or sent) and returned unchanged.
    pub binary_values: bool,
    /// Which transport decoded the call: the `transport` label of the request metrics.
    pub transport: Transport,
}

/// The transport a call arrived on (metrics and traces label calls with it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Made inside the gateway (presence events, subscription plumbing), or by a transport
    /// that does not say.
    #[default]
    Internal,
    /// The Dapr HTTP API.
    Http,
    /// MQTT: the embedded device endpoint or the external broker.
    Mqtt,
    /// The Dapr gRPC API.
    Grpc,
    /// QUIC: the device endpoint.
    Quic,
}

impl Transport {
    /// The label value: `internal`, `http`, `mqtt`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Internal => "internal",
            Transport::Http => "http",
            Transport::Mqtt => "mqtt",
            Transport::Grpc => "grpc",
            Transport::Quic => "quic",
        }
    }
}

/// One request on the path: transport → policy → building block → component.
#[derive(Debug, Clone)]
pub struct Call {
    /// Who is asking.
    pub caller: Caller,
    /// What is asked.
    pub op: Op,
    /// The operation's body, in Dapr's JSON shape where the operation has one.
    pub body: Bytes,
    /// Options from the query string and headers.
    pub params: Params,
}

/// The answer to a successful call. Errors travel as [`crate::Error`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Status in HTTP's vocabulary (200, 204, ...), which every transport can carry.
    pub status: u16,
    /// Response body.
    pub body: Bytes,
    /// Extra response metadata, e.g. `ETag`, or an app's response headers. Names are HTTP
    /// header names.
    pub meta: Vec<(String, String)>,
    /// Media type of `body`, when there is one.
    pub content_type: Option<&'static str>,
}

impl Reply {
    /// 204 with no body.
    pub fn no_content() -> Self {
        Reply {
            status: 204,
            body: Bytes::new(),
            meta: Vec::new(),
            content_type: None,
        }
    }

    /// 200 with a JSON body.
    pub fn json(body: impl Into<Bytes>) -> Self {
        Reply {
            status: 200,
            body: body.into(),
            meta: Vec::new(),
            content_type: Some("application/json"),
        }
    }

    /// Adds a metadata entry (a response header in HTTP).
    pub fn with_meta(mut self, name: &str, value: String) -> Self {
        self.meta.push((name.to_owned(), value));
        self
    }
}
