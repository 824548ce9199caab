//! Benchmark: the smart proxy's costs, each against a reference measured in the same run.
//!
//! 1. Cache hit: `/v1.0/capabilities/<name>` served from the cache, against a direct call to a
//!    bare hyper echo server with the same body (aim: p50 at most 1.5× the direct call).
//! 2. Cloud death: the cloud starts hanging; time until the first answer from the local offer,
//!    against the offer's configured timeout (aim: timeout + 10 ms).
//! 3. Breaker open: latency of a call that skips the dead cloud, against the same local offer
//!    alone (aim: under 1 ms added).
//!
//! Run with `scripts/bench.sh`. Knobs: BENCH_SECONDS (default 5), BENCH_CONCURRENCY (default 32).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use edgecar_tests::bench::{header, load, row, serve_echo_if_asked, spawn_echo};
use edgecar_tests::{AppResponse, Edgecar, TestApp, http};

const BODY: &str = r#"{"image":"cam-7/frame-1042.jpg","threshold":0.6}"#;
const TIMEOUT_MS: u64 = 200;

fn main() {
    serve_echo_if_asked();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let secs: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let conc: usize = std::env::var("BENCH_CONCURRENCY")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(32);
    let (mut echo, echo_port) = spawn_echo();
    let hang = Arc::new(AtomicBool::new(false));
    let hanging = hang.clone();
    let cloud = TestApp::start(move |_| {
        let r =
            AppResponse::new(200, r#"{"objects":[]}"#).header("content-type", "application/json");
        if hanging.load(Ordering::SeqCst) {
            AppResponse {
                delay: Duration::from_secs(30),
                ..r
            }
        } else {
            r
        }
    });

    let res = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        res.path().join("caps.yaml"),
        format!(
            "apiVersion: edgecar.io/v1alpha1
kind: Capability
metadata: {{name: cached}}
spec:
  cache: {{ttl: 1h}}
  offers: [{{name: cloud, type: http, url: 'http://127.0.0.1:{echo_port}/detect'}}]
---
apiVersion: edgecar.io/v1alpha1
kind: Capability
metadata: {{name: fallback}}
spec:
  offers:
  - {{name: cloud, type: http, url: 'http://127.0.0.1:{}/detect', timeout: {TIMEOUT_MS}ms,
      circuitBreaker: {{trip: consecutiveFailures >= 3, timeout: 1h, maxRequests: 1}}}}
  - {{name: local, type: builtin, builtin: echo}}
---
apiVersion: edgecar.io/v1alpha1
kind: Capability
metadata: {{name: localonly}}
spec:
  offers: [{{name: local, type: builtin, builtin: echo}}]
",
            cloud.port
        ),
    )
    .expect("manifest");
    let dir = tempfile::tempdir().expect("tempdir");
    let ec = Edgecar::start(
        dir.path(),
        &[
            "--log-level",
            "warn",
            "--resources-path",
            res.path().to_str().expect("utf8"),
        ],
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    // 1. Cache hits against the direct call.
    let warm = http(
        ec.port,
        "POST",
        "/v1.0/capabilities/cached/objects",
        BODY.as_bytes(),
        &[],
    );
    assert_eq!(warm.status, 200, "{}", warm.text());
    assert_eq!(
        http(
            ec.port,
            "POST",
            "/v1.0/capabilities/cached/objects",
            BODY.as_bytes(),
            &[]
        )
        .header("x-edgecar-cache"),
        Some("hit")
    );
    println!(
        "1. cache hit vs a direct call to a bare hyper echo, {conc} connections, {secs} s each"
    );
    println!();
    header();
    let direct = rt.block_on(load(echo_port, "POST", "/detect/objects", BODY, conc, secs));
    row("direct call to hyper echo (floor)", &direct);
    let hit = rt.block_on(load(
        ec.port,
        "POST",
        "/v1.0/capabilities/cached/objects",
        BODY,
        conc,
        secs,
    ));
    row("capability, cache hit", &hit);
    println!();
    println!(
        "cache-hit p50 / direct p50: {:.2} (aim <= 1.5); throughput ratio {:.2}",
        hit.p50_us as f64 / direct.p50_us.max(1) as f64,
        hit.ops_per_sec / direct.ops_per_sec
    );

    // 2. The cloud starts hanging: the first call waits out the offer timeout, then local answers.
    println!();
    println!("2. cloud death to first local answer (offer timeout {TIMEOUT_MS} ms)");
    let ok = http(
        ec.port,
        "POST",
        "/v1.0/capabilities/fallback/objects",
        b"{\"n\":0}",
        &[],
    );
    assert_eq!(ok.header("x-edgecar-offer"), Some("cloud"));
    hang.store(true, Ordering::SeqCst);
    let mut overheads = Vec::new();
    for n in 1..=3 {
        let t = Instant::now();
        let r = http(
            ec.port,
            "POST",
            "/v1.0/capabilities/fallback/objects",
            format!("{{\"n\":{n}}}").as_bytes(),
            &[],
        );
        let took = t.elapsed();
        assert_eq!(r.header("x-edgecar-offer"), Some("local"), "{}", r.text());
        overheads.push(took.as_secs_f64() * 1e3 - TIMEOUT_MS as f64);
        println!(
            "   call {n}: local answer after {:.1} ms (timeout + {:.1} ms)",
            took.as_secs_f64() * 1e3,
            took.as_secs_f64() * 1e3 - TIMEOUT_MS as f64
        );
    }

    // 3. Three timeouts tripped the breaker: the cloud is skipped. Compare with local alone.
    let r = http(
        ec.port,
        "POST",
        "/v1.0/capabilities/fallback/objects",
        b"{\"n\":99}",
        &[],
    );
    assert_eq!(r.header("x-edgecar-offer"), Some("local"));
    println!();
    println!("3. breaker open: calls skip the dead cloud; 1 connection, {secs} s each");
    println!();
    header();
    let alone = rt.block_on(load(
        ec.port,
        "POST",
        "/v1.0/capabilities/localonly/objects",
        BODY,
        1,
        secs,
    ));
    row("local offer alone (reference)", &alone);
    let skipped = rt.block_on(load(
        ec.port,
        "POST",
        "/v1.0/capabilities/fallback/objects",
        BODY,
        1,
        secs,
    ));
    row("cloud breaker open, then local", &skipped);
    println!();
    println!(
        "added latency with the breaker open: p50 {:+} µs, p99 {:+} µs (aim < 1000 µs); cloud-death overhead beyond the timeout: {:.1} ms (aim <= 10 ms)",
        skipped.p50_us as i64 - alone.p50_us as i64,
        skipped.p99_us as i64 - alone.p99_us as i64,
        overheads.first().copied().unwrap_or(f64::NAN)
    );
    assert!(
        cloud.received().len() <= 4,
        "the open breaker kept traffic off the cloud"
    );
    let _ = echo.kill();
    let _ = echo.wait();
}
