//! `state.in-memory`: a state store that lives and dies with the process.
//!
//! Useful for tests and for scratch data that must not wear an SD card. Same ETag, first-write
//! and TTL semantics as the durable stores (see `state::check_etag`).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use super::state::{
    Concurrency, DeleteRequest, SetRequest, StateStore, StoreError, StoredItem, TxOp, check_etag,
    features, next_expiry, unix_now,
};

/// Expired entries are dropped lazily on read and in a full pass every this many writes.
const PRUNE_EVERY: u64 = 1024;

#[derive(Clone)]
struct Entry {
    version: u64,
    expires_at: Option<u64>,
    value: Bytes,
}

#[derive(Default)]
struct Inner {
    map: HashMap<String, Entry>,
    writes: u64,
}

/// An in-memory state store.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

fn live(e: &Entry, now: u64) -> bool {
    e.expires_at.is_none_or(|x| x > now)
}

/// Applies one operation to `view` (a staging copy of the affected keys).
fn apply(
    view: &mut HashMap<String, Option<Entry>>,
    map: &HashMap<String, Entry>,
    op: &TxOp,
    now: u64,
) -> Result<(), StoreError> {
    let key = match op {
        TxOp::Upsert(r) => &r.key,
        TxOp::Delete(r) => &r.key,
    };
    let cur = view
        .entry(key.clone())
        .or_insert_with(|| map.get(key).filter(|e| live(e, now)).cloned());
    match op {
        TxOp::Upsert(r) => {
            check_etag(
                cur.as_ref().map(|e| e.version),
                r.etag.as_deref(),
                r.concurrency,
            )?;
            let prev_exp = cur.as_ref().and_then(|e| e.expires_at);
            *cur = Some(Entry {
                version: cur.as_ref().map_or(0, |e| e.version) + 1,
                expires_at: next_expiry(prev_exp, r.ttl, now),
                value: r.value.clone(),
            });
        }
        TxOp::Delete(r) => {
            check_etag(
                cur.as_ref().map(|e| e.version),
                r.etag.as_deref(),
                Concurrency::LastWrite,
            )?;
            *cur = None;
        }
    }
    Ok(())
}

impl MemoryStore {
    /// Stages `ops` in order and commits them only if every one passes its checks. With
    /// `all_or_nothing == false` the ones before a failure are kept (Dapr's bulk save).
    fn run(&self, ops: &[TxOp], all_or_nothing: bool) -> Result<(), StoreError> {
        let now = unix_now();
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| StoreError::Backend("in-memory store poisoned".into()))?;
        let mut view = HashMap::new();
        let mut result = Ok(());
        for op in ops {
            let mut step = view.clone();
            match apply(&mut step, &inner.map, op, now) {
                Ok(()) => view = step,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_err() && all_or_nothing {
            return result;
        }
        for (k, v) in view {
            match v {
                Some(e) => inner.map.insert(k, e),
                None => inner.map.remove(&k),
            };
        }
        inner.writes += ops.len() as u64;
        if inner.writes >= PRUNE_EVERY {
            inner.writes = 0;
            inner.map.retain(|_, e| live(e, now));
        }
        result
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<StoredItem>, StoreError> {
        let inner = self
            .inner
            .lock()
            .map_err(|_| StoreError::Backend("in-memory store poisoned".into()))?;
        Ok(inner
            .map
            .get(key)
            .filter(|e| live(e, unix_now()))
            .map(|e| StoredItem {
                value: e.value.clone(),
                etag: e.version.to_string(),
                expires_at: e.expires_at,
            }))
    }

    async fn set_many(&self, reqs: Vec<SetRequest>) -> Result<(), StoreError> {
        let ops: Vec<TxOp> = reqs.into_iter().map(TxOp::Upsert).collect();
        self.run(&ops, false)
    }

    async fn delete(&self, req: DeleteRequest) -> Result<(), StoreError> {
        self.run(&[TxOp::Delete(req)], true)
    }

    async fn transact(&self, ops: Vec<TxOp>) -> Result<(), StoreError> {
        self.run(&ops, true)
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
        let inner = self
            .inner
            .lock()
            .map_err(|_| StoreError::Backend("in-memory store poisoned".into()))?;
        let now = unix_now();
        Ok(inner
            .map
            .iter()
            .filter(|(k, e)| k.starts_with(prefix) && live(e, now))
            .map(|(k, e)| {
                let item = StoredItem {
                    value: e.value.clone(),
                    etag: e.version.to_string(),
                    expires_at: e.expires_at,
                };
                (k.clone(), item)
            })
            .collect())
    }
}
