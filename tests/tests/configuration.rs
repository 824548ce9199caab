//! The configuration API end to end: a file-backed store that reloads on change, and a real Redis
//! with Dapr's `value||version` items, with change notifications POSTed to a real app.

use std::time::Duration;

use edgecar_tests::{AppResponse, Edgecar, RedisServer, TestApp, eventually, write_component};
use serde_json::json;

fn notifications(app: &TestApp) -> Vec<(String, serde_json::Value)> {
    app.received()
        .into_iter()
        .filter(|r| r.path.starts_with("/configuration/"))
        .map(|r| (r.path, serde_json::from_slice(&r.body).unwrap()))
        .collect()
}

#[test]
fn file_store_reads_notifies_on_edit_and_unsubscribes() {
    let app = TestApp::start(|_| AppResponse::new(200, ""));
    let (dir, res) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let data = tempfile::tempdir().unwrap();
    let items = data.path().join("settings.yml");
    std::fs::write(
        &items,
        "threshold: 21.5\nmode:\n  value: eco\n  metadata: {owner: ops}\n",
    )
    .unwrap();
    std::fs::write(res.path().join("config.yaml"), format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: settings\nspec:\n  type: configuration.file\n  version: v1\n  metadata:\n  - name: path\n    value: {}\n", items.display())).unwrap();
    let ec = Edgecar::start(
        dir.path(),
        &[
            "--resources-path",
            res.path().to_str().unwrap(),
            "--app-port",
            &app.port.to_string(),
        ],
    );

    let r = ec.req(
        "GET",
        "/v1.0/configuration/settings?key=threshold&key=mode&key=absent",
        b"",
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let got = r.json();
    assert_eq!(got["threshold"]["value"], "21.5");
    assert_eq!(got["mode"]["metadata"], json!({"owner": "ops"}));
    assert!(got.get("absent").is_none());
    assert_eq!(
        ec.req("GET", "/v1.0/configuration/settings", b"", &[])
            .json()
            .as_object()
            .unwrap()
            .len(),
        2
    );

    let sub = ec.req(
        "GET",
        "/v1.0/configuration/settings/subscribe?key=threshold",
        b"",
        &[],
    );
    assert_eq!(sub.status, 200, "{}", sub.text());
    let id = sub.json()["id"].as_str().unwrap().to_owned();
    std::fs::write(&items, "threshold: 23\nmode:\n  value: boost\n").unwrap();
    let got = eventually(Duration::from_secs(10), "the change notification", || {
        notifications(&app).into_iter().next()
    });
    assert_eq!(
        got.0, "/configuration/settings/threshold",
        "Dapr's notification route"
    );
    assert_eq!(got.1["id"], id.as_str());
    assert_eq!(got.1["items"]["threshold"]["value"], "23");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        notifications(&app).len(),
        1,
        "mode changed too, but the subscription names only threshold"
    );

    let r = ec.req(
        "GET",
        &format!("/v1.0/configuration/settings/{id}/unsubscribe"),
        b"",
        &[],
    );
    assert_eq!((r.status, r.json()["ok"].clone()), (200, json!(true)));
    std::fs::write(&items, "threshold: 30\n").unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        notifications(&app).len(),
        1,
        "no notifications after unsubscribe"
    );
    assert_eq!(
        ec.req(
            "GET",
            "/v1.0/configuration/settings?key=threshold",
            b"",
            &[]
        )
        .json()["threshold"]["value"],
        "30"
    );

    // A broken edit keeps the previous items.
    std::fs::write(&items, "threshold: [unclosed\n").unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        ec.req(
            "GET",
            "/v1.0/configuration/settings?key=threshold",
            b"",
            &[]
        )
        .json()["threshold"]["value"],
        "30"
    );

    let r = ec.req(
        "GET",
        "/v1.0/configuration/settings/nope/unsubscribe",
        b"",
        &[],
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (500, "ERR_CONFIGURATION_UNSUBSCRIBE")
    );
    let r = ec.req("GET", "/v1.0/configuration/other", b"", &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "ERR_CONFIGURATION_STORE_NOT_FOUND")
    );
}

#[test]
fn redis_store_reads_dapr_items_and_notifies_on_set() {
    let redis = RedisServer::start();
    redis
        .command(&["MSET", "orderId1", "101||1", "orderId2", "102||1"])
        .unwrap();
    let app = TestApp::start(|_| AppResponse::new(200, ""));
    let (dir, res) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_component(
        res.path(),
        "configstore",
        "configuration.redis",
        &[("redisHost", &format!("127.0.0.1:{}", redis.port))],
    );
    let ec = Edgecar::start(
        dir.path(),
        &[
            "--resources-path",
            res.path().to_str().unwrap(),
            "--app-port",
            &app.port.to_string(),
        ],
    );
    let r = ec.req(
        "GET",
        "/v1.0/configuration/configstore?key=orderId1",
        b"",
        &[],
    );
    assert_eq!(
        r.json(),
        json!({"orderId1": {"value": "101", "version": "1", "metadata": {}}})
    );
    assert_eq!(
        ec.req("GET", "/v1.0/configuration/configstore", b"", &[])
            .json()
            .as_object()
            .unwrap()
            .len(),
        2
    );
    let sub = ec.req(
        "GET",
        "/v1.0/configuration/configstore/subscribe?key=orderId2",
        b"",
        &[],
    );
    assert_eq!(sub.status, 200, "{}", sub.text());
    std::thread::sleep(Duration::from_millis(300)); // the listener's PSUBSCRIBE is asynchronous
    redis.command(&["SET", "orderId2", "205||2"]).unwrap();
    let got = eventually(
        Duration::from_secs(10),
        "the Redis change notification",
        || notifications(&app).into_iter().next(),
    );
    assert_eq!(got.0, "/configuration/configstore/orderId2");
    assert_eq!(
        got.1["items"]["orderId2"],
        json!({"value": "205", "version": "2", "metadata": {}})
    );
}

#[test]
fn subscribing_without_an_app_is_a_clear_error() {
    let (dir, res) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let data = tempfile::tempdir().unwrap();
    let items = data.path().join("s.yml");
    std::fs::write(&items, "a: 1\n").unwrap();
    write_component(
        res.path(),
        "settings",
        "configuration.file",
        &[("path", items.to_str().unwrap())],
    );
    let ec = Edgecar::start(
        dir.path(),
        &["--resources-path", res.path().to_str().unwrap()],
    );
    let r = ec.req("GET", "/v1.0/configuration/settings/subscribe", b"", &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "ERR_CONFIGURATION_SUBSCRIBE")
    );
    assert!(r.json()["message"].as_str().unwrap().contains("--app-port"));
}
