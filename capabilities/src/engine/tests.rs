//! Engine tests: offer choice, breakers, retries, cache and coalescing, with fake offers and
//! paused time (so a 2s timeout takes no real time and elapsed times are exact).

use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::error::ErrorKind;
use crate::manifest::parse_manifest_str;
use crate::offer::UpstreamReply;
use crate::resiliency::{BreakerState, parse_resiliency_str};

/// What a fake offer does on one call.
#[derive(Clone, Debug)]
enum Step {
    /// Answer at once.
    Reply(u16, &'static str),
    /// Answer after a delay.
    Slow(Duration, u16, &'static str),
    /// Fail after a delay as unreachable.
    SlowUnreachable(Duration),
    /// Connection refused.
    Unreachable,
    /// Never answer.
    Hang,
}

/// A scripted offer that counts its calls and keeps the requests it saw.
struct Fake {
    /// Calls so far.
    calls: AtomicUsize,
    /// Steps to play first, in order.
    script: Mutex<VecDeque<Step>>,
    /// What to do once the script is played.
    default: Mutex<Step>,
    /// Requests seen.
    seen: Mutex<Vec<OfferRequest>>,
}

impl Fake {
    fn new(step: Step) -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            script: Mutex::new(VecDeque::new()),
            default: Mutex::new(step),
            seen: Mutex::new(Vec::new()),
        })
    }

    fn set(&self, step: Step) {
        *self.default.lock().unwrap() = step;
    }

    fn script(&self, steps: &[Step]) {
        self.script.lock().unwrap().extend(steps.iter().cloned());
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Offer for Fake {
    async fn call(&self, req: &OfferRequest) -> Result<UpstreamReply, UpstreamError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.seen.lock().unwrap().push(req.clone());
        let step = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| self.default.lock().unwrap().clone());
        let reply = |status: u16, body: &'static str| {
            UpstreamReply::new(StatusCode::from_u16(status).unwrap(), body)
        };
        match step {
            Step::Reply(status, body) => Ok(reply(status, body)),
            Step::Slow(d, status, body) => {
                tokio::time::sleep(d).await;
                Ok(reply(status, body))
            }
            Step::SlowUnreachable(d) => {
                tokio::time::sleep(d).await;
                Err(UpstreamError::Unreachable("connection refused".into()))
            }
            Step::Unreachable => Err(UpstreamError::Unreachable("connection refused".into())),
            Step::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Err(UpstreamError::Other("woke up".into()))
            }
        }
    }

    fn target(&self) -> String {
        "fake".into()
    }
}

/// An engine whose capability `cap` has the given fake offers, from manifest `yaml` (offers
/// listed in `spec.offers` with matching names).
fn engine_with(fakes: &[(&str, &Arc<Fake>)], options: EngineOptions) -> Engine {
    let map = fakes
        .iter()
        .map(|(name, f)| (format!("cap/{name}"), (*f).clone() as Arc<dyn Offer>))
        .collect();
    Engine::with_fakes(options, map)
}

/// A manifest for `cap`: each offer is `type: http` (so it gets the default breaker) with the
/// extra YAML given, and the cache section if any.
fn manifest(offers: &[(&str, &str)], cache: Option<&str>) -> Manifest {
    let mut yaml = String::from(
        "apiVersion: edgecar.io/v1alpha1\nkind: Capability\nmetadata: {name: cap}\nspec:\n",
    );
    if let Some(c) = cache {
        yaml.push_str(&format!("  cache: {c}\n"));
    }
    yaml.push_str("  offers:\n");
    for (name, extra) in offers {
        yaml.push_str(&format!(
            "    - {{name: {name}, type: http, url: \"http://fake.invalid/{name}\", timeout: 2s{}{extra}}}\n",
            if extra.is_empty() { "" } else { ", " }
        ));
    }
    parse_manifest_str(&yaml).unwrap_or_else(|e| panic!("{yaml}\n{e:#?}"))
}

fn post(body: &'static str) -> CapabilityRequest {
    CapabilityRequest::new(Method::POST, "run", body)
}

async fn offer_status(engine: &Engine, offer: &str) -> OfferStatus {
    engine.status().await.capabilities[0]
        .offers
        .iter()
        .find(|o| o.name == offer)
        .cloned()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn falls_back_in_manifest_order() {
    let a = Fake::new(Step::Unreachable);
    let b = Fake::new(Step::Reply(503, "busy"));
    let c = Fake::new(Step::Reply(200, "from c"));
    let engine = engine_with(&[("a", &a), ("b", &b), ("c", &c)], EngineOptions::default());
    engine
        .replace_manifests(vec![manifest(&[("a", ""), ("b", ""), ("c", "")], None)])
        .unwrap();

    let reply = engine.call("cap", post("{}")).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "from c");
    assert_eq!(reply.offer, "c");
    assert_eq!(reply.cache, CacheStatus::Bypass);
    assert_eq!((a.calls(), b.calls(), c.calls()), (1, 1, 1));

    let sa = offer_status(&engine, "a").await;
    assert_eq!(sa.counters.unreachable, 1);
    assert_eq!(sa.health, OfferHealth::Failing);
    assert_eq!(offer_status(&engine, "b").await.counters.server_error, 1);
    let sc = offer_status(&engine, "c").await;
    assert_eq!(sc.counters.success, 1);
    assert_eq!(sc.health, OfferHealth::Healthy);
}

#[tokio::test(start_paused = true)]
async fn client_errors_pass_through_without_fallback_or_breaker() {
    let a = Fake::new(Step::Reply(404, "no such thing"));
    let b = Fake::new(Step::Reply(200, "b"));
    let engine = engine_with(&[("a", &a), ("b", &b)], EngineOptions::default());
    engine
        .replace_manifests(vec![manifest(&[("a", ""), ("b", "")], Some("{ttl: 60s}"))])
        .unwrap();
    for _ in 0..10 {
        let reply = engine.call("cap", post("{}")).await.unwrap();
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert_eq!(reply.offer, "a");
        assert_eq!(reply.body, "no such thing");
        assert_eq!(reply.cache, CacheStatus::Miss, "4xx replies are not cached");
    }
    assert_eq!(a.calls(), 10);
    assert_eq!(b.calls(), 0);
    let sa = offer_status(&engine, "a").await;
    assert_eq!(sa.breaker.unwrap().state, BreakerState::Closed);
    assert_eq!(sa.counters.client_error, 10);
    assert_eq!(sa.health, OfferHealth::Healthy);
}

#[tokio::test(start_paused = true)]
async fn all_offers_failing_lists_each_reason() {
    let a = Fake::new(Step::Unreachable);
    let b = Fake::new(Step::Reply(500, "oops"));
    let engine = engine_with(&[("a", &a), ("b", &b)], EngineOptions::default());
    engine
        .replace_manifests(vec![manifest(&[("a", ""), ("b", "")], None)])
        .unwrap();
    let err = engine.call("cap", post("{}")).await.unwrap_err();
    assert_eq!(err.error_code(), "ERR_CAPABILITY_UNAVAILABLE");
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert_eq!(
        err.to_string(),
        "capability \"cap\" unavailable: a: unreachable: connection refused; \
         b: status 500 Internal Server Error"
    );
    let reasons: Vec<FailureReason> = err.failures().iter().map(|f| f.reason).collect();
    assert_eq!(
        reasons,
        [FailureReason::Unreachable, FailureReason::ServerError]
    );
}

#[tokio::test(start_paused = true)]
async fn timeouts_fall_back_and_an_open_breaker_costs_nothing() {
    let a = Fake::new(Step::Hang);
    let b = Fake::new(Step::Reply(200, "b"));
    let engine = engine_with(&[("a", &a), ("b", &b)], EngineOptions::default());
    engine
        .replace_manifests(vec![manifest(&[("a", ""), ("b", "")], None)])
        .unwrap();

    // The default breaker trips after 3 consecutive failures; each costs the 2s timeout.
    for _ in 0..3 {
        let start = Instant::now();
        let reply = engine.call("cap", post("{}")).await.unwrap();
        assert_eq!(reply.offer, "b");
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }
    let sa = offer_status(&engine, "a").await;
    assert_eq!(sa.counters.timeout, 3);
    assert_eq!(sa.health, OfferHealth::Down);
    assert_eq!(sa.last_error.as_deref(), Some("timed out after 2s"));

    // Open: skipped at no cost.
    let start = Instant::now();
    let reply = engine.call("cap", post("{}")).await.unwrap();
    assert_eq!(reply.offer, "b");
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(a.calls(), 3);
    assert_eq!(offer_status(&engine, "a").await.counters.skipped, 1);

    // Every tried offer timing out is a timeout error.
    b.set(Step::Hang);
    let err = engine.call("cap", post("{}")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(err.error_code(), "ERR_CAPABILITY_TIMEOUT");
    assert!(
        err.to_string()
            .contains("a: circuit breaker open for another"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_half_open_probe_returns_traffic_to_the_preferred_offer() {
    let a = Fake::new(Step::Reply(502, "down"));
    let b = Fake::new(Step::Reply(200, "b"));
    let engine = engine_with(&[("a", &a), ("b", &b)], EngineOptions::default());
    engine
        .replace_manifests(vec![manifest(&[("a", ""), ("b", "")], None)])
        .unwrap();
    for _ in 0..3 {
        assert_eq!(engine.call("cap", post("{}")).await.unwrap().offer, "b");
    }
    // a recovers, but its breaker is open for 30s: traffic stays on b.
    a.set(Step::Reply(200, "a"));
    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(engine.call("cap", post("{}")).await.unwrap().offer, "b");
    assert_eq!(a.calls(), 3);

    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        offer_status(&engine, "a").await.health,
        OfferHealth::Probing
    );
    let reply = engine.call("cap", post("{}")).await.unwrap();
    assert_eq!(reply.offer, "a", "the probe succeeds and serves");
    assert_eq!(engine.call("cap", post("{}")).await.unwrap().offer, "a");
    let sa = offer_status(&engine, "a").await;
    assert_eq!(sa.breaker.unwrap().state, BreakerState::Closed);
    assert_eq!(sa.health, OfferHealth::Healthy);
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_the_breaker() {
    let a = Fake::new(Step::Unreachable);
    let b = Fake::new(Step::Reply(200, "b"));
    let engine = engine_with(&[("a", &a), ("b", &b)], EngineOptions::default());
    engine
        .replace_manifests(vec![manifest(&[("a", ""), ("b", "")], None)])
        .unwrap();
    for _ in 0..3 {
        engine.call("cap", post("{}")).await.unwrap();
    }
    tokio::time::advance(Duration::from_secs(30)).await;
    engine.call("cap", post("{}")).await.unwrap();
    assert_eq!(a.calls(), 4, "one probe");
    engine.call("cap", post("{}")).await.unwrap();
    assert_eq!(a.calls(), 4, "open again after the failed probe");
}

#[tokio::test(start_paused = true)]
async fn retries_follow_the_policy_before_falling_back() {
    let a = Fake::new(Step::Reply(200, "a"));
    a.script(&[Step::Reply(503, ""), Step::Unreachable]);
    let b = Fake::new(Step::Reply(200, "b"));
    let engine = engine_with(&[("a", &a), ("b", &b)], EngineOptions::default());
    engine
        .replace_manifests(vec![manifest(
            &[
                (
                    "a",
                    "retries: {policy: constant, duration: 1s, maxRetries: 3}",
                ),
                ("b", ""),
            ],
            None,
        )])
        .unwrap();
    let start = Instant::now();
    let reply = engine.call("cap", post("{}")).await.unwrap();
    assert_eq!(reply.offer, "a");
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!((a.calls(), b.calls()), (3, 0));
    assert_eq!(offer_status(&engine, "a").await.counters.retries, 2);

    // Out of retries: fall back.
    a.script(&[Step::Reply(503, ""), Step::Reply(503, "")]);
    let engine2 = engine_with(&[("a", &a), ("b", &b)], EngineOptions::default());
    engine2
        .replace_manifests(vec![manifest(
            &[
                (
                    "a",
                    "retries: {policy: constant, duration: 1s, maxRetries: 1}",
                ),
                ("b", ""),
            ],
            None,
        )])
        .unwrap();
    let start = Instant::now();
    assert_eq!(engine2.call("cap", post("{}")).await.unwrap().offer, "b");
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn unlimited_retries_stop_when_the_breaker_opens() {
    let a = Fake::new(Step::Reply(503, ""));
    let b = Fake::new(Step::Reply(200, "b"));
    let engine = engine_with(&[("a", &a), ("b", &b)], EngineOptions::default());
    engine
        .replace_manifests(vec![manifest(
            &[
                (
                    "a",
                    "retries: {policy: constant, duration: 1s, maxRetries: -1}",
                ),
                ("b", ""),
            ],
            None,
        )])
        .unwrap();
    let start = Instant::now();
    let reply = engine.call("cap", post("{}")).await.unwrap();
    assert_eq!(reply.offer, "b");
    assert_eq!(a.calls(), 3, "the default breaker opens after 3 failures");
    // Two 1s backoffs; none after the third failure, which opened the breaker.
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn cache_hits_misses_bypass_and_key_headers() {
    let a = Fake::new(Step::Reply(200, "result"));
    let engine = engine_with(&[("a", &a)], EngineOptions::default());
    engine
        .replace_manifests(vec![manifest(
            &[("a", "")],
            Some("{ttl: 10s, keyHeaders: [accept]}"),
        )])
        .unwrap();
    let first = engine.call("cap", post("{\"x\":1}")).await.unwrap();
    assert_eq!(
        (first.cache, first.offer.as_str()),
        (CacheStatus::Miss, "a")
    );
    let second = engine.call("cap", post("{\"x\":1}")).await.unwrap();
    assert_eq!(
        (second.cache, second.offer.as_str()),
        (CacheStatus::Hit, "a")
    );
    assert_eq!(second.body, "result");
    assert_eq!(a.calls(), 1);

    // Another body, another accept header: misses. Unlisted headers do not matter.
    engine.call("cap", post("{\"x\":2}")).await.unwrap();
    let with_accept = post("{\"x\":1}").with_header("Accept", "text/csv");
    assert_eq!(
        engine.call("cap", with_accept).await.unwrap().cache,
        CacheStatus::Miss
    );
    let traced = post("{\"x\":1}").with_header("traceparent", "00-abc");
    assert_eq!(
        engine.call("cap", traced).await.unwrap().cache,
        CacheStatus::Hit
    );
    assert_eq!(a.calls(), 3);

    // PUT is not cacheable by default.
    let put = CapabilityRequest::new(Method::PUT, "run", "{\"x\":1}");
    assert_eq!(
        engine.call("cap", put).await.unwrap().cache,
        CacheStatus::Bypass
    );
    assert_eq!(a.calls(), 4);

    // Past the ttl: a miss again.
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(
        engine.call("cap", post("{\"x\":1}")).await.unwrap().cache,
        CacheStatus::Miss
    );
    let stats = engine.status().await.capabilities[0].cache.clone().unwrap();
    assert_eq!(
        (stats.hits, stats.misses, stats.bypass, stats.entries),
        (2, 4, 1, 3)
    );
    assert!(stats.bytes > 0);
}

#[tokio::test(start_paused = true)]
async fn concurrent_identical_misses_make_one_upstream_call() {
    let a = Fake::new(Step::Slow(Duration::from_millis(100), 200, "shared"));
    let engine = engine_with(&[("a", &a)], EngineOptions::default());
    engine
        .replace_manifests(vec![manifest(&[("a", "")], Some("{ttl: 60s}"))])
        .unwrap();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.call("cap", post("same")).await })
        })
        .collect();
    for t in tasks {
        let reply = t.await.unwrap().unwrap();
        assert_eq!(reply.body, "shared");
        assert_eq!(reply.offer, "a");
        assert_eq!(reply.cache, CacheStatus::Miss);
    }
    assert_eq!(a.calls(), 1);
    let stats = engine.status().await.capabilities[0].cache.clone().unwrap();
    assert_eq!((stats.misses, stats.coalesced), (1, 9));
}

#[tokio::test(start_paused = true)]
async fn coalesced_waiters_share_a_failure_too() {
    let a = Fake::new(Step::SlowUnreachable(Duration::from_millis(100)));
    let engine = engine_with(&[("a", &a)], EngineOptions::default());
    engine
        .replace_manifests(vec![manifest(&[("a", "")], Some("{ttl: 60s}"))])
        .unwrap();
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.call("cap", post("same")).await })
        })
        .collect();
    for t in tasks {
        let err = t.await.unwrap().unwrap_err();
        assert_eq!(err.error_code(), "ERR_CAPABILITY_UNAVAILABLE");
    }
    assert_eq!(a.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_leader_does_not_strand_its_followers() {
    let a = Fake::new(Step::Slow(Duration::from_millis(100), 200, "x"));
    let engine = engine_with(&[("a", &a)], EngineOptions::default());
    engine
        .replace_manifests(vec![manifest(&[("a", "")], Some("{ttl: 60s}"))])
        .unwrap();
    let leader = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.call("cap", post("same")).await })
    };
    tokio::task::yield_now().await;
    let follower = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.call("cap", post("same")).await })
    };
    tokio::task::yield_now().await;
    leader.abort();
    let reply = follower.await.unwrap().unwrap();
    assert_eq!(reply.body, "x");
    assert_eq!(a.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn stale_results_stand_in_when_every_offer_fails() {
    let a = Fake::new(Step::Reply(200, "fresh"));
    let b = Fake::new(Step::Unreachable);
    let engine = engine_with(&[("a", &a), ("b", &b)], EngineOptions::default());
    engine
        .replace_manifests(vec![manifest(
            &[("a", ""), ("b", "")],
            Some("{ttl: 10s, staleIfError: 60s}"),
        )])
        .unwrap();
    assert_eq!(
        engine.call("cap", post("q")).await.unwrap().cache,
        CacheStatus::Miss
    );
    a.set(Step::Unreachable);
    // Within the ttl, a hit; no offer is called.
    assert_eq!(
        engine.call("cap", post("q")).await.unwrap().cache,
        CacheStatus::Hit
    );
    tokio::time::advance(Duration::from_secs(11)).await;
    let stale = engine.call("cap", post("q")).await.unwrap();
    assert_eq!(stale.cache, CacheStatus::Stale);
    assert_eq!(stale.offer, "a");
    assert_eq!(stale.body, "fresh");
    // No stale entry for another request: a clear error.
    let err = engine.call("cap", post("other")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);

    tokio::time::advance(Duration::from_secs(60)).await;
    let err = engine.call("cap", post("q")).await.unwrap_err();
    assert_eq!(err.error_code(), "ERR_CAPABILITY_UNAVAILABLE");
    let status = engine.status().await;
    assert_eq!(status.capabilities[0].cache.as_ref().unwrap().stale, 1);
    assert_eq!(status.capabilities[0].unavailable, 2);
}

#[tokio::test(start_paused = true)]
async fn reload_keeps_state_of_unchanged_offers_and_is_all_or_nothing() {
    let a = Fake::new(Step::Unreachable);
    let b = Fake::new(Step::Reply(200, "b"));
    let engine = engine_with(&[("a", &a), ("b", &b)], EngineOptions::default());
    let m = |b_timeout: &str| manifest(&[("a", ""), ("b", b_timeout)], Some("{ttl: 60s}"));
    engine.replace_manifests(vec![m("")]).unwrap();
    for i in 0..3 {
        engine.call("cap", post(["1", "2", "3"][i])).await.unwrap();
    }
    assert_eq!(offer_status(&engine, "a").await.health, OfferHealth::Down);

    // b changes; a's breaker and the cache survive.
    engine
        .replace_manifests(vec![manifest(
            &[("a", ""), ("b", "method: other")],
            Some("{ttl: 60s}"),
        )])
        .unwrap();
    assert_eq!(offer_status(&engine, "a").await.health, OfferHealth::Down);
    assert_eq!(
        engine.call("cap", post("1")).await.unwrap().cache,
        CacheStatus::Hit
    );

    // A bad set changes nothing.
    let mut dup = m("");
    dup.spec.offers[1].name = "a".into();
    let errs = engine.replace_manifests(vec![m(""), m("")]).unwrap_err();
    assert_eq!(
        errs[0].to_string(),
        "Capability/cap: metadata.name: another manifest already defines this capability"
    );
    let errs = engine.replace_manifests(vec![dup]).unwrap_err();
    assert!(
        errs[0]
            .to_string()
            .starts_with("Capability/cap: spec.offers[1].name: duplicate")
    );
    assert_eq!(engine.capability_names(), ["cap"]);
    assert_eq!(offer_status(&engine, "b").await.target, "fake");

    // a changes: a fresh breaker.
    engine
        .replace_manifests(vec![manifest(
            &[("a", "method: x"), ("b", "")],
            Some("{ttl: 30s}"),
        )])
        .unwrap();
    assert_eq!(
        offer_status(&engine, "a").await.health,
        OfferHealth::Unknown
    );
    assert_eq!(
        engine.call("cap", post("1")).await.unwrap().cache,
        CacheStatus::Miss,
        "a changed cache spec starts empty"
    );

    engine.replace_manifests(Vec::new()).unwrap();
    assert!(matches!(
        engine.call("cap", post("1")).await,
        Err(CapabilityError::NotFound { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn named_policies_are_resolved_and_missing_ones_reported() {
    let resiliency = parse_resiliency_str(
        r#"
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: { name: r }
spec:
  policies:
    retries:
      twice: { policy: constant, duration: 500ms, maxRetries: 2 }
    circuitBreakers:
      touchy: { trip: "consecutiveFailures > 0", timeout: 10s }
"#,
    )
    .unwrap();
    let a = Fake::new(Step::Unreachable);
    let b = Fake::new(Step::Reply(200, "b"));
    let engine = engine_with(&[("a", &a), ("b", &b)], EngineOptions::default());
    let m = manifest(
        &[("a", "retries: twice, circuitBreaker: touchy"), ("b", "")],
        None,
    );
    let errs = engine.replace_manifests(vec![m.clone()]).unwrap_err();
    let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "Capability/cap: spec.offers[0].retries: no retry policy named \"twice\" in the Resiliency policies",
            "Capability/cap: spec.offers[0].circuitBreaker: no circuit breaker policy named \"touchy\" in the Resiliency policies",
        ]
    );
    assert!(
        engine
            .check(std::slice::from_ref(&m), &Policies::default())
            .is_err()
    );
    engine
        .check(std::slice::from_ref(&m), &resiliency.policies)
        .unwrap();
    assert!(engine.capability_names().is_empty(), "check loads nothing");
    engine.reload(vec![m], resiliency.policies).unwrap();
    let start = Instant::now();
    assert_eq!(engine.call("cap", post("{}")).await.unwrap().offer, "b");
    // The touchy breaker opened on the first failure: no retry, no backoff wait.
    assert_eq!(a.calls(), 1);
    assert_eq!(start.elapsed(), Duration::ZERO);
    let sa = offer_status(&engine, "a").await;
    assert_eq!(sa.breaker.unwrap().timeout, "10s");
}

#[tokio::test]
async fn unknown_capabilities_and_malformed_requests() {
    let a = Fake::new(Step::Reply(200, "a"));
    let engine = engine_with(&[("a", &a)], EngineOptions::default());
    engine
        .replace_manifests(vec![manifest(&[("a", "")], None)])
        .unwrap();
    let err = engine.call("nope", post("")).await.unwrap_err();
    assert_eq!(
        (err.error_code(), err.kind()),
        ("ERR_CAPABILITY_NOT_FOUND", ErrorKind::NotFound)
    );
    for req in [
        CapabilityRequest::new(Method::GET, "a/../../etc", ""),
        CapabilityRequest::new(Method::GET, "a b", ""),
        CapabilityRequest::new(Method::GET, "ok", "").with_query("x=1 2"),
    ] {
        let err = engine.call("cap", req).await.unwrap_err();
        assert_eq!(
            (err.error_code(), err.kind()),
            ("ERR_MALFORMED_REQUEST", ErrorKind::BadRequest)
        );
    }
    assert_eq!(a.calls(), 0);
}

#[tokio::test]
async fn method_override_and_forwarded_headers() {
    let a = Fake::new(Step::Reply(200, "a"));
    let engine = engine_with(&[("a", &a)], EngineOptions::default());
    engine
        .replace_manifests(vec![manifest(
            &[("a", "method: \"v2/{method}\"")],
            Some("{keyHeaders: [x-model]}"),
        )])
        .unwrap();
    let req = CapabilityRequest::new(Method::POST, "/detect/fast", "img")
        .with_query("q=1")
        .with_header("Content-Type", "image/png")
        .with_header("X-Model", "small")
        .with_header("Authorization", "Bearer app-token")
        .with_header("Connection", "close")
        .with_header("traceparent", "00-1-2-01");
    engine.call("cap", req).await.unwrap();
    let seen = a.seen.lock().unwrap()[0].clone();
    assert_eq!(seen.method, "v2/detect/fast");
    assert_eq!(seen.query.as_deref(), Some("q=1"));
    assert_eq!(&*seen.capability, "cap");
    assert_eq!(
        seen.headers,
        [
            ("content-type".to_owned(), "image/png".to_owned()),
            ("x-model".to_owned(), "small".to_owned()),
            ("traceparent".to_owned(), "00-1-2-01".to_owned()),
        ]
    );
}

#[tokio::test]
async fn real_offer_types_need_their_interfaces() {
    let engine = Engine::new(EngineOptions::default());
    let m = parse_manifest_str(
        r#"
apiVersion: edgecar.io/v1alpha1
kind: Capability
metadata: { name: geo }
spec:
  secretStore: local
  offers:
    - { name: peer, type: invoke, appId: geo.site-b }
    - name: cloud
      type: http
      url: https://geo.example.com
      headers: { X-Key: { secretKeyRef: { name: geo } } }
"#,
    )
    .unwrap();
    let errs = engine.replace_manifests(vec![m]).unwrap_err();
    let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "Capability/geo: spec.offers[0]: invoke offers need the gateway's invoker, and the engine has none",
            "Capability/geo: spec.offers[1]: secretKeyRef headers need a secret resolver, and the engine has none",
        ]
    );
}

#[tokio::test]
async fn builtins_serve_through_the_engine() {
    let engine = Engine::new(EngineOptions::default());
    let m = parse_manifest_str(
        r#"
apiVersion: edgecar.io/v1alpha1
kind: Capability
metadata: { name: stats }
spec:
  cache: { ttl: 30s }
  offers:
    - { name: aggregate, type: builtin }
"#,
    )
    .unwrap();
    engine.replace_manifests(vec![m]).unwrap();
    let req = CapabilityRequest::new(Method::POST, "summary", "[1, 2, 3]");
    let reply = engine.call("stats", req.clone()).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.offer, "aggregate");
    let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(v["mean"], 2.0);
    assert_eq!(
        engine.call("stats", req).await.unwrap().cache,
        CacheStatus::Hit
    );

    // Bad input is a 400 from the builtin, passed through.
    let reply = engine
        .call("stats", CapabilityRequest::new(Method::POST, "", "nope"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let status = engine.status().await;
    let offer = &status.capabilities[0].offers[0];
    assert_eq!(offer.offer_type, "builtin");
    assert!(offer.breaker.is_none(), "builtins have no default breaker");
    assert_eq!(offer.counters.client_error, 1);
}

#[tokio::test(start_paused = true)]
async fn metrics_and_status_render() {
    let a = Fake::new(Step::Unreachable);
    let b = Fake::new(Step::Reply(200, "b"));
    let engine = engine_with(&[("a", &a), ("b", &b)], EngineOptions::default());
    engine
        .replace_manifests(vec![manifest(&[("a", ""), ("b", "")], Some("{ttl: 60s}"))])
        .unwrap();
    for body in ["1", "2", "3", "1"] {
        engine.call("cap", post(body)).await.unwrap();
    }
    let mut out = String::new();
    engine.metrics(&mut out);
    for line in [
        "# TYPE edgecar_capability_calls_total counter",
        "edgecar_capability_calls_total{capability=\"cap\",offer=\"a\",outcome=\"unreachable\"} 3",
        "edgecar_capability_calls_total{capability=\"cap\",offer=\"b\",outcome=\"success\"} 3",
        "edgecar_capability_breaker_state{capability=\"cap\",offer=\"a\"} 2",
        "edgecar_capability_breaker_state{capability=\"cap\",offer=\"b\"} 0",
        "edgecar_capability_cache_hits_total{capability=\"cap\"} 1",
        "edgecar_capability_cache_misses_total{capability=\"cap\"} 3",
        "edgecar_capability_cache_stale_total{capability=\"cap\"} 0",
        "edgecar_capability_unavailable_total{capability=\"cap\"} 0",
    ] {
        assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
    }

    let json = serde_json::to_value(engine.status().await).unwrap();
    let a = &json["capabilities"][0]["offers"][0];
    assert_eq!(a["name"], "a");
    assert_eq!(a["type"], "http");
    assert_eq!(a["health"], "down");
    assert_eq!(a["breaker"]["state"], "open");
    assert_eq!(a["breaker"]["trip"], "consecutiveFailures >= 3");
    assert_eq!(a["counters"]["unreachable"], 3);
    assert_eq!(json["capabilities"][0]["cache"]["entries"], 3);
}
