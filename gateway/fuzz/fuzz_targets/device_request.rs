//! The device protocol: what a device publishes in its tree (topic, payload, MQTT 5 properties)
//! becomes a call, runs on the request path (every building block, in-memory components), and
//! its reply is encoded back into an MQTT 3.1.1 and 5 PUBLISH.
//!
//! Input: byte 0 is flags (bit 0: the topic is relative to `edgecar/v1/sensor-1/`; bit 1: the
//! device id is taken from the topic, as in external broker mode), then fields separated by
//! `\n`: topic, response topic, content type, correlation data, user properties (`k=v&k=v`),
//! and the payload (the rest).
#![no_main]

use bytes::{Bytes, BytesMut};
use edgecar::transport::mqtt::codec::{self, Message, Outgoing, Properties, Version};
use edgecar::transport::mqtt::protocol::{self, Inbound};
use edgecar::transport::mqtt::topics;
use libfuzzer_sys::fuzz_target;

const DEVICE: &str = "sensor-1";

fn text(b: &[u8]) -> Option<String> {
    (!b.is_empty()).then(|| String::from_utf8_lossy(b).into_owned())
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let f = edgecar_fuzz::fields(rest, b'\n', 6);
    let Ok(topic) = std::str::from_utf8(f[0]) else {
        return;
    };
    let topic = if flags & 1 != 0 {
        format!("{}/{topic}", topics::tree(DEVICE).trim_end_matches('/'))
    } else {
        topic.to_owned()
    };
    // The endpoint refuses invalid names before the protocol sees them.
    if !topics::valid_name(&topic) {
        return;
    }
    let device = if flags & 2 != 0 {
        match edgecar::transport::broker::device_of(&topic) {
            Some(d) if edgecar::devices::file::validate_id(d).is_ok() => d.to_owned(),
            _ => return,
        }
    } else {
        DEVICE.to_owned()
    };
    if topics::in_tree(&device, &topic).is_none() {
        return;
    }
    let user = std::str::from_utf8(f[4])
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let msg = Message {
        topic,
        payload: Bytes::copy_from_slice(f[5]),
        qos: 1,
        retain: false,
        props: Properties {
            response_topic: text(f[1]),
            content_type: text(f[2]),
            correlation_data: (!f[3].is_empty()).then(|| Bytes::copy_from_slice(f[3])),
            user,
            topic_alias: None,
        },
    };
    let (reply_to, result) = match protocol::classify(&device, &msg) {
        Inbound::Request { call, reply_to } | Inbound::Telemetry { call, reply_to } => {
            let result = edgecar_fuzz::harness().handle(*call);
            (reply_to, result)
        }
        Inbound::Invalid { error, reply_to } => (reply_to, Err(error)),
        Inbound::CommandReply { .. } => return,
    };
    let reply = protocol::reply(&device, &reply_to, result);
    // Too long a reply topic is refused by the encoder; a wildcard would be a protocol error.
    assert!(
        !reply.topic.contains(['+', '#', '\0']),
        "reply topic {:?} is not a valid topic name",
        reply.topic
    );
    for version in [Version::V311, Version::V5] {
        let mut buf = BytesMut::new();
        let _ = codec::encode(
            Outgoing::Publish {
                pkid: 1,
                msg: reply.clone(),
            },
            version,
            &mut buf,
        );
    }
});
