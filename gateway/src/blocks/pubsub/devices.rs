//! Devices' pub/sub subscriptions: which device wants which (pub/sub, topic), kept on disk, and
//! the fan-out of each event into the subscribed devices' outboxes.
//!
//! A device subscribes with the `subscribe` operation of the device protocol; the subscription
//! is stored (`devices.subscriptions` tree, key `<pubsub>\0<topic>\0<device>`) before the reply,
//! so it outlives restarts, and the subscription manager ([`super::delivery::run`]) is told to
//! consume the topic if nothing consumes it yet. Every event of the topic is then copied into the
//! outbox of each subscribed device ([`crate::outbox`]) as a neutral
//! [`DeviceMessage::Event`], and delivered from there on whichever link the device is on (MQTT
//! puts it on `edgecar/v1/<device>/sub/<pubsub>/<topic>`): a sleeping device finds its events
//! when it wakes, until they expire.
//!
//! What a device may subscribe to and receive is [`crate::policy::SubscriptionPolicy`]'s call,
//! asked when it subscribes and again for every event fanned out (so a revoked grant or a
//! subscription stored before a policy change cannot leak another device's data).
//!
//! The app (if it subscribes to the same topic) and the devices share one consumer of the topic,
//! so they never compete for messages: [`TopicHandler`] appends the event to the device
//! outboxes, then delivers it to the app. A redelivered message (the app asked for RETRY across
//! a restart) may reach a device twice: delivery is at-least-once, as everywhere in Dapr.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value as Json;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::cloudevent;
use super::delivery::Deliverer;
use crate::clock::unix_ms;
use crate::components::pubsub::{Handler, InMessage, Outcome};
use crate::devices::link::DeviceMessage;
use crate::error::{Error, ErrorKind, codes};
use crate::outbox::Outbox;
use crate::policy::SubscriptionPolicy;
use crate::storage::Storage;

/// A (pub/sub component, topic) pair.
pub type TopicKey = (String, String);

/// Every device's pub/sub subscriptions.
pub struct DeviceSubscriptions {
    storage: Storage,
    tree: sled::Tree,
    index: RwLock<HashMap<TopicKey, BTreeSet<String>>>,
    max_per_device: usize,
    /// Who may subscribe to what and receive which events.
    policy: Arc<SubscriptionPolicy>,
    /// Tells the subscription manager about topics it must start consuming.
    new_topics: mpsc::UnboundedSender<TopicKey>,
    new_topics_rx: Mutex<Option<mpsc::UnboundedReceiver<TopicKey>>>,
}

fn key(pubsub: &str, topic: &str, device: &str) -> Vec<u8> {
    [pubsub.as_bytes(), topic.as_bytes(), device.as_bytes()].join(&0u8)
}

impl DeviceSubscriptions {
    /// Loads the stored subscriptions; a device may hold `max_per_device`, as `policy` allows.
    pub fn open(
        storage: &Storage,
        max_per_device: usize,
        policy: Arc<SubscriptionPolicy>,
    ) -> Result<Arc<Self>, String> {
        let tree = storage
            .db()
            .open_tree("devices.subscriptions")
            .map_err(|e| format!("cannot open the device subscriptions: {e}"))?;
        let mut index: HashMap<TopicKey, BTreeSet<String>> = HashMap::new();
        for (k, _) in tree.iter().flatten() {
            let parts: Vec<&[u8]> = k.split(|b| *b == 0).collect();
            if let [p, t, d] = parts[..]
                && let (Ok(p), Ok(t), Ok(d)) = (
                    std::str::from_utf8(p),
                    std::str::from_utf8(t),
                    std::str::from_utf8(d),
                )
            {
                index
                    .entry((p.to_owned(), t.to_owned()))
                    .or_default()
                    .insert(d.to_owned());
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(Arc::new(DeviceSubscriptions {
            storage: storage.clone(),
            tree,
            index: RwLock::new(index),
            max_per_device,
            policy,
            new_topics: tx,
            new_topics_rx: Mutex::new(Some(rx)),
        }))
    }

    /// The receiver of topics to start consuming (taken once, by the subscription manager).
    pub fn take_new_topics(&self) -> Option<mpsc::UnboundedReceiver<TopicKey>> {
        self.new_topics_rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Every topic some device subscribes to.
    pub fn topics(&self) -> Vec<TopicKey> {
        self.index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, d)| !d.is_empty())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The devices subscribed to `topic` of `pubsub`.
    pub fn devices(&self, pubsub: &str, topic: &str) -> Vec<String> {
        self.index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(pubsub.to_owned(), topic.to_owned()))
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The subscriptions of `device`.
    pub fn of(&self, device: &str) -> Vec<TopicKey> {
        let mut v: Vec<TopicKey> = self
            .index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, d)| d.contains(device))
            .map(|(k, _)| k.clone())
            .collect();
        v.sort();
        v
    }

    /// Subscribes `device` (on disk when this returns). `Ok(false)` if it already was.
    pub async fn subscribe(&self, device: &str, pubsub: &str, topic: &str) -> Result<bool, Error> {
        check_topic(topic)?;
        self.policy.check_subscribe(device, pubsub, topic)?;
        self.storage.writable().map_err(|e| {
            Error::new(
                ErrorKind::InsufficientStorage,
                codes::INTERNAL,
                e.to_string(),
            )
        })?;
        let fresh_topic = {
            let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
            let held = index.values().filter(|d| d.contains(device)).count();
            let devices = index
                .entry((pubsub.to_owned(), topic.to_owned()))
                .or_default();
            if devices.contains(device) {
                return Ok(false);
            }
            if held >= self.max_per_device {
                return Err(Error::new(
                    ErrorKind::BadRequest,
                    codes::MALFORMED_REQUEST,
                    format!(
                        "device {device:?} already holds {held} pub/sub subscriptions \
                         (devices.maxSubscriptions); unsubscribe one first"
                    ),
                ));
            }
            devices.insert(device.to_owned());
            devices.len() == 1
        };
        let stored = self
            .tree
            .insert(key(pubsub, topic, device), &[])
            .map(|_| ())
            .map_err(|e| e.to_string());
        let stored = match stored {
            Ok(()) => self.storage.sync().await,
            Err(e) => Err(e),
        };
        if let Err(e) = stored {
            self.forget(device, pubsub, topic);
            return Err(Error::new(
                ErrorKind::Upstream,
                codes::INTERNAL,
                format!("could not store the subscription: {e}"),
            ));
        }
        if fresh_topic {
            let _ = self.new_topics.send((pubsub.to_owned(), topic.to_owned()));
        }
        Ok(true)
    }

    fn forget(&self, device: &str, pubsub: &str, topic: &str) -> bool {
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        index
            .get_mut(&(pubsub.to_owned(), topic.to_owned()))
            .is_some_and(|d| d.remove(device))
    }

    /// Unsubscribes `device`; `Ok(false)` if it was not subscribed. Events already in its
    /// outbox are still delivered.
    pub async fn unsubscribe(
        &self,
        device: &str,
        pubsub: &str,
        topic: &str,
    ) -> Result<bool, Error> {
        let was = self.forget(device, pubsub, topic);
        self.tree
            .remove(key(pubsub, topic, device))
            .map_err(|e| Error::new(ErrorKind::Upstream, codes::INTERNAL, e.to_string()))?;
        self.storage
            .sync()
            .await
            .map_err(|e| Error::new(ErrorKind::Upstream, codes::INTERNAL, e))?;
        Ok(was)
    }

    /// Removes every subscription of the devices `keep` rejects (they left the registry).
    pub fn retain_devices(&self, keep: impl Fn(&str) -> bool) {
        let gone: BTreeSet<String> = self
            .index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .flatten()
            .filter(|d| !keep(d))
            .cloned()
            .collect();
        for device in gone {
            for (p, t) in self.of(&device) {
                self.forget(&device, &p, &t);
                let _ = self.tree.remove(key(&p, &t, &device));
            }
            tracing::info!(device = %device, "device removed from the registry: its pub/sub subscriptions are gone");
        }
    }
}

/// Topic names a device can receive on: the name becomes MQTT topic levels.
fn check_topic(topic: &str) -> Result<(), Error> {
    if topic.is_empty() {
        return Err(Error::new(
            ErrorKind::NotFound,
            codes::TOPIC_NAME_EMPTY,
            "topic is empty",
        ));
    }
    if topic.contains(['+', '#', '\0']) {
        return Err(Error::malformed(format!(
            "topic {topic:?} cannot be delivered over MQTT: '+', '#' and NUL are not allowed in \
             topic names devices subscribe to"
        )));
    }
    Ok(())
}

/// The one consumer of a topic: copies each event to the subscribed devices' outboxes, then
/// delivers it to the app if the app subscribes too.
pub struct TopicHandler {
    /// The pub/sub component.
    pub pubsub: String,
    /// The topic.
    pub topic: String,
    /// Who subscribes.
    pub devices: Arc<DeviceSubscriptions>,
    /// Where device events wait.
    pub outbox: Arc<Outbox>,
    /// How long an event waits for a device.
    pub event_ttl: Duration,
    /// The app's delivery, once the app's subscriptions are known and include this topic.
    pub app: OnceLock<Arc<Deliverer>>,
}

impl TopicHandler {
    async fn to_devices(&self, msg: &InMessage) {
        let devices = self.devices.devices(&self.pubsub, &self.topic);
        if devices.is_empty() {
            return;
        }
        let now = unix_ms();
        // Attribute by attribute: data nested too deep for a `Value` must not hide the event's
        // source or expiry.
        let parsed: Option<Json> = cloudevent::attributes(&msg.data).ok();
        let is_event = parsed.as_ref().is_some_and(Json::is_object);
        if let Some(ev) = parsed.as_ref().filter(|_| is_event)
            && cloudevent::has_expired(ev, now)
        {
            debug!(pubsub = %self.pubsub, topic = %self.topic, "expired event not sent to devices");
            return;
        }
        let ttl = u64::try_from(self.event_ttl.as_millis()).unwrap_or(u64::MAX);
        let expires = now.saturating_add(ttl);
        // Whose data this is: the CloudEvent's source (a device's id when a device published).
        let source = parsed
            .as_ref()
            .and_then(|ev| ev.get("source"))
            .and_then(Json::as_str);
        for device in devices {
            if !self
                .devices
                .policy
                .may_receive(&device, &self.pubsub, &self.topic, source)
            {
                debug!(device = %device, pubsub = %self.pubsub, topic = %self.topic, "event withheld from this device by the subscription policy");
                continue;
            }
            let m = DeviceMessage::Event {
                pubsub: self.pubsub.clone(),
                topic: self.topic.clone(),
                content_type: is_event.then(|| cloudevent::CLOUDEVENT_CONTENT_TYPE.to_owned()),
                body: Bytes::clone(&msg.data),
            };
            if let Some(Err(e)) = self.outbox.enqueue(&device, &[(m, expires)]).await.pop() {
                warn!(device = %device, pubsub = %self.pubsub, topic = %self.topic, error = %e, "event not queued for this device");
            }
        }
    }
}

#[async_trait]
impl Handler for TopicHandler {
    async fn handle(&self, msg: InMessage) -> Outcome {
        self.to_devices(&msg).await;
        match self.app.get() {
            Some(app) => app.handle(msg).await,
            None => Outcome::Ack,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_policy(dir: &std::path::Path) -> Arc<SubscriptionPolicy> {
        let registry =
            crate::devices::Registry::open(dir.join("devices.yaml"), Default::default()).unwrap();
        Arc::new(SubscriptionPolicy::new(
            Arc::new(registry),
            vec![("pubsub".into(), "telemetry".into())],
        ))
    }

    #[tokio::test]
    async fn subscriptions_are_stored_bounded_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), 1 << 20).await.unwrap();
        let subs = DeviceSubscriptions::open(&storage, 2, open_policy(dir.path())).unwrap();
        let mut rx = subs.take_new_topics().unwrap();
        assert!(subs.subscribe("a", "pubsub", "alerts").await.unwrap());
        assert!(!subs.subscribe("a", "pubsub", "alerts").await.unwrap());
        assert!(subs.subscribe("b", "pubsub", "alerts").await.unwrap());
        assert_eq!(rx.try_recv().unwrap(), ("pubsub".into(), "alerts".into()));
        assert!(rx.try_recv().is_err(), "a topic is announced once");
        assert!(subs.subscribe("a", "pubsub", "x/y").await.unwrap());
        let e = subs.subscribe("a", "pubsub", "z").await.unwrap_err();
        assert_eq!(e.code, codes::MALFORMED_REQUEST);
        assert!(subs.subscribe("a", "pubsub", "a+b").await.is_err());
        let e = subs
            .subscribe("b", "pubsub", "telemetry")
            .await
            .unwrap_err();
        assert_eq!(
            (e.kind, e.code),
            (ErrorKind::Forbidden, codes::PERMISSION_DENIED),
            "all devices' readings are not for a device to read"
        );
        assert_eq!(subs.devices("pubsub", "alerts"), ["a", "b"]);
        assert!(subs.unsubscribe("b", "pubsub", "alerts").await.unwrap());
        assert!(!subs.unsubscribe("b", "pubsub", "alerts").await.unwrap());
        drop(subs);
        let again = DeviceSubscriptions::open(&storage, 2, open_policy(dir.path())).unwrap();
        assert_eq!(
            again.of("a"),
            [
                ("pubsub".to_owned(), "alerts".to_owned()),
                ("pubsub".to_owned(), "x/y".to_owned())
            ]
        );
        assert!(again.of("b").is_empty());
        // A device that leaves the registry leaves its subscriptions, on disk too.
        again.retain_devices(|d| d != "a");
        assert!(again.of("a").is_empty());
        assert!(again.topics().is_empty());
        drop(again);
        let third = DeviceSubscriptions::open(&storage, 2, open_policy(dir.path())).unwrap();
        assert!(third.of("a").is_empty());
    }
}
