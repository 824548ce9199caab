//! An app written with the official Dapr Python SDK's gRPC extension (`dapr.ext.grpc`,
//! dapr-ext-grpc), unchanged, behind `edgecar run --app-protocol grpc`: it receives a service
//! invocation (`OnInvoke`), a topic event (`ListTopicSubscriptions` + `OnTopicEvent`) and an
//! input binding event (`OnBindingEvent`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use edgecar_tests::{Edgecar, eventually, free_port, write_component};

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("EDGECAR_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/python-sdk/bin/python");
    assert!(
        venv.exists(),
        "the Dapr Python SDK is not installed (scripts/test.sh installs tests/python/requirements.txt)"
    );
    venv
}

/// The Python app, killed when dropped.
struct PyApp(Child);

impl Drop for PyApp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn records(file: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn a_dapr_ext_grpc_app_receives_invocations_events_and_binding_events() {
    let (dir, res, data) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let record = data.path().join("calls.jsonl");
    let port = free_port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/grpc_app.py");
    let _app = PyApp(
        Command::new(python())
            .arg(script)
            .arg(port.to_string())
            .arg(&record)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python not found"),
    );
    eventually(
        Duration::from_secs(20),
        "the Python gRPC app listening",
        || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
    );
    write_component(res.path(), "pubsub", "pubsub.sled", &[]);
    write_component(
        res.path(),
        "tick",
        "bindings.cron",
        &[("schedule", "@every 1s")],
    );
    let ec = Edgecar::start(
        dir.path(),
        &[
            "--app-id",
            "pyapp",
            "--app-port",
            &port.to_string(),
            "--app-protocol",
            "grpc",
            "--resources-path",
            res.path().to_str().unwrap(),
        ],
    );
    // Invocation over HTTP reaches the app's OnInvoke.
    let r = ec.req(
        "POST",
        "/v1.0/invoke/pyapp/method/echo",
        b"hello",
        &[("content-type", "text/plain")],
    );
    assert_eq!(r.status, 200, "{}\n{}", r.text(), ec.log.lock().unwrap());
    assert_eq!(r.text(), "grpc-app:hello");
    // The app's subscription comes from ListTopicSubscriptions; once healthz says ready a
    // publish reaches OnTopicEvent.
    eventually(Duration::from_secs(20), "healthz ready", || {
        (ec.req("GET", "/v1.0/healthz", b"", &[]).status == 204).then_some(())
    });
    let r = ec.req(
        "POST",
        "/v1.0/publish/pubsub/orders",
        br#"{"id":42}"#,
        &[("content-type", "application/json")],
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let md = ec.req("GET", "/v1.0/metadata", b"", &[]).json();
    assert_eq!(md["appConnectionProperties"]["protocol"], "grpc");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let got = loop {
        let got = records(&record);
        let kinds = |k: &str| got.iter().filter(|r| r["kind"] == k).count();
        if kinds("invoke") >= 1 && kinds("event") >= 1 && kinds("binding") >= 1 {
            break got;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the app did not receive an invocation, an event and a binding event: {got:?}\nedgecar log:\n{}",
            ec.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let invoke = got.iter().find(|r| r["kind"] == "invoke").unwrap();
    assert_eq!(invoke["data"], "hello");
    assert_eq!(invoke["content_type"], "text/plain");
    let event = got.iter().find(|r| r["kind"] == "event").unwrap();
    let data: serde_json::Value =
        serde_json::from_str(event["data"].as_str().unwrap_or("null")).unwrap_or_default();
    assert_eq!(data["id"], 42, "{event}");
    assert_eq!(event["topic"], "orders");
    assert_eq!(event["pubsub"], "pubsub");
    assert_eq!(event["type"], "com.dapr.event.sent");
}
