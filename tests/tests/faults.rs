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

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
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
