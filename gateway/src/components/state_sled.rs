//! `state.sled`: the embedded, durable state store, kept on the gateway's own disk.
//!
//! All sled components share the gateway's one sled database (one page cache, one flusher), each in
//! a tree of its own. A record is `[version u64 BE][expiry u64 BE, 0 = none][value]`; a second tree
//! indexes expiries (`[expiry BE][key]`) so the sweeper finds expired keys without a full scan.
//! A write is acknowledged only after `flush_async` has put it on disk, so an acknowledged save
//! survives `kill -9` and, as far as the disk honours fsync, power loss.

use async_trait::async_trait;
use bytes::Bytes;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{IVec, Transactional};

use crate::storage::Storage;

use super::state::{
    DeleteRequest, SetRequest, StateStore, StoreError, StoredItem, TxOp, check_etag, features,
    next_expiry, unix_now,
};

const HEADER: usize = 16;

/// A sled-backed state store (one tree of the shared database).
#[derive(Clone)]
pub struct SledStore {
    /// The shared database; its group commit makes writes durable.
    storage: Storage,
    /// Key → record.
    data: sled::Tree,
    /// `[expiry BE][key]` → empty: the expiry index the sweeper walks in time order.
    expiries: sled::Tree,
}

/// A decoded record.
struct Record {
    version: u64,
    expires_at: Option<u64>,
    value: Bytes,
}

impl Record {
    fn decode(raw: &[u8]) -> Result<Record, StoreError> {
        if raw.len() < HEADER {
            return Err(StoreError::Backend(
                "corrupt state record (short header)".into(),
            ));
        }
        let mut v = [0u8; 8];
        v.copy_from_slice(&raw[..8]);
        let mut e = [0u8; 8];
        e.copy_from_slice(&raw[8..16]);
        let exp = u64::from_be_bytes(e);
        Ok(Record {
            version: u64::from_be_bytes(v),
            expires_at: (exp != 0).then_some(exp),
            value: Bytes::copy_from_slice(&raw[HEADER..]),
        })
    }

    fn encode(version: u64, expires_at: Option<u64>, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + value.len());
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&expires_at.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(value);
        out
    }

    fn live(&self, now: u64) -> bool {
        self.expires_at.is_none_or(|e| e > now)
    }
}

fn expiry_index(expires_at: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&expires_at.to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(format!("sled: {e}"))
}

/// What a write sees of the key now: its live version and expiry, and the raw version to continue
/// counting from (so an ETag is never reused while an expired record still exists).
fn current(raw: Option<&IVec>, now: u64) -> Result<(Option<u64>, Option<u64>, u64), StoreError> {
    match raw {
        None => Ok((None, None, 0)),
        Some(raw) => {
            let r = Record::decode(raw)?;
            if r.live(now) {
                Ok((Some(r.version), r.expires_at, r.version))
            } else {
                Ok((None, None, r.version))
            }
        }
    }
}

impl SledStore {
    /// Opens (or creates) the component's trees in the shared database.
    pub fn open(storage: &Storage, component: &str) -> Result<Self, StoreError> {
        let db = storage.db();
        Ok(SledStore {
            storage: storage.clone(),
            data: db
                .open_tree(format!("state/{component}"))
                .map_err(backend)?,
            expiries: db
                .open_tree(format!("state-expiry/{component}"))
                .map_err(backend)?,
        })
    }

    fn set_one(&self, req: &SetRequest, now: u64) -> Result<(), StoreError> {
        loop {
            let raw = self.data.get(&req.key).map_err(backend)?;
            let (version, expiry, counter) = current(raw.as_ref(), now)?;
            check_etag(version, req.etag.as_deref(), req.concurrency)?;
            let exp = next_expiry(expiry, req.ttl, now);
            let rec = Record::encode(counter + 1, exp, &req.value);
            let swapped = self
                .data
                .compare_and_swap(&req.key, raw, Some(rec))
                .map_err(backend)?;
            if swapped.is_ok() {
                if let Some(e) = exp {
                    self.expiries
                        .insert(expiry_index(e, req.key.as_bytes()), &[])
                        .map_err(backend)?;
                }
                return Ok(());
            }
        }
    }

    fn delete_one(&self, req: &DeleteRequest, now: u64) -> Result<(), StoreError> {
        loop {
            let raw = self.data.get(&req.key).map_err(backend)?;
            let (version, _, _) = current(raw.as_ref(), now)?;
            check_etag(version, req.etag.as_deref(), Default::default())?;
            if raw.is_none() {
                return Ok(());
            }
            let swapped = self
                .data
                .compare_and_swap(&req.key, raw, None as Option<IVec>)
                .map_err(backend)?;
            if swapped.is_ok() {
                return Ok(());
            }
        }
    }

    fn transact_blocking(&self, ops: &[TxOp], now: u64) -> Result<(), StoreError> {
        let result = (&self.data, &self.expiries).transaction(
            |(data, expiries): &(TransactionalTree, TransactionalTree)| {
                for op in ops {
                    match op {
                        TxOp::Upsert(req) => {
                            let raw = data.get(&req.key)?;
                            let (version, expiry, counter) =
                                current(raw.as_ref(), now).map_err(abort)?;
                            check_etag(version, req.etag.as_deref(), req.concurrency)
                                .map_err(abort)?;
                            let exp = next_expiry(expiry, req.ttl, now);
                            data.insert(
                                req.key.as_bytes(),
                                Record::encode(counter + 1, exp, &req.value),
                            )?;
                            if let Some(e) = exp {
                                expiries.insert(expiry_index(e, req.key.as_bytes()), &[])?;
                            }
                        }
                        TxOp::Delete(req) => {
                            let raw = data.get(&req.key)?;
                            let (version, _, _) = current(raw.as_ref(), now).map_err(abort)?;
                            check_etag(version, req.etag.as_deref(), Default::default())
                                .map_err(abort)?;
                            data.remove(req.key.as_bytes())?;
                        }
                    }
                }
                Ok(())
            },
        );
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(backend(e)),
        }
    }

    /// Removes keys whose expiry has passed; returns how many. Called by the runtime's sweeper.
    pub fn sweep_expired(&self, now: u64) -> Result<usize, StoreError> {
        let mut removed = 0;
        for entry in self.expiries.iter() {
            let (idx, _) = entry.map_err(backend)?;
            if idx.len() < 8 {
                self.expiries.remove(&idx).map_err(backend)?;
                continue;
            }
            let mut e = [0u8; 8];
            e.copy_from_slice(&idx[..8]);
            let expires_at = u64::from_be_bytes(e);
            if expires_at > now {
                break;
            }
            let key = &idx[8..];
            if let Some(raw) = self.data.get(key).map_err(backend)? {
                let rec = Record::decode(&raw)?;
                // The key may have been rewritten with another expiry since this entry was made.
                if rec.expires_at == Some(expires_at)
                    && self
                        .data
                        .compare_and_swap(key, Some(raw), None as Option<IVec>)
                        .map_err(backend)?
                        .is_ok()
                {
                    removed += 1;
                }
            }
            self.expiries.remove(&idx).map_err(backend)?;
        }
        Ok(removed)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.storage.sync().await.map_err(StoreError::Backend)
    }
}

fn disk_full(e: crate::storage::DiskFull) -> StoreError {
    StoreError::DiskFull(e.to_string())
}

fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}

#[async_trait]
impl StateStore for SledStore {
    async fn get(&self, key: &str) -> Result<Option<StoredItem>, StoreError> {
        // A point read served from sled's page cache; not worth a thread hop.
        let Some(raw) = self.data.get(key).map_err(backend)? else {
            return Ok(None);
        };
        let rec = Record::decode(&raw)?;
        if !rec.live(unix_now()) {
            return Ok(None);
        }
        Ok(Some(StoredItem {
            value: rec.value,
            etag: rec.version.to_string(),
            expires_at: rec.expires_at,
        }))
    }

    async fn set_many(&self, reqs: Vec<SetRequest>) -> Result<(), StoreError> {
        self.storage.writable().map_err(disk_full)?;
        let now = unix_now();
        let mut result = Ok(());
        for req in &reqs {
            result = self.set_one(req, now);
            if result.is_err() {
                break;
            }
        }
        // Flush even after a failure: the writes before it were applied and must be durable.
        self.flush().await?;
        result
    }

    async fn delete(&self, req: DeleteRequest) -> Result<(), StoreError> {
        self.delete_one(&req, unix_now())?;
        self.flush().await
    }

    async fn transact(&self, ops: Vec<TxOp>) -> Result<(), StoreError> {
        // Deleting frees space: a transaction of deletes only may run on a full disk.
        if ops.iter().any(|op| matches!(op, TxOp::Upsert(_))) {
            self.storage.writable().map_err(disk_full)?;
        }
        let this = self.clone();
        let now = unix_now();
        // sled transactions may retry on conflict; keep that loop off the runtime threads.
        tokio::task::spawn_blocking(move || this.transact_blocking(&ops, now))
            .await
            .map_err(|e| StoreError::Backend(format!("transaction task failed: {e}")))??;
        self.flush().await
    }

    fn features(&self) -> &'static [&'static str] {
        &[
            features::ETAG,
            features::TRANSACTIONAL,
            features::TTL,
            features::QUERY,
        ]
    }

    async fn scan(&self, prefix: &str) -> Result<Vec<(String, StoredItem)>, StoreError> {
        let (data, prefix) = (self.data.clone(), prefix.to_owned());
        tokio::task::spawn_blocking(move || {
            let now = unix_now();
            let mut out = Vec::new();
            for kv in data.scan_prefix(prefix.as_bytes()) {
                let (k, raw) = kv.map_err(backend)?;
                let rec = Record::decode(&raw)?;
                if rec.live(now) {
                    let item = StoredItem {
                        value: rec.value,
                        etag: rec.version.to_string(),
                        expires_at: rec.expires_at,
                    };
                    out.push((String::from_utf8_lossy(&k).into_owned(), item));
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("scan task: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::state::{Concurrency, Ttl};

    async fn store() -> (tempfile::TempDir, SledStore) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), 1 << 20).await.unwrap();
        (dir, SledStore::open(&storage, "t").unwrap())
    }

    fn set(key: &str, value: &str) -> SetRequest {
        SetRequest {
            key: key.into(),
            value: Bytes::copy_from_slice(value.as_bytes()),
            etag: None,
            concurrency: Concurrency::LastWrite,
            ttl: Ttl::Keep,
        }
    }

    #[tokio::test]
    async fn versions_count_up_and_guard_writes() {
        let (_d, s) = store().await;
        s.set_many(vec![set("k", "1")]).await.unwrap();
        s.set_many(vec![set("k", "2")]).await.unwrap();
        let item = s.get("k").await.unwrap().unwrap();
        assert_eq!(item.etag, "2");
        assert_eq!(&item.value[..], b"2");
        let stale = SetRequest {
            etag: Some("1".into()),
            ..set("k", "3")
        };
        assert_eq!(s.set_many(vec![stale]).await, Err(StoreError::EtagMismatch));
        assert_eq!(&s.get("k").await.unwrap().unwrap().value[..], b"2");
    }

    #[tokio::test]
    async fn transaction_is_all_or_nothing() {
        let (_d, s) = store().await;
        s.set_many(vec![set("a", "1")]).await.unwrap();
        let ops = vec![
            TxOp::Upsert(set("b", "x")),
            TxOp::Delete(DeleteRequest {
                key: "a".into(),
                etag: Some("9".into()),
            }),
        ];
        assert_eq!(s.transact(ops).await, Err(StoreError::EtagMismatch));
        assert!(s.get("b").await.unwrap().is_none());
        assert!(s.get("a").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn expired_keys_vanish_and_are_swept() {
        let (_d, s) = store().await;
        s.set_many(vec![SetRequest {
            ttl: Ttl::Seconds(1),
            ..set("t", "v")
        }])
        .await
        .unwrap();
        assert!(s.get("t").await.unwrap().is_some());
        let later = unix_now() + 5;
        assert_eq!(s.sweep_expired(later).unwrap(), 1);
        assert!(s.get("t").await.unwrap().is_none());
    }
}
