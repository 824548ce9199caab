//! Capability manifests: the `kind: Capability` document, its validation, and its defaults.
//!
//! ```yaml
//! apiVersion: edgecar.io/v1alpha1
//! kind: Capability
//! metadata: { name: detect-objects }
//! spec:
//!   secretStore: local            # where `secretKeyRef` headers are looked up
//!   cache:
//!     ttl: 60s                    # default 60s
//!     staleIfError: 10m           # default 0: never serve stale
//!     maxEntries: 10000           # default 10000
//!     maxBytes: 16Mi              # default 16Mi; integer bytes or k/Ki/M/Mi/G/Gi
//!     keyHeaders: [accept]        # request headers that are part of the cache key; default none
//!     methods: [GET, POST]        # cacheable HTTP methods; default GET and POST
//!   offers:                       # in order of preference
//!     - name: cloud-vision
//!       type: http
//!       url: https://vision.example.com/v1
//!       timeout: 2s               # per attempt; default 5s
//!       headers:
//!         Accept: application/json
//!         X-Api-Key: { secretKeyRef: { name: vision, key: apiKey } }
//!       retries: { policy: constant, duration: 200ms, maxRetries: 1 }   # or a policy name
//!       circuitBreaker: cloudCB   # a name in the Resiliency policies, or inline
//!     - { name: peer, type: invoke, appId: detector.site-b, method: "v2/{method}" }
//!     - { name: local, type: process, command: [/usr/lib/edgecar/detect, --small] }
//!     - { name: fallback, type: builtin, builtin: echo }
//! ```
//!
//! `POST` is cacheable by default because a capability is meant to be a pure function of its
//! request (method path, body, key headers); a capability with side effects should set
//! `methods: [GET]` or drop `spec.cache`. `method` overrides the capability method path for one
//! offer; `{method}` in it stands for the path the caller used.
//!
//! [`parse_manifest`] reads a `serde_norway::Value` and reports every problem with its field path;
//! [`Manifest::validate`] re-checks a manifest built in code.

use std::time::Duration;

use http::Method;
use serde::Serialize;
use serde_norway::Value;

use crate::builtin;
use crate::resiliency::{
    self, BreakerPolicy, RetryPolicy, check_header, read_breaker_policy, read_retry_policy,
};
use crate::yaml::{self, Errors, FieldError, Fields};

/// The `apiVersion` of a capability manifest.
pub const MANIFEST_API_VERSION: &str = "edgecar.io/v1alpha1";
/// The `kind` of a capability manifest.
pub const MANIFEST_KIND: &str = "Capability";
/// Offer timeout when the manifest sets none.
pub const DEFAULT_OFFER_TIMEOUT: Duration = Duration::from_secs(5);
/// Most offers one capability may list.
pub const MAX_OFFERS: usize = 16;

/// A parsed, validated capability manifest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Manifest {
    /// `metadata.name`: the capability's name, as in `/v1.0/capabilities/<name>/...`.
    pub name: String,
    /// `spec`.
    pub spec: CapabilitySpec,
}

/// `spec` of a manifest.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CapabilitySpec {
    /// `description`: free text for status pages.
    pub description: Option<String>,
    /// `secretStore`: the secret store `secretKeyRef` headers are read from, unless a reference
    /// names its own `store`.
    pub secret_store: Option<String>,
    /// `cache`: result caching; `None` disables it (every reply is `Bypass`).
    pub cache: Option<CacheSpec>,
    /// `offers`, in order of preference.
    pub offers: Vec<OfferSpec>,
}

/// `spec.cache`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheSpec {
    /// `ttl`: how long a successful result is served as fresh. Default 60s.
    #[serde(serialize_with = "crate::duration::ser_go")]
    pub ttl: Duration,
    /// `staleIfError`: how long after `ttl` an entry may still be served, marked stale, when every
    /// offer fails. Default 0 (never).
    #[serde(serialize_with = "crate::duration::ser_go")]
    pub stale_if_error: Duration,
    /// `maxEntries`: most entries kept. Default 10000.
    pub max_entries: u64,
    /// `maxBytes`: most bytes of replies kept (bodies, headers and a small per-entry overhead).
    /// Default 16 MiB.
    pub max_bytes: u64,
    /// `keyHeaders`: request headers (lower-cased) that are part of the cache key and forwarded to
    /// offers. Default none.
    pub key_headers: Vec<String>,
    /// `methods`: HTTP methods whose requests are cached. Default GET and POST.
    #[serde(serialize_with = "ser_methods")]
    pub methods: Vec<Method>,
}

impl Default for CacheSpec {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(60),
            stale_if_error: Duration::ZERO,
            max_entries: 10_000,
            max_bytes: 16 * 1024 * 1024,
            key_headers: Vec::new(),
            methods: vec![Method::GET, Method::POST],
        }
    }
}

fn ser_methods<S: serde::Serializer>(methods: &[Method], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(methods.iter().map(Method::as_str))
}

/// One offer of a capability.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OfferSpec {
    /// `name`, unique within the capability; replies name the offer that served them.
    pub name: String,
    /// `type` and the settings that go with it.
    #[serde(flatten)]
    pub target: OfferTarget,
    /// `method`: replaces the caller's method path for this offer; `{method}` in it is replaced by
    /// the caller's path.
    pub method: Option<String>,
    /// `timeout`: limit of one attempt. Default 5s.
    #[serde(serialize_with = "crate::duration::ser_go")]
    pub timeout: Duration,
    /// `retries`: retry policy for this offer (before falling back to the next). Default none.
    pub retries: Option<PolicyRef<RetryPolicy>>,
    /// `circuitBreaker`: breaker policy. Default: [`BreakerPolicy::offer_default`] for every
    /// offer that is not `builtin`.
    pub circuit_breaker: Option<PolicyRef<BreakerPolicy>>,
}

/// What an offer calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum OfferTarget {
    /// `type: http`: a remote HTTP API.
    Http {
        /// `url`: base URL; the method path is appended.
        url: String,
        /// `headers`: added to every request.
        headers: Vec<HeaderSpec>,
    },
    /// `type: invoke`: an app, local, on a peer gateway, or on another site (`app.site`).
    Invoke {
        /// `appId`.
        #[serde(rename = "appId")]
        app_id: String,
    },
    /// `type: process`: a local executable speaking JSON on stdin/stdout (see the crate doc).
    Process {
        /// `command`: program and arguments (no shell).
        command: Vec<String>,
    },
    /// `type: builtin`: compiled into this crate.
    Builtin {
        /// `builtin`: which one (defaults to the offer's `name`).
        builtin: String,
    },
}

impl OfferTarget {
    /// The `type` as written in manifests.
    pub fn type_name(&self) -> &'static str {
        match self {
            OfferTarget::Http { .. } => "http",
            OfferTarget::Invoke { .. } => "invoke",
            OfferTarget::Process { .. } => "process",
            OfferTarget::Builtin { .. } => "builtin",
        }
    }
}

/// One configured header of an http offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderSpec {
    /// Header name as written (HTTP header names are case-insensitive).
    pub name: String,
    /// Where the value comes from.
    pub value: HeaderSource,
}

/// The value of a configured header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HeaderSource {
    /// Written in the manifest.
    Value(String),
    /// Read from a secret store at call time (so rotation needs no reload).
    SecretKeyRef(SecretKeyRef),
}

/// `secretKeyRef`: a value in a secret store, Dapr style.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretKeyRef {
    /// The store (`secretKeyRef.store`, else `spec.secretStore`).
    pub store: String,
    /// The secret's name.
    pub name: String,
    /// The key within the secret (defaults to `name`, as in Dapr).
    pub key: String,
}

/// A policy written inline or by name (a name in the Resiliency document's `spec.policies`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum PolicyRef<T> {
    /// A name, resolved by the engine against its [`Policies`](crate::resiliency::Policies).
    Named(String),
    /// The policy itself.
    Inline(T),
}

/// Parses a YAML string holding one capability manifest. See [`parse_manifest`].
pub fn parse_manifest_str(text: &str) -> Result<Manifest, Vec<FieldError>> {
    match serde_norway::from_str::<Value>(text) {
        Ok(doc) => parse_manifest(&doc),
        Err(e) => Err(vec![FieldError::new("", format!("invalid YAML: {e}"))]),
    }
}

/// Reads one `kind: Capability` document (as split out of a multi-document file by the caller),
/// applying defaults and reporting every problem with its field path, e.g.
/// `spec.offers[1].url: must be an absolute http:// or https:// URL`.
pub fn parse_manifest(doc: &Value) -> Result<Manifest, Vec<FieldError>> {
    let mut errs = Vec::new();
    let mut name = String::new();
    let mut spec = CapabilitySpec {
        description: None,
        secret_store: None,
        cache: None,
        offers: Vec::new(),
    };
    if let Some(mut top) = Fields::new(doc, "", &mut errs) {
        check_header(&mut top, MANIFEST_API_VERSION, MANIFEST_KIND, &mut errs);
        if let Some(meta) = top.required("metadata", &mut errs) {
            name = resiliency::read_metadata(meta, "metadata", &mut errs);
            if !name.is_empty() {
                check_name(&name, "metadata.name", &mut errs);
            }
        }
        if let Some(s) = top.required("spec", &mut errs) {
            spec = read_spec(s, &mut errs);
        }
        top.finish(&mut errs);
    }
    if errs.is_empty() {
        Ok(Manifest { name, spec })
    } else {
        Err(errs)
    }
}

impl Manifest {
    /// Re-checks a manifest (for one built in code rather than parsed); reports every problem.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errs = Vec::new();
        check_name(&self.name, "metadata.name", &mut errs);
        if let Some(cache) = &self.spec.cache {
            check_cache(cache, "spec.cache", &mut errs);
        }
        check_offer_list(
            self.spec.offers.iter().enumerate(),
            self.spec.offers.len(),
            &mut errs,
        );
        for (i, offer) in self.spec.offers.iter().enumerate() {
            check_offer(offer, &yaml::index("spec.offers", i), &mut errs);
        }
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }
}

fn read_spec(v: &Value, errs: &mut Errors) -> CapabilitySpec {
    let mut spec = CapabilitySpec {
        description: None,
        secret_store: None,
        cache: None,
        offers: Vec::new(),
    };
    let Some(mut f) = Fields::new(v, "spec", errs) else {
        return spec;
    };
    spec.description = f.string("description", errs);
    spec.secret_store = f.string("secretStore", errs);
    if let Some(c) = f.get("cache") {
        spec.cache = read_cache(c, "spec.cache", errs);
    }
    if let Some(offers) = f.required("offers", errs)
        && let Some(items) = yaml::sequence(offers, "spec.offers", errs)
    {
        let mut built = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = yaml::index("spec.offers", i);
            if let Some(offer) = read_offer(item, &path, spec.secret_store.as_deref(), errs) {
                check_offer(&offer, &path, errs);
                built.push((i, offer));
            }
        }
        check_offer_list(built.iter().map(|(i, o)| (*i, o)), items.len(), errs);
        spec.offers = built.into_iter().map(|(_, o)| o).collect();
    }
    f.finish(errs);
    spec
}

fn read_cache(v: &Value, path: &str, errs: &mut Errors) -> Option<CacheSpec> {
    let mut f = Fields::new(v, path, errs)?;
    let d = CacheSpec::default();
    let mut cache = CacheSpec {
        ttl: f.duration("ttl", errs).unwrap_or(d.ttl),
        stale_if_error: f.duration("staleIfError", errs).unwrap_or(d.stale_if_error),
        max_entries: f.u64("maxEntries", errs).unwrap_or(d.max_entries),
        max_bytes: d.max_bytes,
        key_headers: Vec::new(),
        methods: d.methods,
    };
    if let Some(b) = f.get("maxBytes") {
        if let Some(n) = parse_bytes(b) {
            cache.max_bytes = n;
        } else {
            errs.push(FieldError::new(
                f.path("maxBytes"),
                format!(
                    "must be a byte count such as 1048576, \"512Ki\" or \"16Mi\", found {}",
                    yaml::describe(b)
                ),
            ));
        }
    }
    if let Some(h) = f.get("keyHeaders") {
        let hpath = f.path("keyHeaders");
        if let Some(items) = yaml::sequence(h, &hpath, errs) {
            for (i, item) in items.iter().enumerate() {
                if let Some(name) = yaml::string(item, &yaml::index(&hpath, i), errs) {
                    cache.key_headers.push(name.to_ascii_lowercase());
                }
            }
        }
    }
    if let Some(m) = f.get("methods") {
        let mpath = f.path("methods");
        if let Some(items) = yaml::sequence(m, &mpath, errs) {
            cache.methods.clear();
            for (i, item) in items.iter().enumerate() {
                let ipath = yaml::index(&mpath, i);
                if let Some(name) = yaml::string(item, &ipath, errs) {
                    match Method::from_bytes(name.to_ascii_uppercase().as_bytes()) {
                        Ok(m) => cache.methods.push(m),
                        Err(_) => errs.push(FieldError::new(ipath, "not an HTTP method")),
                    }
                }
            }
        }
    }
    f.finish(errs);
    let before = errs.len();
    check_cache(&cache, path, errs);
    (errs.len() == before).then_some(cache)
}

/// `16Mi`, `512Ki`, `1G`, `1048576`.
fn parse_bytes(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let s = v.as_str()?.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = s[..digits].parse().ok()?;
    let factor: u64 = match s[digits..].trim() {
        "" => 1,
        "k" | "K" => 1_000,
        "Ki" => 1 << 10,
        "M" => 1_000_000,
        "Mi" => 1 << 20,
        "G" => 1_000_000_000,
        "Gi" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(factor)
}

fn read_offer(
    v: &Value,
    path: &str,
    secret_store: Option<&str>,
    errs: &mut Errors,
) -> Option<OfferSpec> {
    let mut f = Fields::new(v, path, errs)?;
    let name = f.required_string("name", errs).unwrap_or_default();
    let type_name = f.required_string("type", errs);
    let method = f.string("method", errs);
    let timeout = f.duration("timeout", errs).unwrap_or(DEFAULT_OFFER_TIMEOUT);
    let retries = f.get("retries").and_then(|r| {
        let rpath = f.path("retries");
        match r {
            Value::String(name) => Some(PolicyRef::Named(name.clone())),
            other => read_retry_policy(other, &rpath, errs).map(PolicyRef::Inline),
        }
    });
    let circuit_breaker = f.get("circuitBreaker").and_then(|c| {
        let cpath = f.path("circuitBreaker");
        match c {
            Value::String(name) => Some(PolicyRef::Named(name.clone())),
            other => read_breaker_policy(other, &cpath, errs).map(PolicyRef::Inline),
        }
    });

    // Settings that belong to one type; given for another they are errors, not silently unused.
    let url = f.get("url");
    let headers = f.get("headers");
    let app_id = f.get("appId");
    let command = f.get("command");
    let builtin_name = f.get("builtin");
    let wrong_type = |key: &str, present: bool, wanted: &str, errs: &mut Errors| {
        if present && type_name.as_deref().is_some_and(|t| t != wanted) {
            errs.push(FieldError::new(
                yaml::join(path, key),
                format!("only valid for type {wanted}"),
            ));
        }
    };
    wrong_type("url", url.is_some(), "http", errs);
    wrong_type("headers", headers.is_some(), "http", errs);
    wrong_type("appId", app_id.is_some(), "invoke", errs);
    wrong_type("command", command.is_some(), "process", errs);
    wrong_type("builtin", builtin_name.is_some(), "builtin", errs);

    let target = match type_name.as_deref() {
        Some("http") => {
            let url = match url {
                Some(u) => yaml::string(u, &f.path("url"), errs),
                None => {
                    errs.push(FieldError::new(f.path("url"), "is required for type http"));
                    None
                }
            };
            let headers = headers
                .map(|h| read_headers(h, &f.path("headers"), secret_store, errs))
                .unwrap_or_default();
            url.map(|url| OfferTarget::Http { url, headers })
        }
        Some("invoke") => match app_id {
            Some(a) => {
                yaml::string(a, &f.path("appId"), errs).map(|app_id| OfferTarget::Invoke { app_id })
            }
            None => {
                errs.push(FieldError::new(
                    f.path("appId"),
                    "is required for type invoke",
                ));
                None
            }
        },
        Some("process") => match command {
            Some(c) => {
                let cpath = f.path("command");
                yaml::sequence(c, &cpath, errs).map(|items| {
                    let command = items
                        .iter()
                        .enumerate()
                        .filter_map(|(i, a)| yaml::scalar_string(a, &yaml::index(&cpath, i), errs))
                        .collect();
                    OfferTarget::Process { command }
                })
            }
            None => {
                errs.push(FieldError::new(
                    f.path("command"),
                    "is required for type process (a list: program, then arguments)",
                ));
                None
            }
        },
        Some("builtin") => {
            let builtin = match builtin_name {
                Some(b) => yaml::string(b, &f.path("builtin"), errs),
                None => Some(name.clone()),
            };
            builtin.map(|builtin| OfferTarget::Builtin { builtin })
        }
        Some(other) => {
            errs.push(FieldError::new(
                f.path("type"),
                format!("must be one of http, invoke, process, builtin; found {other:?}"),
            ));
            None
        }
        None => None,
    };
    f.finish(errs);
    // Returned even when some field was wrong (with that field defaulted), so the semantic checks
    // still run on the rest and every problem is reported in one go.
    Some(OfferSpec {
        name,
        target: target?,
        method,
        timeout,
        retries,
        circuit_breaker,
    })
}

fn read_headers(
    v: &Value,
    path: &str,
    secret_store: Option<&str>,
    errs: &mut Errors,
) -> Vec<HeaderSpec> {
    let Some(map) = yaml::mapping(v, path, errs) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, v) in map {
        let Some(name) = yaml::string(k, path, errs) else {
            continue;
        };
        let hpath = yaml::join(path, &name);
        let value = match v {
            Value::Mapping(_) => {
                let Some(mut f) = Fields::new(v, &hpath, errs) else {
                    continue;
                };
                let plain = f.get("value");
                let secret = f.get("secretKeyRef");
                let value = match (plain, secret) {
                    (Some(p), None) => {
                        yaml::scalar_string(p, &f.path("value"), errs).map(HeaderSource::Value)
                    }
                    (None, Some(s)) => {
                        read_secret_ref(s, &f.path("secretKeyRef"), secret_store, errs)
                            .map(HeaderSource::SecretKeyRef)
                    }
                    _ => {
                        errs.push(FieldError::new(
                            hpath.clone(),
                            "must have exactly one of `value` or `secretKeyRef`",
                        ));
                        None
                    }
                };
                f.finish(errs);
                value
            }
            other => yaml::scalar_string(other, &hpath, errs).map(HeaderSource::Value),
        };
        if let Some(value) = value {
            out.push(HeaderSpec { name, value });
        }
    }
    out
}

fn read_secret_ref(
    v: &Value,
    path: &str,
    secret_store: Option<&str>,
    errs: &mut Errors,
) -> Option<SecretKeyRef> {
    let mut f = Fields::new(v, path, errs)?;
    let name = f.required_string("name", errs);
    let key = f.string("key", errs);
    let store = f
        .string("store", errs)
        .or_else(|| secret_store.map(str::to_owned));
    if store.is_none() {
        errs.push(FieldError::new(
            path,
            "no secret store: set spec.secretStore or secretKeyRef.store",
        ));
    }
    f.finish(errs);
    let name = name?;
    Some(SecretKeyRef {
        store: store?,
        key: key.unwrap_or_else(|| name.clone()),
        name,
    })
}

/// Capability and offer names appear in URL paths and metric labels: keep them plain.
fn check_name(name: &str, path: &str, errs: &mut Errors) {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if name.is_empty() || name.len() > 63 || !ok_chars || name.starts_with('.') {
        errs.push(FieldError::new(
            path,
            format!(
                "{name:?} is not a valid name (1 to 63 letters, digits, '-', '_' or '.', \
                 not starting with '.')"
            ),
        ));
    }
}

fn check_offer_list<'a>(
    offers: impl Iterator<Item = (usize, &'a OfferSpec)>,
    written: usize,
    errs: &mut Errors,
) {
    if written == 0 {
        errs.push(FieldError::new(
            "spec.offers",
            "must list at least one offer",
        ));
    }
    if written > MAX_OFFERS {
        errs.push(FieldError::new(
            "spec.offers",
            format!("at most {MAX_OFFERS} offers, found {written}"),
        ));
    }
    let mut seen: Vec<(&str, usize)> = Vec::new();
    for (i, offer) in offers {
        if let Some((_, first)) = seen.iter().find(|(n, _)| *n == offer.name) {
            errs.push(FieldError::new(
                yaml::join(&yaml::index("spec.offers", i), "name"),
                format!(
                    "duplicate offer name {:?} (also spec.offers[{first}])",
                    offer.name
                ),
            ));
        } else {
            seen.push((&offer.name, i));
        }
    }
}

fn check_cache(cache: &CacheSpec, path: &str, errs: &mut Errors) {
    if cache.ttl.is_zero() {
        errs.push(FieldError::new(
            yaml::join(path, "ttl"),
            "must be more than 0 (remove spec.cache to disable caching)",
        ));
    }
    if cache.max_entries == 0 {
        errs.push(FieldError::new(
            yaml::join(path, "maxEntries"),
            "must be at least 1",
        ));
    }
    if cache.max_bytes < 1024 {
        errs.push(FieldError::new(
            yaml::join(path, "maxBytes"),
            "must be at least 1024",
        ));
    }
    for (i, h) in cache.key_headers.iter().enumerate() {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            errs.push(FieldError::new(
                yaml::index(&yaml::join(path, "keyHeaders"), i),
                format!("{h:?} is not a valid header name"),
            ));
        }
    }
    if cache.methods.is_empty() {
        errs.push(FieldError::new(
            yaml::join(path, "methods"),
            "must list at least one method (remove spec.cache to disable caching)",
        ));
    }
}

/// Headers an offer must not set: they describe the connection, not the request.
const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn check_offer(offer: &OfferSpec, path: &str, errs: &mut Errors) {
    check_name(&offer.name, &yaml::join(path, "name"), errs);
    if offer.timeout.is_zero() {
        errs.push(FieldError::new(
            yaml::join(path, "timeout"),
            "must be more than 0",
        ));
    }
    if let Some(m) = &offer.method
        && !is_valid_path(m.replace("{method}", "").trim_start_matches('/'))
    {
        errs.push(FieldError::new(
            yaml::join(path, "method"),
            format!("{m:?} is not a valid URL path (no spaces, no '..' segments, no '?')"),
        ));
    }
    match &offer.target {
        OfferTarget::Http { url, headers } => {
            if let Err(why) = check_url(url) {
                errs.push(FieldError::new(yaml::join(path, "url"), why));
            }
            for h in headers {
                let hpath = yaml::join(&yaml::join(path, "headers"), &h.name);
                if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                    errs.push(FieldError::new(hpath, "not a valid header name"));
                } else if RESERVED_HEADERS.contains(&h.name.to_ascii_lowercase().as_str()) {
                    errs.push(FieldError::new(
                        hpath,
                        "is managed by the HTTP client and cannot be set",
                    ));
                } else if let HeaderSource::Value(v) = &h.value
                    && http::HeaderValue::from_str(v).is_err()
                {
                    errs.push(FieldError::new(
                        hpath,
                        "value has characters not allowed in a header",
                    ));
                }
            }
        }
        OfferTarget::Invoke { app_id } => {
            let mut parts = app_id.split('.');
            let valid = app_id.split('.').count() <= 2
                && parts.all(|p| {
                    !p.is_empty()
                        && p.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
                });
            if !valid {
                errs.push(FieldError::new(
                    yaml::join(path, "appId"),
                    format!("{app_id:?} must be an app id, `app` or `app.site`"),
                ));
            }
        }
        OfferTarget::Process { command } => {
            if command.first().is_none_or(|p| p.trim().is_empty()) {
                errs.push(FieldError::new(
                    yaml::join(path, "command"),
                    "must name a program (a list: program, then arguments)",
                ));
            }
        }
        OfferTarget::Builtin { builtin } => {
            if !builtin::NAMES.contains(&builtin.as_str()) {
                errs.push(FieldError::new(
                    yaml::join(path, "builtin"),
                    format!(
                        "unknown builtin {builtin:?} (available: {})",
                        builtin::NAMES.join(", ")
                    ),
                ));
            }
        }
    }
}

fn check_url(url: &str) -> Result<(), String> {
    const MSG: &str = "must be an absolute http:// or https:// URL";
    let uri: http::Uri = url.parse().map_err(|_| format!("{MSG}, found {url:?}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("{MSG}, found {url:?}")),
    }
    match uri.host() {
        Some(h) if !h.is_empty() => {}
        _ => return Err(format!("{MSG} with a host, found {url:?}")),
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err("must not carry credentials; use headers with secretKeyRef".to_owned());
    }
    Ok(())
}

/// Whether `path` can be appended to a URL as is: URI path characters only (RFC 3986 `pchar`
/// and `/`, with `%` escapes), and no `.` or `..` segments that would walk out of the offer's base
/// path — percent-encoded ones included ([`has_dot_segment`]).
pub(crate) fn is_valid_path(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let ok = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'/'
            );
        if b == b'%' {
            let hex = |j: usize| bytes.get(j).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(i + 1) && hex(i + 2)) {
                return false;
            }
            i += 3;
            continue;
        }
        if !ok {
            return false;
        }
        i += 1;
    }
    !has_dot_segment(path)
}

/// Whether `path` has a `.` or `..` segment as a server may read it: percent-escapes decoded
/// (repeatedly, for servers or proxies that decode twice) and `\` taken as a separator too, so
/// `%2e%2e/admin`, `..%2Fadmin`, `.%2e/admin` and `..%5cadmin` all count.
pub fn has_dot_segment(path: &str) -> bool {
    let mut cur = path.as_bytes().to_vec();
    for _ in 0..4 {
        if cur
            .split(|b| *b == b'/' || *b == b'\\')
            .any(|seg| seg == b"." || seg == b"..")
        {
            return true;
        }
        let next = percent_decode(&cur);
        if next == cur {
            return false;
        }
        cur = next;
    }
    // Still changing after four decodings: nobody means that honestly.
    true
}

/// `%XX` escapes decoded; a `%` not followed by two hex digits is kept as it is.
fn percent_decode(b: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h << 4) | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Whether `query` can be appended after `?`: path characters plus `?`.
pub(crate) fn is_valid_query(query: &str) -> bool {
    query
        .split(['?', '/'])
        .all(|part| part.is_empty() || (part != ".." && part != "." && is_valid_path(part)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
apiVersion: edgecar.io/v1alpha1
kind: Capability
metadata: { name: detect-objects }
spec:
  secretStore: local
  cache: { ttl: 60s, maxEntries: 10000, staleIfError: 10m, keyHeaders: [Accept], maxBytes: 8Mi }
  offers:
    - name: cloud-vision
      type: http
      url: "https://vision.example.com/v1"
      timeout: 2s
      headers:
        X-Version: 2
        X-Api-Key: { secretKeyRef: { name: vision, key: apiKey } }
      retries: { policy: constant, duration: 100ms, maxRetries: 2 }
      circuitBreaker: cloudCB
    - { name: peer, type: invoke, appId: "detector.site-b", method: "v2/{method}" }
    - { name: local, type: process, command: ["/usr/lib/edgecar/detect", "--small"] }
    - { name: stats, type: builtin, builtin: aggregate }
"#;

    #[test]
    fn parses_the_design_example_with_defaults() {
        let m = parse_manifest_str(EXAMPLE).unwrap();
        assert_eq!(m.name, "detect-objects");
        let cache = m.spec.cache.as_ref().unwrap();
        assert_eq!(cache.stale_if_error, Duration::from_secs(600));
        assert_eq!(cache.max_bytes, 8 << 20);
        assert_eq!(cache.key_headers, ["accept"]);
        assert_eq!(cache.methods, [Method::GET, Method::POST]);
        let offers = &m.spec.offers;
        assert_eq!(offers.len(), 4);
        assert_eq!(offers[0].timeout, Duration::from_secs(2));
        assert_eq!(offers[1].timeout, DEFAULT_OFFER_TIMEOUT);
        let OfferTarget::Http { headers, .. } = &offers[0].target else {
            panic!("http expected");
        };
        assert_eq!(headers[0].value, HeaderSource::Value("2".into()));
        assert_eq!(
            headers[1].value,
            HeaderSource::SecretKeyRef(SecretKeyRef {
                store: "local".into(),
                name: "vision".into(),
                key: "apiKey".into()
            })
        );
        assert_eq!(
            offers[0].circuit_breaker,
            Some(PolicyRef::Named("cloudCB".into()))
        );
        assert!(matches!(offers[0].retries, Some(PolicyRef::Inline(_))));
        assert_eq!(offers[1].method.as_deref(), Some("v2/{method}"));
        assert_eq!(m.validate(), Ok(()));
    }

    #[test]
    fn serializes_back_in_manifest_spelling() {
        let m = parse_manifest_str(EXAMPLE).unwrap();
        let v = serde_json::to_value(&m).unwrap();
        let offer = &v["spec"]["offers"][0];
        assert_eq!(offer["type"], "http");
        assert_eq!(offer["timeout"], "2s");
        assert_eq!(offer["retries"]["policy"], "constant");
        assert_eq!(offer["retries"]["duration"], "100ms");
        assert_eq!(offer["circuitBreaker"], "cloudCB");
        assert_eq!(v["spec"]["offers"][1]["appId"], "detector.site-b");
        assert_eq!(v["spec"]["cache"]["staleIfError"], "10m0s");
        assert_eq!(
            v["spec"]["cache"]["methods"],
            serde_json::json!(["GET", "POST"])
        );
    }

    #[test]
    fn reports_all_problems_with_paths() {
        let doc = r#"
apiVersion: edgecar.io/v1alpha1
kind: Capability
metadata: { name: "bad name" }
spec:
  cache: { ttl: 0s, methods: [GET, "B@D"], keyHeaders: ["bad header"] }
  offers:
    - { name: a, type: http, url: "ftp://x/y", appId: oops }
    - { name: b, type: http, url: "/relative" }
    - { name: a, type: invoke }
    - { name: d, type: process, command: [] , timeout: 5 }
    - { name: e, type: builtin, builtin: nope }
    - { name: f, type: carrier-pigeon }
    - { name: g, type: invoke, appId: "a.b.c", retries: { policy: constant, maxRetries: -2 } }
    - { name: h, type: http, url: "http://h", circuitBreaker: { trip: "requests < 1" }, colour: red }
"#;
        let errs = parse_manifest_str(doc).unwrap_err();
        let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
        let expected = [
            "metadata.name: \"bad name\" is not a valid name",
            "spec.cache.ttl: must be more than 0",
            "spec.cache.methods[1]: not an HTTP method",
            "spec.cache.keyHeaders[0]: \"bad header\" is not a valid header name",
            "spec.offers[0].appId: only valid for type invoke",
            "spec.offers[0].url: must be an absolute http:// or https:// URL",
            "spec.offers[1].url: must be an absolute http:// or https:// URL",
            "spec.offers[2].appId: is required for type invoke",
            "spec.offers[3].timeout: must be a duration with a unit",
            "spec.offers[3].command: must name a program",
            "spec.offers[4].builtin: unknown builtin \"nope\"",
            "spec.offers[5].type: must be one of http, invoke, process, builtin",
            "spec.offers[6].retries.maxRetries: must be -1",
            "spec.offers[6].appId: \"a.b.c\" must be an app id",
            "spec.offers[7].circuitBreaker.trip: unsupported trip expression",
            "spec.offers[7].colour: unknown field",
        ];
        for e in expected {
            assert!(
                shown.iter().any(|s| s.starts_with(e)),
                "missing {e:?} in {shown:#?}"
            );
        }
        assert_eq!(shown.len(), expected.len(), "{shown:#?}");
    }

    #[test]
    fn duplicate_offer_names_and_header_rules() {
        let doc = r#"
apiVersion: edgecar.io/v1alpha1
kind: Capability
metadata: { name: x }
spec:
  offers:
    - { name: a, type: builtin, builtin: echo }
    - name: a
      type: http
      url: "https://user:pw@example.com"
      headers:
        Host: example.com
        X-Key: { secretKeyRef: { name: k } }
"#;
        let shown: Vec<String> = parse_manifest_str(doc)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(shown.iter().any(|s| {
            s.starts_with("spec.offers[1].name: duplicate offer name \"a\" (also spec.offers[0])")
        }));
        assert!(
            shown
                .iter()
                .any(|s| s.starts_with("spec.offers[1].url: must not carry credentials"))
        );
        assert!(
            shown
                .iter()
                .any(|s| s.starts_with("spec.offers[1].headers.Host: is managed"))
        );
        assert!(
            shown.iter().any(
                |s| s.starts_with("spec.offers[1].headers.X-Key.secretKeyRef: no secret store")
            )
        );
        assert_eq!(shown.len(), 4, "{shown:#?}");
    }

    #[test]
    fn header_checks() {
        assert!(parse_manifest_str("kind: [").is_err());
        let errs = parse_manifest_str("apiVersion: v1\nkind: Component\n").unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["apiVersion", "kind", "metadata", "spec"]);
    }

    #[test]
    fn paths() {
        assert!(is_valid_path("detect/v1"));
        assert!(is_valid_path("a%20b"));
        assert!(is_valid_path(""));
        assert!(!is_valid_path("a b"));
        assert!(!is_valid_path("a/../b"));
        assert!(!is_valid_path("a%2"));
        for t in [
            "%2e%2e/admin",
            "%2E%2E/admin",
            "..%2Fadmin",
            ".%2e/admin",
            "%2e./admin",
            "%2e",
            "x%2F..%2Fadmin",
            "..%5cadmin",
            "%252e%252e/admin",
        ] {
            assert!(!is_valid_path(t), "{t}");
        }
        assert!(is_valid_path("v1/..a/b..%2Fc/%2e%2ex/.well-known"));
        assert!(!is_valid_path("a?b"));
        assert!(is_valid_query("a=1&b=%20?x/y"));
        assert!(!is_valid_query("a=1 2"));
    }
}
