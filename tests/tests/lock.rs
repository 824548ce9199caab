//! Distributed locks end to end: Dapr's alpha lock API over `lock.in-memory` and a real Redis.

use std::time::Duration;

use edgecar_tests::{Edgecar, RedisServer, eventually, write_component};
use serde_json::json;

fn lock(
    ec: &Edgecar,
    store: &str,
    resource: &str,
    owner: &str,
    expiry: i64,
) -> edgecar_tests::HttpResponse {
    let body =
        json!({"resourceId": resource, "lockOwner": owner, "expiryInSeconds": expiry}).to_string();
    ec.req(
        "POST",
        &format!("/v1.0-alpha1/lock/{store}"),
        body.as_bytes(),
        &[],
    )
}

fn unlock(ec: &Edgecar, store: &str, resource: &str, owner: &str) -> i64 {
    let body = json!({"resourceId": resource, "lockOwner": owner}).to_string();
    let r = ec.req(
        "POST",
        &format!("/v1.0-alpha1/unlock/{store}"),
        body.as_bytes(),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["status"].as_i64().unwrap()
}

fn exercise(ec: &Edgecar, store: &str) {
    assert_eq!(
        lock(ec, store, "pump-7", "owner-a", 60).json(),
        json!({"success": true})
    );
    assert_eq!(
        lock(ec, store, "pump-7", "owner-b", 60).json(),
        json!({"success": false}),
        "held by a"
    );
    assert_eq!(
        unlock(ec, store, "pump-7", "owner-b"),
        2,
        "LockBelongsToOthers"
    );
    assert_eq!(unlock(ec, store, "pump-7", "owner-a"), 0, "Success");
    assert_eq!(
        unlock(ec, store, "pump-7", "owner-a"),
        1,
        "LockDoesNotExist"
    );
    assert_eq!(
        lock(ec, store, "pump-7", "owner-b", 60).json(),
        json!({"success": true})
    );
    // A lease ends by itself.
    assert_eq!(
        lock(ec, store, "valve", "owner-a", 1).json(),
        json!({"success": true})
    );
    eventually(Duration::from_secs(5), "the 1 s lease to end", || {
        (lock(ec, store, "valve", "owner-b", 60).json()["success"] == true).then_some(())
    });
    // Bad requests.
    for (body, what) in [
        (
            json!({"lockOwner": "a", "expiryInSeconds": 5}),
            "no resourceId",
        ),
        (
            json!({"resourceId": "r", "expiryInSeconds": 5}),
            "no lockOwner",
        ),
        (
            json!({"resourceId": "r", "lockOwner": "a", "expiryInSeconds": 0}),
            "expiry 0",
        ),
    ] {
        let r = ec.req(
            "POST",
            &format!("/v1.0-alpha1/lock/{store}"),
            body.to_string().as_bytes(),
            &[],
        );
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "ERR_MALFORMED_REQUEST"),
            "{what}"
        );
    }
    let r = lock(ec, "nolock", "r", "a", 5);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "ERR_LOCK_STORE_NOT_FOUND")
    );
}

#[test]
fn in_memory_locks_behave_like_dapr() {
    let (dir, res) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_component(res.path(), "locks", "lock.in-memory", &[]);
    let ec = Edgecar::start(
        dir.path(),
        &["--resources-path", res.path().to_str().unwrap()],
    );
    exercise(&ec, "locks");
}

#[test]
fn redis_locks_behave_like_dapr_against_a_real_redis() {
    let redis = RedisServer::start();
    let (dir, res) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_component(
        res.path(),
        "rlocks",
        "lock.redis",
        &[("redisHost", &format!("127.0.0.1:{}", redis.port))],
    );
    let ec = Edgecar::start(
        dir.path(),
        &[
            "--resources-path",
            res.path().to_str().unwrap(),
            "--app-id",
            "line3",
        ],
    );
    exercise(&ec, "rlocks");
    let held = redis.command(&["GET", "lock||line3||pump-7"]).unwrap();
    assert!(
        held.contains("owner-b"),
        "Dapr's key scheme, owner as value: {held:?}"
    );
}

#[test]
fn no_lock_store_is_a_500() {
    let dir = tempfile::tempdir().unwrap();
    let ec = Edgecar::start(dir.path(), &[]);
    let r = lock(&ec, "lockstore", "r", "a", 5);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (500, "ERR_LOCK_STORE_NOT_CONFIGURED")
    );
}
