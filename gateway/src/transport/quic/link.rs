//! The QUIC side of the device layer: which devices have a QUIC connection now, and the
//! [`DeviceLink`] that reaches them — a live command is a stream the gateway opens and the
//! device answers on; a stored message (mailbox command, subscribed event) is handed to the
//! connection's task, which sends it the same way and confirms its receipt once the device
//! acknowledges it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::frame::{self, Push};
use crate::blocks::devices::{Command, CommandReply, DeviceLink, LinkError};
use crate::devices::link::DeviceMessage;
use crate::devices::{Credential, Registry};
use crate::outbox::Receipt;

/// Stored messages waiting for one connection's task; beyond this, deliveries to it are refused
/// (they stay in the outbox).
pub const PUSH_QUEUE: usize = 16;

/// A stored message for a connection to send, and the receipt its acknowledgement confirms.
pub struct Delivery {
    /// The message, boxed: the push channel allocates a block of slots per connection up
    /// front, so its item is kept to two pointers.
    pub msg: Box<DeviceMessage>,
    /// Confirmed when the device acknowledges it; dropped unconfirmed, the message goes back.
    pub receipt: Arc<Receipt>,
}

/// One open connection, as the table holds it.
struct Session {
    id: u64,
    conn: quinn::Connection,
    credential: Credential,
    /// Stored messages for the connection's task.
    push: mpsc::Sender<Delivery>,
    /// Tells the connection's task to end, with a close code (taken when used).
    kick: Option<oneshot::Sender<(u32, &'static str)>>,
}

/// What a connection gets when it is registered.
pub struct Attached {
    /// Its id in the table.
    pub id: u64,
    /// Stored messages to send.
    pub push: mpsc::Receiver<Delivery>,
    /// Resolves when the connection must end: (close code, reason).
    pub kick: oneshot::Receiver<(u32, &'static str)>,
}

/// Why a connection could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// `quic.maxConnections`.
    Total,
    /// `quic.maxConnectionsPerDevice`.
    Device,
}

/// Limits on a command's answer.
#[derive(Debug, Clone, Copy)]
pub struct AnswerLimits {
    /// Largest answer header.
    pub header: usize,
    /// Largest answer body.
    pub body: usize,
}

/// Every device's QUIC connections.
pub struct QuicLink {
    table: Mutex<HashMap<String, Vec<Session>>>,
    total: AtomicU64,
    next_id: AtomicU64,
    /// Makes command ids unique across restarts.
    rid_prefix: String,
    max_total: usize,
    per_device: usize,
    answers: AnswerLimits,
}

impl QuicLink {
    /// An empty table with these limits.
    pub fn new(max_total: usize, per_device: usize, answers: AnswerLimits) -> Self {
        QuicLink {
            table: Mutex::default(),
            total: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            rid_prefix: format!("q{:x}", crate::clock::unix_ms() % (1 << 40)),
            max_total,
            per_device,
            answers,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Vec<Session>>) -> T) -> T {
        f(&mut self.table.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Open connections in all.
    pub fn connections(&self) -> usize {
        usize::try_from(self.total.load(Ordering::Relaxed)).unwrap_or(usize::MAX)
    }

    /// Whether another connection may start its handshake.
    pub fn has_room(&self) -> bool {
        self.connections() < self.max_total
    }

    /// Registers a device's connection.
    pub fn attach(
        &self,
        credential: &Credential,
        conn: &quinn::Connection,
    ) -> Result<Attached, Full> {
        self.with(|t| {
            if self.connections() >= self.max_total {
                return Err(Full::Total);
            }
            let list = t.entry(credential.id.clone()).or_default();
            if list.len() >= self.per_device {
                return Err(Full::Device);
            }
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let (push_tx, push) = mpsc::channel(PUSH_QUEUE);
            let (kick_tx, kick) = oneshot::channel();
            list.push(Session {
                id,
                conn: conn.clone(),
                credential: credential.clone(),
                push: push_tx,
                kick: Some(kick_tx),
            });
            self.total.fetch_add(1, Ordering::Relaxed);
            Ok(Attached { id, push, kick })
        })
    }

    /// Forgets connection `id` of `device`.
    pub fn detach(&self, device: &str, id: u64) {
        self.with(|t| {
            let Some(list) = t.get_mut(device) else {
                return;
            };
            if let Some(i) = list.iter().position(|s| s.id == id) {
                list.swap_remove(i);
                self.total.fetch_sub(1, Ordering::Relaxed);
            }
            if list.is_empty() {
                t.remove(device);
            }
        });
    }

    /// Ends the connections whose credentials no longer hold (device removed, password
    /// replaced).
    pub fn revalidate(&self, registry: &Registry) {
        self.with(|t| {
            for s in t.values_mut().flatten() {
                if !registry.still_valid(&s.credential)
                    && let Some(k) = s.kick.take()
                {
                    let _ = k.send((
                        frame::close::REVOKED,
                        "the device was removed or its password replaced",
                    ));
                }
            }
        });
    }

    /// The device's newest connection.
    fn newest(&self, device: &str) -> Option<(quinn::Connection, mpsc::Sender<Delivery>)> {
        self.with(|t| {
            t.get(device)
                .and_then(|l| l.iter().max_by_key(|s| s.id))
                .map(|s| (s.conn.clone(), s.push.clone()))
        })
    }
}

/// Sends a command on a new stream of `conn` and reads the device's answer.
pub async fn send_command(
    conn: &quinn::Connection,
    id: String,
    cmd: &Command,
    limits: AnswerLimits,
) -> Result<CommandReply, String> {
    let header = Push::Command {
        id,
        method: cmd.method.clone(),
        verb: cmd.verb.to_string(),
        content_type: cmd.content_type.clone(),
        traceparent: cmd.traceparent.clone(),
    };
    let (reply, body) = exchange(conn, &header, &cmd.body, limits).await?;
    Ok(CommandReply {
        status: reply.status,
        body,
        content_type: reply.content_type,
    })
}

/// Opens a stream, sends `header` and `body`, and reads the device's answer.
pub async fn exchange(
    conn: &quinn::Connection,
    header: &Push,
    body: &[u8],
    limits: AnswerLimits,
) -> Result<(frame::Reply, Bytes), String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(&frame::encode(header))
        .await
        .map_err(|e| e.to_string())?;
    send.write_all(body).await.map_err(|e| e.to_string())?;
    let _ = send.finish();
    let mut prefix = [0u8; frame::PREFIX];
    recv.read_exact(&mut prefix)
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    let len = frame::length(prefix, limits.header).map_err(|e| e.to_string())?;
    let mut json = vec![0u8; len];
    recv.read_exact(&mut json)
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    let reply = frame::reply(&json).map_err(|e| e.to_string())?;
    let body = recv
        .read_to_end(limits.body)
        .await
        .map_err(|e| format!("answer body: {e}"))?;
    Ok((reply, Bytes::from(body)))
}

/// The push header of a stored message.
pub fn push_of(msg: &DeviceMessage) -> (Push, &Bytes) {
    match msg {
        DeviceMessage::Command {
            id,
            method,
            verb,
            content_type,
            traceparent,
            body,
        } => (
            Push::Command {
                id: id.clone(),
                method: method.clone(),
                verb: verb.clone(),
                content_type: content_type.clone(),
                traceparent: traceparent.clone(),
            },
            body,
        ),
        DeviceMessage::Event {
            pubsub,
            topic,
            content_type,
            body,
        } => (
            Push::Event {
                pubsub: pubsub.clone(),
                topic: topic.clone(),
                content_type: content_type.clone(),
            },
            body,
        ),
    }
}

/// How long a live command's stream may take to open when the device does not take streams.
const OPEN_WAIT: Duration = Duration::from_secs(60);

#[async_trait]
impl DeviceLink for QuicLink {
    fn kind(&self) -> &'static str {
        "quic"
    }

    fn connected(&self, device: &str) -> bool {
        self.with(|t| t.get(device).is_some_and(|l| !l.is_empty()))
    }

    async fn command(&self, device: &str, cmd: Command) -> Result<CommandReply, LinkError> {
        let Some((conn, _)) = self.newest(device) else {
            return Err(LinkError::NotConnected(device.to_owned()));
        };
        let rid = format!(
            "{}{:04x}",
            self.rid_prefix,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        // The caller bounds the wait (devices.commandTimeout); this only keeps a stuck stream
        // from outliving a caller that forgot to.
        match tokio::time::timeout(OPEN_WAIT, send_command(&conn, rid, &cmd, self.answers)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) if conn.close_reason().is_some() => {
                tracing::debug!(device, error = %e, "command lost with its connection");
                Err(LinkError::Disconnected(device.to_owned()))
            }
            Ok(Err(e)) => Err(LinkError::Unavailable(format!(
                "device {device:?} did not answer the command: {e}"
            ))),
            Err(_) => Err(LinkError::Disconnected(device.to_owned())),
        }
    }

    fn deliver(&self, device: &str, msg: DeviceMessage, receipt: Arc<Receipt>) -> bool {
        match self.newest(device) {
            Some((_, push)) => push
                .try_send(Delivery {
                    msg: Box::new(msg),
                    receipt,
                })
                .is_ok(),
            None => false,
        }
    }
}
