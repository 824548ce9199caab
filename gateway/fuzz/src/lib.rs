//! Shared pieces of the fuzz targets: an in-process gateway (every building block, in-memory
//! components, no listener) that the HTTP and device targets drive with decoded requests, and a
//! small field splitter for structured inputs.
//!
//! The gateway is built once per fuzz process, the way `edgecar::run` builds it, minus sockets
//! and background tasks. Apps and bindings point at `127.0.0.1:1`, so calls to them fail at once
//! instead of leaving the machine.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use edgecar::blocks;
use edgecar::call::{Call, Reply};
use edgecar::config::resources::{Component, MetaValue, MetadataItem};
use edgecar::error::Error;
use edgecar::{Config, Runtime};

/// Where requests that leave the gateway go: nothing listens there, so they fail fast.
pub const NOWHERE: &str = "http://127.0.0.1:1";

/// The gateway's app id in the harness.
pub const APP_ID: &str = "edgecar";

/// A gateway and the runtime it runs on.
pub struct Harness {
    /// Current-thread runtime: every input runs to completion inside `block_on`.
    pub rt: tokio::runtime::Runtime,
    /// The request path.
    pub runtime: Arc<Runtime>,
    /// Holds the state directory and resource files for the life of the process.
    _dir: tempfile::TempDir,
}

impl Harness {
    /// Runs one call to completion (bounded: nothing in the harness waits on the network).
    pub fn handle(&self, call: Call) -> Result<Reply, Error> {
        let runtime = self.runtime.clone();
        self.rt.block_on(async move {
            match tokio::time::timeout(Duration::from_secs(10), runtime.handle(call)).await {
                Ok(r) => r,
                Err(_) => panic!("a call took more than 10 s in the fuzz harness (a hang)"),
            }
        })
    }
}

fn component(name: &str, type_name: &str, meta: &[(&str, &str)]) -> Component {
    Component {
        name: name.into(),
        type_name: type_name.into(),
        version: "v1".into(),
        metadata: meta
            .iter()
            .map(|(n, v)| MetadataItem {
                name: (*n).into(),
                value: MetaValue::Plain((*v).into()),
            })
            .collect(),
        ignore_errors: false,
        init_timeout: Duration::from_secs(5),
        secret_store: None,
        source: PathBuf::from("<fuzz>"),
    }
}

/// The shared gateway, built on first use.
pub fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(build)
}

fn build() -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let config_file = dir.path().join("config.yaml");
    std::fs::write(&config_file, "feature-a: on\nlimit: \"10\"\n").expect("config file");
    let secrets_file = dir.path().join("secrets.json");
    std::fs::write(
        &secrets_file,
        r#"{"db":{"user":"u","pass":"p"},"token":"t"}"#,
    )
    .expect("secrets file");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut cfg = Config::default();
    cfg.app_id = APP_ID.into();
    cfg.state_dir = dir.path().join("state");
    let components = vec![
        component("statestore", "state.in-memory", &[]),
        component("shared", "state.in-memory", &[("keyPrefix", "none")]),
        component("pubsub", "pubsub.in-memory", &[("maxMessages", "100")]),
        component("lockstore", "lock.in-memory", &[]),
        component(
            "config",
            "configuration.file",
            &[("path", config_file.to_str().unwrap_or_default())],
        ),
        component("out", "bindings.http", &[("url", NOWHERE)]),
        component(
            "secrets",
            "secretstores.local.file",
            &[
                ("secretsFile", secrets_file.to_str().unwrap_or_default()),
                ("nestedSeparator", ":"),
            ],
        ),
    ];
    let manifests: Vec<_> = [
        include_str!("../../../configs/capabilities/sensor-stats.yaml"),
        include_str!("../../../configs/capabilities/validate-reading.yaml"),
        include_str!("../../../configs/capabilities/thumbnail.yaml"),
        include_str!("../../../configs/capabilities/detect-objects.yaml"),
    ]
    .iter()
    // Offers that would leave the machine go nowhere instead.
    .map(|t| {
        t.replace("https://images.example.com/thumb", NOWHERE)
            .replace("https://vision.example.com/v1", NOWHERE)
            .replace("appId: detector", "appId: app")
    })
    .map(|t| edgecar_capabilities::parse_manifest_str(&t).expect("example manifest"))
    .collect();
    let runtime = rt.block_on(async {
        let (secret_stores, errs) = edgecar::components::secret_stores(&components);
        assert!(errs.is_empty(), "secret stores: {errs:?}");
        let storage = edgecar::storage::Storage::open(&cfg.state_dir, 1 << 20)
            .await
            .expect("storage");
        let registry = edgecar::components::build(&components, &storage)
            .await
            .expect("components");
        let calls = Arc::new(edgecar::resilience::ComponentCalls::new(Vec::new()));
        let apps = HashMap::from([("app".to_owned(), NOWHERE.to_owned())]);
        let invoke = Arc::new(blocks::invoke::InvokeBlock::new(
            apps,
            edgecar::policy::AccessControl::default(),
            Vec::new(),
            1 << 20,
        ));
        let secrets = Arc::new(blocks::secrets::SecretsBlock::new(
            secret_stores,
            edgecar::policy::SecretScopes::default(),
        ));
        let engine = edgecar_capabilities::Engine::new(
            edgecar_capabilities::EngineOptions::default()
                .with_invoker(Arc::new(blocks::capabilities::AppInvoker(invoke.clone())))
                .with_secrets(secrets.clone()),
        );
        engine
            .replace_manifests(manifests)
            .expect("example manifests load");
        let pubsub = Arc::new(
            blocks::pubsub::PubSubBlock::new(APP_ID.into(), registry.pubsub)
                .with_resilience(calls.clone())
                .with_max_bulk(cfg.limits.max_bulk_items),
        );
        let metadata = blocks::metadata::MetadataBlock::new(
            APP_ID.into(),
            cfg.site.clone(),
            0,
            "127.0.0.1".into(),
            registry.infos.clone(),
            invoke.apps(),
        );
        let devices = blocks::devices::DevicesBlock::new(
            Arc::new(edgecar::devices::Registry::empty()),
            Arc::new(edgecar::devices::Presence::default()),
            Arc::new(edgecar::devices::link::Links::default()),
            Duration::from_secs(1),
        );
        Arc::new(Runtime {
            app_id: APP_ID.into(),
            state: blocks::state::StateBlock::new(
                registry.state,
                cfg.limits.clone(),
                calls.clone(),
            ),
            invoke: invoke.clone(),
            bindings: blocks::bindings::BindingsBlock::new(registry.output_bindings, calls),
            configuration: blocks::configuration::ConfigurationBlock::new(
                registry.configuration,
                invoke,
                APP_ID.into(),
            ),
            lock: blocks::lock::LockBlock::new(registry.locks),
            secrets,
            capabilities: blocks::capabilities::CapabilitiesBlock::new(engine),
            metadata,
            pubsub: pubsub.clone(),
            devices,
            telemetry: blocks::telemetry::TelemetryBlock::new(
                pubsub,
                "pubsub".into(),
                "telemetry".into(),
                Duration::ZERO,
            ),
            storage,
            component_health: Arc::new(registry.health),
            shutdown: tokio::sync::Notify::new(),
            ready: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            metrics: Arc::new(edgecar::observability::metrics::CallMetrics::new(
                APP_ID, false,
            )),
            tracer: None,
        })
    });
    Harness {
        rt,
        runtime,
        _dir: dir,
    }
}

/// Splits `data` into at most `n` fields at `sep`; the last field keeps the rest (a payload may
/// hold `sep`). Missing fields are empty.
pub fn fields(data: &[u8], sep: u8, n: usize) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(n);
    let mut rest = data;
    while out.len() + 1 < n {
        match rest.iter().position(|&b| b == sep) {
            Some(i) => {
                out.push(&rest[..i]);
                rest = &rest[i + 1..];
            }
            None => break,
        }
    }
    out.push(rest);
    while out.len() < n {
        out.push(&[]);
    }
    out
}
