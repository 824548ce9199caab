//! The `json-validate` builtin: checks a JSON document against a JSON Schema.
//!
//! Input: `{"schema": {...}, "document": ...}`. Output (200 whether valid or not, so results can be
//! cached): `{"valid": true|false, "errors": [{"path": "/items/0", "keyword": "type", "message":
//! "..."}], "ignoredKeywords": [...]}`. At most 100 errors are listed. A schema edgecar cannot use
//! (a keyword with a value of the wrong type, a bad `pattern`, a `$ref` it cannot resolve) is a 400,
//! and so is a document that takes more than 200,000 (subschema, value) checks.
//!
//! Supported subset of draft 2020-12 — boolean schemas and: `type` (incl. `integer`, lists of
//! types), `enum`, `const`, `properties`, `required`, `additionalProperties`, `patternProperties`,
//! `minProperties`, `maxProperties`, `items`, `prefixItems`, `minItems`, `maxItems`,
//! `uniqueItems`, `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`, `multipleOf`,
//! `minLength`, `maxLength` (in code points), `pattern` (regex-lite syntax: no look-around or
//! backreferences), `allOf`, `anyOf`, `oneOf`, `not`, and `$ref` to a JSON pointer in the same
//! document (`#`, `#/$defs/x`). Annotations (`title`, `description`, `format`, ...) are accepted;
//! any other keyword is not checked and is listed in `ignoredKeywords`, so nobody mistakes an
//! unchecked constraint for a checked one.

use std::collections::{BTreeSet, HashMap};

use http::StatusCode;
use serde_json::{Map, Value, json};

use super::{bad_input, json_body, unknown_operation};
use crate::offer::{OfferRequest, UpstreamReply};

/// Most errors listed in a reply.
const MAX_ERRORS: usize = 100;
/// Deepest nesting of schemas (through `$ref` and subschemas) followed.
const MAX_DEPTH: usize = 64;
/// Longest `pattern` compiled.
const MAX_PATTERN: usize = 1024;
/// Most (subschema, value) checks for one document: a 10,000-reading batch against a schema of
/// ten properties is about 110,000. `$ref`s reused under `allOf`/`anyOf` can multiply a small
/// schema's work exponentially within [`MAX_DEPTH`]; past this bound the request is refused (a
/// 400) instead of holding a runtime thread for hours and collecting violations until memory runs
/// out (a builtin is not preempted by its timeout).
const MAX_STEPS: usize = 200_000;

/// Keywords that are checked.
const CHECKED: &[&str] = &[
    "type",
    "enum",
    "const",
    "properties",
    "required",
    "additionalProperties",
    "patternProperties",
    "minProperties",
    "maxProperties",
    "items",
    "prefixItems",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "$ref",
];

/// Keywords that carry no constraint, accepted silently.
const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$id",
    "$defs",
    "definitions",
    "$comment",
    "$anchor",
    "title",
    "description",
    "default",
    "examples",
    "deprecated",
    "readOnly",
    "writeOnly",
    "format",
    "contentEncoding",
    "contentMediaType",
];

/// Entry point (see the module doc).
pub(crate) fn handle(op: &str, req: &OfferRequest) -> UpstreamReply {
    if !matches!(op, "" | "validate") {
        return unknown_operation("json-validate", op, "validate");
    }
    let doc = match json_body(&req.body) {
        Ok(v) => v,
        Err(reply) => return reply,
    };
    let (Some(schema), Some(document)) = (doc.get("schema"), doc.get("document")) else {
        return bad_input("expected {\"schema\": {...}, \"document\": ...}");
    };
    match validate(schema, document) {
        Ok(report) => UpstreamReply::json(StatusCode::OK, &report),
        Err(msg) => bad_input(format!("invalid schema: {msg}")),
    }
}

/// One validation error.
struct Violation {
    /// JSON pointer into the document.
    path: String,
    /// The keyword that failed.
    keyword: &'static str,
    /// What is wrong.
    message: String,
}

/// Validation state for one document.
struct Validator<'s> {
    /// The root schema, for `$ref`.
    root: &'s Value,
    /// `pattern`s compiled so far; a pattern applied to every array item compiles once.
    regexes: HashMap<&'s str, regex_lite::Regex>,
    /// Keywords seen but not checked.
    ignored: BTreeSet<String>,
    /// Checks made so far, against [`MAX_STEPS`].
    steps: usize,
}

/// Validates `document` against `schema`: `Ok(report)`, or `Err` for a schema that cannot be used.
pub(crate) fn validate(schema: &Value, document: &Value) -> Result<Value, String> {
    let mut v = Validator {
        root: schema,
        regexes: HashMap::new(),
        ignored: BTreeSet::new(),
        steps: 0,
    };
    let mut errors = Vec::new();
    v.check(schema, document, "", 0, &mut errors)?;
    let listed: Vec<Value> = errors
        .iter()
        .take(MAX_ERRORS)
        .map(|e| json!({ "path": e.path, "keyword": e.keyword, "message": e.message }))
        .collect();
    let mut out = json!({ "valid": errors.is_empty(), "errors": listed });
    if let Some(o) = out.as_object_mut() {
        if errors.len() > MAX_ERRORS {
            o.insert("truncated".into(), json!(true));
        }
        if !v.ignored.is_empty() {
            o.insert("ignoredKeywords".into(), json!(v.ignored));
        }
    }
    Ok(out)
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if is_integer(n) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn is_integer(n: &serde_json::Number) -> bool {
    n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
}

fn has_type(v: &Value, t: &str) -> bool {
    match t {
        "number" => v.is_number(),
        other => type_of(v) == other,
    }
}

/// JSON equality where `1` equals `1.0`.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, a)| y.get(k).is_some_and(|b| json_eq(a, b)))
        }
        _ => a == b,
    }
}

/// `/a/b~1c` segments per RFC 6901.
fn pointer_child(path: &str, key: &str) -> String {
    format!("{path}/{}", key.replace('~', "~0").replace('/', "~1"))
}

fn num(schema: &Map<String, Value>, key: &str) -> Result<Option<f64>, String> {
    match schema.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("`{key}` must be a number")),
    }
}

fn count(schema: &Map<String, Value>, key: &str) -> Result<Option<usize>, String> {
    match schema.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|n| Some(usize::try_from(n).unwrap_or(usize::MAX)))
            .ok_or_else(|| format!("`{key}` must be a non-negative integer")),
    }
}

fn schema_list<'s>(schema: &'s Map<String, Value>, key: &str) -> Result<&'s [Value], String> {
    match schema.get(key) {
        None => Ok(&[]),
        Some(Value::Array(items)) if !items.is_empty() => Ok(items),
        Some(_) => Err(format!("`{key}` must be a non-empty list of schemas")),
    }
}

impl<'s> Validator<'s> {
    fn check(
        &mut self,
        schema: &'s Value,
        doc: &Value,
        path: &str,
        depth: usize,
        out: &mut Vec<Violation>,
    ) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "schemas nest deeper than {MAX_DEPTH} (a $ref loop?)"
            ));
        }
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return Err(format!(
                "checking this document takes more than {MAX_STEPS} steps \
                 (subschemas reused through $ref under allOf/anyOf/oneOf?)"
            ));
        }
        let s = match schema {
            Value::Bool(true) => return Ok(()),
            Value::Bool(false) => {
                out.push(Violation {
                    path: path.to_owned(),
                    keyword: "false",
                    message: "no value is allowed here".into(),
                });
                return Ok(());
            }
            Value::Object(s) => s,
            _ => return Err("a schema must be an object or a boolean".into()),
        };
        for key in s.keys() {
            if !CHECKED.contains(&key.as_str()) && !ANNOTATIONS.contains(&key.as_str()) {
                self.ignored.insert(key.clone());
            }
        }
        let mut fail = |keyword: &'static str, message: String| {
            out.push(Violation {
                path: path.to_owned(),
                keyword,
                message,
            });
        };

        if let Some(t) = s.get("type") {
            let types: Vec<&str> = match t {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts
                    .iter()
                    .map(|t| t.as_str().ok_or("`type` list must hold strings"))
                    .collect::<Result<_, _>>()?,
                _ => return Err("`type` must be a string or a list of strings".into()),
            };
            const TYPES: [&str; 7] = [
                "null", "boolean", "integer", "number", "string", "array", "object",
            ];
            if let Some(bad) = types.iter().find(|t| !TYPES.contains(t)) {
                return Err(format!(
                    "unknown type {bad:?} (types: {})",
                    TYPES.join(", ")
                ));
            }
            if !types.iter().any(|t| has_type(doc, t)) {
                fail(
                    "type",
                    format!("expected {}, found {}", types.join(" or "), type_of(doc)),
                );
            }
        }
        if let Some(e) = s.get("enum") {
            let options = e.as_array().ok_or("`enum` must be a list")?;
            if !options.iter().any(|o| json_eq(o, doc)) {
                fail("enum", format!("must be one of {e}"));
            }
        }
        if let Some(c) = s.get("const")
            && !json_eq(c, doc)
        {
            fail("const", format!("must be {c}"));
        }

        if let Value::Number(n) = doc {
            let x = n.as_f64().unwrap_or(f64::NAN);
            if let Some(m) = num(s, "minimum")?
                && x < m
            {
                fail("minimum", format!("must be >= {m}"));
            }
            if let Some(m) = num(s, "maximum")?
                && x > m
            {
                fail("maximum", format!("must be <= {m}"));
            }
            if let Some(m) = num(s, "exclusiveMinimum")?
                && x <= m
            {
                fail("exclusiveMinimum", format!("must be > {m}"));
            }
            if let Some(m) = num(s, "exclusiveMaximum")?
                && x >= m
            {
                fail("exclusiveMaximum", format!("must be < {m}"));
            }
            if let Some(m) = num(s, "multipleOf")? {
                if m <= 0.0 {
                    return Err("`multipleOf` must be positive".into());
                }
                let q = x / m;
                if (q - q.round()).abs() > 1e-9 {
                    fail("multipleOf", format!("must be a multiple of {m}"));
                }
            }
        }

        // Compiled whatever the document's type, so a broken pattern is reported every time.
        let pattern = match s.get("pattern") {
            None => None,
            Some(Value::String(p)) => Some(p.as_str()),
            Some(_) => return Err("`pattern` must be a string".into()),
        };
        if let Some(p) = pattern {
            self.regex(p)?;
        }

        if let Value::String(text) = doc {
            let len = text.chars().count();
            if let Some(m) = count(s, "minLength")?
                && len < m
            {
                fail("minLength", format!("must be at least {m} characters"));
            }
            if let Some(m) = count(s, "maxLength")?
                && len > m
            {
                fail("maxLength", format!("must be at most {m} characters"));
            }
            if let Some(p) = pattern
                && !self.regex(p)?.is_match(text)
            {
                fail("pattern", format!("must match {p:?}"));
            }
        }

        if let Value::Array(items) = doc {
            if let Some(m) = count(s, "minItems")?
                && items.len() < m
            {
                fail("minItems", format!("must have at least {m} items"));
            }
            if let Some(m) = count(s, "maxItems")?
                && items.len() > m
            {
                fail("maxItems", format!("must have at most {m} items"));
            }
            if s.get("uniqueItems") == Some(&Value::Bool(true)) {
                let dup = items
                    .iter()
                    .enumerate()
                    .find(|(i, a)| items[..*i].iter().any(|b| json_eq(a, b)));
                if let Some((i, _)) = dup {
                    fail("uniqueItems", format!("item {i} repeats an earlier item"));
                }
            }
            let prefix = match s.get("prefixItems") {
                None => &[][..],
                Some(Value::Array(p)) => p.as_slice(),
                Some(_) => return Err("`prefixItems` must be a list of schemas".into()),
            };
            for (i, item) in items.iter().enumerate() {
                let item_path = format!("{path}/{i}");
                let sub = match prefix.get(i) {
                    Some(sub) => Some(sub),
                    None => s.get("items"),
                };
                if let Some(sub) = sub {
                    self.check(sub, item, &item_path, depth + 1, out)?;
                }
            }
        }

        if let Value::Object(obj) = doc {
            if let Some(req) = s.get("required") {
                let req = req.as_array().ok_or("`required` must be a list")?;
                for name in req {
                    let name = name.as_str().ok_or("`required` must list strings")?;
                    if !obj.contains_key(name) {
                        out.push(Violation {
                            path: path.to_owned(),
                            keyword: "required",
                            message: format!("missing required property {name:?}"),
                        });
                    }
                }
            }
            if let Some(m) = count(s, "minProperties")?
                && obj.len() < m
            {
                out.push(Violation {
                    path: path.to_owned(),
                    keyword: "minProperties",
                    message: format!("must have at least {m} properties"),
                });
            }
            if let Some(m) = count(s, "maxProperties")?
                && obj.len() > m
            {
                out.push(Violation {
                    path: path.to_owned(),
                    keyword: "maxProperties",
                    message: format!("must have at most {m} properties"),
                });
            }
            let props = match s.get("properties") {
                None => None,
                Some(Value::Object(p)) => Some(p),
                Some(_) => return Err("`properties` must be an object".into()),
            };
            let pattern_props = match s.get("patternProperties") {
                None => None,
                Some(Value::Object(p)) => Some(p),
                Some(_) => return Err("`patternProperties` must be an object".into()),
            };
            for (key, value) in obj {
                let child = pointer_child(path, key);
                let mut matched = false;
                if let Some(sub) = props.and_then(|p| p.get(key)) {
                    matched = true;
                    self.check(sub, value, &child, depth + 1, out)?;
                }
                for (pattern, sub) in pattern_props.into_iter().flatten() {
                    if self.regex(pattern)?.is_match(key) {
                        matched = true;
                        self.check(sub, value, &child, depth + 1, out)?;
                    }
                }
                if !matched && let Some(additional) = s.get("additionalProperties") {
                    if additional == &Value::Bool(false) {
                        out.push(Violation {
                            path: child,
                            keyword: "additionalProperties",
                            message: format!("property {key:?} is not allowed"),
                        });
                    } else {
                        self.check(additional, value, &child, depth + 1, out)?;
                    }
                }
            }
        }

        for sub in schema_list(s, "allOf")? {
            self.check(sub, doc, path, depth + 1, out)?;
        }
        let any_of = schema_list(s, "anyOf")?;
        if !any_of.is_empty() {
            let mut passed = false;
            for sub in any_of {
                if self.passes(sub, doc, path, depth)? {
                    passed = true;
                    break;
                }
            }
            if !passed {
                out.push(Violation {
                    path: path.to_owned(),
                    keyword: "anyOf",
                    message: "matches none of the anyOf schemas".into(),
                });
            }
        }
        let one_of = schema_list(s, "oneOf")?;
        if !one_of.is_empty() {
            let mut passed = 0;
            for sub in one_of {
                if self.passes(sub, doc, path, depth)? {
                    passed += 1;
                }
            }
            if passed != 1 {
                out.push(Violation {
                    path: path.to_owned(),
                    keyword: "oneOf",
                    message: format!("matches {passed} of the oneOf schemas, not exactly one"),
                });
            }
        }
        if let Some(not) = s.get("not")
            && self.passes(not, doc, path, depth)?
        {
            out.push(Violation {
                path: path.to_owned(),
                keyword: "not",
                message: "must not match the `not` schema".into(),
            });
        }
        if let Some(r) = s.get("$ref") {
            let r = r.as_str().ok_or("`$ref` must be a string")?;
            let target = self.resolve(r)?;
            self.check(target, doc, path, depth + 1, out)?;
        }
        Ok(())
    }

    /// Whether `doc` passes `schema` (errors discarded).
    fn passes(
        &mut self,
        schema: &'s Value,
        doc: &Value,
        path: &str,
        depth: usize,
    ) -> Result<bool, String> {
        let mut scratch = Vec::new();
        self.check(schema, doc, path, depth + 1, &mut scratch)?;
        Ok(scratch.is_empty())
    }

    fn regex(&mut self, pattern: &'s str) -> Result<&regex_lite::Regex, String> {
        if !self.regexes.contains_key(pattern) {
            if pattern.len() > MAX_PATTERN {
                return Err(format!("pattern longer than {MAX_PATTERN} characters"));
            }
            let re =
                regex_lite::Regex::new(pattern).map_err(|e| format!("pattern {pattern:?}: {e}"))?;
            self.regexes.insert(pattern, re);
        }
        self.regexes
            .get(pattern)
            .ok_or_else(|| "pattern cache".to_owned())
    }

    /// A `$ref` within the document: `#` or `#/json/pointer`.
    fn resolve(&self, r: &str) -> Result<&'s Value, String> {
        let Some(pointer) = r.strip_prefix('#') else {
            return Err(format!(
                "$ref {r:?}: only references within the schema (\"#/...\") are supported"
            ));
        };
        self.root
            .pointer(pointer)
            .ok_or_else(|| format!("$ref {r:?} points to nothing"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::builtin::tests::request;

    fn check(schema: Value, document: Value) -> Value {
        validate(&schema, &document).unwrap()
    }

    fn keywords(report: &Value) -> Vec<String> {
        report["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["path"].as_str().unwrap(),
                    e["keyword"].as_str().unwrap()
                )
            })
            .collect()
    }

    /// A 2 KB request that held a thread for over five minutes (10^8 checks) before the step
    /// budget, found reviewing what the `http_request` fuzz target reaches and confirmed with its
    /// harness: ten `$ref`s to the level below under `allOf`, eight levels deep.
    #[test]
    fn reused_refs_cannot_multiply_the_work_without_bound() {
        let mut defs = serde_json::Map::new();
        defs.insert("d0".into(), json!({"type": "integer"}));
        for i in 1..=8 {
            let r = json!({ "$ref": format!("#/$defs/d{}", i - 1) });
            defs.insert(format!("d{i}"), json!({ "allOf": vec![r; 10] }));
        }
        let schema = json!({"$defs": defs, "$ref": "#/$defs/d8"});
        let started = std::time::Instant::now();
        let e = validate(&schema, &json!("not a number")).unwrap_err();
        assert!(e.contains("steps"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
        // Four levels (about 22,000 checks with the $refs) are still fine.
        let small = json!({"$defs": schema["$defs"], "$ref": "#/$defs/d4"});
        assert_eq!(check(small, json!(1))["valid"], json!(true));
    }

    #[test]
    fn a_typical_device_payload_schema() {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "required": ["device", "readings"],
            "additionalProperties": false,
            "properties": {
                "device": {"type": "string", "pattern": "^[a-z0-9-]+$", "maxLength": 16},
                "mode": {"enum": ["eco", "boost"]},
                "readings": {
                    "type": "array", "minItems": 1,
                    "items": {"$ref": "#/$defs/reading"}
                }
            },
            "$defs": {
                "reading": {
                    "type": "object", "required": ["value"],
                    "properties": {
                        "value": {"type": "number", "minimum": -40, "maximum": 125},
                        "ts": {"type": "integer", "exclusiveMinimum": 0}
                    }
                }
            }
        });
        let ok = check(
            schema.clone(),
            json!({"device": "pump-1", "mode": "eco", "readings": [{"value": 21.5, "ts": 17}]}),
        );
        assert_eq!(ok["valid"], true, "{ok}");
        assert!(ok.get("ignoredKeywords").is_none());

        let bad = check(
            schema,
            json!({"device": "Pump 1", "mode": "turbo", "extra": 1,
                   "readings": [{"value": 200}, {"ts": 1.5}]}),
        );
        assert_eq!(bad["valid"], false);
        let mut got = keywords(&bad);
        got.sort();
        assert_eq!(
            got,
            [
                "/device pattern",
                "/extra additionalProperties",
                "/mode enum",
                "/readings/0/value maximum",
                "/readings/1 required",
                "/readings/1/ts type",
            ]
        );
    }

    #[test]
    fn combinators_types_and_ignored_keywords() {
        let schema = json!({
            "oneOf": [{"type": "integer"}, {"type": "string", "minLength": 2}],
            "not": {"const": 13},
            "if": {"type": "string"}
        });
        assert_eq!(check(schema.clone(), json!(12))["valid"], true);
        assert_eq!(check(schema.clone(), json!(13))["valid"], false);
        assert_eq!(check(schema.clone(), json!("a"))["valid"], false);
        let r = check(schema, json!(1.0));
        assert_eq!(r["valid"], true, "1.0 is an integer in JSON Schema");
        assert_eq!(r["ignoredKeywords"], json!(["if"]));

        let r = check(
            json!({"type": "array", "uniqueItems": true, "prefixItems": [{"type": "string"}],
                   "items": {"type": "number"}, "maxItems": 3}),
            json!(["a", 1, 1.0, 2]),
        );
        assert_eq!(keywords(&r), [" maxItems", " uniqueItems"]);
    }

    #[test]
    fn unusable_schemas_are_400() {
        for schema in [
            json!({"type": 5}),
            json!({"type": "strnig"}),
            json!({"pattern": "("}),
            json!({"$ref": "#/$defs/missing"}),
            json!({"$ref": "https://example.com/schema"}),
            json!({"$ref": "#"}),
            json!({"minimum": "5"}),
        ] {
            let body = json!({"schema": schema, "document": 5}).to_string();
            let reply = handle("", &request("", body.as_bytes()));
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{schema}");
        }
        let reply = handle("", &request("", b"{\"document\": 1}"));
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        let reply = handle(
            "validate",
            &request("validate", b"{\"schema\": true, \"document\": 1}"),
        );
        assert_eq!(reply.status, StatusCode::OK);
    }
}
