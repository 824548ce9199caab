//! edgecar: a Dapr-compatible sidecar and device gateway for edge sites.
//!
//! One daemon gives every local app (Dapr HTTP and gRPC APIs) and every device (MQTT or QUIC)
//! state, pub/sub, invocation and capabilities, on Raspberry Pi-class hardware.
//!
//! # Layout
//!
//! Every request takes one path, whatever transport brought it:
//!
//! ```text
//! transport (http, grpc, mqtt, quic) --> Call{caller, op, body} --> policy::authorize --> block (state, ...) --> component
//!        ^                                                                                          |
//!        +----------------------------------- Reply / Error <---------------------------------------+
//! ```
//!
//! - [`config`]: `edgecar.yaml`, its embedded commented default, Dapr resource files, validation
//!   that reports every error with file and field.
//! - [`call`]: the request path's vocabulary ([`Call`], [`Caller`], [`Reply`]).
//! - [`ops`]: the operation table: every [`Op`] defined once (name, legacy device names,
//!   audience, how it reads its arguments), which every transport decodes into.
//! - [`error`]: the one error type; [`api`] alone maps it to HTTP statuses.
//! - [`clock`]: Unix milliseconds and RFC 3339 text.
//! - [`transport`]: wire formats to calls: HTTP and gRPC (apps, and gRPC apps' callbacks), MQTT
//!   (the device endpoint, or the same protocol through an external broker), QUIC (the device
//!   endpoint on one UDP port); HTTP, MQTT and QUIC accept on one listener skeleton.
//! - [`devices`]: the device registry (hashed credentials, hot-reloaded), presence, each device's
//!   current link, its rate budget, and a device request's rules whatever carried it.
//! - [`policy`]: what a caller may do.
//! - [`blocks`]: Dapr semantics (state, pub/sub, invocation, bindings, secrets, configuration,
//!   locks, capabilities, metadata, device commands and telemetry), written once for all
//!   transports.
//! - [`setup`]: resource documents (components, subscriptions, access control, resiliency,
//!   capabilities) checked and prepared.
//! - [`resilience`]: Dapr resiliency policies applied around the gateway's own calls.
//! - [`components`]: backends by `spec.type` (`state.*`, `pubsub.*`, `bindings.*`,
//!   `secretstores.*`, `configuration.*`, `lock.*`).
//! - [`storage`]: the one embedded database and its group commit.
//! - [`queue`]: the durable queue on that database (append, lease/ack, bounds), for local pub/sub,
//!   device outboxes and, next, the cloud outbox.
//! - [`outbox`]: what waits on disk for each device (mailbox commands, subscribed events) and its
//!   delivery while the device is connected.
//! - [`watch`]: noticing edited files (capability manifests, the device registry).
//! - [`runtime`]: wires the path together; [`run`] starts and stops the whole gateway.
//! - [`sdnotify`]: readiness and watchdog notifications to systemd (`Type=notify`).
//! - [`memory`]: hands the code only start-up ran back to the kernel once the gateway serves.
//! - [`observability`]: logging, `/metrics`, the status page and the admin listener serving them.

pub mod api;
pub mod backoff;
pub mod blocks;
pub mod call;
pub mod clock;
pub mod components;
pub mod config;
pub mod devices;
pub mod error;
pub mod memory;
pub mod observability;
pub mod ops;
pub mod outbox;
pub mod policy;
pub mod queue;
pub mod resilience;
pub mod runtime;
pub mod sdnotify;
pub mod setup;
pub mod storage;
pub mod transport;
pub mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{info, warn};

pub use call::{Call, Caller, Params, Reply};
pub use config::Config;
pub use error::{Error, ErrorKind};
pub use ops::Op;
pub use runtime::Runtime;
pub use transport::mqtt::Endpoint as MqttEndpoint;

use blocks::capabilities::{AppInvoker, CapabilitiesBlock};
use blocks::devices::DevicesBlock;
use blocks::invoke::InvokeBlock;
use blocks::metadata::MetadataBlock;
use blocks::pubsub::PubSubBlock;
use blocks::pubsub::delivery;
use blocks::secrets::SecretsBlock;
use blocks::state::StateBlock;
use components::state_sled::SledStore;
use setup::Setup;
use transport::http::HttpApi;

/// The sockets the gateway serves on, bound by the caller (tests bind port 0).
pub struct Listeners {
    /// The Dapr HTTP API.
    pub http: TcpListener,
    /// The MQTT device endpoint, when enabled.
    pub mqtt: Option<TcpListener>,
    /// The Dapr gRPC API, when enabled.
    pub grpc: Option<TcpListener>,
    /// The admin listener (`/metrics`, the status page), when enabled.
    pub admin: Option<TcpListener>,
    /// The QUIC device endpoint's UDP socket, when enabled.
    pub quic: Option<std::net::UdpSocket>,
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The embedded database could not be opened.
    #[error(transparent)]
    Storage(#[from] storage::OpenError),
    /// One or more components failed to start.
    #[error("components failed to start:\n  {}", .0.join("\n  "))]
    Components(Vec<String>),
    /// The MQTT TLS certificate or key could not be loaded.
    #[error("mqtt.tls: {0}")]
    Tls(String),
    /// The device registry is invalid.
    #[error("device registry:\n  {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Devices(Vec<config::ConfigError>),
    /// The app channel cannot be set up (a bad app address).
    #[error("app: {0}")]
    App(String),
    /// The external broker settings cannot be used (e.g. the password file went missing).
    #[error("mqtt.broker: {0}")]
    Broker(String),
    /// The QUIC endpoint's certificate could not be made or loaded, or its socket used.
    #[error("quic: {0}")]
    Quic(String),
}

/// How often resource directories are checked for edited capability manifests, and the device
/// registry for edits.
const RELOAD_POLL: Duration = Duration::from_secs(1);

/// Periodically removes expired keys from sled stores.
async fn sweep(stores: Vec<SledStore>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let stores = stores.clone();
        let swept = tokio::task::spawn_blocking(move || {
            let now = components::state::unix_now();
            stores
                .iter()
                .map(|s| s.sweep_expired(now))
                .collect::<Vec<_>>()
        })
        .await;
        if let Ok(results) = swept {
            for r in results {
                if let Err(e) = r {
                    warn!(error = %e, "expired-key sweep failed");
                }
            }
        }
    }
}

/// Creates `path` (and missing parents) readable by its owner only (0700); an existing directory
/// keeps its mode, as the operator chose it.
pub fn create_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// Makes the state directory private before the database opens: the directory is created 0700
/// when missing, and the database directory under it is always 0700, since sled creates its files
/// world-readable (0644) and they hold every app's and device's state.
fn private_state_dir(dir: &std::path::Path) -> Result<(), storage::OpenError> {
    use std::os::unix::fs::PermissionsExt;
    let db = dir.join("edgecar.sled");
    create_private_dir(&db)
        .and_then(|()| std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| storage::OpenError {
            dir: dir.to_path_buf(),
            message: format!("cannot create {} (mode 0700): {e}", db.display()),
        })
}

/// Runs the gateway until `shutdown` resolves: builds components, serves the HTTP API and the MQTT
/// device endpoint on `listeners`, then ends device sessions, drains in-flight requests and
/// flushes the database.
///
/// The caller binds the listeners (so tests can bind port 0) and decides what shutdown means
/// (signals in `main`, a channel in tests).
pub async fn run(
    cfg: Config,
    setup: Setup,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    // Baseline for the capability watcher, taken before anything slow: an edit made while the
    // gateway starts is noticed rather than lost.
    let resources_seen = blocks::capabilities::newest_change(&cfg.resources_paths);
    private_state_dir(&cfg.state_dir)?;
    let started = std::time::Instant::now();
    let storage = storage::Storage::open(&cfg.state_dir, cfg.storage.cache_capacity.0).await?;
    storage.guard_disk(cfg.storage.min_free_space.0);
    let mut setup = setup;
    components::apply_runtime_defaults(&mut setup.components, &cfg.app_id);
    let registry = components::build(&setup.components, &storage)
        .await
        .map_err(StartError::Components)?;
    let mut apps: std::collections::HashMap<String, String> =
        cfg.apps.clone().into_iter().collect();
    if cfg.app.port != 0 {
        apps.insert(
            cfg.app_id.clone(),
            format!("http://{}:{}", cfg.app.address, cfg.app.port),
        );
    }
    let policies = setup::merged_policies(&setup.resiliency);
    let component_calls = Arc::new(resilience::ComponentCalls::new(setup.resiliency.clone()));
    // A gRPC app (--app-protocol grpc): invocations, events and binding events go to its
    // AppCallback service instead of HTTP.
    let grpc_app: Option<Arc<dyn blocks::invoke::AppCallbacks>> =
        if cfg.app.port != 0 && cfg.app.protocol == config::AppProtocol::Grpc {
            let app = transport::grpc::app::GrpcApp::new(&cfg.app.address, cfg.app.port)
                .map_err(StartError::App)?;
            Some(Arc::new(app))
        } else {
            None
        };
    let invoke = Arc::new(InvokeBlock::new(
        apps,
        setup.access_control,
        setup.resiliency.clone(),
        usize::try_from(cfg.http.max_body_size.0).unwrap_or(usize::MAX),
    ));
    if let Some(cb) = &grpc_app {
        invoke.set_grpc_app(&cfg.app_id, cb.clone());
    }
    let secrets = Arc::new(SecretsBlock::new(setup.secret_stores, setup.secret_scopes));
    let engine = edgecar_capabilities::Engine::new(
        edgecar_capabilities::EngineOptions::default()
            .with_invoker(Arc::new(AppInvoker(invoke.clone())))
            .with_secrets(secrets.clone())
            .with_policies(policies),
    );
    engine.replace_manifests(setup.manifests).map_err(|errs| {
        StartError::Components(
            errs.iter()
                .map(|e| format!("capability manifest: {e}"))
                .collect(),
        )
    })?;
    let subscriptions = delivery::ActiveSubscriptions::default();
    let metadata = MetadataBlock::new(
        cfg.app_id.clone(),
        cfg.site.clone(),
        cfg.app.port,
        cfg.app.address.clone(),
        registry.infos.clone(),
        invoke.apps(),
    )
    .with_subscriptions(subscriptions.clone())
    .with_app_protocol(match cfg.app.protocol {
        config::AppProtocol::Http => "http",
        config::AppProtocol::Grpc => "grpc",
    });
    let pubsub = Arc::new(
        PubSubBlock::new(cfg.app_id.clone(), registry.pubsub)
            .with_resilience(component_calls.clone())
            .with_retained_topic(&cfg.devices.telemetry_pubsub, &cfg.devices.telemetry_topic)
            .with_max_bulk(cfg.limits.max_bulk_items),
    );
    let device_registry = Arc::new(
        devices::Registry::open(cfg.device_registry(), cfg.app_ids())
            .map_err(StartError::Devices)
            .map(|r| match &cfg.devices.login_cache_dir {
                d if d.as_os_str().is_empty() => r,
                d => r.with_login_cache_in(d),
            })?,
    );
    let presence = Arc::new(devices::Presence::default());
    let outbox_cfg = &cfg.devices.outbox;
    let outbox = outbox::Outbox::open(
        &storage,
        queue::Limits {
            max_messages: outbox_cfg.max_messages,
            max_bytes: outbox_cfg.max_bytes.0,
        },
    )
    .map_err(|e| StartError::Components(vec![e]))?;
    let subscription_policy = Arc::new(policy::SubscriptionPolicy::new(
        device_registry.clone(),
        vec![
            (
                cfg.devices.telemetry_pubsub.clone(),
                cfg.devices.telemetry_topic.clone(),
            ),
            (
                cfg.devices.presence_pubsub.clone(),
                cfg.devices.presence_topic.clone(),
            ),
        ],
    ));
    let device_subs = blocks::pubsub::devices::DeviceSubscriptions::open(
        &storage,
        cfg.devices.max_subscriptions,
        subscription_policy,
    )
    .map_err(|e| StartError::Components(vec![e]))?;
    // The device layer's links: each transport that serves devices joins it, and a device is
    // reached (commands, mailbox, subscribed events) on the one it is on.
    let links = Arc::new(devices::link::Links::default());
    outbox.set_links(&links);
    let devices_block = DevicesBlock::new(
        device_registry.clone(),
        presence.clone(),
        links.clone(),
        cfg.devices.command_timeout.0,
    )
    .with_outbox(
        outbox.clone(),
        device_subs.clone(),
        outbox_cfg.max_command_ttl.0,
    );
    let presence_events = (!cfg.devices.presence_topic.is_empty())
        .then(|| presence.events())
        .flatten();
    let tracer = if cfg.tracing.otlp_endpoint.is_empty() {
        None
    } else {
        let service = Some(cfg.tracing.service_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| cfg.app_id.clone());
        let (tracer, export) =
            observability::traces::Tracer::new(&cfg.tracing.otlp_endpoint, &service)
                .map_err(|e| StartError::Components(vec![e]))?;
        info!(endpoint = %cfg.tracing.otlp_endpoint, service = %service, "exporting traces over OTLP/HTTP");
        Some((tracer, export))
    };
    let (tracer, trace_export) = match tracer {
        Some((t, e)) => (Some(t), Some(e)),
        None => (None, None),
    };
    let runtime = Arc::new(Runtime {
        app_id: cfg.app_id.clone(),
        state: StateBlock::new(registry.state, cfg.limits.clone(), component_calls.clone()),
        invoke: invoke.clone(),
        secrets,
        lock: blocks::lock::LockBlock::new(registry.locks),
        bindings: blocks::bindings::BindingsBlock::new(
            registry.output_bindings,
            component_calls.clone(),
        ),
        configuration: blocks::configuration::ConfigurationBlock::new(
            registry.configuration,
            invoke.clone(),
            cfg.app_id.clone(),
        ),
        capabilities: CapabilitiesBlock::new(engine.clone()),
        metadata,
        pubsub: pubsub.clone(),
        devices: devices_block,
        telemetry: blocks::telemetry::TelemetryBlock::new(
            pubsub.clone(),
            cfg.devices.telemetry_pubsub.clone(),
            cfg.devices.telemetry_topic.clone(),
            cfg.devices.telemetry_linger.0,
        ),
        storage: storage.clone(),
        component_health: Arc::new(registry.health),
        shutdown: tokio::sync::Notify::new(),
        ready: Arc::new(std::sync::atomic::AtomicBool::new(cfg.app.port == 0)),
        metrics: Arc::new(observability::metrics::CallMetrics::new(
            &cfg.app_id,
            cfg.metrics.enabled,
        )),
        tracer,
    });
    let mut tasks = JoinSet::new();
    if let Some(export) = trace_export {
        tasks.spawn(export);
    }
    tasks.spawn(devices::watch(device_registry.clone(), RELOAD_POLL));
    tasks.spawn(forget_removed_devices(
        device_registry.clone(),
        device_subs.clone(),
    ));
    if let Some(events) = presence_events {
        tasks.spawn(publish_presence(
            events,
            runtime.clone(),
            cfg.devices.presence_pubsub.clone(),
            cfg.devices.presence_topic.clone(),
        ));
    }
    tasks.spawn(sweep(registry.sled_stores, cfg.storage.sweep_interval.0));
    for task in registry.background {
        tasks.spawn(task);
    }
    if cfg.app.port == 0 {
        for input in &registry.input_bindings {
            warn!(binding = %input.name, "input binding has no app to deliver to (start with --app-port); not started");
        }
    } else if !registry.input_bindings.is_empty() {
        tasks.spawn(blocks::bindings::run_inputs(
            registry.input_bindings,
            invoke.clone(),
            cfg.app_id.clone(),
        ));
    }
    if !cfg.resources_paths.is_empty() {
        tasks.spawn(blocks::capabilities::watch(
            engine,
            cfg.clone(),
            RELOAD_POLL,
            resources_seen,
        ));
    }
    // One stop signal for both listeners and the subscription manager.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Subscriptions run until shutdown begins, then settle what is in flight.
    let app =
        (cfg.app.port != 0).then(|| delivery::AppChannel::new(&cfg.app.address, cfg.app.port));
    let app = match (app, &grpc_app) {
        (Some(channel), Some(cb)) => Some(channel.with_grpc(cb.clone())),
        (channel, _) => channel,
    }
    .map(|channel| channel.with_ready(runtime.ready.clone()));
    let subscriber = tokio::spawn(delivery::run(
        pubsub,
        setup.subscriptions,
        app,
        setup.resiliency,
        subscriptions,
        Some(delivery::DeviceFeed {
            subs: device_subs,
            outbox: outbox.clone(),
            event_ttl: cfg.devices.outbox.event_ttl.0,
        }),
        stop_rx.clone(),
    ));
    let servers = transport::start(
        &cfg,
        transport::Shared {
            runtime: runtime.clone(),
            registry: device_registry.clone(),
            presence: presence.clone(),
            links: links.clone(),
            outbox: outbox.clone(),
            stop: stop_rx.clone(),
        },
        transport::Sockets {
            mqtt: listeners.mqtt,
            quic: listeners.quic,
            grpc: listeners.grpc,
        },
    )?;
    let requested = runtime.clone();
    let admin = listeners.admin.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "admin listener (/metrics, status page) listening");
        }
        let admin = Arc::new(observability::admin::Admin {
            runtime: runtime.clone(),
            site: cfg.site.clone(),
            components: registry.infos.clone(),
            started,
        });
        tokio::spawn(transport::http::serve(
            "admin",
            listener,
            admin,
            observability::admin::LIMITS,
            stop_rx.clone(),
            cfg.shutdown_timeout.0,
        ))
    });
    let api = Arc::new(HttpApi {
        runtime,
        api_token: Some(cfg.http.api_token.clone()).filter(|t| !t.is_empty()),
        max_body: cfg.http.max_body_size.0,
        read_timeout: cfg.http.read_timeout.0,
    });
    if let Ok(addr) = listeners.http.local_addr() {
        info!(%addr, app_id = %cfg.app_id, "Dapr HTTP API listening");
    }
    let http = transport::http::serve(
        "http",
        listeners.http,
        api,
        transport::http::Limits {
            max_connections: cfg.http.max_connections,
            read_timeout: cfg.http.read_timeout.0,
            setting: "http.maxConnections",
        },
        stop_rx.clone(),
        cfg.shutdown_timeout.0,
    );
    // Every listener is open and every component built: tell systemd (Type=notify).
    sdnotify::notify("READY=1");
    // Code only start-up ran is handed back once the tasks spawned above have started too.
    tasks.spawn(memory::release_after(memory::START_UP_SETTLE));
    if let Some(every) = sdnotify::watchdog_interval() {
        tasks.spawn(sdnotify::watchdog(every));
    }
    tokio::join!(http, async move {
        tokio::select! {
            () = shutdown => {}
            () = requested.shutdown.notified() => {}
        }
        sdnotify::notify("STOPPING=1");
        let _ = stop_tx.send(true);
    });
    for server in servers {
        let _ = server.await;
    }
    if let Some(a) = admin {
        let _ = a.await;
    }
    let abort = subscriber.abort_handle();
    if tokio::time::timeout(cfg.shutdown_timeout.0, subscriber)
        .await
        .is_err()
    {
        warn!("deliveries still in flight at the shutdown timeout; they will be redelivered");
        abort.abort();
    }
    tasks.abort_all();
    if let Err(e) = storage.sync().await {
        warn!(error = %e, "final database flush failed");
    }
    info!("stopped");
    Ok(())
}

/// Publishes device connect/disconnect events as CloudEvents whose source is the device.
async fn publish_presence(
    mut events: tokio::sync::mpsc::Receiver<devices::PresenceEvent>,
    runtime: Arc<Runtime>,
    pubsub: String,
    topic: String,
) {
    while let Some(e) = events.recv().await {
        let (kind, body) = if e.connected {
            (
                "io.edgecar.device.connected",
                serde_json::json!({"device": e.device, "connected": true, "protocol": e.protocol, "at": clock::rfc3339(e.at_ms / 1000)}),
            )
        } else {
            (
                "io.edgecar.device.disconnected",
                serde_json::json!({"device": e.device, "connected": false, "reason": e.reason, "at": clock::rfc3339(e.at_ms / 1000)}),
            )
        };
        let mut params = call::Params {
            content_type: Some("application/json".into()),
            ..Default::default()
        };
        params
            .metadata
            .insert("cloudevent.type".into(), kind.into());
        let c = call::Call {
            caller: call::Caller::Device {
                id: e.device.clone(),
            },
            op: ops::Op::Publish {
                pubsub: pubsub.clone(),
                topic: topic.clone(),
            },
            body: bytes::Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
            params,
        };
        if let Err(err) = runtime.handle(c).await {
            warn!(device = %e.device, error = %err.message, "could not publish a device presence event");
        }
    }
}

/// Ends the pub/sub subscriptions of devices removed from the registry (also while edgecar was
/// stopped).
async fn forget_removed_devices(
    registry: Arc<devices::Registry>,
    subs: Arc<blocks::pubsub::devices::DeviceSubscriptions>,
) {
    let mut changes = registry.changes();
    loop {
        subs.retain_devices(|d| registry.contains(d));
        if changes.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod layering {
    //! The request path's layers, checked on the source: building blocks, components, queues and
    //! the device layer know no transport (DESIGN.md, "One path through the house").

    use std::path::Path;

    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn blocks_components_queues_and_the_device_layer_import_no_transport() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        for dir in ["blocks", "components", "queue", "devices", "ops"] {
            rust_files(&src.join(dir), &mut files);
        }
        for file in [
            "blocks.rs",
            "components.rs",
            "queue.rs",
            "devices.rs",
            "outbox.rs",
            "ops.rs",
            "policy.rs",
            "runtime.rs",
        ] {
            files.push(src.join(file));
        }
        assert!(files.len() > 30, "found {} files", files.len());
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                assert!(
                    !code.contains("crate::transport") && !code.contains("super::transport"),
                    "{}:{}: imports a transport: {line}",
                    f.display(),
                    n + 1
                );
            }
        }
    }
}
