//! The Dapr state API end to end: the real edgecar binary, each state component type, and the
//! status codes, ETags and error bodies a Dapr client expects.

use std::time::Duration;

use edgecar_tests::{Edgecar, HttpResponse, RedisServer, eventually, write_component};
use serde_json::json;

fn post(ec: &Edgecar, path: &str, body: serde_json::Value) -> HttpResponse {
    ec.req(
        "POST",
        path,
        body.to_string().as_bytes(),
        &[("content-type", "application/json")],
    )
}

/// The behaviour every state store must show through the API.
fn exercise(ec: &Edgecar, store: &str) {
    let s = format!("/v1.0/state/{store}");

    // Save, read back with an ETag; a missing key is 204.
    let r = post(
        ec,
        &s,
        json!([{"key": "name", "value": "Bruce Wayne"}, {"key": "obj", "value": {"a": [1, 2]}}]),
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let r = ec.req("GET", &format!("{s}/name"), b"", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "\"Bruce Wayne\"");
    let etag = r.header("etag").expect("ETag header").to_owned();
    assert_eq!(
        ec.req("GET", &format!("{s}/obj"), b"", &[]).json(),
        json!({"a": [1, 2]})
    );
    assert_eq!(ec.req("GET", &format!("{s}/nothing"), b"", &[]).status, 204);

    // Optimistic concurrency: a stale ETag is 409 and changes nothing; the right one wins.
    let r = post(
        ec,
        &s,
        json!([{"key": "name", "value": "Joker", "etag": "999"}]),
    );
    assert_eq!((r.status, r.error_code().as_str()), (409, "ERR_STATE_SAVE"));
    let r = post(
        ec,
        &s,
        json!([{"key": "name", "value": "Joker", "etag": "not-a-version"}]),
    );
    assert_eq!((r.status, r.error_code().as_str()), (400, "ERR_STATE_SAVE"));
    assert_eq!(
        ec.req("GET", &format!("{s}/name"), b"", &[]).text(),
        "\"Bruce Wayne\""
    );
    let r = post(
        ec,
        &s,
        json!([{"key": "name", "value": "Batman", "etag": etag}]),
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let new_etag = ec
        .req("GET", &format!("{s}/name"), b"", &[])
        .header("etag")
        .unwrap()
        .to_owned();
    assert_ne!(new_etag, etag);

    // first-write: without an ETag only a new key may be written.
    let fw = json!({"concurrency": "first-write"});
    assert_eq!(
        post(ec, &s, json!([{"key": "fw", "value": 1, "options": fw}])).status,
        204
    );
    let r = post(ec, &s, json!([{"key": "fw", "value": 2, "options": fw}]));
    assert_eq!((r.status, r.error_code().as_str()), (409, "ERR_STATE_SAVE"));
    let r = post(
        ec,
        &s,
        json!([{"key": "fw", "value": 3, "options": {"concurrency": "sometimes"}}]),
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "ERR_MALFORMED_REQUEST")
    );
    assert_eq!(ec.req("GET", &format!("{s}/fw"), b"", &[]).text(), "1");

    // Bulk get: values, ETags, and missing keys without data.
    let r = post(
        ec,
        &format!("{s}/bulk"),
        json!({"keys": ["name", "obj", "ghost"], "parallelism": 2}),
    );
    assert_eq!(r.status, 200);
    let items = r.json();
    assert_eq!(items[0]["key"], "name");
    assert_eq!(items[0]["data"], "Batman");
    assert_eq!(items[0]["etag"], new_etag.as_str());
    assert_eq!(items[1]["data"], json!({"a": [1, 2]}));
    assert_eq!(items[2], json!({"key": "ghost"}));

    // Delete with If-Match: wrong → 409 and the key stays; right → 204 and it is gone.
    let r = ec.req(
        "DELETE",
        &format!("{s}/name"),
        b"",
        &[("If-Match", "12345")],
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (409, "ERR_STATE_DELETE")
    );
    assert_eq!(ec.req("GET", &format!("{s}/name"), b"", &[]).status, 200);
    let r = ec.req(
        "DELETE",
        &format!("{s}/name"),
        b"",
        &[("If-Match", &new_etag)],
    );
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(ec.req("GET", &format!("{s}/name"), b"", &[]).status, 204);
    assert_eq!(
        ec.req("DELETE", &format!("{s}/never-existed"), b"", &[])
            .status,
        204
    );

    // Transactions: all or nothing.
    let t = format!("{s}/transaction");
    let r = post(
        ec,
        &t,
        json!({"operations": [
            {"operation": "upsert", "request": {"key": "t1", "value": "one"}},
            {"operation": "upsert", "request": {"key": "t2", "value": "two"}},
            {"operation": "delete", "request": {"key": "obj"}}
        ]}),
    );
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        ec.req("GET", &format!("{s}/t2"), b"", &[]).text(),
        "\"two\""
    );
    assert_eq!(ec.req("GET", &format!("{s}/obj"), b"", &[]).status, 204);
    let r = post(
        ec,
        &t,
        json!({"operations": [
            {"operation": "upsert", "request": {"key": "t3", "value": "three"}},
            {"operation": "delete", "request": {"key": "t1", "etag": "777"}}
        ]}),
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (409, "ERR_STATE_TRANSACTION")
    );
    assert_eq!(
        ec.req("GET", &format!("{s}/t3"), b"", &[]).status,
        204,
        "half a failed transaction was applied"
    );
    assert_eq!(ec.req("GET", &format!("{s}/t1"), b"", &[]).status, 200);
    let r = post(
        ec,
        &t,
        json!({"operations": [{"operation": "merge", "request": {"key": "t1"}}]}),
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "ERR_NOT_SUPPORTED_STATE_OPERATION")
    );

    // TTL: the value disappears after ttlInSeconds.
    let r = post(
        ec,
        &s,
        json!([{"key": "brief", "value": "x", "metadata": {"ttlInSeconds": "1"}}]),
    );
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(ec.req("GET", &format!("{s}/brief"), b"", &[]).status, 200);
    eventually(Duration::from_secs(5), "the 1 s TTL to expire", || {
        (ec.req("GET", &format!("{s}/brief"), b"", &[]).status == 204).then_some(())
    });
    let r = post(
        ec,
        &s,
        json!([{"key": "brief", "value": "x", "metadata": {"ttlInSeconds": "soon"}}]),
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "ERR_MALFORMED_REQUEST")
    );

    // Bad input: a clear 4xx, and nothing changes.
    let before = ec.req("GET", &format!("{s}/t1"), b"", &[]);
    for (body, what) in [
        (&b"[{\"key\": \"t1\", \"value\": "[..], "truncated JSON"),
        (&b"{\"key\": \"t1\"}"[..], "an object instead of an array"),
        (&b"[{\"key\": \"\", \"value\": 1}]"[..], "an empty key"),
        (&b"[{\"key\": \"t1\"}]"[..], "an item without a value"),
        (
            &b"[{\"key\": \"a||b\", \"value\": 1}]"[..],
            "a key containing ||",
        ),
    ] {
        let r = ec.req("POST", &s, body, &[]);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "ERR_MALFORMED_REQUEST"),
            "{what}: {}",
            r.text()
        );
    }
    // A valid item after an invalid one must not be written either: validation precedes writes.
    let r = post(
        ec,
        &s,
        json!([{"key": "t1", "value": "overwritten"}, {"key": "", "value": 1}]),
    );
    assert_eq!(r.status, 400);
    let long_key = "k".repeat(2000);
    let r = post(ec, &s, json!([{"key": long_key, "value": 1}]));
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "ERR_MALFORMED_REQUEST")
    );
    let r = ec.req("GET", &format!("{s}/{long_key}"), b"", &[]);
    assert_eq!(r.status, 400);
    let after = ec.req("GET", &format!("{s}/t1"), b"", &[]);
    assert_eq!((after.status, after.body), (before.status, before.body));
}

#[test]
fn sled_state_store_behaves_like_dapr() {
    let dir = tempfile::tempdir().unwrap();
    let ec = Edgecar::start(dir.path(), &[]);
    exercise(&ec, "statestore");
}

#[test]
fn in_memory_state_store_behaves_like_dapr() {
    let dir = tempfile::tempdir().unwrap();
    let res = tempfile::tempdir().unwrap();
    write_component(res.path(), "mem", "state.in-memory", &[]);
    let ec = Edgecar::start(
        dir.path(),
        &["--resources-path", res.path().to_str().unwrap()],
    );
    exercise(&ec, "mem");
}

#[test]
fn redis_state_store_behaves_like_dapr_against_a_real_redis() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let res = tempfile::tempdir().unwrap();
    let host = format!("127.0.0.1:{}", redis.port);
    write_component(
        res.path(),
        "redisstore",
        "state.redis",
        &[("redisHost", &host), ("redisPassword", "")],
    );
    let ec = Edgecar::start(
        dir.path(),
        &[
            "--resources-path",
            res.path().to_str().unwrap(),
            "--app-id",
            "myapp",
        ],
    );
    exercise(&ec, "redisstore");
    // Keys are stored as Dapr stores them: a hash under "<app-id>||<key>".
    let raw = redis.command(&["HGET", "myapp||t1", "data"]).unwrap();
    assert!(raw.contains("\"one\""), "redis holds {raw:?}");
}

#[test]
fn key_prefix_strategies_namespace_keys_as_dapr_does() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let res = tempfile::tempdir().unwrap();
    let host = format!("127.0.0.1:{}", redis.port);
    write_component(
        res.path(),
        "shared",
        "state.redis",
        &[("redisHost", &host), ("keyPrefix", "none")],
    );
    write_component(
        res.path(),
        "byname",
        "state.redis",
        &[("redisHost", &host), ("keyPrefix", "name")],
    );
    write_component(
        res.path(),
        "custom",
        "state.redis",
        &[("redisHost", &host), ("keyPrefix", "site7")],
    );
    let ec = Edgecar::start(
        dir.path(),
        &["--resources-path", res.path().to_str().unwrap()],
    );
    for store in ["shared", "byname", "custom"] {
        let r = post(
            &ec,
            &format!("/v1.0/state/{store}"),
            json!([{"key": "k", "value": store}]),
        );
        assert_eq!(r.status, 204);
    }
    assert!(
        redis
            .command(&["HGET", "k", "data"])
            .unwrap()
            .contains("shared")
    );
    assert!(
        redis
            .command(&["HGET", "byname||k", "data"])
            .unwrap()
            .contains("byname")
    );
    assert!(
        redis
            .command(&["HGET", "site7||k", "data"])
            .unwrap()
            .contains("custom")
    );
}

#[test]
fn unknown_store_route_and_method_get_dapr_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ec = Edgecar::start(dir.path(), &[]);
    let r = ec.req("GET", "/v1.0/state/nope/k", b"", &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "ERR_STATE_STORE_NOT_FOUND")
    );
    let r = ec.req("GET", "/v1.0/nothing-here", b"", &[]);
    assert_eq!(r.status, 404);
    let r = ec.req("PATCH", "/v1.0/state/statestore", b"[]", &[]);
    assert_eq!(r.status, 400);
    let r = ec.req("GET", "/v1.0/state/statestore/bad%zzkey", b"", &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "ERR_MALFORMED_REQUEST")
    );
}

#[test]
fn oversized_bodies_are_refused_before_they_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let ec = Edgecar::start(dir.path(), &["--max-body-size", "64Ki"]);
    let big = format!(
        "[{{\"key\": \"big\", \"value\": \"{}\"}}]",
        "x".repeat(100 * 1024)
    );
    let r = ec.req("POST", "/v1.0/state/statestore", big.as_bytes(), &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (413, "ERR_BODY_TOO_LARGE")
    );
    assert_eq!(
        ec.req("GET", "/v1.0/state/statestore/big", b"", &[]).status,
        204
    );
    // Just under the limit is fine.
    let ok = format!(
        "[{{\"key\": \"big\", \"value\": \"{}\"}}]",
        "x".repeat(60 * 1024)
    );
    assert_eq!(
        ec.req("POST", "/v1.0/state/statestore", ok.as_bytes(), &[])
            .status,
        204
    );
}

#[test]
fn no_state_store_configured_is_a_500_as_in_dapr() {
    let dir = tempfile::tempdir().unwrap();
    let res = tempfile::tempdir().unwrap();
    let ec = Edgecar::start(
        dir.path(),
        &["--resources-path", res.path().to_str().unwrap()],
    );
    let r = ec.req("GET", "/v1.0/state/statestore/k", b"", &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (500, "ERR_STATE_STORES_NOT_CONFIGURED")
    );
}
