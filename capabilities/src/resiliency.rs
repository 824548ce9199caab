//! Dapr Resiliency: the `kind: Resiliency` document, its retry / timeout / circuit breaker policies,
//! and the pure state machines behind them.
//!
//! The capability engine uses these for its offers; the gateway can use the same types for Dapr's
//! own Resiliency spec (service invocation, components). [`parse_resiliency`] reads a
//! `serde_norway::Value` (one document of a multi-document file) and reports every problem with its
//! field path; [`Resiliency::policies_for_app`] and [`Resiliency::policies_for_component`] resolve a
//! target's policy names.
//!
//! A retry policy's `matching` (retry only some statuses) is read here; the caller that knows the
//! statuses applies it (the gateway's service invocation). `targets.actors` is parsed but
//! edgecar has no actors.

mod breaker;
mod retry;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_norway::Value;

pub use breaker::{
    BreakerPolicy, BreakerState, CircuitBreaker, Counts, Rejected, Ticket, TripCounter, TripError,
    TripExpr, TripOp,
};
pub use retry::{
    Backoff, ConstantRetry, ExponentialRetry, Matching, RetryPolicy, StatusCodes, jitter,
};

use crate::yaml::{self, Errors, FieldError, Fields};

/// The `apiVersion` of a Resiliency document.
pub const RESILIENCY_API_VERSION: &str = "dapr.io/v1alpha1";

/// A parsed `kind: Resiliency` document.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Resiliency {
    /// `metadata.name`.
    pub name: String,
    /// `scopes`: app ids the document applies to; empty means all.
    pub scopes: Vec<String>,
    /// `spec.policies`.
    pub policies: Policies,
    /// `spec.targets`.
    pub targets: Targets,
}

/// Named policies (`spec.policies`), referenced by targets and by capability offers.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Policies {
    /// `timeouts`: name → duration.
    #[serde(serialize_with = "ser_duration_map")]
    pub timeouts: BTreeMap<String, Duration>,
    /// `retries`: name → policy.
    pub retries: BTreeMap<String, RetryPolicy>,
    /// `circuitBreakers`: name → policy.
    pub circuit_breakers: BTreeMap<String, BreakerPolicy>,
}

impl Policies {
    /// Merges `other` into `self`; on a name defined in both, `other` wins. For gateways that
    /// load several Resiliency documents.
    pub fn merge(&mut self, other: Policies) {
        self.timeouts.extend(other.timeouts);
        self.retries.extend(other.retries);
        self.circuit_breakers.extend(other.circuit_breakers);
    }
}

fn ser_duration_map<S: serde::Serializer>(
    map: &BTreeMap<String, Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(
        map.iter()
            .map(|(k, v)| (k, crate::duration::format_go_duration(*v))),
    )
}

/// `spec.targets`: which policies apply to what.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Targets {
    /// `apps`: app id → policy names, for service invocation.
    pub apps: BTreeMap<String, TargetPolicies>,
    /// `actors`: actor type → policy names (parsed for compatibility; edgecar has no actors).
    pub actors: BTreeMap<String, TargetPolicies>,
    /// `components`: component name → policy names per direction.
    pub components: BTreeMap<String, ComponentTargets>,
}

/// The policy names one target refers to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetPolicies {
    /// `timeout`: a name in `policies.timeouts`.
    pub timeout: Option<String>,
    /// `retry`: a name in `policies.retries`.
    pub retry: Option<String>,
    /// `circuitBreaker`: a name in `policies.circuitBreakers`.
    pub circuit_breaker: Option<String>,
}

/// A component target: policies for calls to it (`outbound`) and deliveries from it (`inbound`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ComponentTargets {
    /// `outbound`.
    pub outbound: Option<TargetPolicies>,
    /// `inbound`.
    pub inbound: Option<TargetPolicies>,
}

/// Which way a component call goes, for [`Resiliency::policies_for_component`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The sidecar calls the component (state save, publish, output binding).
    Outbound,
    /// The component delivers to the app (subscription, input binding).
    Inbound,
}

/// The policies that apply to one target, names resolved.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResolvedPolicies {
    /// Timeout per attempt.
    pub timeout: Option<Duration>,
    /// Retry policy.
    pub retry: Option<RetryPolicy>,
    /// Circuit breaker policy (the caller keeps one breaker per target).
    pub circuit_breaker: Option<BreakerPolicy>,
}

impl Resiliency {
    /// Policies for service invocation of `app_id`.
    pub fn policies_for_app(&self, app_id: &str) -> ResolvedPolicies {
        self.targets
            .apps
            .get(app_id)
            .map(|t| self.resolve(t))
            .unwrap_or_default()
    }

    /// Policies for calls to (outbound) or from (inbound) component `name`.
    pub fn policies_for_component(&self, name: &str, direction: Direction) -> ResolvedPolicies {
        let target = self
            .targets
            .components
            .get(name)
            .and_then(|c| match direction {
                Direction::Outbound => c.outbound.as_ref(),
                Direction::Inbound => c.inbound.as_ref(),
            });
        target.map(|t| self.resolve(t)).unwrap_or_default()
    }

    /// Whether the document applies to `app_id` (empty `scopes` apply to every app).
    pub fn applies_to(&self, app_id: &str) -> bool {
        self.scopes.is_empty() || self.scopes.iter().any(|s| s == app_id)
    }

    fn resolve(&self, t: &TargetPolicies) -> ResolvedPolicies {
        let p = &self.policies;
        ResolvedPolicies {
            timeout: t.timeout.as_ref().and_then(|n| p.timeouts.get(n).copied()),
            retry: t.retry.as_ref().and_then(|n| p.retries.get(n).cloned()),
            circuit_breaker: t
                .circuit_breaker
                .as_ref()
                .and_then(|n| p.circuit_breakers.get(n).cloned()),
        }
    }
}

/// Parses a YAML string holding one Resiliency document. See [`parse_resiliency`].
pub fn parse_resiliency_str(text: &str) -> Result<Resiliency, Vec<FieldError>> {
    match serde_norway::from_str::<Value>(text) {
        Ok(doc) => parse_resiliency(&doc),
        Err(e) => Err(vec![FieldError::new("", format!("invalid YAML: {e}"))]),
    }
}

/// Reads one `kind: Resiliency` document, reporting every problem (bad durations, unknown policy
/// kinds, unsupported trip expressions, targets naming policies that do not exist, unknown fields)
/// with its field path.
pub fn parse_resiliency(doc: &Value) -> Result<Resiliency, Vec<FieldError>> {
    let mut errs = Vec::new();
    let mut out = Resiliency::default();
    if let Some(mut top) = Fields::new(doc, "", &mut errs) {
        check_header(&mut top, RESILIENCY_API_VERSION, "Resiliency", &mut errs);
        if let Some(meta) = top.required("metadata", &mut errs) {
            out.name = read_metadata(meta, "metadata", &mut errs);
        }
        if let Some(scopes) = top.get("scopes") {
            out.scopes = string_list(scopes, "scopes", &mut errs);
        }
        if let Some(spec) = top.required("spec", &mut errs)
            && let Some(mut spec) = Fields::new(spec, "spec", &mut errs)
        {
            if let Some(p) = spec.get("policies") {
                out.policies = read_policies(p, "spec.policies", &mut errs);
            }
            if let Some(t) = spec.get("targets") {
                out.targets = read_targets(t, "spec.targets", &out.policies, &mut errs);
            }
            spec.finish(&mut errs);
        }
        top.finish(&mut errs);
    }
    if errs.is_empty() { Ok(out) } else { Err(errs) }
}

/// Checks `apiVersion` and `kind` of a document.
pub(crate) fn check_header(top: &mut Fields<'_>, api_version: &str, kind: &str, errs: &mut Errors) {
    if let Some(v) = top.required_string("apiVersion", errs)
        && v != api_version
    {
        errs.push(FieldError::new(
            "apiVersion",
            format!("must be {api_version:?}, found {v:?}"),
        ));
    }
    if let Some(k) = top.required_string("kind", errs)
        && k != kind
    {
        errs.push(FieldError::new(
            "kind",
            format!("must be {kind:?}, found {k:?}"),
        ));
    }
}

/// Reads `metadata`, returning `metadata.name`; `labels`, `annotations` and `namespace` are
/// accepted (Kubernetes habits) and ignored.
pub(crate) fn read_metadata(v: &Value, path: &str, errs: &mut Errors) -> String {
    let Some(mut m) = Fields::new(v, path, errs) else {
        return String::new();
    };
    let name = m.required_string("name", errs).unwrap_or_default();
    m.ignore("labels");
    m.ignore("annotations");
    m.ignore("namespace");
    m.finish(errs);
    name
}

fn string_list(v: &Value, path: &str, errs: &mut Errors) -> Vec<String> {
    let Some(items) = yaml::sequence(v, path, errs) else {
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| yaml::string(item, &yaml::index(path, i), errs))
        .collect()
}

/// Iterates a mapping of user-chosen names (`retries: {retryForever: ...}`), reporting non-string
/// keys.
fn named_entries<'a>(v: &'a Value, path: &str, errs: &mut Errors) -> Vec<(String, &'a Value)> {
    let Some(map) = yaml::mapping(v, path, errs) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, v) in map {
        match k {
            Value::String(name) => out.push((name.clone(), v)),
            other => errs.push(FieldError::new(
                path,
                format!("names must be strings, found {}", yaml::describe(other)),
            )),
        }
    }
    out
}

fn read_policies(v: &Value, path: &str, errs: &mut Errors) -> Policies {
    let mut out = Policies::default();
    let Some(mut f) = Fields::new(v, path, errs) else {
        return out;
    };
    if let Some(t) = f.get("timeouts") {
        let tpath = f.path("timeouts");
        for (name, v) in named_entries(t, &tpath, errs) {
            if let Some(d) = yaml::duration(v, &yaml::join(&tpath, &name), errs) {
                out.timeouts.insert(name, d);
            }
        }
    }
    if let Some(r) = f.get("retries") {
        let rpath = f.path("retries");
        for (name, v) in named_entries(r, &rpath, errs) {
            if let Some(p) = read_retry_policy(v, &yaml::join(&rpath, &name), errs) {
                out.retries.insert(name, p);
            }
        }
    }
    if let Some(c) = f.get("circuitBreakers") {
        let cpath = f.path("circuitBreakers");
        for (name, v) in named_entries(c, &cpath, errs) {
            if let Some(p) = read_breaker_policy(v, &yaml::join(&cpath, &name), errs) {
                out.circuit_breakers.insert(name, p);
            }
        }
    }
    f.finish(errs);
    out
}

/// Reads `matching` (`httpStatusCodes`, `gRPCStatusCodes`: comma-separated codes and ranges).
fn read_matching(v: &Value, path: &str, errs: &mut Errors) -> Matching {
    let Some(mut f) = Fields::new(v, path, errs) else {
        return Matching::default();
    };
    let mut codes = |key: &'static str, valid, errs: &mut Errors| {
        let text = match f.get(key) {
            None => return StatusCodes::default(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(_) => {
                errs.push(FieldError::new(
                    f.path(key),
                    "must be a string of codes and ranges, e.g. \"429,500-599\"",
                ));
                return StatusCodes::default();
            }
        };
        StatusCodes::parse(&text, valid).unwrap_or_else(|e| {
            errs.push(FieldError::new(f.path(key), e));
            StatusCodes::default()
        })
    };
    let http_status_codes = codes("httpStatusCodes", 100..=599, errs);
    let grpc_status_codes = codes("gRPCStatusCodes", 0..=16, errs);
    f.finish(errs);
    Matching {
        http_status_codes,
        grpc_status_codes,
    }
}

/// Reads one retry policy (`policy: constant | exponential` and its settings).
pub(crate) fn read_retry_policy(v: &Value, path: &str, errs: &mut Errors) -> Option<RetryPolicy> {
    let mut f = Fields::new(v, path, errs)?;
    let before = errs.len();
    let kind = f.required_string("policy", errs);
    let max_retries = match f.i64("maxRetries", errs) {
        None | Some(-1) => None,
        Some(n) if n >= 0 => Some(n.unsigned_abs()),
        Some(n) => {
            errs.push(FieldError::new(
                f.path("maxRetries"),
                format!("must be -1 (unlimited) or a non-negative count, found {n}"),
            ));
            None
        }
    };
    let matching = match f.get("matching") {
        Some(m) => read_matching(m, &f.path("matching"), errs),
        None => Matching::default(),
    };
    let policy = match kind.as_deref() {
        Some("constant") => {
            let d = ConstantRetry::default();
            let duration = f.duration("duration", errs).unwrap_or(d.duration);
            Some(RetryPolicy::Constant(ConstantRetry {
                duration,
                max_retries,
                matching,
            }))
        }
        Some("exponential") => {
            let d = ExponentialRetry::default();
            let initial_interval = f
                .duration("initialInterval", errs)
                .unwrap_or(d.initial_interval);
            let multiplier = f.f64("multiplier", errs).unwrap_or(d.multiplier);
            if multiplier < 1.0 {
                errs.push(FieldError::new(
                    f.path("multiplier"),
                    format!("must be at least 1, found {multiplier}"),
                ));
            }
            let randomization_factor = f
                .f64("randomizationFactor", errs)
                .unwrap_or(d.randomization_factor);
            if !(0.0..=1.0).contains(&randomization_factor) {
                errs.push(FieldError::new(
                    f.path("randomizationFactor"),
                    format!("must be between 0 and 1, found {randomization_factor}"),
                ));
            }
            let max_interval = f.duration("maxInterval", errs).unwrap_or(d.max_interval);
            let max_elapsed_time = match f.duration("maxElapsedTime", errs) {
                Some(Duration::ZERO) => None,
                Some(t) => Some(t),
                None => d.max_elapsed_time,
            };
            Some(RetryPolicy::Exponential(ExponentialRetry {
                initial_interval,
                multiplier,
                randomization_factor,
                max_interval,
                max_elapsed_time,
                max_retries,
                matching,
            }))
        }
        Some(other) => {
            errs.push(FieldError::new(
                f.path("policy"),
                format!("must be \"constant\" or \"exponential\", found {other:?}"),
            ));
            None
        }
        None => None,
    };
    // Settings of the other kind would be silently ignored otherwise.
    match kind.as_deref() {
        Some("constant") => {}
        Some("exponential") => f.ignore("duration"),
        _ => {
            for k in [
                "duration",
                "initialInterval",
                "multiplier",
                "randomizationFactor",
                "maxInterval",
                "maxElapsedTime",
            ] {
                f.ignore(k);
            }
        }
    }
    f.finish(errs);
    if errs.len() == before { policy } else { None }
}

/// Reads one circuit breaker policy.
pub(crate) fn read_breaker_policy(
    v: &Value,
    path: &str,
    errs: &mut Errors,
) -> Option<BreakerPolicy> {
    let mut f = Fields::new(v, path, errs)?;
    let before = errs.len();
    let d = BreakerPolicy::default();
    let max_requests = match f.u64("maxRequests", errs) {
        None => d.max_requests,
        Some(0) => {
            errs.push(FieldError::new(f.path("maxRequests"), "must be at least 1"));
            1
        }
        Some(n) => u32::try_from(n).unwrap_or(u32::MAX),
    };
    let interval = f.duration("interval", errs).unwrap_or(d.interval);
    let timeout = f.duration("timeout", errs).unwrap_or(d.timeout);
    let trip = match f.string("trip", errs) {
        None => d.trip,
        Some(expr) => match TripExpr::parse(&expr) {
            Ok(t) => t,
            Err(e) => {
                errs.push(FieldError::new(f.path("trip"), e.to_string()));
                d.trip
            }
        },
    };
    f.finish(errs);
    (errs.len() == before).then_some(BreakerPolicy {
        max_requests,
        interval,
        timeout,
        trip,
    })
}

fn read_targets(v: &Value, path: &str, policies: &Policies, errs: &mut Errors) -> Targets {
    let mut out = Targets::default();
    let Some(mut f) = Fields::new(v, path, errs) else {
        return out;
    };
    for (key, map) in [("apps", &mut out.apps), ("actors", &mut out.actors)] {
        if let Some(v) = f.get(key) {
            let kpath = f.path(key);
            for (name, t) in named_entries(v, &kpath, errs) {
                let tpath = yaml::join(&kpath, &name);
                let allow_actor_keys = key == "actors";
                if let Some(tp) = read_target(t, &tpath, policies, allow_actor_keys, errs) {
                    map.insert(name, tp);
                }
            }
        }
    }
    if let Some(v) = f.get("components") {
        let cpath = f.path("components");
        for (name, c) in named_entries(v, &cpath, errs) {
            let path = yaml::join(&cpath, &name);
            let Some(mut cf) = Fields::new(c, &path, errs) else {
                continue;
            };
            let mut ct = ComponentTargets::default();
            if let Some(o) = cf.get("outbound") {
                ct.outbound = read_target(o, &cf.path("outbound"), policies, false, errs);
            }
            if let Some(i) = cf.get("inbound") {
                ct.inbound = read_target(i, &cf.path("inbound"), policies, false, errs);
            }
            cf.finish(errs);
            out.components.insert(name, ct);
        }
    }
    f.finish(errs);
    out
}

fn read_target(
    v: &Value,
    path: &str,
    policies: &Policies,
    actor: bool,
    errs: &mut Errors,
) -> Option<TargetPolicies> {
    let mut f = Fields::new(v, path, errs)?;
    let timeout = f.string("timeout", errs);
    let retry = f.string("retry", errs);
    let circuit_breaker = f.string("circuitBreaker", errs);
    if actor {
        f.ignore("circuitBreakerScope");
        f.ignore("circuitBreakerCacheSize");
    }
    let references = [
        (
            "timeout",
            "timeout",
            &timeout,
            policies.timeouts.keys().collect::<Vec<_>>(),
        ),
        ("retry", "retry", &retry, policies.retries.keys().collect()),
        (
            "circuitBreaker",
            "circuit breaker",
            &circuit_breaker,
            policies.circuit_breakers.keys().collect(),
        ),
    ];
    for (key, what, name, known) in references {
        if let Some(n) = name
            && !known.contains(&n)
        {
            errs.push(FieldError::new(
                yaml::join(path, key),
                format!("no {what} policy named {n:?} in spec.policies"),
            ));
        }
    }
    f.finish(errs);
    Some(TargetPolicies {
        timeout,
        retry,
        circuit_breaker,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const DAPR_EXAMPLE: &str = r#"
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata:
  name: myresiliency
scopes:
  - app1
spec:
  policies:
    timeouts:
      general: 5s
      important: 60s
      largeResponse: 10s
    retries:
      pubsubRetry:
        policy: constant
        duration: 5s
        maxRetries: 10
      retryForever:
        policy: exponential
        maxInterval: 15s
        maxRetries: -1
      important:
        policy: constant
        duration: 5s
        maxRetries: 30
    circuitBreakers:
      simpleCB:
        maxRequests: 1
        timeout: 30s
        trip: consecutiveFailures >= 5
      pubsubCB:
        maxRequests: 1
        interval: 8s
        timeout: 45s
        trip: consecutiveFailures > 8
  targets:
    apps:
      appB:
        timeout: general
        retry: important
        circuitBreaker: simpleCB
    actors:
      myActorType:
        timeout: general
        retry: important
        circuitBreaker: simpleCB
        circuitBreakerScope: both
        circuitBreakerCacheSize: 5000
    components:
      statestore1:
        outbound:
          timeout: general
          retry: retryForever
          circuitBreaker: simpleCB
      pubsub1:
        outbound:
          retry: pubsubRetry
          circuitBreaker: pubsubCB
        inbound:
          timeout: general
          retry: important
          circuitBreaker: pubsubCB
"#;

    #[test]
    fn matching_lists_the_statuses_a_retry_policy_retries() {
        let doc = r#"
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: { name: m }
spec:
  policies:
    retries:
      some:
        policy: constant
        matching: { httpStatusCodes: "429,500-599", gRPCStatusCodes: "1-4,8-11,13,14" }
      one: { policy: exponential, matching: { httpStatusCodes: 503 } }
  targets: {}
"#;
        let r = parse_resiliency_str(doc).unwrap();
        let m = r.policies.retries["some"].matching();
        assert!(m.http_status_codes.contains(429) && m.http_status_codes.contains(503));
        assert!(!m.http_status_codes.contains(404) && !m.http_status_codes.contains(428));
        assert!(m.grpc_status_codes.contains(14) && !m.grpc_status_codes.contains(5));
        let one = r.policies.retries["one"].matching();
        assert!(one.http_status_codes.contains(503) && one.grpc_status_codes.is_empty());
        let bad = doc
            .replace("\"429,500-599\"", "\"429,600\"")
            .replace("1-4,8-11", "4-1")
            .replace("httpStatusCodes: 503", "httpStatus: 503");
        let shown: Vec<String> = parse_resiliency_str(&bad)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        for want in [
            "spec.policies.retries.some.matching.httpStatusCodes: 600 is outside 100-599",
            "spec.policies.retries.some.matching.gRPCStatusCodes: range 4-1 runs backwards",
            "spec.policies.retries.one.matching.httpStatus: unknown field",
        ] {
            assert!(
                shown.iter().any(|e| e.starts_with(want)),
                "{want} in {shown:?}"
            );
        }
    }

    #[test]
    fn parses_the_dapr_documentation_example() {
        let r = parse_resiliency_str(DAPR_EXAMPLE).unwrap();
        assert_eq!(r.name, "myresiliency");
        assert!(r.applies_to("app1") && !r.applies_to("app2"));
        assert_eq!(r.policies.timeouts["important"], Duration::from_secs(60));
        assert_eq!(
            r.policies.retries["pubsubRetry"],
            RetryPolicy::Constant(ConstantRetry {
                duration: Duration::from_secs(5),
                max_retries: Some(10),
                matching: Matching::default(),
            })
        );
        let RetryPolicy::Exponential(e) = &r.policies.retries["retryForever"] else {
            panic!("exponential expected");
        };
        assert_eq!(e.max_interval, Duration::from_secs(15));
        assert_eq!(e.max_retries, None);
        assert_eq!(e.initial_interval, Duration::from_millis(500));
        let cb = &r.policies.circuit_breakers["pubsubCB"];
        assert_eq!(cb.interval, Duration::from_secs(8));
        assert_eq!(cb.trip.to_string(), "consecutiveFailures > 8");

        let app = r.policies_for_app("appB");
        assert_eq!(app.timeout, Some(Duration::from_secs(5)));
        assert_eq!(
            app.circuit_breaker.map(|c| c.timeout),
            Some(Duration::from_secs(30))
        );
        let inbound = r.policies_for_component("pubsub1", Direction::Inbound);
        assert_eq!(inbound.timeout, Some(Duration::from_secs(5)));
        assert_eq!(
            r.policies_for_component("statestore1", Direction::Inbound),
            ResolvedPolicies::default()
        );
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let doc = r#"
apiVersion: dapr.io/v1
kind: Resiliency
metadata: { name: r }
spec:
  policies:
    timeouts: { general: 5 }
    retries:
      a: { policy: linear }
      b: { policy: constant, maxRetries: -3, maxRetry: 2 }
    circuitBreakers:
      c: { trip: "consecutiveFailures < 3", timeout: 1x }
  targets:
    apps:
      appB: { retry: nope, circuitBreaker: c, timeout: general }
"#;
        let errs = parse_resiliency_str(doc).unwrap_err();
        let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
        let expect = [
            "apiVersion: must be \"dapr.io/v1alpha1\"",
            "spec.policies.timeouts.general: must be a duration with a unit",
            "spec.policies.retries.a.policy: must be \"constant\" or \"exponential\"",
            "spec.policies.retries.b.maxRetries: must be -1",
            "spec.policies.retries.b.maxRetry: unknown field",
            "spec.policies.circuitBreakers.c.timeout: unknown unit",
            "spec.policies.circuitBreakers.c.trip: unsupported trip expression",
            "spec.targets.apps.appB.timeout: no timeout policy named \"general\"",
            "spec.targets.apps.appB.retry: no retry policy named \"nope\"",
            "spec.targets.apps.appB.circuitBreaker: no circuit breaker policy named \"c\"",
        ];
        for e in expect {
            assert!(
                shown.iter().any(|s| s.starts_with(e)),
                "missing {e:?} in {shown:#?}"
            );
        }
        assert_eq!(shown.len(), expect.len(), "{shown:#?}");
    }
}
