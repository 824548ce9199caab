//! `edgecar-device`: the device protocol from a shell. Parses flags, calls the library, prints.
//!
//! Exit codes: 0 success, 1 an error reply or a failed connection, 2 bad usage (clap), 3 a key
//! that does not exist (`state get`).

use std::io::Write;
use std::process::{ExitCode, Stdio};

use clap::{Parser, Subcommand, ValueEnum};
use edgecar_device_client::quic::QuicOptions;
use edgecar_device_client::{Client, Error, Options, Transport};

/// Talk to an edgecar gateway as a device (MQTT or QUIC, docs/device-protocol.md).
#[derive(Parser)]
#[command(name = "edgecar-device", version, about, long_about = None)]
struct Cli {
    /// Gateway host.
    #[arg(long, default_value = "127.0.0.1", env = "EDGECAR_HOST")]
    host: String,
    /// Gateway MQTT port.
    #[arg(long, default_value_t = 1883, env = "EDGECAR_MQTT_PORT")]
    port: u16,
    /// Transport: mqtt, or quic (TLS 1.3 over UDP; needs --ca-file or --fingerprint).
    #[arg(long, value_enum, default_value_t = TransportArg::Mqtt, env = "EDGECAR_TRANSPORT")]
    transport: TransportArg,
    /// Gateway QUIC port (UDP).
    #[arg(long, default_value_t = 4433, env = "EDGECAR_QUIC_PORT")]
    quic_port: u16,
    /// QUIC: PEM file of the gateway's certificate (its self-signed `<stateDir>/quic/cert.pem`)
    /// or of the CA that signed it.
    #[arg(long, env = "EDGECAR_CA_FILE")]
    ca_file: Option<std::path::PathBuf>,
    /// QUIC: SHA-256 fingerprint of the gateway's certificate, as its log prints it.
    #[arg(long, env = "EDGECAR_FINGERPRINT")]
    fingerprint: Option<String>,
    /// QUIC: the name the gateway's certificate must hold (with --ca-file; default: --host).
    #[arg(long)]
    server_name: Option<String>,
    /// QUIC: client certificate (PEM); the device is its subject CN, no password needed.
    #[arg(long, requires = "key")]
    cert: Option<std::path::PathBuf>,
    /// QUIC: the client certificate's private key (PEM).
    #[arg(long, requires = "cert")]
    key: Option<std::path::PathBuf>,
    /// Device id (the MQTT username).
    #[arg(long, env = "EDGECAR_DEVICE_ID")]
    id: String,
    /// Device password (prefer the environment variable: flags show up in `ps`). Not needed
    /// with a client certificate.
    #[arg(
        long,
        env = "EDGECAR_DEVICE_PASSWORD",
        hide_env_values = true,
        default_value = ""
    )]
    password: String,
    /// Seconds to wait for a reply.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TransportArg {
    /// MQTT over TCP (--port).
    Mqtt,
    /// QUIC over UDP (--quic-port).
    Quic,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send a telemetry reading (any bytes). Over QUIC it returns once the gateway has stored
    /// it (exit 1 if refused); over MQTT once it is sent at QoS 1.
    Telemetry {
        /// Stream, e.g. oven/temp (empty: the device's main stream).
        #[arg(default_value = "")]
        stream: String,
        /// The reading.
        #[arg(long, short = 'd', conflicts_with = "stdin")]
        data: Option<String>,
        /// Read the reading from standard input, byte for byte (binary is kept as is).
        #[arg(long)]
        stdin: bool,
        /// Send it this many times (each stored before the next, over QUIC).
        #[arg(long, default_value_t = 1)]
        count: u64,
    },
    /// The device's own state.
    #[command(subcommand)]
    State(StateCmd),
    /// Call a method of an app: prints the app's reply body.
    Invoke {
        /// App id.
        app: String,
        /// Method path, e.g. neworder or v2/items.
        method: String,
        /// Request body.
        #[arg(long, short = 'd', default_value = "")]
        data: String,
        /// HTTP verb.
        #[arg(long, default_value = "POST")]
        verb: String,
    },
    /// Call a capability: prints its reply body, and which offer served it and the cache status
    /// (`x-edgecar-offer: local`, `x-edgecar-cache: miss`) on stderr.
    Capability {
        /// Capability name.
        name: String,
        /// Method path after the name.
        #[arg(default_value = "")]
        method: String,
        /// Request body.
        #[arg(long, short = 'd', default_value = "")]
        data: String,
    },
    /// Publish an event to a pub/sub topic (the device is its source).
    Publish {
        /// Topic.
        topic: String,
        /// Event data (JSON if it parses as JSON).
        #[arg(long, short = 'd', default_value = "")]
        data: String,
        /// Pub/sub component.
        #[arg(long, default_value = "pubsub")]
        pubsub: String,
    },
    /// Subscribe to a pub/sub topic and print its events as JSON lines (also those published
    /// while the device was away). The subscription stays until `unsubscribe`.
    Subscribe {
        /// Topic.
        topic: String,
        /// Pub/sub component.
        #[arg(long, default_value = "pubsub")]
        pubsub: String,
        /// Stop after this many events (0: subscribe and exit at once).
        #[arg(long)]
        count: Option<u64>,
    },
    /// End a pub/sub subscription.
    Unsubscribe {
        /// Topic.
        topic: String,
        /// Pub/sub component.
        #[arg(long, default_value = "pubsub")]
        pubsub: String,
    },
    /// Print configuration items of a configuration store as JSON.
    Config {
        /// Configuration store.
        store: String,
        /// Keys (none: every item).
        keys: Vec<String>,
    },
    /// Wait for commands from apps. Each is printed as a JSON line, or, with --exec, run through a
    /// shell command (body on stdin, METHOD in the environment): its stdout is the reply, exit
    /// status 0 answers 200, anything else 500. Without --exec commands are answered 204.
    Listen {
        /// Shell command that handles each command.
        #[arg(long)]
        exec: Option<String>,
        /// Stop after this many commands.
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(Subcommand)]
enum StateCmd {
    /// Print a key's value (exit 3 if missing).
    Get {
        /// Key.
        key: String,
    },
    /// Save a value: JSON if it parses as JSON, a string otherwise.
    Set {
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
    /// Delete a key.
    Delete {
        /// Key.
        key: String,
        /// Only if the value still has this ETag.
        #[arg(long)]
        etag: Option<String>,
    },
}

fn print_body(body: &[u8]) {
    let mut out = std::io::stdout();
    let _ = out.write_all(body);
    if !body.ends_with(b"\n") && !body.is_empty() {
        let _ = out.write_all(b"\n");
    }
}

async fn handle(cmd: &edgecar_device_client::Command, exec: &str) -> (u16, Vec<u8>) {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(exec)
        .env("METHOD", &cmd.method)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return (500, format!("cannot run the handler: {e}").into_bytes()),
    };
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        let _ = stdin.write_all(&cmd.body).await;
    }
    match child.wait_with_output().await {
        Ok(out) if out.status.success() => (200, out.stdout),
        Ok(out) => (500, out.stdout),
        Err(e) => (500, e.to_string().into_bytes()),
    }
}

async fn run(cli: Cli) -> Result<ExitCode, Error> {
    let mut opts = Options::new(&cli.host, cli.port, &cli.id, &cli.password);
    opts.request_timeout = std::time::Duration::from_secs(cli.timeout);
    if cli.transport == TransportArg::Quic {
        opts.port = cli.quic_port;
        opts.transport = Transport::Quic(QuicOptions {
            ca_file: cli.ca_file.clone(),
            fingerprint: cli.fingerprint.clone(),
            server_name: cli.server_name.clone(),
            client_cert: cli.cert.clone().zip(cli.key.clone()),
        });
    }
    let (client, mut commands) = Client::connect(opts).await?;
    let code = match cli.command {
        Cmd::Telemetry {
            stream,
            data,
            stdin,
            count,
        } => {
            let body = if stdin {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
                    .map_err(|e| Error::Protocol(format!("standard input: {e}")))?;
                b
            } else {
                data.unwrap_or_default().into_bytes()
            };
            let body = bytes::Bytes::from(body);
            for _ in 0..count {
                client.telemetry(&stream, body.clone()).await?;
            }
            if let Some(e) = client.telemetry_error() {
                return Err(e);
            }
            ExitCode::SUCCESS
        }
        Cmd::State(StateCmd::Get { key }) => match client.state_get(&key).await? {
            Some((value, _)) => {
                print_body(&value);
                ExitCode::SUCCESS
            }
            None => ExitCode::from(3),
        },
        Cmd::State(StateCmd::Set { key, value }) => {
            let v = serde_json::from_str(&value).unwrap_or(serde_json::Value::String(value));
            client.state_set(&key, &v).await?;
            ExitCode::SUCCESS
        }
        Cmd::State(StateCmd::Delete { key, etag }) => {
            client.state_delete(&key, etag.as_deref()).await?;
            ExitCode::SUCCESS
        }
        Cmd::Invoke {
            app,
            method,
            data,
            verb,
        } => {
            print_body(&client.invoke(&app, &method, &verb, data).await?.body);
            ExitCode::SUCCESS
        }
        Cmd::Capability { name, method, data } => {
            let reply = client.capability(&name, &method, data).await?;
            // On stderr, so that stdout stays the body a script pipes on.
            eprintln!(
                "x-edgecar-offer: {}\nx-edgecar-cache: {}",
                reply.offer.as_deref().unwrap_or("-"),
                reply.cache.as_deref().unwrap_or("-")
            );
            print_body(&reply.body);
            ExitCode::SUCCESS
        }
        Cmd::Publish {
            topic,
            data,
            pubsub,
        } => {
            client.publish(&pubsub, &topic, data).await?;
            ExitCode::SUCCESS
        }
        Cmd::Subscribe {
            topic,
            pubsub,
            count,
        } => {
            let mut events = client.events();
            client.subscribe(&pubsub, &topic).await?;
            let mut seen = 0u64;
            while let Some(events) = events.as_mut()
                && count.is_none_or(|c| seen < c)
            {
                let Some(ev) = events.next().await else { break };
                seen += 1;
                let body =
                    serde_json::from_slice::<serde_json::Value>(&ev.body).unwrap_or_else(|_| {
                        serde_json::Value::String(String::from_utf8_lossy(&ev.body).into_owned())
                    });
                println!(
                    "{}",
                    serde_json::json!({"pubsub": ev.pubsub, "topic": ev.topic, "event": body})
                );
            }
            ExitCode::SUCCESS
        }
        Cmd::Unsubscribe { topic, pubsub } => {
            client.unsubscribe(&pubsub, &topic).await?;
            ExitCode::SUCCESS
        }
        Cmd::Config { store, keys } => {
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            println!("{}", client.config_get(&store, &keys).await?);
            ExitCode::SUCCESS
        }
        Cmd::Listen { exec, count } => {
            let mut seen = 0u64;
            while count.is_none_or(|c| seen < c) {
                let Some(cmd) = commands.next().await else {
                    break;
                };
                seen += 1;
                let (status, body) = match &exec {
                    Some(e) => handle(&cmd, e).await,
                    None => {
                        let line = serde_json::json!({
                            "method": cmd.method,
                            "id": cmd.rid,
                            "body": String::from_utf8_lossy(&cmd.body),
                        });
                        println!("{line}");
                        (204, Vec::new())
                    }
                };
                client.reply(&cmd, status, body).await?;
            }
            ExitCode::SUCCESS
        }
    };
    client.disconnect().await;
    Ok(code)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edgecar-device: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edgecar-device: {e}");
            ExitCode::FAILURE
        }
    }
}
