//! The devices building block: commands from apps to devices, and who is connected.
//!
//! `POST /v1.0/invoke/<device-id>/method/<m>` reaches here when `<device-id>` is a registered
//! device and not an app: the block sends the command through the link the device is on now
//! ([`Links::of`]: the MQTT endpoint, the external broker, QUIC), waits up to
//! `devices.commandTimeout` for the reply and turns it, or the failure, into Dapr's invoke
//! answers. `GET /v1.0/devices[/<id>]` lists registered devices with their presence.
//!
//! A device that is not connected (or not listening for commands) fails the call at once with
//! 503 — unless the app asked for the **mailbox** with the `x-edgecar-mailbox-ttl` header: then
//! the command is queued, transport-neutral ([`DeviceMessage::Command`]), in the device's durable
//! outbox ([`crate::outbox`]) for that long, and goes out on whichever link the device wakes on; the
//! app gets `202 Accepted` with a mailbox id, and fetches the device's answer later from
//! `GET /v1.0/devices/<id>/mailbox/<mailbox-id>`.
//!
//! It also serves devices' own pub/sub subscriptions (`subscribe` / `unsubscribe`), stored by
//! [`crate::blocks::pubsub::devices`].

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::blocks::pubsub::devices::DeviceSubscriptions;
use crate::call::{Caller, Reply};
use crate::clock::rfc3339;
pub use crate::devices::link::{Command, CommandReply, DeviceLink, LinkError};
use crate::devices::link::{DeviceMessage, Links, check_method};
use crate::devices::{Presence, Registry, Status};
use crate::error::{Error, ErrorKind, codes};
use crate::outbox::{Outbox, Record, RecordReply};

/// The header an app sets to have a command queued for a sleeping device.
pub const MAILBOX_HEADER: &str = "x-edgecar-mailbox-ttl";

/// Reads the mailbox header: seconds, or a duration such as `90s`, `10m`, `2h`.
pub fn mailbox_ttl(value: &str, max: Duration) -> Result<Duration, Error> {
    let v = value.trim();
    let ttl = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => crate::config::units::parse_duration(v).map_err(|e| {
            Error::malformed(format!(
                "{MAILBOX_HEADER}: {e} (give seconds, or a duration like 90s, 10m, 2h)"
            ))
        })?,
    };
    if ttl < Duration::from_secs(1) || ttl > max {
        return Err(Error::malformed(format!(
            "{MAILBOX_HEADER} must be between 1s and {} (devices.outbox.maxCommandTtl)",
            crate::config::units::format_duration(max)
        )));
    }
    Ok(ttl)
}

/// The devices building block.
pub struct DevicesBlock {
    /// Registered devices.
    registry: Arc<Registry>,
    /// Who is connected.
    presence: Arc<Presence>,
    /// The links devices are on.
    links: Arc<Links>,
    /// How long a command waits for its reply.
    timeout: Duration,
    /// Longest mailbox TTL an app may ask for.
    max_command_ttl: Duration,
    /// Outboxes and pub/sub subscriptions, once storage is open.
    queued: Option<Queued>,
}

/// The durable parts: device outboxes (mailbox) and pub/sub subscriptions.
struct Queued {
    outbox: Arc<Outbox>,
    subs: Arc<DeviceSubscriptions>,
}

fn invoke_error(kind: ErrorKind, device: &str, reason: impl std::fmt::Display) -> Error {
    Error::new(
        kind,
        codes::DIRECT_INVOKE,
        format!("failed to invoke, id: {device}, err: {reason}"),
    )
}

/// The device making a device-only call (`subscribe`, `unsubscribe`).
fn device_of(caller: &Caller) -> Result<&str, Error> {
    match caller {
        Caller::Device { id } => Ok(id),
        Caller::LocalApp { .. } => Err(Error::new(
            ErrorKind::Forbidden,
            codes::PERMISSION_DENIED,
            format!(
                "{caller} is not a device: pub/sub subscriptions of apps are Dapr's /dapr/subscribe"
            ),
        )),
    }
}

fn record_json(r: &Record) -> serde_json::Value {
    json!({
        "id": r.id,
        "device": r.device,
        "method": r.method,
        "verb": r.verb,
        "status": if r.reply.is_some() { "answered" } else if r.delivered_at_ms.is_some() { "delivered" } else { "queued" },
        "createdAt": rfc3339(r.created_at_ms / 1000),
        "expiresAt": rfc3339(r.expires_at_ms / 1000),
        "deliveredAt": r.delivered_at_ms.map(|ms| rfc3339(ms / 1000)),
    })
}

fn status_json(
    id: &str,
    s: &Status,
    added_at: Option<&str>,
    link: Option<&'static str>,
) -> serde_json::Value {
    json!({
        "id": id,
        "link": link,
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
    /// The block over a registry, presence table and the gateway's links; commands wait
    /// `timeout`.
    pub fn new(
        registry: Arc<Registry>,
        presence: Arc<Presence>,
        links: Arc<Links>,
        timeout: Duration,
    ) -> Self {
        DevicesBlock {
            registry,
            presence,
            links,
            timeout,
            max_command_ttl: Duration::from_secs(7 * 24 * 3600),
            queued: None,
        }
    }

    /// Longest mailbox TTL an app may ask for.
    pub fn max_command_ttl(&self) -> Duration {
        self.max_command_ttl
    }

    /// Adds the mailbox and devices' pub/sub subscriptions.
    pub fn with_outbox(
        mut self,
        outbox: Arc<Outbox>,
        subs: Arc<DeviceSubscriptions>,
        max_command_ttl: Duration,
    ) -> Self {
        self.queued = Some(Queued { outbox, subs });
        self.max_command_ttl = max_command_ttl;
        self
    }

    fn queued(&self) -> Result<&Queued, Error> {
        self.queued.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::Internal,
                codes::INTERNAL,
                "the device outboxes are not open",
            )
        })
    }

    /// A device subscribes to a pub/sub topic (the component was checked by the caller).
    pub async fn subscribe(
        &self,
        caller: &Caller,
        pubsub: &str,
        topic: &str,
    ) -> Result<Reply, Error> {
        let id = device_of(caller)?;
        let q = self.queued()?;
        let created = q.subs.subscribe(id, pubsub, topic).await?;
        // Where the events arrive is the link's business (MQTT adds its topic to this reply).
        let body = json!({
            "pubsub": pubsub,
            "topic": topic,
            "created": created,
        });
        let mut r = Reply::json(serde_json::to_vec(&body).unwrap_or_default());
        if created {
            r.status = 201;
        }
        Ok(r)
    }

    /// A device ends a pub/sub subscription.
    pub async fn unsubscribe(
        &self,
        caller: &Caller,
        pubsub: &str,
        topic: &str,
    ) -> Result<Reply, Error> {
        let id = device_of(caller)?;
        if self.queued()?.subs.unsubscribe(id, pubsub, topic).await? {
            Ok(Reply::no_content())
        } else {
            Err(Error::new(
                ErrorKind::NotFound,
                codes::NOT_FOUND,
                format!(
                    "device {id:?} has no subscription to topic {topic:?} of pubsub {pubsub:?}"
                ),
            ))
        }
    }

    /// Queues `cmd` in the device's mailbox: `202` with the id to fetch the answer by.
    async fn queue_command(
        &self,
        device: &str,
        cmd: &Command,
        ttl: Duration,
        why: &LinkError,
    ) -> Result<Reply, Error> {
        let q = self.queued()?;
        check_method(&cmd.method).map_err(|e| invoke_error(ErrorKind::BadRequest, device, e))?;
        let id = q.outbox.new_id();
        let now = crate::clock::unix_ms();
        let expires = now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let record = Record {
            id: id.clone(),
            device: device.to_owned(),
            method: cmd.method.clone(),
            verb: cmd.verb.to_string(),
            created_at_ms: now,
            expires_at_ms: expires,
            delivered_at_ms: None,
            reply: None,
        };
        let out = DeviceMessage::Command {
            id: id.clone(),
            method: cmd.method.clone(),
            verb: cmd.verb.to_string(),
            content_type: cmd.content_type.clone(),
            traceparent: cmd.traceparent.clone(),
            body: cmd.body.clone(),
        };
        q.outbox
            .record_command(record.clone(), out)
            .await
            .map_err(|e| match e {
                crate::outbox::OutboxError::Full(m) => Error::new(
                    ErrorKind::Unavailable,
                    codes::DIRECT_INVOKE,
                    format!(
                        "failed to invoke, id: {device}, err: the device's mailbox is full: {m}"
                    ),
                ),
                crate::outbox::OutboxError::Storage(m) => {
                    invoke_error(ErrorKind::Internal, device, m)
                }
            })?;
        tracing::info!(device, id = %id, reason = %why, "command queued in the device's mailbox");
        let mut r = Reply::json(serde_json::to_vec(&record_json(&record)).unwrap_or_default());
        r.status = 202;
        r.meta.push((
            "location".into(),
            format!("/v1.0/devices/{device}/mailbox/{id}"),
        ));
        Ok(r)
    }

    /// A device answered a command no app call waits for: a mailbox command's answer is stored.
    pub fn mailbox_answer(&self, device: &str, rid: &str, reply: &CommandReply) -> bool {
        let Some(q) = &self.queued else { return false };
        q.outbox.complete(
            device,
            rid,
            RecordReply {
                status: reply.status,
                content_type: reply.content_type.clone(),
                body: reply.body.clone(),
                at_ms: crate::clock::unix_ms(),
            },
        )
    }

    /// `GET /v1.0/devices/<id>/mailbox/<mailbox-id>`: while the command waits, `202` and its
    /// state; once answered, the device's answer as the invoke call would have returned it.
    pub fn mailbox_get(&self, device: &str, id: &str) -> Result<Reply, Error> {
        let q = self.queued()?;
        let Some(rec) = q.outbox.record(device, id) else {
            return Err(Error::new(
                ErrorKind::NotFound,
                codes::NOT_FOUND,
                format!(
                    "device {device:?} has no mailbox command {id:?} (unknown, or older than its retention)"
                ),
            ));
        };
        if let Some(a) = &rec.reply {
            let mut out = Reply {
                status: a.status,
                body: a.body.clone(),
                meta: vec![("x-edgecar-mailbox".into(), "answered".into())],
                content_type: None,
            };
            if let Some(ct) = &a.content_type {
                out.meta.push(("content-type".into(), ct.clone()));
            }
            return Ok(out);
        }
        if rec.delivered_at_ms.is_none() && rec.expires_at_ms <= crate::clock::unix_ms() {
            return Err(invoke_error(
                ErrorKind::Timeout,
                device,
                format!(
                    "mailbox command {id} expired at {} before the device took it",
                    rfc3339(rec.expires_at_ms / 1000)
                ),
            ));
        }
        let mut r = Reply::json(serde_json::to_vec(&record_json(&rec)).unwrap_or_default());
        r.status = 202;
        Ok(r)
    }

    /// Whether `id` is a registered device.
    pub fn is_device(&self, id: &str) -> bool {
        self.registry.contains(id)
    }

    /// How full each device's outbox is, for the devices whose outbox is open (every device that
    /// connected or was sent something since start); empty in external broker mode.
    pub async fn outbox_backlogs(&self) -> std::collections::HashMap<String, crate::queue::Stats> {
        match &self.queued {
            Some(q) => q.outbox.open_backlogs().await,
            None => std::collections::HashMap::new(),
        }
    }

    /// Up to `limit` devices for the status page, connected ones first, each with presence and
    /// its outbox backlog (0 without an outbox; `null` when its outbox is on disk but has not
    /// been opened since start, so it is not read just to be shown).
    pub async fn status_rows(&self, limit: usize) -> Vec<serde_json::Value> {
        let devices = self.registry.snapshot();
        let backlogs = self.outbox_backlogs().await;
        let mut rows: Vec<(bool, serde_json::Value)> = devices
            .iter()
            .map(|(id, d)| {
                let s = self.presence.get(id);
                let link = self.links.of(id).map(|l| l.kind());
                let mut row = status_json(id, &s, d.added_at.as_deref(), link);
                let backlog = backlogs.get(id).map(|s| s.messages).or_else(|| {
                    let q = self.queued.as_ref()?;
                    (!q.outbox.has_outbox(id)).then_some(0)
                });
                row["backlog"] = json!(backlog);
                (s.connections > 0, row)
            })
            .collect();
        // Stable: connected first, then by id (the registry is sorted).
        rows.sort_by_key(|(connected, _)| !*connected);
        rows.into_iter().take(limit).map(|(_, r)| r).collect()
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
        // The link the device is on; while it is away, the first link says why it cannot take
        // the command (and the mailbox takes it, if the app asked).
        let Some(link) = self.links.of(device).or_else(|| self.links.any()) else {
            return Err(invoke_error(
                ErrorKind::Unavailable,
                device,
                "no device endpoint is enabled (mqtt.enabled is false)",
            ));
        };
        let cmd_ttl = cmd.mailbox_ttl;
        let cmd_copy = cmd.clone();
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
            Ok(Err(
                e @ (LinkError::NotConnected(_)
                | LinkError::NotListening { .. }
                | LinkError::NotReachable(_)),
            )) => {
                if let Some(ttl) = cmd_ttl {
                    return self.queue_command(device, &cmd_copy, ttl, &e).await;
                }
                return Err(invoke_error(ErrorKind::Unavailable, device, e));
            }
            Ok(Err(e @ LinkError::Unavailable(_))) => {
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
            .iter()
            .map(|(id, d)| {
                let link = self.links.of(id).map(|l| l.kind());
                status_json(id, &self.presence.get(id), d.added_at.as_deref(), link)
            })
            .collect();
        Ok(Reply::json(
            serde_json::to_vec(&json!({ "devices": list })).unwrap_or_default(),
        ))
    }

    /// `GET /v1.0/devices/<id>`: presence, pub/sub subscriptions and what waits in its outbox.
    pub async fn get(&self, id: &str) -> Result<Reply, Error> {
        let devices = self.registry.snapshot();
        let d = devices.get(id).ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                codes::NOT_FOUND,
                format!("no device {id:?} is registered"),
            )
        })?;
        let link = self.links.of(id).map(|l| l.kind());
        let mut body = status_json(id, &self.presence.get(id), d.added_at.as_deref(), link);
        if let Some(q) = &self.queued {
            let subs: Vec<_> = q
                .subs
                .of(id)
                .into_iter()
                .map(|(pubsub, topic)| json!({"pubsub": pubsub, "topic": topic}))
                .collect();
            body["subscriptions"] = json!(subs);
            body["outboxPending"] = json!(q.outbox.pending(id).await);
        }
        Ok(Reply::json(serde_json::to_vec(&body).unwrap_or_default()))
    }
}
