//! An app written with the official Dapr Python SDK's gRPC extension (`dapr.ext.grpc`,
//! dapr-ext-grpc), unchanged, behind `edgecar run --app-protocol grpc`: it receives a service
//! invocation (`OnInvoke`), topic events (`ListTopicSubscriptions` + `OnTopicEvent`, by its
//! default path and by a rule's path), a bulk subscription's batches (`OnBulkTopicEvent`, with
//! per-entry SUCCESS / RETRY / DROP) and input binding events (`OnBindingEvent`) for the bindings
//! it lists in `ListInputBindings` only, as daprd delivers them: JSON-typed data JSON-encoded, a
//! declarative route `/` as the path `/`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use edgecar_tests::{Edgecar, eventually, free_port, python, write_component};

/// The Python app, killed when dropped.
struct PyApp(Child);

impl Drop for PyApp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn records(file: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Lines the app recorded of `kind`.
fn of_kind<'a>(got: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    got.iter().filter(|r| r["kind"] == kind).collect()
}

/// The RPCs edgecar made to the app, by method.
fn rpcs<'a>(got: &'a [serde_json::Value], method: &str) -> Vec<&'a serde_json::Value> {
    got.iter()
        .filter(|r| r["kind"] == "rpc" && r["method"] == method)
        .collect()
}

/// How many times the app's bulk handler saw event `n`.
fn batch_count(got: &[serde_json::Value], n: i64) -> usize {
    of_kind(got, "batch").iter().filter(|r| r["n"] == n).count()
}

#[test]
fn a_dapr_ext_grpc_app_receives_invocations_events_batches_and_binding_events() {
    let (dir, res, data) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let record = data.path().join("calls.jsonl");
    let port = free_port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/grpc_app.py");
    let _app = PyApp(
        Command::new(python())
            .arg(script)
            .arg(port.to_string())
            .arg(&record)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python not found"),
    );
    eventually(
        Duration::from_secs(20),
        "the Python gRPC app listening",
        || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
    );
    // "mem" keeps nothing for absent subscribers: the readiness check below depends on it.
    write_component(res.path(), "mem", "pubsub.in-memory", &[]);
    write_component(
        res.path(),
        "pubsub",
        "pubsub.sled",
        &[("redeliverInterval", "500ms")],
    );
    for name in ["tick", "tock"] {
        write_component(
            res.path(),
            name,
            "bindings.cron",
            &[("schedule", "@every 1s")],
        );
    }
    // dapr-ext-grpc's subscribe decorator has no bulk option: bulk comes from a declarative
    // Subscription, whose route is the path the SDK looks the handler up by (its topic).
    std::fs::write(
        res.path().join("batch.yaml"),
        "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata:\n  name: batch\nspec:\n  pubsubname: pubsub\n  topic: batch\n  routes:\n    default: batch\n  deadLetterTopic: batch-dead\n  bulkSubscribe:\n    enabled: true\n    maxMessagesCount: 10\n    maxAwaitDurationMs: 500\n",
    )
    .unwrap();
    // A declarative route `/` reaches the app as the path `/` (daprd sends routes verbatim).
    std::fs::write(
        res.path().join("slash.yaml"),
        "apiVersion: dapr.io/v1alpha1\nkind: Subscription\nmetadata:\n  name: slash\nspec:\n  pubsubname: pubsub\n  topic: slash\n  route: /\n",
    )
    .unwrap();
    let ec = Edgecar::start(
        dir.path(),
        &[
            "--app-id",
            "pyapp",
            "--app-port",
            &port.to_string(),
            "--app-protocol",
            "grpc",
            "--resources-path",
            res.path().to_str().unwrap(),
        ],
    );
    // Invocation over HTTP reaches the app's OnInvoke.
    let r = ec.req(
        "POST",
        "/v1.0/invoke/pyapp/method/echo",
        b"hello",
        &[("content-type", "text/plain")],
    );
    assert_eq!(r.status, 200, "{}\n{}", r.text(), ec.log.lock().unwrap());
    assert_eq!(r.text(), "grpc-app:hello");
    // The app's subscriptions come from ListTopicSubscriptions; a publish made as soon as
    // healthz says ready reaches OnTopicEvent, even on a pub/sub that keeps nothing.
    eventually(Duration::from_secs(20), "healthz ready", || {
        (ec.req("GET", "/v1.0/healthz", b"", &[]).status == 204).then_some(())
    });
    let json = [("content-type", "application/json")];
    let r = ec.req("POST", "/v1.0/publish/mem/orders", br#"{"id":42}"#, &json);
    assert_eq!(r.status, 204, "{}", r.text());
    let r = ec.req("POST", "/v1.0/publish/pubsub/routed", br#"{"r":1}"#, &json);
    assert_eq!(r.status, 204, "{}", r.text());
    // A JSON string as data, published as JSON, inside a CloudEvent, and as text.
    let r = ec.req("POST", "/v1.0/publish/pubsub/strings", br#""json""#, &json);
    assert_eq!(r.status, 204, "{}", r.text());
    let ce = serde_json::json!({"specversion": "1.0", "id": "ce-1", "source": "test", "type": "t",
        "datacontenttype": "application/json", "data": "cloudevent"});
    let r = ec.req(
        "POST",
        "/v1.0/publish/pubsub/strings",
        ce.to_string().as_bytes(),
        &[("content-type", "application/cloudevents+json")],
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let text = [("content-type", "text/plain")];
    let r = ec.req("POST", "/v1.0/publish/pubsub/strings", b"text", &text);
    assert_eq!(r.status, 204, "{}", r.text());
    let r = ec.req("POST", "/v1.0/publish/pubsub/slash", br#"{"s":1}"#, &json);
    assert_eq!(r.status, 204, "{}", r.text());
    let entries: Vec<_> = (1..=6)
        .map(|n| serde_json::json!({"entryId": n.to_string(), "event": {"n": n}, "contentType": "application/json"}))
        .collect();
    let r = ec.req(
        "POST",
        "/v1.0-alpha1/publish/bulk/pubsub/batch",
        serde_json::Value::from(entries).to_string().as_bytes(),
        &json,
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let md = ec.req("GET", "/v1.0/metadata", b"", &[]).json();
    assert_eq!(md["appConnectionProperties"]["protocol"], "grpc");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let got = loop {
        let got = records(&record);
        let n = |k: &str| of_kind(&got, k).len();
        let batched = (1..=6).all(|i| batch_count(&got, i) >= 1) && batch_count(&got, 4) >= 2;
        if n("invoke") >= 1
            && n("event") >= 1
            && n("routed") >= 1
            && n("binding") >= 2
            && n("dead") >= 1
            && n("string") >= 3
            && rpcs(&got, "OnTopicEvent")
                .iter()
                .any(|r| r["topic"] == "slash")
            && batched
        {
            break got;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the app did not receive everything: {got:#?}\nedgecar log:\n{}",
            ec.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let invoke = of_kind(&got, "invoke")[0];
    assert_eq!(invoke["data"], "hello");
    assert_eq!(invoke["content_type"], "text/plain");
    let event = of_kind(&got, "event")[0];
    let data: serde_json::Value =
        serde_json::from_str(event["data"].as_str().unwrap_or("null")).unwrap_or_default();
    assert_eq!(data["id"], 42, "{event}");
    assert_eq!(event["topic"], "orders");
    assert_eq!(event["pubsub"], "mem");
    assert_eq!(event["type"], "com.dapr.event.sent");
    // A rule's path reaches the app as the app gave it (the handler's name, no leading '/').
    let routed = rpcs(&got, "OnTopicEvent");
    assert!(
        routed
            .iter()
            .any(|r| r["topic"] == "routed" && r["path"] == "on_routed"),
        "{routed:?}"
    );
    // JSON-typed string data arrives JSON-encoded (quotes kept), text as its text, as daprd
    // delivers them.
    let mut strings: Vec<(String, String)> = of_kind(&got, "string")
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            (s("data"), s("content_type"))
        })
        .collect();
    strings.sort();
    assert_eq!(
        strings,
        [
            (r#""cloudevent""#.to_owned(), "application/json".to_owned()),
            (r#""json""#.to_owned(), "application/json".to_owned()),
            ("text".to_owned(), "text/plain".to_owned()),
        ]
    );
    // The declarative route `/` is sent as `/`; the app's own default path (the `orders`
    // subscription, which lists no route) as "".
    assert!(
        routed
            .iter()
            .any(|r| r["topic"] == "slash" && r["path"] == "/"),
        "{routed:?}"
    );
    let orders: Vec<_> = routed.iter().filter(|r| r["topic"] == "orders").collect();
    assert!(
        !orders.is_empty() && orders.iter().all(|r| r["path"] == ""),
        "{routed:?}"
    );

    // The bulk subscription's events came in batches through OnBulkTopicEvent, never one by one.
    let bulk = rpcs(&got, "OnBulkTopicEvent");
    assert!(
        !bulk.is_empty()
            && bulk
                .iter()
                .all(|r| r["topic"] == "batch" && r["path"] == "batch"),
        "{bulk:?}"
    );
    assert!(
        bulk.len() < of_kind(&got, "batch").len(),
        "one OnBulkTopicEvent per event, not batches: {bulk:?}"
    );
    assert!(
        routed.iter().all(|r| r["topic"] != "batch"),
        "bulk events sent one by one: {routed:?}"
    );
    // DROP went to the dead-letter topic; RETRY came back in a later batch.
    let dead = of_kind(&got, "dead");
    let dropped: serde_json::Value =
        serde_json::from_str(dead[0]["data"].as_str().unwrap_or("null")).unwrap_or_default();
    assert_eq!(dropped["n"], 3, "{dead:?}");
    // Nothing answered SUCCESS or DROP comes again (the redelivery interval is 500ms).
    std::thread::sleep(Duration::from_millis(2000));
    let settled = records(&record);
    for n in [1, 2, 3, 5, 6] {
        assert_eq!(batch_count(&settled, n), 1, "event {n}: {settled:#?}");
    }
    assert_eq!(batch_count(&settled, 4), 2, "RETRY once, then SUCCESS");
    assert_eq!(of_kind(&settled, "dead").len(), 1);

    // Input bindings: the app was asked which it wants and only "tick" reached it.
    assert!(!rpcs(&settled, "ListInputBindings").is_empty());
    let bindings = rpcs(&settled, "OnBindingEvent");
    assert!(
        bindings.len() >= 2 && bindings.iter().all(|r| r["name"] == "tick"),
        "a binding the app did not list reached it: {bindings:?}"
    );
    let log = ec.log.lock().unwrap().clone();
    assert!(
        log.contains("tock") && log.contains("does not list this input binding"),
        "{log}"
    );
}
