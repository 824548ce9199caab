//! The configuration building block: Dapr's `GET /v1.0/configuration/<store>`, `/subscribe` and
//! `/<id>/unsubscribe`.
//!
//! Reads go to the store; a subscription is a task that listens to the store's changes and POSTs
//! each changed item to the app at `/configuration/<store>/<key>` (Dapr's route), through the
//! invocation block so resiliency policies for the app apply, or sends it on a stream (gRPC). Subscriptions end on unsubscribe or
//! when the gateway stops (the block aborts its tasks when dropped).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Method;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::warn;

use crate::blocks::invoke::InvokeBlock;
use crate::call::Reply;
use crate::components::configuration::ConfigStore;
use crate::error::{Error, ErrorKind, codes};

/// The configuration building block.
pub struct ConfigurationBlock {
    stores: HashMap<String, Arc<dyn ConfigStore>>,
    /// Subscription id → (store, the task delivering its notifications).
    subscriptions: Mutex<HashMap<String, (String, AbortHandle)>>,
    /// The app channel notifications go through.
    invoke: Arc<InvokeBlock>,
    /// The app that subscribes (the gateway's own app).
    app_id: String,
    next_id: AtomicU64,
}

impl Drop for ConfigurationBlock {
    fn drop(&mut self) {
        let subs = self
            .subscriptions
            .get_mut()
            .unwrap_or_else(|p| p.into_inner());
        for (_, (_, task)) in subs.drain() {
            task.abort();
        }
    }
}

/// Where a subscription's notifications go.
enum Sink {
    /// POSTed to the app at `/configuration/<store>/<key>`.
    App,
    /// Sent on a stream the caller reads (gRPC).
    Stream(mpsc::Sender<serde_json::Value>),
}

async fn deliver_to_app(
    invoke: &InvokeBlock,
    app: &str,
    sid: &str,
    store: &str,
    key: &str,
    note: serde_json::Value,
) {
    let path = format!("/configuration/{store}/{key}");
    let headers = [("content-type".to_owned(), "application/json".to_owned())];
    let body = Bytes::from(note.to_string());
    match invoke.call(app, &path, &Method::POST, &headers, body).await {
        Ok(r) if r.status.is_success() => {}
        Ok(r) => {
            warn!(subscription = %sid, %key, status = %r.status, "app refused a configuration notification")
        }
        Err(e) => {
            warn!(subscription = %sid, %key, error = %e, "configuration notification not delivered")
        }
    }
}

impl ConfigurationBlock {
    /// Takes the loaded stores and the app channel.
    pub fn new(
        stores: HashMap<String, Arc<dyn ConfigStore>>,
        invoke: Arc<InvokeBlock>,
        app_id: String,
    ) -> Self {
        ConfigurationBlock {
            stores,
            subscriptions: Mutex::default(),
            invoke,
            app_id,
            next_id: AtomicU64::new(1),
        }
    }

    fn store(&self, name: &str) -> Result<&Arc<dyn ConfigStore>, Error> {
        if self.stores.is_empty() {
            return Err(Error::new(
                ErrorKind::Upstream,
                codes::CONFIGURATION_STORE_NOT_CONFIGURED,
                "configuration store is not configured",
            ));
        }
        self.stores.get(name).ok_or_else(|| {
            Error::new(
                ErrorKind::BadRequest,
                codes::CONFIGURATION_STORE_NOT_FOUND,
                format!("configuration store {name} not found"),
            )
        })
    }

    /// `GET /v1.0/configuration/<store>?key=a&key=b` (every item without keys).
    pub async fn get(&self, store: &str, keys: &[String]) -> Result<Reply, Error> {
        let items = self.store(store)?.get(keys).await.map_err(|e| {
            Error::new(
                ErrorKind::Upstream,
                codes::CONFIGURATION_GET,
                format!("failed to get {keys:?} from Configuration store {store}: {e}"),
            )
        })?;
        Ok(Reply::json(serde_json::to_vec(&items).unwrap_or_default()))
    }

    /// `GET /v1.0/configuration/<store>/subscribe?key=...`: `{"id": "..."}`; changes are POSTed
    /// to the app.
    pub fn subscribe(&self, store_name: &str, keys: Vec<String>) -> Result<Reply, Error> {
        self.store(store_name)?;
        if !self.invoke.app_ids().contains(&self.app_id) {
            return Err(Error::new(
                ErrorKind::BadRequest,
                codes::CONFIGURATION_SUBSCRIBE,
                "no app to notify: start edgecar with --app-port so changes can be delivered",
            ));
        }
        let id = self.start(store_name, keys, Sink::App)?;
        Ok(Reply::json(json!({ "id": id }).to_string()))
    }

    /// A subscription whose notifications (`{"id", "items": {key: item}}`) come on a bounded
    /// channel instead of going to the app: gRPC's `SubscribeConfiguration` stream. It ends on
    /// unsubscribe or when the receiver is dropped.
    pub fn watch(
        &self,
        store_name: &str,
        keys: Vec<String>,
    ) -> Result<(String, mpsc::Receiver<serde_json::Value>), Error> {
        let (tx, rx) = mpsc::channel(16);
        let id = self.start(store_name, keys, Sink::Stream(tx))?;
        Ok((id, rx))
    }

    fn start(&self, store_name: &str, keys: Vec<String>, sink: Sink) -> Result<String, Error> {
        let store = self.store(store_name)?;
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let id = format!("{:016x}-{n:04x}", nanos as u64);
        let mut rx = store.changes();
        let (invoke, app, sid, sname) = (
            self.invoke.clone(),
            self.app_id.clone(),
            id.clone(),
            store_name.to_owned(),
        );
        let task = tokio::spawn(async move {
            loop {
                let changes = match rx.recv().await {
                    Ok(c) => c,
                    Err(RecvError::Lagged(n)) => {
                        warn!(subscription = %sid, missed = n, "configuration notifications dropped (app too slow)");
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                };
                for (key, item) in changes {
                    if !keys.is_empty() && !keys.contains(&key) {
                        continue;
                    }
                    let item = item.map_or_else(
                        || json!({"value": "", "version": "", "metadata": {}}),
                        |i| json!(i),
                    );
                    let note = json!({"id": sid, "items": {key.clone(): item}});
                    let tx = match &sink {
                        Sink::Stream(tx) => tx,
                        Sink::App => {
                            deliver_to_app(&invoke, &app, &sid, &sname, &key, note).await;
                            continue;
                        }
                    };
                    if tx.send(note).await.is_err() {
                        return;
                    }
                }
            }
        });
        self.subscriptions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), (store_name.to_owned(), task.abort_handle()));
        Ok(id)
    }

    /// `GET /v1.0/configuration/<store>/<id>/unsubscribe`.
    pub fn unsubscribe(&self, store: &str, id: &str) -> Result<Reply, Error> {
        self.store(store)?;
        let removed = self
            .subscriptions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        match removed {
            Some((s, task)) if s == store => {
                task.abort();
                Ok(Reply::json(json!({"ok": true, "message": ""}).to_string()))
            }
            other => {
                if let Some((s, task)) = other {
                    // Wrong store: put it back untouched.
                    self.subscriptions
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id.to_owned(), (s, task));
                }
                Err(Error::new(
                    ErrorKind::Upstream,
                    codes::CONFIGURATION_UNSUBSCRIBE,
                    format!(
                        "failed to unsubscribe: no subscription {id} on configuration store {store}"
                    ),
                ))
            }
        }
    }
}
