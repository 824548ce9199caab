//! Traces: one span per call on the request path, exported over OTLP/HTTP (protobuf) when
//! `tracing.otlpEndpoint` is set — off by default.
//!
//! W3C trace context arrives with the call (HTTP `traceparent` header, MQTT 5 `traceparent` user
//! property; QUIC and gateway links will carry it in their request header and set
//! [`crate::call::Params::traceparent`] the same way). With export on, each call becomes a child
//! span of what arrived (or the root of a new trace), and the call goes on carrying *its* context,
//! so what the call causes downstream (an app's invocation, a device command, a CloudEvent) is a
//! child of the gateway's span. Export is a bounded queue drained by one task in batches; when the
//! collector is slow or away, spans are dropped and counted, never waited for. The protobuf is
//! written by hand (the handful of fields below) to keep the OpenTelemetry SDK out of the binary.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::call::{Reply, Transport};
use crate::error::Error;

/// Spans waiting for export at most (beyond it new spans are dropped).
const QUEUE: usize = 2048;
/// Spans per export request at most.
const BATCH: usize = 512;
/// How long a span may wait for its batch.
const FLUSH_EVERY: Duration = Duration::from_secs(2);

/// A call's span while it runs.
pub struct SpanStart {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    flags: u8,
    start_ns: u64,
}

impl SpanStart {
    /// The `traceparent` the call carries on from here (this span as the parent).
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            self.flags
        )
    }
}

/// A finished span.
struct SpanRecord {
    start: SpanStart,
    end_ns: u64,
    name: &'static str,
    transport: &'static str,
    error: Option<&'static str>,
}

/// Makes spans and hands them to the exporter.
pub struct Tracer {
    tx: mpsc::Sender<SpanRecord>,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// `(trace id, parent span id, flags)` of a valid W3C `traceparent`.
pub fn parse_traceparent(tp: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let mut parts = tp.trim().split('-');
    let version = parts.next()?;
    if version.len() != 2 || version == "ff" {
        return None;
    }
    let trace = unhex::<16>(parts.next()?)?;
    let span = unhex::<8>(parts.next()?)?;
    let flags = unhex::<1>(parts.next()?)?[0];
    (trace != [0; 16] && span != [0; 8]).then_some((trace, span, flags))
}

impl Tracer {
    /// A tracer exporting to `endpoint` (e.g. `http://collector:4318/v1/traces`) as
    /// `service`, and the task that exports (the caller owns it).
    pub fn new(
        endpoint: &str,
        service: &str,
    ) -> Result<
        (
            Tracer,
            impl std::future::Future<Output = ()> + Send + 'static,
        ),
        String,
    > {
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|e| format!("tracing.otlpEndpoint {endpoint:?}: {e}"))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let service = service.to_owned();
        Ok((Tracer { tx }, export(rx, uri, service)))
    }

    /// Starts the span of a call that arrived with `incoming` trace context.
    pub fn start(&self, incoming: Option<&str>) -> SpanStart {
        let span_id = fastrand::u64(1..).to_be_bytes();
        let start_ns = now_ns();
        match incoming.and_then(parse_traceparent) {
            Some((trace_id, parent, flags)) => SpanStart {
                trace_id,
                span_id,
                parent: Some(parent),
                flags,
                start_ns,
            },
            // A new trace, sampled: the operator turned export on to see calls.
            None => SpanStart {
                trace_id: fastrand::u128(1..).to_be_bytes(),
                span_id,
                parent: None,
                flags: 1,
                start_ns,
            },
        }
    }

    /// Ends the span of a call of `op` by `transport` with `result`.
    pub fn finish(
        &self,
        start: SpanStart,
        op: &'static str,
        transport: Transport,
        result: &Result<Reply, Error>,
    ) {
        let rec = SpanRecord {
            start,
            end_ns: now_ns(),
            name: op,
            transport: transport.as_str(),
            error: result.as_ref().err().map(|e| e.code),
        };
        if self.tx.try_send(rec).is_err() {
            debug!("trace export queue full; span dropped");
        }
    }
}

async fn export(mut rx: mpsc::Receiver<SpanRecord>, uri: http::Uri, service: String) {
    let connector = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
        Ok(b) => b.https_or_http().enable_http1().build(),
        Err(e) => {
            warn!(error = %e, "trace export: cannot load the system's CA certificates; export off");
            return;
        }
    };
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let first = match rx.recv().await {
            Some(s) => s,
            None => return,
        };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        let body = encode(&batch, &service);
        let n = batch.len();
        batch.clear();
        let req = match http::Request::post(uri.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(body)))
        {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "trace export: bad request");
                continue;
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
            Ok(Ok(resp)) if resp.status().is_success() => debug!(spans = n, "spans exported"),
            Ok(Ok(resp)) => {
                warn!(status = %resp.status(), spans = n, "trace collector refused spans")
            }
            Ok(Err(e)) => warn!(error = %e, spans = n, "trace export failed"),
            Err(_) => warn!(spans = n, "trace export timed out"),
        }
    }
}

// Protobuf, the fields of opentelemetry/proto/collector/trace/v1 this exporter writes.

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_bytes(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    varint(u64::from(field << 3 | 2), out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn field_varint(field: u32, v: u64, out: &mut Vec<u8>) {
    varint(u64::from(field << 3), out);
    varint(v, out);
}

fn field_fixed64(field: u32, v: u64, out: &mut Vec<u8>) {
    varint(u64::from(field << 3 | 1), out);
    out.extend_from_slice(&v.to_le_bytes());
}

/// `KeyValue{key, AnyValue{string_value}}`.
fn attribute(field: u32, key: &str, value: &str, out: &mut Vec<u8>) {
    let mut any = Vec::new();
    field_bytes(1, value.as_bytes(), &mut any);
    let mut kv = Vec::new();
    field_bytes(1, key.as_bytes(), &mut kv);
    field_bytes(2, &any, &mut kv);
    field_bytes(field, &kv, out);
}

/// An `ExportTraceServiceRequest` with one resource (`service.name`) and one scope.
fn encode(spans: &[SpanRecord], service: &str) -> Vec<u8> {
    let mut resource = Vec::new();
    attribute(1, "service.name", service, &mut resource);
    let mut scope = Vec::new();
    field_bytes(1, b"edgecar", &mut scope);
    field_bytes(2, env!("CARGO_PKG_VERSION").as_bytes(), &mut scope);
    let mut scope_spans = Vec::new();
    field_bytes(1, &scope, &mut scope_spans);
    for s in spans {
        let mut span = Vec::new();
        field_bytes(1, &s.start.trace_id, &mut span);
        field_bytes(2, &s.start.span_id, &mut span);
        if let Some(p) = &s.start.parent {
            field_bytes(4, p, &mut span);
        }
        field_bytes(5, s.name.as_bytes(), &mut span);
        field_varint(6, 2, &mut span); // SPAN_KIND_SERVER
        field_fixed64(7, s.start.start_ns, &mut span);
        field_fixed64(8, s.end_ns.max(s.start.start_ns), &mut span);
        attribute(9, "edgecar.transport", s.transport, &mut span);
        attribute(9, "edgecar.op", s.name, &mut span);
        let mut status = Vec::new();
        match s.error {
            Some(code) => {
                attribute(9, "edgecar.error_code", code, &mut span);
                field_bytes(2, code.as_bytes(), &mut status);
                field_varint(3, 2, &mut status); // STATUS_CODE_ERROR
            }
            None => field_varint(3, 1, &mut status), // STATUS_CODE_OK
        }
        field_bytes(15, &status, &mut span);
        field_bytes(2, &span, &mut scope_spans);
    }
    let mut resource_spans = Vec::new();
    field_bytes(1, &resource, &mut resource_spans);
    field_bytes(2, &scope_spans, &mut resource_spans);
    let mut req = Vec::new();
    field_bytes(1, &resource_spans, &mut req);
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_a_child_of_the_incoming_trace_and_carries_its_own_context_on() {
        let (tracer, _export) = Tracer::new("http://127.0.0.1:4318/v1/traces", "t").unwrap();
        let s = tracer.start(Some(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ));
        let tp = s.traceparent();
        assert!(
            tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "{tp}"
        );
        assert!(!tp.contains("b7ad6b7169203331"), "{tp}");
        assert!(tp.ends_with("-01"));
        assert_eq!(s.parent, Some(unhex::<8>("b7ad6b7169203331").unwrap()));
        let root = tracer.start(Some("garbage"));
        assert!(root.parent.is_none());
        assert!(parse_traceparent(&root.traceparent()).is_some());
    }

    #[test]
    fn spans_encode_as_otlp_protobuf() {
        let (tracer, _export) = Tracer::new("http://127.0.0.1:4318/v1/traces", "svc").unwrap();
        let start = tracer.start(None);
        let trace_id = start.trace_id;
        let body = encode(
            &[SpanRecord {
                start,
                end_ns: 5,
                name: "state.get",
                transport: "http",
                error: None,
            }],
            "svc",
        );
        // Field 1 of the request (resource_spans), length-delimited.
        assert_eq!(body[0], 0x0a);
        let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
        assert!(has(&trace_id) && has(b"state.get") && has(b"service.name") && has(b"svc"));
    }
}
