//! Assembles the gateway from its configuration and checked resources: the database, the
//! components, the building blocks, the device layer and the [`Runtime`] they form, and the work
//! that runs beside the request path (watchers, sweeps, input bindings, presence events).
//!
//! Nothing here listens or spawns: [`crate::run`] owns what this returns, serves it on its
//! listeners and stops it. A part the next issues add (links, the cloud outbox) is assembled here
//! and served there, so neither grows into the other.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::blocks;
use crate::blocks::capabilities::{AppInvoker, CapabilitiesBlock};
use crate::blocks::devices::DevicesBlock;
use crate::blocks::invoke::{AppCallbacks, InvokeBlock};
use crate::blocks::metadata::MetadataBlock;
use crate::blocks::pubsub::PubSubBlock;
use crate::blocks::pubsub::delivery;
use crate::blocks::pubsub::devices::DeviceSubscriptions;
use crate::blocks::pubsub::subscription::Subscription;
use crate::blocks::secrets::SecretsBlock;
use crate::blocks::state::StateBlock;
use crate::components::{self, ComponentInfo, state_sled::SledStore};
use crate::config::{self, Config};
use crate::devices::{self, Presence, Registry, link::Links};
use crate::observability;
use crate::outbox::Outbox;
use crate::runtime::Runtime;
use crate::setup::{self, Setup};
use crate::storage::{self, Storage};
use crate::{StartError, call, clock, ops, policy, queue, transport};
use edgecar_capabilities::resiliency::Resiliency;

/// How often resource directories are checked for edited capability manifests, and the device
/// registry for edits.
const RELOAD_POLL: Duration = Duration::from_secs(1);

/// Work that runs for as long as the gateway does; `run` spawns it and aborts it last.
pub type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The gateway, built and not yet serving.
pub struct Gateway {
    /// The request path every transport calls.
    pub runtime: Arc<Runtime>,
    /// The device layer every device transport joins.
    pub devices: devices::Layer,
    /// What the subscription manager delivers, and to whom.
    pub deliveries: Deliveries,
    /// Loaded components, for the admin status page.
    pub components: Vec<ComponentInfo>,
    /// Work beside the request path: watchers, sweeps, input bindings, presence events, the trace
    /// exporter, components' own background work.
    pub background: Vec<Task>,
}

/// The subscription manager's inputs (pub/sub → the app and devices).
pub struct Deliveries {
    /// `kind: Subscription` documents for this app.
    declarative: Vec<Subscription>,
    /// The app events are delivered to, when there is one.
    app: Option<delivery::AppChannel>,
    /// Resiliency policies for deliveries.
    resiliency: Vec<Resiliency>,
    /// What is subscribed now, as `/v1.0/metadata` shows it.
    active: delivery::ActiveSubscriptions,
    /// Devices' subscriptions and the outbox their events wait in.
    devices: delivery::DeviceFeed,
}

impl Deliveries {
    /// Runs the subscriptions until `stop`, then settles what is in flight.
    pub fn run(
        self,
        pubsub: Arc<PubSubBlock>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> impl Future<Output = ()> {
        delivery::run(
            pubsub,
            self.declarative,
            self.app,
            self.resiliency,
            self.active,
            Some(self.devices),
            stop,
        )
    }
}

impl Gateway {
    /// Opens the database and builds everything the request path needs. Every failure is a
    /// [`StartError`] naming what could not start; nothing is left running on one.
    pub async fn assemble(cfg: &Config, mut setup: Setup) -> Result<Self, StartError> {
        // Baseline for the capability watcher, taken before anything slow: an edit made while
        // the gateway starts is noticed rather than lost.
        let resources_seen = blocks::capabilities::newest_change(&cfg.resources_paths);
        private_state_dir(&cfg.state_dir)?;
        let storage = Storage::open(&cfg.state_dir, cfg.storage.cache_capacity.0).await?;
        storage.guard_disk(cfg.storage.min_free_space.0);
        components::apply_runtime_defaults(&mut setup.components, &cfg.app_id);
        let registry = components::build(&setup.components, &storage)
            .await
            .map_err(StartError::Components)?;
        let component_calls = Arc::new(crate::resilience::ComponentCalls::new(
            setup.resiliency.clone(),
        ));
        let grpc_app = grpc_app(cfg)?;
        let invoke = Arc::new(InvokeBlock::new(
            apps(cfg),
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
                .with_policies(setup::merged_policies(&setup.resiliency)),
        );
        engine.replace_manifests(setup.manifests).map_err(|errs| {
            StartError::Components(
                errs.iter()
                    .map(|e| format!("capability manifest: {e}"))
                    .collect(),
            )
        })?;
        let active = delivery::ActiveSubscriptions::default();
        let metadata = MetadataBlock::new(
            cfg.app_id.clone(),
            cfg.site.clone(),
            cfg.app.port,
            cfg.app.address.clone(),
            registry.infos.clone(),
            invoke.apps(),
        )
        .with_subscriptions(active.clone())
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
        let (devices, device_subscriptions) = device_layer(cfg, &storage)?;
        let devices_block = DevicesBlock::new(
            devices.registry.clone(),
            devices.presence.clone(),
            devices.links.clone(),
            cfg.devices.command_timeout.0,
        )
        .with_outbox(
            devices.outbox.clone(),
            device_subscriptions.clone(),
            cfg.devices.outbox.max_command_ttl.0,
        );
        let (tracer, trace_export) = tracer(cfg)?;
        let runtime = Arc::new(Runtime {
            app_id: cfg.app_id.clone(),
            state: StateBlock::new(registry.state, cfg.limits.clone(), component_calls.clone()),
            invoke: invoke.clone(),
            secrets,
            lock: blocks::lock::LockBlock::new(registry.locks),
            bindings: blocks::bindings::BindingsBlock::new(
                registry.output_bindings,
                component_calls,
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
                pubsub,
                cfg.devices.telemetry_pubsub.clone(),
                cfg.devices.telemetry_topic.clone(),
                cfg.devices.telemetry_linger.0,
            ),
            storage,
            component_health: Arc::new(registry.health),
            shutdown: tokio::sync::Notify::new(),
            ready: Arc::new(std::sync::atomic::AtomicBool::new(cfg.app.port == 0)),
            metrics: Arc::new(observability::metrics::CallMetrics::new(
                &cfg.app_id,
                cfg.metrics.enabled,
            )),
            tracer,
        });

        let mut background: Vec<Task> = Vec::new();
        background.extend(trace_export);
        background.extend(device_background(
            cfg,
            &devices,
            &device_subscriptions,
            &runtime,
        ));
        background.push(Box::pin(sweep(
            registry.sled_stores,
            cfg.storage.sweep_interval.0,
        )));
        background.extend(registry.background);
        if cfg.app.port == 0 {
            for input in &registry.input_bindings {
                warn!(binding = %input.name, "input binding has no app to deliver to (start with --app-port); not started");
            }
        } else if !registry.input_bindings.is_empty() {
            background.push(Box::pin(blocks::bindings::run_inputs(
                registry.input_bindings,
                invoke.clone(),
                cfg.app_id.clone(),
            )));
        }
        if !cfg.resources_paths.is_empty() {
            background.push(Box::pin(blocks::capabilities::watch(
                engine,
                cfg.clone(),
                RELOAD_POLL,
                resources_seen,
            )));
        }

        // Events go to the app once it is ready, over gRPC when it is a gRPC app.
        let app = (cfg.app.port != 0).then(|| {
            let channel =
                delivery::AppChannel::new(&cfg.app.address, cfg.app.port, invoke.app_client());
            match grpc_app {
                Some(cb) => channel.with_grpc(cb),
                None => channel,
            }
            .with_ready(runtime.ready.clone())
        });
        Ok(Self {
            deliveries: Deliveries {
                declarative: setup.subscriptions,
                app,
                resiliency: setup.resiliency,
                active,
                devices: delivery::DeviceFeed {
                    subs: device_subscriptions,
                    outbox: devices.outbox.clone(),
                    event_ttl: cfg.devices.outbox.event_ttl.0,
                },
            },
            components: registry.infos,
            runtime,
            devices,
            background,
        })
    }
}

/// Opens the device layer (the registry, what waits on disk for devices, the links transports
/// join) and the devices' pub/sub subscriptions.
fn device_layer(
    cfg: &Config,
    storage: &Storage,
) -> Result<(devices::Layer, Arc<DeviceSubscriptions>), StartError> {
    let registry =
        Registry::open(cfg.device_registry(), cfg.app_ids()).map_err(StartError::Devices)?;
    let registry = Arc::new(match &cfg.devices.login_cache_dir {
        d if d.as_os_str().is_empty() => registry,
        d => registry.with_login_cache_in(d),
    });
    let outbox_cfg = &cfg.devices.outbox;
    let outbox = Outbox::open(
        storage,
        queue::Limits {
            max_messages: outbox_cfg.max_messages,
            max_bytes: outbox_cfg.max_bytes.0,
        },
    )
    .map_err(|e| StartError::Components(vec![e]))?;
    // Devices may not subscribe to what other devices send (telemetry, presence) unless the
    // registry lets them.
    let policy = Arc::new(policy::SubscriptionPolicy::new(
        registry.clone(),
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
    let subscriptions = DeviceSubscriptions::open(storage, cfg.devices.max_subscriptions, policy)
        .map_err(|e| StartError::Components(vec![e]))?;
    // Each transport that serves devices joins the links, and a device is reached
    // (commands, mailbox, subscribed events) on the one it is on.
    let links = Arc::new(Links::default());
    outbox.set_links(&links);
    let layer = devices::Layer {
        registry,
        presence: Arc::new(Presence::default()),
        links,
        outbox,
    };
    Ok((layer, subscriptions))
}

/// The device layer's work beside the path: registry reloads, forgetting removed devices'
/// subscriptions, and presence events when `devices.presenceTopic` is set.
fn device_background(
    cfg: &Config,
    layer: &devices::Layer,
    subscriptions: &Arc<DeviceSubscriptions>,
    runtime: &Arc<Runtime>,
) -> Vec<Task> {
    let mut tasks: Vec<Task> = vec![
        Box::pin(devices::watch(layer.registry.clone(), RELOAD_POLL)),
        Box::pin(forget_removed_devices(
            layer.registry.clone(),
            subscriptions.clone(),
        )),
    ];
    if !cfg.devices.presence_topic.is_empty()
        && let Some(events) = layer.presence.events()
    {
        tasks.push(Box::pin(publish_presence(
            events,
            runtime.clone(),
            cfg.devices.presence_pubsub.clone(),
            cfg.devices.presence_topic.clone(),
        )));
    }
    tasks
}

/// The local apps invocation reaches by app id: `apps:` from the config, and the sidecar's own
/// app when it has a port.
fn apps(cfg: &Config) -> HashMap<String, String> {
    let mut apps: HashMap<String, String> = cfg.apps.clone().into_iter().collect();
    if cfg.app.port != 0 {
        apps.insert(
            cfg.app_id.clone(),
            format!("http://{}:{}", cfg.app.address, cfg.app.port),
        );
    }
    apps
}

/// A gRPC app (`--app-protocol grpc`): invocations, events and binding events go to its
/// AppCallback service instead of HTTP.
fn grpc_app(cfg: &Config) -> Result<Option<Arc<dyn AppCallbacks>>, StartError> {
    if cfg.app.port == 0 || cfg.app.protocol != config::AppProtocol::Grpc {
        return Ok(None);
    }
    let app = transport::grpc::app::GrpcApp::new(&cfg.app.address, cfg.app.port)
        .map_err(StartError::App)?;
    Ok(Some(Arc::new(app)))
}

/// The tracer every call's span goes to, and its exporter, when `tracing.otlpEndpoint` is set.
fn tracer(
    cfg: &Config,
) -> Result<(Option<observability::traces::Tracer>, Option<Task>), StartError> {
    if cfg.tracing.otlp_endpoint.is_empty() {
        return Ok((None, None));
    }
    let service = Some(cfg.tracing.service_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| cfg.app_id.clone());
    let (tracer, export) = observability::traces::Tracer::new(&cfg.tracing.otlp_endpoint, &service)
        .map_err(|e| StartError::Components(vec![e]))?;
    info!(endpoint = %cfg.tracing.otlp_endpoint, service = %service, "exporting traces over OTLP/HTTP");
    Ok((Some(tracer), Some(Box::pin(export))))
}

/// Makes the state directory private before the database opens: the directory is created 0700
/// when missing, and the database directory under it is always 0700, since sled creates its files
/// world-readable (0644) and they hold every app's and device's state.
fn private_state_dir(dir: &std::path::Path) -> Result<(), storage::OpenError> {
    use std::os::unix::fs::PermissionsExt;
    let db = dir.join("edgecar.sled");
    crate::create_private_dir(&db)
        .and_then(|()| std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| storage::OpenError {
            dir: dir.to_path_buf(),
            message: format!("cannot create {} (mode 0700): {e}", db.display()),
        })
}

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
async fn forget_removed_devices(registry: Arc<Registry>, subs: Arc<DeviceSubscriptions>) {
    let mut changes = registry.changes();
    loop {
        subs.retain_devices(|d| registry.contains(d));
        if changes.changed().await.is_err() {
            return;
        }
    }
}
