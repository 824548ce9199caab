//! `pubsub.sled`: the durable local pub/sub, one [`Queue`] per topic in the gateway's database.
//!
//! A publish returns once the message is on disk; a subscription leases messages oldest first,
//! keeps each lease alive while its handler runs, and acks or nacks by the handler's outcome. A
//! message not acked before a crash or `kill -9` is delivered again after the restart.
//!
//! Only this process reads these queues, so a topic nobody consumes would fill its queue for
//! nothing: once the subscriptions are known ([`PubSub::topics_in_use`]), publishes to a topic
//! that is neither subscribed nor a dead-letter topic are accepted and dropped, as a broker does
//! with no subscriber. Until then everything is kept (the app may not have said yet what it
//! subscribes to). A full queue refuses publishes (see [`crate::queue`]).
//!
//! Metadata: `maxMessages` and `maxBytes` bound each topic's queue (default 100000 messages,
//! 64Mi), `maxTopics` the number of topics with a queue (default 1000: until the subscriptions are
//! known, every topic a publisher names gets one, and each is a tree in the database),
//! `redeliverInterval` is how long a nacked message waits (default 5s), `concurrency` /
//! `concurrencyMode` bound deliveries in flight per subscription.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tracing::{debug, warn};

use super::pubsub::{
    Consumer, FieldErrors, Handler, InMessage, OutMessage, Outcome, PubSub, PubSubError, Stop,
    SubscribeRequest, Workers, concurrency, duration_meta, stopped,
};
use crate::config::resources::Component;
use crate::config::units::parse_size;
use crate::queue::{Leased, Limits, Queue, QueueError};
use crate::storage::Storage;

/// How long a delivery holds its lease before it must be extended; in-flight handlers extend
/// it every third of this, so it only runs out if a handler task is lost.
const LEASE: Duration = Duration::from_secs(60);

/// Topics with a queue when `maxTopics` is not set.
const DEFAULT_MAX_TOPICS: usize = 1000;

/// Settings from the component's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SledSettings {
    /// Per-topic queue bounds.
    pub limits: Limits,
    /// Topics with a queue, at most; a publish to one more is refused.
    pub max_topics: usize,
    /// Delay before a nacked message is delivered again.
    pub redeliver: Duration,
    /// Deliveries in flight per subscription.
    pub concurrency: usize,
}

impl SledSettings {
    /// Reads and checks the metadata, collecting every problem.
    pub fn from_component(c: &Component) -> Result<SledSettings, FieldErrors> {
        let mut errors = FieldErrors::new();
        let defaults = Limits::default();
        let max_messages = positive(c, "maxMessages", defaults.max_messages, &mut errors);
        let max_bytes = match c.meta("maxBytes").filter(|s| !s.is_empty()) {
            None => defaults.max_bytes,
            Some(s) => match parse_size(s) {
                Ok(n) if n > 0 => n,
                Ok(_) => {
                    errors.push(("maxBytes", "must be more than 0".into()));
                    defaults.max_bytes
                }
                Err(m) => {
                    errors.push(("maxBytes", m));
                    defaults.max_bytes
                }
            },
        };
        let max_topics = positive(c, "maxTopics", DEFAULT_MAX_TOPICS, &mut errors);
        let redeliver = duration_meta(c, "redeliverInterval", Duration::from_secs(5), &mut errors);
        let concurrency = concurrency(c, &mut errors);
        if errors.is_empty() {
            Ok(SledSettings {
                limits: Limits {
                    max_messages,
                    max_bytes,
                },
                max_topics,
                redeliver,
                concurrency,
            })
        } else {
            Err(errors)
        }
    }
}

/// A positive whole number from the metadata field `key`, or `default` when it is not set.
fn positive<T>(c: &Component, key: &'static str, default: T, errors: &mut FieldErrors) -> T
where
    T: std::str::FromStr + PartialOrd + From<u8>,
{
    match c.meta(key).filter(|s| !s.is_empty()) {
        None => default,
        Some(s) => match s.parse::<T>() {
            Ok(n) if n > T::from(0) => n,
            _ => {
                errors.push((key, format!("{s:?} is not a positive number")));
                default
            }
        },
    }
}

/// The durable local pub/sub. Cheap to clone.
#[derive(Clone)]
pub struct SledPubSub {
    inner: Arc<Inner>,
}

struct Inner {
    /// Component name: queues are `pubsub.sled/<name>/<topic>`.
    name: String,
    storage: Storage,
    settings: SledSettings,
    /// Open queues by topic.
    queues: tokio::sync::Mutex<HashMap<String, Queue>>,
    /// Topics with a consumer, once known.
    in_use: RwLock<Option<HashSet<String>>>,
    /// Consumers running per topic (streaming subscriptions start after `in_use` is known):
    /// a consumed topic is in use whatever the declared set says.
    live: std::sync::Mutex<HashMap<String, usize>>,
}

/// Counts a running consumer of a topic for as long as it lives.
struct Live {
    inner: Arc<Inner>,
    topic: String,
}

impl Live {
    fn new(inner: Arc<Inner>, topic: &str) -> Live {
        *inner
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(topic.to_owned())
            .or_default() += 1;
        Live {
            inner,
            topic: topic.to_owned(),
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let mut live = self
            .inner
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = live.get_mut(&self.topic) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                live.remove(&self.topic);
            }
        }
    }
}

impl SledPubSub {
    /// A component over the shared database.
    pub fn new(storage: &Storage, name: &str, settings: SledSettings) -> SledPubSub {
        SledPubSub {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                storage: storage.clone(),
                settings,
                queues: tokio::sync::Mutex::new(HashMap::new()),
                in_use: RwLock::new(None),
                live: std::sync::Mutex::default(),
            }),
        }
    }

    async fn queue(&self, topic: &str) -> Result<Queue, PubSubError> {
        let mut queues = self.inner.queues.lock().await;
        if let Some(q) = queues.get(topic) {
            return Ok(q.clone());
        }
        let max = self.inner.settings.max_topics;
        if queues.len() >= max {
            return Err(PubSubError::Rejected(format!(
                "pubsub.sled {:?} already holds {max} topics (maxTopics); topic {topic:?} was not created",
                self.inner.name
            )));
        }
        let q = Queue::open(
            &self.inner.storage,
            &format!("pubsub.sled/{}/{topic}", self.inner.name),
            self.inner.settings.limits,
        )
        .await
        .map_err(queue_error)?;
        queues.insert(topic.to_owned(), q.clone());
        Ok(q)
    }

    /// Whether messages for `topic` would be dropped because nothing consumes it.
    fn unused(&self, topic: &str) -> bool {
        let consumed = self
            .inner
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(topic);
        !consumed
            && self
                .inner
                .in_use
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .is_some_and(|set| !set.contains(topic))
    }
}

fn queue_error(e: QueueError) -> PubSubError {
    match e {
        QueueError::Full { .. } | QueueError::TooLarge { .. } => {
            PubSubError::Rejected(e.to_string())
        }
        QueueError::DiskFull { .. } => PubSubError::DiskFull(e.to_string()),
        QueueError::LeaseLost { .. } | QueueError::Storage { .. } => {
            PubSubError::Backend(e.to_string())
        }
    }
}

/// Delivers one leased message, keeping its lease alive meanwhile, then settles it.
async fn deliver(
    queue: Queue,
    handler: Arc<dyn Handler>,
    topic: String,
    leased: Leased,
    redeliver: Duration,
) {
    let grant = leased.grant;
    let msg = InMessage {
        topic,
        data: leased.payload,
        metadata: HashMap::new(),
    };
    let handling = handler.handle(msg);
    tokio::pin!(handling);
    let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + LEASE / 3, LEASE / 3);
    let outcome = loop {
        tokio::select! {
            o = &mut handling => break o,
            _ = renew.tick() => {
                if let Err(e) = queue.extend(grant, LEASE) {
                    warn!(queue = queue.name(), error = %e, "could not extend a delivery lease");
                }
            }
        }
    };
    let settled = match outcome {
        Outcome::Ack => queue.ack(grant),
        Outcome::Nack => queue.nack(grant, redeliver),
    };
    if let Err(e) = settled {
        warn!(queue = queue.name(), error = %e, "could not settle a delivered message");
    }
}

#[async_trait]
impl PubSub for SledPubSub {
    fn features(&self) -> &'static [&'static str] {
        &[]
    }

    async fn publish(&self, msg: OutMessage) -> Result<(), PubSubError> {
        if self.unused(&msg.topic) {
            debug!(component = %self.inner.name, topic = %msg.topic, "no subscription for this topic; message dropped");
            return Ok(());
        }
        let q = self.queue(&msg.topic).await?;
        q.append(&msg.data, msg.expires_at_ms)
            .await
            .map(|_| ())
            .map_err(queue_error)
    }

    async fn publish_many(&self, msgs: Vec<OutMessage>) -> Vec<Result<(), PubSubError>> {
        let mut by_topic: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, m) in msgs.iter().enumerate() {
            by_topic.entry(m.topic.clone()).or_default().push(i);
        }
        let mut results: Vec<Result<(), PubSubError>> = vec![Ok(()); msgs.len()];
        for (topic, idx) in by_topic {
            if self.unused(&topic) {
                continue;
            }
            let q = match self.queue(&topic).await {
                Ok(q) => q,
                Err(e) => {
                    for i in idx {
                        results[i] = Err(e.clone());
                    }
                    continue;
                }
            };
            let items: Vec<(Bytes, Option<u64>)> = idx
                .iter()
                .map(|&i| (msgs[i].data.clone(), msgs[i].expires_at_ms))
                .collect();
            for (i, r) in idx.into_iter().zip(q.append_many(&items).await) {
                results[i] = r.map(|_| ()).map_err(queue_error);
            }
        }
        results
    }

    async fn subscribe(
        &self,
        req: SubscribeRequest,
        handler: Arc<dyn Handler>,
        mut stop: Stop,
    ) -> Result<Consumer, PubSubError> {
        let queue = self.queue(&req.topic).await?;
        let redeliver = self.inner.settings.redeliver;
        let pending = queue.stats().messages;
        if pending > 0 {
            debug!(
                queue = queue.name(),
                pending, "resuming delivery of stored messages"
            );
        }
        let live = Live::new(self.inner.clone(), &req.topic);
        Ok(Box::pin(async move {
            let _live = live;
            let mut workers = Workers::new(req.max_concurrency);
            loop {
                tokio::select! {
                    biased;
                    () = stopped(&mut stop) => break,
                    () = workers.slot() => {}
                }
                let free = workers.free();
                let batch = tokio::select! {
                    biased;
                    () = stopped(&mut stop) => break,
                    r = queue.lease(free, LEASE) => r,
                };
                match batch {
                    Ok(batch) => {
                        for leased in batch {
                            workers.spawn(deliver(
                                queue.clone(),
                                handler.clone(),
                                req.topic.clone(),
                                leased,
                                redeliver,
                            ));
                        }
                    }
                    Err(e) => {
                        warn!(queue = queue.name(), error = %e, "leasing from the queue failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            workers.drain().await;
        }))
    }

    async fn queue_stats(&self) -> Vec<(String, crate::queue::Stats)> {
        let mut depths: Vec<(String, crate::queue::Stats)> = self
            .inner
            .queues
            .lock()
            .await
            .iter()
            .map(|(topic, q)| (topic.clone(), q.stats()))
            .collect();
        depths.sort_by(|a, b| a.0.cmp(&b.0));
        depths
    }

    fn topics_in_use(&self, topics: &[String]) {
        let set: HashSet<String> = topics.iter().cloned().collect();
        *self
            .inner
            .in_use
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(set);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Recorder {
        seen: Mutex<Vec<Bytes>>,
        outcome: Outcome,
    }

    #[async_trait]
    impl Handler for Recorder {
        async fn handle(&self, msg: InMessage) -> Outcome {
            self.seen.lock().unwrap().push(msg.data);
            self.outcome
        }
    }

    fn out(topic: &str, data: &'static [u8]) -> OutMessage {
        OutMessage {
            topic: topic.into(),
            data: Bytes::from_static(data),
            metadata: HashMap::new(),
            expires_at_ms: None,
        }
    }

    fn settings() -> SledSettings {
        SledSettings {
            limits: Limits::default(),
            max_topics: 1000,
            redeliver: Duration::from_millis(10),
            concurrency: 1,
        }
    }

    #[tokio::test]
    async fn published_messages_reach_the_subscriber_in_order_and_are_acked() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), 1 << 20).await.unwrap();
        let ps = SledPubSub::new(&storage, "p", settings());
        for d in [&b"a"[..], b"b", b"c"] {
            ps.publish(out("t", d)).await.unwrap();
        }
        let rec = Arc::new(Recorder {
            seen: Mutex::default(),
            outcome: Outcome::Ack,
        });
        let (tx, rx) = tokio::sync::watch::channel(false);
        let req = SubscribeRequest {
            topic: "t".into(),
            max_concurrency: 1,
            app_id: "app".into(),
        };
        let consumer = tokio::spawn(ps.subscribe(req, rec.clone(), rx).await.unwrap());
        for _ in 0..200 {
            if rec.seen.lock().unwrap().len() == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tx.send(true).unwrap();
        consumer.await.unwrap();
        assert_eq!(*rec.seen.lock().unwrap(), [&b"a"[..], b"b", b"c"]);
        assert_eq!(ps.queue("t").await.unwrap().stats().messages, 0);
    }

    #[tokio::test]
    async fn unused_topics_are_dropped_once_subscriptions_are_known() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), 1 << 20).await.unwrap();
        let ps = SledPubSub::new(&storage, "p", settings());
        ps.publish(out("early", b"x")).await.unwrap();
        ps.topics_in_use(&["used".into()]);
        ps.publish(out("other", b"x")).await.unwrap();
        ps.publish(out("used", b"x")).await.unwrap();
        assert_eq!(ps.queue("early").await.unwrap().stats().messages, 1);
        assert_eq!(ps.queue("other").await.unwrap().stats().messages, 0);
        assert_eq!(ps.queue("used").await.unwrap().stats().messages, 1);
    }

    #[tokio::test]
    async fn topics_beyond_max_topics_are_refused_and_known_ones_still_work() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), 1 << 20).await.unwrap();
        let ps = SledPubSub::new(
            &storage,
            "p",
            SledSettings {
                max_topics: 2,
                ..settings()
            },
        );
        ps.publish(out("a", b"1")).await.unwrap();
        ps.publish(out("b", b"1")).await.unwrap();
        let e = ps.publish(out("c", b"1")).await.unwrap_err();
        assert!(
            matches!(&e, PubSubError::Rejected(m) if m.contains("maxTopics") && m.contains("\"c\"")),
            "{e:?}"
        );
        ps.publish(out("a", b"2")).await.unwrap();
        assert_eq!(ps.queue("a").await.unwrap().stats().messages, 2);
    }

    #[test]
    fn settings_are_read_and_checked() {
        let c = |meta: &[(&str, &str)]| Component {
            name: "p".into(),
            type_name: "pubsub.sled".into(),
            version: "v1".into(),
            metadata: meta
                .iter()
                .map(|(k, v)| crate::config::resources::MetadataItem {
                    name: (*k).into(),
                    value: crate::config::resources::MetaValue::Plain((*v).into()),
                })
                .collect(),
            ignore_errors: false,
            init_timeout: Duration::from_secs(5),
            secret_store: None,
            source: "x.yaml".into(),
        };
        let s = SledSettings::from_component(&c(&[
            ("maxMessages", "10"),
            ("maxBytes", "1Mi"),
            ("concurrencyMode", "single"),
        ]))
        .unwrap();
        assert_eq!(s.limits.max_bytes, 1 << 20);
        assert_eq!(s.concurrency, 1);
        let errs = SledSettings::from_component(&c(&[
            ("maxMessages", "-1"),
            ("maxTopics", "0"),
            ("redeliverInterval", "soon"),
            ("concurrency", "0"),
        ]))
        .unwrap_err();
        let fields: Vec<_> = errs.iter().map(|(f, _)| *f).collect();
        assert_eq!(
            fields,
            [
                "maxMessages",
                "maxTopics",
                "redeliverInterval",
                "concurrency"
            ]
        );
    }
}
