//! edgecar: a Dapr-compatible sidecar and device gateway for edge sites.
//!
//! One daemon gives every local app (Dapr HTTP API v1.0) and, as the work goes on, every device
//! (MQTT, QUIC) state, pub/sub, invocation and capabilities, on Raspberry Pi-class hardware.
//!
//! # Layout
//!
//! Every request takes one path, whatever transport brought it:
//!
//! ```text
//! transport (http) --> Call{caller, op, body} --> policy::authorize --> block (state, metadata) --> component
//!        ^                                                                                          |
//!        +----------------------------------- Reply / Error <---------------------------------------+
//! ```
//!
//! - [`config`]: `edgecar.yaml`, its embedded commented default, Dapr resource files, validation
//!   that reports every error with file and field.
//! - [`call`]: the request path's vocabulary ([`Call`], [`Caller`], [`Op`], [`Reply`]).
//! - [`error`]: the one error type; [`api`] alone maps it to HTTP statuses.
//! - [`transport`]: wire formats to calls (HTTP today).
//! - [`policy`]: what a caller may do.
//! - [`blocks`]: Dapr semantics (state, pub/sub, metadata), written once for all transports.
//! - [`components`]: backends by `spec.type` (`state.sled`, `state.redis`, `state.in-memory`,
//!   `pubsub.sled`, `pubsub.in-memory`, ...).
//! - [`storage`]: the one embedded database and its group commit.
//! - [`queue`]: the durable queue on that database (append, lease/ack, bounds), for local pub/sub
//!   now and the device mailbox and cloud outbox next.
//! - [`runtime`]: wires the path together; [`run`] starts and stops the whole gateway.
//! - [`observability`]: logging set-up.

pub mod api;
pub mod blocks;
pub mod call;
pub mod components;
pub mod config;
pub mod error;
pub mod observability;
pub mod policy;
pub mod queue;
pub mod runtime;
pub mod storage;
pub mod transport;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{info, warn};

pub use call::{Call, Caller, Op, Params, Reply};
pub use config::Config;
pub use error::{Error, ErrorKind};
pub use runtime::Runtime;

use blocks::metadata::MetadataBlock;
use blocks::pubsub::PubSubBlock;
use blocks::pubsub::delivery;
use blocks::pubsub::subscription::load_declarative;
use blocks::state::StateBlock;
use components::state_sled::SledStore;
use config::resources::{Component, Document};
use transport::http::HttpApi;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The embedded database could not be opened.
    #[error(transparent)]
    Storage(#[from] storage::OpenError),
    /// One or more components failed to start.
    #[error("components failed to start:\n  {}", .0.join("\n  "))]
    Components(Vec<String>),
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

/// Runs the gateway until `shutdown` resolves: builds components, serves the HTTP API on
/// `listener`, then drains in-flight requests and flushes the database.
///
/// The caller binds the listener (so tests can bind port 0) and decides what shutdown means
/// (signals in `main`, a channel in tests).
pub async fn run(
    cfg: Config,
    components: Vec<Component>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    run_with_documents(cfg, components, Vec::new(), listener, shutdown).await
}

/// As [`run`], with the resource documents other than components (`Subscription`,
/// `Resiliency`, ...) for the features that own them.
pub async fn run_with_documents(
    cfg: Config,
    components: Vec<Component>,
    documents: Vec<Document>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let storage = storage::Storage::open(&cfg.state_dir, cfg.storage.cache_capacity.0).await?;
    let mut components = components;
    components::apply_runtime_defaults(&mut components, &cfg.app_id);
    let registry = components::build(&components, &storage)
        .await
        .map_err(StartError::Components)?;
    let (declarative, sub_errors) = load_declarative(&documents, &cfg.app_id);
    let (resiliency, res_errors) = delivery::load_resiliency(&documents, &cfg.app_id);
    for e in sub_errors.iter().chain(&res_errors) {
        warn!(error = %e, "resource ignored");
    }
    let subscriptions = delivery::ActiveSubscriptions::default();
    let metadata = MetadataBlock::new(
        cfg.app_id.clone(),
        cfg.site.clone(),
        cfg.app.port,
        cfg.app.address.clone(),
        registry.infos.clone(),
    )
    .with_subscriptions(subscriptions.clone());
    let pubsub = Arc::new(
        PubSubBlock::new(cfg.app_id.clone(), registry.pubsub)
            .with_max_bulk(cfg.limits.max_bulk_items),
    );
    let runtime = Arc::new(Runtime {
        app_id: cfg.app_id.clone(),
        state: StateBlock::new(registry.state, cfg.limits.clone()),
        metadata,
        pubsub: pubsub.clone(),
    });
    let mut tasks = JoinSet::new();
    tasks.spawn(sweep(registry.sled_stores, cfg.storage.sweep_interval.0));
    // Subscriptions run until shutdown begins, then settle what is in flight.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let app =
        (cfg.app.port != 0).then(|| delivery::AppChannel::new(&cfg.app.address, cfg.app.port));
    let subscriber = tokio::spawn(delivery::run(
        pubsub,
        declarative,
        app,
        resiliency,
        subscriptions,
        stop_rx,
    ));
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };

    let api = Arc::new(HttpApi {
        runtime,
        api_token: Some(cfg.http.api_token.clone()).filter(|t| !t.is_empty()),
        max_body: cfg.http.max_body_size.0,
    });
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, app_id = %cfg.app_id, "Dapr HTTP API listening");
    }
    transport::http::serve(listener, api, shutdown, cfg.shutdown_timeout.0).await;
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
