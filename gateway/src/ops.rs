//! The operation table: every operation the gateway performs, defined once.
//!
//! An operation is a variant of [`Op`] and one [`Spec`] beside it: its name (the one metrics,
//! traces, logs and devices use), the names deployed devices sent before the table existed (still
//! accepted), who may ask for it (its policy [`Audience`]), and how it reads its parameters from a
//! transport-neutral argument list ([`Args`]). Every transport decodes into this table: the HTTP
//! router names an operation and the path segments it matched; an MQTT request topic and a QUIC
//! request header name an operation and carry its parameters; gRPC methods build the typed
//! variant from their typed fields. No transport keeps its own list of operations.
//!
//! The model is mini-redis's `cmd/*.rs` and `parse.rs`: each command parses itself from a
//! neutral cursor. Adding an operation is a variant, a `Spec` with its parse function, an entry
//! in [`TABLE`], and the building block that performs it; no transport changes unless it gives
//! the operation an address of its own (an HTTP route).

mod args;

use bytes::Bytes;

pub use args::{Args, percent_decode};

use crate::call::{Call, Caller, Params};
use crate::error::{Error, ErrorKind, codes};

/// The state store an operation uses when the caller names none (Dapr's conventional name, and
/// the embedded default's). Only devices omit it; the HTTP and gRPC APIs always name one.
pub const DEFAULT_STORE: &str = "statestore";
/// The pub/sub component an operation uses when the caller names none (Dapr's default name).
pub const DEFAULT_PUBSUB: &str = "pubsub";

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

/// Who may ask for an operation: its policy class. [`crate::policy::authorize`] starts here;
/// finer rules (key namespaces, subscription grants, access control) live in the blocks and in
/// policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Apps and devices alike (a device's keys and locks are namespaced by its id).
    Everyone,
    /// Only the local app: the sidecar's own administration, secrets, the device list, bindings.
    Apps,
    /// Only devices: operations that exist for a device's own connection.
    Devices,
}

/// One operation's definition.
pub struct Spec {
    /// The operation's name: `Op::name()`, the metrics label, and the name devices send.
    pub name: &'static str,
    /// Names devices sent in protocol v1, before names were unified; still accepted.
    pub legacy: &'static [&'static str],
    /// Who may ask for it.
    pub audience: Audience,
    /// Its body is opaque data with a media type (publish, telemetry), not a JSON document: a
    /// transport that cannot carry a content type lets the device protocol infer one.
    pub data_body: bool,
    /// It passes the caller's headers on (invocation, capability calls).
    pub forwards_headers: bool,
    /// Reads the operation's parameters.
    parse: fn(&mut Args) -> Result<Op, Error>,
}

impl std::fmt::Debug for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spec").field("name", &self.name).finish()
    }
}

impl Spec {
    const fn new(name: &'static str, parse: fn(&mut Args) -> Result<Op, Error>) -> Self {
        Spec {
            name,
            legacy: &[],
            audience: Audience::Everyone,
            data_body: false,
            forwards_headers: false,
            parse,
        }
    }

    const fn legacy(mut self, names: &'static [&'static str]) -> Self {
        self.legacy = names;
        self
    }

    const fn only(mut self, audience: Audience) -> Self {
        self.audience = audience;
        self
    }

    const fn data(mut self) -> Self {
        self.data_body = true;
        self
    }

    const fn forwarding(mut self) -> Self {
        self.forwards_headers = true;
        self
    }

    /// Reads the operation from its arguments: the operation, and the parameters with the
    /// arguments it did not read as options and metadata.
    pub fn read(&self, mut args: Args) -> Result<(Op, Params), Error> {
        args.op = self.name;
        let op = (self.parse)(&mut args)?;
        Ok((op, args.finish()))
    }

    /// Whether `name` names this operation (its name or a legacy one).
    fn answers_to(&self, name: &str) -> bool {
        self.name == name || self.legacy.contains(&name)
    }

    /// Whether `caller` is in the operation's audience.
    pub fn admits(&self, caller: &Caller) -> bool {
        match (self.audience, caller) {
            (Audience::Everyone, _)
            | (Audience::Apps, Caller::LocalApp { .. })
            | (Audience::Devices, Caller::Device { .. }) => true,
            (Audience::Apps, Caller::Device { .. })
            | (Audience::Devices, Caller::LocalApp { .. }) => false,
        }
    }
}

fn store(a: &mut Args) -> String {
    a.or("store", DEFAULT_STORE)
}

fn pubsub(a: &mut Args) -> String {
    a.or("pubsub", DEFAULT_PUBSUB)
}

const STATE_GET: Spec = Spec::new("state.get", |a| {
    Ok(Op::StateGet {
        store: store(a),
        key: a.required("key")?,
    })
});
const STATE_BULK_GET: Spec = Spec::new("state.bulk_get", |a| {
    Ok(Op::StateBulkGet { store: store(a) })
})
.legacy(&["state.bulk"]);
const STATE_SAVE: Spec = Spec::new("state.save", |a| Ok(Op::StateSave { store: store(a) }));
const STATE_DELETE: Spec = Spec::new("state.delete", |a| {
    // A device names the ETag as a parameter; HTTP and gRPC callers in their own way.
    if let Some(etag) = a.take("etag").filter(|e| !e.is_empty()) {
        a.params.if_match.get_or_insert(etag);
    }
    Ok(Op::StateDelete {
        store: store(a),
        key: a.required("key")?,
    })
});
const STATE_QUERY: Spec = Spec::new("state.query", |a| Ok(Op::StateQuery { store: store(a) }));
const STATE_TRANSACTION: Spec = Spec::new("state.transaction", |a| {
    Ok(Op::StateTransaction { store: store(a) })
});
const INVOKE: Spec = Spec::new("invoke", |a| {
    let app_id = a.nonempty("app")?;
    let method = a.nonempty("method")?;
    Ok(Op::Invoke {
        app_id,
        method: if method.starts_with('/') {
            method
        } else {
            format!("/{method}")
        },
        verb: a.verb()?,
    })
})
.forwarding();
const CAPABILITY_CALL: Spec = Spec::new("capability.call", |a| {
    let name = a.nonempty("name")?;
    let method = a.take("method").unwrap_or_default();
    Ok(Op::Capability {
        name,
        method: method.trim_start_matches('/').to_owned(),
        query: a.take("query").filter(|q| !q.is_empty()),
        verb: a.verb()?,
    })
})
.legacy(&["capability"])
.forwarding();
const CAPABILITY_LIST: Spec = Spec::new("capability.list", |_| Ok(Op::CapabilityList));
const SECRET_GET: Spec = Spec::new("secrets.get", |a| {
    Ok(Op::SecretGet {
        store: a.required("store")?,
        name: a.required("name")?,
    })
})
.only(Audience::Apps);
const SECRET_BULK: Spec = Spec::new("secrets.bulk", |a| {
    Ok(Op::SecretBulk {
        store: a.required("store")?,
    })
})
.only(Audience::Apps);
const LOCK: Spec = Spec::new("lock.lock", |a| {
    Ok(Op::Lock {
        store: a.required("store")?,
    })
});
const UNLOCK: Spec = Spec::new("lock.unlock", |a| {
    Ok(Op::Unlock {
        store: a.required("store")?,
    })
});
const CONFIGURATION_GET: Spec = Spec::new("configuration.get", |a| {
    Ok(Op::ConfigurationGet {
        store: a.required("store")?,
        keys: a.keys(),
    })
})
.legacy(&["config.get"]);
const CONFIGURATION_SUBSCRIBE: Spec = Spec::new("configuration.subscribe", |a| {
    Ok(Op::ConfigurationSubscribe {
        store: a.required("store")?,
        keys: a.keys(),
    })
})
.only(Audience::Apps);
const CONFIGURATION_UNSUBSCRIBE: Spec = Spec::new("configuration.unsubscribe", |a| {
    Ok(Op::ConfigurationUnsubscribe {
        store: a.required("store")?,
        id: a.required("id")?,
    })
})
.only(Audience::Apps);
const BINDING: Spec = Spec::new("bindings.invoke", |a| {
    Ok(Op::Binding {
        name: a.required("name")?,
    })
})
.only(Audience::Apps);
const METADATA_GET: Spec = Spec::new("metadata.get", |_| Ok(Op::MetadataGet)).only(Audience::Apps);
const METADATA_SET: Spec = Spec::new("metadata.set", |a| {
    Ok(Op::MetadataSet {
        attribute: a.required("attribute")?,
    })
})
.only(Audience::Apps);
const SHUTDOWN: Spec = Spec::new("shutdown", |_| Ok(Op::Shutdown)).only(Audience::Apps);
const PUBLISH: Spec = Spec::new("pubsub.publish", |a| {
    Ok(Op::Publish {
        pubsub: pubsub(a),
        topic: a.required("topic")?,
    })
})
.legacy(&["publish"])
.data();
const BULK_PUBLISH: Spec = Spec::new("pubsub.bulk_publish", |a| {
    Ok(Op::BulkPublish {
        pubsub: pubsub(a),
        topic: a.required("topic")?,
    })
});
const TELEMETRY: Spec = Spec::new("devices.telemetry", |a| {
    Ok(Op::Telemetry {
        stream: a.take("stream").unwrap_or_default(),
    })
})
.legacy(&["telemetry"])
.only(Audience::Devices)
.data();
const DEVICES_LIST: Spec = Spec::new("devices.list", |_| Ok(Op::DevicesList)).only(Audience::Apps);
const DEVICE_GET: Spec = Spec::new("devices.get", |a| {
    Ok(Op::DeviceGet {
        id: a.required("id")?,
    })
})
.only(Audience::Apps);
const MAILBOX_GET: Spec = Spec::new("devices.mailbox.get", |a| {
    Ok(Op::MailboxGet {
        device: a.required("device")?,
        id: a.required("id")?,
    })
})
.only(Audience::Apps);
const DEVICE_SUBSCRIBE: Spec = Spec::new("devices.subscribe", |a| {
    Ok(Op::DeviceSubscribe {
        pubsub: pubsub(a),
        topic: a.required("topic")?,
    })
})
.legacy(&["subscribe"])
.only(Audience::Devices);
const DEVICE_UNSUBSCRIBE: Spec = Spec::new("devices.unsubscribe", |a| {
    Ok(Op::DeviceUnsubscribe {
        pubsub: pubsub(a),
        topic: a.required("topic")?,
    })
})
.legacy(&["unsubscribe"])
.only(Audience::Devices);

/// Every operation, in the order the docs list them.
pub static TABLE: &[&Spec] = &[
    &STATE_GET,
    &STATE_BULK_GET,
    &STATE_SAVE,
    &STATE_DELETE,
    &STATE_QUERY,
    &STATE_TRANSACTION,
    &INVOKE,
    &CAPABILITY_CALL,
    &CAPABILITY_LIST,
    &SECRET_GET,
    &SECRET_BULK,
    &LOCK,
    &UNLOCK,
    &CONFIGURATION_GET,
    &CONFIGURATION_SUBSCRIBE,
    &CONFIGURATION_UNSUBSCRIBE,
    &BINDING,
    &METADATA_GET,
    &METADATA_SET,
    &SHUTDOWN,
    &PUBLISH,
    &BULK_PUBLISH,
    &TELEMETRY,
    &DEVICES_LIST,
    &DEVICE_GET,
    &MAILBOX_GET,
    &DEVICE_SUBSCRIBE,
    &DEVICE_UNSUBSCRIBE,
];

impl Op {
    /// The operation's definition.
    pub fn spec(&self) -> &'static Spec {
        match self {
            Op::StateGet { .. } => &STATE_GET,
            Op::StateBulkGet { .. } => &STATE_BULK_GET,
            Op::StateSave { .. } => &STATE_SAVE,
            Op::StateDelete { .. } => &STATE_DELETE,
            Op::StateQuery { .. } => &STATE_QUERY,
            Op::StateTransaction { .. } => &STATE_TRANSACTION,
            Op::Invoke { .. } => &INVOKE,
            Op::Capability { .. } => &CAPABILITY_CALL,
            Op::CapabilityList => &CAPABILITY_LIST,
            Op::SecretGet { .. } => &SECRET_GET,
            Op::SecretBulk { .. } => &SECRET_BULK,
            Op::Lock { .. } => &LOCK,
            Op::Unlock { .. } => &UNLOCK,
            Op::ConfigurationGet { .. } => &CONFIGURATION_GET,
            Op::ConfigurationSubscribe { .. } => &CONFIGURATION_SUBSCRIBE,
            Op::ConfigurationUnsubscribe { .. } => &CONFIGURATION_UNSUBSCRIBE,
            Op::Binding { .. } => &BINDING,
            Op::MetadataGet => &METADATA_GET,
            Op::MetadataSet { .. } => &METADATA_SET,
            Op::Shutdown => &SHUTDOWN,
            Op::Publish { .. } => &PUBLISH,
            Op::BulkPublish { .. } => &BULK_PUBLISH,
            Op::Telemetry { .. } => &TELEMETRY,
            Op::DevicesList => &DEVICES_LIST,
            Op::DeviceGet { .. } => &DEVICE_GET,
            Op::MailboxGet { .. } => &MAILBOX_GET,
            Op::DeviceSubscribe { .. } => &DEVICE_SUBSCRIBE,
            Op::DeviceUnsubscribe { .. } => &DEVICE_UNSUBSCRIBE,
        }
    }

    /// The operation's name, for logs, metrics and traces.
    pub fn name(&self) -> &'static str {
        self.spec().name
    }
}

/// The operation called `name` (or by a legacy name).
pub fn lookup(name: &str) -> Option<&'static Spec> {
    TABLE.iter().copied().find(|s| s.answers_to(name))
}

/// The names `caller` may use, for error messages.
pub fn names_for(caller: &Caller) -> String {
    TABLE
        .iter()
        .filter(|s| s.admits(caller))
        .map(|s| s.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads operation `name` (or a legacy name) from its arguments: the operation, and the
/// parameters with the arguments it did not read as options and metadata (`metadata.<name>`), as
/// Dapr's query strings do.
pub fn parse(name: &str, args: Args) -> Result<(Op, Params), Error> {
    lookup(name).ok_or_else(|| unknown(name, None))?.read(args)
}

/// The error for an operation name the table does not have, listing the names `caller` (or,
/// without one, anyone) may use.
pub fn unknown(name: &str, caller: Option<&Caller>) -> Error {
    let names = match caller {
        Some(c) => names_for(c),
        None => TABLE.iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
    };
    Error::new(
        ErrorKind::NotFound,
        codes::NOT_FOUND,
        format!("unknown operation {name:?}; operations: {names}"),
    )
}

/// Decodes a call: operation `name`, its arguments (with the parameters the transport already
/// set), its body. Arguments the operation does not read become options and metadata
/// (`metadata.<name>`), as Dapr's query strings do.
pub fn decode(caller: Caller, name: &str, args: Args, body: Bytes) -> Result<Call, Error> {
    let spec = lookup(name).ok_or_else(|| unknown(name, Some(&caller)))?;
    let (op, params) = spec.read(args)?;
    Ok(Call {
        caller,
        op,
        body,
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> Caller {
        Caller::Device { id: "d1".into() }
    }

    #[test]
    fn every_operation_is_in_the_table_once_and_names_are_unique() {
        let mut names: Vec<&str> = TABLE
            .iter()
            .flat_map(|s| std::iter::once(s.name).chain(s.legacy.iter().copied()))
            .collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "a name is used twice");
        for spec in TABLE {
            assert!(std::ptr::eq(lookup(spec.name).unwrap(), *spec));
        }
    }

    #[test]
    fn legacy_device_names_decode_to_the_same_operations() {
        let pairs = [
            ("state.bulk", "state.bulk_get"),
            ("capability", "capability.call"),
            ("publish", "pubsub.publish"),
            ("subscribe", "devices.subscribe"),
            ("unsubscribe", "devices.unsubscribe"),
            ("config.get", "configuration.get"),
            ("telemetry", "devices.telemetry"),
        ];
        for (old, new) in pairs {
            let args = || {
                Args::new()
                    .with("topic", "t")
                    .with("name", "echo")
                    .with("store", "cfg")
            };
            let a = decode(device(), old, args(), Bytes::new()).unwrap();
            let b = decode(device(), new, args(), Bytes::new()).unwrap();
            assert_eq!(a.op, b.op, "{old} and {new}");
            assert_eq!(a.op.name(), new);
        }
    }

    #[test]
    fn defaults_and_required_parameters() {
        let c = decode(
            device(),
            "state.get",
            Args::new().with("key", "k"),
            Bytes::new(),
        )
        .unwrap();
        assert_eq!(
            c.op,
            Op::StateGet {
                store: DEFAULT_STORE.into(),
                key: "k".into()
            }
        );
        let e = decode(device(), "state.get", Args::new(), Bytes::new()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(
            e.message.contains("state.get needs the parameter key"),
            "{e:?}"
        );
        let e = decode(device(), "frobnicate", Args::new(), Bytes::new()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert!(e.message.contains("state.get"), "{e:?}");
        assert!(
            !e.message.contains("secrets.get"),
            "lists only the device's: {e:?}"
        );
    }

    #[test]
    fn unread_arguments_become_options_and_metadata() {
        let c = decode(
            device(),
            "state.delete",
            Args::new()
                .with("key", "k")
                .with("etag", "3")
                .with("concurrency", "first-write")
                .with("metadata.ttlInSeconds", "5"),
            Bytes::new(),
        )
        .unwrap();
        assert_eq!(c.params.if_match.as_deref(), Some("3"));
        assert_eq!(c.params.options["concurrency"], "first-write");
        assert_eq!(c.params.metadata["ttlInSeconds"], "5");
        assert!(!c.params.options.contains_key("key"));
    }

    #[test]
    fn invoke_and_capability_paths() {
        let c = decode(
            device(),
            "invoke",
            Args::new()
                .with("app", "orders")
                .with("method", "v2/items")
                .with("verb", "put"),
            Bytes::new(),
        )
        .unwrap();
        assert_eq!(
            c.op,
            Op::Invoke {
                app_id: "orders".into(),
                method: "/v2/items".into(),
                verb: http::Method::PUT
            }
        );
        let e = decode(
            device(),
            "invoke",
            Args::new()
                .with("app", "a")
                .with("method", "m")
                .with("verb", "no verb"),
            Bytes::new(),
        )
        .unwrap_err();
        assert!(e.message.contains("not an HTTP method"), "{e:?}");
    }

    #[test]
    fn configuration_keys_repeat_or_list() {
        let c = decode(
            device(),
            "config.get",
            Args::new()
                .with("store", "cfg")
                .with("keys", "a, b")
                .with("key", "c"),
            Bytes::new(),
        )
        .unwrap();
        assert_eq!(
            c.op,
            Op::ConfigurationGet {
                store: "cfg".into(),
                keys: vec!["a".into(), "b".into(), "c".into()]
            }
        );
    }

    #[test]
    fn audiences() {
        let app = Caller::LocalApp { app_id: "a".into() };
        assert!(SECRET_GET.admits(&app) && !SECRET_GET.admits(&device()));
        assert!(DEVICE_SUBSCRIBE.admits(&device()) && !DEVICE_SUBSCRIBE.admits(&app));
        assert!(STATE_GET.admits(&app) && STATE_GET.admits(&device()));
    }
}
