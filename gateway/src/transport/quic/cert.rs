//! The QUIC endpoint's TLS identity: the operator's certificate (`quic.tls`, else `mqtt.tls`),
//! or a self-signed one made at first start and kept in `<stateDir>/quic/`, whose SHA-256
//! fingerprint devices pin. Also the rustls server configuration built from it (TLS 1.3, ALPN,
//! no 0-RTT).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::frame::DEVICE_ALPN;
use crate::config::{Config, MqttTlsConfig};

/// Where the TLS identity came from, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `quic.tls.certFile`.
    Quic,
    /// `mqtt.tls.certFile` (with its client-certificate settings).
    Mqtt,
    /// Self-signed, in the state directory.
    SelfSigned,
}

/// The TLS settings the endpoint uses, and where its certificate came from.
pub struct Identity {
    /// Certificate, key and client-certificate settings.
    pub tls: MqttTlsConfig,
    /// Where they came from.
    pub source: Source,
    /// SHA-256 of the server certificate (DER), lower-case hex.
    pub fingerprint: String,
}

/// Files of the self-signed certificate, under the state directory.
pub fn self_signed_paths(state_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = state_dir.join("quic");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// The identity `cfg` gives the endpoint, making the self-signed certificate if needed.
pub fn identity(cfg: &Config) -> Result<Identity, String> {
    let q = &cfg.quic.tls;
    let (tls, source) = if q.enabled() {
        (q.clone(), Source::Quic)
    } else if cfg.mqtt.tls.enabled() && cfg.mqtt.mode == crate::config::MqttMode::Embedded {
        (cfg.mqtt.tls.clone(), Source::Mqtt)
    } else {
        let (cert, key) = self_signed_paths(&cfg.state_dir);
        if !cert.exists() || !key.exists() {
            make_self_signed(&cert, &key)?;
        }
        let mut tls = q.clone();
        tls.cert_file = cert;
        tls.key_file = key;
        (tls, Source::SelfSigned)
    };
    let fingerprint = fingerprint_of_file(&tls.cert_file)?;
    Ok(Identity {
        tls,
        source,
        fingerprint,
    })
}

/// SHA-256 of the first certificate in a PEM file, lower-case hex.
pub fn fingerprint_of_file(path: &Path) -> Result<String, String> {
    let cert = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("certFile {}: {e}", path.display()))?
        .next()
        .ok_or_else(|| format!("certFile {}: no PEM certificate in it", path.display()))?
        .map_err(|e| format!("certFile {}: {e}", path.display()))?;
    Ok(fingerprint(&cert))
}

/// SHA-256 of a DER certificate, lower-case hex.
pub fn fingerprint(cert: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, cert);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Makes a self-signed certificate for `localhost`, the loopback addresses and this host's
/// name; the key is written readable by the owner only.
fn make_self_signed(cert: &Path, key: &Path) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".into(), "::1".into()];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() && h != "localhost" {
            names.push(h.to_owned());
        }
    }
    let made = rcgen::generate_simple_self_signed(names.clone())
        .or_else(|_| rcgen::generate_simple_self_signed(names[..3].to_vec()))
        .map_err(|e| format!("cannot make a self-signed certificate: {e}"))?;
    if let Some(dir) = cert.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let write = |path: &Path, text: &str, mode: u32| {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    write(key, &made.signing_key.serialize_pem(), 0o600)?;
    write(cert, &made.cert.pem(), 0o644)
}

/// The QUIC server crypto: TLS 1.3 only (QUIC's), ALPN `edgecar-device/1`, 0-RTT off.
pub fn server_crypto(
    tls: &MqttTlsConfig,
) -> Result<Arc<quinn::crypto::rustls::QuicServerConfig>, String> {
    let mut config = crate::transport::tls::server_config(tls)?;
    config.alpn_protocols = vec![DEVICE_ALPN.to_vec()];
    // 0-RTT data could be replayed by anyone who saw it; no operation is marked replay-safe yet.
    config.max_early_data_size = 0;
    quinn::crypto::rustls::QuicServerConfig::try_from(config)
        .map(Arc::new)
        .map_err(|e| format!("TLS configuration unusable for QUIC: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            state_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        let a = identity(&cfg).unwrap();
        assert_eq!(a.source, Source::SelfSigned);
        assert_eq!(a.fingerprint.len(), 64);
        let b = identity(&cfg).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint, "kept across starts");
        use std::os::unix::fs::PermissionsExt;
        let (_, key) = self_signed_paths(dir.path());
        let mode = std::fs::metadata(key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(server_crypto(&a.tls).is_ok());
    }
}
