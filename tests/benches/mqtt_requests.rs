//! Benchmark: device requests over MQTT against the real release `edgecar`, with `mosquitto`
//! measured in the same run as the reference.
//!
//! Scenario: C connections, each sending a QoS 1 publish and waiting for the message that answers
//! it, back to back, for S seconds. For edgecar the publish is a `state.get` request and the answer
//! its reply (through the whole request path: session, protocol, policy, state block, sled); for
//! mosquitto the client is subscribed to its own topic, so the answer is the broker delivering the
//! publish back (one message in, one out: the least a broker round trip can do). Then: RSS of
//! edgecar with N idle authenticated devices, per device. Last, external broker mode: the same
//! devices log in to a mosquitto with a password file and edgecar's printed ACL, and edgecar
//! serves them through it; the reference is that same secured mosquitto's own round trip.
//! Knobs: BENCH_SECONDS (default 5), BENCH_CONCURRENCY (default 16), BENCH_DEVICES (default 1000),
//! BENCH_BROKER (default 1; 0 skips external broker mode).
//! Run with `scripts/bench.sh`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edgecar_tests::mqtt::{add_device, mosquitto_passwd};
use edgecar_tests::{Edgecar, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![first];
    let mut n = body.len();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        p.push(b);
        if n == 0 {
            break;
        }
    }
    p.extend_from_slice(body);
    p
}

fn string(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A minimal async MQTT 3.1.1 client: enough to measure, nothing more.
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(port: u16, client_id: &str, login: Option<(&str, &str)>) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.set_nodelay(true).unwrap();
        let mut c = Client { s, buf: Vec::new() };
        let mut body = Vec::new();
        string("MQTT", &mut body);
        body.push(4);
        body.push(if login.is_some() { 0b1100_0010 } else { 0b10 });
        body.extend_from_slice(&600u16.to_be_bytes());
        string(client_id, &mut body);
        if let Some((u, p)) = login {
            string(u, &mut body);
            string(p, &mut body);
        }
        c.s.write_all(&packet(0x10, &body)).await.unwrap();
        let (t, b) = c.read().await;
        assert_eq!((t >> 4, b[1]), (2, 0), "CONNACK refused");
        c
    }

    async fn subscribe(&mut self, filter: &str) {
        let mut body = 1u16.to_be_bytes().to_vec();
        string(filter, &mut body);
        body.push(1);
        self.s.write_all(&packet(0x82, &body)).await.unwrap();
        while self.read().await.0 >> 4 != 9 {}
    }

    async fn read(&mut self) -> (u8, Vec<u8>) {
        loop {
            if self.buf.len() >= 2 {
                let (mut len, mut i) = (0usize, 1);
                let mut complete = false;
                while i < self.buf.len() && i <= 4 {
                    len |= usize::from(self.buf[i] & 0x7f) << (7 * (i - 1));
                    if self.buf[i] & 0x80 == 0 {
                        complete = true;
                        break;
                    }
                    i += 1;
                }
                if complete && self.buf.len() > i + len {
                    let first = self.buf[0];
                    let body = self.buf[i + 1..i + 1 + len].to_vec();
                    self.buf.drain(..i + 1 + len);
                    return (first, body);
                }
            }
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk).await.expect("read");
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Publishes QoS 1 and waits for both its PUBACK and one incoming PUBLISH (acknowledged).
    async fn round_trip(&mut self, topic: &str, pkid: u16) {
        let mut body = Vec::new();
        string(topic, &mut body);
        body.extend_from_slice(&pkid.to_be_bytes());
        self.s.write_all(&packet(0x32, &body)).await.unwrap();
        let (mut acked, mut answered) = (false, false);
        while !(acked && answered) {
            let (first, b) = self.read().await;
            match first >> 4 {
                4 => acked = true,
                3 => {
                    answered = true;
                    if (first >> 1) & 3 == 1 {
                        let tlen = usize::from(u16::from_be_bytes([b[0], b[1]]));
                        let id = [b[2 + tlen], b[3 + tlen]];
                        self.s.write_all(&packet(0x40, &id)).await.unwrap();
                    }
                }
                _ => {}
            }
        }
    }
}

struct Stats {
    per_sec: f64,
    p50_us: u128,
    p99_us: u128,
}

async fn load(clients: Vec<(Client, String)>, secs: u64) -> Stats {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|(mut c, topic)| {
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut pkid = 1u16;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    c.round_trip(&topic, pkid).await;
                    lat.push(t.elapsed().as_micros());
                    pkid = pkid.checked_add(1).unwrap_or(1);
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    Stats {
        per_sec: all.len() as f64 / secs as f64,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
    }
}

fn start_mosquitto(dir: &Path, conf_lines: &str) -> (Child, u16) {
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\npersistence false\n{conf_lines}"),
    )
    .unwrap();
    let mut child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto not found: install mosquitto");
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (child, port);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("mosquitto did not start");
}

fn main() {
    let secs = env("BENCH_SECONDS", 5);
    let conc = env("BENCH_CONCURRENCY", 16) as usize;
    let idle = env("BENCH_DEVICES", 1000) as usize;
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();

    // One password hash for every device, written once: registering thousands through the CLI
    // would spend minutes in PBKDF2 without measuring anything.
    let pw = add_device(dir.path(), "d0");
    let registry = dir.path().join("devices.yaml");
    let text = std::fs::read_to_string(&registry).unwrap();
    let hash = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("passwordHash: "))
        .unwrap()
        .to_owned();
    let n = conc.max(idle);
    let mut yaml = String::from("devices:\n");
    for i in 0..n {
        yaml.push_str(&format!("- id: d{i}\n  passwordHash: {hash}\n"));
    }
    std::fs::write(&registry, &yaml).unwrap();

    let (mut mosq, mport) = start_mosquitto(dir.path(), "allow_anonymous true\n");
    // The per-device rate limit would measure itself; lift it.
    let cfg = dir.path().join("edgecar.yaml");
    std::fs::write(
        &cfg,
        "mqtt:\n  maxConnections: 100000\n  rateLimit:\n    messagesPerSecond: 1000000\n    burst: 1000000\n",
    )
    .unwrap();
    let ec = Edgecar::start(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let eport = ec.mqtt_port;
    println!("MQTT request round trips: {conc} connections, {secs} s each, QoS 1\n");
    println!("| scenario | round trips/s | p50 µs | p99 µs |");
    println!("| --- | ---: | ---: | ---: |");
    let floor = rt.block_on(async {
        let mut clients = Vec::new();
        for i in 0..conc {
            let topic = format!("bench/{i}");
            let mut c = Client::connect(mport, &format!("m{i}"), None).await;
            c.subscribe(&topic).await;
            clients.push((c, topic));
        }
        load(clients, secs).await
    });
    println!(
        "| mosquitto: publish, delivered back (floor) | {:.0} | {} | {} |",
        floor.per_sec, floor.p50_us, floor.p99_us
    );
    let _ = mosq.kill();
    let _ = mosq.wait();
    let ours = rt.block_on(async {
        let mut clients = Vec::new();
        for i in 0..conc {
            let id = format!("d{i}");
            let mut c = Client::connect(eport, &id, Some((&id, &pw))).await;
            c.subscribe(&format!("edgecar/v1/{id}/res/#")).await;
            clients.push((c, format!("edgecar/v1/{id}/req/state.get/r?key=k")));
        }
        load(clients, secs).await
    });
    println!(
        "| edgecar: state.get request, reply | {:.0} | {} | {} |",
        ours.per_sec, ours.p50_us, ours.p99_us
    );
    println!(
        "\nedgecar / mosquitto round trips: {:.2}",
        ours.per_sec / floor.per_sec
    );

    std::thread::sleep(Duration::from_millis(500));
    let before = ec.rss_kib();
    let started = Instant::now();
    let conns = rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..idle {
            let id = format!("d{i}");
            v.push(Client::connect(eport, &format!("idle{i}"), Some((&id, &pw))).await);
        }
        v
    });
    let took = started.elapsed();
    println!(
        "logins: {idle} devices connected one after another in {:.1} s ({:.1} ms each, PBKDF2 included)",
        took.as_secs_f64(),
        took.as_secs_f64() * 1000.0 / idle as f64
    );
    std::thread::sleep(Duration::from_millis(500));
    let after = ec.rss_kib();
    println!(
        "RSS: {before} KiB before, {after} KiB with {idle} more idle devices connected: {:.1} KiB per device",
        (after.saturating_sub(before)) as f64 / idle as f64
    );
    drop(conns);
    drop(ec);
    if env("BENCH_BROKER", 1) != 0 {
        external_broker(&rt, &yaml, &pw, conc, secs);
    }
}

/// External broker mode: devices `d0..` on a secured mosquitto, edgecar serving them through it.
fn external_broker(rt: &tokio::runtime::Runtime, registry: &str, pw: &str, conc: usize, secs: u64) {
    const GATEWAY_PW: &str = "gateway-bench-pw";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("devices.yaml"), registry).unwrap();
    let acl = Command::new(edgecar_tests::edgecar_bin())
        .args(["device", "acl", "--user", "gateway", "--state-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(acl.status.success());
    let acl_file = dir.path().join("edgecar.acl");
    std::fs::write(&acl_file, acl.stdout).unwrap();
    let passwd = dir.path().join("edgecar.passwd");
    mosquitto_passwd(&passwd, "gateway", GATEWAY_PW);
    for i in 0..conc {
        mosquitto_passwd(&passwd, &format!("d{i}"), pw);
    }
    let (mut mosq, mport) = start_mosquitto(
        dir.path(),
        &format!(
            "allow_anonymous false\nset_tcp_nodelay true\npassword_file {}\nacl_file {}\n",
            passwd.display(),
            acl_file.display()
        ),
    );
    let floor = rt.block_on(async {
        let mut clients = Vec::new();
        for i in 0..conc {
            let (id, topic) = (format!("d{i}"), format!("edgecar/v1/d{i}/echo"));
            let mut c = Client::connect(mport, &format!("f{i}"), Some((&id, pw))).await;
            c.subscribe(&topic).await;
            clients.push((c, topic));
        }
        load(clients, secs).await
    });
    let cfg = dir.path().join("edgecar.yaml");
    std::fs::write(
        &cfg,
        format!(
            "mqtt:\n  mode: external\n  broker:\n    url: mqtt://127.0.0.1:{mport}\n    \
             username: gateway\n    password: {GATEWAY_PW}\n"
        ),
    )
    .unwrap();
    let ec = Edgecar::start(dir.path(), &["--config", cfg.to_str().unwrap()]);
    edgecar_tests::eventually(Duration::from_secs(10), "edgecar to serve", || {
        ec.log
            .lock()
            .unwrap()
            .contains("serving devices through the MQTT broker")
            .then_some(())
    });
    let ours = rt.block_on(async {
        let mut clients = Vec::new();
        for i in 0..conc {
            let id = format!("d{i}");
            let mut c = Client::connect(mport, &format!("e{i}"), Some((&id, pw))).await;
            c.subscribe(&format!("edgecar/v1/{id}/res/#")).await;
            clients.push((c, format!("edgecar/v1/{id}/req/state.get/r?key=k")));
        }
        load(clients, secs).await
    });
    println!(
        "\nExternal broker mode: {conc} devices on mosquitto (password file, edgecar's ACL)\n"
    );
    println!("| scenario | round trips/s | p50 µs | p99 µs |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| the same mosquitto: publish, delivered back (floor) | {:.0} | {} | {} |",
        floor.per_sec, floor.p50_us, floor.p99_us
    );
    println!(
        "| edgecar through mosquitto: state.get request, reply | {:.0} | {} | {} |",
        ours.per_sec, ours.p50_us, ours.p99_us
    );
    println!(
        "\nedgecar through the broker / the broker alone: {:.2}",
        ours.per_sec / floor.per_sec
    );
    let _ = mosq.kill();
    let _ = mosq.wait();
}
