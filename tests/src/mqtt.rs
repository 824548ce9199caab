//! MQTT peers for the device endpoint tests: the real `mosquitto_sub`, `mosquitto_pub` and
//! `mosquitto_rr` clients (written by nobody on the team), and a tiny raw MQTT 3.1.1 client for
//! what real clients refuse to send (garbage, oversized headers, QoS 2, floods).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::edgecar_bin;

/// Registers a device with `edgecar device add` and returns its generated password.
pub fn add_device(state_dir: &Path, id: &str) -> String {
    let out = Command::new(edgecar_bin())
        .args(["device", "add", id, "--state-dir"])
        .arg(state_dir)
        .output()
        .expect("edgecar device add");
    assert!(
        out.status.success(),
        "device add failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A password hash in the device registry's format (`$pbkdf2-sha256$i=<n>$<salt>$<hash>`), for
/// tests that register many devices at a cost below edgecar's default (the iteration count is
/// stored per hash).
pub fn registry_hash(password: &str, iterations: u32, salt: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    let mut out = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(iterations).expect("iterations > 0"),
        salt,
        password.as_bytes(),
        &mut out,
    );
    format!(
        "$pbkdf2-sha256$i={iterations}${}${}",
        b64.encode(salt),
        b64.encode(out)
    )
}

/// Registers devices `ids` by writing the registry file directly, with cheap hashes (1,000
/// iterations), and returns their passwords: for tests that log in many devices at once.
pub fn register_cheaply(state_dir: &Path, ids: &[String]) -> Vec<String> {
    let mut yaml = String::from("devices:\n");
    let passwords: Vec<String> = ids
        .iter()
        .map(|id| {
            let pw = format!("pw-{id}");
            let hash = registry_hash(&pw, 1000, format!("salt-{id}").as_bytes());
            yaml.push_str(&format!("- id: {id}\n  passwordHash: '{hash}'\n"));
            pw
        })
        .collect();
    std::fs::create_dir_all(state_dir).expect("state dir");
    std::fs::write(state_dir.join("devices.yaml"), yaml).expect("write devices.yaml");
    passwords
}

/// Adds `user` with `password` to a mosquitto password file with `mosquitto_passwd -b`
/// (creating the file when it does not exist yet).
pub fn mosquitto_passwd(file: &Path, user: &str, password: &str) {
    let mut cmd = Command::new("mosquitto_passwd");
    if !file.exists() {
        cmd.arg("-c");
    }
    let out = cmd
        .arg("-b")
        .arg(file)
        .args([user, password])
        .output()
        .expect("mosquitto_passwd not found: install mosquitto");
    assert!(
        out.status.success(),
        "mosquitto_passwd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `edgecar device <args> --state-dir <dir>`.
pub fn device_cmd(state_dir: &Path, args: &[&str]) -> Output {
    Command::new(edgecar_bin())
        .arg("device")
        .args(args)
        .arg("--state-dir")
        .arg(state_dir)
        .output()
        .expect("edgecar device")
}

fn base(cmd: &str, port: u16, user: &str, password: &str) -> Command {
    let mut c = Command::new(cmd);
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-u",
        user,
        "-P",
        password,
    ]);
    c
}

/// `mosquitto_pub` once; returns its output (exit status, stdout, stderr).
pub fn mosquitto_pub(
    port: u16,
    user: &str,
    password: &str,
    topic: &str,
    payload: &str,
    extra: &[&str],
) -> Output {
    base("mosquitto_pub", port, user, password)
        .args(["-t", topic, "-m", payload])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("mosquitto_pub not found: install mosquitto-clients")
}

/// `mosquitto_rr` (MQTT 5 request/response: response topic + correlation data) once; returns
/// the reply as JSON (`-F %j`), or `None` if none came within `secs`.
pub fn mosquitto_rr(
    port: u16,
    user: &str,
    password: &str,
    topic: &str,
    response_topic: &str,
    payload: &str,
    extra: &[&str],
) -> Option<serde_json::Value> {
    let out = base("mosquitto_rr", port, user, password)
        .args([
            "-V",
            "mqttv5",
            "-t",
            topic,
            "-e",
            response_topic,
            "-m",
            payload,
        ])
        .args(["-F", "%j", "-W", "10"])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("mosquitto_rr not found: install mosquitto-clients");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("mosquitto_rr JSON"))
}

/// A `mosquitto_sub` running in the background, printing what it receives as JSON.
pub struct MosquittoSub {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl MosquittoSub {
    /// Starts `mosquitto_sub -d -F %j` on `topics` and waits until its SUBACK arrived (or it
    /// exited, e.g. because the connection was refused).
    pub fn start(
        port: u16,
        user: &str,
        password: &str,
        topics: &[&str],
        extra: &[&str],
    ) -> MosquittoSub {
        // Line-buffered through stdbuf: mosquitto_sub's debug lines are plain printf, and a pipe
        // would hold them back.
        let mut cmd = Command::new("stdbuf");
        cmd.args([
            "-oL",
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .args(["-u", user, "-P", password]);
        for t in topics {
            cmd.args(["-t", t]);
        }
        let mut child = cmd
            .args(["-d", "-F", "%j"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub not found: install mosquitto-clients");
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
        }
        let mut sub = MosquittoSub { child, lines };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if sub.log().contains("Subscribed (mid") || sub.exited() {
                // Give a refused or closed client time to print why.
                if sub.exited() {
                    std::thread::sleep(Duration::from_millis(100));
                }
                return sub;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("mosquitto_sub did not subscribe:\n{}", sub.log());
    }

    /// Everything it printed so far.
    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The SUBACK codes it printed (`Subscribed (mid: 1): 0, 128`).
    pub fn suback(&self) -> Vec<u8> {
        self.log()
            .lines()
            .find_map(|l| l.split("Subscribed (mid: ").nth(1))
            .and_then(|r| r.split_once("): "))
            .map(|(_, codes)| {
                codes
                    .split(", ")
                    .filter_map(|c| c.trim().parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Messages received so far.
    pub fn messages(&self) -> Vec<serde_json::Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).expect("mosquitto_sub JSON"))
            .collect()
    }

    /// Waits until `n` messages arrived; panics with its log after `timeout`.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.messages();
            if m.len() >= n {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} message(s), got {}:\n{}",
                m.len(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// `kill -9`: the connection drops without a DISCONNECT.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MosquittoSub {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The topic a mosquitto JSON message arrived on.
pub fn topic(m: &serde_json::Value) -> &str {
    m["topic"].as_str().unwrap_or_default()
}

/// The payload of a mosquitto JSON message as text (`%j` prints JSON payloads as JSON).
pub fn payload(m: &serde_json::Value) -> String {
    match &m["payload"] {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The payload of a mosquitto JSON message as JSON (mosquitto 2.0.11 prints it as a string).
pub fn json_payload(m: &serde_json::Value) -> serde_json::Value {
    match &m["payload"] {
        serde_json::Value::String(s) => {
            serde_json::from_str(s).unwrap_or_else(|_| serde_json::Value::String(s.clone()))
        }
        other => other.clone(),
    }
}

/// A hand-rolled MQTT 3.1.1 client: it sends exactly the bytes a test wants.
pub struct RawMqtt {
    s: TcpStream,
}

fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// A packet with its fixed header.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![first];
    remaining_length(body.len(), &mut p);
    p.extend_from_slice(body);
    p
}

/// A PUBLISH packet.
pub fn publish_packet(topic: &str, payload: &[u8], qos: u8, pkid: u16) -> Vec<u8> {
    let mut body = Vec::new();
    string(topic.as_bytes(), &mut body);
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &body)
}

/// An MQTT 5 PUBLISH packet without properties.
pub fn publish_packet_v5(topic: &str, payload: &[u8], qos: u8, pkid: u16) -> Vec<u8> {
    let mut body = Vec::new();
    string(topic.as_bytes(), &mut body);
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    body.push(0);
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &body)
}

impl RawMqtt {
    /// Connects and sends CONNECT; returns the client and the CONNACK return code.
    pub fn connect(port: u16, user: &str, password: &str, keep_alive: u16) -> (RawMqtt, u8) {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut c = RawMqtt { s };
        let mut body = Vec::new();
        string(b"MQTT", &mut body);
        body.push(4);
        body.push(0b1100_0010); // username, password, clean session
        body.extend_from_slice(&keep_alive.to_be_bytes());
        string(b"", &mut body);
        string(user.as_bytes(), &mut body);
        string(password.as_bytes(), &mut body);
        c.send(&packet(0x10, &body)).expect("send CONNECT");
        let code = match c.read_packet() {
            Some((0x20, b)) => b[1],
            other => panic!("expected CONNACK, got {other:?}"),
        };
        (c, code)
    }

    /// Connects with MQTT 5 (no properties); returns the client and the CONNACK reason code.
    pub fn connect_v5(port: u16, user: &str, password: &str, keep_alive: u16) -> (RawMqtt, u8) {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut c = RawMqtt { s };
        let mut body = Vec::new();
        string(b"MQTT", &mut body);
        body.push(5);
        body.push(0b1100_0010); // username, password, clean start
        body.extend_from_slice(&keep_alive.to_be_bytes());
        body.push(0); // no properties
        string(b"", &mut body);
        string(user.as_bytes(), &mut body);
        string(password.as_bytes(), &mut body);
        c.send(&packet(0x10, &body)).expect("send CONNECT");
        let code = match c.read_packet() {
            Some((0x20, b)) => b[1],
            other => panic!("expected CONNACK, got {other:?}"),
        };
        (c, code)
    }

    /// Writes raw bytes.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.s.write_all(bytes)
    }

    /// Subscribes and returns the SUBACK return codes.
    pub fn subscribe(&mut self, filter: &str, qos: u8, pkid: u16) -> Vec<u8> {
        let mut body = pkid.to_be_bytes().to_vec();
        string(filter.as_bytes(), &mut body);
        body.push(qos);
        self.send(&packet(0x82, &body)).expect("send SUBSCRIBE");
        loop {
            match self.read_packet() {
                Some((0x90, b)) => return b[2..].to_vec(),
                Some(_) => continue,
                None => panic!("connection closed before SUBACK"),
            }
        }
    }

    /// Reads one packet: (first byte, body), or `None` on EOF, reset or timeout.
    pub fn read_packet(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut first = [0u8; 1];
        self.s.read_exact(&mut first).ok()?;
        let mut len = 0usize;
        for i in 0..4 {
            let mut b = [0u8; 1];
            self.s.read_exact(&mut b).ok()?;
            len |= usize::from(b[0] & 0x7f) << (7 * i);
            if b[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        self.s.read_exact(&mut body).ok()?;
        Some((first[0], body))
    }

    /// The next PUBLISH as (topic, payload), skipping other packets; `None` if the connection ends.
    pub fn next_publish(&mut self) -> Option<(String, Vec<u8>)> {
        loop {
            let (first, body) = self.read_packet()?;
            if first >> 4 != 3 {
                continue;
            }
            let qos = (first >> 1) & 3;
            let tlen = usize::from(u16::from_be_bytes([body[0], body[1]]));
            let topic = String::from_utf8_lossy(&body[2..2 + tlen]).into_owned();
            let start = 2 + tlen + if qos > 0 { 2 } else { 0 };
            if qos > 0 {
                let pkid = [body[2 + tlen], body[3 + tlen]];
                let _ = self.send(&packet(0x40, &pkid));
            }
            return Some((topic, body[start..].to_vec()));
        }
    }

    /// Whether the server closes the connection within `timeout` (packets before it are skipped).
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        self.s.set_read_timeout(Some(timeout)).unwrap();
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match self.s.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return false;
                }
                Err(_) => return true,
            }
        }
        false
    }
}

/// The status of a reply: the last level of its topic (`.../res/<op>/<rid>/<status>`).
pub fn reply_status(m: &serde_json::Value) -> String {
    let t = topic(m);
    let t = t.split('?').next().unwrap_or(t);
    t.rsplit('/').next().unwrap_or_default().to_owned()
}

/// Sends one device request (`edgecar/v1/<user>/req/<op_rid_query>`) with `mosquitto_pub` and
/// returns its reply's status and JSON body, heard by a `mosquitto_sub` on the device's replies.
pub fn device_request(
    port: u16,
    user: &str,
    pw: &str,
    op_rid_query: &str,
    body: &str,
) -> (String, serde_json::Value) {
    let wait = std::time::Duration::from_secs(15);
    let replies = MosquittoSub::start(
        port,
        user,
        pw,
        &[&format!("edgecar/v1/{user}/res/#")],
        &["-q", "1"],
    );
    let out = mosquitto_pub(
        port,
        user,
        pw,
        &format!("edgecar/v1/{user}/req/{op_rid_query}"),
        body,
        &["-q", "1"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = replies.wait_for(1, wait).remove(0);
    let json = serde_json::from_str(&payload(&m)).unwrap_or(serde_json::Value::Null);
    (reply_status(&m), json)
}
