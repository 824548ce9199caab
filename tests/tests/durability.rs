//! An acknowledged write survives `kill -9`: the real daemon is killed mid-load and every key it
//! answered 2xx for is read back after a restart on the same state directory.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgecar_tests::{Edgecar, eventually, try_http};

#[test]
fn acknowledged_saves_survive_kill_9_mid_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut ec = Edgecar::start(dir.path(), &[]);
    let port = ec.port;
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let acked = acked.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w{w}-{i}");
                    let value = format!("\"value {w}/{i} {}\"", "x".repeat((i % 50) as usize));
                    let body = format!("[{{\"key\":\"{key}\",\"value\":{value}}}]");
                    // After the kill, connections fail: those writes were never acknowledged.
                    match try_http(port, "POST", "/v1.0/state/statestore", body.as_bytes(), &[]) {
                        Ok(r) if r.status == 204 => acked.lock().unwrap().push((key, value)),
                        Ok(r) => panic!("unexpected status {} {}", r.status, r.text()),
                        Err(_) => return,
                    }
                    i += 1;
                }
            })
        })
        .collect();
    // Let a good number of writes through, then kill without warning while writes are in flight.
    eventually(Duration::from_secs(60), "300 acknowledged writes", || {
        (acked.lock().unwrap().len() >= 300).then_some(())
    });
    ec.kill9();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 300);

    let ec = Edgecar::start(dir.path(), &[]);
    let mut lost = Vec::new();
    for (key, value) in &acked {
        let r = ec.req("GET", &format!("/v1.0/state/statestore/{key}"), b"", &[]);
        if r.status != 200 || r.text() != *value {
            lost.push((key.clone(), r.status));
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
}
