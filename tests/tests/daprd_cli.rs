//! edgecar in daprd's place under the Dapr CLI: `edgecar run` with exactly the flags `dapr run`
//! builds for daprd (dapr/cli `pkg/standalone/run.go`, `RunConfig.getArgs`), a Dapr
//! `Configuration` given with `--config`, and the flags it has no use for named once each.

use std::net::TcpStream;
use std::time::Duration;

use edgecar_tests::{AppResponse, Edgecar, TestApp, free_port, write_component};

#[test]
fn edgecar_run_takes_the_flag_list_dapr_run_gives_daprd() {
    let app = TestApp::start(|_| AppResponse::new(200, "[]"));
    let (res, cfg_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_component(res.path(), "statestore", "state.sled", &[]);
    // `dapr init` writes this file and `dapr run` passes it with --config.
    let config = cfg_dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: daprConfig\nspec:\n  tracing:\n    samplingRate: \"1\"\n    zipkin:\n      endpointAddress: http://localhost:9411/api/v2/spans\n  accessControl:\n    defaultAction: allow\n",
    )
    .unwrap();
    let (http, grpc, metrics, internal) = (free_port(), free_port(), free_port(), free_port());
    let state = tempfile::tempdir().unwrap();
    let (app_port, http_s, grpc_s, metrics_s, internal_s) = (
        app.port.to_string(),
        http.to_string(),
        grpc.to_string(),
        metrics.to_string(),
        internal.to_string(),
    );
    // In the order getArgs emits them for `dapr run --app-id orders --app-port <p>
    // --resources-path <dir>` (SharedRunConfig's fields first, then RunConfig's).
    let args = [
        "run",
        "--config",
        config.to_str().unwrap(),
        "--app-protocol",
        "http",
        "--log-level",
        "info",
        "--app-max-concurrency",
        "-1",
        "--placement-host-address",
        "localhost:50005",
        "--resources-path",
        res.path().to_str().unwrap(),
        "--max-body-size",
        "4Mi",
        "--read-buffer-size",
        "4Ki",
        "--scheduler-host-address",
        "localhost:50006",
        "--app-id",
        "orders",
        "--app-port",
        &app_port,
        "--dapr-http-port",
        &http_s,
        "--dapr-grpc-port",
        &grpc_s,
        "--profile-port",
        "-1",
        "--metrics-port",
        &metrics_s,
        "--dapr-internal-grpc-port",
        &internal_s,
    ];
    // daprd has no state-dir flag: edgecar keeps its data in ./data of where it was started.
    let ec = Edgecar::start_exact(state.path(), &args);
    assert_eq!(ec.port, http, "the HTTP API is on --dapr-http-port");
    assert_eq!(ec.grpc_port, grpc, "the gRPC API is on --dapr-grpc-port");
    assert!(
        TcpStream::connect_timeout(&([127, 0, 0, 1], grpc).into(), Duration::from_secs(2)).is_ok()
    );
    let md = ec.req("GET", "/v1.0/metadata", b"", &[]).json();
    assert_eq!(md["id"], "orders");
    assert_eq!(md["appConnectionProperties"]["port"], app.port);
    // Each flag edgecar does not act on is named once; the ones it honours are not.
    let log = ec.log.lock().unwrap().clone();
    for flag in [
        "--placement-host-address",
        "--scheduler-host-address",
        "--metrics-port",
        "--dapr-internal-grpc-port",
    ] {
        let n = log.matches(&format!("not acted on: {flag}")).count();
        assert_eq!(n, 1, "{flag} warned {n} times:\n{log}");
    }
    for honoured in [
        "--app-id",
        "--app-port",
        "--dapr-grpc-port",
        "--app-max-concurrency",
        "--profile-port",
    ] {
        assert!(
            !log.contains(&format!("not acted on: {honoured}")),
            "{honoured} warned:\n{log}"
        );
    }
    // The Dapr Configuration was read as one (its tracing section noted), not as edgecar.yaml.
    assert!(log.contains("spec.tracing"), "{log}");
}

#[test]
fn unknown_app_protocols_are_refused_with_the_flag_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(edgecar_tests::edgecar_bin())
        .args([
            "run",
            "--app-protocol",
            "grpcs",
            "--dapr-http-port",
            "0",
            "--dapr-grpc-port",
            "0",
            "--state-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--app-protocol"), "{err}");
}
