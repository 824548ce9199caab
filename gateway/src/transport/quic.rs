//! The QUIC device endpoint: one quinn endpoint on one UDP port, connections routed by ALPN
//! (`edgecar-device/1` today; links will add `edgecar-link/1` beside it).
//!
//! - this file: the accept loop (limits, ALPN routing, shutdown), a device connection's
//!   authentication (verified client certificate, or an `auth` request on the first stream),
//!   and its session: each bidirectional stream the device opens is one request, decoded into a
//!   [`crate::Call`] by the device protocol's rules MQTT uses too ([`request::call`], over the
//!   operation table) and answered on the same stream; telemetry is acknowledged once stored.
//! - [`frame`]: the bytes on a stream (header frames, close codes), pure and unit-tested.
//! - [`link`]: who is connected over QUIC, and the [`crate::devices::link::DeviceLink`] that
//!   carries commands and stored messages to them on streams the gateway opens.
//! - [`cert`]: the endpoint's TLS identity (configured, or self-signed and pinned by devices).
//!
//! Every task here is owned: connections by [`serve`]'s set, a connection's requests and pushes
//! by its session; all end when `stop` turns true.

pub mod cert;
pub mod frame;
pub mod link;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use quinn::VarInt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::call::{Call, Reply, Transport};
use crate::clock::unix_ms;
use crate::config::QuicConfig;
use crate::devices::budget::Budgets;
use crate::devices::link::DeviceMessage;
use crate::devices::request::{self, Meta};
use crate::devices::{Credential, Layer};
use crate::error::{Error, ErrorKind, codes};
use crate::ops::{Args, Op};
use crate::runtime::Runtime;
use crate::transport::listener::{self, Admission, Protocol, Stop};
use crate::transport::tls::{ClientCert, identity_of};
use frame::close;
use link::{AnswerLimits, Full, QuicLink};

/// Connections in their handshake (TLS and authentication) at once; more are refused.
const MAX_HANDSHAKES: usize = 256;
/// Presence "last seen" is updated at most this often per connection.
const PRESENCE_EVERY_MS: u64 = 1000;
/// Largest answer header a device may send to a push (commands, events).
const ANSWER_HEADER: usize = 4 << 10;
/// How long a pushed message (command, event) waits for the device's acknowledgement.
const PUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything connections share.
pub struct Endpoint {
    /// The request path.
    pub runtime: Arc<Runtime>,
    /// The device layer: credentials, presence, links, outboxes.
    pub devices: Layer,
    /// The QUIC connections.
    pub link: Arc<QuicLink>,
    /// The per-device rate limit, shared with MQTT.
    pub budgets: Arc<Budgets>,
    /// Limits and timeouts.
    pub cfg: QuicConfig,
}

impl Endpoint {
    /// The link table for `cfg`.
    pub fn new_link(cfg: &QuicConfig) -> Arc<QuicLink> {
        Arc::new(QuicLink::new(
            cfg.max_connections,
            cfg.max_connections_per_device,
            AnswerLimits {
                header: ANSWER_HEADER,
                body: usize::try_from(cfg.max_body_size.0).unwrap_or(usize::MAX),
            },
        ))
    }
}

/// Builds the quinn endpoint on `socket` with the server crypto and the transport limits.
pub fn endpoint(
    socket: std::net::UdpSocket,
    crypto: Arc<quinn::crypto::rustls::QuicServerConfig>,
    cfg: &QuicConfig,
) -> std::io::Result<quinn::Endpoint> {
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(cfg.max_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .max_idle_timeout(quinn::IdleTimeout::try_from(cfg.idle_timeout.0).ok())
        // Per-stream and per-connection receive windows: a request's header and body, not a
        // bulk transfer; small windows keep an idle device cheap.
        .stream_receive_window(VarInt::from_u32(256 << 10))
        .receive_window(VarInt::from_u32(1 << 20))
        .send_window(1 << 20)
        .datagram_receive_buffer_size(None);
    let mut server = quinn::ServerConfig::with_crypto(crypto);
    server.transport_config(Arc::new(transport));
    server.migration(true);
    let runtime = Arc::new(quinn::TokioRuntime);
    let socket = quinn::Runtime::wrap_udp_socket(&*runtime, socket)?;
    quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        Some(server),
        Arc::new(OneDatagram(socket)),
        runtime,
    )
}

/// The endpoint's UDP socket, sending one datagram per send call (no segmentation offload).
///
/// quinn keeps each connection's send buffer at the largest batch it ever sent: with offload, up
/// to ten datagrams (about 14 KiB) per connection, held by every idle device after its handshake.
/// Device traffic is small requests and replies, one datagram each, so batching gains nothing and
/// one datagram keeps an idle device's buffer at one MTU.
#[derive(Debug)]
struct OneDatagram(Arc<dyn quinn::AsyncUdpSocket>);

impl quinn::AsyncUdpSocket for OneDatagram {
    fn create_io_poller(self: Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        self.0.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> std::io::Result<()> {
        self.0.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut std::task::Context,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        self.0.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.0.may_fragment()
    }
}

/// Serves devices on `endpoint` until `stop` turns true; then closes every connection
/// ("shutting down", code 0x6), waits up to `drain` and aborts the rest.
pub async fn serve(endpoint: quinn::Endpoint, ep: Arc<Endpoint>, stop: Stop, drain: Duration) {
    let mut background = JoinSet::new();
    {
        let (link, registry) = (ep.link.clone(), ep.devices.registry.clone());
        let mut changes = registry.changes();
        background.spawn(async move {
            while changes.changed().await.is_ok() {
                link.revalidate(&registry);
            }
        });
    }
    let devices = Arc::new(Devices {
        ep,
        endpoint: endpoint.clone(),
        handshakes: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
    });
    listener::serve(endpoint.clone(), devices, stop, drain).await;
    background.abort_all();
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}

/// The device protocol (`edgecar-device/1`) on the listener skeleton.
struct Devices {
    ep: Arc<Endpoint>,
    /// To close every connection at shutdown.
    endpoint: quinn::Endpoint,
    /// Handshakes in progress.
    handshakes: Arc<Semaphore>,
}

impl Protocol for Devices {
    type Conn = quinn::Incoming;
    type Permit = tokio::sync::OwnedSemaphorePermit;

    fn name(&self) -> &'static str {
        "quic"
    }

    fn admit(
        &self,
        incoming: quinn::Incoming,
        peer: SocketAddr,
    ) -> Admission<quinn::Incoming, Self::Permit> {
        let Ok(permit) = self.handshakes.clone().try_acquire_owned() else {
            debug!(%peer, "too many QUIC handshakes at once; refused");
            incoming.refuse();
            return Admission::Refuse(None);
        };
        if !self.ep.link.has_room() {
            debug!(%peer, "quic.maxConnections reached; refused");
            incoming.refuse();
            return Admission::Refuse(None);
        }
        Admission::Accept(incoming, permit)
    }

    async fn handshake(
        self: Arc<Self>,
        incoming: quinn::Incoming,
        _peer: SocketAddr,
        permit: Self::Permit,
        _stop: Stop,
    ) -> Option<listener::Session> {
        let deadline = Instant::now() + self.ep.cfg.handshake_timeout.0;
        let (conn, credential) = handshake(incoming, &self.ep, deadline).await?;
        drop(permit);
        Some(Box::pin(session(conn, credential, self.ep.clone())))
    }

    /// Every connection is closed: "shutting down", code 0x6.
    fn stopping(&self) {
        self.endpoint.close(
            VarInt::from_u32(close::SHUTTING_DOWN),
            b"server shutting down",
        );
    }
}

/// Closes `conn` with `code` and a reason phrase.
fn refuse(conn: &quinn::Connection, code: u32, reason: &str) {
    conn.close(VarInt::from_u32(code), reason.as_bytes());
}

/// The QUIC handshake, ALPN routing and the device's authentication. `None` if refused
/// (the connection is closed with the reason).
async fn handshake(
    incoming: quinn::Incoming,
    ep: &Endpoint,
    deadline: Instant,
) -> Option<(quinn::Connection, Credential)> {
    let peer = incoming.remote_address();
    let conn = match incoming.accept() {
        Ok(connecting) => match tokio::time::timeout_at(deadline, connecting).await {
            Err(_) => {
                // Dropping the attempt closes it.
                debug!(%peer, "QUIC handshake timed out");
                return None;
            }
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                // A certificate from another CA (or none, with clientAuth: required) fails here.
                warn!(%peer, error = %e, "QUIC handshake failed");
                return None;
            }
        },
        Err(e) => {
            debug!(%peer, error = %e, "QUIC connection not accepted");
            return None;
        }
    };
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    match alpn.as_deref() {
        Some(frame::DEVICE_ALPN) => {
            match tokio::time::timeout_at(deadline, authenticate(conn.clone(), peer, ep)).await {
                Ok(done) => done,
                Err(_) => {
                    debug!(%peer, "no authentication within quic.handshakeTimeout");
                    refuse(&conn, close::AUTH_TIMEOUT, "authentication timed out");
                    None
                }
            }
        }
        other => {
            debug!(%peer, alpn = ?other.map(String::from_utf8_lossy), "unknown QUIC application protocol");
            refuse(&conn, close::PROTOCOL, "unknown application protocol");
            None
        }
    }
}

/// Who the device is: the `auth` request on its first stream, with its password, or with a
/// verified client certificate (then its id, if given, must be the certificate's).
async fn authenticate(
    conn: quinn::Connection,
    peer: SocketAddr,
    ep: &Endpoint,
) -> Option<(quinn::Connection, Credential)> {
    let certs = conn.peer_identity().and_then(|i| {
        i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
            .ok()
    });
    let by_cert = match identity_of(certs.as_deref().and_then(|c| c.first())) {
        ClientCert::Device(id) => match ep.devices.registry.authenticate_certificate(&id) {
            Some(c) => Some(c),
            None => {
                warn!(%peer, certificate = %id, "device certificate valid, but no such device in the registry");
                refuse(&conn, close::UNAUTHORIZED, "not authorized");
                return None;
            }
        },
        ClientCert::Unusable(why) => {
            warn!(%peer, reason = %why, "device certificate names no device");
            refuse(&conn, close::UNAUTHORIZED, "not authorized");
            return None;
        }
        ClientCert::None => None,
    };
    let (mut send, mut recv) = match conn.accept_bi().await {
        Ok(s) => s,
        Err(e) => {
            debug!(%peer, error = %e, "connection ended before authenticating");
            return None;
        }
    };
    let max = usize::try_from(ep.cfg.max_header_size.0).unwrap_or(usize::MAX);
    let header = match read_header(&mut recv, max).await {
        Ok(h) => frame::request(&h).ok(),
        Err(_) => None,
    };
    let Some(header) = header.filter(|h| h.op == "auth") else {
        debug!(%peer, "first QUIC stream is not an auth request");
        refuse(
            &conn,
            close::PROTOCOL,
            "the first stream must be an auth request",
        );
        return None;
    };
    let id = header.params.get("id").cloned().unwrap_or_default();
    let credential = match by_cert {
        Some(c) if id.is_empty() || id == c.id => c,
        Some(c) => {
            warn!(%peer, certificate = %c.id, username = %id, "auth names another device than the client certificate");
            refuse(&conn, close::UNAUTHORIZED, "not authorized");
            return None;
        }
        None => {
            let password = header.params.get("password").cloned().unwrap_or_default();
            match ep
                .devices
                .registry
                .authenticate(&id, password.as_bytes())
                .await
            {
                Some(c) => c,
                None => {
                    warn!(%peer, username = %id, "device authentication failed");
                    refuse(
                        &conn,
                        close::UNAUTHORIZED,
                        "unknown device or wrong password",
                    );
                    return None;
                }
            }
        }
    };
    let ok = frame::Reply {
        status: 200,
        meta: [("device".to_owned(), credential.id.clone())].into(),
        id: header.id,
        ..Default::default()
    };
    let _ = send.write_all(&frame::encode(&ok)).await;
    let _ = send.finish();
    Some((conn, credential))
}

/// Reads a header frame (length-checked before anything else is read).
async fn read_header(
    recv: &mut quinn::RecvStream,
    max: usize,
) -> Result<Vec<u8>, frame::FrameError> {
    let mut prefix = [0u8; frame::PREFIX];
    recv.read_exact(&mut prefix)
        .await
        .map_err(|e| frame::FrameError::Invalid(format!("no header frame: {e}")))?;
    let len = frame::length(prefix, max)?;
    let mut json = vec![0u8; len];
    recv.read_exact(&mut json)
        .await
        .map_err(|e| frame::FrameError::Invalid(format!("the header frame ended early: {e}")))?;
    Ok(json)
}

/// What a connection's requests share.
struct Ctx {
    ep: Arc<Endpoint>,
    device: String,
    conn: quinn::Connection,
    /// When presence last heard of it (Unix ms).
    seen_ms: AtomicU64,
    /// The address it was last seen from (migration is logged).
    addr: std::sync::Mutex<SocketAddr>,
}

/// One authenticated device connection, until it closes.
async fn session(conn: quinn::Connection, credential: Credential, ep: Arc<Endpoint>) {
    let device = credential.id.clone();
    let peer = conn.remote_address();
    let mut attached = match ep.link.attach(&credential, &conn) {
        Ok(a) => a,
        Err(full) => {
            warn!(device = %device, ?full, "device connection refused: connection limit");
            let why = match full {
                Full::Device => "too many connections for this device",
                Full::Total => "too many connections",
            };
            refuse(&conn, close::TOO_MANY_CONNECTIONS, why);
            return;
        }
    };
    ep.devices.presence.connected(&device, "quic", unix_ms());
    ep.devices.links.attached(&device, "quic");
    ep.devices.outbox.kick(&device);
    info!(device = %device, %peer, protocol = "quic", "device connected");
    let ctx = Arc::new(Ctx {
        ep: ep.clone(),
        device: device.clone(),
        conn: conn.clone(),
        seen_ms: AtomicU64::new(unix_ms()),
        addr: std::sync::Mutex::new(peer),
    });
    let mut tasks = JoinSet::new();
    let reason = loop {
        tokio::select! {
            stream = conn.accept_bi() => match stream {
                Ok((send, recv)) => {
                    let ctx = ctx.clone();
                    tasks.spawn(async move { request(ctx, send, recv).await });
                }
                Err(e) => break closed_reason(&e),
            },
            Some(d) = attached.push.recv() => {
                let ctx = ctx.clone();
                tasks.spawn(async move { push(ctx, d).await });
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            k = &mut attached.kick => {
                let (code, why) = k.unwrap_or((close::SHUTTING_DOWN, "server shutting down"));
                refuse(&conn, code, why);
                break why.to_owned();
            }
        }
    };
    ep.link.detach(&device, attached.id);
    ep.devices.outbox.kick(&device);
    ep.devices
        .presence
        .disconnected(&device, &reason, unix_ms());
    info!(device = %device, reason = %reason, protocol = "quic", "device disconnected");
    // Requests already taken finish (telemetry handed over is stored all the same); their
    // replies have nowhere to go.
    let finish = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), finish)
        .await
        .is_err()
    {
        tasks.abort_all();
    }
}

/// How a connection ended, in words for presence and the log.
fn closed_reason(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code == VarInt::from_u32(close::DONE) =>
        {
            "closed by the device".into()
        }
        quinn::ConnectionError::TimedOut => "idle timeout".into(),
        quinn::ConnectionError::LocallyClosed => "closed by edgecar".into(),
        other => other.to_string(),
    }
}

/// Writes a reply header and body, and ends the stream.
async fn answer(send: &mut quinn::SendStream, header: &frame::Reply, body: &[u8]) {
    let _ = send.write_all(&frame::encode(header)).await;
    if !body.is_empty() {
        let _ = send.write_all(body).await;
    }
    let _ = send.finish();
}

/// The reply header and body for a result, as the HTTP API would answer.
fn reply_of(result: Result<Reply, Error>, id: Option<String>) -> (frame::Reply, Bytes) {
    match result {
        Ok(r) => {
            let mut meta = std::collections::BTreeMap::new();
            let mut content_type = r.content_type.map(str::to_owned);
            for (k, v) in r.meta {
                let k = k.to_ascii_lowercase();
                if k == "content-type" {
                    content_type = content_type.or(Some(v));
                } else {
                    meta.insert(k, v);
                }
            }
            (
                frame::Reply {
                    status: r.status,
                    meta,
                    content_type,
                    id,
                },
                r.body,
            )
        }
        Err(e) => (
            frame::Reply {
                status: crate::api::status(e.kind).as_u16(),
                content_type: Some("application/json".into()),
                id,
                ..Default::default()
            },
            Bytes::from(crate::api::error_body(&e)),
        ),
    }
}

/// One request stream: header, body, the call, one reply.
async fn request(ctx: Arc<Ctx>, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let ep = &ctx.ep;
    let max_header = usize::try_from(ep.cfg.max_header_size.0).unwrap_or(usize::MAX);
    let max_body = usize::try_from(ep.cfg.max_body_size.0).unwrap_or(usize::MAX);
    // One budget per device, whatever the transport: over it, the request waits (and the
    // device's stream limit pushes back on it).
    while let Err(until) = ep.budgets.take(&ctx.device, Instant::now()) {
        tokio::time::sleep_until(until).await;
    }
    ctx.touch();
    ctx.check_address();
    let header = match read_header(&mut recv, max_header)
        .await
        .and_then(|h| frame::request(&h))
    {
        Ok(h) => h,
        Err(e) => {
            debug!(device = %ctx.device, error = %e, "bad request header");
            let _ = recv.stop(VarInt::from_u32(0));
            let (h, b) = reply_of(Err(Error::malformed(e.to_string())), None);
            answer(&mut send, &h, &b).await;
            return;
        }
    };
    let body = match recv.read_to_end(max_body).await {
        Ok(b) => Bytes::from(b),
        Err(quinn::ReadToEndError::TooLong) => {
            let _ = recv.stop(VarInt::from_u32(0));
            let e = Error::new(
                ErrorKind::BadRequest,
                codes::BODY_TOO_LARGE,
                format!("the request body is larger than quic.maxBodySize ({max_body} bytes)"),
            );
            let (mut h, b) = reply_of(Err(e), header.id);
            h.status = 413;
            answer(&mut send, &h, &b).await;
            return;
        }
        Err(e) => {
            debug!(device = %ctx.device, error = %e, "request stream failed");
            return;
        }
    };
    let id = header.id.clone();
    let result = handle(&ctx, header, body).await;
    let (h, b) = reply_of(result, id);
    answer(&mut send, &h, &b).await;
}

/// Runs a request on the request path.
async fn handle(ctx: &Ctx, header: frame::Request, body: Bytes) -> Result<Reply, Error> {
    if header.op == "auth" {
        return Err(Error::malformed(format!(
            "this connection is already authenticated as {:?}",
            ctx.device
        )));
    }
    let call = call_of(&ctx.device, header, body)?;
    if let Op::Telemetry { .. } = call.op {
        // Acknowledged only once stored: a failure is the reply instead.
        ctx.ep.runtime.submit_telemetry(call)?.await?;
        return Ok(Reply::no_content());
    }
    ctx.ep.runtime.handle(call).await
}

/// The call a request stream makes, by the device protocol's rules (pure; the fuzzer runs it).
pub fn call_of(device: &str, header: frame::Request, body: Bytes) -> Result<Call, Error> {
    let frame::Request {
        op,
        params,
        traceparent,
        content_type,
        headers,
        ..
    } = header;
    let mut args = Args::new();
    for (k, v) in params {
        args.push(k, v);
    }
    let meta = Meta {
        content_type,
        traceparent,
        headers: headers.into_iter().collect(),
    };
    request::call(device, Transport::Quic, &op, args, meta, body)
}

impl Ctx {
    /// Presence hears of the device (at most once a second), and a changed address is logged.
    fn touch(&self) {
        let now = unix_ms();
        let last = self.seen_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < PRESENCE_EVERY_MS {
            return;
        }
        self.seen_ms.store(now, Ordering::Relaxed);
        self.ep.devices.presence.seen(&self.device, now);
    }

    fn check_address(&self) {
        let now = self.conn.remote_address();
        let mut addr = self
            .addr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *addr != now {
            info!(device = %self.device, from = %*addr, to = %now, "device address changed; the connection migrated");
            *addr = now;
        }
    }
}

/// Sends a stored message; confirms its receipt once the device acknowledges it (2xx). A
/// mailbox command's answer is its result.
async fn push(ctx: Arc<Ctx>, d: link::Delivery) {
    let (header, body) = link::push_of(&d.msg);
    let limits = AnswerLimits {
        header: ANSWER_HEADER,
        body: usize::try_from(ctx.ep.cfg.max_body_size.0).unwrap_or(usize::MAX),
    };
    let sent = tokio::time::timeout(
        PUSH_TIMEOUT,
        link::exchange(&ctx.conn, &header, body, limits),
    )
    .await;
    match sent {
        Ok(Ok((reply, answer))) => {
            if let DeviceMessage::Command { id, .. } = &*d.msg {
                d.receipt.confirm();
                let reply = crate::blocks::devices::CommandReply {
                    status: reply.status,
                    body: answer,
                    content_type: reply.content_type,
                };
                ctx.ep
                    .runtime
                    .devices
                    .mailbox_answer(&ctx.device, id, &reply);
            } else if (200..300).contains(&reply.status) {
                d.receipt.confirm();
            } else {
                debug!(device = %ctx.device, status = reply.status, "event not acknowledged; it stays in the outbox");
            }
        }
        Ok(Err(e)) => {
            debug!(device = %ctx.device, error = %e, "stored message not delivered; it stays in the outbox")
        }
        Err(_) => {
            debug!(device = %ctx.device, "no acknowledgement in time; the message stays in the outbox")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_carry_the_http_status_meta_and_error_body() {
        let ok = Reply {
            status: 200,
            body: Bytes::from_static(b"21.5"),
            meta: vec![
                ("ETag".into(), "3".into()),
                ("content-type".into(), "application/json".into()),
            ],
            content_type: None,
        };
        let (h, b) = reply_of(Ok(ok), Some("r1".into()));
        assert_eq!(h.status, 200);
        assert_eq!(h.meta["etag"], "3");
        assert_eq!(h.content_type.as_deref(), Some("application/json"));
        assert_eq!(h.id.as_deref(), Some("r1"));
        assert_eq!(&b[..], b"21.5");
        let (h, b) = reply_of(Err(Error::malformed("no key")), None);
        assert_eq!(h.status, 400);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["errorCode"], "ERR_MALFORMED_REQUEST");
    }
}
