//! The devices building block: commands from apps to devices, and who is connected.
//!
//! `POST /v1.0/invoke/<device-id>/method/<m>` reaches here when `<device-id>` is a registered
//! device and not an app: the block sends the command through whatever transport the device is
//! connected by (a [`DeviceLink`]: the MQTT endpoint, or the external broker), waits up to
//! `devices.commandTimeout` for the reply and turns it, or the failure, into Dapr's invoke
//! answers. `GET /v1.0/devices[/<id>]` lists registered devices with their presence.
//!
//! A device that is not connected gets no queued command yet: the call fails at once with 503.
//! Queuing for sleeping devices (the mailbox, with a TTL and a 202 + result id) needs the durable
//! queue and slots in at [`DevicesBlock::command`] where `LinkError::NotConnected` is answered.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::Method;
use serde_json::json;

use crate::call::{Caller, Reply};
use crate::devices::{Presence, Registry, Status, file::rfc3339};
use crate::error::{Error, ErrorKind, codes};

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
    /// The device is connected but no connection subscribes to its command topic.
    #[error("device {device:?} is connected but not subscribed to {topic}")]
    NotListening {
        /// The device.
        device: String,
        /// The filter it should subscribe.
        topic: String,
    },
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

/// A transport that can deliver commands to connected devices.
#[async_trait]
pub trait DeviceLink: Send + Sync {
    /// Delivers `cmd` to `device` and waits for its reply (the caller bounds the wait).
    async fn command(&self, device: &str, cmd: Command) -> Result<CommandReply, LinkError>;
}

/// The devices building block.
pub struct DevicesBlock {
    /// Registered devices.
    registry: Arc<Registry>,
    /// Who is connected.
    presence: Arc<Presence>,
    /// The transport commands go through, set once the MQTT endpoint exists.
    link: OnceLock<Arc<dyn DeviceLink>>,
    /// How long a command waits for its reply.
    timeout: Duration,
}

fn invoke_error(kind: ErrorKind, device: &str, reason: impl std::fmt::Display) -> Error {
    Error::new(
        kind,
        codes::DIRECT_INVOKE,
        format!("failed to invoke, id: {device}, err: {reason}"),
    )
}

fn status_json(id: &str, s: &Status, added_at: Option<&str>) -> serde_json::Value {
    json!({
        "id": id,
        "connected": s.connections > 0,
        "connections": s.connections,
        "protocol": s.protocol,
        "connectedSince": s.connected_since_ms.map(|ms| rfc3339(ms / 1000)),
        "lastSeen": s.last_seen_ms.map(|ms| rfc3339(ms / 1000)),
        "lastDisconnect": s.last_disconnect,
        "addedAt": added_at,
    })
}

impl DevicesBlock {
    /// The block over a registry and presence table; commands wait `timeout`.
    pub fn new(registry: Arc<Registry>, presence: Arc<Presence>, timeout: Duration) -> Self {
        DevicesBlock {
            registry,
            presence,
            link: OnceLock::new(),
            timeout,
        }
    }

    /// Connects the transport commands go through (once).
    pub fn set_link(&self, link: Arc<dyn DeviceLink>) {
        let _ = self.link.set(link);
    }

    /// Whether `id` is a registered device.
    pub fn is_device(&self, id: &str) -> bool {
        self.registry.contains(id)
    }

    /// Prometheus gauges: devices registered and connected.
    pub fn metrics(&self, out: &mut String) {
        use std::fmt::Write;
        for (name, help, v) in [
            (
                "edgecar_devices_registered",
                "Devices in the registry.",
                self.registered_count(),
            ),
            (
                "edgecar_devices_connected",
                "Devices with at least one open connection.",
                self.connected_count(),
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
    }

    /// Number of registered devices.
    pub fn registered_count(&self) -> usize {
        self.registry.snapshot().len()
    }

    /// Number of devices connected now.
    pub fn connected_count(&self) -> usize {
        self.presence.connected_count()
    }

    /// An app's invoke call to a device.
    pub async fn command(
        &self,
        caller: &Caller,
        device: &str,
        cmd: Command,
    ) -> Result<Reply, Error> {
        if let Caller::Device { .. } = caller {
            // Isolation: a device reaches apps and capabilities, never another device.
            return Err(Error::new(
                ErrorKind::Forbidden,
                codes::PERMISSION_DENIED,
                format!("{caller} may not invoke device {device:?}"),
            ));
        }
        let Some(link) = self.link.get() else {
            return Err(invoke_error(
                ErrorKind::Unavailable,
                device,
                "no device endpoint is enabled (mqtt.enabled is false)",
            ));
        };
        let reply = match tokio::time::timeout(self.timeout, link.command(device, cmd)).await {
            Err(_) => {
                return Err(invoke_error(
                    ErrorKind::Timeout,
                    device,
                    format!(
                        "the device did not answer within {:?} (devices.commandTimeout)",
                        self.timeout
                    ),
                ));
            }
            // The mailbox (queued delivery on reconnect, 202 + result id) plugs in here.
            Ok(Err(
                e @ (LinkError::NotConnected(_)
                | LinkError::NotListening { .. }
                | LinkError::Unavailable(_)),
            )) => {
                return Err(invoke_error(ErrorKind::Unavailable, device, e));
            }
            Ok(Err(e @ LinkError::Invalid(_))) => {
                return Err(invoke_error(ErrorKind::BadRequest, device, e));
            }
            Ok(Err(e @ LinkError::Disconnected(_))) => {
                return Err(invoke_error(ErrorKind::Upstream, device, e));
            }
            Ok(Ok(r)) => r,
        };
        let mut out = Reply {
            status: reply.status,
            body: reply.body,
            meta: Vec::new(),
            content_type: None,
        };
        if let Some(ct) = reply.content_type {
            out.meta.push(("content-type".into(), ct));
        }
        Ok(out)
    }

    /// `GET /v1.0/devices`: every registered device with its presence.
    pub fn list(&self) -> Result<Reply, Error> {
        let devices = self.registry.snapshot();
        let list: Vec<_> = devices
            .values()
            .map(|d| {
                status_json(
                    &d.entry.id,
                    &self.presence.get(&d.entry.id),
                    d.entry.added_at.as_deref(),
                )
            })
            .collect();
        Ok(Reply::json(
            serde_json::to_vec(&json!({ "devices": list })).unwrap_or_default(),
        ))
    }

    /// `GET /v1.0/devices/<id>`.
    pub fn get(&self, id: &str) -> Result<Reply, Error> {
        let devices = self.registry.snapshot();
        let d = devices.get(id).ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                codes::NOT_FOUND,
                format!("no device {id:?} is registered"),
            )
        })?;
        let body = status_json(id, &self.presence.get(id), d.entry.added_at.as_deref());
        Ok(Reply::json(serde_json::to_vec(&body).unwrap_or_default()))
    }
}
