//! Transports: bytes in, [`Call`](crate::Call) out, and back.
//!
//! Each transport decodes its wire format into calls on the one request path and encodes the
//! replies. None of them knows about stores or building blocks. Today: HTTP and gRPC (the Dapr
//! APIs for apps), MQTT (the embedded device endpoint), the external broker (the same device
//! protocol through another MQTT broker) and QUIC (the device endpoint on one UDP port, routed by
//! ALPN).

pub mod broker;
pub mod grpc;
pub mod http;
pub mod listener;
pub mod mqtt;
pub mod quic;
pub mod tls;
