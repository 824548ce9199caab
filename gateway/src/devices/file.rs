//! The device registry file (`devices.yaml`): its format, validation, and the edits
//! `edgecar device add|remove` make to it.
//!
//! A YAML file rather than a sled tree, so that devices can be added and removed while the daemon
//! runs (it holds the database lock; it re-reads this file instead), and so that configuration
//! management can ship it. It holds hashes only. Edits take an exclusive lock on `<file>.lock`
//! (two concurrent `edgecar device add` cannot lose each other's device), write a temporary file
//! with mode 0600, sync it and rename it over the old one, so the daemon never reads half a file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::password::PasswordHash;
use crate::clock::rfc3339;
use crate::config::{ConfigError, validate_name};

/// Header written above the device list, for whoever opens the file.
const HEADER: &str = "\
# edgecar device registry. Managed by `edgecar device add|remove|list`; a running edgecar picks
# up changes within a few seconds. Passwords are stored only as salted PBKDF2-HMAC-SHA256 hashes.
# A device connects over MQTT with username = its id and the password shown once by `add`, or
# with a client certificate whose CN is its id (mqtt.tls.clientCaFile). An entry without
# passwordHash is certificate-only (`add --cert-only`).
";

/// One device as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceEntry {
    /// The device id: its MQTT username, its topic tree and its state key prefix.
    pub id: String,
    /// `$pbkdf2-sha256$i=<n>$<salt>$<hash>`; absent for a device that may only log in with a
    /// client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// When it was added (RFC 3339, UTC), for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_at: Option<String>,
    /// Pub/sub topics the operator lets this device receive *other devices'* data on, as
    /// `<pubsub>/<topic>` or `<pubsub>/*` (see `policy::SubscriptionPolicy`). Empty: the device
    /// may subscribe to apps' topics only and never sees another device's events.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribe: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RegistryFile {
    #[serde(default)]
    devices: Vec<DeviceEntry>,
}

/// A validated device, as the running gateway keeps it (its id is the registry's key). Small on
/// purpose: a registry of ten thousand devices is held in memory (docs/benchmarks.md).
#[derive(Debug, Clone)]
pub struct Device {
    /// Its parsed hash, shared with the sessions it proved; `None` for a certificate-only device.
    pub hash: Option<Arc<PasswordHash>>,
    /// When it was added (RFC 3339, UTC), as stored.
    pub added_at: Option<Box<str>>,
    /// Topics granted for other devices' data (`subscribe` in the file), usually none.
    pub subscribe: Box<[Box<str>]>,
}

/// Why an edit of the registry failed.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The file (or its lock) could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The existing file is invalid; it is left as it is.
    #[error("the registry has errors; fix or remove them first:\n  {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Invalid(Vec<ConfigError>),
    /// The id is not a valid device id.
    #[error("invalid device id: {0}")]
    BadId(String),
    /// `add` of an id that exists, without `--replace`.
    #[error("device {0:?} already exists (use --replace to change its credentials)")]
    Exists(String),
    /// `remove` of an id that does not exist.
    #[error("no device {0:?} in the registry")]
    Missing(String),
    /// Hashing failed.
    #[error(transparent)]
    Password(#[from] super::password::PasswordError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EditError + '_ {
    move |source| EditError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A device id: what fits one MQTT topic level, a state key prefix and an app-id position.
pub fn validate_id(id: &str) -> Result<(), String> {
    validate_name(id)
}

/// A subscription grant: `<pubsub>/<topic>` or `<pubsub>/*`.
fn validate_grant(g: &str) -> Result<(), String> {
    let Some((pubsub, topic)) = g.split_once('/') else {
        return Err(format!(
            "{g:?} must be <pubsub>/<topic> or <pubsub>/* (e.g. pubsub/telemetry)"
        ));
    };
    validate_name(pubsub).map_err(|m| format!("{g:?}: pub/sub name {m}"))?;
    if topic.is_empty() {
        return Err(format!("{g:?}: the topic is empty"));
    }
    Ok(())
}

/// Reads and validates the registry; a missing file is an empty registry. Every problem is
/// reported with its field.
pub fn load(path: &Path) -> Result<BTreeMap<String, Device>, Vec<ConfigError>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => {
            return Err(vec![ConfigError::new(
                path,
                "",
                format!("cannot read: {e}"),
            )]);
        }
    };
    parse(&text, path)
}

/// Reads registry text into its entries, as stored (not yet validated).
fn entries(text: &str, path: &Path) -> Result<Vec<DeviceEntry>, Vec<ConfigError>> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let de = serde_norway::Deserializer::from_str(text);
    let file: RegistryFile = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        vec![ConfigError::new(path, field, e.into_inner().to_string())]
    })?;
    Ok(file.devices)
}

/// Validates registry text (see [`load`]).
pub fn parse(text: &str, path: &Path) -> Result<BTreeMap<String, Device>, Vec<ConfigError>> {
    validate(entries(text, path)?, path)
}

/// Checks every entry, collecting every problem.
fn validate(
    entries: Vec<DeviceEntry>,
    path: &Path,
) -> Result<BTreeMap<String, Device>, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut devices = BTreeMap::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let field = format!("devices[{i}]");
        if let Err(m) = validate_id(&entry.id) {
            errors.push(ConfigError::new(path, format!("{field}.id"), m));
            continue;
        }
        let hash = match entry.password_hash.as_deref().map(PasswordHash::parse) {
            None => None,
            Some(Ok(h)) => Some(h),
            Some(Err(e)) => {
                errors.push(ConfigError::new(
                    path,
                    format!("{field}.passwordHash"),
                    e.to_string(),
                ));
                continue;
            }
        };
        if devices.contains_key(&entry.id) {
            errors.push(ConfigError::new(
                path,
                format!("{field}.id"),
                format!("device {:?} is listed twice", entry.id),
            ));
            continue;
        }
        let mut bad_grant = false;
        for (j, g) in entry.subscribe.iter().enumerate() {
            if let Err(m) = validate_grant(g) {
                errors.push(ConfigError::new(path, format!("{field}.subscribe[{j}]"), m));
                bad_grant = true;
            }
        }
        if bad_grant {
            continue;
        }
        let device = Device {
            hash: hash.map(Arc::new),
            added_at: entry.added_at.map(String::into_boxed_str),
            subscribe: entry
                .subscribe
                .into_iter()
                .map(String::into_boxed_str)
                .collect(),
        };
        devices.insert(entry.id, device);
    }
    if errors.is_empty() {
        Ok(devices)
    } else {
        Err(errors)
    }
}

/// Runs `edit` on the registry's entries under the file lock, then writes the result atomically.
fn edit<T>(
    path: &Path,
    edit: impl FnOnce(&mut Vec<DeviceEntry>) -> Result<T, EditError>,
) -> Result<T, EditError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::create_private_dir(dir).map_err(io_err(dir))?;
    }
    let lock_path = path.with_extension("yaml.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    give_to_directory_owner(&lock_path);
    fs2::FileExt::lock_exclusive(&lock).map_err(io_err(&lock_path))?;
    // The entries as stored (other devices' lines are written back unchanged), once they are
    // known to be valid.
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut entries = entries(&text, path).map_err(EditError::Invalid)?;
    validate(entries.clone(), path).map_err(EditError::Invalid)?;
    let out = edit(&mut entries)?;
    entries.sort_by(|a, b| a.id.cmp(&b.id));
    let yaml = serde_norway::to_string(&RegistryFile { devices: entries })
        .map_err(|e| io_err(path)(std::io::Error::other(e)))?;
    write_atomically(path, &format!("{HEADER}{yaml}"))?;
    drop(lock);
    Ok(out)
}

fn write_atomically(path: &Path, text: &str) -> Result<(), EditError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("yaml.tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    give_to_directory_owner(&tmp);
    f.write_all(text.as_bytes()).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The rename is durable once the directory is synced.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Makes `path` belong to the owner of its directory. An operator runs `edgecar device add` as
/// root while the service runs as its own (often systemd's dynamic) user, which owns the state
/// directory: the file it must read keeps that owner. Without the right to change owners (not
/// root), the file stays the caller's, which is then also the directory's owner in practice.
fn give_to_directory_owner(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Ok(m) = std::fs::metadata(dir) {
        let _ = std::os::unix::fs::chown(path, Some(m.uid()), Some(m.gid()));
    }
}

/// Adds a device with a password (or, with `replace`, gives an existing one a new password).
pub fn add(
    path: &Path,
    id: &str,
    hash: &PasswordHash,
    replace: bool,
    now_unix: u64,
) -> Result<(), EditError> {
    add_entry(path, id, Some(hash), replace, now_unix)
}

/// Adds a device that has no password and logs in only with a client certificate (or, with
/// `replace`, takes an existing device's password away).
pub fn add_certificate_only(
    path: &Path,
    id: &str,
    replace: bool,
    now_unix: u64,
) -> Result<(), EditError> {
    add_entry(path, id, None, replace, now_unix)
}

fn add_entry(
    path: &Path,
    id: &str,
    hash: Option<&PasswordHash>,
    replace: bool,
    now_unix: u64,
) -> Result<(), EditError> {
    validate_id(id).map_err(EditError::BadId)?;
    edit(path, |entries| {
        let entry = DeviceEntry {
            id: id.to_owned(),
            password_hash: hash.map(ToString::to_string),
            added_at: Some(rfc3339(now_unix)),
            subscribe: Vec::new(),
        };
        match entries.iter_mut().find(|e| e.id == id) {
            Some(_) if !replace => Err(EditError::Exists(id.to_owned())),
            Some(e) => {
                // New credentials; what the operator granted stays.
                let subscribe = std::mem::take(&mut e.subscribe);
                *e = DeviceEntry { subscribe, ..entry };
                Ok(())
            }
            None => {
                entries.push(entry);
                Ok(())
            }
        }
    })
}

/// Removes a device.
pub fn remove(path: &Path, id: &str) -> Result<(), EditError> {
    edit(path, |entries| {
        let before = entries.len();
        entries.retain(|e| e.id != id);
        if entries.len() == before {
            Err(EditError::Missing(id.to_owned()))
        } else {
            Ok(())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(p: &str) -> PasswordHash {
        PasswordHash::with_iterations(p, 100).unwrap()
    }

    #[test]
    fn add_remove_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/devices.yaml");
        assert!(load(&path).unwrap().is_empty(), "missing file = empty");
        add(&path, "dev1", &hash("a"), false, 0).unwrap();
        add(&path, "dev2", &hash("b"), false, 86_400 * 365).unwrap();
        assert!(matches!(
            add(&path, "dev1", &hash("c"), false, 0),
            Err(EditError::Exists(_))
        ));
        let devs = load(&path).unwrap();
        assert_eq!(devs.len(), 2);
        assert!(devs["dev1"].hash.as_ref().unwrap().verify(b"a"));
        assert_eq!(
            devs["dev2"].added_at.as_deref(),
            Some("1971-01-01T00:00:00Z")
        );
        add(&path, "dev1", &hash("c"), true, 0).unwrap();
        assert!(
            load(&path).unwrap()["dev1"]
                .hash
                .as_ref()
                .unwrap()
                .verify(b"c")
        );
        remove(&path, "dev2").unwrap();
        assert!(matches!(remove(&path, "dev2"), Err(EditError::Missing(_))));
        assert_eq!(load(&path).unwrap().len(), 1);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# edgecar device registry"), "{text}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            add(&path, "a/b", &hash("x"), false, 0),
            Err(EditError::BadId(_))
        ));
    }

    #[test]
    fn certificate_only_devices_have_no_password_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devices.yaml");
        add_certificate_only(&path, "cam", false, 0).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text
                .lines()
                .any(|l| l.trim_start().starts_with("passwordHash")),
            "{text}"
        );
        assert!(load(&path).unwrap()["cam"].hash.is_none());
        // --replace gives it a password, and back.
        add(&path, "cam", &hash("p"), true, 0).unwrap();
        assert!(load(&path).unwrap()["cam"].hash.is_some());
        add_certificate_only(&path, "cam", true, 0).unwrap();
        assert!(load(&path).unwrap()["cam"].hash.is_none());
    }

    #[test]
    fn every_bad_entry_is_reported() {
        let text = "devices:\n- id: ok\n  passwordHash: nope\n- id: 'a b'\n  passwordHash: x\n";
        let errs = parse(text, Path::new("d.yaml")).unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["devices[0].passwordHash", "devices[1].id"]);
        let errs = parse("devices:\n- id: x\n  pasword: y\n", Path::new("d.yaml")).unwrap_err();
        assert!(errs[0].field.starts_with("devices[0]"), "{errs:?}");
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    }
}
