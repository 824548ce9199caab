//! TLS for the MQTT device endpoint: the rustls server configuration (ring provider, TLS 1.2 and
//! 1.3) from the PEM files named in `mqtt.tls`. Read once at start-up; `check-config` reads them too,
//! so a bad certificate is reported before the daemon starts.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::MqttTlsConfig;

/// Builds the acceptor, or says what is wrong with the files.
pub fn acceptor(cfg: &MqttTlsConfig) -> Result<TlsAcceptor, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert_file)
        .map_err(|e| format!("certFile {}: {e}", cfg.cert_file.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certFile {}: {e}", cfg.cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "certFile {}: no PEM certificate in it",
            cfg.cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key_file)
        .map_err(|e| format!("keyFile {}: {e}", cfg.key_file.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("certFile/keyFile: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
