//! Devices log back in quickly after a restart of edgecar: logins verified since boot are kept
//! (as HMACs under a per-boot key) in the runtime directory systemd gives the service, and
//! checked there before the slow PBKDF2 check.

use std::time::{Duration, Instant};

use edgecar_tests::Edgecar;
use edgecar_tests::mqtt::{RawMqtt, add_device};

fn login_time(port: u16, id: &str, pw: &str) -> (u8, Duration) {
    let t = Instant::now();
    let (_c, code) = RawMqtt::connect(port, id, pw, 30);
    (code, t.elapsed())
}

#[test]
fn logins_verified_before_a_restart_are_fast_after_it_and_wrong_passwords_still_fail() {
    let dir = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let run_dir = run.path().to_str().unwrap();
    let pw = add_device(dir.path(), "gauge-1");
    let mut ec = Edgecar::start_with_env(dir.path(), &[], &[("RUNTIME_DIRECTORY", run_dir)]);
    let (code, cold) = login_time(ec.mqtt_port, "gauge-1", &pw);
    assert_eq!(code, 0);
    let entries = std::fs::read_to_string(run.path().join("logins")).unwrap();
    assert!(entries.starts_with("gauge-1 "), "{entries}");
    assert!(
        !entries.contains(&pw),
        "the cache holds a password: {entries}"
    );
    assert!(ec.terminate().success());

    let ec = Edgecar::start_with_env(dir.path(), &[], &[("RUNTIME_DIRECTORY", run_dir)]);
    let (code, warm) = login_time(ec.mqtt_port, "gauge-1", &pw);
    assert_eq!(code, 0);
    // One HMAC instead of 100,000 PBKDF2 iterations: far below the cold login even on a busy
    // machine.
    assert!(
        warm * 3 < cold,
        "login after the restart took {warm:?}, the first {cold:?}"
    );
    let (code, _) = login_time(ec.mqtt_port, "gauge-1", "not-the-password");
    assert_eq!(
        code, 5,
        "a wrong password must still be refused (CONNACK 5)"
    );
    let (code, _) = login_time(ec.mqtt_port, "gauge-1", &pw);
    assert_eq!(code, 0);
}
