//! The Dapr HTTP API v1.0: which path and verb is which operation, and the one map from
//! [`ErrorKind`] to HTTP status.
//!
//! The HTTP transport asks [`route`] what a request means and [`status`] how to answer an error;
//! the paths, verbs and status codes are Dapr's, so Dapr SDKs and docs apply unchanged.

use http::{Method, StatusCode};

use crate::call::{Op, Params};
use crate::error::{Error, ErrorKind, codes};

/// What a request path means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /v1.0/healthz`: the sidecar is up (exempt from the API token).
    Healthz,
    /// `GET /v1.0/healthz/outbound`: components are ready (exempt from the API token).
    HealthzOutbound,
    /// An operation on the request path.
    Call(Op),
}

/// The HTTP status for an error kind: the only place this mapping lives.
pub fn status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        ErrorKind::Upstream | ErrorKind::Internal | ErrorKind::QueueFull => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
        ErrorKind::NotImplemented => StatusCode::NOT_IMPLEMENTED,
    }
}

/// Dapr's error body: `{"errorCode": "...", "message": "..."}`.
pub fn error_body(e: &Error) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"errorCode": e.code, "message": e.message}))
        .unwrap_or_default()
}

/// Decodes `%XX` escapes in one path segment or query component (`+` stays `+` in paths).
pub fn percent_decode(s: &str, plus_is_space: bool) -> Result<String, Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| Error::malformed(format!("bad percent-encoding in {s:?}")))?;
                out.push(hex);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map_err(|_| Error::malformed(format!("{s:?} is not UTF-8 after decoding")))
}

/// Reads Dapr's query options: `metadata.<name>=<value>` into metadata, the rest into options.
pub fn parse_query(query: Option<&str>, params: &mut Params) -> Result<(), Error> {
    let Some(q) = query else { return Ok(()) };
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k, true)?;
        let v = percent_decode(v, true)?;
        match k.strip_prefix("metadata.") {
            Some(name) => params.metadata.insert(name.to_owned(), v),
            None => params.options.insert(k, v),
        };
    }
    Ok(())
}

fn not_found(method: &Method, path: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        codes::NOT_FOUND,
        format!("no API route for {method} {path}"),
    )
}

fn method_not_allowed(method: &Method, path: &str) -> Error {
    Error::new(
        ErrorKind::BadRequest,
        codes::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {path}"),
    )
}

/// The method path an app sees: the raw path (escapes kept) plus the query, if any.
fn app_method(path: &str, query: Option<&str>) -> String {
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    match query {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path,
    }
}

/// `/v1.0/invoke/<app-id>/method/<method...>`: everything after `method/` is the app's path,
/// kept raw, so multi-segment and escaped paths reach the app as the caller wrote them.
fn invoke_route(method: &Method, path: &str, query: Option<&str>) -> Option<Result<Route, Error>> {
    let rest = path.strip_prefix("/v1.0/invoke/")?;
    let Some((app, tail)) = rest.split_once("/method/") else {
        return Some(Err(not_found(method, path)));
    };
    let app_id = match percent_decode(app, false) {
        Ok(a) if !a.is_empty() => a,
        Ok(_) => return Some(Err(Error::malformed("app id must not be empty"))),
        Err(e) => return Some(Err(e)),
    };
    Some(Ok(Route::Call(Op::Invoke {
        app_id,
        method: app_method(tail, query),
        verb: method.clone(),
    })))
}

/// Dapr's header form of invocation: any path outside the API, with `dapr-app-id: <app-id>`.
pub fn route_by_app_id_header(
    app_id: &str,
    verb: &Method,
    path: &str,
    query: Option<&str>,
) -> Option<Route> {
    if path.starts_with("/v1.0/") || path.starts_with("/v1.0-alpha1/") || app_id.is_empty() {
        return None;
    }
    Some(Route::Call(Op::Invoke {
        app_id: app_id.to_owned(),
        method: app_method(path, query),
        verb: verb.clone(),
    }))
}

/// `/v1.0/capabilities` (list) and `/v1.0/capabilities/<name>/<method...>` (call, any verb; the
/// method path stays raw, the query is kept apart).
fn capability_route(
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> Option<Result<Route, Error>> {
    let rest = path.strip_prefix("/v1.0/capabilities")?;
    if rest.is_empty() || rest == "/" {
        return Some(if *method == Method::GET {
            Ok(Route::Call(Op::CapabilityList))
        } else {
            Err(method_not_allowed(method, path))
        });
    }
    let rest = rest.strip_prefix('/')?;
    let (name, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let name = match percent_decode(name, false) {
        Ok(n) => n,
        Err(e) => return Some(Err(e)),
    };
    Some(Ok(Route::Call(Op::Capability {
        name,
        method: tail.to_owned(),
        query: query.filter(|q| !q.is_empty()).map(str::to_owned),
        verb: method.clone(),
    })))
}

/// Dapr's alpha APIs under `/v1.0-alpha1/`.
fn alpha_route(
    method: &Method,
    path: &str,
    rest: &str,
    query: Option<&str>,
) -> Result<Route, Error> {
    let segs: Vec<String> = rest
        .split('/')
        .map(|s| percent_decode(s, false))
        .collect::<Result<_, _>>()?;
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let write = *method == Method::POST || *method == Method::PUT;
    match (s.as_slice(), method) {
        (["publish", "bulk", pubsub, topic @ ..], _) if write => Ok(Route::Call(Op::BulkPublish {
            pubsub: pubsub.to_string(),
            topic: topic.join("/"),
        })),
        (["publish", "bulk", ..], _) => Err(method_not_allowed(method, path)),
        (["state", store, "query"], _) if write => Ok(Route::Call(Op::StateQuery {
            store: store.to_string(),
        })),
        (["lock", store], &Method::POST) => Ok(Route::Call(Op::Lock {
            store: store.to_string(),
        })),
        (["unlock", store], &Method::POST) => Ok(Route::Call(Op::Unlock {
            store: store.to_string(),
        })),
        (["lock" | "unlock", _], _) => Err(method_not_allowed(method, path)),
        // The configuration API's alpha names, which older SDKs call.
        (["configuration", store], &Method::GET) => Ok(Route::Call(Op::ConfigurationGet {
            store: store.to_string(),
            keys: query_values(query, "key")?,
        })),
        (["configuration", store, "subscribe"], &Method::GET) => {
            Ok(Route::Call(Op::ConfigurationSubscribe {
                store: store.to_string(),
                keys: query_values(query, "key")?,
            }))
        }
        (["configuration", store, id, "unsubscribe"], &Method::GET) => {
            Ok(Route::Call(Op::ConfigurationUnsubscribe {
                store: store.to_string(),
                id: id.to_string(),
            }))
        }
        _ => Err(not_found(method, path)),
    }
}

/// Every value of a repeated query parameter (`key=a&key=b`).
fn query_values(query: Option<&str>, name: &str) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(k, true)? == name {
            out.push(percent_decode(v, true)?);
        }
    }
    Ok(out)
}

/// Maps a method, path and query to what they mean.
pub fn route(method: &Method, path: &str, query: Option<&str>) -> Result<Route, Error> {
    if let Some(r) =
        invoke_route(method, path, query).or_else(|| capability_route(method, path, query))
    {
        return r;
    }
    if let Some(alpha) = path.strip_prefix("/v1.0-alpha1/") {
        return alpha_route(method, path, alpha, query);
    }
    let rest = path
        .strip_prefix("/v1.0/")
        .ok_or_else(|| not_found(method, path))?;
    let mut segs: Vec<String> = rest
        .split('/')
        .map(|s| percent_decode(s, false))
        .collect::<Result<_, _>>()?;
    if segs.last().is_some_and(String::is_empty) {
        segs.pop();
    }
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let write = *method == Method::POST || *method == Method::PUT;
    let op = match (s.as_slice(), method) {
        (["healthz"], &Method::GET) => return Ok(Route::Healthz),
        // `bulk` is matched before a pub/sub of that name, as Dapr's router does.
        (["publish", "bulk", pubsub, topic @ ..], _) if write => Op::BulkPublish {
            pubsub: pubsub.to_string(),
            topic: topic.join("/"),
        },
        // The topic is the rest of the path: topics may contain `/`.
        (["publish", pubsub, topic @ ..], _) if write => Op::Publish {
            pubsub: pubsub.to_string(),
            topic: topic.join("/"),
        },
        (["healthz", "outbound"], &Method::GET) => return Ok(Route::HealthzOutbound),
        (["state", store], _) if write => Op::StateSave {
            store: store.to_string(),
        },
        (["state", store, "bulk"], _) if write => Op::StateBulkGet {
            store: store.to_string(),
        },
        (["state", store, "transaction"], _) if write => Op::StateTransaction {
            store: store.to_string(),
        },
        (["state", store, key], &Method::GET) => Op::StateGet {
            store: store.to_string(),
            key: key.to_string(),
        },
        (["state", store, key], &Method::DELETE) => Op::StateDelete {
            store: store.to_string(),
            key: key.to_string(),
        },
        (["secrets", store, "bulk"], &Method::GET) => Op::SecretBulk {
            store: store.to_string(),
        },
        (["secrets", store, name], &Method::GET) => Op::SecretGet {
            store: store.to_string(),
            name: name.to_string(),
        },
        (["configuration", store], &Method::GET) => Op::ConfigurationGet {
            store: store.to_string(),
            keys: query_values(query, "key")?,
        },
        (["configuration", store, "subscribe"], &Method::GET) => Op::ConfigurationSubscribe {
            store: store.to_string(),
            keys: query_values(query, "key")?,
        },
        (["configuration", store, id, "unsubscribe"], &Method::GET) => {
            Op::ConfigurationUnsubscribe {
                store: store.to_string(),
                id: id.to_string(),
            }
        }
        (["bindings", name], _) if write => Op::Binding {
            name: name.to_string(),
        },
        (["metadata"], &Method::GET) => Op::MetadataGet,
        (["shutdown"], &Method::POST) => Op::Shutdown,
        (["devices"], &Method::GET) => Op::DevicesList,
        (["devices", id], &Method::GET) => Op::DeviceGet { id: id.to_string() },
        (["devices", device, "mailbox", id], &Method::GET) => Op::MailboxGet {
            device: device.to_string(),
            id: id.to_string(),
        },
        (["metadata", attr], &Method::PUT) => Op::MetadataSet {
            attribute: attr.to_string(),
        },
        (
            ["healthz"]
            | ["healthz", "outbound"]
            | ["state", _]
            | ["state", _, _]
            | ["secrets", _, _]
            | ["metadata"]
            | ["metadata", _]
            | ["publish", ..]
            | ["devices"]
            | ["devices", _]
            | ["devices", _, "mailbox", _],
            _,
        ) => {
            return Err(method_not_allowed(method, path));
        }
        _ => return Err(not_found(method, path)),
    };
    Ok(Route::Call(op))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dapr_state_routes() {
        let r = |m: Method, p: &str| route(&m, p, None);
        assert_eq!(
            r(Method::GET, "/v1.0/state/s/my%20key"),
            Ok(Route::Call(Op::StateGet {
                store: "s".into(),
                key: "my key".into()
            }))
        );
        assert_eq!(
            r(Method::POST, "/v1.0/state/s"),
            Ok(Route::Call(Op::StateSave { store: "s".into() }))
        );
        assert_eq!(
            r(Method::PUT, "/v1.0/state/s/bulk"),
            Ok(Route::Call(Op::StateBulkGet { store: "s".into() }))
        );
        assert_eq!(
            r(Method::GET, "/v1.0/state/s/bulk"),
            Ok(Route::Call(Op::StateGet {
                store: "s".into(),
                key: "bulk".into()
            }))
        );
        assert_eq!(
            r(Method::GET, "/v1.0/healthz/outbound"),
            Ok(Route::HealthzOutbound)
        );
        assert_eq!(
            r(Method::PATCH, "/v1.0/state/s").unwrap_err().code,
            codes::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            r(Method::GET, "/v2/x").unwrap_err().kind,
            ErrorKind::NotFound
        );
        assert_eq!(
            r(Method::GET, "/v1.0/state/s/%zz").unwrap_err().kind,
            ErrorKind::BadRequest
        );
    }

    #[test]
    fn invoke_routes_keep_the_raw_method_path_and_query() {
        let r = route(
            &Method::PATCH,
            "/v1.0/invoke/orders/method/v2/items/a%2Fb",
            Some("x=1&y=2"),
        );
        assert_eq!(
            r,
            Ok(Route::Call(Op::Invoke {
                app_id: "orders".into(),
                method: "/v2/items/a%2Fb?x=1&y=2".into(),
                verb: Method::PATCH
            }))
        );
        assert_eq!(
            route(&Method::GET, "/v1.0/invoke/orders/nomethod", None)
                .unwrap_err()
                .kind,
            ErrorKind::NotFound
        );
        assert_eq!(
            route_by_app_id_header("orders", &Method::GET, "/neworder", None),
            Some(Route::Call(Op::Invoke {
                app_id: "orders".into(),
                method: "/neworder".into(),
                verb: Method::GET
            }))
        );
        assert_eq!(
            route_by_app_id_header("orders", &Method::GET, "/v1.0/metadata", None),
            None
        );
    }

    #[test]
    fn capability_routes() {
        assert_eq!(
            route(&Method::GET, "/v1.0/capabilities", None),
            Ok(Route::Call(Op::CapabilityList))
        );
        assert_eq!(
            route(
                &Method::POST,
                "/v1.0/capabilities/geocode/v1/lookup",
                Some("q=x")
            ),
            Ok(Route::Call(Op::Capability {
                name: "geocode".into(),
                method: "v1/lookup".into(),
                query: Some("q=x".into()),
                verb: Method::POST
            }))
        );
        assert_eq!(
            route(&Method::GET, "/v1.0/capabilities/stats", None),
            Ok(Route::Call(Op::Capability {
                name: "stats".into(),
                method: String::new(),
                query: None,
                verb: Method::GET
            }))
        );
        // Metrics are served by the admin listener, not the API (observability::admin).
        assert!(route(&Method::GET, "/metrics", None).is_err());
    }

    #[test]
    fn dapr_publish_routes() {
        let r = |m: Method, p: &str| route(&m, p, None);
        let publish = |pubsub: &str, topic: &str| {
            Ok(Route::Call(Op::Publish {
                pubsub: pubsub.into(),
                topic: topic.into(),
            }))
        };
        let bulk = |pubsub: &str, topic: &str| {
            Ok(Route::Call(Op::BulkPublish {
                pubsub: pubsub.into(),
                topic: topic.into(),
            }))
        };
        assert_eq!(
            r(Method::POST, "/v1.0/publish/ps/orders"),
            publish("ps", "orders")
        );
        assert_eq!(
            r(Method::PUT, "/v1.0/publish/ps/a/b%2Fc"),
            publish("ps", "a/b/c")
        );
        assert_eq!(r(Method::POST, "/v1.0/publish/ps/"), publish("ps", ""));
        assert_eq!(
            r(Method::POST, "/v1.0-alpha1/publish/bulk/ps/t/x"),
            bulk("ps", "t/x")
        );
        assert_eq!(r(Method::POST, "/v1.0/publish/bulk/ps/t"), bulk("ps", "t"));
        assert_eq!(
            r(Method::GET, "/v1.0/publish/ps/t").unwrap_err().code,
            codes::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            r(Method::GET, "/v1.0-alpha1/state/s/k").unwrap_err().kind,
            ErrorKind::NotFound
        );
    }

    #[test]
    fn alpha_configuration_aliases_and_shutdown() {
        assert_eq!(
            route(
                &Method::GET,
                "/v1.0-alpha1/configuration/cfg",
                Some("key=a&key=b")
            ),
            Ok(Route::Call(Op::ConfigurationGet {
                store: "cfg".into(),
                keys: vec!["a".into(), "b".into()]
            }))
        );
        assert_eq!(
            route(
                &Method::GET,
                "/v1.0-alpha1/configuration/cfg/id7/unsubscribe",
                None
            ),
            Ok(Route::Call(Op::ConfigurationUnsubscribe {
                store: "cfg".into(),
                id: "id7".into()
            }))
        );
        assert_eq!(
            route(&Method::POST, "/v1.0/shutdown", None),
            Ok(Route::Call(Op::Shutdown))
        );
    }

    #[test]
    fn query_metadata_and_options() {
        let mut p = Params::default();
        parse_query(
            Some("metadata.ttlInSeconds=30&concurrency=first-write&metadata.a%20b=c+d"),
            &mut p,
        )
        .unwrap();
        assert_eq!(p.metadata["ttlInSeconds"], "30");
        assert_eq!(p.metadata["a b"], "c d");
        assert_eq!(p.options["concurrency"], "first-write");
    }
}
