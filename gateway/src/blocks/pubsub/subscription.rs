//! Subscriptions: which topics the app consumes and which of its paths gets each event.
//!
//! Two sources, one model ([`Subscription`]):
//! - **declarative**: `kind: Subscription` resource files, `dapr.io/v2alpha1` (`spec.routes.rules`
//!   with `match`/`path`, `spec.routes.default`) or `dapr.io/v1alpha1` (`spec.route`), with
//!   `deadLetterTopic`, `metadata` (e.g. `rawPayload`) and `scopes`. Read by [`load_declarative`]
//!   with every problem reported by file and field (check-config shows them), including `match`
//!   expressions outside the supported CEL subset ([`super::rules`]).
//! - **programmatic**: the JSON the app answers on `GET /dapr/subscribe`, in the v1 (`route`) or
//!   v2 (`routes: {rules, default}`) form, read by [`parse_programmatic`].
//!
//! As in Dapr, rules are tried in order and the default (or v1 `route`) comes last as a rule that
//! always matches; an event no rule matches is not delivered.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Value as Json, json};
use serde_norway::Value;

use super::rules::Expr;
use crate::config::ConfigError;
use crate::config::resources::Document;

/// Where a subscription came from (Dapr's `type` in the metadata API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A `kind: Subscription` resource file.
    Declarative,
    /// The app's `/dapr/subscribe`.
    Programmatic,
}

impl Kind {
    /// Dapr's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Declarative => "DECLARATIVE",
            Kind::Programmatic => "PROGRAMMATIC",
        }
    }
}

/// One routing rule: events matching `expr` go to `path`. No expression matches everything (the
/// default route).
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The `match` expression; `None` for the default route.
    pub expr: Option<Expr>,
    /// The app path events go to, as the subscription gave it: an HTTP app is called at
    /// `/<path>`, a gRPC app gets it unchanged (see `clean_path`).
    pub path: String,
}

/// A subscription of the app to one topic of one pub/sub component.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    /// The pub/sub component.
    pub pubsub: String,
    /// The topic.
    pub topic: String,
    /// Rules in order, the default last.
    pub rules: Vec<Rule>,
    /// Where events go that cannot be delivered, if anywhere.
    pub dead_letter_topic: Option<String>,
    /// Subscription metadata (`rawPayload`, ...).
    pub metadata: HashMap<String, String>,
    /// Declarative or programmatic.
    pub kind: Kind,
    /// Where it was read from, for logs.
    pub source: String,
    /// Dapr's `bulkSubscribe`: when enabled, events reach the app in batches.
    pub bulk: Option<Bulk>,
}

/// Dapr's `bulkSubscribe` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bulk {
    /// Most events in one batch (`maxMessagesCount`, default 100).
    pub max_messages: usize,
    /// Longest a batch waits to fill (`maxAwaitDurationMs`, default 1000).
    pub max_await: std::time::Duration,
}

impl Bulk {
    /// Reads `bulkSubscribe` given as (enabled, maxMessagesCount, maxAwaitDurationMs); `None`
    /// unless enabled.
    fn from_fields(enabled: bool, max: Option<u64>, wait_ms: Option<u64>) -> Option<Bulk> {
        enabled.then(|| Bulk {
            max_messages: max.filter(|n| *n > 0).unwrap_or(100).min(1000) as usize,
            max_await: std::time::Duration::from_millis(wait_ms.unwrap_or(1000).min(60_000)),
        })
    }
}

impl Subscription {
    /// Whether the app wants the raw message (wrapped as `data_base64`), not a published envelope.
    pub fn raw_payload(&self) -> bool {
        self.metadata
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("rawPayload"))
            .is_some_and(|(_, v)| matches!(v.as_str(), "1" | "t" | "T" | "TRUE" | "true" | "True"))
    }

    /// The path for an event: the first rule that matches. `Err` when a rule cannot be evaluated.
    pub fn route(&self, event: &Json) -> Result<Option<&str>, String> {
        for rule in &self.rules {
            match &rule.expr {
                None => return Ok(Some(&rule.path)),
                Some(e) => match e.matches(event) {
                    Ok(true) => return Ok(Some(&rule.path)),
                    Ok(false) => {}
                    Err(err) => {
                        return Err(format!("rule {:?} failed on this event: {err}", e.source()));
                    }
                },
            }
        }
        Ok(None)
    }

    /// Dapr's shape in `GET /v1.0/metadata`.
    pub fn info(&self) -> Json {
        let rules: Vec<Json> = self
            .rules
            .iter()
            .map(|r| match &r.expr {
                Some(e) => json!({"match": e.source(), "path": r.path}),
                None => json!({"path": r.path}),
            })
            .collect();
        let mut v = json!({
            "pubsubname": self.pubsub,
            "topic": self.topic,
            "rules": rules,
            "deadLetterTopic": self.dead_letter_topic.clone().unwrap_or_default(),
            "type": self.kind.as_str(),
        });
        if !self.metadata.is_empty() {
            v["metadata"] = json!(self.metadata);
        }
        v
    }
}

/// An app path with a leading `/` (Dapr accepts both spellings).
/// A route's path as given (trimmed): HTTP apps are called at `/<path>` whether or not it starts
/// with `/`, and gRPC apps get it unchanged in the event, as daprd sends it (`handler`, not
/// `/handler`).
fn clean_path(p: &str) -> String {
    p.trim().to_owned()
}

/// Builds the rule list from `rules` (match, path) plus the default or v1 route, checking each.
fn build_rules(
    rules: Vec<(String, String)>,
    default: Option<String>,
    mut err: impl FnMut(String, String),
    field: &str,
) -> Vec<Rule> {
    let mut out = Vec::new();
    for (i, (m, path)) in rules.into_iter().enumerate() {
        if path.trim().is_empty() {
            err(
                format!("{field}.rules[{i}].path"),
                "required: the app path that receives matching events".into(),
            );
            continue;
        }
        let expr = if m.trim().is_empty() {
            None
        } else {
            match Expr::parse(&m) {
                Ok(e) => Some(e),
                Err(msg) => {
                    err(format!("{field}.rules[{i}].match"), format!("{m:?}: {msg}"));
                    continue;
                }
            }
        };
        out.push(Rule {
            expr,
            path: clean_path(&path),
        });
    }
    if let Some(d) = default.filter(|d| !d.trim().is_empty()) {
        out.push(Rule {
            expr: None,
            path: clean_path(&d),
        });
    }
    out
}

fn yaml_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Reads every `kind: Subscription` document in scope for `app_id`; reports every problem with
/// its file and field.
pub fn load_declarative(docs: &[Document], app_id: &str) -> (Vec<Subscription>, Vec<ConfigError>) {
    let mut subs = Vec::new();
    let mut errors = Vec::new();
    for doc in docs.iter().filter(|d| d.kind == "Subscription") {
        if let Some(s) = parse_declarative(&doc.value, &doc.source, app_id, &mut errors) {
            subs.push(s);
        }
    }
    (subs, errors)
}

fn parse_declarative(
    doc: &Value,
    source: &Path,
    app_id: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Subscription> {
    let before = errors.len();
    let mut err = |field: &str, msg: String| errors.push(ConfigError::new(source, field, msg));
    let version = doc
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let v2 = match version {
        "dapr.io/v2alpha1" => true,
        "dapr.io/v1alpha1" => false,
        "" => {
            err(
                "apiVersion",
                "required; expected dapr.io/v2alpha1 or dapr.io/v1alpha1".into(),
            );
            true
        }
        other => {
            err(
                "apiVersion",
                format!(
                    "{other:?} is not supported; expected dapr.io/v2alpha1 or dapr.io/v1alpha1"
                ),
            );
            true
        }
    };
    let scopes: Vec<String> = match doc.get("scopes") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Sequence(items)) => items.iter().filter_map(|v| yaml_str(Some(v))).collect(),
        Some(_) => {
            err("scopes", "must be a list of app ids".into());
            Vec::new()
        }
    };
    let Some(spec) = doc.get("spec").filter(|s| s.as_mapping().is_some()) else {
        err("spec", "required mapping is missing".into());
        return None;
    };
    if let Some(map) = spec.as_mapping() {
        for k in map.keys() {
            let k = k.as_str().unwrap_or_default();
            if !matches!(
                k,
                "pubsubname"
                    | "topic"
                    | "route"
                    | "routes"
                    | "deadLetterTopic"
                    | "metadata"
                    | "bulkSubscribe"
            ) {
                err(
                    &format!("spec.{k}"),
                    "unknown field (expected pubsubname, topic, routes or route, deadLetterTopic, metadata)".into(),
                );
            }
        }
    }
    let mut required = |name: &str| match yaml_str(spec.get(name)) {
        Some(s) if !s.trim().is_empty() => Some(s),
        _ => {
            err(&format!("spec.{name}"), "required string is missing".into());
            None
        }
    };
    let pubsub = required("pubsubname");
    let topic = required("topic");
    let mut rules_in = Vec::new();
    let mut default = None;
    match spec.get("routes") {
        None | Some(Value::Null) => {}
        Some(Value::Mapping(_)) => {
            let routes = spec.get("routes");
            match routes.and_then(|r| r.get("rules")) {
                None | Some(Value::Null) => {}
                Some(Value::Sequence(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        let m = yaml_str(item.get("match")).unwrap_or_default();
                        let p = yaml_str(item.get("path")).unwrap_or_default();
                        if item.as_mapping().is_none() {
                            err(
                                &format!("spec.routes.rules[{i}]"),
                                "must be a mapping with match and path".into(),
                            );
                            continue;
                        }
                        rules_in.push((m, p));
                    }
                }
                Some(_) => err(
                    "spec.routes.rules",
                    "must be a list of {match, path}".into(),
                ),
            }
            default = yaml_str(routes.and_then(|r| r.get("default")));
        }
        Some(_) => err(
            "spec.routes",
            "must be a mapping with rules and default".into(),
        ),
    }
    if let Some(route) = yaml_str(spec.get("route")).filter(|r| !r.trim().is_empty()) {
        if v2 && (default.is_some() || !rules_in.is_empty()) {
            err(
                "spec.route",
                "give either route (v1) or routes (v2), not both".into(),
            );
        } else {
            default = Some(route);
        }
    }
    let rules = build_rules(
        rules_in,
        default,
        |f, m| errors.push(ConfigError::new(source, f, m)),
        "spec.routes",
    );
    let clean = errors.len() == before;
    let mut err = |field: &str, msg: String| errors.push(ConfigError::new(source, field, msg));
    if rules.is_empty() && clean {
        err(
            "spec.routes",
            "no route: give routes.default, routes.rules or (v1alpha1) route".into(),
        );
    }
    let metadata = match spec.get("metadata") {
        None | Some(Value::Null) => HashMap::new(),
        Some(Value::Mapping(m)) => m
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), yaml_str(Some(v))?)))
            .collect(),
        Some(_) => {
            err(
                "spec.metadata",
                "must be a mapping of names to values".into(),
            );
            HashMap::new()
        }
    };
    let dead_letter_topic = yaml_str(spec.get("deadLetterTopic")).filter(|s| !s.trim().is_empty());
    if errors.len() > before {
        return None;
    }
    if !scopes.is_empty() && !scopes.iter().any(|s| s == app_id) {
        return None;
    }
    let bulk = spec.get("bulkSubscribe").and_then(|b| {
        let num = |k: &str| yaml_str(b.get(k)).and_then(|s| s.parse::<u64>().ok());
        let enabled = yaml_str(b.get("enabled")).is_some_and(|s| s == "true");
        Bulk::from_fields(enabled, num("maxMessagesCount"), num("maxAwaitDurationMs"))
    });
    Some(Subscription {
        pubsub: pubsub?,
        topic: topic?,
        rules,
        dead_letter_topic,
        metadata,
        kind: Kind::Declarative,
        source: source.display().to_string(),
        bulk,
    })
}

/// Checks that declarative subscriptions name loaded pub/sub components.
pub fn check_components(subs: &[Subscription], pubsubs: &[&str]) -> Vec<ConfigError> {
    subs.iter()
        .filter(|s| !pubsubs.contains(&s.pubsub.as_str()))
        .map(|s| {
            ConfigError::new(
                &s.source,
                "spec.pubsubname",
                format!(
                    "no pub/sub component named {:?} is loaded (loaded: {})",
                    s.pubsub,
                    if pubsubs.is_empty() {
                        "none".to_owned()
                    } else {
                        pubsubs.join(", ")
                    }
                ),
            )
        })
        .collect()
}

/// Lower-cases an object's keys, as Go's JSON decoder matches field names without case.
fn lower_keys(v: &Json) -> HashMap<String, &Json> {
    v.as_object()
        .map(|m| m.iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect())
        .unwrap_or_default()
}

fn json_str(v: Option<&&Json>) -> String {
    match v {
        Some(Json::String(s)) => s.clone(),
        _ => String::new(),
    }
}

/// Reads the app's `GET /dapr/subscribe` answer (`grpc`: a gRPC app's `ListTopicSubscriptions`
/// in the same JSON shape). Entries that cannot be used are returned as errors (one line each)
/// beside the ones that can.
///
/// A gRPC app's subscription with neither rules nor a default route gets the app's default path
/// `""`, as daprd's `parseRoutingRulesGRPC` gives it (`pkg/runtime/pubsub/subscriptions.go`); an
/// HTTP app's needs a route.
pub fn parse_programmatic(body: &[u8], grpc: bool) -> (Vec<Subscription>, Vec<String>) {
    let mut subs = Vec::new();
    let mut errors = Vec::new();
    let items: Vec<Json> = match serde_json::from_slice::<Json>(body) {
        Ok(Json::Array(items)) => items,
        Ok(Json::Null) => Vec::new(),
        Ok(_) => {
            return (
                subs,
                vec!["the answer is not a JSON array of subscriptions".into()],
            );
        }
        Err(e) => return (subs, vec![format!("the answer is not JSON: {e}")]),
    };
    for (i, item) in items.iter().enumerate() {
        let f = lower_keys(item);
        let pubsub = json_str(f.get("pubsubname"));
        let topic = json_str(f.get("topic"));
        if pubsub.is_empty() || topic.is_empty() {
            errors.push(format!("entry {i}: pubsubname and topic are required"));
            continue;
        }
        let routes = f.get("routes").map(|r| lower_keys(r)).unwrap_or_default();
        let mut rules_in = Vec::new();
        if let Some(Json::Array(rules)) = routes.get("rules") {
            for r in rules {
                let r = lower_keys(r);
                rules_in.push((json_str(r.get("match")), json_str(r.get("path"))));
            }
        }
        let default = Some(json_str(routes.get("default")))
            .filter(|d| !d.is_empty())
            .or_else(|| Some(json_str(f.get("route"))).filter(|r| !r.is_empty()));
        let mut problems = Vec::new();
        let mut rules = build_rules(
            rules_in,
            default,
            |field, m| problems.push(format!("{field}: {m}")),
            "routes",
        );
        if !problems.is_empty() {
            errors.push(format!("{pubsub}/{topic}: {}", problems.join("; ")));
            continue;
        }
        if rules.is_empty() && grpc {
            rules.push(Rule {
                expr: None,
                path: String::new(),
            });
        }
        if rules.is_empty() {
            errors.push(format!(
                "{pubsub}/{topic}: no route (give route, or routes with rules or default)"
            ));
            continue;
        }
        let metadata = match f.get("metadata") {
            Some(Json::Object(m)) => m
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Json::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect(),
            _ => HashMap::new(),
        };
        let bulk = f.get("bulksubscribe").and_then(|b| {
            let b = lower_keys(b);
            let num = |k: &str| b.get(k).and_then(|v| v.as_u64());
            let enabled = b.get("enabled").and_then(|v| v.as_bool()) == Some(true);
            Bulk::from_fields(enabled, num("maxmessagescount"), num("maxawaitdurationms"))
        });
        subs.push(Subscription {
            pubsub,
            topic,
            rules,
            dead_letter_topic: Some(json_str(f.get("deadlettertopic"))).filter(|s| !s.is_empty()),
            metadata,
            kind: Kind::Programmatic,
            source: if grpc {
                "ListTopicSubscriptions"
            } else {
                "/dapr/subscribe"
            }
            .into(),
            bulk,
        });
    }
    (subs, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn doc(text: &str) -> Document {
        Document {
            kind: "Subscription".into(),
            value: serde_norway::from_str(text).unwrap(),
            source: PathBuf::from("subs.yaml"),
        }
    }

    #[test]
    fn v2alpha1_with_rules_default_and_dead_letter() {
        let (subs, errs) = load_declarative(
            &[doc(
                "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata:\n  name: orders\nspec:\n  pubsubname: pubsub\n  topic: orders\n  routes:\n    rules:\n    - match: event.type == \"widget\"\n      path: /widgets\n    - match: event.data.size > 10\n      path: big\n    default: /orders\n  deadLetterTopic: poison\n  metadata:\n    rawPayload: \"false\"\nscopes:\n- app\n",
            )],
            "app",
        );
        assert!(errs.is_empty(), "{errs:?}");
        let s = &subs[0];
        assert_eq!(s.rules.len(), 3);
        assert_eq!(s.rules[1].path, "big");
        assert!(s.rules[2].expr.is_none());
        assert_eq!(s.dead_letter_topic.as_deref(), Some("poison"));
        assert!(!s.raw_payload());
        let ev = json!({"type": "gadget", "data": {"size": 11}});
        assert_eq!(s.route(&ev), Ok(Some("big")));
        let info = s.info();
        assert_eq!(info["type"], "DECLARATIVE");
        assert_eq!(info["rules"][0]["match"], "event.type == \"widget\"");
        assert_eq!(info["rules"][2], json!({"path": "/orders"}));
    }

    #[test]
    fn v1alpha1_route_and_scopes() {
        let text = "apiVersion: dapr.io/v1alpha1\nkind: Subscription\nmetadata:\n  name: s\nspec:\n  pubsubname: pubsub\n  topic: t\n  route: /t\nscopes: [other]\n";
        let (subs, errs) = load_declarative(&[doc(text)], "app");
        assert!(errs.is_empty() && subs.is_empty(), "out of scope");
        let (subs, _) = load_declarative(&[doc(text)], "other");
        assert_eq!(subs[0].rules[0].path, "/t");
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let (subs, errs) = load_declarative(
            &[doc(
                "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nspec:\n  topic: t\n  deadletterTopic: x\n  routes:\n    rules:\n    - match: size(event.data) > 1\n      path: /a\n    - match: event.type == \"x\"\n",
            )],
            "app",
        );
        assert!(subs.is_empty());
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.deadletterTopic",
                "spec.pubsubname",
                "spec.routes.rules[0].match",
                "spec.routes.rules[1].path"
            ],
            "{errs:?}"
        );
        assert!(
            errs[2].message.contains("function size() is not supported"),
            "{}",
            errs[2]
        );
        assert_eq!(errs[2].file, PathBuf::from("subs.yaml"));
    }

    #[test]
    fn programmatic_v1_and_v2_forms() {
        let body = br#"[
            {"pubsubname":"pubsub","topic":"a","route":"a-handler","metadata":{"rawPayload":"true"}},
            {"pubsubName":"pubsub","topic":"b","routes":{"rules":[{"match":"event.type == 'x'","path":"/x"}],"default":"/b"},"deadLetterTopic":"dl"},
            {"pubsubname":"pubsub","topic":"c","routes":{"rules":[{"match":"bogus(","path":"/x"}]}},
            {"topic":"d","route":"/d"}
        ]"#;
        let (subs, errs) = parse_programmatic(body, false);
        assert_eq!(subs.len(), 2);
        assert_eq!(subs[0].rules[0].path, "a-handler");
        assert!(subs[0].raw_payload());
        assert_eq!(subs[1].rules.len(), 2);
        assert_eq!(subs[1].dead_letter_topic.as_deref(), Some("dl"));
        assert_eq!(subs[1].kind, Kind::Programmatic);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].starts_with("pubsub/c: routes.rules[0].match"),
            "{errs:?}"
        );
    }

    #[test]
    fn unknown_components_are_named() {
        let (subs, _) = load_declarative(
            &[doc(
                "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nspec:\n  pubsubname: nope\n  topic: t\n  routes:\n    default: /t\n",
            )],
            "app",
        );
        let errs = check_components(&subs, &["pubsub"]);
        assert_eq!(errs[0].field, "spec.pubsubname");
        assert!(errs[0].message.contains("\"nope\""));
    }
}
