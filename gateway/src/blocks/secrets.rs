//! The secrets building block: `GET /v1.0/secrets/<store>/<name>` and `/bulk`, with Dapr's secret
//! scopes applied, over the secret stores loaded at start-up.
//!
//! The same stores resolve capability manifests' `secretKeyRef` headers through
//! [`SecretsBlock`]'s [`SecretResolver`] implementation (operator configuration, so app scopes do
//! not apply there, as with components' `secretKeyRef`s in Dapr).

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use edgecar_capabilities::{SecretError as CapSecretError, SecretResolver};

use crate::call::Reply;
use crate::components::secretstore::{SecretError, SecretStore};
use crate::error::{Error, ErrorKind, codes};
use crate::policy::SecretScopes;

/// The secrets building block.
pub struct SecretsBlock {
    /// Loaded secret stores by component name.
    stores: HashMap<String, SecretStore>,
    /// What the app may read.
    scopes: SecretScopes,
}

impl SecretsBlock {
    /// Wraps the loaded stores.
    pub fn new(stores: HashMap<String, SecretStore>, scopes: SecretScopes) -> Self {
        SecretsBlock { stores, scopes }
    }

    fn store(&self, name: &str) -> Result<&SecretStore, Error> {
        if self.stores.is_empty() {
            return Err(Error::new(
                ErrorKind::Upstream,
                codes::SECRET_STORES_NOT_CONFIGURED,
                "secret store is not configured",
            ));
        }
        self.stores.get(name).ok_or_else(|| {
            Error::new(
                ErrorKind::Unauthorized,
                codes::SECRET_STORE_NOT_FOUND,
                format!("failed finding secret store with key {name}"),
            )
        })
    }

    fn denied(store: &str, name: &str) -> Error {
        Error::new(
            ErrorKind::Forbidden,
            codes::PERMISSION_DENIED,
            format!("access denied by policy to get {name:?} from {store:?}"),
        )
    }

    /// `GET /v1.0/secrets/<store>/<name>`.
    pub fn get(&self, store_name: &str, name: &str) -> Result<Reply, Error> {
        let store = self.store(store_name)?;
        if !self.scopes.allows(store_name, name) {
            return Err(Self::denied(store_name, name));
        }
        let secret = store.get(name).map_err(|e| {
            Error::new(
                ErrorKind::Upstream,
                codes::SECRET_GET,
                format!(
                    "failed getting secret with key {name} from secret store {store_name}: {e}"
                ),
            )
        })?;
        Ok(Reply::json(serde_json::to_vec(&secret).unwrap_or_default()))
    }

    /// `GET /v1.0/secrets/<store>/bulk`: every secret the scopes allow.
    pub fn bulk(&self, store_name: &str) -> Result<Reply, Error> {
        let store = self.store(store_name)?;
        let all: BTreeMap<_, _> = store
            .bulk()
            .into_iter()
            .filter(|(name, _)| self.scopes.allows(store_name, name))
            .collect();
        Ok(Reply::json(serde_json::to_vec(&all).unwrap_or_default()))
    }
}

#[async_trait]
impl SecretResolver for SecretsBlock {
    async fn resolve(&self, store: &str, name: &str, key: &str) -> Result<String, CapSecretError> {
        let s = self
            .stores
            .get(store)
            .ok_or_else(|| CapSecretError::Store {
                store: store.to_owned(),
                reason: "no such secret store is loaded".into(),
            })?;
        let not_found = || CapSecretError::NotFound {
            store: store.to_owned(),
            name: name.to_owned(),
            key: key.to_owned(),
        };
        match s.get(name) {
            Ok(secret) => secret.get(key).cloned().ok_or_else(not_found),
            Err(SecretError::NotFound(_)) => Err(not_found()),
        }
    }
}
