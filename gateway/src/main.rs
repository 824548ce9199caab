//! The `edgecar` command: parses flags and calls the library. Nothing else lives here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use edgecar::config::{self, ConfigError, Overrides};
use edgecar::setup::{self, Setup};

/// edgecar: a Dapr-compatible sidecar and device gateway for edge sites.
#[derive(Parser)]
#[command(name = "edgecar", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default when no command is given).
    Run(RunArgs),
    /// Validate the gateway config and resource files; report every error, exit 1 if any.
    CheckConfig(RunArgs),
    /// Print the commented default configuration (the reference for every field).
    PrintConfig,
    /// Manage the device registry (works whether or not the daemon runs; it picks up changes).
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Write the man pages (edgecar.1, edgecar-run.1, ...) into DIR; the package build runs it.
    #[command(hide = true)]
    Man {
        /// Directory to write the pages into (created if missing).
        dir: PathBuf,
    },
}

/// Writes `edgecar.1` and one page per visible subcommand (`edgecar-run.1`, ...) into `dir`.
fn man_pages(dir: &Path) -> std::io::Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command();
    let write = |name: &str, page: clap::Command| -> std::io::Result<()> {
        let mut out = Vec::new();
        clap_mangen::Man::new(page).render(&mut out)?;
        std::fs::write(dir.join(format!("{name}.1")), out)
    };
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        // clap names are &'static str (its "string" feature is off); a few bytes, once.
        let name: &'static str = Box::leak(format!("edgecar-{}", sub.get_name()).into_boxed_str());
        write(name, sub.clone().name(name))?;
    }
    write("edgecar", cmd)
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Register a device. Without --password-stdin a password is generated and printed once.
    Add {
        /// Device id: its MQTT username and the name of its topic tree (letters, digits, - and _).
        id: String,
        /// Read the password from the first line of standard input instead of generating one.
        #[arg(long, conflicts_with = "cert_only")]
        password_stdin: bool,
        /// No password: the device logs in only with a client certificate whose CN is its id
        /// (mqtt.tls.clientCaFile). Any registered device may use such a certificate.
        #[arg(long)]
        cert_only: bool,
        /// Give an existing device new credentials (its open password sessions are closed).
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        at: RegistryArgs,
    },
    /// Remove a device (its open connections are closed).
    Remove {
        /// Device id.
        id: String,
        #[command(flatten)]
        at: RegistryArgs,
    },
    /// List registered devices (never their credentials).
    List {
        #[command(flatten)]
        at: RegistryArgs,
    },
    /// Print the Mosquitto ACL file for external broker mode (mqtt.mode: external): each
    /// device confined to its own tree, edgecar's broker user serving them all.
    Acl {
        /// edgecar's user at the broker (default: mqtt.broker.username from the config).
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// One block per registered device instead of one pattern line for all (print again
        /// and reload the broker after adding or removing devices).
        #[arg(long)]
        per_device: bool,
        #[command(flatten)]
        at: RegistryArgs,
    },
}

/// Where the registry is: the same flags `run` takes to find it.
#[derive(Args)]
struct RegistryArgs {
    /// The gateway config file; its devices.registry and stateDir locate the registry.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory for durable data (the registry defaults to <DIR>/devices.yaml).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

/// Flags shared by `run` and `check-config`, named as daprd names them.
#[derive(Args, Default)]
struct RunArgs {
    /// The gateway config file (edgecar.yaml). Without it, embedded defaults apply.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// App id of the local app; its state keys are "<app-id>||<key>".
    #[arg(long, value_name = "ID")]
    app_id: Option<String>,
    /// Port of the local app.
    #[arg(long, value_name = "PORT")]
    app_port: Option<u16>,
    /// Address of the local app.
    #[arg(long, value_name = "ADDR")]
    app_channel_address: Option<String>,
    /// Port of the Dapr HTTP API (default 3500; 0 picks a free port).
    #[arg(long, value_name = "PORT")]
    dapr_http_port: Option<u16>,
    /// Address the Dapr HTTP API binds (default 127.0.0.1).
    #[arg(long, value_name = "ADDR")]
    dapr_listen_addresses: Option<String>,
    /// Directory of Dapr resource files (Component YAML). Repeatable.
    #[arg(long, visible_alias = "components-path", value_name = "DIR")]
    resources_path: Vec<PathBuf>,
    /// Require this token in the dapr-api-token header (also DAPR_API_TOKEN).
    #[arg(long, value_name = "TOKEN")]
    dapr_api_token: Option<String>,
    /// Directory for durable data (default ./data, or $STATE_DIRECTORY under systemd).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Largest request body accepted, e.g. 4Mi.
    #[arg(long, value_name = "SIZE")]
    max_body_size: Option<String>,
    /// Log level: error, warn, info, debug, trace (RUST_LOG overrides).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Port of the MQTT device endpoint (default 1883; 0 picks a free port).
    #[arg(long, value_name = "PORT")]
    mqtt_port: Option<u16>,
    /// UDP port of the QUIC device endpoint; turns it on (default: quic.enabled, port 4433; 0
    /// picks a free port).
    #[arg(long, value_name = "PORT")]
    quic_port: Option<u16>,
    /// Port of the Dapr gRPC API (default 50001; 0 picks a free port; also DAPR_GRPC_PORT).
    #[arg(long, value_name = "PORT")]
    dapr_grpc_port: Option<u16>,
    /// How edgecar calls the app: http (default) or grpc (the app serves Dapr's AppCallback).
    #[arg(long, value_name = "PROTOCOL")]
    app_protocol: Option<String>,
    /// Port of the admin listener: /metrics and the status page (default 9090 on 127.0.0.1;
    /// 0 picks a free port).
    #[arg(long, value_name = "PORT")]
    metrics_port: Option<u16>,
    /// Serve the admin listener (default true; --enable-metrics=false turns it off).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    enable_metrics: Option<bool>,
    #[command(flatten)]
    daprd: DaprdArgs,
}

/// The rest of the flags `dapr run` passes to daprd: accepted so edgecar can stand in for daprd
/// under the Dapr CLI; each one edgecar has no use for is named in one warning at start-up.
#[derive(Args, Default)]
struct DaprdArgs {
    /// daprd's port for sidecar-to-sidecar calls (edgecar has none; ignored).
    #[arg(long, value_name = "PORT", allow_hyphen_values = true)]
    dapr_internal_grpc_port: Option<i64>,
    /// Actor placement service (edgecar has no actors; ignored).
    #[arg(long, value_name = "ADDR")]
    placement_host_address: Option<String>,
    /// Scheduler service for jobs and reminders (edgecar has none; ignored).
    #[arg(long, value_name = "ADDR")]
    scheduler_host_address: Option<String>,
    /// Largest number of concurrent calls to the app (-1: unlimited).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    app_max_concurrency: Option<i64>,
    /// Log every API call at info level.
    #[arg(long)]
    enable_api_logging: bool,
    /// Go profiling endpoint (ignored).
    #[arg(long)]
    enable_profiling: bool,
    /// Port of the Go profiling endpoint (ignored).
    #[arg(long, value_name = "PORT", allow_hyphen_values = true)]
    profile_port: Option<i64>,
    /// HTTP header read buffer size (edgecar sizes its own; ignored).
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    read_buffer_size: Option<String>,
    /// Call the app over TLS (not served; ignored).
    #[arg(long)]
    app_ssl: bool,
    /// Probe the app's health (ignored).
    #[arg(long)]
    enable_app_health_check: bool,
    /// Path of the app's health probe (ignored).
    #[arg(long, value_name = "PATH")]
    app_health_check_path: Option<String>,
    /// Seconds between app health probes (ignored).
    #[arg(long, value_name = "SECONDS", allow_hyphen_values = true)]
    app_health_probe_interval: Option<i64>,
    /// Milliseconds an app health probe may take (ignored).
    #[arg(long, value_name = "MS", allow_hyphen_values = true)]
    app_health_probe_timeout: Option<i64>,
    /// Failed probes before the app is unhealthy (ignored).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    app_health_threshold: Option<i64>,
    /// Serve the API on a Unix socket in this directory (not served; ignored).
    #[arg(long, value_name = "DIR")]
    unix_domain_socket: Option<String>,
    /// Dapr's mTLS between sidecars (ignored; edgecar's links use their own certificates).
    #[arg(long)]
    enable_mtls: bool,
    /// Dapr's certificate authority (ignored).
    #[arg(long, value_name = "ADDR")]
    sentry_address: Option<String>,
    /// Log as JSON (ignored; edgecar logs for journald).
    #[arg(long)]
    log_as_json: bool,
    /// daprd's mode: standalone (kubernetes is not served).
    #[arg(long, value_name = "MODE")]
    mode: Option<String>,
}

impl DaprdArgs {
    /// The flags given that edgecar does not act on, each with why.
    fn unused(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut note = |given: bool, flag: &str, why: &str| {
            if given {
                out.push(format!("--{flag}: {why}"));
            }
        };
        note(
            self.dapr_internal_grpc_port.is_some(),
            "dapr-internal-grpc-port",
            "edgecar has no sidecar-to-sidecar gRPC port; peers are reached through links",
        );
        note(
            self.placement_host_address
                .as_deref()
                .is_some_and(|a| !a.is_empty()),
            "placement-host-address",
            "edgecar has no actors",
        );
        note(
            self.scheduler_host_address
                .as_deref()
                .is_some_and(|a| !a.is_empty()),
            "scheduler-host-address",
            "edgecar has no jobs or reminders",
        );
        note(
            self.app_max_concurrency.is_some_and(|n| n > 0),
            "app-max-concurrency",
            "calls to the app are not limited in this build",
        );
        note(
            self.enable_profiling || self.profile_port.is_some_and(|p| p > 0),
            "enable-profiling",
            "no profiling endpoint",
        );
        note(
            self.app_ssl,
            "app-ssl",
            "the app channel is plain HTTP or gRPC",
        );
        note(
            self.enable_app_health_check || self.app_health_check_path.is_some(),
            "enable-app-health-check",
            "app health probes are not in this build",
        );
        note(
            self.unix_domain_socket
                .as_deref()
                .is_some_and(|s| !s.is_empty()),
            "unix-domain-socket",
            "the API is served on TCP only",
        );
        note(
            self.enable_mtls || self.sentry_address.is_some(),
            "enable-mtls",
            "Dapr's sentry mTLS is not served",
        );
        note(
            self.enable_api_logging,
            "enable-api-logging",
            "calls are logged at debug level (--log-level debug)",
        );
        note(
            self.log_as_json,
            "log-as-json",
            "edgecar logs text for journald",
        );
        note(
            self.mode.as_deref().is_some_and(|m| m != "standalone"),
            "mode",
            "only standalone is served",
        );
        out
    }
}

impl RunArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            app_id: self.app_id.clone(),
            app_port: self.app_port,
            app_address: self.app_channel_address.clone(),
            http_port: self.dapr_http_port,
            listen_address: self.dapr_listen_addresses.clone(),
            resources_paths: self.resources_path.clone(),
            api_token: self.dapr_api_token.clone(),
            state_dir: self.state_dir.clone(),
            max_body_size: self.max_body_size.clone(),
            log_level: self.log_level.clone(),
            mqtt_port: self.mqtt_port,
            quic_port: self.quic_port,
            grpc_port: self.dapr_grpc_port,
            app_protocol: self.app_protocol.clone(),
            dapr_config: None,
            metrics_port: self.metrics_port,
            enable_metrics: self.enable_metrics,
        }
    }
}

/// The effective config and what it loads, or every error found on the way.
fn load(args: &RunArgs) -> Result<(config::Config, Setup), Vec<ConfigError>> {
    let env = |k: &str| std::env::var(k).ok();
    let mut overrides = args.overrides();
    // `dapr run` passes a Dapr Configuration with --config; edgecar's own file is edgecar.yaml.
    let file = match args.config.as_deref() {
        Some(p) if config::is_dapr_configuration(p) => {
            overrides.dapr_config = Some(p.to_owned());
            None
        }
        other => other,
    };
    let (cfg, mut errors) = config::assemble(file, &overrides, &env);
    let (setup, setup_errors) = setup::prepare(&cfg);
    errors.extend(setup_errors);
    for note in &setup.notes {
        eprintln!("note: {note}");
    }
    if errors.is_empty() {
        Ok((cfg, setup))
    } else {
        Err(errors)
    }
}

fn report(errors: &[ConfigError]) {
    for e in errors {
        eprintln!("error: {e}");
    }
    eprintln!(
        "{} error(s); see `edgecar print-config` for every field",
        errors.len()
    );
}

fn check_config(args: &RunArgs) -> ExitCode {
    match load(args) {
        Ok((cfg, setup)) => {
            let file = args.config.as_deref().unwrap_or(Path::new("<defaults>"));
            let names = |v: Vec<String>| {
                if v.is_empty() {
                    "none".to_owned()
                } else {
                    v.join(", ")
                }
            };
            println!(
                "ok: config {} (app id {:?}, site {:?}); components: {}; capabilities: {}; declarative subscriptions: {}",
                file.display(),
                cfg.app_id,
                cfg.site,
                names(
                    setup
                        .components
                        .iter()
                        .map(|c| format!("{} ({})", c.name, c.type_name))
                        .collect()
                ),
                names(setup.manifests.iter().map(|m| m.name.clone()).collect()),
                names(
                    setup
                        .subscriptions
                        .iter()
                        .map(|s| format!("{}/{}", s.pubsub, s.topic))
                        .collect()
                ),
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            report(&errors);
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("signal received");
}

fn run(args: &RunArgs) -> ExitCode {
    let (cfg, setup) = match load(args) {
        Ok(v) => v,
        Err(errors) => {
            report(&errors);
            eprintln!("edgecar: refusing to start with an invalid configuration");
            return ExitCode::FAILURE;
        }
    };
    edgecar::observability::init_logging(&cfg.log.level);
    for flag in args.daprd.unused() {
        tracing::warn!("daprd flag accepted but not acted on: {flag}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edgecar: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let addr = SocketAddr::new(cfg.http.address, cfg.http.port);
        let http = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("edgecar: cannot listen on {addr} (http): {e}");
                return ExitCode::FAILURE;
            }
        };
        let mqtt = if cfg.mqtt.enabled && cfg.mqtt.mode == config::MqttMode::Embedded {
            let addr = SocketAddr::new(cfg.mqtt.address, cfg.mqtt.port);
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => Some(l),
                Err(e) => {
                    eprintln!(
                        "edgecar: cannot listen on {addr} (mqtt): {e} \
                         (another broker on this port? set mqtt.port, --mqtt-port, or mqtt.enabled: false)"
                    );
                    return ExitCode::FAILURE;
                }
            }
        } else {
            None
        };
        let quic = if cfg.quic.enabled {
            let addr = SocketAddr::new(cfg.quic.address, cfg.quic.port);
            match std::net::UdpSocket::bind(addr) {
                Ok(s) => Some(s),
                Err(e) => {
                    eprintln!(
                        "edgecar: cannot listen on {addr} (quic, UDP): {e} \
                         (set quic.port, --quic-port, or quic.enabled: false)"
                    );
                    return ExitCode::FAILURE;
                }
            }
        } else {
            None
        };
        let grpc = if cfg.http.grpc_enabled {
            let addr = SocketAddr::new(cfg.http.address, cfg.http.grpc_port);
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => Some(l),
                Err(e) => {
                    eprintln!("edgecar: cannot listen on {addr} (grpc): {e} (set http.grpcPort or --dapr-grpc-port)");
                    return ExitCode::FAILURE;
                }
            }
        } else {
            None
        };
        let admin = if cfg.metrics.enabled {
            let addr = SocketAddr::new(cfg.metrics.address, cfg.metrics.port);
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => Some(l),
                Err(e) => {
                    eprintln!(
                        "edgecar: cannot listen on {addr} (metrics): {e} \
                         (set metrics.port or --metrics-port, or --enable-metrics=false)"
                    );
                    return ExitCode::FAILURE;
                }
            }
        } else {
            None
        };
        let listeners = edgecar::Listeners {
            http,
            mqtt,
            grpc,
            admin,
            quic,
        };
        match edgecar::run(cfg, setup, listeners, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("edgecar: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn device(cmd: DeviceCommand) -> ExitCode {
    use edgecar::devices::{file, password};
    let at = match &cmd {
        DeviceCommand::Add { at, .. }
        | DeviceCommand::Remove { at, .. }
        | DeviceCommand::List { at }
        | DeviceCommand::Acl { at, .. } => at,
    };
    let env = |k: &str| std::env::var(k).ok();
    let overrides = config::Overrides {
        state_dir: at.state_dir.clone(),
        ..Default::default()
    };
    let (cfg, errors) = config::assemble(at.config.as_deref(), &overrides, &env);
    if !errors.is_empty() {
        report(&errors);
        return ExitCode::FAILURE;
    }
    let path = cfg.device_registry();
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("edgecar device: {e}");
        ExitCode::FAILURE
    };
    match cmd {
        DeviceCommand::Add {
            id,
            password_stdin,
            cert_only,
            replace,
            ..
        } => {
            if cfg.app_ids().contains(&id) {
                return fail(&format!(
                    "{id:?} is an app id of this gateway; a device needs an id of its own"
                ));
            }
            if !cfg.mqtt.broker.username.is_empty() && cfg.mqtt.broker.username == id {
                return fail(&format!(
                    "{id:?} is edgecar's own user at the MQTT broker (mqtt.broker.username); \
                     a device needs an id of its own"
                ));
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            if cert_only {
                if let Err(e) = file::add_certificate_only(&path, &id, replace, now) {
                    return fail(&e);
                }
                eprintln!(
                    "device {id:?} {} in {} (certificate only: its certificate's subject CN must be {id:?})",
                    if replace { "saved" } else { "added" },
                    path.display()
                );
                if !cfg.mqtt.tls.client_certs() {
                    eprintln!(
                        "note: mqtt.tls.clientCaFile is not set in this configuration; the device cannot connect until it is"
                    );
                }
                return ExitCode::SUCCESS;
            }
            let (secret, generated) = if password_stdin {
                let mut line = String::new();
                if let Err(e) = std::io::stdin().read_line(&mut line) {
                    return fail(&format!("reading the password from stdin: {e}"));
                }
                let line = line.trim_end_matches(['\r', '\n']).to_owned();
                if line.chars().count() < 8 {
                    return fail(&"the password must have at least 8 characters");
                }
                (line, false)
            } else {
                match password::generate() {
                    Ok(p) => (p, true),
                    Err(e) => return fail(&e),
                }
            };
            let hash = match password::PasswordHash::new(&secret) {
                Ok(h) => h,
                Err(e) => return fail(&e),
            };
            if let Err(e) = file::add(&path, &id, &hash, replace, now) {
                return fail(&e);
            }
            eprintln!(
                "device {id:?} {} in {}",
                if replace { "saved" } else { "added" },
                path.display()
            );
            if generated {
                eprintln!("its password, shown only now (connect with username {id:?}):");
                println!("{secret}");
            }
            if cfg.mqtt.mode == config::MqttMode::External {
                eprintln!(
                    "external broker mode: the broker checks the password; add the device there \
                     too, e.g. mosquitto_passwd -b <password_file> {id} '<its password>'"
                );
            }
            ExitCode::SUCCESS
        }
        DeviceCommand::Remove { id, .. } => match file::remove(&path, &id) {
            Ok(()) => {
                eprintln!("device {id:?} removed from {}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        DeviceCommand::Acl {
            user, per_device, ..
        } => {
            let user = user.unwrap_or_else(|| cfg.mqtt.broker.username.clone());
            if user.is_empty() {
                return fail(
                    &"name edgecar's user at the broker: set mqtt.broker.username in the config \
                      (--config) or pass --user",
                );
            }
            if user.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return fail(&format!(
                    "{user:?}: a broker user name cannot contain spaces"
                ));
            }
            let devices = match file::load(&path) {
                Ok(d) => d,
                Err(errors) => {
                    report(&errors);
                    return ExitCode::FAILURE;
                }
            };
            if devices.contains_key(&user) {
                return fail(&format!(
                    "{user:?} is a registered device; edgecar's broker user must not be a device id"
                ));
            }
            let ids: Vec<String> = devices.keys().cloned().collect();
            let listed = per_device.then_some(ids.as_slice());
            print!("{}", edgecar::transport::broker::acl(&user, listed));
            ExitCode::SUCCESS
        }
        DeviceCommand::List { .. } => match file::load(&path) {
            Ok(devices) => {
                for (id, d) in &devices {
                    println!(
                        "{}\t{}\t{}",
                        id,
                        d.added_at.as_deref().unwrap_or("-"),
                        if d.hash.is_some() {
                            "password"
                        } else {
                            "certificate-only"
                        }
                    );
                }
                eprintln!("{} device(s) in {}", devices.len(), path.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                report(&errors);
                ExitCode::FAILURE
            }
        },
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => run(&RunArgs::default()),
        Some(Command::Run(args)) => run(&args),
        Some(Command::CheckConfig(args)) => check_config(&args),
        Some(Command::PrintConfig) => {
            print!("{}", config::DEFAULT_YAML);
            ExitCode::SUCCESS
        }
        Some(Command::Device(cmd)) => device(cmd),
        Some(Command::Man { dir }) => match man_pages(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("edgecar man: {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        },
    }
}
