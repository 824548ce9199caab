//! The official Dapr JavaScript SDK (`@dapr/dapr`, HTTP and GRPC modes), unchanged, against the
//! real binary.
//!
//! Needs `node` and the SDK installed in tests/js (`npm ci --prefix tests/js`; scripts/test.sh does it).

use std::path::Path;
use std::process::Command;

use edgecar_tests::Edgecar;

fn run_sdk(ec: &Edgecar, env: &[(&str, &str)]) {
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("js");
    assert!(
        js.join("node_modules/@dapr/dapr").exists(),
        "the Dapr JS SDK is not installed: run `npm ci --prefix tests/js` (scripts/test.sh does)"
    );
    let mut cmd = Command::new("node");
    cmd.arg("state.mjs")
        .current_dir(&js)
        .env("DAPR_HTTP_PORT", ec.port.to_string())
        .env_remove("DAPR_API_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("node not found: install nodejs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "Dapr JS SDK run failed:\n{stdout}\n{}\nedgecar log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        ec.log.lock().unwrap()
    );
}

#[test]
fn dapr_javascript_sdk_works_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let ec = Edgecar::start(dir.path(), &[]);
    run_sdk(&ec, &[]);
}

#[test]
fn dapr_javascript_sdk_works_with_an_api_token() {
    let dir = tempfile::tempdir().unwrap();
    let ec = Edgecar::start(
        dir.path(),
        &["--dapr-api-token", "tok-123", "--app-id", "sdkapp"],
    );
    run_sdk(
        &ec,
        &[("DAPR_API_TOKEN", "tok-123"), ("EXPECT_APP_ID", "sdkapp")],
    );
}

/// The SDK's DaprServer subscribes and its DaprClient publishes, through edgecar's pub/sub.
#[test]
fn dapr_javascript_sdk_pubsub_works_unchanged() {
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("js");
    assert!(
        js.join("node_modules/@dapr/dapr").exists(),
        "the Dapr JS SDK is not installed: run `npm ci --prefix tests/js` (scripts/test.sh does)"
    );
    let res = tempfile::tempdir().unwrap();
    // Retries come quickly so the RETRY check does not wait for the default backoff.
    std::fs::write(
        res.path().join("resiliency.yaml"),
        "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: r\nspec:\n  policies:\n    retries:\n      quick:\n        policy: constant\n        duration: 100ms\n        maxRetries: 10\n  targets:\n    components:\n      pubsub:\n        inbound:\n          retry: quick\n",
    )
    .unwrap();
    edgecar_tests::write_component(res.path(), "pubsub", "pubsub.sled", &[]);
    let app_port = edgecar_tests::free_port();
    let dir = tempfile::tempdir().unwrap();
    let ec = Edgecar::start(
        dir.path(),
        &[
            "--app-port",
            &app_port.to_string(),
            "--resources-path",
            res.path().to_str().unwrap(),
        ],
    );
    let out = Command::new("node")
        .arg("pubsub.mjs")
        .current_dir(&js)
        .env("DAPR_HTTP_PORT", ec.port.to_string())
        .env("APP_PORT", app_port.to_string())
        .env_remove("DAPR_API_TOKEN")
        .output()
        .expect("node not found: install nodejs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "Dapr JS SDK pub/sub run failed:\n{stdout}\n{}\nedgecar log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        ec.log.lock().unwrap()
    );
}

#[test]
fn dapr_javascript_sdk_in_grpc_mode_works_unchanged() {
    let app = edgecar_tests::sdk::sdk_app();
    let (dir, res, data) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let items = edgecar_tests::sdk::sdk_resources(res.path(), data.path(), app.port);
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
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("js");
    let out = Command::new("node")
        .arg("grpc.mjs")
        .arg("orders")
        .arg(&items)
        .current_dir(&js)
        .env("DAPR_GRPC_PORT", ec.grpc_port.to_string())
        .env("DAPR_HTTP_PORT", ec.port.to_string())
        .env_remove("DAPR_API_TOKEN")
        .output()
        .expect("node not found: install nodejs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "Dapr JS SDK (GRPC mode) run failed:\n{stdout}\n{}\nedgecar log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        ec.log.lock().unwrap()
    );
    let status = ec.wait_exit(std::time::Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "no clean exit after Shutdown: {status:?}"
    );
    // The published and bulk-published events reached the subscriber.
    edgecar_tests::eventually(
        std::time::Duration::from_secs(5),
        "the published events",
        || {
            let ids: Vec<i64> = app
                .received()
                .iter()
                .filter(|r| r.path == "/orders")
                .filter_map(|r| {
                    let ev: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
                    ev["data"]["id"].as_i64()
                })
                .collect();
            [7, 8, 9].iter().all(|id| ids.contains(id)).then_some(())
        },
    );
    // InvokeBinding's bytes reached the endpoint unchanged (the script checked the way back).
    let echoed: Vec<Vec<u8>> = app
        .received()
        .iter()
        .filter(|r| r.path == "/erp/echo")
        .map(|r| r.body.clone())
        .collect();
    assert_eq!(echoed, [(0..=255u8).collect::<Vec<u8>>()]);
}
