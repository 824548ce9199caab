//! The `edgecar-device-client` library and the `edgecar-device` CLI against the real binary: the
//! protocol as documented is enough to build a client that never links the gateway.

use std::process::Command;
use std::time::Duration;

use edgecar_device_client::{Client, Error, Options};
use edgecar_tests::mqtt::add_device;
use edgecar_tests::{AppResponse, Edgecar, TestApp, device_cli_bin, http};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_speaks_the_protocol() {
    let app = TestApp::start(|r| {
        AppResponse::new(200, format!("hello {}", String::from_utf8_lossy(&r.body)))
    });
    let dir = tempfile::tempdir().unwrap();
    let pw = add_device(dir.path(), "sensor");
    // The default state store, and a cached capability to call.
    let res = tempfile::tempdir().unwrap();
    edgecar_tests::write_component(res.path(), "statestore", "state.sled", &[]);
    std::fs::write(
        res.path().join("stats.yaml"),
        "apiVersion: edgecar.io/v1alpha1
kind: Capability
metadata:
  name: stats
spec:
  cache: {ttl: 60s}
  offers:
  - {name: local, type: builtin, builtin: aggregate}
",
    )
    .unwrap();
    let ec = Edgecar::start(
        dir.path(),
        &[
            "--app-id",
            "greeter",
            "--app-port",
            &app.port.to_string(),
            "--resources-path",
            res.path().to_str().unwrap(),
        ],
    );
    let opts = |pw: &str| Options::new("127.0.0.1", ec.mqtt_port, "sensor", pw);

    let refused = Client::connect(opts("wrong")).await;
    assert!(
        matches!(refused, Err(Error::Refused(_))),
        "{:?}",
        refused.err()
    );

    let (client, mut commands) = Client::connect(opts(&pw)).await.unwrap();
    assert_eq!(client.state_get("temp").await.unwrap(), None);
    client
        .state_set("temp", &serde_json::json!({"c": 20}))
        .await
        .unwrap();
    let (value, etag) = client.state_get("temp").await.unwrap().unwrap();
    assert_eq!(&value[..], br#"{"c":20}"#);
    assert_eq!(etag.as_deref(), Some("1"));
    let stale = client.state_delete("temp", Some("9")).await.unwrap_err();
    assert!(
        matches!(stale, Error::Api { status: 409, ref code, .. } if code == "ERR_STATE_DELETE"),
        "{stale}"
    );
    client.state_delete("temp", etag.as_deref()).await.unwrap();
    let r = client
        .invoke("greeter", "hi", "POST", "device")
        .await
        .unwrap();
    assert_eq!(&r.body[..], b"hello device");
    // Capability replies say which offer served them and the cache status, as HTTP headers do.
    let first = client
        .capability("stats", "summary", "[1,2,3]")
        .await
        .unwrap();
    assert_eq!(
        (first.offer.as_deref(), first.cache.as_deref()),
        (Some("local"), Some("miss"))
    );
    let again = client
        .capability("stats", "summary", "[1,2,3]")
        .await
        .unwrap();
    assert_eq!(again.cache.as_deref(), Some("hit"));
    assert_eq!(again.body, first.body);
    let missing = client.capability("nope", "", "{}").await.unwrap_err();
    assert!(
        matches!(missing, Error::Api { status: 404, .. }),
        "{missing}"
    );

    // A command from an app, answered by the library.
    let port = ec.port;
    let call = tokio::task::spawn_blocking(move || {
        http(
            port,
            "POST",
            "/v1.0/invoke/sensor/method/calibrate",
            b"42",
            &[],
        )
    });
    let cmd = tokio::time::timeout(Duration::from_secs(10), commands.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (cmd.method.as_str(), &cmd.body[..]),
        ("calibrate", &b"42"[..])
    );
    client.reply(&cmd, 200, r#"{"offset":0.5}"#).await.unwrap();
    let r = call.await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, r#"{"offset":0.5}"#));
    client.disconnect().await;
}

#[test]
fn the_cli_makes_the_protocol_scriptable() {
    let dir = tempfile::tempdir().unwrap();
    let pw = add_device(dir.path(), "shell");
    let ec = Edgecar::start(dir.path(), &[]);
    let cli = |args: &[&str]| {
        Command::new(device_cli_bin())
            .args(["--port", &ec.mqtt_port.to_string(), "--id", "shell"])
            .args(args)
            .env("EDGECAR_DEVICE_PASSWORD", &pw)
            .output()
            .unwrap()
    };
    let out = cli(&["state", "set", "greeting", "hello world"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["state", "get", "greeting"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "\"hello world\"\n");
    let out = cli(&["state", "get", "nothing"]);
    assert_eq!(out.status.code(), Some(3));
    let out = cli(&["invoke", "nobody", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ERR_DIRECT_INVOKE"));

    // `listen --exec` turns a shell command into the device's command handler. The earlier
    // commands' connections must be gone first, or a command could go to one that is closing.
    edgecar_tests::eventually(Duration::from_secs(10), "no connection of shell", || {
        let d = ec.req("GET", "/v1.0/devices/shell", b"", &[]).json();
        (d["connections"] == 0).then_some(())
    });
    let mut listener = Command::new(device_cli_bin())
        .args(["--port", &ec.mqtt_port.to_string(), "--id", "shell"])
        .args([
            "listen",
            "--count",
            "1",
            "--exec",
            "printf '%s:' \"$METHOD\"; tr a-z A-Z",
        ])
        .env("EDGECAR_DEVICE_PASSWORD", &pw)
        .spawn()
        .unwrap();
    let r = edgecar_tests::eventually(
        Duration::from_secs(10),
        "the listener to be subscribed",
        || {
            let r = ec.req(
                "POST",
                "/v1.0/invoke/shell/method/shout",
                b"quiet please",
                &[],
            );
            (r.status != 503).then_some(r)
        },
    );
    assert_eq!((r.status, r.text().as_str()), (200, "shout:QUIET PLEASE"));
    assert!(listener.wait().unwrap().success());
}

#[test]
fn the_cli_publishes_subscribes_and_reads_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let pw = add_device(dir.path(), "shell");
    let items = dir.path().join("items.yml");
    std::fs::write(&items, "interval: 30s\n").unwrap();
    let res = tempfile::tempdir().unwrap();
    edgecar_tests::write_component(res.path(), "pubsub", "pubsub.sled", &[]);
    edgecar_tests::write_component(
        res.path(),
        "settings",
        "configuration.file",
        &[("path", items.to_str().unwrap())],
    );
    let ec = Edgecar::start(
        dir.path(),
        &["--resources-path", res.path().to_str().unwrap()],
    );
    let cli = |args: &[&str]| {
        Command::new(device_cli_bin())
            .args(["--port", &ec.mqtt_port.to_string(), "--id", "shell"])
            .args(args)
            .env("EDGECAR_DEVICE_PASSWORD", &pw)
            .output()
            .unwrap()
    };
    let ok = |out: &std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let config: serde_json::Value =
        serde_json::from_str(&ok(&cli(&["config", "settings", "interval"]))).unwrap();
    assert_eq!(config["interval"]["value"], "30s");
    // Subscribe and leave: events published meanwhile wait for the device.
    ok(&cli(&["subscribe", "orders", "--count", "0"]));
    ok(&cli(&["publish", "orders", "-d", r#"{"id":1}"#]));
    let r = ec.req(
        "POST",
        "/v1.0/publish/pubsub/orders",
        br#"{"id":2}"#,
        &[("content-type", "application/json")],
    );
    assert_eq!(r.status, 204);
    let out = ok(&cli(&["subscribe", "orders", "--count", "2"]));
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2, "{out}");
    assert_eq!(events[0]["event"]["data"]["id"], 1, "{out}");
    assert_eq!(
        events[0]["event"]["source"], "shell",
        "the device published it"
    );
    assert_eq!(events[1]["event"]["data"]["id"], 2);
    assert_eq!(events[1]["event"]["source"], "edgecar");
    assert_eq!(events[1]["topic"], "orders");
    ok(&cli(&["unsubscribe", "orders"]));
    let out = cli(&["unsubscribe", "orders"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
}

#[test]
fn the_cli_capability_call_shows_the_offer_and_cache_status() {
    let dir = tempfile::tempdir().unwrap();
    let pw = add_device(dir.path(), "shell");
    let res = tempfile::tempdir().unwrap();
    std::fs::write(
        res.path().join("stats.yaml"),
        "apiVersion: edgecar.io/v1alpha1\nkind: Capability\nmetadata:\n  name: stats\nspec:\n  cache: {ttl: 60s}\n  offers:\n  - {name: local, type: builtin, builtin: aggregate}\n",
    )
    .unwrap();
    let ec = Edgecar::start(
        dir.path(),
        &["--resources-path", res.path().to_str().unwrap()],
    );
    let call = || {
        Command::new(device_cli_bin())
            .args(["--port", &ec.mqtt_port.to_string(), "--id", "shell"])
            .args(["capability", "stats", "summary", "-d", "[1,2,3]"])
            .env("EDGECAR_DEVICE_PASSWORD", &pw)
            .output()
            .unwrap()
    };
    let first = call();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stdout).starts_with("{\"count\":3"));
    let err = String::from_utf8_lossy(&first.stderr);
    assert!(
        err.contains("x-edgecar-offer: local") && err.contains("x-edgecar-cache: miss"),
        "{err}"
    );
    let second = call();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("x-edgecar-cache: hit"), "{err}");
}
