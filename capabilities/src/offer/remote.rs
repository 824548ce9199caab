//! `type: http` offers: a remote HTTP API called with hyper's pooled client, over rustls (ring
//! provider, the system's root certificates) for `https://`, plain for `http://`.
//!
//! The request URL is the offer's `url` + `/` + the method path, with the caller's query appended
//! to any query the URL has; a method path with a `.`/`..` segment, even percent-encoded, is never
//! sent. Configured headers override forwarded ones; `secretKeyRef` values are
//! resolved on each call and never logged.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::{Deps, Offer, OfferRequest, UpstreamError, UpstreamReply, is_hop_by_hop};
use crate::manifest::{HeaderSource, HeaderSpec, has_dot_segment};

/// The shared HTTP(S) client of all http offers.
pub(crate) type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Builds the client: rustls with the ring provider and the system's roots. Without readable
/// system roots, https offers fail with a certificate error (logged here, once) while plain http
/// keeps working.
pub(crate) fn new_client() -> Result<HttpClient, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = match hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider.clone())
    {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "no system root certificates; https capability offers will fail");
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("cannot configure TLS: {e}"))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
        }
    };
    let connector = builder.https_or_http().enable_http1().build();
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(8)
        .build(connector))
}

/// One `http` offer.
pub(crate) struct HttpOffer {
    /// The URL up to its path, no trailing `/`.
    base: String,
    /// The URL's own query, kept ahead of the caller's.
    base_query: Option<String>,
    /// Configured headers.
    headers: Vec<HeaderSpec>,
    /// Client, secrets, limits.
    deps: Arc<Deps>,
}

impl HttpOffer {
    /// An offer for `url` (validated by the manifest) with `headers`.
    pub(crate) fn new(
        url: &str,
        headers: Vec<HeaderSpec>,
        deps: Arc<Deps>,
    ) -> Result<Self, String> {
        let (base, base_query) = match url.split_once('?') {
            Some((b, q)) => (b, Some(q.to_owned())),
            None => (url, None),
        };
        let base = base.split('#').next().unwrap_or(base).trim_end_matches('/');
        if headers
            .iter()
            .any(|h| HeaderName::from_bytes(h.name.as_bytes()).is_err())
        {
            return Err("invalid header name".to_owned());
        }
        Ok(Self {
            base: base.to_owned(),
            base_query,
            headers,
            deps,
        })
    }

    /// The request URL; `None` when the method path could walk out of the offer's base path.
    /// The engine refuses such paths before any offer runs; this is the last line, right where
    /// the URL is built, for every way a method path can arrive (including `{method}` overrides).
    fn url(&self, req: &OfferRequest) -> Option<String> {
        let mut url = self.base.clone();
        let method = req.method.trim_start_matches('/');
        if has_dot_segment(method) {
            return None;
        }
        if !method.is_empty() {
            url.push('/');
            url.push_str(method);
        }
        let queries: Vec<&str> = [self.base_query.as_deref(), req.query.as_deref()]
            .into_iter()
            .flatten()
            .filter(|q| !q.is_empty())
            .collect();
        if !queries.is_empty() {
            url.push('?');
            url.push_str(&queries.join("&"));
        }
        Some(url)
    }
}

#[async_trait]
impl Offer for HttpOffer {
    async fn call(&self, req: &OfferRequest) -> Result<UpstreamReply, UpstreamError> {
        let Some(url) = self.url(req) else {
            return Err(UpstreamError::Other(format!(
                "method path {:?} has a '.' or '..' segment (perhaps percent-encoded); not sent",
                req.method
            )));
        };
        let mut request = Request::builder()
            .method(req.http_method.clone())
            .uri(&url)
            .body(Full::new(req.body.clone()))
            .map_err(|e| UpstreamError::Other(format!("cannot build request for {url}: {e}")))?;
        let headers = request.headers_mut();
        for (name, value) in &req.headers {
            // The engine forwards only well-formed headers; anything else is dropped, not fatal.
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.append(n, v);
            }
        }
        for h in &self.headers {
            let value = match &h.value {
                HeaderSource::Value(v) => v.clone(),
                HeaderSource::SecretKeyRef(r) => {
                    let Some(secrets) = &self.deps.secrets else {
                        return Err(UpstreamError::Other(format!(
                            "header {}: no secret resolver",
                            h.name
                        )));
                    };
                    secrets
                        .resolve(&r.store, &r.name, &r.key)
                        .await
                        .map_err(|e| UpstreamError::Other(format!("header {}: {e}", h.name)))?
                }
            };
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| UpstreamError::Other(format!("invalid header name {}", h.name)))?;
            let mut value = HeaderValue::from_str(&value).map_err(|_| {
                UpstreamError::Other(format!("header {}: value not allowed in a header", h.name))
            })?;
            if matches!(h.value, HeaderSource::SecretKeyRef(_)) {
                value.set_sensitive(true);
            }
            headers.insert(name, value);
        }

        let client = self
            .deps
            .http
            .get_or_init(new_client)
            .as_ref()
            .map_err(|e| UpstreamError::Other(e.clone()))?;
        let response = client.request(request).await.map_err(|e| {
            if e.is_connect() {
                UpstreamError::Unreachable(format!("{}: {}", self.target(), source_chain(&e)))
            } else {
                UpstreamError::Other(format!("{}: {}", self.target(), source_chain(&e)))
            }
        })?;
        let (parts, body) = response.into_parts();
        let limit = self.deps.max_response_bytes;
        let body = Limited::new(body, limit)
            .collect()
            .await
            .map_err(|e| {
                UpstreamError::Other(format!("reading reply body (limit {limit} bytes): {e}"))
            })?
            .to_bytes();
        let headers = parts
            .headers
            .iter()
            .filter(|(n, _)| !is_hop_by_hop(n.as_str()))
            .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        Ok(UpstreamReply {
            status: parts.status,
            headers,
            body,
        })
    }

    fn target(&self) -> String {
        // The base never carries credentials (the manifest refuses them); the query might (API
        // keys), so it stays out of status pages.
        self.base.clone()
    }
}

/// An error and its causes, `a: b: c`, because hyper's top-level message ("client error
/// (Connect)") alone does not say what happened.
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::convert::Infallible;
    use std::sync::OnceLock;

    use http::{Method, StatusCode};
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    use super::*;
    use crate::manifest::SecretKeyRef;
    use crate::offer::{SecretError, SecretResolver};

    struct Secrets;

    #[async_trait]
    impl SecretResolver for Secrets {
        async fn resolve(&self, store: &str, name: &str, key: &str) -> Result<String, SecretError> {
            if (store, name, key) == ("local", "api", "token") {
                Ok("s3cret".into())
            } else {
                Err(SecretError::NotFound {
                    store: store.into(),
                    name: name.into(),
                    key: key.into(),
                })
            }
        }
    }

    /// A tiny real server: echoes method, path, query and selected headers as JSON.
    async fn start_server() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let svc = service_fn(|req: Request<Incoming>| async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let header = |n: &str| {
                            parts
                                .headers
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned()
                        };
                        let status = if parts.uri.path().ends_with("/fail") {
                            StatusCode::BAD_GATEWAY
                        } else {
                            StatusCode::OK
                        };
                        let json = serde_json::json!({
                            "method": parts.method.as_str(),
                            "path": parts.uri.path(),
                            "query": parts.uri.query(),
                            "token": header("x-token"),
                            "accept": header("accept"),
                            "body": String::from_utf8_lossy(&body),
                        });
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .header("x-upstream", "yes")
                                .body(Full::new(Bytes::from(json.to_string())))
                                .unwrap(),
                        )
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        addr
    }

    fn deps(secrets: bool) -> Arc<Deps> {
        Arc::new(Deps {
            invoker: None,
            secrets: secrets.then(|| Arc::new(Secrets) as Arc<dyn SecretResolver>),
            http: OnceLock::new(),
            max_response_bytes: 1 << 20,
        })
    }

    fn request(method: &str, query: Option<&str>) -> OfferRequest {
        OfferRequest {
            capability: "geo".into(),
            method: method.into(),
            http_method: Method::POST,
            query: query.map(Into::into),
            headers: vec![("accept".into(), "application/json".into())],
            body: Bytes::from_static(b"{\"q\":1}"),
        }
    }

    #[tokio::test]
    async fn forwards_method_path_query_headers_and_body() {
        let addr = start_server().await;
        let headers = vec![HeaderSpec {
            name: "X-Token".into(),
            value: HeaderSource::SecretKeyRef(SecretKeyRef {
                store: "local".into(),
                name: "api".into(),
                key: "token".into(),
            }),
        }];
        let offer =
            HttpOffer::new(&format!("http://{addr}/v1/?key=k"), headers, deps(true)).unwrap();
        let reply = offer.call(&request("lookup/x", Some("a=1"))).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("x-upstream"), Some("yes"));
        assert!(reply.header("content-length").is_none());
        let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(v["method"], "POST");
        assert_eq!(v["path"], "/v1/lookup/x");
        assert_eq!(v["query"], "key=k&a=1");
        assert_eq!(v["token"], "s3cret");
        assert_eq!(v["accept"], "application/json");
        assert_eq!(v["body"], "{\"q\":1}");
        assert_eq!(offer.target(), format!("http://{addr}/v1"));

        let reply = offer.call(&request("fail", None)).await.unwrap();
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    }

    #[tokio::test]
    async fn missing_secret_and_refused_connection_are_errors() {
        let addr = start_server().await;
        let headers = vec![HeaderSpec {
            name: "x-token".into(),
            value: HeaderSource::SecretKeyRef(SecretKeyRef {
                store: "local".into(),
                name: "nope".into(),
                key: "nope".into(),
            }),
        }];
        let offer = HttpOffer::new(&format!("http://{addr}"), headers, deps(true)).unwrap();
        let err = offer.call(&request("", None)).await.unwrap_err();
        assert!(
            matches!(&err, UpstreamError::Other(m) if m.contains("not found")),
            "{err}"
        );

        // A port that was free a moment ago: nothing listens there.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let offer =
            HttpOffer::new(&format!("http://127.0.0.1:{port}"), Vec::new(), deps(false)).unwrap();
        let err = offer.call(&request("x", None)).await.unwrap_err();
        assert!(matches!(err, UpstreamError::Unreachable(_)), "{err}");
    }
}
