//! Reading YAML documents field by field, collecting *every* problem with its field path.
//!
//! serde stops at the first error and, on a `Value`, cannot say where it was. Manifests and
//! Resiliency files are small, so this crate walks the `serde_norway::Value` by hand instead: each
//! reader records an error and carries on, and [`Fields::finish`] reports unknown keys (typos such
//! as `maxRetry` would otherwise be silently ignored).

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde_norway::{Mapping, Value};

use crate::duration::parse_go_duration;

/// One problem found in a document, with the path of the field it concerns.
///
/// Displayed as `resource: path: message`, e.g.
/// `Capability/geocode: spec.offers[1].url: must be an absolute http:// or https:// URL`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The resource the field belongs to (`Capability/<name>`), when the error was found at a level
    /// where several resources are in play (an engine reload); `None` for single-document parsing,
    /// where the caller knows the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Dotted path of the field (`spec.offers[1].url`); empty for the document itself.
    pub path: String,
    /// What is wrong and, where it helps, what would be right.
    pub message: String,
}

impl FieldError {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            resource: None,
            path: path.into(),
            message: message.into(),
        }
    }

    /// The same problem, attributed to `resource` (e.g. `Capability/geocode`).
    pub fn in_resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(resource) = &self.resource {
            write!(f, "{resource}: ")?;
        }
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for FieldError {}

/// The errors collected while reading one document.
pub(crate) type Errors = Vec<FieldError>;

/// Path of `key` under `parent`.
pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// Path of item `index` of the sequence at `parent`.
pub(crate) fn index(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// A short name for the YAML type of `v`, for "must be a string, found a number" messages.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// The mapping at `path`, or an error.
pub(crate) fn mapping<'a>(v: &'a Value, path: &str, errs: &mut Errors) -> Option<&'a Mapping> {
    match v {
        Value::Mapping(m) => Some(m),
        other => {
            errs.push(FieldError::new(
                path,
                format!("must be a mapping, found {}", type_name(other)),
            ));
            None
        }
    }
}

/// The sequence at `path`, or an error.
pub(crate) fn sequence<'a>(v: &'a Value, path: &str, errs: &mut Errors) -> Option<&'a [Value]> {
    match v {
        Value::Sequence(s) => Some(s),
        other => {
            errs.push(FieldError::new(
                path,
                format!("must be a list, found {}", type_name(other)),
            ));
            None
        }
    }
}

/// A string, or an error at `path`.
pub(crate) fn string(v: &Value, path: &str, errs: &mut Errors) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        other => {
            errs.push(FieldError::new(
                path,
                format!("must be a string, found {}", type_name(other)),
            ));
            None
        }
    }
}

/// A scalar written as text: strings as they are, numbers and booleans in their YAML spelling
/// (header values such as `X-Version: 2` are natural to write unquoted).
pub(crate) fn scalar_string(v: &Value, path: &str, errs: &mut Errors) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        other => {
            errs.push(FieldError::new(
                path,
                format!("must be a string, found {}", type_name(other)),
            ));
            None
        }
    }
}

/// A Go-style duration string (`5s`, `500ms`, `1m30s`), or an error at `path`.
pub(crate) fn duration(v: &Value, path: &str, errs: &mut Errors) -> Option<Duration> {
    match v {
        Value::String(s) => match parse_go_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                errs.push(FieldError::new(path, e.to_string()));
                None
            }
        },
        Value::Number(n) => {
            errs.push(FieldError::new(
                path,
                format!("must be a duration with a unit, e.g. \"{n}s\" or \"{n}ms\""),
            ));
            None
        }
        other => {
            errs.push(FieldError::new(
                path,
                format!(
                    "must be a duration such as \"5s\" or \"500ms\", found {}",
                    type_name(other)
                ),
            ));
            None
        }
    }
}

/// The keys of one mapping, read one at a time; [`Fields::finish`] reports the keys never read.
pub(crate) struct Fields<'a> {
    /// The mapping being read.
    map: &'a Mapping,
    /// Its path, the prefix of every error.
    path: String,
    /// Keys read so far, to report the rest as unknown.
    known: Vec<&'static str>,
}

impl<'a> Fields<'a> {
    /// Starts reading the mapping at `path`; `None` (with an error) if `v` is not a mapping.
    pub(crate) fn new(v: &'a Value, path: &str, errs: &mut Errors) -> Option<Self> {
        mapping(v, path, errs).map(|map| Self {
            map,
            path: path.to_owned(),
            known: Vec::new(),
        })
    }

    /// Path of `key` in this mapping.
    pub(crate) fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The value of `key`; `None` when absent or null (YAML's `key:` with nothing after it).
    pub(crate) fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.known.push(key);
        match self.map.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    /// Like [`Fields::get`], with an error when the key is missing.
    pub(crate) fn required(&mut self, key: &'static str, errs: &mut Errors) -> Option<&'a Value> {
        let v = self.get(key);
        if v.is_none() {
            errs.push(FieldError::new(self.path(key), "is required"));
        }
        v
    }

    /// An optional string field.
    pub(crate) fn string(&mut self, key: &'static str, errs: &mut Errors) -> Option<String> {
        let path = self.path(key);
        self.get(key).and_then(|v| string(v, &path, errs))
    }

    /// A required string field.
    pub(crate) fn required_string(
        &mut self,
        key: &'static str,
        errs: &mut Errors,
    ) -> Option<String> {
        let path = self.path(key);
        self.required(key, errs)
            .and_then(|v| string(v, &path, errs))
    }

    /// An optional duration field.
    pub(crate) fn duration(&mut self, key: &'static str, errs: &mut Errors) -> Option<Duration> {
        let path = self.path(key);
        self.get(key).and_then(|v| duration(v, &path, errs))
    }

    /// An optional non-negative integer field.
    pub(crate) fn u64(&mut self, key: &'static str, errs: &mut Errors) -> Option<u64> {
        let path = self.path(key);
        let v = self.get(key)?;
        match v.as_u64() {
            Some(n) => Some(n),
            None => {
                errs.push(FieldError::new(
                    path,
                    format!("must be a non-negative integer, found {}", describe(v)),
                ));
                None
            }
        }
    }

    /// An optional integer field (negative allowed, as in Dapr's `maxRetries: -1`).
    pub(crate) fn i64(&mut self, key: &'static str, errs: &mut Errors) -> Option<i64> {
        let path = self.path(key);
        let v = self.get(key)?;
        match v.as_i64() {
            Some(n) => Some(n),
            None => {
                errs.push(FieldError::new(
                    path,
                    format!("must be an integer, found {}", describe(v)),
                ));
                None
            }
        }
    }

    /// An optional number field.
    pub(crate) fn f64(&mut self, key: &'static str, errs: &mut Errors) -> Option<f64> {
        let path = self.path(key);
        let v = self.get(key)?;
        match v.as_f64() {
            Some(n) if n.is_finite() => Some(n),
            _ => {
                errs.push(FieldError::new(
                    path,
                    format!("must be a number, found {}", describe(v)),
                ));
                None
            }
        }
    }

    /// Marks `key` as known without reading it (fields accepted for compatibility and ignored).
    pub(crate) fn ignore(&mut self, key: &'static str) {
        self.known.push(key);
    }

    /// Reports every key that no reader asked for, and non-string keys.
    pub(crate) fn finish(self, errs: &mut Errors) {
        for key in self.map.keys() {
            match key {
                Value::String(k) if self.known.contains(&k.as_str()) => {}
                Value::String(k) => {
                    let mut expected = self.known.clone();
                    expected.sort_unstable();
                    expected.dedup();
                    errs.push(FieldError::new(
                        join(&self.path, k),
                        format!("unknown field (expected one of: {})", expected.join(", ")),
                    ));
                }
                other => errs.push(FieldError::new(
                    self.path.clone(),
                    format!("keys must be strings, found {}", describe(other)),
                )),
            }
        }
    }
}

/// `v`'s type plus, for scalars, its value: `a string "abc"`, `a number 1.5`.
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("a string {s:?}"),
        Value::Number(n) => format!("a number {n}"),
        Value::Bool(b) => format!("a boolean {b}"),
        other => type_name(other).to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn doc(s: &str) -> Value {
        serde_norway::from_str(s).expect("test YAML parses")
    }

    #[test]
    fn collects_every_error_and_unknown_keys() {
        let v = doc("a: 5\nb: x\nc: 1m\nd: zz\nunexpected: 1\n");
        let mut errs = Vec::new();
        let mut f = Fields::new(&v, "spec", &mut errs).expect("a mapping");
        assert_eq!(f.string("a", &mut errs), None);
        assert_eq!(f.u64("b", &mut errs), None);
        assert_eq!(f.duration("c", &mut errs), Some(Duration::from_secs(60)));
        assert_eq!(f.duration("d", &mut errs), None);
        assert!(f.required("e", &mut errs).is_none());
        f.finish(&mut errs);
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["spec.a", "spec.b", "spec.d", "spec.e", "spec.unexpected"]
        );
        assert_eq!(
            errs[1].message,
            "must be a non-negative integer, found a string \"x\""
        );
    }

    #[test]
    fn display_includes_resource_and_path() {
        let e = FieldError::new("spec.offers[1].url", "bad").in_resource("Capability/x");
        assert_eq!(e.to_string(), "Capability/x: spec.offers[1].url: bad");
        assert_eq!(FieldError::new("", "empty").to_string(), "empty");
    }
}
