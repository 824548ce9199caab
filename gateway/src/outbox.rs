//! The device outbox: what waits, on disk, to be delivered to one device.
//!
//! Every device may have one durable [`Queue`] (`queue/devices.outbox/<id>`) of
//! [`DeviceMessage`]s: commands an app left in its mailbox while it slept, and the events of the
//! pub/sub topics it subscribed to. They are stored transport-neutral; whichever link the device
//! is on when they go out (MQTT, MQTT through a broker, QUIC) encodes them. Each message carries an expiry; an expired message is
//! deleted, not delivered. The queue is bounded (`devices.outbox.maxMessages`,
//! `devices.outbox.maxBytes`): when full, new messages for that device are refused and the
//! producer decides (an app's mailbox call gets an error; a pub/sub event is logged and skipped
//! for that device only).
//!
//! Delivery is the **pump**: one task per device that has an outbox *and* a link it is on
//! ([`Links::of`]). It leases the oldest message, hands it to that link together with a
//! [`Receipt`], and keeps at most [`WINDOW`] messages unconfirmed. The link confirms a receipt
//! when the device acknowledges the message (MQTT: its QoS 1 PUBACK, or at once for QoS 0); a
//! receipt dropped unconfirmed (the connection closed first, or the device does not listen)
//! puts the message back at the head of the queue. Delivery is therefore at-least-once
//! and in order, and survives restarts and `kill -9` like every queue.
//!
//! The mailbox's records (which commands were queued and the device's answers, for the app to
//! fetch later) live next to it in the `devices.mailbox` tree: [`Outbox::record_command`],
//! [`Outbox::complete`], [`Outbox::record`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use crate::clock::unix_ms;
use crate::devices::link::{DeviceMessage, Links};
use crate::queue::{Grant, Limits, Queue, QueueError};
use crate::storage::Storage;

/// Messages handed to a device and not yet confirmed, per device.
pub const WINDOW: usize = 8;
/// How long a handed-over message stays leased if its receipt is somehow never settled.
const LEASE: Duration = Duration::from_secs(300);
/// How long the pump waits before retrying a message no connection of the device took.
const UNROUTABLE_RETRY: Duration = Duration::from_secs(5);
/// The prefix of the outbox queues' names.
const QUEUE_PREFIX: &str = "devices.outbox/";
/// How long an answered or expired mailbox record is kept for the app to fetch.
pub const RECORD_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// A message stored before messages were transport-neutral: the MQTT topic and properties it
/// would be published with. Still read (a gateway upgraded with a full mailbox delivers it), never
/// written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct LegacyMessage {
    #[serde(rename = "t")]
    topic: String,
    #[serde(rename = "p", with = "b64")]
    payload: Bytes,
    #[serde(rename = "ct", default)]
    content_type: Option<String>,
    #[serde(rename = "u", default)]
    user: Vec<(String, String)>,
}

impl LegacyMessage {
    /// The neutral message: `edgecar/v1/<device>/cmd/<method...>/<id>` is a command,
    /// `edgecar/v1/<device>/sub/<pubsub>/<topic...>` an event.
    fn neutral(self) -> Option<DeviceMessage> {
        let rest = self.topic.strip_prefix("edgecar/v1/")?;
        let (_, rest) = rest.split_once('/')?;
        let user = |k: &str| {
            self.user
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        if let Some(cmd) = rest.strip_prefix("cmd/") {
            let (path, id) = cmd.rsplit_once('/')?;
            let method = match user("query") {
                Some(q) => format!("/{path}?{q}"),
                None => format!("/{path}"),
            };
            return Some(DeviceMessage::Command {
                id: id.to_owned(),
                method,
                verb: user("verb").unwrap_or_else(|| "POST".into()),
                content_type: self.content_type,
                traceparent: user("traceparent"),
                body: self.payload,
            });
        }
        let (pubsub, topic) = rest.strip_prefix("sub/")?.split_once('/')?;
        Some(DeviceMessage::Event {
            pubsub: pubsub.to_owned(),
            topic: topic.to_owned(),
            content_type: self.content_type,
            body: self.payload,
        })
    }
}

/// Reads a stored outbox message, in today's form or the one before.
fn decode(stored: &[u8]) -> Option<DeviceMessage> {
    serde_json::from_slice::<DeviceMessage>(stored)
        .ok()
        .or_else(|| {
            serde_json::from_slice::<LegacyMessage>(stored)
                .ok()
                .and_then(LegacyMessage::neutral)
        })
}

/// Bytes as base64 text in stored JSON.
pub(crate) mod b64 {
    use base64::Engine;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map(Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}

/// One handed-over message: confirming deletes it from the outbox, dropping it unconfirmed puts
/// it back. Shared by every connection the message went to; the first confirmation counts.
pub struct Receipt {
    queue: Queue,
    grant: Grant,
    settled: AtomicBool,
    wake: Arc<Notify>,
    /// Runs on confirmation (the mailbox marks a command delivered).
    on_confirm: Option<Box<dyn Fn() + Send + Sync>>,
    _window: OwnedSemaphorePermit,
}

impl Receipt {
    /// The device has the message: delete it from the outbox.
    pub fn confirm(&self) {
        if self.settled.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Err(e) = self.queue.ack(self.grant) {
            warn!(queue = self.queue.name(), error = %e, "could not remove a delivered message from the outbox");
        }
        if let Some(f) = &self.on_confirm {
            f();
        }
        self.wake.notify_one();
    }
}

impl Drop for Receipt {
    fn drop(&mut self) {
        if !self.settled.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.queue.nack(self.grant, Duration::ZERO) {
                debug!(queue = self.queue.name(), error = %e, "could not put a message back in the outbox");
            }
            self.wake.notify_one();
        }
    }
}

/// A mailbox record: a command queued for a device, and its answer once there is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// The id the app fetches it by (also the command's request id).
    pub id: String,
    /// The device.
    pub device: String,
    /// The method path, as in the call.
    pub method: String,
    /// The HTTP verb.
    pub verb: String,
    /// When it was queued (Unix ms).
    pub created_at_ms: u64,
    /// When it expires undelivered (Unix ms).
    pub expires_at_ms: u64,
    /// When the device acknowledged receiving it (Unix ms).
    #[serde(default)]
    pub delivered_at_ms: Option<u64>,
    /// The device's answer.
    #[serde(default)]
    pub reply: Option<RecordReply>,
}

/// A device's answer to a mailbox command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordReply {
    /// The status the device gave.
    pub status: u16,
    /// Its content type.
    pub content_type: Option<String>,
    /// The body.
    #[serde(with = "b64")]
    pub body: Bytes,
    /// When it arrived (Unix ms).
    pub at_ms: u64,
}

/// Why a message could not be put in a device's outbox.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboxError {
    /// The device's outbox is at its bound, or the message can never fit.
    #[error("{0}")]
    Full(String),
    /// The database failed.
    #[error("{0}")]
    Storage(String),
}

impl From<QueueError> for OutboxError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Full { .. } | QueueError::TooLarge { .. } => {
                OutboxError::Full(e.to_string())
            }
            _ => OutboxError::Storage(e.to_string()),
        }
    }
}

/// Every device's outbox and the mailbox records.
pub struct Outbox {
    storage: Storage,
    limits: Limits,
    /// Mailbox records, key `<device>\0<id>`.
    records: sled::Tree,
    /// Devices whose queue exists on disk.
    known: Mutex<HashSet<String>>,
    /// Opened queues.
    queues: tokio::sync::Mutex<HashMap<String, Queue>>,
    /// Running pumps, by device: their wake-up.
    pumps: Mutex<HashMap<String, Arc<Notify>>>,
    /// The links the pumps deliver through.
    links: OnceLock<Weak<Links>>,
    /// Makes mailbox ids unique.
    next_id: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn record_key(device: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(device.len() + id.len() + 1);
    k.extend_from_slice(device.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

impl Outbox {
    /// The outboxes in `storage`, each bounded by `limits`.
    pub fn open(storage: &Storage, limits: Limits) -> Result<Arc<Outbox>, String> {
        let db = storage.db();
        let records = db
            .open_tree("devices.mailbox")
            .map_err(|e| format!("cannot open the mailbox records: {e}"))?;
        let prefix = format!("queue/{QUEUE_PREFIX}");
        let known = db
            .tree_names()
            .into_iter()
            .filter_map(|n| {
                std::str::from_utf8(&n)
                    .ok()
                    .and_then(|n| n.strip_prefix(&prefix))
                    .map(str::to_owned)
            })
            .collect();
        Ok(Arc::new(Outbox {
            storage: storage.clone(),
            limits,
            records,
            known: Mutex::new(known),
            queues: tokio::sync::Mutex::default(),
            pumps: Mutex::default(),
            links: OnceLock::new(),
            next_id: AtomicU64::new(0),
        }))
    }

    /// Connects the links the pumps deliver through (once).
    pub fn set_links(&self, links: &Arc<Links>) {
        let _ = self.links.set(Arc::downgrade(links));
    }

    fn links(&self) -> Option<Arc<Links>> {
        self.links.get().and_then(Weak::upgrade)
    }

    async fn queue(&self, device: &str) -> Result<Queue, OutboxError> {
        let mut queues = self.queues.lock().await;
        if let Some(q) = queues.get(device) {
            return Ok(q.clone());
        }
        let q = Queue::open(
            &self.storage,
            &format!("{QUEUE_PREFIX}{device}"),
            self.limits,
        )
        .await?;
        queues.insert(device.to_owned(), q.clone());
        lock(&self.known).insert(device.to_owned());
        Ok(q)
    }

    /// Messages waiting for `device` (0 if it has no outbox).
    pub async fn pending(&self, device: &str) -> u64 {
        if !lock(&self.known).contains(device) {
            return 0;
        }
        match self.queue(device).await {
            Ok(q) => q.stats().messages,
            Err(_) => 0,
        }
    }

    /// Whether `device` has an outbox on disk (opened this run or not).
    pub fn has_outbox(&self, device: &str) -> bool {
        lock(&self.known).contains(device)
    }

    /// How full each device's outbox is (messages held, the oldest one's append time), for the
    /// outboxes opened since start (devices never connected nor sent anything this run are not
    /// read from disk for this).
    pub async fn open_backlogs(&self) -> HashMap<String, crate::queue::Stats> {
        self.queues
            .lock()
            .await
            .iter()
            .map(|(d, q)| (d.clone(), q.stats()))
            .collect()
    }

    /// Stores `msgs` for `device` (on disk when this returns), each until `expires_at_ms`, and
    /// starts delivery if the device is connected. Each message succeeds or fails on its own.
    pub async fn enqueue(
        self: &Arc<Self>,
        device: &str,
        msgs: &[(DeviceMessage, u64)],
    ) -> Vec<Result<(), OutboxError>> {
        let q = match self.queue(device).await {
            Ok(q) => q,
            Err(e) => return msgs.iter().map(|_| Err(e.clone())).collect(),
        };
        let items: Vec<(Bytes, Option<u64>)> = msgs
            .iter()
            .map(|(m, exp)| {
                (
                    Bytes::from(serde_json::to_vec(m).unwrap_or_default()),
                    Some(*exp),
                )
            })
            .collect();
        let results = q
            .append_many(&items)
            .await
            .into_iter()
            .map(|r| r.map(|_| ()).map_err(OutboxError::from))
            .collect();
        self.kick(device);
        results
    }

    /// Starts the pump of `device` if it has an outbox and a connection, or wakes the running
    /// one (a connection arrived or left, its subscriptions changed, a message was queued).
    pub fn kick(self: &Arc<Self>, device: &str) {
        if !lock(&self.known).contains(device) {
            return;
        }
        let mut pumps = lock(&self.pumps);
        if let Some(wake) = pumps.get(device) {
            wake.notify_one();
            return;
        }
        let Some(links) = self.links() else { return };
        if links.of(device).is_none() {
            return;
        }
        let wake = Arc::new(Notify::new());
        pumps.insert(device.to_owned(), wake.clone());
        tokio::spawn(pump(self.clone(), device.to_owned(), links, wake));
    }

    /// A new mailbox id.
    pub fn new_id(&self) -> String {
        format!(
            "m{:x}{:04x}",
            unix_ms(),
            self.next_id.fetch_add(1, Ordering::Relaxed) % 0x1_0000
        )
    }

    /// Queues a command for a sleeping device and records it for the app to fetch: `msg` is the
    /// command, whose id is `record.id`.
    pub async fn record_command(
        self: &Arc<Self>,
        record: Record,
        msg: DeviceMessage,
    ) -> Result<(), OutboxError> {
        self.prune(&record.device);
        let key = record_key(&record.device, &record.id);
        let value = serde_json::to_vec(&record).unwrap_or_default();
        self.records
            .insert(key, value)
            .map_err(|e| OutboxError::Storage(e.to_string()))?;
        let (device, exp) = (record.device.clone(), record.expires_at_ms);
        match self.enqueue(&device, &[(msg, exp)]).await.pop() {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => {
                let _ = self.records.remove(record_key(&device, &record.id));
                Err(e)
            }
            None => Err(OutboxError::Storage("nothing was queued".into())),
        }
    }

    /// A mailbox record.
    pub fn record(&self, device: &str, id: &str) -> Option<Record> {
        let v = self.records.get(record_key(device, id)).ok()??;
        serde_json::from_slice(&v).ok()
    }

    fn update(&self, device: &str, id: &str, f: impl Fn(&mut Record)) -> bool {
        let key = record_key(device, id);
        let r = self.records.fetch_and_update(&key, |old| {
            let mut rec: Record = serde_json::from_slice(old?).ok()?;
            f(&mut rec);
            serde_json::to_vec(&rec).ok()
        });
        matches!(r, Ok(Some(_)))
    }

    /// Marks a mailbox command delivered (the device acknowledged it).
    fn delivered(&self, device: &str, id: &str) {
        let now = unix_ms();
        self.update(device, id, |r| {
            r.delivered_at_ms.get_or_insert(now);
        });
    }

    /// Stores the device's answer to mailbox command `id`; `false` if there is no such command.
    pub fn complete(&self, device: &str, id: &str, reply: RecordReply) -> bool {
        let done = self.update(device, id, |r| {
            if r.reply.is_none() {
                r.reply = Some(reply.clone());
                r.delivered_at_ms.get_or_insert(reply.at_ms);
            }
        });
        if done {
            // The answer is on disk with the next group commit; a flush failure is logged there.
            let storage = self.storage.clone();
            tokio::spawn(async move {
                let _ = storage.sync().await;
            });
        }
        done
    }

    /// Deletes `device`'s records that are past their retention.
    fn prune(&self, device: &str) {
        let now = unix_ms();
        let retention = u64::try_from(RECORD_RETENTION.as_millis()).unwrap_or(u64::MAX);
        let mut prefix = device.as_bytes().to_vec();
        prefix.push(0);
        for (k, v) in self.records.scan_prefix(&prefix).flatten() {
            let Ok(r) = serde_json::from_slice::<Record>(&v) else {
                let _ = self.records.remove(k);
                continue;
            };
            let end = r.reply.as_ref().map_or(r.expires_at_ms, |a| a.at_ms);
            if end.saturating_add(retention) < now {
                let _ = self.records.remove(k);
            }
        }
    }
}

/// Delivers `device`'s outbox while it is on a link.
async fn pump(outbox: Arc<Outbox>, device: String, links: Arc<Links>, wake: Arc<Notify>) {
    let queue = match outbox.queue(&device).await {
        Ok(q) => q,
        Err(e) => {
            warn!(device = %device, error = %e, "cannot open the device's outbox");
            lock(&outbox.pumps).remove(&device);
            return;
        }
    };
    let window = Arc::new(Semaphore::new(WINDOW));
    loop {
        let link = {
            // Checked under the same lock `kick` takes: a connection arriving now finds this
            // pump still registered and wakes it, or finds it gone and starts another.
            let mut pumps = lock(&outbox.pumps);
            match links.of(&device) {
                Some(l) => l,
                None => {
                    pumps.remove(&device);
                    return;
                }
            }
        };
        let permit = tokio::select! {
            p = window.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            () = wake.notified() => continue,
        };
        let leased = tokio::select! {
            r = queue.lease(1, LEASE) => r,
            () = wake.notified() => continue,
        };
        let leased = match leased {
            Ok(l) => l,
            Err(e) => {
                warn!(device = %device, error = %e, "reading the device's outbox failed");
                tokio::time::sleep(UNROUTABLE_RETRY).await;
                continue;
            }
        };
        let Some(item) = leased.into_iter().next() else {
            continue;
        };
        let Some(msg) = decode(&item.payload) else {
            warn!(device = %device, "unreadable message in the device's outbox; removed");
            let _ = queue.ack(item.grant);
            continue;
        };
        let on_confirm: Option<Box<dyn Fn() + Send + Sync>> = match &msg {
            DeviceMessage::Command { id, .. } => {
                let (outbox, device, id) = (Arc::downgrade(&outbox), device.clone(), id.clone());
                Some(Box::new(move || {
                    if let Some(o) = outbox.upgrade() {
                        o.delivered(&device, &id);
                    }
                }))
            }
            DeviceMessage::Event { .. } => None,
        };
        let receipt = Arc::new(Receipt {
            queue: queue.clone(),
            grant: item.grant,
            settled: AtomicBool::new(false),
            wake: wake.clone(),
            on_confirm,
            _window: permit,
        });
        if !link.deliver(&device, msg, receipt) {
            debug!(device = %device, link = link.kind(), "the device does not take this outbox message yet");
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(UNROUTABLE_RETRY) => {}
            }
        }
    }
}

/// `data` as base64 (for mailbox bodies shown as JSON).
pub fn base64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TestSink {
        connected: AtomicBool,
        taken: Mutex<Vec<(DeviceMessage, Arc<Receipt>)>>,
        accept: AtomicBool,
    }

    #[async_trait::async_trait]
    impl crate::devices::link::DeviceLink for TestSink {
        fn kind(&self) -> &'static str {
            "test"
        }
        fn connected(&self, _: &str) -> bool {
            self.connected.load(Ordering::SeqCst)
        }
        async fn command(
            &self,
            device: &str,
            _: crate::devices::link::Command,
        ) -> Result<crate::devices::link::CommandReply, crate::devices::link::LinkError> {
            Err(crate::devices::link::LinkError::NotConnected(device.into()))
        }
        fn deliver(&self, _: &str, msg: DeviceMessage, receipt: Arc<Receipt>) -> bool {
            if !self.accept.load(Ordering::SeqCst) {
                return false;
            }
            lock(&self.taken).push((msg, receipt));
            true
        }
    }

    fn msg(n: u8) -> (DeviceMessage, String) {
        let topic = format!("t{n}");
        (
            DeviceMessage::Event {
                pubsub: "pubsub".into(),
                topic: topic.clone(),
                content_type: None,
                body: Bytes::from(vec![n]),
            },
            topic,
        )
    }

    fn topic_of(m: &DeviceMessage) -> String {
        match m {
            DeviceMessage::Event { topic, .. } => topic.clone(),
            DeviceMessage::Command { id, .. } => id.clone(),
        }
    }

    async fn taken(sink: &TestSink, n: usize) -> Vec<(DeviceMessage, Arc<Receipt>)> {
        for _ in 0..200 {
            if lock(&sink.taken).len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        std::mem::take(&mut *lock(&sink.taken))
    }

    #[test]
    fn messages_stored_before_they_were_neutral_are_still_read() {
        let cmd = br#"{"t":"edgecar/v1/d/cmd/valve/open/m1","p":"e30=","ct":"application/json","u":[["verb","PUT"],["query","percent=40"],["traceparent","00-a-b-01"]]}"#;
        assert_eq!(
            decode(cmd),
            Some(DeviceMessage::Command {
                id: "m1".into(),
                method: "/valve/open?percent=40".into(),
                verb: "PUT".into(),
                content_type: Some("application/json".into()),
                traceparent: Some("00-a-b-01".into()),
                body: Bytes::from_static(b"{}"),
            })
        );
        let ev = br#"{"t":"edgecar/v1/d/sub/pubsub/a/b","p":"AQ=="}"#;
        assert_eq!(
            decode(ev),
            Some(DeviceMessage::Event {
                pubsub: "pubsub".into(),
                topic: "a/b".into(),
                content_type: None,
                body: Bytes::from_static(&[1]),
            })
        );
        assert_eq!(decode(b"{}"), None);
    }

    #[tokio::test]
    async fn delivers_in_order_confirms_and_puts_back_what_was_not_confirmed() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), 1 << 20).await.unwrap();
        let outbox = Outbox::open(&storage, Limits::default()).unwrap();
        let sink = Arc::new(TestSink {
            connected: AtomicBool::new(true),
            taken: Mutex::default(),
            accept: AtomicBool::new(true),
        });
        let links = Arc::new(Links::default());
        links.add(sink.clone());
        outbox.set_links(&links);
        let far = unix_ms() + 60_000;
        let items: Vec<_> = (0..3).map(|n| (msg(n).0, far)).collect();
        assert!(outbox.enqueue("d", &items).await.iter().all(Result::is_ok));
        let got = taken(&sink, 3).await;
        let topics: Vec<_> = got.iter().map(|(m, _)| topic_of(m)).collect();
        assert_eq!(topics, ["t0", "t1", "t2"]);
        assert_eq!(got[0].0, items[0].0, "stored and read back unchanged");
        // Confirm the first; drop the others unconfirmed: they come back, in order.
        got[0].1.confirm();
        drop(got);
        let again = taken(&sink, 2).await;
        let topics: Vec<_> = again.iter().map(|(m, _)| topic_of(m)).collect();
        assert_eq!(topics, ["t1", "t2"]);
        for (_, r) in &again {
            r.confirm();
        }
        drop(again);
        assert_eq!(outbox.pending("d").await, 0);
        // Expired messages are never delivered.
        let past = unix_ms() - 1;
        outbox.enqueue("d", &[(msg(9).0, past)]).await;
        assert!(taken(&sink, 1).await.is_empty());
    }

    #[tokio::test]
    async fn mailbox_records_take_one_answer() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), 1 << 20).await.unwrap();
        let outbox = Outbox::open(&storage, Limits::default()).unwrap();
        let id = outbox.new_id();
        let rec = Record {
            id: id.clone(),
            device: "d".into(),
            method: "/reboot".into(),
            verb: "POST".into(),
            created_at_ms: unix_ms(),
            expires_at_ms: unix_ms() + 60_000,
            delivered_at_ms: None,
            reply: None,
        };
        let m = DeviceMessage::Command {
            id: id.clone(),
            method: "/reboot".into(),
            verb: "POST".into(),
            content_type: None,
            traceparent: None,
            body: Bytes::new(),
        };
        outbox.record_command(rec.clone(), m).await.unwrap();
        assert_eq!(outbox.record("d", &id), Some(rec));
        assert_eq!(outbox.record("e", &id), None, "records are per device");
        let answer = |s| RecordReply {
            status: s,
            content_type: None,
            body: Bytes::from_static(b"ok"),
            at_ms: unix_ms(),
        };
        assert!(outbox.complete("d", &id, answer(200)));
        assert!(outbox.complete("d", &id, answer(500)));
        assert_eq!(outbox.record("d", &id).unwrap().reply.unwrap().status, 200);
        assert!(!outbox.complete("e", &id, answer(200)));
        assert_eq!(outbox.pending("d").await, 1);
    }
}
