//! Delivery of subscribed events to the local app, and the task that runs every subscription.
//!
//! [`Deliverer`] is the [`Handler`] a component's consumer calls for each message. It behaves as
//! Dapr's HTTP subscription delivery does:
//! - the event is POSTed to the matching route as `application/cloudevents+json` (for a
//!   `rawPayload` subscription, wrapped as `data_base64` first);
//! - a 2xx answer with an empty or non-JSON body, or `{"status": "SUCCESS"}` (or no status),
//!   acks; `{"status": "DROP"}` drops it with a warning (to the dead-letter topic when one is
//!   set); a 404 drops it with an error log; `{"status": "RETRY"}`, an unknown status, any other
//!   status or no answer at all is retried;
//! - retries follow the Dapr resiliency policy targeting the component's inbound side
//!   (`spec.targets.components.<name>.inbound.retry`, else the `Default*RetryPolicy` names), else
//!   edgecar's default: exponential from 500ms, ×1.5, capped at 60s, for at most 15 minutes;
//! - when retries run out the event goes to the dead-letter topic if there is one, else it is
//!   dropped with an error log. Expired events, events no rule matches and events that cannot be
//!   read or routed also go to the dead-letter topic when set (Dapr's rules), else are dropped.
//!
//! A bulk subscription's events are batched (see `batcher`) and each entry's status acks, drops or
//! leaves it for the component to redeliver. A gRPC app gets the same, through the
//! [`AppCallbacks`](crate::blocks::invoke::AppCallbacks) the gRPC transport implements
//! (`OnTopicEvent`, `OnBulkTopicEvent`) with the same neutral shapes.
//!
//! A delivery interrupted by shutdown is not acked, so durable components deliver it again after
//! the restart: at-least-once.
//!
//! [`run`] owns the subscriptions: it waits for the app, asks it for its programmatic
//! subscriptions (`GET /dapr/subscribe`, retried until it answers), adds the declarative ones,
//! tells local components which topics are in use, starts one consumer per topic, and on stop
//! waits for them to settle what is in flight. Topics devices subscribe to
//! ([`super::devices`]) are consumed from the start, and new ones as devices subscribe; a topic
//! both the app and devices want has one consumer serving both.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use edgecar_capabilities::resiliency::{
    BreakerPolicy, CircuitBreaker, Direction, ExponentialRetry, Rejected, Resiliency, RetryPolicy,
    Ticket, jitter,
};
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde_json::Value as Json;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::PubSubBlock;
use super::cloudevent;
use super::devices::{DeviceSubscriptions, TopicHandler, TopicKey};
use super::subscription::{Subscription, parse_programmatic};
use crate::blocks::invoke::AppClient;
use crate::clock::unix_ms;
use crate::components::pubsub::{Handler, InMessage, Outcome, Stop, SubscribeRequest, stopped};
use crate::outbox::Outbox;

/// The subscriptions really running, shared with the metadata block.
pub type ActiveSubscriptions = Arc<RwLock<Vec<Subscription>>>;

/// Largest app answer read (status bodies are tiny).
const MAX_ANSWER: usize = 1 << 20;

/// How deliveries to one component's subscriptions are retried.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryPolicy {
    /// The retry schedule.
    pub retry: RetryPolicy,
    /// Time limit of one attempt; none by default, as in Dapr.
    pub timeout: Option<Duration>,
    /// Circuit breaker on the app: while open, attempts fail at once instead of calling it.
    pub circuit_breaker: Option<BreakerPolicy>,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        DeliveryPolicy {
            retry: RetryPolicy::Exponential(ExponentialRetry::default()),
            timeout: None,
            circuit_breaker: None,
        }
    }
}

/// The inbound policy for `component`: its target first, then Dapr's default policy names, then
/// edgecar's default.
pub fn inbound_policy(docs: &[Resiliency], component: &str) -> DeliveryPolicy {
    let mut policy = DeliveryPolicy::default();
    let targeted = docs
        .iter()
        .map(|r| r.policies_for_component(component, Direction::Inbound));
    let mut retry = None;
    let mut timeout = None;
    let mut breaker = None;
    for t in targeted {
        retry = retry.or(t.retry);
        timeout = timeout.or(t.timeout);
        breaker = breaker.or(t.circuit_breaker);
    }
    policy.circuit_breaker = breaker;
    const RETRY_DEFAULTS: [&str; 4] = [
        "DefaultPubsubComponentInboundRetryPolicy",
        "DefaultComponentInboundRetryPolicy",
        "DefaultComponentRetryPolicy",
        "DefaultRetryPolicy",
    ];
    const TIMEOUT_DEFAULTS: [&str; 4] = [
        "DefaultPubsubComponentInboundTimeoutPolicy",
        "DefaultComponentInboundTimeoutPolicy",
        "DefaultComponentTimeoutPolicy",
        "DefaultTimeoutPolicy",
    ];
    for name in RETRY_DEFAULTS {
        retry = retry.or_else(|| {
            docs.iter()
                .find_map(|r| r.policies.retries.get(name).cloned())
        });
    }
    for name in TIMEOUT_DEFAULTS {
        timeout = timeout.or_else(|| {
            docs.iter()
                .find_map(|r| r.policies.timeouts.get(name).copied())
        });
    }
    if let Some(r) = retry {
        policy.retry = r;
    }
    policy.timeout = timeout;
    policy
}

/// HTTP to the local app.
#[derive(Clone)]
pub struct AppChannel {
    /// The invocation block's client: one pool to the app.
    client: AppClient,
    /// `http://<address>:<port>`.
    base: String,
    /// `<address>:<port>`, for the readiness probe.
    authority: String,
    /// The app's gRPC callbacks, when it speaks gRPC: subscriptions and events go there.
    grpc: Option<Arc<dyn crate::blocks::invoke::AppCallbacks>>,
    /// Set once the app's subscriptions run: the sidecar's readiness (`/v1.0/healthz`).
    ready: Arc<std::sync::atomic::AtomicBool>,
}

/// An app's answer.
struct Answer {
    status: StatusCode,
    body: Bytes,
}

impl AppChannel {
    /// A channel to the app at `address:port` over `client` (the one invocation uses).
    pub fn new(address: &str, port: u16, client: AppClient) -> AppChannel {
        let host = if address.contains(':') && !address.starts_with('[') {
            format!("[{address}]")
        } else {
            address.to_owned()
        };
        AppChannel {
            client,
            base: format!("http://{host}:{port}"),
            authority: format!("{host}:{port}"),
            grpc: None,
            ready: Arc::default(),
        }
    }

    /// Sets `flag` once the app's subscriptions are running.
    pub fn with_ready(mut self, flag: Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.ready = flag;
        self
    }

    /// The same app, spoken to over gRPC (`ListTopicSubscriptions`, `OnTopicEvent`).
    pub fn with_grpc(mut self, callbacks: Arc<dyn crate::blocks::invoke::AppCallbacks>) -> Self {
        self.grpc = Some(callbacks);
        self
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        headers: &[(&'static str, String)],
        timeout: Option<Duration>,
    ) -> Result<Answer, String> {
        if let Some(cb) = &self.grpc {
            // Events go through `send_event` and `send_bulk`; this is what is left.
            if path != "/dapr/subscribe" {
                return Err(format!("{method} {path} has no gRPC counterpart"));
            }
            let exchange = async {
                let body = cb.subscriptions().await?;
                Ok(Answer {
                    status: StatusCode::OK,
                    body,
                })
            };
            return match timeout {
                Some(t) => tokio::time::timeout(t, exchange)
                    .await
                    .map_err(|_| format!("the app did not answer within {t:?}"))?,
                None => exchange.await,
            };
        }
        // A route may be given without its leading `/` (`handler`); daprd calls `/handler`.
        let slash = if path.starts_with('/') { "" } else { "/" };
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{slash}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| format!("bad request to the app: {e}"))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("app unreachable: {e}"))?;
            let status = resp.status();
            let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("reading the app's answer: {e}"))?
                .to_bytes();
            Ok(Answer { status, body })
        };
        within(timeout, exchange).await
    }

    /// Sends one event of `sub` to `path`: a `POST` with `headers` to an HTTP app,
    /// `OnTopicEvent` to a gRPC app.
    async fn send_event(
        &self,
        sub: &Subscription,
        path: &str,
        event: Bytes,
        headers: &[(&'static str, String)],
        timeout: Option<Duration>,
    ) -> Result<Answer, String> {
        let Some(cb) = &self.grpc else {
            return self.send(Method::POST, path, event, headers, timeout).await;
        };
        let exchange = async {
            let r = cb.topic_event(&sub.pubsub, &sub.topic, path, event).await?;
            Ok(Answer {
                status: r.status,
                body: r.body,
            })
        };
        within(timeout, exchange).await
    }

    /// Sends one bulk subscription's batch (Dapr's bulk envelope JSON) to `path`: a `POST` to an
    /// HTTP app, `OnBulkTopicEvent` to a gRPC app.
    async fn send_bulk(
        &self,
        path: &str,
        batch: Bytes,
        timeout: Option<Duration>,
    ) -> Result<Answer, String> {
        let Some(cb) = &self.grpc else {
            let headers = [("content-type", "application/json".to_owned())];
            return self
                .send(Method::POST, path, batch, &headers, timeout)
                .await;
        };
        let exchange = async {
            let r = cb.bulk_topic_event(path, batch).await?;
            Ok(Answer {
                status: r.status,
                body: r.body,
            })
        };
        within(timeout, exchange).await
    }

    /// Waits until the app accepts connections; `false` if stopped first.
    pub async fn wait_until_up(&self, stop: &mut Stop) -> bool {
        let mut logged = false;
        loop {
            let up = match &self.grpc {
                Some(cb) => cb.healthy().await,
                None => tokio::net::TcpStream::connect(&self.authority)
                    .await
                    .is_ok(),
            };
            if up {
                return true;
            }
            if !logged {
                info!(app = %self.authority, "waiting for the app to listen before subscribing");
                logged = true;
            }
            tokio::select! {
                () = stopped(stop) => return false,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// `GET /dapr/subscribe`, retried while the app cannot be reached. `None` if stopped.
    pub async fn programmatic_subscriptions(&self, stop: &mut Stop) -> Option<Vec<Subscription>> {
        let mut backoff =
            crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            match self
                .send(
                    Method::GET,
                    "/dapr/subscribe",
                    Bytes::new(),
                    &[],
                    Some(Duration::from_secs(30)),
                )
                .await
            {
                Ok(a) if a.status.is_success() => {
                    let (subs, errors) = parse_programmatic(&a.body, self.grpc.is_some());
                    for e in errors {
                        error!(error = %e, "ignoring a subscription from the app's /dapr/subscribe");
                    }
                    return Some(subs);
                }
                Ok(a) if a.status == StatusCode::NOT_FOUND => return Some(Vec::new()),
                Ok(a) => {
                    warn!(
                        status = a.status.as_u16(),
                        "the app's /dapr/subscribe failed; no programmatic subscriptions"
                    );
                    return Some(Vec::new());
                }
                Err(e) => debug!(error = %e, "app not ready for /dapr/subscribe yet"),
            }
            tokio::select! {
                () = stopped(stop) => return None,
                () = tokio::time::sleep(backoff.next_wait()) => {}
            }
        }
    }
}

/// What one delivery attempt came to.
enum Attempt {
    Success,
    Drop,
    NotFound(String),
    Retry(String),
}

/// Delivers one subscription's events to the app.
pub struct Deliverer {
    /// For dead-lettering.
    pub block: Arc<PubSubBlock>,
    /// The app.
    pub app: AppChannel,
    /// What and where.
    pub sub: Subscription,
    /// Retries and attempt timeout.
    pub policy: DeliveryPolicy,
    /// The breaker of `policy.circuit_breaker`, one per subscription.
    pub breaker: Option<Mutex<CircuitBreaker>>,
    /// Edgecar is stopping: give up waiting and leave the message to the broker.
    pub stop: Stop,
    /// The batcher of a bulk subscription, fed one event per message.
    batch: Option<tokio::sync::mpsc::Sender<BatchEntry>>,
}

/// What the app said about one entry of a bulk delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BulkStatus {
    Success,
    Retry,
    Drop,
    /// The app has no handler for the batch (HTTP 404, gRPC `UNIMPLEMENTED`): dropped without
    /// dead-lettering, as daprd does.
    NotServed,
}

/// One event waiting for its batch.
struct BatchEntry {
    path: String,
    /// The CloudEvent, or for a raw-payload subscription the message as base64 (daprd's shape).
    event: Json,
    /// `application/cloudevents+json`, or `application/octet-stream` for a raw payload.
    content_type: &'static str,
    /// The broker's metadata for the message.
    metadata: HashMap<String, String>,
    done: tokio::sync::oneshot::Sender<BulkStatus>,
}

/// Collects a bulk subscription's events into batches (up to `maxMessagesCount`, waiting at most
/// `maxAwaitDurationMs` after the first) and sends each batch to its route as daprd does: to an
/// HTTP app a POST of `{"entries": [{"entryId", "event", "metadata", "contentType"}], "id",
/// "pubsubname", "topic", "type": "com.dapr.event.sent.bulk", "metadata"}`, reading
/// `{"statuses": [{"entryId", "status"}]}` back; to a gRPC app the same as
/// `OnBulkTopicEvent` ([`AppChannel::send_bulk`]). Ends when its deliverer is dropped.
async fn batcher(
    app: AppChannel,
    sub: Subscription,
    bulk: super::subscription::Bulk,
    timeout: Option<Duration>,
    mut rx: tokio::sync::mpsc::Receiver<BatchEntry>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = Instant::now() + bulk.max_await;
        while batch.len() < bulk.max_messages {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(e)) => batch.push(e),
                _ => break,
            }
        }
        let mut by_path: HashMap<String, Vec<BatchEntry>> = HashMap::new();
        for e in batch {
            by_path.entry(e.path.clone()).or_default().push(e);
        }
        for (path, entries) in by_path {
            let ids: Vec<String> = entries
                .iter()
                .map(|_| uuid::Uuid::new_v4().to_string())
                .collect();
            let body = serde_json::json!({
                "entries": entries.iter().zip(&ids).map(|(e, id)| serde_json::json!({
                    "entryId": id,
                    "event": e.event,
                    "metadata": e.metadata,
                    "contentType": e.content_type,
                })).collect::<Vec<_>>(),
                "id": uuid::Uuid::new_v4().to_string(),
                "metadata": {"pubsubName": sub.pubsub},
                "pubsubname": sub.pubsub,
                "topic": sub.topic,
                "type": "com.dapr.event.sent.bulk",
            });
            let answer = app
                .send_bulk(&path, Bytes::from(body.to_string()), timeout)
                .await;
            if let Ok(a) = &answer
                && a.status == StatusCode::NOT_FOUND
            {
                let body = String::from_utf8_lossy(&a.body[..a.body.len().min(512)]);
                error!(pubsub = %sub.pubsub, topic = %sub.topic, %path, %body, entries = ids.len(), "the app does not serve this bulk delivery (non-retriable); its events are dropped");
                for e in entries {
                    let _ = e.done.send(BulkStatus::NotServed);
                }
                continue;
            }
            let statuses: HashMap<String, BulkStatus> = match &answer {
                Ok(a) if a.status.is_success() => serde_json::from_slice::<Json>(&a.body)
                    .ok()
                    .and_then(|v| v.get("statuses").and_then(Json::as_array).cloned())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|s| {
                        let id = s.get("entryId")?.as_str()?.to_owned();
                        let st = match s.get("status")?.as_str()?.to_ascii_uppercase().as_str() {
                            "SUCCESS" => BulkStatus::Success,
                            "DROP" => BulkStatus::Drop,
                            _ => BulkStatus::Retry,
                        };
                        Some((id, st))
                    })
                    .collect(),
                Ok(a) => {
                    warn!(pubsub = %sub.pubsub, topic = %sub.topic, status = a.status.as_u16(), entries = ids.len(), "the app refused a bulk delivery; its events will be redelivered");
                    HashMap::new()
                }
                Err(e) => {
                    warn!(pubsub = %sub.pubsub, topic = %sub.topic, error = %e, entries = ids.len(), "bulk delivery failed; its events will be redelivered");
                    HashMap::new()
                }
            };
            for (e, id) in entries.into_iter().zip(&ids) {
                // An entry the app did not answer for is retried, as daprd does.
                let _ = e
                    .done
                    .send(statuses.get(id).copied().unwrap_or(BulkStatus::Retry));
            }
        }
    }
}

impl Deliverer {
    /// Builds a deliverer, with its breaker when the policy has one.
    pub fn new(
        block: Arc<PubSubBlock>,
        app: AppChannel,
        sub: Subscription,
        policy: DeliveryPolicy,
        stop: Stop,
    ) -> Self {
        let breaker = policy
            .circuit_breaker
            .clone()
            .map(|p| Mutex::new(CircuitBreaker::new(p, Instant::now())));
        let batch = sub.bulk.clone().map(|bulk| {
            let (tx, rx) = tokio::sync::mpsc::channel(bulk.max_messages);
            tokio::spawn(batcher(app.clone(), sub.clone(), bulk, policy.timeout, rx));
            tx
        });
        Deliverer {
            block,
            app,
            sub,
            policy,
            breaker,
            stop,
            batch,
        }
    }

    /// One attempt under the breaker: refused at once while it is open.
    async fn guarded_attempt(&self, path: &str, body: &Bytes, event: &Json) -> Attempt {
        let lock = |b: &Mutex<CircuitBreaker>| {
            b.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .try_acquire(Instant::now())
        };
        let ticket: Option<Ticket> = match self.breaker.as_ref().map(lock) {
            None => None,
            Some(Ok(t)) => Some(t),
            Some(Err(r @ (Rejected::Open { .. } | Rejected::ProbeInFlight))) => {
                return Attempt::Retry(format!("not sent: {r}"));
            }
        };
        let result = self.attempt(path, body, event).await;
        if let (Some(b), Some(t)) = (&self.breaker, ticket) {
            // The app answered (even DROP or 404): only a retryable failure counts against it.
            let ok = !matches!(result, Attempt::Retry(_));
            b.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record(t, Instant::now(), ok);
        }
        result
    }

    async fn attempt(&self, path: &str, body: &Bytes, event: &Json) -> Attempt {
        let mut headers = vec![
            (
                header::CONTENT_TYPE.as_str(),
                cloudevent::CLOUDEVENT_CONTENT_TYPE.to_owned(),
            ),
            ("pubsubname", self.sub.pubsub.clone()),
        ];
        if let Some(tp) = event
            .get("traceparent")
            .and_then(Json::as_str)
            .filter(|s| !s.is_empty())
        {
            headers.push(("traceparent", cloudevent::child_traceparent(Some(tp))));
            if let Some(ts) = event
                .get("tracestate")
                .and_then(Json::as_str)
                .filter(|s| !s.is_empty())
            {
                headers.push(("tracestate", ts.to_owned()));
            }
        }
        let answer = match self
            .app
            .send_event(&self.sub, path, body.clone(), &headers, self.policy.timeout)
            .await
        {
            Ok(a) => a,
            Err(e) => return Attempt::Retry(e),
        };
        let status = answer.status;
        if status.is_success() {
            // Dapr reads {"status": ...}; an empty or unreadable body is a success.
            let parsed: Option<Json> = serde_json::from_slice(&answer.body).ok();
            let app_status = parsed
                .as_ref()
                .and_then(|v| v.get("status"))
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_owned();
            return match app_status.as_str() {
                "" | "SUCCESS" => Attempt::Success,
                "DROP" => Attempt::Drop,
                "RETRY" => Attempt::Retry("the app answered RETRY".into()),
                other => Attempt::Retry(format!("the app answered an unknown status {other:?}")),
            };
        }
        let body = String::from_utf8_lossy(&answer.body[..answer.body.len().min(512)]).into_owned();
        if status == StatusCode::NOT_FOUND {
            return Attempt::NotFound(body);
        }
        Attempt::Retry(format!("the app answered {} {body}", status.as_u16()))
    }

    /// Sends the message, as received, to the dead-letter topic if there is one; acks unless that
    /// publish failed (then the broker keeps the message).
    async fn dead_letter_or_drop(&self, msg: &InMessage, why: &str) -> Outcome {
        let Some(dlq) = &self.sub.dead_letter_topic else {
            return Outcome::Ack;
        };
        match self
            .block
            .forward(
                &self.sub.pubsub,
                dlq,
                msg.data.clone(),
                msg.metadata.clone(),
            )
            .await
        {
            Ok(()) => {
                info!(pubsub = %self.sub.pubsub, topic = %self.sub.topic, dead_letter_topic = %dlq, reason = why, "event sent to the dead-letter topic");
                Outcome::Ack
            }
            Err(e) => {
                error!(pubsub = %self.sub.pubsub, topic = %self.sub.topic, dead_letter_topic = %dlq, error = %e, "could not send an event to the dead-letter topic; it stays queued");
                Outcome::Nack
            }
        }
    }

    /// The event as the app will see it, and its parsed form for rules and expiry.
    fn event(&self, msg: &InMessage) -> Result<(Bytes, Json), String> {
        if self.sub.raw_payload() {
            let ce = cloudevent::from_raw_payload(&msg.data, &msg.topic, &self.sub.pubsub);
            let bytes = Bytes::from(cloudevent::to_bytes(&ce));
            let value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
            return Ok((bytes, value));
        }
        // Attribute by attribute, so that `data` nested 128 levels or more is still delivered.
        match cloudevent::attributes(&msg.data) {
            Ok(v) => Ok((msg.data.clone(), v)),
            Err(e) if e.is_data() => Err("the message is JSON but not a CloudEvent object (published with rawPayload? subscribe with rawPayload too)".into()),
            Err(e) => Err(format!("the message is not a CloudEvent (published with rawPayload? subscribe with rawPayload too): {e}")),
        }
    }
}

#[async_trait]
impl Handler for Deliverer {
    async fn handle(&self, msg: InMessage) -> Outcome {
        let (pubsub, topic) = (&self.sub.pubsub, &self.sub.topic);
        let (body, event) = match self.event(&msg) {
            Ok(e) => e,
            Err(e) => {
                error!(%pubsub, %topic, error = %e, "cannot deliver this event; dropped");
                return self.dead_letter_or_drop(&msg, "unreadable").await;
            }
        };
        let id = event
            .get("id")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_owned();
        if cloudevent::has_expired(&event, unix_ms()) {
            warn!(%pubsub, %topic, %id, expiration = %event["expiration"], "dropping an expired event");
            return self.dead_letter_or_drop(&msg, "expired").await;
        }
        let path = match self.sub.route(&event) {
            Ok(Some(p)) => p.to_owned(),
            Ok(None) => {
                debug!(%pubsub, %topic, %id, "no route matches this event; not delivered");
                return self.dead_letter_or_drop(&msg, "no matching route").await;
            }
            Err(e) => {
                error!(%pubsub, %topic, %id, error = %e, "cannot route this event");
                return self.dead_letter_or_drop(&msg, "routing failed").await;
            }
        };
        if let Some(batch) = &self.batch {
            let (done, status) = tokio::sync::oneshot::channel();
            // A raw payload travels as the message itself, base64, as daprd sends it.
            let (event, content_type) = if self.sub.raw_payload() {
                let b64 = base64::engine::general_purpose::STANDARD.encode(&msg.data);
                (Json::String(b64), "application/octet-stream")
            } else {
                (event, cloudevent::CLOUDEVENT_CONTENT_TYPE)
            };
            let entry = BatchEntry {
                path,
                event,
                content_type,
                metadata: msg.metadata.clone(),
                done,
            };
            if batch.send(entry).await.is_err() {
                return Outcome::Nack;
            }
            return match status.await {
                Ok(BulkStatus::Success | BulkStatus::NotServed) => Outcome::Ack,
                Ok(BulkStatus::Drop) => self.dead_letter_or_drop(&msg, "app answered DROP").await,
                // RETRY: the component redelivers it after its redelivery interval.
                _ => Outcome::Nack,
            };
        }
        let mut backoff = self.policy.retry.backoff(Instant::now());
        let mut stop = self.stop.clone();
        loop {
            match self.guarded_attempt(&path, &body, &event).await {
                Attempt::Success => return Outcome::Ack,
                Attempt::Drop => {
                    warn!(%pubsub, %topic, %id, "DROP status returned from the app; event dropped");
                    return self.dead_letter_or_drop(&msg, "app answered DROP").await;
                }
                Attempt::NotFound(body) => {
                    error!(%pubsub, %topic, %id, %path, %body, "the app answered 404 (non-retriable); event dropped");
                    return Outcome::Ack;
                }
                Attempt::Retry(why) => {
                    let Some(delay) = backoff.next_delay(Instant::now(), jitter()) else {
                        if self.sub.dead_letter_topic.is_none() {
                            error!(%pubsub, %topic, %id, reason = %why, attempts = backoff.retries() + 1, "delivery failed and retries are exhausted; event dropped");
                        }
                        return self.dead_letter_or_drop(&msg, "retries exhausted").await;
                    };
                    warn!(%pubsub, %topic, %id, reason = %why, retry_in = ?delay, "delivery failed; will retry");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = stopped(&mut stop) => return Outcome::Nack,
                    }
                }
            }
        }
    }
}

/// What the subscription manager needs to serve devices' subscriptions.
pub struct DeviceFeed {
    /// Who subscribes to what.
    pub subs: Arc<DeviceSubscriptions>,
    /// Where their events wait.
    pub outbox: Arc<Outbox>,
    /// How long an event waits for a device.
    pub event_ttl: Duration,
}

/// The consumers the manager runs: one per (pub/sub, topic), shared by the app and devices.
struct Consumers {
    block: Arc<PubSubBlock>,
    feed: Option<DeviceFeed>,
    handlers: HashMap<TopicKey, Arc<TopicHandler>>,
    tasks: JoinSet<()>,
    stop: Stop,
}

impl Consumers {
    /// Starts consuming `topic` of `pubsub` unless that already happens, with the app's
    /// delivery when given; `false` if it cannot be consumed.
    async fn ensure(&mut self, pubsub: &str, topic: &str, app: Option<Arc<Deliverer>>) -> bool {
        let key = (pubsub.to_owned(), topic.to_owned());
        if let Some(h) = self.handlers.get(&key) {
            return app.is_none_or(|a| h.app.set(a).is_ok());
        }
        let Some(f) = &self.feed else { return false };
        let handler = Arc::new(TopicHandler {
            pubsub: pubsub.to_owned(),
            topic: topic.to_owned(),
            devices: f.subs.clone(),
            outbox: f.outbox.clone(),
            event_ttl: f.event_ttl,
            app: std::sync::OnceLock::new(),
        });
        let mut concurrency = 1;
        if let Some(a) = app {
            concurrency = a.sub.bulk.as_ref().map_or(1, |b| b.max_messages);
            // Set before the consumer starts: no message may pass without the app.
            let _ = handler.app.set(a);
        }
        let started = self
            .consume_at_least(pubsub, topic, handler.clone(), concurrency)
            .await;
        if started {
            self.handlers.insert(key, handler);
        }
        started
    }

    /// Starts a consumer of `topic` of `pubsub` that hands every message to `handler`.
    /// At least `concurrency` messages are in flight (a bulk subscription needs a batch's worth).
    async fn consume_at_least(
        &mut self,
        pubsub: &str,
        topic: &str,
        handler: Arc<dyn Handler>,
        concurrency: usize,
    ) -> bool {
        let Some(component) = self.block.component(pubsub) else {
            warn!(%pubsub, %topic, "subscription names an unknown pub/sub component; ignored");
            return false;
        };
        let req = SubscribeRequest {
            topic: topic.to_owned(),
            max_concurrency: component.concurrency.max(concurrency),
            app_id: self.block.app_id().to_owned(),
        };
        match component
            .bus
            .subscribe(req, handler, self.stop.clone())
            .await
        {
            Ok(consumer) => {
                self.tasks.spawn(consumer);
                true
            }
            Err(e) => {
                error!(%pubsub, %topic, error = %e, "subscribing failed");
                false
            }
        }
    }

    /// Tells local components every topic in use: consumed, dead-letter, or retained.
    fn topics_in_use(&self, app_subs: &[Subscription]) {
        for name in self.block.names() {
            let topics: Vec<String> = self
                .handlers
                .keys()
                .filter(|(p, _)| p == name)
                .map(|(_, t)| t.clone())
                .chain(
                    app_subs
                        .iter()
                        .filter(|s| s.pubsub == name)
                        .filter_map(|s| s.dead_letter_topic.clone()),
                )
                .chain(self.block.retained(name))
                .collect();
            if let Some(c) = self.block.component(name) {
                c.bus.topics_in_use(&topics);
            }
        }
    }
}

/// The app's subscriptions: declarative plus what it answers on `/dapr/subscribe`, once it is up.
/// `None` if edgecar stops first.
async fn app_subscriptions(
    declarative: Vec<Subscription>,
    app: Option<AppChannel>,
    mut stop: Stop,
) -> Option<(Vec<Subscription>, Option<AppChannel>)> {
    let mut subs = declarative;
    match &app {
        Some(app) => {
            if !app.wait_until_up(&mut stop).await {
                return None;
            }
            subs.extend(app.programmatic_subscriptions(&mut stop).await?);
        }
        None if !subs.is_empty() => {
            warn!(
                count = subs.len(),
                "subscriptions need an app to deliver to (--app-port); none started"
            );
            subs.clear();
        }
        None => {}
    }
    let mut seen = HashSet::new();
    subs.retain(|s| {
        let fresh = seen.insert((s.pubsub.clone(), s.topic.clone()));
        if !fresh {
            warn!(pubsub = %s.pubsub, topic = %s.topic, source = %s.source, "a subscription to this topic already exists; this one is ignored");
        }
        fresh
    });
    Some((subs, app))
}

/// Runs every subscription until `stop` fires, then waits for in-flight deliveries to settle.
/// The app channel's readiness flag turns true once the app's subscriptions are running
/// (daprd's `/v1.0/healthz`).
///
/// Topics devices subscribe to are consumed at once (devices do not wait for the app); the
/// app's subscriptions join once the app is up. Until then local components keep every message,
/// so nothing published for the app before it said what it wants is lost.
pub async fn run(
    block: Arc<PubSubBlock>,
    declarative: Vec<Subscription>,
    app: Option<AppChannel>,
    resiliency: Vec<Resiliency>,
    active: ActiveSubscriptions,
    devices: Option<DeviceFeed>,
    mut stop: Stop,
) {
    let mut new_topics = devices.as_ref().and_then(|f| f.subs.take_new_topics());
    let device_topics = devices
        .as_ref()
        .map(|f| f.subs.topics())
        .unwrap_or_default();
    let mut consumers = Consumers {
        block: block.clone(),
        feed: devices,
        handlers: HashMap::new(),
        tasks: JoinSet::new(),
        stop: stop.clone(),
    };
    for (pubsub, topic) in device_topics {
        if consumers.ensure(&pubsub, &topic, None).await {
            info!(%pubsub, %topic, "consuming for subscribed devices");
        }
    }
    let app_subs = app_subscriptions(declarative, app, stop.clone());
    tokio::pin!(app_subs);
    let mut app_known: Option<Vec<Subscription>> = None;
    loop {
        tokio::select! {
            biased;
            () = stopped(&mut stop) => break,
            r = &mut app_subs, if app_known.is_none() => {
                let Some((subs, app)) = r else { break };
                let mut running = Vec::new();
                let ready = app.as_ref().map(|a| a.ready.clone());
                if let Some(app) = app {
                    for sub in subs {
                        let deliverer = Arc::new(Deliverer::new(
                            block.clone(),
                            app.clone(),
                            sub.clone(),
                            inbound_policy(&resiliency, &sub.pubsub),
                            stop.clone(),
                        ));
                        if start_app(&mut consumers, deliverer).await {
                            info!(pubsub = %sub.pubsub, topic = %sub.topic, kind = sub.kind.as_str(), "subscribed");
                            running.push(sub);
                        }
                    }
                }
                consumers.topics_in_use(&running);
                active
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend(running.iter().cloned());
                app_known = Some(running);
                if let Some(ready) = ready {
                    ready.store(true, std::sync::atomic::Ordering::Release);
                }
            }
            Some((pubsub, topic)) = recv(&mut new_topics) => {
                if consumers.ensure(&pubsub, &topic, None).await {
                    info!(%pubsub, %topic, "consuming for subscribed devices");
                }
                if let Some(subs) = &app_known {
                    consumers.topics_in_use(subs);
                }
            }
        }
    }
    while consumers.tasks.join_next().await.is_some() {}
}

/// The next topic devices want consumed; pending forever when there is no feed.
async fn recv(rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<TopicKey>>) -> Option<TopicKey> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Starts the app's delivery for one subscription: on the topic's shared consumer when devices
/// need one too, else on a consumer of its own.
async fn start_app(consumers: &mut Consumers, deliverer: Arc<Deliverer>) -> bool {
    let (pubsub, topic) = (deliverer.sub.pubsub.clone(), deliverer.sub.topic.clone());
    if consumers.feed.is_some() {
        return consumers.ensure(&pubsub, &topic, Some(deliverer)).await;
    }
    let concurrency = deliverer.sub.bulk.as_ref().map_or(1, |b| b.max_messages);
    consumers
        .consume_at_least(&pubsub, &topic, deliverer, concurrency)
        .await
}

/// An exchange with the app, bounded by the subscription's timeout when it has one.
async fn within(
    timeout: Option<Duration>,
    exchange: impl std::future::Future<Output = Result<Answer, String>>,
) -> Result<Answer, String> {
    match timeout {
        Some(t) => tokio::time::timeout(t, exchange)
            .await
            .map_err(|_| format!("the app did not answer within {t:?}"))?,
        None => exchange.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgecar_capabilities::resiliency::ConstantRetry;

    fn resiliency(text: &str) -> Resiliency {
        edgecar_capabilities::parse_resiliency_str(text).unwrap()
    }

    #[test]
    fn inbound_policy_prefers_the_target_then_dapr_default_names() {
        let r = resiliency(
            "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: r\nspec:\n  policies:\n    timeouts:\n      quick: 2s\n    retries:\n      fast:\n        policy: constant\n        duration: 100ms\n        maxRetries: 3\n      DefaultComponentInboundRetryPolicy:\n        policy: constant\n        duration: 1s\n        maxRetries: 1\n  targets:\n    components:\n      pubsub:\n        inbound:\n          retry: fast\n          timeout: quick\n",
        );
        let p = inbound_policy(std::slice::from_ref(&r), "pubsub");
        assert_eq!(
            p.retry,
            RetryPolicy::Constant(ConstantRetry {
                duration: Duration::from_millis(100),
                max_retries: Some(3),
                ..Default::default()
            })
        );
        assert_eq!(p.timeout, Some(Duration::from_secs(2)));
        let other = inbound_policy(std::slice::from_ref(&r), "other");
        assert_eq!(other.retry.max_retries(), Some(1));
        assert_eq!(other.timeout, None);
        assert_eq!(inbound_policy(&[], "x"), DeliveryPolicy::default());
    }
}
