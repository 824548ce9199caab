//! Components: pluggable backends chosen by their Dapr `spec.type`.
//!
//! The registry validates each [`Component`] document against its type (the same checks serve
//! `edgecar check-config` and start-up), builds the backend, and hands building blocks what they
//! need by component name. Adding a component type means one file here and one line in
//! [`TYPES`]; no building block or transport changes.

pub mod pubsub;
pub mod pubsub_memory;
pub mod pubsub_mqtt;
pub mod pubsub_redis;
pub mod pubsub_sled;
pub mod state;
pub mod state_memory;
pub mod state_redis;
pub mod state_sled;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::blocks::state::KeyPrefix;
use crate::config::ConfigError;
use crate::config::resources::{Component, MetaValue};
use crate::config::units::parse_duration;
use pubsub::{FieldErrors, PubSub};
use pubsub_memory::{MemoryPubSub, MemorySettings};
use pubsub_mqtt::{MqttPubSub, MqttSettings};
use pubsub_redis::{RedisPubSub, StreamSettings};
use pubsub_sled::{SledPubSub, SledSettings};
use state::StateStore;
use state_redis::{RedisSettings, RedisStore};
use state_sled::SledStore;

use crate::storage::Storage;

/// Every component type edgecar can run, with the versions it accepts.
pub const TYPES: &[(&str, &[&str])] = &[
    ("state.sled", &["v1"]),
    ("state.redis", &["v1"]),
    ("state.in-memory", &["v1"]),
    ("pubsub.sled", &["v1"]),
    ("pubsub.in-memory", &["v1"]),
    ("pubsub.redis", &["v1"]),
    ("pubsub.mqtt", &["v1"]),
];

/// What `/v1.0/metadata` says about a loaded component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentInfo {
    /// `metadata.name`.
    pub name: String,
    /// `spec.type`.
    pub type_name: String,
    /// `spec.version`.
    pub version: String,
    /// Dapr feature names (`ETAG`, `TRANSACTIONAL`, `TTL`).
    pub capabilities: Vec<&'static str>,
}

/// A loaded state store and how its keys are namespaced.
pub struct StateComponent {
    /// The backend.
    pub store: Arc<dyn StateStore>,
    /// Dapr's `keyPrefix` strategy for this store.
    pub key_prefix: KeyPrefix,
}

/// A loaded pub/sub component and how its subscriptions consume.
#[derive(Clone)]
pub struct PubSubComponent {
    /// The backend.
    pub bus: Arc<dyn PubSub>,
    /// `spec.type`, for logs.
    pub type_name: String,
    /// Deliveries in flight per subscription (`concurrency`, `concurrencyMode`).
    pub concurrency: usize,
}

/// Every loaded component, by name.
#[derive(Default)]
pub struct Registry {
    /// State stores by component name.
    pub state: HashMap<String, StateComponent>,
    /// Pub/sub components by name.
    pub pubsub: HashMap<String, PubSubComponent>,
    /// sled stores, whose expired keys the runtime sweeps.
    pub sled_stores: Vec<SledStore>,
    /// Descriptions for `/v1.0/metadata`, in load order.
    pub infos: Vec<ComponentInfo>,
}

/// The components edgecar runs when no resources path is given: Dapr's default names.
pub fn embedded_defaults() -> Vec<Component> {
    let embedded = |name: &str, type_name: &str| Component {
        name: name.into(),
        type_name: type_name.into(),
        version: "v1".into(),
        metadata: Vec::new(),
        ignore_errors: false,
        init_timeout: Duration::from_secs(5),
        secret_store: None,
        source: "<embedded defaults>".into(),
    };
    vec![
        embedded("statestore", "state.sled"),
        embedded("pubsub", "pubsub.sled"),
    ]
}

/// Applies the defaults Dapr's runtime gives pub/sub components before they start: `consumerID`
/// is the app id when not set, and `{appID}` in any metadata value is replaced by the app id.
pub fn apply_runtime_defaults(components: &mut [Component], app_id: &str) {
    use crate::config::resources::MetadataItem;
    for c in components
        .iter_mut()
        .filter(|c| c.type_name.starts_with("pubsub."))
    {
        for m in &mut c.metadata {
            if let MetaValue::Plain(v) = &mut m.value
                && v.contains("{appID}")
            {
                *v = v.replace("{appID}", app_id);
            }
        }
        if c.meta("consumerID").is_none_or(str::is_empty) {
            c.metadata.retain(|m| m.name != "consumerID");
            c.metadata.push(MetadataItem {
                name: "consumerID".into(),
                value: MetaValue::Plain(app_id.to_owned()),
            });
        }
    }
}

/// Checks a component against its type; returns every problem.
pub fn validate(c: &Component) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut err = |field: &str, msg: String| errors.push(ConfigError::new(&c.source, field, msg));
    match TYPES.iter().find(|(t, _)| *t == c.type_name) {
        None => {
            let known: Vec<&str> = TYPES.iter().map(|(t, _)| *t).collect();
            err(
                "spec.type",
                format!(
                    "unknown component type {:?}; known types: {}",
                    c.type_name,
                    known.join(", ")
                ),
            );
            return errors;
        }
        Some((_, versions)) if !versions.contains(&c.version.as_str()) => err(
            "spec.version",
            format!(
                "{} has no version {:?}; supported: {}",
                c.type_name,
                c.version,
                versions.join(", ")
            ),
        ),
        Some(_) => {}
    }
    for (i, m) in c.metadata.iter().enumerate() {
        if let MetaValue::SecretRef { name, .. } = &m.value {
            err(
                &format!("spec.metadata[{i}].secretKeyRef"),
                format!(
                    "refers to secret {name:?}, but this build loads no secret store to resolve it; \
                     put the value in `value` for now"
                ),
            );
        }
    }
    if c.type_name.starts_with("state.")
        && let Err(m) = KeyPrefix::parse(c.meta("keyPrefix"), &c.name)
    {
        err(&meta_field(c, "keyPrefix"), m);
    }
    let redis =
        matches!(c.type_name.as_str(), "state.redis" | "pubsub.redis").then(|| redis_settings(c));
    if let Some(Err(m)) = &redis {
        for (field, msg) in m {
            err(&meta_field(c, field), msg.clone());
        }
    }
    let pubsub_errors: FieldErrors = match (c.type_name.as_str(), redis) {
        ("pubsub.sled", _) => SledSettings::from_component(c).err().unwrap_or_default(),
        ("pubsub.in-memory", _) => MemorySettings::from_component(c).err().unwrap_or_default(),
        ("pubsub.redis", Some(Ok(r))) => StreamSettings::from_component(c, r)
            .err()
            .unwrap_or_default(),
        _ => FieldErrors::new(),
    };
    for (field, msg) in pubsub_errors {
        err(&meta_field(c, field), msg);
    }
    errors
}

fn joined(errors: FieldErrors) -> String {
    errors
        .into_iter()
        .map(|(f, m)| format!("{f}: {m}"))
        .collect::<Vec<_>>()
        .join("; ")
}

async fn build_pubsub(c: &Component, storage: &Storage) -> Result<PubSubComponent, String> {
    let (bus, concurrency): (Arc<dyn PubSub>, usize) = match c.type_name.as_str() {
        "pubsub.sled" => {
            let s = SledSettings::from_component(c).map_err(joined)?;
            let n = s.concurrency;
            (Arc::new(SledPubSub::new(storage, &c.name, s)), n)
        }
        "pubsub.in-memory" => {
            let s = MemorySettings::from_component(c).map_err(joined)?;
            (Arc::new(MemoryPubSub::new(s)), s.concurrency)
        }
        "pubsub.redis" => {
            let redis = redis_settings(c).map_err(|e| joined(e.into_iter().collect()))?;
            let s = StreamSettings::from_component(c, redis).map_err(joined)?;
            let n = s.concurrency;
            (Arc::new(RedisPubSub::connect(s).await?), n)
        }
        "pubsub.mqtt" => {
            let s = MqttSettings::from_component(c).map_err(joined)?;
            let n = s.concurrency;
            (Arc::new(MqttPubSub::connect(s).await?), n)
        }
        other => return Err(format!("unknown component type {other:?}")),
    };
    Ok(PubSubComponent {
        bus,
        type_name: c.type_name.clone(),
        concurrency,
    })
}

fn meta_field(c: &Component, name: &str) -> String {
    match c.metadata.iter().position(|m| m.name == name) {
        Some(i) => format!("spec.metadata[{i}] ({name})"),
        None => format!("spec.metadata ({name})"),
    }
}

fn redis_settings(c: &Component) -> Result<RedisSettings, Vec<(&'static str, String)>> {
    let mut errors = Vec::new();
    let host_port = c.meta("redisHost").unwrap_or_default();
    let (host, port) = match host_port.rsplit_once(':') {
        _ if host_port.is_empty() => {
            errors.push((
                "redisHost",
                "required: the Redis address as host:port".to_string(),
            ));
            (String::new(), 6379)
        }
        Some((h, p)) => match p.parse::<u16>() {
            Ok(p) if !h.is_empty() => (h.to_owned(), p),
            _ => {
                errors.push(("redisHost", format!("{host_port:?} is not host:port")));
                (String::new(), 6379)
            }
        },
        None => (host_port.to_owned(), 6379),
    };
    let db = match c.meta("redisDB").filter(|s| !s.is_empty()) {
        None => 0,
        Some(s) => s.parse::<i64>().unwrap_or_else(|_| {
            errors.push(("redisDB", format!("{s:?} is not a database number")));
            0
        }),
    };
    if c.meta("enableTLS") == Some("true") {
        errors.push((
            "enableTLS",
            "TLS to Redis is not supported yet; use a Redis on the gateway or a TLS tunnel".into(),
        ));
    }
    let mut duration =
        |name: &'static str, default: Duration| match c.meta(name).filter(|s| !s.is_empty()) {
            None => default,
            Some(s) => parse_duration(s).unwrap_or_else(|m| {
                errors.push((name, m));
                default
            }),
        };
    let connect_timeout = duration("dialTimeout", c.init_timeout);
    let response_timeout = duration("readTimeout", Duration::from_secs(5));
    let non_empty = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_owned);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(RedisSettings {
        host,
        port,
        username: non_empty(c.meta("redisUsername")),
        password: non_empty(c.meta("redisPassword")),
        db,
        connect_timeout,
        response_timeout,
    })
}

/// Builds every component. A component that fails to start is an error unless its
/// `spec.ignoreErrors` is true, in which case edgecar starts without it (Dapr's rule).
pub async fn build(components: &[Component], storage: &Storage) -> Result<Registry, Vec<String>> {
    let mut reg = Registry::default();
    let mut errors = Vec::new();
    for c in components {
        if c.type_name.starts_with("pubsub.") {
            match build_pubsub(c, storage).await {
                Ok(p) => {
                    info!(component = %c.name, r#type = %c.type_name, "component loaded");
                    reg.infos.push(ComponentInfo {
                        name: c.name.clone(),
                        type_name: c.type_name.clone(),
                        version: c.version.clone(),
                        capabilities: p.bus.features().to_vec(),
                    });
                    reg.pubsub.insert(c.name.clone(), p);
                }
                Err(m) if c.ignore_errors => {
                    warn!(component = %c.name, error = %m, "component failed to start; ignored (spec.ignoreErrors)");
                }
                Err(m) => errors.push(format!("component {:?} ({}): {m}", c.name, c.type_name)),
            }
            continue;
        }
        let built = build_state(c, storage, &mut reg).await;
        match built {
            Ok(store) => {
                let key_prefix = KeyPrefix::parse(c.meta("keyPrefix"), &c.name)
                    .map_err(|m| format!("{}: {m}", c.name));
                match key_prefix {
                    Ok(key_prefix) => {
                        info!(component = %c.name, r#type = %c.type_name, "component loaded");
                        reg.infos.push(ComponentInfo {
                            name: c.name.clone(),
                            type_name: c.type_name.clone(),
                            version: c.version.clone(),
                            capabilities: store.features().to_vec(),
                        });
                        reg.state
                            .insert(c.name.clone(), StateComponent { store, key_prefix });
                    }
                    Err(m) => errors.push(m),
                }
            }
            Err(m) if c.ignore_errors => {
                warn!(component = %c.name, error = %m, "component failed to start; ignored (spec.ignoreErrors)");
            }
            Err(m) => errors.push(format!("component {:?} ({}): {m}", c.name, c.type_name)),
        }
    }
    if errors.is_empty() {
        Ok(reg)
    } else {
        Err(errors)
    }
}

async fn build_state(
    c: &Component,
    storage: &Storage,
    reg: &mut Registry,
) -> Result<Arc<dyn StateStore>, String> {
    match c.type_name.as_str() {
        "state.sled" => {
            let s = SledStore::open(storage, &c.name).map_err(|e| e.to_string())?;
            reg.sled_stores.push(s.clone());
            Ok(Arc::new(s))
        }
        "state.in-memory" => Ok(Arc::new(state_memory::MemoryStore::default())),
        "state.redis" => {
            let settings = redis_settings(c).map_err(|errs| {
                errs.into_iter()
                    .map(|(f, m)| format!("{f}: {m}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            })?;
            let store = RedisStore::connect(&settings)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Arc::new(store))
        }
        other => Err(format!("unknown component type {other:?}")),
    }
}
