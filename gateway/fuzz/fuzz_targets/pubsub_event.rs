//! Pub/sub decoders of what apps and brokers send: an app's `GET /dapr/subscribe` answer
//! (programmatic subscriptions, routing rules in the CEL subset), events as they arrive for
//! delivery (CloudEvents, raw payloads, expiry), and the envelope edgecar writes by hand for each
//! publish, which must always be valid JSON.
//!
//! Input: fields separated by NUL: the subscribe answer, the event, a rule expression, a content
//! type, and the published data (the rest).
#![no_main]

use edgecar::blocks::pubsub::cloudevent::{self, Attributes};
use edgecar::blocks::pubsub::rules::Expr;
use edgecar::blocks::pubsub::subscription;
use libfuzzer_sys::fuzz_target;

const NOW_MS: u64 = 1_780_000_000_000;

/// Whether `b` is JSON by the grammar. Not `serde_json::Value`: it refuses numbers beyond `f64`
/// (`1e400`), which are valid JSON and which edgecar passes through verbatim, as Dapr does.
fn is_json(b: &[u8]) -> bool {
    serde_json::from_slice::<&serde_json::value::RawValue>(b).is_ok()
}

fuzz_target!(|data: &[u8]| {
    let f = edgecar_fuzz::fields(data, 0, 5);
    let event = f[1];
    let parsed: Option<serde_json::Value> = serde_json::from_slice(event).ok();

    // The app's subscription list as an HTTP app and as a gRPC app hands it over.
    let (mut subs, _errors) = subscription::parse_programmatic(f[0], false);
    subs.extend(subscription::parse_programmatic(f[0], true).0);
    for sub in &subs {
        let _ = sub.info();
        let _ = sub.raw_payload();
        if let Some(ev) = &parsed {
            let _ = sub.route(ev);
        }
    }

    if let Ok(rule) = std::str::from_utf8(f[2])
        && let Ok(expr) = Expr::parse(rule)
        && let Some(ev) = &parsed
    {
        let _ = expr.matches(ev);
    }

    if let Ok(mut ce) = cloudevent::from_cloudevent(event, "t", "pubsub", "00-tp", "ts", NOW_MS) {
        cloudevent::apply_ttl(&mut ce, 60, NOW_MS);
        let bytes = cloudevent::to_bytes(&ce);
        assert!(is_json(&bytes), "a CloudEvent edgecar wrote is not JSON");
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            let _ = cloudevent::has_expired(&v, NOW_MS);
        }
    }
    if let Some(ev) = &parsed {
        let _ = cloudevent::has_expired(ev, NOW_MS);
    }
    let raw = cloudevent::from_raw_payload(event, "t", "pubsub");
    assert!(
        is_json(&cloudevent::to_bytes(&raw)),
        "a raw-payload envelope edgecar wrote is not JSON"
    );

    let content_type = String::from_utf8_lossy(f[3]);
    let text = String::from_utf8_lossy(f[2]);
    let attrs = Attributes {
        id: "",
        source: &text,
        event_type: "",
        data_content_type: &content_type,
        topic: &text,
        pubsub: "pubsub",
        traceparent: "",
        tracestate: &text,
        subject: Some(&text),
        expires_at_secs: Some(u64::from(f[4].first().copied().unwrap_or(0)) << 40),
    };
    let env = cloudevent::new_envelope(&attrs, f[4], NOW_MS);
    assert!(
        is_json(&env),
        "new_envelope wrote invalid JSON: {}",
        String::from_utf8_lossy(&env)
    );
});
