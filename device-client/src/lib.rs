//! Device-side client for edgecar.
//!
//! This crate will own the device half of edgecar's protocols: the MQTT device protocol
//! (state, publish, invoke, capabilities, telemetry, commands) and a thin Dapr HTTP API client,
//! plus the `edgecar-device` CLI that makes the sidecar usable from shell scripts. It must never
//! depend on the gateway crate, so that it stays small enough for a device.
//!
//! Status: the protocol arrives with the device-endpoint work; today the crate only fixes the
//! device-side key namespace rule shared with the gateway documentation.

/// The separator Dapr puts between an owner prefix and a state key (`<owner>||<key>`).
pub const KEY_SEPARATOR: &str = "||";
