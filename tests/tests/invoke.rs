//! Service invocation to local apps, end to end: the real binary in front of a real HTTP app.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use edgecar_tests::{AppResponse, Edgecar, TestApp, free_port};

/// An app that describes each request back and says who it is.
fn echo_app() -> TestApp {
    TestApp::start(|r| {
        if let Some(code) = r.path.strip_prefix("/status/") {
            return AppResponse::new(code.parse().unwrap_or(500), format!("status {code}"));
        }
        let body = serde_json::json!({
            "method": r.method, "path": r.path,
            "custom": r.header("x-custom"), "token": r.header("dapr-api-token"),
            "body": String::from_utf8_lossy(&r.body),
        });
        AppResponse::new(201, body.to_string())
            .header("content-type", "application/json")
            .header("x-app", "orders")
    })
}

/// edgecar as the sidecar of `app` (app id `svc`) with one Resiliency document; the directories
/// live as long as the returned guard.
fn svc_with_resiliency(app: &TestApp, resiliency: &str) -> (Edgecar, [tempfile::TempDir; 2]) {
    let dir = tempfile::tempdir().unwrap();
    let res = tempfile::tempdir().unwrap();
    std::fs::write(res.path().join("resiliency.yaml"), resiliency).unwrap();
    let ec = Edgecar::start(
        dir.path(),
        &[
            "--app-id",
            "svc",
            "--app-port",
            &app.port.to_string(),
            "--resources-path",
            res.path().to_str().unwrap(),
        ],
    );
    (ec, [dir, res])
}

#[test]
fn invokes_the_gateways_own_app_with_every_verb_path_query_and_header() {
    let app = echo_app();
    let dir = tempfile::tempdir().unwrap();
    let ec = Edgecar::start(
        dir.path(),
        &["--app-id", "orders", "--app-port", &app.port.to_string()],
    );
    for verb in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
        let r = ec.req(
            verb,
            "/v1.0/invoke/orders/method/v2/items/a%2Fb?x=1&y=two",
            b"payload",
            &[("x-custom", "42")],
        );
        assert_eq!(r.status, 201, "{verb}: {}", r.text());
        assert_eq!(r.header("x-app"), Some("orders"), "app headers come back");
        let seen = r.json();
        assert_eq!(seen["method"], verb);
        assert_eq!(
            seen["path"], "/v2/items/a%2Fb?x=1&y=two",
            "path and query reach the app raw"
        );
        assert_eq!(seen["custom"], "42", "caller headers reach the app");
        assert_eq!(seen["body"], "payload");
    }
    // The app's own statuses pass through, errors included.
    let r = ec.req("GET", "/v1.0/invoke/orders/method/status/404", b"", &[]);
    assert_eq!((r.status, r.text().as_str()), (404, "status 404"));
    let r = ec.req("GET", "/v1.0/invoke/orders/method/status/503", b"", &[]);
    assert_eq!(r.status, 503);
    // Dapr's header form: any path, target in dapr-app-id.
    let r = ec.req(
        "POST",
        "/neworder?id=7",
        b"{}",
        &[("dapr-app-id", "orders")],
    );
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["path"], "/neworder?id=7");
}

#[test]
fn apps_declared_in_config_are_invoked_and_the_api_token_is_not_leaked_to_them() {
    let app = echo_app();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("edgecar.yaml");
    std::fs::write(
        &cfg,
        format!("apps:\n  inventory: http://127.0.0.1:{}\n", app.port),
    )
    .unwrap();
    let ec = Edgecar::start(
        dir.path(),
        &["--config", cfg.to_str().unwrap(), "--dapr-api-token", "tok"],
    );
    let r = ec.req(
        "GET",
        "/v1.0/invoke/inventory/method/stock",
        b"",
        &[("dapr-api-token", "tok")],
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        r.json()["token"],
        serde_json::Value::Null,
        "edgecar's API token must not reach the app"
    );
}

#[test]
fn unknown_and_unreachable_apps_are_500_err_direct_invoke() {
    let dir = tempfile::tempdir().unwrap();
    let dead = free_port();
    let ec = Edgecar::start(
        dir.path(),
        &["--app-id", "me", "--app-port", &dead.to_string()],
    );
    let r = ec.req("GET", "/v1.0/invoke/nobody/method/x", b"", &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (500, "ERR_DIRECT_INVOKE")
    );
    assert!(
        r.json()["message"].as_str().unwrap().contains("not known"),
        "{}",
        r.text()
    );
    let r = ec.req("GET", "/v1.0/invoke/me/method/x", b"", &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (500, "ERR_DIRECT_INVOKE")
    );
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{}",
        r.text()
    );
}

#[test]
fn access_control_policy_denies_with_403() {
    let app = echo_app();
    let dir = tempfile::tempdir().unwrap();
    let res = tempfile::tempdir().unwrap();
    std::fs::write(
        res.path().join("config.yaml"),
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: appconfig\nspec:\n  accessControl:\n    defaultAction: deny\n    policies:\n    - appId: frontend\n      defaultAction: deny\n      operations:\n      - name: /public/**\n        httpVerb: [GET]\n        action: allow\n",
    )
    .unwrap();
    let ec = Edgecar::start(
        dir.path(),
        &[
            "--app-id",
            "frontend",
            "--app-port",
            &app.port.to_string(),
            "--resources-path",
            res.path().to_str().unwrap(),
        ],
    );
    assert_eq!(
        ec.req("GET", "/v1.0/invoke/frontend/method/public/a/b", b"", &[])
            .status,
        201
    );
    let r = ec.req("POST", "/v1.0/invoke/frontend/method/public/a", b"", &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (403, "ERR_DIRECT_INVOKE"),
        "{}",
        r.text()
    );
    let r = ec.req("GET", "/v1.0/invoke/frontend/method/admin", b"", &[]);
    assert_eq!(r.status, 403);
    let calls: Vec<_> = app
        .received()
        .into_iter()
        .filter(|r| r.path != "/dapr/subscribe")
        .collect();
    assert_eq!(
        calls.len(),
        1,
        "denied calls never reach the app: {calls:?}"
    );
}

#[test]
fn resiliency_retries_times_out_and_trips_the_breaker() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let app = TestApp::start(move |r| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        match r.path.as_str() {
            // Fails twice, then works: retries hide it from the caller.
            "/flaky" if n < 2 => AppResponse::new(503, "busy"),
            "/flaky" => AppResponse::new(200, "ok"),
            "/slow" => AppResponse {
                delay: Duration::from_secs(3),
                ..AppResponse::new(200, "late")
            },
            _ => AppResponse::new(500, "broken"),
        }
    });
    let (ec, _dirs) = svc_with_resiliency(
        &app,
        "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: r\nspec:\n  policies:\n    timeouts:\n      short: 500ms\n    retries:\n      few:\n        policy: constant\n        duration: 50ms\n        maxRetries: 2\n    circuitBreakers:\n      cb:\n        maxRequests: 1\n        timeout: 60s\n        trip: consecutiveFailures >= 6\n  targets:\n    apps:\n      svc:\n        timeout: short\n        retry: few\n        circuitBreaker: cb\n",
    );
    let r = ec.req("GET", "/v1.0/invoke/svc/method/flaky", b"", &[]);
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "ok"),
        "two 503s were retried"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    let t = Instant::now();
    let r = ec.req("GET", "/v1.0/invoke/svc/method/slow", b"", &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (500, "ERR_DIRECT_INVOKE")
    );
    assert!(
        t.elapsed() < Duration::from_millis(2900),
        "three 500 ms attempts, not the app's 3 s"
    );

    // /slow's three timeouts plus /broken's three 500s are six consecutive failures: tripped.
    let r = ec.req("GET", "/v1.0/invoke/svc/method/broken", b"", &[]);
    assert_eq!(r.status, 500, "the last 500 from the app is passed through");
    let before = calls.load(Ordering::SeqCst);
    let t = Instant::now();
    let r = ec.req("GET", "/v1.0/invoke/svc/method/flaky", b"", &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (500, "ERR_DIRECT_INVOKE")
    );
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("circuit breaker open"),
        "{}",
        r.text()
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before,
        "an open breaker does not call the app"
    );
    assert!(t.elapsed() < Duration::from_millis(200));
}

/// A retry policy's `matching.httpStatusCodes` retries the statuses it lists and no others, as
/// daprd does: a 429 is retried (it is not a 5xx), a 503 is not (it is not listed).
#[test]
fn a_retry_policy_with_matching_retries_only_the_statuses_it_lists() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let app = TestApp::start(move |r| match r.path.as_str() {
        "/limited" => {
            seen.fetch_add(1, Ordering::SeqCst);
            AppResponse::new(429, "slow down")
        }
        "/busy" => {
            seen.fetch_add(1, Ordering::SeqCst);
            AppResponse::new(503, "busy")
        }
        _ => AppResponse::new(404, ""),
    });
    let (ec, _dirs) = svc_with_resiliency(
        &app,
        "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: r\nspec:\n  policies:\n    retries:\n      limited:\n        policy: constant\n        duration: 20ms\n        maxRetries: 2\n        matching:\n          httpStatusCodes: \"429,502\"\n  targets:\n    apps:\n      svc:\n        retry: limited\n",
    );
    let r = ec.req("GET", "/v1.0/invoke/svc/method/limited", b"", &[]);
    assert_eq!(r.status, 429, "the last answer is passed through");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "a listed 429: 1 + 2 retries"
    );
    let r = ec.req("GET", "/v1.0/invoke/svc/method/busy", b"", &[]);
    assert_eq!(r.status, 503);
    assert_eq!(calls.load(Ordering::SeqCst), 4, "an unlisted 503: no retry");
}
