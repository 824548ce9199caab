//! Traces: with `tracing.otlpEndpoint` set, every call is a span exported over OTLP/HTTP
//! (protobuf) to the collector, a child of the W3C `traceparent` it arrived with, and what the
//! call causes downstream (here an app's invocation) continues the trace as the span's child.
//! A small real HTTP server stands in for the OpenTelemetry collector.

use std::time::Duration;

use edgecar_tests::{AppResponse, Edgecar, TestApp, eventually};

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT: &str = "b7ad6b7169203331";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn calls_become_spans_exported_over_otlp_and_the_trace_continues_downstream() {
    let collector = TestApp::start(|_| AppResponse::new(200, ""));
    let app = TestApp::start(|_| AppResponse::new(200, "ok"));
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("edgecar.yaml");
    std::fs::write(
        &cfg,
        format!(
            "tracing:\n  otlpEndpoint: http://127.0.0.1:{}/v1/traces\n  serviceName: line-3\n",
            collector.port
        ),
    )
    .unwrap();
    let ec = Edgecar::start(
        &dir.path().join("data"),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--app-id",
            "orders",
            "--app-port",
            &app.port.to_string(),
        ],
    );
    let incoming = format!("00-{TRACE}-{PARENT}-01");
    let r = ec.req(
        "POST",
        "/v1.0/invoke/orders/method/ship",
        b"{}",
        &[("traceparent", &incoming)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = app.received();
    let ship = seen
        .iter()
        .find(|r| r.path == "/ship")
        .expect("the invocation at the app");
    let tp = ship
        .header("traceparent")
        .unwrap_or_else(|| panic!("no traceparent at the app: {:?}", ship.headers));
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts[1], TRACE, "{tp}");
    assert_ne!(
        parts[2], PARENT,
        "the app's parent must be edgecar's span: {tp}"
    );
    let gateway_span = unhex(parts[2]);

    let export = eventually(Duration::from_secs(15), "an OTLP export", || {
        collector
            .received()
            .into_iter()
            .find(|r| r.path == "/v1/traces")
    });
    assert_eq!(export.method, "POST");
    assert_eq!(
        export.header("content-type"),
        Some("application/x-protobuf")
    );
    let body = &export.body;
    let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    assert!(has(&unhex(TRACE)), "trace id missing from the export");
    assert!(has(&unhex(PARENT)), "the caller's span is not the parent");
    assert!(
        has(&gateway_span),
        "the span the app saw is not the exported one"
    );
    assert!(has(b"invoke") && has(b"line-3") && has(b"edgecar.transport"));
}
