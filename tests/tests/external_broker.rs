//! External broker mode end to end: devices talk to a real Mosquitto that authenticates them
//! (`password_file` made with `mosquitto_passwd`) and confines them with exactly the ACL that
//! `edgecar device acl` prints; edgecar joins that broker as a client and serves the device
//! protocol. Devices are mosquitto_pub, mosquitto_sub and mosquitto_rr.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edgecar_tests::mqtt::{
    MosquittoSub, add_device, device_cmd, json_payload, mosquitto_passwd, mosquitto_pub,
    mosquitto_rr, topic,
};
use edgecar_tests::{AppResponse, Edgecar, MosquittoServer, SubscriberApp, TestApp, eventually};

const WAIT: Duration = Duration::from_secs(15);
/// edgecar's own user at the broker.
const GATEWAY: &str = "gateway";
const GATEWAY_PASSWORD: &str = "gateway-secret-1";
/// A user the broker knows but edgecar's registry does not.
const GHOST_PASSWORD: &str = "ghost-secret-1";
const SUBSCRIBE: &str = r#"[{"pubsubname":"pubsub","topic":"telemetry","route":"/telemetry"}]"#;
/// What edgecar logs each time its subscriptions are granted.
const SERVING: &str = "serving devices through the MQTT broker";

/// What a test changes in its [`Site`].
#[derive(Default, Clone, Copy)]
struct Options<'a> {
    /// Top-level settings for edgecar.yaml.
    top: &'a str,
    /// Lines under `mqtt.broker` in edgecar.yaml, indented by four spaces.
    broker_lines: &'a str,
    /// Arguments to `edgecar device acl --user gateway`, whose output is the broker's ACL.
    acl_args: &'a [&'a str],
    /// More mosquitto.conf lines.
    mosquitto: &'a str,
}

/// A site: devices `a` and `b` in edgecar's registry, a broker that knows them (and `ghost`),
/// and edgecar in external mode pointed at it.
struct Site {
    dir: tempfile::TempDir,
    broker: MosquittoServer,
    config: PathBuf,
    /// The ACL file the broker runs with: `edgecar device acl` output, unchanged.
    acl: String,
    pa: String,
    pb: String,
}

impl Site {
    fn new() -> Site {
        Self::with(&Options::default())
    }

    fn with(o: &Options) -> Site {
        let Options {
            top,
            broker_lines,
            acl_args,
            mosquitto,
        } = *o;
        let dir = tempfile::tempdir().unwrap();
        let pa = add_device(dir.path(), "a");
        let pb = add_device(dir.path(), "b");
        let mut args = vec!["acl", "--user", GATEWAY];
        args.extend_from_slice(acl_args);
        let out = device_cmd(dir.path(), &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let acl = String::from_utf8(out.stdout).unwrap();
        let acl_file = dir.path().join("broker.acl");
        std::fs::write(&acl_file, &acl).unwrap();
        let passwd = dir.path().join("broker.passwd");
        for (user, pw) in [
            (GATEWAY, GATEWAY_PASSWORD),
            ("a", pa.as_str()),
            ("b", pb.as_str()),
            ("ghost", GHOST_PASSWORD),
            // An account whose name is not a device id, and would reach a's tree through a
            // `%u` pattern.
            ("a/req", GHOST_PASSWORD),
        ] {
            mosquitto_passwd(&passwd, user, pw);
        }
        let broker = MosquittoServer::start_conf(&format!(
            "allow_anonymous false\npassword_file {}\nacl_file {}\nset_tcp_nodelay true\n{mosquitto}",
            passwd.display(),
            acl_file.display()
        ));
        let pw_file = dir.path().join("gateway.pw");
        std::fs::write(&pw_file, format!("{GATEWAY_PASSWORD}\n")).unwrap();
        let config = dir.path().join("edgecar.yaml");
        std::fs::write(
            &config,
            format!(
                "{top}devices:\n  commandTimeout: 5s\nmqtt:\n  mode: external\n  broker:\n    \
                 url: mqtt://127.0.0.1:{}\n    username: {GATEWAY}\n    passwordFile: {}\n    \
                 reconnectMax: 1s\n{broker_lines}",
                broker.port,
                pw_file.display()
            ),
        )
        .unwrap();
        Site {
            dir,
            broker,
            config,
            acl,
            pa,
            pb,
        }
    }

    fn state_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts edgecar and waits until it serves devices through the broker.
    fn edgecar(&self, args: &[&str]) -> Edgecar {
        let mut all = vec!["--config", self.config.to_str().unwrap()];
        all.extend_from_slice(args);
        let ec = Edgecar::start(self.state_dir(), &all);
        wait_serving(&ec, 1);
        ec
    }

    /// A device's mosquitto_sub on `topics` (QoS 1).
    fn listen(&self, user: &str, topics: &[&str], extra: &[&str]) -> MosquittoSub {
        let pw = self.password(user);
        let mut args = vec!["-q", "1"];
        args.extend_from_slice(extra);
        MosquittoSub::start(self.broker.port, user, &pw, topics, &args)
    }

    fn password(&self, user: &str) -> String {
        match user {
            "a" => self.pa.clone(),
            "b" => self.pb.clone(),
            _ => GHOST_PASSWORD.to_owned(),
        }
    }

    /// A device's QoS 1 publish through the broker.
    fn publish(&self, user: &str, t: &str, payload: &str) {
        let out = mosquitto_pub(
            self.broker.port,
            user,
            &self.password(user),
            t,
            payload,
            &["-q", "1"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Waits until edgecar has logged that its subscriptions were granted `n` times.
fn wait_serving(ec: &Edgecar, n: usize) {
    eventually(WAIT, "edgecar to serve devices through the broker", || {
        (ec.log.lock().unwrap().matches(SERVING).count() >= n).then_some(())
    });
}

/// The message on `t` among what `sub` received, waiting for it.
fn reply_on(sub: &MosquittoSub, t: &str) -> serde_json::Value {
    eventually(WAIT, &format!("a message on {t}"), || {
        sub.messages().into_iter().find(|m| topic(m) == t)
    })
}

#[test]
fn requests_telemetry_and_commands_through_the_broker() {
    let app = SubscriberApp::start(SUBSCRIBE, |_| (200, String::new()));
    let site = Site::new();
    let ec = site.edgecar(&["--app-port", &app.port.to_string()]);
    // No listener of edgecar's own in external mode.
    assert_eq!(ec.mqtt_port, 0);
    let dev = site.listen(
        "a",
        &["edgecar/v1/a/res/#", "edgecar/v1/a/cmd/#"],
        &["-V", "mqttv5"],
    );

    // State round trip, in the device's own namespace.
    site.publish(
        "a",
        "edgecar/v1/a/req/state.save/s1",
        r#"[{"key":"temp","value":{"c":21.5}}]"#,
    );
    reply_on(&dev, "edgecar/v1/a/res/state.save/s1/204");
    site.publish("a", "edgecar/v1/a/req/state.get/g1?key=temp", "");
    let m = reply_on(&dev, "edgecar/v1/a/res/state.get/g1/200?etag=1");
    assert_eq!(json_payload(&m), serde_json::json!({"c": 21.5}));
    // An error comes back as the HTTP API's error, on the reply topic.
    site.publish("a", "edgecar/v1/a/req/frobnicate/f1", "");
    let m = reply_on(&dev, "edgecar/v1/a/res/frobnicate/f1/404");
    assert_eq!(json_payload(&m)["errorCode"], "ERR_NOT_FOUND");
    // Device pub/sub subscriptions work through the broker too: the events come from edgecar's
    // durable outbox, published into the device's tree.
    let events = site.listen("a", &["edgecar/v1/a/sub/#"], &["-V", "mqttv5"]);
    site.publish("a", "edgecar/v1/a/req/subscribe/u1?topic=alerts", "");
    let m = reply_on(&dev, "edgecar/v1/a/res/subscribe/u1/201");
    assert_eq!(
        json_payload(&m)["deliveredTo"],
        "edgecar/v1/a/sub/pubsub/alerts"
    );
    let r = ec.req(
        "POST",
        "/v1.0/publish/pubsub/alerts",
        br#"{"level":"high"}"#,
        &[("content-type", "application/json")],
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let m = reply_on(&events, "edgecar/v1/a/sub/pubsub/alerts");
    assert_eq!(json_payload(&m)["data"]["level"], "high");

    // MQTT 5 request/response: the broker carries response topic and correlation data both ways.
    let r = mosquitto_rr(
        site.broker.port,
        "a",
        &site.pa,
        "edgecar/v1/a/req/state.get?key=temp",
        "edgecar/v1/a/inbox/1",
        "",
        &["-D", "publish", "correlation-data", "c-7"],
    )
    .expect("a reply on the response topic");
    assert_eq!(topic(&r), "edgecar/v1/a/inbox/1");
    assert_eq!(r["properties"]["correlation-data"], "c-7");
    assert_eq!(r["properties"]["user-properties"]["status"], "200");
    assert_eq!(json_payload(&r), serde_json::json!({"c": 21.5}));

    // The device client library and its CLI work through the broker unchanged.
    let cli = |args: &[&str]| {
        std::process::Command::new(edgecar_tests::device_cli_bin())
            .args(["--port", &site.broker.port.to_string(), "--id", "a"])
            .args(args)
            .env("EDGECAR_DEVICE_PASSWORD", &site.pa)
            .output()
            .unwrap()
    };
    let out = cli(&["state", "set", "greeting", "hello through the broker"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["state", "get", "greeting"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "\"hello through the broker\"\n"
    );

    // Telemetry reaches its consumer as a CloudEvent from the device.
    site.publish(
        "a",
        "edgecar/v1/a/telemetry/oven",
        r#"{"n":1,"celsius":180}"#,
    );
    let got = app.wait_for("/telemetry", 1, WAIT);
    let ev = got[0].json();
    assert_eq!(ev["source"], "a");
    assert_eq!(ev["subject"], "oven");
    assert_eq!(ev["type"], "io.edgecar.telemetry");
    assert_eq!(ev["data"]["celsius"], 180);

    // A command from an app, answered by the device.
    let ec_port = ec.port;
    let call = std::thread::spawn(move || {
        edgecar_tests::http(
            ec_port,
            "POST",
            "/v1.0/invoke/a/method/led/on?level=3",
            br#"{"color":"red"}"#,
            &[("content-type", "application/json")],
        )
    });
    let cmd = eventually(WAIT, "the command", || {
        dev.messages()
            .into_iter()
            .find(|m| topic(m).starts_with("edgecar/v1/a/cmd/"))
    });
    let t = topic(&cmd).to_owned();
    assert!(t.starts_with("edgecar/v1/a/cmd/led/on/"), "{t}");
    assert_eq!(json_payload(&cmd), serde_json::json!({"color": "red"}));
    let rid = t.rsplit('/').next().unwrap().to_owned();
    assert_eq!(
        cmd["properties"]["response-topic"],
        format!("edgecar/v1/a/cmdres/{rid}")
    );
    assert_eq!(cmd["properties"]["user-properties"]["query"], "level=3");
    site.publish(
        "a",
        &format!("edgecar/v1/a/cmdres/{rid}/201"),
        r#"{"led":"on"}"#,
    );
    let r = call.join().unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json(), serde_json::json!({"led": "on"}));

    // A device nobody subscribes for: the broker says so (PUBACK "no matching subscribers"),
    // and the app hears it at once rather than after devices.commandTimeout.
    let started = Instant::now();
    let r = ec.req("POST", "/v1.0/invoke/b/method/ping", b"", &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (503, "ERR_DIRECT_INVOKE"),
        "{}",
        r.text()
    );
    assert!(
        r.text().contains("offline or not subscribed"),
        "{}",
        r.text()
    );
    assert!(started.elapsed() < Duration::from_secs(4));

    // Presence in external mode: last seen from traffic, no connection count.
    let d = ec.req("GET", "/v1.0/devices/a", b"", &[]).json();
    assert_eq!(d["protocol"], "mqtt/broker");
    assert!(d["lastSeen"].is_string(), "{d}");
    assert_eq!(d["connected"], false);
    let log = ec.log.lock().unwrap().clone();
    assert!(
        !log.contains(GATEWAY_PASSWORD),
        "a password reached the log"
    );
}

#[test]
fn the_broker_acl_keeps_each_device_in_its_tree() {
    let site = Site::new();
    let ec = site.edgecar(&[]);
    // The ACL edgecar prints from its config is the one the broker runs with.
    let out = device_cmd(
        site.state_dir(),
        &["acl", "--config", site.config.to_str().unwrap()],
    );
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), site.acl);

    let b = site.listen("b", &["edgecar/v1/b/res/#"], &[]);
    // `a` tries to listen in on b's tree and on every device's replies.
    let spy = site.listen(
        "a",
        &["edgecar/v1/a/res/#", "edgecar/v1/b/#", "edgecar/v1/+/res/#"],
        &[],
    );
    site.publish(
        "b",
        "edgecar/v1/b/req/state.save/x1",
        r#"[{"key":"k","value":"b's"}]"#,
    );
    reply_on(&b, "edgecar/v1/b/res/state.save/x1/204");
    // `a` writes into b's tree: the broker drops it, edgecar never sees it.
    site.publish(
        "a",
        "edgecar/v1/b/req/state.save/evil",
        r#"[{"key":"k","value":"forged"}]"#,
    );
    site.publish("a", "edgecar/v1/b/req/state.get/evil2?key=k", "");
    // A request of a's own, sent after those, is answered: edgecar was serving all along.
    site.publish("a", "edgecar/v1/a/req/state.get/mine?key=k", "");
    reply_on(&spy, "edgecar/v1/a/res/state.get/mine/204");
    site.publish("b", "edgecar/v1/b/req/state.get/g?key=k", "");
    let m = reply_on(&b, "edgecar/v1/b/res/state.get/g/200?etag=1");
    assert_eq!(
        json_payload(&m),
        "b's",
        "a's forged save must not have landed"
    );
    std::thread::sleep(Duration::from_millis(300));
    let in_b: Vec<String> = b.messages().iter().map(|m| topic(m).to_owned()).collect();
    assert_eq!(
        in_b,
        [
            "edgecar/v1/b/res/state.save/x1/204",
            "edgecar/v1/b/res/state.get/g/200?etag=1"
        ],
        "no reply to a's forged requests in b's tree"
    );
    let seen_by_a: Vec<String> = spy.messages().iter().map(|m| topic(m).to_owned()).collect();
    assert_eq!(
        seen_by_a,
        ["edgecar/v1/a/res/state.get/mine/204"],
        "a heard nothing of b's"
    );

    // A user the broker knows but edgecar's registry does not: refused with a log line, no reply.
    let ghost = site.listen("ghost", &["edgecar/v1/ghost/res/#"], &[]);
    site.publish(
        "ghost",
        "edgecar/v1/ghost/req/state.save/1",
        r#"[{"key":"k","value":1}]"#,
    );
    eventually(WAIT, "edgecar to log the unknown id", || {
        let log = ec.log.lock().unwrap();
        (log.contains("not in the device registry") && log.contains("device=ghost")).then_some(())
    });
    // A later request of a's is answered; nothing ever came back in ghost's tree.
    site.publish("a", "edgecar/v1/a/req/state.get/mine2?key=k", "");
    reply_on(&spy, "edgecar/v1/a/res/state.get/mine2/204");
    std::thread::sleep(Duration::from_millis(300));
    assert!(ghost.messages().is_empty(), "{:?}", ghost.messages());
}

#[test]
fn requests_wait_at_the_broker_while_edgecar_is_away_and_it_reconnects_after_a_broker_restart() {
    let app = SubscriberApp::start(SUBSCRIBE, |_| (200, String::new()));
    let mut site = Site::new();
    let app_port = app.port.to_string();
    let mut ec = site.edgecar(&["--app-port", &app_port]);
    let dev = site.listen("a", &["edgecar/v1/a/res/#"], &[]);
    site.publish(
        "a",
        "edgecar/v1/a/req/state.save/r1",
        r#"[{"key":"k","value":1}]"#,
    );
    reply_on(&dev, "edgecar/v1/a/res/state.save/r1/204");

    // edgecar stops; the broker keeps its session, and what devices send meanwhile waits there.
    assert!(ec.terminate().success());
    site.publish(
        "a",
        "edgecar/v1/a/req/state.save/w1",
        r#"[{"key":"k","value":2}]"#,
    );
    site.publish("a", "edgecar/v1/a/telemetry", r#"{"while":"away"}"#);
    let ec = site.edgecar(&["--app-port", &app_port]);
    reply_on(&dev, "edgecar/v1/a/res/state.save/w1/204");
    let got = app.wait_for("/telemetry", 1, WAIT);
    assert_eq!(got[0].json()["data"]["while"], "away");

    // The broker crashes and comes back empty: edgecar reconnects and subscribes again.
    site.broker.restart();
    eventually(WAIT, "edgecar to notice the broker went away", || {
        ec.log
            .lock()
            .unwrap()
            .contains("no connection to the MQTT broker")
            .then_some(())
    });
    wait_serving(&ec, 2);
    let dev = site.listen("a", &["edgecar/v1/a/res/#"], &[]);
    site.publish("a", "edgecar/v1/a/req/state.get/r2?key=k", "");
    let m = reply_on(&dev, "edgecar/v1/a/res/state.get/r2/200?etag=2");
    assert_eq!(json_payload(&m), 2);
}

#[test]
fn requests_in_flight_are_bounded_qos1_waits_at_the_broker_qos0_is_refused() {
    // An app that takes its time, so requests pile up.
    let slow = TestApp::start(|_| {
        let mut r =
            AppResponse::new(200, r#"{"done":true}"#).header("content-type", "application/json");
        r.delay = Duration::from_millis(1000);
        r
    });
    let apps = format!("apps:\n  slow: http://127.0.0.1:{}\n", slow.port);
    let site = Site::with(&Options {
        top: &apps,
        broker_lines: "    maxInflight: 2\n",
        ..Options::default()
    });
    let _ec = site.edgecar(&[]);
    let dev = site.listen("a", &["edgecar/v1/a/res/#"], &[]);
    let burst = |qos: &str, prefix: &str, n: usize| {
        let clients: Vec<_> = (0..n)
            .map(|i| {
                let (port, pw, qos) = (site.broker.port, site.pa.clone(), qos.to_owned());
                let t = format!("edgecar/v1/a/req/invoke/{prefix}{i}?app=slow&method=work");
                std::thread::spawn(move || mosquitto_pub(port, "a", &pw, &t, "{}", &["-q", &qos]))
            })
            .collect();
        for c in clients {
            assert!(c.join().unwrap().status.success());
        }
    };
    let replies = |prefix: &str| -> Vec<String> {
        dev.messages()
            .iter()
            .map(|m| topic(m).to_owned())
            .filter(|t| t.starts_with(&format!("edgecar/v1/a/res/invoke/{prefix}")))
            .collect()
    };
    // QoS 1: edgecar tells the broker it takes 2 at a time (Receive Maximum); the broker holds
    // the rest back (give or take the one or two Mosquitto sends early, which wait in edgecar),
    // and every request is served. Without Receive Maximum, 6 at once would overflow.
    burst("1", "q1-", 6);
    let got = eventually(
        Duration::from_secs(30),
        "6 replies to QoS 1 requests",
        || {
            let r = replies("q1-");
            (r.len() >= 6).then_some(r)
        },
    );
    assert!(
        got.iter().all(|t| t.ends_with("/200")),
        "{got:?}\n{:?}",
        dev.messages()
    );
    // QoS 0 has no flow control: beyond 2 in progress, requests are answered 503 at once.
    burst("0", "q0-", 6);
    let got = eventually(
        Duration::from_secs(30),
        "6 replies to QoS 0 requests",
        || {
            let r = replies("q0-");
            (r.len() >= 6).then_some(r)
        },
    );
    let busy: Vec<_> = dev
        .messages()
        .into_iter()
        .filter(|m| {
            topic(m).starts_with("edgecar/v1/a/res/invoke/q0-") && topic(m).ends_with("/503")
        })
        .collect();
    let served = got.iter().filter(|t| t.ends_with("/200")).count();
    assert!(
        served >= 2 && !busy.is_empty() && served + busy.len() == 6,
        "{got:?}"
    );
    assert_eq!(json_payload(&busy[0])["errorCode"], "ERR_TOO_MANY_REQUESTS");
}

#[test]
fn a_per_device_acl_admits_registered_devices_only() {
    let site = Site::with(&Options {
        acl_args: &["--per-device"],
        ..Options::default()
    });
    assert!(
        site.acl
            .contains("user a\ntopic readwrite edgecar/v1/a/#\n"),
        "{}",
        site.acl
    );
    assert!(!site.acl.contains("pattern"), "{}", site.acl);
    let _ec = site.edgecar(&[]);
    let dev = site.listen("a", &["edgecar/v1/a/res/#"], &[]);
    // The account "a/req" would get edgecar/v1/a/req/# from `pattern ... %u/#`; here it gets
    // nothing, and its save never lands.
    site.publish(
        "a/req",
        "edgecar/v1/a/req/state.save/x",
        r#"[{"key":"k","value":"forged"}]"#,
    );
    // Time it would need to land, if the broker let it through.
    std::thread::sleep(Duration::from_millis(300));
    site.publish("a", "edgecar/v1/a/req/state.get/g?key=k", "");
    reply_on(&dev, "edgecar/v1/a/res/state.get/g/204");
    std::thread::sleep(Duration::from_millis(300));
    let seen: Vec<String> = dev.messages().iter().map(|m| topic(m).to_owned()).collect();
    assert_eq!(seen, ["edgecar/v1/a/res/state.get/g/204"]);
}

#[test]
fn bad_broker_settings_are_named_and_edgecar_starts_without_its_broker() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "mqtt:\n  mode: external\n  broker:\n    url: mqtts://broker:8883\n    keepAlive: 1s\n",
    )
    .unwrap();
    let out = std::process::Command::new(edgecar_tests::edgecar_bin())
        .args(["check-config", "--config"])
        .arg(&bad)
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for field in [
        "mqtt.broker.url: \"mqtts://broker:8883\": mqtts:// is not supported yet",
        "mqtt.broker.username: required with mode: external",
        "mqtt.broker.keepAlive: must be between 5s and 65535s",
    ] {
        assert!(err.contains(field), "{field} missing in:\n{err}");
    }
    // Without a user the ACL cannot be printed; edgecar's user cannot be a device.
    let out = device_cmd(dir.path(), &["acl"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("mqtt.broker.username"));
    let pa = add_device(dir.path(), "a");
    assert!(!pa.is_empty());

    // A broker that is not there (yet): edgecar starts, says so, keeps trying, and answers
    // commands at once.
    let config = dir.path().join("edgecar.yaml");
    std::fs::write(
        &config,
        format!(
            "mqtt:\n  mode: external\n  broker:\n    url: mqtt://127.0.0.1:{}\n    \
             username: {GATEWAY}\n    password: {GATEWAY_PASSWORD}\n",
            edgecar_tests::free_port()
        ),
    )
    .unwrap();
    let out = device_cmd(
        dir.path(),
        &["add", GATEWAY, "--config", config.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("edgecar's own user at the MQTT broker"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ec = Edgecar::start(dir.path(), &["--config", config.to_str().unwrap()]);
    eventually(WAIT, "edgecar to report the missing broker", || {
        ec.log
            .lock()
            .unwrap()
            .contains("no connection to the MQTT broker")
            .then_some(())
    });
    let r = ec.req("POST", "/v1.0/invoke/a/method/ping", b"", &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (503, "ERR_DIRECT_INVOKE")
    );
    assert!(
        r.text().contains("not connected to the MQTT broker"),
        "{}",
        r.text()
    );
    assert_eq!(ec.req("GET", "/v1.0/healthz", b"", &[]).status, 204);
    assert!(!ec.log.lock().unwrap().contains(GATEWAY_PASSWORD));
}

#[test]
fn a_reply_larger_than_the_broker_takes_becomes_an_error_and_the_connection_stays() {
    // The broker tells its MQTT 5 clients (edgecar) it takes packets of 3000 bytes at most.
    let site = Site::with(&Options {
        mosquitto: "max_packet_size 3000\n",
        ..Options::default()
    });
    let _ec = site.edgecar(&[]);
    let dev = site.listen("a", &["edgecar/v1/a/res/#"], &[]);
    let big = "x".repeat(1200);
    for k in ["k1", "k2", "k3"] {
        site.publish(
            "a",
            &format!("edgecar/v1/a/req/state.save/{k}"),
            &format!(r#"[{{"key":"{k}","value":"{big}"}}]"#),
        );
        reply_on(&dev, &format!("edgecar/v1/a/res/state.save/{k}/204"));
    }
    // Each value fits; all three in one reply do not.
    site.publish(
        "a",
        "edgecar/v1/a/req/state.bulk/b1",
        r#"{"keys":["k1","k2","k3"]}"#,
    );
    let m = reply_on(&dev, "edgecar/v1/a/res/state.bulk/b1/413");
    assert_eq!(json_payload(&m)["errorCode"], "ERR_BODY_TOO_LARGE");
    assert!(
        json_payload(&m)["message"]
            .as_str()
            .unwrap()
            .contains("3000 bytes"),
        "{m}"
    );
    // edgecar's connection to the broker was not the casualty.
    site.publish("a", "edgecar/v1/a/req/state.get/g?key=k1", "");
    let m = reply_on(&dev, "edgecar/v1/a/res/state.get/g/200?etag=1");
    assert_eq!(json_payload(&m), serde_json::Value::String(big));
}

/// The mailbox through the broker: a command left for a device nobody at the broker listens for
/// is queued (202), goes out when the device is heard again, and its answer is kept for the app.
#[test]
fn the_mailbox_reaches_a_device_through_the_broker_when_it_wakes() {
    let site = Site::new();
    let ec = site.edgecar(&[]);
    let r = ec.req(
        "POST",
        "/v1.0/invoke/b/method/valve/open?percent=40",
        b"{}",
        &[
            ("x-edgecar-mailbox-ttl", "10m"),
            ("content-type", "application/json"),
        ],
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let location = format!("/v1.0/devices/b/mailbox/{id}");
    assert_eq!(
        ec.req("GET", &location, b"", &[]).json()["status"],
        "queued"
    );

    // b wakes: it listens for commands and sends something, so edgecar hears it.
    let cmds = site.listen(
        "b",
        &["edgecar/v1/b/cmd/#", "edgecar/v1/b/res/#"],
        &["-V", "mqttv5"],
    );
    site.publish("b", "edgecar/v1/b/req/state.get/w1?key=x", "");
    reply_on(&cmds, "edgecar/v1/b/res/state.get/w1/204");
    let cmd = eventually(WAIT, "the queued command", || {
        cmds.messages()
            .into_iter()
            .find(|m| topic(m) == format!("edgecar/v1/b/cmd/valve/open/{id}"))
    });
    assert_eq!(cmd["properties"]["user-properties"]["query"], "percent=40");
    site.publish(
        "b",
        &format!("edgecar/v1/b/cmdres/{id}/200"),
        r#"{"opened":true}"#,
    );
    let answered = eventually(WAIT, "the answer in the mailbox", || {
        let r = ec.req("GET", &location, b"", &[]);
        (r.status == 200).then_some(r)
    });
    assert_eq!(answered.json()["opened"], true);
}
