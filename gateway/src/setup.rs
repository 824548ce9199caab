//! From loaded resource files to what the runtime needs, with every problem reported.
//!
//! `edgecar check-config` and `edgecar run` both call [`prepare`], so a resource the daemon would
//! refuse is reported by the checker with the same file and field. It validates components against
//! their types, reads Dapr `Configuration` (access control) and `Resiliency` documents, and notes
//! documents of kinds this build does not use.

use edgecar_capabilities::{Resiliency, parse_resiliency};

use crate::components;
use crate::config::resources::{Component, Resources};
use crate::config::{Config, ConfigError};
use crate::policy::AccessControl;

/// Everything the runtime is built from, besides the gateway config.
#[derive(Debug, Default)]
pub struct Setup {
    /// Components to build (the embedded defaults when no resources path is given).
    pub components: Vec<Component>,
    /// Service-invocation access control (Dapr `Configuration` → `spec.accessControl`).
    pub access_control: AccessControl,
    /// Resiliency documents that apply to this app id.
    pub resiliency: Vec<Resiliency>,
    /// Notes for the operator: documents read but not used by this build.
    pub notes: Vec<String>,
}

/// Loads the resource directories of `cfg` (or the embedded defaults) and checks everything.
pub fn prepare(cfg: &Config) -> (Setup, Vec<ConfigError>) {
    let mut setup = Setup::default();
    if cfg.resources_paths.is_empty() {
        setup.components = components::embedded_defaults();
        return (setup, Vec::new());
    }
    let (res, mut errors) = crate::config::resources::load(&cfg.resources_paths, &cfg.app_id);
    let Resources {
        components: comps,
        documents,
        ..
    } = res;
    for c in &comps {
        errors.extend(components::validate(c));
    }
    setup.components = comps;
    let mut configurations = 0;
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
            }
            "Resiliency" => match parse_resiliency(&doc.value) {
                Ok(r) if r.applies_to(&cfg.app_id) => setup.resiliency.push(r),
                Ok(_) => {}
                Err(e) => errors.extend(
                    e.into_iter()
                        .map(|f| ConfigError::new(&doc.source, f.path.clone(), f.message.clone())),
                ),
            },
            other => setup.notes.push(format!(
                "{}: kind {other:?} is not supported by this edgecar yet; ignored",
                doc.source.display()
            )),
        }
    }
    (setup, errors)
}
