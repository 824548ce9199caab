//! The interface of lock components, shared by `lock.in-memory` and `lock.redis`.
//!
//! A lock is a key with an owner and an expiry: `try_lock` takes it only if nobody holds it (or
//! the holder's lease expired), `unlock` releases it only for its owner. Keys arrive namespaced
//! (`lock||<owner>||<resource>`); the lock building block owns that.

use std::time::Duration;

use async_trait::async_trait;

/// Dapr's unlock outcomes, with Dapr's numeric codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnlockStatus {
    /// Released.
    Success = 0,
    /// Nobody holds the lock (never taken, released, or expired).
    LockDoesNotExist = 1,
    /// Another owner holds it.
    LockBelongsToOthers = 2,
    /// The store failed.
    InternalError = 3,
}

/// Why a lock store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LockError(pub String);

/// A lock component.
#[async_trait]
pub trait LockStore: Send + Sync {
    /// Takes the lock for `owner` for `expiry`, unless someone else holds it. `true` if taken.
    async fn try_lock(&self, key: &str, owner: &str, expiry: Duration) -> Result<bool, LockError>;

    /// Releases the lock if `owner` holds it.
    async fn unlock(&self, key: &str, owner: &str) -> Result<UnlockStatus, LockError>;
}
