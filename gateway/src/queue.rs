//! The durable queue: one mechanism, on the gateway's sled database, for everything that must
//! wait for a consumer — local pub/sub, device outboxes ([`crate::outbox`]), the cloud outbox next.
//!
//! - **Append** writes the message under the next sequence number and returns only once a group
//!   commit ([`Storage::sync`]) has put it on disk: an acknowledged append survives `kill -9`.
//! - **Lease / ack / nack**: a consumer leases the oldest deliverable messages for a lease time;
//!   `ack` deletes one, `nack` (or letting the lease run out) makes it deliverable again, before
//!   newer messages (per-queue FIFO), with its delivery-attempt count raised.
//! - **Bounds**: each queue holds at most [`Limits::max_messages`] messages and
//!   [`Limits::max_bytes`] payload bytes. **When full, an append is refused** with
//!   [`QueueError::Full`]: the producer gets the error and decides; nothing already queued is
//!   dropped to make room, and nothing is dropped silently.
//! - **Expiry**: a message may carry an expiry time; once past it is deleted instead of leased.
//! - **Restart**: leases live in memory only, so after a restart (or a crash) every message not
//!   acked is deliverable again: delivery is at-least-once.
//!
//! The ordering, lease and bound bookkeeping is the pure [`book::Book`]; how messages lie in the
//! sled tree (`queue/<name>`, one record per append, a batch append's messages in one record) is
//! [`record`]; this module puts them together and adds waiting for work.

pub mod book;
pub mod record;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::warn;

use crate::clock::unix_ms;
use crate::storage::Storage;
use book::{Book, Refused, Stale};
pub use book::{Grant, Limits};
use record::Groups;

/// Why a queue operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The queue is at its bound; the message was not appended.
    #[error(
        "queue {queue:?} is full ({messages} messages, {bytes} bytes held; limits {max_messages} messages, {max_bytes} bytes)"
    )]
    Full {
        /// The queue's name.
        queue: String,
        /// Messages held.
        messages: u64,
        /// Payload bytes held.
        bytes: u64,
        /// The message bound.
        max_messages: u64,
        /// The byte bound.
        max_bytes: u64,
    },
    /// The message alone is larger than the queue's byte bound.
    #[error("a message of {size} bytes can never fit queue {queue:?} (limit {max_bytes} bytes)")]
    TooLarge {
        /// The queue's name.
        queue: String,
        /// The message's size.
        size: u64,
        /// The byte bound.
        max_bytes: u64,
    },
    /// The message is not leased under this grant any more (already acked, or the lease
    /// expired and it went to another delivery).
    #[error("message {seq} of queue {queue:?} is no longer leased by this consumer")]
    LeaseLost {
        /// The queue's name.
        queue: String,
        /// The message's sequence number.
        seq: u64,
    },
    /// The disk is full: nothing was appended (see `storage::DiskGuard`).
    #[error("queue {queue:?}: {message}")]
    DiskFull {
        /// The queue's name.
        queue: String,
        /// What the disk guard said.
        message: String,
    },
    /// The database failed.
    #[error("queue {queue:?}: {message}")]
    Storage {
        /// The queue's name.
        queue: String,
        /// What failed.
        message: String,
    },
}

/// A leased message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leased {
    /// What to quote when acking, nacking or extending.
    pub grant: Grant,
    /// The message as appended.
    pub payload: Bytes,
}

/// How full a queue is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Messages held (waiting or leased).
    pub messages: u64,
    /// Payload bytes held.
    pub bytes: u64,
    /// When the oldest message held was appended (Unix milliseconds), at the latest (up to a
    /// second early, or about 1/256 of its age for old backlogs; see [`book`]); `None` when
    /// the queue is empty or its oldest message has no recorded time.
    pub oldest_appended_ms: Option<u64>,
}

impl Stats {
    /// How long the oldest message has waited at `now_ms`, in seconds (`None` when unknown or
    /// nothing waits).
    pub fn oldest_age_seconds(&self, now_ms: u64) -> Option<f64> {
        self.oldest_appended_ms
            .map(|at| now_ms.saturating_sub(at) as f64 / 1000.0)
    }
}

/// One named durable queue. Cheap to clone; clones share the queue.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    /// The queue's name, for errors and logs.
    name: String,
    /// The shared database, for group commit.
    storage: Storage,
    /// Sequence number → record.
    tree: sled::Tree,
    /// Order, leases, bounds; and which records hold several messages.
    book: Mutex<Locked>,
    /// Wakes consumers waiting in [`Queue::lease`] when something may have become deliverable.
    ready: Notify,
}

/// What the queue's lock guards: the bookkeeping and the record layout move together.
struct Locked {
    book: Book,
    groups: Groups,
}

fn seq_of(key: &[u8]) -> Option<u64> {
    let k: [u8; 8] = key.try_into().ok()?;
    Some(u64::from_be_bytes(k))
}

impl Queue {
    /// Opens (or creates) the queue `name`, loading what a previous run left in it: every message
    /// still there is deliverable again.
    pub async fn open(storage: &Storage, name: &str, limits: Limits) -> Result<Queue, QueueError> {
        let err = |message: String| QueueError::Storage {
            queue: name.to_owned(),
            message,
        };
        let db = storage.db().clone();
        let tree_name = format!("queue/{name}");
        let queue_name = name.to_owned();
        let (tree, locked) = tokio::task::spawn_blocking(move || {
            let tree = db.open_tree(tree_name).map_err(|e| e.to_string())?;
            let mut found = Vec::new();
            let mut stamps = Vec::new();
            let mut groups = Groups::default();
            // Numbering continues after the highest number on disk, readable or not.
            let mut last = None;
            for item in tree.iter() {
                let (k, v) = item.map_err(|e| e.to_string())?;
                let Some(first) = seq_of(&k) else {
                    warn!(queue = %queue_name, "skipping a queue record with a foreign key");
                    continue;
                };
                last = last.max(Some(first));
                let Some(record) = record::decode(&v) else {
                    warn!(queue = %queue_name, seq = first, "skipping an unreadable queue record");
                    continue;
                };
                groups.add(first, record.messages.len() as u32);
                if let Some(at) = record.appended_ms {
                    stamps.push((first, at));
                }
                for (i, (exp, payload)) in record.messages.into_iter().enumerate() {
                    let seq = first + i as u64;
                    last = last.max(Some(seq));
                    found.push((seq, payload.len() as u64, exp));
                }
            }
            let mut book = Book::new(limits, last);
            for (seq, size, exp) in found {
                book.push(seq, size, exp);
            }
            for (seq, at) in stamps {
                book.stamp(seq, at);
            }
            Ok::<_, String>((tree, Locked { book, groups }))
        })
        .await
        .map_err(|e| err(format!("loading task failed: {e}")))?
        .map_err(|e| err(format!("sled: {e}")))?;
        Ok(Queue {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                storage: storage.clone(),
                tree,
                book: Mutex::new(locked),
                ready: Notify::new(),
            }),
        })
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    fn book(&self) -> MutexGuard<'_, Locked> {
        // A panic while holding the lock leaves the book usable (no operation half-applies an
        // index change before a possible panic), so keep serving rather than fail forever.
        self.inner
            .book
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn storage_err(&self, message: impl Into<String>) -> QueueError {
        QueueError::Storage {
            queue: self.inner.name.clone(),
            message: message.into(),
        }
    }

    fn refused(&self, r: Refused, size: u64, limits: Limits) -> QueueError {
        match r {
            Refused::Full { messages, bytes } => QueueError::Full {
                queue: self.inner.name.clone(),
                messages,
                bytes,
                max_messages: limits.max_messages,
                max_bytes: limits.max_bytes,
            },
            Refused::TooLarge => QueueError::TooLarge {
                queue: self.inner.name.clone(),
                size,
                max_bytes: limits.max_bytes,
            },
        }
    }

    /// Writes messages without waiting for the disk (the caller syncs), each accepted or refused
    /// on its own; the accepted ones of one call share records ([`record`]). Numbering, writing
    /// and indexing under one lock keeps the FIFO order the order of the sequence numbers; a sled
    /// insert is a memory operation, the disk comes with the sync.
    fn append_unsynced(&self, items: &[(&[u8], Option<u64>)]) -> Vec<Result<u64, QueueError>> {
        if let Err(full) = self.inner.storage.writable() {
            let refused = QueueError::DiskFull {
                queue: self.inner.name.clone(),
                message: full.to_string(),
            };
            return vec![Err(refused); items.len()];
        }
        let mut guard = self.book();
        let Locked { book, groups } = &mut *guard;
        let mut results = Vec::with_capacity(items.len());
        // Admitted messages get consecutive numbers: a refusal takes none.
        let mut admitted = Vec::with_capacity(items.len());
        for (i, (payload, _)) in items.iter().enumerate() {
            let size = payload.len() as u64;
            match book.admit(size) {
                Ok(seq) => {
                    admitted.push((i, seq));
                    results.push(Ok(seq));
                }
                Err(r) => results.push(Err(self.refused(r, size, book.limits()))),
            }
        }
        let sizes: Vec<usize> = admitted.iter().map(|&(i, _)| items[i].0.len()).collect();
        let now_ms = unix_ms();
        for chunk in record::chunks(&sizes) {
            let run = &admitted[chunk];
            let Some(&(_, first)) = run.first() else {
                continue;
            };
            let messages: Vec<(&[u8], Option<u64>)> = run.iter().map(|&(i, _)| items[i]).collect();
            let inserted = self
                .inner
                .tree
                .insert(first.to_be_bytes(), record::encode(&messages, now_ms));
            match inserted {
                Ok(_) => {
                    groups.add(first, run.len() as u32);
                    for (&(_, seq), (payload, exp)) in run.iter().zip(&messages) {
                        book.push(seq, payload.len() as u64, *exp);
                    }
                    book.stamp(first, now_ms);
                }
                Err(e) => {
                    for &(i, _) in run {
                        results[i] = Err(self.storage_err(format!("sled: {e}")));
                    }
                }
            }
        }
        results
    }

    /// Appends a message, returning its sequence number once it is on disk.
    ///
    /// `expires_at_ms` (Unix milliseconds) drops the message instead of delivering it after that
    /// time. Refused with [`QueueError::Full`] when the queue is at its bound.
    pub async fn append(
        &self,
        payload: &[u8],
        expires_at_ms: Option<u64>,
    ) -> Result<u64, QueueError> {
        let mut results = self.append_unsynced(&[(payload, expires_at_ms)]);
        let seq = results
            .pop()
            .unwrap_or_else(|| Err(self.storage_err("no result")))?;
        self.inner.ready.notify_waiters();
        self.inner
            .storage
            .sync()
            .await
            .map_err(|e| self.storage_err(e))?;
        Ok(seq)
    }

    /// Appends several messages with one flush; each succeeds or fails on its own (a full queue
    /// refuses the ones that do not fit).
    pub async fn append_many(
        &self,
        items: &[(Bytes, Option<u64>)],
    ) -> Vec<Result<u64, QueueError>> {
        let items: Vec<(&[u8], Option<u64>)> = items.iter().map(|(p, e)| (&p[..], *e)).collect();
        let mut results = self.append_unsynced(&items);
        if results.iter().any(Result::is_ok) {
            self.inner.ready.notify_waiters();
            if let Err(e) = self.inner.storage.sync().await {
                for r in results.iter_mut().filter(|r| r.is_ok()) {
                    *r = Err(self.storage_err(e.clone()));
                }
            }
        }
        results
    }

    /// Leases up to `max` deliverable messages, oldest first, without waiting.
    pub fn try_lease(&self, max: usize, lease_for: Duration) -> Result<Vec<Leased>, QueueError> {
        let (located, deletes) = {
            let mut guard = self.book();
            let Locked { book, groups } = &mut *guard;
            let (grants, expired) = book.lease(Instant::now(), unix_ms(), max, lease_for);
            let deletes: Vec<u64> = expired
                .into_iter()
                .filter_map(|s| groups.settle(s))
                .collect();
            let located: Vec<(Grant, (u64, usize))> = grants
                .into_iter()
                .map(|g| (g, groups.locate(g.seq)))
                .collect();
            (located, deletes)
        };
        for key in deletes {
            self.inner
                .tree
                .remove(key.to_be_bytes())
                .map_err(|e| self.storage_err(format!("sled: {e}")))?;
        }
        let mut out = Vec::with_capacity(located.len());
        // Consecutive messages usually share a record: read it once.
        let mut last: Option<(u64, sled::IVec)> = None;
        for (grant, (key, index)) in located {
            let raw = match &last {
                Some((k, raw)) if *k == key => Some(raw.clone()),
                _ => self
                    .inner
                    .tree
                    .get(key.to_be_bytes())
                    .map_err(|e| self.storage_err(format!("sled: {e}")))?,
            };
            match raw.as_deref().and_then(|r| record::payload_at(r, index)) {
                Some(payload) => out.push(Leased {
                    grant,
                    payload: Bytes::copy_from_slice(payload),
                }),
                None => {
                    // The book and the tree disagree: drop the entry so it cannot block the queue.
                    warn!(queue = %self.inner.name, seq = grant.seq, "queue record missing or unreadable; skipped");
                    let _ = self.settle(grant);
                }
            }
            if let Some(raw) = raw {
                last = Some((key, raw));
            }
        }
        Ok(out)
    }

    /// Leases up to `max` messages, waiting until at least one is deliverable.
    ///
    /// Cancel-safe: dropping the future leases nothing.
    pub async fn lease(&self, max: usize, lease_for: Duration) -> Result<Vec<Leased>, QueueError> {
        loop {
            // Register for wake-ups before looking, so an append between the look and the wait
            // is not missed.
            let notified = self.inner.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let got = self.try_lease(max, lease_for)?;
            if !got.is_empty() {
                return Ok(got);
            }
            let wake = self.book().book.next_wakeup();
            match wake {
                Some(at) => {
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    fn stale(&self, grant: Grant, s: Stale) -> QueueError {
        match s {
            Stale::Unknown | Stale::LeaseLost => QueueError::LeaseLost {
                queue: self.inner.name.clone(),
                seq: grant.seq,
            },
        }
    }

    /// Settles a delivered message: it is deleted.
    ///
    /// The delete is not flushed on its own: if it is lost in a crash the message is delivered
    /// again, which at-least-once allows, and acks stay cheap.
    pub fn ack(&self, grant: Grant) -> Result<(), QueueError> {
        self.settle(grant)
    }

    /// Takes a message out of the book and deletes its record once nothing in it is held.
    fn settle(&self, grant: Grant) -> Result<(), QueueError> {
        let delete = {
            let mut guard = self.book();
            guard.book.ack(grant).map_err(|s| self.stale(grant, s))?;
            guard.groups.settle(grant.seq)
        };
        if let Some(key) = delete {
            self.inner
                .tree
                .remove(key.to_be_bytes())
                .map_err(|e| self.storage_err(format!("sled: {e}")))?;
        }
        Ok(())
    }

    /// Gives a leased message back, deliverable again after `delay`.
    pub fn nack(&self, grant: Grant, delay: Duration) -> Result<(), QueueError> {
        self.book()
            .book
            .nack(grant, Instant::now(), delay)
            .map_err(|s| self.stale(grant, s))?;
        self.inner.ready.notify_waiters();
        Ok(())
    }

    /// Keeps a lease for another `lease_for` from now.
    pub fn extend(&self, grant: Grant, lease_for: Duration) -> Result<(), QueueError> {
        self.book()
            .book
            .extend(grant, Instant::now(), lease_for)
            .map_err(|s| self.stale(grant, s))
    }

    /// How full the queue is.
    pub fn stats(&self) -> Stats {
        let guard = self.book();
        let b = &guard.book;
        Stats {
            messages: b.len(),
            bytes: b.bytes(),
            oldest_appended_ms: b.oldest_appended_ms(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn storage() -> (tempfile::TempDir, Storage) {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), 1 << 20).await.unwrap();
        (dir, s)
    }

    const LEASE: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn append_lease_ack_in_order() {
        let (_d, s) = storage().await;
        let q = Queue::open(&s, "t", Limits::default()).await.unwrap();
        for i in 0..3u8 {
            q.append(&[i], None).await.unwrap();
        }
        let got = q.try_lease(2, LEASE).unwrap();
        assert_eq!(got.iter().map(|l| l.payload[0]).collect::<Vec<_>>(), [0, 1]);
        q.ack(got[0].grant).unwrap();
        q.nack(got[1].grant, Duration::ZERO).unwrap();
        let again = q.try_lease(5, LEASE).unwrap();
        assert_eq!(
            again
                .iter()
                .map(|l| (l.payload[0], l.grant.attempt))
                .collect::<Vec<_>>(),
            [(1, 2), (2, 1)]
        );
        assert_eq!(q.stats().messages, 2);
    }

    #[tokio::test]
    async fn unacked_messages_are_deliverable_after_reopening() {
        let (_d, s) = storage().await;
        let q = Queue::open(&s, "t", Limits::default()).await.unwrap();
        for i in 0..4u8 {
            q.append(&[i], None).await.unwrap();
        }
        let got = q.try_lease(3, LEASE).unwrap();
        q.ack(got[0].grant).unwrap();
        drop(q);
        // A new process sees what is on disk; its leases start empty.
        let q = Queue::open(&s, "t", Limits::default()).await.unwrap();
        let got = q.try_lease(10, LEASE).unwrap();
        assert_eq!(
            got.iter().map(|l| l.payload[0]).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(
            q.append(&[9], None).await.unwrap(),
            4,
            "numbering continues"
        );
    }

    #[tokio::test]
    async fn a_batch_shares_a_record_that_goes_once_every_message_is_settled() {
        let (_d, s) = storage().await;
        let q = Queue::open(&s, "t", Limits::default()).await.unwrap();
        q.append(b"solo", None).await.unwrap();
        let batch: Vec<(Bytes, Option<u64>)> = (0..5u8)
            .map(|i| (Bytes::from(vec![b'a' + i; usize::from(i) + 1]), None))
            .collect();
        let seqs: Vec<u64> = q
            .append_many(&batch)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
        assert_eq!(
            q.inner.tree.len(),
            2,
            "one record for the single append, one for the batch"
        );
        let got = q.try_lease(10, LEASE).unwrap();
        let payloads: Vec<&[u8]> = got.iter().map(|l| &l.payload[..]).collect();
        assert_eq!(
            payloads,
            [&b"solo"[..], b"a", b"bb", b"ccc", b"dddd", b"eeeee"]
        );
        q.ack(got[0].grant).unwrap();
        q.ack(got[2].grant).unwrap();
        q.ack(got[4].grant).unwrap();
        assert_eq!(
            q.inner.tree.len(),
            1,
            "the batch record stays while any of it is held"
        );
        drop((got, q));
        // After a restart, the unsettled ones of the batch come again, and only what was in
        // the record (a settled message of a partly settled record comes again too:
        // at-least-once).
        let q = Queue::open(&s, "t", Limits::default()).await.unwrap();
        let again = q.try_lease(10, LEASE).unwrap();
        let payloads: Vec<&[u8]> = again.iter().map(|l| &l.payload[..]).collect();
        assert_eq!(payloads, [&b"a"[..], b"bb", b"ccc", b"dddd", b"eeeee"]);
        for l in &again {
            q.ack(l.grant).unwrap();
        }
        assert_eq!(q.inner.tree.len(), 0, "deleted once all of it is settled");
        assert_eq!(q.stats().messages, 0);
        assert_eq!(
            q.append(b"next", None).await.unwrap(),
            6,
            "numbering continues"
        );
    }

    #[tokio::test]
    async fn an_expired_message_in_a_batch_is_dropped_and_its_record_still_goes() {
        let (_d, s) = storage().await;
        let q = Queue::open(&s, "t", Limits::default()).await.unwrap();
        let future = unix_ms() + 60_000;
        let batch = [
            (Bytes::from_static(b"old"), Some(1)),
            (Bytes::from_static(b"new"), Some(future)),
        ];
        q.append_many(&batch).await;
        let got = q.try_lease(10, LEASE).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].payload[..], b"new");
        q.ack(got[0].grant).unwrap();
        assert_eq!(q.inner.tree.len(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_appends_with_a_clear_error() {
        let (_d, s) = storage().await;
        let limits = Limits {
            max_messages: 2,
            max_bytes: 100,
        };
        let q = Queue::open(&s, "small", limits).await.unwrap();
        q.append(b"a", None).await.unwrap();
        q.append(b"b", None).await.unwrap();
        let e = q.append(b"c", None).await.unwrap_err();
        assert!(matches!(e, QueueError::Full { messages: 2, .. }), "{e}");
        assert!(e.to_string().contains("is full"), "{e}");
        let e = q.append(&[0u8; 101], None).await.unwrap_err();
        assert!(matches!(e, QueueError::TooLarge { .. }), "{e}");
        // Nothing queued was dropped to make room.
        let got = q.try_lease(10, LEASE).unwrap();
        assert_eq!(got.len(), 2);
        let results = q
            .append_many(&[
                (Bytes::from_static(b"x"), None),
                (Bytes::from_static(b"y"), None),
            ])
            .await;
        assert!(results.iter().all(Result::is_err));
    }

    #[tokio::test]
    async fn expired_messages_are_deleted_not_delivered() {
        let (_d, s) = storage().await;
        let q = Queue::open(&s, "t", Limits::default()).await.unwrap();
        q.append(b"old", Some(1)).await.unwrap();
        q.append(b"new", Some(unix_ms() + 60_000)).await.unwrap();
        let got = q.try_lease(10, LEASE).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].payload[..], b"new");
        assert_eq!(q.stats().messages, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn lease_waits_for_an_append_and_for_a_lease_to_expire() {
        let (_d, s) = storage().await;
        let q = Queue::open(&s, "t", Limits::default()).await.unwrap();
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.lease(1, Duration::from_secs(10)).await })
        };
        tokio::task::yield_now().await;
        q.append(b"m", None).await.unwrap();
        let first = waiter.await.unwrap().unwrap();
        assert_eq!(first[0].grant.attempt, 1);
        // Nobody acks: the lease runs out and the message comes back.
        let again = tokio::time::timeout(Duration::from_secs(11), q.lease(1, LEASE))
            .await
            .expect("redelivered after the lease expired")
            .unwrap();
        assert_eq!(again[0].grant.attempt, 2);
        assert!(matches!(
            q.ack(first[0].grant),
            Err(QueueError::LeaseLost { .. })
        ));
        q.ack(again[0].grant).unwrap();
    }

    #[tokio::test]
    async fn the_oldest_message_s_append_time_survives_reopening() {
        let (_d, s) = storage().await;
        let q = Queue::open(&s, "t", Limits::default()).await.unwrap();
        assert_eq!(q.stats().oldest_appended_ms, None);
        let before = unix_ms();
        q.append(b"first", None).await.unwrap();
        q.append_many(&[
            (Bytes::from_static(b"x"), None),
            (Bytes::from_static(b"y"), None),
        ])
        .await;
        let at = q.stats().oldest_appended_ms.expect("a time");
        assert!(at >= before && at <= unix_ms(), "{at}");
        drop(q);
        let q = Queue::open(&s, "t", Limits::default()).await.unwrap();
        assert_eq!(q.stats().oldest_appended_ms, Some(at));
        assert!(q.stats().oldest_age_seconds(at + 2_500) == Some(2.5));
        let got = q.try_lease(10, LEASE).unwrap();
        for l in got {
            q.ack(l.grant).unwrap();
        }
        assert_eq!(q.stats().oldest_appended_ms, None);
    }
}
