//! Bindings end to end: `bindings.http` calling a real HTTP endpoint, `bindings.cron` delivering
//! events to a real app at `/<binding>` or its `route`, only once the app answered daprd's
//! `OPTIONS` probe with a 2xx or 405 (or the binding says `direction: input`).

use std::time::Duration;

use edgecar_tests::{AppResponse, Edgecar, TestApp, eventually, write_component};
use serde_json::json;

/// edgecar with the resources in `res` and `app` as its app.
fn with_app(dir: &tempfile::TempDir, res: &tempfile::TempDir, app: &TestApp) -> Edgecar {
    Edgecar::start(
        dir.path(),
        &[
            "--resources-path",
            res.path().to_str().unwrap(),
            "--app-port",
            &app.port.to_string(),
        ],
    )
}

#[test]
fn http_output_binding_calls_the_endpoint_as_dapr_does() {
    let api = TestApp::start(|r| {
        if r.path.ends_with("/fail") {
            return AppResponse::new(503, "down");
        }
        AppResponse::new(
            201,
            format!(
                r#"{{"got":"{}","trace":"{}"}}"#,
                r.method,
                r.header("x-trace").unwrap_or("")
            ),
        )
    });
    let (dir, res) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_component(
        res.path(),
        "erp",
        "bindings.http",
        &[("url", &format!("http://127.0.0.1:{}/api", api.port))],
    );
    let ec = Edgecar::start(
        dir.path(),
        &["--resources-path", res.path().to_str().unwrap()],
    );

    let body = json!({"operation": "post", "data": {"order": 7}, "metadata": {"path": "orders", "x-trace": "t-1"}});
    let r = ec.req(
        "POST",
        "/v1.0/bindings/erp",
        body.to_string().as_bytes(),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"got": "POST", "trace": "t-1"}));
    assert_eq!(r.header("metadata.statuscode"), Some("201"));
    let seen = api.received();
    assert_eq!(seen[0].path, "/api/orders");
    assert_eq!(seen[0].body, br#"{"order":7}"#);

    // A JSON string is sent as its content; `create` is POST; `get` works without data.
    let r = ec.req(
        "POST",
        "/v1.0/bindings/erp",
        json!({"operation": "create", "data": "plain text"})
            .to_string()
            .as_bytes(),
        &[],
    );
    assert_eq!(r.status, 200);
    assert_eq!(api.received()[1].body, b"plain text");
    assert_eq!(
        ec.req("POST", "/v1.0/bindings/erp", br#"{"operation":"get"}"#, &[])
            .status,
        200
    );

    // Failures: the endpoint's 5xx, an unknown operation or binding, a malformed body.
    let r = ec.req(
        "POST",
        "/v1.0/bindings/erp",
        br#"{"operation":"get","metadata":{"path":"fail"}}"#,
        &[],
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (500, "ERR_INVOKE_OUTPUT_BINDING")
    );
    assert!(r.text().contains("503"), "{}", r.text());
    let r = ec.req(
        "POST",
        "/v1.0/bindings/erp",
        br#"{"operation":"teleport"}"#,
        &[],
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (500, "ERR_INVOKE_OUTPUT_BINDING")
    );
    let r = ec.req(
        "POST",
        "/v1.0/bindings/nope",
        br#"{"operation":"get"}"#,
        &[],
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (500, "ERR_INVOKE_OUTPUT_BINDING")
    );
    let r = ec.req("POST", "/v1.0/bindings/erp", b"{not json", &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "ERR_MALFORMED_REQUEST")
    );
}

#[test]
fn cron_input_binding_posts_to_the_app_on_schedule() {
    let app = TestApp::start(|_| AppResponse::new(200, ""));
    let (dir, res) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_component(
        res.path(),
        "tick",
        "bindings.cron",
        &[("schedule", "@every 500ms")],
    );
    write_component(
        res.path(),
        "everysecond",
        "bindings.cron",
        &[("schedule", "* * * * * *")],
    );
    let ec = with_app(&dir, &res, &app);
    eventually(
        Duration::from_secs(10),
        "three ticks and two cron seconds",
        || {
            let got = app.received();
            let ticks = got
                .iter()
                .filter(|r| r.path == "/tick" && r.method == "POST")
                .count();
            let secs = got.iter().filter(|r| r.path == "/everysecond").count();
            (ticks >= 3 && secs >= 2).then_some(())
        },
    );
    drop(ec);
}

#[test]
fn input_binding_route_metadata_is_the_path_the_app_is_called_at() {
    let app = TestApp::start(|_| AppResponse::new(200, ""));
    let (dir, res) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_component(
        res.path(),
        "nightly",
        "bindings.cron",
        &[("schedule", "@every 300ms"), ("route", "/jobs/nightly")],
    );
    // Without the leading '/', as daprd's app channel adds it.
    write_component(
        res.path(),
        "hourly",
        "bindings.cron",
        &[("schedule", "@every 300ms"), ("route", "jobs/hourly")],
    );
    let ec = with_app(&dir, &res, &app);
    eventually(Duration::from_secs(10), "events at both routes", || {
        let got = app.received();
        let posts = |p: &str| {
            got.iter()
                .filter(|r| r.path == p && r.method == "POST")
                .count()
        };
        (posts("/jobs/nightly") >= 2 && posts("/jobs/hourly") >= 2).then_some(())
    });
    let got = app.received();
    // The probe asked the route too; nothing went to /<binding-name>.
    assert!(
        got.iter()
            .any(|r| r.method == "OPTIONS" && r.path == "/jobs/nightly"),
        "{got:?}"
    );
    assert!(
        got.iter()
            .all(|r| r.path != "/nightly" && r.path != "/hourly"),
        "{got:?}"
    );
    drop(ec);
}

#[test]
fn an_http_app_gets_input_binding_events_only_when_it_answers_options() {
    // daprd's rule: 2xx or 405 to `OPTIONS /<route>` starts the binding, anything else does not.
    let app = TestApp::start(|r| match (r.method.as_str(), r.path.as_str()) {
        ("OPTIONS", "/wanted") => AppResponse::new(200, ""),
        ("OPTIONS", "/no-options") => AppResponse::new(405, ""),
        ("OPTIONS", "/failing") => AppResponse::new(500, ""),
        ("OPTIONS", _) => AppResponse::new(404, ""),
        _ => AppResponse::new(200, ""),
    });
    let (dir, res) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for name in ["wanted", "no-options", "unwanted", "failing"] {
        write_component(
            res.path(),
            name,
            "bindings.cron",
            &[("schedule", "@every 200ms")],
        );
    }
    // `direction: input` skips the probe: it runs although OPTIONS would say 404.
    write_component(
        res.path(),
        "declared",
        "bindings.cron",
        &[("schedule", "@every 200ms"), ("direction", "input")],
    );
    let ec = with_app(&dir, &res, &app);
    let posts = |p: &str| {
        app.received()
            .iter()
            .filter(|r| r.path == p && r.method == "POST")
            .count()
    };
    eventually(
        Duration::from_secs(10),
        "events for the wanted bindings",
        || {
            (posts("/wanted") >= 3 && posts("/no-options") >= 3 && posts("/declared") >= 3)
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(600));
    let got = app.received();
    assert_eq!(posts("/unwanted"), 0, "{got:?}");
    assert_eq!(posts("/failing"), 0, "{got:?}");
    assert!(
        got.iter()
            .any(|r| r.method == "OPTIONS" && r.path == "/unwanted"),
        "{got:?}"
    );
    assert!(
        !got.iter()
            .any(|r| r.method == "OPTIONS" && r.path == "/declared"),
        "a direction: input binding was probed: {got:?}"
    );
    let log = ec.log.lock().unwrap().clone();
    assert!(
        log.contains("unwanted") && log.contains("has not subscribed to this input binding"),
        "{log}"
    );
}

#[test]
fn the_options_probe_waits_for_an_app_that_starts_late() {
    let port = edgecar_tests::free_port();
    let (dir, res) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_component(
        res.path(),
        "tick",
        "bindings.cron",
        &[("schedule", "@every 200ms")],
    );
    let _ec = Edgecar::start(
        dir.path(),
        &[
            "--resources-path",
            res.path().to_str().unwrap(),
            "--app-port",
            &port.to_string(),
        ],
    );
    // Refused connections are not an answer: the binding starts once the app answers.
    std::thread::sleep(Duration::from_millis(800));
    let app = TestApp::start_on(port, |_| AppResponse::new(200, ""));
    eventually(Duration::from_secs(15), "events once the app is up", || {
        let got = app.received();
        (got.iter()
            .any(|r| r.method == "OPTIONS" && r.path == "/tick")
            && got.iter().any(|r| r.method == "POST" && r.path == "/tick"))
        .then_some(())
    });
}

#[test]
fn bad_binding_configuration_is_reported_by_check_config() {
    let res = tempfile::tempdir().unwrap();
    write_component(
        res.path(),
        "tick",
        "bindings.cron",
        &[("schedule", "every tuesday")],
    );
    write_component(res.path(), "erp", "bindings.http", &[("url", "ftp://x")]);
    write_component(
        res.path(),
        "routed",
        "bindings.cron",
        &[("schedule", "@every 1s"), ("route", "http://app/x")],
    );
    let out = std::process::Command::new(edgecar_tests::edgecar_bin())
        .args([
            "check-config",
            "--resources-path",
            res.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("tick.yaml: spec.metadata[0] (schedule): schedule \"every tuesday\""),
        "{err}"
    );
    assert!(
        err.contains("erp.yaml: spec.metadata[0] (url): required: an http:// or https:// URL"),
        "{err}"
    );
    assert!(
        err.contains(
            "routed.yaml: spec.metadata[1] (route): \"http://app/x\" is a URL, not a path"
        ),
        "{err}"
    );
}

#[test]
fn mqtt_binding_publishes_and_delivers_through_a_real_mosquitto() {
    let broker = edgecar_tests::MosquittoServer::start();
    let app = TestApp::start(|_| AppResponse::new(200, ""));
    let (dir, res) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_component(
        res.path(),
        "alarms",
        "bindings.mqtt3",
        &[
            ("url", &broker.url()),
            ("topic", "site/alarms"),
            ("direction", "output"),
        ],
    );
    write_component(
        res.path(),
        "readings",
        "bindings.mqtt3",
        &[
            ("url", &broker.url()),
            ("topic", "sensors/+/temp"),
            ("direction", "input"),
        ],
    );
    let (mut sub, seen) = broker.subscribe("site/#");
    let ec = with_app(&dir, &res, &app);

    // Output: the binding publishes the data to its topic, or to the request's `topic`.
    let r = ec.req(
        "POST",
        "/v1.0/bindings/alarms",
        br#"{"operation":"create","data":{"level":"high"}}"#,
        &[],
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let r = ec.req(
        "POST",
        "/v1.0/bindings/alarms",
        br#"{"operation":"create","data":"door open","metadata":{"topic":"site/doors"}}"#,
        &[],
    );
    assert_eq!(r.status, 204, "{}", r.text());
    eventually(
        Duration::from_secs(10),
        "both publishes at the broker",
        || {
            let got = seen.lock().unwrap().clone();
            (got.iter().any(|l| l.contains(r#"{"level":"high"}"#))
                && got.iter().any(|l| l.contains("door open")))
            .then_some(())
        },
    );
    let r = ec.req(
        "POST",
        "/v1.0/bindings/alarms",
        br#"{"operation":"delete"}"#,
        &[],
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (500, "ERR_INVOKE_OUTPUT_BINDING")
    );

    // Input: messages on the topic (wildcards allowed) are POSTed to the app at /<binding>.
    std::thread::sleep(Duration::from_millis(300));
    broker.publish("sensors/oven/temp", "231.5");
    let got = eventually(
        Duration::from_secs(10),
        "the MQTT message at the app",
        || app.received().into_iter().find(|r| r.path == "/readings"),
    );
    assert_eq!(got.method, "POST");
    assert_eq!(got.body, b"231.5");
    assert_eq!(got.header("x-edgecar-topic"), Some("sensors/oven/temp"));
    let _ = sub.kill();
}
