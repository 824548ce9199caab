//! The state query API (`/v1.0-alpha1/state/<store>/query`, Dapr's filter, sort and page) on
//! every store that lists its keys: `state.sled`, `state.in-memory` and a real Redis.

use edgecar_tests::{Edgecar, RedisServer, write_component};
use serde_json::json;

fn check_queries(ec: &Edgecar, store: &str) {
    let items = json!([
        {"key": "o1", "value": {"state": "CA", "person": {"org": "Dev Ops", "id": 1036}}},
        {"key": "o2", "value": {"state": "WA", "person": {"org": "Dev Ops", "id": 1042}}},
        {"key": "o3", "value": {"state": "CA", "person": {"org": "Finance", "id": 1007}}},
        {"key": "o4", "value": {"state": "CA", "person": {"org": "Dev Ops", "id": 1071}}},
        {"key": "plain", "value": "not an object"}
    ]);
    let path = format!("/v1.0/state/{store}");
    let r = ec.req("POST", &path, items.to_string().as_bytes(), &[]);
    assert_eq!(r.status, 204, "{}", r.text());
    let query = |q: serde_json::Value| {
        let r = ec.req(
            "POST",
            &format!("/v1.0-alpha1/state/{store}/query"),
            q.to_string().as_bytes(),
            &[],
        );
        assert_eq!(r.status, 200, "{store}: {}", r.text());
        r.json()
    };
    let keys = |v: &serde_json::Value| -> Vec<String> {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["key"].as_str().unwrap().to_owned())
            .collect()
    };
    // Filter with AND/EQ on nested fields, sorted descending, two per page.
    let q = json!({
        "filter": {"AND": [{"EQ": {"state": "CA"}}, {"EQ": {"person.org": "Dev Ops"}}]},
        "sort": [{"key": "person.id", "order": "DESC"}],
        "page": {"limit": 1}
    });
    let p1 = query(q.clone());
    assert_eq!(keys(&p1), ["o4"], "{store}: {p1}");
    assert_eq!(p1["results"][0]["data"]["person"]["id"], 1071);
    assert!(!p1["results"][0]["etag"].as_str().unwrap().is_empty());
    let mut q2 = q.clone();
    q2["page"]["token"] = p1["token"].clone();
    let p2 = query(q2);
    assert_eq!(keys(&p2), ["o1"], "{store}: {p2}");
    assert!(
        p2.get("token").is_none(),
        "{store}: last page has no token: {p2}"
    );
    // IN and OR, default ascending sort on a string field then the key.
    let r = query(json!({
        "filter": {"OR": [{"IN": {"state": ["WA"]}}, {"EQ": {"person.org": "Finance"}}]},
        "sort": [{"key": "state"}]
    }));
    assert_eq!(keys(&r), ["o3", "o2"], "{store}: {r}");
    // No filter: every JSON value of this app (the string value is one too).
    assert_eq!(keys(&query(json!({}))).len(), 5);
    // A bad operator is the caller's fault.
    let r = ec.req(
        "POST",
        &format!("/v1.0-alpha1/state/{store}/query"),
        br#"{"filter":{"LIKE":{"state":"C%"}}}"#,
        &[],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["errorCode"], "ERR_STATE_QUERY");
}

#[test]
fn queries_filter_sort_and_page_on_sled_memory_and_redis() {
    let redis = RedisServer::start();
    let (dir, res) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_component(res.path(), "sledstore", "state.sled", &[]);
    write_component(res.path(), "memstore", "state.in-memory", &[]);
    let host = format!("127.0.0.1:{}", redis.port);
    write_component(
        res.path(),
        "redisstore",
        "state.redis",
        &[("redisHost", &host)],
    );
    let ec = Edgecar::start(
        dir.path(),
        &["--resources-path", res.path().to_str().unwrap()],
    );
    for store in ["sledstore", "memstore", "redisstore"] {
        check_queries(&ec, store);
    }
}
