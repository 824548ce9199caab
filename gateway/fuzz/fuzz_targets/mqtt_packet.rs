//! Bytes from a device's socket, as the connection loop reads them: the codec (MQTT 3.1.1 and 5,
//! CONNECT first, partial reads), then the pure session (CONNECT checks, isolation, QoS, flow
//! control), the device protocol for every in-tree publish, and encoding of every packet the
//! session would send back.
//!
//! Input: byte 0 chooses the read-size pattern and the starting state (bit 7: the CONNECT is
//! already done, as 3.1.1 or 5 by bit 6); the rest is the byte stream.
#![no_main]

use bytes::BytesMut;
use edgecar::transport::mqtt::codec::{self, Incoming, Message, Outgoing, Version};
use edgecar::transport::mqtt::protocol::{self, Inbound};
use edgecar::transport::mqtt::session::{self, Action, Limits, Session};
use libfuzzer_sys::fuzz_target;
use tokio::time::Instant;

const MAX_PACKET: usize = 64 * 1024;

fn limits() -> Limits {
    Limits {
        max_packet_size: MAX_PACKET,
        max_keep_alive: std::time::Duration::from_secs(600),
        max_inflight: 16,
    }
}

fn connect_stub(version: Version) -> codec::Connect {
    codec::Connect {
        version,
        client_id: "c1".into(),
        keep_alive: 60,
        clean_start: true,
        session_expiry: None,
        receive_maximum: Some(4),
        max_packet_size: None,
        username: Some("sensor-1".into()),
        password: Some("pw".into()),
        will: None,
        auth_method: None,
    }
}

/// Encodes what the session sends; encoding may refuse (too large), never panic.
fn send(out: Outgoing, version: Version) {
    let mut buf = BytesMut::new();
    let _ = codec::encode(out, version, &mut buf);
}

fn run_actions(s: &mut Session, actions: Vec<Action>, depth: u8) -> bool {
    let version = s.version();
    for a in actions {
        match a {
            Action::Send(out) => send(out, version),
            Action::Handle { token, msg } => {
                // The device protocol, as the connection loop hands it each in-tree publish.
                let device = s.device().to_owned();
                match protocol::classify(&device, &msg) {
                    Inbound::Request { reply_to, .. }
                    | Inbound::Telemetry { reply_to, .. }
                    | Inbound::Invalid { reply_to, .. } => {
                        let reply = protocol::reply(
                            &device,
                            &reply_to,
                            Err(edgecar::Error::malformed("fuzz")),
                        );
                        send(
                            Outgoing::Publish {
                                pkid: 0,
                                msg: reply,
                            },
                            version,
                        );
                    }
                    Inbound::CommandReply { .. } => {}
                }
                if depth < 2 {
                    let done = s.done(token);
                    run_actions(s, done, depth + 1);
                }
                // Deliveries to this device go through its subscriptions.
                let echo = Message::new(msg.topic.clone(), msg.payload.clone());
                if let Some(out) = s.deliver(echo) {
                    send(out, version);
                }
            }
            Action::SubscriptionsChanged => {
                let _ = s.subscribed("edgecar/v1/sensor-1/sub/pubsub/t");
            }
            Action::Close(c) => {
                let _ = c.describe();
                let _ = s.take_will();
                return false;
            }
        }
    }
    true
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(mode & 0x0f) + 1;
    let mut version = if mode & 0x80 != 0 {
        Some(if mode & 0x40 != 0 {
            Version::V5
        } else {
            Version::V311
        })
    } else {
        None
    };
    let now = Instant::now();
    let mut session: Option<Session> = version.map(|v| {
        Session::new(
            &connect_stub(v),
            "sensor-1",
            "c1".into(),
            None,
            None,
            limits(),
            now,
        )
        .0
    });
    let mut buf = BytesMut::new();
    let mut fed = 0;
    // Reads arrive in pieces of `chunk` bytes; each read is followed by decoding all it holds.
    while fed < stream.len() {
        let end = (fed + chunk).min(stream.len());
        buf.extend_from_slice(&stream[fed..end]);
        fed = end;
        loop {
            let before = buf.len();
            match codec::decode(&mut buf, version, MAX_PACKET) {
                Ok(None) => break,
                Err(_) => return,
                Ok(Some((packet, v))) => {
                    assert!(buf.len() < before, "a decoded packet consumed no bytes");
                    match session.as_mut() {
                        None => {
                            // The first packet: CONNECT (the codec refuses anything else).
                            let Incoming::Connect(c) = packet else {
                                panic!("first packet decoded as {packet:?}, not CONNECT");
                            };
                            version = Some(v);
                            let login = match session::precheck(&c, None) {
                                Ok(l) => l,
                                Err((code, reason)) => {
                                    send(
                                        Outgoing::ConnAck {
                                            session_present: false,
                                            code,
                                            granted: None,
                                            reason: Some(reason),
                                        },
                                        v,
                                    );
                                    return;
                                }
                            };
                            let id = match login {
                                session::Login::Password { id, .. }
                                | session::Login::Certificate { id } => id,
                            };
                            // Only registered (valid) ids get this far in the daemon.
                            let device = if edgecar::devices::file::validate_id(&id).is_ok() {
                                id
                            } else {
                                "sensor-1".to_owned()
                            };
                            let will = match session::check_will(&c, &device) {
                                Ok(w) => w,
                                Err(_) => return,
                            };
                            let client_id = if c.client_id.is_empty() {
                                "assigned".to_owned()
                            } else {
                                c.client_id.clone()
                            };
                            let (s, connack) =
                                Session::new(&c, &device, client_id, will, None, limits(), now);
                            send(connack, v);
                            session = Some(s);
                        }
                        Some(s) => {
                            let actions = s.on_packet(packet, now);
                            if !run_actions(s, actions, 0) {
                                return;
                            }
                        }
                    }
                }
            }
        }
    }
});
