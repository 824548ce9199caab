//! `pubsub.redis` against a real redis-server: publish lands in a stream, delivery goes through a
//! consumer group and is XACKed, and a message left pending by a `kill -9` is claimed and
//! delivered after the restart.

use std::path::Path;
use std::time::Duration;

use edgecar_tests::{Edgecar, RedisServer, SubscriberApp, eventually, write_component};

const WAIT: Duration = Duration::from_secs(20);
const SUBSCRIBE: &str = r#"[{"pubsubname":"pubsub","topic":"orders","route":"/orders"}]"#;

fn resources(redis: &RedisServer) -> tempfile::TempDir {
    let res = tempfile::tempdir().unwrap();
    let host = format!("127.0.0.1:{}", redis.port);
    write_component(
        res.path(),
        "pubsub",
        "pubsub.redis",
        &[
            ("redisHost", &host),
            ("consumerID", "{appID}-group"),
            ("processingTimeout", "1s"),
            ("redeliverInterval", "300ms"),
            ("maxLenApprox", "1000"),
        ],
    );
    res
}

fn start(state: &Path, res: &Path, app: &SubscriberApp) -> Edgecar {
    Edgecar::start(
        state,
        &[
            "--app-id",
            "shop",
            "--app-port",
            &app.port.to_string(),
            "--resources-path",
            res.to_str().unwrap(),
        ],
    )
}

fn pending(redis: &RedisServer) -> String {
    redis
        .command(&["XPENDING", "orders", "shop-group"])
        .unwrap_or_default()
}

#[test]
fn events_flow_through_a_stream_and_consumer_group() {
    let redis = RedisServer::start();
    let res = resources(&redis);
    let app = SubscriberApp::start(SUBSCRIBE, |_| (200, String::new()));
    let state = tempfile::tempdir().unwrap();
    let ec = start(state.path(), res.path(), &app);
    eventually(WAIT, "the consumer group", || {
        redis
            .command(&["XINFO", "GROUPS", "orders"])
            .filter(|r| r.contains("shop-group"))
    });
    for i in 0..5 {
        let r = ec.req(
            "POST",
            "/v1.0/publish/pubsub/orders",
            format!(r#"{{"n":{i}}}"#).as_bytes(),
            &[("content-type", "application/json")],
        );
        assert_eq!(r.status, 204, "{}", r.text());
    }
    let got = app.wait_for("/orders", 5, WAIT);
    let mut ns: Vec<i64> = got
        .iter()
        .map(|r| r.json()["data"]["n"].as_i64().unwrap())
        .collect();
    ns.sort_unstable();
    assert_eq!(ns, [0, 1, 2, 3, 4]);
    assert_eq!(got[0].json()["source"], "shop");
    assert!(
        redis
            .command(&["XLEN", "orders"])
            .unwrap()
            .starts_with(":5")
    );
    // Every delivery was acknowledged: nothing pending in the group.
    eventually(WAIT, "no pending entries", || {
        pending(&redis).starts_with("*4\r\n:0").then_some(())
    });

    // A bulk publish goes through the same stream.
    let r = ec.req(
        "POST",
        "/v1.0-alpha1/publish/bulk/pubsub/orders",
        br#"[{"entryId":"a","event":{"n":10},"contentType":"application/json"},{"entryID":"b","event":{"n":11},"contentType":"application/json"}]"#,
        &[],
    );
    assert_eq!(r.status, 204, "{}", r.text());
    app.wait_for("/orders", 7, WAIT);
    let m = ec.req("GET", "/v1.0/metadata", b"", &[]).json();
    assert!(
        m["components"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "pubsub.redis")
    );
}

#[test]
fn a_message_pending_at_kill_9_is_claimed_and_delivered_after_restart() {
    let redis = RedisServer::start();
    let res = resources(&redis);
    // Published before anyone subscribed: the group reads the stream from its start.
    redis
        .command(&[
            "XADD",
            "orders",
            "*",
            "data",
            r#"{"specversion":"1.0","id":"early","source":"x","type":"t","data":"early"}"#,
        ])
        .unwrap();
    let app = SubscriberApp::start(SUBSCRIBE, |_| (500, "not yet".into()));
    let app_port = app.port;
    let state = tempfile::tempdir().unwrap();
    let mut ec = start(state.path(), res.path(), &app);
    let r = ec.req(
        "POST",
        "/v1.0/publish/pubsub/orders",
        b"late",
        &[("content-type", "text/plain")],
    );
    assert_eq!(r.status, 204);
    eventually(WAIT, "both events attempted", || {
        let ids: Vec<String> = app
            .on("/orders")
            .iter()
            .map(|r| r.json()["data"].to_string())
            .collect();
        (ids.contains(&"\"early\"".to_owned()) && ids.contains(&"\"late\"".to_owned()))
            .then_some(())
    });
    ec.kill9();
    assert!(
        pending(&redis).starts_with("*4\r\n:2"),
        "{}",
        pending(&redis)
    );
    drop(app);
    let app = SubscriberApp::start_on(app_port, SUBSCRIBE, |_| (200, String::new()));
    let _ec = start(state.path(), res.path(), &app);
    eventually(WAIT, "both pending events redelivered", || {
        let data: Vec<String> = app
            .on("/orders")
            .iter()
            .map(|r| r.json()["data"].to_string())
            .collect();
        (data.contains(&"\"early\"".to_owned()) && data.contains(&"\"late\"".to_owned()))
            .then_some(())
    });
    eventually(WAIT, "no pending entries", || {
        pending(&redis).starts_with("*4\r\n:0").then_some(())
    });
}
