//! Device-side client for edgecar: the device protocol (docs/device-protocol.md) over MQTT
//! (rumqttc) or QUIC (quinn), for devices and shell scripts that run Rust or can run the
//! `edgecar-device` CLI. The transport is chosen in [`Options::transport`]; the API is the same.
//!
//! [`Client::connect`] authenticates as a device, subscribes to its reply and command topics, and
//! runs the MQTT event loop in a task the client owns (stopped when the client is dropped).
//! Requests ([`Client::request`] and the typed helpers) wait for their one reply, matched by
//! request id; commands from apps arrive on the [`Commands`] stream and are answered with
//! [`Client::reply`]. This crate never depends on the gateway: it speaks the documented protocol,
//! so it is also a check that the documentation is enough.
//!
//! # Layout
//!
//! - [`topics`]: building and reading the protocol's topics (pure).
//! - [`quic`]: the QUIC transport (streams, frames, certificate trust).
//! - this file: the connection, requests, commands.

pub mod quic;
pub mod topics;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// The separator Dapr puts between an owner prefix and a state key (`<owner>||<key>`): a device's
/// keys are stored as `<device-id>||<key>`.
pub const KEY_SEPARATOR: &str = "||";

/// Largest packet the client sends or accepts (the gateway's default `mqtt.maxPacketSize`).
const MAX_PACKET: usize = 256 * 1024;
/// Commands waiting to be taken from [`Commands`]; more are answered 503 by the client.
const COMMAND_QUEUE: usize = 64;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The gateway refused the CONNECT (unknown device or wrong password: `NotAuthorized`).
    #[error("connection refused by the gateway: {0:?}")]
    Refused(ConnectReturnCode),
    /// QUIC: the gateway closed the connection with this application code (0x1 not
    /// authorized, 0x2 protocol error, ...; docs/device-protocol.md#quic).
    #[error("connection closed by the gateway: {reason} (QUIC code {code:#x})")]
    QuicClosed {
        /// The close code.
        code: u64,
        /// The reason phrase.
        reason: String,
    },
    /// The gateway could not be reached, or the connection failed.
    #[error("connection failed: {0}")]
    Connection(String),
    /// No reply within the request timeout.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The client has stopped (its event loop ended).
    #[error("the client is closed")]
    Closed,
    /// The gateway's answer could not be read.
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// The gateway answered with an error (`status` ≥ 400, Dapr's `errorCode` and message).
    #[error("{status} {code}: {message}")]
    Api {
        /// HTTP-style status.
        status: u16,
        /// Dapr error code, e.g. `ERR_STATE_SAVE`.
        code: String,
        /// Message.
        message: String,
    },
}

/// How to reach the gateway.
#[derive(Debug, Clone)]
pub struct Options {
    /// Gateway host.
    pub host: String,
    /// Gateway MQTT port.
    pub port: u16,
    /// The device id (MQTT username).
    pub device_id: String,
    /// The device's password.
    pub password: String,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// How long a request waits for its reply.
    pub request_timeout: Duration,
    /// MQTT (the default) or QUIC.
    pub transport: Transport,
}

/// Which transport a client speaks.
#[derive(Debug, Clone, Default)]
pub enum Transport {
    /// MQTT 3.1.1 over TCP to `port` (the gateway's `mqtt.port`).
    #[default]
    Mqtt,
    /// QUIC to UDP `port` (the gateway's `quic.port`).
    Quic(quic::QuicOptions),
}

impl Options {
    /// Options with the defaults: keep-alive 30 s, request timeout 10 s.
    pub fn new(host: &str, port: u16, device_id: &str, password: &str) -> Self {
        Options {
            host: host.to_owned(),
            port,
            device_id: device_id.to_owned(),
            password: password.to_owned(),
            keep_alive: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            transport: Transport::Mqtt,
        }
    }
}

/// A reply from the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP-style status (200, 204, 404, ...).
    pub status: u16,
    /// ETag, for replies that carry one.
    pub etag: Option<String>,
    /// For capability calls: the offer that served the result (`x-edgecar-offer` in HTTP).
    pub offer: Option<String>,
    /// For capability calls: `hit`, `miss`, `stale` or `bypass` (`x-edgecar-cache` in HTTP).
    pub cache: Option<String>,
    /// The body, as the HTTP API would return it.
    pub body: Bytes,
}

impl Reply {
    /// The reply, or its error as [`Error::Api`] when the status is 400 or more.
    pub fn ok(self) -> Result<Reply, Error> {
        if self.status < 400 {
            return Ok(self);
        }
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        Err(Error::Api {
            status: self.status,
            code: v["errorCode"].as_str().unwrap_or("").to_owned(),
            message: v["message"].as_str().map_or_else(
                || String::from_utf8_lossy(&self.body).into_owned(),
                str::to_owned,
            ),
        })
    }
}

/// A command from an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The method path (`led/on`).
    pub method: String,
    /// The request id to answer with.
    pub rid: String,
    /// The app's body.
    pub body: Bytes,
}

/// An event of a pub/sub topic the device subscribed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The pub/sub component.
    pub pubsub: String,
    /// The topic.
    pub topic: String,
    /// The event: CloudEvent JSON (or the raw bytes of a `rawPayload` publish).
    pub body: Bytes,
}

/// Events of subscribed topics, in arrival order.
pub struct Events(mpsc::Receiver<Event>);

impl Events {
    /// The next event; `None` once the client is closed.
    pub async fn next(&mut self) -> Option<Event> {
        self.0.recv().await
    }
}

/// Commands from apps, in arrival order.
pub struct Commands(mpsc::Receiver<Command>);

impl Commands {
    /// The next command; `None` once the client is closed.
    pub async fn next(&mut self) -> Option<Command> {
        self.0.recv().await
    }
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Reply>>>>;

/// A connected device.
pub struct Client {
    /// The MQTT client (unused over QUIC, where it never connects).
    mqtt: AsyncClient,
    /// The QUIC session, when the client speaks QUIC.
    quic: Option<quic::Session>,
    device: String,
    pending: Pending,
    /// The last telemetry refusal (`res/telemetry/-/<status>`), until [`Client::telemetry_error`]
    /// takes it.
    telemetry_error: Arc<Mutex<Option<Reply>>>,
    next_rid: AtomicU64,
    timeout: Duration,
    /// The MQTT event loop; aborted on drop.
    task: JoinHandle<()>,
    /// Events of subscribed topics, until taken.
    events: Mutex<Option<Events>>,
    /// Set once events are taken: only then does the client subscribe to its `sub/#` (events it
    /// received would otherwise be acknowledged and lost).
    want_events: Arc<AtomicBool>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Client {
    /// Connects, subscribes to the device's replies and commands, and returns once the gateway
    /// has acknowledged both.
    pub async fn connect(opts: Options) -> Result<(Client, Commands), Error> {
        if let Transport::Quic(q) = &opts.transport {
            return Self::connect_quic(&opts, q).await;
        }
        let client_id = format!("{}-client-{}", opts.device_id, std::process::id());
        let mut mo = MqttOptions::new(client_id, opts.host.clone(), opts.port);
        mo.set_credentials(opts.device_id.clone(), opts.password.clone())
            .set_keep_alive(opts.keep_alive)
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET);
        let (mqtt, mut events) = AsyncClient::new(mo, 64);
        // Requests are small and wait for their reply: Nagle's algorithm would hold each one
        // back for the gateway's delayed ACK (about 40 ms per request).
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        events.set_network_options(net);
        let device = opts.device_id.clone();
        let tree = topics::tree(&device);
        let pending: Pending = Arc::default();
        let telemetry_error: Arc<Mutex<Option<Reply>>> = Arc::default();
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (event_tx, event_rx) = mpsc::channel(COMMAND_QUEUE);
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(), Error>>();

        let want_events = Arc::new(AtomicBool::new(false));
        let (p, c, d, w) = (
            pending.clone(),
            mqtt.clone(),
            device.clone(),
            want_events.clone(),
        );
        let te = telemetry_error.clone();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                match events.poll().await {
                    Ok(rumqttc::Event::Incoming(Packet::ConnAck(_))) => {
                        // Clean sessions start empty: subscribe on every (re)connect.
                        let _ = c.try_subscribe(format!("{tree}res/#"), QoS::AtLeastOnce);
                        let _ = c.try_subscribe(format!("{tree}cmd/#"), QoS::AtLeastOnce);
                        if w.load(Ordering::Acquire) {
                            let _ = c.try_subscribe(format!("{tree}sub/#"), QoS::AtLeastOnce);
                        }
                    }
                    Ok(rumqttc::Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(Ok(()));
                        }
                    }
                    Ok(rumqttc::Event::Incoming(Packet::Publish(p_))) => {
                        let topic = String::from_utf8_lossy(p_.topic.as_bytes()).into_owned();
                        if let Some(r) = topics::parse_reply(&d, &topic) {
                            let reply = Reply {
                                status: r.status,
                                etag: r.etag,
                                offer: r.offer,
                                cache: r.cache,
                                body: p_.payload,
                            };
                            if r.op == "telemetry" && r.rid == "-" {
                                *lock(&te) = Some(reply);
                            } else if let Some(w) = lock(&p).remove(&r.rid) {
                                let _ = w.send(reply);
                            }
                        } else if let Some((method, rid)) = topics::parse_command(&d, &topic) {
                            let cmd = Command {
                                method,
                                rid: rid.clone(),
                                body: p_.payload,
                            };
                            if cmd_tx.try_send(cmd).is_err() {
                                let t = topics::command_reply(&d, &rid, 503);
                                let _ = c.try_publish(t, QoS::AtMostOnce, false, "busy");
                            }
                        } else if let Some((pubsub, topic)) = topics::parse_event(&d, &topic) {
                            // Waits for room: the gateway keeps what is not acknowledged yet.
                            let _ = event_tx
                                .send(Event {
                                    pubsub,
                                    topic,
                                    body: p_.payload,
                                })
                                .await;
                        }
                    }
                    // Everything queued before the DISCONNECT has been written: done.
                    Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(e) => {
                        if let Some(r) = ready.take() {
                            let err = match e {
                                ConnectionError::ConnectionRefused(code) => Error::Refused(code),
                                other => Error::Connection(other.to_string()),
                            };
                            let _ = r.send(Err(err));
                            return;
                        }
                        // rumqttc reconnects on the next poll; don't spin while the gateway is away.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        let client = Client {
            mqtt,
            device,
            pending,
            telemetry_error,
            next_rid: AtomicU64::new(1),
            timeout: opts.request_timeout,
            quic: None,
            task,
            events: Mutex::new(Some(Events(event_rx))),
            want_events,
        };
        match ready_rx.await {
            Ok(Ok(())) => Ok((client, Commands(cmd_rx))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Closed),
        }
    }

    /// Connects over QUIC: the same API, on streams instead of topics.
    async fn connect_quic(
        opts: &Options,
        q: &quic::QuicOptions,
    ) -> Result<(Client, Commands), Error> {
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (event_tx, event_rx) = mpsc::channel(COMMAND_QUEUE);
        let want_events = Arc::new(AtomicBool::new(false));
        let session = quic::Session::connect(
            &opts.host,
            opts.port,
            &opts.device_id,
            &opts.password,
            opts.keep_alive,
            q,
            quic::Inbound {
                commands: cmd_tx,
                events: event_tx,
                want_events: want_events.clone(),
            },
        )
        .await?;
        // An MQTT handle that never connects (its event loop is never polled): the QUIC client
        // keeps the one struct and API.
        let (mqtt, _) = AsyncClient::new(MqttOptions::new("unused", "127.0.0.1", 1), 1);
        let client = Client {
            mqtt,
            quic: Some(session),
            device: opts.device_id.clone(),
            pending: Arc::default(),
            telemetry_error: Arc::default(),
            next_rid: AtomicU64::new(1),
            timeout: opts.request_timeout,
            task: tokio::spawn(async {}),
            events: Mutex::new(Some(Events(event_rx))),
            want_events,
        };
        Ok((client, Commands(cmd_rx)))
    }

    /// QUIC only: moves the connection to a new local UDP port (connection migration, as when a
    /// device's address changes); returns the new local address. The session, its requests and
    /// its commands carry on without a new handshake.
    pub fn rebind(&self) -> Result<std::net::SocketAddr, Error> {
        match &self.quic {
            Some(q) => q.rebind(),
            None => Err(Error::Protocol("rebind is for QUIC connections".into())),
        }
    }

    /// QUIC only: the local UDP address.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.quic.as_ref().and_then(quic::Session::local_addr)
    }

    /// The device id.
    pub fn device_id(&self) -> &str {
        &self.device
    }

    /// Sends a request and waits for its reply (any status; see [`Reply::ok`]).
    pub async fn request(
        &self,
        op: &str,
        params: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Reply, Error> {
        let rid = format!("r{}", self.next_rid.fetch_add(1, Ordering::Relaxed));
        if let Some(q) = &self.quic {
            let sent = q.request(op, params, &rid, body.into());
            return match tokio::time::timeout(self.timeout, sent).await {
                Ok(r) => r,
                Err(_) => Err(Error::Timeout(self.timeout)),
            };
        }
        let topic = topics::request(&self.device, op, &rid, params);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(rid.clone(), tx);
        let sent = self
            .mqtt
            .publish_bytes(topic, QoS::AtLeastOnce, false, body.into())
            .await;
        let result = match sent {
            Err(_) => Err(Error::Closed),
            Ok(()) => match tokio::time::timeout(self.timeout, rx).await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(_)) => Err(Error::Closed),
                Err(_) => Err(Error::Timeout(self.timeout)),
            },
        };
        lock(&self.pending).remove(&rid);
        result
    }

    /// Reads a key of the device: `Some((value, etag))`, or `None` when missing.
    pub async fn state_get(&self, key: &str) -> Result<Option<(Bytes, Option<String>)>, Error> {
        let r = self
            .request("state.get", &[("key", key)], Bytes::new())
            .await?
            .ok()?;
        Ok((r.status != 204).then_some((r.body, r.etag)))
    }

    /// Saves a key of the device (last write wins).
    pub async fn state_set(&self, key: &str, value: &serde_json::Value) -> Result<(), Error> {
        let body = serde_json::json!([{ "key": key, "value": value }]).to_string();
        self.request("state.save", &[], body)
            .await?
            .ok()
            .map(|_| ())
    }

    /// Deletes a key of the device, guarded by `etag` if given.
    pub async fn state_delete(&self, key: &str, etag: Option<&str>) -> Result<(), Error> {
        let mut params = vec![("key", key)];
        if let Some(e) = etag {
            params.push(("etag", e));
        }
        self.request("state.delete", &params, Bytes::new())
            .await?
            .ok()
            .map(|_| ())
    }

    /// Calls `method` of the app `app` with `verb` (e.g. `POST`).
    pub async fn invoke(
        &self,
        app: &str,
        method: &str,
        verb: &str,
        body: impl Into<Bytes>,
    ) -> Result<Reply, Error> {
        let params = [("app", app), ("method", method), ("verb", verb)];
        self.request("invoke", &params, body).await?.ok()
    }

    /// Calls a capability.
    pub async fn capability(
        &self,
        name: &str,
        method: &str,
        body: impl Into<Bytes>,
    ) -> Result<Reply, Error> {
        let mut params = vec![("name", name)];
        if !method.is_empty() {
            params.push(("method", method));
        }
        self.request("capability", &params, body).await?.ok()
    }

    /// Publishes an event to `topic` of `pubsub` (the device is its `source`).
    pub async fn publish(
        &self,
        pubsub: &str,
        topic: &str,
        body: impl Into<Bytes>,
    ) -> Result<(), Error> {
        let params = [("pubsub", pubsub), ("topic", topic)];
        self.request("publish", &params, body)
            .await?
            .ok()
            .map(|_| ())
    }

    /// Subscribes the device to `topic` of `pubsub`: its events arrive on [`Client::events`],
    /// also those published while the device was away. Durable until [`Client::unsubscribe`].
    pub async fn subscribe(&self, pubsub: &str, topic: &str) -> Result<(), Error> {
        let params = [("pubsub", pubsub), ("topic", topic)];
        self.request("subscribe", &params, Bytes::new())
            .await?
            .ok()
            .map(|_| ())
    }

    /// Ends a subscription.
    pub async fn unsubscribe(&self, pubsub: &str, topic: &str) -> Result<(), Error> {
        let params = [("pubsub", pubsub), ("topic", topic)];
        self.request("unsubscribe", &params, Bytes::new())
            .await?
            .ok()
            .map(|_| ())
    }

    /// Reads configuration items of `store` (all of them when `keys` is empty): the JSON the
    /// HTTP API answers, `{"key":{"value":"...","version":"...","metadata":{}}}`.
    pub async fn config_get(&self, store: &str, keys: &[&str]) -> Result<serde_json::Value, Error> {
        let joined = keys.join(",");
        let mut params = vec![("store", store)];
        if !joined.is_empty() {
            params.push(("keys", joined.as_str()));
        }
        let r = self
            .request("config.get", &params, Bytes::new())
            .await?
            .ok()?;
        serde_json::from_slice(&r.body)
            .map_err(|e| Error::Protocol(format!("config.get reply: {e}")))
    }

    /// The events of subscribed topics (once: later calls get `None`). Only from this call on
    /// does the client take deliveries (the gateway keeps them until then); read them steadily:
    /// while 64 wait unread, the client reads nothing else.
    pub fn events(&self) -> Option<Events> {
        let events = lock(&self.events).take()?;
        self.want_events.store(true, Ordering::Release);
        if self.quic.is_some() {
            return Some(events);
        }
        let filter = format!("{}sub/#", topics::tree(&self.device));
        let _ = self.mqtt.try_subscribe(filter, QoS::AtLeastOnce);
        Some(events)
    }

    /// Sends a telemetry reading to `telemetry` (or `telemetry/<stream>`; `/` separates levels)
    /// at QoS 1. Over MQTT it returns once the publish is queued; edgecar acknowledges it once
    /// stored, and answers a refusal (a full queue, an unknown pub/sub) on
    /// `res/telemetry/-/<status>`, which [`Client::telemetry_error`] returns. Over QUIC it returns
    /// once edgecar has stored the reading, or with the refusal as [`Error::Api`].
    pub async fn telemetry(&self, stream: &str, body: impl Into<Bytes>) -> Result<(), Error> {
        if stream.contains(['+', '#']) || stream.starts_with('/') || stream.ends_with('/') {
            return Err(Error::Api {
                status: 400,
                code: "ERR_MALFORMED_REQUEST".into(),
                message: format!("telemetry stream {stream:?} must be topic levels without + or #"),
            });
        }
        if self.quic.is_some() {
            return self
                .request("telemetry", &[("stream", stream)], body)
                .await?
                .ok()
                .map(|_| ());
        }
        let topic = topics::telemetry(&self.device, stream);
        self.mqtt
            .publish_bytes(topic, QoS::AtLeastOnce, false, body.into())
            .await
            .map_err(|_| Error::Closed)
    }

    /// Takes the last telemetry refusal edgecar sent since the previous call, if any.
    pub fn telemetry_error(&self) -> Option<Error> {
        lock(&self.telemetry_error)
            .take()
            .and_then(|r| r.ok().err())
    }

    /// Answers a command.
    pub async fn reply(
        &self,
        cmd: &Command,
        status: u16,
        body: impl Into<Bytes>,
    ) -> Result<(), Error> {
        if let Some(q) = &self.quic {
            return q.answer(&cmd.rid, status, body.into());
        }
        let topic = topics::command_reply(&self.device, &cmd.rid, status);
        self.mqtt
            .publish_bytes(topic, QoS::AtLeastOnce, false, body.into())
            .await
            .map_err(|_| Error::Closed)
    }

    /// Sends what is queued, then DISCONNECT, and waits (up to 5 s) until it is written.
    pub async fn disconnect(mut self) {
        if let Some(q) = &self.quic {
            q.close().await;
            return;
        }
        if self.mqtt.disconnect().await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
        }
    }
}
