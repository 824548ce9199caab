//! `edgecar-sensor-simulator`: a simulated climate sensor that is an edgecar device, written with
//! the `device-client` library only (it never links the gateway).
//!
//! It connects as a registered device, sends a temperature/humidity reading as telemetry every
//! interval, keeps its last reading (`last`) and its settings (`config`) in its own state (so a
//! restart resumes, and apps can read both), and answers commands from apps: `ping`, `read-now`
//! and `set-interval`. The simulation and the command rules live in [`sensor`] (pure); this file
//! does the talking.
//!
//! Exit codes: 0 done (`--count` readings sent, or SIGINT/SIGTERM), 1 the gateway refused or lost
//! the connection, 2 bad usage.

mod sensor;

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Parser;
use edgecar_device_client::quic::QuicOptions;
use edgecar_device_client::{Client, Command, Error, Options, Transport};
use sensor::{Config, Effect, Reading, Sensor};

/// A simulated temperature/humidity sensor on edgecar's MQTT device protocol.
#[derive(Parser)]
#[command(name = "edgecar-sensor-simulator", version, about, long_about = None)]
struct Cli {
    /// Gateway host.
    #[arg(long, default_value = "127.0.0.1", env = "EDGECAR_HOST")]
    host: String,
    /// Gateway MQTT port.
    #[arg(long, default_value_t = 1883, env = "EDGECAR_MQTT_PORT")]
    port: u16,
    /// Device id, as registered with `edgecar device add` (the MQTT username).
    #[arg(long, env = "EDGECAR_DEVICE_ID", value_parser = device_id)]
    device: String,
    /// Device password (prefer the environment variable: flags show up in `ps`).
    #[arg(long, env = "EDGECAR_DEVICE_PASSWORD", hide_env_values = true, value_parser = non_empty)]
    password: String,
    /// Milliseconds between readings, unless an app has saved another interval in the device's
    /// state with `set-interval` (that one wins, across restarts).
    #[arg(long, default_value_t = 5000, env = "EDGECAR_SIM_INTERVAL",
          value_parser = clap::value_parser!(u64).range(sensor::MIN_INTERVAL_MS..=sensor::MAX_INTERVAL_MS))]
    interval: u64,
    /// Stop after this many readings (those taken by `read-now` count). Default: run until
    /// stopped.
    #[arg(long, env = "EDGECAR_SIM_COUNT", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Telemetry stream: readings go to edgecar/v1/<device>/telemetry/<stream>.
    #[arg(long, default_value = "climate", value_parser = stream)]
    stream: String,
    /// Seed of the simulated drift (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Transport: `mqtt` (--port) or `quic` (--quic-port, with --ca-file or --fingerprint).
    #[arg(long, default_value = "mqtt", value_parser = ["mqtt", "quic"], env = "EDGECAR_TRANSPORT")]
    transport: String,
    /// Gateway QUIC port (UDP).
    #[arg(long, default_value_t = 4433, env = "EDGECAR_QUIC_PORT")]
    quic_port: u16,
    /// QUIC: PEM file of the gateway's certificate (or of its CA).
    #[arg(long, env = "EDGECAR_CA_FILE")]
    ca_file: Option<std::path::PathBuf>,
    /// QUIC: SHA-256 fingerprint of the gateway's certificate, as its log prints it.
    #[arg(long, env = "EDGECAR_FINGERPRINT")]
    fingerprint: Option<String>,
}

fn device_id(s: &str) -> Result<String, String> {
    let ok = (1..=63).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(s.to_owned())
    } else {
        Err("a device id is 1 to 63 letters, digits, '-' or '_'".into())
    }
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s.to_owned())
    }
}

fn stream(s: &str) -> Result<String, String> {
    if s.split('/').any(|l| l.is_empty() || l.contains(['+', '#'])) {
        Err("topic levels separated by '/', none empty, without '+' or '#'".into())
    } else {
        Ok(s.to_owned())
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Readings every `period`, the first one at `first`.
fn ticker(first: tokio::time::Instant, period: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(first, period);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

/// The device and what it knows.
struct Device {
    client: Client,
    stream: String,
    sensor: Sensor,
    config: Config,
}

impl Device {
    /// Takes a reading, sends it as telemetry, prints it, keeps it as the `last` state.
    async fn reading(&mut self) -> Result<Reading, Error> {
        let r = self.sensor.read(now_ms());
        let json = serde_json::to_value(&r).unwrap_or_default();
        self.client
            .telemetry(&self.stream, json.to_string())
            .await?;
        if let Some(e) = self.client.telemetry_error() {
            eprintln!("warning: edgecar refused a reading: {e}");
        }
        println!("{json}");
        match self.client.state_set("last", &json).await {
            Ok(()) => {}
            Err(Error::Closed) => return Err(Error::Closed),
            Err(e) => eprintln!("warning: could not save the last reading: {e}"),
        }
        Ok(r)
    }

    /// Answers one command; returns whether the interval changed.
    async fn command(&mut self, cmd: &Command) -> Result<bool, Error> {
        let id = self.client.device_id().to_owned();
        let (effect, (mut status, mut body)) =
            sensor::command(&cmd.method, &cmd.body, &id, self.config, self.sensor.seq());
        let mut changed = false;
        match effect {
            Effect::Reply => {}
            Effect::ReadNow => {
                body = serde_json::to_value(self.reading().await?).unwrap_or_default();
            }
            Effect::SetConfig(cfg) => {
                let value = serde_json::to_value(cfg).unwrap_or_default();
                match self.client.state_set("config", &value).await {
                    Ok(()) => {
                        self.config = cfg;
                        changed = true;
                    }
                    Err(e) => {
                        status = 500;
                        body = serde_json::json!({
                            "errorCode": "ERR_STATE_SAVE",
                            "message": format!("the new interval could not be saved: {e}"),
                        });
                    }
                }
            }
        }
        eprintln!("command {} answered {status}", cmd.method);
        self.client.reply(cmd, status, body.to_string()).await?;
        Ok(changed)
    }
}

/// Reads the device's saved config and last reading, if any and valid.
async fn restore(client: &Client, cli: &Cli) -> Result<(Config, Option<Reading>), Error> {
    let mut config = Config {
        interval_ms: cli.interval,
    };
    if let Some((v, _)) = client.state_get("config").await? {
        match serde_json::from_slice::<Config>(&v) {
            Ok(c) if c.interval().is_ok() => {
                config = c;
                eprintln!(
                    "interval {}ms (saved by an app in the device state)",
                    c.interval_ms
                );
            }
            _ => eprintln!(
                "warning: ignoring the saved config {}; interval {}ms",
                String::from_utf8_lossy(&v),
                cli.interval
            ),
        }
    } else {
        eprintln!("interval {}ms", cli.interval);
    }
    let last = match client.state_get("last").await? {
        Some((v, _)) => serde_json::from_slice::<Reading>(&v).ok(),
        None => None,
    };
    Ok((config, last))
}

async fn run(cli: Cli) -> Result<(), Error> {
    let mut opts = Options::new(&cli.host, cli.port, &cli.device, &cli.password);
    if cli.transport == "quic" {
        opts.port = cli.quic_port;
        opts.transport = Transport::Quic(QuicOptions {
            ca_file: cli.ca_file.clone(),
            fingerprint: cli.fingerprint.clone(),
            ..Default::default()
        });
    }
    let port = opts.port;
    let (client, mut commands) = Client::connect(opts).await?;
    eprintln!(
        "connected to {}:{} ({}) as {}; listening for commands",
        cli.host, port, cli.transport, cli.device
    );
    let (config, last) = restore(&client, &cli).await?;
    let seed = cli
        .seed
        .unwrap_or_else(|| now_ms() ^ u64::from(std::process::id()) << 32);
    let sensor = match &last {
        Some(r) => {
            eprintln!("resuming after reading {}", r.seq);
            Sensor::resume(seed, r)
        }
        None => Sensor::new(seed),
    };
    let mut dev = Device {
        client,
        stream: cli.stream.clone(),
        sensor,
        config,
    };
    let mut period = dev.config.interval().unwrap_or(Duration::from_secs(5));
    let mut ticks = ticker(tokio::time::Instant::now(), period);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Connection(format!("cannot watch SIGTERM: {e}")))?;
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    let mut sent = 0u64;
    while cli.count.is_none_or(|c| sent < c) {
        tokio::select! {
            _ = ticks.tick() => {
                dev.reading().await?;
                sent += 1;
            }
            cmd = commands.next() => {
                let Some(cmd) = cmd else { return Err(Error::Closed) };
                let before = dev.sensor.seq();
                if dev.command(&cmd).await? {
                    period = dev.config.interval().unwrap_or(period);
                    ticks = ticker(tokio::time::Instant::now() + period, period);
                }
                sent += dev.sensor.seq() - before;
            }
            _ = &mut interrupt => break,
            _ = term.recv() => break,
        }
    }
    eprintln!("sent {sent} reading(s); disconnecting");
    dev.client.disconnect().await;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edgecar-sensor-simulator: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let hint = match e {
                Error::Refused(_) => {
                    " (is the device registered with `edgecar device add`, and the password right?)"
                }
                Error::Connection(_) => {
                    " (is edgecar running, and --host/--port its MQTT endpoint?)"
                }
                _ => "",
            };
            eprintln!("edgecar-sensor-simulator: {e}{hint}");
            ExitCode::FAILURE
        }
    }
}
