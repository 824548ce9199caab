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
//! The ordering, lease and bound bookkeeping is the pure [`book::Book`]; this module adds the
//! sled tree (`queue/<name>`, key = sequence number big-endian, value = `[1][expiry ms BE u64,
//! 0 = none][payload]`) and waiting for work.

pub mod book;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::warn;

use crate::storage::Storage;
use book::{Book, Refused, Stale};
pub use book::{Grant, Limits};

/// Format byte of a record, so the layout can change without guessing.
const FORMAT: u8 = 1;
/// Record header: format byte and expiry.
const HEADER: usize = 9;

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
    /// Order, leases, bounds.
    book: Mutex<Book>,
    /// Wakes consumers waiting in [`Queue::lease`] when something may have become deliverable.
    ready: Notify,
}

/// Milliseconds since the Unix epoch, the clock message expiry is kept in.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn encode(expires_at_ms: Option<u64>, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + payload.len());
    v.push(FORMAT);
    v.extend_from_slice(&expires_at_ms.unwrap_or(0).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Splits a record into expiry and payload; `None` if it is not one of ours.
fn decode(raw: &[u8]) -> Option<(Option<u64>, &[u8])> {
    if raw.len() < HEADER || raw[0] != FORMAT {
        return None;
    }
    let mut e = [0u8; 8];
    e.copy_from_slice(&raw[1..HEADER]);
    let exp = u64::from_be_bytes(e);
    Some(((exp != 0).then_some(exp), &raw[HEADER..]))
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
        let (tree, book) = tokio::task::spawn_blocking(move || {
            let tree = db.open_tree(tree_name).map_err(|e| e.to_string())?;
            let last = tree
                .last()
                .map_err(|e| e.to_string())?
                .and_then(|(k, _)| seq_of(&k));
            let mut book = Book::new(limits, last);
            for item in tree.iter() {
                let (k, v) = item.map_err(|e| e.to_string())?;
                match (seq_of(&k), decode(&v)) {
                    (Some(seq), Some((exp, payload))) => book.push(seq, payload.len() as u64, exp),
                    _ => {
                        warn!(queue = %queue_name, "skipping an unreadable queue record");
                    }
                }
            }
            Ok::<_, String>((tree, book))
        })
        .await
        .map_err(|e| err(format!("loading task failed: {e}")))?
        .map_err(|e| err(format!("sled: {e}")))?;
        Ok(Queue {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                storage: storage.clone(),
                tree,
                book: Mutex::new(book),
                ready: Notify::new(),
            }),
        })
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    fn book(&self) -> MutexGuard<'_, Book> {
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

    /// Writes one message without waiting for the disk; the caller syncs.
    fn append_unsynced(
        &self,
        payload: &[u8],
        expires_at_ms: Option<u64>,
    ) -> Result<u64, QueueError> {
        let size = payload.len() as u64;
        // Numbering, writing and indexing under one lock keeps the FIFO order the order of the
        // sequence numbers; a sled insert is a memory operation, the disk comes with the sync.
        let mut book = self.book();
        let seq = book
            .admit(size)
            .map_err(|r| self.refused(r, size, book.limits()))?;
        self.inner
            .tree
            .insert(seq.to_be_bytes(), encode(expires_at_ms, payload))
            .map_err(|e| self.storage_err(format!("sled: {e}")))?;
        book.push(seq, size, expires_at_ms);
        Ok(seq)
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
        let seq = self.append_unsynced(payload, expires_at_ms)?;
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
        let mut results: Vec<_> = items
            .iter()
            .map(|(p, exp)| self.append_unsynced(p, *exp))
            .collect();
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
        let (grants, expired) = self.book().lease(Instant::now(), unix_ms(), max, lease_for);
        for seq in expired {
            self.inner
                .tree
                .remove(seq.to_be_bytes())
                .map_err(|e| self.storage_err(format!("sled: {e}")))?;
        }
        let mut out = Vec::with_capacity(grants.len());
        for grant in grants {
            let raw = self
                .inner
                .tree
                .get(grant.seq.to_be_bytes())
                .map_err(|e| self.storage_err(format!("sled: {e}")))?;
            match raw.as_deref().and_then(decode) {
                Some((_, payload)) => out.push(Leased {
                    grant,
                    payload: Bytes::copy_from_slice(payload),
                }),
                None => {
                    // The book and the tree disagree: drop the entry so it cannot block the queue.
                    warn!(queue = %self.inner.name, seq = grant.seq, "queue record missing or unreadable; skipped");
                    let _ = self.book().ack(grant);
                }
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
            let wake = self.book().next_wakeup();
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
        self.book().ack(grant).map_err(|s| self.stale(grant, s))?;
        self.inner
            .tree
            .remove(grant.seq.to_be_bytes())
            .map_err(|e| self.storage_err(format!("sled: {e}")))?;
        Ok(())
    }

    /// Gives a leased message back, deliverable again after `delay`.
    pub fn nack(&self, grant: Grant, delay: Duration) -> Result<(), QueueError> {
        self.book()
            .nack(grant, Instant::now(), delay)
            .map_err(|s| self.stale(grant, s))?;
        self.inner.ready.notify_waiters();
        Ok(())
    }

    /// Keeps a lease for another `lease_for` from now.
    pub fn extend(&self, grant: Grant, lease_for: Duration) -> Result<(), QueueError> {
        self.book()
            .extend(grant, Instant::now(), lease_for)
            .map_err(|s| self.stale(grant, s))
    }

    /// How full the queue is.
    pub fn stats(&self) -> Stats {
        let b = self.book();
        Stats {
            messages: b.len(),
            bytes: b.bytes(),
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
}
