//! The durable queue's bookkeeping, kept pure: which message is next, who holds a lease until
//! when, when a nacked message may go out again, how full the queue is.
//!
//! No I/O and no clock: every call that depends on time is handed `now`, so ordering, lease
//! expiry and redelivery are unit-tested with made-up instants. [`super::Queue`] wraps a `Book`
//! with the sled tree that holds the payloads.
//!
//! Three indexes make every operation O(log n) whatever the queue length: `entries` (every
//! message by sequence number, for bounds and lookups), `ready` (sequence numbers deliverable
//! now, in order: the FIFO) and `timers` (leases that will expire and nacked messages waiting
//! out a delay, by the instant they become deliverable again). What only a leased or delayed
//! message needs (its deadline) lives beside them in `held`, so that a message merely waiting
//! costs its 16-byte entry and its place in `ready` (about 100 bytes less per queued message
//! than with the deadline in every entry; docs/benchmarks.md).
//!
//! How long the oldest message has waited is kept the same way, without a time in every entry:
//! `stamps` holds a sparse, bounded list of (sequence number, append time) — at most one stamp
//! per interval, the interval starting at [`STAMP_EVERY_MS`]; when the list reaches
//! [`MAX_STAMPS`], every other stamp goes and the interval doubles — and the oldest message's
//! append time is read from the last stamp at or before it. That time is never later than the
//! message's own append, so the age shown is never too young; it is too old by less than the gap
//! between two kept stamps: a second, or about 1/256 of the backlog's age once a backlog has been
//! waiting for longer than [`MAX_STAMPS`] seconds.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// Appends closer together than this share a stamp (see the module doc).
pub const STAMP_EVERY_MS: u64 = 1_000;

/// Most stamps kept; at this many, every other one is dropped (the oldest is always kept).
pub const MAX_STAMPS: usize = 512;

/// The bounds of one queue. An append that would cross either is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most messages held (leased or not).
    pub max_messages: u64,
    /// Most payload bytes held.
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_messages: 100_000,
            max_bytes: 64 << 20,
        }
    }
}

/// Why an append was refused. Nothing is dropped to make room: the appender decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue holds as much as its limits allow.
    Full {
        /// Messages held now.
        messages: u64,
        /// Payload bytes held now.
        bytes: u64,
    },
    /// This one message is larger than the byte limit; it could never be accepted.
    TooLarge,
}

/// What a lease handed out: a message and which delivery attempt this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The message's sequence number (its position in the queue).
    pub seq: u64,
    /// 1 for the first delivery, counting up with every lease. Acks and nacks must quote it, so a
    /// consumer whose lease expired cannot settle a message someone else now holds.
    pub attempt: u32,
}

/// Why an ack, nack or extension was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stale {
    /// No such message (already acked, or never there).
    Unknown,
    /// The message is no longer leased under this attempt: the lease expired and it was (or can
    /// be) handed to someone else.
    LeaseLost,
}

/// A message the book holds. Kept small: a queue may hold a hundred thousand of them on a Pi.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Payload size, for the byte bound ([`Book::admit`] refuses messages of 4 GiB or more).
    size: u32,
    /// Deliveries so far.
    attempts: u32,
    /// Unix milliseconds after which the message is dropped instead of delivered; 0: never.
    expires_at_ms: u64,
}

/// A message out of `ready` for a while: leased, or waiting out a nack delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hold {
    /// When it becomes deliverable again (it is in `timers` under this instant).
    until: Instant,
    /// Leased (a consumer holds it) rather than delayed.
    leased: bool,
}

/// The bookkeeping of one queue.
#[derive(Debug, Default)]
pub struct Book {
    limits: Limits,
    /// Every message held, by sequence number.
    entries: BTreeMap<u64, Entry>,
    /// Messages deliverable now, in order: the FIFO.
    ready: BTreeSet<u64>,
    /// Messages leased or delayed (only those: a few, not the whole queue).
    held: HashMap<u64, Hold>,
    /// The same, by the instant they become deliverable again.
    timers: BTreeSet<(Instant, u64)>,
    /// (first sequence number appended at or after, Unix ms), in both orders at once: sparse
    /// append times for the age of the oldest message.
    stamps: VecDeque<(u64, u64)>,
    /// The stamp interval is `STAMP_EVERY_MS << stamp_shift`.
    stamp_shift: u32,
    bytes: u64,
    next_seq: u64,
}

impl Book {
    /// An empty book; sequence numbers start after `last_seq` (the highest already on disk).
    pub fn new(limits: Limits, last_seq: Option<u64>) -> Book {
        Book {
            limits,
            next_seq: last_seq.map_or(0, |s| s.saturating_add(1)),
            ..Book::default()
        }
    }

    /// Messages held (ready, delayed or leased).
    pub fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Whether no message is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Payload bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The limits this book enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Notes that the messages from `seq` on were appended at `at_ms` (Unix milliseconds). Call
    /// it once per append (or per record found on disk), in sequence order, after
    /// [`Book::push`]. Cheap: most calls change nothing.
    pub fn stamp(&mut self, seq: u64, at_ms: u64) {
        let every = STAMP_EVERY_MS << self.stamp_shift;
        let due = self.stamps.back().is_none_or(|&(last_seq, last_ms)| {
            seq > last_seq && at_ms >= last_ms.saturating_add(every)
        });
        if !due {
            return;
        }
        self.stamps.push_back((seq, at_ms));
        self.prune_stamps();
        if self.stamps.len() >= MAX_STAMPS {
            // Every other one goes, the oldest stays, and new ones come half as often: the gaps
            // (the error) stay even, about the backlog's age / 256.
            let mut i = 0;
            self.stamps.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            self.stamp_shift = (self.stamp_shift + 1).min(20);
        }
    }

    /// When the oldest message held (leased or not) was appended, in Unix milliseconds, at the
    /// latest; `None` when nothing is held or the oldest message came with no time (a record
    /// written before times were kept).
    pub fn oldest_appended_ms(&self) -> Option<u64> {
        let (&oldest, _) = self.entries.first_key_value()?;
        let after = self.stamps.partition_point(|&(seq, _)| seq <= oldest);
        after.checked_sub(1).map(|i| self.stamps[i].1)
    }

    /// Drops the stamps no held message needs: all but the last one at or before the oldest
    /// message (and, with nothing held, all but the newest, which spaces the next stamp).
    fn prune_stamps(&mut self) {
        let oldest = self.entries.first_key_value().map(|(&s, _)| s);
        while self.stamps.len() >= 2 {
            let next = self.stamps[1].0;
            if oldest.is_none_or(|o| next <= o) {
                self.stamps.pop_front();
            } else {
                break;
            }
        }
        // A backlog that drained needs fine stamps again.
        if self.stamps.len() < MAX_STAMPS / 4 {
            self.stamp_shift = self.stamp_shift.saturating_sub(1);
        }
    }

    /// Checks the bounds for a message of `size` bytes and, if it fits, assigns its sequence
    /// number. The caller writes the payload under that number, then calls [`Book::push`].
    pub fn admit(&mut self, size: u64) -> Result<u64, Refused> {
        if size > self.limits.max_bytes || size > u64::from(u32::MAX) {
            return Err(Refused::TooLarge);
        }
        if self.len() >= self.limits.max_messages || self.bytes + size > self.limits.max_bytes {
            return Err(Refused::Full {
                messages: self.len(),
                bytes: self.bytes,
            });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Records a message (appended now, or found on disk at start-up) as deliverable.
    pub fn push(&mut self, seq: u64, size: u64, expires_at_ms: Option<u64>) {
        let entry = Entry {
            size: u32::try_from(size).unwrap_or(u32::MAX),
            attempts: 0,
            expires_at_ms: expires_at_ms.unwrap_or(0),
        };
        if let Some(old) = self.entries.insert(seq, entry) {
            // Replacing is a caller bug, but keep the indexes consistent if it happens.
            self.bytes -= u64::from(old.size);
            self.unindex(seq);
        }
        self.bytes += u64::from(entry.size);
        self.ready.insert(seq);
        self.next_seq = self.next_seq.max(seq.saturating_add(1));
    }

    /// Moves every lease that has expired, and every delay that has passed, back to ready.
    fn promote(&mut self, now: Instant) {
        while let Some(&(at, seq)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, seq));
            self.held.remove(&seq);
            if self.entries.contains_key(&seq) {
                self.ready.insert(seq);
            }
        }
    }

    /// Leases up to `max` deliverable messages, oldest first, until `now + lease_for`.
    ///
    /// Returns the grants and the messages found expired on the way (no longer held by the book;
    /// the caller deletes their payloads).
    pub fn lease(
        &mut self,
        now: Instant,
        now_ms: u64,
        max: usize,
        lease_for: Duration,
    ) -> (Vec<Grant>, Vec<u64>) {
        self.promote(now);
        let until = now + lease_for;
        let mut grants = Vec::new();
        let mut expired = Vec::new();
        while grants.len() < max {
            let Some(seq) = self.ready.pop_first() else {
                break;
            };
            let Some(e) = self.entries.get_mut(&seq) else {
                continue;
            };
            if e.expires_at_ms != 0 && e.expires_at_ms <= now_ms {
                let size = e.size;
                self.entries.remove(&seq);
                self.bytes -= u64::from(size);
                expired.push(seq);
                continue;
            }
            e.attempts = e.attempts.saturating_add(1);
            let attempt = e.attempts;
            self.hold(seq, until, true);
            grants.push(Grant { seq, attempt });
        }
        if !expired.is_empty() {
            self.prune_stamps();
        }
        (grants, expired)
    }

    /// Checks that `grant` still holds its lease at `now`.
    fn holder(&self, grant: Grant, now: Instant) -> Result<(), Stale> {
        let e = self.entries.get(&grant.seq).ok_or(Stale::Unknown)?;
        match self.held.get(&grant.seq) {
            Some(h) if h.leased && e.attempts == grant.attempt && h.until > now => Ok(()),
            _ => Err(Stale::LeaseLost),
        }
    }

    /// Settles a delivered message: it leaves the queue. Returns its size.
    ///
    /// An ack after the lease expired is refused ([`Stale::LeaseLost`]) unless nobody has leased
    /// the message since: then it is still the same delivery, and accepting it saves a duplicate.
    pub fn ack(&mut self, grant: Grant) -> Result<u64, Stale> {
        let e = *self.entries.get(&grant.seq).ok_or(Stale::Unknown)?;
        // Every lease counts an attempt, so an unchanged count means nobody leased it since.
        if e.attempts != grant.attempt {
            return Err(Stale::LeaseLost);
        }
        self.entries.remove(&grant.seq);
        self.unindex(grant.seq);
        self.bytes -= u64::from(e.size);
        self.prune_stamps();
        Ok(u64::from(e.size))
    }

    /// Gives a leased message back: deliverable again after `delay` (at once for zero).
    pub fn nack(&mut self, grant: Grant, now: Instant, delay: Duration) -> Result<(), Stale> {
        self.holder(grant, now)?;
        self.unindex(grant.seq);
        if delay.is_zero() {
            self.ready.insert(grant.seq);
        } else {
            self.hold(grant.seq, now + delay, false);
        }
        Ok(())
    }

    /// Extends a lease to `now + lease_for`, for a consumer still working on the message.
    pub fn extend(&mut self, grant: Grant, now: Instant, lease_for: Duration) -> Result<(), Stale> {
        self.holder(grant, now)?;
        self.unindex(grant.seq);
        self.hold(grant.seq, now + lease_for, true);
        Ok(())
    }

    /// The next instant at which a lease expires or a delay ends, if any: when a consumer with
    /// nothing to do should look again.
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Whether a lease taken at `now` would hand out anything (before checking expiry).
    pub fn has_ready(&self, now: Instant) -> bool {
        !self.ready.is_empty() || self.next_wakeup().is_some_and(|at| at <= now)
    }

    /// Takes a message out of `ready`, or out of `held` and `timers`, wherever it is.
    fn unindex(&mut self, seq: u64) {
        if !self.ready.remove(&seq)
            && let Some(h) = self.held.remove(&seq)
        {
            self.timers.remove(&(h.until, seq));
        }
    }

    /// Holds a message (out of `ready`) until `until`.
    fn hold(&mut self, seq: u64, until: Instant, leased: bool) {
        self.held.insert(seq, Hold { until, leased });
        self.timers.insert((until, seq));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(30);

    fn book(max_messages: u64, max_bytes: u64) -> Book {
        Book::new(
            Limits {
                max_messages,
                max_bytes,
            },
            None,
        )
    }

    fn append(b: &mut Book, size: u64) -> u64 {
        let seq = b.admit(size).unwrap();
        b.push(seq, size, None);
        seq
    }

    fn seqs(grants: &[Grant]) -> Vec<u64> {
        grants.iter().map(|g| g.seq).collect()
    }

    #[test]
    fn leases_hand_out_messages_in_append_order() {
        let mut b = book(100, 1000);
        for _ in 0..5 {
            append(&mut b, 1);
        }
        let t = Instant::now();
        let (g, _) = b.lease(t, 0, 2, LEASE);
        assert_eq!(seqs(&g), [0, 1]);
        let (g, _) = b.lease(t, 0, 10, LEASE);
        assert_eq!(seqs(&g), [2, 3, 4]);
        assert!(b.lease(t, 0, 10, LEASE).0.is_empty(), "all are leased");
        assert_eq!(b.len(), 5, "leased messages are still held");
    }

    #[test]
    fn ack_removes_and_frees_room() {
        let mut b = book(2, 1000);
        append(&mut b, 10);
        append(&mut b, 20);
        assert_eq!(
            b.admit(1),
            Err(Refused::Full {
                messages: 2,
                bytes: 30
            })
        );
        let t = Instant::now();
        let (g, _) = b.lease(t, 0, 1, LEASE);
        assert_eq!(b.ack(g[0]), Ok(10));
        assert_eq!((b.len(), b.bytes()), (1, 20));
        assert_eq!(b.admit(1), Ok(2), "sequence numbers never repeat");
        assert_eq!(b.ack(g[0]), Err(Stale::Unknown), "a second ack");
    }

    #[test]
    fn byte_bound_and_oversized_messages_are_refused() {
        let mut b = book(100, 100);
        append(&mut b, 60);
        assert_eq!(
            b.admit(50),
            Err(Refused::Full {
                messages: 1,
                bytes: 60
            })
        );
        assert_eq!(b.admit(101), Err(Refused::TooLarge));
        assert_eq!(b.admit(40), Ok(1));
    }

    #[test]
    fn an_expired_lease_makes_the_message_deliverable_again_first() {
        let mut b = book(100, 1000);
        for _ in 0..3 {
            append(&mut b, 1);
        }
        let t0 = Instant::now();
        let (first, _) = b.lease(t0, 0, 1, Duration::from_secs(10));
        assert_eq!(first, [Grant { seq: 0, attempt: 1 }]);
        let (g, _) = b.lease(t0, 0, 1, LEASE);
        assert_eq!(seqs(&g), [1]);
        assert_eq!(b.next_wakeup(), Some(t0 + Duration::from_secs(10)));

        let t1 = t0 + Duration::from_secs(10);
        // The expired message goes out again before the newer one: per-queue FIFO.
        let (g, _) = b.lease(t1, 0, 2, LEASE);
        assert_eq!(
            g,
            [Grant { seq: 0, attempt: 2 }, Grant { seq: 2, attempt: 1 }]
        );
        // The first consumer's lease is gone: its nack is refused, its ack too.
        assert_eq!(b.nack(first[0], t1, Duration::ZERO), Err(Stale::LeaseLost));
        assert_eq!(b.ack(first[0]), Err(Stale::LeaseLost));
        assert_eq!(b.ack(g[0]), Ok(1));
    }

    #[test]
    fn a_late_ack_is_accepted_while_nobody_else_holds_the_message() {
        let mut b = book(100, 1000);
        append(&mut b, 1);
        let t0 = Instant::now();
        let (g, _) = b.lease(t0, 0, 1, Duration::from_secs(1));
        // The lease ran out long ago, but nobody else leased the message since.
        assert_eq!(b.ack(g[0]), Ok(1));
        assert!(b.is_empty());
    }

    #[test]
    fn nack_with_delay_holds_the_message_back_then_redelivers_with_a_higher_attempt() {
        let mut b = book(100, 1000);
        append(&mut b, 1);
        append(&mut b, 1);
        let t0 = Instant::now();
        let (g, _) = b.lease(t0, 0, 1, LEASE);
        b.nack(g[0], t0, Duration::from_secs(5)).unwrap();
        let (g2, _) = b.lease(t0, 0, 5, LEASE);
        assert_eq!(seqs(&g2), [1], "message 0 waits out its delay");
        assert!(!b.has_ready(t0));
        assert_eq!(b.next_wakeup(), Some(t0 + Duration::from_secs(5)));
        let t1 = t0 + Duration::from_secs(5);
        assert!(b.has_ready(t1));
        let (g3, _) = b.lease(t1, 0, 5, LEASE);
        assert_eq!(g3, [Grant { seq: 0, attempt: 2 }]);
        // A zero-delay nack is deliverable at once.
        b.nack(g3[0], t1, Duration::ZERO).unwrap();
        assert_eq!(b.lease(t1, 0, 5, LEASE).0, [Grant { seq: 0, attempt: 3 }]);
    }

    #[test]
    fn extend_keeps_a_slow_consumer_s_lease() {
        let mut b = book(100, 1000);
        append(&mut b, 1);
        let t0 = Instant::now();
        let (g, _) = b.lease(t0, 0, 1, Duration::from_secs(10));
        let t1 = t0 + Duration::from_secs(9);
        b.extend(g[0], t1, Duration::from_secs(10)).unwrap();
        let t2 = t0 + Duration::from_secs(15);
        assert!(b.lease(t2, 0, 1, LEASE).0.is_empty(), "still leased");
        let t3 = t0 + Duration::from_secs(19);
        assert_eq!(b.lease(t3, 0, 1, LEASE).0[0].attempt, 2);
        assert_eq!(b.extend(g[0], t3, LEASE), Err(Stale::LeaseLost));
    }

    #[test]
    fn expired_messages_are_dropped_not_delivered() {
        let mut b = book(100, 1000);
        let s0 = b.admit(7).unwrap();
        b.push(s0, 7, Some(1_000));
        let s1 = b.admit(3).unwrap();
        b.push(s1, 3, Some(5_000));
        let (g, expired) = b.lease(Instant::now(), 2_000, 10, LEASE);
        assert_eq!(seqs(&g), [s1]);
        assert_eq!(expired, [s0]);
        assert_eq!((b.len(), b.bytes()), (1, 3));
    }

    #[test]
    fn a_reloaded_book_continues_numbering_after_the_last_message_on_disk() {
        let mut b = Book::new(Limits::default(), Some(41));
        b.push(40, 1, None);
        b.push(41, 1, None);
        assert_eq!(b.admit(1), Ok(42));
        let (g, _) = b.lease(Instant::now(), 0, 10, LEASE);
        assert_eq!(seqs(&g), [40, 41]);
    }

    #[test]
    fn the_oldest_message_s_age_is_read_from_sparse_stamps_and_never_too_young() {
        let mut b = book(100_000, 1 << 30);
        assert_eq!(b.oldest_appended_ms(), None, "nothing held");
        // Appends every 100 ms from t = 10 s: a stamp at most once a second.
        for i in 0..30u64 {
            let seq = append(&mut b, 1);
            b.stamp(seq, 10_000 + i * 100);
        }
        assert_eq!(b.stamps.len(), 3);
        assert_eq!(b.oldest_appended_ms(), Some(10_000));
        let t = Instant::now();
        // Settle the first 15 (appended 10.0 s .. 11.4 s): the oldest left was appended at
        // 11.5 s and is dated by the stamp at 11.0 s, half a second early.
        let (g, _) = b.lease(t, 0, 15, LEASE);
        for grant in g {
            b.ack(grant).unwrap();
        }
        assert_eq!(b.oldest_appended_ms(), Some(11_000));
        assert_eq!(b.stamps.len(), 2, "the stamp nothing needs is gone");
        let (g, _) = b.lease(t, 0, 100, LEASE);
        for grant in g {
            b.ack(grant).unwrap();
        }
        assert_eq!(b.oldest_appended_ms(), None);
        assert_eq!(b.stamps.len(), 1, "the newest stays, to space the next");
        let seq = append(&mut b, 1);
        b.stamp(seq, 12_950);
        assert_eq!(b.oldest_appended_ms(), Some(12_000), "within a second");
        let seq = append(&mut b, 1);
        b.stamp(seq, 20_000);
        assert_eq!(b.oldest_appended_ms(), Some(12_000));
    }

    #[test]
    fn stamps_stay_bounded_for_a_long_backlog_and_still_date_it_conservatively() {
        let mut b = book(1_000_000, 1 << 30);
        // A message a second for ten hours, nobody consuming.
        let mut appended = Vec::new();
        for i in 0..36_000u64 {
            let seq = append(&mut b, 1);
            let at = 1_000_000 + i * 1_000 + 17;
            b.stamp(seq, at);
            appended.push(at);
        }
        assert!(b.stamps.len() < MAX_STAMPS, "{}", b.stamps.len());
        assert_eq!(b.oldest_appended_ms(), Some(appended[0]));
        // Consume most of it: the oldest left is dated at or before its append, and close to it.
        let (g, _) = b.lease(Instant::now(), 0, 30_000, LEASE);
        for grant in g {
            b.ack(grant).unwrap();
        }
        let dated = b.oldest_appended_ms().unwrap();
        let real = appended[30_000];
        let backlog_age = appended[35_999] - appended[0];
        assert!(dated <= real, "{dated} > {real}");
        assert!(
            real - dated <= backlog_age / 128,
            "dated {} s early",
            (real - dated) / 1000
        );
    }

    #[test]
    fn a_message_with_no_time_makes_the_age_unknown_until_it_leaves() {
        let mut b = Book::new(Limits::default(), Some(1));
        // Found on disk in a record without a time.
        b.push(0, 1, None);
        b.push(1, 1, None);
        let seq = append(&mut b, 1);
        b.stamp(seq, 5_000);
        assert_eq!(b.oldest_appended_ms(), None);
        let (g, _) = b.lease(Instant::now(), 0, 2, LEASE);
        for grant in g {
            b.ack(grant).unwrap();
        }
        assert_eq!(b.oldest_appended_ms(), Some(5_000));
    }
}
