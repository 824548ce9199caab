//! The one error type of the request path.
//!
//! Every building block and component reports failures as an [`Error`]: *what kind* of failure it
//! is (whose fault, and so which status a transport should answer with) and the Dapr `errorCode`
//! the caller sees. Only the API layer (`api::status`) turns a [`ErrorKind`] into an HTTP status;
//! the MQTT and QUIC transports carry the same `errorCode` and message.

use std::fmt;

/// Who failed, and so how a transport answers. The HTTP mapping lives in `api::status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request itself is wrong (bad JSON, empty key, unknown store): the caller must change it.
    BadRequest,
    /// The caller did not prove who it is (missing or wrong API token).
    Unauthorized,
    /// The caller is known but policy forbids the operation.
    Forbidden,
    /// The addressed thing (route, component) does not exist.
    NotFound,
    /// An optimistic-concurrency check failed (ETag mismatch): retrying with fresh data may work.
    Conflict,
    /// The request body is larger than the configured limit.
    TooLarge,
    /// The client did not send its request in time (`http.readTimeout`); the connection is closed.
    RequestTimeout,
    /// A backend (component, upstream) failed; the request may succeed later.
    Upstream,
    /// Nothing could serve the request right now (every offer down, nothing cached).
    Unavailable,
    /// Everything that was tried timed out.
    Timeout,
    /// A bounded queue is full: the message was not taken (HTTP 500, as Dapr answers any
    /// publish failure; an MQTT 5 PUBACK says "quota exceeded").
    QueueFull,
    /// The disk under the state directory is (nearly) full: writes are refused until space
    /// frees; reads still work.
    InsufficientStorage,
    /// The operation is known but this build does not serve it yet.
    NotImplemented,
    /// A bug or an unexpected state inside edgecar.
    Internal,
}

/// A failed call: the kind of failure, Dapr's `errorCode`, and a message for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// Whose fault it is; decides the status code.
    pub kind: ErrorKind,
    /// Dapr's error code (`ERR_STATE_SAVE`, `ERR_MALFORMED_REQUEST`, ...).
    pub code: &'static str,
    /// What went wrong, precise enough to fix the request.
    pub message: String,
}

impl Error {
    /// Builds an error of any kind.
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        Error {
            kind,
            code,
            message: message.into(),
        }
    }

    /// A malformed request: Dapr's `ERR_MALFORMED_REQUEST`, answered with 400.
    pub fn malformed(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::BadRequest, codes::MALFORMED_REQUEST, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

/// Dapr's error codes, spelled as Dapr spells them, plus the few edgecar adds.
pub mod codes {
    /// The sidecar is not ready or not healthy (`/v1.0/healthz` answers 500): before the app's
    /// subscriptions are loaded, or while the disk is full.
    pub const HEALTH_NOT_READY: &str = "ERR_HEALTH_NOT_READY";
    /// The request could not be decoded.
    pub const MALFORMED_REQUEST: &str = "ERR_MALFORMED_REQUEST";
    /// No state store is configured at all.
    pub const STATE_STORES_NOT_CONFIGURED: &str = "ERR_STATE_STORES_NOT_CONFIGURED";
    /// The named state store does not exist.
    pub const STATE_STORE_NOT_FOUND: &str = "ERR_STATE_STORE_NOT_FOUND";
    /// Reading state failed.
    pub const STATE_GET: &str = "ERR_STATE_GET";
    /// Saving state failed (including ETag mismatches).
    pub const STATE_SAVE: &str = "ERR_STATE_SAVE";
    /// Deleting state failed (including ETag mismatches).
    pub const STATE_DELETE: &str = "ERR_STATE_DELETE";
    /// A state transaction failed as a whole.
    pub const STATE_TRANSACTION: &str = "ERR_STATE_TRANSACTION";
    /// A transaction named an operation other than `upsert` or `delete`.
    pub const NOT_SUPPORTED_STATE_OPERATION: &str = "ERR_NOT_SUPPORTED_STATE_OPERATION";
    /// The store cannot do what was asked (e.g. transactions on a non-transactional store).
    pub const STATE_STORE_NOT_SUPPORTED: &str = "ERR_STATE_STORE_NOT_SUPPORTED";
    /// Missing or wrong `dapr-api-token`.
    pub const UNAUTHORIZED: &str = "ERR_UNAUTHORIZED";
    /// Policy forbids the caller this operation.
    pub const PERMISSION_DENIED: &str = "ERR_PERMISSION_DENIED";
    /// No route matches the request path (edgecar's own code; Dapr answers a bare 404).
    pub const NOT_FOUND: &str = "ERR_NOT_FOUND";
    /// The route exists but not for this HTTP method.
    pub const METHOD_NOT_ALLOWED: &str = "ERR_METHOD_NOT_ALLOWED";
    /// The request body is larger than `http.maxBodySize`.
    pub const BODY_TOO_LARGE: &str = "ERR_BODY_TOO_LARGE";
    /// The request body did not arrive within `http.readTimeout` (edgecar's own code).
    pub const REQUEST_TIMEOUT: &str = "ERR_REQUEST_TIMEOUT";
    /// The HTTP API already serves `http.maxConnections` connections (edgecar's own code).
    pub const TOO_MANY_CONNECTIONS: &str = "ERR_TOO_MANY_CONNECTIONS";
    /// Service invocation failed: unknown or unreachable app, timeout, open breaker, or a policy
    /// denied it.
    pub const DIRECT_INVOKE: &str = "ERR_DIRECT_INVOKE";
    /// The named secret store does not exist (Dapr answers 401 for this).
    pub const SECRET_STORE_NOT_FOUND: &str = "ERR_SECRET_STORE_NOT_FOUND";
    /// No secret store is configured at all.
    pub const SECRET_STORES_NOT_CONFIGURED: &str = "ERR_SECRET_STORES_NOT_CONFIGURED";
    /// Reading a secret failed (including: no such secret).
    pub const SECRET_GET: &str = "ERR_SECRET_GET";
    /// No lock store is configured.
    pub const LOCK_STORE_NOT_CONFIGURED: &str = "ERR_LOCK_STORE_NOT_CONFIGURED";
    /// The named lock store does not exist.
    pub const LOCK_STORE_NOT_FOUND: &str = "ERR_LOCK_STORE_NOT_FOUND";
    /// Trying to take a lock failed in the store.
    pub const TRY_LOCK: &str = "ERR_TRY_LOCK";
    /// No configuration store is configured.
    pub const CONFIGURATION_STORE_NOT_CONFIGURED: &str = "ERR_CONFIGURATION_STORE_NOT_CONFIGURED";
    /// The named configuration store does not exist.
    pub const CONFIGURATION_STORE_NOT_FOUND: &str = "ERR_CONFIGURATION_STORE_NOT_FOUND";
    /// Reading configuration failed.
    pub const CONFIGURATION_GET: &str = "ERR_CONFIGURATION_GET";
    /// Subscribing to configuration failed.
    pub const CONFIGURATION_SUBSCRIBE: &str = "ERR_CONFIGURATION_SUBSCRIBE";
    /// Unsubscribing failed (unknown id).
    pub const CONFIGURATION_UNSUBSCRIBE: &str = "ERR_CONFIGURATION_UNSUBSCRIBE";
    /// Invoking an output binding failed (unknown binding, operation, or the target failed).
    pub const INVOKE_OUTPUT_BINDING: &str = "ERR_INVOKE_OUTPUT_BINDING";
    /// Setting a metadata attribute failed.
    pub const METADATA_SET: &str = "ERR_METADATA_SET";
    /// No pub/sub component is loaded at all (400).
    pub const PUBSUB_NOT_CONFIGURED: &str = "ERR_PUBSUB_NOT_CONFIGURED";
    /// The publish address names no pub/sub component (404).
    pub const PUBSUB_EMPTY: &str = "ERR_PUBSUB_EMPTY";
    /// The named pub/sub component does not exist (404).
    pub const PUBSUB_NOT_FOUND: &str = "ERR_PUBSUB_NOT_FOUND";
    /// The publish address names no topic (404).
    pub const TOPIC_NAME_EMPTY: &str = "ERR_TOPIC_NAME_EMPTY";
    /// Publish metadata (`rawPayload`, `ttlInSeconds`) could not be read (400).
    pub const PUBSUB_REQUEST_METADATA: &str = "ERR_PUBSUB_REQUEST_METADATA";
    /// A CloudEvent could not be built from the request (Dapr answers 500).
    pub const PUBSUB_CLOUD_EVENTS_SER: &str = "ERR_PUBSUB_CLOUD_EVENTS_SER";
    /// A bulk publish body or one of its entries could not be read (400).
    pub const PUBSUB_EVENTS_SER: &str = "ERR_PUBSUB_EVENTS_SER";
    /// The component failed to take the message (500).
    pub const PUBSUB_PUBLISH_MESSAGE: &str = "ERR_PUBSUB_PUBLISH_MESSAGE";
    /// Policy forbids the caller this topic (403).
    pub const PUBSUB_FORBIDDEN: &str = "ERR_PUBSUB_FORBIDDEN";
    /// A reserved operation this build does not serve yet (edgecar's own code).
    pub const NOT_IMPLEMENTED: &str = "ERR_NOT_IMPLEMENTED";
    /// A state query failed (bad query, or a store that cannot list its keys).
    pub const STATE_QUERY: &str = "ERR_STATE_QUERY";
    /// A streaming subscription could not start (gRPC `SubscribeTopicEventsAlpha1`).
    pub const PUBSUB_SUBSCRIBE: &str = "ERR_PUBSUB_SUBSCRIBE";
    /// Something failed inside edgecar (edgecar's own code).
    pub const INTERNAL: &str = "ERR_INTERNAL";
    /// edgecar is handling as many device messages as it may; send again later (edgecar's own
    /// code, external broker mode).
    pub const TOO_MANY_REQUESTS: &str = "ERR_TOO_MANY_REQUESTS";
}
