//! The Dapr HTTP API v1.0: which path and verb is which operation, and the one map from
//! [`ErrorKind`] to HTTP status.
//!
//! The HTTP transport asks [`route`] what a request means and [`status`] how to answer an error;
//! the paths, verbs and status codes are Dapr's, so Dapr SDKs and docs apply unchanged. A route
//! names an operation of the table ([`crate::ops`]) and the path segments it matched; the
//! operation reads them, and the query string, itself.

use http::{Method, StatusCode};

use crate::call::Params;
use crate::error::{Error, ErrorKind, codes};
use crate::ops::{self, Args, Op, percent_decode};

/// What a request path means.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // one per request, moved once into the call
pub enum Route {
    /// `GET /v1.0/healthz`: the sidecar is up (exempt from the API token).
    Healthz,
    /// `GET /v1.0/healthz/outbound`: components are ready (exempt from the API token).
    HealthzOutbound,
    /// An operation on the request path, with its parameters.
    Call(Op, Params),
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

/// What a matched route decodes to: operation `name` reads `args` and the query string.
fn call(name: &str, mut args: Args, query: Option<&str>) -> Result<Route, Error> {
    args.push_query(query)?;
    let (op, params) = ops::parse(name, args)?;
    Ok(Route::Call(op, params))
}

/// `/v1.0/invoke/<app-id>/method/<method...>`: everything after `method/` is the app's path,
/// kept raw, so multi-segment and escaped paths reach the app as the caller wrote them.
fn invoke_route(
    method: &Method,
    path: &str,
    query: Option<&str>,
    params: &Params,
) -> Option<Result<Route, Error>> {
    let rest = path.strip_prefix("/v1.0/invoke/")?;
    let Some((app, tail)) = rest.split_once("/method/") else {
        return Some(Err(not_found(method, path)));
    };
    let app_id = match percent_decode(app, false) {
        Ok(a) if !a.is_empty() => a,
        Ok(_) => return Some(Err(Error::malformed("app id must not be empty"))),
        Err(e) => return Some(Err(e)),
    };
    let args = Args::with_params(params.clone())
        .with("app", app_id)
        .with("method", app_method(tail, query))
        .with("verb", method.as_str());
    Some(call("invoke", args, query))
}

/// Dapr's header form of invocation: any path outside the API, with `dapr-app-id: <app-id>`.
pub fn route_by_app_id_header(
    app_id: &str,
    verb: &Method,
    path: &str,
    query: Option<&str>,
    params: &Params,
) -> Option<Result<Route, Error>> {
    if path.starts_with("/v1.0/") || path.starts_with("/v1.0-alpha1/") || app_id.is_empty() {
        return None;
    }
    let args = Args::with_params(params.clone())
        .with("app", app_id)
        .with("method", app_method(path, query))
        .with("verb", verb.as_str());
    Some(call("invoke", args, query))
}

/// `/v1.0/capabilities` (list) and `/v1.0/capabilities/<name>/<method...>` (call, any verb; the
/// method path stays raw, the query is kept apart).
fn capability_route(
    method: &Method,
    path: &str,
    query: Option<&str>,
    params: &Params,
) -> Option<Result<Route, Error>> {
    let rest = path.strip_prefix("/v1.0/capabilities")?;
    let args = Args::with_params(params.clone());
    if rest.is_empty() || rest == "/" {
        return Some(if *method == Method::GET {
            call("capability.list", args, query)
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
    let mut args = args
        .with("name", name)
        .with("method", tail)
        .with("verb", method.as_str());
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        args.push("query", q);
    }
    Some(call("capability.call", args, query))
}

/// The path's segments after its prefix, decoded; a trailing empty segment dropped.
fn segments(rest: &str) -> Result<Vec<String>, Error> {
    let mut segs: Vec<String> = rest
        .split('/')
        .map(|s| percent_decode(s, false))
        .collect::<Result<_, _>>()?;
    if segs.last().is_some_and(String::is_empty) && segs.len() > 1 {
        segs.pop();
    }
    Ok(segs)
}

/// The configuration API's `GET` paths (under `/v1.0/` and, by their alpha names, `/v1.0-alpha1/`).
fn configuration_route(s: &[&str], a: Args) -> Option<(&'static str, Args)> {
    Some(match s {
        ["configuration", store] => ("configuration.get", a.with("store", *store)),
        ["configuration", store, "subscribe"] => {
            ("configuration.subscribe", a.with("store", *store))
        }
        ["configuration", store, id, "unsubscribe"] => (
            "configuration.unsubscribe",
            a.with("store", *store).with("id", *id),
        ),
        _ => return None,
    })
}

/// Dapr's alpha APIs under `/v1.0-alpha1/`.
fn alpha_route(
    method: &Method,
    path: &str,
    rest: &str,
    query: Option<&str>,
    params: &Params,
) -> Result<Route, Error> {
    let segs = segments(rest)?;
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let write = *method == Method::POST || *method == Method::PUT;
    let a = || Args::with_params(params.clone());
    let (name, args) = match (s.as_slice(), method) {
        (["publish", "bulk", pubsub, topic @ ..], _) if write => (
            "pubsub.bulk_publish",
            a().with("pubsub", *pubsub).with("topic", topic.join("/")),
        ),
        (["publish", "bulk", ..], _) => return Err(method_not_allowed(method, path)),
        (["state", store, "query"], _) if write => ("state.query", a().with("store", *store)),
        (["lock", store], &Method::POST) => ("lock.lock", a().with("store", *store)),
        (["unlock", store], &Method::POST) => ("lock.unlock", a().with("store", *store)),
        (["lock" | "unlock", _], _) => return Err(method_not_allowed(method, path)),
        // The configuration API's alpha names, which older SDKs call.
        (["configuration", ..], &Method::GET) => match configuration_route(&s, a()) {
            Some(r) => r,
            None => return Err(not_found(method, path)),
        },
        _ => return Err(not_found(method, path)),
    };
    call(name, args, query)
}

/// What a request means, from its method, URI and headers (the body aside): a health check, or
/// an operation with its parameters (`If-Match`, trace context, content type; for operations that
/// forward headers, the caller's headers). Dapr's `dapr-app-id` header form of invocation is
/// honoured. Pure: the HTTP transport and the fuzzer both call it.
pub fn request(
    method: &Method,
    uri: &http::Uri,
    headers: &http::HeaderMap,
) -> Result<Route, Error> {
    let header_str = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let params = Params {
        transport: crate::call::Transport::Http,
        if_match: header_str("if-match").map(|e| e.trim_matches('"').to_owned()),
        traceparent: header_str("traceparent"),
        tracestate: header_str("tracestate"),
        content_type: header_str("content-type"),
        ..Params::default()
    };
    let by_header = headers
        .get("dapr-app-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|id| route_by_app_id_header(id, method, uri.path(), uri.query(), &params));
    let route = match by_header {
        Some(r) => r?,
        None => route(method, uri.path(), uri.query(), &params)?,
    };
    Ok(match route {
        Route::Call(op, mut params) if op.spec().forwards_headers => {
            params.headers = headers
                .iter()
                .filter(|(k, _)| crate::blocks::invoke::forwardable(k.as_str()))
                .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                .collect();
            Route::Call(op, params)
        }
        other => other,
    })
}

/// Maps a method, path and query to what they mean; `params` are what the transport read from
/// the request's headers.
pub fn route(
    method: &Method,
    path: &str,
    query: Option<&str>,
    params: &Params,
) -> Result<Route, Error> {
    if let Some(r) = invoke_route(method, path, query, params)
        .or_else(|| capability_route(method, path, query, params))
    {
        return r;
    }
    if let Some(alpha) = path.strip_prefix("/v1.0-alpha1/") {
        return alpha_route(method, path, alpha, query, params);
    }
    let rest = path
        .strip_prefix("/v1.0/")
        .ok_or_else(|| not_found(method, path))?;
    let segs = segments(rest)?;
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let write = *method == Method::POST || *method == Method::PUT;
    let a = || Args::with_params(params.clone());
    let (name, args) = match (s.as_slice(), method) {
        (["healthz"], &Method::GET) => return Ok(Route::Healthz),
        (["healthz", "outbound"], &Method::GET) => return Ok(Route::HealthzOutbound),
        // `bulk` is matched before a pub/sub of that name, as Dapr's router does.
        (["publish", "bulk", pubsub, topic @ ..], _) if write => (
            "pubsub.bulk_publish",
            a().with("pubsub", *pubsub).with("topic", topic.join("/")),
        ),
        // The topic is the rest of the path: topics may contain `/`.
        (["publish", pubsub, topic @ ..], _) if write => (
            "pubsub.publish",
            a().with("pubsub", *pubsub).with("topic", topic.join("/")),
        ),
        (["state", store], _) if write => ("state.save", a().with("store", *store)),
        (["state", store, "bulk"], _) if write => ("state.bulk_get", a().with("store", *store)),
        (["state", store, "transaction"], _) if write => {
            ("state.transaction", a().with("store", *store))
        }
        (["state", store, key], &Method::GET) => {
            ("state.get", a().with("store", *store).with("key", *key))
        }
        (["state", store, key], &Method::DELETE) => {
            ("state.delete", a().with("store", *store).with("key", *key))
        }
        (["secrets", store, "bulk"], &Method::GET) => ("secrets.bulk", a().with("store", *store)),
        (["secrets", store, name], &Method::GET) => {
            ("secrets.get", a().with("store", *store).with("name", *name))
        }
        (["configuration", ..], &Method::GET) => match configuration_route(&s, a()) {
            Some(r) => r,
            None => return Err(not_found(method, path)),
        },
        (["bindings", name], _) if write => ("bindings.invoke", a().with("name", *name)),
        (["metadata"], &Method::GET) => ("metadata.get", a()),
        (["shutdown"], &Method::POST) => ("shutdown", a()),
        (["devices"], &Method::GET) => ("devices.list", a()),
        (["devices", id], &Method::GET) => ("devices.get", a().with("id", *id)),
        (["devices", device, "mailbox", id], &Method::GET) => (
            "devices.mailbox.get",
            a().with("device", *device).with("id", *id),
        ),
        (["metadata", attr], &Method::PUT) => ("metadata.set", a().with("attribute", *attr)),
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
    call(name, args, query)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The operation a route decodes to (its parameters aside).
    fn route(m: &Method, p: &str, q: Option<&str>) -> Result<Route, Error> {
        super::route(m, p, q, &Params::default()).map(|r| match r {
            Route::Call(op, _) => Route::Call(op, Params::default()),
            other => other,
        })
    }

    fn call(op: Op) -> Route {
        Route::Call(op, Params::default())
    }

    #[test]
    fn dapr_state_routes() {
        let r = |m: Method, p: &str| route(&m, p, None);
        assert_eq!(
            r(Method::GET, "/v1.0/state/s/my%20key"),
            Ok(call(Op::StateGet {
                store: "s".into(),
                key: "my key".into()
            }))
        );
        assert_eq!(
            r(Method::POST, "/v1.0/state/s"),
            Ok(call(Op::StateSave { store: "s".into() }))
        );
        assert_eq!(
            r(Method::PUT, "/v1.0/state/s/bulk"),
            Ok(call(Op::StateBulkGet { store: "s".into() }))
        );
        assert_eq!(
            r(Method::GET, "/v1.0/state/s/bulk"),
            Ok(call(Op::StateGet {
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
            Ok(call(Op::Invoke {
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
            route_by_app_id_header(
                "orders",
                &Method::GET,
                "/neworder",
                None,
                &Params::default()
            )
            .map(|r| r.map(|r| match r {
                Route::Call(op, _) => op,
                _ => Op::MetadataGet,
            })),
            Some(Ok(Op::Invoke {
                app_id: "orders".into(),
                method: "/neworder".into(),
                verb: Method::GET
            }))
        );
        assert!(
            route_by_app_id_header(
                "orders",
                &Method::GET,
                "/v1.0/metadata",
                None,
                &Params::default()
            )
            .is_none()
        );
    }

    #[test]
    fn capability_routes() {
        assert_eq!(
            route(&Method::GET, "/v1.0/capabilities", None),
            Ok(call(Op::CapabilityList))
        );
        assert_eq!(
            route(
                &Method::POST,
                "/v1.0/capabilities/geocode/v1/lookup",
                Some("q=x")
            ),
            Ok(call(Op::Capability {
                name: "geocode".into(),
                method: "v1/lookup".into(),
                query: Some("q=x".into()),
                verb: Method::POST
            }))
        );
        assert_eq!(
            route(&Method::GET, "/v1.0/capabilities/stats", None),
            Ok(call(Op::Capability {
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
            Ok(call(Op::Publish {
                pubsub: pubsub.into(),
                topic: topic.into(),
            }))
        };
        let bulk = |pubsub: &str, topic: &str| {
            Ok(call(Op::BulkPublish {
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
            Ok(call(Op::ConfigurationGet {
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
            Ok(call(Op::ConfigurationUnsubscribe {
                store: "cfg".into(),
                id: "id7".into()
            }))
        );
        assert_eq!(
            route(&Method::POST, "/v1.0/shutdown", None),
            Ok(call(Op::Shutdown))
        );
    }

    #[test]
    fn query_metadata_and_options() {
        let Ok(Route::Call(_, p)) = super::route(
            &Method::GET,
            "/v1.0/state/s/k",
            Some("metadata.ttlInSeconds=30&concurrency=first-write&metadata.a%20b=c+d"),
            &Params::default(),
        ) else {
            panic!("a state read")
        };
        assert_eq!(p.metadata["ttlInSeconds"], "30");
        assert_eq!(p.metadata["a b"], "c d");
        assert_eq!(p.options["concurrency"], "first-write");
    }
}
