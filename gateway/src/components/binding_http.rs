//! `bindings.http`: an output binding that calls an HTTP endpoint.
//!
//! Dapr's semantics: the operation is the verb (`get`, `post`, `put`, `patch`, `delete`, `head`,
//! `options`, `trace`; `create` means post); request metadata `path` is appended to the component's
//! `url`, other request metadata become headers; a status of 400 or more is an error.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Largest response accepted from the endpoint.
const MAX_RESPONSE: usize = 16 << 20;

/// An HTTP output binding.
pub struct HttpBinding {
    url: String,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

/// What the endpoint answered.
pub struct HttpResult {
    /// Its status.
    pub status: StatusCode,
    /// Its body.
    pub body: Bytes,
}

/// The endpoint accepts TCP connections: reachability only, since any request could have
/// effects on the far side.
struct Reachable {
    host: String,
    port: u16,
}

#[async_trait::async_trait]
impl super::health::HealthCheck for Reachable {
    fn what(&self) -> &'static str {
        "TCP connect"
    }

    async fn check(&self) -> Result<(), String> {
        tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map(drop)
            .map_err(|e| format!("cannot connect to {}:{}: {e}", self.host, self.port))
    }
}

impl HttpBinding {
    /// Its health check: whether the URL's host accepts connections (`None` if the URL names
    /// no host).
    pub fn health_check(&self) -> Option<std::sync::Arc<dyn super::health::HealthCheck>> {
        let uri: http::Uri = self.url.parse().ok()?;
        let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
            Some("https") => 443,
            _ => 80,
        });
        Some(std::sync::Arc::new(Reachable {
            host: host.to_owned(),
            port,
        }))
    }

    /// A binding to `url` (http or https).
    pub fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        let roots = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| format!("cannot load the system's CA certificates: {e}"))?;
        let connector = roots.https_or_http().enable_http1().build();
        Ok(HttpBinding {
            url: url.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        })
    }

    /// Dapr's operation name to a verb.
    pub fn verb(operation: &str) -> Option<Method> {
        Some(match operation.to_ascii_lowercase().as_str() {
            "get" => Method::GET,
            "post" | "create" => Method::POST,
            "put" => Method::PUT,
            "patch" => Method::PATCH,
            "delete" => Method::DELETE,
            "head" => Method::HEAD,
            "options" => Method::OPTIONS,
            "trace" => Method::TRACE,
            _ => return None,
        })
    }

    /// Calls the endpoint.
    pub async fn invoke(
        &self,
        verb: Method,
        data: Bytes,
        metadata: &BTreeMap<String, String>,
    ) -> Result<HttpResult, String> {
        let path = metadata.get("path").map(String::as_str).unwrap_or_default();
        let url = if path.is_empty() {
            self.url.clone()
        } else {
            format!("{}/{}", self.url, path.trim_start_matches('/'))
        };
        let mut req = Request::builder().method(verb).uri(&url);
        for (k, v) in metadata.iter().filter(|(k, _)| k.as_str() != "path") {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req
            .body(Full::new(data))
            .map_err(|e| format!("bad request to {url}: {e}"))?;
        let resp = tokio::time::timeout(self.timeout, self.client.request(req))
            .await
            .map_err(|_| format!("{url} did not answer within {:?}", self.timeout))?
            .map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| format!("reading the response of {url}: {e}"))?
            .to_bytes();
        Ok(HttpResult { status, body })
    }
}
