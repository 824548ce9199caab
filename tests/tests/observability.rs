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
use edgecar_tests::{Edgecar, eventually, python};

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

/// The `oldestAgeSeconds` of `pubsub/<topic>` in a `/status.json`.
fn topic_age(status: &serde_json::Value, topic: &str) -> Option<f64> {
    status["queues"]["topics"]
        .as_array()?
        .iter()
        .find(|q| q["pubsub"] == "pubsub" && q["topic"] == topic)?["oldestAgeSeconds"]
        .as_f64()
}

/// The status page's entry for component `name`.
fn component(status: &serde_json::Value, name: &str) -> serde_json::Value {
    status["components"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no component {name} in {status}"))
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
    // Nobody consumes them: the oldest has waited two seconds before the page is rendered.
    let status = eventually(Duration::from_secs(10), "a 2 s old backlog", || {
        let s = ec.admin("/status.json").json();
        (topic_age(&s, "telemetry")? >= 2.0).then_some(s)
    });
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
    // The queue's depth and how long its oldest message has waited ("0m 2s" or more).
    let row = "<td>pubsub/telemetry</td><td>2</td><td>0m ";
    let waited = dom
        .find(row)
        .map(|at| &dom[at + row.len()..])
        .and_then(|rest| rest.split('s').next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no age beside the telemetry queue:\n{dom}"));
    assert!((2..60).contains(&waited), "{waited} s\n{dom}");
    // Each component with its health and what was checked.
    for c in [
        "<td>statestore</td><td>state.sled</td><td>v1</td><td class=\"ok\">healthy</td><td>free disk space</td>",
        "<td>pubsub</td><td>pubsub.sled</td><td>v1</td><td class=\"ok\">healthy</td><td>free disk space</td>",
    ] {
        assert!(dom.contains(c), "{c} missing:\n{dom}");
    }
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
    let m = parse_metrics(&metrics);
    assert!(
        sample(
            &m,
            r#"edgecar_queue_oldest_age_seconds{pubsub="pubsub",topic="telemetry"}"#
        ) >= 2.0,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &m,
            r#"edgecar_component_healthy{component="statestore",type="state.sled"}"#
        ),
        1.0,
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

#[test]
fn a_backlog_nobody_consumes_shows_a_growing_age_that_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut ec = Edgecar::start(dir.path(), &[]);
    let publish = |ec: &Edgecar| {
        let r = ec.req(
            "POST",
            "/v1.0/publish/pubsub/telemetry",
            br#"{"t":1}"#,
            &[("content-type", "application/json")],
        );
        assert_eq!(r.status, 204, "{}", r.text());
    };
    let status = ec.admin("/status.json").json();
    assert_eq!(
        topic_age(&status, "telemetry"),
        None,
        "no queue yet: {status}"
    );
    publish(&ec);
    let first = topic_age(&ec.admin("/status.json").json(), "telemetry").expect("an age");
    assert!(first < 2.0, "{first}");
    std::thread::sleep(Duration::from_millis(1500));
    // A newer message does not make the backlog younger.
    publish(&ec);
    let later = ec.admin("/status.json").json();
    let second = topic_age(&later, "telemetry").unwrap();
    assert!(second >= first + 1.4, "{first} then {second}: {later}");
    let m = parse_metrics(&ec.admin("/metrics").text());
    let gauge = sample(
        &m,
        r#"edgecar_queue_oldest_age_seconds{pubsub="pubsub",topic="telemetry"}"#,
    );
    assert!(gauge >= second, "{gauge} < {second}");
    assert_eq!(
        sample(
            &m,
            r#"edgecar_queue_messages{pubsub="pubsub",topic="telemetry"}"#
        ),
        2.0
    );

    // The append time is on disk with the message: a restart does not reset the age. (Queues
    // are opened when their topic is next used; a publish does that.)
    assert!(ec.terminate().success());
    let ec = Edgecar::start(dir.path(), &[]);
    publish(&ec);
    let after = ec.admin("/status.json").json();
    let third = topic_age(&after, "telemetry").unwrap();
    assert!(
        third >= second,
        "{second} before the restart, {third} after: {after}"
    );
}

#[test]
fn component_health_follows_a_real_redis_going_down_and_coming_back() {
    let mut redis = edgecar_tests::RedisServer::start();
    let (dir, res) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let host = format!("127.0.0.1:{}", redis.port);
    edgecar_tests::write_component(
        res.path(),
        "cache",
        "state.redis",
        &[
            ("redisHost", &host),
            ("dialTimeout", "300ms"),
            ("readTimeout", "300ms"),
        ],
    );
    edgecar_tests::write_component(res.path(), "statestore", "state.sled", &[]);
    let ec = Edgecar::start(
        dir.path(),
        &["--resources-path", res.path().to_str().unwrap()],
    );
    let healthy = r#"edgecar_component_healthy{component="cache",type="state.redis"}"#;
    assert_eq!(
        ec.req("GET", "/v1.0/healthz/outbound", b"", &[]).status,
        204
    );
    let status = ec.admin("/status.json").json();
    let cache = component(&status, "cache");
    assert_eq!(cache["status"], "healthy", "{status}");
    assert_eq!(cache["check"], "Redis PING", "{status}");
    assert_eq!(
        sample(&parse_metrics(&ec.admin("/metrics").text()), healthy),
        1.0
    );

    redis.stop();
    let down = eventually(
        Duration::from_secs(15),
        "/v1.0/healthz/outbound failing",
        || {
            let r = ec.req("GET", "/v1.0/healthz/outbound", b"", &[]);
            (r.status == 500).then_some(r)
        },
    );
    assert_eq!(down.error_code(), "ERR_HEALTH_NOT_READY", "{}", down.text());
    let message = down.json()["message"].as_str().unwrap().to_owned();
    assert!(
        message.starts_with("component cache (state.redis) is unhealthy: redis:"),
        "{message}"
    );
    assert!(!message.contains("statestore"), "{message}");
    // The sidecar itself is alive: only the outbound check names the store.
    assert_eq!(ec.req("GET", "/v1.0/healthz", b"", &[]).status, 204);
    let status = ec.admin("/status.json").json();
    let cache = component(&status, "cache");
    assert_eq!(cache["status"], "unhealthy", "{status}");
    assert!(
        cache["error"].as_str().unwrap().starts_with("redis:"),
        "{status}"
    );
    assert_eq!(component(&status, "statestore")["status"], "healthy");
    assert_eq!(
        sample(&parse_metrics(&ec.admin("/metrics").text()), healthy),
        0.0
    );
    // The page shows it in red, with the error, in a real browser.
    let url = format!("http://127.0.0.1:{}/", ec.admin_port);
    let profile = tempfile::tempdir().unwrap();
    let out = chromium_run(profile.path(), &url, &["--dump-dom"]);
    let dom = String::from_utf8_lossy(&out.stdout);
    let row = "<td>cache</td><td>state.redis</td><td>v1</td><td class=\"bad\">unhealthy</td><td>Redis PING</td>";
    assert!(dom.contains(row), "{row} missing:\n{dom}");
    assert!(dom.contains("<td>redis:"), "no error shown:\n{dom}");
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/status-page-unhealthy.png");
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

    redis.resume();
    eventually(
        Duration::from_secs(15),
        "/v1.0/healthz/outbound passing again",
        || (ec.req("GET", "/v1.0/healthz/outbound", b"", &[]).status == 204).then_some(()),
    );
    let status = ec.admin("/status.json").json();
    let cache = component(&status, "cache");
    assert_eq!(cache["status"], "healthy", "{status}");
    assert!(cache["error"].is_null(), "{status}");
    assert_eq!(
        sample(&parse_metrics(&ec.admin("/metrics").text()), healthy),
        1.0
    );
    // And the store works again.
    let r = ec.req(
        "POST",
        "/v1.0/state/cache",
        br#"[{"key":"k","value":1}]"#,
        &[],
    );
    assert_eq!(r.status, 204, "{}", r.text());
}
