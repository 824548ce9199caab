//! Links: how a device is reached now, whatever transport carries it.
//!
//! A **link** is a transport's session layer seen from the device layer: the embedded MQTT
//! endpoint, MQTT through an external broker, QUIC. Each implements [`DeviceLink`]: it says
//! whether a device is on it, carries a live command and waits for the answer, and hands over a
//! stored [`DeviceMessage`] (a mailbox command, a subscribed event) for the device to
//! acknowledge. Each link encodes the message in its own wire format when it delivers; nothing
//! above this line knows a topic, an MQTT property or a QUIC stream.
//!
//! [`Links`] holds every link of the gateway and, per device, the one it attached on last, so a
//! device commanded while it slept on MQTT gets the command when it wakes on QUIC.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use http::Method;
use serde::{Deserialize, Serialize};

use crate::outbox::Receipt;

/// A command for a device: what an app's invoke call carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The method path, with a leading `/` and the query, as in service invocation.
    pub method: String,
    /// The HTTP verb the app used.
    pub verb: Method,
    /// Content type of the body, if the app gave one.
    pub content_type: Option<String>,
    /// W3C trace context.
    pub traceparent: Option<String>,
    /// The body, passed to the device unchanged.
    pub body: Bytes,
    /// Queue in the mailbox for this long if the device cannot take the command now.
    pub mailbox_ttl: Option<std::time::Duration>,
}

/// A device's answer to a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandReply {
    /// Status the device gave (200 if it gave none).
    pub status: u16,
    /// The body, passed to the app unchanged.
    pub body: Bytes,
    /// Content type of the body.
    pub content_type: Option<String>,
}

/// Why a command could not be delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The device has no open connection.
    #[error("device {0:?} is not connected")]
    NotConnected(String),
    /// The device is connected but does not listen for commands (MQTT: no connection subscribes
    /// to its command topic).
    #[error("device {device:?} is connected but not subscribed to {topic}")]
    NotListening {
        /// The device.
        device: String,
        /// What it should listen on (an MQTT filter).
        topic: String,
    },
    /// The link could not hand the command to the device now, though it may be there (external
    /// broker: no client subscribes to the device's command topic); the message says why. Like
    /// `NotConnected`, the mailbox can take the command.
    #[error("{0}")]
    NotReachable(String),
    /// The command cannot be expressed for the device (e.g. a method path MQTT cannot carry).
    #[error("{0}")]
    Invalid(String),
    /// The device's connection is gone before it answered.
    #[error("device {0:?} disconnected before answering")]
    Disconnected(String),
    /// The command could not reach the device now (external broker: the broker is unreachable,
    /// or no client subscribes to the command topic); the message says which.
    #[error("{0}")]
    Unavailable(String),
}

/// A message waiting for a device, as the device layer stores and queues it: neutral, encoded
/// by the link that delivers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum DeviceMessage {
    /// A command an app left in the device's mailbox.
    #[serde(rename_all = "camelCase")]
    Command {
        /// The mailbox id: the command's correlation id, which the device's answer carries.
        id: String,
        /// The method path with its query, as the app called it (`/valve/open?percent=40`).
        method: String,
        /// The HTTP verb.
        verb: String,
        /// Content type of the body.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content_type: Option<String>,
        /// W3C trace context.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traceparent: Option<String>,
        /// The body.
        #[serde(with = "crate::outbox::b64")]
        body: Bytes,
    },
    /// An event of a pub/sub topic the device subscribed to.
    #[serde(rename_all = "camelCase")]
    Event {
        /// The pub/sub component.
        pubsub: String,
        /// The topic.
        topic: String,
        /// Content type of the body (a CloudEvent's, for CloudEvents).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content_type: Option<String>,
        /// The event as a subscriber receives it.
        #[serde(with = "crate::outbox::b64")]
        body: Bytes,
    },
}

/// Checks a device method path (`/valve/open?x=1`) so that every link can carry it: not empty,
/// and without `+`, `#` or NUL, which MQTT topic levels cannot hold. Checked when a command is
/// queued, so that a device that wakes on MQTT can still take what was left for it on QUIC.
pub fn check_method(method: &str) -> Result<(), String> {
    let path = method.split('?').next().unwrap_or_default();
    let path = path.trim_start_matches('/');
    if path.is_empty() {
        return Err("a device method must not be empty".into());
    }
    if path.contains(['+', '#', '\0']) {
        return Err(format!(
            "method {path:?}: a device method cannot contain '+', '#' or NUL (MQTT topic rules)"
        ));
    }
    Ok(())
}

/// A transport's sessions, as the device layer uses them.
#[async_trait]
pub trait DeviceLink: Send + Sync {
    /// What presence shows for a device on this link: `mqtt`, `mqtt-broker`, `quic`.
    fn kind(&self) -> &'static str;
    /// Whether `device` has a session on this link now.
    fn connected(&self, device: &str) -> bool;
    /// Delivers a live command and waits for the device's answer (the caller bounds the wait).
    async fn command(&self, device: &str, cmd: Command) -> Result<CommandReply, LinkError>;
    /// Hands a stored message to `device`; the link confirms `receipt` once the device has
    /// acknowledged it. `false` if the device cannot take it now (the receipt is then dropped,
    /// which puts the message back).
    fn deliver(&self, device: &str, msg: DeviceMessage, receipt: Arc<Receipt>) -> bool;
}

/// Every link of the gateway and, per device, the one it is on.
#[derive(Default)]
pub struct Links {
    /// The links, in the order they were added.
    links: RwLock<Vec<Arc<dyn DeviceLink>>>,
    /// Per device, the kind of the link it attached on last.
    current: Mutex<HashMap<String, &'static str>>,
}

impl Links {
    /// Adds a transport's link.
    pub fn add(&self, link: Arc<dyn DeviceLink>) {
        self.links
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(link);
    }

    /// A transport says `device` now has a session on its link of `kind`.
    pub fn attached(&self, device: &str, kind: &'static str) {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(device.to_owned(), kind);
    }

    /// The link `device` is on: the one it attached on last while still connected there, or
    /// any link it is connected on. `None` while it is away.
    pub fn of(&self, device: &str) -> Option<Arc<dyn DeviceLink>> {
        let last = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(device)
            .copied();
        let links = self.links.read().unwrap_or_else(PoisonError::into_inner);
        links
            .iter()
            .find(|l| Some(l.kind()) == last && l.connected(device))
            .or_else(|| links.iter().find(|l| l.connected(device)))
            .cloned()
    }

    /// The first link, for commands to a device that is away (its refusal says why).
    pub fn any(&self) -> Option<Arc<dyn DeviceLink>> {
        self.links
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .first()
            .cloned()
    }

    /// Whether the gateway has any link at all.
    pub fn is_empty(&self) -> bool {
        self.links
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        kind: &'static str,
        on: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl DeviceLink for Fake {
        fn kind(&self) -> &'static str {
            self.kind
        }
        fn connected(&self, device: &str) -> bool {
            self.on.lock().unwrap().iter().any(|d| d == device)
        }
        async fn command(&self, device: &str, _: Command) -> Result<CommandReply, LinkError> {
            Err(LinkError::NotConnected(device.into()))
        }
        fn deliver(&self, _: &str, _: DeviceMessage, _: Arc<Receipt>) -> bool {
            false
        }
    }

    #[test]
    fn a_device_is_reached_on_the_link_it_attached_on_last() {
        let mqtt = Arc::new(Fake {
            kind: "mqtt",
            on: Mutex::new(vec!["d".into()]),
        });
        let quic = Arc::new(Fake {
            kind: "quic",
            on: Mutex::new(vec![]),
        });
        let links = Links::default();
        links.add(mqtt.clone());
        links.add(quic.clone());
        assert_eq!(links.of("d").unwrap().kind(), "mqtt");
        assert!(links.of("e").is_none());
        quic.on.lock().unwrap().push("d".into());
        links.attached("d", "quic");
        assert_eq!(links.of("d").unwrap().kind(), "quic");
        // Gone from QUIC, still on MQTT: MQTT it is.
        quic.on.lock().unwrap().clear();
        assert_eq!(links.of("d").unwrap().kind(), "mqtt");
    }

    #[test]
    fn stored_messages_are_neutral_json() {
        let m = DeviceMessage::Command {
            id: "m1".into(),
            method: "/valve/open?percent=40".into(),
            verb: "POST".into(),
            content_type: Some("application/json".into()),
            traceparent: None,
            body: Bytes::from_static(b"{}"),
        };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(
            text,
            r#"{"kind":"command","id":"m1","method":"/valve/open?percent=40","verb":"POST","contentType":"application/json","body":"e30="}"#
        );
        assert_eq!(serde_json::from_str::<DeviceMessage>(&text).unwrap(), m);
    }
}
