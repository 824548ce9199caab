//! Building blocks: Dapr's semantics, implemented once for every transport.
//!
//! A block receives decoded [`Call`](crate::Call)s (after policy), parses the operation's JSON body,
//! enforces limits, talks to components and produces a [`Reply`](crate::Reply) or a Dapr-coded
//! [`Error`](crate::Error). Blocks never see HTTP or MQTT.

pub mod bindings;
pub mod capabilities;
pub mod configuration;
pub mod devices;
pub mod invoke;
pub mod lock;
pub mod metadata;
pub mod pubsub;
pub mod secrets;
pub mod state;
pub mod telemetry;
