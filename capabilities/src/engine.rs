//! The smart-proxy engine: holds the loaded capabilities and serves calls to them.
//!
//! A call goes: cache lookup (fresh hit → reply) → coalesce with an identical in-flight miss →
//! offers in manifest order → cache store, or a stale entry when every offer failed.
//!
//! Per offer: an open circuit breaker skips it at no cost; otherwise each attempt runs under the
//! offer's `timeout`, and a failure (unreachable, timeout, 5xx, other error) is retried per its
//! retry policy — retries stop early once the breaker opens — and then falls back to the next
//! offer. A 4xx is the caller's fault: it is returned as is, with no fallback, and counts as a
//! success for the breaker (the offer is alive and answering). Fallback after a timeout or a 5xx
//! may repeat work upstream; that is fine because capabilities are meant to be pure functions.
//!
//! Request headers forwarded to offers: `content-type`, `accept`, `accept-language`,
//! `traceparent`, `tracestate`, and the cache's `keyHeaders`. Only `keyHeaders` are part of the
//! cache key, so list `accept` there if offers vary their reply by it (as HTTP's `Vary` would).
//!
//! [`Engine::replace_manifests`] builds the whole new set before swapping it in and changes nothing
//! if any manifest has a problem. Offers whose spec and policies are unchanged keep their breaker
//! state and counters; capabilities whose `spec.cache` is unchanged keep their cached results.

mod metrics;
mod status;

use std::collections::BTreeMap;
#[cfg(test)]
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use bytes::Bytes;
use http::{Method, StatusCode};
use serde::Serialize;
use tokio::time::Instant;

pub use status::{
    BreakerStatus, CapabilityStatus, EngineStatus, OfferCounters, OfferHealth, OfferStatus,
};

use crate::cache::{self, Flight, Lookup, ResultCache, Shared};
use crate::duration::format_go_duration;
use crate::error::{CapabilityError, FailureReason, OfferFailure};
use crate::manifest::{self, Manifest, OfferSpec, OfferTarget, PolicyRef};
use crate::offer::{self, Deps, Invoker, Offer, OfferRequest, SecretResolver, UpstreamError};
use crate::resiliency::{
    BreakerPolicy, BreakerState, CircuitBreaker, Policies, RetryPolicy, Ticket, jitter,
};
use crate::yaml::FieldError;

/// Suggested response header naming the offer that served a reply.
pub const OFFER_HEADER: &str = "x-edgecar-offer";
/// Suggested response header carrying [`CacheStatus`] (`hit`, `miss`, `stale`, `bypass`).
pub const CACHE_HEADER: &str = "x-edgecar-cache";

/// Request headers always forwarded to offers (besides the cache's `keyHeaders`).
const FORWARDED_HEADERS: &[&str] = &[
    "content-type",
    "accept",
    "accept-language",
    "traceparent",
    "tracestate",
];

/// A call to a capability, as the gateway decoded it from `/v1.0/capabilities/<name>/<method...>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapabilityRequest {
    /// The method path after the capability name (`detect` or `v1/run`; a leading `/` is
    /// ignored), percent-encoded as it arrived.
    pub method: String,
    /// The HTTP method.
    pub http_method: Method,
    /// The query string without `?`, if any.
    pub query: Option<String>,
    /// The request headers (the engine picks the ones it forwards).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

impl CapabilityRequest {
    /// A request with no query and no headers.
    pub fn new(http_method: Method, method: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Self {
            method: method.into(),
            http_method,
            query: None,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the query string (without `?`).
    pub fn with_query(mut self, query: impl Into<String>) -> Self {
        self.query = Some(query.into());
        self
    }
}

/// Where a reply came from, relative to the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheStatus {
    /// Served from a fresh cache entry; no offer was called.
    Hit,
    /// Not in the cache (or past its ttl); an offer was called (possibly for an identical
    /// concurrent request whose result this one shares).
    Miss,
    /// Every offer failed; served from an entry past its ttl but within `staleIfError`.
    Stale,
    /// Not cacheable: the capability has no cache, or the HTTP method is not in `methods`.
    Bypass,
}

impl CacheStatus {
    /// `hit`, `miss`, `stale` or `bypass`, e.g. for the [`CACHE_HEADER`] header.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Stale => "stale",
            CacheStatus::Bypass => "bypass",
        }
    }
}

/// A capability's reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapabilityReply {
    /// The offer's status: 2xx/3xx, or a 4xx passed back as the caller's fault.
    pub status: StatusCode,
    /// The offer's response headers (hop-by-hop removed), names lower-case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
    /// The offer that served it; for a hit or stale reply, the offer that originally did.
    pub offer: String,
    /// Cache status.
    pub cache: CacheStatus,
}

/// What the engine needs from its owner.
#[derive(Clone)]
pub struct EngineOptions {
    /// Service invocation for `invoke` offers; without it, manifests with invoke offers are
    /// refused.
    pub invoker: Option<Arc<dyn Invoker>>,
    /// Secret lookup for `secretKeyRef` headers; without it, manifests that use them are refused.
    pub secrets: Option<Arc<dyn SecretResolver>>,
    /// Named policies (from Resiliency documents) that offers may refer to by name.
    pub policies: Policies,
    /// Largest reply body accepted from an offer (http body, process stdout). Default 16 MiB.
    pub max_response_bytes: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            invoker: None,
            secrets: None,
            policies: Policies::default(),
            max_response_bytes: 16 * 1024 * 1024,
        }
    }
}

impl EngineOptions {
    /// Sets the invoker.
    pub fn with_invoker(mut self, invoker: Arc<dyn Invoker>) -> Self {
        self.invoker = Some(invoker);
        self
    }

    /// Sets the secret resolver.
    pub fn with_secrets(mut self, secrets: Arc<dyn SecretResolver>) -> Self {
        self.secrets = Some(secrets);
        self
    }

    /// Sets the named policies.
    pub fn with_policies(mut self, policies: Policies) -> Self {
        self.policies = policies;
        self
    }
}

/// The capability engine. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Engine {
    /// Shared state.
    inner: Arc<Inner>,
}

struct Inner {
    /// What offers need (invoker, secrets, HTTP client).
    deps: Arc<Deps>,
    /// Named policies offers may refer to.
    policies: RwLock<Policies>,
    /// The loaded capabilities, swapped whole on reload.
    registry: RwLock<Arc<Registry>>,
    /// Test doubles by `capability/offer`, used instead of the real offer types.
    #[cfg(test)]
    fakes: HashMap<String, Arc<dyn Offer>>,
}

/// One generation of loaded capabilities.
#[derive(Default)]
struct Registry {
    /// By name.
    capabilities: BTreeMap<String, Arc<Capability>>,
}

/// A loaded capability.
struct Capability {
    /// Its name.
    name: Arc<str>,
    /// The manifest it was built from, to detect unchanged parts on reload.
    manifest: Manifest,
    /// Offers in order of preference.
    offers: Vec<Arc<OfferRuntime>>,
    /// Its cache, if `spec.cache` is set.
    cache: Option<Arc<ResultCache>>,
    /// Calls that ended in `Unavailable`/`TimedOut`.
    unavailable: AtomicU64,
}

/// An offer with its resiliency state.
struct OfferRuntime {
    /// Its spec.
    spec: OfferSpec,
    /// Resolved retry policy.
    retry: Option<RetryPolicy>,
    /// Resolved breaker policy (explicit or the default).
    breaker_policy: Option<BreakerPolicy>,
    /// Its breaker.
    breaker: Option<Mutex<CircuitBreaker>>,
    /// The implementation.
    imp: Arc<dyn Offer>,
    /// Attempt counters.
    counters: Counters,
    /// The last attempt's outcome, for health.
    last: Mutex<Option<LastOutcome>>,
}

/// Attempts of one offer by outcome.
#[derive(Default)]
struct Counters {
    /// 2xx/3xx.
    success: AtomicU64,
    /// 4xx.
    client_error: AtomicU64,
    /// 5xx.
    server_error: AtomicU64,
    /// Timeouts.
    timeout: AtomicU64,
    /// Unreachable.
    unreachable: AtomicU64,
    /// Other failures.
    error: AtomicU64,
    /// Skipped by an open breaker.
    skipped: AtomicU64,
    /// Retries (attempts after the first).
    retries: AtomicU64,
}

/// The last attempt's outcome.
#[derive(Clone)]
struct LastOutcome {
    /// `None` for success, or the failure message.
    error: Option<String>,
}

/// A reply from a given offer.
struct Served {
    /// The offer's name.
    offer: String,
    /// What it answered.
    reply: offer::UpstreamReply,
}

impl Served {
    fn into_reply(self, cache: CacheStatus) -> CapabilityReply {
        CapabilityReply {
            status: self.reply.status,
            headers: self.reply.headers,
            body: self.reply.body,
            offer: self.offer,
            cache,
        }
    }
}

impl Engine {
    /// An engine with no capabilities loaded.
    pub fn new(options: EngineOptions) -> Self {
        Self::build(
            options,
            #[cfg(test)]
            HashMap::new(),
        )
    }

    fn build(options: EngineOptions, #[cfg(test)] fakes: HashMap<String, Arc<dyn Offer>>) -> Self {
        let deps = Arc::new(Deps {
            invoker: options.invoker,
            secrets: options.secrets,
            http: OnceLock::new(),
            max_response_bytes: options.max_response_bytes,
        });
        Self {
            inner: Arc::new(Inner {
                deps,
                policies: RwLock::new(options.policies),
                registry: RwLock::new(Arc::new(Registry::default())),
                #[cfg(test)]
                fakes,
            }),
        }
    }

    /// An engine whose offers `capability/offer` are the given test doubles.
    #[cfg(test)]
    fn with_fakes(options: EngineOptions, fakes: HashMap<String, Arc<dyn Offer>>) -> Self {
        Self::build(options, fakes)
    }

    /// Replaces the loaded capabilities with `manifests`, using the current named policies.
    ///
    /// Everything is built first; on any problem (a manifest that fails [`Manifest::validate`],
    /// a duplicate name, a policy name that does not exist, an invoke offer without an invoker)
    /// nothing changes and every problem is returned, attributed to `Capability/<name>`.
    pub fn replace_manifests(&self, manifests: Vec<Manifest>) -> Result<(), Vec<FieldError>> {
        let policies = read(&self.inner.policies).clone();
        let registry = self.build_registry(manifests, &policies)?;
        *write(&self.inner.registry) = Arc::new(registry);
        Ok(())
    }

    /// Replaces the named policies and the capabilities together (a reload of both Resiliency and
    /// capability files); all or nothing, as [`Engine::replace_manifests`].
    pub fn reload(
        &self,
        manifests: Vec<Manifest>,
        policies: Policies,
    ) -> Result<(), Vec<FieldError>> {
        let registry = self.build_registry(manifests, &policies)?;
        // Policies first: a concurrent replace_manifests then builds with the new ones.
        *write(&self.inner.policies) = policies;
        *write(&self.inner.registry) = Arc::new(registry);
        Ok(())
    }

    /// Checks that `manifests` would load with `policies` (names resolve, offers can be built),
    /// without loading them: for `edgecar check-config`. Reports every problem, as
    /// [`Engine::replace_manifests`] would.
    pub fn check(
        &self,
        manifests: &[Manifest],
        policies: &Policies,
    ) -> Result<(), Vec<FieldError>> {
        self.build_registry(manifests.to_vec(), policies)
            .map(|_| ())
    }

    /// Names of the loaded capabilities, sorted.
    pub fn capability_names(&self) -> Vec<String> {
        self.registry().capabilities.keys().cloned().collect()
    }

    /// The manifest of capability `name`, if loaded.
    pub fn manifest(&self, name: &str) -> Option<Manifest> {
        self.registry()
            .capabilities
            .get(name)
            .map(|c| c.manifest.clone())
    }

    /// Calls capability `name`.
    ///
    /// `Ok` carries any reply an offer gave (including a 4xx, the caller's fault), a cache hit,
    /// or a stale entry; `Err` means no reply could be had.
    pub async fn call(
        &self,
        name: &str,
        req: CapabilityRequest,
    ) -> Result<CapabilityReply, CapabilityError> {
        let Some(cap) = self.registry().capabilities.get(name).cloned() else {
            return Err(CapabilityError::NotFound {
                name: name.to_owned(),
            });
        };
        let method = req.method.trim_start_matches('/');
        if method.len() > 2048 || !manifest::is_valid_path(method) {
            return Err(CapabilityError::MalformedRequest {
                reason: format!(
                    "method path {:?} has characters a URL path cannot carry, or a '.'/'..' segment (percent-encoded or not)",
                    req.method
                ),
            });
        }
        if let Some(q) = &req.query
            && !manifest::is_valid_query(q)
        {
            return Err(CapabilityError::MalformedRequest {
                reason: format!("query {q:?} has characters a URL cannot carry"),
            });
        }

        let Some(cache) = cap
            .cache
            .as_ref()
            .filter(|c| c.is_cacheable(&req.http_method))
        else {
            if let Some(c) = &cap.cache {
                c.counters.bypass.fetch_add(1, Ordering::Relaxed);
            }
            return match cap.call_offers(&req).await {
                Ok(served) => Ok(served.into_reply(CacheStatus::Bypass)),
                Err(failures) => Err(cap.unavailable(failures)),
            };
        };

        let key = cache.key(&cap.name, &req);
        loop {
            if let Lookup::Fresh(entry) = cache.lookup(&key, Instant::now()).await {
                cache.counters.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(entry.to_reply(CacheStatus::Hit));
            }
            match cache.join(key) {
                Flight::Follower(rx) => {
                    if let Some(result) = cache::wait(rx).await {
                        cache.counters.coalesced.fetch_add(1, Ordering::Relaxed);
                        return result;
                    }
                    // The leader's caller went away before it finished: try again, perhaps as
                    // the new leader.
                }
                Flight::Leader(leader) => {
                    let result = cap.lead(cache, key, &req).await;
                    leader.finish(&result);
                    return result;
                }
            }
        }
    }

    /// A snapshot of every capability: offers with health, breaker state and counters; cache
    /// statistics (exact: pending cache maintenance is run first).
    pub async fn status(&self) -> EngineStatus {
        let registry = self.registry();
        let mut capabilities = Vec::new();
        for cap in registry.capabilities.values() {
            capabilities.push(status::capability(cap).await);
        }
        EngineStatus { capabilities }
    }

    /// Appends the Prometheus text exposition of the engine's metrics to `out`.
    pub fn metrics(&self, out: &mut String) {
        metrics::write(&self.registry(), out);
    }

    fn registry(&self) -> Arc<Registry> {
        read(&self.inner.registry).clone()
    }

    fn build_registry(
        &self,
        manifests: Vec<Manifest>,
        policies: &Policies,
    ) -> Result<Registry, Vec<FieldError>> {
        let old = self.registry();
        let mut errs = Vec::new();
        let mut registry = Registry::default();
        for manifest in manifests {
            let resource = format!("Capability/{}", manifest.name);
            let mut problems = Vec::new();
            if let Err(e) = manifest.validate() {
                problems.extend(e);
            }
            if registry.capabilities.contains_key(&manifest.name) {
                problems.push(FieldError::new(
                    "metadata.name",
                    "another manifest already defines this capability",
                ));
            }
            if problems.is_empty() {
                let previous = old.capabilities.get(&manifest.name);
                match self.build_capability(manifest, policies, previous) {
                    Ok(cap) => {
                        registry
                            .capabilities
                            .insert(cap.name.to_string(), Arc::new(cap));
                    }
                    Err(e) => problems.extend(e),
                }
            }
            errs.extend(
                problems
                    .into_iter()
                    .map(|e| e.in_resource(resource.clone())),
            );
        }
        if errs.is_empty() {
            Ok(registry)
        } else {
            Err(errs)
        }
    }

    fn build_capability(
        &self,
        manifest: Manifest,
        policies: &Policies,
        old: Option<&Arc<Capability>>,
    ) -> Result<Capability, Vec<FieldError>> {
        let mut errs = Vec::new();
        let mut offers = Vec::new();
        for (i, spec) in manifest.spec.offers.iter().enumerate() {
            let path = format!("spec.offers[{i}]");
            let retry = match &spec.retries {
                None => None,
                Some(PolicyRef::Inline(p)) => Some(p.clone()),
                Some(PolicyRef::Named(n)) => match policies.retries.get(n) {
                    Some(p) => Some(p.clone()),
                    None => {
                        errs.push(FieldError::new(
                            format!("{path}.retries"),
                            format!("no retry policy named {n:?} in the Resiliency policies"),
                        ));
                        None
                    }
                },
            };
            let breaker_policy = match &spec.circuit_breaker {
                None if matches!(spec.target, OfferTarget::Builtin { .. }) => None,
                None => Some(BreakerPolicy::offer_default()),
                Some(PolicyRef::Inline(p)) => Some(p.clone()),
                Some(PolicyRef::Named(n)) => match policies.circuit_breakers.get(n) {
                    Some(p) => Some(p.clone()),
                    None => {
                        errs.push(FieldError::new(
                            format!("{path}.circuitBreaker"),
                            format!(
                                "no circuit breaker policy named {n:?} in the Resiliency policies"
                            ),
                        ));
                        None
                    }
                },
            };
            let reusable = old.and_then(|c| {
                c.offers.iter().find(|o| {
                    o.spec == *spec && o.retry == retry && o.breaker_policy == breaker_policy
                })
            });
            if let Some(o) = reusable {
                offers.push(o.clone());
                continue;
            }
            let imp = match self.offer_impl(&manifest.name, spec) {
                Ok(imp) => imp,
                Err(why) => {
                    errs.push(FieldError::new(path, why));
                    continue;
                }
            };
            let now = Instant::now();
            offers.push(Arc::new(OfferRuntime {
                spec: spec.clone(),
                retry,
                breaker: breaker_policy
                    .clone()
                    .map(|p| Mutex::new(CircuitBreaker::new(p, now))),
                breaker_policy,
                imp,
                counters: Counters::default(),
                last: Mutex::new(None),
            }));
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        let cache = manifest.spec.cache.as_ref().map(|spec| {
            old.and_then(|c| c.cache.clone())
                .filter(|c| c.spec() == spec)
                .unwrap_or_else(|| Arc::new(ResultCache::new(spec.clone())))
        });
        Ok(Capability {
            name: Arc::from(manifest.name.as_str()),
            manifest,
            offers,
            cache,
            unavailable: AtomicU64::new(0),
        })
    }

    fn offer_impl(&self, capability: &str, spec: &OfferSpec) -> Result<Arc<dyn Offer>, String> {
        #[cfg(test)]
        if let Some(fake) = self.inner.fakes.get(&format!("{capability}/{}", spec.name)) {
            return Ok(fake.clone());
        }
        let _ = capability;
        offer::build(spec, &self.inner.deps)
    }
}

impl Capability {
    /// Serves a cache miss as the flight's leader.
    async fn lead(
        &self,
        cache: &ResultCache,
        key: cache::CacheKey,
        req: &CapabilityRequest,
    ) -> Shared {
        // A previous flight may have filled the entry between our lookup and becoming leader.
        if let Lookup::Fresh(entry) = cache.lookup(&key, Instant::now()).await {
            cache.counters.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(entry.to_reply(CacheStatus::Hit));
        }
        cache.counters.misses.fetch_add(1, Ordering::Relaxed);
        match self.call_offers(req).await {
            Ok(served) => {
                let reply = served.into_reply(CacheStatus::Miss);
                if reply.status.is_success() {
                    cache.store(key, &reply, Instant::now()).await;
                }
                Ok(reply)
            }
            Err(failures) => match cache.lookup(&key, Instant::now()).await {
                Lookup::Stale(entry) | Lookup::Fresh(entry) => {
                    cache.counters.stale.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        capability = %self.name,
                        offer = %entry.to_reply(CacheStatus::Stale).offer,
                        "every offer failed; serving a stale result"
                    );
                    Ok(entry.to_reply(CacheStatus::Stale))
                }
                Lookup::Miss => Err(self.unavailable(failures)),
            },
        }
    }

    /// Tries the offers in order.
    async fn call_offers(&self, req: &CapabilityRequest) -> Result<Served, Vec<OfferFailure>> {
        let key_headers = self
            .cache
            .as_ref()
            .map(|c| c.spec().key_headers.as_slice())
            .unwrap_or_default();
        let headers: Vec<(String, String)> = req
            .headers
            .iter()
            .filter(|(k, _)| {
                FORWARDED_HEADERS.iter().any(|f| k.eq_ignore_ascii_case(f))
                    || key_headers.iter().any(|f| k.eq_ignore_ascii_case(f))
            })
            .filter(|(k, _)| !offer::is_hop_by_hop(k))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        let caller_method = req.method.trim_start_matches('/');
        let mut failures = Vec::new();
        for o in &self.offers {
            let method = match &o.spec.method {
                Some(m) => m
                    .replace("{method}", caller_method)
                    .trim_start_matches('/')
                    .to_owned(),
                None => caller_method.to_owned(),
            };
            let offer_req = OfferRequest {
                capability: self.name.clone(),
                method,
                http_method: req.http_method.clone(),
                query: req.query.clone(),
                headers: headers.clone(),
                body: req.body.clone(),
            };
            match o.attempt(&self.name, &offer_req).await {
                Ok(reply) => {
                    return Ok(Served {
                        offer: o.spec.name.clone(),
                        reply,
                    });
                }
                Err(failure) => failures.push(failure),
            }
        }
        Err(failures)
    }

    fn unavailable(&self, failures: Vec<OfferFailure>) -> CapabilityError {
        self.unavailable.fetch_add(1, Ordering::Relaxed);
        let err = CapabilityError::all_failed(&self.name, failures);
        tracing::warn!(capability = %self.name, error = %err, "capability unavailable");
        err
    }
}

/// A breaker ticket that is released if dropped unrecorded (the call was cancelled).
struct TicketGuard<'a> {
    /// The breaker, if the offer has one.
    breaker: Option<&'a Mutex<CircuitBreaker>>,
    /// The ticket, until recorded.
    ticket: Option<Ticket>,
}

impl TicketGuard<'_> {
    fn record(mut self, success: bool) {
        if let (Some(b), Some(t)) = (self.breaker, self.ticket.take()) {
            lock(b).record(t, Instant::now(), success);
        }
    }
}

impl Drop for TicketGuard<'_> {
    fn drop(&mut self) {
        if let (Some(b), Some(t)) = (self.breaker, self.ticket.take()) {
            lock(b).release(t, Instant::now());
        }
    }
}

impl OfferRuntime {
    /// One offer's turn: attempts with retries, under its breaker.
    async fn attempt(
        &self,
        capability: &str,
        req: &OfferRequest,
    ) -> Result<offer::UpstreamReply, OfferFailure> {
        let mut backoff = self.retry.as_ref().map(|p| p.backoff(Instant::now()));
        let mut last_failure: Option<OfferFailure> = None;
        loop {
            let ticket = match &self.breaker {
                None => TicketGuard {
                    breaker: None,
                    ticket: None,
                },
                Some(b) => match lock(b).try_acquire(Instant::now()) {
                    Ok(t) => TicketGuard {
                        breaker: Some(b),
                        ticket: Some(t),
                    },
                    Err(rejected) => {
                        self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                        return Err(match last_failure {
                            // Retrying, and the breaker opened under us: report what failed.
                            Some(mut f) => {
                                f.message.push_str(" (circuit breaker now open)");
                                f
                            }
                            None => OfferFailure {
                                offer: self.spec.name.clone(),
                                reason: FailureReason::CircuitOpen,
                                message: rejected.to_string(),
                            },
                        });
                    }
                },
            };
            let outcome = tokio::time::timeout(self.spec.timeout, self.imp.call(req)).await;
            let failure = match outcome {
                Ok(Ok(reply)) if !reply.status.is_server_error() => {
                    ticket.record(true);
                    let counter = if reply.status.is_client_error() {
                        &self.counters.client_error
                    } else {
                        &self.counters.success
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    *lock(&self.last) = Some(LastOutcome { error: None });
                    return Ok(reply);
                }
                Ok(Ok(reply)) => (
                    FailureReason::ServerError,
                    format!("status {}", reply.status),
                ),
                Ok(Err(UpstreamError::Unreachable(m))) => {
                    (FailureReason::Unreachable, format!("unreachable: {m}"))
                }
                Ok(Err(UpstreamError::Timeout)) => (FailureReason::Timeout, "timed out".to_owned()),
                Ok(Err(UpstreamError::Other(m))) => (FailureReason::Other, m),
                Err(_) => (
                    FailureReason::Timeout,
                    format!("timed out after {}", format_go_duration(self.spec.timeout)),
                ),
            };
            ticket.record(false);
            let counter = match failure.0 {
                FailureReason::ServerError => &self.counters.server_error,
                FailureReason::Unreachable => &self.counters.unreachable,
                FailureReason::Timeout => &self.counters.timeout,
                FailureReason::Other | FailureReason::CircuitOpen => &self.counters.error,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(capability, offer = %self.spec.name, reason = ?failure.0, message = %failure.1, "offer attempt failed");
            *lock(&self.last) = Some(LastOutcome {
                error: Some(failure.1.clone()),
            });
            let failure = OfferFailure {
                offer: self.spec.name.clone(),
                reason: failure.0,
                message: failure.1,
            };
            // No retry once the breaker has opened: the next attempt would be refused anyway,
            // and waiting out the backoff first would only delay the fallback.
            let open = self
                .breaker
                .as_ref()
                .is_some_and(|b| lock(b).state(Instant::now()) == BreakerState::Open);
            if open {
                let mut failure = failure;
                if backoff.is_some() {
                    failure.message.push_str(" (circuit breaker now open)");
                }
                return Err(failure);
            }
            let delay = backoff
                .as_mut()
                .and_then(|b| b.next_delay(Instant::now(), jitter()));
            match delay {
                Some(d) => {
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    last_failure = Some(failure);
                    tokio::time::sleep(d).await;
                }
                None => return Err(failure),
            }
        }
    }
}

/// Locks `m`, ignoring poisoning: the guarded data is counters and breaker state, which stay
/// consistent even if a holder panicked.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
