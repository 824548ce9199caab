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
        }
    }
}

/// The effective config and what it loads, or every error found on the way.
fn load(args: &RunArgs) -> Result<(config::Config, Setup), Vec<ConfigError>> {
    let env = |k: &str| std::env::var(k).ok();
    let (cfg, mut errors) = config::assemble(args.config.as_deref(), &args.overrides(), &env);
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
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("edgecar: cannot listen on {addr} (http): {e}");
                return ExitCode::FAILURE;
            }
        };
        match edgecar::run(cfg, setup, listener, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("edgecar: {e}");
                ExitCode::FAILURE
            }
        }
    })
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
    }
}
