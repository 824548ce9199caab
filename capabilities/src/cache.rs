//! The result cache of one capability: a moka future cache bounded in entries and bytes, SHA-256
//! keys, the stale-if-error window, and coalescing of concurrent identical misses.
//!
//! - **Key**: SHA-256 over the capability name, method path, query, HTTP method, body and the
//!   `keyHeaders` values, each length-prefixed. A 256-bit digest makes a collision (and so a wrong
//!   body) as unlikely as forging SHA-256, without keeping request bodies in memory as keys.
//! - **Freshness** is decided with `tokio::time::Instant`s stored in the entry (`fresh_until`,
//!   `stale_until`), so tests drive it with `tokio::time::pause()`. moka's own TTL is set to
//!   `ttl + staleIfError` only to reclaim memory: entries outlive their freshness by the stale
//!   window so they can stand in when every offer fails.
//! - **Bounds**: moka has one weighted capacity. It is set to `maxBytes`, and every entry weighs
//!   at least `maxBytes / maxEntries`, so both limits hold (small entries count as a slot each).
//! - **Coalescing**: the first miss for a key becomes the *leader* and calls the offers; identical
//!   requests arriving meanwhile wait on a `watch` channel and get the leader's result, success or
//!   error. If the leader is cancelled (its caller went away), its guard removes the flight and a
//!   waiter takes over.
//! - **What is stored**: 2xx replies, except those marked `cache-control: no-store` or `private`
//!   by the offer; `set-cookie` headers are dropped from stored entries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::{Method, StatusCode};
use moka::future::Cache;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::engine::{CacheStatus, CapabilityReply, CapabilityRequest};
use crate::error::CapabilityError;
use crate::manifest::CacheSpec;

/// A cache key: SHA-256 of the key material.
pub(crate) type CacheKey = [u8; 32];

/// What waiters of a flight receive.
pub(crate) type Shared = Result<CapabilityReply, CapabilityError>;

/// Bytes counted per entry on top of body and headers (key, timestamps, bookkeeping).
const ENTRY_OVERHEAD: u64 = 160;

/// A cached successful reply.
#[derive(Debug)]
pub(crate) struct CachedReply {
    /// Status (2xx).
    status: StatusCode,
    /// Headers.
    headers: Vec<(String, String)>,
    /// Body.
    body: Bytes,
    /// The offer that produced it, reported on hits.
    offer: String,
    /// Served as a hit until then.
    fresh_until: Instant,
    /// Served as stale (when every offer fails) until then.
    stale_until: Instant,
    /// Weight in bytes, for the byte counter.
    size: u64,
}

impl CachedReply {
    /// The reply for a caller, marked `cache`.
    pub(crate) fn to_reply(&self, cache: CacheStatus) -> CapabilityReply {
        CapabilityReply {
            status: self.status,
            headers: self.headers.clone(),
            body: self.body.clone(),
            offer: self.offer.clone(),
            cache,
        }
    }
}

/// The outcome of a lookup.
pub(crate) enum Lookup {
    /// Fresh: serve it.
    Fresh(Arc<CachedReply>),
    /// Past its ttl but within the stale window: serve only if every offer fails.
    Stale(Arc<CachedReply>),
    /// Nothing usable.
    Miss,
}

/// Counters of one cache.
#[derive(Debug, Default)]
pub(crate) struct CacheCounters {
    /// Fresh hits.
    pub hits: AtomicU64,
    /// Misses that called the offers (one per flight).
    pub misses: AtomicU64,
    /// Stale entries served because every offer failed.
    pub stale: AtomicU64,
    /// Requests that waited for another request's identical flight.
    pub coalesced: AtomicU64,
    /// Requests with a method that is not cacheable.
    pub bypass: AtomicU64,
}

/// Cache statistics, in status pages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheStats {
    /// Fresh hits.
    pub hits: u64,
    /// Misses that called the offers (concurrent identical misses count once).
    pub misses: u64,
    /// Stale entries served because every offer failed.
    pub stale: u64,
    /// Requests that shared another request's upstream call.
    pub coalesced: u64,
    /// Requests whose method is not cacheable.
    pub bypass: u64,
    /// Entries held (fresh or within the stale window).
    pub entries: u64,
    /// Bytes held (bodies, headers and per-entry overhead).
    pub bytes: u64,
    /// `maxEntries`.
    pub max_entries: u64,
    /// `maxBytes`.
    pub max_bytes: u64,
}

/// In-flight misses by key.
type Flights = Mutex<HashMap<CacheKey, watch::Receiver<Option<Shared>>>>;

/// The result cache of one capability.
pub(crate) struct ResultCache {
    /// Its settings.
    spec: CacheSpec,
    /// The entries.
    entries: Cache<CacheKey, Arc<CachedReply>>,
    /// Misses being served, for coalescing.
    flights: Arc<Flights>,
    /// Bytes held, maintained by insert and moka's eviction listener.
    bytes: Arc<AtomicU64>,
    /// Counters.
    pub(crate) counters: CacheCounters,
}

impl ResultCache {
    /// An empty cache with `spec`'s limits.
    pub(crate) fn new(spec: CacheSpec) -> Self {
        let bytes = Arc::new(AtomicU64::new(0));
        let slot = (spec.max_bytes / spec.max_entries.max(1)).max(1);
        let listener_bytes = bytes.clone();
        let entries = Cache::builder()
            .max_capacity(spec.max_bytes)
            .weigher(move |_k: &CacheKey, v: &Arc<CachedReply>| {
                u32::try_from(v.size.max(slot)).unwrap_or(u32::MAX)
            })
            .time_to_live(spec.ttl + spec.stale_if_error)
            .eviction_listener(move |_k, v: Arc<CachedReply>, _cause| {
                listener_bytes.fetch_sub(v.size, Ordering::Relaxed);
            })
            .build();
        Self {
            spec,
            entries,
            flights: Arc::new(Mutex::new(HashMap::new())),
            bytes,
            counters: CacheCounters::default(),
        }
    }

    /// Its settings.
    pub(crate) fn spec(&self) -> &CacheSpec {
        &self.spec
    }

    /// Whether requests with `method` are cached.
    pub(crate) fn is_cacheable(&self, method: &Method) -> bool {
        self.spec.methods.contains(method)
    }

    /// The key of `req` for capability `capability`.
    pub(crate) fn key(&self, capability: &str, req: &CapabilityRequest) -> CacheKey {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut field = |bytes: &[u8]| {
            ctx.update(&(bytes.len() as u64).to_le_bytes());
            ctx.update(bytes);
        };
        field(b"edgecar-capability-cache-v1");
        field(capability.as_bytes());
        field(req.method.trim_start_matches('/').as_bytes());
        field(req.query.as_deref().unwrap_or("").as_bytes());
        field(req.http_method.as_str().as_bytes());
        field(&req.body);
        for name in &self.spec.key_headers {
            field(name.as_bytes());
            let values: Vec<&str> = req
                .headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .collect();
            field(&(values.len() as u64).to_le_bytes());
            for v in values {
                field(v.as_bytes());
            }
        }
        let digest = ctx.finish();
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        key
    }

    /// The entry for `key` as of `now`.
    pub(crate) async fn lookup(&self, key: &CacheKey, now: Instant) -> Lookup {
        let Some(entry) = self.entries.get(key).await else {
            return Lookup::Miss;
        };
        if now < entry.fresh_until {
            Lookup::Fresh(entry)
        } else if now < entry.stale_until {
            Lookup::Stale(entry)
        } else {
            self.entries.invalidate(key).await;
            Lookup::Miss
        }
    }

    /// Stores a successful reply under `key`, fresh from `now`, unless the offer said not to
    /// (`cache-control: no-store` or `private`). `set-cookie` headers are never stored: a cookie
    /// meant for one caller must not be handed to the next.
    pub(crate) async fn store(&self, key: CacheKey, reply: &CapabilityReply, now: Instant) {
        let forbidden = reply
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("cache-control"))
            .flat_map(|(_, v)| v.split(','))
            .any(|d| {
                let d = d.trim();
                d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("private")
            });
        if forbidden {
            return;
        }
        let headers: Vec<(String, String)> = reply
            .headers
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("set-cookie"))
            .cloned()
            .collect();
        let headers_len: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        let size = (reply.body.len() + headers_len + reply.offer.len()) as u64 + ENTRY_OVERHEAD;
        if size > self.spec.max_bytes {
            return;
        }
        let entry = CachedReply {
            status: reply.status,
            headers,
            body: reply.body.clone(),
            offer: reply.offer.clone(),
            fresh_until: now + self.spec.ttl,
            stale_until: now + self.spec.ttl + self.spec.stale_if_error,
            size,
        };
        self.bytes.fetch_add(size, Ordering::Relaxed);
        self.entries.insert(key, Arc::new(entry)).await;
    }

    /// Joins the flight for `key`, or starts it.
    pub(crate) fn join(&self, key: CacheKey) -> Flight {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(rx) = flights.get(&key) {
            return Flight::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        flights.insert(key, rx);
        Flight::Leader(Leader {
            key,
            tx,
            flights: self.flights.clone(),
        })
    }

    /// Entries held (approximate until moka's pending maintenance runs).
    pub(crate) fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    /// Bytes held (approximate until moka's pending maintenance runs).
    pub(crate) fn byte_count(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Statistics; `settle` first applies moka's pending evictions so the numbers are exact.
    pub(crate) async fn stats(&self, settle: bool) -> CacheStats {
        if settle {
            self.entries.run_pending_tasks().await;
        }
        let c = &self.counters;
        CacheStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            stale: c.stale.load(Ordering::Relaxed),
            coalesced: c.coalesced.load(Ordering::Relaxed),
            bypass: c.bypass.load(Ordering::Relaxed),
            entries: self.entries.entry_count(),
            bytes: self.bytes.load(Ordering::Relaxed),
            max_entries: self.spec.max_entries,
            max_bytes: self.spec.max_bytes,
        }
    }
}

/// A request's role in serving a miss.
pub(crate) enum Flight {
    /// Call the offers, then [`Leader::finish`].
    Leader(Leader),
    /// Wait for the leader with [`wait`].
    Follower(watch::Receiver<Option<Shared>>),
}

/// The request serving a miss; dropping it ends the flight.
pub(crate) struct Leader {
    /// Its key.
    key: CacheKey,
    /// Where the result goes.
    tx: watch::Sender<Option<Shared>>,
    /// The map to leave on drop.
    flights: Arc<Flights>,
}

impl Leader {
    /// Hands `result` to every follower and ends the flight.
    pub(crate) fn finish(self, result: &Shared) {
        self.tx.send_replace(Some(result.clone()));
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if flights
            .get(&self.key)
            .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
        {
            flights.remove(&self.key);
        }
    }
}

/// Waits for the leader's result; `None` if the leader was cancelled before producing one.
pub(crate) async fn wait(mut rx: watch::Receiver<Option<Shared>>) -> Option<Shared> {
    match rx.wait_for(Option::is_some).await {
        Ok(result) => result.clone(),
        Err(_) => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn spec() -> CacheSpec {
        CacheSpec {
            ttl: Duration::from_secs(10),
            stale_if_error: Duration::from_secs(60),
            key_headers: vec!["accept".into()],
            ..CacheSpec::default()
        }
    }

    fn req(body: &'static str, accept: Option<&str>) -> CapabilityRequest {
        let mut r = CapabilityRequest::new(Method::POST, "run", body);
        if let Some(a) = accept {
            r = r.with_header("Accept", a);
        }
        r
    }

    fn reply(body: &'static str) -> CapabilityReply {
        CapabilityReply {
            status: StatusCode::OK,
            headers: Vec::new(),
            body: Bytes::from_static(body.as_bytes()),
            offer: "a".into(),
            cache: CacheStatus::Miss,
        }
    }

    #[test]
    fn keys_separate_what_matters_and_only_that() {
        let c = ResultCache::new(spec());
        let base = c.key("cap", &req("x", None));
        assert_eq!(base, c.key("cap", &req("x", None)));
        assert_ne!(base, c.key("other", &req("x", None)));
        assert_ne!(base, c.key("cap", &req("y", None)));
        assert_ne!(base, c.key("cap", &req("x", Some("image/png"))));
        // Headers outside keyHeaders do not matter, and header names are case-insensitive.
        assert_eq!(
            c.key(
                "cap",
                &req("x", Some("a")).with_header("traceparent", "00-1")
            ),
            c.key("cap", &req("x", None).with_header("accept", "a"))
        );
        let mut get = req("x", None);
        get.http_method = Method::GET;
        assert_ne!(base, c.key("cap", &get));
        // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
        let mut r1 = CapabilityRequest::new(Method::POST, "ab", "c");
        let mut r2 = CapabilityRequest::new(Method::POST, "a", "bc");
        r1.query = None;
        r2.query = None;
        assert_ne!(c.key("cap", &r1), c.key("cap", &r2));
    }

    #[tokio::test(start_paused = true)]
    async fn fresh_then_stale_then_gone() {
        let c = ResultCache::new(spec());
        let key = c.key("cap", &req("x", None));
        let start = Instant::now();
        c.store(key, &reply("r"), start).await;
        assert!(matches!(c.lookup(&key, start).await, Lookup::Fresh(_)));
        let later = start + Duration::from_secs(10);
        let Lookup::Stale(e) = c.lookup(&key, later).await else {
            panic!("stale expected");
        };
        assert_eq!(e.to_reply(CacheStatus::Stale).body, "r");
        let gone = start + Duration::from_secs(70);
        assert!(matches!(c.lookup(&key, gone).await, Lookup::Miss));
        let stats = c.stats(true).await;
        assert_eq!((stats.entries, stats.bytes), (0, 0));
    }

    #[tokio::test]
    async fn honours_no_store_and_drops_cookies() {
        let c = ResultCache::new(spec());
        let now = Instant::now();
        let key = c.key("cap", &req("x", None));
        let mut r = reply("r");
        r.headers = vec![("cache-control".into(), "max-age=5, No-Store".into())];
        c.store(key, &r, now).await;
        assert!(matches!(c.lookup(&key, now).await, Lookup::Miss));

        r.headers = vec![
            ("set-cookie".into(), "session=alice".into()),
            ("content-type".into(), "text/plain".into()),
        ];
        c.store(key, &r, now).await;
        let Lookup::Fresh(e) = c.lookup(&key, now).await else {
            panic!("stored");
        };
        assert_eq!(
            e.to_reply(CacheStatus::Hit).headers,
            [("content-type".to_owned(), "text/plain".to_owned())]
        );
    }

    #[tokio::test]
    async fn bounded_in_entries_and_bytes() {
        let c = ResultCache::new(CacheSpec {
            max_entries: 5,
            max_bytes: 100_000,
            ..spec()
        });
        let now = Instant::now();
        for i in 0..50u32 {
            let mut r = req("x", None);
            r.body = Bytes::from(i.to_string());
            c.store(c.key("cap", &r), &reply("r"), now).await;
        }
        let stats = c.stats(true).await;
        assert!(stats.entries <= 5, "{stats:?}");

        let c = ResultCache::new(CacheSpec {
            max_entries: 1000,
            max_bytes: 4096,
            ..spec()
        });
        static BIG: [u8; 1000] = [b'b'; 1000];
        for i in 0..50u32 {
            let mut r = req("x", None);
            r.body = Bytes::from(i.to_string());
            let mut rep = reply("");
            rep.body = Bytes::from_static(&BIG);
            c.store(c.key("cap", &r), &rep, now).await;
        }
        let stats = c.stats(true).await;
        assert!(stats.bytes <= 4096, "{stats:?}");
        assert!(stats.entries >= 1, "{stats:?}");
    }

    #[tokio::test]
    async fn a_cancelled_leader_hands_over() {
        let c = ResultCache::new(spec());
        let key = [7u8; 32];
        let Flight::Leader(leader) = c.join(key) else {
            panic!("first is leader");
        };
        let Flight::Follower(rx) = c.join(key) else {
            panic!("second follows");
        };
        drop(leader);
        assert!(wait(rx).await.is_none());
        assert!(matches!(c.join(key), Flight::Leader(_)));
    }
}
