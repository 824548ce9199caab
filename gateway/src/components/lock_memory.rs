//! `lock.in-memory`: locks held in this process, for a single gateway.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::lock::{LockError, LockStore, UnlockStatus};

/// In-memory locks: key → (owner, lease end).
#[derive(Default)]
pub struct MemoryLocks {
    held: Mutex<HashMap<String, (String, Instant)>>,
}

#[async_trait]
impl LockStore for MemoryLocks {
    async fn try_lock(&self, key: &str, owner: &str, expiry: Duration) -> Result<bool, LockError> {
        let now = Instant::now();
        let mut held = self
            .held
            .lock()
            .map_err(|_| LockError("lock table poisoned".into()))?;
        // Expired leases are dropped as they are met; the table never outgrows the live locks
        // by more than the ones nobody asked about since they expired.
        held.retain(|_, (_, until)| *until > now);
        if held.contains_key(key) {
            return Ok(false);
        }
        held.insert(key.to_owned(), (owner.to_owned(), now + expiry));
        Ok(true)
    }

    async fn unlock(&self, key: &str, owner: &str) -> Result<UnlockStatus, LockError> {
        let now = Instant::now();
        let mut held = self
            .held
            .lock()
            .map_err(|_| LockError("lock table poisoned".into()))?;
        match held.get(key) {
            Some((_, until)) if *until <= now => {
                held.remove(key);
                Ok(UnlockStatus::LockDoesNotExist)
            }
            None => Ok(UnlockStatus::LockDoesNotExist),
            Some((o, _)) if o != owner => Ok(UnlockStatus::LockBelongsToOthers),
            Some(_) => {
                held.remove(key);
                Ok(UnlockStatus::Success)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn leases_expire_and_only_owners_unlock() {
        let l = MemoryLocks::default();
        assert!(l.try_lock("k", "a", Duration::from_secs(10)).await.unwrap());
        assert!(!l.try_lock("k", "b", Duration::from_secs(10)).await.unwrap());
        assert_eq!(
            l.unlock("k", "b").await.unwrap(),
            UnlockStatus::LockBelongsToOthers
        );
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(
            l.unlock("k", "a").await.unwrap(),
            UnlockStatus::LockDoesNotExist
        );
        assert!(l.try_lock("k", "b", Duration::from_secs(10)).await.unwrap());
        assert_eq!(l.unlock("k", "b").await.unwrap(), UnlockStatus::Success);
    }
}
