//! The simulated sensor and its command handling, without I/O: readings that drift like a room's
//! climate, and what each command from an app answers. `main.rs` does the talking.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Shortest interval between readings an app may set (and the CLI accepts).
pub const MIN_INTERVAL_MS: u64 = 100;
/// Longest interval between readings: one day.
pub const MAX_INTERVAL_MS: u64 = 86_400_000;
/// The largest change of temperature (°C) or humidity (%RH) from one reading to the next.
pub const MAX_STEP: f64 = 0.5;
/// The methods the simulator answers.
pub const METHODS: &str = "ping, read-now, set-interval";

/// One reading, as it is sent as telemetry and kept as the device's `last` state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reading {
    /// Counts readings since the device was first started (resumed from its state).
    pub seq: u64,
    /// Degrees Celsius, two decimals.
    pub temperature: f64,
    /// Relative humidity in percent, two decimals.
    pub humidity: f64,
    /// When it was taken, Unix milliseconds.
    pub ts: u64,
}

/// Settings an app may change; kept as the device's `config` state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// Milliseconds between readings.
    pub interval_ms: u64,
}

impl Config {
    /// The interval, if it is within the limits.
    pub fn interval(&self) -> Result<Duration, String> {
        if (MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&self.interval_ms) {
            Ok(Duration::from_millis(self.interval_ms))
        } else {
            Err(format!(
                "intervalMs must be between {MIN_INTERVAL_MS} and {MAX_INTERVAL_MS}, not {}",
                self.interval_ms
            ))
        }
    }
}

/// A climate sensor: temperature and humidity random walks pulled back toward a set point.
#[derive(Debug, Clone)]
pub struct Sensor {
    rng: u64,
    seq: u64,
    temperature: f64,
    humidity: f64,
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

impl Sensor {
    /// A sensor starting at 21.5 °C and 45 %RH; `seed` makes its drift repeatable.
    pub fn new(seed: u64) -> Sensor {
        Sensor {
            // xorshift must not start at 0.
            rng: seed | 1,
            seq: 0,
            temperature: 21.5,
            humidity: 45.0,
        }
    }

    /// A sensor continuing from its last reading (after a restart).
    pub fn resume(seed: u64, last: &Reading) -> Sensor {
        Sensor {
            seq: last.seq,
            temperature: last.temperature.clamp(-40.0, 85.0),
            humidity: last.humidity.clamp(0.0, 100.0),
            ..Sensor::new(seed)
        }
    }

    /// The number of the last reading taken.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// A uniform number in [-1, 1] (xorshift64*).
    fn noise(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        (x as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    /// Takes the next reading at `now_ms`.
    pub fn read(&mut self, now_ms: u64) -> Reading {
        // A small random step plus a pull toward the set point: drifts, never runs away.
        let dt = 0.3 * self.noise() + 0.02 * (22.0 - self.temperature);
        let dh = 0.4 * self.noise() + 0.02 * (45.0 - self.humidity);
        self.temperature =
            round2((self.temperature + dt.clamp(-MAX_STEP, MAX_STEP)).clamp(-40.0, 85.0));
        self.humidity = round2((self.humidity + dh.clamp(-MAX_STEP, MAX_STEP)).clamp(0.0, 100.0));
        self.seq += 1;
        Reading {
            seq: self.seq,
            temperature: self.temperature,
            humidity: self.humidity,
            ts: now_ms,
        }
    }
}

/// What a command asks the device to do besides answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing: answer with the status and body given.
    Reply,
    /// Take a reading now, send it, and answer with it.
    ReadNow,
    /// Save this config and use it, then answer with it.
    SetConfig(Config),
}

/// An answer to an app: HTTP-style status and JSON body.
pub type Answer = (u16, serde_json::Value);

fn error(status: u16, code: &str, message: String) -> Answer {
    (
        status,
        serde_json::json!({ "errorCode": code, "message": message }),
    )
}

/// Decides what a command means. `current` is the config in force; the answer for
/// [`Effect::Reply`] is final, the others are completed by the caller.
pub fn command(
    method: &str,
    body: &[u8],
    device: &str,
    current: Config,
    seq: u64,
) -> (Effect, Answer) {
    match method {
        "ping" => (
            Effect::Reply,
            (
                200,
                serde_json::json!({
                    "pong": true,
                    "device": device,
                    "seq": seq,
                    "intervalMs": current.interval_ms,
                }),
            ),
        ),
        "read-now" => (Effect::ReadNow, (200, serde_json::Value::Null)),
        "set-interval" => match serde_json::from_slice::<Config>(body) {
            Err(e) => (
                Effect::Reply,
                error(
                    400,
                    "ERR_BAD_REQUEST",
                    format!("set-interval takes {{\"intervalMs\": <milliseconds>}}: {e}"),
                ),
            ),
            Ok(cfg) => match cfg.interval() {
                Err(m) => (Effect::Reply, error(400, "ERR_BAD_REQUEST", m)),
                Ok(_) => (
                    Effect::SetConfig(cfg),
                    (200, serde_json::json!({ "intervalMs": cfg.interval_ms })),
                ),
            },
        },
        other => (
            Effect::Reply,
            error(
                404,
                "ERR_UNKNOWN_METHOD",
                format!("unknown method {other:?}; methods: {METHODS}"),
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_drift_within_bounds_and_count_up() {
        let mut s = Sensor::new(7);
        let mut prev = s.read(0);
        assert_eq!(prev.seq, 1);
        let mut moved = false;
        for i in 2..=5000 {
            let r = s.read(i);
            assert_eq!(r.seq, i);
            assert!((r.temperature - prev.temperature).abs() <= MAX_STEP + 0.01);
            assert!((r.humidity - prev.humidity).abs() <= MAX_STEP + 0.01);
            assert!((10.0..=35.0).contains(&r.temperature), "{r:?}");
            assert!((20.0..=70.0).contains(&r.humidity), "{r:?}");
            moved |= r.temperature != prev.temperature;
            prev = r;
        }
        assert!(moved);
        // The same seed drifts the same way; a resumed sensor continues the count.
        assert_eq!(Sensor::new(3).read(1), Sensor::new(3).read(1));
        let mut r = Sensor::resume(3, &prev);
        assert_eq!(r.read(1).seq, prev.seq + 1);
    }

    #[test]
    fn commands() {
        let cfg = Config { interval_ms: 1000 };
        let (e, (st, body)) = command("ping", b"", "d", cfg, 4);
        assert_eq!((e, st), (Effect::Reply, 200));
        assert_eq!(body["seq"], 4);
        assert_eq!(command("read-now", b"", "d", cfg, 4).0, Effect::ReadNow);
        let (e, (st, _)) = command("set-interval", br#"{"intervalMs":250}"#, "d", cfg, 4);
        assert_eq!(
            (e, st),
            (Effect::SetConfig(Config { interval_ms: 250 }), 200)
        );
        for bad in [
            &br#"{"intervalMs":5}"#[..],
            b"{}",
            b"nope",
            br#"{"intervalMs":1,"x":2}"#,
        ] {
            let (e, (st, body)) = command("set-interval", bad, "d", cfg, 4);
            assert_eq!((e, st), (Effect::Reply, 400), "{body}");
            assert_eq!(body["errorCode"], "ERR_BAD_REQUEST");
        }
        let (_, (st, body)) = command("led/on", b"", "d", cfg, 4);
        assert_eq!(st, 404);
        assert!(body["message"].as_str().unwrap().contains("set-interval"));
    }
}
