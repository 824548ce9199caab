//! The hub: every open device connection, so that messages find them.
//!
//! It owns the connection table (per device, per client id), the connection limits, session
//! takeover, parked persistent sessions (subscriptions kept for `mqtt.sessionExpiry`), each
//! device's rate-limit budget (shared with QUIC: [`Budgets`]), routing a message to the connections of *one* device whose
//! subscriptions match (there is no routing between devices at all), and commands in flight from
//! apps to devices, keyed by device and request id so that no device can answer another's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::debug;

use super::codec::{ConnectCode, DisconnectCode, Message};
use super::protocol;
use super::topics;
use crate::blocks::devices::{Command, CommandReply, DeviceLink, LinkError};
use crate::devices::budget::Budgets;
use crate::devices::link::DeviceMessage;
use crate::devices::link::Links;
use crate::devices::{Credential, Registry};
use crate::outbox::{Outbox, Receipt};

/// Messages waiting for one connection; beyond this, deliveries to it are dropped (it is not
/// reading, and edgecar will not hold memory for it).
pub const INBOX: usize = 64;
/// Parked persistent sessions kept per device.
const MAX_PARKED: usize = 8;

/// Limits the hub enforces.
#[derive(Debug, Clone)]
pub struct HubLimits {
    /// Connections in total.
    pub max_connections: usize,
    /// Connections per device.
    pub per_device: usize,
    /// Longest time a persistent session is kept after disconnecting.
    pub session_expiry: Duration,
    /// Rate limit: packets per second.
    pub rate: u32,
    /// Rate limit: burst.
    pub burst: u32,
}

/// A message for one connection, with the outbox receipt to confirm once the device has it.
pub struct Delivery {
    /// The message.
    pub msg: Message,
    /// Confirmed when the device acknowledges the message; dropping it unconfirmed puts an
    /// outbox message back.
    pub receipt: Option<Arc<Receipt>>,
}

/// One open connection, as the hub sees it.
struct Conn {
    id: u64,
    client_id: String,
    credential: Credential,
    /// Deliveries to the connection, boxed: a tokio channel allocates a block of 32 slots up
    /// front, and 32 pointers cost a connection 256 bytes where 32 deliveries would cost 6 KB.
    inbox: mpsc::Sender<Box<Delivery>>,
    /// Tells the connection to end, and why (taken when used).
    kick: Option<oneshot::Sender<DisconnectCode>>,
    /// Its subscriptions (kept in step by the connection).
    subs: Vec<(String, u8)>,
}

impl Conn {
    /// Tells the connection to end (once; later calls change nothing).
    fn kick(&mut self, code: DisconnectCode) {
        if let Some(tx) = self.kick.take() {
            let _ = tx.send(code);
        }
    }
}

/// A persistent session whose device is away.
struct Parked {
    client_id: String,
    subs: Vec<(String, u8)>,
    expires: Instant,
}

#[derive(Default)]
struct DeviceConns {
    conns: Vec<Conn>,
    parked: Vec<Parked>,
}

#[derive(Default)]
struct Table {
    total: usize,
    devices: HashMap<String, DeviceConns>,
}

/// What a connection gets from [`Hub::attach`].
pub struct Attached {
    /// Its id in the hub.
    pub id: u64,
    /// Deliveries for it.
    pub inbox: mpsc::Receiver<Box<Delivery>>,
    /// Resolves when it must end, with why (an error if the hub forgot it: shutting down).
    pub kick: oneshot::Receiver<DisconnectCode>,
    /// The subscriptions of the resumed session, if one was resumed.
    pub restored: Option<Vec<(String, u8)>>,
}

/// The hub.
pub struct Hub {
    table: Mutex<Table>,
    limits: HubLimits,
    next_id: AtomicU64,
    /// Commands awaiting a reply: (device, request id) → the waiting call.
    pending: Mutex<HashMap<(String, String), oneshot::Sender<CommandReply>>>,
    /// Makes command ids unique across restarts (a device may still hold an old one).
    rid_prefix: String,
    /// What waits for devices, delivered while they are connected.
    outbox: OnceLock<Arc<Outbox>>,
    /// Each device's rate-limit bucket, shared with the other transports (one budget per
    /// device, whatever carries its messages).
    budgets: Arc<Budgets>,
    /// The device layer's links, told when a device attaches here.
    links: OnceLock<Arc<Links>>,
}

impl Hub {
    /// An empty hub.
    pub fn new(limits: HubLimits) -> Self {
        let start = crate::clock::unix_ms();
        let budgets = Arc::new(Budgets::new(limits.rate, limits.burst));
        Hub {
            table: Mutex::default(),
            limits,
            next_id: AtomicU64::new(1),
            pending: Mutex::default(),
            rid_prefix: format!("{:x}", start % (1 << 40)),
            outbox: OnceLock::new(),
            budgets,
            links: OnceLock::new(),
        }
    }

    /// The per-device rate-limit budgets, for the other transports to share.
    pub fn budgets(&self) -> Arc<Budgets> {
        self.budgets.clone()
    }

    /// Joins the device layer: the hub is one of `links` (devices attach to it as they
    /// connect), and wakes the device outboxes it delivers.
    pub fn join(self: &Arc<Self>, outbox: Arc<Outbox>, links: &Arc<Links>) {
        links.add(self.clone());
        let _ = self.links.set(links.clone());
        let _ = self.outbox.set(outbox);
    }

    /// Wakes the outbox delivery of `device` (a connection came or went, or subscribed).
    fn kick_outbox(&self, device: &str) {
        if let Some(o) = self.outbox.get() {
            o.kick(device);
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Table) -> T) -> T {
        match self.table.lock() {
            Ok(mut t) => f(&mut t),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    /// A unique id for a client that sent none.
    pub fn assign_client_id(&self, device: &str) -> String {
        format!(
            "{device}-auto-{}",
            self.next_id.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Registers a connection of `device` with `client_id`. An existing connection with the same
    /// client id is taken over (told to end); a parked session is resumed unless `clean_start`.
    pub fn attach(
        &self,
        credential: &Credential,
        client_id: &str,
        clean_start: bool,
        now: Instant,
    ) -> Result<Attached, ConnectCode> {
        let device = credential.id.clone();
        let attached = self.with(|t| {
            let d = t.devices.entry(device.clone()).or_default();
            d.parked.retain(|p| p.expires > now);
            let mut restored = None;
            let mut freed = 0;
            if let Some(i) = d.conns.iter().position(|c| c.client_id == client_id) {
                let mut old = d.conns.swap_remove(i);
                old.kick(DisconnectCode::SessionTakenOver);
                restored = Some(old.subs);
                freed = 1;
            }
            t.total -= freed;
            if t.total >= self.limits.max_connections {
                return Err(ConnectCode::ServerBusy);
            }
            if d.conns.len() >= self.limits.per_device {
                return Err(ConnectCode::QuotaExceeded);
            }
            if let Some(i) = d.parked.iter().position(|p| p.client_id == client_id) {
                let p = d.parked.swap_remove(i);
                restored = restored.or(Some(p.subs));
            }
            if clean_start {
                restored = None;
            }
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, inbox) = mpsc::channel(INBOX);
            let (kick_tx, kick) = oneshot::channel();
            if d.conns.capacity() == 0 {
                // Most devices hold one connection: no room for four.
                d.conns.reserve_exact(1);
            }
            d.conns.push(Conn {
                id,
                client_id: client_id.to_owned(),
                credential: credential.clone(),
                inbox: tx,
                kick: Some(kick_tx),
                subs: restored.clone().unwrap_or_default(),
            });
            t.total += 1;
            Ok(Attached {
                id,
                inbox,
                kick,
                restored,
            })
        });
        if attached.is_ok() {
            if let Some(links) = self.links.get() {
                links.attached(&device, "mqtt");
            }
            self.kick_outbox(&device);
        }
        attached
    }

    /// Removes connection `id` of `device`; with `keep` (a session expiry), parks its
    /// subscriptions for a later connection with the same client id.
    pub fn detach(
        &self,
        device: &str,
        id: u64,
        keep: Option<Duration>,
        subs: Vec<(String, u8)>,
        now: Instant,
    ) {
        self.with(|t| {
            let Some(d) = t.devices.get_mut(device) else {
                return;
            };
            let Some(i) = d.conns.iter().position(|c| c.id == id) else {
                return; // already taken over
            };
            let conn = d.conns.swap_remove(i);
            t.total -= 1;
            if let Some(expiry) = keep.map(|k| k.min(self.limits.session_expiry))
                && !expiry.is_zero()
            {
                if d.parked.len() >= MAX_PARKED {
                    d.parked.sort_by_key(|p| p.expires);
                    d.parked.remove(0);
                }
                d.parked.push(Parked {
                    client_id: conn.client_id,
                    subs,
                    expires: now + expiry,
                });
            }
            if d.conns.is_empty() && d.parked.is_empty() {
                t.devices.remove(device);
            }
        });
        self.kick_outbox(device);
    }

    /// Keeps the hub's copy of a connection's subscriptions in step.
    pub fn set_subscriptions(&self, device: &str, id: u64, subs: &[(String, u8)]) {
        self.with(|t| {
            if let Some(c) = t
                .devices
                .get_mut(device)
                .and_then(|d| d.conns.iter_mut().find(|c| c.id == id))
            {
                c.subs = subs.to_vec();
            }
        });
        self.kick_outbox(device);
    }

    /// Takes a rate-limit token for `device`, or says when the next is due.
    pub fn take_token(&self, device: &str, now: Instant) -> Result<(), Instant> {
        self.budgets.take(device, now)
    }

    /// Delivers `msg` to every connection of `device` (except `skip`) with a matching
    /// subscription; returns how many took it.
    pub fn route(&self, device: &str, msg: &Message, skip: Option<u64>) -> usize {
        self.route_with(device, msg, None, skip)
    }

    fn route_with(
        &self,
        device: &str,
        msg: &Message,
        receipt: Option<&Arc<Receipt>>,
        skip: Option<u64>,
    ) -> usize {
        self.with(|t| {
            let Some(d) = t.devices.get(device) else {
                return 0;
            };
            d.conns
                .iter()
                .filter(|c| Some(c.id) != skip)
                .filter(|c| c.subs.iter().any(|(f, _)| topics::matches(f, &msg.topic)))
                .filter(|c| {
                    let d = Box::new(Delivery {
                        msg: msg.clone(),
                        receipt: receipt.cloned(),
                    });
                    let taken = c.inbox.try_send(d).is_ok();
                    if !taken {
                        debug!(device, client = %c.client_id, topic = %msg.topic, "delivery dropped: the connection is not reading");
                    }
                    taken
                })
                .count()
        })
    }

    /// Ends the connections whose credentials no longer hold (device removed or password
    /// replaced), and forgets the parked sessions of removed devices.
    pub fn revalidate(&self, registry: &Registry) {
        self.with(|t| {
            t.devices.retain(|id, d| {
                for c in &mut d.conns {
                    if !registry.still_valid(&c.credential) {
                        c.kick(DisconnectCode::AdministrativeAction);
                    }
                }
                if !registry.contains(id) {
                    d.parked.clear();
                }
                !d.conns.is_empty() || !d.parked.is_empty()
            });
        });
    }

    /// Tells every connection to end (shutdown).
    pub fn kick_all(&self, code: DisconnectCode) {
        self.with(|t| {
            for d in t.devices.values_mut() {
                for c in &mut d.conns {
                    c.kick(code);
                }
            }
        });
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.with(|t| t.total)
    }

    /// Hands a device's command reply to the app call waiting for it. `false` if none waits
    /// (it timed out, or the id is not one of this device's commands).
    pub fn complete(&self, device: &str, rid: &str, reply: CommandReply) -> bool {
        let waiter = match self.pending.lock() {
            Ok(mut p) => p.remove(&(device.to_owned(), rid.to_owned())),
            Err(p) => p.into_inner().remove(&(device.to_owned(), rid.to_owned())),
        };
        waiter.is_some_and(|w| w.send(reply).is_ok())
    }

    fn forget(&self, key: &(String, String)) {
        match self.pending.lock() {
            Ok(mut p) => p.remove(key),
            Err(p) => p.into_inner().remove(key),
        };
    }
}

/// Removes a command's pending entry however its wait ends (reply, timeout, cancelled call).
struct PendingGuard<'a> {
    hub: &'a Hub,
    key: (String, String),
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.hub.forget(&self.key);
    }
}

#[async_trait]
impl DeviceLink for Hub {
    fn kind(&self) -> &'static str {
        "mqtt"
    }

    fn connected(&self, device: &str) -> bool {
        self.with(|t| t.devices.get(device).is_some_and(|d| !d.conns.is_empty()))
    }

    fn deliver(&self, device: &str, msg: DeviceMessage, receipt: Arc<Receipt>) -> bool {
        match protocol::device_message(device, msg) {
            Ok(m) => self.route_with(device, &m, Some(&receipt), None) > 0,
            Err(e) => {
                // Cannot be expressed as MQTT: confirmed, so that it does not block the rest.
                tracing::warn!(device = %device, error = %e, "a stored message cannot be delivered over MQTT; dropped");
                receipt.confirm();
                true
            }
        }
    }

    async fn command(&self, device: &str, cmd: Command) -> Result<CommandReply, LinkError> {
        let rid = format!(
            "{}{:04x}",
            self.rid_prefix,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let msg = protocol::command_message(device, &rid, &cmd).map_err(LinkError::Invalid)?;
        let connected = self.with(|t| t.devices.get(device).is_some_and(|d| !d.conns.is_empty()));
        if !connected {
            return Err(LinkError::NotConnected(device.to_owned()));
        }
        let key = (device.to_owned(), rid);
        let (tx, rx) = oneshot::channel();
        match self.pending.lock() {
            Ok(mut p) => p.insert(key.clone(), tx),
            Err(p) => p.into_inner().insert(key.clone(), tx),
        };
        let _guard = PendingGuard { hub: self, key };
        if self.route(device, &msg, None) == 0 {
            return Err(LinkError::NotListening {
                device: device.to_owned(),
                topic: protocol::command_filter(device),
            });
        }
        rx.await
            .map_err(|_| LinkError::Disconnected(device.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use bytes::Bytes;

    use super::*;
    use crate::devices::password::PasswordHash;

    fn limits() -> HubLimits {
        HubLimits {
            max_connections: 3,
            per_device: 2,
            session_expiry: Duration::from_secs(60),
            rate: 10,
            burst: 2,
        }
    }

    async fn registry(dir: &std::path::Path) -> (Registry, Credential, Credential) {
        let path = dir.join("devices.yaml");
        for id in ["a", "b"] {
            let h = PasswordHash::with_iterations("pw", 10).unwrap();
            crate::devices::file::add(&path, id, &h, false, 0).unwrap();
        }
        let reg = Registry::open(path, BTreeSet::new()).unwrap();
        let a = reg.authenticate("a", b"pw").await.unwrap();
        let b = reg.authenticate("b", b"pw").await.unwrap();
        (reg, a, b)
    }

    #[tokio::test(start_paused = true)]
    async fn routing_never_crosses_devices() {
        let dir = tempfile::tempdir().unwrap();
        let (_reg, a, b) = registry(dir.path()).await;
        let hub = Hub::new(limits());
        let now = Instant::now();
        let mut ca = hub.attach(&a, "x", true, now).unwrap();
        let mut cb = hub.attach(&b, "x", true, now).unwrap();
        hub.set_subscriptions("a", ca.id, &[("edgecar/v1/a/#".into(), 1)]);
        hub.set_subscriptions("b", cb.id, &[("edgecar/v1/b/#".into(), 1)]);
        let m = Message::new("edgecar/v1/a/res/x/1/200".into(), Bytes::new());
        assert_eq!(hub.route("a", &m, None), 1);
        assert!(ca.inbox.try_recv().is_ok());
        assert!(cb.inbox.try_recv().is_err());
        // Even a topic naming b's tree, routed for a, reaches only a's matching connections.
        let m = Message::new("edgecar/v1/b/res/x/1/200".into(), Bytes::new());
        assert_eq!(hub.route("a", &m, None), 0);
        assert!(cb.inbox.try_recv().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn limits_takeover_and_persistent_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let (reg, a, b) = registry(dir.path()).await;
        let hub = Hub::new(limits());
        let now = Instant::now();
        let mut c1 = hub.attach(&a, "one", false, now).unwrap();
        let _c2 = hub.attach(&a, "two", true, now).unwrap();
        assert_eq!(
            hub.attach(&a, "three", true, now).err(),
            Some(ConnectCode::QuotaExceeded)
        );
        let _c3 = hub.attach(&b, "one", true, now).unwrap();
        assert_eq!(
            hub.attach(&b, "two", true, now).err(),
            Some(ConnectCode::ServerBusy)
        );
        // Same client id: the old connection is told to go, the new one takes its place.
        let subs = vec![("edgecar/v1/a/cmd/#".to_string(), 1u8)];
        hub.set_subscriptions("a", c1.id, &subs);
        let c1b = hub.attach(&a, "one", false, now).unwrap();
        assert_eq!(
            c1.kick.try_recv().ok(),
            Some(DisconnectCode::SessionTakenOver)
        );
        assert_eq!(c1b.restored.as_deref(), Some(&subs[..]));
        hub.detach("a", c1.id, None, Vec::new(), now); // the old one leaving changes nothing
        assert_eq!(hub.connections(), 3);
        // Parked, resumed within the expiry, gone after it.
        hub.detach(
            "a",
            c1b.id,
            Some(Duration::from_secs(30)),
            subs.clone(),
            now,
        );
        let again = hub.attach(&a, "one", false, now).unwrap();
        assert_eq!(again.restored.as_deref(), Some(&subs[..]));
        hub.detach(
            "a",
            again.id,
            Some(Duration::from_secs(30)),
            subs.clone(),
            now,
        );
        tokio::time::advance(Duration::from_secs(31)).await;
        let mut late = hub.attach(&a, "one", false, Instant::now()).unwrap();
        assert_eq!(late.restored, None);
        // Removing a device ends its connections.
        crate::devices::file::remove(reg.path(), "a").unwrap();
        reg.reload().unwrap();
        hub.revalidate(&reg);
        assert_eq!(
            late.kick.try_recv().ok(),
            Some(DisconnectCode::AdministrativeAction)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn commands_are_answered_only_by_their_device() {
        let dir = tempfile::tempdir().unwrap();
        let (_reg, a, b) = registry(dir.path()).await;
        let hub = std::sync::Arc::new(Hub::new(limits()));
        let cmd = Command {
            method: "/ping".into(),
            verb: http::Method::POST,
            content_type: None,
            traceparent: None,
            body: Bytes::new(),
            mailbox_ttl: None,
        };
        assert!(matches!(
            hub.command("a", cmd.clone()).await,
            Err(LinkError::NotConnected(_))
        ));
        let now = Instant::now();
        let mut ca = hub.attach(&a, "x", true, now).unwrap();
        let _cb = hub.attach(&b, "x", true, now).unwrap();
        assert!(matches!(
            hub.command("a", cmd.clone()).await,
            Err(LinkError::NotListening { .. })
        ));
        hub.set_subscriptions("a", ca.id, &[("edgecar/v1/a/cmd/#".into(), 1)]);
        let h = hub.clone();
        let call = tokio::spawn(async move { h.command("a", cmd).await });
        let sent = ca.inbox.recv().await.unwrap().msg;
        let rid = sent.topic.rsplit('/').next().unwrap().to_owned();
        let reply = CommandReply {
            status: 200,
            body: Bytes::from_static(b"pong"),
            content_type: None,
        };
        assert!(
            !hub.complete("b", &rid, reply.clone()),
            "b cannot answer a's command"
        );
        assert!(hub.complete("a", &rid, reply.clone()));
        assert_eq!(call.await.unwrap().unwrap(), reply);
        assert!(!hub.complete("a", &rid, reply), "answered once");
    }
}
