//! The wait between attempts at something that failed for a reason outside edgecar (an app not
//! up yet, a broker away, file descriptors run out): it doubles from a first wait up to a cap,
//! and starts again from the first wait after a success. Every reconnect and wait-for loop uses
//! this one; Dapr resiliency policies (`resilience.rs`) are the user's and separate.

use std::time::Duration;

/// Doubling waits, from `first` up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Waits from `first` (no more than `max`) doubling up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        let first = first.min(max);
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The wait before the next attempt; the one after it is twice as long, up to the cap.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = wait.saturating_mul(2).min(self.max);
        wait
    }

    /// After a success: the next wait is the first again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(b: &mut Backoff, n: usize) -> Vec<u128> {
        (0..n).map(|_| b.next_wait().as_millis()).collect()
    }

    #[test]
    fn waits_double_to_the_cap_and_start_over_after_a_success() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(4));
        assert_eq!(ms(&mut b, 6), [500, 1000, 2000, 4000, 4000, 4000]);
        b.reset();
        assert_eq!(ms(&mut b, 2), [500, 1000]);
    }

    #[test]
    fn the_first_wait_is_never_over_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_millis(100));
        assert_eq!(ms(&mut b, 2), [100, 100]);
    }
}
