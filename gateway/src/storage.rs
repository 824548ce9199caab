//! The gateway's one embedded database (sled) and what makes its writes durable.
//!
//! All sled users (state stores today; the durable queue, outbox and mailbox next) share one
//! database, so they share one page cache (sized for a Pi) and one write-ahead log. Durability is
//! by **group commit**: a writer applies its change, then [`Storage::sync`] waits for a flush that
//! *started after* it asked; one flusher task serves every waiter queued at that moment with a
//! single blocking `flush()` (one fsync). This also steers clear of sled 0.34's `flush_async`,
//! which deadlocks when called concurrently (spacejam/sled#1308).
//!
//! It also keeps sled away from a full disk. sled 0.34 does not survive `ENOSPC`: writes hang or
//! fail until a restart, even after space frees. So the [`DiskGuard`] watches the free space of
//! the state directory's file system and refuses new writes ([`Storage::writable`]) while less
//! than `storage.minFreeSpace` is left: writers get a prompt "disk full" error (507), reads keep
//! working, acknowledgements (which free space) still go through, and writes resume by themselves
//! once space frees. A flush that does not finish within [`FLUSH_TIMEOUT`] is reported as an
//! error instead of holding its writers forever.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

/// Most writers that can wait for a flush at once before new ones wait to enqueue.
const MAX_WAITERS: usize = 4096;

/// Longest a writer waits for its flush before it is told the disk is not answering.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the free space is measured while the disk has room (more often once it is low).
const DISK_POLL: Duration = Duration::from_millis(250);

type Waiter = oneshot::Sender<Result<(), String>>;

/// Watches the free space under the state directory; writes are refused while it is low.
#[derive(Debug)]
pub struct DiskGuard {
    /// The state directory whose file system is watched.
    dir: PathBuf,
    /// Writes are refused below this many free bytes (0: never).
    min_free: AtomicU64,
    /// Free bytes at the last measurement.
    free: AtomicU64,
    /// Whether free space was below `min_free` at the last measurement.
    low: AtomicBool,
}

/// Writes are refused: the disk under the state directory is (nearly) full.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the disk under the state directory {dir} is full ({free} bytes free, storage.minFreeSpace is \
     {min_free}): writes are refused until space frees; reads still work"
)]
pub struct DiskFull {
    /// The state directory.
    pub dir: String,
    /// Free bytes at the last measurement.
    pub free: u64,
    /// The configured floor.
    pub min_free: u64,
}

impl DiskGuard {
    fn new(dir: &Path) -> Self {
        DiskGuard {
            dir: dir.to_path_buf(),
            min_free: AtomicU64::new(0),
            free: AtomicU64::new(u64::MAX),
            low: AtomicBool::new(false),
        }
    }

    /// Measures the free space now; returns whether it is low.
    fn measure(&self) -> bool {
        let min_free = self.min_free.load(Ordering::Relaxed);
        let free = match rustix::fs::statvfs(&self.dir) {
            Ok(st) => st.f_bavail.saturating_mul(st.f_frsize),
            // Cannot tell: do not refuse writes on a guess.
            Err(_) => u64::MAX,
        };
        self.free.store(free, Ordering::Relaxed);
        let low = free < min_free;
        let was = self.low.swap(low, Ordering::Relaxed);
        if low && !was {
            warn!(dir = %self.dir.display(), free, min_free, "disk nearly full: refusing writes until space frees");
        } else if was && !low {
            info!(dir = %self.dir.display(), free, "disk has room again: writes resume");
        }
        low
    }

    /// `Err` while the disk is low.
    pub fn check(&self) -> Result<(), DiskFull> {
        if self.low.load(Ordering::Relaxed) {
            Err(DiskFull {
                dir: self.dir.display().to_string(),
                free: self.free.load(Ordering::Relaxed),
                min_free: self.min_free.load(Ordering::Relaxed),
            })
        } else {
            Ok(())
        }
    }
}

/// The shared database and its group-commit flusher. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    /// The database itself.
    db: sled::Db,
    /// Queue of writers waiting for their changes to be on disk.
    flush_requests: mpsc::Sender<Waiter>,
    /// Free space under the state directory.
    disk: Arc<DiskGuard>,
}

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the state database in {dir}: {message}")]
pub struct OpenError {
    /// The state directory.
    pub dir: PathBuf,
    /// What went wrong, with a hint when the cause is likely.
    pub message: String,
}

impl Storage {
    /// Opens (or creates) `<state_dir>/edgecar.sled` and starts the flusher. The flusher task
    /// ends by itself when the last clone of this `Storage` is dropped.
    pub async fn open(state_dir: &Path, cache_capacity: u64) -> Result<Storage, OpenError> {
        let err = |message: String| OpenError {
            dir: state_dir.to_path_buf(),
            message,
        };
        let path = state_dir.join("edgecar.sled");
        let db = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&path)?;
            sled::Config::new()
                .path(&path)
                .cache_capacity(cache_capacity)
                .flush_every_ms(Some(500))
                .open()
                .map_err(std::io::Error::other)
        })
        .await
        .map_err(|e| err(e.to_string()))?
        .map_err(|e| {
            let hint = if e.to_string().contains("lock") {
                " (is another edgecar using this state directory?)"
            } else {
                ""
            };
            err(format!("{e}{hint}"))
        })?;
        let (tx, rx) = mpsc::channel(MAX_WAITERS);
        tokio::spawn(flusher(db.clone(), rx));
        Ok(Storage {
            db,
            flush_requests: tx,
            disk: Arc::new(DiskGuard::new(state_dir)),
        })
    }

    /// Refuses writes while less than `min_free` bytes are free under the state directory:
    /// measures now, then keeps measuring until every clone of this `Storage` is gone.
    pub fn guard_disk(&self, min_free: u64) {
        self.disk.min_free.store(min_free, Ordering::Relaxed);
        if min_free == 0 {
            return;
        }
        self.disk.measure();
        let disk = Arc::downgrade(&self.disk);
        tokio::spawn(async move {
            loop {
                let low = match disk.upgrade() {
                    Some(d) => d.measure(),
                    None => return,
                };
                // Once low, notice freed space quickly.
                let every = if low { DISK_POLL / 2 } else { DISK_POLL };
                tokio::time::sleep(every).await;
            }
        });
    }

    /// `Err` while the disk is too full for new writes (see [`DiskGuard`]). Writers ask before
    /// they write; deleting what was delivered is always allowed, since it frees space.
    pub fn writable(&self) -> Result<(), DiskFull> {
        // Measured on every write, not only by the poller: sled rewrites whole pages (large
        // values go to blob files of half a megabyte and more), so a few writes can take megabytes
        // between two polls. A statvfs costs about a microsecond.
        if self.disk.min_free.load(Ordering::Relaxed) > 0 {
            self.disk.measure();
        }
        self.disk.check()
    }

    /// The database, for opening trees.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Returns once every change made before this call is on disk.
    pub async fn sync(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        let flushed = async {
            self.flush_requests
                .send(tx)
                .await
                .map_err(|_| "database flusher has stopped".to_string())?;
            rx.await
                .map_err(|_| "database flusher has stopped".to_string())?
        };
        match tokio::time::timeout(FLUSH_TIMEOUT, flushed).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "the database flush did not finish within {FLUSH_TIMEOUT:?}: the disk under {} \
                 is not answering (full or failing?)",
                self.disk.dir.display()
            )),
        }
    }
}

/// Serves flush requests in batches: everything queued when a flush starts is covered by it.
async fn flusher(db: sled::Db, mut requests: mpsc::Receiver<Waiter>) {
    while let Some(first) = requests.recv().await {
        let mut waiters = vec![first];
        while let Ok(w) = requests.try_recv() {
            waiters.push(w);
        }
        let db = db.clone();
        let result = match tokio::task::spawn_blocking(move || db.flush()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("sled flush: {e}")),
            Err(e) => Err(format!("flush task failed: {e}")),
        };
        if let Err(e) = &result {
            warn!(error = %e, "database flush failed");
        }
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_syncs_all_complete() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), 1 << 20).await.unwrap();
        let tasks: Vec<_> = (0..200u32)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    s.db().insert(i.to_be_bytes(), &[1u8]).unwrap();
                    s.sync().await
                })
            })
            .collect();
        for t in tasks {
            tokio::time::timeout(std::time::Duration::from_secs(20), t)
                .await
                .expect("sync hung")
                .unwrap()
                .unwrap();
        }
    }
}
