//! Readiness as daprd reports it: `/v1.0/healthz` answers 500 until the app's subscriptions are
//! loaded, so a publish made as soon as it says ready reaches the subscriber, even on a pub/sub
//! that keeps nothing for absent subscribers (`pubsub.in-memory`).

use std::time::{Duration, Instant};

use edgecar_tests::{AppResponse, Edgecar, TestApp, eventually, write_component};

#[test]
fn a_publish_made_when_healthz_says_ready_reaches_the_subscriber() {
    let app = TestApp::start(|r| {
        if r.path == "/dapr/subscribe" {
            // A slow app: its subscriptions arrive well after edgecar listens.
            let mut resp = AppResponse::new(
                200,
                r#"[{"pubsubname":"mem","topic":"orders","route":"/orders"}]"#,
            )
            .header("content-type", "application/json");
            resp.delay = Duration::from_millis(1500);
            resp
        } else {
            AppResponse::new(200, "")
        }
    });
    let (dir, res) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_component(res.path(), "mem", "pubsub.in-memory", &[]);
    let ec = Edgecar::start(
        dir.path(),
        &[
            "--app-port",
            &app.port.to_string(),
            "--resources-path",
            res.path().to_str().unwrap(),
        ],
    );
    let started = Instant::now();
    let mut not_ready = 0;
    loop {
        let r = ec.req("GET", "/v1.0/healthz", b"", &[]);
        if r.status == 204 {
            break;
        }
        assert_eq!(r.status, 500, "{}", r.text());
        assert_eq!(r.json()["errorCode"], "ERR_HEALTH_NOT_READY");
        not_ready += 1;
        assert!(started.elapsed() < Duration::from_secs(20), "never ready");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        not_ready > 0,
        "healthz said ready before the app's subscriptions were loaded"
    );
    // Components are loaded from the first moment edgecar serves.
    assert_eq!(
        ec.req("GET", "/v1.0/healthz/outbound", b"", &[]).status,
        204
    );
    let r = ec.req(
        "POST",
        "/v1.0/publish/mem/orders",
        br#"{"n":1}"#,
        &[("content-type", "application/json")],
    );
    assert_eq!(r.status, 204, "{}", r.text());
    eventually(
        Duration::from_secs(10),
        "the event at the subscriber",
        || {
            app.received()
                .iter()
                .find(|r| r.path == "/orders")
                .map(|_| ())
        },
    );
}
