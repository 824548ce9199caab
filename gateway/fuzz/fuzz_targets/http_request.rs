//! The Dapr HTTP API from a request on: route matching (path, verb, `dapr-app-id`), query and
//! header options, then the request path with every building block on in-memory components, so
//! each JSON body decoder (state save/bulk/transaction, publish and bulk publish, locks,
//! bindings, metadata, capabilities and their built-ins) sees the body. No sockets: hyper's own
//! parsing is not ours to fuzz; what it hands the transport is.
//!
//! Input: an HTTP/1.1 request as text — `METHOD TARGET` on the first line, `name: value`
//! headers, an empty line, the body.
#![no_main]

use bytes::Bytes;
use edgecar::api::{self, Route};
use edgecar::call::{Call, Caller};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use libfuzzer_sys::fuzz_target;

/// Splits the head from the body at the first empty line.
fn head_body(data: &[u8]) -> (&[u8], &[u8]) {
    for (sep, len) in [(&b"\r\n\r\n"[..], 4), (&b"\n\n"[..], 2)] {
        if let Some(i) = data.windows(len).position(|w| w == sep) {
            return (&data[..i], &data[i + len..]);
        }
    }
    (data, &[])
}

fuzz_target!(|data: &[u8]| {
    let (head, body) = head_body(data);
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let Some(first) = lines.next() else { return };
    let mut parts = first.splitn(3, |&b| b == b' ');
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return;
    };
    // What hyper would refuse never reaches the transport.
    let Ok(method) = Method::from_bytes(method) else {
        return;
    };
    let Ok(uri) = Uri::try_from(target) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return;
        };
        let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            return;
        };
        headers.append(n, v);
    }
    // As transport/http.rs dispatches.
    let (op, params) = match api::request(&method, &uri, &headers) {
        Ok(Route::Call(op, params)) => (op, params),
        Ok(_) => return,
        Err(e) => {
            let _ = (api::status(e.kind), api::error_body(&e));
            return;
        }
    };
    let call = Call {
        caller: Caller::LocalApp {
            app_id: edgecar_fuzz::APP_ID.into(),
        },
        op,
        body: Bytes::copy_from_slice(body),
        params,
    };
    match edgecar_fuzz::harness().handle(call) {
        // As the transport answers: a status it can send, headers it can write.
        Ok(reply) => {
            let _ = http::StatusCode::from_u16(reply.status);
            for (name, value) in reply.meta {
                let _ = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(&value),
                );
            }
        }
        Err(e) => {
            let _ = (api::status(e.kind), api::error_body(&e));
        }
    }
});
