//! The verified-login cache: after one PBKDF2 check of a device's password, its next logins (and,
//! under systemd, the logins after a restart of edgecar) cost one HMAC instead of 100,000
//! PBKDF2 iterations, so a site's devices are back within seconds of a restart.
//!
//! An entry is `HMAC-SHA256(key, id ‖ stored hash ‖ password)` under a random key made once per
//! *boot*: key and entries live in `$RUNTIME_DIRECTORY` (systemd's `RuntimeDirectory=`, a tmpfs
//! under `/run` that survives restarts of the service but not a reboot), never on the SD card.
//! What is on disk is unchanged (salted PBKDF2 only), so a stolen card or backup is exactly as hard
//! to crack as before; an entry binds the stored hash, so a replaced password misses and is checked
//! the slow way. Whoever can read `/run/edgecar` could guess passwords at HMAC speed, but that is
//! root or the edgecar user on the running gateway, who can read the process's memory and the
//! (plain MQTT) passwords on the wire as well. Without `$RUNTIME_DIRECTORY` the cache is in memory
//! only (reconnects within one run are fast; a restart starts cold).

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use tracing::warn;

use super::password::PasswordHash;

/// The key file and the entries file in the runtime directory.
const KEY_FILE: &str = "login-key";
const ENTRIES_FILE: &str = "logins";
/// HMAC-SHA256's output.
const TAG_LEN: usize = 32;

/// Verified logins, keyed by a per-boot secret.
pub struct LoginCache {
    key: hmac::Key,
    /// Device id → tag of its last verified login.
    entries: Mutex<HashMap<String, [u8; TAG_LEN]>>,
    /// Where entries are appended (`None`: memory only).
    file: Option<Mutex<std::fs::File>>,
}

fn tag_input(id: &str, hash: &PasswordHash, password: &[u8]) -> Vec<u8> {
    let stored = hash.to_string();
    let mut m = Vec::with_capacity(id.len() + stored.len() + password.len() + 2);
    m.extend_from_slice(id.as_bytes());
    m.push(0);
    m.extend_from_slice(stored.as_bytes());
    m.push(0);
    m.extend_from_slice(password);
    m
}

fn random_key() -> Option<[u8; 32]> {
    let mut k = [0u8; 32];
    SystemRandom::new().fill(&mut k).ok()?;
    Some(k)
}

impl LoginCache {
    /// A cache that lives as long as this process.
    pub fn in_memory() -> Self {
        // Without randomness nothing can match: a zero key would be guessable, so use a key
        // nobody knows and keep nothing (see `hit`).
        let key = random_key().unwrap_or([0; 32]);
        LoginCache {
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
            entries: Mutex::new(HashMap::new()),
            file: None,
        }
    }

    /// The cache in `dir` (made if missing): its key, created on first use, and the logins
    /// verified since boot. Falls back to memory only, with a warning, when `dir` cannot be used.
    pub fn open(dir: &Path) -> Self {
        match Self::try_open(dir) {
            Ok(c) => c,
            Err(e) => {
                warn!(dir = %dir.display(), error = %e, "login cache: runtime directory unusable; logins after a restart will be checked the slow way");
                Self::in_memory()
            }
        }
    }

    fn try_open(dir: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(dir)?;
        let key_path = dir.join(KEY_FILE);
        let key = match std::fs::read(&key_path) {
            Ok(k) if k.len() == 32 => k,
            _ => {
                let k = random_key().ok_or_else(|| std::io::Error::other("no randomness"))?;
                let tmp = dir.join(format!("{KEY_FILE}.tmp"));
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(&k)?;
                std::fs::rename(&tmp, &key_path)?;
                // A new key invalidates every old entry.
                let _ = std::fs::remove_file(dir.join(ENTRIES_FILE));
                k.to_vec()
            }
        };
        let entries_path: PathBuf = dir.join(ENTRIES_FILE);
        let mut entries = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(&entries_path) {
            for line in text.lines() {
                let Some((id, tag)) = line.split_once(' ') else {
                    continue;
                };
                if let Some(tag) = STANDARD_NO_PAD
                    .decode(tag)
                    .ok()
                    .and_then(|b| <[u8; TAG_LEN]>::try_from(b).ok())
                {
                    entries.insert(id.to_owned(), tag);
                }
            }
        }
        // Rewrite compacted (one line per device), then append from there.
        let tmp = dir.join(format!("{ENTRIES_FILE}.tmp"));
        {
            let mut f = std::io::BufWriter::new(
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?,
            );
            for (id, tag) in &entries {
                writeln!(f, "{id} {}", STANDARD_NO_PAD.encode(tag))?;
            }
            f.flush()?;
        }
        std::fs::rename(&tmp, &entries_path)?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&entries_path)?;
        let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
        Ok(LoginCache {
            key,
            entries: Mutex::new(entries),
            file: Some(Mutex::new(file)),
        })
    }

    /// Whether `password` for `id` matches a login verified earlier against the same stored hash.
    pub fn hit(&self, id: &str, hash: &PasswordHash, password: &[u8]) -> bool {
        let want = self
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .copied();
        // ring compares in constant time.
        want.is_some_and(|t| hmac::verify(&self.key, &tag_input(id, hash, password), &t).is_ok())
    }

    /// Records a login PBKDF2 has just verified. Blocking (a file append): call it off the
    /// async runtime's threads.
    pub fn remember(&self, id: &str, hash: &PasswordHash, password: &[u8]) {
        let signed = hmac::sign(&self.key, &tag_input(id, hash, password));
        let Ok(tag) = <[u8; TAG_LEN]>::try_from(signed.as_ref()) else {
            return;
        };
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_owned(), tag);
        if let Some(f) = &self.file {
            let line = format!("{id} {}\n", STANDARD_NO_PAD.encode(tag));
            let mut f = f.lock().unwrap_or_else(PoisonError::into_inner);
            if let Err(e) = f.write_all(line.as_bytes()) {
                warn!(error = %e, "login cache: could not record a login");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verified_login_hits_until_the_password_or_the_boot_changes() {
        let dir = tempfile::tempdir().unwrap();
        let h = PasswordHash::with_iterations("correct horse", 10).unwrap();
        let c = LoginCache::open(dir.path());
        assert!(!c.hit("d1", &h, b"correct horse"));
        c.remember("d1", &h, b"correct horse");
        assert!(c.hit("d1", &h, b"correct horse"));
        assert!(!c.hit("d1", &h, b"wrong"));
        assert!(!c.hit("d2", &h, b"correct horse"));
        // A restart of the process (same runtime directory) keeps it.
        drop(c);
        let c = LoginCache::open(dir.path());
        assert!(c.hit("d1", &h, b"correct horse"));
        // A replaced password (new hash) misses.
        let h2 = PasswordHash::with_iterations("correct horse", 10).unwrap();
        assert!(!c.hit("d1", &h2, b"correct horse"));
        // A new boot (the key is gone with /run) starts cold.
        std::fs::remove_file(dir.path().join(KEY_FILE)).unwrap();
        let c = LoginCache::open(dir.path());
        assert!(!c.hit("d1", &h, b"correct horse"));
        // Nothing secret on disk but the key: entries are tags, not passwords.
        let text = std::fs::read_to_string(dir.path().join(ENTRIES_FILE)).unwrap();
        assert!(!text.contains("correct horse"));
    }
}
