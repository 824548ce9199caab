//! The smart proxy end to end: the real binary, a real HTTP server playing the cloud (started,
//! slowed, broken, stopped and restarted by the test), and a local builtin offer as fallback.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use edgecar_tests::{AppResponse, Edgecar, TestApp, eventually};

const NORMAL: u8 = 0;
const SLOW: u8 = 1;
const BROKEN: u8 = 2;
/// Slow, but inside the offer's 500 ms timeout.
const SLUGGISH: u8 = 3;

/// The cloud API: answers with its name, fails with 422 on `"bad"` input (the caller's fault),
/// and can be made slow or broken.
fn cloud(port: u16, mode: Arc<AtomicU8>) -> TestApp {
    TestApp::start_on(port, move |r| {
        let body = String::from_utf8_lossy(&r.body).into_owned();
        if body.contains("bad") {
            return AppResponse::new(422, r#"{"error":"unreadable image"}"#)
                .header("content-type", "application/json");
        }
        let ok = AppResponse::new(
            200,
            format!(r#"{{"source":"cloud","path":"{}","input":{body}}}"#, r.path),
        )
        .header("content-type", "application/json");
        match mode.load(Ordering::SeqCst) {
            SLOW => AppResponse {
                delay: Duration::from_secs(3),
                ..ok
            },
            BROKEN => AppResponse::new(500, "cloud is on fire"),
            SLUGGISH => AppResponse {
                delay: Duration::from_millis(300),
                ..ok
            },
            _ => ok,
        }
    })
}

fn manifest(cloud_port: u16) -> String {
    format!(
        "apiVersion: edgecar.io/v1alpha1
kind: Capability
metadata:
  name: detect
spec:
  cache: {{ ttl: 60s, staleIfError: 1h }}
  offers:
  - name: cloud
    type: http
    url: http://127.0.0.1:{cloud_port}/v1
    timeout: 500ms
    circuitBreaker: {{ trip: consecutiveFailures >= 2, timeout: 2s, maxRequests: 1 }}
  - name: local
    type: builtin
    builtin: echo
---
apiVersion: edgecar.io/v1alpha1
kind: Capability
metadata:
  name: geo
spec:
  cache: {{ ttl: 1s, staleIfError: 1h }}
  offers:
  - name: cloud
    type: http
    url: http://127.0.0.1:{cloud_port}/geo
    timeout: 500ms
"
    )
}

struct Site {
    ec: Edgecar,
    cloud: Option<TestApp>,
    cloud_port: u16,
    mode: Arc<AtomicU8>,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Site {
    fn start() -> Site {
        let mode = Arc::new(AtomicU8::new(NORMAL));
        let cloud = cloud(0, mode.clone());
        let cloud_port = cloud.port;
        let (dir, res) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(res.path().join("capabilities.yaml"), manifest(cloud_port)).unwrap();
        let ec = Edgecar::start(
            dir.path(),
            &["--resources-path", res.path().to_str().unwrap()],
        );
        Site {
            ec,
            cloud: Some(cloud),
            cloud_port,
            mode,
            _dirs: (dir, res),
        }
    }

    fn call(&self, cap: &str, body: &str) -> edgecar_tests::HttpResponse {
        self.ec.req(
            "POST",
            &format!("/v1.0/capabilities/{cap}/objects"),
            body.as_bytes(),
            &[("content-type", "application/json")],
        )
    }

    fn cloud_calls(&self) -> usize {
        self.cloud.as_ref().map_or(0, |c| c.received().len())
    }
}

fn served(r: &edgecar_tests::HttpResponse) -> (u16, String, String) {
    (
        r.status,
        r.header("x-edgecar-offer").unwrap_or("-").to_owned(),
        r.header("x-edgecar-cache").unwrap_or("-").to_owned(),
    )
}

#[test]
fn cloud_answers_then_cache_hits_without_upstream_calls() {
    let site = Site::start();
    let r = site.call("detect", r#"{"img":1}"#);
    assert_eq!(
        served(&r),
        (200, "cloud".into(), "miss".into()),
        "{}",
        r.text()
    );
    assert_eq!(r.json()["source"], "cloud");
    assert_eq!(
        r.json()["path"],
        "/v1/objects",
        "the method path is appended to the offer URL"
    );
    assert_eq!(site.cloud_calls(), 1);
    for _ in 0..5 {
        let r = site.call("detect", r#"{"img":1}"#);
        assert_eq!(served(&r), (200, "cloud".into(), "hit".into()));
        assert_eq!(r.json()["source"], "cloud");
    }
    assert_eq!(site.cloud_calls(), 1, "cache hits make no upstream request");
    // A different body is a different cache key.
    assert_eq!(served(&site.call("detect", r#"{"img":2}"#)).2, "miss");
    assert_eq!(site.cloud_calls(), 2);
}

#[test]
fn a_4xx_from_the_cloud_is_passed_through_without_fallback() {
    let site = Site::start();
    let r = site.call("detect", r#"{"img":"bad"}"#);
    assert_eq!(served(&r).0, 422);
    assert_eq!(served(&r).1, "cloud");
    assert_eq!(r.json()["error"], "unreadable image");
    // Not a cloud failure: the breaker stays closed and the cloud keeps serving.
    let r = site.call("detect", r#"{"img":"bad"}"#);
    assert_eq!(served(&r).0, 422);
    let r = site.call("detect", r#"{"img":3}"#);
    assert_eq!(served(&r), (200, "cloud".into(), "miss".into()));
}

#[test]
fn concurrent_identical_misses_make_exactly_one_upstream_call() {
    let site = Arc::new(Site::start());
    // The cloud takes 300 ms: every request below arrives while the first is still upstream.
    site.mode.store(SLUGGISH, Ordering::SeqCst);
    let threads: Vec<_> = (0..10)
        .map(|_| {
            let site = site.clone();
            std::thread::spawn(move || served(&site.call("detect", r#"{"img":"same"}"#)))
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        results.iter().all(|(s, o, _)| *s == 200 && o == "cloud"),
        "{results:?}"
    );
    assert_eq!(
        site.cloud_calls(),
        1,
        "ten identical concurrent misses, one upstream call: {results:?}"
    );
}

#[test]
fn dead_cloud_falls_back_to_local_then_the_breaker_skips_it_then_traffic_returns() {
    let mut site = Site::start();
    assert_eq!(served(&site.call("detect", r#"{"n":0}"#)).1, "cloud");

    // Cloud stopped: the local offer answers.
    site.cloud.take().unwrap().stop();
    let t = Instant::now();
    let r = site.call("detect", r#"{"n":1}"#);
    assert_eq!(
        served(&r),
        (200, "local".into(), "miss".into()),
        "{}",
        r.text()
    );
    assert!(
        t.elapsed() < Duration::from_millis(500 + 300),
        "within the offer timeout: {:?}",
        t.elapsed()
    );

    // Cloud back but hanging: the second consecutive failure (a timeout) trips the breaker...
    site.cloud = Some(cloud(site.cloud_port, site.mode.clone()));
    site.mode.store(SLOW, Ordering::SeqCst);
    let t = Instant::now();
    let r = site.call("detect", r#"{"n":2}"#);
    assert_eq!(served(&r).1, "local");
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_millis(1200),
        "timeout cost {waited:?}"
    );
    // ...so later calls skip the cloud at no timeout cost.
    let before = site.cloud_calls();
    for n in 3..8 {
        let t = Instant::now();
        let r = site.call("detect", &format!(r#"{{"n":{n}}}"#));
        assert_eq!(served(&r).1, "local");
        assert!(
            t.elapsed() < Duration::from_millis(150),
            "open breaker added {:?}",
            t.elapsed()
        );
    }
    assert_eq!(
        site.cloud_calls(),
        before,
        "an open breaker sends nothing to the cloud"
    );
    let status = site.ec.req("GET", "/v1.0/capabilities", b"", &[]).json();
    assert!(
        status.to_string().contains("\"open\""),
        "the listing shows the open breaker: {status}"
    );

    // Cloud healthy again: after the breaker's timeout a half-open probe returns traffic to it.
    site.mode.store(NORMAL, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(2100));
    let r = site.call("detect", r#"{"n":100}"#);
    assert_eq!(
        served(&r).1,
        "cloud",
        "the probe went to the preferred offer"
    );
    assert_eq!(served(&site.call("detect", r#"{"n":101}"#)).1, "cloud");
}

#[test]
fn every_offer_down_serves_stale_and_without_an_entry_a_clear_error() {
    let mut site = Site::start();
    let r = site.call("geo", r#"{"q":"Lyon"}"#);
    assert_eq!(served(&r), (200, "cloud".into(), "miss".into()));
    std::thread::sleep(Duration::from_millis(1200)); // past the 1 s ttl, inside staleIfError
    site.cloud.take().unwrap().stop();
    let r = site.call("geo", r#"{"q":"Lyon"}"#);
    assert_eq!(
        served(&r),
        (200, "cloud".into(), "stale".into()),
        "{}",
        r.text()
    );
    assert_eq!(r.json()["input"]["q"], "Lyon");
    let r = site.call("geo", r#"{"q":"Paris"}"#);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.error_code(), "ERR_CAPABILITY_UNAVAILABLE");
    assert!(
        r.json()["message"].as_str().unwrap().contains("cloud"),
        "names the failed offer: {}",
        r.text()
    );
    let r = site.ec.req("GET", "/v1.0/capabilities/nope/x", b"", &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (404, "ERR_CAPABILITY_NOT_FOUND")
    );
}

#[test]
fn listing_and_metrics_show_offers_breakers_and_cache() {
    let site = Site::start();
    site.call("detect", r#"{"a":1}"#);
    site.call("detect", r#"{"a":1}"#);
    let list = site.ec.req("GET", "/v1.0/capabilities", b"", &[]);
    assert_eq!(list.status, 200);
    let text = list.text();
    for needle in ["detect", "geo", "cloud", "local", "closed"] {
        assert!(text.contains(needle), "{needle} missing from {text}");
    }
    let m = site.ec.admin("/metrics");
    assert_eq!(m.status, 200);
    assert!(m.text().contains("edgecar_capability"), "{}", m.text());
}

#[test]
fn manifests_reload_without_restart_and_a_bad_one_keeps_the_previous_set() {
    let site = Site::start();
    let res = site._dirs.1.path().to_path_buf();
    std::fs::write(
        res.join("stats.yaml"),
        "apiVersion: edgecar.io/v1alpha1\nkind: Capability\nmetadata:\n  name: stats\nspec:\n  offers:\n  - name: local\n    type: builtin\n    builtin: aggregate\n",
    )
    .unwrap();
    eventually(
        Duration::from_secs(10),
        "the new capability to load",
        || {
            (site
                .ec
                .req("POST", "/v1.0/capabilities/stats/summary", b"[1,2,3]", &[])
                .status
                == 200)
                .then_some(())
        },
    );
    // An invalid edit is refused as a whole: stats and detect keep working.
    let refusals = || {
        site.ec
            .log
            .lock()
            .unwrap()
            .matches("capability reload refused")
            .count()
    };
    assert_eq!(refusals(), 0, "nothing refused before the bad edit");
    std::fs::write(
        res.join("stats.yaml"),
        "apiVersion: edgecar.io/v1alpha1\nkind: Capability\nmetadata:\n  name: stats\nspec:\n  offers:\n  - name: local\n    type: teleport\n",
    )
    .unwrap();
    eventually(Duration::from_secs(10), "the refusal to be logged", || {
        (refusals() > 0).then_some(())
    });
    assert!(
        site.ec.log.lock().unwrap().contains("teleport"),
        "the log names the problem"
    );
    assert_eq!(
        site.ec
            .req("POST", "/v1.0/capabilities/stats/summary", b"[1,2,3]", &[])
            .status,
        200
    );
    assert_eq!(served(&site.call("detect", r#"{"x":1}"#)).0, 200);
}

#[test]
fn a_5xx_from_the_cloud_falls_back_to_local() {
    let site = Site::start();
    site.mode.store(BROKEN, Ordering::SeqCst);
    let r = site.call("detect", r#"{"img":"x"}"#);
    assert_eq!(
        served(&r),
        (200, "local".into(), "miss".into()),
        "{}",
        r.text()
    );
    assert_eq!(site.cloud_calls(), 1, "the cloud was tried first");
}
