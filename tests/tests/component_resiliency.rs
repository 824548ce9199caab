//! Dapr resiliency on calls to components (`spec.targets.components.<name>.outbound`): retries
//! hide a flaky binding endpoint; a dead Redis trips the state store's breaker so later calls fail
//! at once instead of waiting out timeouts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use edgecar_tests::{AppResponse, Edgecar, RedisServer, TestApp, write_component};

const RESILIENCY: &str = "apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata:
  name: components
spec:
  policies:
    timeouts:
      short: 500ms
    retries:
      few:
        policy: constant
        duration: 50ms
        maxRetries: 2
    circuitBreakers:
      cb:
        maxRequests: 1
        timeout: 60s
        trip: consecutiveFailures >= 3
  targets:
    components:
      erp:
        outbound:
          retry: few
      cache:
        outbound:
          timeout: short
          retry: few
          circuitBreaker: cb
";

#[test]
fn retries_hide_a_flaky_output_binding_endpoint() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let api = TestApp::start(move |_| {
        if seen.fetch_add(1, Ordering::SeqCst) < 2 {
            AppResponse::new(503, "busy")
        } else {
            AppResponse::new(200, "{\"ok\":true}")
        }
    });
    let (dir, res) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_component(
        res.path(),
        "erp",
        "bindings.http",
        &[("url", &format!("http://127.0.0.1:{}", api.port))],
    );
    std::fs::write(res.path().join("resiliency.yaml"), RESILIENCY).unwrap();
    let ec = Edgecar::start(
        dir.path(),
        &["--resources-path", res.path().to_str().unwrap()],
    );
    let r = ec.req(
        "POST",
        "/v1.0/bindings/erp",
        br#"{"operation":"post","data":{}}"#,
        &[],
    );
    assert_eq!(r.status, 200, "two 503s were retried: {}", r.text());
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[test]
fn a_dead_state_store_trips_its_breaker() {
    let redis = RedisServer::start();
    let (dir, res) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_component(
        res.path(),
        "cache",
        "state.redis",
        &[
            ("redisHost", &format!("127.0.0.1:{}", redis.port)),
            ("dialTimeout", "300ms"),
            ("readTimeout", "300ms"),
        ],
    );
    std::fs::write(res.path().join("resiliency.yaml"), RESILIENCY).unwrap();
    let ec = Edgecar::start(
        dir.path(),
        &["--resources-path", res.path().to_str().unwrap()],
    );
    assert_eq!(
        ec.req(
            "POST",
            "/v1.0/state/cache",
            br#"[{"key":"k","value":1}]"#,
            &[]
        )
        .status,
        204
    );
    drop(redis);
    // Three failed attempts (one call with its two retries) trip the breaker...
    let r = ec.req("GET", "/v1.0/state/cache/k", b"", &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (500, "ERR_STATE_GET"),
        "{}",
        r.text()
    );
    // ...so the next call is refused at once, without touching Redis.
    let t = Instant::now();
    let r = ec.req("GET", "/v1.0/state/cache/k", b"", &[]);
    assert_eq!((r.status, r.error_code().as_str()), (500, "ERR_STATE_GET"));
    assert!(r.text().contains("circuit breaker open"), "{}", r.text());
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn an_inbound_breaker_stops_hammering_a_failing_subscriber() {
    let app = edgecar_tests::SubscriberApp::start(
        r#"[{"pubsubname":"pubsub","topic":"orders","route":"/orders"}]"#,
        |_| (500, String::new()),
    );
    let (dir, res) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_component(res.path(), "pubsub", "pubsub.in-memory", &[]);
    std::fs::write(
        res.path().join("resiliency.yaml"),
        "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: inbound\nspec:\n  policies:\n    retries:\n      many:\n        policy: constant\n        duration: 50ms\n        maxRetries: 10\n    circuitBreakers:\n      cb:\n        maxRequests: 1\n        timeout: 60s\n        trip: consecutiveFailures >= 2\n  targets:\n    components:\n      pubsub:\n        inbound:\n          retry: many\n          circuitBreaker: cb\n",
    )
    .unwrap();
    let ec = Edgecar::start(
        dir.path(),
        &[
            "--resources-path",
            res.path().to_str().unwrap(),
            "--app-port",
            &app.port.to_string(),
        ],
    );
    // The in-memory bus keeps nothing for a topic nobody subscribes to yet: wait for the subscription.
    edgecar_tests::eventually(Duration::from_secs(10), "the subscription", || {
        let m = ec.req("GET", "/v1.0/metadata", b"", &[]).json();
        m["subscriptions"]
            .as_array()
            .is_some_and(|s| !s.is_empty())
            .then_some(())
    });
    let r = ec.req(
        "POST",
        "/v1.0/publish/pubsub/orders",
        br#"{"id":1}"#,
        &[("content-type", "application/json")],
    );
    assert_eq!(r.status, 204, "{}", r.text());
    app.wait_for("/orders", 2, Duration::from_secs(10));
    // Ten retries at 50 ms would have taken half a second; wait well past it.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        app.on("/orders").len(),
        2,
        "after two failures the open breaker sent nothing more"
    );
}
