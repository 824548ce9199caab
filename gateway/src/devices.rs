//! Devices: who they are (the registry), how they prove it (passwords), and whether they are here
//! (presence). Transport-neutral: the MQTT and QUIC endpoints authenticate against it.
//!
//! The registry is the file [`file`] describes, held in memory as an immutable snapshot and
//! swapped when the file changes ([`watch`]), so `edgecar device add|remove` work while the daemon
//! runs. Each change bumps a generation that transports watch to drop sessions whose credentials
//! were removed or replaced. A device id doubles as a state key owner (`<id>||<key>`) and an invoke
//! target, so it may not equal an app id the gateway serves.
//!
//! [`Layer`] bundles what every device transport shares: the registry, presence, the links
//! ([`link`]) and the outbox; a transport gets a clone of it and records devices attaching there.

pub mod budget;
pub mod file;
pub mod link;
pub mod logins;
pub mod password;
pub mod request;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tracing::{error, info};

use crate::config::ConfigError;
pub use file::Device;
use password::PasswordHash;

/// The device layer as the transports see it: who may connect, who is connected and on which
/// link, and what waits on disk for each device. Every device transport gets a clone; no
/// transport keeps its own copy of any of these.
#[derive(Clone)]
pub struct Layer {
    /// Device credentials, hot-reloaded.
    pub registry: Arc<Registry>,
    /// Who is connected, and over what; "last seen".
    pub presence: Arc<Presence>,
    /// Each device's current link: a transport records a device attaching to it here.
    pub links: Arc<link::Links>,
    /// What waits on disk for each device, woken when its device attaches or leaves.
    pub outbox: Arc<crate::outbox::Outbox>,
}

/// At most this many password checks run at once: each is tens of milliseconds of CPU, and a
/// storm of CONNECTs must queue rather than take every core from the request path.
const CONCURRENT_AUTH: usize = 2;

/// Proof of a successful login: the credential it matched, so a session can be dropped when that
/// credential is removed or replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The device id.
    pub id: String,
    /// What proved it.
    proof: Proof,
}

/// How a device proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Proof {
    /// Its password: the stored hash it matched (compared, never logged). Replacing or removing
    /// the password ends the session.
    Password(Arc<PasswordHash>),
    /// A client certificate the TLS layer verified against `mqtt.tls.clientCaFile`. The session
    /// holds while the device stays registered (a new password does not change the certificate).
    Certificate,
}

impl Credential {
    /// Whether a client certificate proved this login.
    pub fn by_certificate(&self) -> bool {
        self.proof == Proof::Certificate
    }
}

/// The device registry, live.
pub struct Registry {
    /// The registry file.
    path: PathBuf,
    /// Ids a device may not take (the gateway's app ids).
    reserved: BTreeSet<String>,
    /// The devices as last loaded.
    current: RwLock<Arc<BTreeMap<String, Device>>>,
    /// Bumped on every successful reload.
    generation: watch::Sender<u64>,
    /// Bounds concurrent password checks.
    auth_slots: Semaphore,
    /// Logins already verified this boot: checked with one HMAC instead of PBKDF2.
    logins: Arc<logins::LoginCache>,
}

fn check_reserved(
    devices: &BTreeMap<String, Device>,
    reserved: &BTreeSet<String>,
    path: &Path,
) -> Vec<ConfigError> {
    devices
        .keys()
        .filter(|id| reserved.contains(*id))
        .map(|id| {
            ConfigError::new(
                path,
                format!("devices[id={id}]"),
                format!(
                    "device id {id:?} is also an app id of this gateway; state keys and invoke targets would collide"
                ),
            )
        })
        .collect()
}

/// Checks the registry file as the daemon would load it (for `check-config`).
pub fn check(path: &Path, reserved: &BTreeSet<String>) -> Vec<ConfigError> {
    match file::load(path) {
        Ok(devs) => check_reserved(&devs, reserved, path),
        Err(e) => e,
    }
}

impl Registry {
    /// Loads the registry at `path`; `reserved` are the app ids devices may not take.
    pub fn open(path: PathBuf, reserved: BTreeSet<String>) -> Result<Self, Vec<ConfigError>> {
        let devices = file::load(&path)?;
        let errors = check_reserved(&devices, &reserved, &path);
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Registry {
            path,
            reserved,
            current: RwLock::new(Arc::new(devices)),
            generation: watch::Sender::new(0),
            auth_slots: Semaphore::new(CONCURRENT_AUTH),
            logins: Arc::new(logins::LoginCache::in_memory()),
        })
    }

    /// Keeps verified logins in `dir` (systemd's `$RUNTIME_DIRECTORY`), so they outlive a
    /// restart of edgecar but not a reboot ([`logins`]).
    pub fn with_login_cache_in(mut self, dir: &Path) -> Self {
        self.logins = Arc::new(logins::LoginCache::open(dir));
        self
    }

    /// An empty registry (tests, or a gateway without devices).
    pub fn empty() -> Self {
        Registry {
            path: PathBuf::new(),
            reserved: BTreeSet::new(),
            current: RwLock::new(Arc::default()),
            generation: watch::Sender::new(0),
            auth_slots: Semaphore::new(CONCURRENT_AUTH),
            logins: Arc::new(logins::LoginCache::in_memory()),
        }
    }

    /// The registry file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The devices now.
    pub fn snapshot(&self) -> Arc<BTreeMap<String, Device>> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Whether `id` is a registered device.
    pub fn contains(&self, id: &str) -> bool {
        self.snapshot().contains_key(id)
    }

    /// Checks a device's password (on the blocking pool, a few at a time). Unknown ids, and
    /// certificate-only devices (no password), cost the same as wrong passwords.
    /// A login verified before this boot ([`logins`]) costs one HMAC and skips the queue.
    pub async fn authenticate(&self, id: &str, password: &[u8]) -> Option<Credential> {
        if let Some(hash) = self.snapshot().get(id).and_then(|d| d.hash.clone())
            && self.logins.hit(id, &hash, password)
        {
            return Some(Credential {
                id: id.to_owned(),
                proof: Proof::Password(hash),
            });
        }
        let _slot = self.auth_slots.acquire().await.ok()?;
        let found = self.snapshot().get(id).and_then(|d| d.hash.clone());
        let password = password.to_vec();
        let known = found.is_some();
        let hash = found.unwrap_or_else(|| Arc::new(PasswordHash::decoy()));
        let checked = hash.clone();
        let (cache, device) = (self.logins.clone(), id.to_owned());
        let ok = tokio::task::spawn_blocking(move || {
            let ok = checked.verify(&password);
            if ok && known {
                cache.remember(&device, &checked, &password);
            }
            ok
        })
        .await
        .unwrap_or(false);
        (ok && known).then(|| Credential {
            id: id.to_owned(),
            proof: Proof::Password(hash),
        })
    }

    /// Logs in a device whose client certificate (naming `id`) the TLS layer has verified: it
    /// only has to be registered. No secret is checked here, so nothing is slow.
    pub fn authenticate_certificate(&self, id: &str) -> Option<Credential> {
        self.contains(id).then(|| Credential {
            id: id.to_owned(),
            proof: Proof::Certificate,
        })
    }

    /// Whether a credential still holds: the device exists and, for a password login, with the
    /// same password hash.
    pub fn still_valid(&self, c: &Credential) -> bool {
        self.snapshot().get(&c.id).is_some_and(|d| match &c.proof {
            Proof::Password(matched) => d.hash.as_deref() == Some(&**matched),
            Proof::Certificate => true,
        })
    }

    /// A receiver that changes whenever the registry is reloaded.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Re-reads the file; on error the previous devices stay in force.
    pub fn reload(&self) -> Result<usize, Vec<ConfigError>> {
        let devices = file::load(&self.path)?;
        let errors = check_reserved(&devices, &self.reserved, &self.path);
        if !errors.is_empty() {
            return Err(errors);
        }
        let n = devices.len();
        match self.current.write() {
            Ok(mut g) => *g = Arc::new(devices),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(devices),
        }
        self.generation.send_modify(|g| *g += 1);
        Ok(n)
    }
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Re-reads the registry file when it changes (polled every `every`; acted on once it has been
/// quiet for one poll, so a half-written file from another tool is not read). Runs until aborted.
pub async fn watch(registry: Arc<Registry>, every: Duration) {
    let path = registry.path.clone();
    let p = path.clone();
    let seen = tokio::task::spawn_blocking(move || file_stamp(&p))
        .await
        .ok()
        .flatten();
    let p = path.clone();
    crate::watch::on_quiet_change(every, seen, move || file_stamp(&p), || {
        let (r, path) = (registry.clone(), path.clone());
        async move {
            match tokio::task::spawn_blocking(move || r.reload()).await {
                Ok(Ok(n)) => info!(devices = n, file = %path.display(), "device registry reloaded"),
                Ok(Err(errors)) => {
                    for e in errors {
                        error!(error = %e, "device registry reload refused; previous devices stay in force");
                    }
                }
                Err(_) => {}
            }
        }
    })
    .await;
}

/// What is known about one device's connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Open connections (a device may hold several, e.g. one per MQTT client id).
    pub connections: u32,
    /// The transport of the newest connection, e.g. `mqtt/3.1.1`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Unix milliseconds since the device has been connected without interruption.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected_since_ms: Option<u64>,
    /// Unix milliseconds the device was last heard from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen_ms: Option<u64>,
    /// Why its last connection ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_disconnect: Option<String>,
}

/// Presence of every device that has connected since start-up. Transports report; the devices
/// block reads. Memory is bounded by the number of registered devices that ever connected.
#[derive(Default)]
pub struct Presence {
    /// Device id → status.
    devices: Mutex<HashMap<String, Status>>,
    /// Where connect/disconnect events go, when they are published.
    events: std::sync::OnceLock<tokio::sync::mpsc::Sender<PresenceEvent>>,
}

/// A device's first connection opened, or its last one closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEvent {
    /// The device.
    pub device: String,
    /// `true` for connected, `false` for disconnected.
    pub connected: bool,
    /// The protocol of the connection (`mqtt3.1.1`, `mqtt5`).
    pub protocol: Option<String>,
    /// Why the connection ended (disconnects only).
    pub reason: Option<String>,
    /// When (Unix ms).
    pub at_ms: u64,
}

/// Events waiting to be published; beyond this they are dropped (and logged).
const PRESENCE_BACKLOG: usize = 1024;

impl Presence {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Status>) -> T) -> T {
        match self.devices.lock() {
            Ok(mut g) => f(&mut g),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Starts sending connect/disconnect events; returns their receiver (once).
    pub fn events(&self) -> Option<tokio::sync::mpsc::Receiver<PresenceEvent>> {
        let (tx, rx) = tokio::sync::mpsc::channel(PRESENCE_BACKLOG);
        self.events.set(tx).ok().map(|()| rx)
    }

    fn emit(&self, e: PresenceEvent) {
        if let Some(tx) = self.events.get()
            && tx.try_send(e).is_err()
        {
            tracing::warn!(
                "device presence events are not being published fast enough; one was dropped"
            );
        }
    }

    /// A connection of `id` was accepted.
    pub fn connected(&self, id: &str, protocol: &str, now_ms: u64) {
        let first = self.with(|m| {
            let s = m.entry(id.to_owned()).or_default();
            let first = s.connections == 0;
            if first {
                s.connected_since_ms = Some(now_ms);
            }
            s.connections += 1;
            s.protocol = Some(protocol.to_owned());
            s.last_seen_ms = Some(now_ms);
            first
        });
        if first {
            self.emit(PresenceEvent {
                device: id.to_owned(),
                connected: true,
                protocol: Some(protocol.to_owned()),
                reason: None,
                at_ms: now_ms,
            });
        }
    }

    /// A connection of `id` ended.
    pub fn disconnected(&self, id: &str, reason: &str, now_ms: u64) {
        let last = self.with(|m| {
            let s = m.entry(id.to_owned()).or_default();
            s.connections = s.connections.saturating_sub(1);
            if s.connections == 0 {
                s.connected_since_ms = None;
            }
            s.last_seen_ms = Some(now_ms);
            s.last_disconnect = Some(reason.to_owned());
            s.connections == 0
        });
        if last {
            self.emit(PresenceEvent {
                device: id.to_owned(),
                connected: false,
                protocol: None,
                reason: Some(reason.to_owned()),
                at_ms: now_ms,
            });
        }
    }

    /// `id` was heard from.
    pub fn seen(&self, id: &str, now_ms: u64) {
        self.with(|m| {
            if let Some(s) = m.get_mut(id) {
                s.last_seen_ms = Some(now_ms);
            }
        });
    }

    /// `id` was heard from through a transport that does not see its connections (an external
    /// broker): records when and how, and leaves the connection count alone.
    pub fn heard(&self, id: &str, protocol: &str, now_ms: u64) {
        self.with(|m| {
            let s = m.entry(id.to_owned()).or_default();
            if s.protocol.as_deref() != Some(protocol) {
                s.protocol = Some(protocol.to_owned());
            }
            s.last_seen_ms = Some(now_ms);
        });
    }

    /// One device's status (default when never seen).
    pub fn get(&self, id: &str) -> Status {
        self.with(|m| m.get(id).cloned().unwrap_or_default())
    }

    /// Devices with at least one open connection.
    pub fn connected_count(&self) -> usize {
        self.with(|m| m.values().filter(|s| s.connections > 0).count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn authenticate_and_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devices.yaml");
        let h = PasswordHash::with_iterations("pw", 100).unwrap();
        file::add(&path, "dev1", &h, false, 0).unwrap();
        let reg = Registry::open(path.clone(), BTreeSet::new()).unwrap();
        assert!(reg.authenticate("dev1", b"nope").await.is_none());
        assert!(reg.authenticate("ghost", b"pw").await.is_none());
        let c = reg.authenticate("dev1", b"pw").await.unwrap();
        assert!(reg.still_valid(&c));
        let changes = reg.changes();
        let h2 = PasswordHash::with_iterations("pw2", 100).unwrap();
        file::add(&path, "dev1", &h2, true, 0).unwrap();
        assert_eq!(reg.reload().unwrap(), 1);
        assert!(changes.has_changed().unwrap());
        assert!(
            !reg.still_valid(&c),
            "a replaced password ends old sessions"
        );
        std::fs::write(&path, "devices: [oops").unwrap();
        assert!(reg.reload().is_err());
        assert!(
            reg.contains("dev1"),
            "a broken file keeps the previous devices"
        );
    }

    #[tokio::test]
    async fn certificate_logins_need_registration_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devices.yaml");
        let h = PasswordHash::with_iterations("pw", 100).unwrap();
        file::add(&path, "pwdev", &h, false, 0).unwrap();
        file::add_certificate_only(&path, "cam", false, 0).unwrap();
        let reg = Registry::open(path.clone(), BTreeSet::new()).unwrap();
        // A certificate-only device has no password that could match.
        assert!(reg.authenticate("cam", b"").await.is_none());
        assert!(reg.authenticate_certificate("ghost").is_none());
        let cam = reg.authenticate_certificate("cam").unwrap();
        assert!(cam.by_certificate());
        // A password device may also present a certificate; a new password does not end that.
        let by_cert = reg.authenticate_certificate("pwdev").unwrap();
        let by_pw = reg.authenticate("pwdev", b"pw").await.unwrap();
        assert!(!by_pw.by_certificate());
        let h2 = PasswordHash::with_iterations("pw2", 100).unwrap();
        file::add(&path, "pwdev", &h2, true, 0).unwrap();
        reg.reload().unwrap();
        assert!(reg.still_valid(&by_cert));
        assert!(!reg.still_valid(&by_pw));
        // Removing the device ends certificate sessions too.
        file::remove(&path, "cam").unwrap();
        reg.reload().unwrap();
        assert!(!reg.still_valid(&cam));
    }

    #[test]
    fn device_ids_may_not_shadow_app_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devices.yaml");
        let h = PasswordHash::with_iterations("pw", 100).unwrap();
        file::add(&path, "orders", &h, false, 0).unwrap();
        let reserved: BTreeSet<String> = ["orders".to_string()].into();
        assert_eq!(check(&path, &reserved).len(), 1);
        assert!(Registry::open(path, reserved).is_err());
    }

    #[test]
    fn presence_counts_connections() {
        let p = Presence::default();
        p.connected("d", "mqtt/5", 10);
        p.connected("d", "mqtt/3.1.1", 20);
        assert_eq!(p.get("d").connections, 2);
        assert_eq!(p.get("d").connected_since_ms, Some(10));
        p.disconnected("d", "client disconnected", 30);
        assert_eq!(p.connected_count(), 1);
        p.disconnected("d", "keepalive timeout", 40);
        let s = p.get("d");
        assert_eq!((s.connections, s.connected_since_ms), (0, None));
        assert_eq!(s.last_seen_ms, Some(40));
        assert_eq!(s.last_disconnect.as_deref(), Some("keepalive timeout"));
        assert_eq!(p.get("never"), Status::default());
    }
}
