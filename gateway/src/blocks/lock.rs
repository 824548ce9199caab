//! The distributed-lock building block: Dapr's `/v1.0-alpha1/lock/<store>` and `/unlock/<store>`.
//!
//! It validates requests (resource id, owner, a positive expiry), namespaces lock keys the way
//! Dapr does (`lock||<app-id>||<resource>` by default, per the component's `keyPrefix`), and maps
//! outcomes to Dapr's replies: `{"success": bool}` and `{"status": 0|1|2|3}`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::blocks::state::KeyPrefix;
use crate::call::{Caller, Reply};
use crate::components::lock::{LockStore, UnlockStatus};
use crate::error::{Error, ErrorKind, codes};

/// Longest lock lease accepted (a day): a lock that outlives its owner this long is a bug.
const MAX_EXPIRY_SECS: i64 = 86_400;

/// A loaded lock component.
pub struct LockComponent {
    /// The backend.
    pub store: Arc<dyn LockStore>,
    /// Dapr's `keyPrefix` for this store.
    pub key_prefix: KeyPrefix,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LockRequest {
    #[serde(default)]
    resource_id: String,
    #[serde(default)]
    lock_owner: String,
    #[serde(default)]
    expiry_in_seconds: i64,
}

/// The lock building block.
pub struct LockBlock {
    stores: HashMap<String, LockComponent>,
}

impl LockBlock {
    /// Takes the loaded lock stores.
    pub fn new(stores: HashMap<String, LockComponent>) -> Self {
        LockBlock { stores }
    }

    fn parse(&self, store: &str, body: &[u8]) -> Result<(&LockComponent, LockRequest), Error> {
        if self.stores.is_empty() {
            return Err(Error::new(
                ErrorKind::Upstream,
                codes::LOCK_STORE_NOT_CONFIGURED,
                "lock store is not configured",
            ));
        }
        let c = self.stores.get(store).ok_or_else(|| {
            Error::new(
                ErrorKind::BadRequest,
                codes::LOCK_STORE_NOT_FOUND,
                format!("lock store {store} not found"),
            )
        })?;
        let req: LockRequest = serde_json::from_slice(body)
            .map_err(|e| Error::malformed(format!("failed deserializing HTTP body: {e}")))?;
        if req.resource_id.is_empty() {
            return Err(Error::malformed(format!(
                "ResourceId is empty in lock store {store}"
            )));
        }
        if req.lock_owner.is_empty() {
            return Err(Error::malformed(format!(
                "LockOwner is empty in lock store {store}"
            )));
        }
        if req.resource_id.contains("||") {
            return Err(Error::malformed(format!(
                "resourceId {:?} can't contain '||'",
                req.resource_id
            )));
        }
        Ok((c, req))
    }

    fn key(c: &LockComponent, caller: &Caller, resource: &str) -> String {
        format!("lock||{}", c.key_prefix.apply(caller.owner(), resource))
    }

    /// `POST /v1.0-alpha1/lock/<store>`.
    pub async fn lock(&self, caller: &Caller, store: &str, body: &[u8]) -> Result<Reply, Error> {
        let (c, req) = self.parse(store, body)?;
        if req.expiry_in_seconds <= 0 || req.expiry_in_seconds > MAX_EXPIRY_SECS {
            return Err(Error::malformed(format!(
                "ExpiryInSeconds must be between 1 and {MAX_EXPIRY_SECS} in lock store {store}"
            )));
        }
        let expiry = Duration::from_secs(req.expiry_in_seconds.unsigned_abs());
        let taken = c
            .store
            .try_lock(
                &Self::key(c, caller, &req.resource_id),
                &req.lock_owner,
                expiry,
            )
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Upstream,
                    codes::TRY_LOCK,
                    format!("failed to try acquiring lock: {e}"),
                )
            })?;
        Ok(Reply::json(json!({ "success": taken }).to_string()))
    }

    /// `POST /v1.0-alpha1/unlock/<store>`.
    pub async fn unlock(&self, caller: &Caller, store: &str, body: &[u8]) -> Result<Reply, Error> {
        let (c, req) = self.parse(store, body)?;
        let status = c
            .store
            .unlock(&Self::key(c, caller, &req.resource_id), &req.lock_owner)
            .await
            .unwrap_or(UnlockStatus::InternalError);
        Ok(Reply::json(json!({ "status": status as u8 }).to_string()))
    }
}
