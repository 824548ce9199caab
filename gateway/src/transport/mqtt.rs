//! The MQTT device endpoint: MQTT 3.1.1 and 5 over TCP, for devices only.
//!
//! Not a broker. Every connection authenticates as a registered device and lives inside that
//! device's topic tree; publishes there are requests on the one request path, replies and
//! commands come back the same way. This file owns the listener and the I/O of each connection:
//! it reads packets ([`codec`]), feeds them to the pure [`session`] state machine, performs its
//! actions, runs requests through the [`Runtime`] (decoded and encoded by [`protocol`]), and
//! delivers what the [`hub`] routes to it. Telemetry readings go to the telemetry block without a
//! task each (see [`crate::blocks::telemetry`]); other requests run as tasks of the connection.
//!
//! A connection is two tasks in turn, both owned by [`serve`], which ends them all on shutdown:
//! the handshake (CONNECT, authentication) and then the session. Two tasks, not one, because a
//! task is as large as the largest state its future can be in: the session's task, the one that
//! lives as long as the device stays connected, then does not carry the handshake's state (with
//! ten thousand devices connected, 7 MB — docs/benchmarks.md).

pub mod codec;
pub mod hub;
pub mod protocol;
pub mod session;
pub mod topics;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::blocks::telemetry::Receipt;
use crate::clock::unix_ms;
use crate::config::MqttConfig;
use crate::devices::Layer;
use crate::runtime::Runtime;
use crate::transport::listener::{self, Admission, Protocol, Stop};
use crate::transport::tls;
use codec::{
    ConnectCode, DecodeError, DisconnectCode, Incoming, Message, Outgoing, PubAckCode, Version,
};
use hub::{Hub, HubLimits};
use protocol::{Inbound, ReplyTo};
use session::{Action, Close, Limits, Session};

/// How long a write to a device may stall before the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Presence "last seen" is updated at most this often per connection.
const PRESENCE_EVERY: Duration = Duration::from_secs(1);
/// The CONNECT window a new connection gets while more than half of the handshake slots are
/// taken (if `mqtt.connectTimeout` is longer): under a flood, idle sockets are let go sooner.
const PRESSED_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection's read buffer to start with: a CONNECT or a small publish fits. It grows for
/// larger packets (up to `mqtt.maxPacketSize`).
const READ_BUF: usize = 256;
/// Read and write buffers that grew beyond this are given back once empty, so that an idle
/// device costs its buffers' small size, not the largest burst it ever sent (see
/// docs/benchmarks.md for the memory per connection).
const KEEP_BUF: usize = 1024;

/// Everything connections share.
pub struct Endpoint {
    /// The request path.
    pub runtime: Arc<Runtime>,
    /// Open connections and routing.
    pub hub: Arc<Hub>,
    /// The device layer: credentials and presence (the hub holds its links and outboxes).
    pub devices: Layer,
    /// Session limits.
    pub limits: Limits,
    /// How long a new connection may take to send CONNECT (and finish its TLS handshake).
    pub connect_timeout: Duration,
    /// Bounds on connections that have not finished their CONNECT.
    pub handshakes: Arc<Handshakes>,
    /// TLS, when configured.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Endpoint {
    /// The hub's limits from the `mqtt` config section.
    pub fn hub_limits(cfg: &MqttConfig) -> HubLimits {
        HubLimits {
            max_connections: cfg.max_connections,
            per_device: cfg.max_connections_per_device,
            session_expiry: cfg.session_expiry.0,
            rate: cfg.rate_limit.messages_per_second,
            burst: cfg.rate_limit.burst,
        }
    }

    /// Session limits from the `mqtt` config section.
    pub fn session_limits(cfg: &MqttConfig) -> Limits {
        Limits {
            max_packet_size: usize::try_from(cfg.max_packet_size.0).unwrap_or(usize::MAX),
            max_keep_alive: cfg.max_keep_alive.0,
            max_inflight: cfg.max_inflight,
        }
    }
}

/// Connections before their CONNECT: bounded in total and per source address, because anyone
/// who can reach the port can open them, and each holds a socket (and, once its CONNECT is in, a
/// place in the queue for password checks). Limits on connections count authenticated devices,
/// so a flood of idle sockets cannot keep registered devices out.
#[derive(Debug)]
pub struct Handshakes {
    /// Slots in total.
    total: Arc<tokio::sync::Semaphore>,
    /// How many `total` started with.
    max: usize,
    /// Slots taken per source address.
    per_address: std::sync::Mutex<HashMap<std::net::IpAddr, usize>>,
    /// Most slots one address may take.
    max_per_address: usize,
}

/// One connection's handshake slot, given back when dropped. Its address's share is given back
/// as soon as the CONNECT is read ([`HandshakeSlot::spoke`]): the per-address bound is about
/// idle sockets, so a burst of real devices behind one address is not held to it while their
/// passwords are checked.
pub struct HandshakeSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    from: Arc<Handshakes>,
    addr: Option<std::net::IpAddr>,
}

impl Handshakes {
    /// At most `max` connections before CONNECT, `max_per_address` of them from one address.
    pub fn new(max: usize, max_per_address: usize) -> Arc<Self> {
        Arc::new(Handshakes {
            total: Arc::new(tokio::sync::Semaphore::new(max)),
            max,
            per_address: std::sync::Mutex::new(HashMap::new()),
            max_per_address,
        })
    }

    /// A slot for a connection from `addr`, or `None` if the address or everyone is at the
    /// bound.
    pub fn try_take(self: &Arc<Self>, addr: std::net::IpAddr) -> Option<HandshakeSlot> {
        let mut per = self
            .per_address
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = per.entry(addr).or_insert(0);
        if *n >= self.max_per_address {
            return None;
        }
        let permit = self.total.clone().try_acquire_owned().ok()?;
        *n += 1;
        Some(HandshakeSlot {
            _permit: permit,
            from: self.clone(),
            addr: Some(addr),
        })
    }

    /// Whether more than half the slots are taken.
    fn pressed(&self) -> bool {
        self.total.available_permits() < self.max / 2
    }
}

impl HandshakeSlot {
    /// The connection sent its CONNECT: it no longer counts against its address.
    fn spoke(&mut self) {
        self.release_address();
    }

    fn release_address(&mut self) {
        let Some(addr) = self.addr.take() else {
            return;
        };
        let mut per = self
            .from
            .per_address
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = per.get_mut(&addr) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per.remove(&addr);
            }
        }
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.release_address();
    }
}

/// Serves devices on `listener` until `stop` turns true; then tells every connection to end
/// (MQTT 5 clients hear "server shutting down"), waits up to `drain` and aborts the rest.
pub async fn serve(listener: TcpListener, ep: Arc<Endpoint>, stop: Stop, drain: Duration) {
    let mut background = JoinSet::new();
    {
        // Removed devices and replaced passwords end the sessions that used them.
        let (hub, registry) = (ep.hub.clone(), ep.devices.registry.clone());
        let mut changes = registry.changes();
        background.spawn(async move {
            while changes.changed().await.is_ok() {
                hub.revalidate(&registry);
            }
        });
    }
    listener::serve(listener, ep, stop, drain).await;
    background.abort_all();
}

impl Protocol for Endpoint {
    type Conn = tokio::net::TcpStream;
    type Permit = HandshakeSlot;

    fn name(&self) -> &'static str {
        "mqtt"
    }

    fn admit(&self, stream: Self::Conn, peer: SocketAddr) -> Admission<Self::Conn, HandshakeSlot> {
        match self.handshakes.try_take(peer.ip()) {
            Some(slot) => Admission::Accept(stream, slot),
            None => {
                // Closed at once: holding it would let a flood grow.
                debug!(%peer, "too many connections still before their CONNECT (from this address or in all); closed");
                Admission::Refuse(None)
            }
        }
    }

    async fn handshake(
        self: Arc<Self>,
        stream: Self::Conn,
        peer: SocketAddr,
        permit: HandshakeSlot,
        _stop: Stop,
    ) -> Option<listener::Session> {
        // Under pressure, idle sockets get a shorter window.
        let window = if self.handshakes.pressed() {
            self.connect_timeout.min(PRESSED_CONNECT_TIMEOUT)
        } else {
            self.connect_timeout
        };
        let _ = stream.set_nodelay(true);
        let Some(tls) = self.tls.clone() else {
            let accepted =
                handshake(stream, peer, self, permit, window, tls::ClientCert::None).await?;
            return Some(Box::pin(session(accepted)));
        };
        // Boxed: a TLS handshake holds rustls's connection and the CONNECT read over it inline,
        // and unboxed it would size every plain connection's handshake task too.
        Box::pin(tls_handshake(self, tls, stream, peer, permit, window)).await
    }

    /// Every session is told to end (MQTT 5 clients hear why).
    fn stopping(&self) {
        self.hub.kick_all(DisconnectCode::ServerShuttingDown);
    }
}

/// The TLS handshake, then the MQTT one over it.
async fn tls_handshake(
    ep: Arc<Endpoint>,
    tls: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    permit: HandshakeSlot,
    window: Duration,
) -> Option<listener::Session> {
    match tokio::time::timeout(window, tls.accept(stream)).await {
        Ok(Ok(s)) => {
            let cert = tls::client_identity(s.get_ref().1);
            let accepted = handshake(s, peer, ep, permit, window, cert).await?;
            return Some(Box::pin(session(accepted)));
        }
        Ok(Err(e)) => match tls::certificate_refusal(&e) {
            Some(why) => {
                warn!(%peer, reason = %why, "device certificate refused in the TLS handshake");
            }
            None => debug!(%peer, error = %e, "TLS handshake failed"),
        },
        Err(_) => debug!(%peer, "TLS handshake timed out"),
    }
    None
}

/// A device's byte stream: TCP, or TLS over TCP.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for S {}

/// Writes buffered packets, giving up on a device that does not read.
async fn flush<S: Stream>(wr: &mut WriteHalf<S>, out: &mut BytesMut) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    // Nearly always the socket takes everything at once: one write attempt, no timer. Only
    // what is left (the device reads slowly) waits, under the write timeout; that future is
    // boxed so that it does not size every connection's task.
    let r = match wr.write(out).now_or_never() {
        Some(Ok(n)) if n == out.len() => Ok(()),
        Some(Err(e)) => Err(e),
        Some(Ok(n)) => finish_write(wr, &out[n..]).await,
        None => finish_write(wr, out).await,
    };
    if out.capacity() > KEEP_BUF {
        *out = BytesMut::new();
    } else {
        out.clear();
    }
    r
}

/// The rest of a write the socket did not take at once, within [`WRITE_TIMEOUT`].
async fn finish_write<S: Stream>(wr: &mut WriteHalf<S>, rest: &[u8]) -> std::io::Result<()> {
    match Box::pin(tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(rest))).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the device stopped reading",
        )),
    }
}

fn encode(p: Outgoing, v: Version, out: &mut BytesMut) {
    if let Err(e) = codec::encode(p, v, out) {
        warn!(error = %e, "could not encode an MQTT packet");
    }
}

/// Reads until the first packet (the CONNECT) is whole.
async fn read_connect<S: Stream>(
    stream: &mut S,
    buf: &mut BytesMut,
    max: usize,
) -> Result<(Incoming, Version), DecodeError> {
    loop {
        if let Some(p) = codec::decode(buf, None, max)? {
            return Ok(p);
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(DecodeError::Malformed("connection closed".into())),
            Ok(_) => {}
        }
    }
}

/// Answers a CONNECT with a refusal and closes.
async fn refuse<S: Stream>(mut stream: S, v: Version, code: ConnectCode, reason: String) {
    let mut out = BytesMut::new();
    encode(
        Outgoing::ConnAck {
            session_present: false,
            code,
            granted: None,
            reason: Some(reason),
        },
        v,
        &mut out,
    );
    let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&out)).await;
    let _ = stream.shutdown().await;
}

/// Who the CONNECT (and the TLS client certificate, if any) proves the device is.
async fn authenticate(
    ep: &Endpoint,
    connect: &codec::Connect,
    cert: &tls::ClientCert,
    peer: SocketAddr,
) -> Result<crate::devices::Credential, session::Refusal> {
    let named = match cert {
        tls::ClientCert::None => None,
        tls::ClientCert::Device(id) => Some(id.as_str()),
        tls::ClientCert::Unusable(why) => {
            warn!(%peer, reason = %why, "device certificate names no device");
            return Err((ConnectCode::NotAuthorized, why.clone()));
        }
    };
    let login = session::precheck(connect, named).inspect_err(|(code, _)| {
        debug!(%peer, ?code, certificate = ?named, "CONNECT refused");
    })?;
    match login {
        session::Login::Password { id, password } => ep
            .devices
            .registry
            .authenticate(&id, password.as_bytes())
            .await
            .ok_or_else(|| {
                warn!(%peer, username = %id, "device authentication failed");
                let reason = "unknown device or wrong password".to_owned();
                (ConnectCode::NotAuthorized, reason)
            }),
        session::Login::Certificate { id } => {
            debug!(%peer, certificate = %id, "device presents a verified certificate");
            ep.devices.registry.authenticate_certificate(&id).ok_or_else(|| {
                warn!(%peer, certificate = %id, "device certificate valid, but no such device in the registry");
                let reason = format!("the certificate names device {id:?}, which is not registered");
                (ConnectCode::NotAuthorized, reason)
            })
        }
    }
}

/// A device that sent a valid CONNECT and proved who it is, ready for its session.
struct Accepted<S> {
    stream: S,
    peer: SocketAddr,
    ep: Arc<Endpoint>,
    /// Bytes read after the CONNECT.
    buf: BytesMut,
    connect: Box<codec::Connect>,
    version: Version,
    credential: crate::devices::Credential,
    will: Option<Box<Message>>,
}

/// A new connection up to its authenticated CONNECT (refusing it otherwise). `cert` is what its
/// verified TLS client certificate says (if any): it proves the device instead of a password.
async fn handshake<S: Stream>(
    mut stream: S,
    peer: SocketAddr,
    ep: Arc<Endpoint>,
    mut permit: HandshakeSlot,
    window: Duration,
    cert: tls::ClientCert,
) -> Option<Box<Accepted<S>>> {
    let max = ep.limits.max_packet_size;
    let mut buf = BytesMut::with_capacity(READ_BUF);
    let first = tokio::time::timeout(window, read_connect(&mut stream, &mut buf, max));
    let (connect, version) = match first.await {
        Ok(Ok((Incoming::Connect(c), v))) => {
            permit.spoke();
            (c, v)
        }
        Ok(Err(DecodeError::UnsupportedVersion(level))) => {
            debug!(%peer, level, "MQTT protocol level not supported");
            // A 3.1.1-format CONNACK is what MQTT 3.1 clients understand too.
            let reason = format!("protocol level {level}; use MQTT 3.1.1 or 5");
            refuse(
                stream,
                Version::V311,
                ConnectCode::UnsupportedVersion,
                reason,
            )
            .await;
            return None;
        }
        Ok(Ok(_)) | Ok(Err(_)) | Err(_) => {
            debug!(%peer, "no valid CONNECT; closing");
            return None;
        }
    };
    let credential = match authenticate(&ep, &connect, &cert, peer).await {
        Ok(c) => c,
        Err((code, reason)) => {
            refuse(stream, version, code, reason).await;
            return None;
        }
    };
    let will = match session::check_will(&connect, &credential.id) {
        Ok(w) => w,
        Err((code, reason)) => {
            refuse(stream, version, code, reason).await;
            return None;
        }
    };
    drop(permit);
    Some(Box::new(Accepted {
        stream,
        peer,
        ep,
        buf,
        connect,
        version,
        credential,
        will,
    }))
}

/// A session ready to run: its state, its stream and what the hub gave it.
struct Started<S> {
    conn: Conn,
    stream: S,
    buf: BytesMut,
    inbox: tokio::sync::mpsc::Receiver<Box<hub::Delivery>>,
    kick: tokio::sync::oneshot::Receiver<DisconnectCode>,
    /// How long the session outlives the connection.
    keep: Option<Duration>,
}

/// A connection refused after its handshake: (stream, protocol, code, reason).
type Refused<S> = (S, Version, ConnectCode, String);

/// Everything from an authenticated CONNECT to the CONNACK, without awaiting anything: the
/// handshake's leftovers end here instead of sizing the session's task.
fn prepare<S>(accepted: Accepted<S>) -> Result<Started<S>, Refused<S>> {
    let Accepted {
        stream,
        peer,
        ep,
        buf,
        connect,
        version,
        credential,
        will,
    } = accepted;
    let device = credential.id.clone();
    let client_id = if connect.client_id.is_empty() {
        ep.hub.assign_client_id(&device)
    } else {
        connect.client_id.clone()
    };
    let attached = match ep
        .hub
        .attach(&credential, &client_id, connect.clean_start, Instant::now())
    {
        Ok(a) => a,
        Err(code) => {
            warn!(device = %device, ?code, "device connection refused: connection limit");
            return Err((stream, version, code, "connection limit reached".into()));
        }
    };
    // How long the session outlives the connection: 3.1.1 persistent sessions use the configured
    // expiry; MQTT 5 clients say, and are held to it.
    let keep = match version {
        Version::V311 => (!connect.clean_start).then_some(Duration::MAX),
        Version::V5 => connect
            .session_expiry
            .filter(|s| *s > 0)
            .map(|s| Duration::from_secs(u64::from(s))),
    };
    let (session, connack) = Session::new(
        &connect,
        &device,
        client_id,
        will,
        attached.restored,
        ep.limits.clone(),
        Instant::now(),
    );
    let mut conn = Conn {
        ep: ep.clone(),
        session,
        conn_id: attached.id,
        device,
        out: BytesMut::new(),
        requests: JoinSet::new(),
        reply_to: HashMap::new(),
        receipts: HashMap::new(),
        stored: VecDeque::new(),
    };
    encode(connack, version, &mut conn.out);
    if !conn.session.subscriptions().is_empty() {
        // A resumed session's subscriptions are routable at once.
        ep.hub
            .set_subscriptions(&conn.device, conn.conn_id, conn.session.subscriptions());
    }
    ep.devices
        .presence
        .connected(&conn.device, version.label(), unix_ms());
    info!(device = %conn.device, client = %conn.session.client_id(), %peer, protocol = version.label(),
          keep_alive = ?conn.session.keep_alive(), "device connected");
    Ok(Started {
        conn,
        stream,
        buf,
        inbox: attached.inbox,
        kick: attached.kick,
        keep,
    })
}

/// One device's session, from its CONNACK to close.
async fn session<S: Stream>(accepted: Box<Accepted<S>>) {
    let Started {
        mut conn,
        stream,
        buf,
        inbox,
        kick,
        keep,
    } = match prepare(*accepted) {
        Ok(started) => started,
        Err((stream, version, code, reason)) => {
            // Boxed: a rare path, which inline would size every session's task.
            Box::pin(refuse(stream, version, code, reason)).await;
            return;
        }
    };
    let (rd, mut wr) = tokio::io::split(stream);
    let close = conn.run(rd, &mut wr, buf, inbox, kick).await;
    // Tell an MQTT 5 client why edgecar ends the connection.
    if let Close::ByServer(code) = close {
        encode(
            Outgoing::Disconnect { code },
            conn.session.version(),
            &mut conn.out,
        );
    }
    let _ = flush(&mut wr, &mut conn.out).await;
    let _ = wr.shutdown().await;
    drop(wr);
    conn.closed(close, keep);
    // Requests already read are still answered (to the device's other connections: a device
    // that publishes a QoS 0 request and disconnects at once may be listening on another).
    // Boxed: inline, this state would size every live connection's task, not only closing ones.
    Box::pin(conn.drain()).await;
}

/// What [`Conn::next_packet`] did.
enum Step {
    /// A packet was handled (or parked): look again.
    Handled,
    /// Nothing to handle until more bytes, a timer or a reply arrive.
    Wait,
    /// The connection ends.
    Close(Close),
}

/// The state of one connection's loop.
struct Conn {
    ep: Arc<Endpoint>,
    session: Session,
    conn_id: u64,
    device: String,
    /// Packets encoded, not yet written.
    out: BytesMut,
    /// Requests running on the request path: (session token, reply).
    requests: JoinSet<(u64, Option<Message>)>,
    /// Where each running request's reply goes, by task, so that even a request whose task
    /// failed gets an answer.
    reply_to: HashMap<tokio::task::Id, (u64, ReplyTo)>,
    /// Outbox messages sent at QoS 1 and not yet acknowledged, by packet id.
    receipts: HashMap<u16, Arc<crate::outbox::Receipt>>,
    /// Telemetry readings handed to the telemetry block, oldest first: (session token, where an
    /// error reply goes, outcome). They are stored in arrival order, so the oldest completes
    /// first; polled here rather than in a task each, since readings are the hottest path.
    stored: VecDeque<(u64, ReplyTo, Receipt)>,
}

/// The outcome of the oldest reading in `stored`; never resolves while there is none.
async fn oldest_stored(stored: &mut VecDeque<(u64, ReplyTo, Receipt)>) -> Result<(), crate::Error> {
    match stored.front_mut() {
        Some((_, _, receipt)) => receipt.await,
        None => std::future::pending().await,
    }
}

impl Conn {
    /// Runs until the connection ends; returns how.
    async fn run<S: Stream>(
        &mut self,
        mut rd: ReadHalf<S>,
        wr: &mut WriteHalf<S>,
        mut buf: BytesMut,
        mut inbox: tokio::sync::mpsc::Receiver<Box<hub::Delivery>>,
        mut kick: tokio::sync::oneshot::Receiver<DisconnectCode>,
    ) -> Close {
        // A packet read but not yet handled because the device's rate limit ran out. Boxed: it is
        // rarely there, and inline it would size every connection's task.
        let mut parked: Option<Box<Incoming>> = None;
        let mut throttled: Option<Instant> = None;
        let mut paused = false;
        let mut presence_at = Instant::now();
        // One timer for both (a second would size every connection's task): the end of a
        // rate-limit pause, or, while reading, the session's keep-alive deadline. Kept across
        // iterations: moving a deadline later costs tokio an atomic store, while a new timer per
        // packet would take the timer wheel's lock twice.
        let timer = tokio::time::sleep_until(self.session.deadline());
        tokio::pin!(timer);
        loop {
            if let Err(e) = flush(wr, &mut self.out).await {
                debug!(device = %self.device, error = %e, "write failed");
                return Close::ByClient { publish_will: true };
            }
            let reading = throttled.is_none() && self.session.can_take_request();
            if reading && paused {
                // Edgecar stopped reading; the device's silence meanwhile is not its fault.
                self.session.touch(Instant::now());
                paused = false;
            }
            if !reading {
                paused = true;
            }
            match self.next_packet(
                &mut buf,
                reading,
                &mut parked,
                &mut throttled,
                &mut presence_at,
            ) {
                Step::Handled => continue,
                Step::Close(close) => return close,
                Step::Wait => {}
            }
            if buf.is_empty() && buf.capacity() > KEEP_BUF {
                buf = BytesMut::with_capacity(READ_BUF);
            }
            if self.reply_to.is_empty() && self.reply_to.capacity() > 0 {
                // Its table would otherwise stay allocated for the connection's life.
                self.reply_to.shrink_to_fit();
            }
            let wake = throttled.unwrap_or_else(|| self.session.deadline());
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            tokio::select! {
                r = rd.read_buf(&mut buf), if reading => match r {
                    Ok(0) | Err(_) => return Close::ByClient { publish_will: true },
                    Ok(_) => {}
                },
                () = &mut timer, if throttled.is_some() || reading => {
                    if throttled.take().is_none()
                        && let Some(Action::Close(c)) = self.session.on_timer(Instant::now())
                    {
                        return c;
                    }
                }
                Some(done) = self.requests.join_next_with_id(), if !self.requests.is_empty() => {
                    let (token, reply) = self.finished(done);
                    if let Some(reply) = reply {
                        self.send_reply(reply);
                    }
                    let actions = self.session.done(token);
                    if let Some(close) = self.perform(actions) {
                        return close;
                    }
                }
                outcome = oldest_stored(&mut self.stored), if !self.stored.is_empty() => {
                    if let Some(close) = self.stored_one(outcome) {
                        return close;
                    }
                }
                Some(d) = inbox.recv() => self.deliver(*d),
                r = &mut kick => {
                    return Close::ByServer(r.unwrap_or(DisconnectCode::ServerShuttingDown));
                }
            }
        }
    }

    /// Takes the next packet (one parked by the rate limit, or one decoded from `buf`) and
    /// handles it. Not async: a decoded packet is never held across an await, so it does not
    /// size the connection's task.
    fn next_packet(
        &mut self,
        buf: &mut BytesMut,
        reading: bool,
        parked: &mut Option<Box<Incoming>>,
        throttled: &mut Option<Instant>,
        presence_at: &mut Instant,
    ) -> Step {
        if !reading {
            return Step::Wait;
        }
        let p = match parked.take() {
            Some(p) => *p,
            None => {
                let version = self.session.version();
                match codec::decode(buf, Some(version), self.ep.limits.max_packet_size) {
                    Ok(Some((p, _))) => p,
                    Ok(None) => return Step::Wait,
                    Err(e) => {
                        debug!(device = %self.device, error = %e, "bad packet");
                        let code = match e {
                            DecodeError::TooLarge { .. } => DisconnectCode::PacketTooLarge,
                            _ => DisconnectCode::MalformedPacket,
                        };
                        return Step::Close(Close::ByServer(code));
                    }
                }
            }
        };
        let now = Instant::now();
        // A PUBACK answers what edgecar sent; it costs the device no token.
        let token = match p {
            Incoming::PubAck { .. } => Ok(()),
            _ => self.ep.hub.take_token(&self.device, now),
        };
        if let Err(until) = token {
            debug!(device = %self.device, "rate limit: reading paused");
            *parked = Some(Box::new(p));
            *throttled = Some(until);
            return Step::Handled;
        }
        if let Incoming::PubAck { pkid } = &p
            && let Some(r) = self.receipts.remove(pkid)
        {
            r.confirm();
        }
        if now.duration_since(*presence_at) >= PRESENCE_EVERY {
            *presence_at = now;
            self.ep.devices.presence.seen(&self.device, unix_ms());
        }
        let actions = self.session.on_packet(p, now);
        match self.perform(actions) {
            Some(close) => Step::Close(close),
            None => Step::Handled,
        }
    }

    /// The oldest telemetry reading is stored (or failed: the device hears why); its PUBACK can
    /// go.
    fn stored_one(&mut self, outcome: Result<(), crate::Error>) -> Option<Close> {
        let (token, to, _) = self.stored.pop_front()?;
        if self.stored.is_empty() && self.stored.capacity() > 0 {
            self.stored = VecDeque::new();
        }
        let actions = match outcome {
            Ok(()) => self.session.done(token),
            Err(e) => self.not_stored(token, &to, e),
        };
        self.perform(actions)
    }

    /// A telemetry reading was not stored: the device hears why on its reply topic, and its
    /// PUBACK says so (MQTT 5) or never comes (3.1.1: the connection closes, the device resends).
    fn not_stored(&mut self, token: u64, to: &ReplyTo, e: crate::Error) -> Vec<Action> {
        debug!(device = %self.device, code = e.code, error = %e.message, "telemetry reading not stored; not acknowledged");
        let code = match e.kind {
            crate::ErrorKind::QueueFull | crate::ErrorKind::InsufficientStorage => {
                PubAckCode::QuotaExceeded
            }
            _ => PubAckCode::UnspecifiedError,
        };
        self.send_reply(protocol::reply(&self.device, to, Err(e)));
        self.session.failed(token, code)
    }

    /// The reply of a finished request task (an internal error reply if the task failed).
    fn finished(
        &mut self,
        done: Result<(tokio::task::Id, (u64, Option<Message>)), tokio::task::JoinError>,
    ) -> (u64, Option<Message>) {
        match done {
            Ok((id, r)) => {
                self.reply_to.remove(&id);
                r
            }
            Err(e) => {
                let (token, to) = self.reply_to.remove(&e.id()).unwrap_or((
                    u64::MAX,
                    ReplyTo {
                        op: "-".into(),
                        rid: "-".into(),
                        response_topic: None,
                        correlation: None,
                    },
                ));
                warn!(device = %self.device, op = %to.op, error = %e, "request task failed");
                let err = crate::Error::new(
                    crate::ErrorKind::Internal,
                    crate::error::codes::INTERNAL,
                    "the request failed inside edgecar",
                );
                (token, Some(protocol::reply(&self.device, &to, Err(err))))
            }
        }
    }

    /// Sends a routed message; an outbox message's receipt is confirmed by the device's PUBACK
    /// (at QoS 1) or once written (at QoS 0).
    fn deliver(&mut self, d: hub::Delivery) {
        let Some(p) = self.session.deliver(d.msg) else {
            return; // not subscribed (any more) or too large: an outbox message goes back
        };
        if let Some(r) = d.receipt {
            match &p {
                Outgoing::Publish { pkid, msg } if msg.qos == 1 => {
                    self.receipts.insert(*pkid, r);
                }
                _ => r.confirm(),
            }
        }
        encode(p, self.session.version(), &mut self.out);
    }

    /// Delivers a reply to this connection (if subscribed) and the device's others.
    fn send_reply(&mut self, reply: Message) {
        let others = self.ep.hub.route(&self.device, &reply, Some(self.conn_id));
        let here = self.session.subscribed(&reply.topic);
        if let Some(p) = self.session.deliver(reply.clone()) {
            encode(p, self.session.version(), &mut self.out);
        }
        if others == 0 && !here {
            debug!(device = %self.device, topic = %reply.topic, "reply not delivered: no connection of the device subscribes to it");
        }
    }

    /// Performs the session's actions; returns how the connection ends, if it does.
    fn perform(&mut self, actions: Vec<Action>) -> Option<Close> {
        let version = self.session.version();
        let mut pending = std::collections::VecDeque::from(actions);
        while let Some(a) = pending.pop_front() {
            match a {
                Action::Send(p) => encode(p, version, &mut self.out),
                Action::Close(c) => return Some(c),
                Action::SubscriptionsChanged => self.ep.hub.set_subscriptions(
                    &self.device,
                    self.conn_id,
                    self.session.subscriptions(),
                ),
                Action::Handle { token, msg } => match protocol::classify(&self.device, &msg) {
                    Inbound::Request { call, reply_to } => {
                        let rt = self.ep.runtime.clone();
                        let (device, to) = (self.device.clone(), reply_to.clone());
                        let h = self.requests.spawn(async move {
                            let result = rt.handle(*call).await;
                            (token, Some(protocol::reply(&device, &to, result)))
                        });
                        self.reply_to.insert(h.id(), (token, reply_to));
                    }
                    Inbound::Telemetry { call, reply_to } => {
                        // The session sends the PUBACK only once the reading is stored; a failure
                        // is also answered with an error reply.
                        match self.ep.runtime.submit_telemetry(*call) {
                            Ok(receipt) => self.stored.push_back((token, reply_to, receipt)),
                            Err(e) => pending.extend(self.not_stored(token, &reply_to, e)),
                        }
                    }
                    Inbound::Invalid { error, reply_to } => {
                        debug!(device = %self.device, topic = %msg.topic, code = error.code, "request refused");
                        self.send_reply(protocol::reply(&self.device, &reply_to, Err(error)));
                        pending.extend(self.session.done(token));
                    }
                    Inbound::CommandReply { rid, reply } => {
                        let late = !self.ep.hub.complete(&self.device, &rid, reply.clone());
                        if late
                            && !self
                                .ep
                                .runtime
                                .devices
                                .mailbox_answer(&self.device, &rid, &reply)
                        {
                            debug!(device = %self.device, rid = %rid, "command reply for no waiting call (late or unknown)");
                        }
                        pending.extend(self.session.done(token));
                    }
                },
            }
        }
        None
    }

    /// The connection has closed: the hub keeps its session (for `keep`) or forgets it, its will
    /// goes out, presence says so.
    fn closed(&mut self, close: Close, keep: Option<Duration>) {
        let (ep, device) = (&self.ep, &self.device);
        let subs = self.session.subscriptions().to_vec();
        ep.hub
            .detach(device, self.conn_id, keep, subs, Instant::now());
        if let Some(will) = self.session.take_will() {
            // Wills stay inside the device's own tree: its other connections may hear it.
            ep.hub.route(device, &will, None);
        }
        ep.devices
            .presence
            .disconnected(device, close.describe(), unix_ms());
        info!(device = %device, client = %self.session.client_id(), reason = close.describe(), "device disconnected");
    }

    /// After the connection closed: lets running requests finish and routes their replies.
    async fn drain(mut self) {
        while let Some(done) = self.requests.join_next_with_id().await {
            if let (_, Some(reply)) = self.finished(done) {
                self.ep.hub.route(&self.device, &reply, None);
            }
        }
        // Readings already handed over are stored all the same; a failure is still reported.
        while let Some((_, to, receipt)) = self.stored.pop_front() {
            if let Err(e) = receipt.await {
                let reply = protocol::reply(&self.device, &to, Err(e));
                self.ep.hub.route(&self.device, &reply, None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn flush_writes_everything_to_a_device_that_reads_slowly() {
        // A 64-byte pipe: the first write attempt takes part, the rest waits for the reader.
        let (ours, mut device) = tokio::io::duplex(64);
        let (_rd, mut wr) = tokio::io::split(ours);
        let sent: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let mut out = BytesMut::from(&sent[..]);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut chunk = [0u8; 100];
            while got.len() < 5000 {
                let n = device.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the pipe closed early");
                got.extend_from_slice(&chunk[..n]);
                tokio::task::yield_now().await;
            }
            got
        });
        flush(&mut wr, &mut out).await.unwrap();
        assert!(out.is_empty());
        let got = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the device never got all the bytes")
            .unwrap();
        assert_eq!(got, sent);
    }

    #[tokio::test(start_paused = true)]
    async fn flush_gives_up_on_a_device_that_stops_reading() {
        let (ours, _device) = tokio::io::duplex(64);
        let (_rd, mut wr) = tokio::io::split(ours);
        let mut out = BytesMut::from(&[7u8; 1000][..]);
        let started = Instant::now();
        let e = flush(&mut wr, &mut out).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= WRITE_TIMEOUT);
        assert!(out.is_empty(), "the buffer is given back either way");
    }

    #[tokio::test]
    async fn flush_reports_a_closed_device() {
        let (ours, device) = tokio::io::duplex(64);
        drop(device);
        let (_rd, mut wr) = tokio::io::split(ours);
        let mut out = BytesMut::from(&[7u8; 10][..]);
        assert!(flush(&mut wr, &mut out).await.is_err());
    }
}
