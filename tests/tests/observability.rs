//! What an operator reads: `/metrics` and the status page on the admin listener
//! (`--metrics-port`), never on the Dapr API port.
//!
//! `/metrics` is parsed with the Prometheus project's own Python parser (`prometheus_client`,
//! in the venv scripts/test.sh creates; `EDGECAR_PYTHON` may name another interpreter that has
//! it); the status page is rendered by headless Chromium (Debian's `chromium`; `EDGECAR_CHROMIUM`
//! may name another binary), which keeps a screenshot in `target/status-page.png`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use edgecar_tests::mqtt::{RawMqtt, add_device, mosquitto_rr};
use edgecar_tests::{Edgecar, eventually};

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("EDGECAR_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/python-sdk/bin/python");
    assert!(
        venv.exists(),
        "the Prometheus parser is not installed: run `python3 -m venv target/python-sdk && target/python-sdk/bin/pip install -r tests/python/requirements.txt` (scripts/test.sh does)"
    );
    venv
}

/// Every sample of an exposition, parsed by `prometheus_client`'s OpenMetrics parser:
/// `name{k="v",...}` (labels sorted) → value. Panics if the parser rejects the text.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(out))
"#;
    let mut child = Command::new(python())
        .arg("-c")
        .arg(SCRIPT)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser rejected /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn sample(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

#[test]
fn metrics_are_on_the_admin_port_and_not_on_the_api_port() {
    let dir = tempfile::tempdir().unwrap();
    let ec = Edgecar::start(dir.path(), &["--dapr-api-token", "s3cret"]);
    for headers in [&[][..], &[("dapr-api-token", "s3cret")][..]] {
        let r = ec.req("GET", "/metrics", b"", headers);
        assert_ne!(r.status, 200, "the API port answered /metrics");
        assert!(!r.text().contains("edgecar_calls"), "{}", r.text());
    }
    let m = ec.admin("/metrics");
    assert_eq!(m.status, 200);
    assert!(
        m.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{:?}",
        m.header("content-type")
    );
    assert!(m.text().contains("process_resident_memory_bytes"));
}

#[test]
fn counters_move_with_traffic_on_every_transport() {
    let dir = tempfile::tempdir().unwrap();
    let pw = add_device(dir.path(), "meter-1");
    let ec = Edgecar::start(dir.path(), &[]);
    let http_ok = r#"edgecar_calls_total{op="state.get",outcome="ok",transport="http"}"#;
    let mqtt_ok = r#"edgecar_calls_total{op="state.get",outcome="ok",transport="mqtt"}"#;
    let dapr =
        r#"dapr_http_server_request_count_total{app_id="edgecar",method="GET",status="204"}"#;
    let before = parse_metrics(&ec.admin("/metrics").text());
    for _ in 0..5 {
        assert_eq!(
            ec.req("GET", "/v1.0/state/statestore/nothing", b"", &[])
                .status,
            204
        );
    }
    let reply = mosquitto_rr(
        ec.mqtt_port,
        "meter-1",
        &pw,
        "edgecar/v1/meter-1/req/state.get/q?key=k",
        "edgecar/v1/meter-1/inbox/r",
        "",
        &[],
    );
    assert!(reply.is_some(), "no reply to the device's state.get");
    let after = parse_metrics(&ec.admin("/metrics").text());
    assert_eq!(sample(&after, http_ok) - sample(&before, http_ok), 5.0);
    assert_eq!(sample(&after, mqtt_ok) - sample(&before, mqtt_ok), 1.0);
    assert_eq!(sample(&after, dapr) - sample(&before, dapr), 5.0);
    let count = r#"edgecar_call_duration_seconds_count{op="state.get",transport="http"}"#;
    assert_eq!(sample(&after, count) - sample(&before, count), 5.0);
    assert_eq!(sample(&after, "edgecar_devices_registered{}"), 1.0);
    assert!(sample(&after, "process_resident_memory_bytes{}") > 1e6);
}

#[test]
fn enable_metrics_false_turns_the_admin_listener_off() {
    let dir = tempfile::tempdir().unwrap();
    let ec = Edgecar::start(dir.path(), &["--enable-metrics=false"]);
    assert_eq!(ec.admin_port, 0);
    assert!(
        !ec.log.lock().unwrap().contains("status page) listening"),
        "{}",
        ec.log.lock().unwrap()
    );
}

fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("EDGECAR_CHROMIUM") {
        return PathBuf::from(p);
    }
    for name in ["chromium", "chromium-browser"] {
        for dir in ["/usr/bin", "/usr/local/bin", "/snap/bin"] {
            let p = Path::new(dir).join(name);
            if p.exists() {
                return p;
            }
        }
    }
    panic!("chromium is not installed: apt-get install chromium (scripts/test.sh does)");
}

/// Headless Chromium with a throwaway profile; `args` add `--dump-dom` or `--screenshot`.
fn chromium_run(profile: &Path, url: &str, args: &[&str]) -> std::process::Output {
    Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1280,1100",
            // Lets the page's fetch of /status.json finish before the DOM is taken.
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium")
}

#[test]
fn status_page_shows_the_running_gateways_figures_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let passwords: Vec<(String, String)> = ["boiler-1", "boiler-2", "pump-7"]
        .iter()
        .map(|id| (id.to_string(), add_device(dir.path(), id)))
        .collect();
    let ec = Edgecar::start(dir.path(), &[]);
    // Two devices stay connected; pump-7 is registered but away.
    let _conns: Vec<RawMqtt> = passwords[..2]
        .iter()
        .map(|(id, pw)| {
            let (c, code) = RawMqtt::connect(ec.mqtt_port, id, pw, 60);
            assert_eq!(code, 0, "{id} refused");
            c
        })
        .collect();
    eventually(Duration::from_secs(10), "two devices connected", || {
        (ec.admin("/status.json").json()["devices"]["connected"] == 2).then_some(())
    });
    for _ in 0..3 {
        ec.req("GET", "/v1.0/state/statestore/k", b"", &[]);
    }
    // Two readings wait in the durable telemetry queue (kept for its consumer).
    for _ in 0..2 {
        let r = ec.req(
            "POST",
            "/v1.0/publish/pubsub/telemetry",
            br#"{"t":21.5}"#,
            &[("content-type", "application/json")],
        );
        assert_eq!(r.status, 204);
    }
    let status = ec.admin("/status.json").json();
    let calls = status["calls"]["total"].as_u64().unwrap();
    assert!(calls >= 3, "{status}");

    let url = format!("http://127.0.0.1:{}/", ec.admin_port);
    let profile = tempfile::tempdir().unwrap();
    let out = chromium_run(profile.path(), &url, &["--dump-dom"]);
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The tiles and tables show what the gateway reports, rendered by the page's script.
    let tile = |id: &str| {
        let start = dom
            .find(&format!("id=\"{id}\">"))
            .unwrap_or_else(|| panic!("no #{id} in the rendered page:\n{dom}"));
        let rest = &dom[start + id.len() + 6..];
        rest[..rest.find('<').unwrap()].to_owned()
    };
    assert_eq!(tile("devicesConnected"), "2", "{dom}");
    assert_eq!(tile("devicesRegistered"), "3", "{dom}");
    assert_eq!(tile("appId"), "edgecar");
    assert!(tile("callsTotal").parse::<u64>().unwrap() >= calls, "{dom}");
    for needle in [
        "boiler-1",
        "boiler-2",
        "pump-7",
        "mqtt/3.1.1",
        "statestore",
        "state.sled",
        "pubsub/telemetry",
    ] {
        assert!(
            dom.contains(needle),
            "{needle} missing from the rendered page:\n{dom}"
        );
    }
    assert_eq!(tile("error"), "", "{dom}");
    assert!(dom.contains("<td>pubsub/telemetry</td><td>2</td>"), "{dom}");
    // No outbox yet: a backlog of 0 rather than unknown.
    assert!(
        dom.contains(
            "<td>pump-7</td><td class=\"bad\">no</td><td>–</td><td>0</td><td>–</td><td>0</td>"
        ),
        "{dom}"
    );
    let metrics = ec.admin("/metrics").text();
    assert!(
        metrics.contains(r#"edgecar_queue_messages{pubsub="pubsub",topic="telemetry"} 2"#),
        "{metrics}"
    );

    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/status-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = chromium_run(
        profile.path(),
        &url,
        &[&format!("--screenshot={}", shot.display())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
}
