//! The one request path's vocabulary: [`Call`] in, [`Reply`] out.
//!
//! A transport decodes its bytes into a `Call` (who is asking, what operation of the table in
//! [`crate::ops`], the body and the operation's parameters) and encodes the `Reply` or [`Error`](crate::Error) it gets back. It
//! knows nothing of stores or components; building blocks know nothing of transports. The body of
//! an operation keeps Dapr's JSON shape whatever carried it, so blocks parse it once for all
//! transports.

use std::collections::HashMap;
use std::fmt;

use bytes::Bytes;

use crate::ops::Op;

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
