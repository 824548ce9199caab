//! The service unit as systemd reads it, and the daemon's side of `Type=notify`.
//!
//! Needs `systemd-analyze` (Debian's `systemd` package; scripts/test.sh installs it). The
//! packaged unit is also verified against an installed package in scripts/package-test.sh
//! (`systemd-analyze verify`, which needs the binary and the man page in place).

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use edgecar_tests::{Edgecar, edgecar_bin};

fn unit_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/edgecar.service")
}

/// `key=value` lines of the unit (no continuation lines are used in it).
fn unit_values(key: &str) -> Vec<String> {
    std::fs::read_to_string(unit_path())
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_unit_scores_2_0_or_better_in_systemd_analyze_security() {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit_path())
        .output()
        .expect("systemd-analyze not found: apt-get install systemd (scripts/test.sh does)");
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for edgecar.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no overall exposure in:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{text}");
}

#[test]
fn exec_start_pre_checks_exactly_what_exec_start_runs() {
    assert_eq!(
        unit_values("ExecStartPre"),
        ["/usr/bin/edgecar check-config $EDGECAR_ARGS"]
    );
    assert_eq!(
        unit_values("ExecStart"),
        ["/usr/bin/edgecar run $EDGECAR_ARGS"]
    );
    let env = unit_values("Environment");
    let args = env
        .iter()
        .find_map(|e| e.strip_prefix("EDGECAR_ARGS=\"")?.strip_suffix('"'))
        .expect("Environment=EDGECAR_ARGS=\"...\"");
    // The same arguments, pointed at the files the package installs there, pass check-config.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let state = tempfile::tempdir().unwrap();
    let args: Vec<String> = args
        .split_whitespace()
        .map(|a| match a {
            "/etc/edgecar/edgecar.yaml" => repo.join("configs/edgecar.yaml").display().to_string(),
            "/etc/edgecar/components" => repo.join("configs/components").display().to_string(),
            "/var/lib/edgecar" => state.path().display().to_string(),
            other => other.to_owned(),
        })
        .collect();
    let out = Command::new(edgecar_bin())
        .arg("check-config")
        .args(&args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("statestore (state.sled)") && stdout.contains("pubsub (pubsub.sled)"),
        "{stdout}"
    );
}

#[test]
fn ready_watchdog_and_stopping_reach_the_service_manager() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut ec = Edgecar::start_with_env(
        &dir.path().join("data"),
        &[],
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let mut buf = [0u8; 256];
    let mut recv = || {
        let n = sock.recv(&mut buf).expect("a notification within 10 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(recv(), "READY=1");
    // The API answers once READY=1 is sent.
    assert_eq!(ec.req("GET", "/v1.0/healthz", b"", &[]).status, 204);
    let t = Instant::now();
    let mut pings = 0;
    while pings < 3 {
        assert_eq!(recv(), "WATCHDOG=1");
        pings += 1;
    }
    // Every 100 ms (half of WATCHDOG_USEC): three pings well within a second.
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let status = ec.terminate();
    assert!(status.success());
    let mut seen = Vec::new();
    while let Ok(n) = sock.recv(&mut buf) {
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        if m == "STOPPING=1" {
            return;
        }
        seen.push(m);
    }
    panic!("no STOPPING=1 after SIGTERM; got {seen:?}");
}
