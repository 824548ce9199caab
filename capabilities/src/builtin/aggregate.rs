//! The `aggregate` builtin: statistics over sensor readings.
//!
//! Input (POST body), any of:
//!
//! - `[21.5, 22.0, 22.4]`: plain numbers;
//! - `{"values": [21.5, 22.0]}`;
//! - `{"readings": [{"value": 21.5, "ts": 1700000000, "sensor": "a"}, ...], "groupBy": "sensor",
//!   "field": "value", "percentiles": [50, 95]}` — `field` (default `value`) names the number in
//!   each reading (a reading may also be a bare number), `groupBy` (optional) adds per-group
//!   statistics, `percentiles` (default 50, 90, 99) picks the percentiles.
//!
//! Output: `{"count", "sum", "min", "max", "mean", "stddev", "p50", "p90", "p99"}` plus
//! `firstTs`/`lastTs` (smallest and largest `ts`, numbers or same-format strings such as RFC 3339)
//! when readings carry them; with `groupBy`, `{"overall": {...}, "groups": {"a": {...}, ...}}`.
//! `stddev` is the population standard deviation; percentiles interpolate linearly between the
//! closest ranks (NumPy's default). With no values, `count` is 0 and the rest are null.

use std::collections::BTreeMap;

use http::StatusCode;
use serde_json::{Map, Value, json};

use super::{bad_input, json_body, unknown_operation};
use crate::offer::{OfferRequest, UpstreamReply};

/// Default percentiles reported.
const DEFAULT_PERCENTILES: [f64; 3] = [50.0, 90.0, 99.0];

/// Entry point (see the module doc).
pub(crate) fn handle(op: &str, req: &OfferRequest) -> UpstreamReply {
    if !matches!(op, "" | "summary") {
        return unknown_operation("aggregate", op, "summary");
    }
    let doc = match json_body(&req.body) {
        Ok(v) => v,
        Err(reply) => return reply,
    };
    match aggregate(&doc) {
        Ok(v) => UpstreamReply::json(StatusCode::OK, &v),
        Err(msg) => bad_input(msg),
    }
}

/// Values and timestamps of one group.
#[derive(Default)]
struct Series {
    /// The numbers.
    values: Vec<f64>,
    /// Smallest `ts` seen.
    first_ts: Option<Value>,
    /// Largest `ts` seen.
    last_ts: Option<Value>,
}

impl Series {
    fn push(&mut self, value: f64, ts: Option<&Value>) {
        self.values.push(value);
        let Some(ts) = ts.filter(|t| t.is_number() || t.is_string()) else {
            return;
        };
        if self.first_ts.as_ref().is_none_or(|f| ts_less(ts, f)) {
            self.first_ts = Some(ts.clone());
        }
        if self.last_ts.as_ref().is_none_or(|l| ts_less(l, ts)) {
            self.last_ts = Some(ts.clone());
        }
    }

    fn summary(mut self, percentiles: &[f64]) -> Value {
        let mut out = Map::new();
        let n = self.values.len();
        out.insert("count".into(), json!(n));
        self.values.sort_by(f64::total_cmp);
        let v = &self.values;
        let (sum, mean, stddev) = if n == 0 {
            (None, None, None)
        } else {
            let sum: f64 = v.iter().sum();
            let mean = sum / n as f64;
            let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
            (Some(sum), Some(mean), Some(var.sqrt()))
        };
        out.insert("sum".into(), json!(sum));
        out.insert("min".into(), json!(v.first()));
        out.insert("max".into(), json!(v.last()));
        out.insert("mean".into(), json!(mean));
        out.insert("stddev".into(), json!(stddev));
        for p in percentiles {
            out.insert(percentile_name(*p), json!(percentile(v, *p)));
        }
        if let Some(f) = self.first_ts {
            out.insert("firstTs".into(), f);
        }
        if let Some(l) = self.last_ts {
            out.insert("lastTs".into(), l);
        }
        Value::Object(out)
    }
}

/// Orders timestamps of the same kind; numbers and strings never compare.
fn ts_less(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x.as_f64().unwrap_or(f64::NAN) < y.as_f64().unwrap_or(f64::NAN)
        }
        (Value::String(x), Value::String(y)) => x < y,
        _ => false,
    }
}

/// `p50`, `p99.9`.
fn percentile_name(p: f64) -> String {
    format!("p{p}")
}

/// Linear interpolation between closest ranks of the sorted `v`.
fn percentile(v: &[f64], p: f64) -> Option<f64> {
    let last = v.len().checked_sub(1)?;
    let rank = p / 100.0 * last as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let (a, b) = (v[lo.min(last)], v[hi.min(last)]);
    Some(a + (b - a) * (rank - lo as f64))
}

fn aggregate(doc: &Value) -> Result<Value, String> {
    let (items, field, group_by, percentiles) = match doc {
        Value::Array(items) => (items, "value", None, DEFAULT_PERCENTILES.to_vec()),
        Value::Object(o) => {
            let items = match (o.get("readings"), o.get("values")) {
                (Some(Value::Array(r)), None) => r,
                (None, Some(Value::Array(v))) => v,
                _ => {
                    return Err(
                        "expected a list of numbers, {\"values\": [...]} or {\"readings\": [...]}"
                            .into(),
                    );
                }
            };
            let field = match o.get("field") {
                None => "value",
                Some(Value::String(f)) => f.as_str(),
                Some(_) => return Err("`field` must be a string".into()),
            };
            let group_by = match o.get("groupBy") {
                None | Some(Value::Null) => None,
                Some(Value::String(g)) => Some(g.as_str()),
                Some(_) => return Err("`groupBy` must be a string".into()),
            };
            let percentiles = match o.get("percentiles") {
                None => DEFAULT_PERCENTILES.to_vec(),
                Some(Value::Array(ps)) => ps
                    .iter()
                    .map(|p| {
                        p.as_f64()
                            .filter(|p| (0.0..=100.0).contains(p))
                            .ok_or("`percentiles` must be numbers from 0 to 100")
                    })
                    .collect::<Result<_, _>>()?,
                Some(_) => return Err("`percentiles` must be a list".into()),
            };
            (items, field, group_by, percentiles)
        }
        _ => return Err("expected a list or an object".into()),
    };

    let mut overall = Series::default();
    let mut groups: BTreeMap<String, Series> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let (value, ts, group) = match item {
            Value::Number(n) => (n.as_f64(), None, None),
            Value::Object(o) => (
                o.get(field).and_then(Value::as_f64),
                o.get("ts"),
                group_by.map(|g| group_key(o.get(g))),
            ),
            _ => (None, None, None),
        };
        let Some(value) = value.filter(|v| v.is_finite()) else {
            return Err(format!(
                "item {i}: expected a number or an object with a numeric {field:?}"
            ));
        };
        overall.push(value, ts);
        if let Some(g) = group {
            groups.entry(g).or_default().push(value, ts);
        }
    }
    let summary = overall.summary(&percentiles);
    if group_by.is_none() {
        return Ok(summary);
    }
    let groups: Map<String, Value> = groups
        .into_iter()
        .map(|(k, s)| (k, s.summary(&percentiles)))
        .collect();
    Ok(json!({ "overall": summary, "groups": groups }))
}

/// A reading's group: strings as they are, other values in their JSON spelling, missing as
/// `null`.
fn group_key(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "null".into(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::builtin::tests::request;

    fn run(body: &str) -> (StatusCode, Value) {
        let reply = handle("", &request("", body.as_bytes()));
        (reply.status, serde_json::from_slice(&reply.body).unwrap())
    }

    #[test]
    fn plain_numbers() {
        let (status, v) = run("[1, 2, 3, 4]");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["count"], 4);
        assert_eq!(v["sum"], 10.0);
        assert_eq!(v["min"], 1.0);
        assert_eq!(v["max"], 4.0);
        assert_eq!(v["mean"], 2.5);
        assert!((v["stddev"].as_f64().unwrap() - 1.118_033_988_749_895).abs() < 1e-12);
        assert_eq!(v["p50"], 2.5);
        assert!((v["p90"].as_f64().unwrap() - 3.7).abs() < 1e-12);
    }

    #[test]
    fn readings_grouped_with_timestamps() {
        let (status, v) = run(r#"{"readings": [
                {"value": 20, "ts": 3, "sensor": "a"},
                {"value": 22, "ts": 1, "sensor": "a"},
                {"value": 5, "ts": 2, "sensor": "b"}
              ], "groupBy": "sensor", "percentiles": [50]}"#);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["overall"]["count"], 3);
        assert_eq!(v["overall"]["firstTs"], 1);
        assert_eq!(v["overall"]["lastTs"], 3);
        assert_eq!(v["groups"]["a"]["mean"], 21.0);
        assert_eq!(v["groups"]["a"]["p50"], 21.0);
        assert_eq!(v["groups"]["b"]["max"], 5.0);
        assert!(v["groups"]["a"].get("p90").is_none());
    }

    #[test]
    fn empty_and_bad_input() {
        let (status, v) = run(r#"{"values": []}"#);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["count"], 0);
        assert!(v["mean"].is_null());

        let (status, v) = run(r#"{"readings": [{"value": "hot"}]}"#);
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(v["errorCode"], "ERR_MALFORMED_REQUEST");
        assert!(v["message"].as_str().unwrap().contains("item 0"));

        let (status, _) = run("not json");
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let reply = handle("median", &request("median", b"[1]"));
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
    }
}
