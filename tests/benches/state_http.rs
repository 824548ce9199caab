//! Benchmark: Dapr state GET and SET over HTTP at fixed concurrency, against the real release
//! `edgecar` binary, with a bare hyper echo server measured in the same run as the floor.
//!
//! Run with `scripts/bench.sh` (builds the release binary first). Prints ops/s, p50 and p99 for
//! each scenario, the ratio edgecar / echo, and edgecar's idle RSS.
//! Knobs: BENCH_SECONDS (default 5), BENCH_CONCURRENCY (default 32).

use std::time::Duration;

use edgecar_tests::bench::{header, load, row, serve_echo_if_asked, spawn_echo};
use edgecar_tests::{Edgecar, http};

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

    let dir = tempfile::tempdir().expect("tempdir");
    let ec = Edgecar::start(dir.path(), &["--log-level", "warn"]);
    // Idle once it has handed its start-up code back (2 s after it serves; see idle_rss.rs).
    std::thread::sleep(Duration::from_secs(4));
    let idle_rss = ec.rss_kib();
    let value = r#"[{"key":"bench","value":{"temperature":21.5,"unit":"C","sensor":"line-3"}}]"#;
    assert_eq!(
        http(
            ec.port,
            "POST",
            "/v1.0/state/statestore",
            value.as_bytes(),
            &[]
        )
        .status,
        204
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("state API over HTTP/1.1 keep-alive, {conc} connections, {secs} s per scenario");
    println!("edgecar idle RSS: {:.1} MiB", idle_rss as f64 / 1024.0);
    println!();
    header();
    let echo_get = rt.block_on(load(
        echo_port,
        "GET",
        "/v1.0/state/statestore/bench",
        "",
        conc,
        secs,
    ));
    row("hyper echo GET (floor)", &echo_get);
    let get = rt.block_on(load(
        ec.port,
        "GET",
        "/v1.0/state/statestore/bench",
        "",
        conc,
        secs,
    ));
    row("edgecar state GET", &get);
    let echo_set = rt.block_on(load(
        echo_port,
        "POST",
        "/v1.0/state/statestore",
        value,
        conc,
        secs,
    ));
    row("hyper echo POST (floor)", &echo_set);
    let set = rt.block_on(load(
        ec.port,
        "POST",
        "/v1.0/state/statestore",
        value,
        conc,
        secs,
    ));
    row("edgecar state SET (fsync)", &set);
    // The same GET against a second gateway with metrics off (`--enable-metrics=false`: no
    // admin listener, nothing recorded), alternating so that both see the same machine load.
    let dir_off = tempfile::tempdir().expect("tempdir");
    let off = Edgecar::start(
        dir_off.path(),
        &["--log-level", "warn", "--enable-metrics=false"],
    );
    // And a third with trace export on as well: every call a span, exported in batches over
    // OTLP/HTTP to the echo server, which stands in for a collector (it answers 200 to anything).
    let dir_traced = tempfile::tempdir().expect("tempdir");
    let traced_cfg = dir_traced.path().join("edgecar.yaml");
    std::fs::write(
        &traced_cfg,
        format!("tracing:\n  otlpEndpoint: http://127.0.0.1:{echo_port}/v1/traces\n"),
    )
    .expect("config");
    let traced = Edgecar::start(
        dir_traced.path(),
        &[
            "--log-level",
            "warn",
            "--config",
            traced_cfg.to_str().expect("utf-8 path"),
        ],
    );
    // Both read the key the first gateway was given.
    for port in [off.port, traced.port] {
        let seeded = http(
            port,
            "POST",
            "/v1.0/state/statestore",
            value.as_bytes(),
            &[],
        );
        assert_eq!(seeded.status, 204);
    }
    // Alternated round by round, so that all three see the same machine load.
    let gateways = [
        ("metrics on", ec.port),
        ("metrics off", off.port),
        ("metrics and trace export on", traced.port),
    ];
    let mut sums = [0.0; 3];
    for round in 1..=3 {
        for ((label, port), sum) in gateways.iter().zip(&mut sums) {
            let r = rt.block_on(load(
                *port,
                "GET",
                "/v1.0/state/statestore/bench",
                "",
                conc,
                secs,
            ));
            row(&format!("GET, {label}, round {round}"), &r);
            *sum += r.ops_per_sec;
        }
    }
    println!("GET throughput metrics on / off: {:.3}", sums[0] / sums[1]);
    println!(
        "GET throughput metrics and trace export on / both off: {:.3}",
        sums[2] / sums[1]
    );
    drop(off);
    drop(traced);
    let loaded_rss = ec.rss_kib();
    println!();
    println!(
        "ratio GET edgecar/echo: {:.2} (target >= 0.50); SET edgecar/echo: {:.2}; RSS after load: {:.1} MiB",
        get.ops_per_sec / echo_get.ops_per_sec,
        set.ops_per_sec / echo_set.ops_per_sec,
        loaded_rss as f64 / 1024.0
    );
    let _ = echo.kill();
    let _ = echo.wait();
}
