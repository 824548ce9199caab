//! The engine's status snapshot: serializable types for the gateway's status page and API.

use std::sync::atomic::Ordering;

use serde::Serialize;
use tokio::time::Instant;

use super::{Capability, OfferRuntime, lock};
use crate::cache::CacheStats;
use crate::duration::format_go_duration;
use crate::resiliency::{BreakerState, Counts};

/// Every loaded capability.
#[derive(Debug, Clone, Serialize)]
pub struct EngineStatus {
    /// Sorted by name.
    pub capabilities: Vec<CapabilityStatus>,
}

/// One capability.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CapabilityStatus {
    /// Its name.
    pub name: String,
    /// `spec.description`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Offers in order of preference.
    pub offers: Vec<OfferStatus>,
    /// Cache statistics; `None` without `spec.cache`.
    pub cache: Option<CacheStats>,
    /// Calls for which no offer and no stale entry could answer.
    pub unavailable: u64,
}

/// How an offer is doing, from its breaker and its last attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum OfferHealth {
    /// Not called yet.
    Unknown,
    /// The last attempt succeeded (or got a 4xx) and the breaker is closed.
    Healthy,
    /// The last attempt failed; the breaker has not opened (yet).
    Failing,
    /// The breaker is half-open: a probe decides.
    Probing,
    /// The breaker is open: calls skip this offer.
    Down,
}

/// One offer.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OfferStatus {
    /// Its name.
    pub name: String,
    /// `http`, `invoke`, `process` or `builtin`.
    #[serde(rename = "type")]
    pub offer_type: &'static str,
    /// What it calls: URL without query, app id, program, builtin name.
    pub target: String,
    /// Timeout per attempt, Go spelling.
    pub timeout: String,
    /// Health.
    pub health: OfferHealth,
    /// Its breaker, if it has one.
    pub breaker: Option<BreakerStatus>,
    /// Attempt counters.
    pub counters: OfferCounters,
    /// The last failure's message, if the last attempt failed.
    pub last_error: Option<String>,
}

/// A breaker's state.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BreakerStatus {
    /// Closed, open or half-open.
    pub state: BreakerState,
    /// Counts of the current generation.
    pub counts: Counts,
    /// The trip expression.
    pub trip: String,
    /// How long it stays open, Go spelling.
    pub timeout: String,
}

/// Attempts of one offer by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OfferCounters {
    /// 2xx and 3xx replies.
    pub success: u64,
    /// 4xx replies (passed back to the caller).
    pub client_error: u64,
    /// 5xx replies.
    pub server_error: u64,
    /// Attempts that timed out.
    pub timeout: u64,
    /// Attempts that could not reach the offer.
    pub unreachable: u64,
    /// Other failures.
    pub error: u64,
    /// Turns skipped because the breaker was open.
    pub skipped: u64,
    /// Retries (attempts after the first of a call).
    pub retries: u64,
}

pub(super) async fn capability(cap: &Capability) -> CapabilityStatus {
    let cache = match &cap.cache {
        Some(c) => Some(c.stats(true).await),
        None => None,
    };
    CapabilityStatus {
        name: cap.name.to_string(),
        description: cap.manifest.spec.description.clone(),
        offers: cap.offers.iter().map(|o| offer(o)).collect(),
        cache,
        unavailable: cap.unavailable.load(Ordering::Relaxed),
    }
}

pub(super) fn counters(o: &OfferRuntime) -> OfferCounters {
    let c = &o.counters;
    OfferCounters {
        success: c.success.load(Ordering::Relaxed),
        client_error: c.client_error.load(Ordering::Relaxed),
        server_error: c.server_error.load(Ordering::Relaxed),
        timeout: c.timeout.load(Ordering::Relaxed),
        unreachable: c.unreachable.load(Ordering::Relaxed),
        error: c.error.load(Ordering::Relaxed),
        skipped: c.skipped.load(Ordering::Relaxed),
        retries: c.retries.load(Ordering::Relaxed),
    }
}

/// The breaker's state now, if the offer has a breaker.
pub(super) fn breaker_state(o: &OfferRuntime) -> Option<BreakerState> {
    o.breaker.as_ref().map(|b| lock(b).state(Instant::now()))
}

fn offer(o: &OfferRuntime) -> OfferStatus {
    let now = Instant::now();
    let breaker = o.breaker.as_ref().map(|b| {
        let mut b = lock(b);
        BreakerStatus {
            state: b.state(now),
            counts: b.counts(now),
            trip: b.policy().trip.to_string(),
            timeout: format_go_duration(b.policy().timeout),
        }
    });
    let last = lock(&o.last).clone();
    let health = match (breaker.as_ref().map(|b| b.state), &last) {
        (Some(BreakerState::Open), _) => OfferHealth::Down,
        (Some(BreakerState::HalfOpen), _) => OfferHealth::Probing,
        (_, None) => OfferHealth::Unknown,
        (_, Some(l)) if l.error.is_none() => OfferHealth::Healthy,
        (_, Some(_)) => OfferHealth::Failing,
    };
    OfferStatus {
        name: o.spec.name.clone(),
        offer_type: o.spec.target.type_name(),
        target: o.imp.target(),
        timeout: format_go_duration(o.spec.timeout),
        health,
        breaker,
        counters: counters(o),
        last_error: last.and_then(|l| l.error),
    }
}
