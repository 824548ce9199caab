//! `type: process` offers: a local program run once per call, speaking JSON on stdin and stdout.
//!
//! # Protocol
//!
//! The program (`command[0]`, arguments `command[1..]`, no shell) gets one JSON document on stdin,
//! then end-of-file:
//!
//! ```json
//! {"capability": "detect-objects", "method": "detect", "httpMethod": "POST", "query": "fast=1",
//!  "headers": {"content-type": "application/json"}, "body": {"image": "..."}}
//! ```
//!
//! `body` is the request body as JSON when it parses as JSON, `null` when empty, and otherwise
//! `{"base64": "<standard base64>"}`. (A JSON body that is itself an object with the single key
//! `base64` is always sent base64-wrapped, so the rule has no ambiguity.) `query` is absent when the
//! caller sent none; repeated headers are joined with `, `.
//!
//! It writes one JSON document on stdout and exits 0. Either an envelope, recognised as an
//! object whose keys are among `status`, `headers`, `body` and which has an integer `status`
//! (100–599):
//!
//! ```json
//! {"status": 200, "headers": {"content-type": "application/json"}, "body": {"objects": []}}
//! ```
//!
//! where `body` follows the same rule as above (`{"base64": ...}` for bytes), or any other JSON
//! document, which is the body of a 200 reply. A 5xx status counts as a failure (the engine falls
//! back), a 4xx goes back to the caller.
//!
//! A nonzero exit, a signal, or stdout that is not JSON is a failure, reported with the tail of
//! stderr. On timeout the engine drops the call and the child is killed (`kill_on_drop`; a
//! program that forks should `exec` its worker so the kill reaches it). The child gets a clean
//! environment: `PATH=/usr/local/bin:/usr/bin:/bin`, `EDGECAR_CAPABILITY` and `EDGECAR_OFFER` —
//! the daemon's own environment may hold secrets.
//!
//! A long-lived worker mode (one process serving many calls over a framed stream) would save the
//! spawn cost per call; it is not implemented yet.

use std::process::Stdio;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use http::StatusCode;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::{Offer, OfferRequest, UpstreamError, UpstreamReply};

/// How much of stderr is kept for the failure message.
const STDERR_TAIL: usize = 512;

/// One `process` offer.
pub(crate) struct ProcessOffer {
    /// Program and arguments.
    command: Vec<String>,
    /// The offer's name, for `EDGECAR_OFFER`.
    offer: String,
    /// Largest stdout accepted.
    max_output: usize,
}

impl ProcessOffer {
    /// An offer running `command`.
    pub(crate) fn new(command: Vec<String>, offer: String, max_output: usize) -> Self {
        Self {
            command,
            offer,
            max_output,
        }
    }
}

#[async_trait]
impl Offer for ProcessOffer {
    async fn call(&self, req: &OfferRequest) -> Result<UpstreamReply, UpstreamError> {
        let Some((program, args)) = self.command.split_first() else {
            return Err(UpstreamError::Other("empty command".into()));
        };
        let input = encode_request(req);
        let mut child = Command::new(program)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("EDGECAR_CAPABILITY", &*req.capability)
            .env("EDGECAR_OFFER", &self.offer)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| UpstreamError::Unreachable(format!("cannot start {program}: {e}")))?;

        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(UpstreamError::Other("child pipes missing".into()));
        };
        // Written, read and drained concurrently: a program that answers before reading all of
        // its input (or fills stderr) must not deadlock against us.
        let write = async move {
            // A program that exits without reading its input is not our failure to report; its
            // exit status and output say what happened.
            let _ = stdin.write_all(&input).await;
            drop(stdin);
        };
        let (_, out, err) = tokio::join!(
            write,
            read_limited(stdout, self.max_output),
            read_limited(stderr, 64 * 1024)
        );
        let status = child
            .wait()
            .await
            .map_err(|e| UpstreamError::Other(format!("waiting for {program}: {e}")))?;
        let stderr_tail = tail(&err.unwrap_or_default());
        if !status.success() {
            let how = match status.code() {
                Some(code) => format!("exit status {code}"),
                None => "killed by a signal".to_owned(),
            };
            return Err(UpstreamError::Other(format!(
                "{program}: {how}{}",
                stderr_suffix(&stderr_tail)
            )));
        }
        let out = out.map_err(|e| UpstreamError::Other(format!("{program}: stdout: {e}")))?;
        decode_reply(&out).map_err(|why| {
            UpstreamError::Other(format!("{program}: {why}{}", stderr_suffix(&stderr_tail)))
        })
    }

    fn target(&self) -> String {
        self.command.first().cloned().unwrap_or_default()
    }
}

/// Reads `r` to the end, failing beyond `limit` bytes.
async fn read_limited(r: impl AsyncRead + Unpin, limit: usize) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    r.take(cap)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| e.to_string())?;
    if buf.len() > limit {
        return Err(format!("output larger than {limit} bytes"));
    }
    Ok(buf)
}

/// The last bytes of stderr, one line, control characters replaced.
fn tail(stderr: &[u8]) -> String {
    let start = stderr.len().saturating_sub(STDERR_TAIL);
    String::from_utf8_lossy(&stderr[start..])
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn stderr_suffix(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!(": {tail}")
    }
}

/// The stdin document of the protocol (module doc).
fn encode_request(req: &OfferRequest) -> Vec<u8> {
    let mut headers = Map::new();
    for (name, value) in &req.headers {
        let name = name.to_ascii_lowercase();
        match headers.get_mut(&name) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(value);
            }
            _ => {
                headers.insert(name, Value::String(value.clone()));
            }
        }
    }
    let mut doc = json!({
        "capability": &*req.capability,
        "method": req.method,
        "httpMethod": req.http_method.as_str(),
        "headers": headers,
        "body": encode_body(&req.body),
    });
    if let (Some(q), Some(obj)) = (&req.query, doc.as_object_mut()) {
        obj.insert("query".into(), Value::String(q.clone()));
    }
    let mut out = doc.to_string().into_bytes();
    out.push(b'\n');
    out
}

/// A body as JSON, or `{"base64": ...}` (module doc).
pub(crate) fn encode_body(body: &[u8]) -> Value {
    if body.is_empty() {
        return Value::Null;
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if !is_base64_wrapper(&v) => v,
        _ => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(body) }),
    }
}

fn is_base64_wrapper(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|o| o.len() == 1 && o.contains_key("base64"))
}

/// Interprets the program's stdout (module doc).
fn decode_reply(out: &[u8]) -> Result<UpstreamReply, String> {
    let text = std::str::from_utf8(out).map_err(|_| "stdout is not UTF-8 JSON".to_owned())?;
    if text.trim().is_empty() {
        return Err("no output on stdout".into());
    }
    let doc: Value =
        serde_json::from_str(text).map_err(|e| format!("stdout is not one JSON document: {e}"))?;
    let envelope = doc.as_object().filter(|o| {
        o.keys()
            .all(|k| matches!(k.as_str(), "status" | "headers" | "body"))
            && o.get("status")
                .and_then(Value::as_u64)
                .is_some_and(|s| (100..=599).contains(&s))
    });
    let Some(envelope) = envelope else {
        return Ok(UpstreamReply::json(StatusCode::OK, &doc));
    };
    let status = envelope
        .get("status")
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or("invalid status")?;
    let mut headers = Vec::new();
    if let Some(h) = envelope.get("headers") {
        let map = h.as_object().ok_or("`headers` must be an object")?;
        for (k, v) in map {
            let v = v
                .as_str()
                .ok_or_else(|| format!("header {k:?} must be a string"))?;
            headers.push((k.to_ascii_lowercase(), v.to_owned()));
        }
    }
    let has_content_type = headers.iter().any(|(k, _)| k == "content-type");
    let body = match envelope.get("body") {
        None | Some(Value::Null) => Bytes::new(),
        Some(v) if is_base64_wrapper(v) => {
            let encoded = v.get("base64").and_then(Value::as_str).unwrap_or_default();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| format!("body.base64: {e}"))?;
            if !has_content_type {
                headers.push(("content-type".into(), "application/octet-stream".into()));
            }
            Bytes::from(bytes)
        }
        Some(v) => {
            if !has_content_type {
                headers.push(("content-type".into(), "application/json".into()));
            }
            Bytes::from(v.to_string())
        }
    };
    Ok(UpstreamReply {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use http::Method;

    use super::*;

    fn script(dir: &Path, name: &str, body: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.to_string_lossy().into_owned()
    }

    fn request(body: &'static [u8]) -> OfferRequest {
        OfferRequest {
            capability: "detect".into(),
            method: "run".into(),
            http_method: Method::POST,
            query: None,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("x-a".into(), "1".into()),
                ("X-A".into(), "2".into()),
            ],
            body: Bytes::from_static(body),
        }
    }

    fn offer(command: String) -> ProcessOffer {
        ProcessOffer::new(vec![command], "local".into(), 1 << 20)
    }

    #[tokio::test]
    async fn echoes_the_request_document_as_a_plain_body() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = script(dir.path(), "echo.sh", "exec cat");
        let reply = offer(cmd).call(&request(b"{\"n\": 1}")).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let v: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(
            v,
            json!({"capability": "detect", "method": "run", "httpMethod": "POST",
                   "headers": {"content-type": "application/json", "x-a": "1, 2"},
                   "body": {"n": 1}})
        );
    }

    #[tokio::test]
    async fn envelope_with_status_headers_and_binary_body() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = script(
            dir.path(),
            "env.sh",
            r#"cat >/dev/null
echo "{\"status\": 201, \"headers\": {\"X-Who\": \"$EDGECAR_CAPABILITY/$EDGECAR_OFFER\"}, \"body\": {\"base64\": \"aGk=\"}}""#,
        );
        let reply = offer(cmd).call(&request(b"\x00\x01")).await.unwrap();
        assert_eq!(reply.status, StatusCode::CREATED);
        assert_eq!(reply.header("x-who"), Some("detect/local"));
        assert_eq!(
            reply.header("content-type"),
            Some("application/octet-stream")
        );
        assert_eq!(reply.body, Bytes::from_static(b"hi"));
    }

    #[tokio::test]
    async fn binary_input_is_base64_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = script(dir.path(), "echo.sh", "exec cat");
        let reply = offer(cmd).call(&request(b"\xff\x00")).await.unwrap();
        let v: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(v["body"], json!({"base64": "/wA="}));
        // A JSON body shaped like the wrapper is wrapped too, so it cannot be misread.
        let reply = offer(script(dir.path(), "e2.sh", "exec cat"))
            .call(&request(b"{\"base64\":\"x\"}"))
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(v["body"], json!({"base64": "eyJiYXNlNjQiOiJ4In0="}));
    }

    #[tokio::test]
    async fn nonzero_exit_reports_stderr_tail() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = script(
            dir.path(),
            "fail.sh",
            "echo '{}'; echo 'model file missing' >&2; exit 3",
        );
        let err = offer(cmd).call(&request(b"{}")).await.unwrap_err();
        let UpstreamError::Other(msg) = err else {
            panic!("Other expected, got {err:?}");
        };
        assert!(msg.ends_with("exit status 3: model file missing"), "{msg}");
    }

    #[tokio::test]
    async fn not_json_and_missing_program_are_failures() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = script(dir.path(), "text.sh", "echo hello");
        let err = offer(cmd).call(&request(b"{}")).await.unwrap_err();
        assert!(err.to_string().contains("not one JSON document"), "{err}");

        let missing = dir.path().join("nope").to_string_lossy().into_owned();
        let err = offer(missing).call(&request(b"{}")).await.unwrap_err();
        assert!(matches!(err, UpstreamError::Unreachable(_)), "{err}");
    }

    #[tokio::test]
    async fn timeout_kills_the_child() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let cmd = script(
            dir.path(),
            "slow.sh",
            &format!("echo $$ > {}\nexec sleep 30", pid_file.display()),
        );
        let offer = offer(cmd);
        let req = request(b"{}");
        let mut call = Box::pin(offer.call(&req));
        // Wait (however loaded the machine) until the child runs, then time the call out as the
        // engine does: by dropping it.
        let pid = loop {
            tokio::select! {
                r = &mut call => panic!("finished early: {r:?}"),
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
            if let Ok(p) = std::fs::read_to_string(&pid_file)
                && p.ends_with('\n')
            {
                break p;
            }
        };
        let result = tokio::time::timeout(Duration::from_millis(200), &mut call).await;
        assert!(result.is_err(), "the call should have timed out");
        drop(call);
        let stat = format!("/proc/{}/stat", pid.trim());
        // Killed means gone, or a zombie until the runtime reaps it.
        let mut dead = false;
        for _ in 0..100 {
            match std::fs::read_to_string(&stat) {
                Err(_) => dead = true,
                Ok(s) => dead = s.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')),
            }
            if dead {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(dead, "child {} still running", pid.trim());
    }
}
