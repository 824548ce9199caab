//! Pub/sub against the real binary and a small real app: Dapr's publish API and error codes, the
//! CloudEvents envelope the app receives, how the app's answers are honoured (SUCCESS, RETRY,
//! DROP, 404, 500), dead-letter topics, routing rules, bulk publish, the subscriptions listed in
//! the metadata, and delivery of an event published before a `kill -9`.

use std::path::Path;
use std::time::Duration;

use edgecar_tests::{Edgecar, SubscriberApp, eventually, free_port, write_component};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

/// A Resiliency document that retries deliveries from `pubsub` twice, 50ms apart.
fn fast_retries(dir: &Path) {
    std::fs::write(
        dir.join("resiliency.yaml"),
        "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: fast\nspec:\n  policies:\n    retries:\n      twice:\n        policy: constant\n        duration: 50ms\n        maxRetries: 2\n  targets:\n    components:\n      pubsub:\n        inbound:\n          retry: twice\n",
    )
    .unwrap();
}

fn resources() -> tempfile::TempDir {
    let res = tempfile::tempdir().unwrap();
    write_component(res.path(), "pubsub", "pubsub.sled", &[]);
    res
}

fn start(state: &Path, res: &Path, app: &SubscriberApp) -> Edgecar {
    Edgecar::start(
        state,
        &[
            "--app-id",
            "checkout",
            "--app-port",
            &app.port.to_string(),
            "--resources-path",
            res.to_str().unwrap(),
        ],
    )
}

fn publish(ec: &Edgecar, path: &str, body: &str, ct: &str) -> u16 {
    let r = ec.req("POST", path, body.as_bytes(), &[("content-type", ct)]);
    assert!(
        r.status == 204 || r.status >= 400,
        "{} {}",
        r.status,
        r.text()
    );
    r.status
}

/// Waits until the subscriptions are running (the metadata lists them).
fn wait_subscribed(ec: &Edgecar, n: usize) {
    eventually(WAIT, "subscriptions to start", || {
        let m = ec.req("GET", "/v1.0/metadata", b"", &[]).json();
        (m["subscriptions"].as_array().map_or(0, Vec::len) >= n).then_some(())
    });
}

#[test]
fn publish_errors_use_dapr_codes_and_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let ec = Edgecar::start(dir.path(), &[]);
    let r = ec.req("POST", "/v1.0/publish/nope/orders", b"{}", &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (404, "ERR_PUBSUB_NOT_FOUND")
    );
    assert_eq!(r.json()["message"], "pubsub nope not found");
    let r = ec.req("POST", "/v1.0/publish/pubsub/", b"{}", &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (404, "ERR_TOPIC_NAME_EMPTY")
    );
    let r = ec.req("POST", "/v1.0/publish//orders", b"{}", &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (404, "ERR_PUBSUB_EMPTY")
    );
    let r = ec.req(
        "POST",
        "/v1.0/publish/pubsub/orders?metadata.rawPayload=maybe",
        b"{}",
        &[],
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "ERR_PUBSUB_REQUEST_METADATA")
    );
    let r = ec.req(
        "POST",
        "/v1.0/publish/pubsub/orders?metadata.ttlInSeconds=soon",
        b"{}",
        &[],
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "ERR_PUBSUB_REQUEST_METADATA")
    );
    let r = ec.req(
        "POST",
        "/v1.0/publish/pubsub/orders",
        b"not json",
        &[("content-type", "application/cloudevents+json")],
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (500, "ERR_PUBSUB_CLOUD_EVENTS_SER")
    );
    let r = ec.req("GET", "/v1.0/publish/pubsub/orders", b"", &[]);
    assert_eq!(r.status, 400);
    // The embedded default `pubsub` takes messages without any resource file.
    let r = ec.req(
        "POST",
        "/v1.0/publish/pubsub/orders",
        b"{\"a\":1}",
        &[("content-type", "application/json")],
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let m = ec.req("GET", "/v1.0/metadata", b"", &[]).json();
    let components = m["components"].as_array().unwrap();
    assert!(
        components
            .iter()
            .any(|c| c["name"] == "pubsub" && c["type"] == "pubsub.sled")
    );

    // A resources path with no pub/sub component: Dapr's "not configured".
    let res = tempfile::tempdir().unwrap();
    write_component(res.path(), "statestore", "state.in-memory", &[]);
    let dir2 = tempfile::tempdir().unwrap();
    let ec2 = Edgecar::start(
        dir2.path(),
        &["--resources-path", res.path().to_str().unwrap()],
    );
    let r = ec2.req("POST", "/v1.0/publish/pubsub/orders", b"{}", &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "ERR_PUBSUB_NOT_CONFIGURED")
    );
    let r = ec2.req(
        "POST",
        "/v1.0-alpha1/publish/bulk/pubsub/orders",
        b"[]",
        &[],
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "ERR_PUBSUB_NOT_CONFIGURED")
    );
}

#[test]
fn the_app_receives_dapr_cloudevents() {
    let app = SubscriberApp::start(
        r#"[{"pubsubname":"pubsub","topic":"orders","route":"/orders"},
            {"pubsubname":"pubsub","topic":"raw","route":"raw","metadata":{"rawPayload":"true"}}]"#,
        |_| (200, String::new()),
    );
    let state = tempfile::tempdir().unwrap();
    let res = resources();
    let ec = start(state.path(), res.path(), &app);
    wait_subscribed(&ec, 2);

    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = ec.req(
        "POST",
        "/v1.0/publish/pubsub/orders",
        br#"{"orderId": 7, "total": 19.90}"#,
        &[
            ("content-type", "application/json"),
            ("traceparent", parent),
            ("tracestate", "vendor=1"),
        ],
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let got = app.wait_for("/orders", 1, WAIT);
    let req = &got[0];
    assert_eq!(req.method, "POST");
    assert_eq!(
        req.header("content-type"),
        Some("application/cloudevents+json")
    );
    let ce = req.json();
    assert_eq!(ce["specversion"], "1.0");
    assert_eq!(ce["type"], "com.dapr.event.sent");
    assert_eq!(ce["source"], "checkout");
    assert_eq!(ce["topic"], "orders");
    assert_eq!(ce["pubsubname"], "pubsub");
    assert_eq!(ce["datacontenttype"], "application/json");
    assert_eq!(ce["data"], json!({"orderId": 7, "total": 19.90}));
    assert_eq!(ce["id"].as_str().unwrap().len(), 36);
    assert!(ce["time"].as_str().unwrap().ends_with('Z'));
    let tp = ce["traceparent"].as_str().unwrap();
    assert!(
        tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{tp}"
    );
    assert_eq!(ce["traceid"], ce["traceparent"]);
    assert_eq!(ce["tracestate"], "vendor=1");
    assert!(
        req.header("traceparent")
            .unwrap()
            .contains("0af7651916cd43dd8448eb211c80319c")
    );

    // Text (and no Content-Type, which Dapr reads as text/plain), binary, a CloudEvent as is.
    publish(&ec, "/v1.0/publish/pubsub/orders", "hello", "text/plain");
    let r = ec.req("POST", "/v1.0/publish/pubsub/orders", b"no type", &[]);
    assert_eq!(r.status, 204);
    let r = ec.req(
        "PUT",
        "/v1.0/publish/pubsub/orders",
        &[0u8, 159, 146, 150],
        &[("content-type", "application/octet-stream")],
    );
    assert_eq!(r.status, 204);
    publish(
        &ec,
        "/v1.0/publish/pubsub/orders",
        r#"{"specversion":"1.0","id":"mine-1","source":"sensor","type":"reading","datacontenttype":"application/json","data":{"t":21}}"#,
        "application/cloudevents+json",
    );
    let got = app.wait_for("/orders", 5, WAIT);
    let events: Vec<Value> = got.iter().map(|r| r.json()).collect();
    let find = |f: &dyn Fn(&Value) -> bool| events.iter().find(|e| f(e)).cloned().unwrap();
    let text = find(&|e| e["data"] == "hello");
    assert_eq!(text["datacontenttype"], "text/plain");
    let untyped = find(&|e| e["data"] == "no type");
    assert_eq!(untyped["datacontenttype"], "text/plain");
    let bin = find(&|e| e.get("data_base64").is_some());
    assert_eq!(bin["data_base64"], "AJ+Slg==");
    assert_eq!(bin["datacontenttype"], "application/octet-stream");
    let mine = find(&|e| e["id"] == "mine-1");
    assert_eq!(
        (mine["source"].clone(), mine["type"].clone()),
        (json!("sensor"), json!("reading"))
    );
    assert_eq!(mine["topic"], "orders");
    assert_eq!(mine["data"], json!({"t": 21}));

    // rawPayload: no envelope on the way in; a rawPayload subscription gets the bytes as base64.
    let r = ec.req(
        "POST",
        "/v1.0/publish/pubsub/raw?metadata.rawPayload=true",
        b"plain bytes",
        &[("content-type", "text/plain")],
    );
    assert_eq!(r.status, 204);
    let got = app.wait_for("/raw", 1, WAIT);
    let ce = got[0].json();
    assert_eq!(ce["data_base64"], "cGxhaW4gYnl0ZXM=");
    assert_eq!(ce["datacontenttype"], "application/octet-stream");
    assert_eq!(ce["topic"], "raw");
}

#[test]
fn app_answers_are_honoured_with_retries_and_dead_letters() {
    // The body says how the app should answer; dead letters arrive on /dead.
    let app = SubscriberApp::start(
        r#"[{"pubsubname":"pubsub","topic":"work","route":"/work","deadLetterTopic":"dead"},
            {"pubsubname":"pubsub","topic":"nodlq","route":"/nodlq"},
            {"pubsubname":"pubsub","topic":"dead","route":"/dead"}]"#,
        |req| {
            if req.path == "/dead" {
                return (200, String::new());
            }
            let ce = req.json();
            match ce["data"]["answer"].as_str().unwrap_or_default() {
                "success" => (200, r#"{"status":"SUCCESS"}"#.into()),
                "empty" => (204, String::new()),
                "retry" => (200, r#"{"status":"RETRY"}"#.into()),
                "drop" => (200, r#"{"status":"DROP"}"#.into()),
                "404" => (404, "no such handler".into()),
                "500" => (500, "boom".into()),
                other => panic!("unexpected answer {other}"),
            }
        },
    );
    let state = tempfile::tempdir().unwrap();
    let res = resources();
    fast_retries(res.path());
    let ec = start(state.path(), res.path(), &app);
    wait_subscribed(&ec, 3);

    let send = |topic: &str, answer: &str| {
        let body = format!(r#"{{"answer":"{answer}"}}"#);
        publish(
            &ec,
            &format!("/v1.0/publish/pubsub/{topic}"),
            &body,
            "application/json",
        );
    };
    let count = |path: &str, answer: &str| {
        app.on(path)
            .iter()
            .filter(|r| r.json()["data"]["answer"] == answer)
            .count()
    };
    for a in ["success", "empty", "retry", "drop", "404", "500"] {
        send("work", a);
    }
    send("nodlq", "500");
    send("nodlq", "drop");
    // RETRY and 500 are tried 1 + 2 times, then dead-lettered; DROP goes to the dead letters at
    // once; 404 is dropped without a retry and without a dead letter.
    eventually(
        WAIT,
        "retried events to reach the dead-letter topic",
        || (count("/dead", "retry") == 1 && count("/dead", "500") == 1).then_some(()),
    );
    assert_eq!(count("/work", "retry"), 3);
    assert_eq!(count("/work", "500"), 3);
    assert_eq!(count("/work", "success"), 1);
    assert_eq!(count("/work", "empty"), 1);
    assert_eq!(count("/work", "drop"), 1);
    assert_eq!(count("/work", "404"), 1);
    assert_eq!(count("/dead", "drop"), 1);
    assert_eq!(count("/dead", "404"), 0);
    assert_eq!(count("/dead", "success") + count("/dead", "empty"), 0);
    let dead = app.on("/dead");
    let dl = dead
        .iter()
        .find(|r| r.json()["data"]["answer"] == "retry")
        .unwrap()
        .json();
    assert_eq!(
        dl["topic"], "work",
        "the dead letter is the event as published"
    );
    // Without a dead-letter topic an exhausted event is dropped, with an error in the log.
    eventually(WAIT, "nodlq retries", || {
        (count("/nodlq", "500") == 3).then_some(())
    });
    assert_eq!(count("/nodlq", "drop"), 1);
    eventually(WAIT, "the drop to be logged", || {
        let log = ec.log.lock().unwrap();
        (log.contains("retries are exhausted; event dropped")
            && log.contains("DROP status returned"))
        .then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        count("/nodlq", "500"),
        3,
        "no more attempts after exhaustion"
    );
}

#[test]
fn declarative_rules_route_events_and_metadata_lists_subscriptions() {
    let app = SubscriberApp::start(
        r#"[{"pubsubname":"pubsub","topic":"prog","routes":{"rules":[{"match":"event.data.n > 5","path":"/big"}],"default":"/small"}}]"#,
        |_| (200, String::new()),
    );
    let state = tempfile::tempdir().unwrap();
    let res = resources();
    std::fs::write(
        res.path().join("subscription.yaml"),
        "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata:\n  name: widgets\nspec:\n  pubsubname: pubsub\n  topic: things\n  routes:\n    rules:\n    - match: event.type == \"widget\" && event.data.colour != \"red\"\n      path: /widgets\n    - match: event.type == \"gadget\" || event.data.kind == \"gadget\"\n      path: /gadgets\n  deadLetterTopic: unrouted\nscopes:\n- checkout\n---\napiVersion: dapr.io/v1alpha1\nkind: Subscription\nmetadata:\n  name: old-style\nspec:\n  pubsubname: pubsub\n  topic: legacy\n  route: /legacy\n---\napiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata:\n  name: not-mine\nspec:\n  pubsubname: pubsub\n  topic: elsewhere\n  routes:\n    default: /elsewhere\nscopes:\n- another-app\n",
    )
    .unwrap();
    let ec = start(state.path(), res.path(), &app);
    wait_subscribed(&ec, 3);

    let m = ec.req("GET", "/v1.0/metadata", b"", &[]).json();
    let subs = m["subscriptions"].as_array().unwrap();
    assert_eq!(subs.len(), 3, "{subs:?}");
    let things = subs.iter().find(|s| s["topic"] == "things").unwrap();
    assert_eq!(things["type"], "DECLARATIVE");
    assert_eq!(things["pubsubname"], "pubsub");
    assert_eq!(things["deadLetterTopic"], "unrouted");
    assert_eq!(things["rules"][1]["path"], "/gadgets");
    assert_eq!(
        things["rules"][0]["match"],
        "event.type == \"widget\" && event.data.colour != \"red\""
    );
    let prog = subs.iter().find(|s| s["topic"] == "prog").unwrap();
    assert_eq!(prog["type"], "PROGRAMMATIC");
    assert_eq!(
        prog["rules"],
        json!([{"match": "event.data.n > 5", "path": "/big"}, {"path": "/small"}])
    );
    assert!(
        subs.iter().all(|s| s["topic"] != "elsewhere"),
        "scoped to another app"
    );

    let ce = |kind: &str, data: &str| {
        format!(
            r#"{{"specversion":"1.0","id":"{kind}","source":"s","type":"{kind}","data":{data}}}"#
        )
    };
    for (kind, data) in [
        ("widget", r#"{"colour":"blue"}"#),
        ("widget", r#"{"colour":"red"}"#),
        ("gadget", "{}"),
        ("other", r#"{"kind":"gadget"}"#),
    ] {
        publish(
            &ec,
            "/v1.0/publish/pubsub/things",
            &ce(kind, data),
            "application/cloudevents+json",
        );
    }
    publish(
        &ec,
        "/v1.0/publish/pubsub/prog",
        r#"{"n": 9}"#,
        "application/json",
    );
    publish(
        &ec,
        "/v1.0/publish/pubsub/prog",
        r#"{"n": 1}"#,
        "application/json",
    );
    publish(&ec, "/v1.0/publish/pubsub/legacy", "old", "text/plain");
    let widgets = app.wait_for("/widgets", 1, WAIT);
    assert_eq!(widgets[0].json()["data"]["colour"], "blue");
    let gadgets = app.wait_for("/gadgets", 2, WAIT);
    assert_eq!(gadgets.len(), 2);
    app.wait_for("/big", 1, WAIT);
    app.wait_for("/small", 1, WAIT);
    app.wait_for("/legacy", 1, WAIT);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        app.on("/widgets").len(),
        1,
        "the red widget matches no rule"
    );
}

#[test]
fn bulk_publish_accepts_both_entry_id_spellings_and_reports_failures() {
    let app = SubscriberApp::start(
        r#"[{"pubsubname":"pubsub","topic":"bulk","route":"/bulk"}]"#,
        |_| (200, String::new()),
    );
    let state = tempfile::tempdir().unwrap();
    let res = resources();
    let ec = start(state.path(), res.path(), &app);
    wait_subscribed(&ec, 1);
    let body = r#"[
        {"entryId": "1", "event": {"n": 1}, "contentType": "application/json"},
        {"entryID": "2", "event": "two", "contentType": "text/plain", "metadata": {"cloudevent.type": "custom"}},
        {"entryId": "3", "event": {"specversion":"1.0","id":"ce-3","source":"x","type":"t","data":3}, "contentType": "application/cloudevents+json"}
    ]"#;
    for path in [
        "/v1.0-alpha1/publish/bulk/pubsub/bulk",
        "/v1.0/publish/bulk/pubsub/bulk",
    ] {
        let r = ec.req(
            "POST",
            path,
            body.as_bytes(),
            &[("content-type", "application/json")],
        );
        assert_eq!(r.status, 204, "{path}: {}", r.text());
    }
    let got = app.wait_for("/bulk", 6, WAIT);
    let events: Vec<Value> = got.iter().map(|r| r.json()).collect();
    assert_eq!(
        events
            .iter()
            .filter(|e| e["data"] == json!({"n": 1}))
            .count(),
        2
    );
    let two = events.iter().find(|e| e["data"] == "two").unwrap();
    assert_eq!(two["type"], "custom");
    assert_eq!(two["datacontenttype"], "text/plain");
    assert_eq!(events.iter().filter(|e| e["id"] == "ce-3").count(), 2);

    let r = ec.req(
        "POST",
        "/v1.0-alpha1/publish/bulk/pubsub/bulk",
        br#"[{"entryId":"1","event":1,"contentType":"text/plain"}]"#,
        &[],
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "ERR_PUBSUB_EVENTS_SER")
    );
    let r = ec.req(
        "POST",
        "/v1.0-alpha1/publish/bulk/pubsub/bulk",
        br#"[{"entryId":"1","event":1,"contentType":"application/json"},{"entryId":"1","event":2,"contentType":"application/json"}]"#,
        &[],
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "ERR_PUBSUB_EVENTS_SER")
    );
    let r = ec.req("POST", "/v1.0-alpha1/publish/bulk/pubsub/bulk", b"{", &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "ERR_PUBSUB_EVENTS_SER")
    );
}

#[test]
fn a_full_queue_refuses_publishes_and_bulk_reports_failed_entries() {
    // The app never comes up, so edgecar does not know its subscriptions yet and keeps every
    // message for them: the queue fills.
    let res = tempfile::tempdir().unwrap();
    write_component(res.path(), "pubsub", "pubsub.sled", &[("maxMessages", "2")]);
    let app_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let ec = Edgecar::start(
        dir.path(),
        &[
            "--resources-path",
            res.path().to_str().unwrap(),
            "--app-port",
            &app_port.to_string(),
        ],
    );
    for _ in 0..2 {
        let r = ec.req("POST", "/v1.0/publish/pubsub/t", b"x", &[]);
        assert_eq!(r.status, 204, "{}", r.text());
    }
    let r = ec.req("POST", "/v1.0/publish/pubsub/t", b"x", &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (500, "ERR_PUBSUB_PUBLISH_MESSAGE")
    );
    assert!(
        r.json()["message"].as_str().unwrap().contains("is full"),
        "{}",
        r.text()
    );
    let r = ec.req(
        "POST",
        "/v1.0-alpha1/publish/bulk/pubsub/t",
        br#"[{"entryId":"a","event":"x","contentType":"text/plain"}]"#,
        &[],
    );
    assert_eq!(r.status, 500);
    let v = r.json();
    assert_eq!(v["errorCode"], "ERR_PUBSUB_PUBLISH_MESSAGE");
    assert_eq!(v["failedEntries"][0]["entryId"], "a");
    assert!(
        v["failedEntries"][0]["error"]
            .as_str()
            .unwrap()
            .contains("is full")
    );
}

#[test]
fn an_event_published_before_kill_9_is_delivered_after_restart() {
    let subscribe = r#"[{"pubsubname":"pubsub","topic":"orders","route":"/orders"}]"#;
    // The app fails every delivery until edgecar has been killed.
    let app = SubscriberApp::start(subscribe, |_| (500, "not yet".into()));
    let app_port = app.port;
    let state = tempfile::tempdir().unwrap();
    let res = resources();
    let mut ec = start(state.path(), res.path(), &app);
    wait_subscribed(&ec, 1);
    let r = ec.req(
        "POST",
        "/v1.0/publish/pubsub/orders",
        br#"{"order":"survivor"}"#,
        &[("content-type", "application/json")],
    );
    assert_eq!(r.status, 204);
    app.wait_for("/orders", 1, WAIT);
    ec.kill9();
    // The app comes back healthy; edgecar restarts on the same state directory.
    drop(app);
    let app = SubscriberApp::start_on(app_port, subscribe, |_| (200, String::new()));
    let ec = start(state.path(), res.path(), &app);
    let got = app.wait_for("/orders", 1, WAIT);
    assert_eq!(got[0].json()["data"]["order"], "survivor");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        app.on("/orders").len(),
        1,
        "acked once, not redelivered again"
    );
    drop(ec);
}

#[test]
fn check_config_reports_subscription_errors_with_file_and_field() {
    let res = tempfile::tempdir().unwrap();
    write_component(
        res.path(),
        "pubsub",
        "pubsub.in-memory",
        &[("concurrency", "lots")],
    );
    std::fs::write(
        res.path().join("subs.yaml"),
        "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata:\n  name: s\nspec:\n  pubsubname: pubsub\n  topic: t\n  routes:\n    rules:\n    - match: event.data.items.exists(i, i > 2)\n      path: /a\n    default: /t\n---\napiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata:\n  name: s2\nspec:\n  pubsubname: missing\n  topic: t\n  routes:\n    default: /t\n",
    )
    .unwrap();
    std::fs::write(
        res.path().join("resiliency.yaml"),
        "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: r\nspec:\n  policies:\n    retries:\n      bad:\n        policy: sometimes\n",
    )
    .unwrap();
    let out = std::process::Command::new(edgecar_tests::edgecar_bin())
        .args([
            "check-config",
            "--resources-path",
            res.path().to_str().unwrap(),
        ])
        .env_remove("DAPR_API_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for needle in [
        "subs.yaml#1: spec.routes.rules[0].match: \"event.data.items.exists(i, i > 2)\": column 18: methods such as .exists() are not supported",
        "subs.yaml#2: spec.pubsubname: no pub/sub component named \"missing\" is loaded (loaded: pubsub)",
        "pubsub.yaml: spec.metadata[0] (concurrency): \"lots\" is not a number from 1 to 1000",
        "resiliency.yaml: spec.policies.retries.bad.policy",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }

    // Fixed, it passes and counts the subscription; the in-memory bus delivers.
    write_component(res.path(), "pubsub", "pubsub.in-memory", &[]);
    std::fs::write(
        res.path().join("subs.yaml"),
        "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata:\n  name: s\nspec:\n  pubsubname: pubsub\n  topic: t\n  routes:\n    rules:\n    - match: has(event.data.items) && event.data.items[0] > 2\n      path: /a\n    default: /t\n",
    )
    .unwrap();
    std::fs::remove_file(res.path().join("resiliency.yaml")).unwrap();
    let out = std::process::Command::new(edgecar_tests::edgecar_bin())
        .args([
            "check-config",
            "--resources-path",
            res.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("declarative subscriptions: pubsub/t"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let app = SubscriberApp::start("[]", |_| (200, String::new()));
    let state = tempfile::tempdir().unwrap();
    let ec = start(state.path(), res.path(), &app);
    wait_subscribed(&ec, 1);
    publish(
        &ec,
        "/v1.0/publish/pubsub/t",
        r#"{"items":[3]}"#,
        "application/json",
    );
    publish(
        &ec,
        "/v1.0/publish/pubsub/t",
        r#"{"items":[1]}"#,
        "application/json",
    );
    app.wait_for("/a", 1, WAIT);
    app.wait_for("/t", 1, WAIT);
}

#[test]
fn an_event_past_its_ttl_is_not_delivered() {
    // The app starts late: until then both events wait in the durable queue.
    let app_port = free_port();
    let state = tempfile::tempdir().unwrap();
    let res = resources();
    let ec = Edgecar::start(
        state.path(),
        &[
            "--app-port",
            &app_port.to_string(),
            "--resources-path",
            res.path().to_str().unwrap(),
        ],
    );
    let r = ec.req(
        "POST",
        "/v1.0/publish/pubsub/orders?metadata.ttlInSeconds=1",
        br#"{"n":"short-lived"}"#,
        &[("content-type", "application/json")],
    );
    assert_eq!(r.status, 204, "{}", r.text());
    publish(
        &ec,
        "/v1.0/publish/pubsub/orders",
        r#"{"n":"kept"}"#,
        "application/json",
    );
    std::thread::sleep(Duration::from_millis(2500));
    let app = SubscriberApp::start_on(
        app_port,
        r#"[{"pubsubname":"pubsub","topic":"orders","route":"/orders"}]"#,
        |_| (200, String::new()),
    );
    let got = app.wait_for("/orders", 1, WAIT);
    assert_eq!(got[0].json()["data"]["n"], "kept");
    eventually(WAIT, "the expired event to be logged", || {
        ec.log
            .lock()
            .unwrap()
            .contains("dropping an expired event")
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(app.on("/orders").len(), 1);
}

#[test]
fn bulk_publish_is_bounded_by_max_bulk_items() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("edgecar.yaml");
    std::fs::write(&cfg, "limits:\n  maxBulkItems: 2\n").unwrap();
    let ec = Edgecar::start(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let entry =
        |i: u32| format!(r#"{{"entryId":"{i}","event":{i},"contentType":"application/json"}}"#);
    let two = format!("[{},{}]", entry(1), entry(2));
    let three = format!("[{},{},{}]", entry(1), entry(2), entry(3));
    let r = ec.req(
        "POST",
        "/v1.0-alpha1/publish/bulk/pubsub/t",
        two.as_bytes(),
        &[],
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let r = ec.req(
        "POST",
        "/v1.0-alpha1/publish/bulk/pubsub/t",
        three.as_bytes(),
        &[],
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "ERR_PUBSUB_EVENTS_SER")
    );
    assert!(r.text().contains("maxBulkItems"), "{}", r.text());
}

#[test]
fn bulk_subscriptions_deliver_batches_and_honour_each_entrys_status() {
    use edgecar_tests::{AppResponse, TestApp};
    // The app subscribes with bulkSubscribe and answers every entry SUCCESS except the
    // event with n == 3, which it drops.
    let app = TestApp::start(|r| match r.path.as_str() {
        "/dapr/subscribe" => AppResponse::new(
            200,
            r#"[{"pubsubname":"pubsub","topic":"batched","route":"/batched",
                "bulkSubscribe":{"enabled":true,"maxMessagesCount":10,"maxAwaitDurationMs":500}}]"#,
        )
        .header("content-type", "application/json"),
        "/batched" => {
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            let statuses: Vec<_> = v["entries"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|e| {
                    let status = if e["event"]["data"]["n"] == 3 {
                        "DROP"
                    } else {
                        "SUCCESS"
                    };
                    serde_json::json!({"entryId": e["entryId"], "status": status})
                })
                .collect();
            AppResponse::new(200, serde_json::json!({ "statuses": statuses }).to_string())
                .header("content-type", "application/json")
        }
        _ => AppResponse::new(404, ""),
    });
    let (dir, res) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
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
    eventually(Duration::from_secs(20), "healthz ready", || {
        (ec.req("GET", "/v1.0/healthz", b"", &[]).status == 204).then_some(())
    });
    let entries: Vec<_> = (1..=6)
        .map(|n| serde_json::json!({"entryId": n.to_string(), "event": {"n": n}, "contentType": "application/json"}))
        .collect();
    let r = ec.req(
        "POST",
        "/v1.0-alpha1/publish/bulk/pubsub/batched",
        serde_json::Value::from(entries).to_string().as_bytes(),
        &[("content-type", "application/json")],
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let batches = eventually(Duration::from_secs(20), "six events in batches", || {
        let got: Vec<serde_json::Value> = app
            .received()
            .iter()
            .filter(|r| r.path == "/batched")
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect();
        let n: usize = got
            .iter()
            .map(|b| b["entries"].as_array().unwrap().len())
            .sum();
        (n >= 6).then_some(got)
    });
    assert!(
        batches.len() < 6,
        "events came one per request, not in batches: {} requests",
        batches.len()
    );
    for b in &batches {
        assert_eq!(b["type"], "com.dapr.event.sent.bulk");
        assert_eq!(b["pubsubname"], "pubsub");
        assert_eq!(b["topic"], "batched");
        assert_eq!(b["entries"][0]["event"]["specversion"], "1.0");
    }
    // Every entry was answered (SUCCESS or DROP): nothing comes back after the redelivery
    // interval (5 s for pubsub.sled).
    std::thread::sleep(Duration::from_secs(6));
    let again: usize = app
        .received()
        .iter()
        .filter(|r| r.path == "/batched")
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["entries"]
                .as_array()
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(again, 6, "answered entries were redelivered");
}
