//! `pubsub.redis`: Redis Streams, as Dapr's Redis pub/sub uses them.
//!
//! A publish is `XADD <topic> [MAXLEN ~ maxLenApprox] * data <message>`. A subscription joins the
//! consumer group `consumerID` (default: the app id, as everywhere `{appID}`), created from
//! the start of the stream if missing, reads with `XREADGROUP ... >` and `XACK`s what its
//! handler acks. A message not acked stays pending in the group; every `redeliverInterval` the
//! subscription claims (`XAUTOCLAIM`) messages pending longer than `processingTimeout` and
//! delivers them again — including those a crashed edgecar left behind. So delivery is
//! at-least-once across restarts of either side, with Redis's own durability.
//!
//! Metadata (Dapr's names): `redisHost`, `redisUsername`, `redisPassword`, `redisDB`,
//! `dialTimeout`, `readTimeout`, `consumerID`, `processingTimeout` (default 60s),
//! `redeliverInterval` (default 60s, 0 disables), `queueDepth` (messages read at once, default
//! 100), `maxLenApprox` (trim the stream to about this many entries), `concurrency` /
//! `concurrencyMode`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::Value;
use redis::aio::ConnectionManager;
use tracing::{debug, info, warn};

use super::pubsub::{
    Consumer, FieldErrors, Handler, InMessage, OutMessage, Outcome, PubSub, PubSubError, Stop,
    SubscribeRequest, Workers, concurrency, duration_meta, stopped,
};
use super::state_redis::{RedisSettings, connect_manager};
use crate::config::resources::Component;

/// How long one `XREADGROUP` blocks waiting for messages; bounds how fast a stop is noticed.
const BLOCK: Duration = Duration::from_secs(1);

/// Settings from the component's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSettings {
    /// Where Redis is.
    pub redis: RedisSettings,
    /// `consumerID`: the consumer group (and consumer) name; empty means the app id.
    pub consumer_id: String,
    /// `processingTimeout`: how long a message may stay unacked before it is claimed again.
    pub processing_timeout: Duration,
    /// `redeliverInterval`: how often pending messages are looked for; zero disables.
    pub redeliver_interval: Duration,
    /// `queueDepth`: most messages read in one go.
    pub queue_depth: usize,
    /// `maxLenApprox`: trim the stream to about this many entries on publish.
    pub max_len_approx: Option<u64>,
    /// Deliveries in flight per subscription.
    pub concurrency: usize,
}

impl StreamSettings {
    /// Reads the stream settings; connection settings come already checked.
    pub fn from_component(c: &Component, redis: RedisSettings) -> Result<Self, FieldErrors> {
        let mut errors = FieldErrors::new();
        let processing_timeout =
            duration_meta(c, "processingTimeout", Duration::from_secs(60), &mut errors);
        let redeliver_interval =
            duration_meta(c, "redeliverInterval", Duration::from_secs(60), &mut errors);
        let mut number = |name: &'static str| match c.meta(name).filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => match s.parse::<u64>() {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    errors.push((name, format!("{s:?} is not a positive number")));
                    None
                }
            },
        };
        let queue_depth = number("queueDepth").map_or(100, |n| n.min(10_000) as usize);
        let max_len_approx = number("maxLenApprox");
        let concurrency = concurrency(c, &mut errors);
        if errors.is_empty() {
            Ok(StreamSettings {
                redis,
                consumer_id: c.meta("consumerID").unwrap_or_default().to_owned(),
                processing_timeout,
                redeliver_interval,
                queue_depth,
                max_len_approx,
                concurrency,
            })
        } else {
            Err(errors)
        }
    }
}

/// A Redis Streams pub/sub.
pub struct RedisPubSub {
    settings: StreamSettings,
    /// Publishes, acks and claims.
    conn: ConnectionManager,
}

fn backend(e: redis::RedisError) -> PubSubError {
    PubSubError::Backend(format!("redis: {e}"))
}

/// One stream entry: its id and its `data` field.
struct Entry {
    id: String,
    data: Bytes,
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Reads `[[id, [field, value, ...]], ...]`.
fn entries(v: &Value) -> Vec<Entry> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(pair) = item else {
                return None;
            };
            let id = text(pair.first()?)?;
            let fields: Vec<&Value> = match pair.get(1)? {
                Value::Array(f) => f.iter().collect(),
                Value::Map(m) => m.iter().flat_map(|(k, v)| [k, v]).collect(),
                // A claimed entry whose data was trimmed away meanwhile.
                _ => Vec::new(),
            };
            let data = fields
                .chunks(2)
                .find(|kv| kv.first().and_then(|k| text(k)).as_deref() == Some("data"))
                .and_then(|kv| match kv.get(1) {
                    Some(Value::BulkString(b)) => Some(Bytes::copy_from_slice(b)),
                    Some(Value::SimpleString(s)) => Some(Bytes::copy_from_slice(s.as_bytes())),
                    _ => None,
                })
                .unwrap_or_default();
            Some(Entry { id, data })
        })
        .collect()
}

/// Reads an `XREADGROUP` reply (RESP2 array or RESP3 map of stream → entries).
fn read_reply(v: &Value) -> Vec<Entry> {
    match v {
        Value::Array(streams) => streams
            .iter()
            .filter_map(|s| match s {
                Value::Array(kv) => kv.get(1).map(entries),
                _ => None,
            })
            .flatten()
            .collect(),
        Value::Map(m) => m.iter().flat_map(|(_, e)| entries(e)).collect(),
        _ => Vec::new(),
    }
}

impl RedisPubSub {
    /// Its health check.
    pub fn health_check(&self) -> Arc<dyn super::health::HealthCheck> {
        Arc::new(super::state_redis::RedisPing(self.conn.clone()))
    }

    /// Connects to Redis.
    pub async fn connect(settings: StreamSettings) -> Result<Self, String> {
        let conn = connect_manager(&settings.redis, settings.redis.response_timeout).await?;
        Ok(RedisPubSub { settings, conn })
    }
}

/// What a subscription shares with its handler tasks.
struct Sub {
    topic: String,
    group: String,
    conn: ConnectionManager,
    handler: Arc<dyn Handler>,
    /// Entries being handled, so a claim does not hand one out twice.
    in_flight: Mutex<HashSet<String>>,
}

impl Sub {
    fn start(self: &Arc<Self>, workers: &mut Workers, e: Entry) {
        if !self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(e.id.clone())
        {
            return;
        }
        let sub = self.clone();
        workers.spawn(async move {
            let msg = InMessage {
                topic: sub.topic.clone(),
                data: e.data,
                metadata: HashMap::new(),
            };
            if sub.handler.handle(msg).await == Outcome::Ack {
                let mut conn = sub.conn.clone();
                let acked: Result<i64, _> = redis::cmd("XACK")
                    .arg(&sub.topic)
                    .arg(&sub.group)
                    .arg(&e.id)
                    .query_async(&mut conn)
                    .await;
                if let Err(err) = acked {
                    warn!(topic = %sub.topic, id = %e.id, error = %err, "XACK failed; the message will be delivered again");
                }
            }
            sub.in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&e.id);
        });
    }

    /// Claims entries pending longer than `min_idle`, through every page of `XAUTOCLAIM`.
    async fn claim(&self, min_idle: Duration, count: usize) -> Result<Vec<Entry>, PubSubError> {
        let mut conn = self.conn.clone();
        let mut cursor = "0-0".to_owned();
        let mut out = Vec::new();
        loop {
            let reply: Value = redis::cmd("XAUTOCLAIM")
                .arg(&self.topic)
                .arg(&self.group)
                .arg(&self.group)
                .arg(min_idle.as_millis() as u64)
                .arg(&cursor)
                .arg("COUNT")
                .arg(count)
                .query_async(&mut conn)
                .await
                .map_err(backend)?;
            let Value::Array(parts) = reply else {
                return Ok(out);
            };
            out.extend(parts.get(1).map(entries).unwrap_or_default());
            cursor = parts.first().and_then(text).unwrap_or_else(|| "0-0".into());
            if cursor == "0-0" || out.len() >= count {
                return Ok(out);
            }
        }
    }
}

#[async_trait]
impl PubSub for RedisPubSub {
    fn features(&self) -> &'static [&'static str] {
        &[]
    }

    async fn publish(&self, msg: OutMessage) -> Result<(), PubSubError> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&msg.topic);
        if let Some(n) = self.settings.max_len_approx {
            cmd.arg("MAXLEN").arg("~").arg(n);
        }
        cmd.arg("*").arg("data").arg(&msg.data[..]);
        let _: Value = cmd.query_async(&mut conn).await.map_err(backend)?;
        Ok(())
    }

    async fn subscribe(
        &self,
        req: SubscribeRequest,
        handler: Arc<dyn Handler>,
        mut stop: Stop,
    ) -> Result<Consumer, PubSubError> {
        // The runtime fills consumerID with the app id when it is not set.
        let group = match self.settings.consumer_id.as_str() {
            "" => req.app_id.clone(),
            id => id.to_owned(),
        };
        let mut conn = self.conn.clone();
        create_group(&mut conn, &req.topic, &group)
            .await
            .map_err(backend)?;
        // Blocking reads get their own connection so they never hold up acks and publishes.
        let reader = connect_manager(
            &self.settings.redis,
            BLOCK + self.settings.redis.response_timeout,
        )
        .await
        .map_err(PubSubError::Backend)?;
        let settings = self.settings.clone();
        let sub = Arc::new(Sub {
            topic: req.topic.clone(),
            group,
            conn: self.conn.clone(),
            handler,
            in_flight: Mutex::new(HashSet::new()),
        });
        Ok(Box::pin(async move {
            let mut reader = reader;
            let mut workers = Workers::new(req.max_concurrency);
            let redeliver = settings.redeliver_interval;
            // Claim right away at start: a previous run may have left messages pending.
            let mut next_claim = tokio::time::Instant::now();
            // Whether the last read failed: the first failure of an outage is a warning, the
            // repeats are not, and the recovery is said.
            let mut failing = false;
            loop {
                tokio::select! {
                    biased;
                    () = stopped(&mut stop) => break,
                    () = workers.slot() => {}
                }
                let free = workers.free().min(settings.queue_depth);
                if !redeliver.is_zero() && tokio::time::Instant::now() >= next_claim {
                    next_claim = tokio::time::Instant::now() + redeliver;
                    match sub.claim(settings.processing_timeout, free.max(1)).await {
                        Ok(claimed) => {
                            if !claimed.is_empty() {
                                info!(topic = %sub.topic, count = claimed.len(), "redelivering messages pending longer than processingTimeout");
                            }
                            for e in claimed {
                                workers.slot().await;
                                sub.start(&mut workers, e);
                            }
                            continue;
                        }
                        Err(e) => {
                            warn!(topic = %sub.topic, error = %e, "claiming pending messages failed")
                        }
                    }
                }
                let mut cmd = redis::cmd("XREADGROUP");
                cmd.arg("GROUP")
                    .arg(&sub.group)
                    .arg(&sub.group)
                    .arg("COUNT")
                    .arg(free)
                    .arg("BLOCK")
                    .arg(BLOCK.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(&sub.topic)
                    .arg(">");
                let read: Result<Value, _> = tokio::select! {
                    biased;
                    () = stopped(&mut stop) => break,
                    r = cmd.query_async(&mut reader) => r,
                };
                match read {
                    Ok(v) => {
                        if std::mem::take(&mut failing) {
                            info!(topic = %sub.topic, "reading the stream works again");
                        }
                        for e in read_reply(&v) {
                            sub.start(&mut workers, e);
                        }
                    }
                    Err(e) if e.to_string().contains("NOGROUP") => {
                        // Redis lost the stream or the group (restarted without persistence, or
                        // someone deleted the key): make them again, from the start of whatever the
                        // stream holds now, so that events published since are delivered.
                        warn!(topic = %sub.topic, group = %sub.group, "the consumer group is gone from Redis (restarted empty?); creating it again");
                        let mut conn = sub.conn.clone();
                        if let Err(e) = create_group(&mut conn, &sub.topic, &sub.group).await {
                            warn!(topic = %sub.topic, error = %e, "could not create the consumer group; retrying");
                            tokio::select! {
                                () = stopped(&mut stop) => break,
                                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                            }
                        }
                    }
                    Err(e) => {
                        if std::mem::replace(&mut failing, true) {
                            debug!(topic = %sub.topic, error = %e, "XREADGROUP failed; retrying");
                        } else {
                            warn!(topic = %sub.topic, error = %e, "reading the stream failed; retrying every second");
                        }
                        tokio::select! {
                            () = stopped(&mut stop) => break,
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            }
            workers.drain().await;
        }))
    }
}

/// Creates the consumer group (and the stream) unless it exists. From the start of the stream,
/// as Dapr creates it: messages published before the first subscription are delivered too.
async fn create_group(
    conn: &mut redis::aio::ConnectionManager,
    topic: &str,
    group: &str,
) -> Result<(), redis::RedisError> {
    let created: Result<Value, _> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(topic)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Err(e) if !e.to_string().contains("BUSYGROUP") => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn stream_replies_are_read_in_both_protocols() {
        let entry = Value::Array(vec![
            bulk("1-0"),
            Value::Array(vec![bulk("data"), bulk("hello")]),
        ]);
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk("orders"),
            Value::Array(vec![entry.clone()]),
        ])]);
        let got = read_reply(&resp2);
        assert_eq!(
            (got[0].id.as_str(), &got[0].data[..]),
            ("1-0", &b"hello"[..])
        );
        let resp3 = Value::Map(vec![(bulk("orders"), Value::Array(vec![entry]))]);
        assert_eq!(read_reply(&resp3).len(), 1);
        assert!(read_reply(&Value::Nil).is_empty());
    }
}
