//! The gateway's one embedded database (sled) and what makes its writes durable.
//!
//! All sled users (state stores today; the durable queue, outbox and mailbox next) share one
//! database, so they share one page cache (sized for a Pi) and one write-ahead log. Durability is
//! by **group commit**: a writer applies its change, then [`Storage::sync`] waits for a flush that
//! *started after* it asked; one flusher task serves every waiter queued at that moment with a
//! single blocking `flush()` (one fsync). This also steers clear of sled 0.34's `flush_async`,
//! which deadlocks when called concurrently (spacejam/sled#1308).

use std::path::{Path, PathBuf};

use tokio::sync::{mpsc, oneshot};
use tracing::warn;

/// Most writers that can wait for a flush at once before new ones wait to enqueue.
const MAX_WAITERS: usize = 4096;

type Waiter = oneshot::Sender<Result<(), String>>;

/// The shared database and its group-commit flusher. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    /// The database itself.
    db: sled::Db,
    /// Queue of writers waiting for their changes to be on disk.
    flush_requests: mpsc::Sender<Waiter>,
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
        })
    }

    /// The database, for opening trees.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Returns once every change made before this call is on disk.
    pub async fn sync(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.flush_requests
            .send(tx)
            .await
            .map_err(|_| "database flusher has stopped".to_string())?;
        rx.await
            .map_err(|_| "database flusher has stopped".to_string())?
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
