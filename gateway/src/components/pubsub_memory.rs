//! `pubsub.in-memory`: Dapr's in-memory pub/sub, for tests and single-process apps.
//!
//! Each subscribed topic has a bounded channel; a publish to a topic without a subscriber is
//! accepted and dropped (there is nobody to keep it for), a publish to a full channel is refused
//! (`maxMessages` per topic, default 10000). Nothing survives a restart, and a message the
//! handler does not ack is dropped: use `pubsub.sled` when delivery must survive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::pubsub::{
    Consumer, FieldErrors, Handler, InMessage, OutMessage, Outcome, PubSub, PubSubError, Stop,
    SubscribeRequest, Workers, concurrency, stopped,
};
use crate::clock::unix_ms;
use crate::config::resources::Component;

/// Settings from the component's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemorySettings {
    /// Messages waiting per topic before publishes are refused.
    pub capacity: usize,
    /// Deliveries in flight per subscription.
    pub concurrency: usize,
}

impl MemorySettings {
    /// Reads and checks the metadata.
    pub fn from_component(c: &Component) -> Result<MemorySettings, FieldErrors> {
        let mut errors = FieldErrors::new();
        let capacity = match c.meta("maxMessages").filter(|s| !s.is_empty()) {
            None => 10_000,
            Some(s) => match s.parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => {
                    errors.push(("maxMessages", format!("{s:?} is not a positive number")));
                    10_000
                }
            },
        };
        let concurrency = concurrency(c, &mut errors);
        if errors.is_empty() {
            Ok(MemorySettings {
                capacity,
                concurrency,
            })
        } else {
            Err(errors)
        }
    }
}

/// A queued message and when it expires (Unix ms), if it does.
type Queued = (InMessage, Option<u64>);

/// The in-memory pub/sub.
pub struct MemoryPubSub {
    settings: MemorySettings,
    /// Subscribed topics and their channels.
    topics: Mutex<HashMap<String, mpsc::Sender<Queued>>>,
}

impl MemoryPubSub {
    /// An empty bus.
    pub fn new(settings: MemorySettings) -> MemoryPubSub {
        MemoryPubSub {
            settings,
            topics: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl PubSub for MemoryPubSub {
    fn features(&self) -> &'static [&'static str] {
        &[]
    }

    async fn publish(&self, msg: OutMessage) -> Result<(), PubSubError> {
        let tx = self
            .topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&msg.topic)
            .cloned();
        let Some(tx) = tx else {
            debug!(topic = %msg.topic, "no subscriber; message dropped");
            return Ok(());
        };
        let topic = msg.topic.clone();
        let item = InMessage {
            topic: msg.topic,
            data: msg.data,
            metadata: msg.metadata,
        };
        tx.try_send((item, msg.expires_at_ms)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => PubSubError::Rejected(format!(
                "in-memory topic {topic:?} holds {} undelivered messages (maxMessages)",
                self.settings.capacity
            )),
            mpsc::error::TrySendError::Closed(_) => {
                PubSubError::Backend(format!("the subscriber of topic {topic:?} has stopped"))
            }
        })
    }

    async fn subscribe(
        &self,
        req: SubscribeRequest,
        handler: Arc<dyn Handler>,
        mut stop: Stop,
    ) -> Result<Consumer, PubSubError> {
        let (tx, mut rx) = mpsc::channel(self.settings.capacity);
        self.topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(req.topic.clone(), tx);
        Ok(Box::pin(async move {
            let mut workers = Workers::new(req.max_concurrency);
            loop {
                tokio::select! {
                    biased;
                    () = stopped(&mut stop) => break,
                    () = workers.slot() => {}
                }
                let next = tokio::select! {
                    biased;
                    () = stopped(&mut stop) => break,
                    m = rx.recv() => m,
                };
                let Some((msg, expires_at_ms)) = next else {
                    break;
                };
                if expires_at_ms.is_some_and(|at| at <= unix_ms()) {
                    continue;
                }
                let handler = handler.clone();
                workers.spawn(async move {
                    let topic = msg.topic.clone();
                    if handler.handle(msg).await == Outcome::Nack {
                        warn!(%topic, "in-memory message not acknowledged; dropped (in-memory keeps nothing)");
                    }
                });
            }
            workers.drain().await;
        }))
    }
}
