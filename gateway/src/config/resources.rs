//! Dapr resource files: the directories named by `--resources-path`.
//!
//! Each `*.yaml`/`*.yml` file may hold several documents (`---`); each document is dispatched by
//! its `kind`. `Component` documents are read here into [`Component`]s, checked field by field
//! with every error reported. Documents of other kinds are kept, unparsed, for the features that
//! own them (subscriptions, resiliency, capabilities), so this loader never has to change when one
//! arrives. Components scoped to other app ids are left out, as Dapr does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_norway::Value;

use super::ConfigError;
use super::units::parse_duration;

/// Largest resource file read; anything bigger is almost certainly not a resource file.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Where a component's metadata value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaValue {
    /// `value:` given in the file.
    Plain(String),
    /// `secretKeyRef:` resolved through a secret store at load time.
    SecretRef {
        /// Secret name.
        name: String,
        /// Key inside the secret; defaults to the secret name, as in Dapr.
        key: String,
    },
}

/// One `spec.metadata` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataItem {
    /// Field name (`redisHost`, `keyPrefix`, ...).
    pub name: String,
    /// Its value or a reference to one.
    pub value: MetaValue,
}

/// A Dapr `Component` document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// `metadata.name`: how the API addresses it (`/v1.0/state/<name>`).
    pub name: String,
    /// `spec.type`, e.g. `state.redis`; chooses the implementation.
    pub type_name: String,
    /// `spec.version`, e.g. `v1`.
    pub version: String,
    /// `spec.metadata`.
    pub metadata: Vec<MetadataItem>,
    /// `spec.ignoreErrors`: start without this component if it fails to initialise.
    pub ignore_errors: bool,
    /// `spec.initTimeout`: how long initialisation may take.
    pub init_timeout: Duration,
    /// `auth.secretStore`: where `secretKeyRef`s are resolved.
    pub secret_store: Option<String>,
    /// Where it was read from, for error messages.
    pub source: PathBuf,
}

impl Component {
    /// A plain metadata value by name (secret references are not resolved here).
    pub fn meta(&self, name: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|m| m.name == name)
            .and_then(|m| match &m.value {
                MetaValue::Plain(v) => Some(v.as_str()),
                MetaValue::SecretRef { .. } => None,
            })
    }
}

/// A resource document of a kind this loader does not read itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Its `kind`.
    pub kind: String,
    /// The whole document.
    pub value: Value,
    /// Where it was read from.
    pub source: PathBuf,
}

/// Everything read from the resource directories.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    /// Components in scope for this app id.
    pub components: Vec<Component>,
    /// Documents of other kinds, for the features that own them.
    pub documents: Vec<Document>,
    /// Components left out because their `scopes` do not name this app id.
    pub out_of_scope: Vec<String>,
}

/// Reads every resource directory; returns what loaded and every error found.
pub fn load(paths: &[PathBuf], app_id: &str) -> (Resources, Vec<ConfigError>) {
    let mut res = Resources::default();
    let mut errors = Vec::new();
    for dir in paths {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                errors.push(ConfigError::new(
                    dir,
                    "",
                    format!("cannot read resources directory: {e}"),
                ));
                continue;
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml"))
            })
            .collect();
        files.sort();
        for file in files {
            load_file(&file, app_id, &mut res, &mut errors);
        }
    }
    let mut seen = std::collections::HashMap::new();
    for c in &res.components {
        if let Some(first) = seen.insert(c.name.clone(), c.source.clone()) {
            errors.push(ConfigError::new(
                &c.source,
                "metadata.name",
                format!(
                    "component {:?} is also defined in {}; names must be unique",
                    c.name,
                    first.display()
                ),
            ));
        }
    }
    (res, errors)
}

/// Reads one resource file into `res` (a Dapr `Configuration` given with `--config` too).
pub fn load_file(file: &Path, app_id: &str, res: &mut Resources, errors: &mut Vec<ConfigError>) {
    match std::fs::metadata(file) {
        Ok(m) if m.len() > MAX_FILE_BYTES => {
            errors.push(ConfigError::new(file, "", "file is larger than 1 MiB"));
            return;
        }
        Ok(_) => {}
        Err(e) => {
            errors.push(ConfigError::new(file, "", format!("cannot read: {e}")));
            return;
        }
    }
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            errors.push(ConfigError::new(file, "", format!("cannot read: {e}")));
            return;
        }
    };
    // The document iterator repeats a syntax error forever, so stop at the first one.
    let mut docs: Vec<Result<Value, String>> = Vec::new();
    for d in serde_norway::Deserializer::from_str(&text) {
        let doc = Value::deserialize(d).map_err(|e| e.to_string());
        let failed = doc.is_err();
        docs.push(doc);
        if failed {
            break;
        }
    }
    let many = docs.len() > 1;
    for (i, doc) in docs.into_iter().enumerate() {
        let source = if many {
            PathBuf::from(format!("{}#{}", file.display(), i + 1))
        } else {
            file.to_path_buf()
        };
        let doc = match doc {
            Ok(Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                errors.push(ConfigError::new(&source, "", format!("invalid YAML: {e}")));
                break;
            }
        };
        let kind = doc
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        match kind.as_str() {
            "Component" => {
                let mut doc_errors = Vec::new();
                let comp = parse_component(&doc, &source, &mut doc_errors);
                let scopes = string_list(&doc, "scopes", &source, &mut doc_errors);
                errors.extend(doc_errors);
                if let Some(c) = comp {
                    if scopes.is_empty() || scopes.iter().any(|s| s == app_id) {
                        res.components.push(c);
                    } else {
                        res.out_of_scope.push(c.name);
                    }
                }
            }
            // A Dapr or edgecar resource without its kind is a mistake; any other YAML (a compose
            // file, a multi-app run file) is not a resource at all and is left alone, as daprd
            // does.
            "" if is_resource_api(&doc) => errors.push(ConfigError::new(
                &source,
                "kind",
                "missing; expected e.g. Component",
            )),
            _ => res.documents.push(Document {
                kind,
                value: doc,
                source,
            }),
        }
    }
}

/// Whether `doc` says it is a Dapr or edgecar resource (`apiVersion: dapr.io/...` or
/// `edgecar.io/...`).
fn is_resource_api(doc: &Value) -> bool {
    doc.get("apiVersion")
        .and_then(Value::as_str)
        .is_some_and(|v| v.starts_with("dapr.io/") || v.starts_with("edgecar.io/"))
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

fn required_str(
    v: Option<&Value>,
    field: &str,
    source: &Path,
    errors: &mut Vec<ConfigError>,
) -> Option<String> {
    match v.and_then(Value::as_str) {
        Some(s) if !s.trim().is_empty() => Some(s.to_owned()),
        Some(_) => {
            errors.push(ConfigError::new(source, field, "must not be empty"));
            None
        }
        None => {
            errors.push(ConfigError::new(
                source,
                field,
                "required string is missing",
            ));
            None
        }
    }
}

fn string_list(
    doc: &Value,
    field: &str,
    source: &Path,
    errors: &mut Vec<ConfigError>,
) -> Vec<String> {
    match doc.get(field) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Sequence(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                let s = v.as_str().map(str::to_owned);
                if s.is_none() {
                    errors.push(ConfigError::new(
                        source,
                        format!("{field}[{i}]"),
                        "must be a string",
                    ));
                }
                s
            })
            .collect(),
        Some(_) => {
            errors.push(ConfigError::new(source, field, "must be a list of strings"));
            Vec::new()
        }
    }
}

/// Component names appear in URL paths and metric labels.
fn validate_component_name(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err("must be at most 253 characters".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "{name:?} may contain only letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

fn parse_component(doc: &Value, source: &Path, errors: &mut Vec<ConfigError>) -> Option<Component> {
    let before = errors.len();
    match doc.get("apiVersion").and_then(Value::as_str) {
        Some("dapr.io/v1alpha1") => {}
        Some(other) => errors.push(ConfigError::new(
            source,
            "apiVersion",
            format!("{other:?} is not supported; expected dapr.io/v1alpha1"),
        )),
        None => errors.push(ConfigError::new(
            source,
            "apiVersion",
            "required; expected dapr.io/v1alpha1",
        )),
    }
    let name = required_str(
        doc.get("metadata").and_then(|m| m.get("name")),
        "metadata.name",
        source,
        errors,
    );
    if let Some(n) = &name
        && let Err(m) = validate_component_name(n)
    {
        errors.push(ConfigError::new(source, "metadata.name", m));
    }
    let spec = doc.get("spec");
    if spec.is_none() {
        errors.push(ConfigError::new(
            source,
            "spec",
            "required mapping is missing",
        ));
    }
    let type_name = required_str(
        spec.and_then(|s| s.get("type")),
        "spec.type",
        source,
        errors,
    );
    let version = required_str(
        spec.and_then(|s| s.get("version")),
        "spec.version",
        source,
        errors,
    );
    let ignore_errors = match spec.and_then(|s| s.get("ignoreErrors")) {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if s == "true" || s == "false" => s == "true",
        Some(_) => {
            errors.push(ConfigError::new(
                source,
                "spec.ignoreErrors",
                "must be true or false",
            ));
            false
        }
    };
    let init_timeout = match spec.and_then(|s| s.get("initTimeout")) {
        None | Some(Value::Null) => Duration::from_secs(5),
        Some(v) => match v.as_str().map(parse_duration) {
            Some(Ok(d)) => d,
            Some(Err(m)) => {
                errors.push(ConfigError::new(source, "spec.initTimeout", m));
                Duration::from_secs(5)
            }
            None => {
                errors.push(ConfigError::new(
                    source,
                    "spec.initTimeout",
                    "must be a duration such as 5s",
                ));
                Duration::from_secs(5)
            }
        },
    };
    let mut metadata = Vec::new();
    match spec.and_then(|s| s.get("metadata")) {
        None | Some(Value::Null) => {}
        Some(Value::Sequence(items)) => {
            for (i, item) in items.iter().enumerate() {
                let field = format!("spec.metadata[{i}]");
                let Some(n) =
                    required_str(item.get("name"), &format!("{field}.name"), source, errors)
                else {
                    continue;
                };
                let value = match (item.get("value"), item.get("secretKeyRef")) {
                    (Some(_), Some(_)) => {
                        errors.push(ConfigError::new(
                            source,
                            &field,
                            "has both value and secretKeyRef; give one",
                        ));
                        continue;
                    }
                    (None, None) => MetaValue::Plain(String::new()),
                    (Some(v), None) => match scalar_string(v) {
                        Some(s) => MetaValue::Plain(s),
                        None => {
                            errors.push(ConfigError::new(
                                source,
                                format!("{field}.value"),
                                "must be a string, number or boolean",
                            ));
                            continue;
                        }
                    },
                    (None, Some(r)) => {
                        let Some(sname) = required_str(
                            r.get("name"),
                            &format!("{field}.secretKeyRef.name"),
                            source,
                            errors,
                        ) else {
                            continue;
                        };
                        let key = r
                            .get("key")
                            .and_then(Value::as_str)
                            .filter(|k| !k.is_empty())
                            .unwrap_or(&sname)
                            .to_owned();
                        MetaValue::SecretRef { name: sname, key }
                    }
                };
                metadata.push(MetadataItem { name: n, value });
            }
        }
        Some(_) => errors.push(ConfigError::new(
            source,
            "spec.metadata",
            "must be a list of {name, value} or {name, secretKeyRef} entries",
        )),
    }
    let secret_store = doc
        .get("auth")
        .and_then(|a| a.get("secretStore"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    if errors.len() > before {
        return None;
    }
    Some(Component {
        name: name?,
        type_name: type_name?,
        version: version?,
        metadata,
        ignore_errors,
        init_timeout,
        secret_store,
        source: source.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn reads_dapr_component_files_unchanged() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "statestore.yaml",
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\nspec:\n  type: state.redis\n  version: v1\n  metadata:\n  - name: redisHost\n    value: localhost:6379\n  - name: redisPassword\n    value: \"\"\n  - name: actorStateStore\n    value: \"true\"\n  - name: redisDB\n    value: 2\n",
        );
        let (res, errs) = load(&[d.path().to_path_buf()], "app");
        assert!(errs.is_empty(), "{errs:?}");
        let c = &res.components[0];
        assert_eq!(c.type_name, "state.redis");
        assert_eq!(c.meta("redisHost"), Some("localhost:6379"));
        assert_eq!(c.meta("redisDB"), Some("2"));
    }

    #[test]
    fn every_error_in_every_document_is_reported() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "bad.yaml",
            "apiVersion: dapr.io/v1\nkind: Component\nmetadata:\n  name: a/b\nspec:\n  version: v1\n  metadata:\n  - value: x\n---\nkind: Component\napiVersion: dapr.io/v1alpha1\nmetadata:\n  name: ok\nspec:\n  type: state.in-memory\n  version: v1\n  initTimeout: soon\n",
        );
        let (_, errs) = load(&[d.path().to_path_buf()], "app");
        let got: Vec<String> = errs.iter().map(|e| e.field.clone()).collect();
        assert_eq!(
            got,
            [
                "apiVersion",
                "metadata.name",
                "spec.type",
                "spec.metadata[0].name",
                "spec.initTimeout"
            ],
            "{errs:?}"
        );
        assert!(errs[0].file.to_string_lossy().ends_with("bad.yaml#1"));
        assert!(errs[4].file.to_string_lossy().ends_with("bad.yaml#2"));
    }

    #[test]
    fn a_yaml_syntax_error_is_reported_not_looped_on() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "broken.yaml",
            "kind: Component\nspec:\n  metadata:\n  []\n",
        );
        let (res, errs) = load(&[d.path().to_path_buf()], "app");
        assert!(res.components.is_empty());
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].message.starts_with("invalid YAML"), "{}", errs[0]);
    }

    #[test]
    fn scopes_leave_out_other_apps_components() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "s.yaml",
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: s\nspec:\n  type: state.in-memory\n  version: v1\nscopes:\n- other\n",
        );
        let (res, errs) = load(&[d.path().to_path_buf()], "app");
        assert!(errs.is_empty());
        assert!(res.components.is_empty());
        assert_eq!(res.out_of_scope, ["s"]);
    }
}
