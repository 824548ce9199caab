//! The MQTT device endpoint end to end: the real binary, driven by mosquitto_pub, mosquitto_sub
//! and mosquitto_rr (clients nobody on the team wrote), a real HTTP app, and a raw client for the
//! bytes real clients refuse to send.

use std::path::Path;
use std::time::{Duration, Instant};

use edgecar_tests::mqtt::{
    MosquittoSub, RawMqtt, add_device, device_cmd, json_payload, mosquitto_pub, mosquitto_rr,
    packet, payload, publish_packet, topic,
};
use edgecar_tests::{AppResponse, Edgecar, TestApp, eventually};

const WAIT: Duration = Duration::from_secs(10);

/// A gateway with devices `dev1` and `dev2`; returns it and their passwords.
fn site(dir: &Path, args: &[&str]) -> (Edgecar, String, String) {
    let p1 = add_device(dir, "dev1");
    let p2 = add_device(dir, "dev2");
    (Edgecar::start(dir, args), p1, p2)
}

fn status_of(m: &serde_json::Value) -> &str {
    let t = topic(m);
    let t = t.split('?').next().unwrap_or(t);
    t.rsplit('/').next().unwrap_or_default()
}

#[test]
fn unknown_devices_and_wrong_passwords_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ec, p1, _) = site(dir.path(), &[]);
    let port = ec.mqtt_port;
    assert_ne!(port, 0, "the harness learnt the MQTT port");
    for (user, pw) in [("dev1", "wrong"), ("ghost", p1.as_str()), ("dev1", "")] {
        let out = mosquitto_pub(port, user, pw, "edgecar/v1/dev1/req/x/1", "x", &[]);
        assert!(!out.status.success(), "{user}/{pw} was let in");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("not authorised") || err.contains("refused"),
            "{err}"
        );
        let out = mosquitto_pub(
            port,
            user,
            pw,
            "edgecar/v1/dev1/req/x/1",
            "x",
            &["-V", "mqttv5"],
        );
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("Not authorized"));
    }
    let log = ec.log.lock().unwrap().clone();
    assert!(log.contains("device authentication failed"), "{log}");
    assert!(!log.contains(&p1), "a password reached the log");
    let out = mosquitto_pub(port, "dev1", &p1, "edgecar/v1/dev1/req/x/1", "x", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn state_round_trip_in_the_devices_own_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let (ec, p1, p2) = site(dir.path(), &[]);
    let port = ec.mqtt_port;
    let sub1 = MosquittoSub::start(port, "dev1", &p1, &["edgecar/v1/dev1/res/#"], &["-q", "1"]);
    let sub2 = MosquittoSub::start(port, "dev2", &p2, &["edgecar/v1/dev2/res/#"], &[]);
    let pub1 = |t: &str, m: &str| {
        let out = mosquitto_pub(port, "dev1", &p1, t, m, &["-q", "1"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    pub1(
        "edgecar/v1/dev1/req/state.save/s1",
        r#"[{"key":"temp","value":{"c":21.5}},{"key":"secret","value":"dev1 only"}]"#,
    );
    pub1("edgecar/v1/dev1/req/state.get/g1?key=temp", "");
    pub1(
        "edgecar/v1/dev1/req/state.bulk/b1",
        r#"{"keys":["temp","secret","none"]}"#,
    );
    let m = sub1.wait_for(3, WAIT);
    assert_eq!(topic(&m[0]), "edgecar/v1/dev1/res/state.save/s1/204");
    assert_eq!(topic(&m[1]), "edgecar/v1/dev1/res/state.get/g1/200?etag=1");
    assert_eq!(json_payload(&m[1]), serde_json::json!({"c": 21.5}));
    assert_eq!(topic(&m[2]), "edgecar/v1/dev1/res/state.bulk/b1/200");
    let bulk = &json_payload(&m[2]);
    assert_eq!(bulk[1]["data"], "dev1 only");
    assert_eq!(bulk[1]["etag"], "1");
    assert!(bulk[2].get("data").is_none());
    // Delete with a stale ETag is a conflict with the HTTP API's code; with the right one it works.
    pub1("edgecar/v1/dev1/req/state.delete/d1?key=temp&etag=9", "");
    pub1("edgecar/v1/dev1/req/state.delete/d2?key=temp&etag=1", "");
    let m = sub1.wait_for(5, WAIT);
    assert_eq!(status_of(&m[3]), "409");
    assert_eq!(json_payload(&m[3])["errorCode"], "ERR_STATE_DELETE");
    assert_eq!(topic(&m[4]), "edgecar/v1/dev1/res/state.delete/d2/204");

    // dev2 asking for the same key reads its own namespace: nothing there.
    let out = mosquitto_pub(
        port,
        "dev2",
        &p2,
        "edgecar/v1/dev2/req/state.get/x?key=secret",
        "",
        &[],
    );
    assert!(out.status.success());
    let m = sub2.wait_for(1, WAIT);
    assert_eq!(topic(&m[0]), "edgecar/v1/dev2/res/state.get/x/204");
    // The app sees device keys under the device's prefix only (Dapr's key scheme), not its own.
    assert_eq!(
        ec.req("GET", "/v1.0/state/statestore/secret", b"", &[])
            .status,
        204
    );
    // The other device never heard any of dev1's replies.
    assert_eq!(sub2.messages().len(), 1);
}

#[test]
fn isolation_another_devices_tree_cannot_be_read_subscribed_or_published() {
    let dir = tempfile::tempdir().unwrap();
    let (ec, p1, p2) = site(dir.path(), &[]);
    let port = ec.mqtt_port;
    let victim = MosquittoSub::start(port, "dev1", &p1, &["edgecar/v1/dev1/#"], &[]);
    // Subscriptions outside the tree fail in the SUBACK: 0x80 in 3.1.1, 0x87 in MQTT 5; the
    // allowed one in the same SUBSCRIBE is granted (QoS 2 downgraded to 1).
    let mut spy = MosquittoSub::start(port, "dev2", &p2, &["edgecar/v1/dev1/#"], &[]);
    assert_eq!(spy.suback(), [128], "{}", spy.log());
    assert!(spy.log().contains("All subscription requests were denied"));
    // mosquitto_sub exits on a refused SUBACK, a moment after printing it.
    eventually(WAIT, "the refused subscriber to exit", || {
        spy.exited().then_some(())
    });
    let spy5 = MosquittoSub::start(
        port,
        "dev2",
        &p2,
        &["edgecar/v1/+/res/#", "#", "edgecar/v1/dev2/#"],
        &["-V", "mqttv5", "-q", "2"],
    );
    assert_eq!(spy5.suback(), [135, 135, 1], "{}", spy5.log());
    // Publishing into dev1's tree: MQTT 5 gets PUBACK "not authorized", 3.1.1 is disconnected.
    let out = mosquitto_pub(
        port,
        "dev2",
        &p2,
        "edgecar/v1/dev1/req/state.get/1?key=secret",
        "",
        &["-V", "mqttv5", "-q", "1"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Not authorized"), "{err}");
    let out = mosquitto_pub(
        port,
        "dev2",
        &p2,
        "edgecar/v1/dev1/cmdres/x",
        "",
        &["-q", "1"],
    );
    assert!(!out.status.success(), "3.1.1: the connection is closed");
    let out = mosquitto_pub(port, "dev2", &p2, "somewhere/else", "", &[]);
    assert!(
        out.status.success(),
        "QoS 0 gives the client no way to notice, but nothing is delivered"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(victim.messages().is_empty(), "{}", victim.log());
    assert!(spy5.messages().is_empty(), "{}", spy5.log());
    drop(spy);
}

#[test]
fn mqtt5_request_reply_uses_the_response_topic_and_correlation_data() {
    let dir = tempfile::tempdir().unwrap();
    let (ec, p1, _) = site(dir.path(), &[]);
    let port = ec.mqtt_port;
    let r = mosquitto_rr(
        port,
        "dev1",
        &p1,
        "edgecar/v1/dev1/req/state.save",
        "edgecar/v1/dev1/inbox/a",
        r#"[{"key":"k","value":[1,2]}]"#,
        &["-D", "publish", "correlation-data", "c-1"],
    )
    .expect("a reply");
    assert_eq!(topic(&r), "edgecar/v1/dev1/inbox/a");
    assert_eq!(r["properties"]["correlation-data"], "c-1");
    assert_eq!(r["properties"]["user-properties"]["status"], "204");
    let r = mosquitto_rr(
        port,
        "dev1",
        &p1,
        "edgecar/v1/dev1/req/state.get/q?key=k",
        "edgecar/v1/dev1/inbox/b",
        "",
        &[],
    )
    .expect("a reply");
    assert_eq!(json_payload(&r), serde_json::json!([1, 2]));
    assert_eq!(r["properties"]["user-properties"]["etag"], "1");
    assert_eq!(r["properties"]["content-type"], "application/json");
    // A response topic in another device's tree: the client cannot even listen there.
    let r = mosquitto_rr(
        port,
        "dev1",
        &p1,
        "edgecar/v1/dev1/req/state.get/q?key=k",
        "edgecar/v1/dev2/inbox",
        "",
        &[],
    );
    assert!(r.is_none());
}

#[test]
fn devices_invoke_apps_and_call_capabilities() {
    let app = TestApp::start(|r| {
        let body = serde_json::json!({
            "method": r.method, "path": r.path,
            "type": r.header("content-type"), "body": String::from_utf8_lossy(&r.body),
        });
        AppResponse::new(201, body.to_string()).header("content-type", "application/json")
    });
    let dir = tempfile::tempdir().unwrap();
    let res = dir.path().join("resources");
    std::fs::create_dir(&res).unwrap();
    std::fs::write(
        res.join("echo.yaml"),
        "apiVersion: edgecar.io/v1alpha1\nkind: Capability\nmetadata:\n  name: echo\nspec:\n  offers:\n  - name: local\n    type: builtin\n    builtin: echo\n",
    )
    .unwrap();
    let (ec, p1, _) = site(
        dir.path(),
        &[
            "--app-id",
            "orders",
            "--app-port",
            &app.port.to_string(),
            "--resources-path",
            res.to_str().unwrap(),
        ],
    );
    let port = ec.mqtt_port;
    let sub = MosquittoSub::start(port, "dev1", &p1, &["edgecar/v1/dev1/res/#"], &[]);
    let out = mosquitto_pub(
        port,
        "dev1",
        &p1,
        "edgecar/v1/dev1/req/invoke/i1?app=orders&method=v2%2Fneworder&verb=PUT",
        r#"{"qty":3}"#,
        &[],
    );
    assert!(out.status.success());
    mosquitto_pub(
        port,
        "dev1",
        &p1,
        "edgecar/v1/dev1/req/capability/c1?name=echo",
        r#"{"hello":"device"}"#,
        &[],
    );
    mosquitto_pub(
        port,
        "dev1",
        &p1,
        "edgecar/v1/dev1/req/invoke/i2?app=nobody&method=x",
        "",
        &[],
    );
    mosquitto_pub(
        port,
        "dev1",
        &p1,
        "edgecar/v1/dev1/req/capability/c2?name=nope",
        "{}",
        &[],
    );
    let m = sub.wait_for(4, WAIT);
    let by_rid = |rid: &str| {
        m.iter()
            .find(|x| topic(x).split('/').nth(5) == Some(rid))
            .unwrap_or_else(|| panic!("no reply for {rid}: {m:?}"))
            .clone()
    };
    let i1 = by_rid("i1");
    assert_eq!(status_of(&i1), "201", "the app's status passes through");
    assert_eq!(json_payload(&i1)["method"], "PUT");
    assert_eq!(json_payload(&i1)["path"], "/v2/neworder");
    assert_eq!(json_payload(&i1)["body"], r#"{"qty":3}"#);
    let invoked: Vec<_> = app
        .received()
        .into_iter()
        .filter(|r| r.path != "/dapr/subscribe")
        .collect();
    assert_eq!(invoked.len(), 1, "{invoked:?}");
    let c1 = by_rid("c1");
    assert_eq!(status_of(&c1), "200");
    // MQTT 3.1.1 replies carry the offer and cache status in the topic, as HTTP does in headers.
    let q = topic(&c1)
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or_default();
    assert!(
        q.contains("offer=") && q.contains("cache="),
        "{}",
        topic(&c1)
    );
    assert_eq!(json_payload(&c1), serde_json::json!({"hello": "device"}));
    let i2 = by_rid("i2");
    assert_eq!(status_of(&i2), "500");
    assert_eq!(json_payload(&i2)["errorCode"], "ERR_DIRECT_INVOKE");
    let c2 = by_rid("c2");
    assert_eq!(status_of(&c2), "404");
}

#[test]
fn an_apps_invoke_reaches_a_connected_device_and_its_reply_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("edgecar.yaml");
    std::fs::write(&cfg, "devices:\n  commandTimeout: 3s\n").unwrap();
    let (ec, p1, p2) = site(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let port = ec.mqtt_port;
    // Not connected: 503 at once (unless the app asks for the mailbox: tests/devices_outbox.rs).
    let r = ec.req("POST", "/v1.0/invoke/dev1/method/led/on", b"{}", &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (503, "ERR_DIRECT_INVOKE")
    );
    assert!(r.text().contains("not connected"), "{}", r.text());
    // Connected but not listening for commands: 503, saying what to subscribe.
    let other = MosquittoSub::start(port, "dev1", &p1, &["edgecar/v1/dev1/res/#"], &[]);
    let r = ec.req("POST", "/v1.0/invoke/dev1/method/led/on", b"{}", &[]);
    assert_eq!(r.status, 503);
    assert!(r.text().contains("edgecar/v1/dev1/cmd/#"), "{}", r.text());
    drop(other);

    // The device: listens on its command topic (MQTT 5, to see the request/response properties).
    let device = MosquittoSub::start(
        port,
        "dev1",
        &p1,
        &["edgecar/v1/dev1/cmd/#"],
        &["-V", "mqttv5", "-q", "1"],
    );
    let ec_port = ec.port;
    let call = std::thread::spawn(move || {
        edgecar_tests::http(
            ec_port,
            "POST",
            "/v1.0/invoke/dev1/method/led/on?level=3",
            br#"{"color":"red"}"#,
            &[("content-type", "application/json")],
        )
    });
    let cmd = device.wait_for(1, WAIT).remove(0);
    let t = topic(&cmd).to_owned();
    assert!(t.starts_with("edgecar/v1/dev1/cmd/led/on/"), "{t}");
    assert_eq!(json_payload(&cmd), serde_json::json!({"color": "red"}));
    let props = &cmd["properties"];
    let rid = t.rsplit('/').next().unwrap().to_owned();
    assert_eq!(
        props["response-topic"],
        format!("edgecar/v1/dev1/cmdres/{rid}")
    );
    assert_eq!(props["correlation-data"], rid);
    assert_eq!(props["user-properties"]["verb"], "POST");
    assert_eq!(props["user-properties"]["query"], "level=3");
    // Another device cannot answer dev1's command.
    let out = mosquitto_pub(
        port,
        "dev2",
        &p2,
        &format!("edgecar/v1/dev2/cmdres/{rid}"),
        "forged",
        &[],
    );
    assert!(out.status.success());
    // The device answers (3.1.1 convention: status in the topic).
    let out = mosquitto_pub(
        port,
        "dev1",
        &p1,
        &format!("edgecar/v1/dev1/cmdres/{rid}/202"),
        r#"{"led":"on"}"#,
        &["-q", "1"],
    );
    assert!(out.status.success());
    let r = call.join().unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json(), serde_json::json!({"led": "on"}));
    assert_eq!(r.header("content-type"), Some("application/json"));

    // No answer: 504 with Dapr's error JSON after devices.commandTimeout.
    let started = Instant::now();
    let r = ec.req("POST", "/v1.0/invoke/dev1/method/reboot", b"", &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (504, "ERR_DIRECT_INVOKE")
    );
    assert!(started.elapsed() >= Duration::from_secs(3));
    // A late reply is ignored; the device is still served.
    let late = device.wait_for(2, WAIT)[1].clone();
    let rid = topic(&late).rsplit('/').next().unwrap().to_owned();
    let out = mosquitto_pub(
        port,
        "dev1",
        &p1,
        &format!("edgecar/v1/dev1/cmdres/{rid}"),
        "",
        &[],
    );
    assert!(out.status.success());
    // Methods MQTT cannot carry are refused up front.
    let r = ec.req("POST", "/v1.0/invoke/dev1/method/a+b", b"", &[]);
    assert_eq!(r.status, 400, "{}", r.text());
}

#[test]
fn presence_is_visible_and_devices_cannot_read_it() {
    let dir = tempfile::tempdir().unwrap();
    let (ec, p1, _) = site(dir.path(), &[]);
    let port = ec.mqtt_port;
    let r = ec.req("GET", "/v1.0/devices", b"", &[]).json();
    assert_eq!(r["devices"].as_array().unwrap().len(), 2);
    assert_eq!(r["devices"][0]["id"], "dev1");
    assert_eq!(r["devices"][0]["connected"], false);
    let mut sub = MosquittoSub::start(
        port,
        "dev1",
        &p1,
        &["edgecar/v1/dev1/res/#"],
        &["-V", "mqttv5"],
    );
    let d = ec.req("GET", "/v1.0/devices/dev1", b"", &[]).json();
    assert_eq!(d["connected"], true);
    assert_eq!(d["protocol"], "mqtt/5");
    assert!(d["lastSeen"].as_str().unwrap().ends_with('Z'));
    let meta = ec.req("GET", "/v1.0/metadata", b"", &[]).json();
    assert_eq!(meta["extended"]["devicesConnected"], "1");
    assert_eq!(meta["extended"]["devicesRegistered"], "2");
    let metrics = ec.admin("/metrics").text();
    assert!(metrics.contains("edgecar_devices_connected 1"), "{metrics}");
    // A device asking for the device list is refused (and the reply says so): the operation
    // exists in the one table, but only for apps.
    mosquitto_pub(
        port,
        "dev1",
        &p1,
        "edgecar/v1/dev1/req/devices.list/1",
        "",
        &[],
    );
    let m = sub.wait_for(1, WAIT);
    assert_eq!(status_of(&m[0]), "403");
    sub.kill9();
    let d = eventually(WAIT, "dev1 to be disconnected", || {
        let d = ec.req("GET", "/v1.0/devices/dev1", b"", &[]).json();
        (d["connected"] == false).then_some(d)
    });
    assert!(d["lastDisconnect"].is_string());
    assert_eq!(ec.req("GET", "/v1.0/devices/ghost", b"", &[]).status, 404);
}

#[test]
fn the_registry_changes_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let (ec, p1, _) = site(dir.path(), &[]);
    let port = ec.mqtt_port;
    let mut sub = MosquittoSub::start(
        port,
        "dev1",
        &p1,
        &["edgecar/v1/dev1/res/#"],
        &["-V", "mqttv5"],
    );
    // A device added now can connect within a few seconds.
    let p3 = add_device(dir.path(), "dev3");
    eventually(WAIT, "dev3 to be accepted", || {
        mosquitto_pub(port, "dev3", &p3, "edgecar/v1/dev3/req/x/1", "", &[])
            .status
            .success()
            .then_some(())
    });
    // Removing dev1 ends its open connection (MQTT 5 hears why) and refuses it afterwards.
    let out = device_cmd(dir.path(), &["remove", "dev1"]);
    assert!(out.status.success());
    eventually(WAIT, "dev1's connection to end", || {
        sub.exited().then_some(())
    });
    assert!(
        sub.log().contains("Administrative action") || sub.log().contains("DISCONNECT"),
        "{}",
        sub.log()
    );
    let out = mosquitto_pub(port, "dev1", &p1, "edgecar/v1/dev1/req/x/1", "", &[]);
    assert!(!out.status.success());
    let list = device_cmd(dir.path(), &["list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("dev2") && text.contains("dev3") && !text.contains("dev1"),
        "{text}"
    );
    assert!(
        !std::fs::read_to_string(dir.path().join("devices.yaml"))
            .unwrap()
            .contains(&p3)
    );
}

#[test]
fn wills_are_delivered_inside_the_devices_own_tree() {
    let dir = tempfile::tempdir().unwrap();
    let (ec, p1, p2) = site(dir.path(), &[]);
    let port = ec.mqtt_port;
    let watcher = MosquittoSub::start(port, "dev1", &p1, &["edgecar/v1/dev1/status"], &[]);
    let other = MosquittoSub::start(port, "dev2", &p2, &["edgecar/v1/dev2/#"], &[]);
    let mut dying = MosquittoSub::start(
        port,
        "dev1",
        &p1,
        &["edgecar/v1/dev1/cmd/#"],
        &[
            "--will-topic",
            "edgecar/v1/dev1/status",
            "--will-payload",
            "offline",
        ],
    );
    dying.kill9();
    let m = watcher.wait_for(1, WAIT);
    assert_eq!(payload(&m[0]), "offline");
    // A will naming another tree is refused at CONNECT.
    let out = mosquitto_pub(
        port,
        "dev2",
        &p2,
        "edgecar/v1/dev2/req/x/1",
        "",
        &[
            "--will-topic",
            "edgecar/v1/dev1/status",
            "--will-payload",
            "x",
        ],
    );
    assert!(!out.status.success());
    assert!(other.messages().is_empty());
}

#[test]
fn malformed_input_gets_error_replies_or_a_disconnect_and_a_healthy_device_keeps_its_service() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("edgecar.yaml");
    std::fs::write(
        &cfg,
        "mqtt:\n  maxPacketSize: 64Ki\n  rateLimit:\n    messagesPerSecond: 20\n    burst: 20\n",
    )
    .unwrap();
    let (ec, p1, p2) = site(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let port = ec.mqtt_port;
    // The healthy device keeps a connection and does a request now and then.
    let (mut healthy, code) = RawMqtt::connect(port, "dev2", &p2, 30);
    assert_eq!(code, 0);
    assert_eq!(healthy.subscribe("edgecar/v1/dev2/res/#", 0, 1), [0]);
    let mut healthy_round_trip = |i: u32| {
        healthy
            .send(&publish_packet(
                &format!("edgecar/v1/dev2/req/state.save/h{i}"),
                format!(r#"[{{"key":"n","value":{i}}}]"#).as_bytes(),
                0,
                0,
            ))
            .unwrap();
        let (t, _) = healthy
            .next_publish()
            .expect("healthy device got its reply");
        assert_eq!(t, format!("edgecar/v1/dev2/res/state.save/h{i}/204"));
    };
    healthy_round_trip(0);

    // Malformed requests from a well-formed client: each gets exactly one error reply.
    let sub = MosquittoSub::start(port, "dev1", &p1, &["edgecar/v1/dev1/res/#"], &[]);
    let bad = [
        (
            "edgecar/v1/dev1/req/state.save/j1",
            "{not json",
            "400",
            "ERR_MALFORMED_REQUEST",
        ),
        (
            "edgecar/v1/dev1/req/frobnicate/j2",
            "{}",
            "404",
            "ERR_NOT_FOUND",
        ),
        (
            "edgecar/v1/dev1/req/state.get",
            "",
            "400",
            "ERR_MALFORMED_REQUEST",
        ),
        (
            "edgecar/v1/dev1/req/state.get/j4",
            "",
            "400",
            "ERR_MALFORMED_REQUEST",
        ),
        (
            "edgecar/v1/dev1/req/publish/j5",
            "{}",
            "400",
            "ERR_MALFORMED_REQUEST",
        ),
        (
            "edgecar/v1/dev1/req/subscribe/j6",
            "{}",
            "400",
            "ERR_MALFORMED_REQUEST",
        ),
        ("edgecar/v1/dev1/whatever", "{}", "404", "ERR_NOT_FOUND"),
        (
            "edgecar/v1/dev1/req/state.save/j8",
            r#"[{"key":"a||b","value":1}]"#,
            "400",
            "ERR_MALFORMED_REQUEST",
        ),
    ];
    for (t, m, _, _) in bad {
        assert!(
            mosquitto_pub(port, "dev1", &p1, t, m, &["-q", "1"])
                .status
                .success()
        );
    }
    let got = sub.wait_for(bad.len(), WAIT);
    for (m, (t, _, status, code)) in got.iter().zip(bad) {
        assert_eq!(status_of(m), status, "{t}: {m}");
        assert_eq!(json_payload(m)["errorCode"], code, "{t}: {m}");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(sub.messages().len(), bad.len(), "exactly one reply each");
    healthy_round_trip(1);

    // Bytes no real client sends: each ends that connection, nothing else.
    let abusive: [(&str, Vec<u8>); 5] = [
        ("garbage", vec![0xff, 0x00, 0x13, 0x37, 0x42]),
        (
            "oversized header (100 MB declared)",
            vec![0x30, 0x80, 0x80, 0x80, 0x30, 0, 1, b'x'],
        ),
        (
            "packet over maxPacketSize",
            publish_packet(
                "edgecar/v1/dev1/req/state.save/big",
                &vec![b'x'; 70_000],
                0,
                0,
            ),
        ),
        (
            "QoS 2 publish",
            publish_packet("edgecar/v1/dev1/req/state.get/q2?key=a", b"", 2, 7),
        ),
        (
            "second CONNECT",
            packet(0x10, &[0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 10, 0, 0]),
        ),
    ];
    for (what, bytes) in abusive {
        let (mut c, code) = RawMqtt::connect(port, "dev1", &p1, 30);
        assert_eq!(code, 0);
        let _ = c.send(&bytes);
        assert!(c.closed_within(WAIT), "{what}: still connected");
        healthy_round_trip(2);
    }
    // Garbage instead of a CONNECT, and a silent connection, are dropped too.
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(&mut raw, b"GET / HTTP/1.1\r\n\r\n").unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(
        std::io::Read::read(&mut raw, &mut [0u8; 16]).unwrap_or(0),
        0
    );

    // A flood from dev1 (far over its 20/s) is throttled; dev2 is still answered meanwhile.
    let (mut flood, _) = RawMqtt::connect(port, "dev1", &p1, 30);
    let mut burst = Vec::new();
    for i in 0..400 {
        burst.extend(publish_packet(
            &format!("edgecar/v1/dev1/req/state.get/f{i}?key=n"),
            b"",
            0,
            0,
        ));
    }
    let writer = std::thread::spawn(move || {
        let _ = flood.send(&burst);
        flood
    });
    for i in 3..8 {
        healthy_round_trip(i);
    }
    let _flood = writer.join().unwrap();
    let log = ec.log.lock().unwrap().clone();
    assert!(!log.contains("panicked"), "{log}");
    assert!(ec.req("GET", "/v1.0/healthz", b"", &[]).status == 204);
}

#[test]
fn a_silent_client_is_dropped_after_one_and_a_half_keepalives() {
    let dir = tempfile::tempdir().unwrap();
    let (ec, p1, _) = site(dir.path(), &[]);
    let (mut c, code) = RawMqtt::connect(ec.mqtt_port, "dev1", &p1, 1);
    assert_eq!(code, 0);
    let started = Instant::now();
    assert!(c.closed_within(Duration::from_secs(10)));
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );
    let d = eventually(WAIT, "presence to say why", || {
        let d = ec.req("GET", "/v1.0/devices/dev1", b"", &[]).json();
        (d["connected"] == false).then_some(d)
    });
    assert_eq!(d["lastDisconnect"], "keep-alive timeout");
}

#[test]
fn persistent_sessions_keep_their_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let (ec, p1, _) = site(dir.path(), &[]);
    let port = ec.mqtt_port;
    // Subscribe with a persistent session, then go away.
    let mut first = MosquittoSub::start(
        port,
        "dev1",
        &p1,
        &["edgecar/v1/dev1/res/#"],
        &["-c", "-i", "sensor-7", "-q", "1"],
    );
    first.kill9();
    // Come back with the same client id and no subscription of its own (-U only unsubscribes a
    // topic it never had): the session is present and replies still arrive.
    let back = MosquittoSub::start(
        port,
        "dev1",
        &p1,
        &["edgecar/v1/dev1/nothing"],
        &["-c", "-i", "sensor-7", "-q", "1"],
    );
    assert!(
        back.log().contains("CONNACK (0)") || back.log().contains("received CONNACK"),
        "{}",
        back.log()
    );
    mosquitto_pub(
        port,
        "dev1",
        &p1,
        "edgecar/v1/dev1/req/state.get/p1?key=k",
        "",
        &[],
    );
    let m = back.wait_for(1, WAIT);
    assert_eq!(topic(&m[0]), "edgecar/v1/dev1/res/state.get/p1/204");
}

#[test]
fn devices_can_connect_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=edgecar-test",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let cfg = dir.path().join("edgecar.yaml");
    std::fs::write(
        &cfg,
        format!(
            "mqtt:\n  tls:\n    certFile: {}\n    keyFile: {}\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let (ec, p1, _) = site(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let port = ec.mqtt_port;
    let ca = cert.to_str().unwrap();
    let sub = MosquittoSub::start(
        port,
        "dev1",
        &p1,
        &["edgecar/v1/dev1/res/#"],
        &["--cafile", ca],
    );
    let out = mosquitto_pub(
        port,
        "dev1",
        &p1,
        "edgecar/v1/dev1/req/state.get/t1?key=k",
        "",
        &["--cafile", ca],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        topic(&sub.wait_for(1, WAIT)[0]),
        "edgecar/v1/dev1/res/state.get/t1/204"
    );
    // Wrong passwords are still refused inside TLS, and plain MQTT gets nowhere.
    let out = mosquitto_pub(
        port,
        "dev1",
        "wrong",
        "edgecar/v1/dev1/req/x/1",
        "",
        &["--cafile", ca],
    );
    assert!(!out.status.success());
    let out = mosquitto_pub(port, "dev1", &p1, "edgecar/v1/dev1/req/x/1", "", &[]);
    assert!(!out.status.success());
    // A certificate that does not parse is reported by check-config with its field.
    std::fs::write(&key, "not a key").unwrap();
    let out = std::process::Command::new(edgecar_tests::edgecar_bin())
        .args(["check-config", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("mqtt.tls"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
