//! Health, metadata and the API token: what Dapr SDKs touch before their first real call.

use edgecar_tests::Edgecar;

#[test]
fn health_endpoints_answer_204() {
    let dir = tempfile::tempdir().unwrap();
    let ec = Edgecar::start(dir.path(), &[]);
    assert_eq!(ec.req("GET", "/v1.0/healthz", b"", &[]).status, 204);
    assert_eq!(
        ec.req("GET", "/v1.0/healthz/outbound", b"", &[]).status,
        204
    );
}

#[test]
fn metadata_describes_the_sidecar_and_keeps_extended_attributes() {
    let dir = tempfile::tempdir().unwrap();
    let ec = Edgecar::start(dir.path(), &["--app-id", "checkout", "--app-port", "6000"]);
    let m = ec.req("GET", "/v1.0/metadata", b"", &[]).json();
    assert_eq!(m["id"], "checkout");
    assert!(
        m["runtimeVersion"]
            .as_str()
            .unwrap()
            .starts_with("edgecar-")
    );
    assert_eq!(m["components"][0]["name"], "statestore");
    assert_eq!(m["components"][0]["type"], "state.sled");
    assert_eq!(
        m["components"][0]["capabilities"],
        serde_json::json!(["ETAG", "TRANSACTIONAL", "TTL", "QUERY_API"])
    );
    assert_eq!(m["appConnectionProperties"]["port"], 6000);
    assert_eq!(
        m["apps"],
        serde_json::json!([{"appId": "checkout", "address": "http://127.0.0.1:6000"}])
    );

    let r = ec.req("PUT", "/v1.0/metadata/owner", b"line 3", &[]);
    assert_eq!(r.status, 204);
    let m = ec.req("GET", "/v1.0/metadata", b"", &[]).json();
    assert_eq!(m["extended"]["owner"], "line 3");
    let r = ec.req("PUT", "/v1.0/metadata/huge", &vec![b'x'; 10_000], &[]);
    assert_eq!(r.status, 400);
}

#[test]
fn api_token_guards_everything_but_health() {
    let dir = tempfile::tempdir().unwrap();
    let check = |ec: &Edgecar, token: &str| {
        assert_eq!(
            ec.req("GET", "/v1.0/healthz", b"", &[]).status,
            204,
            "healthz is exempt"
        );
        let r = ec.req("GET", "/v1.0/metadata", b"", &[]);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (401, "ERR_UNAUTHORIZED")
        );
        let r = ec.req(
            "POST",
            "/v1.0/state/statestore",
            br#"[{"key":"k","value":1}]"#,
            &[("dapr-api-token", "wrong")],
        );
        assert_eq!(r.status, 401);
        let r = ec.req(
            "GET",
            "/v1.0/state/statestore/k",
            b"",
            &[("dapr-api-token", token)],
        );
        assert_eq!(
            r.status, 204,
            "the wrong-token write must not have happened"
        );
        let r = ec.req(
            "POST",
            "/v1.0/state/statestore",
            br#"[{"key":"k","value":1}]"#,
            &[("dapr-api-token", token)],
        );
        assert_eq!(r.status, 204);
    };
    let ec = Edgecar::start(dir.path(), &["--dapr-api-token", "s3cret"]);
    check(&ec, "s3cret");
    drop(ec);
    let dir = tempfile::tempdir().unwrap();
    let ec = Edgecar::start_with_env(dir.path(), &[], &[("DAPR_API_TOKEN", "from-env")]);
    check(&ec, "from-env");
    assert!(
        !ec.log.lock().unwrap().contains("from-env"),
        "the token must never be logged"
    );
}
