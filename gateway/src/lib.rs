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
//! - [`runtime`]: the path itself: authorize, then the block that owns the operation.
//! - `assemble`: builds the gateway from its configuration (database, components, blocks, the
//!   device layer, the work beside the path); [`run`] serves what it builds, then stops it.
//! - [`sdnotify`]: readiness and watchdog notifications to systemd (`Type=notify`).
//! - [`memory`]: hands the code only start-up ran back to the kernel once the gateway serves.
//! - [`observability`]: logging, `/metrics`, the status page and the admin listener serving them.

pub mod api;
mod assemble;
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

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{info, warn};

pub use call::{Call, Caller, Params, Reply};
pub use config::Config;
pub use error::{Error, ErrorKind};
pub use ops::Op;
pub use runtime::Runtime;
pub use transport::mqtt::Endpoint as MqttEndpoint;

use assemble::Gateway;
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

/// Creates `path` (and missing parents) readable by its owner only (0700); an existing directory
/// keeps its mode, as the operator chose it.
pub fn create_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// Runs the gateway until `shutdown` resolves: assembles it, serves the Dapr APIs and the device
/// endpoints on `listeners`, then ends device sessions, drains in-flight requests and flushes the
/// database.
///
/// The caller binds the listeners (so tests can bind port 0) and decides what shutdown means
/// (signals in `main`, a channel in tests).
pub async fn run(
    cfg: Config,
    setup: Setup,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let started = std::time::Instant::now();
    let Gateway {
        runtime,
        devices,
        deliveries,
        components,
        background,
    } = Gateway::assemble(&cfg, setup).await?;
    let mut tasks = JoinSet::new();
    for task in background {
        tasks.spawn(task);
    }
    // One stop signal for the listeners and the subscription manager.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let subscriber = tokio::spawn(deliveries.run(runtime.pubsub.clone(), stop_rx.clone()));
    let servers = transport::start(
        &cfg,
        transport::Shared {
            runtime: runtime.clone(),
            devices,
            stop: stop_rx.clone(),
        },
        transport::Sockets {
            mqtt: listeners.mqtt,
            quic: listeners.quic,
            grpc: listeners.grpc,
        },
    )?;
    let admin = listeners.admin.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "admin listener (/metrics, status page) listening");
        }
        let admin = Arc::new(observability::admin::Admin {
            runtime: runtime.clone(),
            site: cfg.site.clone(),
            components,
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
    if let Ok(addr) = listeners.http.local_addr() {
        info!(%addr, app_id = %cfg.app_id, "Dapr HTTP API listening");
    }
    let http = transport::http::serve(
        "http",
        listeners.http,
        Arc::new(HttpApi {
            runtime: runtime.clone(),
            api_token: Some(cfg.http.api_token.clone()).filter(|t| !t.is_empty()),
            max_body: cfg.http.max_body_size.0,
            read_timeout: cfg.http.read_timeout.0,
        }),
        transport::http::Limits {
            max_connections: cfg.http.max_connections,
            read_timeout: cfg.http.read_timeout.0,
            setting: "http.maxConnections",
        },
        stop_rx,
        cfg.shutdown_timeout.0,
    );
    // Every listener is open and every component built: tell systemd (Type=notify).
    sdnotify::notify("READY=1");
    // Code only start-up ran is handed back once the tasks spawned above have started too.
    tasks.spawn(memory::release_after(memory::START_UP_SETTLE));
    if let Some(every) = sdnotify::watchdog_interval() {
        tasks.spawn(sdnotify::watchdog(every));
    }
    let ((), stopping) = tokio::join!(http, async {
        tokio::select! {
            () = shutdown => {}
            () = runtime.shutdown.notified() => {}
        }
        sdnotify::notify("STOPPING=1");
        let _ = stop_tx.send(true);
        tokio::time::Instant::now()
    });
    // One budget for the whole drain: listeners and deliveries were all told at once and settle
    // side by side, each within `shutdownTimeout` of that moment.
    for server in servers.into_iter().chain(admin) {
        let _ = server.await;
    }
    let abort = subscriber.abort_handle();
    if tokio::time::timeout_at(stopping + cfg.shutdown_timeout.0, subscriber)
        .await
        .is_err()
    {
        warn!("deliveries still in flight at the shutdown timeout; they will be redelivered");
        abort.abort();
    }
    tasks.abort_all();
    if let Err(e) = runtime.storage.sync().await {
        warn!(error = %e, "final database flush failed");
    }
    info!("stopped");
    Ok(())
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
