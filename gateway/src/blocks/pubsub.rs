//! The pub/sub building block: Dapr's publish API and subscription delivery over any pub/sub
//! component.
//!
//! Publishing (this file) validates the address in Dapr's order (not configured → empty name →
//! unknown component → empty topic), reads the publish metadata (`rawPayload`, `ttlInSeconds`,
//! `cloudevent.*` overrides), wraps the data in a CloudEvent exactly as Dapr does
//! ([`cloudevent`]) unless it is raw or already a CloudEvent, and hands it to the component.
//! Bulk publish does the same per entry and answers with Dapr's `failedEntries` shape.
//!
//! - [`cloudevent`]: the envelopes.
//! - [`rules`]: the CEL subset of routing rules (`match`).
//! - [`subscription`]: subscriptions, declarative (YAML) and programmatic (`/dapr/subscribe`).
//! - [`delivery`]: delivery to the app (status handling, retries, dead letters) and the
//!   subscription manager that runs the consumers.

pub mod cloudevent;
pub mod delivery;
pub mod devices;
pub mod rules;
pub mod subscription;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use serde_json::value::RawValue;

use crate::call::{Caller, Params, Reply};
use crate::clock::unix_ms;
use crate::components::PubSubComponent;
use crate::components::pubsub::{OutMessage, PubSubError};
use crate::error::{Error, ErrorKind, codes};
use crate::resilience::ComponentCalls;
use cloudevent::{Attributes, Envelope};

/// Longest topic name accepted.
const MAX_TOPIC_LEN: usize = 1024;

/// One queue a `pubsub.sled` component keeps for a topic, as `/metrics` and the status page
/// show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicQueue {
    /// The pub/sub component.
    pub pubsub: String,
    /// The topic.
    pub topic: String,
    /// Messages waiting and the oldest one's append time.
    pub stats: crate::queue::Stats,
}

/// The pub/sub building block.
pub struct PubSubBlock {
    /// This sidecar's app id: the `source` of the events it publishes.
    app_id: String,
    /// Loaded pub/sub components by name.
    buses: HashMap<String, PubSubComponent>,
    /// Outbound resiliency for publishes.
    calls: Arc<ComponentCalls>,
    /// (pub/sub, topic) pairs kept even while nothing subscribes: device telemetry must wait for
    /// its consumer instead of being dropped like an unwanted broadcast.
    retained: Vec<(String, String)>,
    /// Most entries in one bulk publish (`limits.maxBulkItems`).
    max_bulk: usize,
}

/// Publish options read from `metadata.*`.
struct PublishMeta {
    raw: bool,
    ttl_secs: Option<u64>,
}

/// Go's `strconv.ParseBool`, which Dapr uses for `rawPayload`.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// A metadata value by case-insensitive name (Dapr decodes these with mapstructure, which
/// ignores case).
fn meta_ci<'a>(meta: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    meta.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn request_metadata_error(pubsub: &str, msg: String) -> Error {
    Error::new(
        ErrorKind::BadRequest,
        codes::PUBSUB_REQUEST_METADATA,
        format!("failed deserializing metadata of pubsub {pubsub}. Error: {msg}"),
    )
}

fn read_meta(pubsub: &str, meta: &HashMap<String, String>) -> Result<PublishMeta, Error> {
    let raw = match meta_ci(meta, "rawPayload").filter(|v| !v.is_empty()) {
        None => false,
        Some(v) => parse_go_bool(v).ok_or_else(|| {
            request_metadata_error(pubsub, format!("rawPayload {v:?} is not a boolean"))
        })?,
    };
    let ttl_secs = match meta_ci(meta, "ttlInSeconds").filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| {
            request_metadata_error(
                pubsub,
                format!("ttlInSeconds {v:?} is not a whole number of seconds"),
            )
        })?),
    };
    Ok(PublishMeta { raw, ttl_secs })
}

/// Dapr's `ERR_PUBSUB_PUBLISH_MESSAGE` for a component failure.
fn publish_error(pubsub: &str, topic: &str, e: &PubSubError) -> Error {
    let kind = match e {
        PubSubError::Rejected(_) => ErrorKind::QueueFull,
        PubSubError::DiskFull(_) => ErrorKind::InsufficientStorage,
        PubSubError::Backend(_) => ErrorKind::Upstream,
    };
    Error::new(
        kind,
        codes::PUBSUB_PUBLISH_MESSAGE,
        format!("error when publishing to topic {topic} in pubsub {pubsub}: {e}"),
    )
}

fn events_error(pubsub: &str, topic: &str, msg: &str) -> Error {
    Error::new(
        ErrorKind::BadRequest,
        codes::PUBSUB_EVENTS_SER,
        format!("error marshaling events to bytes for topic {topic} pubsub {pubsub}. error: {msg}"),
    )
}

/// One event of [`PubSubBlock::publish_batch`]: what a single publish call would carry.
#[derive(Debug, Clone)]
pub struct Event {
    /// Who publishes it (a device is the event's `source`).
    pub caller: Caller,
    /// The event's data.
    pub data: Bytes,
    /// Content type, publish metadata and trace context, as for [`PubSubBlock::publish`].
    pub params: Params,
    /// The CloudEvent `type` unless `cloudevent.type` metadata says otherwise (empty: Dapr's
    /// `com.dapr.event.sent`).
    pub event_type: &'static str,
    /// The CloudEvent `subject` unless `cloudevent.subject` metadata says otherwise.
    pub subject: Option<String>,
}

/// What one event needs to be enveloped.
struct EventIn<'a> {
    data: &'a [u8],
    content_type: &'a str,
    metadata: &'a HashMap<String, String>,
    /// The CloudEvent type unless `cloudevent.type` metadata says otherwise (empty: Dapr's).
    event_type: &'a str,
    /// The subject unless `cloudevent.subject` metadata says otherwise.
    subject: Option<&'a str>,
}

impl PubSubBlock {
    /// How full each (pub/sub, topic) queue this process keeps (`pubsub.sled`) is, for
    /// `/metrics` and the status page.
    pub async fn queue_stats(&self) -> Vec<TopicQueue> {
        let mut out = Vec::new();
        for (name, c) in &self.buses {
            for (topic, stats) in c.bus.queue_stats().await {
                out.push(TopicQueue {
                    pubsub: name.clone(),
                    topic,
                    stats,
                });
            }
        }
        out.sort_by(|a, b| (&a.pubsub, &a.topic).cmp(&(&b.pubsub, &b.topic)));
        out
    }

    /// A block over the loaded pub/sub components.
    pub fn new(app_id: String, buses: HashMap<String, PubSubComponent>) -> Self {
        PubSubBlock {
            app_id,
            buses,
            calls: Arc::default(),
            retained: Vec::new(),
            max_bulk: 1000,
        }
    }

    /// Keeps `topic` of `pubsub` even while nothing subscribes to it.
    pub fn with_retained_topic(mut self, pubsub: &str, topic: &str) -> Self {
        self.retained.push((pubsub.to_owned(), topic.to_owned()));
        self
    }

    /// Topics of `pubsub` kept without a subscriber.
    pub fn retained(&self, pubsub: &str) -> impl Iterator<Item = String> + '_ {
        let pubsub = pubsub.to_owned();
        self.retained
            .iter()
            .filter(move |(p, _)| *p == pubsub)
            .map(|(_, t)| t.clone())
    }

    /// Publishes under these outbound resiliency policies (Dapr's `targets.components`).
    pub fn with_resilience(mut self, calls: Arc<ComponentCalls>) -> Self {
        self.calls = calls;
        self
    }

    /// Bounds the entries of one bulk publish.
    pub fn with_max_bulk(mut self, max_bulk: usize) -> Self {
        self.max_bulk = max_bulk;
        self
    }

    /// This sidecar's app id.
    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    /// A component by name.
    pub fn component(&self, name: &str) -> Option<&PubSubComponent> {
        self.buses.get(name)
    }

    /// Names of the loaded components.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.buses.keys().map(String::as_str)
    }

    /// Finds the component, checking the address in Dapr's order.
    pub fn resolve(&self, pubsub: &str, topic: &str) -> Result<&PubSubComponent, Error> {
        if self.buses.is_empty() {
            return Err(Error::new(
                ErrorKind::BadRequest,
                codes::PUBSUB_NOT_CONFIGURED,
                "pubsub is not configured",
            ));
        }
        if pubsub.is_empty() {
            return Err(Error::new(
                ErrorKind::NotFound,
                codes::PUBSUB_EMPTY,
                "pubsub name is empty",
            ));
        }
        let bus = self.buses.get(pubsub).ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                codes::PUBSUB_NOT_FOUND,
                format!("pubsub {pubsub} not found"),
            )
        })?;
        if topic.is_empty() {
            return Err(Error::new(
                ErrorKind::NotFound,
                codes::TOPIC_NAME_EMPTY,
                format!("topic is empty in pubsub {pubsub}"),
            ));
        }
        if topic.len() > MAX_TOPIC_LEN {
            return Err(Error::malformed(format!(
                "topic is {} bytes long; the limit is {MAX_TOPIC_LEN}",
                topic.len()
            )));
        }
        Ok(bus)
    }

    /// Builds the bytes to publish for one event: a CloudEvent (new or passed through) unless
    /// raw. Returns the bytes and, for raw messages with a TTL, when the component may drop them.
    fn envelope(
        &self,
        caller: &Caller,
        pubsub: &str,
        topic: &str,
        ev: &EventIn<'_>,
        meta: &PublishMeta,
        params: &Params,
    ) -> Result<(Bytes, Option<u64>), Error> {
        let now = unix_ms();
        if meta.raw && matches!(caller, Caller::Device { .. }) {
            // A raw event carries no source: devices subscribed to the topic could not be kept
            // from another device's data (policy::SubscriptionPolicy).
            return Err(Error::new(
                ErrorKind::Forbidden,
                codes::PERMISSION_DENIED,
                "devices publish CloudEvents (their id is the source); rawPayload is for apps",
            ));
        }
        if meta.raw {
            let expires = meta
                .ttl_secs
                .map(|t| now.saturating_add(t.saturating_mul(1000)));
            return Ok((Bytes::copy_from_slice(ev.data), expires));
        }
        let over = |k: &str| meta_ci(ev.metadata, k);
        let traceparent: Cow<'_, str> =
            match over("cloudevent.traceparent").or_else(|| over("cloudevent.traceid")) {
                Some(tp) => Cow::Borrowed(tp),
                None => Cow::Owned(cloudevent::child_traceparent(params.traceparent.as_deref())),
            };
        let tracestate = over("cloudevent.tracestate")
            .or(params.tracestate.as_deref())
            .unwrap_or_default();
        // A device's identity comes from authentication, never from what it sent.
        let device = match caller {
            Caller::Device { id } => Some(id.as_str()),
            Caller::LocalApp { .. } => None,
        };
        let subject = over("cloudevent.subject").or(ev.subject);
        if !cloudevent::is_cloudevent(ev.content_type) {
            let bytes = cloudevent::new_envelope(
                &Attributes {
                    id: over("cloudevent.id").unwrap_or_default(),
                    source: device
                        .or_else(|| over("cloudevent.source"))
                        .unwrap_or(&self.app_id),
                    event_type: over("cloudevent.type").unwrap_or(ev.event_type),
                    data_content_type: ev.content_type,
                    topic,
                    pubsub,
                    traceparent: &traceparent,
                    tracestate,
                    subject,
                    // The expiry rides in the envelope; the subscriber side drops (or
                    // dead-letters) the expired event, as Dapr does, so the component keeps it
                    // until then.
                    expires_at_secs: meta.ttl_secs.map(|ttl| (now / 1000).saturating_add(ttl)),
                },
                ev.data,
                now,
            );
            return Ok((Bytes::from(bytes), None));
        }
        let mut ce: Envelope =
            cloudevent::from_cloudevent(ev.data, topic, pubsub, &traceparent, tracestate, now)
                .map_err(|m| {
                    // Dapr answers 500 for an unreadable CloudEvent.
                    Error::new(
                        ErrorKind::Internal,
                        codes::PUBSUB_CLOUD_EVENTS_SER,
                        format!("cannot create cloudevent: {m}"),
                    )
                })?;
        if let Some(id) = device
            && let Ok(v) = serde_json::value::to_raw_value(id)
        {
            ce.insert("source".into(), v);
        }
        if let Some(subject) = subject
            && let Ok(v) = serde_json::value::to_raw_value(subject)
        {
            ce.insert("subject".into(), v);
        }
        if let Some(ttl) = meta.ttl_secs {
            cloudevent::apply_ttl(&mut ce, ttl, now);
        }
        Ok((Bytes::from(cloudevent::to_bytes(&ce)), None))
    }

    /// `POST /v1.0/publish/<pubsub>/<topic>`.
    pub async fn publish(
        &self,
        caller: &Caller,
        pubsub: &str,
        topic: &str,
        body: &Bytes,
        params: &Params,
    ) -> Result<Reply, Error> {
        let bus = self.resolve(pubsub, topic)?;
        let meta = read_meta(pubsub, &params.metadata)?;
        let ev = EventIn {
            data: body,
            content_type: params.content_type.as_deref().unwrap_or_default(),
            metadata: &params.metadata,
            event_type: "",
            subject: None,
        };
        let (data, expires_at_ms) = self.envelope(caller, pubsub, topic, &ev, &meta, params)?;
        let msg = OutMessage {
            topic: topic.to_owned(),
            data,
            metadata: params.metadata.clone(),
            expires_at_ms,
        };
        let backend = |r: &Result<(), PubSubError>| matches!(r, Err(PubSubError::Backend(_)));
        let result = self
            .calls
            .run(pubsub, || bus.bus.publish(msg.clone()), backend)
            .await
            .unwrap_or_else(|stopped| Err(PubSubError::Backend(stopped.to_string())));
        result.map_err(|e| publish_error(pubsub, topic, &e))?;
        Ok(Reply::no_content())
    }

    /// Publishes several events from possibly different callers to one topic with one component
    /// call (for `pubsub.sled`: one group commit for all), each enveloped as [`Self::publish`]
    /// would. Each event succeeds or fails on its own; results are in the events' order. The
    /// component's resiliency policy is not applied, as for bulk publish: retrying a batch would
    /// publish its successful events twice.
    pub async fn publish_batch(
        &self,
        pubsub: &str,
        topic: &str,
        events: Vec<Event>,
    ) -> Vec<Result<(), Error>> {
        let bus = match self.resolve(pubsub, topic) {
            Ok(b) => b,
            Err(e) => return vec![Err(e); events.len()],
        };
        let mut results: Vec<Result<(), Error>> = Vec::with_capacity(events.len());
        let mut messages = Vec::with_capacity(events.len());
        for e in events {
            let prepared = read_meta(pubsub, &e.params.metadata).and_then(|meta| {
                let ev = EventIn {
                    data: &e.data,
                    content_type: e.params.content_type.as_deref().unwrap_or_default(),
                    metadata: &e.params.metadata,
                    event_type: e.event_type,
                    subject: e.subject.as_deref(),
                };
                self.envelope(&e.caller, pubsub, topic, &ev, &meta, &e.params)
            });
            match prepared {
                Ok((data, expires_at_ms)) => {
                    messages.push(OutMessage {
                        topic: topic.to_owned(),
                        data,
                        metadata: e.params.metadata,
                        expires_at_ms,
                    });
                    results.push(Ok(()));
                }
                Err(err) => results.push(Err(err)),
            }
        }
        let mut published = bus.bus.publish_many(messages).await.into_iter();
        for r in results.iter_mut().filter(|r| r.is_ok()) {
            if let Some(Err(e)) = published.next() {
                *r = Err(publish_error(pubsub, topic, &e));
            }
        }
        results
    }

    /// `POST /v1.0-alpha1/publish/bulk/<pubsub>/<topic>` (and the v1.0 path).
    pub async fn bulk_publish(
        &self,
        caller: &Caller,
        pubsub: &str,
        topic: &str,
        body: &Bytes,
        params: &Params,
    ) -> Result<Reply, Error> {
        let bus = self.resolve(pubsub, topic)?;
        let meta = read_meta(pubsub, &params.metadata)?;
        let entries: Vec<BTreeMap<String, Box<RawValue>>> =
            serde_json::from_slice(body).map_err(|e| {
                Error::new(
                    ErrorKind::BadRequest,
                    codes::PUBSUB_EVENTS_SER,
                    format!(
                        "error when unmarshaling the request for topic {topic} pubsub {pubsub}: {e}"
                    ),
                )
            })?;
        if entries.len() > self.max_bulk {
            return Err(events_error(
                pubsub,
                topic,
                &format!(
                    "{} entries; at most {} are accepted in one request (limits.maxBulkItems)",
                    entries.len(),
                    self.max_bulk
                ),
            ));
        }
        let mut ids = HashSet::new();
        let mut prepared = Vec::with_capacity(entries.len());
        for entry in &entries {
            let e = BulkEntry::read(entry).map_err(|m| events_error(pubsub, topic, &m))?;
            if e.entry_id.is_empty() || !ids.insert(e.entry_id.clone()) {
                return Err(events_error(
                    pubsub,
                    topic,
                    "entryId is duplicated or not present for entry",
                ));
            }
            let mut metadata = params.metadata.clone();
            metadata.extend(e.metadata.clone());
            prepared.push((e, metadata));
        }
        let mut messages = Vec::with_capacity(prepared.len());
        for (e, metadata) in &prepared {
            let ev = EventIn {
                data: &e.data,
                content_type: &e.content_type,
                metadata,
                event_type: "",
                subject: None,
            };
            // Each entry may carry its own ttlInSeconds; rawPayload is per request (Dapr's rule).
            let entry_meta = PublishMeta {
                raw: meta.raw,
                ttl_secs: read_meta(pubsub, metadata)?.ttl_secs,
            };
            let (data, expires_at_ms) =
                self.envelope(caller, pubsub, topic, &ev, &entry_meta, params)?;
            messages.push(OutMessage {
                topic: topic.to_owned(),
                data,
                metadata: metadata.clone(),
                expires_at_ms,
            });
        }
        let results = bus.bus.publish_many(messages).await;
        let failed: Vec<serde_json::Value> = prepared
            .iter()
            .zip(results)
            .filter_map(|((e, _), r)| {
                r.err().map(|err| {
                    serde_json::json!({
                        "entryId": e.entry_id,
                        "error": publish_error(pubsub, topic, &err).message,
                    })
                })
            })
            .collect();
        if failed.is_empty() {
            return Ok(Reply::no_content());
        }
        let body = serde_json::json!({
            "failedEntries": failed,
            "errorCode": codes::PUBSUB_PUBLISH_MESSAGE,
        });
        Ok(Reply {
            status: 500,
            ..Reply::json(serde_json::to_vec(&body).unwrap_or_default())
        })
    }

    /// Publishes bytes that already are what the subscriber should get (dead-lettering).
    pub async fn forward(
        &self,
        pubsub: &str,
        topic: &str,
        data: Bytes,
        metadata: HashMap<String, String>,
    ) -> Result<(), PubSubError> {
        let bus = self
            .buses
            .get(pubsub)
            .ok_or_else(|| PubSubError::Backend(format!("pubsub {pubsub} not found")))?;
        bus.bus
            .publish(OutMessage {
                topic: topic.to_owned(),
                data,
                metadata,
                expires_at_ms: None,
            })
            .await
    }
}

/// One entry of a bulk publish request, read as Dapr's Go decoder reads it: field names match
/// case-insensitively, so the JS SDK's `entryID` and the documented `entryId` both work.
struct BulkEntry {
    entry_id: String,
    data: Vec<u8>,
    content_type: String,
    metadata: HashMap<String, String>,
}

impl BulkEntry {
    fn read(entry: &BTreeMap<String, Box<RawValue>>) -> Result<BulkEntry, String> {
        let field = |name: &str| {
            entry
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        };
        let string = |name: &str| -> Result<String, String> {
            match field(name) {
                None => Ok(String::new()),
                Some(v) if v.get() == "null" => Ok(String::new()),
                Some(v) => serde_json::from_str::<String>(v.get())
                    .map_err(|_| format!("{name} must be a string")),
            }
        };
        let entry_id = string("entryId")?;
        let content_type = string("contentType")?;
        let metadata = match field("metadata") {
            None => HashMap::new(),
            Some(v) if v.get() == "null" => HashMap::new(),
            Some(v) => serde_json::from_str::<HashMap<String, String>>(v.get())
                .map_err(|_| "metadata must be an object of strings".to_owned())?,
        };
        let event = field("event").map_or("null", |v| v.get());
        let mismatch = || "error: mismatch between contentType and event".to_owned();
        // Dapr's ConvertEventToBytes.
        let data = if cloudevent::is_binary(&content_type) {
            let s: String = serde_json::from_str(event).map_err(|_| mismatch())?;
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| {
                    format!("error: unable to decode base64 application/octet-stream data: {e}")
                })?
        } else if cloudevent::is_string(&content_type) {
            let s: String = serde_json::from_str(event).map_err(|_| mismatch())?;
            s.into_bytes()
        } else if cloudevent::is_json(&content_type) || cloudevent::is_cloudevent(&content_type) {
            event.as_bytes().to_vec()
        } else {
            return Err(mismatch());
        };
        Ok(BulkEntry {
            entry_id,
            data,
            content_type,
            metadata,
        })
    }
}

/// One event of a streaming subscription (gRPC `SubscribeTopicEventsAlpha1`) and where its
/// outcome goes.
pub struct StreamedEvent {
    /// The message as stored: the CloudEvent JSON (or the raw payload).
    pub data: Bytes,
    /// The topic it was published to.
    pub topic: String,
    /// `true` when the subscriber is done with it (SUCCESS or DROP), `false` to have it
    /// redelivered (RETRY); dropping the sender redelivers too.
    pub done: tokio::sync::oneshot::Sender<bool>,
}

/// Hands a streaming subscription's messages to its stream, one at a time.
struct ToStream {
    events: tokio::sync::mpsc::Sender<StreamedEvent>,
}

#[async_trait::async_trait]
impl crate::components::pubsub::Handler for ToStream {
    async fn handle(
        &self,
        msg: crate::components::pubsub::InMessage,
    ) -> crate::components::pubsub::Outcome {
        use crate::components::pubsub::Outcome;
        let (done, outcome) = tokio::sync::oneshot::channel();
        let event = StreamedEvent {
            data: msg.data,
            topic: msg.topic,
            done,
        };
        if self.events.send(event).await.is_err() {
            return Outcome::Nack;
        }
        match outcome.await {
            Ok(true) => Outcome::Ack,
            _ => Outcome::Nack,
        }
    }
}

impl PubSubBlock {
    /// A subscription whose messages go to a stream rather than to the app (gRPC's
    /// `SubscribeTopicEventsAlpha1`): returns the consumer loop, which runs until `stop` fires.
    /// Messages are handed over one at a time and acknowledged by the subscriber.
    pub async fn stream_subscribe(
        &self,
        pubsub: &str,
        topic: &str,
        events: tokio::sync::mpsc::Sender<StreamedEvent>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<crate::components::pubsub::Consumer, Error> {
        let component = self.resolve(pubsub, topic)?;
        let req = crate::components::pubsub::SubscribeRequest {
            topic: topic.to_owned(),
            max_concurrency: 1,
            app_id: self.app_id.clone(),
        };
        component
            .bus
            .subscribe(req, Arc::new(ToStream { events }), stop)
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Upstream,
                    codes::PUBSUB_SUBSCRIBE,
                    format!("cannot subscribe to topic {topic} on pubsub {pubsub}: {e}"),
                )
            })
    }
}
