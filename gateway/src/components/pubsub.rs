//! The interface every pub/sub component implements, and the worker pool their consumers share.
//!
//! Components move opaque messages: the pub/sub block builds CloudEvents before
//! [`PubSub::publish`] and parses them in its [`Handler`]. A component's consumer loop calls the
//! handler for each message with at most `max_concurrency` in flight, and settles the message
//! with the broker by the handler's [`Outcome`] (ack, or leave it for the broker to redeliver).
//! Retries, dead-lettering and routing are the block's, written once for every component.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::resources::Component;
use crate::config::units::parse_duration;

/// One message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutMessage {
    /// The topic.
    pub topic: String,
    /// The bytes (a serialised CloudEvent unless published raw).
    pub data: Bytes,
    /// Publish metadata (`ttlInSeconds`, component-specific options).
    pub metadata: HashMap<String, String>,
    /// Unix milliseconds after which the message need not be delivered (`ttlInSeconds`).
    pub expires_at_ms: Option<u64>,
}

/// One delivered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InMessage {
    /// The topic it was published to.
    pub topic: String,
    /// The bytes as published.
    pub data: Bytes,
    /// Broker metadata that came with it.
    pub metadata: HashMap<String, String>,
}

/// What the handler made of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done with it (delivered, dead-lettered or deliberately dropped): remove it from the broker.
    Ack,
    /// Not done (edgecar is stopping, or dead-lettering failed): the broker keeps it and
    /// redelivers it later, after a restart at the latest where the broker is durable.
    Nack,
}

/// Receives a subscription's messages. Implemented by the pub/sub block.
#[async_trait]
pub trait Handler: Send + Sync {
    /// Handles one message; called concurrently up to the subscription's limit.
    async fn handle(&self, msg: InMessage) -> Outcome;
}

/// What to consume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeRequest {
    /// The topic.
    pub topic: String,
    /// Most messages handled at once (1 delivers strictly in order).
    pub max_concurrency: usize,
    /// The subscribing app's id (the default consumer group of brokers that have groups).
    pub app_id: String,
}

/// A component failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PubSubError {
    /// The component refused the message and will keep refusing until something changes (a full
    /// queue, a message too large).
    #[error("{0}")]
    Rejected(String),
    /// The backend failed (connection, I/O).
    #[error("{0}")]
    Backend(String),
    /// The disk under the state directory is full; nothing was written. Passes once space
    /// frees.
    #[error("{0}")]
    DiskFull(String),
}

/// Flips to `true` when edgecar stops; consumer loops watch it.
pub type Stop = watch::Receiver<bool>;

/// A consumer loop, run by the subscription manager in a task it owns. It returns once `stop`
/// has fired and the messages in flight are settled.
pub type Consumer = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Resolves once `stop` says so (or its sender is gone, which also means stopping).
pub async fn stopped(stop: &mut Stop) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// A pub/sub backend.
#[async_trait]
pub trait PubSub: Send + Sync {
    /// Dapr feature names for `/v1.0/metadata`.
    fn features(&self) -> &'static [&'static str];

    /// Publishes one message; returns once the component has it (on disk for durable ones).
    async fn publish(&self, msg: OutMessage) -> Result<(), PubSubError>;

    /// Publishes several messages to one topic; each succeeds or fails on its own.
    async fn publish_many(&self, msgs: Vec<OutMessage>) -> Vec<Result<(), PubSubError>> {
        let mut out = Vec::with_capacity(msgs.len());
        for m in msgs {
            out.push(self.publish(m).await);
        }
        out
    }

    /// Starts consuming `req.topic`: returns the consumer loop, which calls `handler` for every
    /// message until `stop` fires.
    async fn subscribe(
        &self,
        req: SubscribeRequest,
        handler: Arc<dyn Handler>,
        stop: Stop,
    ) -> Result<Consumer, PubSubError>;

    /// Tells a component that only this process consumes (sled, in-memory) which topics have a
    /// subscription or serve as a dead-letter topic, once that is known. Brokers others read
    /// from ignore it.
    fn topics_in_use(&self, _topics: &[String]) {}

    /// How full each topic's queue is (messages waiting, the oldest one's append time), for
    /// components whose queues are this process's own (sled); empty for brokers, whose queues
    /// the broker reports.
    async fn queue_stats(&self) -> Vec<(String, crate::queue::Stats)> {
        Vec::new()
    }
}

/// The in-flight handlers of one consumer loop, bounded.
pub struct Workers {
    set: JoinSet<()>,
    max: usize,
}

impl Workers {
    /// A pool running at most `max` handlers (at least one).
    pub fn new(max: usize) -> Workers {
        Workers {
            set: JoinSet::new(),
            max: max.max(1),
        }
    }

    /// Free slots right now (after collecting finished handlers).
    pub fn free(&mut self) -> usize {
        while self.set.try_join_next().is_some() {}
        self.max.saturating_sub(self.set.len())
    }

    /// Waits until a slot is free.
    pub async fn slot(&mut self) {
        while self.free() == 0 {
            let _ = self.set.join_next().await;
        }
    }

    /// Runs a handler in a slot (call [`Workers::slot`] first to respect the bound).
    pub fn spawn(&mut self, fut: impl Future<Output = ()> + Send + 'static) {
        self.set.spawn(fut);
    }

    /// Waits for every handler in flight to finish.
    pub async fn drain(mut self) {
        while self.set.join_next().await.is_some() {}
    }
}

/// Problems with a component's metadata: (metadata name, what is wrong).
pub type FieldErrors = Vec<(&'static str, String)>;

/// Reads `concurrencyMode` / `concurrency` component metadata: Dapr's `concurrencyMode: single`
/// delivers one message at a time; otherwise up to `concurrency` at once (default 10, as Dapr's
/// Redis component).
pub fn concurrency(c: &Component, errors: &mut FieldErrors) -> usize {
    let mode = c.meta("concurrencyMode").unwrap_or_default();
    if mode.eq_ignore_ascii_case("single") {
        return 1;
    }
    if !mode.is_empty() && !mode.eq_ignore_ascii_case("parallel") {
        errors.push((
            "concurrencyMode",
            format!("{mode:?} is not a concurrency mode; use parallel or single"),
        ));
    }
    match c.meta("concurrency").filter(|s| !s.is_empty()) {
        None => 10,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                errors.push((
                    "concurrency",
                    format!("{s:?} is not a number from 1 to 1000"),
                ));
                10
            }
        },
    }
}

/// Reads an optional duration from component metadata.
pub fn duration_meta(
    c: &Component,
    name: &'static str,
    default: Duration,
    errors: &mut FieldErrors,
) -> Duration {
    match c.meta(name).filter(|s| !s.is_empty()) {
        None => default,
        Some(s) => parse_duration(s).unwrap_or_else(|m| {
            errors.push((name, m));
            default
        }),
    }
}
