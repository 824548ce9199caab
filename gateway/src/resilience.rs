//! Applying Dapr resiliency policies to the gateway's own calls: service invocation and calls to
//! components (state, publish, output bindings); subscription deliveries use the same primitives
//! in the pub/sub block.
//!
//! The policy model (Dapr's Resiliency YAML) and the pure state machines (retry backoff, circuit
//! breaker) live in `edgecar_capabilities::resiliency`, shared with the capability engine; this
//! module only drives them around one async call: a timeout per attempt, retries with the policy's
//! backoff, and one circuit breaker per target.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use edgecar_capabilities::Resiliency;
use edgecar_capabilities::resiliency::{
    BreakerPolicy, CircuitBreaker, Direction, Rejected, ResolvedPolicies, Ticket, jitter,
};
use tokio::time::Instant;

/// Why a resilient call stopped without an answer of its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Stopped {
    /// The last attempt ran past the policy's timeout.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The target's circuit breaker refused the call (no attempt was made).
    #[error("{0}")]
    BreakerOpen(Rejected),
}

/// One circuit breaker per target (app id, component name), created on first use.
#[derive(Default)]
pub struct Breakers {
    /// Breakers by target name.
    map: Mutex<HashMap<String, CircuitBreaker>>,
}

impl Breakers {
    fn acquire(&self, target: &str, policy: &BreakerPolicy) -> Result<Ticket, Rejected> {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(target.to_owned())
            .or_insert_with(|| CircuitBreaker::new(policy.clone(), now))
            .try_acquire(now)
    }

    fn record(&self, target: &str, ticket: Ticket, success: bool) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = map.get_mut(target) {
            b.record(ticket, Instant::now(), success);
        }
    }
}

/// Resiliency for the gateway's calls *to* components (Dapr's
/// `spec.targets.components.<name>.outbound`): state operations, publishes, output bindings, each
/// component with its own breaker.
#[derive(Default)]
pub struct ComponentCalls {
    /// Resiliency documents in force.
    docs: Vec<Resiliency>,
    /// One breaker per component name.
    breakers: Breakers,
}

impl ComponentCalls {
    /// Uses `docs` for every component call.
    pub fn new(docs: Vec<Resiliency>) -> Self {
        ComponentCalls {
            docs,
            breakers: Breakers::default(),
        }
    }

    /// Runs one call to `component` under its outbound policies (none: one plain attempt).
    pub async fn run<T, E, F, Fut>(
        &self,
        component: &str,
        attempt: F,
        failed: impl Fn(&Result<T, E>) -> bool,
    ) -> Result<Result<T, E>, Stopped>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let policies = first_policies(
            self.docs
                .iter()
                .map(|d| d.policies_for_component(component, Direction::Outbound)),
        );
        run(&policies, &self.breakers, component, attempt, failed).await
    }
}

/// The first set of policies that says anything (documents are consulted in load order).
pub fn first_policies(candidates: impl Iterator<Item = ResolvedPolicies>) -> ResolvedPolicies {
    candidates
        .into_iter()
        .find(|p| p.timeout.is_some() || p.retry.is_some() || p.circuit_breaker.is_some())
        .unwrap_or_default()
}

/// Runs `attempt` under `policies` for `target`.
///
/// `failed` says whether an attempt's result counts as a failure (for retries and the breaker),
/// so a caller can treat, say, an HTTP 503 reply as a failure while still getting that reply back
/// when retries run out. Returns the last attempt's result, or why there was none.
pub async fn run<T, E, F, Fut>(
    policies: &ResolvedPolicies,
    breakers: &Breakers,
    target: &str,
    mut attempt: F,
    failed: impl Fn(&Result<T, E>) -> bool,
) -> Result<Result<T, E>, Stopped>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = policies.retry.as_ref().map(|r| r.backoff(Instant::now()));
    loop {
        let ticket = match &policies.circuit_breaker {
            Some(p) => Some(breakers.acquire(target, p).map_err(Stopped::BreakerOpen)?),
            None => None,
        };
        let outcome = match policies.timeout {
            Some(t) => tokio::time::timeout(t, attempt())
                .await
                .map_err(|_| Stopped::Timeout(t)),
            None => Ok(attempt().await),
        };
        let is_failure = match &outcome {
            Ok(r) => failed(r),
            Err(_) => true,
        };
        if let Some(t) = ticket {
            breakers.record(target, t, !is_failure);
        }
        if !is_failure {
            return outcome;
        }
        match backoff
            .as_mut()
            .and_then(|b| b.next_delay(Instant::now(), jitter()))
        {
            Some(delay) => tokio::time::sleep(delay).await,
            None => return outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use edgecar_capabilities::parse_resiliency_str;

    use super::*;

    fn policies() -> ResolvedPolicies {
        let doc = "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata: {name: r}\nspec:\n  policies:\n    timeouts: {fast: 1s}\n    retries: {three: {policy: constant, duration: 100ms, maxRetries: 3}}\n    circuitBreakers: {cb: {maxRequests: 1, timeout: 30s, trip: consecutiveFailures >= 4}}\n  targets:\n    apps:\n      orders: {timeout: fast, retry: three, circuitBreaker: cb}\n";
        parse_resiliency_str(doc)
            .unwrap()
            .policies_for_app("orders")
    }

    #[tokio::test(start_paused = true)]
    async fn retries_then_trips_the_breaker() {
        let p = policies();
        let breakers = Breakers::default();
        let calls = AtomicU32::new(0);
        let r = run(
            &p,
            &breakers,
            "orders",
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>("down")
            },
            Result::is_err,
        )
        .await;
        assert_eq!(r, Ok(Err("down")));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            4,
            "one attempt and three retries"
        );
        // Four consecutive failures tripped the breaker: the next call costs nothing.
        let r = run(
            &p,
            &breakers,
            "orders",
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<(), &str>(())
            },
            Result::is_err,
        )
        .await;
        assert!(matches!(r, Err(Stopped::BreakerOpen(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_attempt_times_out_and_is_retried() {
        let p = policies();
        let calls = AtomicU32::new(0);
        let r = run(
            &p,
            &Breakers::default(),
            "orders",
            || async {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if n == 0 {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                Ok::<u32, ()>(n)
            },
            Result::is_err,
        )
        .await;
        assert_eq!(
            r,
            Ok(Ok(1)),
            "second attempt answers after the first timed out"
        );
    }
}
