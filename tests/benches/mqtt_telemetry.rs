//! Benchmark: device telemetry ingest over MQTT at 1,000 and 10,000 connected devices, against the
//! real release `edgecar` (every reading on disk before its PUBACK) with `mosquitto` measured in
//! the same run as the reference for what a broker alone does.
//!
//! For each device count N, against each server in turn:
//! - **connect**: N simulated devices log in (64 at a time) and subscribe to their reply tree
//!   (`edgecar/v1/<id>/res/#`, where edgecar would report a refused reading); RSS idle-connected.
//! - **steady**: every device publishes one QoS 1 reading per `BENCH_PERIOD_MS` (offered load
//!   N / period), for `BENCH_SECONDS`: PUBACK latency at a fixed rate.
//! - **saturate**: every device keeps `BENCH_WINDOW` QoS 1 readings unacknowledged, as fast as
//!   PUBACKs come, for `BENCH_SECONDS`: the most the server sustains. Ack latency, RSS, CPU time.
//!
//! edgecar stores telemetry in its default durable `pubsub.sled` queue, topic `telemetry`, which is
//! kept without a consumer (no app is configured); the queue bounds are raised so that it never
//! refuses, and the per-device rate limit is lifted (it would measure itself). Afterwards edgecar
//! is killed with SIGKILL and the queue's sled tree is counted: every acknowledged reading must be
//! there. mosquitto runs with `persistence false` and no subscriber to `telemetry`: it
//! acknowledges and discards, which is the ceiling of broker ingest, not a durable one.
//!
//! Devices are registered by writing `devices.yaml` directly. PBKDF2 at edgecar's default 100,000
//! iterations costs ~15 ms of CPU per login, so the bulk uses hashes of `BENCH_PBKDF2_ITERATIONS`
//! (default 1,000; the iteration count is stored per hash) and a separate sample of 64 devices
//! registered by `edgecar device add` measures what logins cost at the default.
//!
//! edgecar runs with the environment of `systemd/edgecar.service` (its `Environment=` lines: the
//! glibc malloc settings), so the figures are those of the service as shipped;
//! `BENCH_PLAIN_ENV=1` leaves them out.
//!
//! Knobs: BENCH_DEVICES (default `1000,10000`), BENCH_SECONDS (10), BENCH_PERIOD_MS (1000),
//! BENCH_WINDOW (1, at most `mqtt.maxInflight` = 16), BENCH_PAYLOAD (bytes, 64),
//! BENCH_PBKDF2_ITERATIONS (1000), BENCH_LINGER (edgecar's `devices.telemetryLinger`, e.g. `0`
//! or `5ms`; its default when unset). Needs `ulimit -n` ≥ N + 500 (`scripts/bench.sh` raises it).
//! Run with `scripts/bench.sh mqtt_telemetry`.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use edgecar_tests::bench::{cpu_seconds, open_files_limit, proc_kib};
use edgecar_tests::mqtt::{add_device, packet, publish_packet};
use edgecar_tests::{Edgecar, MosquittoServer, write_component};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Logins in progress at once (edgecar drops connections beyond 256 still handshaking; at 128,
/// connecting to mosquitto took a second more, as if some SYNs waited for their retransmit).
const CONNECTING: usize = 64;
/// Source addresses 127.0.0.2.. the devices connect from, so ephemeral ports never run out.
const SOURCES: u8 = 16;
/// How long a phase may wait for its last PUBACKs after it ends.
const DRAIN: Duration = Duration::from_secs(60);
/// Devices in the sample that logs in with edgecar's default PBKDF2 cost.
const LOGIN_SAMPLE: usize = 64;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn string(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Splits one whole packet off the front of `buf`: (first byte, body).
fn take_packet(buf: &mut BytesMut) -> Option<(u8, BytesMut)> {
    let (mut len, mut i) = (0usize, 1);
    loop {
        let b = *buf.get(i)?;
        len |= usize::from(b & 0x7f) << (7 * (i - 1));
        if b & 0x80 == 0 {
            break;
        }
        i += 1;
        assert!(i <= 4, "malformed remaining length from the server");
    }
    if buf.len() < i + 1 + len {
        return None;
    }
    let first = buf[0];
    buf.advance(i + 1);
    Some((first, buf.split_to(len)))
}

/// Reads until one whole packet is buffered.
async fn read_packet(s: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<(u8, BytesMut)> {
    loop {
        if let Some(p) = take_packet(buf) {
            return Ok(p);
        }
        if s.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// One simulated device: connects from `127.0.0.<2 + i % SOURCES>`, logs in (MQTT 3.1.1, clean
/// session, keep-alive 600 s) and subscribes to its reply tree.
async fn device(port: u16, i: usize, id: &str, password: &str) -> std::io::Result<TcpStream> {
    let src = Ipv4Addr::new(127, 0, 0, 2 + (i % usize::from(SOURCES)) as u8);
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    let mut s = sock
        .connect(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
        .await?;
    s.set_nodelay(true)?;
    let mut body = Vec::new();
    string("MQTT", &mut body);
    body.push(4);
    body.push(0b1100_0010);
    body.extend_from_slice(&600u16.to_be_bytes());
    string(id, &mut body);
    string(id, &mut body);
    string(password, &mut body);
    s.write_all(&packet(0x10, &body)).await?;
    let mut buf = BytesMut::with_capacity(64);
    let (first, b) = read_packet(&mut s, &mut buf).await?;
    if first != 0x20 || b.get(1) != Some(&0) {
        return Err(std::io::Error::other(format!(
            "{id}: CONNACK refused ({first:#x} {b:?})"
        )));
    }
    let mut sub = 1u16.to_be_bytes().to_vec();
    string(&format!("edgecar/v1/{id}/res/#"), &mut sub);
    sub.push(1);
    s.write_all(&packet(0x82, &sub)).await?;
    let (first, b) = read_packet(&mut s, &mut buf).await?;
    if first != 0x90 || b.get(2) != Some(&1) {
        return Err(std::io::Error::other(format!(
            "{id}: SUBACK refused ({first:#x} {b:?})"
        )));
    }
    Ok(s)
}

/// Logs in devices `ids` (with `password`), `parallel` at a time; returns them in order and how
/// long it took.
async fn connect_all(
    port: u16,
    ids: Vec<String>,
    password: &str,
    parallel: usize,
) -> (Vec<TcpStream>, Duration) {
    let started = Instant::now();
    let slots = Arc::new(Semaphore::new(parallel));
    let password: Arc<str> = password.into();
    let mut set = JoinSet::new();
    for (i, id) in ids.into_iter().enumerate() {
        let slot = slots.clone().acquire_owned().await.expect("semaphore");
        let password = password.clone();
        set.spawn(async move {
            let r = device(port, i, &id, &password).await;
            drop(slot);
            (
                i,
                r.unwrap_or_else(|e| panic!("device {id} could not connect: {e}")),
            )
        });
    }
    let mut out: Vec<(usize, TcpStream)> = set.join_all().await;
    out.sort_by_key(|(i, _)| *i);
    (out.into_iter().map(|(_, s)| s).collect(), started.elapsed())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    /// One reading per period per device.
    Steady(Duration),
    /// A window of readings unacknowledged per device, refilled as PUBACKs come.
    Saturate(usize),
}

/// What one device saw in one phase.
#[derive(Default)]
struct Seen {
    /// Readings sent.
    sent: u64,
    /// PUBACKs received before the phase ended.
    acked_in_time: u64,
    /// PUBACKs received in all (the late ones during the drain too).
    acked: u64,
    /// Ticks of a steady load skipped because the device's window was full.
    skipped: u64,
    /// Messages from the server other than PUBACKs (edgecar's error replies).
    errors: u64,
    /// PUBACK latency of each reading acknowledged in time, µs.
    lat_us: Vec<u32>,
}

/// Runs `load` on one device until `end`, then waits (until `end + DRAIN`) for its last PUBACKs.
async fn run_device(
    s: &mut TcpStream,
    topic: String,
    load: Load,
    phase_offset: Duration,
    end: tokio::time::Instant,
    payload_len: usize,
) -> std::io::Result<Seen> {
    let mut seen = Seen::default();
    let window = match load {
        Load::Saturate(w) => w,
        Load::Steady(_) => 16,
    };
    let mut inflight: VecDeque<(u16, Instant)> = VecDeque::with_capacity(window);
    let mut pkid = 0u16;
    let mut seq = 0u64;
    let mut buf = BytesMut::with_capacity(256);
    let mut tick = match load {
        Load::Steady(period) => {
            let mut t =
                tokio::time::interval_at(tokio::time::Instant::now() + phase_offset, period);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            Some(t)
        }
        Load::Saturate(_) => None,
    };
    let (mut rd, mut wr) = s.split();
    let mut out = Vec::with_capacity(window * (payload_len + 64));
    loop {
        let now = tokio::time::Instant::now();
        let running = now < end;
        let mut to_send = 0;
        if running && let Load::Saturate(w) = load {
            to_send = w - inflight.len();
        }
        if !running && inflight.is_empty() {
            break;
        }
        if to_send > 0 {
            out.clear();
            for _ in 0..to_send {
                pkid = pkid.checked_add(1).unwrap_or(1);
                seq += 1;
                out.extend_from_slice(&reading(&topic, pkid, seq, payload_len));
                inflight.push_back((pkid, Instant::now()));
                seen.sent += 1;
            }
            wr.write_all(&out).await?;
        }
        tokio::select! {
            r = rd.read_buf(&mut buf) => {
                if r? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                let arrived = tokio::time::Instant::now();
                while let Some((first, body)) = take_packet(&mut buf) {
                    match first >> 4 {
                        4 => {
                            let id = u16::from_be_bytes([body[0], body[1]]);
                            let Some(pos) = inflight.iter().position(|(p, _)| *p == id) else {
                                continue;
                            };
                            let (_, t) = inflight.remove(pos).expect("position");
                            seen.acked += 1;
                            if arrived <= end {
                                seen.acked_in_time += 1;
                                seen.lat_us.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                            }
                        }
                        3 => {
                            seen.errors += 1;
                            if (first >> 1) & 3 == 1 {
                                let tlen = usize::from(u16::from_be_bytes([body[0], body[1]]));
                                wr.write_all(&packet(0x40, &body[2 + tlen..4 + tlen])).await?;
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ = async { tick.as_mut().expect("steady").tick().await }, if running && tick.is_some() => {
                if inflight.len() < window {
                    pkid = pkid.checked_add(1).unwrap_or(1);
                    seq += 1;
                    inflight.push_back((pkid, Instant::now()));
                    seen.sent += 1;
                    wr.write_all(&reading(&topic, pkid, seq, payload_len)).await?;
                } else {
                    seen.skipped += 1;
                }
            }
            () = tokio::time::sleep_until(end), if running => {}
            () = tokio::time::sleep_until(end + DRAIN), if !running => break,
        }
    }
    Ok(seen)
}

/// A QoS 1 telemetry PUBLISH with a JSON reading padded to `len` bytes.
fn reading(topic: &str, pkid: u16, seq: u64, len: usize) -> Vec<u8> {
    let mut p = format!(r#"{{"seq":{seq},"celsius":21.5,"pad":""#);
    let pad = len.saturating_sub(p.len() + 2);
    p.extend(std::iter::repeat_n('x', pad));
    p.push_str("\"}");
    publish_packet(topic, p.as_bytes(), 1, pkid)
}

/// Figures of one phase against one server.
struct Phase {
    secs: f64,
    sent: u64,
    acked_in_time: u64,
    acked: u64,
    skipped: u64,
    errors: u64,
    p50_us: u32,
    p99_us: u32,
    server_cpu_s: f64,
    rss_kib: u64,
}

impl Phase {
    fn per_sec(&self) -> f64 {
        self.acked_in_time as f64 / self.secs
    }
}

/// Runs `load` on every device for `secs` and collects the figures; the devices stay connected.
async fn phase(
    devices: &mut Vec<(TcpStream, String)>,
    load: Load,
    secs: u64,
    payload_len: usize,
    server_pid: u32,
) -> Phase {
    let n = devices.len() as u32;
    let cpu_before = cpu_seconds(server_pid);
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut set = JoinSet::new();
    for (i, (mut s, id)) in devices.drain(..).enumerate() {
        // Spread a steady load's publishes evenly over the period.
        let offset = match load {
            Load::Steady(p) => p * i as u32 / n,
            Load::Saturate(_) => Duration::ZERO,
        };
        set.spawn(async move {
            let topic = format!("edgecar/v1/{id}/telemetry");
            let r = run_device(&mut s, topic, load, offset, end, payload_len).await;
            (i, s, id, r)
        });
    }
    let mut back = Vec::with_capacity(n as usize);
    let mut all = Vec::new();
    let mut total = Seen::default();
    while let Some(done) = set.join_next().await {
        let (i, s, id, r) = done.expect("device task");
        let seen = r.unwrap_or_else(|e| panic!("device {id} failed: {e}"));
        total.sent += seen.sent;
        total.acked_in_time += seen.acked_in_time;
        total.acked += seen.acked;
        total.skipped += seen.skipped;
        total.errors += seen.errors;
        all.extend(seen.lat_us);
        back.push((i, s, id));
    }
    let cpu = cpu_seconds(server_pid) - cpu_before;
    back.sort_by_key(|(i, _, _)| *i);
    devices.extend(back.into_iter().map(|(_, s, id)| (s, id)));
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Phase {
        secs: secs as f64,
        sent: total.sent,
        acked_in_time: total.acked_in_time,
        acked: total.acked,
        skipped: total.skipped,
        errors: total.errors,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        server_cpu_s: cpu,
        rss_kib: proc_kib(server_pid, "VmRSS"),
    }
}

/// All figures for one server at one device count.
struct Figures {
    connect: Duration,
    rss_start_kib: u64,
    rss_idle_kib: u64,
    steady: Phase,
    saturate: Phase,
    hwm_kib: u64,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Connects `n` devices to `port` and runs both phases; `pid` is the server's.
fn measure(
    rt: &tokio::runtime::Runtime,
    port: u16,
    pid: u32,
    ids: &[String],
    password: &str,
    k: &Knobs,
) -> (Figures, Vec<(TcpStream, String)>) {
    let rss_start_kib = proc_kib(pid, "VmRSS");
    let (streams, connect) = rt.block_on(connect_all(port, ids.to_vec(), password, CONNECTING));
    std::thread::sleep(Duration::from_secs(2));
    let rss_idle_kib = proc_kib(pid, "VmRSS");
    let mut devices: Vec<(TcpStream, String)> = streams.into_iter().zip(ids.to_vec()).collect();
    let steady = rt.block_on(phase(
        &mut devices,
        Load::Steady(Duration::from_millis(k.period_ms)),
        k.secs,
        k.payload,
        pid,
    ));
    let saturate = rt.block_on(phase(
        &mut devices,
        Load::Saturate(k.window),
        k.secs,
        k.payload,
        pid,
    ));
    let f = Figures {
        connect,
        rss_start_kib,
        rss_idle_kib,
        steady,
        saturate,
        hwm_kib: proc_kib(pid, "VmHWM"),
    };
    (f, devices)
}

struct Knobs {
    sizes: Vec<usize>,
    secs: u64,
    period_ms: u64,
    window: usize,
    payload: usize,
    iterations: u32,
    /// `devices.telemetryLinger` for edgecar; its default when unset.
    linger: Option<String>,
}

fn row(server: &str, n: usize, what: &str, p: &Phase) {
    println!(
        "| {server} | {n} | {what} | {:.0} | {} | {} | {:.2} | {} | {} | {} |",
        p.per_sec(),
        p.p50_us,
        p.p99_us,
        p.server_cpu_s,
        p.skipped,
        p.errors,
        p.sent - p.acked,
    );
}

/// The `Environment=` assignments of the shipped systemd unit.
fn unit_env() -> Vec<(String, String)> {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/edgecar.service");
    let text = std::fs::read_to_string(&unit).expect("systemd/edgecar.service");
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Environment="))
        .flat_map(str::split_whitespace)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
        .collect()
}

/// Counts the readings in the telemetry queue's sled tree (edgecar must not be running): a
/// record holds one reading or a batch of them (gateway/src/queue/record.rs).
fn persisted(state: &Path) -> usize {
    let db = sled::Config::new()
        .path(state.join("edgecar.sled"))
        .cache_capacity(8 << 20)
        .open()
        .expect("open edgecar's sled database");
    // The durable queue's tree for pub/sub `pubsub`, topic `telemetry` (gateway/src/queue.rs).
    let tree = db
        .open_tree("queue/pubsub.sled/pubsub/telemetry")
        .expect("queue tree");
    tree.iter()
        .map(|r| {
            let (_, v) = r.expect("read the queue tree");
            // Layout 1: one reading; layout 2: a u32 count of readings follows.
            match v.first() {
                Some(1) => 1,
                Some(2) => u32::from_be_bytes(v[1..5].try_into().expect("count")) as usize,
                other => panic!("unknown queue record layout {other:?}"),
            }
        })
        .sum()
}

fn run_size(rt: &tokio::runtime::Runtime, n: usize, k: &Knobs, env: &[(String, String)]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path();
    // A real `edgecar device add` registers the login sample's hash at the default cost.
    let sample_pw = add_device(state, "sample");
    let registry = state.join("devices.yaml");
    let text = std::fs::read_to_string(&registry).expect("registry");
    let sample_hash = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("passwordHash: "))
        .expect("passwordHash")
        .to_owned();
    let password = "bench-password-0123456789abcdef";
    let salt = format!("{:016x}", std::process::id() as u64 * 7919 + n as u64);
    let hash = edgecar_tests::mqtt::registry_hash(password, k.iterations, salt.as_bytes());
    let ids: Vec<String> = (0..n).map(|i| format!("d{i}")).collect();
    let sample: Vec<String> = (0..LOGIN_SAMPLE).map(|i| format!("s{i}")).collect();
    let mut yaml = String::with_capacity(n * 120);
    yaml.push_str("devices:\n");
    for id in &ids {
        yaml.push_str(&format!("- id: {id}\n  passwordHash: {hash}\n"));
    }
    for id in &sample {
        yaml.push_str(&format!("- id: {id}\n  passwordHash: {sample_hash}\n"));
    }
    std::fs::write(&registry, yaml).expect("write registry");

    // mosquitto first: nothing of edgecar is running yet.
    let mosq = MosquittoServer::start_with("set_tcp_nodelay true");
    let (m, conns) = measure(rt, mosq.port, mosq.pid(), &ids, password, k);
    drop(conns);
    drop(mosq);

    let res = tempfile::tempdir().expect("tempdir");
    // The default durable pub/sub, with bounds that never refuse during the run.
    write_component(
        res.path(),
        "pubsub",
        "pubsub.sled",
        &[("maxMessages", "100000000"), ("maxBytes", "64Gi")],
    );
    let cfg = state.join("edgecar.yaml");
    let mut yaml = "mqtt:\n  maxConnections: 100000\n  rateLimit:\n    messagesPerSecond: 1000000\n    burst: 1000000\n".to_owned();
    if let Some(linger) = &k.linger {
        yaml.push_str(&format!("devices:\n  telemetryLinger: {linger}\n"));
    }
    std::fs::write(&cfg, yaml).expect("write config");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut ec = Edgecar::start_with_env(
        state,
        &[
            "--config",
            cfg.to_str().expect("utf-8 path"),
            "--resources-path",
            res.path().to_str().expect("utf-8 path"),
        ],
        &env,
    );
    std::thread::sleep(Duration::from_secs(1));
    let (e, conns) = measure(rt, ec.mqtt_port, ec.pid(), &ids, password, k);

    // Logins at the default PBKDF2 cost: one after another, then 16 at a time.
    let (one_by_one, seq_took) = rt.block_on(connect_all(
        ec.mqtt_port,
        sample[..LOGIN_SAMPLE / 4].to_vec(),
        &sample_pw,
        1,
    ));
    drop(one_by_one);
    let (parallel, par_took) =
        rt.block_on(connect_all(ec.mqtt_port, sample.clone(), &sample_pw, 16));
    drop(parallel);
    drop(conns);
    ec.kill9();
    let on_disk = persisted(state);
    let acked = (e.steady.acked + e.saturate.acked) as usize;

    println!("\n### {n} devices\n");
    println!(
        "| server | devices | phase | acked/s | p50 µs | p99 µs | server CPU s | skipped | errors | unacked |"
    );
    println!("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let steady = format!("steady 1/{} ms", k.period_ms);
    let sat = format!("saturate, window {}", k.window);
    row("mosquitto", n, &steady, &m.steady);
    row("edgecar", n, &steady, &e.steady);
    row("mosquitto", n, &sat, &m.saturate);
    row("edgecar", n, &sat, &e.saturate);
    println!();
    println!("| figure | mosquitto | edgecar |");
    println!("| --- | ---: | ---: |");
    println!(
        "| connect {n} devices ({CONNECTING} at a time) | {:.2} s | {:.2} s |",
        m.connect.as_secs_f64(),
        e.connect.as_secs_f64()
    );
    for (what, a, b) in [
        ("RSS before devices", m.rss_start_kib, e.rss_start_kib),
        ("RSS idle, all connected", m.rss_idle_kib, e.rss_idle_kib),
        ("RSS after steady", m.steady.rss_kib, e.steady.rss_kib),
        ("RSS after saturate", m.saturate.rss_kib, e.saturate.rss_kib),
        ("peak RSS (VmHWM)", m.hwm_kib, e.hwm_kib),
    ] {
        println!("| {what} | {:.1} MiB | {:.1} MiB |", mib(a), mib(b));
    }
    println!(
        "| RSS per connected idle device | {:.2} KiB | {:.2} KiB |",
        m.rss_idle_kib.saturating_sub(m.rss_start_kib) as f64 / n as f64,
        e.rss_idle_kib.saturating_sub(e.rss_start_kib) as f64 / n as f64
    );
    println!(
        "| server CPU µs per acked reading (saturate) | {:.1} | {:.1} |",
        m.saturate.server_cpu_s * 1e6 / m.saturate.acked.max(1) as f64,
        e.saturate.server_cpu_s * 1e6 / e.saturate.acked.max(1) as f64
    );
    println!(
        "\nedgecar / mosquitto acked readings/s: steady {:.2}, saturate **{:.2}**",
        e.steady.per_sec() / m.steady.per_sec(),
        e.saturate.per_sec() / m.saturate.per_sec()
    );
    println!(
        "persisted: {on_disk} readings in the telemetry queue after SIGKILL; {acked} acknowledged, {} sent",
        e.steady.sent + e.saturate.sent
    );
    println!(
        "logins at the default 100,000 PBKDF2 iterations: {:.1} ms each one after another; {:.0}/s with 16 connecting at once ({:.0} s for {n} devices)",
        seq_took.as_secs_f64() * 1000.0 / (LOGIN_SAMPLE / 4) as f64,
        LOGIN_SAMPLE as f64 / par_took.as_secs_f64(),
        n as f64 * par_took.as_secs_f64() / LOGIN_SAMPLE as f64
    );
    assert!(
        on_disk >= acked,
        "{} acknowledged readings are not on disk",
        acked - on_disk
    );
}

fn main() {
    let k = Knobs {
        sizes: std::env::var("BENCH_DEVICES")
            .unwrap_or_else(|_| "1000,10000".into())
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .expect("BENCH_DEVICES: numbers, comma-separated")
            })
            .collect(),
        secs: env("BENCH_SECONDS", 10),
        period_ms: env("BENCH_PERIOD_MS", 1000).max(1),
        window: env("BENCH_WINDOW", 1).clamp(1, 16) as usize,
        payload: env("BENCH_PAYLOAD", 64) as usize,
        iterations: env("BENCH_PBKDF2_ITERATIONS", 1000).max(1) as u32,
        linger: std::env::var("BENCH_LINGER").ok().filter(|v| !v.is_empty()),
    };
    let most = k.sizes.iter().copied().max().unwrap_or(0) as u64;
    let limit = open_files_limit();
    assert!(
        limit >= most + 500,
        "open files limit {limit} is too low for {most} devices: raise it (ulimit -n {})",
        most + 500
    );
    // One thread: the load generator takes at most one of the machine's cores.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "MQTT telemetry ingest: QoS 1, {} byte JSON readings, {} s per phase; steady = 1 reading per device per {} ms; saturate = {} unacknowledged per device; PBKDF2 {} iterations for the bulk",
        k.payload, k.secs, k.period_ms, k.window, k.iterations
    );
    println!(
        "edgecar devices.telemetryLinger: {}",
        k.linger.as_deref().unwrap_or("default")
    );
    let env = if std::env::var_os("BENCH_PLAIN_ENV").is_some() {
        Vec::new()
    } else {
        unit_env()
    };
    let shown: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "edgecar environment (systemd/edgecar.service): {}",
        if shown.is_empty() {
            "none".into()
        } else {
            shown.join(" ")
        }
    );
    for &n in &k.sizes {
        run_size(&rt, n, &k, &env);
    }
}
