//! Benchmark: device requests and telemetry over QUIC against the same over MQTT, in the same
//! run, against the real release `edgecar`, both driven by the `edgecar-device-client` library
//! (the same API over each transport, so the difference is the transport and its endpoint).
//!
//! Scenarios, each for S seconds with C devices (one connection each), back to back:
//! - request round trip: `state.get` and its reply, QUIC vs MQTT (the aim: QUIC within 1.2×);
//! - telemetry acknowledged: QUIC readings each awaited until stored; MQTT readings published at
//!   QoS 1 and counted by edgecar's PUBACKs (the library returns once queued, so MQTT keeps a
//!   window of readings in flight, as MQTT clients do);
//! - memory: edgecar's RSS with N idle authenticated devices, per device, QUIC and MQTT.
//!
//! Knobs: BENCH_SECONDS (default 5), BENCH_CONCURRENCY (default 16), BENCH_DEVICES (default
//! 1000), BENCH_MEMORY_ONLY=1 (only the memory part), BENCH_TRANSPORT=quic|mqtt (the memory
//! part for one transport only), BENCH_HOLD_SECONDS (keep each set of idle
//! devices connected this long after measuring, e.g. to attach a profiler). Run with `scripts/bench.sh quic_requests`.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgecar_device_client::quic::QuicOptions;
use edgecar_device_client::{Client, Options, Transport};
use edgecar_tests::Edgecar;
use edgecar_tests::bench::{Stats, header, proc_kib, row};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Registers `n` devices `d0..` with password `pw`, writing the registry directly at a low
/// PBKDF2 cost (thousands of `edgecar device add` would take minutes).
fn register(dir: &Path, n: u64, pw: &str) {
    let hash = edgecar_tests::mqtt::registry_hash(pw, 10, b"benchsalt");
    let mut yaml = String::from("devices:\n");
    for i in 0..n {
        yaml.push_str(&format!("- id: d{i}\n  passwordHash: \"{hash}\"\n"));
    }
    std::fs::write(dir.join("devices.yaml"), yaml).expect("registry");
}

fn opts(ec: &Edgecar, quic: bool, id: &str) -> Options {
    if quic {
        let mut o = Options::new("127.0.0.1", ec.quic_port, id, "pw");
        o.transport = Transport::Quic(QuicOptions {
            fingerprint: Some(ec.quic_fingerprint.clone()),
            ..Default::default()
        });
        o
    } else {
        Options::new("127.0.0.1", ec.mqtt_port, id, "pw")
    }
}

async fn clients(ec: &Edgecar, quic: bool, n: u64, from: u64) -> Vec<Client> {
    let mut out = Vec::new();
    for i in from..from + n {
        let (c, _) = Client::connect(opts(ec, quic, &format!("d{i}")))
            .await
            .expect("connect");
        out.push(c);
    }
    out
}

fn stats(mut lat: Vec<u64>, errors: u64, elapsed: f64) -> Stats {
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Stats {
        ops_per_sec: lat.len() as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        errors,
    }
}

/// Each client does `state.get` back to back for `secs`.
async fn requests(cs: Vec<Client>, secs: u64) -> Stats {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let tasks: Vec<_> = cs
        .into_iter()
        .map(|c| {
            tokio::spawn(async move {
                c.state_set("k", &serde_json::json!(1)).await.expect("set");
                let (mut lat, mut errors) = (Vec::new(), 0u64);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match c.request("state.get", &[("key", "k")], Bytes::new()).await {
                        Ok(r) if r.status == 200 => lat.push(t.elapsed().as_micros() as u64),
                        _ => errors += 1,
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.expect("task");
        all.extend(l);
        errors += e;
    }
    stats(all, errors, started.elapsed().as_secs_f64())
}

/// Each client sends readings back to back for `secs`, each awaited (QUIC: until stored).
async fn telemetry(cs: Vec<Client>, secs: u64) -> Stats {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let tasks: Vec<_> = cs
        .into_iter()
        .map(|c| {
            tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), 0u64);
                let body = Bytes::from_static(br#"{"celsius":21.5}"#);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match c.telemetry("bench", body.clone()).await {
                        Ok(()) => lat.push(t.elapsed().as_micros() as u64),
                        Err(_) => errors += 1,
                    }
                }
                (lat, errors, c)
            })
        })
        .collect();
    let (mut all, mut errors, mut keep) = (Vec::new(), 0, Vec::new());
    for t in tasks {
        let (l, e, c) = t.await.expect("task");
        all.extend(l);
        errors += e;
        keep.push(c);
    }
    let s = stats(all, errors, started.elapsed().as_secs_f64());
    for c in keep {
        c.disconnect().await;
    }
    s
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secs = env("BENCH_SECONDS", 5);
    let conc = env("BENCH_CONCURRENCY", 16);
    let devices = env("BENCH_DEVICES", 1000);
    let dir = tempfile::tempdir().expect("tempdir");
    register(dir.path(), devices.max(2 * conc), "pw");
    // The per-device rate limit (50/s by default, shared by MQTT and QUIC) would be what is
    // measured otherwise.
    let cfg = dir.path().join("edgecar.yaml");
    std::fs::write(
        &cfg,
        "mqtt:\n  rateLimit:\n    messagesPerSecond: 1000000\n    burst: 1000000\n",
    )
    .expect("config");
    let cfg = cfg.to_str().expect("utf-8 path");
    let args = ["--quic-port", "0", "--log-level", "warn", "--config", cfg];
    if env("BENCH_MEMORY_ONLY", 0) == 1 {
        memory(dir.path(), &args, devices).await;
        return;
    }
    let ec = Edgecar::start(dir.path(), &args);
    println!("## QUIC vs MQTT device requests ({conc} devices, {secs}s each)\n");
    header();
    let mqtt = requests(clients(&ec, false, conc, 0).await, secs).await;
    row("MQTT state.get round trip", &mqtt);
    let quic = requests(clients(&ec, true, conc, conc).await, secs).await;
    row("QUIC state.get round trip", &quic);
    let q_tel = telemetry(clients(&ec, true, conc, conc).await, secs).await;
    row("QUIC telemetry, each until stored", &q_tel);
    let m_tel = telemetry(clients(&ec, false, conc, 0).await, secs).await;
    row("MQTT telemetry, QoS 1 sent", &m_tel);
    println!(
        "\nQUIC/MQTT round trip p50: {:.2}x, rate: {:.2}x",
        quic.p50_us as f64 / mqtt.p50_us.max(1) as f64,
        mqtt.ops_per_sec / quic.ops_per_sec.max(1.0)
    );

    drop(ec);
    memory(dir.path(), &args, devices).await;
}

/// Memory per idle device, QUIC and MQTT, each on a fresh daemon (after a load its heap would
/// hide the devices): the RSS a tenth of the devices adds, then what the other nine tenths add,
/// per device. The first tenth pays for the code and tables a transport's first devices bring
/// in, once; the rest is what one more idle device costs.
async fn memory(dir: &Path, args: &[&str], devices: u64) {
    println!("\n## Memory per idle device ({devices} devices, fresh daemon each)\n");
    println!(
        "| transport | RSS before | with {} | with {devices} | per device, first tenth | **per device, the rest** |",
        devices / 10
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let hold = env("BENCH_HOLD_SECONDS", 0);
    let only = std::env::var("BENCH_TRANSPORT").unwrap_or_default();
    for quic in [true, false] {
        if !only.is_empty() && only != if quic { "quic" } else { "mqtt" } {
            continue;
        }
        let ec = Edgecar::start(dir, args);
        // After the start-up code is handed back (2 s after READY, gateway/src/memory.rs), so
        // that its release is not counted against the devices.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let before = proc_kib(ec.pid(), "VmRSS");
        let warm = (devices / 10).max(1);
        let mut idle = clients(&ec, quic, warm, 0).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let first = proc_kib(ec.pid(), "VmRSS");
        idle.extend(clients(&ec, quic, devices.saturating_sub(warm), warm).await);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let all = proc_kib(ec.pid(), "VmRSS");
        let per = |a: u64, b: u64, n: u64| a.saturating_sub(b) as f64 / n.max(1) as f64;
        println!(
            "| {} | {before} KiB | {first} KiB | {all} KiB | {:.1} KiB | **{:.1} KiB** |",
            if quic { "QUIC" } else { "MQTT" },
            per(first, before, warm),
            per(all, first, devices.saturating_sub(warm)),
        );
        tokio::time::sleep(Duration::from_secs(hold)).await;
        drop(idle);
    }
}
