//! The QUIC device endpoint end to end: the real binary, with the `edgecar-device` CLI and the
//! `edgecar-device-client` library as QUIC clients (they never link the gateway: they speak
//! docs/device-protocol.md#quic), a Python client written from that document alone
//! (tests/python/quic_device.py, on aioquic), and raw quinn streams for the bytes a real client
//! never sends.
//! Each test proves over QUIC a property the MQTT device tests prove over MQTT; the Python one
//! proves that the document is enough to write a client.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use edgecar_device_client::quic::{QuicOptions, encode_frame, handshake};
use edgecar_device_client::{Client, Error, Options, Transport};
use edgecar_tests::mqtt::add_device;
use edgecar_tests::{Edgecar, SubscriberApp, device_cli_bin, eventually, http, python};

const WAIT: Duration = Duration::from_secs(10);

/// A gateway with QUIC on and devices `dev1`, `dev2`; returns it and their passwords.
fn site(dir: &Path, args: &[&str]) -> (Edgecar, String, String) {
    let p1 = add_device(dir, "dev1");
    let p2 = add_device(dir, "dev2");
    let mut all = vec!["--quic-port", "0"];
    all.extend_from_slice(args);
    let ec = Edgecar::start(dir, &all);
    assert_ne!(ec.quic_port, 0, "the harness learnt the QUIC port");
    assert_eq!(ec.quic_fingerprint.len(), 64, "the fingerprint is logged");
    (ec, p1, p2)
}

fn pinned(ec: &Edgecar) -> QuicOptions {
    QuicOptions {
        fingerprint: Some(ec.quic_fingerprint.clone()),
        ..Default::default()
    }
}

fn opts(ec: &Edgecar, id: &str, pw: &str) -> Options {
    let mut o = Options::new("127.0.0.1", ec.quic_port, id, pw);
    o.transport = Transport::Quic(pinned(ec));
    o
}

/// `edgecar-device --transport quic ...` against `ec`.
fn cli(ec: &Edgecar, id: &str, pw: &str, args: &[&str]) -> std::process::Output {
    Command::new(device_cli_bin())
        .args([
            "--transport",
            "quic",
            "--quic-port",
            &ec.quic_port.to_string(),
        ])
        .args(["--fingerprint", &ec.quic_fingerprint, "--id", id])
        .args(args)
        .env("EDGECAR_DEVICE_PASSWORD", pw)
        .output()
        .unwrap()
}

/// An app's invoke of a device, off the async runtime (the HTTP helper blocks).
async fn invoke(port: u16, path: &'static str, body: &'static [u8]) -> edgecar_tests::HttpResponse {
    tokio::task::spawn_blocking(move || http(port, "POST", path, body, &[]))
        .await
        .unwrap()
}

#[test]
fn unknown_devices_and_wrong_passwords_are_refused_with_code_1() {
    let dir = tempfile::tempdir().unwrap();
    let (ec, p1, _) = site(dir.path(), &[]);
    for (id, pw) in [("dev1", "wrong"), ("ghost", p1.as_str()), ("dev1", "")] {
        let out = cli(&ec, id, pw, &["state", "get", "k"]);
        assert_eq!(out.status.code(), Some(1), "{id}/{pw} was let in");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("QUIC code 0x1"), "{err}");
    }
    // The certificate is pinned: another fingerprint fails the handshake.
    let out = Command::new(device_cli_bin())
        .args([
            "--transport",
            "quic",
            "--quic-port",
            &ec.quic_port.to_string(),
        ])
        .args([
            "--fingerprint",
            &"ab".repeat(32),
            "--id",
            "dev1",
            "state",
            "get",
            "k",
        ])
        .env("EDGECAR_DEVICE_PASSWORD", &p1)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let log = ec.log.lock().unwrap().clone();
    assert!(log.contains("device authentication failed"), "{log}");
    assert!(!log.contains(&p1), "a password reached the log");
    // The same device with its password, and the CA file instead of the fingerprint.
    let ca = dir.path().join("quic/cert.pem");
    let out = Command::new(device_cli_bin())
        .args([
            "--transport",
            "quic",
            "--quic-port",
            &ec.quic_port.to_string(),
        ])
        .args([
            "--ca-file",
            ca.to_str().unwrap(),
            "--server-name",
            "localhost",
        ])
        .args(["--id", "dev1", "state", "set", "k", "1"])
        .env("EDGECAR_DEVICE_PASSWORD", &p1)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_operations_stay_in_the_devices_own_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let (ec, p1, p2) = site(dir.path(), &[]);
    let (d1, _) = Client::connect(opts(&ec, "dev1", &p1)).await.unwrap();
    let (d2, _) = Client::connect(opts(&ec, "dev2", &p2)).await.unwrap();
    assert_eq!(d1.state_get("temp").await.unwrap(), None);
    d1.state_set("temp", &serde_json::json!(21.5))
        .await
        .unwrap();
    let (v, etag) = d1.state_get("temp").await.unwrap().unwrap();
    assert_eq!(&v[..], b"21.5");
    let etag = etag.expect("state.get carries the ETag");
    // Stored as dev1||temp: not the app's key "temp", and not dev2's.
    assert_eq!(
        ec.req("GET", "/v1.0/state/statestore/temp", b"", &[])
            .status,
        204
    );
    assert_eq!(d2.state_get("temp").await.unwrap(), None);
    // An ETag mismatch is the HTTP API's 409, and a delete with the right one works.
    let e = d1.state_delete("temp", Some("999")).await.unwrap_err();
    assert!(
        matches!(&e, Error::Api { status: 409, code, .. } if code == "ERR_STATE_DELETE"),
        "{e:?}"
    );
    d1.state_delete("temp", Some(&etag)).await.unwrap();
    assert_eq!(d1.state_get("temp").await.unwrap(), None);
    // Bad requests get a reply, never silence: an unknown operation, a missing parameter.
    let r = d1.request("frobnicate", &[], Bytes::new()).await.unwrap();
    assert_eq!(r.status, 404);
    let e = d1
        .request("state.get", &[], Bytes::new())
        .await
        .unwrap()
        .ok()
        .unwrap_err();
    assert!(matches!(e, Error::Api { status: 400, .. }), "{e:?}");
    // Presence says QUIC.
    let r = ec.req("GET", "/v1.0/devices/dev1", b"", &[]);
    assert_eq!(r.json()["protocol"], "quic", "{}", r.text());
    assert_eq!(r.json()["connected"], true);
    d1.disconnect().await;
    d2.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apps_command_reaches_only_its_device_and_the_answer_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let (ec, p1, p2) = site(dir.path(), &[]);
    // Not connected: 503 at once.
    let r = invoke(ec.port, "/v1.0/invoke/dev1/method/led/on", b"{}").await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (503, "ERR_DIRECT_INVOKE")
    );
    let (d1, mut c1) = Client::connect(opts(&ec, "dev1", &p1)).await.unwrap();
    let (_d2, mut c2) = Client::connect(opts(&ec, "dev2", &p2)).await.unwrap();
    let port = ec.port;
    let call = tokio::spawn(invoke(
        port,
        "/v1.0/invoke/dev1/method/led/on?level=3",
        br#"{"color":"red"}"#,
    ));
    let cmd = tokio::time::timeout(WAIT, c1.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cmd.method, "led/on?level=3");
    assert_eq!(&cmd.body[..], br#"{"color":"red"}"#);
    d1.reply(&cmd, 202, r#"{"led":"on"}"#).await.unwrap();
    let r = call.await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (202, r#"{"led":"on"}"#));
    // dev2 never saw dev1's command (and could not answer it: an answer travels on the
    // stream the command came on, which only dev1's connection holds).
    assert!(
        tokio::time::timeout(Duration::from_millis(300), c2.next())
            .await
            .is_err(),
        "dev2 received dev1's command"
    );
    // The device's connection ends: the app is told at once, not after the timeout.
    d1.disconnect().await;
    let r = invoke(port, "/v1.0/invoke/dev1/method/led/on", b"{}").await;
    assert_eq!(r.status, 503, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_telemetry_survives_kill_9_and_binary_readings_stay_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let pw = add_device(dir.path(), "sensor-1");
    let mut ec = Edgecar::start(dir.path(), &["--quic-port", "0"]);
    let (c, _) = Client::connect(opts(&ec, "sensor-1", &pw)).await.unwrap();
    const N: u64 = 40;
    for i in 1..=N {
        // Returns once the gateway stored the reading: its acknowledgement.
        c.telemetry("oven", format!(r#"{{"n":{i},"celsius":21.5}}"#))
            .await
            .unwrap();
    }
    let binary: &[u8] = &[0xff, 0x00, 0xfe, 0x80, b'a', 0xc3];
    c.telemetry("raw", Bytes::from_static(binary))
        .await
        .unwrap();
    // Every reading was acknowledged; now the power goes.
    ec.kill9();
    drop(c);

    const SUBSCRIBE: &str = r#"[{"pubsubname":"pubsub","topic":"telemetry","route":"/telemetry"}]"#;
    let app = SubscriberApp::start(SUBSCRIBE, |_| (200, String::new()));
    let _ec = Edgecar::start(dir.path(), &["--app-port", &app.port.to_string()]);
    let got = tokio::task::spawn_blocking(move || {
        app.wait_for("/telemetry", N as usize + 1, Duration::from_secs(30))
    })
    .await
    .unwrap();
    let events: Vec<serde_json::Value> = got.iter().map(|r| r.json()).collect();
    let mut ns: Vec<i64> = events
        .iter()
        .filter_map(|e| e["data"]["n"].as_i64())
        .collect();
    ns.sort_unstable();
    ns.dedup();
    assert_eq!(
        ns,
        (1..=N as i64).collect::<Vec<_>>(),
        "every acknowledged reading arrived"
    );
    let ev = events.iter().find(|e| e["subject"] == "oven").unwrap();
    assert_eq!(ev["source"], "sensor-1");
    assert_eq!(ev["type"], "io.edgecar.telemetry");
    let raw = events
        .iter()
        .find(|e| e["subject"] == "raw")
        .expect("the binary reading");
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(
            raw["data_base64"]
                .as_str()
                .expect("binary data travels as data_base64"),
        )
        .unwrap();
    assert_eq!(bytes, binary, "byte for byte");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_changes_address_keeps_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let (ec, p1, _) = site(dir.path(), &[]);
    let (d1, _) = Client::connect(opts(&ec, "dev1", &p1)).await.unwrap();
    d1.state_set("a", &serde_json::json!(1)).await.unwrap();
    let before = d1.local_addr().unwrap();
    let after = d1.rebind().unwrap();
    assert_ne!(before.port(), after.port());
    // The next request goes from the new address on the same connection: no new handshake.
    d1.state_set("b", &serde_json::json!(2)).await.unwrap();
    assert_eq!(&d1.state_get("a").await.unwrap().unwrap().0[..], b"1");
    let log = ec.log.lock().unwrap().clone();
    assert!(log.contains("the connection migrated"), "{log}");
    assert_eq!(
        log.matches("device connected device=dev1").count(),
        1,
        "one handshake only: {log}"
    );
    let r = ec.req("GET", "/v1.0/devices/dev1", b"", &[]);
    assert_eq!(r.json()["connections"], 1, "{}", r.text());
}

/// Opens a request stream on a raw connection, sends `bytes` and reads the whole answer.
async fn raw_exchange(conn: &quinn::Connection, bytes: &[u8]) -> (serde_json::Value, Vec<u8>) {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await.unwrap();
    let mut json = vec![0u8; u32::from_be_bytes(prefix) as usize];
    recv.read_exact(&mut json).await.unwrap();
    let body = recv.read_to_end(1 << 20).await.unwrap_or_default();
    (serde_json::from_slice(&json).unwrap(), body)
}

fn error_code(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    v["errorCode"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_big_headers_and_stream_floods_get_errors_and_others_keep_service() {
    let dir = tempfile::tempdir().unwrap();
    let (ec, p1, p2) = site(dir.path(), &[]);
    let (d2, _) = Client::connect(opts(&ec, "dev2", &p2)).await.unwrap();
    let q = pinned(&ec);

    // A first stream that is not an auth request: closed with 0x2.
    let (_e, conn) = handshake("127.0.0.1", ec.quic_port, WAIT, &q)
        .await
        .unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&encode_frame(
        &serde_json::json!({"op":"state.get","params":{"key":"k"}}),
    ))
    .await
    .unwrap();
    let _ = send.finish();
    match tokio::time::timeout(WAIT, conn.closed()).await.unwrap() {
        quinn::ConnectionError::ApplicationClosed(c) => assert_eq!(c.error_code.into_inner(), 2),
        other => panic!("{other:?}"),
    }

    // An authenticated raw connection.
    let (_e, conn) = handshake("127.0.0.1", ec.quic_port, WAIT, &q)
        .await
        .unwrap();
    let auth = encode_frame(&serde_json::json!({"op":"auth","params":{"id":"dev1","password":p1}}));
    let (h, _) = raw_exchange(&conn, &auth).await;
    assert_eq!(h["status"], 200);
    assert_eq!(h["meta"]["device"], "dev1");
    // Not JSON.
    let mut bad = 5u32.to_be_bytes().to_vec();
    bad.extend_from_slice(b"{nope");
    let (h, body) = raw_exchange(&conn, &bad).await;
    assert_eq!(
        (h["status"].as_u64(), error_code(&body).as_str()),
        (Some(400), "ERR_MALFORMED_REQUEST")
    );
    // A header announcing 1 GiB: refused before it is read.
    let (h, body) = raw_exchange(&conn, &(1u32 << 30).to_be_bytes()).await;
    assert_eq!(h["status"], 400);
    assert!(
        String::from_utf8_lossy(&body).contains("maxHeaderSize"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    // A header just over the limit (4Ki by default).
    let big =
        encode_frame(&serde_json::json!({"op":"state.get","params":{"key":"x".repeat(5000)}}));
    let (h, _) = raw_exchange(&conn, &big).await;
    assert_eq!(h["status"], 400);
    // A body over quic.maxBodySize (256Ki).
    let mut huge = encode_frame(&serde_json::json!({"op":"state.save"}));
    huge.extend(std::iter::repeat_n(b' ', 300 << 10));
    let (h, body) = raw_exchange(&conn, &huge).await;
    assert_eq!(
        (h["status"].as_u64(), error_code(&body).as_str()),
        (Some(413), "ERR_BODY_TOO_LARGE")
    );
    // The connection still serves requests, with the id echoed.
    let ok = encode_frame(&serde_json::json!({"op":"state.get","params":{"key":"k"},"id":"r9"}));
    let (h, _) = raw_exchange(&conn, &ok).await;
    assert_eq!(
        (h["status"].as_u64(), h["id"].as_str()),
        (Some(204), Some("r9"))
    );

    // A stream flood: far more streams than quic.maxStreams (16), each left open. The device
    // can open only 16 at a time (QUIC flow control); the rest wait on its side.
    let mut held = Vec::new();
    let mut opened = 0;
    for _ in 0..200 {
        match tokio::time::timeout(Duration::from_millis(50), conn.open_bi()).await {
            Ok(Ok((mut s, r))) => {
                let _ = s.write_all(&[0, 0]).await; // half a length prefix, never finished
                held.push((s, r));
                opened += 1;
            }
            _ => break,
        }
    }
    assert!(opened <= 16, "the gateway allowed {opened} streams at once");
    // Meanwhile another device keeps its service, and so does the HTTP API.
    d2.state_set("still", &serde_json::json!(true))
        .await
        .unwrap();
    assert!(d2.state_get("still").await.unwrap().is_some());
    assert_eq!(ec.req("GET", "/v1.0/healthz", b"", &[]).status, 204);
    drop(held);
    conn.close(0u32.into(), b"done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_identify_devices_and_wrong_ones_are_refused() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let ca = |name: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        (rcgen::Issuer::new(p, key), cert)
    };
    let (ours, ours_cert) = ca("device CA");
    let (theirs, _) = ca("another CA");
    std::fs::write(certs.path().join("ca.pem"), ours_cert.pem()).unwrap();
    let device_cert = |issuer: &rcgen::Issuer<'_, KeyPair>, cn: &str, file: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, issuer).unwrap();
        let (c, k) = (
            certs.path().join(format!("{file}.crt")),
            certs.path().join(format!("{file}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    };
    let good = device_cert(&ours, "dev1", "dev1");
    let ghost = device_cert(&ours, "ghost", "ghost");
    let foreign = device_cert(&theirs, "dev1", "foreign");
    let cfg = dir.path().join("edgecar.yaml");
    std::fs::write(
        &cfg,
        format!(
            "quic:\n  tls:\n    clientCaFile: {}\n",
            certs.path().join("ca.pem").display()
        ),
    )
    .unwrap();
    let (ec, _, _) = site(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let with = |cert: &(std::path::PathBuf, std::path::PathBuf), id: &str| {
        let mut o = Options::new("127.0.0.1", ec.quic_port, id, "");
        o.transport = Transport::Quic(QuicOptions {
            client_cert: Some(cert.clone()),
            ..pinned(&ec)
        });
        o
    };
    // The certificate is the device: no password.
    let (c, _) = Client::connect(with(&good, "")).await.unwrap();
    c.state_set("t", &serde_json::json!(1)).await.unwrap();
    let r = ec.req("GET", "/v1.0/devices/dev1", b"", &[]);
    assert_eq!(
        (
            r.json()["connected"].as_bool(),
            r.json()["protocol"].as_str()
        ),
        (Some(true), Some("quic"))
    );
    // Naming another device than the certificate's: refused.
    let e = Client::connect(with(&good, "dev2")).await.err().unwrap();
    assert!(matches!(e, Error::QuicClosed { code: 1, .. }), "{e:?}");
    // A valid certificate for an unregistered id: refused.
    let e = Client::connect(with(&ghost, "")).await.err().unwrap();
    assert!(matches!(e, Error::QuicClosed { code: 1, .. }), "{e:?}");
    // A certificate from another CA fails the handshake itself.
    assert!(Client::connect(with(&foreign, "")).await.is_err());
    eventually(WAIT, "the refusals in the log", || {
        let log = ec.log.lock().unwrap();
        (log.contains("no such device in the registry") && log.contains("QUIC handshake failed"))
            .then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commanded_while_asleep_on_mqtt_it_wakes_on_quic_and_gets_its_mailbox_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let (ec, p1, _) = site(dir.path(), &[]);
    // dev1 subscribes (over MQTT, with the CLI), then sleeps.
    let out = Command::new(device_cli_bin())
        .args(["--port", &ec.mqtt_port.to_string(), "--id", "dev1"])
        .args(["subscribe", "alerts", "--count", "0"])
        .env("EDGECAR_DEVICE_PASSWORD", &p1)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // While it sleeps (once the gateway has seen the MQTT session end, or the command would be
    // sent to that session live): a mailbox command and an event.
    eventually(WAIT, "dev1's MQTT session to end", || {
        let d = ec.req("GET", "/v1.0/devices/dev1", b"", &[]).json();
        (d["connected"] == false).then_some(())
    });
    let r = tokio::task::spawn_blocking({
        let port = ec.port;
        move || {
            http(
                port,
                "POST",
                "/v1.0/invoke/dev1/method/valve/open?percent=40",
                br#"{"by":"scheduler"}"#,
                &[
                    ("x-edgecar-mailbox-ttl", "10m"),
                    ("content-type", "application/json"),
                ],
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let r = ec.req(
        "POST",
        "/v1.0/publish/pubsub/alerts",
        br#"{"level":"high"}"#,
        &[("content-type", "application/json")],
    );
    assert_eq!(r.status, 204, "{}", r.text());
    // It wakes on QUIC: the command and the event arrive on streams the gateway opens.
    let (d1, mut commands) = Client::connect(opts(&ec, "dev1", &p1)).await.unwrap();
    let mut events = d1.events().unwrap();
    let cmd = tokio::time::timeout(WAIT, commands.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (cmd.method.as_str(), cmd.rid.as_str()),
        ("valve/open?percent=40", id.as_str())
    );
    assert_eq!(&cmd.body[..], br#"{"by":"scheduler"}"#);
    d1.reply(&cmd, 200, r#"{"opened":40}"#).await.unwrap();
    let ev = tokio::time::timeout(WAIT, events.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (ev.pubsub.as_str(), ev.topic.as_str()),
        ("pubsub", "alerts")
    );
    let v: serde_json::Value = serde_json::from_slice(&ev.body).unwrap();
    assert_eq!(v["data"]["level"], "high");
    // The app fetches the device's answer from the mailbox.
    let location = format!("/v1.0/devices/dev1/mailbox/{id}");
    let r = eventually(WAIT, "the mailbox answer", || {
        let r = ec.req("GET", &location, b"", &[]);
        (r.status == 200).then_some(r)
    });
    assert_eq!(r.text(), r#"{"opened":40}"#);
    // Acknowledged: nothing waits any more.
    let r = ec.req("GET", "/v1.0/devices/dev1", b"", &[]);
    assert_eq!(r.json()["link"], "quic", "{}", r.text());
    d1.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_authenticates_is_closed_with_code_3() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("edgecar.yaml");
    std::fs::write(&cfg, "quic:\n  handshakeTimeout: 1s\n").unwrap();
    let ec = Edgecar::start(
        dir.path(),
        &["--quic-port", "0", "--config", cfg.to_str().unwrap()],
    );
    let (_e, idle) = handshake("127.0.0.1", ec.quic_port, WAIT, &pinned(&ec))
        .await
        .unwrap();
    match tokio::time::timeout(WAIT, idle.closed()).await.unwrap() {
        quinn::ConnectionError::ApplicationClosed(c) => assert_eq!(c.error_code.into_inner(), 3),
        other => panic!("{other:?}"),
    }
    assert_eq!(ec.req("GET", "/v1.0/healthz", b"", &[]).status, 204);
}

/// One operation table: over MQTT and over QUIC a device names operations by the table's names
/// or by the names deployed devices already send, gets the same answers, reaches the operations
/// that are namespaced to it (locks here), and is refused the apps' own with 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_operation_table_for_every_transport() {
    let dir = tempfile::tempdir().unwrap();
    let res = dir.path().join("resources");
    std::fs::create_dir(&res).unwrap();
    edgecar_tests::write_component(&res, "statestore", "state.in-memory", &[]);
    edgecar_tests::write_component(&res, "pubsub", "pubsub.in-memory", &[]);
    edgecar_tests::write_component(&res, "lockstore", "lock.in-memory", &[]);
    let (ec, p1, p2) = site(dir.path(), &["--resources-path", res.to_str().unwrap()]);
    let (quic, _c1) = Client::connect(opts(&ec, "dev1", &p1)).await.unwrap();
    let (mqtt, _c2) = Client::connect(Options::new("127.0.0.1", ec.mqtt_port, "dev2", &p2))
        .await
        .unwrap();
    for (d, transport) in [(&quic, "quic"), (&mqtt, "mqtt")] {
        d.state_set("a", &serde_json::json!(1)).await.unwrap();
        let body = Bytes::from_static(br#"{"keys":["a"]}"#);
        let old = d.request("state.bulk", &[], body.clone()).await.unwrap();
        let new = d.request("state.bulk_get", &[], body).await.unwrap();
        assert_eq!((old.status, &old.body), (200, &new.body), "{transport}");
        assert!(
            String::from_utf8_lossy(&new.body).contains(r#""key":"a""#),
            "{transport}: {:?}",
            new.body
        );
        for name in ["publish", "pubsub.publish"] {
            let r = d
                .request(name, &[("topic", "t")], Bytes::from_static(b"{}"))
                .await
                .unwrap();
            assert_eq!(r.status, 204, "{transport} {name}");
        }
        // Locks are the device's own: two devices may hold the same resource name.
        let lock =
            Bytes::from_static(br#"{"resourceId":"pump","lockOwner":"me","expiryInSeconds":60}"#);
        let r = d
            .request("lock.lock", &[("store", "lockstore")], lock)
            .await
            .unwrap();
        assert_eq!(
            (r.status, String::from_utf8_lossy(&r.body).into_owned()),
            (200, r#"{"success":true}"#.to_owned()),
            "{transport}"
        );
        for (name, params) in [
            ("secrets.get", &[("store", "s"), ("name", "n")][..]),
            ("devices.list", &[][..]),
            ("bindings.invoke", &[("name", "b")][..]),
            ("metadata.get", &[][..]),
        ] {
            let r = d.request(name, params, Bytes::new()).await.unwrap();
            assert_eq!(r.status, 403, "{transport} {name}: {:?}", r.body);
        }
        let r = d.request("frobnicate", &[], Bytes::new()).await.unwrap();
        assert_eq!(r.status, 404, "{transport}");
        assert!(
            String::from_utf8_lossy(&r.body).contains("pubsub.publish"),
            "the error lists the operations: {:?}",
            r.body
        );
    }
}

/// One rate budget per device, whatever the transport: a device on MQTT and on QUIC at once
/// spends one bucket. With 10 requests/s and a burst of 10, twenty requests (ten on each
/// transport) cannot all be answered within the first second; with a bucket per connection they
/// would be answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rate_budget_per_device_over_mqtt_and_quic() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("edgecar.yaml");
    std::fs::write(
        &cfg,
        "mqtt:\n  maxConnectionsPerDevice: 2\n  rateLimit:\n    messagesPerSecond: 10\n    burst: 10\n",
    )
    .unwrap();
    let (ec, p1, _) = site(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let (quic, _c1) = Client::connect(opts(&ec, "dev1", &p1)).await.unwrap();
    let (mqtt, _c2) = Client::connect(Options::new("127.0.0.1", ec.mqtt_port, "dev1", &p1))
        .await
        .unwrap();
    // The connections' own packets took tokens too: wait for the bucket to fill up again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = std::time::Instant::now();
    async fn ten(d: &Client) {
        for _ in 0..10 {
            let r = d.request("state.get", &[("key", "k")], Bytes::new()).await;
            assert_eq!(r.unwrap().status, 204);
        }
    }
    tokio::join!(ten(&quic), ten(&mqtt));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(800),
        "20 requests against a burst of 10 at 10/s took only {took:?}: not one budget"
    );
}

/// A QUIC device written in Python with aioquic from docs/device-protocol.md alone (no code
/// shared with edgecar's quinn client): refused with code 0x1 on a wrong password, then
/// authentication, state, telemetry, an error reply, a subscription, and the
/// streams the gateway opens (an app's command, a subscribed event) answered as the document says.
#[test]
fn a_client_written_in_python_from_the_document_alone_speaks_quic() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::sync::mpsc;

    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let (ec, p1, _) = site(dir.path(), &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/quic_device.py");
    let cert = dir.path().join("quic/cert.pem");
    let mut child = Killed(
        Command::new(python())
            .arg(&script)
            .arg(ec.quic_port.to_string())
            .arg(&cert)
            .args(["dev1", &p1])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = mpsc::channel();
    let stdout = BufReader::new(child.0.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut said = Vec::new();
    let mut read_until = |want: &str| {
        while !said.iter().any(|l: &String| l == want) {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => said.push(line),
                Err(_) => {
                    let _ = child.0.kill();
                    let mut err = String::new();
                    let _ =
                        std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut err);
                    panic!("the Python device did not say {want:?}; it said {said:?}\n{err}");
                }
            }
        }
        said.clone()
    };
    let before = read_until("READY");
    assert!(
        before.contains(&"refused 0x1 unknown device or wrong password".to_owned()),
        "{before:?}"
    );
    assert!(
        before.contains(&"state.get 200 21.5 etag=1".to_owned()),
        "{before:?}"
    );
    assert!(before.contains(&"subscribe 201".to_owned()), "{before:?}");

    // An app's command reaches the device on a stream the gateway opens; its answer is the app's.
    let r = http(
        ec.port,
        "POST",
        "/v1.0/invoke/dev1/method/led/on",
        br#"{"level":3}"#,
        &[("content-type", "application/json")],
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, br#"{"lit":true}"#);
    let r = http(
        ec.port,
        "POST",
        "/v1.0/publish/pubsub/alerts",
        br#"{"level":"high"}"#,
        &[("content-type", "application/json")],
    );
    assert_eq!(r.status, 204);
    let all = read_until("DONE");
    assert!(
        all.contains(&r#"command POST /led/on {"level":3}"#.to_owned()),
        "{all:?}"
    );
    assert!(
        all.contains(&r#"event alerts {"level": "high"}"#.to_owned()),
        "{all:?}"
    );
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status}");
}
