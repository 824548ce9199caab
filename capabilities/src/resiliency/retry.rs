//! Dapr retry policies (`constant`, `exponential`) and the backoff schedule they produce.
//!
//! The schedule is pure: [`Backoff::next_delay`] takes the current instant and a jitter sample, so
//! callers sleep with `tokio::time` and tests drive it with `tokio::time::pause()` and fixed jitter.
//! The exponential schedule follows `cenkalti/backoff` (what Dapr uses): each delay is the current
//! interval randomized by ±`randomizationFactor`, the interval grows by `multiplier` up to
//! `maxInterval`, and retrying stops once `maxElapsedTime` would be exceeded.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// A retry policy as written under `spec.policies.retries` (or inline in a capability offer).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "policy", rename_all = "camelCase")]
pub enum RetryPolicy {
    /// `policy: constant`: the same delay between every attempt.
    Constant(ConstantRetry),
    /// `policy: exponential`: growing, randomized delays.
    Exponential(ExponentialRetry),
}

/// Settings of `policy: constant`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConstantRetry {
    /// `duration`: delay between attempts. Default 5s (Dapr's).
    #[serde(serialize_with = "crate::duration::ser_go")]
    pub duration: Duration,
    /// `maxRetries`: retries after the first attempt; `None` is Dapr's `-1`, unlimited (the
    /// default).
    pub max_retries: Option<u64>,
    /// `matching`: which answers are retried.
    #[serde(skip_serializing_if = "Matching::is_empty")]
    pub matching: Matching,
}

/// Settings of `policy: exponential`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExponentialRetry {
    /// `initialInterval`: the first delay before randomization. Default 500ms.
    #[serde(serialize_with = "crate::duration::ser_go")]
    pub initial_interval: Duration,
    /// `multiplier`: growth of the interval after each retry. Default 1.5.
    pub multiplier: f64,
    /// `randomizationFactor`: each delay is drawn from interval × (1 ± factor). Default 0.5.
    pub randomization_factor: f64,
    /// `maxInterval`: cap on the interval. Default 60s.
    #[serde(serialize_with = "crate::duration::ser_go")]
    pub max_interval: Duration,
    /// `maxElapsedTime`: no retry starts once this much time has passed since the first attempt;
    /// `None` (written `0`) means no limit. Default 15m.
    #[serde(serialize_with = "crate::duration::ser_go_opt")]
    pub max_elapsed_time: Option<Duration>,
    /// `maxRetries`: as for constant; `None` (`-1`, the default) is unlimited.
    pub max_retries: Option<u64>,
    /// `matching`: which answers are retried.
    #[serde(skip_serializing_if = "Matching::is_empty")]
    pub matching: Matching,
}

/// `matching`: the statuses a retry policy retries. An empty list (Dapr's default) retries every
/// failure; a list retries the statuses it names and no others.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Matching {
    /// `httpStatusCodes`: HTTP statuses (100-599), e.g. `"429,500-599"`.
    #[serde(
        rename = "httpStatusCodes",
        skip_serializing_if = "StatusCodes::is_empty"
    )]
    pub http_status_codes: StatusCodes,
    /// `gRPCStatusCodes`: gRPC status codes (0-16), e.g. `"1-4,8-11,13,14"`.
    #[serde(
        rename = "gRPCStatusCodes",
        skip_serializing_if = "StatusCodes::is_empty"
    )]
    pub grpc_status_codes: StatusCodes,
}

impl Matching {
    /// Whether neither list is given.
    pub fn is_empty(&self) -> bool {
        self.http_status_codes.is_empty() && self.grpc_status_codes.is_empty()
    }
}

/// A list of status codes and inclusive ranges, as Dapr writes them: `"429,500-599"`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusCodes(Vec<(u16, u16)>);

impl StatusCodes {
    /// Reads `text`; every code must lie in `valid`. An empty text is an empty list.
    pub fn parse(text: &str, valid: std::ops::RangeInclusive<u16>) -> Result<Self, String> {
        let code = |s: &str| -> Result<u16, String> {
            let n: u16 = s
                .trim()
                .parse()
                .map_err(|_| format!("{s:?} is not a status code"))?;
            if valid.contains(&n) {
                Ok(n)
            } else {
                Err(format!("{n} is outside {}-{}", valid.start(), valid.end()))
            }
        };
        let mut ranges = Vec::new();
        for part in text.split(',').filter(|p| !p.trim().is_empty()) {
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (code(a)?, code(b)?),
                None => {
                    let c = code(part)?;
                    (c, c)
                }
            };
            if lo > hi {
                return Err(format!("range {lo}-{hi} runs backwards"));
            }
            ranges.push((lo, hi));
        }
        Ok(Self(ranges))
    }

    /// Whether no code is listed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `code` is listed.
    pub fn contains(&self, code: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&code))
    }
}

impl Serialize for StatusCodes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text: Vec<String> = self
            .0
            .iter()
            .map(|&(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            })
            .collect();
        s.serialize_str(&text.join(","))
    }
}

impl Default for ConstantRetry {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(5),
            max_retries: None,
            matching: Matching::default(),
        }
    }
}

impl Default for ExponentialRetry {
    fn default() -> Self {
        Self {
            initial_interval: Duration::from_millis(500),
            multiplier: 1.5,
            randomization_factor: 0.5,
            max_interval: Duration::from_secs(60),
            max_elapsed_time: Some(Duration::from_secs(15 * 60)),
            max_retries: None,
            matching: Matching::default(),
        }
    }
}

impl RetryPolicy {
    /// A fresh schedule for one operation whose first attempt started at `start`.
    pub fn backoff(&self, start: Instant) -> Backoff {
        let interval = match self {
            RetryPolicy::Constant(c) => c.duration,
            RetryPolicy::Exponential(e) => e.initial_interval,
        };
        Backoff {
            policy: self.clone(),
            start,
            retries: 0,
            interval,
        }
    }

    /// Which answers are retried (`matching`).
    pub fn matching(&self) -> &Matching {
        match self {
            RetryPolicy::Constant(c) => &c.matching,
            RetryPolicy::Exponential(e) => &e.matching,
        }
    }

    /// The `maxRetries` limit, `None` when unlimited.
    pub fn max_retries(&self) -> Option<u64> {
        match self {
            RetryPolicy::Constant(c) => c.max_retries,
            RetryPolicy::Exponential(e) => e.max_retries,
        }
    }
}

/// The retry schedule of one operation.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// The policy being followed.
    policy: RetryPolicy,
    /// When the first attempt started, for `maxElapsedTime`.
    start: Instant,
    /// Retries handed out so far, for `maxRetries`.
    retries: u64,
    /// The current (not yet randomized) interval of the exponential schedule.
    interval: Duration,
}

impl Backoff {
    /// How long to wait before the next retry, or `None` when the policy says to stop.
    ///
    /// `jitter` is a sample in `[0, 1)` ([`jitter`] gives a random one); it only matters for the
    /// exponential policy, where 0.5 yields the unrandomized interval.
    pub fn next_delay(&mut self, now: Instant, jitter: f64) -> Option<Duration> {
        if self
            .policy
            .max_retries()
            .is_some_and(|max| self.retries >= max)
        {
            return None;
        }
        let delay = match &self.policy {
            RetryPolicy::Constant(c) => c.duration,
            RetryPolicy::Exponential(e) => {
                let current = self.interval.as_secs_f64();
                let delta = e.randomization_factor * current;
                let low = current - delta;
                let high = current + delta;
                let jitter = jitter.clamp(0.0, 1.0);
                let delay = Duration::try_from_secs_f64((low + jitter * (high - low)).max(0.0))
                    .unwrap_or(e.max_interval);
                // Grow the interval for next time, capped.
                let grown = current * e.multiplier;
                self.interval = if grown >= e.max_interval.as_secs_f64() {
                    e.max_interval
                } else {
                    Duration::try_from_secs_f64(grown).unwrap_or(e.max_interval)
                };
                if let Some(max_elapsed) = e.max_elapsed_time {
                    let elapsed = now.saturating_duration_since(self.start);
                    if elapsed + delay > max_elapsed {
                        return None;
                    }
                }
                delay
            }
        };
        self.retries += 1;
        Some(delay)
    }

    /// Retries handed out so far.
    pub fn retries(&self) -> u64 {
        self.retries
    }
}

/// A random sample in `[0, 1)` for [`Backoff::next_delay`].
///
/// Drawn from the standard library's randomly keyed hasher, so no RNG crate is needed for the
/// little randomness a backoff wants.
pub fn jitter() -> f64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0x9e37_79b9_7f4a_7c15);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn constant_honours_max_retries() {
        let policy = RetryPolicy::Constant(ConstantRetry {
            duration: Duration::from_secs(1),
            max_retries: Some(2),
            matching: Matching::default(),
        });
        let now = Instant::now();
        let mut b = policy.backoff(now);
        assert_eq!(b.next_delay(now, 0.3), Some(Duration::from_secs(1)));
        assert_eq!(b.next_delay(now, 0.3), Some(Duration::from_secs(1)));
        assert_eq!(b.next_delay(now, 0.3), None);
        assert_eq!(b.retries(), 2);
    }

    #[test]
    fn constant_unlimited_keeps_going() {
        let policy = RetryPolicy::Constant(ConstantRetry::default());
        let now = Instant::now();
        let mut b = policy.backoff(now);
        for _ in 0..1000 {
            assert_eq!(b.next_delay(now, 0.0), Some(Duration::from_secs(5)));
        }
    }

    #[test]
    fn exponential_grows_caps_and_randomizes() {
        let policy = RetryPolicy::Exponential(ExponentialRetry {
            max_interval: Duration::from_secs(2),
            max_elapsed_time: None,
            ..ExponentialRetry::default()
        });
        let now = Instant::now();
        let mut b = policy.backoff(now);
        // jitter 0.5 is the unrandomized interval: 0.5, 0.75, 1.125, 1.6875, then capped at 2.
        let delays: Vec<u128> = (0..6)
            .map(|_| b.next_delay(now, 0.5).unwrap().as_millis())
            .collect();
        assert_eq!(delays, [500, 750, 1125, 1687, 2000, 2000]);

        let mut low = policy.backoff(now);
        let mut high = policy.backoff(now);
        assert_eq!(low.next_delay(now, 0.0), Some(Duration::from_millis(250)));
        assert_eq!(high.next_delay(now, 1.0), Some(Duration::from_millis(750)));
    }

    #[test]
    fn exponential_stops_after_max_elapsed_time() {
        let policy = RetryPolicy::Exponential(ExponentialRetry {
            initial_interval: Duration::from_secs(1),
            multiplier: 1.0,
            randomization_factor: 0.0,
            max_elapsed_time: Some(Duration::from_secs(10)),
            ..ExponentialRetry::default()
        });
        let start = Instant::now();
        let mut b = policy.backoff(start);
        assert_eq!(
            b.next_delay(start + Duration::from_secs(8), 0.9),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            b.next_delay(start + Duration::from_millis(9_500), 0.9),
            None
        );
    }

    #[test]
    fn jitter_is_in_range() {
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }
}
