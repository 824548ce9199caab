//! Benchmark: what `edgecar run` holds in memory at idle, on its embedded defaults (no config:
//! the Dapr HTTP and gRPC APIs, the MQTT device endpoint, the admin listener, `state.sled` and
//! `pubsub.sled`), broken down from `/proc/<pid>/smaps`, against references measured in the same
//! run: a bare tokio + hyper echo server (the floor every benchmark uses) and `sleep`.
//!
//! Run with `scripts/bench.sh idle_rss` (release build). Knobs: BENCH_RUNS (default 3),
//! BENCH_SETTLE (seconds after start before reading, default 5), EDGECAR_COMPARE_BIN (a second
//! edgecar binary, e.g. an older build, measured in the same runs).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use edgecar_tests::bench::{Residency, residency, serve_echo_if_asked, spawn_echo};
use edgecar_tests::{Edgecar, edgecar_bin};

fn mib(kib: u64) -> String {
    format!("{:.2}", kib as f64 / 1024.0)
}

fn row(name: &str, r: &Residency, released: Option<u64>) {
    println!(
        "| {name:<34} | {:>6} | {:>6} | {:>6} | {:>6} | {:>6} | {:>6} | {:>3} | {:>8} |",
        mib(r.rss),
        mib(r.exe_file),
        mib(r.exe_anon),
        mib(r.libs),
        mib(r.stacks),
        mib(r.heap),
        r.threads,
        released.map_or("–".into(), |b| mib(b / 1024)),
    );
}

/// The `resident_bytes` edgecar logged when it handed its start-up code back, if it did.
fn released_bytes(log: &str) -> Option<u64> {
    log.lines()
        .find(|l| l.contains("start-up code handed back"))?
        .split("resident_bytes=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn main() {
    serve_echo_if_asked();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let settle = Duration::from_secs(
        std::env::var("BENCH_SETTLE")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5),
    );
    let mut bins: Vec<(String, PathBuf)> = vec![("edgecar".into(), edgecar_bin())];
    if let Some(other) = std::env::var_os("EDGECAR_COMPARE_BIN") {
        bins.push(("edgecar (EDGECAR_COMPARE_BIN)".into(), PathBuf::from(other)));
    }
    for (name, bin) in &bins {
        let size = std::fs::metadata(bin).map(|m| m.len()).unwrap_or(0);
        println!("{name}: {} ({size} bytes)", bin.display());
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "idle RSS, {runs} runs, read {settle:?} after start; load average {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!();
    println!(
        "| process                            | RSS MiB | binary code+rodata | binary written (RELRO, .data) | shared libs | stacks | heap | threads | handed back at start MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut rss: Vec<Vec<u64>> = vec![Vec::new(); bins.len()];
    for _ in 0..runs {
        for (i, (name, bin)) in bins.iter().enumerate() {
            let dir = tempfile::tempdir().expect("tempdir");
            let ec = Edgecar::start_binary(
                bin,
                dir.path(),
                &[],
                &[("RUST_LOG", "info,edgecar::memory=debug")],
            );
            std::thread::sleep(settle);
            let r = residency(ec.pid());
            let released = released_bytes(&ec.log.lock().expect("log"));
            row(name, &r, released);
            rss[i].push(r.rss);
        }
    }
    let (mut echo, _) = spawn_echo();
    std::thread::sleep(Duration::from_secs(1));
    let echo_r = residency(echo.id());
    row("bare tokio + hyper echo server", &echo_r, None);
    let _ = echo.kill();
    let _ = echo.wait();
    let mut sleep = Command::new("sleep").arg("30").spawn().expect("sleep");
    std::thread::sleep(Duration::from_millis(300));
    let sleep_r = residency(sleep.id());
    row("sleep 30", &sleep_r, None);
    let _ = sleep.kill();
    let _ = sleep.wait();
    println!();
    for (i, (name, _)) in bins.iter().enumerate() {
        let m = median(rss[i].clone());
        println!(
            "{name}: median idle RSS {} MiB ({} bytes; target <= 8,000,000), {:.2}x the echo server's {} MiB, {:.2}x sleep's {} MiB",
            mib(m),
            m * 1024,
            m as f64 / echo_r.rss.max(1) as f64,
            mib(echo_r.rss),
            m as f64 / sleep_r.rss.max(1) as f64,
            mib(sleep_r.rss),
        );
    }
    if rss.len() == 2 {
        let (a, b) = (median(rss[0].clone()), median(rss[1].clone()));
        println!(
            "edgecar / EDGECAR_COMPARE_BIN: {:.2} ({} MiB less)",
            a as f64 / b.max(1) as f64,
            mib(b.saturating_sub(a))
        );
    }
}
