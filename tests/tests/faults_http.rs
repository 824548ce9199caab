//! Issue 11, the HTTP side: what a hostile or careless client must not be able to do to the Dapr
//! HTTP API, each proved against the real binary over real sockets — slow bodies and connection
//! floods, deeply nested JSON, percent-encoded `..` in capability paths, route enumeration without
//! the token, a world-readable state directory, oversized metadata attributes, and malformed
//! SUBSCRIBE packets on the MQTT port.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use edgecar_tests::mqtt::{RawMqtt, add_device, packet};
use edgecar_tests::{
    AppResponse, Edgecar, HttpResponse, SubscriberApp, TestApp, eventually, read_response,
    try_http, write_component,
};

/// Starts edgecar with `yaml` as its config file (kept in `dir`).
fn start_with_config(dir: &Path, yaml: &str, args: &[&str]) -> Edgecar {
    let cfg = dir.join("edgecar.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let state = dir.join("state");
    let mut all = vec!["--config", cfg.to_str().unwrap()];
    all.extend_from_slice(args);
    Edgecar::start(&state, &all)
}

/// A connection that sent its headers and the first byte of a 1,000-byte body, then stalls.
fn slow_body(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(
        b"POST /v1.0/state/statestore HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n[",
    )
    .unwrap();
    s
}

/// `GET /v1.0/healthz` on a fresh connection; `None` if it fails or takes longer than `within`.
fn healthz(port: u16, within: Duration) -> Option<u16> {
    let started = Instant::now();
    let r = try_http(port, "GET", "/v1.0/healthz", b"", &[]).ok()?;
    (started.elapsed() < within).then_some(r.status)
}

/// Hundreds of connections that send a body slowly (or never finish it) are answered 408 and
/// closed once `http.readTimeout` passes, instead of holding a socket forever; `/v1.0/healthz`
/// answers promptly the whole time.
#[test]
fn slow_request_bodies_are_closed_after_the_read_timeout_and_healthz_answers_throughout() {
    let dir = tempfile::tempdir().unwrap();
    let ec = start_with_config(
        dir.path(),
        "http:\n  readTimeout: 2s\n  maxConnections: 400\n",
        &[],
    );
    let started = Instant::now();
    let mut slow: Vec<TcpStream> = (0..300).map(|_| slow_body(ec.port)).collect();
    // healthz answers while the 300 are stalled.
    while started.elapsed() < Duration::from_millis(1500) {
        assert_eq!(healthz(ec.port, Duration::from_secs(1)), Some(204));
        std::thread::sleep(Duration::from_millis(100));
    }
    for (i, s) in slow.iter_mut().enumerate() {
        // Each is answered and closed by edgecar: read_response reads until EOF.
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let r = read_response(s).unwrap_or_else(|e| panic!("slow connection {i}: {e}"));
        assert_eq!(r.status, 408, "slow connection {i}: {}", r.text());
        assert_eq!(r.header("connection"), Some("close"));
        assert_eq!(r.error_code(), "ERR_REQUEST_TIMEOUT");
    }
    let all_closed = started.elapsed();
    assert!(
        all_closed < Duration::from_secs(8),
        "the slow connections were closed only after {all_closed:?}"
    );
    assert_eq!(healthz(ec.port, Duration::from_secs(1)), Some(204));
}

/// A connection that opens and sends nothing, or goes idle after a request on keep-alive, is
/// closed after `http.readTimeout` too, so idle sockets cannot hold connection slots.
#[test]
fn idle_connections_are_closed_after_the_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let ec = start_with_config(dir.path(), "http:\n  readTimeout: 1s\n", &[]);
    let mut silent = TcpStream::connect(("127.0.0.1", ec.port)).unwrap();
    let mut kept = TcpStream::connect(("127.0.0.1", ec.port)).unwrap();
    kept.write_all(b"GET /v1.0/healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    for s in [&mut silent, &mut kept] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        // EOF (Ok) rather than the 10 s read timeout (Err).
        s.read_to_end(&mut buf).unwrap();
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Connections beyond `http.maxConnections` are answered 503 at once and closed, rather than
/// held; the daemon stays healthy and serves again as soon as slots free up.
#[test]
fn connections_beyond_max_connections_get_a_prompt_503_and_the_daemon_stays_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let ec = start_with_config(
        dir.path(),
        "http:\n  readTimeout: 3s\n  maxConnections: 20\n",
        &[],
    );
    let held: Vec<TcpStream> = (0..20).map(|_| slow_body(ec.port)).collect();
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..50 {
        let started = Instant::now();
        let r = try_http(ec.port, "GET", "/v1.0/healthz", b"", &[])
            .unwrap_or_else(|e| panic!("extra connection {i}: {e}"));
        assert_eq!(r.status, 503, "extra connection {i}: {}", r.text());
        assert_eq!(r.header("connection"), Some("close"));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "refusal {i} took {:?}",
            started.elapsed()
        );
    }
    // Once the held connections time out, the API serves again.
    eventually(
        Duration::from_secs(10),
        "healthz after the slots free",
        || (healthz(ec.port, Duration::from_secs(1)) == Some(204)).then_some(()),
    );
    drop(held);
    let r = ec.req("GET", "/v1.0/metadata", b"", &[]);
    assert_eq!(r.status, 200);
}

/// The issue's scenario: with edgecar held to 1,024 descriptors, 1,100 slow-body connections
/// (default `http.maxConnections`, a short `http.readTimeout`) no longer starve the daemon:
/// healthz answers at once throughout (503 while every slot is held, never a timeout), and 204
/// again once the slow connections are closed.
#[test]
fn eleven_hundred_slow_bodies_under_a_1024_descriptor_limit_never_make_healthz_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let ec = start_with_config(dir.path(), "http:\n  readTimeout: 3s\n", &[]);
    let limited = std::process::Command::new("prlimit")
        .args(["--pid", &ec.pid().to_string(), "--nofile=1024:1024"])
        .status()
        .expect("prlimit (util-linux)");
    assert!(limited.success());
    let started = Instant::now();
    let mut held = Vec::new();
    for _ in 0..1100 {
        // Connections over the limit may be answered and closed before the body is written.
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", ec.port)) {
            let _ = s.write_all(
                b"POST /v1.0/state/statestore HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n[",
            );
            held.push(s);
        }
    }
    std::thread::sleep(Duration::from_millis(700));
    while started.elapsed() < Duration::from_secs(2) {
        let status = healthz(ec.port, Duration::from_secs(1));
        assert!(
            matches!(status, Some(204 | 503)),
            "healthz answered {status:?} after {:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eventually(
        Duration::from_secs(10),
        "healthz 204 after the timeout",
        || (healthz(ec.port, Duration::from_secs(1)) == Some(204)).then_some(()),
    );
    drop(held);
    assert_eq!(ec.req("GET", "/v1.0/healthz", b"", &[]).status, 204);
}

/// A client that asks for large replies and then stops reading them loses its connection (and
/// its `http.maxConnections` slot) once a write has waited `http.readTimeout`, instead of holding
/// it forever.
#[test]
fn a_client_that_stops_reading_replies_loses_its_slot_after_the_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let ec = start_with_config(
        dir.path(),
        "http:\n  readTimeout: 1s\n  maxConnections: 1\n",
        &[],
    );
    let big = format!(r#"[{{"key":"big","value":"{}"}}]"#, "x".repeat(3 << 20));
    let r = ec.req("POST", "/v1.0/state/statestore", big.as_bytes(), &[]);
    assert_eq!(r.status, 204, "{}", r.text());
    // The save's connection gives its one slot back just after the client sees it close.
    std::thread::sleep(Duration::from_millis(300));
    // 30 pipelined GETs of 3 MiB each, never read: far more than the socket buffers hold.
    let mut stalled = TcpStream::connect(("127.0.0.1", ec.port)).unwrap();
    let get = "GET /v1.0/state/statestore/big HTTP/1.1\r\nhost: x\r\n\r\n".repeat(30);
    stalled.write_all(get.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(healthz(ec.port, Duration::from_secs(1)), Some(503));
    let started = Instant::now();
    eventually(
        Duration::from_secs(10),
        "the stalled connection to be closed",
        || (healthz(ec.port, Duration::from_secs(1)) == Some(204)).then_some(()),
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(stalled);
}

/// `[[[...1...]]]`, `depth` levels deep.
fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// A value nested 128 levels or more comes back byte for byte on every read path: single get,
/// bulk get (which once answered `"data": null`), after a transaction, and to a subscriber.
#[test]
fn deeply_nested_json_values_come_back_the_same_on_every_read_path() {
    let deep = nested(200);
    let app = SubscriberApp::start(
        r#"[{"pubsubname":"pubsub","topic":"deep","route":"/deep"}]"#,
        |_| (200, String::new()),
    );
    let dir = tempfile::tempdir().unwrap();
    let res = tempfile::tempdir().unwrap();
    write_component(res.path(), "statestore", "state.sled", &[]);
    write_component(res.path(), "pubsub", "pubsub.sled", &[]);
    let ec = Edgecar::start(
        dir.path(),
        &[
            "--app-port",
            &app.port.to_string(),
            "--resources-path",
            res.path().to_str().unwrap(),
        ],
    );
    let save = format!(r#"[{{"key":"deep","value":{deep}}}]"#);
    assert_eq!(
        ec.req("POST", "/v1.0/state/statestore", save.as_bytes(), &[])
            .status,
        204
    );
    let tx = format!(
        r#"{{"operations":[{{"operation":"upsert","request":{{"key":"deep-tx","value":{deep}}}}}]}}"#
    );
    let r = ec.req(
        "POST",
        "/v1.0/state/statestore/transaction",
        tx.as_bytes(),
        &[],
    );
    assert_eq!(r.status, 204, "{}", r.text());
    for key in ["deep", "deep-tx"] {
        let r = ec.req("GET", &format!("/v1.0/state/statestore/{key}"), b"", &[]);
        assert_eq!((r.status, r.text()), (200, deep.clone()));
    }
    let r = ec.req(
        "POST",
        "/v1.0/state/statestore/bulk",
        br#"{"keys":["deep","deep-tx"]}"#,
        &[],
    );
    assert_eq!(r.status, 200);
    let body = r.text();
    assert!(!body.contains("null"), "bulk get lost the value: {body}");
    assert_eq!(
        body.matches(&format!(r#""data":{deep}"#)).count(),
        2,
        "{body}"
    );

    // Pub/sub: published as JSON, delivered inside the CloudEvent unchanged.
    eventually(Duration::from_secs(20), "the subscription to start", || {
        let m = ec.req("GET", "/v1.0/metadata", b"", &[]).json();
        (m["subscriptions"].as_array().map_or(0, Vec::len) >= 1).then_some(())
    });
    let r = ec.req(
        "POST",
        "/v1.0/publish/pubsub/deep",
        deep.as_bytes(),
        &[("content-type", "application/json")],
    );
    assert_eq!(r.status, 204);
    let got = app.wait_for("/deep", 1, Duration::from_secs(10));
    let event = String::from_utf8_lossy(&got[0].body).into_owned();
    assert!(event.contains(&format!(r#""data":{deep}"#)), "{event}");
}

/// Percent-encoded `..` segments in a capability's method path (`%2e%2e/admin`, `..%2Fadmin`,
/// `.%2e/admin`, ...) are refused with 400 and never reach the offer's server; a normal path
/// still does.
#[test]
fn percent_encoded_traversal_in_capability_paths_never_reaches_the_cloud() {
    let cloud = TestApp::start(|_| AppResponse::new(200, "{}"));
    let dir = tempfile::tempdir().unwrap();
    let res = tempfile::tempdir().unwrap();
    std::fs::write(
        res.path().join("cap.yaml"),
        format!(
            "apiVersion: edgecar.io/v1alpha1\nkind: Capability\nmetadata:\n  name: detect\nspec:\n  offers:\n  - name: cloud\n    type: http\n    url: http://127.0.0.1:{}/v1\n",
            cloud.port
        ),
    )
    .unwrap();
    let ec = Edgecar::start(
        dir.path(),
        &["--resources-path", res.path().to_str().unwrap()],
    );
    let traversals = [
        "%2e%2e/admin",
        "%2E%2E/admin",
        "..%2Fadmin",
        "..%2fadmin",
        ".%2e/admin",
        "%2e./admin",
        "x/%2e%2e/%2e%2e/admin",
        "x%2F..%2F..%2Fadmin",
        "%2e/admin",
        "..%5cadmin",
        "%2e%2e",
    ];
    for t in traversals {
        let r = ec.req("GET", &format!("/v1.0/capabilities/detect/{t}"), b"", &[]);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "ERR_MALFORMED_REQUEST"),
            "{t}: {}",
            r.text()
        );
    }
    assert!(
        cloud.received().is_empty(),
        "the cloud received {:?}",
        cloud
            .received()
            .iter()
            .map(|r| r.path.clone())
            .collect::<Vec<_>>()
    );
    let r = ec.req("GET", "/v1.0/capabilities/detect/objects/a%20b", b"", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let paths: Vec<String> = cloud.received().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/v1/objects/a%20b"]);
}

/// With an API token, every request except the two health endpoints is refused with 401 before
/// routing, so routes (and which methods they take) cannot be enumerated without the token.
#[test]
fn without_the_token_unknown_routes_answer_401_not_404() {
    let dir = tempfile::tempdir().unwrap();
    let ec = Edgecar::start(dir.path(), &["--dapr-api-token", "s3cret"]);
    for (method, path) in [
        ("GET", "/v1.0/nope"),
        ("GET", "/v2/anything"),
        ("GET", "/"),
        ("PATCH", "/v1.0/state/statestore"),
        ("GET", "/v1.0/state/s/%zz"),
        ("GET", "/v1.0-alpha1/nothing"),
        ("GET", "/v1.0/metadata"),
        ("GET", "/v1.0/invoke/x/nomethod"),
    ] {
        let r = ec.req(method, path, b"", &[]);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (401, "ERR_UNAUTHORIZED"),
            "{method} {path}"
        );
    }
    let r = ec.req("GET", "/orders", b"", &[("dapr-app-id", "x")]);
    assert_eq!(r.status, 401);
    assert_eq!(ec.req("GET", "/v1.0/healthz", b"", &[]).status, 204);
    assert_eq!(
        ec.req("GET", "/v1.0/healthz/outbound", b"", &[]).status,
        204
    );
    let token = [("dapr-api-token", "s3cret")];
    assert_eq!(ec.req("GET", "/v1.0/nope", b"", &token).status, 404);
    assert_eq!(ec.req("GET", "/v1.0/metadata", b"", &token).status, 200);
}

/// The state directory is created 0700, and the database directory under it is not readable by
/// other users (sled creates its files 0644).
#[test]
fn the_state_directory_and_database_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("new").join("state");
    let _ec = Edgecar::start(&state, &[]);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700, "{}", state.display());
    let db = state.join("edgecar.sled");
    assert_eq!(mode(&db) & 0o077, 0, "{}", db.display());
}

/// Metadata attribute names are bounded like values and the number of attributes, each refused
/// with 400 and a message naming the limit; a 16 MB `/v1.0/metadata` cannot be built.
#[test]
fn metadata_attribute_names_values_and_count_are_limited() {
    let dir = tempfile::tempdir().unwrap();
    let ec = Edgecar::start(dir.path(), &[]);
    let long_name = "n".repeat(60_000);
    let r: HttpResponse = ec.req("PUT", &format!("/v1.0/metadata/{long_name}"), b"v", &[]);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("name is 60000 bytes; the limit is 256"),
        "{}",
        r.text()
    );
    let r = ec.req("PUT", "/v1.0/metadata/big", &vec![b'x'; 60_000], &[]);
    assert_eq!(r.status, 400);
    assert!(r.text().contains("the limit is 4096"), "{}", r.text());
    let ok = ec.req(
        "PUT",
        &format!("/v1.0/metadata/{}", "n".repeat(256)),
        b"v",
        &[],
    );
    assert_eq!(ok.status, 204);
    for i in 1..256 {
        let r = ec.req("PUT", &format!("/v1.0/metadata/a{i}"), b"v", &[]);
        assert_eq!(r.status, 204);
    }
    let r = ec.req("PUT", "/v1.0/metadata/one-too-many", b"v", &[]);
    assert_eq!(r.status, 400);
    assert!(r.text().contains("at most 256"), "{}", r.text());
    assert!(ec.req("GET", "/v1.0/metadata", b"", &[]).body.len() < 64 * 1024);
}

/// A SUBSCRIBE whose fixed-header flags are not 0b0010, or whose subscription options set a
/// reserved bit, is malformed (MQTT 3.1.1 §3.8.1, §3.8.3.1): the connection is closed. A
/// well-formed SUBSCRIBE on another connection still gets its SUBACK.
#[test]
fn subscribe_with_reserved_bits_set_closes_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let password = add_device(dir.path(), "dev1");
    let ec = Edgecar::start(dir.path(), &[]);
    let filter = b"edgecar/v1/dev1/res/#";
    let body = |options: u8| {
        let mut b = vec![0, 1, 0, filter.len() as u8];
        b.extend_from_slice(filter);
        b.push(options);
        b
    };
    for (first, options) in [
        (0x80u8, 0u8),
        (0x83, 0),
        (0x8a, 0),
        (0x82, 0b0000_0100),
        (0x82, 0b1000_0001),
    ] {
        let (mut c, code) = RawMqtt::connect(ec.mqtt_port, "dev1", &password, 30);
        assert_eq!(code, 0);
        c.send(&packet(first, &body(options))).unwrap();
        assert!(
            c.closed_within(Duration::from_secs(3)),
            "SUBSCRIBE {first:#04x} with options {options:#010b} was not refused"
        );
    }
    let (mut c, _) = RawMqtt::connect(ec.mqtt_port, "dev1", &password, 30);
    assert_eq!(c.subscribe("edgecar/v1/dev1/res/#", 1, 1), [1]);
    assert_eq!(ec.req("GET", "/v1.0/healthz", b"", &[]).status, 204);
}

/// The gRPC API has the same connection limit (counted on its own): connections beyond
/// `http.maxConnections` are closed at once, without a byte, and a slot that frees up serves
/// again — an HTTP/2 client preface is answered with the server's SETTINGS frame.
#[test]
fn grpc_connections_beyond_max_connections_are_closed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let ec = start_with_config(dir.path(), "http:\n  maxConnections: 2\n", &[]);
    // Reads what the server sends to an HTTP/2 client preface: `None` if it closed the
    // connection without a byte, else the first frame's type.
    let greet = |s: &mut TcpStream| -> Option<u8> {
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .ok()?;
        let mut head = [0u8; 9];
        match s.read_exact(&mut head) {
            Ok(()) => Some(head[3]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => panic!("no answer: {e}"),
            Err(_) => None,
        }
    };
    let connect = || TcpStream::connect(("127.0.0.1", ec.grpc_port)).unwrap();
    let mut held: Vec<TcpStream> = (0..2).map(|_| connect()).collect();
    for s in &mut held {
        assert_eq!(
            greet(s),
            Some(0x4),
            "a connection within the limit is served"
        );
    }
    for i in 0..5 {
        let started = Instant::now();
        let mut extra = connect();
        assert_eq!(greet(&mut extra), None, "extra connection {i} is closed");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    drop(held.pop());
    eventually(Duration::from_secs(5), "a freed gRPC slot", || {
        (greet(&mut connect()) == Some(0x4)).then_some(())
    });
    assert_eq!(ec.req("GET", "/v1.0/healthz", b"", &[]).status, 204);
}
