//! The device protocol over QUIC (docs/device-protocol.md#quic), written from the document:
//! one UDP connection with ALPN `edgecar-device/1`, an `auth` request on the first stream, one
//! bidirectional stream per request (a length-prefixed JSON header, then the body up to the
//! stream's end; the reply the same way back), and streams the gateway opens for commands and
//! subscribed events, answered on the same stream.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use quinn::VarInt;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::{Command, Error, Event, Reply};

/// The ALPN protocol of device connections.
pub const ALPN: &[u8] = b"edgecar-device/1";
/// Largest reply header read.
const MAX_HEADER: usize = 64 << 10;
/// Largest reply or push body read.
const MAX_BODY: usize = 64 << 20;
/// How long a command waits for the program's answer before the client answers 504 itself.
const ANSWER_WAIT: Duration = Duration::from_secs(60);

/// How a QUIC client trusts the gateway and proves who it is.
#[derive(Debug, Clone, Default)]
pub struct QuicOptions {
    /// PEM file of the CA that signed the gateway's certificate, or the gateway's self-signed
    /// certificate itself (`<stateDir>/quic/cert.pem`).
    pub ca_file: Option<PathBuf>,
    /// Or: the SHA-256 fingerprint of the gateway's certificate (hex, `:` allowed), as the
    /// gateway logs it. The certificate is then trusted whatever names it holds.
    pub fingerprint: Option<String>,
    /// The name the gateway's certificate must hold (with `ca_file`); default: the host.
    pub server_name: Option<String>,
    /// A client certificate and its key (PEM): the device is then the certificate's subject CN
    /// and needs no password.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// A request header.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RequestHeader<'a> {
    op: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    params: BTreeMap<&'a str, &'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}

/// A reply header (from the gateway, or ours to a push).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReplyHeader {
    status: u16,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    meta: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
}

/// What the gateway opens a stream with.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
enum Push {
    Command { id: String, method: String },
    Event { pubsub: String, topic: String },
}

fn frame<T: Serialize>(header: &T) -> Vec<u8> {
    let json = serde_json::to_vec(header).unwrap_or_else(|_| b"{}".to_vec());
    let mut out = (json.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&json);
    out
}

async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Vec<u8>, String> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix)
        .await
        .map_err(|e| e.to_string())?;
    let len = u32::from_be_bytes(prefix) as usize;
    if len == 0 || len > MAX_HEADER {
        return Err(format!("a header of {len} bytes"));
    }
    let mut json = vec![0u8; len];
    recv.read_exact(&mut json)
        .await
        .map_err(|e| e.to_string())?;
    Ok(json)
}

/// Commands waiting for the program's answer: id → where the answer goes.
type Answers = Arc<Mutex<HashMap<String, oneshot::Sender<(u16, Bytes)>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A connected QUIC device session.
pub struct Session {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    answers: Answers,
    /// Accepts the streams the gateway opens; aborted on drop.
    task: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The error a closed connection means.
fn connection_error(e: &quinn::ConnectionError) -> Error {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => Error::QuicClosed {
            code: c.error_code.into_inner(),
            reason: String::from_utf8_lossy(&c.reason).into_owned(),
        },
        other => Error::Connection(other.to_string()),
    }
}

/// The rustls configuration: TLS 1.3, ring, the trust `q` names, the client certificate if any.
fn tls(q: &QuicOptions) -> Result<rustls::ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Connection(e.to_string()))?;
    let builder = match (&q.fingerprint, &q.ca_file) {
        (Some(fp), _) => {
            let hex: String = fp.chars().filter(|c| *c != ':').collect();
            let pin = (0..hex.len())
                .step_by(2)
                .map(|i| {
                    hex.get(i..i + 2)
                        .and_then(|b| u8::from_str_radix(b, 16).ok())
                })
                .collect::<Option<Vec<u8>>>()
                .filter(|p| p.len() == 32)
                .ok_or_else(|| {
                    Error::Connection(format!("fingerprint {fp:?} is not 64 hex digits (SHA-256)"))
                })?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned {
                    sha256: pin,
                    algs: provider.signature_verification_algorithms,
                }))
        }
        (None, Some(ca)) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .map_err(|e| Error::Connection(format!("{}: {e}", ca.display())))?
            {
                let cert = cert.map_err(|e| Error::Connection(format!("{}: {e}", ca.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| Error::Connection(format!("{}: {e}", ca.display())))?;
            }
            builder.with_root_certificates(roots)
        }
        (None, None) => {
            return Err(Error::Connection(
                "QUIC needs the gateway's certificate: a CA file or its fingerprint".into(),
            ));
        }
    };
    let mut config = match &q.client_cert {
        Some((cert, key)) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| Error::Connection(format!("{}: {e}", cert.display())))?
                .collect::<Result<_, _>>()
                .map_err(|e| Error::Connection(format!("{}: {e}", cert.display())))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| Error::Connection(format!("{}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| Error::Connection(e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Trusts exactly one certificate, by its SHA-256, and checks the handshake's signature with it.
#[derive(Debug)]
struct Pinned {
    sha256: Vec<u8>,
    algs: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let d = ring::digest::digest(&ring::digest::SHA256, end_entity);
        if d.as_ref() == self.sha256.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Where incoming commands and events go.
pub struct Inbound {
    /// Commands for the program.
    pub commands: mpsc::Sender<Command>,
    /// Events for the program.
    pub events: mpsc::Sender<Event>,
    /// Whether the program takes events yet (until then they are left with the gateway).
    pub want_events: Arc<AtomicBool>,
}

impl Session {
    /// Connects, authenticates (the `auth` request on the first stream) and starts taking the
    /// streams the gateway opens.
    pub async fn connect(
        host: &str,
        port: u16,
        device: &str,
        password: &str,
        keep_alive: Duration,
        q: &QuicOptions,
        inbound: Inbound,
    ) -> Result<Session, Error> {
        let (endpoint, conn) = handshake(host, port, keep_alive, q).await?;
        // The first stream authenticates (with a certificate, the password may be empty).
        let mut params = BTreeMap::new();
        if !device.is_empty() {
            params.insert("id", device);
        }
        if !password.is_empty() {
            params.insert("password", password);
        }
        let auth = RequestHeader {
            op: "auth",
            params,
            id: None,
        };
        let answered = exchange(&conn, &frame(&auth), Bytes::new()).await;
        match answered {
            Ok(r) if r.status == 200 => {}
            Ok(r) => {
                return Err(r
                    .ok()
                    .err()
                    .unwrap_or(Error::Protocol("auth refused".into())));
            }
            Err(e) => return Err(e),
        }
        let answers: Answers = Arc::default();
        let task = tokio::spawn(accept(conn.clone(), answers.clone(), inbound));
        Ok(Session {
            endpoint,
            conn,
            answers,
            task,
        })
    }

    /// One request: its stream, its one reply.
    pub async fn request(
        &self,
        op: &str,
        params: &[(&str, &str)],
        id: &str,
        body: Bytes,
    ) -> Result<Reply, Error> {
        let header = RequestHeader {
            op,
            params: params.iter().copied().collect(),
            id: Some(id),
        };
        exchange(&self.conn, &frame(&header), body).await
    }

    /// Answers a command the gateway sent.
    pub fn answer(&self, id: &str, status: u16, body: Bytes) -> Result<(), Error> {
        match lock(&self.answers).remove(id) {
            Some(tx) => tx.send((status, body)).map_err(|_| Error::Closed),
            None => Err(Error::Protocol(format!(
                "no command {id:?} waits for an answer"
            ))),
        }
    }

    /// Moves the connection to a new UDP socket (a new local port): QUIC connection migration.
    pub fn rebind(&self) -> Result<SocketAddr, Error> {
        let old = self
            .endpoint
            .local_addr()
            .map_err(|e| Error::Connection(e.to_string()))?;
        let socket = std::net::UdpSocket::bind(SocketAddr::new(old.ip(), 0))
            .map_err(|e| Error::Connection(e.to_string()))?;
        let new = socket
            .local_addr()
            .map_err(|e| Error::Connection(e.to_string()))?;
        self.endpoint
            .rebind(socket)
            .map_err(|e| Error::Connection(e.to_string()))?;
        Ok(new)
    }

    /// The local UDP address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    /// Closes the connection (code 0) and waits briefly for the gateway to hear it.
    pub async fn close(&self) {
        self.conn.close(VarInt::from_u32(0), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

/// The TLS and QUIC handshake alone (no `auth` request yet): the endpoint and the connection,
/// for programs (and tests) that speak the stream protocol themselves.
pub async fn handshake(
    host: &str,
    port: u16,
    keep_alive: Duration,
    q: &QuicOptions,
) -> Result<(quinn::Endpoint, quinn::Connection), Error> {
    let addr: SocketAddr = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| Error::Connection(format!("{host}: {e}")))?
        .next()
        .ok_or_else(|| Error::Connection(format!("{host}: no address")))?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls(q)?)
        .map_err(|e| Error::Connection(e.to_string()))?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(keep_alive.min(Duration::from_secs(10))))
        .max_idle_timeout(quinn::IdleTimeout::try_from(Duration::from_secs(30)).ok())
        .max_concurrent_bidi_streams(VarInt::from_u32(16))
        .max_concurrent_uni_streams(VarInt::from_u32(0));
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    let bind: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let endpoint = quinn::Endpoint::client(bind).map_err(|e| Error::Connection(e.to_string()))?;
    let name = q.server_name.clone().unwrap_or_else(|| host.to_owned());
    let conn = endpoint
        .connect_with(config, addr, &name)
        .map_err(|e| Error::Connection(e.to_string()))?
        .await
        .map_err(|e| connection_error(&e))?;
    Ok((endpoint, conn))
}

/// A header frame: the JSON's length as a big-endian u32, then the JSON.
pub fn encode_frame(header: &serde_json::Value) -> Vec<u8> {
    frame(header)
}

/// Sends a header and a body on a new stream and reads the reply.
async fn exchange(conn: &quinn::Connection, header: &[u8], body: Bytes) -> Result<Reply, Error> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| connection_error(&e))?;
    let failed = |e: String| match conn.close_reason() {
        Some(c) => connection_error(&c),
        None => Error::Protocol(e),
    };
    send.write_all(header)
        .await
        .map_err(|e| failed(e.to_string()))?;
    if !body.is_empty() {
        send.write_chunk(body)
            .await
            .map_err(|e| failed(e.to_string()))?;
    }
    let _ = send.finish();
    let json = read_frame(&mut recv).await.map_err(failed)?;
    let h: ReplyHeader =
        serde_json::from_slice(&json).map_err(|e| Error::Protocol(format!("reply header: {e}")))?;
    let body = recv
        .read_to_end(MAX_BODY)
        .await
        .map_err(|e| failed(e.to_string()))?;
    Ok(Reply {
        status: h.status,
        etag: h.meta.get("etag").cloned(),
        offer: h.meta.get("x-edgecar-offer").cloned(),
        cache: h.meta.get("x-edgecar-cache").cloned(),
        body: Bytes::from(body),
    })
}

/// Takes the streams the gateway opens until the connection ends.
async fn accept(conn: quinn::Connection, answers: Answers, inbound: Inbound) {
    let inbound = Arc::new(inbound);
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            s = conn.accept_bi() => match s {
                Ok((send, recv)) => {
                    tasks.spawn(pushed(send, recv, answers.clone(), inbound.clone()));
                }
                Err(_) => return,
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

/// One stream the gateway opened: a command (answered by the program) or an event
/// (acknowledged once handed to the program).
async fn pushed(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    answers: Answers,
    inbound: Arc<Inbound>,
) {
    let Ok(json) = read_frame(&mut recv).await else {
        return;
    };
    let Ok(body) = recv.read_to_end(MAX_BODY).await else {
        return;
    };
    let (status, answer) = match serde_json::from_slice::<Push>(&json) {
        Ok(Push::Command { id, method }) => {
            let (tx, rx) = oneshot::channel();
            lock(&answers).insert(id.clone(), tx);
            let cmd = Command {
                method: method.trim_start_matches('/').to_owned(),
                rid: id.clone(),
                body: Bytes::from(body),
            };
            if inbound.commands.try_send(cmd).is_err() {
                lock(&answers).remove(&id);
                (503, Bytes::from_static(b"busy"))
            } else {
                match tokio::time::timeout(ANSWER_WAIT, rx).await {
                    Ok(Ok(a)) => a,
                    _ => {
                        lock(&answers).remove(&id);
                        (
                            504,
                            Bytes::from_static(b"the device program did not answer"),
                        )
                    }
                }
            }
        }
        Ok(Push::Event { pubsub, topic }) => {
            if !inbound.want_events.load(Ordering::Acquire) {
                (503, Bytes::new())
            } else {
                let ev = Event {
                    pubsub,
                    topic,
                    body: Bytes::from(body),
                };
                match inbound.events.send(ev).await {
                    Ok(()) => (200, Bytes::new()),
                    Err(_) => (503, Bytes::new()),
                }
            }
        }
        Err(_) => (400, Bytes::from_static(b"unknown push")),
    };
    let header = ReplyHeader {
        status,
        ..Default::default()
    };
    let _ = send.write_all(&frame(&header)).await;
    if !answer.is_empty() {
        let _ = send.write_chunk(answer).await;
    }
    let _ = send.finish();
    let _ = send.stopped().await;
}
