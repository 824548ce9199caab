//! What the SDK tests (Python and JavaScript, HTTP and gRPC) run against: one set of resources
//! and one app, so every SDK is checked against the same thing.

use std::path::{Path, PathBuf};

use crate::{AppResponse, TestApp, write_component};

/// The resources the gRPC client script uses: state, pub/sub, a bindings.http to the app, a
/// secret store, a file configuration store and a lock store. Returns the configuration file.
pub fn sdk_resources(res: &Path, data: &Path, app_port: u16) -> PathBuf {
    write_component(res, "statestore", "state.sled", &[]);
    write_component(res, "pubsub", "pubsub.sled", &[]);
    write_component(res, "lockstore", "lock.in-memory", &[]);
    let erp = format!("http://127.0.0.1:{app_port}/erp");
    write_component(res, "erp", "bindings.http", &[("url", &erp)]);
    let secrets = data.join("secrets.json");
    std::fs::write(&secrets, r#"{"db-password": "s3cret"}"#).unwrap();
    write_component(
        res,
        "secrets",
        "secretstores.local.file",
        &[("secretsFile", secrets.to_str().unwrap())],
    );
    let items = data.join("settings.yml");
    std::fs::write(&items, "threshold: 21.5\n").unwrap();
    write_component(
        res,
        "settings",
        "configuration.file",
        &[("path", items.to_str().unwrap())],
    );
    items
}

/// An app that subscribes to `orders`, echoes `/echo` and `/erp/echo` (the binding with
/// `path: echo`), and answers the binding's `/erp`.
pub fn sdk_app() -> TestApp {
    TestApp::start(|r| match r.path.as_str() {
        "/dapr/subscribe" => AppResponse::new(
            200,
            r#"[{"pubsubname":"pubsub","topic":"orders","route":"/orders"}]"#,
        )
        .header("content-type", "application/json"),
        "/echo" | "/erp/echo" => AppResponse::new(200, r.body.clone()),
        "/erp" => AppResponse::new(200, "binding-ok"),
        _ => AppResponse::new(200, ""),
    })
}
