//! The per-device rate limit on incoming messages, a token bucket per device. Pure: time is
//! passed in.
//!
//! A device over its rate is not disconnected; its connection is simply read no further until a
//! token is due, so TCP pushes back on the device and it cannot take the gateway's time from others.
//! [`Budgets`] holds one bucket per device, shared by every transport (MQTT, QUIC): one budget per
//! device, whatever carries its messages.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Tokens refill at `rate` per second up to `burst`; each packet takes one.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens per second.
    rate: f64,
    /// Most tokens held.
    burst: f64,
    /// Tokens now (may be fractional).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(rate.max(1)),
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }

    /// Whether the bucket has refilled to its burst by `now` (forgetting it changes nothing).
    fn full(&self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + dt * self.rate >= self.burst
    }

    /// Takes a token, or says when the next one is due.
    pub fn take(&mut self, now: Instant) -> Result<(), Instant> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / self.rate;
            Err(now + Duration::from_secs_f64(wait.max(0.0005)))
        }
    }
}

/// One token bucket per device, shared by the transports.
#[derive(Debug)]
pub struct Budgets {
    /// Tokens per second.
    rate: u32,
    /// Bucket size.
    burst: u32,
    /// Buckets of devices that sent something lately. A full bucket is the same as none, so
    /// full ones are dropped when the table has grown, which keeps it to the devices that are
    /// busy now.
    buckets: Mutex<HashMap<String, TokenBucket>>,
    /// Table size at which full buckets are dropped next.
    prune_at: Mutex<usize>,
}

/// Buckets held before the first sweep for full ones.
const PRUNE_FIRST: usize = 1024;

impl Budgets {
    /// `rate` messages per second and bursts of `burst`, for every device.
    pub fn new(rate: u32, burst: u32) -> Self {
        Budgets {
            rate,
            burst,
            buckets: Mutex::default(),
            prune_at: Mutex::new(PRUNE_FIRST),
        }
    }

    /// Takes a token for `device`, or says when the next is due.
    pub fn take(&self, device: &str, now: Instant) -> Result<(), Instant> {
        let mut b = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let r = match b.get_mut(device) {
            Some(bucket) => bucket.take(now),
            None => {
                let mut bucket = TokenBucket::new(self.rate, self.burst, now);
                let r = bucket.take(now);
                b.insert(device.to_owned(), bucket);
                r
            }
        };
        let mut at = self.prune_at.lock().unwrap_or_else(PoisonError::into_inner);
        if b.len() >= *at {
            b.retain(|_, bucket| !bucket.full(now));
            *at = (b.len() * 2).max(PRUNE_FIRST);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_budget_per_device_and_full_buckets_are_forgotten() {
        let t0 = Instant::now();
        let b = Budgets::new(10, 2);
        assert!(b.take("a", t0).is_ok());
        assert!(b.take("a", t0).is_ok());
        assert!(b.take("a", t0).is_err(), "a's burst is spent");
        assert!(b.take("b", t0).is_ok(), "b has its own budget");
        for i in 0..PRUNE_FIRST {
            let _ = b.take(&format!("d{i}"), t0);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        let _ = b.take("late", Instant::now());
        // Every bucket that refilled is gone; the table does not grow with every device seen.
        for i in 0..PRUNE_FIRST {
            let _ = b.take(&format!("e{i}"), Instant::now());
        }
        assert!(b.buckets.lock().unwrap().len() <= PRUNE_FIRST + 2);
    }

    #[tokio::test(start_paused = true)]
    async fn bursts_then_steady_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 3, t0);
        for _ in 0..3 {
            assert!(b.take(t0).is_ok());
        }
        let due = b.take(t0).unwrap_err();
        assert_eq!(due.duration_since(t0).as_millis(), 100);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(b.take(Instant::now()).is_ok());
        assert!(b.take(Instant::now()).is_err());
        // A long silence refills to the burst, not beyond.
        tokio::time::advance(Duration::from_secs(60)).await;
        let now = Instant::now();
        assert_eq!((0..10).filter(|_| b.take(now).is_ok()).count(), 3);
    }
}
