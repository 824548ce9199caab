//! Policy: what a caller may do, decided once on the request path for every transport.
//!
//! Each operation's audience is part of its definition in the table ([`crate::ops`]): the local
//! app may do everything but the operations of a device's own connection (Dapr's sidecar model:
//! the API is reachable only from the gateway unless its address is changed, and an API token can
//! guard it). A device reaches state and locks only inside its own key namespace — the blocks
//! prefix its keys with its id — may not read or change the sidecar's metadata, secrets, bindings
//! or the device list, and may not invoke other devices (the devices block refuses that, as only
//! it knows a target is a device).
//!
//! Devices' pub/sub subscriptions are confined by [`SubscriptionPolicy`]: a device may subscribe
//! to topics apps publish on, never to the topics that carry devices' own data (telemetry,
//! presence) and never receives an event another device published, unless the operator grants
//! the topic to that device in the registry (`subscribe:`). Every subscribe path and the fan-out
//! of every event to devices ask it.
//!
//! Service invocation is also guarded on the callee side by Dapr's `accessControl` (from a
//! `kind: Configuration` resource): [`AccessControl`] decides which caller ids may call which
//! method paths with which verbs, following Dapr's documented precedence rules.

use std::path::Path;
use std::sync::Arc;

use http::Method;
use serde_norway::Value;

use crate::call::Caller;
use crate::config::ConfigError;
use crate::error::{Error, ErrorKind, codes};
use crate::ops::Op;

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Let the call through.
    Allow,
    /// Refuse it (403).
    Deny,
}

/// One operation rule of an app policy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Operation {
    /// Path segments; `*` matches one segment, `**` any number.
    pattern: Vec<String>,
    /// Verbs it applies to (upper case); `*` matches any.
    verbs: Vec<String>,
    /// What to do on a match.
    action: Action,
}

/// A policy for calls from one app id.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AppPolicy {
    app_id: String,
    default_action: Option<Action>,
    operations: Vec<Operation>,
}

/// Dapr's `accessControl` for service invocation. The default allows everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessControl {
    /// Global default; `None` when not given.
    default_action: Option<Action>,
    /// Per-caller policies.
    policies: Vec<AppPolicy>,
}

fn segments(path: &str) -> Vec<&str> {
    path.split('?')
        .next()
        .unwrap_or_default()
        .split('/')
        .filter(|s| !s.is_empty())
        .collect()
}

fn matches(pattern: &[String], path: &[&str]) -> bool {
    match (pattern.first().map(String::as_str), path.first()) {
        (None, None) => true,
        (Some("**"), _) => (0..=path.len()).any(|i| matches(&pattern[1..], &path[i..])),
        (Some(p), Some(seg)) if p == "*" || p == *seg => matches(&pattern[1..], &path[1..]),
        _ => false,
    }
}

impl AccessControl {
    /// Whether `caller` may call `method` (a path, query ignored) with `verb`.
    pub fn allows(&self, caller: &str, method: &str, verb: &Method) -> bool {
        if self.default_action.is_none() && self.policies.is_empty() {
            return true;
        }
        // With app policies but no global default, Dapr takes the safer option: deny.
        let global = self.default_action.unwrap_or(Action::Deny);
        let Some(policy) = self.policies.iter().find(|p| p.app_id == caller) else {
            return global == Action::Allow;
        };
        let path = segments(method);
        let verb = verb.as_str();
        let action = policy
            .operations
            .iter()
            .find(|op| {
                matches(&op.pattern, &path) && op.verbs.iter().any(|v| v == "*" || v == verb)
            })
            .map(|op| op.action)
            .or(policy.default_action)
            .unwrap_or(global);
        action == Action::Allow
    }

    /// Reads `spec.accessControl` of a Dapr `Configuration` document; every error is reported.
    pub fn from_configuration(doc: &Value, source: &Path) -> Result<Self, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let Some(ac) = doc.get("spec").and_then(|s| s.get("accessControl")) else {
            return Ok(AccessControl::default());
        };
        let action = |v: Option<&Value>, field: &str, errors: &mut Vec<ConfigError>| match v {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_str().map(str::to_ascii_lowercase).as_deref() {
                Some("allow") => Some(Action::Allow),
                Some("deny") => Some(Action::Deny),
                _ => {
                    errors.push(ConfigError::new(source, field, "must be allow or deny"));
                    None
                }
            },
        };
        let default_action = action(
            ac.get("defaultAction"),
            "spec.accessControl.defaultAction",
            &mut errors,
        );
        let mut policies = Vec::new();
        if let Some(list) = ac.get("policies") {
            let Some(list) = list.as_sequence() else {
                return Err(vec![ConfigError::new(
                    source,
                    "spec.accessControl.policies",
                    "must be a list",
                )]);
            };
            for (i, p) in list.iter().enumerate() {
                let field = format!("spec.accessControl.policies[{i}]");
                let Some(app_id) = p
                    .get("appId")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                else {
                    errors.push(ConfigError::new(
                        source,
                        format!("{field}.appId"),
                        "required string is missing",
                    ));
                    continue;
                };
                let default_action = action(
                    p.get("defaultAction"),
                    &format!("{field}.defaultAction"),
                    &mut errors,
                );
                let mut operations = Vec::new();
                for (j, op) in p
                    .get("operations")
                    .and_then(Value::as_sequence)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    let of = format!("{field}.operations[{j}]");
                    let Some(name) = op.get("name").and_then(Value::as_str) else {
                        errors.push(ConfigError::new(
                            source,
                            format!("{of}.name"),
                            "required string is missing",
                        ));
                        continue;
                    };
                    let verbs: Vec<String> = match op.get("httpVerb") {
                        None => vec!["*".into()],
                        Some(v) => match v.as_sequence() {
                            Some(vs) => vs
                                .iter()
                                .filter_map(Value::as_str)
                                .map(str::to_ascii_uppercase)
                                .collect(),
                            None => {
                                errors.push(ConfigError::new(
                                    source,
                                    format!("{of}.httpVerb"),
                                    "must be a list of verbs",
                                ));
                                continue;
                            }
                        },
                    };
                    let action = action(op.get("action"), &format!("{of}.action"), &mut errors)
                        .unwrap_or(Action::Allow);
                    operations.push(Operation {
                        pattern: segments(name).into_iter().map(str::to_owned).collect(),
                        verbs,
                        action,
                    });
                }
                policies.push(AppPolicy {
                    app_id: app_id.to_owned(),
                    default_action,
                    operations,
                });
            }
        }
        if errors.is_empty() {
            Ok(AccessControl {
                default_action,
                policies,
            })
        } else {
            Err(errors)
        }
    }
}

/// Decides whether `caller` may perform `op`: the operation's audience in the table
/// ([`crate::ops::Audience`]) first; key namespaces and grants are judged where they apply.
pub fn authorize(caller: &Caller, op: &Op) -> Result<(), Error> {
    let spec = op.spec();
    if spec.admits(caller) {
        return Ok(());
    }
    let message = match caller {
        Caller::LocalApp { .. } => format!("{} is an operation of devices", spec.name),
        Caller::Device { .. } => format!("{caller} may not use {}", spec.name),
    };
    Err(Error::new(
        ErrorKind::Forbidden,
        codes::PERMISSION_DENIED,
        message,
    ))
}

/// Which pub/sub topics a device may subscribe to, and which events of them it may receive.
///
/// - Topics that carry every device's data (the telemetry and presence topics of `devices:` in
///   `edgecar.yaml`) are refused (403) unless granted.
/// - An event another device published (its CloudEvent `source` is that device's id) is not
///   delivered unless the topic is granted; an app's events, and the device's own, are.
/// - A grant is a `subscribe:` entry of the device in the registry: `<pubsub>/<topic>` or
///   `<pubsub>/*`.
///
/// Revoking a grant (or the device) takes effect for events fanned out after the registry
/// reload, for subscriptions made earlier too.
pub struct SubscriptionPolicy {
    /// Grants, per device.
    registry: Arc<crate::devices::Registry>,
    /// (pubsub, topic) pairs that carry all devices' data.
    device_data: Vec<(String, String)>,
}

impl SubscriptionPolicy {
    /// The policy over `registry`; `device_data` lists the topics that carry every device's data.
    pub fn new(
        registry: Arc<crate::devices::Registry>,
        device_data: Vec<(String, String)>,
    ) -> Self {
        SubscriptionPolicy {
            registry,
            device_data: device_data
                .into_iter()
                .filter(|(p, t)| !p.is_empty() && !t.is_empty())
                .collect(),
        }
    }

    /// Whether the registry grants `device` the topic.
    pub fn granted(&self, device: &str, pubsub: &str, topic: &str) -> bool {
        self.registry.snapshot().get(device).is_some_and(|d| {
            d.subscribe.iter().any(|g| match g.split_once('/') {
                Some((p, "*")) => p == pubsub,
                Some((p, t)) => p == pubsub && t == topic,
                None => false,
            })
        })
    }

    /// Whether `device` may subscribe to `topic` of `pubsub`: 403 if not.
    pub fn check_subscribe(&self, device: &str, pubsub: &str, topic: &str) -> Result<(), Error> {
        let carries_devices = self
            .device_data
            .iter()
            .any(|(p, t)| p == pubsub && t == topic);
        if carries_devices && !self.granted(device, pubsub, topic) {
            return Err(Error::new(
                ErrorKind::Forbidden,
                codes::PERMISSION_DENIED,
                format!(
                    "topic {topic:?} of pubsub {pubsub:?} carries other devices' data; a device \
                     may subscribe to it only when the operator grants it (subscribe: \
                     [{pubsub}/{topic}] in the device registry)"
                ),
            ));
        }
        Ok(())
    }

    /// Whether an event whose CloudEvent `source` is `source` may reach `device`.
    pub fn may_receive(
        &self,
        device: &str,
        pubsub: &str,
        topic: &str,
        source: Option<&str>,
    ) -> bool {
        if self.check_subscribe(device, pubsub, topic).is_err() {
            return false;
        }
        match source {
            Some(s) if s != device && self.registry.contains(s) => {
                self.granted(device, pubsub, topic)
            }
            _ => true,
        }
    }
}

/// Dapr's secret scopes (`Configuration` → `spec.secrets.scopes`): which secrets of a store the
/// app may read through the secrets API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretScopes {
    /// Per store: (default access, allowed list, denied list).
    stores: Vec<(String, Action, Vec<String>, Vec<String>)>,
}

impl SecretScopes {
    /// Whether secret `name` of `store` may be read. Dapr's rules: a non-empty `allowedSecrets`
    /// allows only those; `deniedSecrets` denies; otherwise `defaultAccess` (allow by default).
    pub fn allows(&self, store: &str, name: &str) -> bool {
        let Some((_, default, allowed, denied)) = self.stores.iter().find(|s| s.0 == store) else {
            return true;
        };
        if !allowed.is_empty() {
            return allowed.iter().any(|a| a == name);
        }
        if denied.iter().any(|d| d == name) {
            return false;
        }
        *default == Action::Allow
    }

    /// Reads `spec.secrets.scopes` of a Dapr `Configuration` document; every error is reported.
    pub fn from_configuration(doc: &Value, source: &Path) -> Result<Self, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut stores = Vec::new();
        let scopes = doc
            .get("spec")
            .and_then(|s| s.get("secrets"))
            .and_then(|s| s.get("scopes"));
        for (i, sc) in scopes
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let f = format!("spec.secrets.scopes[{i}]");
            let Some(store) = sc.get("storeName").and_then(Value::as_str) else {
                errors.push(ConfigError::new(
                    source,
                    format!("{f}.storeName"),
                    "required string is missing",
                ));
                continue;
            };
            let default = match sc
                .get("defaultAccess")
                .and_then(Value::as_str)
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                None | Some("allow") => Action::Allow,
                Some("deny") => Action::Deny,
                Some(other) => {
                    errors.push(ConfigError::new(
                        source,
                        format!("{f}.defaultAccess"),
                        format!("{other:?} must be allow or deny"),
                    ));
                    Action::Allow
                }
            };
            let list = |k: &str| -> Vec<String> {
                sc.get(k)
                    .and_then(Value::as_sequence)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            };
            stores.push((
                store.to_owned(),
                default,
                list("allowedSecrets"),
                list("deniedSecrets"),
            ));
        }
        if errors.is_empty() {
            Ok(SecretScopes { stores })
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(yaml: &str) -> AccessControl {
        let doc: Value = serde_norway::from_str(yaml).unwrap();
        AccessControl::from_configuration(&doc, Path::new("c.yaml")).unwrap()
    }

    #[test]
    fn access_control_follows_dapr_rules() {
        assert!(AccessControl::default().allows("any", "/x", &Method::GET));
        let a = acl(
            "spec:\n  accessControl:\n    defaultAction: deny\n    policies:\n    - appId: app1\n      defaultAction: deny\n      operations:\n      - name: /orders/*\n        httpVerb: [GET]\n        action: allow\n      - name: /admin/**\n        httpVerb: ['*']\n        action: deny\n    - appId: app2\n      defaultAction: allow\n",
        );
        assert!(a.allows("app1", "/orders/7?x=1", &Method::GET));
        assert!(!a.allows("app1", "/orders/7", &Method::POST));
        assert!(
            !a.allows("app1", "/orders/7/lines", &Method::GET),
            "* is one segment"
        );
        assert!(!a.allows("app1", "/admin/a/b/c", &Method::GET));
        assert!(!a.allows("app1", "/other", &Method::GET), "app default");
        assert!(a.allows("app2", "/anything", &Method::DELETE));
        assert!(
            !a.allows("stranger", "/orders/7", &Method::GET),
            "global default"
        );
        // App policies without a global default: deny the rest.
        let b = acl(
            "spec:\n  accessControl:\n    policies:\n    - appId: app1\n      defaultAction: allow\n",
        );
        assert!(b.allows("app1", "/x", &Method::GET));
        assert!(!b.allows("app9", "/x", &Method::GET));
    }

    #[test]
    fn secret_scopes_follow_dapr_precedence() {
        let doc: Value = serde_norway::from_str("spec:\n  secrets:\n    scopes:\n    - storeName: vault\n      defaultAccess: deny\n      allowedSecrets: [db]\n    - storeName: files\n      deniedSecrets: [root]\n").unwrap();
        let s = SecretScopes::from_configuration(&doc, Path::new("c.yaml")).unwrap();
        assert!(s.allows("vault", "db"));
        assert!(!s.allows("vault", "other"));
        assert!(!s.allows("files", "root"));
        assert!(s.allows("files", "anything"));
        assert!(s.allows("unscoped", "x"));
    }

    #[test]
    fn access_control_errors_name_their_fields() {
        let doc: Value = serde_norway::from_str("spec:\n  accessControl:\n    defaultAction: maybe\n    policies:\n    - operations: []\n").unwrap();
        let errs = AccessControl::from_configuration(&doc, Path::new("c.yaml")).unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.accessControl.defaultAction",
                "spec.accessControl.policies[0].appId"
            ]
        );
    }

    #[test]
    fn devices_receive_other_devices_data_only_when_granted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devices.yaml");
        std::fs::write(
            &path,
            "devices:\n- id: a\n- id: b\n- id: hub\n  subscribe: [pubsub/telemetry, alarms/*]\n",
        )
        .unwrap();
        let registry = crate::devices::Registry::open(path, Default::default()).unwrap();
        let p = SubscriptionPolicy::new(
            Arc::new(registry),
            vec![
                ("pubsub".into(), "telemetry".into()),
                ("pubsub".into(), "presence".into()),
            ],
        );
        let e = p.check_subscribe("a", "pubsub", "telemetry").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Forbidden);
        assert!(p.check_subscribe("a", "pubsub", "presence").is_err());
        assert!(p.check_subscribe("a", "pubsub", "orders").is_ok());
        assert!(p.check_subscribe("hub", "pubsub", "telemetry").is_ok());
        assert!(p.check_subscribe("hub", "pubsub", "presence").is_err());
        // An app's events and the device's own reach it; another device's do not.
        assert!(p.may_receive("a", "pubsub", "orders", Some("myapp")));
        assert!(p.may_receive("a", "pubsub", "orders", Some("a")));
        assert!(!p.may_receive("a", "pubsub", "orders", Some("b")));
        assert!(p.may_receive("hub", "alarms", "fire", Some("b")));
        assert!(!p.may_receive("hub", "pubsub", "orders", Some("b")));
        assert!(!p.may_receive("a", "pubsub", "telemetry", Some("myapp")));
    }

    #[test]
    fn devices_cannot_touch_sidecar_metadata() {
        let dev = Caller::Device { id: "d1".into() };
        assert!(authorize(&dev, &Op::MetadataGet).is_err());
        let secret = Op::SecretGet {
            store: "s".into(),
            name: "n".into(),
        };
        assert!(
            authorize(&dev, &secret).is_err(),
            "devices never read secrets through the API"
        );
        assert!(
            authorize(
                &dev,
                &Op::StateGet {
                    store: "s".into(),
                    key: "k".into()
                }
            )
            .is_ok()
        );
        let app = Caller::LocalApp { app_id: "a".into() };
        assert!(
            authorize(
                &app,
                &Op::MetadataSet {
                    attribute: "x".into()
                }
            )
            .is_ok()
        );
    }
}
