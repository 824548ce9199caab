//! The metadata building block: what `GET /v1.0/metadata` says about this sidecar, and the
//! extended attributes apps set with `PUT /v1.0/metadata/<name>`.
//!
//! Dapr SDKs poll this endpoint before their first call, so the reply keeps Dapr's shape
//! (`id`, `runtimeVersion`, `components`, `extended`, ...) even for the parts edgecar does not use.
//! Attributes are bounded (name length, value length, how many), so no caller can make the reply
//! grow without limit.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::json;

use crate::blocks::pubsub::delivery::ActiveSubscriptions;
use crate::call::Reply;
use crate::components::ComponentInfo;
use crate::error::{Error, ErrorKind, codes};

/// Longest extended attribute name accepted, in bytes.
const MAX_ATTRIBUTE_NAME_BYTES: usize = 256;
/// Longest extended attribute value accepted, in bytes.
const MAX_ATTRIBUTE_BYTES: usize = 4096;
/// Most extended attributes kept. With the two limits above, `extended` stays under ~1.1 MiB.
const MAX_ATTRIBUTES: usize = 256;

/// The metadata building block.
pub struct MetadataBlock {
    /// This sidecar's app id.
    app_id: String,
    /// The site, shown as an extended attribute.
    site: String,
    /// The local app's port, 0 for none.
    app_port: u16,
    /// The local app's address.
    app_address: String,
    /// Loaded components.
    components: Vec<ComponentInfo>,
    /// Apps reachable by service invocation: (app id, base URL).
    apps: Vec<(String, String)>,
    /// Attributes set by apps; edgecar's own (`edgecarVersion`, `site`) are added on read.
    extended: Mutex<BTreeMap<String, String>>,
    /// Subscriptions really running (they start once the app answers).
    subscriptions: ActiveSubscriptions,
    /// How edgecar calls the app: `http` or `grpc`.
    app_protocol: &'static str,
}

impl MetadataBlock {
    /// Describes a sidecar.
    pub fn new(
        app_id: String,
        site: String,
        app_port: u16,
        app_address: String,
        components: Vec<ComponentInfo>,
        apps: Vec<(String, String)>,
    ) -> Self {
        MetadataBlock {
            app_id,
            site,
            app_port,
            app_address,
            components,
            apps,
            extended: Mutex::new(BTreeMap::new()),
            subscriptions: ActiveSubscriptions::default(),
            app_protocol: "http",
        }
    }

    /// Names the app channel's protocol (`grpc` for `--app-protocol grpc`).
    pub fn with_app_protocol(mut self, protocol: &'static str) -> Self {
        self.app_protocol = protocol;
        self
    }

    /// Reports the subscriptions in this list (filled by the subscription manager).
    pub fn with_subscriptions(mut self, subscriptions: ActiveSubscriptions) -> Self {
        self.subscriptions = subscriptions;
        self
    }

    /// `GET /v1.0/metadata`; `live` are extended attributes computed by the caller (device
    /// counts), which apps cannot set.
    pub fn get(&self, live: &[(&str, String)]) -> Result<Reply, Error> {
        let mut extended = self
            .extended
            .lock()
            .map_err(|_| {
                Error::new(
                    ErrorKind::Internal,
                    codes::METADATA_SET,
                    "metadata lock poisoned",
                )
            })?
            .clone();
        extended.insert("edgecarVersion".into(), env!("CARGO_PKG_VERSION").into());
        extended.insert("site".into(), self.site.clone());
        for (k, v) in live {
            extended.insert((*k).to_owned(), v.clone());
        }
        extended.insert(
            "daprRuntimeVersion".into(),
            format!("edgecar-{}", env!("CARGO_PKG_VERSION")),
        );
        let components: Vec<_> = self
            .components
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "type": c.type_name,
                    "version": c.version,
                    "capabilities": c.capabilities,
                })
            })
            .collect();
        let subscriptions: Vec<_> = self
            .subscriptions
            .read()
            .map(|subs| subs.iter().map(|s| s.info()).collect())
            .unwrap_or_default();
        let mut body = json!({
            "id": self.app_id,
            "runtimeVersion": format!("edgecar-{}", env!("CARGO_PKG_VERSION")),
            "enabledFeatures": [],
            "actors": [],
            "components": components,
            "extended": extended,
            "subscriptions": subscriptions,
            "httpEndpoints": [],
            // edgecar's own: the apps service invocation can reach from this gateway.
            "apps": self.apps.iter().map(|(id, url)| json!({"appId": id, "address": url})).collect::<Vec<_>>(),
            "actorRuntime": {"runtimeStatus": "DISABLED", "activeActors": [], "hostReady": false, "placement": ""},
        });
        if self.app_port != 0 {
            body["appConnectionProperties"] = json!({
                "port": self.app_port,
                "protocol": self.app_protocol,
                "channelAddress": self.app_address,
                "maxConcurrency": -1,
            });
        }
        Ok(Reply::json(serde_json::to_vec(&body).unwrap_or_default()))
    }

    /// `PUT /v1.0/metadata/<name>`: the body is the value.
    pub fn set(&self, name: &str, body: &[u8]) -> Result<Reply, Error> {
        if name.is_empty() {
            return Err(Error::malformed(
                "metadata attribute name must not be empty",
            ));
        }
        if name.len() > MAX_ATTRIBUTE_NAME_BYTES {
            return Err(Error::malformed(format!(
                "metadata attribute name is {} bytes; the limit is {MAX_ATTRIBUTE_NAME_BYTES}",
                name.len()
            )));
        }
        if body.len() > MAX_ATTRIBUTE_BYTES {
            return Err(Error::malformed(format!(
                "metadata attribute value is {} bytes; the limit is {MAX_ATTRIBUTE_BYTES}",
                body.len()
            )));
        }
        let value = std::str::from_utf8(body)
            .map_err(|_| Error::malformed("metadata attribute value must be UTF-8 text"))?;
        let mut map = self.extended.lock().map_err(|_| {
            Error::new(
                ErrorKind::Internal,
                codes::METADATA_SET,
                "metadata lock poisoned",
            )
        })?;
        if !map.contains_key(name) && map.len() >= MAX_ATTRIBUTES {
            return Err(Error::malformed(format!(
                "at most {MAX_ATTRIBUTES} metadata attributes can be set"
            )));
        }
        map.insert(name.to_owned(), value.to_owned());
        Ok(Reply::no_content())
    }
}
