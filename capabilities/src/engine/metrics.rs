//! Prometheus text exposition of the engine's counters and gauges.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `edgecar_capability_calls_total` | counter | `capability`, `offer`, `outcome` = `success`, `client_error`, `server_error`, `timeout`, `unreachable`, `error`, `skipped` |
//! | `edgecar_capability_retries_total` | counter | `capability`, `offer` |
//! | `edgecar_capability_breaker_state` | gauge | `capability`, `offer`; 0 closed, 1 half-open, 2 open |
//! | `edgecar_capability_unavailable_total` | counter | `capability` |
//! | `edgecar_capability_cache_hits_total`, `_misses_total`, `_stale_total`, `_coalesced_total` | counter | `capability` |
//! | `edgecar_capability_cache_entries`, `edgecar_capability_cache_bytes` | gauge | `capability` |
//!
//! Cache gauges are read without running moka's pending maintenance, so they may lag by a few
//! operations.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use super::Registry;
use super::status::{breaker_state, counters};

/// Escapes a label value (`\`, `"`, newline).
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

pub(super) fn write(registry: &Registry, out: &mut String) {
    let caps = || registry.capabilities.values();

    header(
        out,
        "edgecar_capability_calls_total",
        "counter",
        "Capability offer attempts by outcome.",
    );
    for cap in caps() {
        for o in &cap.offers {
            let c = counters(o);
            for (outcome, n) in [
                ("success", c.success),
                ("client_error", c.client_error),
                ("server_error", c.server_error),
                ("timeout", c.timeout),
                ("unreachable", c.unreachable),
                ("error", c.error),
                ("skipped", c.skipped),
            ] {
                let _ = writeln!(
                    out,
                    "edgecar_capability_calls_total{{capability=\"{}\",offer=\"{}\",outcome=\"{outcome}\"}} {n}",
                    esc(&cap.name),
                    esc(&o.spec.name)
                );
            }
        }
    }

    header(
        out,
        "edgecar_capability_retries_total",
        "counter",
        "Capability offer retries (attempts after the first).",
    );
    for cap in caps() {
        for o in &cap.offers {
            let _ = writeln!(
                out,
                "edgecar_capability_retries_total{{capability=\"{}\",offer=\"{}\"}} {}",
                esc(&cap.name),
                esc(&o.spec.name),
                o.counters.retries.load(Ordering::Relaxed)
            );
        }
    }

    header(
        out,
        "edgecar_capability_breaker_state",
        "gauge",
        "Circuit breaker state per offer: 0 closed, 1 half-open, 2 open.",
    );
    for cap in caps() {
        for o in &cap.offers {
            if let Some(state) = breaker_state(o) {
                let _ = writeln!(
                    out,
                    "edgecar_capability_breaker_state{{capability=\"{}\",offer=\"{}\"}} {}",
                    esc(&cap.name),
                    esc(&o.spec.name),
                    state.gauge()
                );
            }
        }
    }

    header(
        out,
        "edgecar_capability_unavailable_total",
        "counter",
        "Capability calls no offer and no stale cache entry could answer.",
    );
    for cap in caps() {
        let _ = writeln!(
            out,
            "edgecar_capability_unavailable_total{{capability=\"{}\"}} {}",
            esc(&cap.name),
            cap.unavailable.load(Ordering::Relaxed)
        );
    }

    let cached: Vec<_> = caps()
        .filter_map(|c| c.cache.as_ref().map(|cache| (c, cache)))
        .collect();
    type Pick = fn(&crate::cache::ResultCache) -> u64;
    let series: [(&str, &str, &str, Pick); 6] = [
        (
            "edgecar_capability_cache_hits_total",
            "counter",
            "Capability calls served from a fresh cache entry.",
            |c| c.counters.hits.load(Ordering::Relaxed),
        ),
        (
            "edgecar_capability_cache_misses_total",
            "counter",
            "Capability cache misses that called the offers (coalesced misses count once).",
            |c| c.counters.misses.load(Ordering::Relaxed),
        ),
        (
            "edgecar_capability_cache_stale_total",
            "counter",
            "Stale cache entries served because every offer failed.",
            |c| c.counters.stale.load(Ordering::Relaxed),
        ),
        (
            "edgecar_capability_cache_coalesced_total",
            "counter",
            "Capability calls that shared an identical in-flight call.",
            |c| c.counters.coalesced.load(Ordering::Relaxed),
        ),
        (
            "edgecar_capability_cache_entries",
            "gauge",
            "Entries in the capability cache.",
            |c| c.entry_count(),
        ),
        (
            "edgecar_capability_cache_bytes",
            "gauge",
            "Bytes held by the capability cache.",
            |c| c.byte_count(),
        ),
    ];
    for (name, kind, help, pick) in series {
        header(out, name, kind, help);
        for (cap, cache) in &cached {
            let _ = writeln!(
                out,
                "{name}{{capability=\"{}\"}} {}",
                esc(&cap.name),
                pick(cache)
            );
        }
    }
}
