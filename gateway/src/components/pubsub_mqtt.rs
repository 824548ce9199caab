//! `pubsub.mqtt`: an external MQTT broker (Mosquitto, EMQX, ...) as Dapr's MQTT pub/sub uses it.
//!
//! One client connection (id `consumerID`, default the app id) over plain TCP, kept by a
//! background task that owns rumqttc's event loop: it reconnects, re-subscribes after every
//! CONNACK, hands incoming publishes to the subscription whose filter matches (MQTT `+`/`#`
//! wildcards work), and resolves publishes when the broker acknowledges them. A publish returns
//! once the broker has it (PUBACK for QoS 1, PUBCOMP for QoS 2, sent for QoS 0). Incoming QoS 1/2
//! messages are acknowledged only after the handler acks, so with `cleanSession: false` (the
//! default) a message the app has not taken is redelivered by the broker when edgecar
//! reconnects.
//!
//! Metadata (Dapr's names): `url` (`tcp://host:port` or `mqtt://host:port`; required), `qos`
//! (0-2, default 1), `retain` (default false; a publish's `retain` metadata overrides it),
//! `cleanSession` (default false), `consumerID`, `concurrency` / `concurrencyMode`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rumqttc::{
    AsyncClient, Event, EventLoop, Incoming, MqttOptions, Outgoing, Publish, QoS,
    SubscribeReasonCode,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use super::pubsub::{
    Consumer, FieldErrors, Handler, InMessage, OutMessage, Outcome, PubSub, PubSubError, Stop,
    SubscribeRequest, Workers, concurrency, stopped,
};
use crate::config::resources::Component;

/// How long a publish waits for the broker's acknowledgement (Dapr's MQTT default wait).
const PUBLISH_WAIT: Duration = Duration::from_secs(20);
/// Largest packet either way; HTTP bodies are bounded well below this.
const MAX_PACKET: usize = 16 << 20;
/// Incoming messages buffered per subscription before the connection waits for the handler.
const BUFFER: usize = 256;

/// Settings from the component's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttSettings {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// QoS of publishes and subscriptions.
    pub qos: u8,
    /// Default retain flag of publishes.
    pub retain: bool,
    /// MQTT clean-session flag.
    pub clean_session: bool,
    /// Client id (Dapr's `consumerID`); the runtime fills in the app id when it is empty.
    pub client_id: String,
    /// Deliveries in flight per subscription.
    pub concurrency: usize,
    /// How long start-up waits for the first connection (`initTimeout`).
    pub connect_timeout: Duration,
}

fn go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

impl MqttSettings {
    /// Reads and checks the metadata, collecting every problem.
    pub fn from_component(c: &Component) -> Result<MqttSettings, FieldErrors> {
        let mut errors = FieldErrors::new();
        let url = c.meta("url").unwrap_or_default().trim().to_owned();
        let (host, port) = if url.is_empty() {
            errors.push((
                "url",
                "required: the broker address, e.g. tcp://localhost:1883".into(),
            ));
            (String::new(), 1883)
        } else {
            let (scheme, rest) = url.split_once("://").unwrap_or(("tcp", url.as_str()));
            if !matches!(scheme, "tcp" | "mqtt") {
                errors.push((
                    "url",
                    format!("scheme {scheme:?} is not supported; use tcp:// or mqtt:// (TLS is not built in yet)"),
                ));
            }
            let rest = rest.trim_end_matches('/');
            match rest.rsplit_once(':') {
                Some((h, p)) if !h.is_empty() => match p.parse::<u16>() {
                    Ok(p) => (h.trim_matches(['[', ']']).to_owned(), p),
                    Err(_) => {
                        errors.push(("url", format!("{url:?}: {p:?} is not a port")));
                        (String::new(), 1883)
                    }
                },
                _ if !rest.is_empty() => (rest.to_owned(), 1883),
                _ => {
                    errors.push(("url", format!("{url:?} names no host")));
                    (String::new(), 1883)
                }
            }
        };
        let qos = match c.meta("qos").filter(|s| !s.is_empty()) {
            None => 1,
            Some(s) => match s.parse::<u8>() {
                Ok(q) if q <= 2 => q,
                _ => {
                    errors.push(("qos", format!("{s:?} is not 0, 1 or 2")));
                    1
                }
            },
        };
        let mut flag = |name: &'static str| match c.meta(name).filter(|s| !s.is_empty()) {
            None => false,
            Some(s) => go_bool(s).unwrap_or_else(|| {
                errors.push((name, format!("{s:?} is not true or false")));
                false
            }),
        };
        let retain = flag("retain");
        let clean_session = flag("cleanSession");
        let concurrency = concurrency(c, &mut errors);
        if errors.is_empty() {
            Ok(MqttSettings {
                host,
                port,
                qos,
                retain,
                clean_session,
                client_id: c.meta("consumerID").unwrap_or_default().to_owned(),
                concurrency,
                connect_timeout: c.init_timeout,
            })
        } else {
            Err(errors)
        }
    }
}

fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

/// Whether an MQTT topic filter (`a/+/c`, `a/#`) matches a topic name.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

type Waiter = oneshot::Sender<Result<(), String>>;

/// State shared by the client side and the event-loop task.
#[derive(Default)]
struct Shared {
    /// Publishes sent to the event loop, waiting for their packet id, in request order.
    unsent: VecDeque<(u8, Waiter)>,
    /// Publishes on the wire, waiting for the broker, by packet id.
    inflight: HashMap<u16, Waiter>,
    /// Subscriptions: topic filter → where its messages go.
    subs: HashMap<String, mpsc::Sender<Publish>>,
    /// Messages that arrived before their subscription was set up (a resumed session
    /// redelivers right after connecting); handed over when it is, not acked meanwhile.
    parked: Vec<Publish>,
    /// Topic filters in use, once the subscriptions are known; parked messages no filter can
    /// take are then acknowledged and dropped.
    in_use: Option<Vec<String>>,
    /// Why the broker connection is down (`None` while connected): the health check.
    down: Option<String>,
}

/// Most messages parked before their subscription exists; beyond, they are left unacked for
/// the broker to redeliver on a later session.
const MAX_PARKED: usize = 1024;

/// The MQTT pub/sub.
pub struct MqttPubSub {
    settings: MqttSettings,
    client: AsyncClient,
    shared: Arc<Mutex<Shared>>,
    /// Serialises publishes so their order in `unsent` is the order the event loop sees.
    publishing: tokio::sync::Mutex<()>,
    /// The event-loop task, stopped when the component is dropped.
    task: AbortHandle,
}

impl Drop for MqttPubSub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Drives the connection forever: events in, acknowledgements matched, reconnects.
async fn event_loop(
    mut events: EventLoop,
    client: AsyncClient,
    shared: Arc<Mutex<Shared>>,
    sub_qos: QoS,
    connected: oneshot::Sender<Result<(), String>>,
) {
    let mut connected = Some(connected);
    let mut down_logged = false;
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                info!(broker = ?events.mqtt_options.broker_address(), "connected to the MQTT broker");
                down_logged = false;
                lock(&shared).down = None;
                if let Some(c) = connected.take() {
                    let _ = c.send(Ok(()));
                }
                let filters: Vec<String> = lock(&shared).subs.keys().cloned().collect();
                for f in filters {
                    if let Err(e) = client.subscribe(f.clone(), sub_qos).await {
                        warn!(filter = %f, error = %e, "re-subscribing failed");
                    }
                }
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                let target = lock(&shared)
                    .subs
                    .iter()
                    .find(|(f, _)| filter_matches(f, &p.topic))
                    .map(|(_, tx)| tx.clone());
                match target {
                    // Waiting here when the subscription is busy is the backpressure to the broker.
                    Some(tx) => {
                        if let Err(mpsc::error::SendError(p)) = tx.send(p).await {
                            let _ = client.ack(&p).await;
                        }
                    }
                    None => {
                        let unwanted = {
                            let mut s = lock(&shared);
                            let wanted = s.in_use.as_ref().is_none_or(|filters| {
                                filters.iter().any(|f| filter_matches(f, &p.topic))
                            });
                            if !wanted {
                                Some(p)
                            } else {
                                if s.parked.len() < MAX_PARKED {
                                    s.parked.push(p);
                                }
                                None
                            }
                        };
                        if let Some(p) = unwanted {
                            debug!(topic = %p.topic, "message for no subscription; acknowledged");
                            let _ = client.ack(&p).await;
                        }
                    }
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let mut s = lock(&shared);
                // A retransmission after a reconnect reuses a packet id already waiting.
                if pkid != 0 && s.inflight.contains_key(&pkid) {
                    continue;
                }
                if let Some((q, w)) = s.unsent.pop_front() {
                    if q == 0 || pkid == 0 {
                        let _ = w.send(Ok(()));
                    } else {
                        s.inflight.insert(pkid, w);
                    }
                }
            }
            Ok(Event::Incoming(Incoming::PubAck(a))) => {
                if let Some(w) = lock(&shared).inflight.remove(&a.pkid) {
                    let _ = w.send(Ok(()));
                }
            }
            Ok(Event::Incoming(Incoming::PubComp(a))) => {
                if let Some(w) = lock(&shared).inflight.remove(&a.pkid) {
                    let _ = w.send(Ok(()));
                }
            }
            Ok(Event::Incoming(Incoming::SubAck(a))) => {
                if a.return_codes.contains(&SubscribeReasonCode::Failure) {
                    warn!(
                        pkid = a.pkid,
                        "the broker refused a subscription (check its ACL)"
                    );
                }
            }
            Ok(_) => {}
            Err(e) => {
                if let Some(c) = connected.take() {
                    let _ = c.send(Err(e.to_string()));
                }
                lock(&shared).down = Some(e.to_string());
                if !down_logged {
                    warn!(error = %e, "MQTT connection lost; reconnecting");
                    down_logged = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The broker connection as the event loop last saw it.
struct BrokerLink {
    shared: Arc<Mutex<Shared>>,
    broker: String,
}

#[async_trait]
impl super::health::HealthCheck for BrokerLink {
    fn what(&self) -> &'static str {
        "broker connection"
    }

    async fn check(&self) -> Result<(), String> {
        match &lock(&self.shared).down {
            None => Ok(()),
            Some(e) => Err(format!(
                "not connected to the MQTT broker at {}: {e}",
                self.broker
            )),
        }
    }
}

impl MqttPubSub {
    /// Its health check: the connection to the broker (the client reconnects on its own).
    pub fn health_check(&self) -> Arc<dyn super::health::HealthCheck> {
        Arc::new(BrokerLink {
            shared: self.shared.clone(),
            broker: format!("{}:{}", self.settings.host, self.settings.port),
        })
    }

    /// Connects to the broker, waiting up to `connect_timeout` for the first CONNACK.
    pub async fn connect(settings: MqttSettings) -> Result<MqttPubSub, String> {
        let mut opts = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
        opts.set_keep_alive(Duration::from_secs(30))
            .set_clean_session(settings.clean_session)
            .set_manual_acks(true)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET);
        let (client, events) = AsyncClient::new(opts, 1024);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(event_loop(
            events,
            client.clone(),
            shared.clone(),
            qos(settings.qos),
            tx,
        ))
        .abort_handle();
        let first = tokio::time::timeout(settings.connect_timeout, rx).await;
        let fail = |m: String| {
            task.abort();
            Err(format!(
                "cannot connect to the MQTT broker at {}:{}: {m}",
                settings.host, settings.port
            ))
        };
        match first {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return fail(e),
            Ok(Err(_)) => return fail("the connection task ended".into()),
            Err(_) => return fail(format!("no answer within {:?}", settings.connect_timeout)),
        }
        Ok(MqttPubSub {
            settings,
            client,
            shared,
            publishing: tokio::sync::Mutex::new(()),
            task,
        })
    }
}

#[async_trait]
impl PubSub for MqttPubSub {
    fn features(&self) -> &'static [&'static str] {
        &["SUBSCRIBE_WILDCARDS"]
    }

    async fn publish(&self, msg: OutMessage) -> Result<(), PubSubError> {
        let retain = msg
            .metadata
            .get("retain")
            .and_then(|v| go_bool(v))
            .unwrap_or(self.settings.retain);
        let q = self.settings.qos;
        let (tx, rx) = oneshot::channel();
        {
            let _order = self.publishing.lock().await;
            lock(&self.shared).unsent.push_back((q, tx));
            if let Err(e) = self
                .client
                .publish(msg.topic.as_str(), qos(q), retain, msg.data.to_vec())
                .await
            {
                lock(&self.shared).unsent.pop_back();
                return Err(PubSubError::Rejected(format!("mqtt: {e}")));
            }
        }
        match tokio::time::timeout(PUBLISH_WAIT, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(PubSubError::Backend(format!("mqtt: {e}"))),
            Ok(Err(_)) => Err(PubSubError::Backend(
                "mqtt: the connection task ended".into(),
            )),
            Err(_) => Err(PubSubError::Backend(format!(
                "mqtt: the broker did not acknowledge the message within {PUBLISH_WAIT:?}"
            ))),
        }
    }

    async fn subscribe(
        &self,
        req: SubscribeRequest,
        handler: Arc<dyn Handler>,
        mut stop: Stop,
    ) -> Result<Consumer, PubSubError> {
        let (tx, mut rx) = mpsc::channel::<Publish>(BUFFER + MAX_PARKED);
        {
            let mut s = lock(&self.shared);
            let (mine, others): (Vec<_>, Vec<_>) = std::mem::take(&mut s.parked)
                .into_iter()
                .partition(|p| filter_matches(&req.topic, &p.topic));
            s.parked = others;
            for p in mine {
                // The channel has room for every parked message.
                let _ = tx.try_send(p);
            }
            s.subs.insert(req.topic.clone(), tx);
        }
        self.client
            .subscribe(req.topic.clone(), qos(self.settings.qos))
            .await
            .map_err(|e| PubSubError::Backend(format!("mqtt subscribe: {e}")))?;
        let client = self.client.clone();
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
                    p = rx.recv() => p,
                };
                let Some(p) = next else { break };
                let (handler, client) = (handler.clone(), client.clone());
                workers.spawn(async move {
                    let msg = InMessage {
                        topic: p.topic.clone(),
                        data: p.payload.clone(),
                        metadata: HashMap::new(),
                    };
                    // Not acked on Nack: the broker redelivers it on the next session.
                    if handler.handle(msg).await == Outcome::Ack
                        && let Err(e) = client.ack(&p).await
                    {
                        warn!(topic = %p.topic, error = %e, "acknowledging to the broker failed");
                    }
                });
            }
            workers.drain().await;
        }))
    }

    fn topics_in_use(&self, topics: &[String]) {
        let unwanted: Vec<Publish> = {
            let mut s = lock(&self.shared);
            s.in_use = Some(topics.to_vec());
            let (keep, drop): (Vec<_>, Vec<_>) = std::mem::take(&mut s.parked)
                .into_iter()
                .partition(|p| topics.iter().any(|f| filter_matches(f, &p.topic)));
            s.parked = keep;
            drop
        };
        for p in unwanted {
            debug!(topic = %p.topic, "message for no subscription; acknowledged");
            let _ = self.client.try_ack(&p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_wildcards() {
        assert!(filter_matches("a/b", "a/b"));
        assert!(!filter_matches("a/b", "a/c"));
        assert!(filter_matches("a/+/c", "a/x/c"));
        assert!(!filter_matches("a/+", "a/x/c"));
        assert!(filter_matches("a/#", "a/x/c"));
        assert!(filter_matches("#", "anything/at/all"));
        assert!(!filter_matches("a/b/c", "a/b"));
    }
}
