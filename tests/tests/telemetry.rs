//! Device telemetry and device publishes end to end: QoS 1 telemetry is on disk before its PUBACK
//! (a `kill -9` right after the acks loses nothing), and it reaches its subscriber as a CloudEvent
//! whose source is the device — taken from authentication, never from what the device sent.

use std::time::Duration;

use edgecar_tests::mqtt::{RawMqtt, add_device, mosquitto_pub, publish_packet};
use edgecar_tests::{Edgecar, SubscriberApp};

const SUBSCRIBE: &str = r#"[{"pubsubname":"pubsub","topic":"telemetry","route":"/telemetry"},{"pubsubname":"pubsub","topic":"orders","route":"/orders"}]"#;

#[test]
fn acknowledged_telemetry_survives_kill_9_and_reaches_its_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    let pw = add_device(dir.path(), "sensor-1");
    // No app yet: nothing consumes telemetry, and it must be kept all the same.
    let mut ec = Edgecar::start(dir.path(), &[]);
    let (mut c, code) = RawMqtt::connect(ec.mqtt_port, "sensor-1", &pw, 60);
    assert_eq!(code, 0, "CONNACK");
    const N: u16 = 40;
    for i in 1..=N {
        let payload = format!(r#"{{"n":{i},"celsius":21.5}}"#);
        c.send(&publish_packet(
            "edgecar/v1/sensor-1/telemetry/oven",
            payload.as_bytes(),
            1,
            i,
        ))
        .unwrap();
    }
    let mut acked = 0;
    while acked < N {
        match c.read_packet() {
            Some((0x40, _)) => acked += 1,
            Some(_) => {}
            None => panic!("connection ended after {acked} PUBACKs"),
        }
    }
    // Every reading was acknowledged; now the power goes.
    ec.kill9();

    let app = SubscriberApp::start(SUBSCRIBE, |_| (200, String::new()));
    let _ec = Edgecar::start(dir.path(), &["--app-port", &app.port.to_string()]);
    let got = app.wait_for("/telemetry", N as usize, Duration::from_secs(30));
    let mut ns: Vec<i64> = got
        .iter()
        .map(|r| r.json()["data"]["n"].as_i64().unwrap())
        .collect();
    ns.sort_unstable();
    ns.dedup();
    assert_eq!(
        ns,
        (1..=i64::from(N)).collect::<Vec<_>>(),
        "every acknowledged reading arrived"
    );
    let ev = got[0].json();
    assert_eq!(ev["source"], "sensor-1");
    assert_eq!(ev["subject"], "oven");
    assert_eq!(ev["type"], "io.edgecar.telemetry");
    assert_eq!(ev["datacontenttype"], "application/json");
}

#[test]
fn a_devices_publish_carries_its_own_identity() {
    let dir = tempfile::tempdir().unwrap();
    let pw = add_device(dir.path(), "dev1");
    let app = SubscriberApp::start(SUBSCRIBE, |_| (200, String::new()));
    let ec = Edgecar::start(dir.path(), &["--app-port", &app.port.to_string()]);
    // The device tries to claim another source; edgecar sets the one authentication proved.
    let out = mosquitto_pub(
        ec.mqtt_port,
        "dev1",
        &pw,
        "edgecar/v1/dev1/req/publish/p1?topic=orders&metadata.cloudevent.source=someone-else",
        r#"{"item":"bolt","qty":12}"#,
        &["-q", "1"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = app.wait_for("/orders", 1, Duration::from_secs(15));
    let ev = got[0].json();
    assert_eq!(ev["source"], "dev1");
    assert_eq!(ev["topic"], "orders");
}

/// Binary payloads are data: a CBOR reading from an MQTT 3.1.1 device (which cannot say its
/// content type), published with `mosquitto_pub -V 311 -q 1 -f reading.cbor`, reaches the app as
/// `application/octet-stream` with `data_base64` that decodes to the very same bytes — never as
/// text with its invalid bytes replaced. The same holds for a device's `publish` request.
#[test]
fn a_binary_reading_reaches_its_subscriber_byte_identical() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let pw = add_device(dir.path(), "sensor-1");
    let app = SubscriberApp::start(SUBSCRIBE, |_| (200, String::new()));
    let ec = Edgecar::start(dir.path(), &["--app-port", &app.port.to_string()]);
    // {"t": 21.5} in CBOR, then bytes no UTF-8 text may hold.
    let cbor: Vec<u8> = vec![0xa1, 0x61, 0x74, 0xf9, 0x4d, 0x60, 0xff, 0xfe, 0x00, 0x80];
    let file = dir.path().join("reading.cbor");
    std::fs::write(&file, &cbor).unwrap();
    for topic in [
        "edgecar/v1/sensor-1/telemetry/oven",
        "edgecar/v1/sensor-1/req/publish/p1?topic=orders",
    ] {
        let out = std::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &ec.mqtt_port.to_string()])
            .args([
                "-u", "sensor-1", "-P", &pw, "-V", "311", "-q", "1", "-t", topic,
            ])
            .arg("-f")
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for route in ["/telemetry", "/orders"] {
        let ev = app.wait_for(route, 1, Duration::from_secs(15))[0].json();
        assert_eq!(ev["datacontenttype"], "application/octet-stream", "{ev}");
        let data = base64::engine::general_purpose::STANDARD
            .decode(ev["data_base64"].as_str().unwrap())
            .unwrap();
        assert_eq!(data, cbor, "{route}");
        assert_eq!(ev["source"], "sensor-1");
    }
}
