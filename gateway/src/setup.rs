//! From loaded resource files to what the runtime needs, with every problem reported.
//!
//! `edgecar check-config` and `edgecar run` both call [`prepare`], so a resource the daemon would
//! refuse is reported by the checker with the same file and field. It validates components against
//! their types, reads Dapr `Configuration` (access control) and `Resiliency` documents and
//! edgecar's `Capability` manifests, checks the device registry, and notes documents of kinds
//! this build does not use.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use edgecar_capabilities::{
    Engine, EngineOptions, FieldError, Invoker, Manifest, Policies, Resiliency, UpstreamError,
    UpstreamReply, parse_manifest, parse_resiliency,
};

use std::collections::HashMap;

use crate::blocks::pubsub::subscription::{self, Subscription};
use crate::blocks::secrets::SecretsBlock;
use crate::components;
use crate::components::secretstore::SecretStore;
use crate::config::resources::{Component, Resources};
use crate::config::{Config, ConfigError};
use crate::policy::{AccessControl, SecretScopes};

/// Everything the runtime is built from, besides the gateway config.
#[derive(Debug, Default)]
pub struct Setup {
    /// Components to build (the embedded defaults when no resources path is given).
    pub components: Vec<Component>,
    /// Service-invocation access control (Dapr `Configuration` → `spec.accessControl`).
    pub access_control: AccessControl,
    /// Loaded secret stores (built first: other components' `secretKeyRef`s are resolved
    /// through them before anything else is built).
    pub secret_stores: HashMap<String, SecretStore>,
    /// Which secrets the app may read (Dapr `Configuration` → `spec.secrets.scopes`).
    pub secret_scopes: SecretScopes,
    /// Resiliency documents that apply to this app id.
    pub resiliency: Vec<Resiliency>,
    /// Capability manifests (`kind: Capability`), validated.
    pub manifests: Vec<Manifest>,
    /// Declarative subscriptions (`kind: Subscription`) for this app id, validated.
    pub subscriptions: Vec<Subscription>,
    /// Notes for the operator: documents read but not used by this build.
    pub notes: Vec<String>,
}

/// Loads the resource directories of `cfg` (or the embedded defaults) and checks everything.
pub fn prepare(cfg: &Config) -> (Setup, Vec<ConfigError>) {
    let (setup, mut errors) = prepare_resources(cfg);
    errors.extend(crate::devices::check(
        &cfg.device_registry(),
        &cfg.app_ids(),
    ));
    // The broker's ACL gives edgecar's user every device tree: no device may log in as it.
    let user = &cfg.mqtt.broker.username;
    if cfg.external_broker()
        && !user.is_empty()
        && crate::devices::file::load(&cfg.device_registry()).is_ok_and(|d| d.contains_key(user))
    {
        errors.push(ConfigError::new(
            cfg.device_registry(),
            format!("devices[id={user}]"),
            format!(
                "{user:?} is edgecar's own user at the broker (mqtt.broker.username); \
                 a device cannot have that id"
            ),
        ));
    }
    (setup, errors)
}

fn prepare_resources(cfg: &Config) -> (Setup, Vec<ConfigError>) {
    let mut setup = Setup::default();
    let (mut res, mut errors) = if cfg.resources_paths.is_empty() {
        let defaults = Resources {
            components: components::embedded_defaults(),
            ..Resources::default()
        };
        (defaults, Vec::new())
    } else {
        crate::config::resources::load(&cfg.resources_paths, &cfg.app_id)
    };
    if let Some(file) = &cfg.dapr_config {
        crate::config::resources::load_file(file, &cfg.app_id, &mut res, &mut errors);
    }
    let Resources {
        components: mut comps,
        documents,
        ..
    } = res;
    let (stores, store_errors) = components::secret_stores(&comps);
    errors.extend(store_errors);
    errors.extend(components::resolve_secret_refs(&mut comps, &stores));
    setup.secret_stores = stores;
    for c in &comps {
        errors.extend(components::validate(c));
    }
    setup.components = comps;
    let (subs, sub_errors) = subscription::load_declarative(&documents, &cfg.app_id);
    errors.extend(sub_errors);
    let pubsubs: Vec<&str> = setup
        .components
        .iter()
        .filter(|c| c.type_name.starts_with("pubsub."))
        .map(|c| c.name.as_str())
        .collect();
    errors.extend(subscription::check_components(&subs, &pubsubs));
    setup.subscriptions = subs;
    let mut configurations = 0;
    let mut sources: Vec<(String, PathBuf)> = Vec::new();
    for doc in documents {
        match doc.kind.as_str() {
            "Configuration" => {
                configurations += 1;
                if configurations > 1 {
                    errors.push(ConfigError::new(
                        &doc.source,
                        "kind",
                        "a second Configuration document; put all access control in one",
                    ));
                    continue;
                }
                match AccessControl::from_configuration(&doc.value, &doc.source) {
                    Ok(acl) => setup.access_control = acl,
                    Err(e) => errors.extend(e),
                }
                match SecretScopes::from_configuration(&doc.value, &doc.source) {
                    Ok(scopes) => setup.secret_scopes = scopes,
                    Err(e) => errors.extend(e),
                }
                let spec = doc.value.get("spec");
                for (field, what) in [
                    (
                        "tracing",
                        "W3C trace context is carried on every call; span export (samplingRate, zipkin, otel) is not in this build",
                    ),
                    (
                        "features",
                        "no preview features exist in edgecar; each is ignored",
                    ),
                    ("metric", "metrics are always on"),
                    ("nameResolution", "edgecar resolves app ids itself"),
                ] {
                    if spec.and_then(|s| s.get(field)).is_some() {
                        setup
                            .notes
                            .push(format!("{}: spec.{field}: {what}", doc.source.display()));
                    }
                }
            }
            "Resiliency" => match parse_resiliency(&doc.value) {
                Ok(r) if r.applies_to(&cfg.app_id) => setup.resiliency.push(r),
                Ok(_) => {}
                Err(e) => errors.extend(
                    e.into_iter()
                        .map(|f| ConfigError::new(&doc.source, f.path.clone(), f.message.clone())),
                ),
            },
            // Read below, all together, by the pub/sub block's own loader.
            "Subscription" => {}
            "Capability" => match parse_manifest(&doc.value) {
                Ok(m) => {
                    sources.push((m.name.clone(), doc.source.clone()));
                    setup.manifests.push(m);
                }
                Err(e) => errors.extend(e.into_iter().map(|f| field_error(&doc.source, &f))),
            },
            "" => setup.notes.push(format!(
                "{}: not a Dapr resource (no kind, no dapr.io apiVersion); ignored",
                doc.source.display()
            )),
            other => setup.notes.push(format!(
                "{}: kind {other:?} is not supported by this edgecar yet; ignored",
                doc.source.display()
            )),
        }
    }
    if errors.is_empty() && !setup.manifests.is_empty() {
        // What the daemon would refuse at load: unknown policy names, duplicate names, ...
        let secrets = SecretsBlock::new(setup.secret_stores.clone(), SecretScopes::default());
        let engine = Engine::new(
            EngineOptions::default()
                .with_invoker(Arc::new(CheckOnly))
                .with_secrets(Arc::new(secrets)),
        );
        let policies = merged_policies(&setup.resiliency);
        if let Err(errs) = engine.check(&setup.manifests, &policies) {
            for f in errs {
                let name = f
                    .resource
                    .as_deref()
                    .and_then(|r| r.strip_prefix("Capability/"));
                let source = sources
                    .iter()
                    .find(|(n, _)| Some(n.as_str()) == name)
                    .map_or_else(|| PathBuf::from("<capabilities>"), |(_, s)| s.clone());
                errors.push(field_error(&source, &f));
            }
        }
    }
    (setup, errors)
}

fn field_error(source: &std::path::Path, f: &FieldError) -> ConfigError {
    ConfigError::new(source, f.path.clone(), f.message.clone())
}

/// Named policies from every Resiliency document, for capability offers to refer to.
pub fn merged_policies(docs: &[Resiliency]) -> Policies {
    let mut p = Policies::default();
    for d in docs {
        p.merge(d.policies.clone());
    }
    p
}

/// Capability manifests and the named policies they may use, as a reload needs them.
pub struct LoadedCapabilities {
    /// The manifests.
    pub manifests: Vec<Manifest>,
    /// Named resiliency policies.
    pub policies: Policies,
}

/// Re-reads the resource directories for a capability reload; errors as [`prepare`] reports them.
pub fn capabilities(cfg: &Config) -> (LoadedCapabilities, Vec<ConfigError>) {
    let (setup, errors) = prepare_resources(cfg);
    let policies = merged_policies(&setup.resiliency);
    (
        LoadedCapabilities {
            manifests: setup.manifests,
            policies,
        },
        errors,
    )
}

/// Stands in for service invocation while `check-config` dry-runs manifests: the check only needs
/// to know invocation exists; nothing is ever called through it.
struct CheckOnly;

#[async_trait]
impl Invoker for CheckOnly {
    async fn invoke(
        &self,
        _: &str,
        _: &str,
        _: &http::Method,
        _: &[(String, String)],
        _: Bytes,
    ) -> Result<UpstreamReply, UpstreamError> {
        Err(UpstreamError::Other("configuration check only".into()))
    }
}
