//! `state.redis`: state in a real Redis, for sites that outgrow one box.
//!
//! Layout matches Dapr's Redis store: each key is a hash with `data` and `version`; the ETag is the
//! version. Every check-and-write runs as one Lua script, so ETag checks are atomic, and a
//! transaction validates every operation (simulating earlier ones) before it applies any, so it is
//! all-or-nothing without MULTI/WATCH round trips.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, Script};

use super::state::{
    Concurrency, DeleteRequest, SetRequest, StateStore, StoreError, StoredItem, Ttl, TxOp, features,
};

const MISMATCH: &str = "ETAG_MISMATCH";

const SET_SCRIPT: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'version')
if ARGV[1] ~= '' then
  if (not cur) or cur ~= ARGV[1] then return redis.error_reply('ETAG_MISMATCH') end
elseif ARGV[2] == '1' and cur then
  return redis.error_reply('ETAG_MISMATCH')
end
local v = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'data', ARGV[3])
if ARGV[4] == 'persist' then redis.call('PERSIST', KEYS[1])
elseif ARGV[4] ~= 'keep' then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4])) end
return v
"#;

const DELETE_SCRIPT: &str = r#"
if ARGV[1] ~= '' then
  local cur = redis.call('HGET', KEYS[1], 'version')
  if (not cur) or cur ~= ARGV[1] then return redis.error_reply('ETAG_MISMATCH') end
end
return redis.call('DEL', KEYS[1])
"#;

/// ARGV holds five values per operation: kind (u|d), etag, first-write (1|0), value, ttl.
const TX_SCRIPT: &str = r#"
local ver = {}
local function current(k)
  if ver[k] == nil then ver[k] = redis.call('HGET', k, 'version') or false end
  return ver[k]
end
for i = 1, #KEYS do
  local k, b = KEYS[i], (i - 1) * 5
  local op, etag, fw = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local cur = current(k)
  if etag ~= '' then
    if (not cur) or cur ~= etag then return redis.error_reply('ETAG_MISMATCH') end
  elseif op == 'u' and fw == '1' and cur then
    return redis.error_reply('ETAG_MISMATCH')
  end
  if op == 'u' then ver[k] = tostring((tonumber(cur) or 0) + 1) else ver[k] = false end
end
for i = 1, #KEYS do
  local k, b = KEYS[i], (i - 1) * 5
  if ARGV[b + 1] == 'u' then
    redis.call('HINCRBY', k, 'version', 1)
    redis.call('HSET', k, 'data', ARGV[b + 4])
    local ttl = ARGV[b + 5]
    if ttl == 'persist' then redis.call('PERSIST', k)
    elseif ttl ~= 'keep' then redis.call('EXPIRE', k, tonumber(ttl)) end
  else
    redis.call('DEL', k)
  end
end
return #KEYS
"#;

/// Connection settings from the component's metadata (Dapr's names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redisHost`: `host:port`.
    pub host: String,
    /// `redisPort` is folded into `host`; the port used.
    pub port: u16,
    /// `redisUsername`.
    pub username: Option<String>,
    /// `redisPassword`.
    pub password: Option<String>,
    /// `redisDB`.
    pub db: i64,
    /// `dialTimeout` and component `initTimeout`: how long a connection attempt may take.
    pub connect_timeout: Duration,
    /// `readTimeout`: how long one command may take before the call fails.
    pub response_timeout: Duration,
}

/// A Redis-backed state store.
pub struct RedisStore {
    /// Reconnects on its own after Redis restarts.
    conn: ConnectionManager,
    set: Script,
    delete: Script,
    tx: Script,
}

fn backend(e: redis::RedisError) -> StoreError {
    if e.to_string().contains(MISMATCH) {
        StoreError::EtagMismatch
    } else {
        StoreError::Backend(format!("redis: {e}"))
    }
}

fn ttl_arg(ttl: Ttl) -> String {
    match ttl {
        Ttl::Keep => "keep".into(),
        Ttl::Persist => "persist".into(),
        Ttl::Seconds(s) => s.to_string(),
    }
}

/// Rejects ETags Redis could never have issued before a script sees them (Dapr answers 400).
fn etag_arg(etag: &Option<String>) -> Result<String, StoreError> {
    match etag.as_deref() {
        None | Some("") => Ok(String::new()),
        Some(e) if e.parse::<u64>().is_ok() => Ok(e.to_owned()),
        Some(e) => Err(StoreError::EtagInvalid(e.to_owned())),
    }
}

fn first_write(c: Concurrency) -> &'static str {
    if c == Concurrency::FirstWrite {
        "1"
    } else {
        "0"
    }
}

/// A client for the settings (no connection yet), e.g. for pub/sub connections.
pub fn client(s: &RedisSettings) -> Result<redis::Client, StoreError> {
    let mut redis_info = RedisConnectionInfo::default().set_db(s.db);
    if let Some(u) = &s.username {
        redis_info = redis_info.set_username(u);
    }
    if let Some(p) = &s.password {
        redis_info = redis_info.set_password(p);
    }
    let info = ConnectionAddr::Tcp(s.host.clone(), s.port)
        .into_connection_info()
        .map_err(backend)?
        .set_redis_settings(redis_info);
    redis::Client::open(info).map_err(backend)
}

/// Opens a self-reconnecting connection to Redis, failing if none is made within
/// `connect_timeout`. Shared by every Redis-backed component.
pub async fn connect(s: &RedisSettings) -> Result<ConnectionManager, StoreError> {
    let client = client(s)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(s.connect_timeout))
        .set_response_timeout(Some(s.response_timeout))
        .set_number_of_retries(3);
    let conn = tokio::time::timeout(
        s.connect_timeout,
        ConnectionManager::new_with_config(client, config),
    )
    .await
    .map_err(|_| {
        StoreError::Backend(format!(
            "redis: no connection to {}:{} within {:?}",
            s.host, s.port, s.connect_timeout
        ))
    })?
    .map_err(backend)?;
    Ok(conn)
}

/// As [`connect`], with another per-command timeout (a blocking stream read waits longer than a
/// state read), and the error as text.
pub async fn connect_manager(
    s: &RedisSettings,
    response_timeout: Duration,
) -> Result<ConnectionManager, String> {
    let settings = RedisSettings {
        response_timeout,
        ..s.clone()
    };
    connect(&settings).await.map_err(|e| e.to_string())
}

/// The health check of every Redis-backed component: a `PING` through the component's own
/// self-reconnecting connection, so a restarted Redis shows healthy again once the component
/// could use it again.
pub struct RedisPing(pub ConnectionManager);

#[async_trait]
impl super::health::HealthCheck for RedisPing {
    fn what(&self) -> &'static str {
        "Redis PING"
    }

    async fn check(&self) -> Result<(), String> {
        let mut conn = self.0.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(drop)
            .map_err(|e| format!("redis: {e}"))
    }
}

impl RedisStore {
    /// Its health check.
    pub fn health_check(&self) -> std::sync::Arc<dyn super::health::HealthCheck> {
        std::sync::Arc::new(RedisPing(self.conn.clone()))
    }

    /// Connects to Redis, failing if it cannot within `connect_timeout`.
    pub async fn connect(s: &RedisSettings) -> Result<Self, StoreError> {
        let conn = connect(s).await?;
        Ok(RedisStore {
            conn,
            set: Script::new(SET_SCRIPT),
            delete: Script::new(DELETE_SCRIPT),
            tx: Script::new(TX_SCRIPT),
        })
    }
}

#[async_trait]
impl StateStore for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<StoredItem>, StoreError> {
        let mut conn = self.conn.clone();
        let (data, version): (Option<Vec<u8>>, Option<String>) = redis::cmd("HMGET")
            .arg(key)
            .arg("data")
            .arg("version")
            .query_async(&mut conn)
            .await
            .map_err(backend)?;
        Ok(data.map(|d| StoredItem {
            value: Bytes::from(d),
            etag: version.unwrap_or_else(|| "1".into()),
            expires_at: None,
        }))
    }

    async fn set_many(&self, reqs: Vec<SetRequest>) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        for r in reqs {
            let etag = etag_arg(&r.etag)?;
            let _: i64 = self
                .set
                .key(&r.key)
                .arg(etag)
                .arg(first_write(r.concurrency))
                .arg(&r.value[..])
                .arg(ttl_arg(r.ttl))
                .invoke_async(&mut conn)
                .await
                .map_err(backend)?;
        }
        Ok(())
    }

    async fn delete(&self, req: DeleteRequest) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let etag = etag_arg(&req.etag)?;
        let _: i64 = self
            .delete
            .key(&req.key)
            .arg(etag)
            .invoke_async(&mut conn)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn transact(&self, ops: Vec<TxOp>) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut inv = self.tx.prepare_invoke();
        for op in &ops {
            match op {
                TxOp::Upsert(r) => {
                    inv.key(&r.key)
                        .arg("u")
                        .arg(etag_arg(&r.etag)?)
                        .arg(first_write(r.concurrency))
                        .arg(&r.value[..])
                        .arg(ttl_arg(r.ttl));
                }
                TxOp::Delete(r) => {
                    inv.key(&r.key)
                        .arg("d")
                        .arg(etag_arg(&r.etag)?)
                        .arg("0")
                        .arg("")
                        .arg("keep");
                }
            }
        }
        let mut conn = self.conn.clone();
        let _: i64 = inv.invoke_async(&mut conn).await.map_err(backend)?;
        Ok(())
    }

    fn features(&self) -> &'static [&'static str] {
        &[
            features::ETAG,
            features::TRANSACTIONAL,
            features::TTL,
            features::QUERY,
        ]
    }

    /// `SCAN` for the prefix (glob characters escaped), then each key's item.
    async fn scan(&self, prefix: &str) -> Result<Vec<(String, StoredItem)>, StoreError> {
        let mut pattern = String::with_capacity(prefix.len() + 1);
        for c in prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('*');
        let mut conn = self.conn.clone();
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await
                .map_err(backend)?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            // Other kinds of keys (locks, streams) may share the prefix: skip what is not state.
            if let Ok(Some(item)) = self.get(&k).await {
                out.push((k, item));
            }
        }
        Ok(out)
    }
}
