//! The interface every state component implements, and the concurrency rules they share.
//!
//! Stores see fully namespaced keys (`<owner>||<key>`); namespacing, request decoding and Dapr's
//! error codes belong to the state building block. ETags are decimal version numbers, as in
//! Dapr's Redis store; [`check_etag`] holds the optimistic-concurrency rule once for the stores
//! that keep versions themselves (sled, in-memory).

use async_trait::async_trait;
use bytes::Bytes;

/// How writes race: Dapr's `options.concurrency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Concurrency {
    /// The first writer wins: a write without an ETag only succeeds when the key does not exist.
    FirstWrite,
    /// The last writer wins: a write without an ETag always succeeds.
    #[default]
    LastWrite,
}

impl Concurrency {
    /// Parses Dapr's spelling (`first-write`, `last-write`); empty means the default.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "first-write" => Some(Concurrency::FirstWrite),
            "last-write" | "" => Some(Concurrency::LastWrite),
            _ => None,
        }
    }
}

/// What a write does to the key's time to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ttl {
    /// No `ttlInSeconds`: keep whatever expiry the key already has (Dapr's Redis behaviour).
    #[default]
    Keep,
    /// `ttlInSeconds: -1`: remove any expiry.
    Persist,
    /// Expire this many seconds after the write.
    Seconds(u64),
}

/// One value as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredItem {
    /// The value's bytes, exactly as saved.
    pub value: Bytes,
    /// The current ETag.
    pub etag: String,
    /// When the value expires, in Unix seconds, if it has a TTL.
    pub expires_at: Option<u64>,
}

/// A write of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetRequest {
    /// The namespaced key.
    pub key: String,
    /// The value's bytes.
    pub value: Bytes,
    /// The ETag the caller expects the key to have now.
    pub etag: Option<String>,
    /// First- or last-write-wins.
    pub concurrency: Concurrency,
    /// Expiry handling.
    pub ttl: Ttl,
}

/// A delete of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteRequest {
    /// The namespaced key.
    pub key: String,
    /// The ETag the caller expects the key to have now.
    pub etag: Option<String>,
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxOp {
    /// Insert or update.
    Upsert(SetRequest),
    /// Delete.
    Delete(DeleteRequest),
}

/// Why a store refused or failed a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The key's ETag is not the one the caller sent (or the key is gone, or first-write lost).
    #[error("possible etag mismatch: the key was changed or removed since it was read")]
    EtagMismatch,
    /// The ETag is not one this store could ever have issued.
    #[error("invalid etag {0:?}: etags are decimal version numbers")]
    EtagInvalid(String),
    /// The store cannot do this (e.g. transactions).
    #[error("operation not supported by this store: {0}")]
    NotSupported(&'static str),
    /// The backend failed (I/O, connection, protocol).
    #[error("{0}")]
    Backend(String),
    /// The disk is full: nothing was written (507). Passes once space frees.
    #[error("{0}")]
    DiskFull(String),
}

/// Dapr's feature names a store advertises in `/v1.0/metadata`.
pub mod features {
    /// Optimistic concurrency with ETags.
    pub const ETAG: &str = "ETAG";
    /// All-or-nothing transactions.
    pub const TRANSACTIONAL: &str = "TRANSACTIONAL";
    /// Per-key time to live.
    pub const TTL: &str = "TTL";
    /// The state query API (filter, sort, page).
    pub const QUERY: &str = "QUERY_API";
}

/// A state component.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// Reads a key; `None` when it does not exist or has expired.
    async fn get(&self, key: &str) -> Result<Option<StoredItem>, StoreError>;

    /// Writes several keys, in order, stopping at the first failure. Returns only once every
    /// write is durable as far as the store promises (for sled: on disk).
    async fn set_many(&self, reqs: Vec<SetRequest>) -> Result<(), StoreError>;

    /// Deletes a key; deleting a missing key without an ETag succeeds.
    async fn delete(&self, req: DeleteRequest) -> Result<(), StoreError>;

    /// Applies every operation or none.
    async fn transact(&self, ops: Vec<TxOp>) -> Result<(), StoreError>;

    /// Feature names for `/v1.0/metadata`.
    fn features(&self) -> &'static [&'static str];

    /// Every live key starting with `prefix`, with its item, for the state query API (the
    /// block filters, sorts and pages). Stores that cannot list their keys say so.
    async fn scan(&self, _prefix: &str) -> Result<Vec<(String, StoredItem)>, StoreError> {
        Err(StoreError::NotSupported("query"))
    }
}

/// Decides whether a write or delete may proceed given the key's current version.
///
/// `current` is `None` when the key does not exist. An empty ETag counts as none, as in Dapr.
pub fn check_etag(
    current: Option<u64>,
    etag: Option<&str>,
    concurrency: Concurrency,
) -> Result<(), StoreError> {
    match etag.filter(|e| !e.is_empty()) {
        Some(e) => {
            let want: u64 = e
                .parse()
                .map_err(|_| StoreError::EtagInvalid(e.to_owned()))?;
            if current == Some(want) {
                Ok(())
            } else {
                Err(StoreError::EtagMismatch)
            }
        }
        None if concurrency == Concurrency::FirstWrite && current.is_some() => {
            Err(StoreError::EtagMismatch)
        }
        None => Ok(()),
    }
}

/// The expiry a write leaves on a key, in Unix seconds, given the key's previous expiry.
pub fn next_expiry(previous: Option<u64>, ttl: Ttl, now: u64) -> Option<u64> {
    match ttl {
        Ttl::Keep => previous,
        Ttl::Persist => None,
        Ttl::Seconds(s) => Some(now.saturating_add(s)),
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_rules_follow_dapr() {
        use Concurrency::*;
        assert_eq!(check_etag(None, None, LastWrite), Ok(()));
        assert_eq!(check_etag(Some(3), None, LastWrite), Ok(()));
        assert_eq!(check_etag(None, None, FirstWrite), Ok(()));
        assert_eq!(
            check_etag(Some(3), None, FirstWrite),
            Err(StoreError::EtagMismatch)
        );
        assert_eq!(check_etag(Some(3), Some("3"), FirstWrite), Ok(()));
        assert_eq!(
            check_etag(Some(3), Some("2"), LastWrite),
            Err(StoreError::EtagMismatch)
        );
        assert_eq!(
            check_etag(None, Some("1"), LastWrite),
            Err(StoreError::EtagMismatch)
        );
        assert_eq!(check_etag(Some(1), Some(""), LastWrite), Ok(()));
        assert!(matches!(
            check_etag(Some(1), Some("abc"), LastWrite),
            Err(StoreError::EtagInvalid(_))
        ));
    }

    #[test]
    fn ttl_keeps_replaces_or_clears_expiry() {
        assert_eq!(next_expiry(Some(50), Ttl::Keep, 10), Some(50));
        assert_eq!(next_expiry(Some(50), Ttl::Persist, 10), None);
        assert_eq!(next_expiry(None, Ttl::Seconds(5), 10), Some(15));
    }
}
