//! Harness for edgecar's end-to-end tests and benchmarks.
//!
//! Everything here starts the real thing: the `edgecar` binary as a child process (its HTTP port
//! learnt from its own log line, so ports are never fixed), `redis-server` on a free port, and plain
//! HTTP/1.1 over real sockets. Children are killed when their handle drops.

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
    /// Everything it has logged so far.
    pub log: Arc<Mutex<String>>,
}

impl Edgecar {
    /// Starts `edgecar run --dapr-http-port 0 --state-dir <state_dir> <args>` and waits until it serves.
    pub fn start(state_dir: &Path, args: &[&str]) -> Edgecar {
        Self::start_with_env(state_dir, args, &[])
    }

    /// As [`Edgecar::start`], with extra environment variables.
    pub fn start_with_env(state_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Edgecar {
        let mut cmd = Command::new(edgecar_bin());
        cmd.arg("run")
            .arg("--dapr-http-port")
            .arg("0")
            .arg("--state-dir")
            .arg(state_dir)
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("DAPR_API_TOKEN")
            .env_remove("STATE_DIRECTORY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn edgecar");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening addr=").nth(1) {
                    let port = rest
                        .split_whitespace()
                        .next()
                        .and_then(|a| a.rsplit(':').next())
                        .and_then(|p| p.parse::<u16>().ok());
                    if let Some(p) = port {
                        let _ = tx.send(p);
                    }
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(port) => Edgecar {
                child: Some(child),
                port,
                log,
            },
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
}

impl RedisServer {
    /// Starts a private redis-server and waits until it answers PING.
    pub fn start() -> RedisServer {
        for _ in 0..5 {
            let port = free_port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server not found: install it (scripts/test.sh does: apt-get install redis-server)");
            let mut server = RedisServer { child, port };
            let up = (0..250).any(|_| {
                std::thread::sleep(Duration::from_millis(20));
                server
                    .command(&["PING"])
                    .is_some_and(|r| r.starts_with("+PONG"))
            });
            if up {
                return server;
            }
            let _ = server.child.kill();
        }
        panic!("could not start redis-server");
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

/// One request a [`TestApp`] received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Recorded {
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

/// How a [`TestApp`] answers a request: status and body.
pub type Responder = dyn Fn(&Recorded) -> (u16, String) + Send + Sync;

/// A small real HTTP app standing in for the app behind edgecar: it answers `GET
/// /dapr/subscribe` with the subscriptions it was given, records every other request, and
/// answers it as its responder says. One thread per connection; every answer closes the
/// connection. Stops when dropped.
pub struct TestApp {
    /// The port it listens on.
    pub port: u16,
    requests: Arc<Mutex<Vec<Recorded>>>,
    responder: Arc<Mutex<Arc<Responder>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl TestApp {
    /// Starts on a free port.
    pub fn start(
        subscribe: &str,
        respond: impl Fn(&Recorded) -> (u16, String) + Send + Sync + 'static,
    ) -> TestApp {
        Self::start_on(0, subscribe, respond)
    }

    /// Starts on `port` (0 for a free one); for an app that must come back on the same port.
    pub fn start_on(
        port: u16,
        subscribe: &str,
        respond: impl Fn(&Recorded) -> (u16, String) + Send + Sync + 'static,
    ) -> TestApp {
        // A previous app on the same port may still be letting go of it.
        let listener = eventually(Duration::from_secs(10), "the test app's port", || {
            TcpListener::bind(("127.0.0.1", port)).ok()
        });
        let port = listener.local_addr().expect("addr").port();
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let responder: Arc<Mutex<Arc<Responder>>> = Arc::new(Mutex::new(Arc::new(respond)));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let subscribe = subscribe.to_owned();
        let (reqs, resp, stopping) = (requests.clone(), responder.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (reqs, resp, subscribe) = (reqs.clone(), resp.clone(), subscribe.clone());
                std::thread::spawn(move || serve_one(conn, &reqs, &resp, &subscribe));
            }
        });
        TestApp {
            port,
            requests,
            responder,
            stop,
        }
    }

    /// Changes how requests are answered from now on.
    pub fn respond_with(
        &self,
        respond: impl Fn(&Recorded) -> (u16, String) + Send + Sync + 'static,
    ) {
        *self.responder.lock().unwrap() = Arc::new(respond);
    }

    /// Every request received so far (not counting `/dapr/subscribe`).
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// Requests received on `path`.
    pub fn on(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Waits until `path` has received at least `n` requests; returns them.
    pub fn wait_for(&self, path: &str, n: usize, timeout: Duration) -> Vec<Recorded> {
        eventually(timeout, &format!("{n} request(s) on {path}"), || {
            let got = self.on(path);
            (got.len() >= n).then_some(got)
        })
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop so it sees the flag and releases the port.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve_one(
    mut conn: TcpStream,
    requests: &Mutex<Vec<Recorded>>,
    responder: &Mutex<Arc<Responder>>,
    subscribe: &str,
) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split_whitespace();
    let method = first.next().unwrap_or_default().to_owned();
    let path = first.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = raw[head_end + 4..].to_vec();
    while body.len() < len {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    let req = Recorded {
        method,
        path,
        headers,
        body,
    };
    let (status, answer) = if req.path == "/dapr/subscribe" {
        (200, subscribe.to_owned())
    } else {
        requests.lock().unwrap().push(req.clone());
        let respond = responder.lock().unwrap().clone();
        respond(&req)
    };
    let out = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
        answer.len()
    );
    let _ = conn.write_all(out.as_bytes());
}

/// A `mosquitto` broker started for one test on a free port (loopback, anonymous, in memory).
pub struct MosquittoServer {
    child: Child,
    /// Its port.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl MosquittoServer {
    /// Starts a private mosquitto and waits until it accepts connections.
    pub fn start() -> MosquittoServer {
        Self::start_with("")
    }

    /// As [`MosquittoServer::start`], with extra `mosquitto.conf` lines.
    pub fn start_with(extra_conf: &str) -> MosquittoServer {
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = free_port();
            let conf = dir.path().join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!(
                    "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{extra_conf}\n"
                ),
            )
            .expect("write mosquitto.conf");
            let child = Command::new("mosquitto")
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("mosquitto not found: install it (scripts/test.sh does: apt-get install mosquitto)");
            let mut server = MosquittoServer {
                child,
                port,
                _dir: dir,
            };
            let up = (0..250).any(|_| {
                std::thread::sleep(Duration::from_millis(20));
                TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
            if up {
                return server;
            }
            let _ = server.child.kill();
            let _ = server.child.wait();
        }
        panic!("could not start mosquitto");
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
