//! `pubsub.mqtt` against a real mosquitto: edgecar's publishes reach plain MQTT clients,
//! messages from plain MQTT clients reach the app (raw, through a `rawPayload` subscription, and
//! wildcards), and a QoS 1 message the app had not taken when edgecar was killed is redelivered
//! by the broker's persistent session after the restart.

use std::path::Path;
use std::time::Duration;

use edgecar_tests::{Edgecar, MosquittoServer, SubscriberApp, eventually, write_component};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

fn resources(broker: &MosquittoServer) -> tempfile::TempDir {
    let res = tempfile::tempdir().unwrap();
    write_component(
        res.path(),
        "pubsub",
        "pubsub.mqtt",
        &[("url", &broker.url()), ("qos", "1")],
    );
    res
}

fn start(state: &Path, res: &Path, app: &SubscriberApp) -> Edgecar {
    Edgecar::start(
        state,
        &[
            "--app-id",
            "plant",
            "--app-port",
            &app.port.to_string(),
            "--resources-path",
            res.to_str().unwrap(),
        ],
    )
}

fn wait_subscribed(ec: &Edgecar, n: usize) {
    eventually(WAIT, "subscriptions to start", || {
        let m = ec.req("GET", "/v1.0/metadata", b"", &[]).json();
        (m["subscriptions"].as_array().map_or(0, Vec::len) >= n).then_some(())
    });
}

#[test]
fn edgecar_and_plain_mqtt_clients_exchange_messages() {
    let broker = MosquittoServer::start();
    let res = resources(&broker);
    let app = SubscriberApp::start(
        r#"[{"pubsubname":"pubsub","topic":"orders","route":"/orders"},
            {"pubsubname":"pubsub","topic":"sensors/+/temp","route":"/temp","metadata":{"rawPayload":"true"}}]"#,
        |_| (200, String::new()),
    );
    let (mut sub, lines) = broker.subscribe("orders");
    let state = tempfile::tempdir().unwrap();
    let ec = start(state.path(), res.path(), &app);
    wait_subscribed(&ec, 2);

    let r = ec.req(
        "POST",
        "/v1.0/publish/pubsub/orders",
        br#"{"id":42}"#,
        &[("content-type", "application/json")],
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let got = app.wait_for("/orders", 1, WAIT);
    let ce = got[0].json();
    assert_eq!(ce["data"], json!({"id": 42}));
    assert_eq!(ce["source"], "plant");
    // A plain MQTT client sees the CloudEvent edgecar published.
    let line = eventually(WAIT, "mosquitto_sub to see the event", || {
        lines.lock().unwrap().first().cloned()
    });
    let seen: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(seen["data"], json!({"id": 42}));
    let _ = sub.kill();

    // A device publishing plain MQTT: a rawPayload subscription with a wildcard gets it.
    broker.publish("sensors/boiler-1/temp", "71.5");
    let got = app.wait_for("/temp", 1, WAIT);
    let ce = got[0].json();
    assert_eq!(ce["data_base64"], "NzEuNQ==");
    assert_eq!(ce["topic"], "sensors/boiler-1/temp");

    let r = ec.req(
        "POST",
        "/v1.0-alpha1/publish/bulk/pubsub/orders",
        br#"[{"entryId":"1","event":{"id":1},"contentType":"application/json"},{"entryId":"2","event":{"id":2},"contentType":"application/json"}]"#,
        &[],
    );
    assert_eq!(r.status, 204, "{}", r.text());
    app.wait_for("/orders", 3, WAIT);
}

#[test]
fn an_unacked_message_is_redelivered_by_the_broker_after_kill_9() {
    let broker = MosquittoServer::start();
    let res = resources(&broker);
    let subscribe = r#"[{"pubsubname":"pubsub","topic":"jobs","route":"/jobs"}]"#;
    let app = SubscriberApp::start(subscribe, |_| (500, "not yet".into()));
    let app_port = app.port;
    let state = tempfile::tempdir().unwrap();
    let mut ec = start(state.path(), res.path(), &app);
    wait_subscribed(&ec, 1);
    let r = ec.req(
        "POST",
        "/v1.0/publish/pubsub/jobs",
        br#"{"job":"j1"}"#,
        &[("content-type", "application/json")],
    );
    assert_eq!(r.status, 204);
    app.wait_for("/jobs", 1, WAIT);
    ec.kill9();
    drop(app);
    let app = SubscriberApp::start_on(app_port, subscribe, |_| (200, String::new()));
    let _ec = start(state.path(), res.path(), &app);
    let got = app.wait_for("/jobs", 1, WAIT);
    assert_eq!(got[0].json()["data"]["job"], "j1");
}

#[test]
fn an_unreachable_broker_fails_start_up_with_a_clear_error() {
    let res = tempfile::tempdir().unwrap();
    let port = edgecar_tests::free_port();
    write_component(
        res.path(),
        "pubsub",
        "pubsub.mqtt",
        &[("url", &format!("tcp://127.0.0.1:{port}"))],
    );
    let out = std::process::Command::new(edgecar_tests::edgecar_bin())
        .args([
            "run",
            "--dapr-http-port",
            "0",
            "--dapr-grpc-port",
            "0",
            "--metrics-port",
            "0",
            "--resources-path",
            res.path().to_str().unwrap(),
        ])
        .arg("--state-dir")
        .arg(res.path().join("state"))
        .env_remove("DAPR_API_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cannot connect to the MQTT broker"), "{err}");
}
