//! `lock.redis`: locks in Redis, shared by every gateway using the same Redis.
//!
//! `SET key owner NX PX <ms>` takes a lock; a Lua script checks the owner and deletes atomically,
//! answering Dapr's unlock status codes.

use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use redis::aio::ConnectionManager;

use super::lock::{LockError, LockStore, UnlockStatus};

const UNLOCK: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return 1 end
if v ~= ARGV[1] then return 2 end
redis.call('DEL', KEYS[1])
return 0
"#;

/// Redis-backed locks.
pub struct RedisLocks {
    /// Reconnects on its own.
    conn: ConnectionManager,
    unlock: Script,
}

impl RedisLocks {
    /// Its health check.
    pub fn health_check(&self) -> std::sync::Arc<dyn super::health::HealthCheck> {
        std::sync::Arc::new(super::state_redis::RedisPing(self.conn.clone()))
    }

    /// Wraps a connection.
    pub fn new(conn: ConnectionManager) -> Self {
        RedisLocks {
            conn,
            unlock: Script::new(UNLOCK),
        }
    }
}

fn err(e: redis::RedisError) -> LockError {
    LockError(format!("redis: {e}"))
}

#[async_trait]
impl LockStore for RedisLocks {
    async fn try_lock(&self, key: &str, owner: &str, expiry: Duration) -> Result<bool, LockError> {
        let mut c = self.conn.clone();
        let ms = u64::try_from(expiry.as_millis()).unwrap_or(u64::MAX);
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(owner)
            .arg("NX")
            .arg("PX")
            .arg(ms)
            .query_async(&mut c)
            .await
            .map_err(err)?;
        Ok(set.is_some())
    }

    async fn unlock(&self, key: &str, owner: &str) -> Result<UnlockStatus, LockError> {
        let mut c = self.conn.clone();
        let code: i64 = self
            .unlock
            .key(key)
            .arg(owner)
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(match code {
            0 => UnlockStatus::Success,
            1 => UnlockStatus::LockDoesNotExist,
            2 => UnlockStatus::LockBelongsToOthers,
            _ => UnlockStatus::InternalError,
        })
    }
}
