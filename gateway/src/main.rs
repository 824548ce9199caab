//! The `edgecar` command: parses flags and calls the library. Nothing else lives here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use edgecar::blocks::pubsub::{delivery, subscription};
use edgecar::components;
use edgecar::config::{self, ConfigError, Overrides, resources};

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

/// Resource kinds this edgecar reads besides `Component`.
const DOCUMENT_KINDS: &[&str] = &["Subscription", "Resiliency"];

/// What `load` found: the config, the components and the other resource documents.
type Loaded = (
    config::Config,
    Vec<resources::Component>,
    Vec<resources::Document>,
);

/// The effective config and resources, or every error found on the way.
fn load(args: &RunArgs) -> Result<Loaded, Vec<ConfigError>> {
    let env = |k: &str| std::env::var(k).ok();
    let (cfg, mut errors) = config::assemble(args.config.as_deref(), &args.overrides(), &env);
    let (components, documents) = if cfg.resources_paths.is_empty() {
        (components::embedded_defaults(), Vec::new())
    } else {
        let (res, res_errors) = resources::load(&cfg.resources_paths, &cfg.app_id);
        errors.extend(res_errors);
        for doc in &res.documents {
            if !DOCUMENT_KINDS.contains(&doc.kind.as_str()) {
                eprintln!(
                    "note: {}: kind {:?} is not supported by this edgecar yet; ignored",
                    doc.source.display(),
                    doc.kind
                );
            }
        }
        (res.components, res.documents)
    };
    for c in &components {
        errors.extend(components::validate(c));
    }
    let (subs, sub_errors) = subscription::load_declarative(&documents, &cfg.app_id);
    errors.extend(sub_errors);
    let pubsubs: Vec<&str> = components
        .iter()
        .filter(|c| c.type_name.starts_with("pubsub."))
        .map(|c| c.name.as_str())
        .collect();
    errors.extend(subscription::check_components(&subs, &pubsubs));
    errors.extend(delivery::load_resiliency(&documents, &cfg.app_id).1);
    if errors.is_empty() {
        Ok((cfg, components, documents))
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
        Ok((cfg, comps, docs)) => {
            let file = args
                .config
                .as_deref()
                .unwrap_or(Path::new("<embedded defaults>"));
            let subs = subscription::load_declarative(&docs, &cfg.app_id).0;
            println!(
                "ok: {} (app id {:?}, site {:?}), {} component(s): {}; {} declarative subscription(s)",
                file.display(),
                cfg.app_id,
                cfg.site,
                comps.len(),
                comps
                    .iter()
                    .map(|c| format!("{} ({})", c.name, c.type_name))
                    .collect::<Vec<_>>()
                    .join(", "),
                subs.len()
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
    let (cfg, comps, docs) = match load(args) {
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
        match edgecar::run_with_documents(cfg, comps, docs, listener, shutdown_signal()).await {
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
