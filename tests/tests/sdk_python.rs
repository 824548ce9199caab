//! The official Dapr Python SDK's HTTP invocation client, unchanged, against the real binary.
//!
//! Needs the SDK in the venv scripts/test.sh creates (`target/python-sdk`, from
//! tests/python/requirements.txt); `EDGECAR_PYTHON` may name another interpreter that has it.

use std::path::Path;
use std::process::Command;

use edgecar_tests::sdk::{sdk_app, sdk_resources};
use edgecar_tests::{AppResponse, Edgecar, TestApp, python};

#[test]
fn dapr_python_sdk_http_invocation_works_unchanged() {
    let app = TestApp::start(|r| {
        let body = serde_json::json!({"method": r.method, "path": r.path, "body": String::from_utf8_lossy(&r.body)});
        AppResponse::new(201, body.to_string()).header("content-type", "application/json")
    });
    let dir = tempfile::tempdir().unwrap();
    let ec = Edgecar::start(
        dir.path(),
        &["--app-id", "orders", "--app-port", &app.port.to_string()],
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/invoke.py");
    let out = Command::new(python())
        .arg(script)
        .arg("orders")
        .env("DAPR_HTTP_PORT", ec.port.to_string())
        .env("DAPR_GRPC_PORT", "1") // the SDK builds a gRPC channel too; nothing here uses it
        .env("DAPR_API_METHOD_INVOCATION_PROTOCOL", "HTTP")
        .env_remove("DAPR_API_TOKEN")
        .env_remove("DAPR_HTTP_ENDPOINT")
        .env_remove("DAPR_GRPC_ENDPOINT")
        .output()
        .expect("python not found");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "Dapr Python SDK run failed:\n{stdout}\n{}\nedgecar log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        ec.log.lock().unwrap()
    );
}

#[test]
fn dapr_python_sdk_grpc_client_works_unchanged() {
    let app = sdk_app();
    let (dir, res, data) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let items = sdk_resources(res.path(), data.path(), app.port);
    let mut ec = Edgecar::start(
        dir.path(),
        &[
            "--app-id",
            "orders",
            "--app-port",
            &app.port.to_string(),
            "--resources-path",
            res.path().to_str().unwrap(),
        ],
    );
    assert_ne!(
        ec.grpc_port,
        0,
        "no gRPC listener:\n{}",
        ec.log.lock().unwrap()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/grpc_client.py");
    let out = Command::new(python())
        .arg(script)
        .arg("orders")
        .arg(&items)
        .env("DAPR_HTTP_PORT", ec.port.to_string())
        .env("DAPR_GRPC_PORT", ec.grpc_port.to_string())
        .env_remove("DAPR_API_TOKEN")
        .env_remove("DAPR_API_METHOD_INVOCATION_PROTOCOL")
        .env_remove("DAPR_HTTP_ENDPOINT")
        .env_remove("DAPR_GRPC_ENDPOINT")
        .output()
        .expect("python not found");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "Dapr Python SDK (gRPC) run failed:\n{stdout}\n{}\nedgecar log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        ec.log.lock().unwrap()
    );
    // Shutdown over gRPC stops the daemon cleanly.
    let status = ec.wait_exit(std::time::Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "edgecar did not exit 0 after Shutdown: {status:?}\n{}",
        ec.log.lock().unwrap()
    );
    // The published and bulk-published events reached the subscriber.
    let ids: Vec<i64> = app
        .received()
        .iter()
        .filter(|r| r.path == "/orders")
        .filter_map(|r| {
            let ev: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
            ev["data"]["id"].as_i64()
        })
        .collect();
    for id in [1, 2, 3] {
        assert!(ids.contains(&id), "event {id} not delivered; got {ids:?}");
    }
    // InvokeBinding's bytes reached the endpoint unchanged (the script checked the way back).
    let echoed: Vec<Vec<u8>> = app
        .received()
        .iter()
        .filter(|r| r.path == "/erp/echo")
        .map(|r| r.body.clone())
        .collect();
    assert_eq!(echoed, [(0..=255u8).collect::<Vec<u8>>()]);
}

#[test]
fn dapr_python_sdk_grpc_client_sends_the_api_token_and_a_missing_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ec = Edgecar::start(dir.path(), &["--dapr-api-token", "tok-123"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/grpc_client.py");
    let out = Command::new(python())
        .arg(script)
        .arg("--token")
        .env("DAPR_HTTP_PORT", ec.port.to_string())
        .env("DAPR_GRPC_PORT", ec.grpc_port.to_string())
        .env("DAPR_API_TOKEN", "tok-123")
        .env_remove("DAPR_HTTP_ENDPOINT")
        .env_remove("DAPR_GRPC_ENDPOINT")
        .output()
        .expect("python not found");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "token run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
