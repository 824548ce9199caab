//! The firmware examples (firmware-examples/) against the real edgecar: the Rust sensor simulator
//! as a child process; the ESP32 sketch and the MicroPython script run on this machine through
//! their host shims (see each example's README for what that does and does not prove); and every
//! topic and operation the sketch and the script use is one docs/device-protocol.md defines.
//!
//! Apps see a device's state through a second state component on the same Redis with
//! `keyPrefix: none`, under the device's key namespace `<device-id>||<key>`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgecar_tests::mqtt::add_device;
use edgecar_tests::{Edgecar, RedisServer, SubscriberApp, eventually, sensor_simulator_bin};

const WAIT: Duration = Duration::from_secs(20);
const SUBSCRIBE: &str = r#"[{"pubsubname":"pubsub","topic":"telemetry","route":"/telemetry"}]"#;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A gateway whose devices keep state in Redis, where an app can read it; an app subscribed to
/// device telemetry.
struct Site {
    _redis: RedisServer,
    _resources: tempfile::TempDir,
    _state: tempfile::TempDir,
    app: SubscriberApp,
    ec: Edgecar,
}

impl Site {
    fn start(devices: &[&str]) -> (Site, Vec<String>) {
        Self::start_with(devices, &[])
    }

    /// As [`Site::start`], with more gateway arguments.
    fn start_with(devices: &[&str], extra: &[&str]) -> (Site, Vec<String>) {
        let redis = RedisServer::start();
        let res = tempfile::tempdir().unwrap();
        let host = format!("127.0.0.1:{}", redis.port);
        // Devices use `statestore` (keys `<device>||<key>`); apps read them through `devicestate`.
        edgecar_tests::write_component(
            res.path(),
            "statestore",
            "state.redis",
            &[("redisHost", &host)],
        );
        edgecar_tests::write_component(
            res.path(),
            "devicestate",
            "state.redis",
            &[("redisHost", &host), ("keyPrefix", "none")],
        );
        edgecar_tests::write_component(res.path(), "pubsub", "pubsub.sled", &[]);
        let state = tempfile::tempdir().unwrap();
        let passwords = devices
            .iter()
            .map(|d| add_device(state.path(), d))
            .collect();
        let app = SubscriberApp::start(SUBSCRIBE, |_| (200, String::new()));
        let app_port = app.port.to_string();
        let mut args = vec![
            "--app-id",
            "dashboard",
            "--app-port",
            &app_port,
            "--resources-path",
            res.path().to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let ec = Edgecar::start(state.path(), &args);
        (
            Site {
                _redis: redis,
                _resources: res,
                _state: state,
                app,
                ec,
            },
            passwords,
        )
    }

    /// Telemetry events received so far from `device`, as (CloudEvent, data).
    fn telemetry(&self, device: &str) -> Vec<(serde_json::Value, serde_json::Value)> {
        self.app
            .on("/telemetry")
            .iter()
            .map(|r| r.json())
            .filter(|ev| ev["source"] == device)
            .map(|ev| {
                let data = ev["data"].clone();
                (ev, data)
            })
            .collect()
    }

    /// Waits until `device` has sent a reading matching `pred`; returns it.
    fn wait_reading(
        &self,
        device: &str,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        eventually(WAIT, what, || {
            self.telemetry(device)
                .into_iter()
                .map(|(_, d)| d)
                .find(|d| pred(d))
        })
    }

    /// A device's state key as an app reads it: `GET /v1.0/state/devicestate/<device>||<key>`.
    fn device_state(&self, device: &str, key: &str) -> Option<serde_json::Value> {
        let r = self.ec.req(
            "GET",
            &format!("/v1.0/state/devicestate/{device}%7C%7C{key}"),
            b"",
            &[],
        );
        match r.status {
            200 => Some(r.json()),
            204 => None,
            other => panic!("state read answered {other}: {}", r.text()),
        }
    }

    /// A device's state key once it stops changing (a save the device sent just before it was
    /// stopped is still carried out by the gateway).
    fn settled_state(&self, device: &str, key: &str) -> serde_json::Value {
        let mut seen = self.device_state(device, key);
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = self.device_state(device, key);
            if now == seen {
                return now.unwrap_or_else(|| panic!("no {key} state for {device}"));
            }
            seen = now;
        }
    }

    /// `POST /v1.0/invoke/<device>/method/<method>` as an app.
    fn command(&self, device: &str, method: &str, body: &str) -> (u16, serde_json::Value) {
        let r = self.ec.req(
            "POST",
            &format!("/v1.0/invoke/{device}/method/{method}"),
            body.as_bytes(),
            &[("content-type", "application/json")],
        );
        let json = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
        (r.status, json)
    }
}

/// A child process whose stdout and stderr lines are collected.
struct Running {
    child: Child,
    out: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<Vec<String>>>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let out: Arc<Mutex<Vec<String>>> = Arc::default();
        let err: Arc<Mutex<Vec<String>>> = Arc::default();
        for (pipe, sink) in [
            (
                Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
                out.clone(),
            ),
            (Box::new(child.stderr.take().unwrap()), err.clone()),
        ] {
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
        }
        Running { child, out, err }
    }

    fn stderr(&self) -> String {
        self.err.lock().unwrap().join("\n")
    }

    fn stdout(&self) -> Vec<String> {
        self.out.lock().unwrap().clone()
    }

    /// Waits for the exit code.
    fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let st = eventually(timeout, "the process to exit", || {
            self.child.try_wait().unwrap()
        });
        // Let the reader threads take the last lines.
        std::thread::sleep(Duration::from_millis(100));
        st.code()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn simulator(port: u16, device: &str, password: &str, args: &[&str]) -> Command {
    let mut c = Command::new(sensor_simulator_bin());
    c.args([
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--device",
        device,
    ])
    .args(args)
    .env("EDGECAR_DEVICE_PASSWORD", password)
    .env_remove("EDGECAR_SIM_INTERVAL")
    .env_remove("EDGECAR_SIM_COUNT");
    c
}

fn seq(d: &serde_json::Value) -> u64 {
    d["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {d}"))
}

/// The same simulator with `--transport quic`: telemetry, state and commands over the QUIC device
/// endpoint, the gateway's certificate pinned by the fingerprint its log prints.
#[test]
fn the_rust_sensor_simulator_runs_over_quic() {
    let (site, pw) = Site::start_with(&["sim-q"], &["--quic-port", "0"]);
    let sim = Running::spawn(simulator(
        site.ec.mqtt_port,
        "sim-q",
        &pw[0],
        &[
            "--interval",
            "200",
            "--transport",
            "quic",
            "--quic-port",
            &site.ec.quic_port.to_string(),
            "--fingerprint",
            &site.ec.quic_fingerprint,
        ],
    ));
    eventually(WAIT, "3 readings over QUIC", || {
        (site.telemetry("sim-q").len() >= 3).then_some(())
    });
    let d = site.ec.req("GET", "/v1.0/devices/sim-q", b"", &[]).json();
    assert_eq!(d["protocol"], "quic", "{d}");
    eventually(WAIT, "the last reading in the device state", || {
        site.device_state("sim-q", "last").filter(|v| seq(v) >= 3)
    });
    let (status, body) = site.command("sim-q", "ping", "");
    assert_eq!(status, 200, "{body} {}", sim.stderr());
    assert_eq!(body["device"], "sim-q");
}

#[test]
fn the_rust_sensor_simulator_sends_telemetry_keeps_state_and_answers_commands() {
    let (site, pw) = Site::start(&["sim-1"]);
    let port = site.ec.mqtt_port;
    let sim = Running::spawn(simulator(
        port,
        "sim-1",
        &pw[0],
        &["--interval", "200", "--seed", "42"],
    ));

    // Telemetry: readings every 200 ms reach the app as CloudEvents from the device.
    eventually(WAIT, "3 readings", || {
        (site.telemetry("sim-1").len() >= 3).then_some(())
    });
    let events = site.telemetry("sim-1");
    let (ev, _) = &events[0];
    assert_eq!(ev["type"], "io.edgecar.telemetry");
    assert_eq!(ev["subject"], "climate");
    let mut readings: Vec<_> = events.iter().map(|(_, d)| d.clone()).collect();
    readings.sort_by_key(seq);
    assert_eq!(
        seq(&readings[0]),
        1,
        "a fresh device starts at 1: {readings:?}"
    );
    for pair in readings.windows(2) {
        assert_eq!(seq(&pair[1]), seq(&pair[0]) + 1);
        let step = |k: &str| (pair[1][k].as_f64().unwrap() - pair[0][k].as_f64().unwrap()).abs();
        assert!(
            step("temperature") <= 0.51 && step("humidity") <= 0.51,
            "{pair:?}"
        );
    }
    // The simulator printed the same readings on stdout.
    let printed: serde_json::Value = serde_json::from_str(&sim.stdout()[0]).unwrap();
    assert_eq!(printed["seq"], 1);

    // State: the last reading is in the device's namespace, readable by an app.
    let last = eventually(WAIT, "the last reading in the device state", || {
        site.device_state("sim-1", "last").filter(|v| seq(v) >= 3)
    });
    assert!(
        last["temperature"].is_f64() && last["humidity"].is_f64(),
        "{last}"
    );
    assert_eq!(site.device_state("sim-1", "config"), None);

    // Commands from an app, answered by the device.
    let (status, body) = site.command("sim-1", "ping", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["pong"].clone(), body["device"].clone()),
        (true.into(), "sim-1".into())
    );
    assert_eq!(body["intervalMs"], 200);

    let (status, now) = site.command("sim-1", "read-now", "");
    assert_eq!(status, 200, "{now}");
    let n = seq(&now);
    let sent = site.wait_reading("sim-1", "the read-now reading as telemetry", |d| {
        seq(d) == n
    });
    assert_eq!(sent, now);

    let (status, body) = site.command("sim-1", "set-interval", r#"{"intervalMs": 1500}"#);
    assert_eq!(
        (status, body.clone()),
        (200, serde_json::json!({"intervalMs": 1500}))
    );
    assert_eq!(
        site.device_state("sim-1", "config"),
        Some(serde_json::json!({"intervalMs": 1500}))
    );
    // Readings now come 1.5 s apart: none in the next second.
    std::thread::sleep(Duration::from_millis(300));
    let before = site.telemetry("sim-1").len();
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        site.telemetry("sim-1").len() <= before + 1,
        "the interval did not change"
    );

    let (status, body) = site.command("sim-1", "set-interval", r#"{"intervalMs": 5}"#);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errorCode"], "ERR_BAD_REQUEST");
    let (status, body) = site.command("sim-1", "led/on", "");
    assert_eq!(status, 404, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("set-interval"),
        "{body}"
    );

    // Restarted, it resumes from its state: the interval the app set, the count where it was.
    drop(sim);
    let last_seq = seq(&site.settled_state("sim-1", "last"));
    let mut again = Running::spawn(simulator(
        port,
        "sim-1",
        &pw[0],
        &["--interval", "200", "--count", "2"],
    ));
    assert_eq!(again.wait(WAIT), Some(0), "{}", again.stderr());
    assert!(
        again.stderr().contains("interval 1500ms (saved by an app"),
        "{}",
        again.stderr()
    );
    let seqs: Vec<u64> = again
        .stdout()
        .iter()
        .map(|l| seq(&serde_json::from_str(l).unwrap()))
        .collect();
    assert!(
        seqs.len() == 2 && seqs[0] == last_seq + 1 && seqs[1] == seqs[0] + 1,
        "{seqs:?} after {last_seq}"
    );
    site.wait_reading("sim-1", "the resumed readings", |d| seq(d) == seqs[1]);
}

#[test]
fn the_simulator_says_what_is_wrong() {
    let (site, _) = Site::start(&["sim-2"]);
    let port = site.ec.mqtt_port;
    let mut wrong = Running::spawn(simulator(port, "sim-2", "not-the-password", &[]));
    assert_eq!(wrong.wait(WAIT), Some(1));
    assert!(
        wrong.stderr().contains("NotAuthorized") && wrong.stderr().contains("edgecar device add"),
        "{}",
        wrong.stderr()
    );
    let nothing = edgecar_tests::free_port();
    let mut down = Running::spawn(simulator(nothing, "sim-2", "pw", &[]));
    assert_eq!(down.wait(WAIT), Some(1));
    assert!(
        down.stderr().contains("is edgecar running"),
        "{}",
        down.stderr()
    );

    for (args, expect) in [
        (&["--interval", "5"][..], "--interval"),
        (&["--stream", "a/+/b"][..], "--stream"),
        (&["--count", "0"][..], "--count"),
    ] {
        let mut bad = Running::spawn(simulator(port, "sim-2", "pw", args));
        assert_eq!(bad.wait(WAIT), Some(2), "{args:?}");
        assert!(bad.stderr().contains(expect), "{args:?}: {}", bad.stderr());
    }
    let mut no_device = Command::new(sensor_simulator_bin());
    no_device
        .env("EDGECAR_DEVICE_PASSWORD", "pw")
        .env_remove("EDGECAR_DEVICE_ID");
    let mut no_device = Running::spawn(no_device);
    assert_eq!(no_device.wait(WAIT), Some(2));
    assert!(
        no_device.stderr().contains("--device"),
        "{}",
        no_device.stderr()
    );
    let mut bad_id = Running::spawn(simulator(port, "a/b", "pw", &[]));
    assert_eq!(bad_id.wait(WAIT), Some(2));
    assert!(bad_id.stderr().contains("device id"), "{}", bad_id.stderr());
}

/// Waits for `f`, showing what the device program printed if it never comes.
fn wait_device<T>(run: &Running, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}; the device printed:\n{}\n{}",
            run.stdout().join("\n"),
            run.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The flow every firmware example implements (firmware-examples/README.md): telemetry on
/// `telemetry/climate`, the last reading and the interval in the device's state, the commands
/// ping / read-now / set-interval, and a restart that resumes from the state. `start` runs the
/// device program with a 300 ms interval.
fn exercise_firmware(site: &Site, device: &str, start: &dyn Fn() -> Running) {
    let run = start();
    wait_device(&run, "3 readings", || {
        (site.telemetry(device).len() >= 3).then_some(())
    });
    let events = site.telemetry(device);
    for (ev, data) in &events {
        assert_eq!(ev["type"], "io.edgecar.telemetry");
        assert_eq!(ev["subject"], "climate");
        assert!(
            data["temperature"].is_number() && data["humidity"].is_number(),
            "{data}"
        );
    }
    let mut seqs: Vec<u64> = events.iter().map(|(_, d)| seq(d)).collect();
    seqs.sort_unstable();
    assert_eq!(&seqs[..3], &[1, 2, 3], "readings count from 1: {seqs:?}");
    let last = wait_device(&run, "the last reading in the device state", || {
        site.device_state(device, "last").filter(|v| seq(v) >= 2)
    });
    assert!(last["temperature"].is_number(), "{last}");

    let (status, body) = site.command(device, "ping", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pong"], true);
    assert_eq!(body["device"], device);
    assert_eq!(body["intervalMs"], 300);
    let (status, now) = site.command(device, "read-now", "");
    assert_eq!(status, 200, "{now}");
    let n = seq(&now);
    let sent = site.wait_reading(device, "the read-now reading", |d| seq(d) == n);
    assert_eq!(sent["temperature"].as_f64(), now["temperature"].as_f64());
    let (status, body) = site.command(device, "set-interval", r#"{"intervalMs": 1500}"#);
    assert_eq!(
        (status, body.clone()),
        (200, serde_json::json!({"intervalMs": 1500}))
    );
    assert_eq!(
        site.device_state(device, "config"),
        Some(serde_json::json!({"intervalMs": 1500}))
    );
    let (status, body) = site.command(device, "set-interval", r#"{"intervalMs": 5}"#);
    assert_eq!(
        (status, body["errorCode"].clone()),
        (400, "ERR_BAD_REQUEST".into()),
        "{body}"
    );
    let (status, body) = site.command(device, "led/on", "");
    assert_eq!(
        (status, body["errorCode"].clone()),
        (404, "ERR_UNKNOWN_METHOD".into()),
        "{body}"
    );

    // Restarted, it resumes from its state: the count goes on, the interval is the app's.
    drop(run);
    let last_seq = seq(&site.settled_state(device, "last"));
    let again = start();
    let first = wait_device(&again, "the first reading after the restart", || {
        again
            .stdout()
            .iter()
            .find_map(|l| l.strip_prefix("reading ").map(str::to_owned))
    });
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(seq(&first), last_seq + 1, "resumed from the saved reading");
    site.wait_reading(device, "that reading as telemetry", |d| {
        seq(d) == last_seq + 1 && d["temperature"] == first["temperature"]
    });
    let (status, body) = site.command(device, "ping", "");
    assert_eq!(
        (status, body["intervalMs"].clone()),
        (200, 1500.into()),
        "{body}"
    );
    drop(again);
}

#[test]
fn the_esp32_sketch_runs_on_a_host_build_of_its_libraries() {
    let (site, pw) = Site::start(&["esp-1"]);
    let example = repo().join("firmware-examples/esp32-pubsubclient");
    let build = tempfile::tempdir().unwrap();
    std::fs::copy(
        example.join("edgecar_sensor/edgecar_sensor.ino"),
        build.path().join("edgecar_sensor.ino"),
    )
    .unwrap();
    std::fs::write(
        build.path().join("config.h"),
        format!(
            "#pragma once\n#define WIFI_SSID \"-\"\n#define WIFI_PASSWORD \"-\"\n\
             #define EDGECAR_HOST \"127.0.0.1\"\n#define EDGECAR_PORT {}\n\
             #define DEVICE_ID \"esp-1\"\n#define DEVICE_PASSWORD \"{}\"\n\
             #define READ_INTERVAL_MS 300UL\n#define USE_TLS 0\n",
            site.ec.mqtt_port, pw[0]
        ),
    )
    .unwrap();
    let bin = build.path().join("edgecar_sensor");
    let gxx = |args: &[&std::ffi::OsStr]| {
        let out = Command::new("g++")
            .args(["-std=c++17", "-Wall", "-Wextra", "-Werror", "-I"])
            .arg(example.join("host"))
            .args(["-include", "Arduino.h", "-x", "c++"])
            .args(args)
            .output()
            .expect("g++ not found (apt-get install g++)");
        assert!(
            out.status.success(),
            "g++: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let main_cpp = example.join("host/main.cpp");
    gxx(&[
        build.path().join("edgecar_sensor.ino").as_os_str(),
        "-x".as_ref(),
        "none".as_ref(),
        main_cpp.as_os_str(),
        "-o".as_ref(),
        bin.as_os_str(),
    ]);
    // The TLS variant of the sketch (the shipped config.h, USE_TLS 1) compiles too.
    let tls_bin = build.path().join("edgecar_sensor_tls");
    gxx(&[
        "-DUSE_TLS=1".as_ref(),
        example
            .join("edgecar_sensor/edgecar_sensor.ino")
            .as_os_str(),
        "-x".as_ref(),
        "none".as_ref(),
        main_cpp.as_os_str(),
        "-o".as_ref(),
        tls_bin.as_os_str(),
    ]);
    exercise_firmware(&site, "esp-1", &|| Running::spawn(Command::new(&bin)));
}

#[test]
fn the_micropython_script_runs_under_cpython_with_host_stand_ins() {
    let (site, pw) = Site::start(&["mpy-1"]);
    let example = repo().join("firmware-examples/micropython-umqtt");
    let board = tempfile::tempdir().unwrap();
    std::fs::copy(example.join("main.py"), board.path().join("main.py")).unwrap();
    std::fs::write(
        board.path().join("config.py"),
        format!(
            "WIFI_SSID = '-'\nWIFI_PASSWORD = '-'\nEDGECAR_HOST = '127.0.0.1'\n\
             EDGECAR_PORT = {}\nDEVICE_ID = 'mpy-1'\nDEVICE_PASSWORD = '{}'\n\
             READ_INTERVAL_MS = 300\nUSE_TLS = False\n",
            site.ec.mqtt_port, pw[0]
        ),
    )
    .unwrap();
    let run = || {
        let mut c = Command::new("python3");
        c.arg(example.join("host/run.py"))
            .arg(board.path().join("main.py"))
            .env("PYTHONDONTWRITEBYTECODE", "1");
        Running::spawn(c)
    };
    exercise_firmware(&site, "mpy-1", &run);
}

/// The string literals that follow `marker` in `source` (`TREE "res/#"` → `res/#`).
fn literals_after<'a>(source: &'a str, marker: &str) -> Vec<&'a str> {
    source
        .match_indices(marker)
        .filter(|(i, _)| {
            let line_start = source[..*i].rfind('\n').map_or(0, |n| n + 1);
            !source[line_start..*i].trim_start().starts_with("#define")
        })
        .filter_map(|(i, _)| {
            let rest = &source[i + marker.len()..];
            rest.find('"').map(|end| &rest[..end])
        })
        .collect()
}

/// First cells of the markdown table rows in the section of `doc` headed `heading`.
fn table_keys(doc: &str, heading: &str) -> Vec<String> {
    let start = doc
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?} in the doc"));
    let section = &doc[start + heading.len()..];
    let end = section.find("\n## ").unwrap_or(section.len());
    section[..end]
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_sketch_and_the_script_use_only_topics_and_operations_the_protocol_defines() {
    let doc = std::fs::read_to_string(repo().join("docs/device-protocol.md")).unwrap();
    let levels: Vec<String> = table_keys(&doc, "## The topic tree")
        .iter()
        .map(|t| {
            t.split(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    let ops = table_keys(&doc, "## Operations");
    assert!(
        levels.contains(&"cmdres".to_owned()) && ops.contains(&"state.save".to_owned()),
        "{levels:?} {ops:?}"
    );

    let sketch = std::fs::read_to_string(
        repo().join("firmware-examples/esp32-pubsubclient/edgecar_sensor/edgecar_sensor.ino"),
    )
    .unwrap();
    let script =
        std::fs::read_to_string(repo().join("firmware-examples/micropython-umqtt/main.py"))
            .unwrap();
    for (name, source, topic_marker, op_markers) in [
        ("sketch", &sketch, "TREE \"", &["request(\""][..]),
        ("script", &script, "TREE + \"", &["request(client, \""][..]),
    ] {
        let topics = literals_after(source, topic_marker);
        let used_ops: Vec<&str> = op_markers
            .iter()
            .flat_map(|m| literals_after(source, m))
            .collect();
        for t in &topics {
            let level = t.split('/').next().unwrap();
            assert!(
                levels.iter().any(|l| l == level),
                "{name}: topic {t:?} is not in the protocol's tree {levels:?}"
            );
        }
        for op in &used_ops {
            assert!(
                ops.iter().any(|o| o == op),
                "{name}: operation {op:?} is not in the protocol {ops:?}"
            );
        }
        // What the flow needs is really there (so the checks above checked something).
        for needed in ["res/#", "cmd/#", "telemetry/climate"] {
            assert!(
                topics.contains(&needed),
                "{name} does not use {needed:?}: {topics:?}"
            );
        }
        assert!(
            topics.iter().any(|t| t.starts_with("req/")),
            "{name}: {topics:?}"
        );
        assert!(
            topics.iter().any(|t| t.starts_with("cmdres/")),
            "{name}: {topics:?}"
        );
        for op in ["state.get", "state.save"] {
            assert!(
                used_ops.contains(&op),
                "{name} does not use {op}: {used_ops:?}"
            );
        }
        for method in ["\"ping\"", "\"read-now\"", "\"set-interval\""] {
            assert!(source.contains(method), "{name} does not answer {method}");
        }
    }
}
