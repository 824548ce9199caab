//! Device passwords: salted PBKDF2-HMAC-SHA256 hashes, generated passwords, constant-time checks.
//!
//! The registry never holds a password, only a hash in the PHC string format
//! (`$pbkdf2-sha256$i=<iterations>$<salt>$<hash>`, base64 without padding), so a copy of the file
//! does not give a device's credentials away. PBKDF2 with many iterations makes guessing slow;
//! ring's `verify` compares in constant time. Hashing is CPU work of tens of milliseconds: callers
//! on the async runtime run it on the blocking pool.

use std::num::NonZeroU32;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use ring::pbkdf2;
use ring::rand::{SecureRandom, SystemRandom};

/// Iterations for new hashes (OWASP's 2023 floor for PBKDF2-HMAC-SHA256 is 600k; 100k keeps a
/// CONNECT on a Raspberry Pi near 100 ms while still costing a guesser dearly). Stored per hash,
/// so it can be raised without invalidating existing ones.
pub const ITERATIONS: u32 = 100_000;
/// Salt length in bytes.
const SALT_LEN: usize = 16;
/// Derived key length in bytes (SHA-256's output).
const HASH_LEN: usize = 32;
/// Random bytes in a generated password (24 bytes = 32 base64url characters, 192 bits).
const GENERATED_BYTES: usize = 24;
/// Most iterations accepted from a file, so a corrupted hash cannot stall a login for minutes.
const MAX_ITERATIONS: u32 = 10_000_000;
const PREFIX: &str = "$pbkdf2-sha256$i=";

/// Why a password could not be hashed or a stored hash could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// The system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// A stored hash is not in the expected format.
    #[error(
        "not a password hash this edgecar understands (expected $pbkdf2-sha256$i=<n>$<salt>$<hash>): {0}"
    )]
    Format(&'static str),
}

/// A parsed password hash.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    iterations: NonZeroU32,
    salt: Box<[u8]>,
    hash: [u8; HASH_LEN],
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Even a hash stays out of logs: it is what an offline guesser needs.
        write!(f, "PasswordHash(pbkdf2-sha256, i={})", self.iterations)
    }
}

impl PasswordHash {
    /// Hashes `password` with a fresh random salt.
    pub fn new(password: &str) -> Result<Self, PasswordError> {
        Self::with_iterations(password, ITERATIONS)
    }

    /// Hashes with a chosen iteration count (tests use few, to stay fast).
    pub fn with_iterations(password: &str, iterations: u32) -> Result<Self, PasswordError> {
        let iterations = NonZeroU32::new(iterations).ok_or(PasswordError::Format("iterations"))?;
        let mut salt = vec![0u8; SALT_LEN];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| PasswordError::Random)?;
        let mut hash = [0u8; HASH_LEN];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            &salt,
            password.as_bytes(),
            &mut hash,
        );
        Ok(PasswordHash {
            iterations,
            salt: salt.into_boxed_slice(),
            hash,
        })
    }

    /// Reads the PHC string form.
    pub fn parse(s: &str) -> Result<Self, PasswordError> {
        let rest = s
            .strip_prefix(PREFIX)
            .ok_or(PasswordError::Format("prefix"))?;
        let mut parts = rest.split('$');
        let (Some(i), Some(salt), Some(hash), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(PasswordError::Format("number of fields"));
        };
        let iterations = i
            .parse::<u32>()
            .ok()
            .filter(|n| *n <= MAX_ITERATIONS)
            .and_then(NonZeroU32::new)
            .ok_or(PasswordError::Format("iterations"))?;
        let salt = STANDARD_NO_PAD
            .decode(salt)
            .map_err(|_| PasswordError::Format("salt"))?;
        let hash = STANDARD_NO_PAD
            .decode(hash)
            .map_err(|_| PasswordError::Format("hash"))?;
        let hash: [u8; HASH_LEN] = hash
            .try_into()
            .map_err(|_| PasswordError::Format("salt or hash length"))?;
        if salt.len() < 8 {
            return Err(PasswordError::Format("salt or hash length"));
        }
        Ok(PasswordHash {
            iterations,
            salt: salt.into_boxed_slice(),
            hash,
        })
    }

    /// Whether `password` is the one hashed, compared in constant time.
    pub fn verify(&self, password: &[u8]) -> bool {
        pbkdf2::verify(
            pbkdf2::PBKDF2_HMAC_SHA256,
            self.iterations,
            &self.salt,
            password,
            &self.hash,
        )
        .is_ok()
    }

    /// A hash of nothing anybody knows, checked for unknown device ids so that a refusal takes as
    /// long whether or not the id exists (no device-id enumeration by timing).
    pub fn decoy() -> Self {
        PasswordHash {
            iterations: NonZeroU32::MIN.saturating_add(ITERATIONS - 1),
            salt: Box::new([0x5a; SALT_LEN]),
            hash: [0; HASH_LEN],
        }
    }
}

impl std::fmt::Display for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{PREFIX}{}${}${}",
            self.iterations,
            STANDARD_NO_PAD.encode(&self.salt),
            STANDARD_NO_PAD.encode(self.hash)
        )
    }
}

/// A new random password: 32 URL-safe characters, fit for MQTT clients and shell scripts.
pub fn generate() -> Result<String, PasswordError> {
    let mut bytes = [0u8; GENERATED_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PasswordError::Random)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_round_trip_and_verify() {
        let h = PasswordHash::with_iterations("s3cret", 1000).unwrap();
        let text = h.to_string();
        assert!(text.starts_with("$pbkdf2-sha256$i=1000$"), "{text}");
        let back = PasswordHash::parse(&text).unwrap();
        assert_eq!(back, h);
        assert!(back.verify(b"s3cret"));
        assert!(!back.verify(b"s3cret "));
        assert!(!back.verify(b""));
        // Same password, new salt: a different hash.
        assert_ne!(
            PasswordHash::with_iterations("s3cret", 1000)
                .unwrap()
                .to_string(),
            text
        );
    }

    #[test]
    fn bad_hashes_are_refused_not_trusted() {
        for bad in [
            "",
            "plain",
            "$pbkdf2-sha256$i=0$AAAAAAAAAAA$AAAA",
            "$pbkdf2-sha256$i=99999999999$AAAAAAAAAAA$AAAA",
            "$pbkdf2-sha256$i=10$!!$AAAA",
            "$pbkdf2-sha256$i=10$AAAAAAAAAAA$AAAA",
            "$pbkdf2-sha256$i=10$AAAAAAAAAAA$AAAA$extra",
        ] {
            assert!(PasswordHash::parse(bad).is_err(), "{bad}");
        }
        assert!(!format!("{:?}", PasswordHash::decoy()).contains('$'));
        assert!(!PasswordHash::decoy().verify(b""));
    }

    #[test]
    fn generated_passwords_are_long_and_distinct() {
        let a = generate().unwrap();
        assert_eq!(a.len(), 32);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_ne!(a, generate().unwrap());
    }
}
