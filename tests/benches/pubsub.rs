//! Benchmark: publish → delivery on the durable local pub/sub (`pubsub.sled`), against the real
//! release `edgecar` binary and a small hyper app that receives the events, with mosquitto driven
//! by `mosquitto_pub`/`mosquitto_sub` (QoS 1) measured in the same run as the reference.
//!
//! Two scenarios for each system:
//! - **backlog throughput**: BENCH_MESSAGES events (default 20000) published as fast as
//!   BENCH_CONCURRENCY publishers (default 32) can; figure = events / (last delivery − first
//!   publish).
//! - **latency at a fixed rate**: BENCH_RATE events/s (default 1000) for BENCH_SECONDS (default 5);
//!   p50 and p99 of publish → delivery, from timestamps carried in the events (one machine, one
//!   clock).
//!
//! Run with `scripts/bench.sh` (builds the release binary first).

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use edgecar_tests::{Edgecar, MosquittoServer, eventually, write_component};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// What the receiving side saw: publish → delivery latencies in µs, and when the last one came.
#[derive(Default)]
struct Seen {
    lat_us: Mutex<Vec<u64>>,
    count: AtomicUsize,
    last: Mutex<Option<Instant>>,
}

impl Seen {
    fn record(&self, sent_ns: u64) {
        let lat = now_ns().saturating_sub(sent_ns) / 1000;
        self.lat_us.lock().unwrap().push(lat);
        *self.last.lock().unwrap() = Some(Instant::now());
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    fn reset(&self) {
        self.lat_us.lock().unwrap().clear();
        self.count.store(0, Ordering::SeqCst);
        *self.last.lock().unwrap() = None;
    }

    fn wait(&self, n: usize) {
        eventually(Duration::from_secs(120), &format!("{n} deliveries"), || {
            (self.count.load(Ordering::SeqCst) >= n).then_some(())
        });
    }

    fn percentiles(&self) -> (u64, u64) {
        let mut v = self.lat_us.lock().unwrap().clone();
        v.sort_unstable();
        let pct = |p: f64| {
            v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        (pct(0.50), pct(0.99))
    }
}

/// The app behind edgecar: subscribes to `bench` and records every delivery.
async fn app(listener: TcpListener, seen: Arc<Seen>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let seen = seen.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let seen = seen.clone();
                async move {
                    if req.uri().path() == "/dapr/subscribe" {
                        let subs = r#"[{"pubsubname":"pubsub","topic":"bench","route":"/bench"}]"#;
                        return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                            subs.as_bytes(),
                        ))));
                    }
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|c| c.to_bytes())
                        .unwrap_or_default();
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
                        && let Some(t) = v["data"]["t"].as_u64()
                    {
                        seen.record(t);
                    }
                    Ok(Response::new(Full::new(Bytes::new())))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// One keep-alive connection publishing `count` events, one every `every` (or back to back).
async fn publisher(port: u16, count: usize, every: Option<Duration>) -> usize {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut tick = every.map(|e| {
        let mut i = tokio::time::interval(e);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        i
    });
    let mut failed = 0;
    for _ in 0..count {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        let body = format!(r#"{{"t":{},"sensor":"line-3","value":21.5}}"#, now_ns());
        let req = Request::builder()
            .method("POST")
            .uri("/v1.0/publish/pubsub/bench")
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        match tx.send_request(req).await {
            Ok(resp) => {
                if resp.status() != 204 {
                    failed += 1;
                }
                let _ = resp.into_body().collect().await;
            }
            Err(_) => failed += 1,
        }
    }
    failed
}

/// Publishes `total` events from `conc` publishers; returns failures.
async fn publish_all(port: u16, total: usize, conc: usize, rate: Option<u64>) -> usize {
    let per = total / conc;
    let every = rate.map(|r| Duration::from_secs_f64(conc as f64 / r as f64));
    let tasks: Vec<_> = (0..conc)
        .map(|_| tokio::spawn(publisher(port, per, every)))
        .collect();
    let mut failed = 0;
    for t in tasks {
        failed += t.await.expect("publisher");
    }
    failed
}

/// mosquitto_sub on `bench`, recording each message's latency, until `n` messages.
fn mqtt_subscriber(broker: &MosquittoServer, n: usize, seen: Arc<Seen>) -> std::process::Child {
    let mut child = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-q",
            "1",
            "-t",
            "bench",
        ])
        .args(["-C", &n.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    let out = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(t) = line
                .split("\"t\":")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .and_then(|t| t.parse::<u64>().ok())
            {
                seen.record(t);
            }
        }
    });
    child
}

/// mosquitto_pub -l: one message per line written to its stdin, `n` lines, paced if `rate`.
fn mqtt_publish(broker: &MosquittoServer, n: usize, rate: Option<u64>) {
    let mut child = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-q",
            "1",
            "-t",
            "bench",
            "-l",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub");
    let mut stdin = child.stdin.take().expect("stdin");
    let start = Instant::now();
    for i in 0..n {
        if let Some(r) = rate {
            let due = start + Duration::from_secs_f64(i as f64 / r as f64);
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        writeln!(
            stdin,
            r#"{{"t":{},"sensor":"line-3","value":21.5}}"#,
            now_ns()
        )
        .expect("write");
    }
    drop(stdin);
    let _ = child.wait();
}

struct Figures {
    throughput: f64,
    p50: u64,
    p99: u64,
}

fn row(name: &str, f: &Figures) {
    println!(
        "| {name:<36} | {:>10.0} | {:>8} | {:>8} |",
        f.throughput, f.p50, f.p99
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let total: usize = env_or("BENCH_MESSAGES", 20_000);
    let conc: usize = env_or("BENCH_CONCURRENCY", 32);
    let rate: u64 = env_or("BENCH_RATE", 1000);
    let secs: u64 = env_or("BENCH_SECONDS", 5);
    let paced = (rate * secs) as usize;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let seen = Arc::new(Seen::default());
    let listener = rt
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind app");
    let app_port = listener.local_addr().expect("addr").port();
    rt.spawn(app(listener, seen.clone()));

    let res = tempfile::tempdir().expect("tempdir");
    write_component(
        res.path(),
        "pubsub",
        "pubsub.sled",
        &[
            ("concurrency", &conc.to_string()),
            ("maxMessages", "1000000"),
        ],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let ec = Edgecar::start(
        dir.path(),
        &[
            "--log-level",
            "warn",
            "--app-port",
            &app_port.to_string(),
            "--resources-path",
            res.path().to_str().expect("utf-8 path"),
        ],
    );
    eventually(Duration::from_secs(20), "the subscription", || {
        let m = ec.req("GET", "/v1.0/metadata", b"", &[]).json();
        (m["subscriptions"].as_array().map_or(0, Vec::len) == 1).then_some(())
    });
    // Warm up connections and the queue.
    rt.block_on(publish_all(ec.port, 500, 4, None));
    seen.wait(500);

    println!(
        "publish → delivery: {total} events from {conc} publishers (backlog), then {rate}/s for {secs} s"
    );
    println!();
    println!("| scenario                             | events/s   | p50 µs   | p99 µs   |");
    println!("|--------------------------------------|-----------:|---------:|---------:|");

    seen.reset();
    let start = Instant::now();
    let failed = rt.block_on(publish_all(ec.port, total, conc, None));
    let expect = total / conc * conc - failed;
    seen.wait(expect);
    let elapsed = seen
        .last
        .lock()
        .unwrap()
        .expect("deliveries")
        .duration_since(start);
    let (p50, p99) = seen.percentiles();
    let ec_backlog = Figures {
        throughput: expect as f64 / elapsed.as_secs_f64(),
        p50,
        p99,
    };
    row("edgecar pubsub.sled, backlog", &ec_backlog);

    seen.reset();
    let failed = rt.block_on(publish_all(ec.port, paced, 4, Some(rate)));
    seen.wait(paced / 4 * 4 - failed);
    let (p50, p99) = seen.percentiles();
    let ec_paced = Figures {
        throughput: rate as f64,
        p50,
        p99,
    };
    row(&format!("edgecar pubsub.sled, {rate}/s"), &ec_paced);
    let rss = ec.rss_kib();
    drop(ec);

    // Unbounded queues (mosquitto drops QoS 1 messages beyond 1000 queued per client by default,
    // which a backlog reaches) and no Nagle delay on the broker's side.
    let broker = MosquittoServer::start_with("max_queued_messages 0\nset_tcp_nodelay true");
    let mqtt_seen = Arc::new(Seen::default());
    let mut sub = mqtt_subscriber(&broker, total, mqtt_seen.clone());
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    mqtt_publish(&broker, total, None);
    mqtt_seen.wait(total);
    let elapsed = mqtt_seen
        .last
        .lock()
        .unwrap()
        .expect("deliveries")
        .duration_since(start);
    let (p50, p99) = mqtt_seen.percentiles();
    let mq_backlog = Figures {
        throughput: total as f64 / elapsed.as_secs_f64(),
        p50,
        p99,
    };
    row("mosquitto QoS 1, backlog (reference)", &mq_backlog);
    let _ = sub.wait();

    mqtt_seen.reset();
    let mut sub = mqtt_subscriber(&broker, paced, mqtt_seen.clone());
    std::thread::sleep(Duration::from_millis(500));
    mqtt_publish(&broker, paced, Some(rate));
    mqtt_seen.wait(paced);
    let (p50, p99) = mqtt_seen.percentiles();
    let mq_paced = Figures {
        throughput: rate as f64,
        p50,
        p99,
    };
    row(&format!("mosquitto QoS 1, {rate}/s (reference)"), &mq_paced);
    let _ = sub.wait();

    println!();
    println!(
        "ratio backlog throughput edgecar/mosquitto: {:.2}; p99 at {rate}/s edgecar/mosquitto: {:.2}; edgecar RSS after load: {:.1} MiB",
        ec_backlog.throughput / mq_backlog.throughput,
        ec_paced.p99 as f64 / mq_paced.p99.max(1) as f64,
        rss as f64 / 1024.0
    );
}
