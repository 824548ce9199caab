//! The `edgecar` command line as an operator meets it: check-config, print-config, --version,
//! refusing a bad config, and a graceful SIGTERM that lets in-flight requests finish.

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use edgecar_tests::{Edgecar, edgecar_bin, read_response};

fn edgecar(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(edgecar_bin())
        .args(args)
        .env_remove("DAPR_API_TOKEN")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version_and_print_config() {
    let (code, out, _) = edgecar(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("edgecar "), "{out}");
    let (code, out, _) = edgecar(&["print-config"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("appId: edgecar") && out.contains("port: 3500"),
        "{out}"
    );
    // What it prints is a valid config file.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("edgecar.yaml");
    std::fs::write(&f, out).unwrap();
    let (code, out, err) = edgecar(&["check-config", "--config", f.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ok:"), "{out}");
}

#[test]
fn check_config_reports_every_error_with_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("edgecar.yaml");
    std::fs::write(
        &cfg,
        "appId: has.dot\nhttp:\n  port: 99999\nlimits:\n  maxBulkItems: 0\ncolour: blue\n",
    )
    .unwrap();
    let res = dir.path().join("components");
    std::fs::create_dir(&res).unwrap();
    std::fs::write(
        res.join("redis.yaml"),
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: cache\nspec:\n  type: state.redis\n  version: v1\n  metadata:\n  - name: redisHost\n    value: \"localhost:notaport\"\n",
    )
    .unwrap();
    std::fs::write(
        res.join("typo.yaml"),
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: s2\nspec:\n  type: state.postgresqlx\n  version: v1\n",
    )
    .unwrap();
    let (code, _, err) = edgecar(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1);
    // Section errors come from the config file; a bad section hides no other.
    assert!(err.contains("edgecar.yaml: http.port:"), "{err}");
    assert!(err.contains("edgecar.yaml: colour: unknown field"), "{err}");
    let (code, _, err) = edgecar(&[
        "check-config",
        "--resources-path",
        res.to_str().unwrap(),
        "--app-id",
        "bad.id",
        "--max-body-size",
        "lots",
    ]);
    assert_eq!(code, 1);
    for needle in [
        "redis.yaml: spec.metadata[0] (redisHost): \"localhost:notaport\" is not host:port",
        "typo.yaml: spec.type: unknown component type \"state.postgresqlx\"",
        "<command line>: --max-body-size:",
        "appId: \"bad.id\"",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert!(err.contains("4 error(s)"), "{err}");
}

#[test]
fn run_refuses_an_invalid_config_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("edgecar.yaml");
    std::fs::write(&cfg, "http:\n  maxBodySize: 12 parsecs\n").unwrap();
    let (code, _, err) = edgecar(&[
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--dapr-http-port",
        "0",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("http.maxBodySize") && err.contains("refusing to start"),
        "{err}"
    );
    let (code, _, err) = edgecar(&["run", "--dapr-http-port", "notaport"]);
    assert_eq!(code, 2, "clap rejects bad flags: {err}");
    assert!(err.contains("--dapr-http-port"), "{err}");
}

#[test]
fn a_second_daemon_on_the_same_state_dir_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Edgecar::start(dir.path(), &[]);
    let out = Command::new(edgecar_bin())
        .args([
            "run",
            "--dapr-http-port",
            "0",
            "--dapr-grpc-port",
            "0",
            "--mqtt-port",
            "0",
            "--metrics-port",
            "0",
            "--state-dir",
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot open the state database"), "{err}");
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut ec = Edgecar::start(dir.path(), &[]);
    // Start a request and hold back the end of its body, so it is in flight during SIGTERM.
    let body = br#"[{"key":"late","value":"arrived"}]"#;
    let mut s = TcpStream::connect(("127.0.0.1", ec.port)).unwrap();
    write!(
        s,
        "POST /v1.0/state/statestore HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(&body[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let pid = ec.pid();
    let finisher = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        s.write_all(&body[10..]).unwrap();
        read_response(&mut s).unwrap()
    });
    let status = ec.terminate();
    let r = finisher.join().unwrap();
    assert_eq!(
        r.status,
        204,
        "the in-flight request completed: {}",
        r.text()
    );
    assert!(status.success(), "exit status {status:?} of pid {pid}");
    // And it really was written.
    let ec = Edgecar::start(dir.path(), &[]);
    assert_eq!(
        ec.req("GET", "/v1.0/state/statestore/late", b"", &[])
            .text(),
        "\"arrived\""
    );
}

#[test]
fn the_shipped_configs_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let (code, out, err) = edgecar(&[
        "check-config",
        "--config",
        root.join("edgecar.yaml").to_str().unwrap(),
        "--resources-path",
        root.join("components").to_str().unwrap(),
        "--resources-path",
        root.join("capabilities").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    for name in [
        "statestore (state.sled)",
        "detect-objects",
        "sensor-stats",
        "validate-reading",
        "thumbnail",
    ] {
        assert!(out.contains(name), "{name} missing from: {out}");
    }
}

/// Shutdown has one budget: in-flight requests and in-flight pub/sub deliveries drain at the same
/// time, within `shutdownTimeout`, rather than one after the other (which took twice as long).
#[test]
fn sigterm_drains_requests_and_deliveries_within_one_shutdown_timeout() {
    use edgecar_tests::{AppResponse, TestApp, eventually, http};
    let app = TestApp::start(|r| match r.path.as_str() {
        "/dapr/subscribe" => AppResponse::new(
            200,
            r#"[{"pubsubname":"pubsub","topic":"slow","route":"/slow"}]"#,
        )
        .header("content-type", "application/json"),
        "/slow" | "/hang" => {
            let mut r = AppResponse::new(200, "");
            r.delay = Duration::from_secs(30);
            r
        }
        _ => AppResponse::new(200, ""),
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("edgecar.yaml");
    std::fs::write(&cfg, "shutdownTimeout: 3s\n").unwrap();
    let port = app.port.to_string();
    let cfg_arg = cfg.to_str().unwrap();
    let args = ["--config", cfg_arg, "--app-id", "web", "--app-port", &port];
    let mut ec = Edgecar::start(dir.path(), &args);
    let seen = |path: &str| app.received().iter().any(|r| r.path == path);
    eventually(Duration::from_secs(10), "the app's subscriptions", || {
        seen("/dapr/subscribe").then_some(())
    });
    // A delivery the app holds, and an invocation it holds.
    let published = eventually(Duration::from_secs(10), "a publish", || {
        let r = http(ec.port, "POST", "/v1.0/publish/pubsub/slow", b"{}", &[]);
        (r.status == 204).then_some(r)
    });
    assert_eq!(published.status, 204);
    let api = ec.port;
    // Its connection is closed unanswered at the timeout: the reply is not awaited here.
    let mut hold = TcpStream::connect(("127.0.0.1", api)).unwrap();
    hold.write_all(
        b"POST /v1.0/invoke/web/method/hang HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
    )
    .unwrap();
    eventually(Duration::from_secs(10), "both in flight", || {
        (seen("/slow") && seen("/hang")).then_some(())
    });
    let started = std::time::Instant::now();
    let status = ec.terminate();
    let took = started.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took >= Duration::from_millis(2500),
        "in-flight work was given the shutdown timeout: {took:?}"
    );
    assert!(
        took < Duration::from_millis(4500),
        "shutdown took {took:?}: more than shutdownTimeout (3 s)"
    );
}

/// A YAML file in a resources directory that is not a resource at all (a compose file) is left
/// alone with a note, as daprd leaves it; a Dapr resource that lost its `kind` is still an error.
#[test]
fn yaml_that_is_not_a_resource_is_ignored_but_a_resource_without_kind_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let res = dir.path().join("resources");
    std::fs::create_dir(&res).unwrap();
    std::fs::write(
        res.join("docker-compose.yaml"),
        "services:\n  web:\n    image: nginx\n",
    )
    .unwrap();
    std::fs::write(
        res.join("state.yaml"),
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\nspec:\n  type: state.in-memory\n  version: v1\n",
    )
    .unwrap();
    let path = res.to_str().unwrap();
    let (code, out, err) = edgecar(&["check-config", "--resources-path", path]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("statestore (state.in-memory)"), "{out}");
    assert!(
        err.contains("docker-compose.yaml: not a Dapr resource") && err.contains("ignored"),
        "{err}"
    );
    std::fs::write(
        res.join("broken.yaml"),
        "apiVersion: dapr.io/v1alpha1\nmetadata:\n  name: pubsub\nspec:\n  type: pubsub.sled\n  version: v1\n",
    )
    .unwrap();
    let (code, _, err) = edgecar(&["check-config", "--resources-path", path]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("broken.yaml: kind: missing; expected e.g. Component"),
        "{err}"
    );
}
