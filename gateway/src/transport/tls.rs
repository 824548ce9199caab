//! TLS for the device endpoints (MQTT over TLS, and QUIC, which builds on the same files): the
//! rustls server configuration (ring provider, TLS 1.2 and 1.3) from the PEM files named in
//! `mqtt.tls`, and who a device's client certificate names. Read once at start-up;
//! `check-config` reads them too, so a bad certificate is reported before the daemon starts.
//!
//! With `clientCaFile`, rustls's WebPKI verifier checks a presented certificate (chain to one of
//! those CAs, validity dates, client-auth usage, revocation when `clientCrlFile` is given) during
//! the handshake; a certificate that fails never reaches the device protocol. [`client_identity`] then reads the
//! device id from the verified certificate: its subject Common Name (CN), as Azure IoT Hub and
//! mosquitto's `use_identity_as_username` do. Subject alternative names are not read.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

use crate::config::{ClientAuth, MqttTlsConfig};

/// Builds the acceptor, or says what is wrong with the files.
pub fn acceptor(cfg: &MqttTlsConfig) -> Result<TlsAcceptor, String> {
    Ok(TlsAcceptor::from(Arc::new(server_config(cfg)?)))
}

/// The rustls server configuration from the files (the QUIC endpoint builds on it too).
pub fn server_config(cfg: &MqttTlsConfig) -> Result<rustls::ServerConfig, String> {
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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if cfg.client_certs() {
        builder.with_client_cert_verifier(client_verifier(cfg, provider)?)
    } else {
        builder.with_no_client_auth()
    };
    builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("certFile/keyFile: {e}"))
}

/// The verifier for device certificates: `clientCaFile` as roots, `clientCrlFile` for revocation.
fn client_verifier(
    cfg: &MqttTlsConfig,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let ca = &cfg.client_ca_file;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)
        .map_err(|e| format!("clientCaFile {}: {e}", ca.display()))?
    {
        let cert = cert.map_err(|e| format!("clientCaFile {}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("clientCaFile {}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "clientCaFile {}: no PEM certificate in it",
            ca.display()
        ));
    }
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let crl = &cfg.client_crl_file;
    if !crl.as_os_str().is_empty() {
        let crls: Vec<CertificateRevocationListDer<'static>> =
            CertificateRevocationListDer::pem_file_iter(crl)
                .map_err(|e| format!("clientCrlFile {}: {e}", crl.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("clientCrlFile {}: {e}", crl.display()))?;
        if crls.is_empty() {
            return Err(format!(
                "clientCrlFile {}: no PEM revocation list (X509 CRL) in it",
                crl.display()
            ));
        }
        // Device certificates are checked against their issuer's list; a device certificate
        // whose issuer has no list in the file is refused rather than let through unchecked.
        builder = builder.with_crls(crls).only_check_end_entity_revocation();
    }
    if cfg.client_auth == ClientAuth::Optional {
        builder = builder.allow_unauthenticated();
    }
    builder
        .build()
        .map_err(|e| format!("clientCaFile/clientCrlFile: {e}"))
}

/// What a connection's TLS client certificate says about who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCert {
    /// No certificate (plain TCP, or TLS without one): the password decides.
    None,
    /// A verified certificate naming this device id (its subject CN).
    Device(String),
    /// A verified certificate that names no usable device id; why.
    Unusable(String),
}

/// The identity in a TLS connection's verified client certificate.
pub fn client_identity(conn: &rustls::ServerConnection) -> ClientCert {
    identity_of(conn.peer_certificates().and_then(<[_]>::first))
}

/// The identity a verified client certificate (the chain's first) names, if one was presented.
pub fn identity_of(cert: Option<&CertificateDer<'_>>) -> ClientCert {
    match cert {
        None => ClientCert::None,
        Some(cert) => match certificate_cn(cert) {
            Ok(id) => match crate::devices::file::validate_id(&id) {
                Ok(()) => ClientCert::Device(id),
                Err(m) => {
                    ClientCert::Unusable(format!("the certificate's CN is not a device id: {m}"))
                }
            },
            Err(why) => ClientCert::Unusable(why),
        },
    }
}

/// Why a failed handshake refused the device's certificate (or its lack of one), when that is
/// why it failed; `None` for every other failure (not TLS at all, a client that gave up, ...).
pub fn certificate_refusal(e: &std::io::Error) -> Option<String> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(why) => Some(format!("{why:?}")),
        rustls::Error::NoCertificatesPresented => {
            Some("no client certificate (mqtt.tls.clientAuth is required)".into())
        }
        _ => None,
    }
}

/// OID 2.5.4.3, id-at-commonName, DER-encoded (without tag and length).
const CN_OID: &[u8] = &[0x55, 0x04, 0x03];

/// The subject Common Name of a certificate: exactly one, as text.
pub fn certificate_cn(cert: &CertificateDer<'_>) -> Result<String, String> {
    let ee = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    subject_cn(ee.subject())
}

/// One DER TLV: (tag, contents, rest). Only definite lengths, as DER requires.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// Reads the CN out of a subject Name's contents (`SEQUENCE OF SET OF AttributeTypeAndValue`,
/// without the outer SEQUENCE, as webpki hands it over).
fn subject_cn(mut name: &[u8]) -> Result<String, String> {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    let bad = || "the certificate's subject does not parse".to_owned();
    let mut found: Option<String> = None;
    while !name.is_empty() {
        let (tag, mut rdn, rest) = tlv(name).ok_or_else(bad)?;
        name = rest;
        if tag != SET {
            return Err(bad());
        }
        while !rdn.is_empty() {
            let (tag, atv, rest) = tlv(rdn).ok_or_else(bad)?;
            rdn = rest;
            if tag != SEQUENCE {
                return Err(bad());
            }
            let (tag, oid, value) = tlv(atv).ok_or_else(bad)?;
            if tag != OID || oid != CN_OID {
                continue;
            }
            let (vtag, text, _) = tlv(value).ok_or_else(bad)?;
            // UTF8String, PrintableString, IA5String: the string types certificate tools write.
            let cn = match vtag {
                0x0c | 0x13 | 0x16 => std::str::from_utf8(text)
                    .map_err(|_| "the certificate's CN is not valid UTF-8".to_owned())?,
                other => {
                    return Err(format!(
                        "the certificate's CN has string type 0x{other:02x}; use UTF8String or PrintableString"
                    ));
                }
            };
            if found.is_some() {
                return Err("the certificate's subject has more than one CN".into());
            }
            found = Some(cn.to_owned());
        }
    }
    found.ok_or_else(|| "the certificate's subject has no CN (the device id)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        if content.len() < 0x80 {
            v.push(content.len() as u8);
        } else {
            v.push(0x82);
            v.extend_from_slice(&(content.len() as u16).to_be_bytes());
        }
        v.extend_from_slice(content);
        v
    }

    /// One RDN (a SET) holding one attribute.
    fn rdn(oid: &[u8], string_tag: u8, value: &str) -> Vec<u8> {
        let mut atv = der(0x06, oid);
        atv.extend(der(string_tag, value.as_bytes()));
        der(0x31, &der(0x30, &atv))
    }

    #[test]
    fn the_common_name_is_read_from_the_subject() {
        let o = [0x55, 0x04, 0x0a]; // organizationName
        let mut name = rdn(&o, 0x0c, "Acme");
        name.extend(rdn(CN_OID, 0x0c, "sensor-7"));
        assert_eq!(subject_cn(&name), Ok("sensor-7".to_owned()));
        assert_eq!(
            subject_cn(&rdn(CN_OID, 0x13, "dev1")),
            Ok("dev1".to_owned())
        );
        // A long value (two length bytes) still reads.
        let long = "x".repeat(300);
        assert_eq!(subject_cn(&rdn(CN_OID, 0x0c, &long)), Ok(long));
    }

    #[test]
    fn a_subject_without_exactly_one_readable_cn_names_nobody() {
        let o = [0x55, 0x04, 0x0a];
        assert!(
            subject_cn(&rdn(&o, 0x0c, "Acme"))
                .unwrap_err()
                .contains("no CN")
        );
        assert!(subject_cn(&[]).unwrap_err().contains("no CN"));
        let mut two = rdn(CN_OID, 0x0c, "a");
        two.extend(rdn(CN_OID, 0x0c, "b"));
        assert!(subject_cn(&two).unwrap_err().contains("more than one"));
        // BMPString is refused rather than guessed at.
        assert!(
            subject_cn(&rdn(CN_OID, 0x1e, "ab"))
                .unwrap_err()
                .contains("0x1e")
        );
        // Truncated or mistagged input is an error, never a panic.
        let good = rdn(CN_OID, 0x0c, "dev1");
        for cut in 0..good.len() {
            assert!(subject_cn(&good[..cut]).is_err(), "cut at {cut}");
        }
        assert!(subject_cn(&[0x30, 0x00]).is_err());
        assert!(subject_cn(&[0x31, 0x85, 1, 2, 3, 4, 5]).is_err());
    }
}
