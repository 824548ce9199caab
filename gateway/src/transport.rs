//! Transports: bytes in, [`Call`](crate::Call) out, and back.
//!
//! Each transport decodes its wire format into calls on the one request path and encodes the
//! replies. None of them knows about stores or building blocks. Today: HTTP and gRPC (the Dapr
//! APIs for apps), MQTT (the embedded device endpoint), the external broker (the same device
//! protocol through another MQTT broker) and QUIC (the device endpoint on one UDP port, routed by
//! ALPN).
//!
//! [`start`] starts them all but the HTTP API, which `gateway::run` serves itself; adding a
//! transport is a module here and its lines in [`start`] (docs/internals.md).

pub mod broker;
pub mod grpc;
pub mod http;
pub mod listener;
pub mod mqtt;
pub mod quic;
pub mod tls;

use std::sync::Arc;

use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::StartError;
use crate::config::{self, Config};
use crate::devices::Layer;
use crate::runtime::Runtime;
use listener::Stop;
use mqtt::hub::Hub;

/// What every transport is started with: the request path, the device layer, the stop signal.
pub struct Shared {
    /// The request path.
    pub runtime: Arc<Runtime>,
    /// The device layer: each device transport joins its links.
    pub devices: Layer,
    /// `true` once the gateway is stopping.
    pub stop: Stop,
}

/// The sockets `edgecar run` bound for the transports that take one (`None`: off).
pub struct Sockets {
    /// The embedded MQTT device endpoint.
    pub mqtt: Option<tokio::net::TcpListener>,
    /// The QUIC device endpoint.
    pub quic: Option<std::net::UdpSocket>,
    /// The Dapr gRPC API.
    pub grpc: Option<tokio::net::TcpListener>,
}

/// Starts every transport beside the HTTP API: the device endpoints (embedded MQTT, or the
/// external broker's client; QUIC) and the gRPC API. Devices' links join the device layer in
/// the order a command looks for a device: MQTT (embedded, or through the broker), then QUIC.
/// Each returned task runs until `shared.stop` turns true and its connections have drained.
pub fn start(
    cfg: &Config,
    shared: Shared,
    sockets: Sockets,
) -> Result<Vec<JoinHandle<()>>, StartError> {
    let Shared {
        runtime,
        devices,
        stop,
    } = shared;
    let (registry, links) = (&devices.registry, &devices.links);
    let drain = cfg.shutdown_timeout.0;
    let mut servers = Vec::new();
    // One rate budget per device, whatever carries its messages: QUIC shares the hub's.
    let hub = Arc::new(Hub::new(mqtt::Endpoint::hub_limits(&cfg.mqtt)));
    if let Some(listener) = sockets.mqtt {
        hub.join(devices.outbox.clone(), links);
        let tls = if cfg.mqtt.tls.enabled() {
            Some(tls::acceptor(&cfg.mqtt.tls).map_err(StartError::Tls)?)
        } else {
            None
        };
        if let Ok(addr) = listener.local_addr() {
            let client_certs = match (
                tls.is_some() && cfg.mqtt.tls.client_certs(),
                cfg.mqtt.tls.client_auth,
            ) {
                (false, _) => "off",
                (true, config::ClientAuth::Optional) => "optional",
                (true, config::ClientAuth::Required) => "required",
            };
            info!(%addr, devices = registry.snapshot().len(), tls = tls.is_some(), client_certs, "MQTT device endpoint listening");
            if client_certs == "off" {
                let cert_only = registry
                    .snapshot()
                    .values()
                    .filter(|d| d.hash.is_none())
                    .count();
                if cert_only > 0 {
                    warn!(
                        devices = cert_only,
                        "certificate-only devices cannot connect: mqtt.tls.clientCaFile is not set"
                    );
                }
            }
        }
        let ep = Arc::new(mqtt::Endpoint {
            runtime: runtime.clone(),
            hub: hub.clone(),
            devices: devices.clone(),
            limits: mqtt::Endpoint::session_limits(&cfg.mqtt),
            connect_timeout: cfg.mqtt.connect_timeout.0,
            handshakes: mqtt::Handshakes::new(
                cfg.mqtt.max_handshakes,
                cfg.mqtt.max_handshakes_per_address,
            ),
            tls,
        });
        servers.push(tokio::spawn(mqtt::serve(listener, ep, stop.clone(), drain)));
    }
    // External broker mode: devices are reached through the broker client instead of the hub.
    if cfg.external_broker() {
        let settings = broker::BrokerSettings::from_config(cfg).map_err(StartError::Broker)?;
        let (link, events) = broker::connect(&settings);
        links.add(link.clone());
        info!(broker = ?settings, devices = registry.snapshot().len(), "devices are served through an external MQTT broker");
        let served = broker::Served {
            runtime: runtime.clone(),
            devices: devices.clone(),
        };
        servers.push(tokio::spawn(broker::serve(
            link,
            events,
            served,
            stop.clone(),
            drain,
        )));
    }
    if let Some(socket) = sockets.quic {
        let link = quic::Endpoint::new_link(&cfg.quic);
        links.add(link.clone());
        let id = quic::cert::identity(cfg).map_err(StartError::Quic)?;
        let crypto = quic::cert::server_crypto(&id.tls).map_err(StartError::Quic)?;
        let endpoint = quic::endpoint(socket, crypto, &cfg.quic)
            .map_err(|e| StartError::Quic(e.to_string()))?;
        if let Ok(addr) = endpoint.local_addr() {
            info!(%addr, certificate = %id.tls.cert_file.display(), source = ?id.source, fingerprint = %id.fingerprint,
                  client_certs = id.tls.client_certs(), "QUIC device endpoint listening");
        }
        let ep = Arc::new(quic::Endpoint {
            runtime: runtime.clone(),
            devices: devices.clone(),
            link,
            budgets: hub.budgets(),
            cfg: cfg.quic.clone(),
        });
        servers.push(tokio::spawn(quic::serve(endpoint, ep, stop.clone(), drain)));
    }
    if let Some(listener) = sockets.grpc {
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "Dapr gRPC API listening");
        }
        servers.push(tokio::spawn(grpc::serve(
            listener,
            runtime,
            Some(cfg.http.api_token.clone()).filter(|t| !t.is_empty()),
            cfg.http.max_connections,
            stop,
            drain,
        )));
    }
    Ok(servers)
}
