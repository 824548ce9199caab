//! Components: pluggable backends chosen by their Dapr `spec.type`.
//!
//! The registry validates each [`Component`] document against its type (the same checks serve
//! `edgecar check-config` and start-up), builds the backend, and hands building blocks what they
//! need by component name. Adding a component type means one file here and one line in
//! [`TYPES`]; no building block or transport changes. Each component comes with its health
//! check ([`health`]), which `/v1.0/healthz/outbound`, the status page and `/metrics` report.

pub mod binding_cron;
pub mod binding_http;
pub mod configuration;
pub mod health;
pub mod lock;
pub mod lock_memory;
pub mod lock_redis;
pub mod pubsub;
pub mod pubsub_memory;
pub mod pubsub_mqtt;
pub mod pubsub_redis;
pub mod pubsub_sled;
pub mod secretstore;
pub mod state;
pub mod state_memory;
pub mod state_redis;
pub mod state_sled;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::blocks::bindings::{Input, InputBinding, OutputBinding};
use crate::blocks::lock::LockComponent;
use crate::blocks::state::KeyPrefix;
use crate::config::ConfigError;
use crate::config::resources::{Component, MetaValue};
use crate::config::units::parse_duration;
use binding_cron::Schedule;
use binding_http::HttpBinding;
use configuration::ConfigStore;
use lock::LockStore;
use pubsub::{FieldErrors, PubSub};
use pubsub_memory::{MemoryPubSub, MemorySettings};
use pubsub_mqtt::{MqttPubSub, MqttSettings};
use pubsub_redis::{RedisPubSub, StreamSettings};
use pubsub_sled::{SledPubSub, SledSettings};
use secretstore::SecretStore;
use state::StateStore;
use state_redis::{RedisSettings, RedisStore};
use state_sled::SledStore;

use crate::storage::Storage;

/// Every component type edgecar can run, with the versions it accepts.
pub const TYPES: &[(&str, &[&str])] = &[
    ("state.sled", &["v1"]),
    ("state.redis", &["v1"]),
    ("state.in-memory", &["v1"]),
    ("bindings.http", &["v1"]),
    ("bindings.cron", &["v1"]),
    ("bindings.mqtt3", &["v1"]),
    ("bindings.mqtt", &["v1"]),
    ("configuration.file", &["v1"]),
    ("configuration.redis", &["v1"]),
    ("lock.in-memory", &["v1"]),
    ("lock.redis", &["v1"]),
    ("secretstores.local.file", &["v1"]),
    ("secretstores.local.env", &["v1"]),
    ("pubsub.sled", &["v1"]),
    ("pubsub.in-memory", &["v1"]),
    ("pubsub.redis", &["v1"]),
    ("pubsub.mqtt", &["v1"]),
];

/// Whether a component type is Dapr's MQTT binding (`bindings.mqtt3`, or the older `bindings.mqtt`).
pub fn is_mqtt_binding(type_name: &str) -> bool {
    matches!(type_name, "bindings.mqtt3" | "bindings.mqtt")
}

/// Whether a component type is a secret store (built first; resolves others' `secretKeyRef`s).
pub fn is_secret_store(type_name: &str) -> bool {
    type_name.starts_with("secretstores.")
}

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
    /// Lock stores by component name.
    pub locks: HashMap<String, LockComponent>,
    /// Output bindings by component name.
    pub output_bindings: HashMap<String, OutputBinding>,
    /// Input bindings: the runtime runs those the app wants against it.
    pub input_bindings: Vec<Input>,
    /// Configuration stores by component name.
    pub configuration: HashMap<String, Arc<dyn ConfigStore>>,
    /// Work components need done for as long as the gateway runs (file watchers, listeners);
    /// the runtime spawns and owns them.
    pub background: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
    /// Pub/sub components by name.
    pub pubsub: HashMap<String, PubSubComponent>,
    /// sled stores, whose expired keys the runtime sweeps.
    pub sled_stores: Vec<SledStore>,
    /// Descriptions for `/v1.0/metadata`, in load order.
    pub infos: Vec<ComponentInfo>,
    /// Every loaded component's health check.
    pub health: health::Health,
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
        .filter(|c| c.type_name.starts_with("pubsub.") || is_mqtt_binding(&c.type_name))
    {
        // A binding and a pub/sub on the same broker must not share a client id (the broker
        // would disconnect one of them), so a binding's default is `<app-id>-<binding>`.
        let default_id = if is_mqtt_binding(&c.type_name) {
            format!("{app_id}-{}", c.name)
        } else {
            app_id.to_owned()
        };
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
                value: MetaValue::Plain(default_id),
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
    if c.type_name == "secretstores.local.file" && c.meta("secretsFile").is_none_or(str::is_empty) {
        err(
            &meta_field(c, "secretsFile"),
            "required: the path of the JSON file holding the secrets".into(),
        );
    }
    if let Some(v) = c
        .meta("multiValued")
        .filter(|v| !matches!(*v, "" | "true" | "false"))
    {
        err(
            &meta_field(c, "multiValued"),
            format!("{v:?} must be true or false"),
        );
    }
    if (c.type_name.starts_with("state.") || c.type_name.starts_with("lock."))
        && let Err(m) = KeyPrefix::parse(c.meta("keyPrefix"), &c.name)
    {
        err(&meta_field(c, "keyPrefix"), m);
    }
    if c.type_name == "bindings.http" {
        let url = c.meta("url").unwrap_or_default();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            err(
                &meta_field(c, "url"),
                format!("required: an http:// or https:// URL, got {url:?}"),
            );
        }
    }
    if is_mqtt_binding(&c.type_name) {
        if c.meta("topic").is_none_or(str::is_empty) {
            err(
                &meta_field(c, "topic"),
                "required: the topic the binding publishes to and reads from".into(),
            );
        }
        if let Err(m) = directions(c) {
            err(&meta_field(c, "direction"), m);
        }
        if let Err(fields) = MqttSettings::from_component(c) {
            for (field, msg) in fields {
                err(&meta_field(c, field), msg);
            }
        }
    }
    if is_input_binding(c)
        && let Err(m) = input_route(c)
    {
        err(&meta_field(c, "route"), m);
    }
    if c.type_name == "bindings.cron"
        && let Err(m) = Schedule::parse(c.meta("schedule").unwrap_or_default())
    {
        err(&meta_field(c, "schedule"), m);
    }
    if c.type_name == "configuration.file" && c.meta("path").is_none_or(str::is_empty) {
        err(
            &meta_field(c, "path"),
            "required: the YAML file of configuration items".into(),
        );
    }
    let redis = matches!(
        c.type_name.as_str(),
        "state.redis" | "pubsub.redis" | "lock.redis" | "configuration.redis"
    )
    .then(|| redis_settings(c));
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

async fn build_pubsub(
    c: &Component,
    storage: &Storage,
) -> Result<(PubSubComponent, Check), String> {
    let (bus, concurrency, check): (Arc<dyn PubSub>, usize, Check) = match c.type_name.as_str() {
        "pubsub.sled" => {
            let s = SledSettings::from_component(c).map_err(joined)?;
            let n = s.concurrency;
            let check = Arc::new(health::Disk(storage.clone()));
            (
                Arc::new(SledPubSub::new(storage, &c.name, s)),
                n,
                Some(check),
            )
        }
        "pubsub.in-memory" => {
            let s = MemorySettings::from_component(c).map_err(joined)?;
            (Arc::new(MemoryPubSub::new(s)), s.concurrency, None)
        }
        "pubsub.redis" => {
            let redis = redis_settings(c).map_err(|e| joined(e.into_iter().collect()))?;
            let s = StreamSettings::from_component(c, redis).map_err(joined)?;
            let n = s.concurrency;
            let bus = RedisPubSub::connect(s).await?;
            let check = bus.health_check();
            (Arc::new(bus), n, Some(check))
        }
        "pubsub.mqtt" => {
            let s = MqttSettings::from_component(c).map_err(joined)?;
            let n = s.concurrency;
            let bus = MqttPubSub::connect(s).await?;
            let check = bus.health_check();
            (Arc::new(bus), n, Some(check))
        }
        other => return Err(format!("unknown component type {other:?}")),
    };
    let component = PubSubComponent {
        bus,
        type_name: c.type_name.clone(),
        concurrency,
    };
    Ok((component, check))
}

/// A component's health check; `None` when nothing outside the process can fail.
type Check = Option<Arc<dyn health::HealthCheck>>;

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

/// Builds the secret stores among `components` (the local ones need no I/O beyond a file read).
pub fn secret_stores(components: &[Component]) -> (HashMap<String, SecretStore>, Vec<ConfigError>) {
    let mut stores = HashMap::new();
    let mut errors = Vec::new();
    for c in components.iter().filter(|c| is_secret_store(&c.type_name)) {
        let built = match c.type_name.as_str() {
            "secretstores.local.file" => {
                let path = c.meta("secretsFile").unwrap_or_default();
                let sep = c
                    .meta("nestedSeparator")
                    .filter(|s| !s.is_empty())
                    .unwrap_or(":");
                SecretStore::from_file(
                    std::path::Path::new(path),
                    sep,
                    c.meta("multiValued") == Some("true"),
                )
            }
            "secretstores.local.env" => Ok(SecretStore::Env {
                prefix: c.meta("prefix").unwrap_or_default().to_owned(),
            }),
            other => Err(format!("unknown secret store type {other:?}")),
        };
        match built {
            Ok(s) => {
                stores.insert(c.name.clone(), s);
            }
            Err(m) => errors.push(ConfigError::new(&c.source, meta_field(c, "secretsFile"), m)),
        }
    }
    (stores, errors)
}

/// Replaces every `secretKeyRef` in the non-secret-store components with the secret's value,
/// read through the component's `auth.secretStore`. Reports every reference it cannot resolve.
pub fn resolve_secret_refs(
    components: &mut [Component],
    stores: &HashMap<String, SecretStore>,
) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for c in components
        .iter_mut()
        .filter(|c| !is_secret_store(&c.type_name))
    {
        let (source, store_name) = (c.source.clone(), c.secret_store.clone());
        for (i, m) in c.metadata.iter_mut().enumerate() {
            let MetaValue::SecretRef { name, key } = &m.value else {
                continue;
            };
            let field = format!("spec.metadata[{i}].secretKeyRef");
            let Some(store_name) = &store_name else {
                errors.push(ConfigError::new(
                    &source,
                    field,
                    "needs auth.secretStore: the secret store component to read it from",
                ));
                continue;
            };
            let Some(store) = stores.get(store_name) else {
                errors.push(ConfigError::new(
                    &source,
                    "auth.secretStore",
                    format!("no secret store component named {store_name:?} is loaded"),
                ));
                continue;
            };
            match store.get(name).map(|s| s.get(key).cloned()) {
                Ok(Some(v)) => m.value = MetaValue::Plain(v),
                Ok(None) => errors.push(ConfigError::new(
                    &source,
                    field,
                    format!("secret {name:?} has no key {key:?} in store {store_name:?}"),
                )),
                Err(e) => errors.push(ConfigError::new(
                    &source,
                    field,
                    format!("{e} in store {store_name:?}"),
                )),
            }
        }
    }
    errors
}

/// Builds every component. A component that fails to start is an error unless its
/// `spec.ignoreErrors` is true, in which case edgecar starts without it (Dapr's rule).
pub async fn build(components: &[Component], storage: &Storage) -> Result<Registry, Vec<String>> {
    let mut reg = Registry::default();
    let mut errors = Vec::new();
    for c in components {
        if c.type_name.starts_with("pubsub.") {
            match build_pubsub(c, storage).await {
                Ok((p, check)) => {
                    info!(component = %c.name, r#type = %c.type_name, "component loaded");
                    reg.health.add(&c.name, &c.type_name, check);
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
        if is_secret_store(&c.type_name) {
            // Built earlier (setup), since other components needed them; listed here.
            let check: Check = match c.meta("secretsFile") {
                Some(path) if c.type_name == "secretstores.local.file" => {
                    Some(Arc::new(health::File(path.into())))
                }
                _ => None,
            };
            reg.health.add(&c.name, &c.type_name, check);
            reg.infos.push(ComponentInfo {
                name: c.name.clone(),
                type_name: c.type_name.clone(),
                version: c.version.clone(),
                capabilities: Vec::new(),
            });
            continue;
        }
        let key_prefix = match KeyPrefix::parse(c.meta("keyPrefix"), &c.name) {
            Ok(p) => p,
            Err(m) => {
                errors.push(format!("{}: {m}", c.name));
                continue;
            }
        };
        let built = if c.type_name == "bindings.http" {
            let timeout = c
                .meta("responseTimeout")
                .and_then(|s| parse_duration(s).ok())
                .unwrap_or(Duration::from_secs(30));
            HttpBinding::new(c.meta("url").unwrap_or_default(), timeout).map(|b| {
                let check = b.health_check();
                reg.output_bindings
                    .insert(c.name.clone(), OutputBinding::Http(Box::new(b)));
                (Vec::new(), check)
            })
        } else if c.type_name == "bindings.cron" {
            Schedule::parse(c.meta("schedule").unwrap_or_default()).and_then(|s| {
                reg.input_bindings.push(Input::new(
                    &c.name,
                    InputBinding::Cron(s),
                    declares_input(c),
                    input_route(c)?,
                ));
                Ok((Vec::new(), None))
            })
        } else if is_mqtt_binding(&c.type_name) {
            // An output-only binding has no route to check.
            let built = match input_route(c) {
                Err(m) if is_input_binding(c) => Err(m),
                route => build_mqtt_binding(c)
                    .await
                    .map(|(bus, topic, input, output)| {
                        (bus, topic, input, output, route.unwrap_or_default())
                    }),
            };
            built.map(|(bus, topic, input, output, route)| {
                let check = Some(bus.health_check());
                if output {
                    reg.output_bindings.insert(
                        c.name.clone(),
                        OutputBinding::Mqtt {
                            bus: bus.clone(),
                            topic: topic.clone(),
                        },
                    );
                }
                if input {
                    reg.input_bindings.push(Input::new(
                        &c.name,
                        InputBinding::Mqtt { bus, topic },
                        declares_input(c),
                        route,
                    ));
                }
                (Vec::new(), check)
            })
        } else if c.type_name.starts_with("configuration.") {
            build_configuration(c).await.map(|(store, task, check)| {
                reg.configuration.insert(c.name.clone(), store);
                reg.background.push(task);
                (Vec::new(), check)
            })
        } else if c.type_name.starts_with("lock.") {
            build_lock(c).await.map(|(store, check)| {
                reg.locks
                    .insert(c.name.clone(), LockComponent { store, key_prefix });
                (Vec::new(), check)
            })
        } else {
            build_state(c, storage, &mut reg)
                .await
                .map(|(store, check)| {
                    let features = store.features().to_vec();
                    reg.state
                        .insert(c.name.clone(), StateComponent { store, key_prefix });
                    (features, check)
                })
        };
        match built {
            Ok((capabilities, check)) => {
                info!(component = %c.name, r#type = %c.type_name, "component loaded");
                reg.health.add(&c.name, &c.type_name, check);
                reg.infos.push(ComponentInfo {
                    name: c.name.clone(),
                    type_name: c.type_name.clone(),
                    version: c.version.clone(),
                    capabilities,
                });
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

/// Whether a binding's `direction` metadata names `input`: daprd then runs it without asking the
/// app whether it wants its events (the metadata name matched without case, as daprd does).
fn declares_input(c: &Component) -> bool {
    c.metadata
        .iter()
        .filter(|m| m.name.eq_ignore_ascii_case("direction"))
        .filter_map(|m| match &m.value {
            MetaValue::Plain(v) => Some(v),
            MetaValue::SecretRef { .. } => None,
        })
        .any(|v| v.split(',').any(|d| d.trim().eq_ignore_ascii_case("input")))
}

/// The HTTP app path an input binding's events go to: Dapr's `route` metadata, else `/<name>`
/// (daprd's `AddInputBindingRoute`). A route is a path on the app, `/` prepended when missing as
/// daprd's app channel does; a URL, a query or fragment, `..`, spaces or control characters are
/// refused.
fn input_route(c: &Component) -> Result<String, String> {
    let Some(route) = c.meta("route") else {
        return Ok(format!("/{}", c.name));
    };
    let route = route.trim();
    let bad = |why: &str| {
        Err(format!(
            "{route:?} {why}; give a path on the app such as /checkout"
        ))
    };
    if route.is_empty() {
        return bad("is empty");
    }
    if route.contains("://") {
        return bad("is a URL, not a path");
    }
    if route
        .chars()
        .any(|ch| ch.is_whitespace() || ch.is_control() || ch == '?' || ch == '#')
    {
        return bad("must not hold spaces, control characters, '?' or '#'");
    }
    if route.split('/').any(|seg| seg == "..") {
        return bad("must not hold '..'");
    }
    Ok(if route.starts_with('/') {
        route.to_owned()
    } else {
        format!("/{route}")
    })
}

/// Whether a binding reads events for the app (its `route` matters): a cron binding, or an
/// MQTT binding whose `direction` includes input.
fn is_input_binding(c: &Component) -> bool {
    c.type_name == "bindings.cron"
        || (is_mqtt_binding(&c.type_name) && directions(c).is_ok_and(|(input, _)| input))
}

/// Which ways a binding works, from Dapr's `direction` metadata (both when absent).
fn directions(c: &Component) -> Result<(bool, bool), String> {
    let Some(d) = c.meta("direction").filter(|d| !d.trim().is_empty()) else {
        return Ok((true, true));
    };
    let (mut input, mut output) = (false, false);
    for part in d.split(',').map(str::trim) {
        match part {
            "input" => input = true,
            "output" => output = true,
            other => return Err(format!("direction {other:?} must be input, output or both")),
        }
    }
    Ok((input, output))
}

/// One broker connection serving the binding both ways.
async fn build_mqtt_binding(
    c: &Component,
) -> Result<(Arc<MqttPubSub>, String, bool, bool), String> {
    let (input, output) = directions(c)?;
    let topic = c.meta("topic").unwrap_or_default().to_owned();
    let settings = MqttSettings::from_component(c).map_err(joined)?;
    let bus = MqttPubSub::connect(settings).await?;
    Ok((Arc::new(bus), topic, input, output))
}

type Background = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

async fn build_configuration(
    c: &Component,
) -> Result<(Arc<dyn ConfigStore>, Background, Check), String> {
    match c.type_name.as_str() {
        "configuration.file" => {
            let path = std::path::PathBuf::from(c.meta("path").unwrap_or_default());
            let check = Arc::new(health::File(path.clone()));
            let (store, watcher) = configuration::FileStore::open(path, Duration::from_secs(1))?;
            Ok((Arc::new(store), Box::pin(watcher), Some(check)))
        }
        "configuration.redis" => {
            let settings = redis_settings(c).map_err(joined)?;
            let conn = state_redis::connect(&settings)
                .await
                .map_err(|e| e.to_string())?;
            let client = state_redis::client(&settings).map_err(|e| e.to_string())?;
            let (store, listener) =
                configuration::RedisConfig::open(client, conn, settings.db).await;
            let check = store.health_check();
            Ok((Arc::new(store), Box::pin(listener), Some(check)))
        }
        other => Err(format!("unknown configuration type {other:?}")),
    }
}

async fn build_lock(c: &Component) -> Result<(Arc<dyn LockStore>, Check), String> {
    match c.type_name.as_str() {
        "lock.in-memory" => Ok((Arc::new(lock_memory::MemoryLocks::default()), None)),
        "lock.redis" => {
            let settings = redis_settings(c).map_err(joined)?;
            let conn = state_redis::connect(&settings)
                .await
                .map_err(|e| e.to_string())?;
            let locks = lock_redis::RedisLocks::new(conn);
            let check = locks.health_check();
            Ok((Arc::new(locks), Some(check)))
        }
        other => Err(format!("unknown lock type {other:?}")),
    }
}

async fn build_state(
    c: &Component,
    storage: &Storage,
    reg: &mut Registry,
) -> Result<(Arc<dyn StateStore>, Check), String> {
    match c.type_name.as_str() {
        "state.sled" => {
            let s = SledStore::open(storage, &c.name).map_err(|e| e.to_string())?;
            reg.sled_stores.push(s.clone());
            Ok((Arc::new(s), Some(Arc::new(health::Disk(storage.clone())))))
        }
        "state.in-memory" => Ok((Arc::new(state_memory::MemoryStore::default()), None)),
        "state.redis" => {
            let settings = redis_settings(c).map_err(joined)?;
            let store = RedisStore::connect(&settings)
                .await
                .map_err(|e| e.to_string())?;
            let check = store.health_check();
            Ok((Arc::new(store), Some(check)))
        }
        other => Err(format!("unknown component type {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::resources::MetadataItem;

    fn binding(meta: &[(&str, &str)]) -> Component {
        Component {
            name: "b".into(),
            type_name: "bindings.cron".into(),
            version: "v1".into(),
            metadata: meta
                .iter()
                .map(|(k, v)| MetadataItem {
                    name: (*k).into(),
                    value: MetaValue::Plain((*v).into()),
                })
                .collect(),
            ignore_errors: false,
            init_timeout: Duration::from_secs(5),
            secret_store: None,
            source: "b.yaml".into(),
        }
    }

    #[test]
    fn a_binding_declares_input_as_daprd_reads_direction() {
        assert!(declares_input(&binding(&[("direction", "input")])));
        assert!(declares_input(&binding(&[("Direction", "output, Input")])));
        assert!(!declares_input(&binding(&[("direction", "output")])));
        assert!(!declares_input(&binding(&[("schedule", "@every 1s")])));
    }

    #[test]
    fn an_input_binding_route_is_its_name_or_a_checked_path() {
        let route = |r: Option<&str>| {
            let meta: Vec<(&str, &str)> = r.map(|r| ("route", r)).into_iter().collect();
            input_route(&binding(&meta))
        };
        assert_eq!(route(None).unwrap(), "/b");
        assert_eq!(route(Some("/jobs/nightly")).unwrap(), "/jobs/nightly");
        assert_eq!(route(Some(" jobs ")).unwrap(), "/jobs");
        assert_eq!(route(Some("/")).unwrap(), "/");
        for bad in [
            "",
            "  ",
            "http://app/x",
            "/a b",
            "/a?x=1",
            "/a#f",
            "/a/../b",
            "/a\u{7}b",
        ] {
            assert!(route(Some(bad)).is_err(), "{bad:?} accepted");
        }
        // check-config names the field.
        let errs = validate(&binding(&[("schedule", "@every 1s"), ("route", "/a?b")]));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].to_string().contains("(route)"), "{}", errs[0]);
        // An output-only MQTT binding's route is not read, so not checked.
        let mut mqtt = binding(&[("direction", "output"), ("route", "http://x")]);
        mqtt.type_name = "bindings.mqtt3".into();
        assert!(!is_input_binding(&mqtt));
        mqtt.metadata.remove(0);
        assert!(is_input_binding(&mqtt));
    }
}
