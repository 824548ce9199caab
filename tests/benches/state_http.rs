//! Benchmark: Dapr state GET and SET over HTTP at fixed concurrency, against the real release
//! `edgecar` binary, with a bare hyper echo server measured in the same run as the floor.
//!
//! Run with `scripts/bench.sh` (builds the release binary first). Prints ops/s, p50 and p99 for
//! each scenario, the ratio edgecar / echo, and edgecar's idle RSS.
//! Knobs: BENCH_SECONDS (default 5), BENCH_CONCURRENCY (default 32).

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgecar_tests::{Edgecar, http};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// The floor: a hyper 1 server that answers every request with its own body.
async fn echo_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    println!("{}", listener.local_addr().expect("addr").port());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|c| c.to_bytes())
                        .unwrap_or_default();
                    Ok::<_, Infallible>(Response::new(Full::new(body)))
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

struct Stats {
    ops_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
}

/// `concurrency` keep-alive connections, each sending requests back to back for `secs`.
async fn load(
    port: u16,
    method: &'static str,
    path: &'static str,
    body: &'static str,
    concurrency: usize,
    secs: u64,
) -> Stats {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .expect("handshake");
            tokio::spawn(conn);
            let mut lat = Vec::with_capacity(100_000);
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let req = Request::builder()
                    .method(method)
                    .uri(path)
                    .header("host", "127.0.0.1")
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(body.as_bytes())))
                    .expect("request");
                let t = Instant::now();
                match tx.send_request(req).await {
                    Ok(resp) => {
                        let ok = resp.status().is_success();
                        let _ = resp.into_body().collect().await;
                        if ok {
                            lat.push(t.elapsed().as_micros() as u64);
                        } else {
                            errors += 1;
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await.expect("task");
        all.extend(lat);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Stats {
        ops_per_sec: all.len() as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        errors,
    }
}

fn row(name: &str, s: &Stats) {
    println!(
        "| {name:<28} | {:>10.0} | {:>7} | {:>7} | {:>6} |",
        s.ops_per_sec, s.p50_us, s.p99_us, s.errors
    );
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("echo-server") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(echo_server());
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` style discovery: nothing to list.
    }
    let secs: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let conc: usize = std::env::var("BENCH_CONCURRENCY")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(32);

    // The floor, as its own process like edgecar.
    let mut echo = std::process::Command::new(std::env::current_exe().expect("exe"))
        .arg("echo-server")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn echo server");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(echo.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("port");
    let echo_port: u16 = line.trim().parse().expect("echo port");

    let dir = tempfile::tempdir().expect("tempdir");
    let ec = Edgecar::start(dir.path(), &["--log-level", "warn"]);
    std::thread::sleep(Duration::from_secs(1));
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
    println!("| scenario                     |      ops/s | p50 µs  | p99 µs  | errors |");
    println!("|------------------------------|-----------:|--------:|--------:|-------:|");
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
