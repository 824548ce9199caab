//! Benchmark (not a test): how long N devices (default 10,000; `BENCH_DEVICES`) take to log back
//! in after edgecar restarts, with the verified-login cache in a runtime directory as systemd
//! gives the service (`RUNTIME_DIRECTORY`), against the cold login of the same devices in the same
//! run (every login a PBKDF2 check at the default 100,000 iterations) as the reference.
//!
//! Every device has the same password and stored hash (hashing 10,000 distinct ones at full cost
//! would take the benchmark minutes of its own); the gateway still checks each cold login at full
//! cost. Devices connect `CONNECTING` at a time, each logging in (MQTT 3.1.1 CONNECT → CONNACK)
//! and staying connected until all are in, as after a restart.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use edgecar_tests::Edgecar;
use edgecar_tests::bench::open_files_limit;
use edgecar_tests::mqtt::packet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Logins in progress at once.
const CONNECTING: usize = 16;
/// Source addresses 127.0.0.2.. the devices connect from, so ephemeral ports never run out.
const SOURCES: u8 = 16;
/// edgecar's default PBKDF2 cost.
const ITERATIONS: u32 = 100_000;

fn string(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

async fn login(port: u16, i: usize, id: &str, password: &str) -> std::io::Result<TcpStream> {
    let src = Ipv4Addr::new(127, 0, 0, 2 + (i % usize::from(SOURCES)) as u8);
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    let mut s = sock
        .connect(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
        .await?;
    let mut body = Vec::new();
    string("MQTT", &mut body);
    body.push(4);
    body.push(0b1100_0010);
    body.extend_from_slice(&600u16.to_be_bytes());
    string(id, &mut body);
    string(id, &mut body);
    string(password, &mut body);
    s.write_all(&packet(0x10, &body)).await?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await?;
    if ack[0] != 0x20 || ack[3] != 0 {
        return Err(std::io::Error::other(format!("{id}: CONNACK {ack:?}")));
    }
    Ok(s)
}

async fn login_all(port: u16, n: usize, password: &str) -> (Vec<TcpStream>, Duration) {
    let started = Instant::now();
    let slots = Arc::new(Semaphore::new(CONNECTING));
    let password: Arc<str> = password.into();
    let mut set = JoinSet::new();
    for i in 0..n {
        let slot = slots.clone().acquire_owned().await.expect("semaphore");
        let password = password.clone();
        set.spawn(async move {
            let id = format!("d{i}");
            let r = login(port, i, &id, &password).await;
            drop(slot);
            r.unwrap_or_else(|e| panic!("device {id} could not log in: {e}"))
        });
    }
    let conns = set.join_all().await;
    (conns, started.elapsed())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("BENCH_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let limit = open_files_limit();
    assert!(
        limit >= n as u64 + 256,
        "open files limit {limit} is too low for {n} devices: run through scripts/bench.sh (it raises it)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let run = tempfile::tempdir().expect("tempdir");
    let password = "bench-password-0123456789abcdef";
    let salt = format!("{:016x}", std::process::id());
    let mut out = [0u8; 32];
    let t = Instant::now();
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(ITERATIONS).expect("iterations"),
        salt.as_bytes(),
        password.as_bytes(),
        &mut out,
    );
    let one_hash = t.elapsed();
    let hash = format!(
        "$pbkdf2-sha256$i={ITERATIONS}${}${}",
        STANDARD_NO_PAD.encode(salt.as_bytes()),
        STANDARD_NO_PAD.encode(out)
    );
    let mut yaml = String::from("devices:\n");
    for i in 0..n {
        yaml.push_str(&format!("- id: d{i}\n  passwordHash: {hash}\n"));
    }
    std::fs::write(dir.path().join("devices.yaml"), yaml).expect("registry");
    let env = [("RUNTIME_DIRECTORY", run.path().to_str().expect("utf-8"))];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("machine load before: {}", load().trim());
    println!("one PBKDF2 check ({ITERATIONS} iterations) in this process: {one_hash:?}");

    let mut ec = Edgecar::start_with_env(dir.path(), &[], &env);
    let (conns, cold) = rt.block_on(login_all(ec.mqtt_port, n, password));
    drop(conns);
    println!(
        "cold (first login since boot, PBKDF2 each): {n} devices in {:.1} s ({:.0} logins/s)",
        cold.as_secs_f64(),
        n as f64 / cold.as_secs_f64()
    );
    assert!(ec.terminate().success());

    let ec = Edgecar::start_with_env(dir.path(), &[], &env);
    let (conns, warm) = rt.block_on(login_all(ec.mqtt_port, n, password));
    println!(
        "after a restart (login cache in RUNTIME_DIRECTORY): {n} devices in {:.2} s ({:.0} logins/s)",
        warm.as_secs_f64(),
        n as f64 / warm.as_secs_f64()
    );
    println!("machine load after: {}", load().trim());
    drop(conns);
    drop(ec);
}
