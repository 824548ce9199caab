//! MQTT packets on the wire: rumqttc's `mqttbytes` codecs (3.1.1 and 5) behind one
//! version-neutral vocabulary for the session.
//!
//! Framing is checked here before any codec runs, so a packet larger than the limit is refused
//! from its fixed header, before its body is read; so are the reserved bits the codecs let
//! through (fixed-header flags, SUBSCRIBE option bits), which make a packet malformed. The protocol version is taken from the
//! CONNECT's protocol level and fixed for the connection. Two quirks of the codecs are handled
//! here: an MQTT 5 DISCONNECT with no body (valid, and what most clients send) and reason codes
//! that only exist in one version.

use bytes::{Buf, Bytes, BytesMut};
use rumqttc::mqttbytes::{self as mb4, v4};
use rumqttc::v5::mqttbytes::{self as mb5, v5};

/// The protocol version of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.
    V5,
}

impl Version {
    /// For logs and presence: `mqtt/3.1.1` or `mqtt/5`.
    pub fn label(self) -> &'static str {
        match self {
            Version::V311 => "mqtt/3.1.1",
            Version::V5 => "mqtt/5",
        }
    }
}

/// MQTT 5 publish properties edgecar reads or writes (all absent in 3.1.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// Where the requester wants the reply.
    pub response_topic: Option<String>,
    /// Opaque bytes the reply must carry back.
    pub correlation_data: Option<Bytes>,
    /// MIME type of the payload.
    pub content_type: Option<String>,
    /// Name/value pairs.
    pub user: Vec<(String, String)>,
    /// A topic alias (edgecar grants none, so a client using one is in error).
    pub topic_alias: Option<u16>,
}

impl Properties {
    /// The first user property named `name`.
    pub fn user(&self, name: &str) -> Option<&str> {
        self.user
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An application message: a publish's content, or a will.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic name.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// 0, 1 or 2.
    pub qos: u8,
    /// The retain flag (edgecar keeps no retained messages).
    pub retain: bool,
    /// MQTT 5 properties.
    pub props: Properties,
}

impl Message {
    /// A QoS 1 message without properties.
    pub fn new(topic: String, payload: Bytes) -> Self {
        Message {
            topic,
            payload,
            qos: 1,
            retain: false,
            props: Properties::default(),
        }
    }
}

/// A CONNECT, whichever version sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol version.
    pub version: Version,
    /// Client identifier (may be empty).
    pub client_id: String,
    /// Requested keep-alive in seconds (0: none).
    pub keep_alive: u16,
    /// Clean session (3.1.1) / clean start (5).
    pub clean_start: bool,
    /// MQTT 5 session expiry interval, seconds.
    pub session_expiry: Option<u32>,
    /// MQTT 5 receive maximum: QoS 1 messages the client accepts unacknowledged.
    pub receive_maximum: Option<u16>,
    /// MQTT 5 maximum packet size the client accepts.
    pub max_packet_size: Option<u32>,
    /// User name, when given.
    pub username: Option<String>,
    /// Password, when given (never logged).
    pub password: Option<String>,
    /// The will message.
    pub will: Option<Message>,
    /// MQTT 5 enhanced authentication method (not supported).
    pub auth_method: Option<String>,
}

/// A packet from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// CONNECT.
    Connect(Box<Connect>),
    /// PUBLISH.
    Publish {
        /// Packet id (0 for QoS 0).
        pkid: u16,
        /// The message.
        msg: Message,
    },
    /// PUBACK for a QoS 1 message edgecar sent.
    PubAck {
        /// Packet id.
        pkid: u16,
    },
    /// PUBREC, PUBREL or PUBCOMP: QoS 2 flows, which edgecar does not take part in.
    Qos2Flow,
    /// SUBSCRIBE.
    Subscribe {
        /// Packet id.
        pkid: u16,
        /// Filters with their requested QoS.
        filters: Vec<(String, u8)>,
    },
    /// UNSUBSCRIBE.
    Unsubscribe {
        /// Packet id.
        pkid: u16,
        /// Filters.
        filters: Vec<String>,
    },
    /// PINGREQ.
    PingReq,
    /// DISCONNECT.
    Disconnect {
        /// MQTT 5 reason code (0 in 3.1.1).
        reason: u8,
    },
    /// A packet only a server sends (CONNACK, SUBACK, ...) or MQTT 5 AUTH.
    Unexpected(&'static str),
}

/// CONNACK outcomes, named once for both versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectCode {
    /// Accepted.
    Accepted,
    /// The protocol level is not 4 or 5.
    UnsupportedVersion,
    /// The client id is not acceptable.
    BadClientId,
    /// Unknown device or wrong password (one answer for both, so ids cannot be probed).
    NotAuthorized,
    /// Too many connections in total.
    ServerBusy,
    /// Too many connections for this device.
    QuotaExceeded,
    /// The CONNECT is malformed or breaks the protocol.
    ProtocolError,
    /// MQTT 5 enhanced authentication was asked for.
    BadAuthenticationMethod,
}

/// SUBACK per-filter outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubCode {
    /// Granted at this QoS.
    Granted(u8),
    /// Outside the device's tree.
    NotAuthorized,
    /// Not a valid filter.
    FilterInvalid,
    /// `$share/...`.
    SharedNotSupported,
    /// The session holds too many subscriptions.
    QuotaExceeded,
}

/// PUBACK outcomes (3.1.1 carries none: only success exists there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PubAckCode {
    /// Accepted.
    Success,
    /// The topic is outside the device's tree.
    NotAuthorized,
    /// Not stored: a queue or the disk is full (MQTT 5 reason 0x97).
    QuotaExceeded,
    /// Not stored for another reason, e.g. a disk error (MQTT 5 reason 0x80).
    UnspecifiedError,
}

/// Why edgecar ends a connection (sent as an MQTT 5 DISCONNECT; 3.1.1 just closes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectCode {
    /// A packet could not be decoded.
    MalformedPacket,
    /// A packet broke the protocol (second CONNECT, server-only packet, ...).
    ProtocolError,
    /// A publish outside the device's tree (and no PUBACK could say so).
    NotAuthorized,
    /// Edgecar is stopping.
    ServerShuttingDown,
    /// Nothing heard for 1.5x the keep-alive.
    KeepAliveTimeout,
    /// Another connection took over this client id, or the device was removed.
    SessionTakenOver,
    /// The device's credentials were removed or replaced.
    AdministrativeAction,
    /// A topic alias was used (none are granted).
    TopicAliasInvalid,
    /// A topic name is not valid.
    TopicNameInvalid,
    /// A packet over the size limit.
    PacketTooLarge,
    /// A QoS 2 publish.
    QoSNotSupported,
    /// A telemetry reading could not be stored, and MQTT 3.1.1 has no PUBACK that can say so:
    /// the connection closes unacknowledged and the device sends the reading again.
    NotStored,
}

impl DisconnectCode {
    /// For logs and presence.
    pub fn describe(self) -> &'static str {
        match self {
            DisconnectCode::MalformedPacket => "malformed packet",
            DisconnectCode::ProtocolError => "protocol error",
            DisconnectCode::NotAuthorized => "publish outside its topic tree",
            DisconnectCode::ServerShuttingDown => "edgecar shutting down",
            DisconnectCode::KeepAliveTimeout => "keep-alive timeout",
            DisconnectCode::SessionTakenOver => "session taken over",
            DisconnectCode::AdministrativeAction => "credentials removed or replaced",
            DisconnectCode::TopicAliasInvalid => "topic alias used",
            DisconnectCode::TopicNameInvalid => "invalid topic name",
            DisconnectCode::PacketTooLarge => "packet too large",
            DisconnectCode::QoSNotSupported => "QoS 2 publish",
            DisconnectCode::NotStored => "a reading could not be stored",
        }
    }
}

/// What edgecar tells a client it may do (MQTT 5 CONNACK properties).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    /// Keep-alive edgecar holds the client to, when it differs from what it asked.
    pub server_keep_alive: Option<u16>,
    /// Client id edgecar chose for a client that sent none.
    pub assigned_client_id: Option<String>,
    /// Requests in progress per connection.
    pub receive_maximum: u16,
    /// Largest packet accepted.
    pub max_packet_size: u32,
}

/// A packet to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// CONNACK.
    ConnAck {
        /// Whether a stored session was resumed.
        session_present: bool,
        /// Outcome.
        code: ConnectCode,
        /// MQTT 5 properties for an accepted connection.
        granted: Option<Granted>,
        /// MQTT 5 reason string.
        reason: Option<String>,
    },
    /// PUBLISH.
    Publish {
        /// Packet id (0 for QoS 0).
        pkid: u16,
        /// The message.
        msg: Message,
    },
    /// PUBACK.
    PubAck {
        /// Packet id.
        pkid: u16,
        /// Outcome (MQTT 5).
        code: PubAckCode,
        /// MQTT 5 reason string.
        reason: Option<String>,
    },
    /// SUBACK.
    SubAck {
        /// Packet id.
        pkid: u16,
        /// One code per filter, in order.
        codes: Vec<SubCode>,
    },
    /// UNSUBACK.
    UnsubAck {
        /// Packet id.
        pkid: u16,
        /// Per filter: whether a subscription existed (MQTT 5 reason codes).
        existed: Vec<bool>,
    },
    /// PINGRESP.
    PingResp,
    /// DISCONNECT (MQTT 5 only; for 3.1.1 nothing is written).
    Disconnect {
        /// Why.
        code: DisconnectCode,
    },
}

/// Why bytes from a client are not a packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Larger than the limit (known from the fixed header).
    #[error("packet of {size} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Size the packet declared.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Not a valid packet.
    #[error("malformed packet: {0}")]
    Malformed(String),
    /// The first packet is not a CONNECT.
    #[error("the first packet must be CONNECT")]
    NotConnect,
    /// A CONNECT for a protocol level other than 4 or 5.
    #[error("unsupported protocol level {0}")]
    UnsupportedVersion(u8),
}

/// Why a packet could not be encoded (a bug, or a message too large for the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode packet: {0}")]
pub struct EncodeError(String);

/// Fixed header: (header length, remaining length), or `None` if more bytes are needed.
fn fixed_header(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((2 + i, len)));
        }
    }
    Err(DecodeError::Malformed(
        "remaining length longer than 4 bytes".into(),
    ))
}

/// The protocol level of a complete CONNECT frame.
fn connect_level(frame: &[u8], header_len: usize) -> Result<u8, DecodeError> {
    let mut b = frame.get(header_len..).unwrap_or_default();
    if b.len() < 2 {
        return Err(DecodeError::Malformed("CONNECT too short".into()));
    }
    let name_len = usize::from(b.get_u16());
    let level = b
        .get(name_len)
        .copied()
        .ok_or_else(|| DecodeError::Malformed("CONNECT too short".into()))?;
    let name = &b[..name_len];
    match name {
        b"MQTT" => Ok(level),
        b"MQIsdp" => Err(DecodeError::UnsupportedVersion(level)),
        _ => Err(DecodeError::Malformed("protocol name is not MQTT".into())),
    }
}

/// Takes the next packet off `buf`. `version` is `None` until the CONNECT has been read. Returns
/// `Ok(None)` when `buf` does not hold a whole packet yet.
pub fn decode(
    buf: &mut BytesMut,
    version: Option<Version>,
    max: usize,
) -> Result<Option<(Incoming, Version)>, DecodeError> {
    let Some((header_len, remaining)) = fixed_header(buf)? else {
        return Ok(None);
    };
    let size = header_len + remaining;
    if size > max {
        return Err(DecodeError::TooLarge { size, max });
    }
    if buf.len() < size {
        return Ok(None);
    }
    let packet_type = buf[0] >> 4;
    let version = match version {
        Some(v) => v,
        None => {
            if packet_type != 1 {
                return Err(DecodeError::NotConnect);
            }
            match connect_level(&buf[..size], header_len)? {
                4 => Version::V311,
                5 => Version::V5,
                other => return Err(DecodeError::UnsupportedVersion(other)),
            }
        }
    };
    check_reserved(buf[0], &buf[header_len..size], version)?;
    // The codecs size-check against the remaining length; ours is already done on the whole.
    let limit = size.max(16);
    let incoming = match version {
        Version::V311 => {
            let p = v4::Packet::read(buf, limit).map_err(malformed4)?;
            from_v4(p)
        }
        Version::V5 => {
            if packet_type == 14 && remaining == 0 {
                // DISCONNECT without a body means "normal disconnection" in MQTT 5.
                buf.advance(size);
                Incoming::Disconnect { reason: 0 }
            } else {
                let limit = u32::try_from(limit).unwrap_or(u32::MAX);
                let p = v5::Packet::read(buf, Some(limit)).map_err(malformed5)?;
                from_v5(p)?
            }
        }
    };
    Ok(Some((incoming, version)))
}

/// The reserved bits the codecs do not check, which the spec says make a packet malformed (the
/// connection is closed): the fixed-header flags of every packet but PUBLISH (`0b0010` for PUBREL,
/// SUBSCRIBE and UNSUBSCRIBE, 0 for the rest; 3.1.1 §2.2.2, 5 §2.1.3), and each SUBSCRIBE
/// subscription's options byte (3.1.1 §3.8.3.1: only the QoS bits; 5 §3.8.3.1: bits 6 and 7 clear,
/// retain handling 0–2). QoS 3 is malformed in both. A body too short to walk is left to the codec,
/// which refuses it.
fn check_reserved(first: u8, body: &[u8], version: Version) -> Result<(), DecodeError> {
    let (kind, flags) = (first >> 4, first & 0x0f);
    let want = match kind {
        3 => return Ok(()),
        6 | 8 | 10 => 0b0010,
        _ => 0,
    };
    if flags != want {
        return Err(DecodeError::Malformed(format!(
            "packet type {kind} with fixed-header flags {flags:#06b} (must be {want:#06b})"
        )));
    }
    if kind != 8 {
        return Ok(());
    }
    let mut rest = body.get(2..).unwrap_or_default();
    if version == Version::V5 {
        // Properties: a variable byte integer length, then that many bytes.
        let mut len = 0usize;
        let mut used = 0;
        loop {
            let Some(&b) = rest.get(used) else {
                return Ok(());
            };
            len |= usize::from(b & 0x7f) << (7 * used);
            used += 1;
            if b & 0x80 == 0 || used == 4 {
                break;
            }
        }
        rest = rest.get(used + len..).unwrap_or_default();
    }
    while rest.len() >= 2 {
        let filter_len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let Some(&options) = rest.get(2 + filter_len) else {
            return Ok(());
        };
        let reserved = match version {
            Version::V311 => options & 0b1111_1100,
            Version::V5 => options & 0b1100_0000,
        };
        let retain_handling = (options >> 4) & 0b11;
        if reserved != 0 || options & 0b11 == 3 || (version == Version::V5 && retain_handling == 3)
        {
            return Err(DecodeError::Malformed(format!(
                "SUBSCRIBE options {options:#010b} set reserved bits"
            )));
        }
        rest = &rest[3 + filter_len..];
    }
    Ok(())
}

fn malformed4(e: mb4::Error) -> DecodeError {
    DecodeError::Malformed(e.to_string())
}

fn malformed5(e: mb5::Error) -> DecodeError {
    DecodeError::Malformed(e.to_string())
}

fn from_v4(p: v4::Packet) -> Incoming {
    match p {
        v4::Packet::Connect(c) => {
            let (username, password) = match c.login {
                Some(l) => (Some(l.username), Some(l.password)),
                None => (None, None),
            };
            Incoming::Connect(Box::new(Connect {
                version: Version::V311,
                client_id: c.client_id,
                keep_alive: c.keep_alive,
                clean_start: c.clean_session,
                session_expiry: None,
                receive_maximum: None,
                max_packet_size: None,
                username: username.filter(|u| !u.is_empty()),
                password: password.filter(|p| !p.is_empty()),
                will: c.last_will.map(|w| Message {
                    topic: w.topic,
                    payload: w.message,
                    qos: w.qos as u8,
                    retain: w.retain,
                    props: Properties::default(),
                }),
                auth_method: None,
            }))
        }
        v4::Packet::Publish(p) => Incoming::Publish {
            pkid: p.pkid,
            msg: Message {
                topic: p.topic,
                payload: p.payload,
                qos: p.qos as u8,
                retain: p.retain,
                props: Properties::default(),
            },
        },
        v4::Packet::PubAck(a) => Incoming::PubAck { pkid: a.pkid },
        v4::Packet::PubRec(_) | v4::Packet::PubRel(_) | v4::Packet::PubComp(_) => {
            Incoming::Qos2Flow
        }
        v4::Packet::Subscribe(s) => Incoming::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| (f.path, f.qos as u8))
                .collect(),
        },
        v4::Packet::Unsubscribe(u) => Incoming::Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
        },
        v4::Packet::PingReq => Incoming::PingReq,
        v4::Packet::Disconnect => Incoming::Disconnect { reason: 0 },
        v4::Packet::ConnAck(_) => Incoming::Unexpected("CONNACK"),
        v4::Packet::SubAck(_) => Incoming::Unexpected("SUBACK"),
        v4::Packet::UnsubAck(_) => Incoming::Unexpected("UNSUBACK"),
        v4::Packet::PingResp => Incoming::Unexpected("PINGRESP"),
    }
}

fn props5(p: Option<v5::PublishProperties>) -> Properties {
    let Some(p) = p else {
        return Properties::default();
    };
    Properties {
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        content_type: p.content_type,
        user: p.user_properties,
        topic_alias: p.topic_alias,
    }
}

fn topic5(b: Bytes) -> Result<String, DecodeError> {
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Malformed("topic is not UTF-8".into()))
}

fn from_v5(p: v5::Packet) -> Result<Incoming, DecodeError> {
    Ok(match p {
        v5::Packet::Connect(c, will, login) => {
            let props = connect_props(c.properties);
            let (username, password) = match login {
                Some(l) => (Some(l.username), Some(l.password)),
                None => (None, None),
            };
            let will = match will {
                Some(w) => {
                    let wp = w.properties;
                    Some(Message {
                        topic: topic5(w.topic)?,
                        payload: w.message,
                        qos: w.qos as u8,
                        retain: w.retain,
                        props: Properties {
                            response_topic: wp.as_ref().and_then(|p| p.response_topic.clone()),
                            correlation_data: wp.as_ref().and_then(|p| p.correlation_data.clone()),
                            content_type: wp.as_ref().and_then(|p| p.content_type.clone()),
                            user: wp.map(|p| p.user_properties).unwrap_or_default(),
                            topic_alias: None,
                        },
                    })
                }
                None => None,
            };
            Incoming::Connect(Box::new(Connect {
                version: Version::V5,
                client_id: c.client_id,
                keep_alive: c.keep_alive,
                clean_start: c.clean_start,
                session_expiry: props.session_expiry,
                receive_maximum: props.receive_maximum,
                max_packet_size: props.max_packet_size,
                username: username.filter(|u| !u.is_empty()),
                password: password.filter(|p| !p.is_empty()),
                will,
                auth_method: props.auth_method,
            }))
        }
        v5::Packet::Publish(p) => Incoming::Publish {
            pkid: p.pkid,
            msg: Message {
                topic: topic5(p.topic)?,
                payload: p.payload,
                qos: p.qos as u8,
                retain: p.retain,
                props: props5(p.properties),
            },
        },
        v5::Packet::PubAck(a) => Incoming::PubAck { pkid: a.pkid },
        v5::Packet::PubRec(_) | v5::Packet::PubRel(_) | v5::Packet::PubComp(_) => {
            Incoming::Qos2Flow
        }
        v5::Packet::Subscribe(s) => Incoming::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| (f.path, f.qos as u8))
                .collect(),
        },
        v5::Packet::Unsubscribe(u) => Incoming::Unsubscribe {
            pkid: u.pkid,
            filters: u.filters,
        },
        v5::Packet::PingReq(_) => Incoming::PingReq,
        v5::Packet::Disconnect(d) => Incoming::Disconnect {
            reason: d.reason_code as u8,
        },
        v5::Packet::Auth(_) => Incoming::Unexpected("AUTH"),
        v5::Packet::ConnAck(_) => Incoming::Unexpected("CONNACK"),
        v5::Packet::SubAck(_) => Incoming::Unexpected("SUBACK"),
        v5::Packet::UnsubAck(_) => Incoming::Unexpected("UNSUBACK"),
        v5::Packet::PingResp(_) => Incoming::Unexpected("PINGRESP"),
    })
}

/// The CONNECT properties edgecar uses.
struct ConnectProps {
    session_expiry: Option<u32>,
    receive_maximum: Option<u16>,
    max_packet_size: Option<u32>,
    auth_method: Option<String>,
}

fn connect_props(p: Option<v5::ConnectProperties>) -> ConnectProps {
    match p {
        Some(p) => ConnectProps {
            session_expiry: p.session_expiry_interval,
            receive_maximum: p.receive_maximum,
            max_packet_size: p.max_packet_size,
            auth_method: p.authentication_method,
        },
        None => ConnectProps {
            session_expiry: None,
            receive_maximum: None,
            max_packet_size: None,
            auth_method: None,
        },
    }
}

fn qos4(q: u8) -> mb4::QoS {
    match q {
        0 => mb4::QoS::AtMostOnce,
        _ => mb4::QoS::AtLeastOnce,
    }
}

fn qos5(q: u8) -> mb5::QoS {
    match q {
        0 => mb5::QoS::AtMostOnce,
        _ => mb5::QoS::AtLeastOnce,
    }
}

/// Longest reason string sent; MQTT strings are length-prefixed with 16 bits.
const MAX_REASON: usize = 512;

fn reason_text(r: Option<String>) -> Option<String> {
    r.map(|mut s| {
        if s.len() > MAX_REASON {
            let mut cut = MAX_REASON;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
        }
        s
    })
}

/// Appends `out` to `buf` in `version`'s encoding. `Disconnect` writes nothing for 3.1.1.
pub fn encode(out: Outgoing, version: Version, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let err4 = |e: mb4::Error| EncodeError(e.to_string());
    let err5 = |e: mb5::Error| EncodeError(e.to_string());
    match version {
        Version::V311 => {
            let p = match out {
                Outgoing::ConnAck {
                    session_present,
                    code,
                    ..
                } => {
                    let code = match code {
                        ConnectCode::Accepted => v4::ConnectReturnCode::Success,
                        ConnectCode::UnsupportedVersion => {
                            v4::ConnectReturnCode::RefusedProtocolVersion
                        }
                        ConnectCode::BadClientId => v4::ConnectReturnCode::BadClientId,
                        ConnectCode::NotAuthorized | ConnectCode::BadAuthenticationMethod => {
                            v4::ConnectReturnCode::NotAuthorized
                        }
                        ConnectCode::ServerBusy
                        | ConnectCode::QuotaExceeded
                        | ConnectCode::ProtocolError => v4::ConnectReturnCode::ServiceUnavailable,
                    };
                    v4::Packet::ConnAck(v4::ConnAck::new(code, session_present))
                }
                Outgoing::Publish { pkid, msg } => v4::Packet::Publish(v4::Publish {
                    dup: false,
                    qos: qos4(msg.qos),
                    retain: false,
                    topic: msg.topic,
                    pkid,
                    payload: msg.payload,
                }),
                Outgoing::PubAck { pkid, .. } => v4::Packet::PubAck(v4::PubAck::new(pkid)),
                Outgoing::SubAck { pkid, codes } => v4::Packet::SubAck(v4::SubAck::new(
                    pkid,
                    codes
                        .into_iter()
                        .map(|c| match c {
                            SubCode::Granted(q) => v4::SubscribeReasonCode::Success(qos4(q)),
                            _ => v4::SubscribeReasonCode::Failure,
                        })
                        .collect(),
                )),
                Outgoing::UnsubAck { pkid, .. } => v4::Packet::UnsubAck(v4::UnsubAck::new(pkid)),
                Outgoing::PingResp => v4::Packet::PingResp,
                Outgoing::Disconnect { .. } => return Ok(()),
            };
            p.write(buf, usize::MAX).map(|_| ()).map_err(err4)
        }
        Version::V5 => {
            let p = match out {
                Outgoing::ConnAck {
                    session_present,
                    code,
                    granted,
                    reason,
                } => {
                    let code = match code {
                        ConnectCode::Accepted => v5::ConnectReturnCode::Success,
                        ConnectCode::UnsupportedVersion => {
                            v5::ConnectReturnCode::UnsupportedProtocolVersion
                        }
                        ConnectCode::BadClientId => v5::ConnectReturnCode::ClientIdentifierNotValid,
                        ConnectCode::NotAuthorized => v5::ConnectReturnCode::NotAuthorized,
                        ConnectCode::ServerBusy => v5::ConnectReturnCode::ServerBusy,
                        ConnectCode::QuotaExceeded => v5::ConnectReturnCode::QuotaExceeded,
                        ConnectCode::ProtocolError => v5::ConnectReturnCode::ProtocolError,
                        ConnectCode::BadAuthenticationMethod => {
                            v5::ConnectReturnCode::BadAuthenticationMethod
                        }
                    };
                    let g = granted.as_ref();
                    let properties = v5::ConnAckProperties {
                        session_expiry_interval: None,
                        receive_max: g.map(|g| g.receive_maximum),
                        // QoS 2 is not offered: clients must not publish with it.
                        max_qos: g.map(|_| 1),
                        retain_available: g.map(|_| 0),
                        max_packet_size: g.map(|g| g.max_packet_size),
                        assigned_client_identifier: g.and_then(|g| g.assigned_client_id.clone()),
                        topic_alias_max: None,
                        reason_string: reason_text(reason),
                        user_properties: Vec::new(),
                        wildcard_subscription_available: None,
                        subscription_identifiers_available: g.map(|_| 0),
                        shared_subscription_available: g.map(|_| 0),
                        server_keep_alive: g.and_then(|g| g.server_keep_alive),
                        response_information: None,
                        server_reference: None,
                        authentication_method: None,
                        authentication_data: None,
                    };
                    v5::Packet::ConnAck(v5::ConnAck {
                        session_present,
                        code,
                        properties: Some(properties),
                    })
                }
                Outgoing::Publish { pkid, msg } => {
                    let pr = msg.props;
                    let any = pr.response_topic.is_some()
                        || pr.correlation_data.is_some()
                        || pr.content_type.is_some()
                        || !pr.user.is_empty();
                    let properties = any.then(|| v5::PublishProperties {
                        response_topic: pr.response_topic,
                        correlation_data: pr.correlation_data,
                        content_type: pr.content_type,
                        user_properties: pr.user,
                        ..Default::default()
                    });
                    v5::Packet::Publish(v5::Publish {
                        dup: false,
                        qos: qos5(msg.qos),
                        retain: false,
                        topic: Bytes::from(msg.topic.into_bytes()),
                        pkid,
                        payload: msg.payload,
                        properties,
                    })
                }
                Outgoing::PubAck { pkid, code, reason } => {
                    let reason_string = reason_text(reason);
                    v5::Packet::PubAck(v5::PubAck {
                        pkid,
                        reason: match code {
                            PubAckCode::Success => v5::PubAckReason::Success,
                            PubAckCode::NotAuthorized => v5::PubAckReason::NotAuthorized,
                            PubAckCode::QuotaExceeded => v5::PubAckReason::QuotaExceeded,
                            PubAckCode::UnspecifiedError => v5::PubAckReason::UnspecifiedError,
                        },
                        properties: reason_string.map(|r| v5::PubAckProperties {
                            reason_string: Some(r),
                            user_properties: Vec::new(),
                        }),
                    })
                }
                Outgoing::SubAck { pkid, codes } => v5::Packet::SubAck(v5::SubAck {
                    pkid,
                    return_codes: codes
                        .into_iter()
                        .map(|c| match c {
                            SubCode::Granted(q) => v5::SubscribeReasonCode::Success(qos5(q)),
                            SubCode::NotAuthorized => v5::SubscribeReasonCode::NotAuthorized,
                            SubCode::FilterInvalid => v5::SubscribeReasonCode::TopicFilterInvalid,
                            SubCode::SharedNotSupported => {
                                v5::SubscribeReasonCode::SharedSubscriptionsNotSupported
                            }
                            SubCode::QuotaExceeded => v5::SubscribeReasonCode::QuotaExceeded,
                        })
                        .collect(),
                    properties: None,
                }),
                Outgoing::UnsubAck { pkid, existed } => v5::Packet::UnsubAck(v5::UnsubAck {
                    pkid,
                    reasons: existed
                        .into_iter()
                        .map(|e| {
                            if e {
                                v5::UnsubAckReason::Success
                            } else {
                                v5::UnsubAckReason::NoSubscriptionExisted
                            }
                        })
                        .collect(),
                    properties: None,
                }),
                Outgoing::PingResp => v5::Packet::PingResp(v5::PingResp),
                Outgoing::Disconnect { code } => {
                    use v5::DisconnectReasonCode as R;
                    v5::Packet::Disconnect(v5::Disconnect::new(match code {
                        DisconnectCode::MalformedPacket => R::MalformedPacket,
                        DisconnectCode::ProtocolError => R::ProtocolError,
                        DisconnectCode::NotAuthorized => R::NotAuthorized,
                        DisconnectCode::ServerShuttingDown => R::ServerShuttingDown,
                        DisconnectCode::KeepAliveTimeout => R::KeepAliveTimeout,
                        DisconnectCode::SessionTakenOver => R::SessionTakenOver,
                        DisconnectCode::AdministrativeAction => R::AdministrativeAction,
                        DisconnectCode::TopicAliasInvalid => R::TopicAliasInvalid,
                        DisconnectCode::TopicNameInvalid => R::TopicNameInvalid,
                        DisconnectCode::PacketTooLarge => R::PacketTooLarge,
                        DisconnectCode::QoSNotSupported => R::QoSNotSupported,
                        DisconnectCode::NotStored => R::UnspecifiedError,
                    }))
                }
            };
            p.write(buf, None).map(|_| ()).map_err(err5)
        }
    }
}

/// Size of `msg` as a PUBLISH, to respect a client's maximum packet size before sending.
pub fn publish_size(msg: &Message, version: Version) -> usize {
    let props = match version {
        Version::V311 => 0,
        Version::V5 => {
            let p = &msg.props;
            1 + p.response_topic.as_ref().map_or(0, |t| 3 + t.len())
                + p.correlation_data.as_ref().map_or(0, |c| 3 + c.len())
                + p.content_type.as_ref().map_or(0, |c| 3 + c.len())
                + p.user
                    .iter()
                    .map(|(k, v)| 5 + k.len() + v.len())
                    .sum::<usize>()
                + 4
        }
    };
    // Fixed header (at most 5), topic (2 + len), packet id (2), properties, payload.
    5 + 2 + msg.topic.len() + 2 + props + msg.payload.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4_bytes(p: v4::Packet) -> BytesMut {
        let mut b = BytesMut::new();
        p.write(&mut b, usize::MAX).unwrap();
        b
    }

    fn v5_bytes(p: v5::Packet) -> BytesMut {
        let mut b = BytesMut::new();
        p.write(&mut b, None).unwrap();
        b
    }

    #[test]
    fn connect_picks_the_version_and_reads_the_login() {
        let mut c = v4::Connect::new("c1");
        c.set_login("dev1", "pw");
        let mut b = v4_bytes(v4::Packet::Connect(c));
        let (p, v) = decode(&mut b, None, 1024).unwrap().unwrap();
        assert_eq!(v, Version::V311);
        let Incoming::Connect(c) = p else { panic!() };
        assert_eq!(
            (c.username.as_deref(), c.password.as_deref()),
            (Some("dev1"), Some("pw"))
        );
        assert!(b.is_empty());

        let c5 = v5::Connect {
            keep_alive: 30,
            client_id: "c2".into(),
            clean_start: true,
            properties: None,
        };
        let mut b = v5_bytes(v5::Packet::Connect(
            c5,
            None,
            Some(v5::Login::new("dev1", "pw")),
        ));
        let (p, v) = decode(&mut b, None, 1024).unwrap().unwrap();
        assert_eq!(v, Version::V5);
        assert!(matches!(p, Incoming::Connect(c) if c.keep_alive == 30));
    }

    #[test]
    fn partial_oversized_and_garbage_input() {
        let mut c = v4::Connect::new("c1");
        c.set_login("dev1", "pw");
        let full = v4_bytes(v4::Packet::Connect(c));
        let mut part = BytesMut::from(&full[..full.len() - 1]);
        assert_eq!(decode(&mut part, None, 1024), Ok(None), "waits for more");
        // A PUBLISH declaring 1 MiB is refused from its header alone.
        let mut big = BytesMut::from(&[0x30u8, 0x80, 0x80, 0x40][..]);
        assert!(matches!(
            decode(&mut big, Some(Version::V311), 1024),
            Err(DecodeError::TooLarge { .. })
        ));
        let mut bad_len = BytesMut::from(&[0x30u8, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
        assert!(matches!(
            decode(&mut bad_len, Some(Version::V311), 1 << 30),
            Err(DecodeError::Malformed(_))
        ));
        let mut not_connect = BytesMut::from(&[0xc0u8, 0x00][..]);
        assert_eq!(
            decode(&mut not_connect, None, 1024),
            Err(DecodeError::NotConnect)
        );
        let mut mqtt31 = BytesMut::from(
            &[
                0x10u8, 14, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 2, 0, 10, 0, 0,
            ][..],
        );
        assert_eq!(
            decode(&mut mqtt31, None, 1024),
            Err(DecodeError::UnsupportedVersion(3))
        );
        // A SUBSCRIBE whose filter length runs past the packet.
        let mut sub = BytesMut::from(&[0x82u8, 5, 0, 1, 0, 9, b'a'][..]);
        assert!(matches!(
            decode(&mut sub, Some(Version::V311), 1024),
            Err(DecodeError::Malformed(_))
        ));
        // Random bytes never panic.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut b = BytesMut::new();
            for _ in 0..(seed % 40) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                b.extend_from_slice(&[(seed & 0xff) as u8]);
            }
            for v in [None, Some(Version::V311), Some(Version::V5)] {
                let mut c = b.clone();
                let _ = decode(&mut c, v, 1024);
            }
        }
    }

    #[test]
    fn reserved_bits_make_a_packet_malformed() {
        let malformed = |bytes: &[u8], v: Version| {
            let mut b = BytesMut::from(bytes);
            matches!(
                decode(&mut b, Some(v), 1024),
                Err(DecodeError::Malformed(_))
            )
        };
        // SUBSCRIBE pkid 1, filter "a/b", options byte last.
        let sub = |first: u8, options: u8| vec![first, 8, 0, 1, 0, 3, b'a', b'/', b'b', options];
        let sub5 = |options: u8| vec![0x82, 9, 0, 1, 0, 0, 3, b'a', b'/', b'b', options];
        for v in [Version::V311, Version::V5] {
            let s = |o| {
                if v == Version::V5 {
                    sub5(o)
                } else {
                    sub(0x82, o)
                }
            };
            assert!(!malformed(&s(1), v), "{v:?} a well-formed SUBSCRIBE");
            assert!(malformed(&s(3), v), "{v:?} QoS 3");
            assert!(malformed(&s(0b0100_0001), v), "{v:?} reserved bit 6");
            assert!(malformed(&s(0b1000_0000), v), "{v:?} reserved bit 7");
            for first in [0x80, 0x83, 0x8a] {
                assert!(malformed(&sub(first, 0), v), "{v:?} flags {first:#x}");
            }
            assert!(malformed(&[0xc1, 0], v), "{v:?} PINGREQ with flags");
            assert!(
                malformed(&[0xa0, 5, 0, 1, 0, 1, b'a'], v),
                "{v:?} UNSUBSCRIBE 0xa0"
            );
        }
        // No Local and Retain As Published are MQTT 5 options, reserved bits in 3.1.1.
        assert!(malformed(&sub(0x82, 0b0000_0100), Version::V311));
        assert!(!malformed(&sub5(0b0010_1101), Version::V5));
        assert!(
            malformed(&sub5(0b0011_0000), Version::V5),
            "retain handling 3"
        );
        // Two subscriptions: the second one's options are checked too.
        let two = [0x82u8, 10, 0, 1, 0, 1, b'a', 1, 0, 1, b'b', 0b0001_0000];
        assert!(malformed(&two, Version::V311));
    }

    #[test]
    fn v5_empty_disconnect_and_publish_properties() {
        let mut b = BytesMut::from(&[0xe0u8, 0x00][..]);
        assert_eq!(
            decode(&mut b, Some(Version::V5), 1024).unwrap().unwrap().0,
            Incoming::Disconnect { reason: 0 }
        );
        let props = v5::PublishProperties {
            response_topic: Some("edgecar/v1/d/res".into()),
            correlation_data: Some(Bytes::from_static(b"42")),
            ..Default::default()
        };
        let mut p = v5::Publish::new(
            "edgecar/v1/d/req/x",
            mb5::QoS::AtLeastOnce,
            "{}",
            Some(props),
        );
        p.pkid = 7;
        let mut b = v5_bytes(v5::Packet::Publish(p));
        let (p, _) = decode(&mut b, Some(Version::V5), 1024).unwrap().unwrap();
        let Incoming::Publish { pkid, msg } = p else {
            panic!()
        };
        assert_eq!(pkid, 7);
        assert_eq!(
            msg.props.response_topic.as_deref(),
            Some("edgecar/v1/d/res")
        );
        assert_eq!(msg.props.correlation_data.as_deref(), Some(&b"42"[..]));
    }

    #[test]
    fn outgoing_round_trips_through_the_client_codecs() {
        for v in [Version::V311, Version::V5] {
            let mut b = BytesMut::new();
            let mut msg = Message::new("edgecar/v1/d/res/x/1/200".into(), Bytes::from("{}"));
            msg.props.user.push(("status".into(), "200".into()));
            encode(Outgoing::Publish { pkid: 3, msg }, v, &mut b).unwrap();
            encode(
                Outgoing::SubAck {
                    pkid: 4,
                    codes: vec![SubCode::Granted(1), SubCode::NotAuthorized],
                },
                v,
                &mut b,
            )
            .unwrap();
            encode(
                Outgoing::ConnAck {
                    session_present: false,
                    code: ConnectCode::NotAuthorized,
                    granted: None,
                    reason: Some("x".repeat(70_000)),
                },
                v,
                &mut b,
            )
            .unwrap();
            match v {
                Version::V311 => {
                    let p = v4::Packet::read(&mut b, usize::MAX).unwrap();
                    assert!(matches!(p, v4::Packet::Publish(p) if p.pkid == 3));
                    let p = v4::Packet::read(&mut b, usize::MAX).unwrap();
                    assert!(matches!(p, v4::Packet::SubAck(s)
                        if s.return_codes[1] == v4::SubscribeReasonCode::Failure));
                    let p = v4::Packet::read(&mut b, usize::MAX).unwrap();
                    assert!(matches!(p, v4::Packet::ConnAck(c)
                        if c.code == v4::ConnectReturnCode::NotAuthorized));
                }
                Version::V5 => {
                    let p = v5::Packet::read(&mut b, None).unwrap();
                    assert!(matches!(p, v5::Packet::Publish(p)
                        if p.properties.as_ref().unwrap().user_properties[0].1 == "200"));
                    let p = v5::Packet::read(&mut b, None).unwrap();
                    assert!(matches!(p, v5::Packet::SubAck(s)
                        if s.return_codes[1] == v5::SubscribeReasonCode::NotAuthorized));
                    let p = v5::Packet::read(&mut b, None).unwrap();
                    assert!(matches!(p, v5::Packet::ConnAck(c)
                        if c.code == v5::ConnectReturnCode::NotAuthorized));
                }
            }
        }
    }
}
