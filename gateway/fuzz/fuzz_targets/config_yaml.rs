//! Every YAML file edgecar reads: `edgecar.yaml` (parsed over the defaults, then validated),
//! Dapr resource documents in a resources directory (components, subscriptions, access control,
//! resiliency, capability manifests — all checked as `edgecar check-config` and `run` check
//! them), a capability manifest and a resiliency document on their own, and the device
//! registry file. Each input is tried as every kind: a fuzzed file is any of them.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// A resources directory holding one file the fuzzer rewrites, and a state directory.
fn dirs() -> &'static tempfile::TempDir {
    static D: OnceLock<tempfile::TempDir> = OnceLock::new();
    D.get_or_init(|| {
        let d = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(d.path().join("resources")).expect("resources dir");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("edgecar.yaml");
    if let Ok(cfg) = edgecar::config::parse(text, file) {
        let _ = edgecar::config::validate(&cfg, file);
    }
    let _ = edgecar::devices::file::parse(text, Path::new("devices.yaml"));
    if let Ok(m) = edgecar_capabilities::parse_manifest_str(text) {
        let _ = m.validate();
    }
    let _ = edgecar_capabilities::parse_resiliency_str(text);

    // As a resource file, through the same checks as `edgecar check-config`.
    let d = dirs();
    let resources = d.path().join("resources");
    if std::fs::write(resources.join("fuzz.yaml"), data).is_err() {
        return;
    }
    let mut cfg = edgecar::Config::default();
    cfg.state_dir = d.path().join("state");
    cfg.resources_paths = vec![resources];
    let _ = edgecar::setup::prepare(&cfg);
});
