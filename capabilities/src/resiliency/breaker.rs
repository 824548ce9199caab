//! Circuit breakers: Dapr's `circuitBreakers` policy and the closed / open / half-open state machine.
//!
//! The state machine follows `sony/gobreaker`, which Dapr uses: counts are kept per *generation*
//! (reset every `interval` while closed, and on every state change); a failure that makes the `trip`
//! expression true opens the breaker for `timeout`; then it lets `maxRequests` probes through
//! (half-open), and closes after that many consecutive successes, or re-opens on any failure.
//!
//! It is pure: every method takes `now`, nothing sleeps or spawns, so tests step through it with
//! plain instants or `tokio::time::pause()`.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// A circuit breaker policy as written under `spec.policies.circuitBreakers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BreakerPolicy {
    /// `maxRequests`: probes let through while half-open, and consecutive successes needed to
    /// close. Default 1.
    pub max_requests: u32,
    /// `interval`: while closed, counts are reset this often; zero (the default) never resets them.
    #[serde(serialize_with = "crate::duration::ser_go")]
    pub interval: Duration,
    /// `timeout`: how long the breaker stays open before it lets a probe through. Dapr's default
    /// is 60s.
    #[serde(serialize_with = "crate::duration::ser_go")]
    pub timeout: Duration,
    /// `trip`: when a failure opens the breaker. Dapr's default is `consecutiveFailures > 5`.
    pub trip: TripExpr,
}

impl Default for BreakerPolicy {
    /// Dapr's defaults: one probe, no count reset, open for 60s, trip after more than 5
    /// consecutive failures.
    fn default() -> Self {
        Self {
            max_requests: 1,
            interval: Duration::ZERO,
            timeout: Duration::from_secs(60),
            trip: TripExpr {
                counter: TripCounter::ConsecutiveFailures,
                op: TripOp::Greater,
                threshold: 5,
            },
        }
    }
}

impl BreakerPolicy {
    /// The breaker edgecar gives every capability offer that is not compiled in (`http`, `invoke`,
    /// `process`) when the manifest names none: trip at `consecutiveFailures >= 3`, stay open 30s,
    /// one probe. Quicker than Dapr's default, because a capability has other offers to fall back
    /// to and a dead cloud should stop costing a timeout per call soon.
    pub fn offer_default() -> Self {
        Self {
            max_requests: 1,
            interval: Duration::ZERO,
            timeout: Duration::from_secs(30),
            trip: TripExpr {
                counter: TripCounter::ConsecutiveFailures,
                op: TripOp::GreaterOrEqual,
                threshold: 3,
            },
        }
    }
}

/// The counter a trip expression looks at (the names Dapr's CEL expressions use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum TripCounter {
    /// `consecutiveFailures`: failures since the last success.
    ConsecutiveFailures,
    /// `totalFailures`: failures in the current generation.
    TotalFailures,
    /// `requests`: requests in the current generation.
    Requests,
}

/// The comparison of a trip expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TripOp {
    /// `>`
    #[serde(rename = ">")]
    Greater,
    /// `>=`
    #[serde(rename = ">=")]
    GreaterOrEqual,
}

/// A parsed `trip` expression: `<counter> > N` or `<counter> >= N`.
///
/// Dapr accepts any CEL expression here; edgecar supports this subset (which covers the documented
/// examples) and refuses the rest with [`TripError`] rather than guessing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct TripExpr {
    /// What is compared.
    pub counter: TripCounter,
    /// How.
    pub op: TripOp,
    /// Against what.
    pub threshold: u64,
}

/// Why a trip expression was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TripError {
    /// The expression is not of the supported form.
    #[error(
        "unsupported trip expression {0:?}: edgecar supports `<counter> > N` or `<counter> >= N` \
         with counter consecutiveFailures, totalFailures or requests (e.g. \"consecutiveFailures > 5\")"
    )]
    Unsupported(String),
}

impl TripExpr {
    /// Parses `consecutiveFailures > 5`, `consecutiveFailures >= 3`, `totalFailures > 10`,
    /// `requests >= 100` (spaces optional).
    pub fn parse(input: &str) -> Result<Self, TripError> {
        let unsupported = || TripError::Unsupported(input.to_owned());
        let s = input.trim();
        let name_len = s
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(s.len());
        let counter = match &s[..name_len] {
            "consecutiveFailures" => TripCounter::ConsecutiveFailures,
            "totalFailures" => TripCounter::TotalFailures,
            "requests" => TripCounter::Requests,
            _ => return Err(unsupported()),
        };
        let rest = s[name_len..].trim_start();
        let (op, rest) = if let Some(r) = rest.strip_prefix(">=") {
            (TripOp::GreaterOrEqual, r)
        } else if let Some(r) = rest.strip_prefix('>') {
            (TripOp::Greater, r)
        } else {
            return Err(unsupported());
        };
        let threshold = rest.trim().parse::<u64>().map_err(|_| unsupported())?;
        Ok(Self {
            counter,
            op,
            threshold,
        })
    }

    /// Whether `counts` satisfy the expression.
    pub fn is_tripped(&self, counts: &Counts) -> bool {
        let value = match self.counter {
            TripCounter::ConsecutiveFailures => counts.consecutive_failures,
            TripCounter::TotalFailures => counts.total_failures,
            TripCounter::Requests => counts.requests,
        };
        match self.op {
            TripOp::Greater => value > self.threshold,
            TripOp::GreaterOrEqual => value >= self.threshold,
        }
    }
}

impl fmt::Display for TripExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counter = match self.counter {
            TripCounter::ConsecutiveFailures => "consecutiveFailures",
            TripCounter::TotalFailures => "totalFailures",
            TripCounter::Requests => "requests",
        };
        let op = match self.op {
            TripOp::Greater => ">",
            TripOp::GreaterOrEqual => ">=",
        };
        write!(f, "{counter} {op} {}", self.threshold)
    }
}

impl From<TripExpr> for String {
    fn from(t: TripExpr) -> String {
        t.to_string()
    }
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    /// Calls flow; failures are counted.
    Closed,
    /// Calls are refused without being attempted, until the policy's timeout passes.
    Open,
    /// A limited number of probe calls are let through to test recovery.
    HalfOpen,
}

impl BreakerState {
    /// The value of the Prometheus state gauge: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

/// Request and outcome counts of the current generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Requests let through.
    pub requests: u64,
    /// Successes.
    pub total_successes: u64,
    /// Failures.
    pub total_failures: u64,
    /// Successes since the last failure.
    pub consecutive_successes: u64,
    /// Failures since the last success.
    pub consecutive_failures: u64,
}

/// Permission for one call, from [`CircuitBreaker::try_acquire`]; hand it back with
/// [`CircuitBreaker::record`] or [`CircuitBreaker::release`].
#[derive(Debug)]
#[must_use = "a ticket must be recorded or released, or a half-open breaker stays busy"]
pub struct Ticket {
    /// The generation the call started in; outcomes from an older generation are ignored.
    generation: u64,
}

/// The breaker refused the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// The breaker is open.
    #[error("circuit breaker open for another {}", crate::duration::format_go_duration(*.retry_in))]
    Open {
        /// Time until it lets a probe through.
        retry_in: Duration,
    },
    /// Half-open, and all of its `maxRequests` probes are in flight.
    #[error("circuit breaker half-open, probe in progress")]
    ProbeInFlight,
}

/// One circuit breaker.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    /// Its policy.
    policy: BreakerPolicy,
    /// Current state, as of the last call that looked at the clock.
    state: BreakerState,
    /// Counts of the current generation.
    counts: Counts,
    /// Bumped at every reset, so late outcomes of older calls are ignored.
    generation: u64,
    /// Closed: when the counts are reset (`None` when `interval` is zero). Open: when it turns
    /// half-open. Half-open: unused.
    expiry: Option<Instant>,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(policy: BreakerPolicy, now: Instant) -> Self {
        let mut breaker = Self {
            policy,
            state: BreakerState::Closed,
            counts: Counts::default(),
            generation: 0,
            expiry: None,
        };
        breaker.set_state(BreakerState::Closed, now);
        breaker
    }

    /// The policy.
    pub fn policy(&self) -> &BreakerPolicy {
        &self.policy
    }

    /// The state at `now` (an open breaker whose timeout passed is half-open).
    pub fn state(&mut self, now: Instant) -> BreakerState {
        self.advance(now);
        self.state
    }

    /// Counts of the current generation, at `now`.
    pub fn counts(&mut self, now: Instant) -> Counts {
        self.advance(now);
        self.counts
    }

    /// Asks to make one call at `now`.
    pub fn try_acquire(&mut self, now: Instant) -> Result<Ticket, Rejected> {
        self.advance(now);
        match self.state {
            BreakerState::Open => Err(Rejected::Open {
                retry_in: self
                    .expiry
                    .map_or(Duration::ZERO, |e| e.saturating_duration_since(now)),
            }),
            BreakerState::HalfOpen
                if self.counts.requests >= u64::from(self.policy.max_requests.max(1)) =>
            {
                Err(Rejected::ProbeInFlight)
            }
            _ => {
                self.counts.requests += 1;
                Ok(Ticket {
                    generation: self.generation,
                })
            }
        }
    }

    /// Records the outcome of the call `ticket` was issued for.
    pub fn record(&mut self, ticket: Ticket, now: Instant, success: bool) {
        self.advance(now);
        if ticket.generation != self.generation {
            return;
        }
        let c = &mut self.counts;
        if success {
            c.total_successes += 1;
            c.consecutive_successes += 1;
            c.consecutive_failures = 0;
            if self.state == BreakerState::HalfOpen
                && c.consecutive_successes >= u64::from(self.policy.max_requests.max(1))
            {
                self.set_state(BreakerState::Closed, now);
            }
        } else {
            c.total_failures += 1;
            c.consecutive_failures += 1;
            c.consecutive_successes = 0;
            match self.state {
                BreakerState::Closed if self.policy.trip.is_tripped(&self.counts) => {
                    self.set_state(BreakerState::Open, now);
                }
                BreakerState::HalfOpen => self.set_state(BreakerState::Open, now),
                _ => {}
            }
        }
    }

    /// Hands back a ticket whose call ended without an outcome (its caller went away), so a
    /// half-open breaker does not wait forever for a probe that will never report.
    pub fn release(&mut self, ticket: Ticket, now: Instant) {
        self.advance(now);
        if ticket.generation == self.generation {
            self.counts.requests = self.counts.requests.saturating_sub(1);
        }
    }

    /// Applies the time-driven transitions: count reset while closed, open → half-open.
    fn advance(&mut self, now: Instant) {
        match (self.state, self.expiry) {
            (BreakerState::Closed, Some(expiry)) if expiry <= now => {
                self.new_generation(now);
            }
            (BreakerState::Open, Some(expiry)) if expiry <= now => {
                self.set_state(BreakerState::HalfOpen, now);
            }
            _ => {}
        }
    }

    fn set_state(&mut self, state: BreakerState, now: Instant) {
        self.state = state;
        self.new_generation(now);
    }

    fn new_generation(&mut self, now: Instant) {
        self.generation += 1;
        self.counts = Counts::default();
        self.expiry = match self.state {
            BreakerState::Closed if !self.policy.interval.is_zero() => {
                Some(now + self.policy.interval)
            }
            BreakerState::Open => Some(now + self.policy.timeout),
            _ => None,
        };
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn policy(trip: &str) -> BreakerPolicy {
        BreakerPolicy {
            max_requests: 1,
            interval: Duration::ZERO,
            timeout: Duration::from_secs(30),
            trip: TripExpr::parse(trip).unwrap(),
        }
    }

    fn fail(b: &mut CircuitBreaker, now: Instant) {
        let t = b.try_acquire(now).unwrap();
        b.record(t, now, false);
    }

    #[test]
    fn trip_expressions() {
        let t = TripExpr::parse("consecutiveFailures > 5").unwrap();
        assert_eq!(t.to_string(), "consecutiveFailures > 5");
        let t = TripExpr::parse("consecutiveFailures>=3").unwrap();
        assert_eq!(t.op, TripOp::GreaterOrEqual);
        assert_eq!(t.threshold, 3);
        assert_eq!(
            TripExpr::parse("  totalFailures >= 10 ").unwrap().counter,
            TripCounter::TotalFailures
        );
        for bad in [
            "consecutiveFailures < 5",
            "consecutiveFailures > five",
            "failures > 5",
            "consecutiveFailures > 5 && requests > 10",
            "",
        ] {
            let err = TripExpr::parse(bad).unwrap_err();
            assert!(err.to_string().contains("edgecar supports"), "{bad}: {err}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_trip_then_probes_and_closes() {
        let start = Instant::now();
        let mut b = CircuitBreaker::new(policy("consecutiveFailures >= 3"), start);
        fail(&mut b, start);
        fail(&mut b, start);
        assert_eq!(b.state(start), BreakerState::Closed);
        fail(&mut b, start);
        assert_eq!(b.state(start), BreakerState::Open);
        assert!(matches!(
            b.try_acquire(start + Duration::from_secs(29)),
            Err(Rejected::Open { retry_in }) if retry_in == Duration::from_secs(1)
        ));

        tokio::time::advance(Duration::from_secs(30)).await;
        let now = Instant::now();
        assert_eq!(b.state(now), BreakerState::HalfOpen);
        let probe = b.try_acquire(now).unwrap();
        // Only maxRequests (1) probe at a time.
        assert_eq!(b.try_acquire(now).unwrap_err(), Rejected::ProbeInFlight);
        b.record(probe, now, true);
        assert_eq!(b.state(now), BreakerState::Closed);
        assert_eq!(b.counts(now), Counts::default());
    }

    #[test]
    fn failed_probe_reopens() {
        let start = Instant::now();
        let mut b = CircuitBreaker::new(policy("consecutiveFailures > 0"), start);
        fail(&mut b, start);
        let later = start + Duration::from_secs(31);
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        fail(&mut b, later);
        assert_eq!(b.state(later), BreakerState::Open);
        assert_eq!(
            b.state(later + Duration::from_secs(30)),
            BreakerState::HalfOpen
        );
    }

    #[test]
    fn success_resets_consecutive_failures() {
        let now = Instant::now();
        let mut b = CircuitBreaker::new(policy("consecutiveFailures > 2"), now);
        for _ in 0..10 {
            fail(&mut b, now);
            fail(&mut b, now);
            let t = b.try_acquire(now).unwrap();
            b.record(t, now, true);
        }
        assert_eq!(b.state(now), BreakerState::Closed);
        assert_eq!(b.counts(now).total_failures, 20);
    }

    #[test]
    fn interval_resets_counts_while_closed() {
        let now = Instant::now();
        let mut p = policy("totalFailures >= 3");
        p.interval = Duration::from_secs(10);
        let mut b = CircuitBreaker::new(p, now);
        fail(&mut b, now);
        fail(&mut b, now);
        let later = now + Duration::from_secs(10);
        fail(&mut b, later);
        assert_eq!(b.state(later), BreakerState::Closed);
        assert_eq!(b.counts(later).total_failures, 1);
    }

    #[test]
    fn released_probe_frees_the_slot_and_stale_outcomes_are_ignored() {
        let start = Instant::now();
        let mut b = CircuitBreaker::new(policy("consecutiveFailures > 0"), start);
        let old = b.try_acquire(start).unwrap();
        fail(&mut b, start);
        let later = start + Duration::from_secs(30);
        // The outcome of a call from before the trip must not close the half-open breaker.
        b.record(old, later, true);
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        let probe = b.try_acquire(later).unwrap();
        b.release(probe, later);
        let probe = b.try_acquire(later).unwrap();
        b.record(probe, later, true);
        assert_eq!(b.state(later), BreakerState::Closed);
    }
}
