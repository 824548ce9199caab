//! Device telemetry: readings stored durably, in batches, before the device hears they arrived.
//!
//! A reading (`edgecar/v1/<id>/telemetry[/<stream>]`, from the embedded endpoint or through an
//! external broker) becomes an event on the configured pub/sub topic (`devices.telemetryPubsub` /
//! `devices.telemetryTopic`) with the device as its `source`, the stream as its `subject` and type
//! `io.edgecar.telemetry`. [`TelemetryBlock::store`] returns once the event is stored — for
//! `pubsub.sled`, on disk — which is when the transport sends the QoS 1 PUBACK.
//!
//! Why a block of its own: thousands of devices each sending a reading is the gateway's hottest
//! path. Readings from every connection go to one writer task, which publishes whatever has
//! gathered meanwhile as one batch ([`PubSubBlock::publish_batch`]: one component call, one group
//! commit), so the cost of a disk flush is shared by every reading that arrived while the
//! previous one ran, and readings keep their arrival order (a device's readings are stored in
//! the order it sent them). When only a few readings are waiting, the writer lingers
//! (`devices.telemetryLinger`, 2 ms by default) for more before storing them: at a steady
//! thousand readings a second that halves the flushes' CPU (docs/benchmarks.md) and spares an SD
//! card, for PUBACKs that much later.
//!
//! The queue to the writer is not bounded by itself: every reading in it is one a connection is
//! waiting on, and each connection has at most `mqtt.maxInflight` requests running (the broker
//! bridge bounds its own), so the connections bound it.

use std::sync::Arc;

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::blocks::pubsub::{Event, PubSubBlock};
use crate::call::{Caller, Params, Reply};
use crate::error::{Error, ErrorKind, codes};

/// Most readings published as one batch: large enough to share a flush among many devices,
/// small enough that one batch's inserts do not hold the queue for long.
const MAX_BATCH: usize = 512;

/// The writer lingers for more readings only when fewer than this many are waiting.
const LINGER_BELOW: usize = 16;

/// The CloudEvent type of a telemetry reading.
pub const EVENT_TYPE: &str = "io.edgecar.telemetry";

/// A reading waiting for the writer, and who waits for its outcome.
type Pending = (Event, oneshot::Sender<Result<(), Error>>);

/// The outcome of a submitted reading, once it is stored (or failed).
pub struct Receipt(oneshot::Receiver<Result<(), Error>>);

impl std::future::Future for Receipt {
    type Output = Result<(), Error>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(stopped())))
    }
}

/// Stores device telemetry on the configured pub/sub topic.
pub struct TelemetryBlock {
    /// To the writer task, which ends when this block is dropped.
    writer: mpsc::UnboundedSender<Pending>,
}

impl TelemetryBlock {
    /// A block publishing to `topic` of `pubsub` through `block`; starts its writer task (so it
    /// must be called inside a Tokio runtime). Once a reading arrives, the writer waits `linger`
    /// for more before storing them as one batch.
    pub fn new(block: Arc<PubSubBlock>, pubsub: String, topic: String, linger: Duration) -> Self {
        let (writer, rx) = mpsc::unbounded_channel();
        tokio::spawn(write(block, pubsub, topic, linger, rx));
        TelemetryBlock { writer }
    }

    /// Stores one reading of `caller` on `stream` (may be empty); returns once it is stored.
    /// `params` carries the reading's content type and trace context.
    pub async fn store(
        &self,
        caller: &Caller,
        stream: &str,
        data: Bytes,
        params: &Params,
    ) -> Result<Reply, Error> {
        self.submit(caller.clone(), stream.to_owned(), data, params.clone())?
            .await?;
        Ok(Reply::no_content())
    }

    /// Hands one reading to the writer without waiting: the [`Receipt`] resolves once it is
    /// stored. What [`Self::store`] does, for a transport that keeps many readings in flight
    /// without a task for each. `params` carries the reading's content type and trace context.
    pub fn submit(
        &self,
        caller: Caller,
        stream: String,
        data: Bytes,
        params: Params,
    ) -> Result<Receipt, Error> {
        let event = Event {
            caller,
            data,
            params: Params {
                content_type: params.content_type,
                traceparent: params.traceparent,
                tracestate: params.tracestate,
                ..Params::default()
            },
            event_type: EVENT_TYPE,
            subject: (!stream.is_empty()).then_some(stream),
        };
        let (done, outcome) = oneshot::channel();
        self.writer.send((event, done)).map_err(|_| stopped())?;
        Ok(Receipt(outcome))
    }
}

fn stopped() -> Error {
    Error::new(
        ErrorKind::Unavailable,
        codes::PUBSUB_PUBLISH_MESSAGE,
        "the telemetry writer has stopped (edgecar is shutting down)",
    )
}

/// The writer: publishes what has gathered as one batch, answers each reading, repeats.
async fn write(
    block: Arc<PubSubBlock>,
    pubsub: String,
    topic: String,
    linger: Duration,
    mut rx: mpsc::UnboundedReceiver<Pending>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Few readings waiting: the previous flush gathered little, so a short wait saves
        // flushes. Many waiting: readings already share flushes; waiting would only delay them.
        if !linger.is_zero() && batch.len() < LINGER_BELOW {
            let until = Instant::now() + linger;
            while batch.len() < MAX_BATCH {
                let room = MAX_BATCH - batch.len();
                match tokio::time::timeout_at(until, rx.recv_many(&mut batch, room)).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        let (events, waiters): (Vec<Event>, Vec<_>) = batch.drain(..).unzip();
        let results = block.publish_batch(&pubsub, &topic, events).await;
        for (waiter, result) in waiters.into_iter().zip(results) {
            // The device may have gone meanwhile; its reading is stored all the same.
            let _ = waiter.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::PubSubComponent;
    use crate::components::pubsub::{
        Consumer, Handler, OutMessage, PubSub, PubSubError, Stop, SubscribeRequest,
    };
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// A pub/sub that records what is published, in order, and the size of each batch.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<OutMessage>>, Mutex<Vec<usize>>);

    #[async_trait::async_trait]
    impl PubSub for Recorder {
        fn features(&self) -> &'static [&'static str] {
            &[]
        }
        async fn publish(&self, msg: OutMessage) -> Result<(), PubSubError> {
            if msg.data.windows(4).any(|w| w == b"fail") {
                return Err(PubSubError::Backend("refused by the test".into()));
            }
            self.0.lock().unwrap().push(msg);
            Ok(())
        }
        async fn publish_many(&self, msgs: Vec<OutMessage>) -> Vec<Result<(), PubSubError>> {
            self.1.lock().unwrap().push(msgs.len());
            let mut out = Vec::new();
            for m in msgs {
                out.push(self.publish(m).await);
            }
            out
        }
        async fn subscribe(
            &self,
            _: SubscribeRequest,
            _: Arc<dyn Handler>,
            _: Stop,
        ) -> Result<Consumer, PubSubError> {
            Err(PubSubError::Backend("not used".into()))
        }
    }

    fn device(id: &str) -> Caller {
        Caller::Device { id: id.into() }
    }

    fn telemetry(rec: &Arc<Recorder>, linger: Duration) -> TelemetryBlock {
        let mut buses = HashMap::new();
        let bus = PubSubComponent {
            bus: rec.clone(),
            type_name: "test".into(),
            concurrency: 1,
        };
        buses.insert("pubsub".to_owned(), bus);
        let block = Arc::new(PubSubBlock::new("gw".into(), buses));
        TelemetryBlock::new(block, "pubsub".into(), "telemetry".into(), linger)
    }

    #[tokio::test]
    async fn readings_become_device_events_in_arrival_order_each_with_its_outcome() {
        let rec = Arc::new(Recorder::default());
        let telemetry = telemetry(&rec, Duration::ZERO);
        let json = Params {
            content_type: Some("application/json".into()),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            ..Params::default()
        };
        let stores = (0..50).map(|i| {
            let (t, p) = (&telemetry, &json);
            let body = if i == 7 {
                "\"fail\"".to_owned()
            } else {
                format!("{{\"n\":{i}}}")
            };
            async move {
                t.store(&device("d1"), "line3/temp", Bytes::from(body), p)
                    .await
            }
        });
        let results = futures_util::future::join_all(stores).await;
        for (i, r) in results.iter().enumerate() {
            match r {
                Err(e) if i == 7 => assert_eq!(e.code, codes::PUBSUB_PUBLISH_MESSAGE, "{e:?}"),
                Ok(reply) if i != 7 => assert_eq!(reply.status, 204),
                other => panic!("reading {i}: {other:?}"),
            }
        }
        let published = rec.0.lock().unwrap();
        let ns: Vec<u64> = published
            .iter()
            .map(|m| {
                let v: serde_json::Value = serde_json::from_slice(&m.data).unwrap();
                assert_eq!(v["source"], "d1");
                assert_eq!(v["subject"], "line3/temp");
                assert_eq!(v["type"], EVENT_TYPE);
                assert_eq!(v["topic"], "telemetry");
                assert_eq!(v["datacontenttype"], "application/json");
                let tp = v["traceparent"].as_str().unwrap();
                assert!(
                    tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
                    "{tp}"
                );
                v["data"]["n"].as_u64().unwrap()
            })
            .collect();
        let want: Vec<u64> = (0..50).filter(|i| *i != 7).collect();
        assert_eq!(ns, want, "stored in arrival order, the failed one missing");
    }

    #[tokio::test(start_paused = true)]
    async fn readings_within_the_linger_share_one_batch() {
        let rec = Arc::new(Recorder::default());
        let t = Arc::new(telemetry(&rec, Duration::from_millis(5)));
        let reading = |n: u32| {
            let t = t.clone();
            tokio::spawn(async move {
                t.store(
                    &device("d1"),
                    "",
                    Bytes::from(n.to_string()),
                    &Params::default(),
                )
                .await
            })
        };
        let first = reading(1);
        tokio::time::sleep(Duration::from_millis(3)).await;
        let second = reading(2);
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        // Well after the first batch: a batch of its own.
        reading(3).await.unwrap().unwrap();
        assert_eq!(*rec.1.lock().unwrap(), [2, 1], "batch sizes");
    }

    #[tokio::test]
    async fn an_unknown_component_fails_each_reading_with_dapr_s_error() {
        let block = Arc::new(PubSubBlock::new("gw".into(), HashMap::new()));
        let linger = Duration::from_millis(5);
        let telemetry = TelemetryBlock::new(block, "nope".into(), "telemetry".into(), linger);
        let e = telemetry
            .store(
                &device("d1"),
                "",
                Bytes::from_static(b"1"),
                &Params::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(e.code, codes::PUBSUB_NOT_CONFIGURED);
    }
}
