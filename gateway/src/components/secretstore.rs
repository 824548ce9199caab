//! Secret stores: `secretstores.local.file` and `secretstores.local.env`.
//!
//! A store answers with a secret's key/value map. Stores are built before every other component,
//! because other components' `secretKeyRef` values are resolved through them at load time. The
//! local stores are synchronous (a JSON file read once, the process environment), which lets
//! `check-config` resolve references exactly as start-up does.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

/// A secret: key → value (name/value stores use the secret's name as the only key).
pub type Secret = BTreeMap<String, String>;

/// Why a secret could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// No secret with this name.
    #[error("secret {0} not found")]
    NotFound(String),
}

/// A loaded secret store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretStore {
    /// `secretstores.local.file`: secrets flattened from a JSON file at load time.
    File {
        /// Secret name → its key/value map.
        secrets: BTreeMap<String, Secret>,
    },
    /// `secretstores.local.env`: the process environment, optionally restricted to a prefix.
    Env {
        /// Only variables starting with this are secrets (`prefix` metadata); empty: all.
        prefix: String,
    },
}

/// Flattens nested JSON into `a<sep>b` keys with string values.
fn flatten(prefix: &str, v: &Value, sep: &str, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}{sep}{k}")
                };
                flatten(&key, v, sep, out);
            }
        }
        Value::String(s) => {
            out.insert(prefix.to_owned(), s.clone());
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

impl SecretStore {
    /// Reads a `secretstores.local.file` JSON file (Dapr's `secretsFile`, `nestedSeparator`,
    /// `multiValued`).
    pub fn from_file(path: &Path, separator: &str, multi_valued: bool) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read secretsFile {}: {e}", path.display()))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| format!("secretsFile {} is not valid JSON: {e}", path.display()))?;
        let Value::Object(top) = json else {
            return Err(format!(
                "secretsFile {} must hold a JSON object",
                path.display()
            ));
        };
        let mut secrets = BTreeMap::new();
        if multi_valued {
            // One level of secrets, each with its keys (deeper levels flattened).
            for (name, v) in &top {
                let mut keys = BTreeMap::new();
                match v {
                    Value::Object(_) => flatten("", v, separator, &mut keys),
                    _ => flatten(name, v, separator, &mut keys),
                }
                secrets.insert(name.clone(), keys);
            }
        } else {
            let mut flat = BTreeMap::new();
            flatten("", &Value::Object(top), separator, &mut flat);
            for (k, v) in flat {
                secrets.insert(k.clone(), BTreeMap::from([(k, v)]));
            }
        }
        Ok(SecretStore::File { secrets })
    }

    /// Reads one secret.
    pub fn get(&self, name: &str) -> Result<Secret, SecretError> {
        match self {
            SecretStore::File { secrets } => secrets
                .get(name)
                .cloned()
                .ok_or_else(|| SecretError::NotFound(name.to_owned())),
            SecretStore::Env { prefix } => {
                if !name.starts_with(prefix.as_str()) {
                    return Err(SecretError::NotFound(name.to_owned()));
                }
                std::env::var(name)
                    .map(|v| BTreeMap::from([(name.to_owned(), v)]))
                    .map_err(|_| SecretError::NotFound(name.to_owned()))
            }
        }
    }

    /// Every secret (Dapr's bulk get).
    pub fn bulk(&self) -> BTreeMap<String, Secret> {
        match self {
            SecretStore::File { secrets } => secrets.clone(),
            SecretStore::Env { prefix } => std::env::vars()
                .filter(|(k, _)| k.starts_with(prefix.as_str()))
                .map(|(k, v)| (k.clone(), BTreeMap::from([(k, v)])))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &str = r#"{"redisPassword":"pw","connectionStrings":{"sql":"s","mysql":{"main":"m"}},"port":6379}"#;

    fn store(multi: bool) -> SecretStore {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("s.json");
        std::fs::write(&f, JSON).unwrap();
        SecretStore::from_file(&f, ":", multi).unwrap()
    }

    #[test]
    fn name_value_semantics_flatten_with_the_separator() {
        let s = store(false);
        assert_eq!(
            s.get("connectionStrings:mysql:main").unwrap()["connectionStrings:mysql:main"],
            "m"
        );
        assert_eq!(s.get("port").unwrap()["port"], "6379");
        assert!(s.get("connectionStrings").is_err());
    }

    #[test]
    fn multi_valued_semantics_keep_one_level() {
        let s = store(true);
        let cs = s.get("connectionStrings").unwrap();
        assert_eq!(cs["sql"], "s");
        assert_eq!(cs["mysql:main"], "m");
        assert_eq!(s.get("redisPassword").unwrap()["redisPassword"], "pw");
    }
}
