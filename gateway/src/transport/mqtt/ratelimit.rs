//! A token bucket: the per-device rate limit on incoming packets. Pure: time is passed in.
//!
//! A device over its rate is not disconnected; its connection is simply read no further until a
//! token is due, so TCP pushes back on the device and it cannot take the gateway's time from others.

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

#[cfg(test)]
mod tests {
    use super::*;

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
