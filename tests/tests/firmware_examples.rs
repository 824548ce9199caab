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
        let ec = Edgecar::start(
            state.path(),
            &[
                "--app-id",
                "dashboard",
                "--app-port",
                &app.port.to_string(),
                "--resources-path",
                res.path().to_str().unwrap(),
            ],
        );
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

#[test]
fn the_rust_sensor_simulator_sends_telemetry_keeps_state_and_answers_commands() {
    let (site, pw) = Site::start(&["sim-1"]);
    let port = site.ec.mqtt_port;
    let mut sim = Running::spawn(simulator(
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
    let last_seq = seq(&site.device_state("sim-1", "last").unwrap());
    drop(sim);
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
        seqs.len() == 2 && seqs[0] > last_seq && seqs[1] == seqs[0] + 1,
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
