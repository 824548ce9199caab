//! Benchmark: state GET and service invocation over Dapr's gRPC API against the same calls over
//! the HTTP API, on the real release `edgecar` binary, with a bare hyper echo server measured in
//! the same run as the floor (it is also the app that invocations reach).
//!
//! Run with `scripts/bench.sh grpc`. Each client connection is one keep-alive HTTP/1.1
//! connection or one HTTP/2 channel with one call in flight. Knobs: BENCH_SECONDS (default 5),
//! BENCH_CONCURRENCY (default 32).

use std::time::{Duration, Instant};

use edgecar::transport::grpc::proto::common::v1 as common;
use edgecar::transport::grpc::proto::runtime::v1 as rt;
use edgecar_tests::bench::{Stats, header, load, row, serve_echo_if_asked, spawn_echo};
use edgecar_tests::{Edgecar, http};

type Client = rt::dapr_client::DaprClient<tonic::transport::Channel>;

#[derive(Clone, Copy)]
enum Call {
    Get,
    Invoke,
}

async fn grpc_load(port: u16, call: Call, concurrency: usize, secs: f64) -> Stats {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        tasks.push(tokio::spawn(async move {
            let channel =
                tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                    .expect("endpoint")
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .expect("connect");
            let mut client = Client::new(channel);
            let mut lat = Vec::with_capacity(100_000);
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let ok = match call {
                    Call::Get => client
                        .get_state(rt::GetStateRequest {
                            store_name: "statestore".into(),
                            key: "bench".into(),
                            ..Default::default()
                        })
                        .await
                        .is_ok_and(|r| !r.get_ref().data.is_empty()),
                    Call::Invoke => client
                        .invoke_service(rt::InvokeServiceRequest {
                            id: "edgecar".into(),
                            message: Some(common::InvokeRequest {
                                method: "ping".into(),
                                data: Some(Default::default()),
                                content_type: "application/json".into(),
                                http_extension: Some(common::HttpExtension {
                                    verb: common::http_extension::Verb::Get as i32,
                                    querystring: String::new(),
                                }),
                            }),
                        })
                        .await
                        .is_ok(),
                };
                if ok {
                    lat.push(t.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    edgecar_tests::bench::summarize(tasks, started).await
}

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
    let echo_port_s = echo_port.to_string();
    let ec = Edgecar::start(
        dir.path(),
        &["--log-level", "warn", "--app-port", &echo_port_s],
    );
    let value = r#"[{"key":"bench","value":{"temperature":21.5,"unit":"C","sensor":"line-3"}}]"#;
    let saved = http(
        ec.port,
        "POST",
        "/v1.0/state/statestore",
        value.as_bytes(),
        &[],
    );
    assert_eq!(saved.status, 204);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("gRPC against HTTP/1.1, {conc} connections, {secs} s per scenario");
    println!();
    header();
    let echo_get = rt.block_on(load(echo_port, "GET", "/ping", "", conc, secs));
    row("hyper echo GET (floor)", &echo_get);
    let http_get = rt.block_on(load(
        ec.port,
        "GET",
        "/v1.0/state/statestore/bench",
        "",
        conc,
        secs,
    ));
    row("state GET, HTTP", &http_get);
    let grpc_get = rt.block_on(grpc_load(ec.grpc_port, Call::Get, conc, secs));
    row("state GET, gRPC GetState", &grpc_get);
    let http_inv = rt.block_on(load(
        ec.port,
        "GET",
        "/v1.0/invoke/edgecar/method/ping",
        "",
        conc,
        secs,
    ));
    row("invoke, HTTP", &http_inv);
    let grpc_inv = rt.block_on(grpc_load(ec.grpc_port, Call::Invoke, conc, secs));
    row("invoke, gRPC InvokeService", &grpc_inv);
    println!();
    println!(
        "gRPC/HTTP throughput: state GET {:.2}, invoke {:.2}; edgecar/echo: HTTP GET {:.2}, gRPC GET {:.2}",
        grpc_get.ops_per_sec / http_get.ops_per_sec,
        grpc_inv.ops_per_sec / http_inv.ops_per_sec,
        http_get.ops_per_sec / echo_get.ops_per_sec,
        grpc_get.ops_per_sec / echo_get.ops_per_sec,
    );
    let _ = echo.kill();
    let _ = echo.wait();
}
