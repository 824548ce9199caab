//! What waits for devices, end to end with the real binary and mosquitto's clients: the mailbox
//! (a command sent while a device sleeps arrives when it reconnects, across a `kill -9` of the
//! gateway, and the app fetches the answer later), devices' pub/sub subscriptions (events reach
//! the device's tree, wait for it while it is away, and never reach another device), presence
//! events, and reading configuration from a device.

use std::path::Path;
use std::time::Duration;

use edgecar_tests::mqtt::{
    MosquittoSub, add_device, device_request as request, json_payload, mosquitto_pub, topic,
};
use edgecar_tests::{Edgecar, SubscriberApp, write_component};

const WAIT: Duration = Duration::from_secs(15);

fn publish(port: u16, user: &str, pw: &str, t: &str, body: &str) {
    let out = mosquitto_pub(port, user, pw, t, body, &["-q", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn config(dir: &Path, text: &str) -> String {
    let cfg = dir.join("edgecar.yaml");
    std::fs::write(&cfg, text).unwrap();
    cfg.to_str().unwrap().to_owned()
}

#[test]
fn a_command_queued_for_a_sleeping_device_arrives_when_it_reconnects_even_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let pw = add_device(dir.path(), "dev1");
    let mut ec = Edgecar::start(dir.path(), &[]);
    // Without the header, a sleeping device is still an immediate 503.
    let r = ec.req("POST", "/v1.0/invoke/dev1/method/valve/open", b"{}", &[]);
    assert_eq!(r.status, 503, "{}", r.text());
    // Bad TTLs are refused before anything is queued.
    for bad in ["soon", "0", "9999h"] {
        let r = ec.req(
            "POST",
            "/v1.0/invoke/dev1/method/valve/open",
            b"{}",
            &[("x-edgecar-mailbox-ttl", bad)],
        );
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "ERR_MALFORMED_REQUEST"),
            "{bad}: {}",
            r.text()
        );
    }
    let r = ec.req(
        "POST",
        "/v1.0/invoke/dev1/method/valve/open?percent=40",
        br#"{"by":"scheduler"}"#,
        &[
            ("x-edgecar-mailbox-ttl", "10m"),
            ("content-type", "application/json"),
        ],
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let queued = r.json();
    let id = queued["id"].as_str().unwrap().to_owned();
    assert_eq!(queued["status"], "queued");
    assert_eq!(queued["method"], "/valve/open?percent=40");
    let location = format!("/v1.0/devices/dev1/mailbox/{id}");
    assert_eq!(r.header("location"), Some(location.as_str()));
    let r = ec.req("GET", &location, b"", &[]);
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (202, Some("queued"))
    );
    // A second command that expires while the device sleeps.
    let r = ec.req(
        "POST",
        "/v1.0/invoke/dev1/method/beep",
        b"",
        &[("x-edgecar-mailbox-ttl", "1")],
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let short = r.json()["id"].as_str().unwrap().to_owned();

    // The power goes; the gateway comes back; the device wakes later.
    ec.kill9();
    std::thread::sleep(Duration::from_millis(1500));
    let ec = Edgecar::start(dir.path(), &[]);
    let r = ec.req(
        "GET",
        &format!("/v1.0/devices/dev1/mailbox/{short}"),
        b"",
        &[],
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (504, "ERR_DIRECT_INVOKE"),
        "{}",
        r.text()
    );
    let device = MosquittoSub::start(
        ec.mqtt_port,
        "dev1",
        &pw,
        &["edgecar/v1/dev1/cmd/#"],
        &["-q", "1", "-V", "mqttv5"],
    );
    let cmd = device.wait_for(1, WAIT).remove(0);
    assert_eq!(
        topic(&cmd),
        format!("edgecar/v1/dev1/cmd/valve/open/{id}"),
        "{cmd}"
    );
    assert_eq!(json_payload(&cmd), serde_json::json!({"by": "scheduler"}));
    assert_eq!(cmd["properties"]["user-properties"]["query"], "percent=40");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(device.messages().len(), 1, "the expired command never came");
    // Delivered (acknowledged with PUBACK) but not yet answered.
    let r = ec.req("GET", &location, b"", &[]);
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (202, Some("delivered"))
    );
    // The device answers; the app fetches the answer as the call would have returned it.
    publish(
        ec.mqtt_port,
        "dev1",
        &pw,
        &format!("edgecar/v1/dev1/cmdres/{id}/200"),
        r#"{"opened":40}"#,
    );
    let r = edgecar_tests::eventually(WAIT, "the answer", || {
        let r = ec.req("GET", &location, b"", &[]);
        (r.status == 200).then_some(r)
    });
    assert_eq!(r.json(), serde_json::json!({"opened": 40}));
    assert_eq!(r.header("x-edgecar-mailbox"), Some("answered"));
    // Nobody else's: another device's path, an unknown id.
    let r = ec.req("GET", &format!("/v1.0/devices/dev2/mailbox/{id}"), b"", &[]);
    assert_eq!(r.status, 404);
    let r = ec.req("GET", "/v1.0/devices/dev1/mailbox/nope", b"", &[]);
    assert_eq!(r.status, 404);
}

#[test]
fn devices_subscribe_to_pubsub_topics_and_events_wait_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let p1 = add_device(dir.path(), "dev1");
    let p2 = add_device(dir.path(), "dev2");
    // The app subscribes to the same topic: both it and the device get every event.
    let app = SubscriberApp::start(
        r#"[{"pubsubname":"pubsub","topic":"alerts","route":"/alerts"}]"#,
        |_| (200, String::new()),
    );
    let args = ["--app-port".to_owned(), app.port.to_string()];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut ec = Edgecar::start(dir.path(), &args);
    let port = ec.mqtt_port;
    let (status, body) = request(port, "dev1", &p1, "subscribe/1?topic=alerts", "");
    assert_eq!(status, "201", "{body}");
    assert_eq!(body["deliveredTo"], "edgecar/v1/dev1/sub/pubsub/alerts");
    let (status, _) = request(port, "dev1", &p1, "subscribe/2?topic=alerts", "");
    assert_eq!(status, "200", "subscribing twice is fine");
    let (status, body) = request(port, "dev1", &p1, "subscribe/3?topic=a%2Bb", "");
    assert_eq!(status, "400", "{body}");
    let (status, body) = request(port, "dev1", &p1, "subscribe/4?topic=x&pubsub=nope", "");
    assert_eq!(
        (status.as_str(), body["errorCode"].as_str()),
        ("404", Some("ERR_PUBSUB_NOT_FOUND"))
    );

    let dev1 = MosquittoSub::start(port, "dev1", &p1, &["edgecar/v1/dev1/sub/#"], &["-q", "1"]);
    let dev2 = MosquittoSub::start(port, "dev2", &p2, &["edgecar/v1/dev2/#"], &["-q", "1"]);
    let r = ec.req(
        "POST",
        "/v1.0/publish/pubsub/alerts",
        br#"{"level":"high","n":1}"#,
        &[("content-type", "application/json")],
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let got = dev1.wait_for(1, WAIT).remove(0);
    assert_eq!(topic(&got), "edgecar/v1/dev1/sub/pubsub/alerts");
    let ev = json_payload(&got);
    assert_eq!(ev["data"], serde_json::json!({"level": "high", "n": 1}));
    assert_eq!(ev["topic"], "alerts");
    app.wait_for("/alerts", 1, WAIT);

    // dev1 sleeps; the event waits for it, across a kill -9 of the gateway.
    drop(dev1);
    let r = ec.req(
        "POST",
        "/v1.0/publish/pubsub/alerts",
        br#"{"level":"low","n":2}"#,
        &[("content-type", "application/json")],
    );
    assert_eq!(r.status, 204);
    app.wait_for("/alerts", 2, WAIT);
    ec.kill9();
    let ec = Edgecar::start(dir.path(), &args);
    let port = ec.mqtt_port;
    let dev1 = MosquittoSub::start(port, "dev1", &p1, &["edgecar/v1/dev1/sub/#"], &["-q", "1"]);
    let got = dev1.wait_for(1, WAIT);
    assert_eq!(json_payload(&got[0])["data"]["n"], 2, "{got:?}");
    // Delivery is at-least-once: an event whose acknowledgement the crash cut off comes again,
    // with the same CloudEvent id for the device to recognise it.
    let distinct = |s: &MosquittoSub| {
        let mut ids: Vec<(String, i64)> = s
            .messages()
            .iter()
            .map(|m| {
                let ev = json_payload(m);
                (
                    ev["id"].as_str().unwrap_or_default().to_owned(),
                    ev["data"]["n"].as_i64().unwrap_or_default(),
                )
            })
            .collect();
        ids.sort();
        ids.dedup();
        ids
    };

    let d = ec.req("GET", "/v1.0/devices/dev1", b"", &[]).json();
    assert_eq!(
        d["subscriptions"],
        serde_json::json!([{"pubsub": "pubsub", "topic": "alerts"}])
    );
    // Everything acknowledged leaves the outbox.
    edgecar_tests::eventually(WAIT, "an empty outbox", || {
        let d = ec.req("GET", "/v1.0/devices/dev1", b"", &[]).json();
        (d["outboxPending"] == 0).then_some(())
    });
    // Unsubscribed: no more events, and dev2 never saw any.
    let (status, _) = request(port, "dev1", &p1, "unsubscribe/5?topic=alerts", "");
    assert_eq!(status, "204");
    let (status, _) = request(port, "dev1", &p1, "unsubscribe/6?topic=alerts", "");
    assert_eq!(status, "404");
    let r = ec.req("POST", "/v1.0/publish/pubsub/alerts", br#"{"n":3}"#, &[]);
    assert_eq!(r.status, 204);
    app.wait_for("/alerts", 3, WAIT);
    std::thread::sleep(Duration::from_millis(500));
    let seen = distinct(&dev1);
    assert_eq!(seen.len(), 1, "{}", dev1.log());
    assert_eq!(seen[0].1, 2);
    assert!(
        dev2.messages().iter().all(|m| !topic(m).contains("/sub/")),
        "{}",
        dev2.log()
    );
}

#[test]
fn presence_events_and_configuration_reads_from_devices() {
    let dir = tempfile::tempdir().unwrap();
    let pw = add_device(dir.path(), "dev1");
    let res = tempfile::tempdir().unwrap();
    let items = dir.path().join("items.yml");
    std::fs::write(&items, "interval: 30s\nmode: eco\n").unwrap();
    write_component(
        res.path(),
        "settings",
        "configuration.file",
        &[("path", items.to_str().unwrap())],
    );
    // A resources path replaces the embedded components: the pub/sub is declared too.
    write_component(res.path(), "pubsub", "pubsub.sled", &[]);
    let app = SubscriberApp::start(
        r#"[{"pubsubname":"pubsub","topic":"presence","route":"/presence"}]"#,
        |_| (200, String::new()),
    );
    let cfg = config(dir.path(), "devices:\n  presenceTopic: presence\n");
    let ec = Edgecar::start(
        dir.path(),
        &[
            "--config",
            &cfg,
            "--resources-path",
            res.path().to_str().unwrap(),
            "--app-port",
            &app.port.to_string(),
        ],
    );
    let (status, body) = request(
        ec.mqtt_port,
        "dev1",
        &pw,
        "config.get/1?store=settings&keys=interval,absent",
        "",
    );
    assert_eq!(status, "200", "{body}");
    assert_eq!(body["interval"]["value"], "30s", "{body}");
    assert!(body.get("absent").is_none(), "{body}");
    let (status, body) = request(ec.mqtt_port, "dev1", &pw, "config.get/2", "");
    assert_eq!(status, "400", "{body}");

    // Each request above is a subscriber connection plus an overlapping publisher: the device
    // came (first connection) and went (last connection) twice; overlaps are not events.
    let deadline = std::time::Instant::now() + WAIT;
    while app.on("/presence").len() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "presence events: {:?}\n{}",
            app.on("/presence")
                .iter()
                .map(|r| r.json())
                .collect::<Vec<_>>(),
            ec.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let events: Vec<serde_json::Value> = app.on("/presence").iter().map(|r| r.json()).collect();
    assert_eq!(events.len(), 4, "{events:?}");
    for (kind, connected) in [
        ("io.edgecar.device.connected", true),
        ("io.edgecar.device.disconnected", false),
    ] {
        let of_kind: Vec<_> = events.iter().filter(|e| e["type"] == kind).collect();
        assert_eq!(of_kind.len(), 2, "{events:?}");
        for e in of_kind {
            assert_eq!(e["source"], "dev1");
            assert_eq!(e["data"]["device"], "dev1");
            assert_eq!(e["data"]["connected"], connected);
        }
    }
}
