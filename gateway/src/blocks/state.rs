//! The state building block: Dapr's state API semantics over any state component.
//!
//! It owns key namespacing (`<owner>||<key>` and Dapr's `keyPrefix` strategies), request parsing
//! (save items, bulk get, transactions), limits (key length, item counts), and the mapping of store
//! failures to Dapr's error codes. Every request is fully parsed and validated before the first
//! write, so a malformed request changes nothing. Values are kept as the raw JSON the caller sent
//! (`RawValue`) and answered as stored, never re-parsed into a `serde_json::Value`, whose
//! recursion limit would turn a value nested 128 levels or more into `null`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::call::{Caller, Params, Reply};
use crate::components::StateComponent;
use crate::components::state::{Concurrency, DeleteRequest, SetRequest, StoreError, Ttl, TxOp};
use crate::config::Limits;
use crate::error::{Error, ErrorKind, codes};
use crate::resilience::ComponentCalls;

/// The separator between owner prefix and key, as in Dapr.
pub const SEPARATOR: &str = "||";

/// Dapr's `keyPrefix` component option: what goes in front of every key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPrefix {
    /// `appid` (default): the caller's app id (or device id), so apps never collide.
    Owner,
    /// `none`: keys are stored as given, shared by every app.
    None,
    /// `name`: the component's name.
    StoreName(String),
    /// Any other value: that literal prefix.
    Custom(String),
}

impl KeyPrefix {
    /// Parses the `keyPrefix` metadata of the component named `store`.
    pub fn parse(value: Option<&str>, store: &str) -> Result<Self, String> {
        match value.map(str::trim) {
            None | Some("") | Some("appid") | Some("namespace") => Ok(KeyPrefix::Owner),
            Some("none") => Ok(KeyPrefix::None),
            Some("name") => Ok(KeyPrefix::StoreName(store.to_owned())),
            Some(p) if p.contains(SEPARATOR) => {
                Err(format!("keyPrefix {p:?} must not contain '||'"))
            }
            Some(p) => Ok(KeyPrefix::Custom(p.to_owned())),
        }
    }

    /// The stored key for `key` asked by `owner`.
    pub fn apply(&self, owner: &str, key: &str) -> String {
        match self {
            KeyPrefix::Owner => format!("{owner}{SEPARATOR}{key}"),
            KeyPrefix::None => key.to_owned(),
            KeyPrefix::StoreName(p) | KeyPrefix::Custom(p) => format!("{p}{SEPARATOR}{key}"),
        }
    }
}

/// A string Dapr models as a string but clients sometimes send as a number or boolean.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stringish {
    Str(String),
    Num(serde_json::Number),
    Bool(bool),
}

impl Stringish {
    fn into_string(self) -> String {
        match self {
            Stringish::Str(s) => s,
            Stringish::Num(n) => n.to_string(),
            Stringish::Bool(b) => b.to_string(),
        }
    }
}

/// Go's JSON decoder (and so Dapr, and the SDKs written against it) reads `null` as the zero value.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ItemOptions {
    #[serde(default)]
    concurrency: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    // accepted as Dapr documents it; every store here is strongly consistent
    consistency: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SaveItem {
    key: String,
    #[serde(default)]
    value: Option<Box<RawValue>>,
    #[serde(default)]
    etag: Option<Stringish>,
    #[serde(default, deserialize_with = "null_as_default")]
    metadata: HashMap<String, Stringish>,
    #[serde(default)]
    options: Option<ItemOptions>,
}

#[derive(Deserialize)]
struct BulkGetRequest {
    #[serde(default, deserialize_with = "null_as_default")]
    keys: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)]
    // stores answer from memory or one connection; parallelism adds nothing
    parallelism: Option<u32>,
}

#[derive(Deserialize)]
struct TransactionRequest {
    #[serde(default, deserialize_with = "null_as_default")]
    operations: Vec<TransactionOperation>,
    #[serde(default, deserialize_with = "null_as_default")]
    #[allow(dead_code)] // transaction-level metadata has no meaning for the built-in stores
    metadata: HashMap<String, Stringish>,
}

#[derive(Deserialize)]
struct TransactionOperation {
    operation: String,
    request: SaveItem,
}

/// One key's answer in a bulk get: `{"data", "etag", "key"}`, `{"key"}` alone when missing, or
/// `{"error", "key"}`. `data` stays the stored bytes, never re-parsed. Fields in sorted order, as
/// this reply has always been written (and as the README prints it).
#[derive(Serialize)]
struct BulkGetItem<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    key: &'a str,
}

/// The state building block.
pub struct StateBlock {
    /// Loaded state stores by component name.
    stores: HashMap<String, StateComponent>,
    /// Key and item-count limits.
    limits: Limits,
    /// Outbound resiliency for store calls.
    calls: Arc<ComponentCalls>,
}

fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Error> {
    serde_json::from_slice(body)
        .map_err(|e| Error::malformed(format!("failed deserializing HTTP body: {e}")))
}

fn parse_ttl(metadata: &HashMap<String, String>) -> Result<Ttl, Error> {
    let Some(v) = metadata.get("ttlInSeconds") else {
        return Ok(Ttl::Keep);
    };
    match v.trim().parse::<i64>() {
        Ok(-1) => Ok(Ttl::Persist),
        Ok(n) if n > 0 => Ok(Ttl::Seconds(n as u64)),
        _ => Err(Error::malformed(format!(
            "metadata.ttlInSeconds {v:?} must be a positive number of seconds, or -1 to never expire"
        ))),
    }
}

fn parse_concurrency(s: Option<&str>) -> Result<Concurrency, Error> {
    let s = s.unwrap_or_default();
    Concurrency::parse(s).ok_or_else(|| {
        Error::malformed(format!(
            "concurrency {s:?} must be first-write or last-write"
        ))
    })
}

/// Maps a store failure to Dapr's codes: mismatch → 409, invalid ETag → 400, backend → 500.
fn store_error(code: &'static str, context: String, e: StoreError) -> Error {
    let kind = match &e {
        StoreError::EtagMismatch => ErrorKind::Conflict,
        StoreError::EtagInvalid(_) => ErrorKind::BadRequest,
        StoreError::NotSupported(_) | StoreError::Backend(_) => ErrorKind::Upstream,
        StoreError::DiskFull(_) => ErrorKind::InsufficientStorage,
    };
    Error::new(kind, code, format!("{context}: {e}"))
}

/// A stored value as JSON for bulk replies: the bytes themselves when they are JSON, else a string.
fn json_data(value: &Bytes) -> Box<RawValue> {
    let as_raw = std::str::from_utf8(value)
        .ok()
        .and_then(|s| RawValue::from_string(s.to_owned()).ok());
    as_raw.unwrap_or_else(|| {
        let s = serde_json::Value::String(String::from_utf8_lossy(value).into_owned());
        RawValue::from_string(s.to_string()).unwrap_or_else(|_| Box::<RawValue>::default())
    })
}

impl StateBlock {
    /// Takes the loaded state stores.
    pub fn new(
        stores: HashMap<String, StateComponent>,
        limits: Limits,
        calls: Arc<ComponentCalls>,
    ) -> Self {
        StateBlock {
            stores,
            limits,
            calls,
        }
    }

    /// Runs a store call under the store's outbound resiliency policy. Only backend failures
    /// count as failures: an ETag conflict is an answer, not an outage.
    async fn guarded<T, F, Fut>(
        &self,
        store: &str,
        code: &'static str,
        context: impl FnOnce() -> String,
        attempt: F,
    ) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let backend = |r: &Result<T, StoreError>| matches!(r, Err(StoreError::Backend(_)));
        match self.calls.run(store, attempt, backend).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(store_error(code, context(), e)),
            Err(stopped) => Err(Error::new(
                ErrorKind::Upstream,
                code,
                format!("{}: {stopped}", context()),
            )),
        }
    }

    /// Names of the loaded stores, for diagnostics.
    pub fn store_names(&self) -> Vec<&str> {
        self.stores.keys().map(String::as_str).collect()
    }

    fn store(&self, name: &str) -> Result<&StateComponent, Error> {
        if self.stores.is_empty() {
            return Err(Error::new(
                ErrorKind::Upstream,
                codes::STATE_STORES_NOT_CONFIGURED,
                "state store is not configured",
            ));
        }
        self.stores.get(name).ok_or_else(|| {
            Error::new(
                ErrorKind::BadRequest,
                codes::STATE_STORE_NOT_FOUND,
                format!("state store {name} is not found"),
            )
        })
    }

    /// Validates a key and namespaces it for `caller`.
    fn key(&self, store: &StateComponent, caller: &Caller, key: &str) -> Result<String, Error> {
        if matches!(caller, Caller::Device { .. }) && store.key_prefix != KeyPrefix::Owner {
            // A store with a shared or fixed prefix would let one device read another's keys.
            return Err(Error::new(
                ErrorKind::Forbidden,
                codes::PERMISSION_DENIED,
                "devices may only use state stores whose keyPrefix is appid (the default): \
                 this store shares its keys between callers",
            ));
        }
        if key.is_empty() {
            return Err(Error::malformed("state key must not be empty"));
        }
        if key.len() > self.limits.max_key_length {
            return Err(Error::malformed(format!(
                "state key is {} bytes; the limit is {} (limits.maxKeyLength)",
                key.len(),
                self.limits.max_key_length
            )));
        }
        if store.key_prefix != KeyPrefix::None && key.contains(SEPARATOR) {
            return Err(Error::malformed(format!(
                "input key {key:?} can't contain '||'"
            )));
        }
        Ok(store.key_prefix.apply(caller.owner(), key))
    }

    fn check_count(&self, n: usize, what: &str) -> Result<(), Error> {
        if n > self.limits.max_bulk_items {
            return Err(Error::malformed(format!(
                "{n} {what} in one request; the limit is {} (limits.maxBulkItems)",
                self.limits.max_bulk_items
            )));
        }
        Ok(())
    }

    fn set_request(
        &self,
        store: &StateComponent,
        caller: &Caller,
        item: SaveItem,
        params: &Params,
    ) -> Result<SetRequest, Error> {
        let call_metadata = &params.metadata;
        let key = self.key(store, caller, &item.key)?;
        let value = item
            .value
            .ok_or_else(|| Error::malformed(format!("state item {:?} has no value", item.key)))?;
        let mut metadata: HashMap<String, String> = call_metadata.clone();
        metadata.extend(item.metadata.into_iter().map(|(k, v)| (k, v.into_string())));
        let options = item.options.unwrap_or_default();
        let value = if params.binary_values {
            let b64: String = serde_json::from_str(value.get()).map_err(|_| {
                Error::malformed(format!("state item {:?}: value must be base64", item.key))
            })?;
            Bytes::from(
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).map_err(
                    |e| Error::malformed(format!("state item {:?}: value: {e}", item.key)),
                )?,
            )
        } else {
            Bytes::from(value.get().to_owned())
        };
        Ok(SetRequest {
            key,
            value,
            etag: item.etag.map(Stringish::into_string),
            concurrency: parse_concurrency(options.concurrency.as_deref())?,
            ttl: parse_ttl(&metadata)?,
        })
    }

    /// `GET /v1.0/state/<store>/<key>`: 200 with the value and its ETag, 204 when missing.
    pub async fn get(&self, caller: &Caller, store_name: &str, key: &str) -> Result<Reply, Error> {
        let store = self.store(store_name)?;
        let full = self.key(store, caller, key)?;
        let item = self
            .guarded(
                store_name,
                codes::STATE_GET,
                || format!("fail to get {key} from state store {store_name}"),
                || store.store.get(&full),
            )
            .await?;
        Ok(match item {
            None => Reply::no_content(),
            Some(item) => Reply::json(item.value).with_meta("ETag", item.etag),
        })
    }

    /// `POST /v1.0/state/<store>/bulk`: every key's value, ETag, or per-key error.
    pub async fn bulk_get(
        &self,
        caller: &Caller,
        store_name: &str,
        body: &[u8],
        params: &Params,
    ) -> Result<Reply, Error> {
        let store = self.store(store_name)?;
        let req: BulkGetRequest = parse_json(body)?;
        self.check_count(req.keys.len(), "keys")?;
        let full: Vec<String> = req
            .keys
            .iter()
            .map(|k| self.key(store, caller, k))
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(req.keys.len());
        for (key, full) in req.keys.iter().zip(full) {
            let got = self
                .calls
                .run(
                    store_name,
                    || store.store.get(&full),
                    |r| matches!(r, Err(StoreError::Backend(_))),
                )
                .await;
            let mut entry = BulkGetItem {
                data: None,
                error: None,
                etag: None,
                key,
            };
            match got.unwrap_or_else(|stopped| Err(StoreError::Backend(stopped.to_string()))) {
                Ok(Some(item)) => {
                    entry.data = Some(if params.binary_values {
                        let b64 = base64::Engine::encode(
                            &base64::engine::general_purpose::STANDARD,
                            &item.value,
                        );
                        serde_json::value::to_raw_value(&b64).unwrap_or_default()
                    } else {
                        json_data(&item.value)
                    });
                    entry.etag = Some(item.etag);
                }
                Ok(None) => {}
                Err(e) => entry.error = Some(e.to_string()),
            }
            out.push(entry);
        }
        // Serialised straight from the raw values: going through `serde_json::Value` would
        // re-parse them, and a value nested 128 levels or more would come back `null`.
        Ok(Reply::json(serde_json::to_vec(&out).unwrap_or_default()))
    }

    /// `POST /v1.0/state/<store>`: saves a JSON array of items, all validated before any write.
    pub async fn save(
        &self,
        caller: &Caller,
        store_name: &str,
        body: &[u8],
        params: &Params,
    ) -> Result<Reply, Error> {
        let store = self.store(store_name)?;
        let items: Vec<SaveItem> = parse_json(body)?;
        self.check_count(items.len(), "items")?;
        let reqs = items
            .into_iter()
            .map(|i| self.set_request(store, caller, i, params))
            .collect::<Result<Vec<_>, _>>()?;
        self.guarded(
            store_name,
            codes::STATE_SAVE,
            || format!("failed saving state in state store {store_name}"),
            || store.store.set_many(reqs.clone()),
        )
        .await?;
        Ok(Reply::no_content())
    }

    /// `DELETE /v1.0/state/<store>/<key>`, honouring `If-Match`.
    pub async fn delete(
        &self,
        caller: &Caller,
        store_name: &str,
        key: &str,
        params: &Params,
    ) -> Result<Reply, Error> {
        let store = self.store(store_name)?;
        let full = self.key(store, caller, key)?;
        parse_concurrency(params.options.get("concurrency").map(String::as_str))?;
        let req = DeleteRequest {
            key: full,
            etag: params.if_match.clone(),
        };
        self.guarded(
            store_name,
            codes::STATE_DELETE,
            || format!("failed deleting state with key {key}"),
            || store.store.delete(req.clone()),
        )
        .await?;
        Ok(Reply::no_content())
    }

    /// `POST /v1.0/state/<store>/transaction`: upserts and deletes, all or nothing.
    pub async fn transaction(
        &self,
        caller: &Caller,
        store_name: &str,
        body: &[u8],
        params: &Params,
    ) -> Result<Reply, Error> {
        let store = self.store(store_name)?;
        let req: TransactionRequest = parse_json(body)?;
        self.check_count(req.operations.len(), "operations")?;
        let mut ops = Vec::with_capacity(req.operations.len());
        for op in req.operations {
            match op.operation.as_str() {
                "upsert" => ops.push(TxOp::Upsert(
                    self.set_request(store, caller, op.request, params)?,
                )),
                "delete" => {
                    let key = self.key(store, caller, &op.request.key)?;
                    ops.push(TxOp::Delete(DeleteRequest {
                        key,
                        etag: op.request.etag.map(Stringish::into_string),
                    }));
                }
                other => {
                    return Err(Error::new(
                        ErrorKind::BadRequest,
                        codes::NOT_SUPPORTED_STATE_OPERATION,
                        format!("operation type {other} not supported"),
                    ));
                }
            }
        }
        self.guarded(
            store_name,
            codes::STATE_TRANSACTION,
            || "error while executing state transaction".into(),
            || store.store.transact(ops.clone()),
        )
        .await?;
        Ok(Reply::no_content())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_prefixes_follow_dapr() {
        let p = |v: Option<&str>| KeyPrefix::parse(v, "store").unwrap().apply("app", "k");
        assert_eq!(p(None), "app||k");
        assert_eq!(p(Some("appid")), "app||k");
        assert_eq!(p(Some("none")), "k");
        assert_eq!(p(Some("name")), "store||k");
        assert_eq!(p(Some("shared")), "shared||k");
        assert!(KeyPrefix::parse(Some("a||b"), "s").is_err());
    }

    #[test]
    fn null_fields_read_as_empty_like_go() {
        let items: Vec<SaveItem> = serde_json::from_str(
            r#"[{"key":"k","value":1,"metadata":null,"options":null,"etag":null}]"#,
        )
        .unwrap();
        assert!(
            items[0].metadata.is_empty() && items[0].options.is_none() && items[0].etag.is_none()
        );
        let tx: TransactionRequest =
            serde_json::from_str(r#"{"operations":null,"metadata":null}"#).unwrap();
        assert!(tx.operations.is_empty());
    }

    #[tokio::test]
    async fn devices_only_use_stores_that_namespace_their_keys() {
        let store = |prefix: KeyPrefix| StateComponent {
            store: std::sync::Arc::new(crate::components::state_memory::MemoryStore::default()),
            key_prefix: prefix,
        };
        let block = StateBlock::new(
            HashMap::from([
                ("own".to_string(), store(KeyPrefix::Owner)),
                ("shared".to_string(), store(KeyPrefix::None)),
            ]),
            Limits::default(),
            Arc::default(),
        );
        let dev = Caller::Device { id: "d1".into() };
        let app = Caller::LocalApp { app_id: "a".into() };
        assert!(block.get(&dev, "own", "k").await.is_ok());
        let e = block.get(&dev, "shared", "k").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Forbidden);
        assert!(block.get(&app, "shared", "k").await.is_ok());
    }

    #[tokio::test]
    async fn deeply_nested_values_come_back_from_bulk_get_unchanged() {
        let block = StateBlock::new(
            HashMap::from([(
                "s".to_string(),
                StateComponent {
                    store: Arc::new(crate::components::state_memory::MemoryStore::default()),
                    key_prefix: KeyPrefix::Owner,
                },
            )]),
            Limits::default(),
            Arc::default(),
        );
        let app = Caller::LocalApp { app_id: "a".into() };
        let deep = format!("{}1{}", "[".repeat(300), "]".repeat(300));
        let save = format!(r#"[{{"key":"k","value":{deep}}}]"#);
        block
            .save(&app, "s", save.as_bytes(), &Params::default())
            .await
            .unwrap();
        let r = block
            .bulk_get(
                &app,
                "s",
                br#"{"keys":["k","missing"]}"#,
                &Params::default(),
            )
            .await
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&r.body).unwrap(),
            format!(r#"[{{"data":{deep},"etag":"1","key":"k"}},{{"key":"missing"}}]"#)
        );
    }

    #[test]
    fn ttl_metadata() {
        let m = |v: &str| HashMap::from([("ttlInSeconds".to_string(), v.to_string())]);
        assert_eq!(parse_ttl(&HashMap::new()).unwrap(), Ttl::Keep);
        assert_eq!(parse_ttl(&m("30")).unwrap(), Ttl::Seconds(30));
        assert_eq!(parse_ttl(&m("-1")).unwrap(), Ttl::Persist);
        assert!(parse_ttl(&m("0")).is_err());
        assert!(parse_ttl(&m("soon")).is_err());
    }
}

/// Dapr's state query language (`/v1.0-alpha1/state/<store>/query`): a filter tree over fields
/// of JSON values, a sort, and a page. Evaluated here over the keys a store lists, so every store
/// that can list its keys answers queries the same way.
mod query {
    use serde::Deserialize;
    use serde_json::Value;

    /// A parsed query.
    #[derive(Deserialize, Default)]
    #[serde(default)]
    pub struct Query {
        pub filter: Option<Value>,
        pub sort: Vec<Sort>,
        pub page: Page,
    }

    #[derive(Deserialize)]
    pub struct Sort {
        pub key: String,
        #[serde(default)]
        pub order: Option<String>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    pub struct Page {
        pub limit: usize,
        pub token: Option<String>,
    }

    /// The value at a dotted path (`person.org`); `value.` in front is accepted too.
    pub fn field<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
        let path = path.strip_prefix("value.").unwrap_or(path);
        path.split('.').try_fold(v, |v, k| v.get(k))
    }

    fn cmp(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
            (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
            (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
            _ => None,
        }
    }

    /// Sorts values of one field: numbers, strings and booleans in order, missing last.
    pub fn order(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
        use std::cmp::Ordering::*;
        match (a, b) {
            (Some(a), Some(b)) => cmp(a, b).unwrap_or(Equal),
            (Some(_), None) => Less,
            (None, Some(_)) => Greater,
            (None, None) => Equal,
        }
    }

    /// Whether `v` passes `filter`; an unknown operator is an error.
    pub fn matches(filter: &Value, v: &Value) -> Result<bool, String> {
        let obj = filter
            .as_object()
            .filter(|o| o.len() == 1)
            .ok_or("a filter is an object with one operator")?;
        let (op, arg) = obj.iter().next().ok_or("empty filter")?;
        let one = || -> Result<(Option<&Value>, &Value), String> {
            let o = arg
                .as_object()
                .filter(|o| o.len() == 1)
                .ok_or(format!("{op} takes one field"))?;
            let (path, want) = o.iter().next().ok_or(format!("{op} takes one field"))?;
            Ok((field(v, path), want))
        };
        let list = || -> Result<&Vec<Value>, String> {
            arg.as_array()
                .filter(|a| !a.is_empty())
                .ok_or(format!("{op} takes a non-empty list of filters"))
        };
        use std::cmp::Ordering::*;
        Ok(match op.as_str() {
            "EQ" => one().map(|(got, want)| got == Some(want))?,
            "NEQ" => one().map(|(got, want)| got != Some(want))?,
            "GT" | "GTE" | "LT" | "LTE" => {
                let (got, want) = one()?;
                let c = got.and_then(|g| cmp(g, want));
                match op.as_str() {
                    "GT" => c == Some(Greater),
                    "GTE" => matches!(c, Some(Greater | Equal)),
                    "LT" => c == Some(Less),
                    _ => matches!(c, Some(Less | Equal)),
                }
            }
            "IN" => {
                let (got, want) = one()?;
                let options = want.as_array().ok_or("IN takes a list of values")?;
                got.is_some_and(|g| options.contains(g))
            }
            "AND" => {
                let mut all = true;
                for f in list()? {
                    all &= matches(f, v)?;
                }
                all
            }
            "OR" => {
                let mut any = false;
                for f in list()? {
                    any |= matches(f, v)?;
                }
                any
            }
            other => return Err(format!("unknown filter operator {other:?}")),
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use serde_json::json;

        #[test]
        fn filters_follow_daprs_query_language() {
            let v = json!({"state": "CA", "person": {"org": "Dev Ops", "id": 1036}});
            let ok = |f: Value| matches(&f, &v).unwrap();
            assert!(ok(json!({"EQ": {"state": "CA"}})));
            assert!(!ok(json!({"EQ": {"state": "WA"}})));
            assert!(ok(json!({"EQ": {"person.org": "Dev Ops"}})));
            assert!(ok(json!({"IN": {"state": ["WA", "CA"]}})));
            assert!(ok(
                json!({"AND": [{"EQ": {"state": "CA"}}, {"GT": {"person.id": 1000}}]})
            ));
            assert!(!ok(
                json!({"AND": [{"EQ": {"state": "CA"}}, {"LT": {"person.id": 1000}}]})
            ));
            assert!(ok(
                json!({"OR": [{"EQ": {"state": "WA"}}, {"EQ": {"value.state": "CA"}}]})
            ));
            assert!(matches(&json!({"LIKE": {"state": "C%"}}), &v).is_err());
        }
    }
}

impl StateBlock {
    /// `POST /v1.0-alpha1/state/<store>/query`: the caller's JSON values that pass the filter,
    /// sorted, one page at a time (`token` is where the next page starts).
    pub async fn query(
        &self,
        caller: &Caller,
        store_name: &str,
        body: &[u8],
    ) -> Result<Reply, Error> {
        let store = self.store(store_name)?;
        let q: query::Query = serde_json::from_slice(body)
            .map_err(|e| Error::malformed(format!("failed to parse query: {e}")))?;
        let prefix = match &store.key_prefix {
            KeyPrefix::None => String::new(),
            p => p.apply(caller.owner(), ""),
        };
        let items = self
            .guarded(
                store_name,
                codes::STATE_QUERY,
                || format!("failed query in state store {store_name}"),
                || store.store.scan(&prefix),
            )
            .await?;
        let mut rows = Vec::new();
        for (key, item) in items {
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(&item.value) else {
                continue; // only JSON values are queryable
            };
            if let Some(f) = &q.filter
                && !query::matches(f, &value)
                    .map_err(|m| Error::new(ErrorKind::BadRequest, codes::STATE_QUERY, m))?
            {
                continue;
            }
            let key = key.strip_prefix(prefix.as_str()).unwrap_or(&key).to_owned();
            rows.push((key, value, item.etag));
        }
        rows.sort_by(|a, b| {
            for s in &q.sort {
                let o = query::order(query::field(&a.1, &s.key), query::field(&b.1, &s.key));
                let o = if s
                    .order
                    .as_deref()
                    .is_some_and(|d| d.eq_ignore_ascii_case("DESC"))
                {
                    o.reverse()
                } else {
                    o
                };
                if o != std::cmp::Ordering::Equal {
                    return o;
                }
            }
            a.0.cmp(&b.0)
        });
        let start: usize = match q.page.token.as_deref() {
            None | Some("") => 0,
            Some(t) => t.parse().map_err(|_| {
                Error::malformed(format!("page token {t:?} is not one edgecar gave"))
            })?,
        };
        let limit = if q.page.limit == 0 {
            self.limits.max_bulk_items
        } else {
            q.page.limit
        };
        let end = start.saturating_add(limit).min(rows.len());
        let results: Vec<serde_json::Value> = rows
            .get(start.min(end)..end)
            .unwrap_or_default()
            .iter()
            .map(|(k, v, etag)| serde_json::json!({"key": k, "data": v, "etag": etag}))
            .collect();
        let mut out = serde_json::json!({ "results": results });
        if end < rows.len() {
            out["token"] = end.to_string().into();
        }
        Ok(Reply::json(serde_json::to_vec(&out).unwrap_or_default()))
    }
}
