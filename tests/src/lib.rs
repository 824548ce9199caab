//! Harness for edgecar's end-to-end tests and benchmarks.
//!
//! Everything here starts the real thing: the `edgecar` binary as a child process (its HTTP port
//! learnt from its own log line, so ports are never fixed), `redis-server` on a free port, and plain
//! HTTP/1.1 over real sockets. Children are killed when their handle drops.

pub mod bench;
pub mod mqtt;
pub mod sdk;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Path of the `edgecar` binary under test: `$EDGECAR_BIN`, or the one cargo built beside the tests.
pub fn edgecar_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("EDGECAR_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target/<profile>/edgecar
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("edgecar");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p edgecar` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// Path of the `edgecar-device` CLI, built beside `edgecar` (`cargo build -p edgecar-device-client`).
pub fn device_cli_bin() -> PathBuf {
    let bin = edgecar_bin().with_file_name("edgecar-device");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p edgecar-device-client` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// The Python interpreter of the venv scripts/test.sh makes (`target/python-sdk`, from
/// tests/python/requirements.txt: the Dapr SDK, aioquic); `EDGECAR_PYTHON` may name another
/// that has them.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("EDGECAR_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/python-sdk/bin/python");
    assert!(
        venv.exists(),
        "the test venv is missing: run `python3 -m venv target/python-sdk && target/python-sdk/bin/pip install -r tests/python/requirements.txt` (scripts/test.sh does)"
    );
    venv
}

/// Path of the `edgecar-sensor-simulator` firmware example, built beside `edgecar`
/// (`cargo build -p edgecar-sensor-simulator`).
pub fn sensor_simulator_bin() -> PathBuf {
    let bin = edgecar_bin().with_file_name("edgecar-sensor-simulator");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p edgecar-sensor-simulator` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A port nobody listens on right now (for peers that cannot report the port they bound).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Polls `f` until it returns `Some`, or panics after `timeout` with `what`.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running edgecar daemon.
pub struct Edgecar {
    child: Option<Child>,
    /// The Dapr HTTP API port it bound.
    pub port: u16,
    /// The MQTT device endpoint port it bound (0 when the endpoint is disabled).
    pub mqtt_port: u16,
    /// The QUIC device endpoint's UDP port (0 unless started with `--quic-port`).
    pub quic_port: u16,
    /// The SHA-256 fingerprint of the QUIC endpoint's certificate, as logged (empty without it).
    pub quic_fingerprint: String,
    /// The Dapr gRPC API port it bound (0 when gRPC is disabled).
    pub grpc_port: u16,
    /// The admin listener's port (`/metrics`, the status page); 0 when it is disabled.
    pub admin_port: u16,
    /// Everything it has logged so far.
    pub log: Arc<Mutex<String>>,
}

impl Edgecar {
    /// Starts `edgecar run --dapr-http-port 0 --mqtt-port 0 --dapr-grpc-port 0 --metrics-port 0
    /// --state-dir <state_dir> <args>` and waits until it serves (`--mqtt-port`,
    /// `--dapr-grpc-port` and `--metrics-port` are left out when `args` has its own).
    pub fn start(state_dir: &Path, args: &[&str]) -> Edgecar {
        Self::start_with_env(state_dir, args, &[])
    }

    /// As [`Edgecar::start`], with extra environment variables.
    pub fn start_with_env(state_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Edgecar {
        Self::start_binary(&edgecar_bin(), state_dir, args, env)
    }

    /// As [`Edgecar::start_with_env`], running the edgecar binary at `bin` (a benchmark
    /// comparing two builds in one run).
    pub fn start_binary(
        bin: &Path,
        state_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Edgecar {
        let mut cmd = Command::new(bin);
        cmd.arg("run").arg("--dapr-http-port").arg("0");
        if !args.contains(&"--mqtt-port") {
            cmd.arg("--mqtt-port").arg("0");
        }
        if !args.contains(&"--dapr-grpc-port") {
            cmd.arg("--dapr-grpc-port").arg("0");
        }
        if !args.contains(&"--metrics-port") {
            cmd.arg("--metrics-port").arg("0");
        }
        cmd.arg("--state-dir")
            .arg(state_dir)
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("DAPR_API_TOKEN")
            .env_remove("STATE_DIRECTORY")
            .env_remove("DAPR_GRPC_PORT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn(cmd)
    }

    /// Starts `edgecar <args>` exactly as given (no ports or state dir added) in directory
    /// `cwd`, as the Dapr CLI starts daprd, and waits until it serves.
    pub fn start_exact(cwd: &Path, args: &[&str]) -> Edgecar {
        let mut cmd = Command::new(edgecar_bin());
        cmd.args(args)
            .current_dir(cwd)
            .env("RUST_LOG", "info")
            .env_remove("DAPR_API_TOKEN")
            .env_remove("STATE_DIRECTORY")
            .env_remove("DAPR_GRPC_PORT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        Self::spawn(cmd)
    }

    fn spawn(mut cmd: Command) -> Edgecar {
        let mut child = cmd.spawn().expect("spawn edgecar");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        let mqtt = Arc::new(Mutex::new(0u16));
        let mqtt_seen = mqtt.clone();
        let quic = Arc::new(Mutex::new((0u16, String::new())));
        let quic_seen = quic.clone();
        let grpc = Arc::new(Mutex::new(0u16));
        let grpc_seen = grpc.clone();
        let admin = Arc::new(Mutex::new(0u16));
        let admin_seen = admin.clone();
        std::thread::spawn(move || {
            let port_after = |line: &str, marker: &str| {
                line.split(marker)
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse::<u16>()
                    .ok()
            };
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // The MQTT endpoint and the admin listener are announced before the HTTP API,
                // so all are known once the HTTP line arrives.
                if let Some(p) = port_after(&line, "MQTT device endpoint listening addr=") {
                    *mqtt_seen.lock().unwrap() = p;
                } else if let Some(p) = port_after(&line, "QUIC device endpoint listening addr=") {
                    let fp = line
                        .split("fingerprint=")
                        .nth(1)
                        .and_then(|r| r.split_whitespace().next())
                        .unwrap_or_default()
                        .to_owned();
                    *quic_seen.lock().unwrap() = (p, fp);
                } else if let Some(p) = port_after(&line, "Dapr gRPC API listening addr=") {
                    *grpc_seen.lock().unwrap() = p;
                } else if let Some(p) = port_after(&line, "status page) listening addr=") {
                    *admin_seen.lock().unwrap() = p;
                } else if let Some(p) = port_after(&line, "Dapr HTTP API listening addr=") {
                    let _ = tx.send(p);
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(port) => {
                let (quic_port, quic_fingerprint) = quic.lock().unwrap().clone();
                Edgecar {
                    child: Some(child),
                    port,
                    mqtt_port: *mqtt.lock().unwrap(),
                    grpc_port: *grpc.lock().unwrap(),
                    admin_port: *admin.lock().unwrap(),
                    quic_port,
                    quic_fingerprint,
                    log,
                }
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!("edgecar did not start; its log:\n{}", log.lock().unwrap());
            }
        }
    }

    /// Base URL of the Dapr HTTP API, e.g. `http://127.0.0.1:34567/v1.0`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Sends a request to this daemon.
    pub fn req(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> HttpResponse {
        http(self.port, method, path, body, headers)
    }

    /// Sends a GET to the admin listener (`/metrics`, `/`, `/status.json`).
    pub fn admin(&self, path: &str) -> HttpResponse {
        assert_ne!(self.admin_port, 0, "the admin listener is disabled");
        http(self.admin_port, "GET", path, b"", &[])
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status()
            .expect("kill");
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = c.try_wait().expect("wait") {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "edgecar did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout` for the daemon to exit by itself (e.g. after an API shutdown).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let c = self.child.as_mut()?;
        loop {
            if let Some(st) = c.try_wait().expect("wait") {
                self.child = None;
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory, in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }
}

impl Drop for Edgecar {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Resident memory of a process, in KiB (0 if unknown).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A `redis-server` started for one test, on a free port, persisting nothing.
pub struct RedisServer {
    child: Child,
    /// Its port.
    pub port: u16,
    /// The extra arguments it was started with (kept for [`RedisServer::restart`]).
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a private redis-server and waits until it answers PING.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// As [`RedisServer::start`], requiring a password (`requirepass`).
    pub fn start_with_password(password: &str) -> RedisServer {
        Self::start_with(&["--requirepass", password])
    }

    /// As [`RedisServer::start`], with an append-only file in `dir` (fsync always), so that a
    /// restart keeps what was written.
    pub fn start_persistent(dir: &Path) -> RedisServer {
        let dir = dir.to_str().expect("utf-8 path");
        Self::start_with(&[
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            dir,
        ])
    }

    fn spawn(port: u16, extra: &[String]) -> Child {
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: install it (scripts/test.sh does: apt-get install redis-server)")
    }

    fn answers(&self) -> bool {
        (0..250).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            self.command(&["PING"])
                .is_some_and(|r| r.starts_with("+PONG") || r.starts_with("-NOAUTH"))
        })
    }

    fn start_with(extra: &[&str]) -> RedisServer {
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        for _ in 0..5 {
            let port = free_port();
            let child = Self::spawn(port, &extra);
            let mut server = RedisServer {
                child,
                port,
                extra: extra.clone(),
            };
            if server.answers() {
                return server;
            }
            let _ = server.child.kill();
        }
        panic!("could not start redis-server");
    }

    /// Kills the server (`kill -9`) and starts it again on the same port with the same
    /// arguments: without persistence it comes back empty.
    pub fn restart(&mut self) {
        self.stop();
        self.resume();
    }

    /// Kills the server (`kill -9`); [`RedisServer::resume`] starts it again on its port.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a stopped server again on the same port with the same arguments.
    pub fn resume(&mut self) {
        for _ in 0..50 {
            self.child = Self::spawn(self.port, &self.extra);
            if self.answers() {
                return;
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        panic!("could not restart redis-server on port {}", self.port);
    }

    /// Sends one command and returns the raw reply (enough for simple assertions).
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{}\r\n", a.len(), a));
        }
        s.write_all(out.as_bytes()).ok()?;
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response as the tests need it.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A header value by (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The Dapr `errorCode` of an error body.
    pub fn error_code(&self) -> String {
        self.json()["errorCode"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// One HTTP/1.1 request on a fresh connection to 127.0.0.1:`port`.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> HttpResponse {
    try_http(port, method, path, body, headers).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// As [`http`], returning I/O errors instead of panicking.
pub fn try_http(
    port: u16,
    method: &str,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    read_response(&mut s)
}

/// Reads a whole response from a connection the server closes (`connection: close`).
pub fn read_response(s: &mut TcpStream) -> std::io::Result<HttpResponse> {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            std::io::Error::other(format!(
                "no header end in {:?}",
                String::from_utf8_lossy(&raw)
            ))
        })?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

/// Writes a Dapr Component file into `dir`.
pub fn write_component(dir: &Path, name: &str, kind: &str, metadata: &[(&str, &str)]) {
    let mut y = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: {kind}\n  version: v1\n  metadata:"
    );
    if metadata.is_empty() {
        y.push_str(" []\n");
    } else {
        y.push('\n');
    }
    for (k, v) in metadata {
        y.push_str(&format!("  - name: {k}\n    value: \"{v}\"\n"));
    }
    std::fs::write(dir.join(format!("{name}.yaml")), y).expect("write component");
}

/// A request as a [`TestApp`] received it.
#[derive(Debug, Clone)]
pub struct AppRequest {
    /// Verb.
    pub method: String,
    /// Path with query, as sent.
    pub path: String,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl AppRequest {
    /// A header value by (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// A request as a [`SubscriberApp`] saw it (the same record as a [`TestApp`]'s).
pub type Recorded = AppRequest;

/// How a [`SubscriberApp`] answers a request: status and JSON body.
pub type Responder = dyn Fn(&Recorded) -> (u16, String) + Send + Sync;

/// The app behind edgecar for pub/sub tests: a [`TestApp`] that answers `GET /dapr/subscribe` with
/// the subscriptions it was given and every other request as its (replaceable) responder says.
pub struct SubscriberApp {
    /// The app underneath.
    pub app: TestApp,
    /// Its port.
    pub port: u16,
    responder: Arc<Mutex<Arc<Responder>>>,
}

impl SubscriberApp {
    /// Starts on a free port.
    pub fn start(
        subscribe: &str,
        respond: impl Fn(&Recorded) -> (u16, String) + Send + Sync + 'static,
    ) -> SubscriberApp {
        Self::start_on(0, subscribe, respond)
    }

    /// Starts on `port` (0 for a free one); for an app that must come back on the same port.
    pub fn start_on(
        port: u16,
        subscribe: &str,
        respond: impl Fn(&Recorded) -> (u16, String) + Send + Sync + 'static,
    ) -> SubscriberApp {
        let responder: Arc<Mutex<Arc<Responder>>> = Arc::new(Mutex::new(Arc::new(respond)));
        let (subscribe, current) = (subscribe.to_owned(), responder.clone());
        let app = TestApp::start_on(port, move |r| {
            let (status, body) = if r.path == "/dapr/subscribe" {
                (200, subscribe.clone())
            } else {
                let respond = current.lock().unwrap().clone();
                respond(r)
            };
            AppResponse::new(status, body).header("content-type", "application/json")
        });
        SubscriberApp {
            port: app.port,
            app,
            responder,
        }
    }

    /// Replaces how the app answers from now on.
    pub fn respond_with(
        &self,
        respond: impl Fn(&Recorded) -> (u16, String) + Send + Sync + 'static,
    ) {
        *self.responder.lock().unwrap() = Arc::new(respond);
    }

    /// Every request received so far (not counting `/dapr/subscribe`).
    pub fn requests(&self) -> Vec<Recorded> {
        self.app
            .received()
            .into_iter()
            .filter(|r| r.path != "/dapr/subscribe")
            .collect()
    }

    /// Requests received on `path`.
    pub fn on(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Waits until `n` requests arrived on `path`; returns them.
    pub fn wait_for(&self, path: &str, n: usize, timeout: Duration) -> Vec<Recorded> {
        eventually(timeout, &format!("{n} request(s) on {path}"), || {
            let got = self.on(path);
            (got.len() >= n).then_some(got)
        })
    }
}

/// What a [`TestApp`] answers: status, extra headers, body, and a delay before answering.
pub struct AppResponse {
    /// Status code.
    pub status: u16,
    /// Headers to add.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl AppResponse {
    /// A response with a status and a body.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        AppResponse {
            status,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    /// Adds a header.
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
}

type Handler = dyn Fn(&AppRequest) -> AppResponse + Send + Sync;

/// A small real HTTP/1.1 app on a free port, standing in for an app (or a cloud API). It records
/// every request and answers through the handler it was started with.
pub struct TestApp {
    /// Its port.
    pub port: u16,
    /// Every request received, in order.
    pub requests: Arc<Mutex<Vec<AppRequest>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl TestApp {
    /// Starts the app on 127.0.0.1 with a free port.
    pub fn start(handler: impl Fn(&AppRequest) -> AppResponse + Send + Sync + 'static) -> TestApp {
        Self::start_on(0, handler)
    }

    /// Starts the app on a given port (0 for a free one), e.g. to bring a stopped app back.
    pub fn start_on(
        port: u16,
        handler: impl Fn(&AppRequest) -> AppResponse + Send + Sync + 'static,
    ) -> TestApp {
        // A previous app on the same port may still be letting go of it.
        let listener = eventually(Duration::from_secs(10), "the test app's port", || {
            TcpListener::bind(("127.0.0.1", port)).ok()
        });
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let requests: Arc<Mutex<Vec<AppRequest>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (reqs, stopped) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (reqs, handler, stopped) =
                            (reqs.clone(), handler.clone(), stopped.clone());
                        std::thread::spawn(move || serve_one(stream, &reqs, &*handler, &stopped));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TestApp {
            port,
            requests,
            stop,
        }
    }

    /// Requests received so far.
    pub fn received(&self) -> Vec<AppRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// Stops the app like a crash: the port closes and open connections are dropped unanswered.
    pub fn stop(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(30));
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve_one(
    mut stream: TcpStream,
    reqs: &Mutex<Vec<AppRequest>>,
    handler: &Handler,
    stopped: &std::sync::atomic::AtomicBool,
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    // Keep-alive: serve requests on this connection until the peer closes it.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let path = parts.next().unwrap_or_default().to_owned();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if stopped.load(std::sync::atomic::Ordering::Relaxed) {
            return; // dead: drop the connection without an answer
        }
        let req = AppRequest {
            method,
            path,
            headers,
            body,
        };
        reqs.lock().unwrap().push(req.clone());
        let resp = handler(&req);
        std::thread::sleep(resp.delay);
        let mut out = format!(
            "HTTP/1.1 {} X\r\ncontent-length: {}\r\n",
            resp.status,
            resp.body.len()
        );
        for (k, v) in &resp.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        if stream
            .write_all(out.as_bytes())
            .and_then(|_| stream.write_all(&resp.body))
            .is_err()
        {
            return;
        }
    }
}

/// A `mosquitto` broker started for one test on a free port (loopback, in memory).
pub struct MosquittoServer {
    child: Child,
    /// Its port.
    pub port: u16,
    /// Its configuration file.
    conf: PathBuf,
    _dir: tempfile::TempDir,
}

impl MosquittoServer {
    /// Starts a private mosquitto (anonymous clients allowed) and waits until it accepts
    /// connections.
    pub fn start() -> MosquittoServer {
        Self::start_with("")
    }

    /// As [`MosquittoServer::start`], with extra `mosquitto.conf` lines.
    pub fn start_with(extra_conf: &str) -> MosquittoServer {
        Self::start_conf(&format!("allow_anonymous true\n{extra_conf}"))
    }

    /// Starts mosquitto with `conf` after its `listener` and `persistence false` lines, and
    /// nothing else: for a broker with `allow_anonymous false`, a `password_file` and an
    /// `acl_file`.
    pub fn start_conf(conf: &str) -> MosquittoServer {
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = free_port();
            let path = dir.path().join("mosquitto.conf");
            std::fs::write(
                &path,
                format!("listener {port} 127.0.0.1\npersistence false\n{conf}\n"),
            )
            .expect("write mosquitto.conf");
            let Some(child) = Self::launch(&path, port) else {
                continue;
            };
            return MosquittoServer {
                child,
                port,
                conf: path,
                _dir: dir,
            };
        }
        panic!("could not start mosquitto");
    }

    /// Starts mosquitto on `conf` and waits until `port` accepts connections.
    fn launch(conf: &Path, port: u16) -> Option<Child> {
        let mut child = Command::new("mosquitto")
            .arg("-c")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "mosquitto not found: install it (scripts/test.sh does: apt-get install mosquitto)",
            );
        let up = (0..250).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if up {
            return Some(child);
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// A broker crash and restart: `kill -9`, then the same configuration on the same port,
    /// with nothing kept (no persistence): every client must connect and subscribe again.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = eventually(Duration::from_secs(10), "mosquitto to start again", || {
            Self::launch(&self.conf, self.port)
        });
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `tcp://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// Publishes with `mosquitto_pub` (QoS 1).
    pub fn publish(&self, topic: &str, payload: &str) {
        let st = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-q",
                "1",
                "-t",
                topic,
                "-m",
                payload,
            ])
            .status()
            .expect("mosquitto_pub not found (apt-get install mosquitto-clients)");
        assert!(st.success(), "mosquitto_pub failed");
    }

    /// Starts `mosquitto_sub` on `topic`, printing each message on its own line; returns the child
    /// and the lines it has printed so far.
    pub fn subscribe(&self, topic: &str) -> (Child, Arc<Mutex<Vec<String>>>) {
        let mut child = Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-q",
                "1",
                "-t",
                topic,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub not found (apt-get install mosquitto-clients)");
        let out = child.stdout.take().expect("stdout");
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        (child, lines)
    }
}

impl Drop for MosquittoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
