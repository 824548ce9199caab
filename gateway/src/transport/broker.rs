//! External broker mode: devices connect to an existing MQTT broker (Mosquitto, EMQX, ...) and
//! edgecar joins it as one MQTT 5 client (rumqttc), serving the same device protocol as the
//! embedded endpoint ([`super::mqtt`]).
//!
//! **Trust model.** edgecar does not see the devices' logins, so a message's device id is the
//! third level of its topic (`edgecar/v1/<id>/...`). That is trustworthy only because the broker's
//! ACL ([`acl`], printed by `edgecar device acl`) lets user `<id>` publish nowhere but under
//! `edgecar/v1/<id>/`, and gives edgecar's own user the whole `edgecar/v1/#`. Ids that are not in
//! the device registry are refused with a log line, and edgecar's own publishes never come back
//! to it (MQTT 5 No Local), so a reply can never be read as a request.
//!
//! This file owns the client connection: connecting and reconnecting with backoff, the three
//! subscriptions (`req`, `cmdres`, `telemetry`), turning each delivery into a call on the one
//! request path through [`protocol`], acknowledging a QoS 1 delivery only once it is handled
//! (telemetry: once stored), publishing replies and commands, and reading the broker's MQTT 5
//! PUBACK reason codes to know whether a command found a subscriber. Device pub/sub
//! subscriptions and the mailbox are not served here yet; they would plug in at
//! [`Dispatcher::dispatch`] (new [`Inbound`] kinds) and [`BrokerLink::command`].

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnectReturnCode, Filter, Packet, PubAckReason, Publish, PublishProperties,
    RetainForwardRule, SubscribeReasonCode,
};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::{NetworkOptions, Outgoing};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::mqtt::codec::{self, Message, Properties, Version};
use super::mqtt::protocol::{self, Inbound, ReplyTo};
use super::mqtt::topics::ROOT;
use crate::backoff::Backoff;
use crate::blocks::devices::{Command, CommandReply, DeviceLink, LinkError};
use crate::call::{Call, Reply};
use crate::clock::unix_ms;
use crate::config::Config;
use crate::devices::Layer;
use crate::devices::link::DeviceMessage;
use crate::error::{Error, ErrorKind, codes};
use crate::outbox::Receipt;
use crate::runtime::Runtime;

/// What edgecar subscribes to: everything devices send it.
pub const FILTERS: [&str; 3] = [
    "edgecar/v1/+/req/#",
    "edgecar/v1/+/cmdres/#",
    "edgecar/v1/+/telemetry/#",
];
/// Presence protocol label of devices heard through a broker.
const PROTOCOL: &str = "mqtt/broker";
/// First wait before reconnecting; it doubles up to `reconnectMax`.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Deliveries waiting between the connection task and the dispatcher.
const DISPATCH_QUEUE: usize = 64;
/// How often at most a refused device or an overload is logged (the rest are counted).
const LOG_EVERY: Duration = Duration::from_secs(10);
/// How long shutdown waits for the DISCONNECT to reach the broker.
const DISCONNECT_WAIT: Duration = Duration::from_secs(2);

/// How to reach the broker, from `mqtt.broker` (and `mqtt.maxPacketSize`).
#[derive(Clone)]
pub struct BrokerSettings {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// edgecar's MQTT client id.
    pub client_id: String,
    /// edgecar's user at the broker.
    pub username: String,
    /// Its password (never logged).
    password: String,
    /// Keep-alive asked for.
    pub keep_alive: Duration,
    /// Session expiry in seconds; 0 is a clean session.
    pub session_expiry: u32,
    /// Deliveries handled at once (Receive Maximum).
    pub max_inflight: u16,
    /// Largest packet accepted from the broker (Maximum Packet Size).
    pub max_packet: u32,
    /// One connection attempt's time limit.
    pub connect_timeout: Duration,
    /// Longest wait between attempts.
    pub reconnect_max: Duration,
}

impl std::fmt::Debug for BrokerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mqtt://{}:{} as {:?} (client id {:?})",
            self.host, self.port, self.username, self.client_id
        )
    }
}

impl BrokerSettings {
    /// The settings of `cfg` (already validated); reads `passwordFile`.
    pub fn from_config(cfg: &Config) -> Result<BrokerSettings, String> {
        let b = &cfg.mqtt.broker;
        let (host, port) = parse_url(&b.url)?;
        let password = if b.password_file.as_os_str().is_empty() {
            b.password.clone()
        } else {
            read_password_file(&b.password_file)?
        };
        Ok(BrokerSettings {
            host,
            port,
            client_id: cfg.broker_client_id(),
            username: b.username.clone(),
            password,
            keep_alive: b.keep_alive.0,
            session_expiry: u32::try_from(b.session_expiry.0.as_secs()).unwrap_or(u32::MAX),
            max_inflight: b.max_inflight.max(1),
            max_packet: u32::try_from(cfg.mqtt.max_packet_size.0).unwrap_or(u32::MAX),
            connect_timeout: b.connect_timeout.0,
            reconnect_max: b.reconnect_max.0,
        })
    }
}

/// Reads a broker URL: `mqtt://host[:port]` or `tcp://host[:port]`, port 1883 by default.
pub fn parse_url(url: &str) -> Result<(String, u16), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} must start with mqtt:// or tcp://"))?;
    match scheme {
        "mqtt" | "tcp" => {}
        "mqtts" | "ssl" | "tls" | "ws" | "wss" => {
            return Err(format!(
                "{url:?}: {scheme}:// is not supported yet; edgecar reaches the broker over \
                 plain TCP (mqtt://), so keep the broker on the same host or a trusted network"
            ));
        }
        other => return Err(format!("{url:?}: unknown scheme {other:?}; use mqtt://")),
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return Err(format!(
            "{url:?} must be mqtt://host:port, nothing after it"
        ));
    }
    if authority.contains('@') {
        return Err(format!(
            "{url:?}: put credentials in mqtt.broker.username and password, not in the URL"
        ));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url:?}: unclosed '[' in the host"))?;
        match after {
            "" => (h, None),
            p => (
                h,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("{url:?}: expected :port after ']'"))?,
                ),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{url:?} names no host"));
    }
    let port = match port {
        None => 1883,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{url:?}: {p:?} is not a port (1 to 65535)"))?,
    };
    Ok((host.to_owned(), port))
}

/// The first line of a password file.
pub fn read_password_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let line = text.lines().next().unwrap_or_default();
    if line.is_empty() {
        return Err(format!("{}: the first line is empty", path.display()));
    }
    Ok(line.to_owned())
}

/// The Mosquitto ACL file that confines every device to its own tree and lets edgecar (user
/// `edgecar_user`) serve them all; what `edgecar device acl` prints.
///
/// Without `devices`, one `pattern` line covers every device, present and future: it relies on
/// every broker account other than edgecar's being a device id (Mosquitto puts the username
/// into `%u` as it is, so an account named `a/x` would reach device `a`'s tree). With
/// `devices` (`--per-device`), each registered device gets its own `user` block and no other
/// account gets anything; the file must then be printed again, and the broker reloaded, when
/// devices are added or removed.
pub fn acl(edgecar_user: &str, devices: Option<&[String]>) -> String {
    let mut out = String::from(
        "# Mosquitto acl_file for edgecar's device protocol (external broker mode),\n\
         # printed by `edgecar device acl`.\n\
         #\n\
         # Every device logs in with its device id as username and may publish and subscribe\n\
         # only in its own tree, edgecar/v1/<device-id>/. edgecar takes a message's device id\n\
         # from its topic and trusts it because of these lines: grant devices nothing wider.\n",
    );
    match devices {
        None => out.push_str(&format!(
            "# Every broker account other than edgecar's must be a device id (letters, digits,\n\
             # '-' and '_'); `edgecar device acl --per-device` lists devices one by one instead.\n\
             pattern readwrite {ROOT}/%u/#\n"
        )),
        Some(ids) => {
            out.push_str(
                "# One block per registered device: print this again and reload the broker\n\
                 # (SIGHUP) after `edgecar device add` or `remove`.\n",
            );
            for id in ids {
                out.push_str(&format!("user {id}\ntopic readwrite {ROOT}/{id}/#\n"));
            }
        }
    }
    out.push_str(&format!(
        "\n# edgecar itself (mqtt.broker.username) serves every device tree.\n\
         user {edgecar_user}\n\
         topic readwrite {ROOT}/#\n"
    ));
    out
}

/// Why a message could not be handed to the broker client.
#[derive(Debug, thiserror::Error)]
enum SendError {
    /// Larger than the broker accepts.
    #[error("{size} bytes is more than the broker accepts ({max} bytes, its Maximum Packet Size)")]
    TooLarge { size: usize, max: u32 },
    /// The client's queue is full (the broker is away or slow).
    #[error("the queue to the broker is full (the broker is unreachable or slow)")]
    Full,
}

type AckWaiter = oneshot::Sender<PubAckReason>;

/// Publishes on their way to the broker, so that a PUBACK's reason code reaches whoever waits.
#[derive(Default)]
struct Acks {
    /// Handed to the client, packet id not known yet, in order.
    queued: VecDeque<Option<AckWaiter>>,
    /// On the wire, by packet id.
    inflight: HashMap<u16, Option<AckWaiter>>,
}

/// edgecar's side of the broker: publishing, commands waiting for devices, connection state.
/// It is the [`DeviceLink`] the devices block sends commands through in external mode.
pub struct BrokerLink {
    client: AsyncClient,
    /// `host:port`, for messages.
    broker: String,
    /// edgecar's own user at the broker: never a device.
    username: String,
    acks: Mutex<Acks>,
    /// Commands awaiting a reply: (device, request id) → the waiting call.
    commands: Mutex<HashMap<(String, String), oneshot::Sender<CommandReply>>>,
    /// Bounds commands in flight (each holds a place in the client's queue).
    command_slots: Semaphore,
    next_id: AtomicU64,
    /// Makes command ids unique across restarts.
    rid_prefix: String,
    /// Whether the last connection attempt succeeded and has not failed since.
    connected: AtomicBool,
    /// The broker's Maximum Packet Size from its CONNACK (0: none given).
    broker_max_packet: AtomicU32,
    max_inflight: u16,
    reconnect_max: Duration,
    /// When each device was last heard through the broker: only the broker knows who is
    /// connected, so a device heard within [`PRESENT_FOR`] counts as on this link (its outbox is
    /// delivered, and the broker's PUBACK says whether anyone took each message).
    heard: Mutex<HashMap<String, tokio::time::Instant>>,
}

/// How long a device heard through the broker counts as present for outbox delivery.
const PRESENT_FOR: Duration = Duration::from_secs(120);
/// How long an outbox message the broker had no subscriber for waits before it is offered again.
const NO_SUBSCRIBER_RETRY: Duration = Duration::from_secs(5);

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Creates the client (nothing is sent until [`serve`] polls its event loop).
pub fn connect(s: &BrokerSettings) -> (Arc<BrokerLink>, EventLoop) {
    let mut opts = MqttOptions::new(&s.client_id, &s.host, s.port);
    let mut net = NetworkOptions::new();
    // A reply and its PUBACK are two small writes: without this, Nagle holds the second back
    // until the broker's delayed ACK (tens of milliseconds per request).
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(s.connect_timeout.as_secs().max(1));
    opts.set_network_options(net);
    opts.set_credentials(&s.username, &s.password)
        .set_keep_alive(s.keep_alive.max(Duration::from_secs(5)))
        .set_clean_start(s.session_expiry == 0)
        .set_session_expiry_interval((s.session_expiry > 0).then_some(s.session_expiry))
        .set_receive_maximum(Some(s.max_inflight))
        .set_max_packet_size(Some(s.max_packet))
        .set_connection_timeout(s.connect_timeout.as_secs().max(1))
        .set_manual_acks(true);
    let inflight = usize::from(s.max_inflight);
    // Room for every handler's reply and ack, every command, and the subscriptions: a send
    // that finds the queue full fails rather than waits (see `BrokerLink::publish`).
    let (client, events) = AsyncClient::new(opts, 3 * inflight + 16);
    let link = BrokerLink {
        client,
        broker: format!("{}:{}", s.host, s.port),
        username: s.username.clone(),
        acks: Mutex::default(),
        commands: Mutex::default(),
        command_slots: Semaphore::new(inflight),
        next_id: AtomicU64::new(1),
        rid_prefix: format!("{:x}", unix_ms() % (1 << 40)),
        connected: AtomicBool::new(false),
        broker_max_packet: AtomicU32::new(0),
        max_inflight: s.max_inflight,
        reconnect_max: s.reconnect_max,
        heard: Mutex::default(),
    };
    (Arc::new(link), events)
}

fn properties(p: &Properties) -> PublishProperties {
    PublishProperties {
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.clone(),
        content_type: p.content_type.clone(),
        user_properties: p.user.clone(),
        ..PublishProperties::default()
    }
}

/// A delivery in the vocabulary of [`protocol`]; `None` if its topic is not UTF-8.
fn message(p: &Publish) -> Option<Message> {
    let topic = std::str::from_utf8(&p.topic).ok()?.to_owned();
    let props = p
        .properties
        .as_ref()
        .map_or_else(Properties::default, |pp| Properties {
            response_topic: pp.response_topic.clone(),
            correlation_data: pp.correlation_data.clone(),
            content_type: pp.content_type.clone(),
            user: pp.user_properties.clone(),
            topic_alias: None,
        });
    Some(Message {
        topic,
        payload: p.payload.clone(),
        qos: p.qos as u8,
        retain: p.retain,
        props,
    })
}

/// The device a topic belongs to: its third level, `edgecar/v1/<id>/...`.
pub fn device_of(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix(ROOT)?.strip_prefix('/')?;
    let (id, after) = rest.split_once('/')?;
    (!id.is_empty() && !after.is_empty()).then_some(id)
}

impl BrokerLink {
    /// Hands `msg` to the client (QoS 1); `waiter` hears the broker's PUBACK reason.
    fn publish(&self, msg: &Message, waiter: Option<AckWaiter>) -> Result<(), SendError> {
        let max = self.broker_max_packet.load(Ordering::Relaxed);
        let size = codec::publish_size(msg, Version::V5);
        if max != 0 && size > usize::try_from(max).unwrap_or(usize::MAX) {
            // rumqttc would fail the whole connection on it; refuse just this message.
            return Err(SendError::TooLarge { size, max });
        }
        // The queue entry and the request enter in the same order under one lock, and the
        // connection task pops the queue under that lock when the client takes the request.
        let mut acks = locked(&self.acks);
        self.client
            .try_publish_with_properties(
                msg.topic.as_str(),
                QoS::AtLeastOnce,
                false,
                msg.payload.clone(),
                properties(&msg.props),
            )
            .map_err(|_| SendError::Full)?;
        acks.queued.push_back(waiter);
        Ok(())
    }

    /// Publishes the reply to a device's request, or an error saying why it cannot be sent.
    fn reply(&self, device: &str, to: &ReplyTo, result: Result<Reply, Error>) {
        let msg = protocol::reply(device, to, result);
        match self.publish(&msg, None) {
            Ok(()) => {}
            Err(e @ SendError::TooLarge { .. }) => {
                warn!(device, op = %to.op, error = %e, "reply too large for the broker; answering with an error");
                let err = Error::new(
                    ErrorKind::TooLarge,
                    codes::BODY_TOO_LARGE,
                    format!("the reply is {e}"),
                );
                if let Err(e) = self.publish(&protocol::reply(device, to, Err(err)), None) {
                    warn!(device, error = %e, "reply not sent");
                }
            }
            Err(e) => warn!(device, op = %to.op, error = %e, "reply not sent"),
        }
    }

    /// Acknowledges a delivery to the broker (nothing for QoS 0).
    fn ack(&self, p: &Publish) {
        if let Err(e) = self.client.try_ack(p) {
            // Unacknowledged, it comes again with the next session.
            debug!(error = %e, "acknowledgement not sent");
        }
    }

    /// The client took a publish from its queue (`pkid` 0 for QoS 0).
    fn on_sent(&self, pkid: u16) {
        let mut acks = locked(&self.acks);
        if pkid != 0 && acks.inflight.contains_key(&pkid) {
            return; // a retransmission after reconnecting: already known
        }
        if let Some(waiter) = acks.queued.pop_front()
            && pkid != 0
        {
            acks.inflight.insert(pkid, waiter);
        }
    }

    /// The broker acknowledged publish `pkid`.
    fn on_puback(&self, pkid: u16, reason: PubAckReason) {
        if let Some(Some(w)) = locked(&self.acks).inflight.remove(&pkid) {
            let _ = w.send(reason);
        }
    }

    /// Connected: remembers the broker's limits; a new session forgets unacknowledged publishes
    /// (rumqttc drops them too).
    fn on_connack(&self, ack: &ConnAck) {
        let max = ack
            .properties
            .as_ref()
            .and_then(|p| p.max_packet_size)
            .unwrap_or(0);
        self.broker_max_packet.store(max, Ordering::Relaxed);
        if !ack.session_present {
            locked(&self.acks).inflight.clear();
        }
        self.connected.store(true, Ordering::Relaxed);
    }

    /// Hands a device's command reply to the call waiting for it; `false` if none waits.
    fn complete(&self, device: &str, rid: &str, reply: CommandReply) -> bool {
        let waiter = locked(&self.commands).remove(&(device.to_owned(), rid.to_owned()));
        waiter.is_some_and(|w| w.send(reply).is_ok())
    }
}

/// Removes a command's waiting entry however its wait ends.
struct PendingCommand<'a> {
    link: &'a BrokerLink,
    key: (String, String),
}

impl Drop for PendingCommand<'_> {
    fn drop(&mut self) {
        locked(&self.link.commands).remove(&self.key);
    }
}

#[async_trait]
impl DeviceLink for BrokerLink {
    fn kind(&self) -> &'static str {
        "mqtt-broker"
    }

    fn connected(&self, device: &str) -> bool {
        locked(&self.heard)
            .get(device)
            .is_some_and(|at| at.elapsed() < PRESENT_FOR)
    }

    /// Publishes the message at QoS 1; the broker's PUBACK settles it: success confirms it (the
    /// device has it, or its persistent session at the broker does), "no matching subscribers"
    /// puts it back after a while, anything else puts it back.
    fn deliver(&self, device: &str, msg: DeviceMessage, receipt: Arc<Receipt>) -> bool {
        let msg = match protocol::device_message(device, msg) {
            Ok(m) => m,
            Err(e) => {
                warn!(device, error = %e, "a stored message cannot be delivered over MQTT; dropped");
                receipt.confirm();
                return true;
            }
        };
        let (tx, ack) = oneshot::channel();
        if let Err(e) = self.publish(&msg, Some(tx)) {
            debug!(device, error = %e, "outbox message not handed to the broker");
            return false;
        }
        let device = device.to_owned();
        tokio::spawn(async move {
            match ack.await {
                Ok(PubAckReason::Success) => receipt.confirm(),
                Ok(PubAckReason::NoMatchingSubscribers) => {
                    debug!(device = %device, "no client of the device subscribes at the broker; the message waits");
                    tokio::time::sleep(NO_SUBSCRIBER_RETRY).await;
                }
                Ok(other) => {
                    debug!(device = %device, reason = ?other, "the broker refused an outbox message; it waits")
                }
                Err(_) => {}
            }
        });
        true
    }

    async fn command(&self, device: &str, cmd: Command) -> Result<CommandReply, LinkError> {
        if !self.connected.load(Ordering::Relaxed) {
            return Err(LinkError::Unavailable(format!(
                "edgecar is not connected to the MQTT broker at {}",
                self.broker
            )));
        }
        let Ok(_slot) = self.command_slots.try_acquire() else {
            return Err(LinkError::Unavailable(format!(
                "{} commands are already waiting for devices (mqtt.broker.maxInflight)",
                self.max_inflight
            )));
        };
        let rid = format!(
            "{}{:04x}",
            self.rid_prefix,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let msg = protocol::command_message(device, &rid, &cmd).map_err(LinkError::Invalid)?;
        let key = (device.to_owned(), rid);
        let (tx, mut reply) = oneshot::channel();
        locked(&self.commands).insert(key.clone(), tx);
        let _pending = PendingCommand { link: self, key };
        let (ack_tx, mut acked) = oneshot::channel();
        match self.publish(&msg, Some(ack_tx)) {
            Ok(()) => {}
            Err(e @ SendError::TooLarge { .. }) => {
                return Err(LinkError::Invalid(format!("the command is {e}")));
            }
            Err(e) => return Err(LinkError::Unavailable(e.to_string())),
        }
        let mut waiting_ack = true;
        loop {
            tokio::select! {
                r = &mut reply => {
                    return r.map_err(|_| LinkError::Disconnected(device.to_owned()));
                }
                a = &mut acked, if waiting_ack => {
                    waiting_ack = false;
                    match a {
                        // Delivered (or queued by the broker for a device's persistent
                        // session); or the PUBACK was lost with a session: wait for the reply.
                        Ok(PubAckReason::Success) | Err(_) => {}
                        Ok(PubAckReason::NoMatchingSubscribers) => {
                            return Err(LinkError::NotReachable(format!(
                                "no client at the broker subscribes to {}: device {device:?} is \
                                 offline or not subscribed to {}",
                                msg.topic,
                                protocol::command_filter(device)
                            )));
                        }
                        Ok(other) => {
                            return Err(LinkError::Unavailable(format!(
                                "the broker refused the command ({other:?}); check that its ACL \
                                 gives edgecar's user {:?} {ROOT}/# (`edgecar device acl`)",
                                self.username
                            )));
                        }
                    }
                }
            }
        }
    }
}

/// What handling a delivery needs besides the link.
pub struct Served {
    /// The request path.
    pub runtime: Arc<Runtime>,
    /// The device layer: which ids exist, "last seen", and a device heard here is on the broker
    /// link, its outbox woken.
    pub devices: Layer,
}

/// Serves devices through the broker until `stop` turns true; then stops taking deliveries
/// (those not acknowledged come again with edgecar's next session), lets running ones finish for
/// up to `drain`, and disconnects.
pub async fn serve(
    link: Arc<BrokerLink>,
    events: EventLoop,
    served: Served,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let (tx, mut rx) = mpsc::channel(DISPATCH_QUEUE);
    let mut connection = tokio::spawn(run_connection(events, link.clone(), tx));
    let mut d = Dispatcher {
        permits: Arc::new(Semaphore::new(usize::from(link.max_inflight))),
        link: link.clone(),
        served: Arc::new(served),
        tasks: JoinSet::new(),
        waiting: VecDeque::new(),
        refused: Quiet::default(),
        busy: Quiet::default(),
    };
    loop {
        tokio::select! {
            Some(p) = rx.recv() => d.dispatch(p),
            Some(_) = d.tasks.join_next(), if !d.tasks.is_empty() => d.start_waiting(),
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
    // Deliveries from here on are left unacknowledged for the broker to keep.
    drop(rx);
    let running = async { while d.tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(drain, running).await.is_err() {
        warn!(
            "requests from devices still running at the shutdown timeout; abandoned unacknowledged"
        );
        d.tasks.abort_all();
    }
    let _ = link.client.try_disconnect();
    if tokio::time::timeout(DISCONNECT_WAIT, &mut connection)
        .await
        .is_err()
    {
        connection.abort();
    }
    info!(broker = %link.broker, "disconnected from the MQTT broker");
}

/// Drives the client: connects, reconnects with backoff, subscribes, passes deliveries on and
/// matches PUBACKs to publishes. Ends once edgecar's DISCONNECT has been sent.
async fn run_connection(
    mut events: EventLoop,
    link: Arc<BrokerLink>,
    deliveries: mpsc::Sender<Publish>,
) {
    let mut backoff = Backoff::new(FIRST_BACKOFF, link.reconnect_max);
    let mut down_since: Option<Instant> = None;
    let mut failures: u64 = 0;
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                link.on_connack(&ack);
                backoff.reset();
                let down = down_since.take().map_or(Duration::ZERO, |t| t.elapsed());
                info!(broker = %link.broker, session_present = ack.session_present,
                      failed_attempts = failures, down = ?down, "connected to the MQTT broker");
                failures = 0;
                let filters = FILTERS.iter().map(|f| Filter {
                    path: (*f).to_owned(),
                    qos: QoS::AtLeastOnce,
                    // Never hear our own replies and commands; never replay retained messages.
                    nolocal: true,
                    preserve_retain: false,
                    retain_forward_rule: RetainForwardRule::Never,
                });
                if let Err(e) = link.client.try_subscribe_many(filters) {
                    warn!(error = %e, "could not subscribe to device topics");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(s))) => {
                let refused: Vec<_> = FILTERS
                    .iter()
                    .zip(&s.return_codes)
                    .filter(|(_, c)| !matches!(c, SubscribeReasonCode::Success(_)))
                    .map(|(f, c)| format!("{f} ({c:?})"))
                    .collect();
                if refused.is_empty() {
                    info!(broker = %link.broker, filters = ?FILTERS, "serving devices through the MQTT broker");
                } else {
                    error!(broker = %link.broker, refused = ?refused, user = %link.username,
                           "the broker refused edgecar's subscriptions: its ACL must give edgecar's user readwrite on edgecar/v1/# (`edgecar device acl`)");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if deliveries.send(p).await.is_err() {
                    debug!("shutting down: delivery left unacknowledged");
                }
            }
            Ok(Event::Incoming(Packet::PubAck(a))) => link.on_puback(a.pkid, a.reason),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => link.on_sent(pkid),
            Ok(Event::Incoming(Packet::Disconnect(d))) => {
                warn!(broker = %link.broker, reason = ?d.reason_code, "the broker ended edgecar's connection");
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                link.connected.store(false, Ordering::Relaxed);
                let since = *down_since.get_or_insert_with(Instant::now);
                let wait = backoff.next_wait();
                failures += 1;
                match &e {
                    ConnectionError::ConnectionRefused(code) => {
                        let hint = match code {
                            ConnectReturnCode::BadUserNamePassword
                            | ConnectReturnCode::NotAuthorized => {
                                " (check mqtt.broker.username and password)"
                            }
                            ConnectReturnCode::ClientIdentifierNotValid => {
                                " (check mqtt.broker.clientId)"
                            }
                            _ => "",
                        };
                        warn!(broker = %link.broker, code = ?code, retry_in = ?wait,
                              "the broker refused edgecar's connection{hint}");
                    }
                    _ if failures == 1 => {
                        warn!(broker = %link.broker, error = %e, retry_in = ?wait,
                              "no connection to the MQTT broker; retrying (requests from devices wait at the broker)");
                    }
                    _ => {
                        debug!(broker = %link.broker, error = %e, attempts = failures,
                               down = ?since.elapsed(), retry_in = ?wait, "still no connection to the MQTT broker");
                    }
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Counts events logged at most once per [`LOG_EVERY`].
#[derive(Default)]
struct Quiet {
    last: Option<Instant>,
    suppressed: u64,
}

impl Quiet {
    /// `Some(how many were not logged since the last time)` when this one should be logged.
    fn tick(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// A request or telemetry delivery, ready to run.
struct Work {
    device: String,
    inbound: Inbound,
    publish: Publish,
}

/// Takes deliveries one at a time, quickly: anything slow runs as a task, so the connection
/// task is never held up (it must keep answering the broker's keep-alive).
struct Dispatcher {
    link: Arc<BrokerLink>,
    served: Arc<Served>,
    /// One per delivery being handled; `mqtt.broker.maxInflight` in all.
    permits: Arc<Semaphore>,
    tasks: JoinSet<()>,
    /// QoS 1 deliveries that found every permit taken, in arrival order; at most
    /// `maxInflight`. Receive Maximum should make this rare, but brokers overshoot it (Mosquitto
    /// 2.0 sends the next message or two as soon as one is acknowledged).
    waiting: VecDeque<Work>,
    /// Deliveries from ids that are not devices.
    refused: Quiet,
    /// Deliveries refused because every permit was taken.
    busy: Quiet,
}

impl Dispatcher {
    fn dispatch(&mut self, p: Publish) {
        let Some(msg) = message(&p) else {
            debug!("delivery with a topic that is not UTF-8; dropped");
            self.link.ack(&p);
            return;
        };
        let Some(device) = device_of(&msg.topic).map(str::to_owned) else {
            self.link.ack(&p);
            return;
        };
        if device == self.link.username || !self.served.devices.registry.contains(&device) {
            if let Some(more) = self.refused.tick() {
                warn!(device = %device, topic = %msg.topic, also_refused = more,
                      "message under the tree of an id that is not in the device registry; ignored (no reply)");
            }
            self.link.ack(&p);
            return;
        }
        self.served
            .devices
            .presence
            .heard(&device, PROTOCOL, unix_ms());
        let fresh = locked(&self.link.heard)
            .insert(device.clone(), tokio::time::Instant::now())
            .is_none_or(|at| at.elapsed() >= PRESENT_FOR);
        if fresh {
            // The device is back (or new): what waits for it goes out now.
            self.served.devices.links.attached(&device, "mqtt-broker");
            self.served.devices.outbox.kick(&device);
        }
        match protocol::classify(&device, &msg) {
            Inbound::CommandReply { rid, reply } => {
                if !self.link.complete(&device, &rid, reply.clone())
                    && !self
                        .served
                        .runtime
                        .devices
                        .mailbox_answer(&device, &rid, &reply)
                {
                    debug!(device = %device, rid = %rid, "command reply for no waiting call (late or unknown)");
                }
                self.link.ack(&p);
            }
            Inbound::Invalid { error, reply_to } => {
                debug!(device = %device, topic = %msg.topic, code = error.code, "request refused");
                self.link.reply(&device, &reply_to, Err(error));
                self.link.ack(&p);
            }
            inbound @ (Inbound::Request { .. } | Inbound::Telemetry { .. }) => {
                let work = Work {
                    device,
                    inbound,
                    publish: p,
                };
                // Behind the ones already waiting, so deliveries start in arrival order.
                if self.waiting.is_empty()
                    && let Ok(permit) = self.permits.clone().try_acquire_owned()
                {
                    self.start(work, permit);
                } else if work.publish.qos == QoS::AtLeastOnce
                    && self.waiting.len() < usize::from(self.link.max_inflight)
                {
                    self.waiting.push_back(work);
                } else {
                    self.refuse_busy(&work);
                }
            }
        }
    }

    fn start(&mut self, w: Work, permit: OwnedSemaphorePermit) {
        let (link, served) = (self.link.clone(), self.served.clone());
        self.tasks
            .spawn(handle(link, served, w.device, w.inbound, w.publish, permit));
    }

    /// Starts waiting deliveries while permits are free (after a task ended).
    fn start_waiting(&mut self) {
        while !self.waiting.is_empty() {
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                return;
            };
            if let Some(w) = self.waiting.pop_front() {
                self.start(w, permit);
            }
        }
    }

    /// Answers a delivery that finds every slot busy (and, for QoS 1, the waiting line full):
    /// a QoS 0 flood, which has no flow control, or a broker that ignores Receive Maximum.
    fn refuse_busy(&mut self, w: &Work) {
        if let Some(more) = self.busy.tick() {
            warn!(device = %w.device, also_refused = more, max = self.link.max_inflight,
                  "every request slot is busy; answering 503");
        }
        if let Inbound::Request { reply_to, .. } | Inbound::Telemetry { reply_to, .. } = &w.inbound
        {
            let err = Error::new(
                ErrorKind::Unavailable,
                codes::TOO_MANY_REQUESTS,
                format!(
                    "edgecar is handling {} messages from devices already \
                     (mqtt.broker.maxInflight); send again later, or use QoS 1",
                    self.link.max_inflight
                ),
            );
            self.link.reply(&w.device, reply_to, Err(err));
        }
        self.link.ack(&w.publish);
    }
}

/// Runs a call; a panic inside becomes an internal error, so every delivery is answered and
/// acknowledged.
async fn run(runtime: &Arc<Runtime>, call: Call) -> Result<Reply, Error> {
    struct AbortOnDrop(tokio::task::JoinHandle<Result<Reply, Error>>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let rt = runtime.clone();
    let mut task = AbortOnDrop(tokio::spawn(async move { rt.handle(call).await }));
    match (&mut task.0).await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "request task failed");
            Err(Error::new(
                ErrorKind::Internal,
                codes::INTERNAL,
                "the request failed inside edgecar",
            ))
        }
    }
}

/// Handles one request or telemetry delivery, replies, then acknowledges it to the broker.
async fn handle(
    link: Arc<BrokerLink>,
    served: Arc<Served>,
    device: String,
    work: Inbound,
    p: Publish,
    permit: OwnedSemaphorePermit,
) {
    match work {
        Inbound::Request { call, reply_to } => {
            let result = run(&served.runtime, *call).await;
            link.reply(&device, &reply_to, result);
        }
        Inbound::Telemetry { call, reply_to } => {
            // Stored (or failed and answered) before the broker hears the PUBACK.
            if let Err(e) = run(&served.runtime, *call).await {
                link.reply(&device, &reply_to, Err(e));
            }
        }
        Inbound::CommandReply { .. } | Inbound::Invalid { .. } => {}
    }
    // The broker may send the next delivery as soon as it has the PUBACK: free the slot first.
    drop(permit);
    link.ack(&p);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1:1884").unwrap(),
            ("127.0.0.1".into(), 1884)
        );
        assert_eq!(
            parse_url("tcp://broker.lan").unwrap(),
            ("broker.lan".into(), 1883)
        );
        assert_eq!(parse_url("mqtt://[::1]:9/").unwrap(), ("::1".into(), 9));
        assert_eq!(parse_url("mqtt://[::1]").unwrap(), ("::1".into(), 1883));
        for bad in [
            "broker:1883",
            "mqtts://broker:8883",
            "http://broker",
            "mqtt://",
            "mqtt://:1883",
            "mqtt://h:0",
            "mqtt://h:99999",
            "mqtt://h:1883/x",
            "mqtt://u:p@h:1883",
            "mqtt://[::1",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        assert!(
            parse_url("mqtts://b")
                .unwrap_err()
                .contains("not supported")
        );
    }

    #[test]
    fn the_device_is_the_third_level() {
        assert_eq!(device_of("edgecar/v1/a/req/x/1"), Some("a"));
        assert_eq!(device_of("edgecar/v1/a/telemetry"), Some("a"));
        for t in [
            "edgecar/v1/a",
            "edgecar/v1//req",
            "edgecar/v2/a/req",
            "x/edgecar/v1/a/r",
        ] {
            assert_eq!(device_of(t), None, "{t}");
        }
    }

    #[test]
    fn the_acl_confines_devices_and_names_edgecar() {
        let rules = |text: String| -> Vec<String> {
            text.lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(
            rules(acl("gw", None)),
            [
                "pattern readwrite edgecar/v1/%u/#",
                "user gw",
                "topic readwrite edgecar/v1/#"
            ]
        );
        assert_eq!(
            rules(acl("gw", Some(&["a".into(), "b-2".into()]))),
            [
                "user a",
                "topic readwrite edgecar/v1/a/#",
                "user b-2",
                "topic readwrite edgecar/v1/b-2/#",
                "user gw",
                "topic readwrite edgecar/v1/#"
            ]
        );
    }

    #[test]
    fn deliveries_keep_their_mqtt5_properties() {
        let mut p = Publish::new(
            "edgecar/v1/a/req/state.get/1",
            QoS::AtLeastOnce,
            "x",
            Some(PublishProperties {
                response_topic: Some("edgecar/v1/a/inbox".into()),
                correlation_data: Some(bytes::Bytes::from_static(b"c1")),
                content_type: Some("text/plain".into()),
                user_properties: vec![("traceparent".into(), "00-x".into())],
                ..PublishProperties::default()
            }),
        );
        p.pkid = 7;
        let m = message(&p).unwrap();
        assert_eq!(m.topic, "edgecar/v1/a/req/state.get/1");
        assert_eq!(
            m.props.response_topic.as_deref(),
            Some("edgecar/v1/a/inbox")
        );
        assert_eq!(m.props.user("traceparent"), Some("00-x"));
        let back = properties(&m.props);
        assert_eq!(back.correlation_data.as_deref(), Some(&b"c1"[..]));
        assert_eq!(back.content_type.as_deref(), Some("text/plain"));
        let mut bad = Publish::new("x", QoS::AtMostOnce, "", None);
        bad.topic = bytes::Bytes::from_static(b"\xff/x");
        assert!(message(&bad).is_none());
    }
}
