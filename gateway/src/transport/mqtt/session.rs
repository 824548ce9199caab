//! One device connection's MQTT state, kept pure: packets and time in, actions out. No sockets,
//! no clocks, no tasks — the connection loop in `mqtt.rs` performs the actions.
//!
//! It owns the CONNECT checks that need no I/O, the keep-alive deadline (1.5x the granted
//! keep-alive), the isolation rule for publishes and subscriptions, QoS handling (QoS 1 PUBACKs
//! released in the order the publishes arrived, only once each request is done; QoS 2 refused),
//! the subscription list, and packet ids and flow control for what edgecar sends the device.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::codec::{
    Connect, ConnectCode, DisconnectCode, Granted, Incoming, Message, Outgoing, PubAckCode,
    SubCode, Version,
};
use super::topics::{self, FilterCheck};

/// Most filters one session may hold.
pub const MAX_SUBSCRIPTIONS: usize = 32;

/// Limits a session enforces (from the `mqtt` config section).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest packet accepted.
    pub max_packet_size: usize,
    /// Longest keep-alive granted.
    pub max_keep_alive: Duration,
    /// Requests in progress at once.
    pub max_inflight: u16,
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The client sent DISCONNECT; MQTT 5 reason 0x04 asks for the will to be published anyway.
    ByClient {
        /// Whether the will is still published.
        publish_will: bool,
    },
    /// Edgecar ends it, and says why to MQTT 5 clients. The will is published.
    ByServer(DisconnectCode),
}

impl Close {
    /// For logs and presence.
    pub fn describe(self) -> &'static str {
        match self {
            Close::ByClient { .. } => "client disconnected",
            Close::ByServer(c) => c.describe(),
        }
    }
}

/// What the connection loop must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write a packet.
    Send(Outgoing),
    /// Hand an in-tree publish to the device protocol; report back with [`Session::done`].
    Handle {
        /// Identifies the publish in [`Session::done`].
        token: u64,
        /// The message.
        msg: Message,
    },
    /// The subscription list changed (the hub routes by it).
    SubscriptionsChanged,
    /// End the connection.
    Close(Close),
}

/// A CONNECT refused before a session exists: the CONNACK code and a reason for MQTT 5.
pub type Refusal = (ConnectCode, String);

/// How a CONNECT proves which device it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// Username (the device id) and password, for the registry to check.
    Password {
        /// The username.
        id: String,
        /// The password (never logged).
        password: String,
    },
    /// A client certificate the TLS layer verified, naming the device; the registry must know it.
    Certificate {
        /// The id the certificate names.
        id: String,
    },
}

/// Checks what can be checked before the registry: no enhanced auth, a usable client id, and
/// credentials — a username and password, or a verified certificate naming `certificate`, which a
/// username (if any) must repeat. A password sent with a certificate is not checked.
pub fn precheck(c: &Connect, certificate: Option<&str>) -> Result<Login, Refusal> {
    if c.auth_method.is_some() {
        return Err((
            ConnectCode::BadAuthenticationMethod,
            "enhanced authentication is not supported; use username and password".into(),
        ));
    }
    let username = c.username.as_deref().filter(|u| !u.is_empty());
    let login = match (certificate, username, &c.password) {
        (Some(id), Some(u), _) if u != id => {
            return Err((
                ConnectCode::NotAuthorized,
                "the username must be the device id the client certificate names, or empty".into(),
            ));
        }
        (Some(id), _, _) => Login::Certificate { id: id.to_owned() },
        (None, Some(u), Some(p)) => Login::Password {
            id: u.to_owned(),
            password: p.clone(),
        },
        (None, _, _) => {
            return Err((
                ConnectCode::NotAuthorized,
                "username (the device id) and password are required".into(),
            ));
        }
    };
    if c.client_id.is_empty() && !c.clean_start && c.version == Version::V311 {
        return Err((
            ConnectCode::BadClientId,
            "an empty client id needs clean session".into(),
        ));
    }
    Ok(login)
}

/// The will of an authenticated device, if it may have it: inside its tree, QoS 2 taken as 1.
/// Boxed: most devices have none, and every connection would otherwise carry a `Message`'s size.
pub fn check_will(c: &Connect, device: &str) -> Result<Option<Box<Message>>, Refusal> {
    let Some(will) = &c.will else { return Ok(None) };
    if topics::in_tree(device, &will.topic).is_none() {
        return Err((
            ConnectCode::NotAuthorized,
            format!("the will topic must be inside {}", topics::tree(device)),
        ));
    }
    let mut will = Box::new(will.clone());
    will.qos = will.qos.min(1);
    will.retain = false;
    Ok(Some(will))
}

/// A request in progress, in arrival order.
#[derive(Debug)]
struct Pending {
    token: u64,
    /// QoS 1 packet id to acknowledge once done (and all before it are).
    pkid: Option<u16>,
    done: bool,
    /// Set when the publish could not be dealt with (telemetry not stored): its acknowledgement
    /// says so instead of confirming it.
    failed: Option<PubAckCode>,
}

/// The state of one connected device session.
#[derive(Debug)]
pub struct Session {
    /// The authenticated device id.
    device: String,
    /// The client id (assigned when the client sent none).
    client_id: String,
    /// Protocol version.
    version: Version,
    /// Keep-alive granted; silence for 1.5x this ends the connection.
    keep_alive: Duration,
    /// When a packet was last received.
    last_heard: Instant,
    /// Filters and granted QoS.
    subs: Vec<(String, u8)>,
    /// Requests in progress, oldest first.
    pending: VecDeque<Pending>,
    /// Next request token.
    next_token: u64,
    /// Next packet id to try for edgecar's QoS 1 publishes.
    next_pkid: u16,
    /// Packet ids of edgecar's QoS 1 publishes not yet acknowledged.
    unacked: BTreeSet<u16>,
    /// Unacknowledged QoS 1 publishes the client accepts (its receive maximum).
    client_receive_max: usize,
    /// Largest packet the client accepts.
    client_max_packet: usize,
    /// The will, published when the connection ends other than by a normal DISCONNECT.
    will: Option<Box<Message>>,
    /// Limits.
    limits: Limits,
}

impl Session {
    /// Starts a session for an authenticated `device` and builds its CONNACK. `client_id` is the
    /// effective id (assigned if the client sent none); `restored` are a persistent session's
    /// subscriptions.
    pub fn new(
        c: &Connect,
        device: &str,
        client_id: String,
        will: Option<Box<Message>>,
        restored: Option<Vec<(String, u8)>>,
        limits: Limits,
        now: Instant,
    ) -> (Session, Outgoing) {
        let max = limits
            .max_keep_alive
            .as_secs()
            .clamp(1, u64::from(u16::MAX));
        let asked = u64::from(c.keep_alive);
        let granted = if asked == 0 || asked > max {
            max
        } else {
            asked
        };
        let session_present = restored.is_some();
        let assigned =
            (c.client_id.is_empty() && c.version == Version::V5).then(|| client_id.clone());
        let connack = Outgoing::ConnAck {
            session_present,
            code: ConnectCode::Accepted,
            granted: Some(Granted {
                server_keep_alive: (granted != asked).then_some(granted as u16),
                assigned_client_id: assigned,
                receive_maximum: limits.max_inflight,
                max_packet_size: u32::try_from(limits.max_packet_size).unwrap_or(u32::MAX),
            }),
            reason: None,
        };
        let session = Session {
            device: device.to_owned(),
            client_id,
            version: c.version,
            keep_alive: Duration::from_secs(granted),
            last_heard: now,
            subs: restored.unwrap_or_default(),
            pending: VecDeque::new(),
            next_token: 0,
            next_pkid: 1,
            unacked: BTreeSet::new(),
            client_receive_max: usize::from(
                c.receive_maximum.unwrap_or(limits.max_inflight).max(1),
            ),
            client_max_packet: c
                .max_packet_size
                .map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX)),
            will,
            limits,
        };
        (session, connack)
    }

    /// The device id.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The protocol version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The keep-alive granted.
    pub fn keep_alive(&self) -> Duration {
        self.keep_alive
    }

    /// Filters and their granted QoS.
    pub fn subscriptions(&self) -> &[(String, u8)] {
        &self.subs
    }

    /// Whether another publish may be read (requests in progress below the limit).
    pub fn can_take_request(&self) -> bool {
        self.pending.len() < usize::from(self.limits.max_inflight)
    }

    /// When silence ends the connection.
    pub fn deadline(&self) -> Instant {
        self.last_heard + self.keep_alive + self.keep_alive / 2
    }

    /// Treats the client as heard from now (edgecar itself stopped reading it for a while).
    pub fn touch(&mut self, now: Instant) {
        self.last_heard = now;
    }

    /// Checks the keep-alive at `now`.
    pub fn on_timer(&mut self, now: Instant) -> Option<Action> {
        (now >= self.deadline()).then_some(Action::Close(Close::ByServer(
            DisconnectCode::KeepAliveTimeout,
        )))
    }

    /// Takes the will (at most once).
    pub fn take_will(&mut self) -> Option<Message> {
        self.will.take().map(|w| *w)
    }

    fn refuse_publish(&self, qos: u8, pkid: u16) -> Vec<Action> {
        match (self.version, qos) {
            (Version::V5, 1) => vec![Action::Send(Outgoing::PubAck {
                pkid,
                code: PubAckCode::NotAuthorized,
                reason: Some(format!(
                    "a device may only publish inside {}",
                    topics::tree(&self.device)
                )),
            })],
            // 3.1.1 has no way to refuse a publish but closing; neither has a QoS 0 publish.
            _ => vec![Action::Close(Close::ByServer(
                DisconnectCode::NotAuthorized,
            ))],
        }
    }

    /// Handles one packet received at `now`.
    pub fn on_packet(&mut self, packet: Incoming, now: Instant) -> Vec<Action> {
        self.last_heard = now;
        match packet {
            Incoming::Publish { pkid, msg } => self.on_publish(pkid, msg),
            Incoming::PubAck { pkid } => {
                self.unacked.remove(&pkid);
                Vec::new()
            }
            Incoming::Subscribe { pkid, filters } => {
                let codes = filters
                    .into_iter()
                    .map(|(f, qos)| self.subscribe(f, qos))
                    .collect();
                vec![
                    Action::Send(Outgoing::SubAck { pkid, codes }),
                    Action::SubscriptionsChanged,
                ]
            }
            Incoming::Unsubscribe { pkid, filters } => {
                let existed = filters
                    .iter()
                    .map(|f| {
                        let before = self.subs.len();
                        self.subs.retain(|(s, _)| s != f);
                        self.subs.len() != before
                    })
                    .collect();
                vec![
                    Action::Send(Outgoing::UnsubAck { pkid, existed }),
                    Action::SubscriptionsChanged,
                ]
            }
            Incoming::PingReq => vec![Action::Send(Outgoing::PingResp)],
            Incoming::Disconnect { reason } => {
                if reason != 0x04 {
                    self.will = None;
                }
                vec![Action::Close(Close::ByClient {
                    publish_will: reason == 0x04,
                })]
            }
            Incoming::Qos2Flow => vec![Action::Close(Close::ByServer(
                DisconnectCode::QoSNotSupported,
            ))],
            Incoming::Connect(_) | Incoming::Unexpected(_) => {
                vec![Action::Close(Close::ByServer(
                    DisconnectCode::ProtocolError,
                ))]
            }
        }
    }

    fn on_publish(&mut self, pkid: u16, msg: Message) -> Vec<Action> {
        if msg.qos >= 2 {
            // As the big IoT hubs do: QoS 2 is not offered (MQTT 5 CONNACK says Maximum QoS 1).
            return vec![Action::Close(Close::ByServer(
                DisconnectCode::QoSNotSupported,
            ))];
        }
        if msg.props.topic_alias.is_some() {
            return vec![Action::Close(Close::ByServer(
                DisconnectCode::TopicAliasInvalid,
            ))];
        }
        if !topics::valid_name(&msg.topic) {
            return vec![Action::Close(Close::ByServer(
                DisconnectCode::TopicNameInvalid,
            ))];
        }
        if topics::in_tree(&self.device, &msg.topic).is_none() {
            return self.refuse_publish(msg.qos, pkid);
        }
        let qos1 = msg.qos == 1;
        if qos1 && self.pending.iter().any(|p| p.pkid == Some(pkid)) {
            // A resend (DUP) of a publish still in progress: it will be acknowledged once.
            return Vec::new();
        }
        let token = self.next_token;
        self.next_token += 1;
        self.pending.push_back(Pending {
            token,
            pkid: qos1.then_some(pkid),
            done: false,
            failed: None,
        });
        vec![Action::Handle { token, msg }]
    }

    fn subscribe(&mut self, filter: String, qos: u8) -> SubCode {
        match topics::check_filter(&self.device, &filter) {
            FilterCheck::Allowed => {}
            FilterCheck::OutsideTree => return SubCode::NotAuthorized,
            FilterCheck::Invalid => return SubCode::FilterInvalid,
            FilterCheck::Shared => return SubCode::SharedNotSupported,
        }
        let granted = qos.min(1);
        if let Some(s) = self.subs.iter_mut().find(|(f, _)| *f == filter) {
            s.1 = granted;
        } else if self.subs.len() >= MAX_SUBSCRIPTIONS {
            return SubCode::QuotaExceeded;
        } else {
            self.subs.push((filter, granted));
        }
        SubCode::Granted(granted)
    }

    /// Reports that the publish `token` has been dealt with. QoS 1 publishes are acknowledged in
    /// the order they arrived, so a PUBACK also means every earlier publish was handled.
    pub fn done(&mut self, token: u64) -> Vec<Action> {
        self.settle(token, None)
    }

    /// Reports that the publish `token` could not be dealt with: a telemetry reading that was not
    /// stored. It must not be confirmed: MQTT 5 devices get a PUBACK with the failure `code`;
    /// 3.1.1 has no failed PUBACK, so the connection closes without acknowledging it and the
    /// device sends it again when it reconnects (docs/device-protocol.md).
    pub fn failed(&mut self, token: u64, code: PubAckCode) -> Vec<Action> {
        self.settle(token, Some(code))
    }

    fn settle(&mut self, token: u64, failed: Option<PubAckCode>) -> Vec<Action> {
        if let Some(p) = self.pending.iter_mut().find(|p| p.token == token) {
            p.done = true;
            p.failed = failed;
        }
        let mut out = Vec::new();
        while self.pending.front().is_some_and(|p| p.done) {
            let Some(Pending { pkid, failed, .. }) = self.pending.pop_front() else {
                break;
            };
            match (pkid, failed, self.version) {
                (Some(pkid), None, _) => out.push(Action::Send(Outgoing::PubAck {
                    pkid,
                    code: PubAckCode::Success,
                    reason: None,
                })),
                (Some(pkid), Some(code), Version::V5) => out.push(Action::Send(Outgoing::PubAck {
                    pkid,
                    code,
                    reason: Some("the reading was not stored; send it again later".into()),
                })),
                (Some(_), Some(_), Version::V311) => {
                    out.push(Action::Close(Close::ByServer(DisconnectCode::NotStored)));
                    return out;
                }
                (None, _, _) => {}
            }
        }
        out
    }

    /// The PUBLISH that delivers `msg` to this client, if one of its subscriptions matches and
    /// the message fits the client's maximum packet size. QoS is the lower of the message's and
    /// the subscription's; when the client's window of unacknowledged messages is full, QoS 0.
    pub fn deliver(&mut self, mut msg: Message) -> Option<Outgoing> {
        let sub_qos = self
            .subs
            .iter()
            .filter(|(f, _)| topics::matches(f, &msg.topic))
            .map(|(_, q)| *q)
            .max()?;
        if super::codec::publish_size(&msg, self.version) > self.client_max_packet {
            return None;
        }
        msg.qos = msg.qos.min(sub_qos);
        if msg.qos == 1 && self.unacked.len() >= self.client_receive_max {
            msg.qos = 0;
        }
        let pkid = if msg.qos == 1 {
            let mut id = self.next_pkid;
            while self.unacked.contains(&id) {
                id = id.checked_add(1).unwrap_or(1);
            }
            self.next_pkid = id.checked_add(1).unwrap_or(1);
            self.unacked.insert(id);
            id
        } else {
            0
        };
        Some(Outgoing::Publish { pkid, msg })
    }

    /// Whether a subscription of this session matches `topic`.
    pub fn subscribed(&self, topic: &str) -> bool {
        self.subs.iter().any(|(f, _)| topics::matches(f, topic))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::transport::mqtt::codec::Properties;

    fn limits() -> Limits {
        Limits {
            max_packet_size: 4096,
            max_keep_alive: Duration::from_secs(60),
            max_inflight: 2,
        }
    }

    fn connect(version: Version, keep_alive: u16) -> Connect {
        Connect {
            version,
            client_id: "c".into(),
            keep_alive,
            clean_start: true,
            session_expiry: None,
            receive_maximum: None,
            max_packet_size: None,
            username: Some("d1".into()),
            password: Some("pw".into()),
            will: None,
            auth_method: None,
        }
    }

    fn session(version: Version, keep_alive: u16) -> Session {
        let c = connect(version, keep_alive);
        Session::new(&c, "d1", "c".into(), None, None, limits(), Instant::now()).0
    }

    fn publish(topic: &str, qos: u8, pkid: u16) -> Incoming {
        Incoming::Publish {
            pkid,
            msg: Message {
                topic: topic.into(),
                payload: Bytes::new(),
                qos,
                retain: false,
                props: Properties::default(),
            },
        }
    }

    #[tokio::test(start_paused = true)]
    async fn keepalive_closes_after_one_and_a_half_periods_of_silence() {
        let mut s = session(Version::V311, 10);
        assert_eq!(s.on_timer(Instant::now()), None);
        tokio::time::advance(Duration::from_secs(14)).await;
        assert_eq!(s.on_timer(Instant::now()), None);
        // Any packet counts as life.
        s.on_packet(Incoming::PingReq, Instant::now());
        tokio::time::advance(Duration::from_millis(14_999)).await;
        assert_eq!(s.on_timer(Instant::now()), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            s.on_timer(Instant::now()),
            Some(Action::Close(Close::ByServer(
                DisconnectCode::KeepAliveTimeout
            )))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn keepalive_zero_or_too_long_is_held_to_the_maximum() {
        for asked in [0u16, 3600] {
            let c = connect(Version::V5, asked);
            let (s, connack) =
                Session::new(&c, "d1", "c".into(), None, None, limits(), Instant::now());
            assert_eq!(s.keep_alive(), Duration::from_secs(60));
            let Outgoing::ConnAck {
                granted: Some(g), ..
            } = connack
            else {
                panic!()
            };
            assert_eq!(g.server_keep_alive, Some(60), "MQTT 5 clients are told");
            assert_eq!(
                s.deadline().duration_since(Instant::now()),
                Duration::from_secs(90)
            );
        }
        let (_, connack) = Session::new(
            &connect(Version::V5, 30),
            "d1",
            "c".into(),
            None,
            None,
            limits(),
            Instant::now(),
        );
        assert!(
            matches!(connack, Outgoing::ConnAck { granted: Some(g), .. } if g.server_keep_alive.is_none())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn publishes_outside_the_tree_are_refused() {
        let now = Instant::now();
        let mut v5 = session(Version::V5, 10);
        let a = v5.on_packet(publish("edgecar/v1/d2/req/state.get/1", 1, 9), now);
        assert!(matches!(
            &a[..],
            [Action::Send(Outgoing::PubAck {
                pkid: 9,
                code: PubAckCode::NotAuthorized,
                ..
            })]
        ));
        let a = v5.on_packet(publish("elsewhere", 0, 0), now);
        assert_eq!(
            a,
            [Action::Close(Close::ByServer(
                DisconnectCode::NotAuthorized
            ))]
        );
        let mut v4 = session(Version::V311, 10);
        let a = v4.on_packet(publish("edgecar/v1/d2/x", 1, 3), now);
        assert_eq!(
            a,
            [Action::Close(Close::ByServer(
                DisconnectCode::NotAuthorized
            ))]
        );
        let a = v4.on_packet(publish("edgecar/v1/d1/x", 2, 3), now);
        assert_eq!(
            a,
            [Action::Close(Close::ByServer(
                DisconnectCode::QoSNotSupported
            ))]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pubacks_follow_arrival_order_and_requests_are_bounded() {
        let now = Instant::now();
        let mut s = session(Version::V311, 10);
        let t = |a: Vec<Action>| match &a[..] {
            [Action::Handle { token, .. }] => *token,
            other => panic!("{other:?}"),
        };
        let first = t(s.on_packet(publish("edgecar/v1/d1/req/a/1", 1, 11), now));
        let second = t(s.on_packet(publish("edgecar/v1/d1/req/b/2", 1, 12), now));
        assert!(!s.can_take_request(), "max_inflight is 2");
        // The second finishes first: nothing is acknowledged until the first is done.
        assert!(s.done(second).is_empty());
        let acks = s.done(first);
        let pkids: Vec<u16> = acks
            .iter()
            .map(|a| match a {
                Action::Send(Outgoing::PubAck { pkid, .. }) => *pkid,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(pkids, [11, 12]);
        assert!(s.can_take_request());
        // A QoS 0 request is tracked for the bound but never acknowledged.
        let q0 = t(s.on_packet(publish("edgecar/v1/d1/req/c/3", 0, 0), now));
        assert!(s.done(q0).is_empty());
        // A duplicate of a publish in progress is not handled twice.
        let _ = t(s.on_packet(publish("edgecar/v1/d1/req/a/4", 1, 20), now));
        assert!(
            s.on_packet(publish("edgecar/v1/d1/req/a/4", 1, 20), now)
                .is_empty()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn readings_not_stored_are_never_confirmed() {
        let now = Instant::now();
        let t = |a: Vec<Action>| match &a[..] {
            [Action::Handle { token, .. }] => *token,
            other => panic!("{other:?}"),
        };
        // MQTT 5: the failed reading gets a failure PUBACK, in arrival order with the others.
        let mut v5 = session(Version::V5, 10);
        let first = t(v5.on_packet(publish("edgecar/v1/d1/telemetry/a", 1, 1), now));
        let second = t(v5.on_packet(publish("edgecar/v1/d1/telemetry/a", 1, 2), now));
        assert!(v5.failed(second, PubAckCode::QuotaExceeded).is_empty());
        let acks: Vec<(u16, PubAckCode)> = v5
            .done(first)
            .into_iter()
            .map(|a| match a {
                Action::Send(Outgoing::PubAck { pkid, code, .. }) => (pkid, code),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            acks,
            [(1, PubAckCode::Success), (2, PubAckCode::QuotaExceeded)]
        );
        // MQTT 3.1.1 cannot say "failed" in a PUBACK: the readings before it are confirmed,
        // then the connection closes so that the device sends the failed one again.
        let mut v4 = session(Version::V311, 10);
        let first = t(v4.on_packet(publish("edgecar/v1/d1/telemetry/a", 1, 7), now));
        let second = t(v4.on_packet(publish("edgecar/v1/d1/telemetry/a", 1, 8), now));
        let third = t(v4.on_packet(publish("edgecar/v1/d1/telemetry/a", 1, 9), now));
        assert!(v4.done(third).is_empty());
        assert!(v4.failed(second, PubAckCode::UnspecifiedError).is_empty());
        let a = v4.done(first);
        assert!(
            matches!(
                &a[..],
                [
                    Action::Send(Outgoing::PubAck {
                        pkid: 7,
                        code: PubAckCode::Success,
                        ..
                    }),
                    Action::Close(Close::ByServer(DisconnectCode::NotStored))
                ]
            ),
            "{a:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn subscriptions_are_confined_and_qos2_is_downgraded() {
        let now = Instant::now();
        let mut s = session(Version::V5, 10);
        let a = s.on_packet(
            Incoming::Subscribe {
                pkid: 5,
                filters: vec![
                    ("edgecar/v1/d1/res/#".into(), 2),
                    ("edgecar/v1/d2/res/#".into(), 1),
                    ("edgecar/v1/+/res/#".into(), 0),
                    ("edgecar/v1/d1/a#".into(), 0),
                ],
            },
            now,
        );
        assert_eq!(
            a[0],
            Action::Send(Outgoing::SubAck {
                pkid: 5,
                codes: vec![
                    SubCode::Granted(1),
                    SubCode::NotAuthorized,
                    SubCode::NotAuthorized,
                    SubCode::FilterInvalid
                ]
            })
        );
        assert_eq!(s.subscriptions().len(), 1);
        // Deliveries go only where a subscription matches, at the lower QoS.
        let msg = |t: &str, qos| Message {
            qos,
            ..Message::new(t.into(), Bytes::from_static(b"{}"))
        };
        assert!(s.deliver(msg("edgecar/v1/d1/cmd/x/1", 1)).is_none());
        let p = s.deliver(msg("edgecar/v1/d1/res/x/1/200", 1)).unwrap();
        assert!(matches!(p, Outgoing::Publish { pkid: 1, ref msg } if msg.qos == 1));
        let a = s.on_packet(
            Incoming::Unsubscribe {
                pkid: 6,
                filters: vec!["edgecar/v1/d1/res/#".into(), "nope".into()],
            },
            now,
        );
        assert_eq!(
            a[0],
            Action::Send(Outgoing::UnsubAck {
                pkid: 6,
                existed: vec![true, false]
            })
        );
        assert!(s.deliver(msg("edgecar/v1/d1/res/x/1/200", 1)).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn qos1_window_and_packet_ids() {
        let now = Instant::now();
        let mut c = connect(Version::V5, 10);
        c.receive_maximum = Some(2);
        c.max_packet_size = Some(200);
        let (mut s, _) = Session::new(&c, "d1", "c".into(), None, None, limits(), now);
        s.on_packet(
            Incoming::Subscribe {
                pkid: 1,
                filters: vec![("edgecar/v1/d1/#".into(), 1)],
            },
            now,
        );
        let m = || Message::new("edgecar/v1/d1/cmd/x/1".into(), Bytes::from_static(b"{}"));
        let ids: Vec<(u16, u8)> = (0..3)
            .map(|_| match s.deliver(m()).unwrap() {
                Outgoing::Publish { pkid, msg } => (pkid, msg.qos),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            ids,
            [(1, 1), (2, 1), (0, 0)],
            "a full window downgrades to QoS 0"
        );
        s.on_packet(Incoming::PubAck { pkid: 1 }, now);
        assert!(matches!(
            s.deliver(m()),
            Some(Outgoing::Publish { pkid: 3, .. })
        ));
        // Larger than the client's maximum packet size: not sent.
        let big = Message::new("edgecar/v1/d1/cmd/x/1".into(), Bytes::from(vec![0u8; 300]));
        assert!(s.deliver(big).is_none());
    }

    #[test]
    fn connect_checks() {
        let mut c = connect(Version::V311, 10);
        assert_eq!(
            precheck(&c, None),
            Ok(Login::Password {
                id: "d1".into(),
                password: "pw".into()
            })
        );
        c.password = None;
        assert_eq!(
            precheck(&c, None).unwrap_err().0,
            ConnectCode::NotAuthorized
        );
        // A certificate needs no password; a username, if any, must be the certificate's id.
        let cert = Login::Certificate { id: "d1".into() };
        assert_eq!(precheck(&c, Some("d1")), Ok(cert.clone()));
        c.username = None;
        assert_eq!(precheck(&c, Some("d1")), Ok(cert.clone()));
        c.username = Some(String::new());
        assert_eq!(precheck(&c, Some("d1")), Ok(cert));
        c.username = Some("d2".into());
        c.password = Some("pw".into());
        assert_eq!(
            precheck(&c, Some("d1")).unwrap_err().0,
            ConnectCode::NotAuthorized,
            "the certificate decides, the username cannot pick another device"
        );
        let mut c = connect(Version::V311, 10);
        c.client_id.clear();
        c.clean_start = false;
        assert_eq!(precheck(&c, None).unwrap_err().0, ConnectCode::BadClientId);
        let mut c = connect(Version::V5, 10);
        c.will = Some(Message::new("edgecar/v1/d2/status".into(), Bytes::new()));
        assert_eq!(
            check_will(&c, "d1").unwrap_err().0,
            ConnectCode::NotAuthorized
        );
        let mut w = Message::new("edgecar/v1/d1/status".into(), Bytes::new());
        w.qos = 2;
        c.will = Some(w);
        assert_eq!(check_will(&c, "d1").unwrap().unwrap().qos, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn wills_survive_only_unclean_ends() {
        let now = Instant::now();
        let w = Message::new("edgecar/v1/d1/status".into(), Bytes::from_static(b"gone"));
        let c = connect(Version::V5, 10);
        let (mut s, _) = Session::new(
            &c,
            "d1",
            "c".into(),
            Some(Box::new(w.clone())),
            None,
            limits(),
            now,
        );
        s.on_packet(Incoming::Disconnect { reason: 0 }, now);
        assert_eq!(s.take_will(), None, "a normal DISCONNECT discards the will");
        let (mut s, _) = Session::new(
            &c,
            "d1",
            "c".into(),
            Some(Box::new(w.clone())),
            None,
            limits(),
            now,
        );
        s.on_packet(Incoming::Disconnect { reason: 0x04 }, now);
        assert_eq!(s.take_will(), Some(w.clone()));
        let (mut s, _) = Session::new(
            &c,
            "d1",
            "c".into(),
            Some(Box::new(w.clone())),
            None,
            limits(),
            now,
        );
        assert!(matches!(
            s.on_packet(Incoming::Qos2Flow, now)[..],
            [Action::Close(Close::ByServer(_))]
        ));
        assert_eq!(s.take_will(), Some(w));
    }
}
