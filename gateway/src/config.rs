//! The gateway's configuration: the `edgecar.yaml` file, its defaults and its validation.
//!
//! Precedence, lowest first: built-in defaults (which *are* `configs/edgecar.yaml`, embedded and
//! printed by `edgecar print-config`), the config file, environment (`DAPR_API_TOKEN`,
//! `STATE_DIRECTORY`), command-line flags. Loading never stops at the first problem: each top-level
//! section is read on its own and every error is reported with its file and field, so an operator
//! fixes a file in one pass. Dapr resource files (components, ...) are read by [`resources`].

pub mod resources;
pub mod units;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_norway::Value;

pub use units::{Dur, Size};

/// The commented default configuration; the documentation of every field.
pub const DEFAULT_YAML: &str = include_str!("../../configs/edgecar.yaml");

/// One problem in a configuration file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, or a pseudo-source such as `<command line>`.
    pub file: PathBuf,
    /// Dotted path of the field (`http.port`, `spec.metadata[0].value`); empty for the whole file.
    pub field: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl ConfigError {
    /// Builds an error.
    pub fn new(
        file: impl Into<PathBuf>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            file: file.into(),
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                self.field,
                self.message
            )
        }
    }
}

/// The whole gateway configuration (`edgecar.yaml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// App id of the gateway's local app; local state keys are `<appId>||<key>`.
    pub app_id: String,
    /// Site name; with the app id it forms the universal name `appId.site`.
    pub site: String,
    /// Directory for durable data (the sled database).
    pub state_dir: PathBuf,
    /// Directories of Dapr resource files. Empty means the embedded default components.
    pub resources_paths: Vec<PathBuf>,
    /// The Dapr HTTP API listener.
    pub http: HttpConfig,
    /// The local app edgecar serves (invocation, subscriptions).
    pub app: AppConfig,
    /// Other local apps reachable by service invocation: app id → base URL (`http://host:port`).
    pub apps: std::collections::BTreeMap<String, String>,
    /// The embedded database.
    pub storage: StorageConfig,
    /// Input limits.
    pub limits: Limits,
    /// The device registry and calls to devices.
    pub devices: DevicesConfig,
    /// The MQTT device endpoint.
    pub mqtt: MqttConfig,
    /// The QUIC device endpoint.
    pub quic: QuicConfig,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_timeout: Dur,
    /// Logging.
    pub log: LogConfig,
    /// A Dapr `Configuration` file given with `--config` (as `dapr run` does), read with the
    /// resource files; not a field of `edgecar.yaml`.
    #[serde(skip)]
    pub dapr_config: Option<PathBuf>,
    /// The admin listener: `/metrics` and the status page.
    pub metrics: MetricsConfig,
    /// Trace export.
    pub tracing: TracingConfig,
}

/// Trace export (OTLP over HTTP, protobuf). Off unless an endpoint is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP traces URL, e.g. `http://127.0.0.1:4318/v1/traces`; empty: off.
    pub otlp_endpoint: String,
    /// `service.name` of the spans; empty: the app id.
    pub service_name: String,
}

/// The admin listener (daprd's metrics port): `/metrics` and the status page. It asks for no
/// token, so it binds loopback unless told otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Whether to serve it (`--enable-metrics`).
    pub enabled: bool,
    /// Address to bind.
    pub address: IpAddr,
    /// Port to bind (daprd's 9090, `--metrics-port`). 0 picks a free port.
    pub port: u16,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            address: IpAddr::from([127, 0, 0, 1]),
            port: 9090,
        }
    }
}

/// Whether `path` holds a Dapr `Configuration` document (`kind: Configuration`), which `dapr run`
/// passes with `--config`, rather than an `edgecar.yaml`.
pub fn is_dapr_configuration(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_norway::from_str::<Value>(&t).ok())
        .is_some_and(|v| v.get("kind").and_then(Value::as_str) == Some("Configuration"))
}

/// The Dapr HTTP API listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to bind; loopback keeps the API local to the gateway.
    pub address: IpAddr,
    /// Port to bind (Dapr's 3500). 0 picks a free port.
    pub port: u16,
    /// Required `dapr-api-token`; empty disables the check.
    pub api_token: String,
    /// Largest request body accepted.
    pub max_body_size: Size,
    /// Time a client has to send its request headers, and then the whole body; also how long an
    /// idle keep-alive connection stays open and how long a reply may wait for the client to read
    /// it. A body not in by then gets 408; the connection is closed in every case, so slow or
    /// stalled clients cannot hold sockets.
    pub read_timeout: Dur,
    /// Most HTTP connections open at once. Beyond it a connection gets a quick 503 and is closed;
    /// kept below the usual 1,024-descriptor limit so MQTT devices and outbound calls keep theirs.
    pub max_connections: usize,
    /// Serve the Dapr gRPC API too (same address and token).
    pub grpc_enabled: bool,
    /// Port of the Dapr gRPC API (Dapr's 50001). 0 picks a free port.
    pub grpc_port: u16,
}

/// The local app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AppConfig {
    /// The app's port; 0 means there is no app.
    pub port: u16,
    /// The app's address.
    pub address: String,
    /// How edgecar calls the app: `http` (default) or `grpc` (the app serves Dapr's
    /// `AppCallback`).
    pub protocol: AppProtocol,
}

/// How edgecar talks to the local app (daprd's `--app-protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// Plain HTTP/1.1: Dapr's HTTP app channel.
    #[default]
    Http,
    /// gRPC: the app serves `dapr.proto.runtime.v1.AppCallback`.
    Grpc,
}

/// The embedded database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Memory for sled's page cache (sled's own default is 1 GiB, far too much for a Pi).
    pub cache_capacity: Size,
    /// How often expired keys are removed from disk.
    pub sweep_interval: Dur,
    /// Writes are refused (507) while less than this is free on the state directory's disk, so
    /// that the database never meets a full disk; 0 turns the guard off.
    pub min_free_space: Size,
}

/// Input limits, so that no request can make edgecar allocate without bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Limits {
    /// Longest state key, in bytes, before namespacing.
    pub max_key_length: usize,
    /// Most items in one bulk get, save or transaction.
    pub max_bulk_items: usize,
}

/// The device registry and calls to devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DevicesConfig {
    /// The registry file; empty means `<stateDir>/devices.yaml`.
    pub registry: PathBuf,
    /// Where verified logins are kept across restarts (a tmpfs: see `devices::logins`); empty
    /// means `$RUNTIME_DIRECTORY` under systemd, memory only otherwise.
    pub login_cache_dir: PathBuf,
    /// How long an app's call to a device waits for the device's reply.
    pub command_timeout: Dur,
    /// The pub/sub component device telemetry is published to.
    pub telemetry_pubsub: String,
    /// The topic device telemetry is published to.
    pub telemetry_topic: String,
    /// How long the telemetry writer waits for more readings before storing a batch.
    pub telemetry_linger: Dur,
    /// The pub/sub component device connect/disconnect events go to.
    pub presence_pubsub: String,
    /// The topic device connect/disconnect events go to; empty: none are published.
    pub presence_topic: String,
    /// What waits on disk for each device: mailbox commands and pub/sub deliveries.
    pub outbox: OutboxConfig,
    /// Pub/sub topics one device may subscribe to.
    pub max_subscriptions: usize,
}

/// Each device's durable outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Most messages waiting for one device.
    pub max_messages: u64,
    /// Most payload bytes waiting for one device.
    pub max_bytes: Size,
    /// How long a pub/sub event waits for its device (unless the event expires sooner).
    pub event_ttl: Dur,
    /// Longest TTL an app may give a mailbox command.
    pub max_command_ttl: Dur,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_messages: 1000,
            max_bytes: Size(4 << 20),
            event_ttl: Dur(Duration::from_secs(24 * 3600)),
            max_command_ttl: Dur(Duration::from_secs(7 * 24 * 3600)),
        }
    }
}

/// The MQTT device endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Whether devices are served over MQTT at all (in either mode).
    pub enabled: bool,
    /// Whether devices connect to edgecar's own endpoint or to an external broker.
    pub mode: MqttMode,
    /// Address to bind.
    pub address: IpAddr,
    /// Port to bind (MQTT's 1883). 0 picks a free port.
    pub port: u16,
    /// Largest MQTT packet accepted from a device; larger ones end the connection.
    pub max_packet_size: Size,
    /// Longest keep-alive granted; clients asking for more, or for none, are held to this.
    pub max_keep_alive: Dur,
    /// How long a new connection may take to send its CONNECT.
    pub connect_timeout: Dur,
    /// Connections that have not finished their CONNECT (and password check) at once, from
    /// everywhere; beyond it new connections are closed at once.
    pub max_handshakes: usize,
    /// Of those, idle ones (no CONNECT yet) from one source address: a flood of idle sockets from
    /// one host cannot take the rest.
    pub max_handshakes_per_address: usize,
    /// Requests one connection may have in progress (and QoS 1 messages unacknowledged) at once.
    pub max_inflight: u16,
    /// Open connections in total.
    pub max_connections: usize,
    /// Open connections per device.
    pub max_connections_per_device: usize,
    /// How long a persistent session's subscriptions are kept after its device disconnects.
    pub session_expiry: Dur,
    /// Per-device message rate limit.
    pub rate_limit: RateLimitConfig,
    /// TLS: when a certificate is given, the listener speaks MQTT over TLS only.
    pub tls: MqttTlsConfig,
    /// The external broker edgecar joins in `mode: external`.
    pub broker: BrokerConfig,
}

/// The QUIC device endpoint (docs/device-protocol.md#quic): one UDP port, ALPN `edgecar-device/1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct QuicConfig {
    /// Whether devices may connect over QUIC (`--quic-port` turns it on too).
    pub enabled: bool,
    /// Address to bind.
    pub address: IpAddr,
    /// UDP port to bind. 0 picks a free port.
    pub port: u16,
    /// The endpoint's TLS identity and client certificates. Without `certFile`, `mqtt.tls` is
    /// used when it has one, else a self-signed certificate kept in `<stateDir>/quic/`.
    pub tls: MqttTlsConfig,
    /// How long the QUIC handshake and the device's authentication may take together.
    pub handshake_timeout: Dur,
    /// Silence after which a connection is gone (devices send keep-alives more often).
    pub idle_timeout: Dur,
    /// Requests (bidirectional streams) one connection may have open at once.
    pub max_streams: u32,
    /// Largest request header (the JSON frame before the body).
    pub max_header_size: Size,
    /// Largest request body.
    pub max_body_size: Size,
    /// Open connections in total.
    pub max_connections: usize,
    /// Open connections per device.
    pub max_connections_per_device: usize,
}

impl Default for QuicConfig {
    fn default() -> Self {
        QuicConfig {
            enabled: false,
            address: IpAddr::from([127, 0, 0, 1]),
            port: 4433,
            tls: MqttTlsConfig::default(),
            handshake_timeout: Dur(Duration::from_secs(10)),
            idle_timeout: Dur(Duration::from_secs(30)),
            max_streams: 16,
            max_header_size: Size(4 << 10),
            max_body_size: Size(256 << 10),
            max_connections: 10_000,
            max_connections_per_device: 4,
        }
    }
}

/// Where devices connect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MqttMode {
    /// edgecar's own device endpoint listens (`mqtt.address`, `mqtt.port`, ...).
    #[default]
    Embedded,
    /// Devices connect to an existing broker; edgecar joins it as a client (`mqtt.broker`).
    External,
}

/// The external broker (`mqtt.mode: external`): how edgecar connects to it as a client.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// `mqtt://host[:port]` or `tcp://host[:port]` (port 1883 when omitted).
    pub url: String,
    /// MQTT client id; empty means `edgecar-<appId>`. Must be unique at the broker.
    pub client_id: String,
    /// edgecar's user at the broker; the ACL gives this user every device tree.
    pub username: String,
    /// Its password (or `passwordFile`).
    pub password: String,
    /// A file whose first line is the password (e.g. a systemd credential).
    pub password_file: PathBuf,
    /// Keep-alive edgecar asks for (at least 5s).
    pub keep_alive: Dur,
    /// How long the broker keeps edgecar's session (subscriptions and queued QoS 1 messages)
    /// while edgecar is away; 0 means a clean session that loses them.
    pub session_expiry: Dur,
    /// Messages edgecar handles at once (MQTT 5 Receive Maximum told to the broker).
    pub max_inflight: u16,
    /// How long one connection attempt may take.
    pub connect_timeout: Dur,
    /// Longest wait between reconnection attempts (the wait doubles from 500ms up to this).
    pub reconnect_max: Dur,
}

impl fmt::Debug for BrokerConfig {
    /// Everything but the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field(
                "password",
                &if self.password.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("password_file", &self.password_file)
            .field("keep_alive", &self.keep_alive)
            .field("session_expiry", &self.session_expiry)
            .field("max_inflight", &self.max_inflight)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_max", &self.reconnect_max)
            .finish()
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            url: String::new(),
            client_id: String::new(),
            username: String::new(),
            password: String::new(),
            password_file: PathBuf::new(),
            keep_alive: Dur(Duration::from_secs(30)),
            session_expiry: Dur(Duration::from_secs(3600)),
            max_inflight: 64,
            connect_timeout: Dur(Duration::from_secs(10)),
            reconnect_max: Dur(Duration::from_secs(30)),
        }
    }
}

/// TLS for the MQTT device endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MqttTlsConfig {
    /// PEM certificate chain, server certificate first; empty: plain TCP.
    pub cert_file: PathBuf,
    /// PEM private key of the certificate.
    pub key_file: PathBuf,
    /// PEM certificates of the CAs that sign device certificates; empty: no client certificates.
    pub client_ca_file: PathBuf,
    /// Whether a device must present a certificate (`required`) or may log in with its password
    /// instead (`optional`). Only meaningful with `clientCaFile`.
    pub client_auth: ClientAuth,
    /// PEM certificate revocation lists of those CAs; empty: no revocation checks.
    pub client_crl_file: PathBuf,
}

/// Whether devices must present a client certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// A certificate or the password: both identify a device.
    #[default]
    Optional,
    /// A certificate from `clientCaFile`; connections without one fail the TLS handshake.
    Required,
}

impl MqttTlsConfig {
    /// Whether TLS is configured.
    pub fn enabled(&self) -> bool {
        !self.cert_file.as_os_str().is_empty()
    }

    /// Whether devices may authenticate with client certificates.
    pub fn client_certs(&self) -> bool {
        !self.client_ca_file.as_os_str().is_empty()
    }
}

/// A token bucket: a steady rate with room for bursts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Packets per second a device may send on average.
    pub messages_per_second: u32,
    /// Packets it may send at once after being quiet.
    pub burst: u32,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug` or `trace`, or a full tracing filter. `RUST_LOG` wins.
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            app_id: "edgecar".into(),
            site: "default".into(),
            state_dir: PathBuf::from("./data"),
            resources_paths: Vec::new(),
            http: HttpConfig::default(),
            app: AppConfig::default(),
            apps: Default::default(),
            storage: StorageConfig::default(),
            limits: Limits::default(),
            devices: DevicesConfig::default(),
            mqtt: MqttConfig::default(),
            quic: QuicConfig::default(),
            shutdown_timeout: Dur(Duration::from_secs(10)),
            log: LogConfig::default(),
            dapr_config: None,
            metrics: MetricsConfig::default(),
            tracing: TracingConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            address: IpAddr::from([127, 0, 0, 1]),
            port: 3500,
            api_token: String::new(),
            max_body_size: Size(4 << 20),
            read_timeout: Dur(Duration::from_secs(30)),
            max_connections: 256,
            grpc_enabled: true,
            grpc_port: 50001,
        }
    }
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            port: 0,
            address: "127.0.0.1".into(),
            protocol: AppProtocol::Http,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            cache_capacity: Size(8 << 20),
            sweep_interval: Dur(Duration::from_secs(5)),
            min_free_space: Size(64 << 20),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_length: 1024,
            max_bulk_items: 1000,
        }
    }
}

impl Default for DevicesConfig {
    fn default() -> Self {
        DevicesConfig {
            registry: PathBuf::new(),
            login_cache_dir: PathBuf::new(),
            command_timeout: Dur(Duration::from_secs(10)),
            telemetry_pubsub: "pubsub".into(),
            telemetry_topic: "telemetry".into(),
            telemetry_linger: Dur(Duration::from_millis(2)),
            presence_pubsub: "pubsub".into(),
            presence_topic: String::new(),
            outbox: OutboxConfig::default(),
            max_subscriptions: 32,
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            enabled: true,
            mode: MqttMode::Embedded,
            address: IpAddr::from([127, 0, 0, 1]),
            port: 1883,
            max_packet_size: Size(256 << 10),
            max_keep_alive: Dur(Duration::from_secs(20 * 60)),
            connect_timeout: Dur(Duration::from_secs(10)),
            max_handshakes: 256,
            max_handshakes_per_address: 64,
            max_inflight: 16,
            max_connections: 10_000,
            max_connections_per_device: 4,
            session_expiry: Dur(Duration::from_secs(3600)),
            rate_limit: RateLimitConfig::default(),
            tls: MqttTlsConfig::default(),
            broker: BrokerConfig::default(),
        }
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            messages_per_second: 50,
            burst: 100,
        }
    }
}

impl Config {
    /// Whether devices are served through an external broker (`mqtt.enabled` and
    /// `mqtt.mode: external`).
    pub fn external_broker(&self) -> bool {
        self.mqtt.enabled && self.mqtt.mode == MqttMode::External
    }

    /// The MQTT client id edgecar uses at an external broker.
    pub fn broker_client_id(&self) -> String {
        if self.mqtt.broker.client_id.is_empty() {
            format!("edgecar-{}", self.app_id)
        } else {
            self.mqtt.broker.client_id.clone()
        }
    }

    /// The device registry file: `devices.registry`, or `<stateDir>/devices.yaml`.
    pub fn device_registry(&self) -> PathBuf {
        if self.devices.registry.as_os_str().is_empty() {
            self.state_dir.join("devices.yaml")
        } else {
            self.devices.registry.clone()
        }
    }

    /// App ids this gateway serves, which device ids may not take.
    pub fn app_ids(&self) -> std::collections::BTreeSet<String> {
        let mut ids: std::collections::BTreeSet<String> = self.apps.keys().cloned().collect();
        ids.insert(self.app_id.clone());
        ids
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

/// Deserializes one top-level section, recording an error instead of failing the whole file.
fn section<T: DeserializeOwned>(
    value: Value,
    field: &str,
    file: &Path,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    match serde_path_to_error::deserialize(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let path = if inner == "." {
                field.to_owned()
            } else {
                format!("{field}.{inner}")
            };
            errors.push(ConfigError::new(file, path, e.into_inner().to_string()));
            None
        }
    }
}

/// Reads a config document over the defaults, collecting every error.
pub fn parse(text: &str, file: &Path) -> Result<Config, Vec<ConfigError>> {
    parse_over(Config::default(), text, file)
}

/// Reads a config document over `base`, collecting every error.
pub fn parse_over(base: Config, text: &str, file: &Path) -> Result<Config, Vec<ConfigError>> {
    let (cfg, errors) = parse_lenient(base, text, file);
    if errors.is_empty() {
        Ok(cfg)
    } else {
        Err(errors)
    }
}

/// Reads what it can of a config document over `base`; sections with errors keep `base`.
fn parse_lenient(base: Config, text: &str, file: &Path) -> (Config, Vec<ConfigError>) {
    let mut errors = Vec::new();
    let doc: Value = match serde_norway::from_str(text) {
        Ok(v) => v,
        Err(e) => return (base, vec![ConfigError::new(file, "", e.to_string())]),
    };
    let mut cfg = base;
    let map = match doc {
        Value::Null => return (cfg, errors),
        Value::Mapping(m) => m,
        _ => {
            errors.push(ConfigError::new(
                file,
                "",
                "expected a mapping of settings at the top level",
            ));
            return (cfg, errors);
        }
    };
    for (k, v) in map {
        let Some(key) = k.as_str().map(str::to_owned) else {
            errors.push(ConfigError::new(file, "", "top-level keys must be strings"));
            continue;
        };
        let e = &mut errors;
        match key.as_str() {
            "appId" => section(v, &key, file, e).map(|x| cfg.app_id = x),
            "site" => section(v, &key, file, e).map(|x| cfg.site = x),
            "stateDir" => section(v, &key, file, e).map(|x| cfg.state_dir = x),
            "resourcesPaths" => section(v, &key, file, e).map(|x| cfg.resources_paths = x),
            "http" => section(v, &key, file, e).map(|x| cfg.http = x),
            "app" => section(v, &key, file, e).map(|x| cfg.app = x),
            "apps" => section(v, &key, file, e).map(|x| cfg.apps = x),
            "storage" => section(v, &key, file, e).map(|x| cfg.storage = x),
            "limits" => section(v, &key, file, e).map(|x| cfg.limits = x),
            "devices" => section(v, &key, file, e).map(|x| cfg.devices = x),
            "mqtt" => section(v, &key, file, e).map(|x| cfg.mqtt = x),
            "quic" => section(v, &key, file, e).map(|x| cfg.quic = x),
            "shutdownTimeout" => section(v, &key, file, e).map(|x| cfg.shutdown_timeout = x),
            "log" => section(v, &key, file, e).map(|x| cfg.log = x),
            "metrics" => section(v, &key, file, e).map(|x| cfg.metrics = x),
            "tracing" => section(v, &key, file, e).map(|x| cfg.tracing = x),
            other => {
                e.push(ConfigError::new(
                    file,
                    other,
                    "unknown field (see `edgecar print-config` for every field)",
                ));
                None
            }
        };
    }
    (cfg, errors)
}

/// Settings from the command line (named as daprd names its flags) that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--app-id`.
    pub app_id: Option<String>,
    /// `--app-port`.
    pub app_port: Option<u16>,
    /// `--app-channel-address`.
    pub app_address: Option<String>,
    /// `--dapr-http-port`.
    pub http_port: Option<u16>,
    /// `--dapr-listen-addresses`.
    pub listen_address: Option<String>,
    /// `--dapr-grpc-port` (also `DAPR_GRPC_PORT`).
    pub grpc_port: Option<u16>,
    /// `--app-protocol` (`http` or `grpc`; daprd's `https`, `grpcs` and `h2c` are refused).
    pub app_protocol: Option<String>,
    /// `--resources-path` / `--components-path` (repeatable).
    pub resources_paths: Vec<PathBuf>,
    /// `--dapr-api-token`.
    pub api_token: Option<String>,
    /// `--state-dir`.
    pub state_dir: Option<PathBuf>,
    /// `--max-body-size`.
    pub max_body_size: Option<String>,
    /// `--log-level`.
    pub log_level: Option<String>,
    /// `--mqtt-port`.
    pub mqtt_port: Option<u16>,
    /// `--quic-port` (turns the QUIC endpoint on).
    pub quic_port: Option<u16>,
    /// `--config` when it names a Dapr `Configuration` file.
    pub dapr_config: Option<PathBuf>,
    /// `--metrics-port`.
    pub metrics_port: Option<u16>,
    /// `--enable-metrics`.
    pub enable_metrics: Option<bool>,
}

/// Builds the effective configuration: defaults, then the file, then the environment
/// (`DAPR_API_TOKEN`; `STATE_DIRECTORY` only where the file sets no `stateDir`), then flags.
/// `env` reads an environment variable, so tests never touch the process environment.
///
/// Returns the configuration even when there are errors (a section that failed keeps its
/// defaults), so that a caller can go on and check the resource files too.
pub fn assemble(
    file: Option<&Path>,
    o: &Overrides,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Config, Vec<ConfigError>) {
    let mut base = Config::default();
    if let Some(dir) = env("STATE_DIRECTORY").and_then(|d| d.split(':').next().map(PathBuf::from))
        && !dir.as_os_str().is_empty()
    {
        base.state_dir = dir;
    }
    let mut errors = Vec::new();
    let mut cfg = match file {
        None => base,
        Some(path) => match std::fs::read_to_string(path) {
            Err(e) => {
                errors.push(ConfigError::new(path, "", format!("cannot read: {e}")));
                base
            }
            Ok(text) => {
                let (cfg, errs) = parse_lenient(base, &text, path);
                errors.extend(errs);
                cfg
            }
        },
    };
    let cli = Path::new("<command line>");
    if cfg.devices.login_cache_dir.as_os_str().is_empty()
        && let Some(dir) =
            env("RUNTIME_DIRECTORY").and_then(|d| d.split(':').next().map(PathBuf::from))
    {
        cfg.devices.login_cache_dir = dir;
    }
    if let Some(t) = env("DAPR_API_TOKEN").filter(|t| !t.is_empty()) {
        cfg.http.api_token = t;
    }
    if let Some(v) = &o.app_id {
        cfg.app_id = v.clone();
    }
    if let Some(v) = o.app_port {
        cfg.app.port = v;
    }
    if let Some(v) = &o.app_address {
        cfg.app.address = v.clone();
    }
    if let Some(v) = o.http_port {
        cfg.http.port = v;
    }
    match env("DAPR_GRPC_PORT").map(|v| v.trim().parse::<u16>()) {
        Some(Ok(v)) => cfg.http.grpc_port = v,
        Some(Err(_)) => errors.push(ConfigError::new(
            Path::new("<environment>"),
            "DAPR_GRPC_PORT",
            "must be a port number".to_owned(),
        )),
        None => {}
    }
    if let Some(v) = o.grpc_port {
        cfg.http.grpc_port = v;
    }
    match o.app_protocol.as_deref() {
        None => {}
        Some("http") => cfg.app.protocol = AppProtocol::Http,
        Some("grpc") => cfg.app.protocol = AppProtocol::Grpc,
        Some(other) => errors.push(ConfigError::new(
            cli,
            "--app-protocol",
            format!("{other:?} is not served: edgecar talks to apps over http or grpc (no TLS or h2c app channel)"),
        )),
    }
    if let Some(v) = &o.listen_address {
        match v.parse::<IpAddr>() {
            Ok(a) => cfg.http.address = a,
            Err(_) => errors.push(ConfigError::new(
                cli,
                "--dapr-listen-addresses",
                format!("{v:?} is not an IP address (one address, e.g. 127.0.0.1 or 0.0.0.0)"),
            )),
        }
    }
    if !o.resources_paths.is_empty() {
        cfg.resources_paths = o.resources_paths.clone();
    }
    if let Some(v) = &o.api_token {
        cfg.http.api_token = v.clone();
    }
    if let Some(v) = &o.state_dir {
        cfg.state_dir = v.clone();
    }
    if let Some(v) = &o.max_body_size {
        match units::parse_size(v) {
            Ok(n) => cfg.http.max_body_size = Size(n),
            Err(m) => errors.push(ConfigError::new(cli, "--max-body-size", m)),
        }
    }
    if let Some(v) = &o.log_level {
        cfg.log.level = v.clone();
    }
    if let Some(v) = o.mqtt_port {
        cfg.mqtt.port = v;
    }
    if let Some(v) = o.quic_port {
        cfg.quic.port = v;
        cfg.quic.enabled = true;
    }
    cfg.dapr_config = o.dapr_config.clone();
    if let Some(v) = o.metrics_port {
        cfg.metrics.port = v;
    }
    if let Some(v) = o.enable_metrics {
        cfg.metrics.enabled = v;
    }
    errors.extend(validate(&cfg, file.unwrap_or(cli)));
    (cfg, errors)
}

/// Checks the rules serde cannot express; returns every violation.
pub fn validate(cfg: &Config, file: &Path) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut err = |field: &str, msg: String| errors.push(ConfigError::new(file, field, msg));
    if let Err(m) = validate_name(&cfg.app_id) {
        err("appId", m);
    }
    if let Err(m) = validate_name(&cfg.site) {
        err("site", m);
    }
    if cfg.state_dir.as_os_str().is_empty() {
        err("stateDir", "must not be empty".into());
    }
    if cfg.http.max_body_size.0 < 1024 {
        err("http.maxBodySize", "must be at least 1Ki".into());
    }
    if cfg.http.max_body_size.0 > 1 << 30 {
        err("http.maxBodySize", "must be at most 1Gi".into());
    }
    if cfg.http.read_timeout.0 < Duration::from_millis(100) {
        err("http.readTimeout", "must be at least 100ms".into());
    }
    if cfg.http.read_timeout.0 > Duration::from_secs(3600) {
        err("http.readTimeout", "must be at most 1h".into());
    }
    if cfg.http.max_connections == 0 {
        err("http.maxConnections", "must be at least 1".into());
    }
    if cfg.storage.cache_capacity.0 < 1 << 20 {
        err("storage.cacheCapacity", "must be at least 1Mi".into());
    }
    if cfg.storage.sweep_interval.0 < Duration::from_millis(100) {
        err("storage.sweepInterval", "must be at least 100ms".into());
    }
    if cfg.limits.max_key_length == 0 {
        err("limits.maxKeyLength", "must be at least 1".into());
    }
    if cfg.limits.max_bulk_items == 0 {
        err("limits.maxBulkItems", "must be at least 1".into());
    }
    if cfg.app.address.trim().is_empty() {
        err("app.address", "must not be empty".into());
    }
    for (id, url) in &cfg.apps {
        if let Err(m) = validate_name(id) {
            err(&format!("apps.{id}"), m);
        }
        if let Err(m) = validate_app_url(url) {
            err(&format!("apps.{id}"), m);
        }
    }
    if cfg.devices.telemetry_linger.0 > Duration::from_secs(1) {
        err(
            "devices.telemetryLinger",
            "must be at most 1s (devices wait that much longer for each PUBACK)".into(),
        );
    }
    if cfg.devices.command_timeout.0 < Duration::from_millis(10) {
        err("devices.commandTimeout", "must be at least 10ms".into());
    }
    let o = &cfg.devices.outbox;
    if o.max_messages == 0 {
        err("devices.outbox.maxMessages", "must be at least 1".into());
    }
    if o.max_bytes.0 < 1024 {
        err("devices.outbox.maxBytes", "must be at least 1Ki".into());
    }
    if o.event_ttl.0 < Duration::from_secs(1) {
        err("devices.outbox.eventTtl", "must be at least 1s".into());
    }
    if o.max_command_ttl.0 < Duration::from_secs(1) {
        err("devices.outbox.maxCommandTtl", "must be at least 1s".into());
    }
    if cfg.devices.max_subscriptions == 0 {
        err("devices.maxSubscriptions", "must be at least 1".into());
    }
    if !cfg.devices.presence_topic.is_empty() && cfg.devices.presence_pubsub.trim().is_empty() {
        err(
            "devices.presencePubsub",
            "must name a pub/sub component when devices.presenceTopic is set".into(),
        );
    }
    let m = &cfg.mqtt;
    if m.max_packet_size.0 < 1024 || m.max_packet_size.0 > 256 << 20 {
        err(
            "mqtt.maxPacketSize",
            "must be between 1Ki and 256Mi (MQTT's own limit)".into(),
        );
    }
    if m.max_keep_alive.0 < Duration::from_secs(1) || m.max_keep_alive.0.as_secs() > 65_535 {
        err(
            "mqtt.maxKeepAlive",
            "must be between 1s and 65535s (MQTT's own limit)".into(),
        );
    }
    if m.connect_timeout.0 < Duration::from_millis(100) {
        err("mqtt.connectTimeout", "must be at least 100ms".into());
    }
    if m.max_inflight == 0 {
        err("mqtt.maxInflight", "must be at least 1".into());
    }
    if m.max_connections == 0 {
        err("mqtt.maxConnections", "must be at least 1".into());
    }
    if m.max_handshakes == 0 {
        err("mqtt.maxHandshakes", "must be at least 1".into());
    }
    if m.max_handshakes_per_address == 0 {
        err("mqtt.maxHandshakesPerAddress", "must be at least 1".into());
    }
    if m.max_connections_per_device == 0 {
        err("mqtt.maxConnectionsPerDevice", "must be at least 1".into());
    }
    if m.rate_limit.messages_per_second == 0 {
        err(
            "mqtt.rateLimit.messagesPerSecond",
            "must be at least 1".into(),
        );
    }
    if m.rate_limit.burst == 0 {
        err("mqtt.rateLimit.burst", "must be at least 1".into());
    }
    let tls_files_ok =
        if m.tls.cert_file.as_os_str().is_empty() != m.tls.key_file.as_os_str().is_empty() {
            err(
                "mqtt.tls",
                "certFile and keyFile go together: set both for TLS, neither for plain TCP".into(),
            );
            false
        } else if m.tls.client_certs() && !m.tls.enabled() {
            err(
                "mqtt.tls.clientCaFile",
                "client certificates need TLS: set certFile and keyFile too".into(),
            );
            false
        } else if m.tls.client_auth == ClientAuth::Required && !m.tls.client_certs() {
            err(
                "mqtt.tls.clientAuth",
                "required needs clientCaFile (the CA that signs device certificates)".into(),
            );
            false
        } else if !m.tls.client_crl_file.as_os_str().is_empty() && !m.tls.client_certs() {
            err(
                "mqtt.tls.clientCrlFile",
                "revocation lists need clientCaFile (the CA that signs device certificates)".into(),
            );
            false
        } else if m.tls.enabled() && m.mode == MqttMode::External {
            err(
                "mqtt.tls",
                "configures the embedded listener, which does not run with mode: external \
                 (devices then use the broker's TLS); remove it"
                    .into(),
            );
            false
        } else {
            true
        };
    if tls_files_ok
        && m.tls.enabled()
        && m.enabled
        && let Err(e) = crate::transport::tls::acceptor(&m.tls)
    {
        // check-config reads the files, so a bad certificate is found before a restart.
        err("mqtt.tls", e);
    }
    validate_broker(cfg, &mut err);
    validate_quic(cfg, &mut err);
    if cfg.log.level.trim().is_empty() {
        err("log.level", "must not be empty".into());
    }
    errors
}

/// Checks `quic`: value ranges always, the TLS files when the endpoint is on.
fn validate_quic(cfg: &Config, err: &mut impl FnMut(&str, String)) {
    let q = &cfg.quic;
    if q.handshake_timeout.0 < Duration::from_millis(100) {
        err("quic.handshakeTimeout", "must be at least 100ms".into());
    }
    if q.idle_timeout.0 < Duration::from_secs(1) || q.idle_timeout.0 > Duration::from_secs(3600) {
        err("quic.idleTimeout", "must be between 1s and 1h".into());
    }
    if q.max_streams == 0 || q.max_streams > 1024 {
        err("quic.maxStreams", "must be between 1 and 1024".into());
    }
    if q.max_header_size.0 < 256 || q.max_header_size.0 > 64 << 10 {
        err("quic.maxHeaderSize", "must be between 256 and 64Ki".into());
    }
    if q.max_body_size.0 < 1024 || q.max_body_size.0 > 64 << 20 {
        err("quic.maxBodySize", "must be between 1Ki and 64Mi".into());
    }
    if q.max_connections == 0 {
        err("quic.maxConnections", "must be at least 1".into());
    }
    if q.max_connections_per_device == 0 {
        err("quic.maxConnectionsPerDevice", "must be at least 1".into());
    }
    let t = &q.tls;
    if t.cert_file.as_os_str().is_empty() != t.key_file.as_os_str().is_empty() {
        err(
            "quic.tls",
            "certFile and keyFile go together: set both, or neither (mqtt.tls's, or a \
             self-signed certificate in <stateDir>/quic/)"
                .into(),
        );
        return;
    }
    if t.client_auth == ClientAuth::Required && !t.client_certs() {
        err(
            "quic.tls.clientAuth",
            "required needs clientCaFile (the CA that signs device certificates)".into(),
        );
        return;
    }
    if !t.client_crl_file.as_os_str().is_empty() && !t.client_certs() {
        err(
            "quic.tls.clientCrlFile",
            "revocation lists need clientCaFile (the CA that signs device certificates)".into(),
        );
        return;
    }
    if q.enabled
        && t.enabled()
        && let Err(e) = crate::transport::tls::server_config(t)
    {
        err("quic.tls", e);
    }
}

/// Checks `mqtt.broker`: value ranges always, required fields and the password file when
/// `mqtt.mode` is `external`.
fn validate_broker(cfg: &Config, err: &mut impl FnMut(&str, String)) {
    let b = &cfg.mqtt.broker;
    let external = cfg.mqtt.mode == MqttMode::External;
    if b.url.is_empty() {
        if external {
            err(
                "mqtt.broker.url",
                "required with mode: external, e.g. mqtt://127.0.0.1:1883".into(),
            );
        }
    } else if let Err(m) = crate::transport::broker::parse_url(&b.url) {
        err("mqtt.broker.url", m);
    }
    let text_ok = |s: &str| !s.chars().any(|c| c.is_control() || c.is_whitespace());
    if b.username.is_empty() {
        if external {
            err(
                "mqtt.broker.username",
                "required with mode: external: the broker's ACL gives this user every device tree \
                 (see `edgecar device acl`)"
                    .into(),
            );
        }
    } else if !text_ok(&b.username) || b.username.len() > 256 {
        err(
            "mqtt.broker.username",
            "must be 1 to 256 characters without spaces or control characters".into(),
        );
    }
    if !b.client_id.is_empty() && (!text_ok(&b.client_id) || b.client_id.len() > 256) {
        err(
            "mqtt.broker.clientId",
            "must be at most 256 characters without spaces or control characters".into(),
        );
    }
    if !b.password.is_empty() && !b.password_file.as_os_str().is_empty() {
        err(
            "mqtt.broker.passwordFile",
            "set password or passwordFile, not both".into(),
        );
    } else if external
        && !b.password_file.as_os_str().is_empty()
        && let Err(e) = crate::transport::broker::read_password_file(&b.password_file)
    {
        err("mqtt.broker.passwordFile", e);
    }
    // rumqttc refuses keep-alives under 5 seconds; MQTT's field holds at most 65535.
    if b.keep_alive.0 < Duration::from_secs(5) || b.keep_alive.0.as_secs() > 65_535 {
        err(
            "mqtt.broker.keepAlive",
            "must be between 5s and 65535s".into(),
        );
    }
    if b.session_expiry.0.as_secs() > u64::from(u32::MAX) {
        err(
            "mqtt.broker.sessionExpiry",
            format!("must be at most {}s (MQTT's own limit)", u32::MAX),
        );
    }
    if b.max_inflight == 0 {
        err("mqtt.broker.maxInflight", "must be at least 1".into());
    }
    if b.connect_timeout.0 < Duration::from_secs(1) {
        err("mqtt.broker.connectTimeout", "must be at least 1s".into());
    }
    if b.reconnect_max.0 < Duration::from_millis(500) {
        err("mqtt.broker.reconnectMax", "must be at least 500ms".into());
    }
}

/// An app's base URL: `http://host:port`, nothing after the authority.
pub fn validate_app_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?} must start with http:// (e.g. http://127.0.0.1:7001)"))?;
    let authority = rest.trim_end_matches('/');
    let ok = authority
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
    if !ok || authority.contains('/') {
        return Err(format!("{url:?} must be http://host:port"));
    }
    Ok(())
}

/// App ids and site names: what fits a DNS label, since they meet in `app-id.site`.
pub fn validate_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err(format!("{s:?} must be 1 to 63 characters"));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "{s:?} may contain only letters, digits, '-' and '_' (a '.' would be read as a site)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_file_is_the_default() {
        let parsed = parse(DEFAULT_YAML, Path::new("edgecar.yaml")).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn every_bad_section_is_reported() {
        let text = "http:\n  port: seventy\nlimits:\n  maxKeyLength: -1\nbogus: 1\nappId: ok\n";
        let errs = parse(text, Path::new("f.yaml")).unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["http.port", "limits.maxKeyLength", "bogus"],
            "{errs:?}"
        );
        assert!(errs[0].message.contains("u16"), "{}", errs[0]);
    }

    #[test]
    fn flags_beat_env_beat_file_beat_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("e.yaml");
        std::fs::write(&f, "appId: fromfile\nhttp:\n  apiToken: filetoken\n").unwrap();
        let env = |k: &str| match k {
            "DAPR_API_TOKEN" => Some("envtoken".to_string()),
            "STATE_DIRECTORY" => Some("/var/lib/edgecar".to_string()),
            _ => None,
        };
        let (cfg, errs) = assemble(Some(&f), &Overrides::default(), &env);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(cfg.app_id, "fromfile");
        assert_eq!(cfg.http.api_token, "envtoken");
        assert_eq!(cfg.state_dir, PathBuf::from("/var/lib/edgecar"));
        let o = Overrides {
            app_id: Some("flag".into()),
            listen_address: Some("nope".into()),
            ..Default::default()
        };
        let (cfg, errs) = assemble(Some(&f), &o, &env);
        assert_eq!(cfg.app_id, "flag");
        assert_eq!(errs[0].field, "--dapr-listen-addresses");
    }

    #[test]
    fn external_broker_settings_are_checked_by_field() {
        let text = "mqtt:\n  mode: external\n  broker:\n    keepAlive: 2s\n    maxInflight: 0\n    \
                    password: a\n    passwordFile: /p\n  tls:\n    certFile: c.pem\n    keyFile: k.pem\n";
        let cfg = parse(text, Path::new("f.yaml")).unwrap();
        assert!(cfg.external_broker());
        let errs = validate(&cfg, Path::new("f.yaml"));
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "mqtt.tls",
                "mqtt.broker.url",
                "mqtt.broker.username",
                "mqtt.broker.passwordFile",
                "mqtt.broker.keepAlive",
                "mqtt.broker.maxInflight"
            ],
            "{errs:?}"
        );
        let text = "mqtt:\n  mode: external\n  broker:\n    url: mqtts://b:8883\n    username: gw\n    \
                    passwordFile: /nonexistent/pw\n";
        let cfg = parse(text, Path::new("f.yaml")).unwrap();
        let errs = validate(&cfg, Path::new("f.yaml"));
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].message.contains("not supported"), "{}", errs[0]);
        assert_eq!(errs[1].field, "mqtt.broker.passwordFile");
        assert_eq!(cfg.broker_client_id(), "edgecar-edgecar");
        let errs = parse("mqtt:\n  mode: sideways\n", Path::new("f.yaml")).unwrap_err();
        assert_eq!(errs[0].field, "mqtt.mode", "{errs:?}");
        // The password never shows in debug output.
        let b = BrokerConfig {
            password: "s3cret".into(),
            ..BrokerConfig::default()
        };
        assert!(!format!("{b:?}").contains("s3cret"));
    }

    #[test]
    fn semantic_errors_are_all_collected() {
        let cfg = Config {
            app_id: "a.b".into(),
            limits: Limits {
                max_bulk_items: 0,
                ..Limits::default()
            },
            devices: DevicesConfig {
                telemetry_linger: Dur(Duration::from_secs(2)),
                ..DevicesConfig::default()
            },
            ..Config::default()
        };
        let errs = validate(&cfg, Path::new("f.yaml"));
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert_eq!(errs[0].field, "appId");
        assert!(
            errs.iter().any(|e| e.field == "devices.telemetryLinger"),
            "{errs:?}"
        );
    }
}
