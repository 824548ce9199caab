//! Secret stores end to end: the secrets API, Dapr's scopes, and `secretKeyRef` resolved at load
//! time — a real redis-server that requires a password gets it from the secret store.

use edgecar_tests::{AppResponse, Edgecar, RedisServer, TestApp};
use serde_json::json;

const SECRETS: &str = r#"{"redisPassword":"p@ss-w0rd!","api":{"key":"k-123"},"connectionStrings":{"sql":"s","mysql":"m"}}"#;

fn write(dir: &std::path::Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn file_store(res: &std::path::Path, name: &str, multi: bool) {
    write(res, "secrets.json", SECRETS);
    write(
        res,
        &format!("{name}.yaml"),
        &format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: secretstores.local.file\n  version: v1\n  metadata:\n  - name: secretsFile\n    value: {}\n  - name: multiValued\n    value: \"{multi}\"\n",
            res.join("secrets.json").display()
        ),
    );
}

#[test]
fn secrets_api_reads_file_and_env_stores_with_dapr_shapes_and_errors() {
    let (dir, res) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    file_store(res.path(), "files", false);
    write(
        res.path(),
        "multi.yaml",
        &format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: multi\nspec:\n  type: secretstores.local.file\n  version: v1\n  metadata:\n  - name: secretsFile\n    value: {}\n  - name: multiValued\n    value: \"true\"\n",
            res.path().join("secrets.json").display()
        ),
    );
    write(
        res.path(),
        "env.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: env\nspec:\n  type: secretstores.local.env\n  version: v1\n  metadata:\n  - name: prefix\n    value: SITE_\n",
    );
    let ec = Edgecar::start_with_env(
        dir.path(),
        &["--resources-path", res.path().to_str().unwrap()],
        &[("SITE_DB", "db-pass"), ("OTHER", "x")],
    );

    let r = ec.req("GET", "/v1.0/secrets/files/redisPassword", b"", &[]);
    assert_eq!(
        (r.status, r.json()),
        (200, json!({"redisPassword": "p@ss-w0rd!"}))
    );
    let r = ec.req("GET", "/v1.0/secrets/files/connectionStrings:sql", b"", &[]);
    assert_eq!(
        r.json(),
        json!({"connectionStrings:sql": "s"}),
        "name/value semantics flatten with ':'"
    );
    let r = ec.req("GET", "/v1.0/secrets/multi/connectionStrings", b"", &[]);
    assert_eq!(
        r.json(),
        json!({"sql": "s", "mysql": "m"}),
        "multiValued keeps one level of keys"
    );
    let r = ec.req("GET", "/v1.0/secrets/multi/bulk", b"", &[]);
    assert_eq!(r.json()["api"], json!({"key": "k-123"}));
    let r = ec.req("GET", "/v1.0/secrets/env/SITE_DB", b"", &[]);
    assert_eq!(r.json(), json!({"SITE_DB": "db-pass"}));
    let r = ec.req("GET", "/v1.0/secrets/env/OTHER", b"", &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (500, "ERR_SECRET_GET"),
        "outside the env prefix"
    );
    let bulk = ec.req("GET", "/v1.0/secrets/env/bulk", b"", &[]).json();
    assert_eq!(bulk, json!({"SITE_DB": {"SITE_DB": "db-pass"}}));

    let r = ec.req("GET", "/v1.0/secrets/files/nope", b"", &[]);
    assert_eq!((r.status, r.error_code().as_str()), (500, "ERR_SECRET_GET"));
    let r = ec.req("GET", "/v1.0/secrets/vault/x", b"", &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (401, "ERR_SECRET_STORE_NOT_FOUND"),
        "Dapr answers 401 here"
    );
    assert!(
        !ec.log.lock().unwrap().contains("p@ss-w0rd!"),
        "secrets never reach the log"
    );
}

#[test]
fn secret_scopes_deny_with_403_and_filter_bulk() {
    let (dir, res) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    file_store(res.path(), "files", false);
    write(
        res.path(),
        "config.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: appconfig\nspec:\n  secrets:\n    scopes:\n    - storeName: files\n      defaultAccess: deny\n      allowedSecrets: [\"api:key\"]\n",
    );
    let ec = Edgecar::start(
        dir.path(),
        &["--resources-path", res.path().to_str().unwrap()],
    );
    assert_eq!(
        ec.req("GET", "/v1.0/secrets/files/api:key", b"", &[])
            .status,
        200
    );
    let r = ec.req("GET", "/v1.0/secrets/files/redisPassword", b"", &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (403, "ERR_PERMISSION_DENIED")
    );
    assert_eq!(
        ec.req("GET", "/v1.0/secrets/files/bulk", b"", &[]).json(),
        json!({"api:key": {"api:key": "k-123"}})
    );
}

#[test]
fn secret_key_refs_reach_a_real_redis_and_a_capability_header() {
    let redis = RedisServer::start_with_password("p@ss-w0rd!");
    let cloud = TestApp::start(|r| {
        AppResponse::new(
            if r.header("x-api-key") == Some("k-123") {
                200
            } else {
                401
            },
            "{}",
        )
    });
    let (dir, res) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    file_store(res.path(), "files", false);
    write(
        res.path(),
        "redis.yaml",
        &format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: cache\nspec:\n  type: state.redis\n  version: v1\n  metadata:\n  - name: redisHost\n    value: 127.0.0.1:{}\n  - name: redisPassword\n    secretKeyRef:\n      name: redisPassword\n      key: redisPassword\nauth:\n  secretStore: files\n",
            redis.port
        ),
    );
    write(
        res.path(),
        "cap.yaml",
        &format!(
            "apiVersion: edgecar.io/v1alpha1\nkind: Capability\nmetadata:\n  name: keyed\nspec:\n  secretStore: files\n  offers:\n  - name: cloud\n    type: http\n    url: http://127.0.0.1:{}/v1\n    headers:\n      X-Api-Key:\n        secretKeyRef: {{ name: \"api:key\", key: \"api:key\" }}\n",
            cloud.port
        ),
    );
    let ec = Edgecar::start(
        dir.path(),
        &["--resources-path", res.path().to_str().unwrap()],
    );
    let r = ec.req(
        "POST",
        "/v1.0/state/cache",
        br#"[{"key":"k","value":"v"}]"#,
        &[],
    );
    assert_eq!(
        r.status,
        204,
        "redis accepted the password from the secret store: {}",
        r.text()
    );
    assert_eq!(
        ec.req("GET", "/v1.0/state/cache/k", b"", &[]).text(),
        "\"v\""
    );
    let r = ec.req("POST", "/v1.0/capabilities/keyed/x", b"{}", &[]);
    assert_eq!(
        r.status,
        200,
        "the offer sent the API key from the secret store: {}",
        r.text()
    );
}

#[test]
fn unresolvable_secret_refs_are_config_errors() {
    let res = tempfile::tempdir().unwrap();
    file_store(res.path(), "files", false);
    write(
        res.path(),
        "redis.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: cache\nspec:\n  type: state.redis\n  version: v1\n  metadata:\n  - name: redisHost\n    value: localhost:6379\n  - name: redisPassword\n    secretKeyRef:\n      name: missing\nauth:\n  secretStore: files\n",
    );
    write(
        res.path(),
        "redis2.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: cache2\nspec:\n  type: state.redis\n  version: v1\n  metadata:\n  - name: redisHost\n    value: localhost:6379\n  - name: redisPassword\n    secretKeyRef:\n      name: redisPassword\n",
    );
    let out = std::process::Command::new(edgecar_tests::edgecar_bin())
        .args([
            "check-config",
            "--resources-path",
            res.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("redis.yaml: spec.metadata[1].secretKeyRef: secret missing not found"),
        "{err}"
    );
    assert!(
        err.contains("redis2.yaml: spec.metadata[1].secretKeyRef: needs auth.secretStore"),
        "{err}"
    );
}
