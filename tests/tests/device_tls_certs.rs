//! TLS client certificates on the MQTT device endpoint, with mosquitto's own clients (written by
//! nobody on the team) presenting certificates rcgen made for the test: the certificate's subject
//! CN is the device, the registry must still know it, a username cannot name another device, a
//! certificate from another CA or a revoked one fails the handshake, and `clientAuth: required`
//! refuses password-only devices.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use edgecar_tests::mqtt::{MosquittoSub, add_device, device_cmd};
use edgecar_tests::{Edgecar, edgecar_bin, eventually};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber, date_time_ymd,
};

/// A CA that can sign device certificates and revocation lists.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A client certificate with subject `cn` (none: only an O), written as
    /// `<dir>/<file>.crt` and `<dir>/<file>.key`.
    fn device_cert(&self, dir: &Path, file: &str, cn: Option<&str>, serial: u64) -> Creds {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Acme sensors");
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.serial_number = Some(SerialNumber::from(serial));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let creds = Creds {
            cert: dir.join(format!("{file}.crt")),
            key: dir.join(format!("{file}.key")),
        };
        std::fs::write(&creds.cert, cert.pem()).unwrap();
        std::fs::write(&creds.key, key.serialize_pem()).unwrap();
        creds
    }

    /// A revocation list naming `serials`.
    fn crl(&self, serials: &[u64]) -> String {
        let params = CertificateRevocationListParams {
            this_update: date_time_ymd(2020, 1, 1),
            next_update: date_time_ymd(2999, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: date_time_ymd(2021, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).unwrap().pem().unwrap()
    }
}

/// A device's certificate and key files.
struct Creds {
    cert: PathBuf,
    key: PathBuf,
}

/// Everything a test site needs: the gateway's own certificate, the device CA, a stranger CA.
struct Pki {
    dir: tempfile::TempDir,
    server_cert: PathBuf,
    server_key: PathBuf,
    device_ca: Ca,
    device_ca_file: PathBuf,
    stranger: Ca,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "edgecar-test-gateway");
        let server = params.self_signed(&key).unwrap();
        let server_cert = dir.path().join("server.crt");
        let server_key = dir.path().join("server.key");
        std::fs::write(&server_cert, server.pem()).unwrap();
        std::fs::write(&server_key, key.serialize_pem()).unwrap();
        let device_ca = Ca::new("edgecar test device CA");
        let device_ca_file = dir.path().join("device-ca.crt");
        std::fs::write(&device_ca_file, &device_ca.pem).unwrap();
        Pki {
            dir,
            server_cert,
            server_key,
            device_ca,
            device_ca_file,
            stranger: Ca::new("someone else's CA"),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// An edgecar.yaml with TLS, the device CA, and `extra` lines under `mqtt.tls`.
    fn config(&self, name: &str, extra: &str) -> PathBuf {
        let cfg = self.path().join(name);
        std::fs::write(
            &cfg,
            format!(
                "mqtt:\n  tls:\n    certFile: {}\n    keyFile: {}\n    clientCaFile: {}\n{extra}",
                self.server_cert.display(),
                self.server_key.display(),
                self.device_ca_file.display()
            ),
        )
        .unwrap();
        cfg
    }
}

/// `mosquitto_rr` (MQTT 5 request/response) over TLS: with a certificate and/or a username and
/// password. Returns the process output; the reply, if any, is on stdout.
fn rr(
    pki: &Pki,
    port: u16,
    creds: Option<&Creds>,
    login: Option<(&str, &str)>,
    topic: &str,
    response_topic: &str,
    payload: &str,
) -> Output {
    let mut c = Command::new("mosquitto_rr");
    c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv5"])
        .arg("--cafile")
        .arg(&pki.server_cert);
    if let Some(creds) = creds {
        c.arg("--cert")
            .arg(&creds.cert)
            .arg("--key")
            .arg(&creds.key);
    }
    if let Some((u, p)) = login {
        c.args(["-u", u, "-P", p]);
    }
    c.args(["-t", topic, "-e", response_topic, "-m", payload, "-W", "10"])
        .stdin(Stdio::null())
        .output()
        .expect("mosquitto_rr not found: install mosquitto-clients")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Whether the client was refused in the CONNACK as not authorized (MQTT 5 reason 0x87).
fn not_authorized(o: &Output) -> bool {
    !o.status.success() && text(o).to_lowercase().contains("not authori")
}

/// Whether the connection failed in the TLS handshake, for a certificate reason edgecar logged
/// (`what`), before any MQTT was spoken. With TLS 1.3 the client sends its certificate after it
/// considers the handshake done, so mosquitto only sees the connection drop; edgecar's log says
/// why.
fn handshake_failed(ec: &Edgecar, o: &Output, what: &str) -> bool {
    let t = text(o).to_lowercase();
    if o.status.success() || t.contains("not authori") {
        return false;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        let logged = ec.log.lock().unwrap().lines().any(|l| {
            l.contains("device certificate refused in the TLS handshake") && l.contains(what)
        });
        if logged {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("edgecar's log:\n{}", ec.log.lock().unwrap());
    false
}

/// Saves `value` under `key` for whoever the connection is, then reads it back.
fn save_and_read(
    pki: &Pki,
    port: u16,
    creds: Option<&Creds>,
    login: Option<(&str, &str)>,
    device: &str,
    key: &str,
) -> (Output, Output) {
    let save = rr(
        pki,
        port,
        creds,
        login,
        &format!("edgecar/v1/{device}/req/state.save"),
        &format!("edgecar/v1/{device}/inbox"),
        &format!(r#"[{{"key":"{key}","value":"{device} was here"}}]"#),
    );
    let get = rr(
        pki,
        port,
        creds,
        login,
        &format!("edgecar/v1/{device}/req/state.get?key={key}"),
        &format!("edgecar/v1/{device}/inbox"),
        "",
    );
    (save, get)
}

#[test]
fn a_certificate_from_the_device_ca_identifies_a_registered_device() {
    let pki = Pki::new();
    let state = tempfile::tempdir().unwrap();
    let pw1 = add_device(state.path(), "dev1");
    let added = device_cmd(state.path(), &["add", "cam1", "--cert-only"]);
    assert!(added.status.success(), "{}", text(&added));
    assert!(
        added.stdout.is_empty(),
        "no password is printed: {}",
        text(&added)
    );
    let list = String::from_utf8_lossy(&device_cmd(state.path(), &["list"]).stdout).into_owned();
    assert!(
        list.contains("cam1") && list.contains("certificate-only"),
        "{list}"
    );

    let cfg = pki.config("optional.yaml", "");
    let ec = Edgecar::start(state.path(), &["--config", cfg.to_str().unwrap()]);
    let port = ec.mqtt_port;
    let ca = &pki.device_ca;
    let cam1 = ca.device_cert(pki.path(), "cam1", Some("cam1"), 10);

    // A certificate-only device, no username, no password: the certificate is the login.
    let (save, get) = save_and_read(&pki, port, Some(&cam1), None, "cam1", "k");
    assert!(save.status.success(), "{}", text(&save));
    assert!(get.status.success(), "{}", text(&get));
    assert_eq!(
        String::from_utf8_lossy(&get.stdout).trim(),
        "\"cam1 was here\""
    );
    // A username that repeats the certificate's id is fine; a password beside it is not checked.
    let (_, get) = save_and_read(&pki, port, Some(&cam1), Some(("cam1", "x")), "cam1", "k");
    assert!(get.status.success(), "{}", text(&get));
    // A certificate-only device has no password to log in with.
    let o = rr(
        &pki,
        port,
        None,
        Some(("cam1", "")),
        "edgecar/v1/cam1/req/x",
        "edgecar/v1/cam1/inbox",
        "",
    );
    assert!(not_authorized(&o), "{}", text(&o));

    // A password device may use a certificate too, or (optional mode) its password alone.
    let dev1 = ca.device_cert(pki.path(), "dev1", Some("dev1"), 11);
    let (_, get) = save_and_read(&pki, port, Some(&dev1), None, "dev1", "k");
    assert!(get.status.success(), "{}", text(&get));
    assert_eq!(
        String::from_utf8_lossy(&get.stdout).trim(),
        "\"dev1 was here\""
    );
    let (_, get) = save_and_read(&pki, port, None, Some(("dev1", &pw1)), "dev1", "k");
    assert!(get.status.success(), "{}", text(&get));

    // The username cannot move a certificate to another device, even with that device's password.
    let o = rr(
        &pki,
        port,
        Some(&cam1),
        Some(("dev1", &pw1)),
        "edgecar/v1/dev1/req/state.get?key=k",
        "edgecar/v1/dev1/inbox",
        "",
    );
    assert!(not_authorized(&o), "{}", text(&o));

    // A valid certificate for an id the registry does not know is refused.
    let ghost = ca.device_cert(pki.path(), "ghost", Some("ghost"), 12);
    let o = rr(
        &pki,
        port,
        Some(&ghost),
        None,
        "edgecar/v1/ghost/req/x",
        "edgecar/v1/ghost/inbox",
        "",
    );
    assert!(not_authorized(&o), "{}", text(&o));
    // The log is read from edgecar's output by another thread: wait for the line.
    eventually(Duration::from_secs(5), "the refusal logged", || {
        ec.log
            .lock()
            .unwrap()
            .contains("no such device in the registry")
            .then_some(())
    });

    // A certificate without a CN names nobody.
    let anon = ca.device_cert(pki.path(), "anon", None, 13);
    let o = rr(
        &pki,
        port,
        Some(&anon),
        None,
        "edgecar/v1/cam1/req/x",
        "edgecar/v1/cam1/inbox",
        "",
    );
    assert!(not_authorized(&o), "{}", text(&o));

    // A certificate from another CA, even for a registered id, fails the TLS handshake.
    let forged = pki
        .stranger
        .device_cert(pki.path(), "forged", Some("cam1"), 10);
    let o = rr(
        &pki,
        port,
        Some(&forged),
        None,
        "edgecar/v1/cam1/req/x",
        "edgecar/v1/cam1/inbox",
        "",
    );
    assert!(handshake_failed(&ec, &o, "UnknownIssuer"), "{}", text(&o));

    // Removing the device ends its certificate sessions.
    let sub_args = [
        "--cafile",
        pki.server_cert.to_str().unwrap(),
        "--cert",
        cam1.cert.to_str().unwrap(),
        "--key",
        cam1.key.to_str().unwrap(),
        "-V",
        "mqttv5",
    ];
    let mut sub = MosquittoSub::start(port, "cam1", "ignored", &["edgecar/v1/cam1/#"], &sub_args);
    assert_eq!(sub.suback(), vec![0], "{}", sub.log());
    let removed = device_cmd(state.path(), &["remove", "cam1"]);
    assert!(removed.status.success(), "{}", text(&removed));
    eventually(
        Duration::from_secs(15),
        "the removed device's session to end",
        || sub.exited().then_some(()),
    );
    let (save, _) = save_and_read(&pki, port, Some(&cam1), None, "cam1", "k");
    assert!(not_authorized(&save), "{}", text(&save));
}

#[test]
fn required_mode_refuses_devices_without_a_valid_certificate() {
    let pki = Pki::new();
    let state = tempfile::tempdir().unwrap();
    let pw1 = add_device(state.path(), "dev1");
    let ca = &pki.device_ca;
    let good = ca.device_cert(pki.path(), "dev1-good", Some("dev1"), 20);
    let revoked = ca.device_cert(pki.path(), "dev1-revoked", Some("dev1"), 21);
    let crl = pki.path().join("device-ca.crl");
    std::fs::write(&crl, ca.crl(&[21])).unwrap();
    let cfg = pki.config(
        "required.yaml",
        &format!(
            "    clientAuth: required\n    clientCrlFile: {}\n",
            crl.display()
        ),
    );
    let ec = Edgecar::start(state.path(), &["--config", cfg.to_str().unwrap()]);
    let port = ec.mqtt_port;

    let (_, get) = save_and_read(&pki, port, Some(&good), None, "dev1", "k");
    assert!(get.status.success(), "{}", text(&get));
    assert_eq!(
        String::from_utf8_lossy(&get.stdout).trim(),
        "\"dev1 was here\""
    );
    // The right password without a certificate is not enough.
    let o = rr(
        &pki,
        port,
        None,
        Some(("dev1", &pw1)),
        "edgecar/v1/dev1/req/x",
        "edgecar/v1/dev1/inbox",
        "",
    );
    assert!(
        handshake_failed(&ec, &o, "no client certificate"),
        "{}",
        text(&o)
    );
    // A revoked certificate fails the handshake.
    let o = rr(
        &pki,
        port,
        Some(&revoked),
        None,
        "edgecar/v1/dev1/req/x",
        "edgecar/v1/dev1/inbox",
        "",
    );
    assert!(handshake_failed(&ec, &o, "Revoked"), "{}", text(&o));
}

#[test]
fn check_config_reports_client_certificate_mistakes() {
    let pki = Pki::new();
    let check = |cfg: &Path| {
        let out = Command::new(edgecar_bin())
            .args(["check-config", "--config", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let ok = pki.config("ok.yaml", "    clientAuth: required\n");
    assert_eq!(check(&ok).0, Some(0), "{}", check(&ok).1);

    let no_ca = pki.path().join("no-ca.yaml");
    std::fs::write(&no_ca, "mqtt:\n  tls:\n    clientAuth: required\n").unwrap();
    let (code, err) = check(&no_ca);
    assert_eq!(code, Some(1));
    assert!(err.contains("mqtt.tls.clientAuth"), "{err}");

    let bad_mode = pki.config("bad-mode.yaml", "    clientAuth: sometimes\n");
    let (code, err) = check(&bad_mode);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("clientAuth") && err.contains("required"),
        "{err}"
    );

    let not_pem = pki.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let bad_ca = pki.path().join("bad-ca.yaml");
    std::fs::write(
        &bad_ca,
        format!(
            "mqtt:\n  tls:\n    certFile: {}\n    keyFile: {}\n    clientCaFile: {}\n",
            pki.server_cert.display(),
            pki.server_key.display(),
            not_pem.display()
        ),
    )
    .unwrap();
    let (code, err) = check(&bad_ca);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("clientCaFile") && err.contains("no PEM certificate"),
        "{err}"
    );
}
