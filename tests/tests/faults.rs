//! The fault suite: what a field gateway meets from attackers and bad luck, each case with the
//! real binary and real peers, each saying what it proves (docs/faults.md lists them all).
//!
//! - Devices never read each other's data through pub/sub subscriptions unless granted.
//! - A flood of idle connections from one address does not lock other devices out.
//! - A full disk gives prompt errors (507), keeps acknowledged data readable, withholds the
//!   PUBACK of readings it could not store, reports itself in health, and recovers by itself.
//! - `pubsub.redis` subscriptions recover when Redis restarts empty (and with persistence).
//!
//! The disk cases mount a small tmpfs and so need root; without it they say so and pass.

use std::path::Path;
use std::time::{Duration, Instant};

use edgecar_tests::mqtt::{MosquittoSub, add_device, device_request, json_payload, topic};
use edgecar_tests::{Edgecar, eventually};

const WAIT: Duration = Duration::from_secs(15);

fn config(dir: &Path, text: &str) -> String {
    let cfg = dir.join("edgecar.yaml");
    std::fs::write(&cfg, text).unwrap();
    cfg.to_str().unwrap().to_owned()
}

/// Gives `id` an operator's grant in the registry file (`subscribe:`), as an operator edits it.
fn grant(state_dir: &Path, id: &str, topics: &[&str]) {
    let path = state_dir.join("devices.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let line = format!("- id: {id}\n");
    assert!(text.contains(&line), "{text}");
    let list: String = topics.iter().map(|t| format!("  - {t}\n")).collect();
    let text = text.replace(&line, &format!("{line}  subscribe:\n{list}"));
    std::fs::write(&path, text).unwrap();
}

/// Fault 1: a device that subscribes to the telemetry or presence topic would read every other
/// device's readings. Proves: those subscriptions are refused with 403; on a topic a device may
/// subscribe to, it receives apps' events and never another device's; a device the operator
/// granted the telemetry topic receives the readings.
#[test]
fn devices_never_receive_each_others_data_unless_granted() {
    let dir = tempfile::tempdir().unwrap();
    let pa = add_device(dir.path(), "a");
    let pb = add_device(dir.path(), "b");
    let ph = add_device(dir.path(), "hub");
    grant(dir.path(), "hub", &["pubsub/telemetry"]);
    let cfg = config(dir.path(), "devices:\n  presenceTopic: presence\n");
    let ec = Edgecar::start(dir.path(), &["--config", &cfg]);
    let port = ec.mqtt_port;

    for (rid, t) in [(1, "telemetry"), (2, "presence")] {
        let (status, body) =
            device_request(port, "a", &pa, &format!("subscribe/{rid}?topic={t}"), "");
        assert_eq!(
            (status.as_str(), body["errorCode"].as_str()),
            ("403", Some("ERR_PERMISSION_DENIED")),
            "{t}: {body}"
        );
    }
    let (status, body) = device_request(port, "a", &pa, "subscribe/3?topic=alerts", "");
    assert_eq!(status, "201", "{body}");
    let (status, body) = device_request(port, "hub", &ph, "subscribe/4?topic=telemetry", "");
    assert_eq!(status, "201", "the operator granted it: {body}");
    // A device cannot dodge the source check with a raw event.
    let (status, body) = device_request(
        port,
        "b",
        &pb,
        "publish/5?topic=alerts&metadata.rawPayload=true",
        "{}",
    );
    assert_eq!(status, "403", "{body}");

    let a = MosquittoSub::start(port, "a", &pa, &["edgecar/v1/a/sub/#"], &["-q", "1"]);
    let hub = MosquittoSub::start(port, "hub", &ph, &["edgecar/v1/hub/sub/#"], &["-q", "1"]);
    // Device b publishes to the topic a follows, and sends a reading.
    let (status, body) =
        device_request(port, "b", &pb, "publish/6?topic=alerts", r#"{"from":"b"}"#);
    assert_eq!(status, "204", "{body}");
    let out = edgecar_tests::mqtt::mosquitto_pub(
        port,
        "b",
        &pb,
        "edgecar/v1/b/telemetry",
        r#"{"t":21.5}"#,
        &["-q", "1"],
    );
    assert!(out.status.success());
    // Then an app publishes to the same topic.
    let r = ec.req(
        "POST",
        "/v1.0/publish/pubsub/alerts",
        br#"{"from":"app"}"#,
        &[("content-type", "application/json")],
    );
    assert_eq!(r.status, 204, "{}", r.text());

    let got = a.wait_for(1, WAIT);
    assert_eq!(json_payload(&got[0])["data"]["from"], "app", "{}", a.log());
    let reading = hub.wait_for(1, WAIT);
    assert_eq!(topic(&reading[0]), "edgecar/v1/hub/sub/pubsub/telemetry");
    let ev = json_payload(&reading[0]);
    assert_eq!(
        (ev["source"].as_str(), &ev["data"]),
        (Some("b"), &serde_json::json!({"t": 21.5}))
    );
    // Events are delivered in order: had b's event reached a, it would have come first.
    std::thread::sleep(Duration::from_millis(500));
    let sources: Vec<String> = a
        .messages()
        .iter()
        .map(|m| {
            json_payload(m)["source"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert!(
        sources.iter().all(|s| s != "b"),
        "a saw b's event: {}",
        a.log()
    );
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "32m"), or says why it cannot (not root, no mount).
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let uid = std::process::Command::new("id").arg("-u").output();
        let root = uid.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        if !root {
            return Err("mounting a tmpfs needs root".into());
        }
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fault 3 and 4: with the state directory on a small disk, saves hung, acknowledged keys read
/// back as "No space left on device", telemetry got a PUBACK though it was not stored, freeing
/// space did not help and health said 204. Proves: every write is answered promptly (507 naming
/// the disk), every acknowledged key reads back (single and bulk), health answers 500 naming the
/// disk, a reading that could not be stored is refused in the MQTT 5 PUBACK (0x97) and closes a
/// 3.1.1 connection unacknowledged, writes resume by themselves once space frees, and SIGTERM
/// still stops the gateway.
#[test]
fn a_full_disk_gives_prompt_errors_keeps_acknowledged_data_and_recovers() {
    let disk = match Tmpfs::mount("32m") {
        Ok(d) => d,
        Err(why) => {
            println!("SKIPPED: the full-disk case needs a tmpfs: {why}");
            return;
        }
    };
    let state = disk.path().join("data");
    std::fs::create_dir_all(&state).unwrap();
    // Someone else's 12 MB on the same disk, removed later to free space.
    let filler = disk.path().join("filler");
    std::fs::write(&filler, vec![0u8; 12 << 20]).unwrap();
    let pw = add_device(&state, "dev1");
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = config(cfg_dir.path(), "storage:\n  minFreeSpace: 8Mi\n");
    let mut ec = Edgecar::start(&state, &["--config", &cfg]);

    // Both sizes the field report named: 65,000 bytes and 65,536 (sled's blob threshold area).
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..2000 {
        let value = "v".repeat(if i % 2 == 0 { 64_998 } else { 65_534 });
        let body = format!(r#"[{{"key":"k{i}","value":"{value}"}}]"#);
        let started = Instant::now();
        let r = ec.req("POST", "/v1.0/state/statestore", body.as_bytes(), &[]);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "save {i} took {:?}",
            started.elapsed()
        );
        match r.status {
            204 => acked.push(format!("k{i}")),
            _ => {
                refused = Some(r);
                break;
            }
        }
    }
    let r = refused.expect("the disk never filled");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (507, "ERR_STATE_SAVE"),
        "{}",
        r.text()
    );
    assert!(r.text().contains("disk"), "{}", r.text());
    assert!(
        acked.len() > 20,
        "only {} saves before the disk filled",
        acked.len()
    );

    // Everything acknowledged reads back, one by one and in bulk.
    for k in &acked {
        let r = ec.req("GET", &format!("/v1.0/state/statestore/{k}"), b"", &[]);
        assert_eq!(r.status, 200, "{k}: {}", r.text());
    }
    let keys: Vec<String> = acked.iter().map(|k| format!("{k:?}")).collect();
    let r = ec.req(
        "POST",
        "/v1.0/state/statestore/bulk",
        format!(r#"{{"keys":[{}]}}"#, keys.join(",")).as_bytes(),
        &[],
    );
    assert_eq!(r.status, 200);
    let items = r.json();
    assert_eq!(items.as_array().unwrap().len(), acked.len());
    assert!(
        items
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["data"].is_string()),
        "a bulk item lost its data"
    );

    // Health says what is wrong.
    for path in ["/v1.0/healthz", "/v1.0/healthz/outbound"] {
        let r = ec.req("GET", path, b"", &[]);
        assert_eq!(r.status, 500, "{path}");
        assert!(r.text().contains("disk"), "{path}: {}", r.text());
    }
    // Publishing what must be kept (the telemetry topic's events wait for subscribers) is
    // refused promptly too.
    let r = ec.req("POST", "/v1.0/publish/pubsub/telemetry", b"{}", &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (507, "ERR_PUBSUB_PUBLISH_MESSAGE"),
        "{}",
        r.text()
    );

    // A reading that cannot be stored is never confirmed. MQTT 5: PUBACK 0x97 (quota exceeded).
    let (mut v5, code) = edgecar_tests::mqtt::RawMqtt::connect_v5(ec.mqtt_port, "dev1", &pw, 30);
    assert_eq!(code, 0);
    v5.send(&edgecar_tests::mqtt::publish_packet_v5(
        "edgecar/v1/dev1/telemetry",
        b"{\"t\":1}",
        1,
        7,
    ))
    .unwrap();
    let puback = loop {
        match v5.read_packet() {
            Some((0x40, body)) => break body,
            Some(_) => continue,
            None => panic!("no PUBACK"),
        }
    };
    assert_eq!(&puback[..3], &[0, 7, 0x97], "{puback:?}");
    // MQTT 3.1.1 cannot refuse in a PUBACK: the connection closes without one.
    let (mut v4, code) = edgecar_tests::mqtt::RawMqtt::connect(ec.mqtt_port, "dev1", &pw, 30);
    assert_eq!(code, 0);
    v4.send(&edgecar_tests::mqtt::publish_packet(
        "edgecar/v1/dev1/telemetry",
        b"{\"t\":2}",
        1,
        8,
    ))
    .unwrap();
    let mut pubacks = 0;
    let deadline = Instant::now() + WAIT;
    loop {
        match v4.read_packet() {
            Some((0x40, _)) => pubacks += 1,
            Some(_) => {}
            None => break,
        }
        assert!(
            Instant::now() < deadline,
            "the 3.1.1 connection stayed open"
        );
    }
    assert_eq!(pubacks, 0, "a reading that was not stored was acknowledged");

    // Space frees: writes resume by themselves, no restart.
    std::fs::remove_file(&filler).unwrap();
    eventually(WAIT, "writes to resume", || {
        let r = ec.req(
            "POST",
            "/v1.0/state/statestore",
            br#"[{"key":"after","value":1}]"#,
            &[],
        );
        (r.status == 204).then_some(())
    });
    assert_eq!(ec.req("GET", "/v1.0/healthz", b"", &[]).status, 204);
    let (mut v5, _) = edgecar_tests::mqtt::RawMqtt::connect_v5(ec.mqtt_port, "dev1", &pw, 30);
    v5.send(&edgecar_tests::mqtt::publish_packet_v5(
        "edgecar/v1/dev1/telemetry",
        b"{\"t\":3}",
        1,
        9,
    ))
    .unwrap();
    let puback = loop {
        match v5.read_packet() {
            Some((0x40, body)) => break body,
            Some(_) => continue,
            None => panic!("no PUBACK"),
        }
    };
    assert!(puback.len() == 2 || puback[2] == 0, "{puback:?}");

    // SIGTERM still drains and exits.
    let started = Instant::now();
    let status = ec.terminate();
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Fault 5: after Redis restarted empty, the consumer looped on `NOGROUP` (logged at debug) while
/// publishes kept answering 204, and no event reached the app again. Proves: with and without
/// persistence, every event acknowledged after the restart reaches the subscribed app.
#[test]
fn redis_subscriptions_recover_when_redis_restarts() {
    for persistent in [false, true] {
        let data = tempfile::tempdir().unwrap();
        let mut redis = if persistent {
            edgecar_tests::RedisServer::start_persistent(data.path())
        } else {
            edgecar_tests::RedisServer::start()
        };
        let res = tempfile::tempdir().unwrap();
        let host = format!("127.0.0.1:{}", redis.port);
        edgecar_tests::write_component(
            res.path(),
            "pubsub",
            "pubsub.redis",
            &[("redisHost", &host), ("consumerID", "shop-group")],
        );
        let app = edgecar_tests::SubscriberApp::start(
            r#"[{"pubsubname":"pubsub","topic":"orders","route":"/orders"}]"#,
            |_| (200, String::new()),
        );
        let state = tempfile::tempdir().unwrap();
        let ec = Edgecar::start(
            state.path(),
            &[
                "--app-id",
                "shop",
                "--app-port",
                &app.port.to_string(),
                "--resources-path",
                res.path().to_str().unwrap(),
            ],
        );
        eventually(WAIT, "the consumer group", || {
            redis
                .command(&["XINFO", "GROUPS", "orders"])
                .filter(|r| r.contains("shop-group"))
        });
        let publish = |n: usize| {
            eventually(WAIT, "a publish to be accepted", || {
                let r = ec.req(
                    "POST",
                    "/v1.0/publish/pubsub/orders",
                    format!(r#"{{"n":{n}}}"#).as_bytes(),
                    &[("content-type", "application/json")],
                );
                (r.status == 204).then_some(())
            })
        };
        for n in 0..3 {
            publish(n);
        }
        app.wait_for("/orders", 3, WAIT);
        redis.restart();
        for n in 100..120 {
            publish(n);
        }
        let seen = |app: &edgecar_tests::SubscriberApp| {
            let mut ns: Vec<i64> = app
                .on("/orders")
                .iter()
                .filter_map(|r| r.json()["data"]["n"].as_i64())
                .filter(|n| *n >= 100)
                .collect();
            ns.sort_unstable();
            ns.dedup();
            ns
        };
        eventually(
            Duration::from_secs(30),
            "every event after the restart",
            || (seen(&app).len() == 20).then_some(()),
        );
        let log = ec.log.lock().unwrap().clone();
        if !persistent {
            assert!(
                log.contains("consumer group is gone"),
                "the recovery is not said at warn: {log}"
            );
        }
    }
}

/// Fault 2: one process holding 256 idle sockets before CONNECT let 1 of 50 healthy logins
/// through. Proves: with 2,000 idle sockets held from one address (127.0.0.2), 50 registered
/// devices on another address (127.0.0.1) all log in, and the flood's sockets beyond its
/// per-address share are closed at once instead of being held.
#[test]
fn an_idle_connection_flood_from_one_address_does_not_lock_devices_out() {
    // 2,000 sockets and more: lift this process's descriptor limit to its hard limit.
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=20000:"])
        .status();
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<String> = (0..50).map(|i| format!("dev{i}")).collect();
    let pws = edgecar_tests::mqtt::register_cheaply(dir.path(), &ids);
    let passwords: Vec<(String, String)> = ids.into_iter().zip(pws).collect();
    let ec = Edgecar::start(dir.path(), &[]);
    let port = ec.mqtt_port;

    // The flood: 2,000 idle sockets from 127.0.0.2, topped up whenever the gateway closes one,
    // held until the logins are done.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooding = stop.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let flood = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let connect = || async move {
                let s = tokio::net::TcpSocket::new_v4().ok()?;
                s.bind("127.0.0.2:0".parse().ok()?).ok()?;
                s.connect(([127, 0, 0, 1], port).into()).await.ok()
            };
            let mut held: Vec<tokio::net::TcpStream> = Vec::new();
            let mut closed_by_gateway = 0usize;
            let mut ready = Some(ready_tx);
            while !flooding.load(std::sync::atomic::Ordering::Relaxed) {
                let mut set = tokio::task::JoinSet::new();
                for _ in held.len()..2000 {
                    set.spawn(connect());
                }
                while let Some(r) = set.join_next().await {
                    if let Ok(Some(c)) = r {
                        held.push(c);
                    }
                }
                if let Some(tx) = ready.take() {
                    let _ = tx.send(held.len());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                let before = held.len();
                held.retain(|c| {
                    let mut b = [0u8; 1];
                    !matches!(c.try_read(&mut b), Ok(0))
                });
                closed_by_gateway += before - held.len();
            }
            closed_by_gateway
        })
    });
    let opened = ready_rx.recv_timeout(Duration::from_secs(60)).unwrap();
    assert!(opened >= 1900, "only {opened} flood sockets connected");

    // Healthy devices log in while the flood is held, all of them, promptly.
    let started = Instant::now();
    let handles: Vec<_> = passwords
        .into_iter()
        .map(|(id, pw)| {
            std::thread::spawn(move || {
                let (_c, code) = edgecar_tests::mqtt::RawMqtt::connect(port, &id, &pw, 30);
                code
            })
        })
        .collect();
    let codes: Vec<u8> = handles
        .into_iter()
        .map(|h| h.join().unwrap_or(99))
        .collect();
    if codes.iter().any(|c| *c != 0) {
        eprintln!("{}", ec.log.lock().unwrap());
    }
    assert_eq!(codes, vec![0u8; 50], "CONNACK codes");
    assert!(
        started.elapsed() < WAIT,
        "logins took {:?}",
        started.elapsed()
    );

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let closed = flood.join().unwrap();
    // The gateway closed the flood's sockets beyond its share instead of holding them.
    assert!(
        closed >= 1000,
        "the gateway closed only {closed} flood sockets"
    );
    assert_eq!(ec.req("GET", "/v1.0/healthz", b"", &[]).status, 204);
}
