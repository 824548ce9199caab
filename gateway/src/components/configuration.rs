//! Configuration stores: `configuration.file` (edgecar's file-backed store) and
//! `configuration.redis` (Dapr's Redis configuration store).
//!
//! A store answers reads of items (value, version, metadata) and broadcasts changes. The file
//! store re-reads its file when it changes (polling its modification time) and versions items by
//! a hash of their value, so versions are stable across restarts; the Redis store reads Dapr's
//! `value||version` strings and learns of changes through keyspace notifications.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use serde::Serialize;
use serde_norway::Value;
use tokio::sync::broadcast;
use tracing::{error, info, warn};

/// One configuration item, in Dapr's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Item {
    /// The value.
    pub value: String,
    /// Its version.
    pub version: String,
    /// Item metadata.
    pub metadata: BTreeMap<String, String>,
}

/// A change: the key and its new item, or `None` when it was deleted.
pub type Change = (String, Option<Item>);

/// Why a configuration read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// A configuration component.
#[async_trait]
pub trait ConfigStore: Send + Sync {
    /// Items for `keys`, or every item when `keys` is empty. Missing keys are left out.
    async fn get(&self, keys: &[String]) -> Result<BTreeMap<String, Item>, ConfigError>;
    /// A receiver of every change from now on.
    fn changes(&self) -> broadcast::Receiver<Vec<Change>>;
}

/// FNV-1a: a stable, dependency-free hash for item versions.
fn version_of(value: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in value.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// `configuration.file`: a YAML (or JSON) mapping of key → value, or key → {value, metadata}.
pub struct FileStore {
    items: Arc<RwLock<BTreeMap<String, Item>>>,
    tx: broadcast::Sender<Vec<Change>>,
}

/// Reads the file into items; every problem is an error (the caller keeps the previous items).
pub fn read_items(path: &std::path::Path) -> Result<BTreeMap<String, Item>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let doc: Value =
        serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut items = BTreeMap::new();
    let Value::Mapping(map) = doc else {
        if doc.is_null() {
            return Ok(items);
        }
        return Err(format!(
            "{}: expected a mapping of key: value",
            path.display()
        ));
    };
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    for (k, v) in &map {
        let key = scalar(k).ok_or_else(|| format!("{}: keys must be strings", path.display()))?;
        let (value, metadata) = match v {
            Value::Mapping(m) => {
                let value = m.get("value").and_then(scalar).ok_or_else(|| {
                    format!(
                        "{}: {key}: an item mapping needs a scalar `value`",
                        path.display()
                    )
                })?;
                let metadata = m
                    .get("metadata")
                    .and_then(Value::as_mapping)
                    .map(|md| {
                        md.iter()
                            .filter_map(|(k, v)| Some((scalar(k)?, scalar(v)?)))
                            .collect()
                    })
                    .unwrap_or_default();
                (value, metadata)
            }
            other => (
                scalar(other).ok_or_else(|| {
                    format!(
                        "{}: {key}: value must be a scalar or {{value, metadata}}",
                        path.display()
                    )
                })?,
                BTreeMap::new(),
            ),
        };
        items.insert(
            key,
            Item {
                version: version_of(&value),
                value,
                metadata,
            },
        );
    }
    Ok(items)
}

fn diff(old: &BTreeMap<String, Item>, new: &BTreeMap<String, Item>) -> Vec<Change> {
    let mut changes: Vec<Change> = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect();
    changes.extend(
        old.keys()
            .filter(|k| !new.contains_key(*k))
            .map(|k| (k.clone(), None)),
    );
    changes
}

impl FileStore {
    /// Loads the file now and returns the store plus the watcher its owner must run.
    pub fn open(
        path: PathBuf,
        poll: Duration,
    ) -> Result<(Self, impl std::future::Future<Output = ()> + Send + 'static), String> {
        let items = Arc::new(RwLock::new(read_items(&path)?));
        let (tx, _) = broadcast::channel(64);
        let watcher = watch_file(path, poll, items.clone(), tx.clone());
        Ok((FileStore { items, tx }, watcher))
    }
}

async fn watch_file(
    path: PathBuf,
    poll: Duration,
    items: Arc<RwLock<BTreeMap<String, Item>>>,
    tx: broadcast::Sender<Vec<Change>>,
) {
    let mtime = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen: Option<SystemTime> = mtime(&path);
    let mut tick = tokio::time::interval(poll);
    loop {
        tick.tick().await;
        let now = mtime(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match read_items(&path) {
            Ok(new) => {
                let changes = {
                    let mut cur = items.write().unwrap_or_else(|p| p.into_inner());
                    let changes = diff(&cur, &new);
                    *cur = new;
                    changes
                };
                if !changes.is_empty() {
                    info!(file = %path.display(), changed = changes.len(), "configuration reloaded");
                    let _ = tx.send(changes);
                }
            }
            Err(e) => {
                error!(error = %e, "configuration file not reloaded; previous items stay in force")
            }
        }
    }
}

#[async_trait]
impl ConfigStore for FileStore {
    async fn get(&self, keys: &[String]) -> Result<BTreeMap<String, Item>, ConfigError> {
        let items = self.items.read().unwrap_or_else(|p| p.into_inner());
        Ok(if keys.is_empty() {
            items.clone()
        } else {
            keys.iter()
                .filter_map(|k| Some((k.clone(), items.get(k)?.clone())))
                .collect()
        })
    }

    fn changes(&self) -> broadcast::Receiver<Vec<Change>> {
        self.tx.subscribe()
    }
}

/// `configuration.redis`: Dapr's Redis configuration store (`SET key "value||version"`).
pub struct RedisConfig {
    conn: ConnectionManager,
    tx: broadcast::Sender<Vec<Change>>,
}

fn parse_redis_value(raw: &str) -> Item {
    let (value, version) = raw.rsplit_once("||").unwrap_or((raw, ""));
    Item {
        value: value.to_owned(),
        version: version.to_owned(),
        metadata: BTreeMap::new(),
    }
}

impl RedisConfig {
    /// Its health check.
    pub fn health_check(&self) -> std::sync::Arc<dyn super::health::HealthCheck> {
        std::sync::Arc::new(super::state_redis::RedisPing(self.conn.clone()))
    }

    /// Connects and returns the store plus the keyspace-notification listener its owner must run.
    pub async fn open(
        client: redis::Client,
        conn: ConnectionManager,
        db: i64,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (tx, _) = broadcast::channel(64);
        // Dapr asks operators to enable keyspace events; do it for them where the server allows.
        let mut c = conn.clone();
        let set: Result<(), _> = redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg("KA")
            .query_async(&mut c)
            .await;
        if let Err(e) = set {
            warn!(error = %e, "could not enable Redis keyspace notifications; subscriptions need notify-keyspace-events KA");
        }
        let listener = listen(client, conn.clone(), db, tx.clone());
        (RedisConfig { conn, tx }, listener)
    }

    async fn read(
        conn: &mut ConnectionManager,
        keys: &[String],
    ) -> Result<BTreeMap<String, Item>, ConfigError> {
        if keys.is_empty() {
            return Ok(BTreeMap::new());
        }
        let values: Vec<Option<String>> = redis::cmd("MGET")
            .arg(keys)
            .query_async(conn)
            .await
            .map_err(|e| ConfigError(format!("redis: {e}")))?;
        Ok(keys
            .iter()
            .zip(values)
            .filter_map(|(k, v)| Some((k.clone(), parse_redis_value(&v?))))
            .collect())
    }
}

/// Listens for keyspace events and broadcasts the changed items; reconnects after failures.
async fn listen(
    client: redis::Client,
    mut conn: ConnectionManager,
    db: i64,
    tx: broadcast::Sender<Vec<Change>>,
) {
    let prefix = format!("__keyspace@{db}__:");
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => {
                if let Err(e) = pubsub.psubscribe(format!("{prefix}*")).await {
                    warn!(error = %e, "redis configuration: psubscribe failed");
                } else {
                    let mut stream = pubsub.on_message();
                    while let Some(msg) = stream.next().await {
                        let Some(key) = msg
                            .get_channel_name()
                            .strip_prefix(&prefix)
                            .map(str::to_owned)
                        else {
                            continue;
                        };
                        let item = RedisConfig::read(&mut conn, std::slice::from_ref(&key))
                            .await
                            .ok()
                            .and_then(|mut m| m.remove(&key));
                        let _ = tx.send(vec![(key, item)]);
                    }
                }
            }
            Err(e) => warn!(error = %e, "redis configuration: no pub/sub connection; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[async_trait]
impl ConfigStore for RedisConfig {
    async fn get(&self, keys: &[String]) -> Result<BTreeMap<String, Item>, ConfigError> {
        let mut conn = self.conn.clone();
        if !keys.is_empty() {
            return Self::read(&mut conn, keys).await;
        }
        let mut all = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await
                .map_err(|e| ConfigError(format!("redis: {e}")))?;
            all.extend(batch);
            if next == 0 || all.len() > 100_000 {
                break;
            }
            cursor = next;
        }
        Self::read(&mut conn, &all).await
    }

    fn changes(&self) -> broadcast::Receiver<Vec<Change>> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_items_and_diffs() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("c.yaml");
        std::fs::write(
            &f,
            "threshold: 21.5\nmode:\n  value: eco\n  metadata: {owner: ops}\n",
        )
        .unwrap();
        let a = read_items(&f).unwrap();
        assert_eq!(a["threshold"].value, "21.5");
        assert_eq!(a["mode"].metadata["owner"], "ops");
        std::fs::write(
            &f,
            "threshold: 22\nmode:\n  value: eco\n  metadata: {owner: ops}\nnew: x\n",
        )
        .unwrap();
        let b = read_items(&f).unwrap();
        let mut changed: Vec<_> = diff(&a, &b)
            .into_iter()
            .map(|(k, v)| (k, v.is_some()))
            .collect();
        changed.sort();
        assert_eq!(
            changed,
            [("new".to_string(), true), ("threshold".to_string(), true)]
        );
        assert_ne!(a["threshold"].version, b["threshold"].version);
        assert_eq!(
            a["mode"].version, b["mode"].version,
            "unchanged values keep their version"
        );
        assert_eq!(
            parse_redis_value("101||3"),
            Item {
                value: "101".into(),
                version: "3".into(),
                metadata: BTreeMap::new()
            }
        );
    }
}
