//! Payload filters: a webhook may carry a `filter`, a JSON document matched
//! against the body that would be delivered (`event_type`, `event_id`,
//! `data`, `message`). An event it does not match is not delivered to that
//! webhook (and counted, `zen_forward_filtered_total`).
//!
//! The language, as other webhook gateways spell it:
//! - `{"event_type": "message.read"}`: a field equals a value (a field that
//!   is an array matches when one of its items equals it);
//! - `{"data": {"status": "failed"}}`: an object without operators matches
//!   nested fields;
//! - `{"message.campaign_id": "diwali"}`: a dotted path names nested fields;
//! - `{"data.errors.0.code": {"$in": [131026, 131047]}}`: operators on a
//!   field: `$eq $neq $in $nin $gt $gte $lt $lte $exist $regex $startsWith
//!   $endsWith $not` (several on one field must all hold);
//! - `{"$or": [..]}`, `{"$and": [..]}`, `{"$not": {..}}`: logic over filters.
//!
//! Matching is bounded: a filter is at most [`MAX_FILTER_BYTES`] and
//! [`MAX_DEPTH`] deep, a regex is compiled by the `regex` crate (no
//! backtracking: linear in the text) under a size limit.

use regex::Regex;
use serde_json::Value;

/// The largest filter, as JSON.
pub const MAX_FILTER_BYTES: usize = 8 * 1024;
/// The deepest nesting of objects, arrays and logic in a filter.
pub const MAX_DEPTH: usize = 8;
/// The compiled size a regex may take.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// Why a filter was refused (said in a 422 naming `filter`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("filter: {0}")]
pub struct FilterError(String);

fn refuse<T>(message: impl Into<String>) -> Result<T, FilterError> {
    Err(FilterError(message.into()))
}

/// A checked, compiled filter.
#[derive(Debug, Clone)]
pub struct Filter(Node);

#[derive(Debug, Clone)]
enum Node {
    All(Vec<Node>),
    Any(Vec<Node>),
    Not(Box<Node>),
    /// A field (by path) and what must hold of it.
    Field(Vec<String>, Cond),
}

#[derive(Debug, Clone)]
enum Cond {
    Eq(Value),
    Neq(Value),
    In(Vec<Value>),
    Nin(Vec<Value>),
    Cmp(std::cmp::Ordering, bool, Value),
    Exist(bool),
    Regex(Regex),
    StartsWith(String),
    EndsWith(String),
    Not(Box<Cond>),
    All(Vec<Cond>),
    /// An object without operators: its fields, nested.
    Nested(Box<Node>),
}

impl Filter {
    /// Checks and compiles a filter: an object, within the bounds, with
    /// known operators and valid regexes.
    pub fn compile(doc: &Value) -> Result<Filter, FilterError> {
        let size = serde_json::to_vec(doc)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > MAX_FILTER_BYTES {
            return refuse(format!("{size} bytes; at most {MAX_FILTER_BYTES}"));
        }
        let Value::Object(_) = doc else {
            return refuse("must be a JSON object");
        };
        node(doc, 1).map(Filter)
    }

    /// Whether the delivery body matches.
    pub fn matches(&self, body: &Value) -> bool {
        self.0.matches(body)
    }
}

fn node(doc: &Value, depth: usize) -> Result<Node, FilterError> {
    if depth > MAX_DEPTH {
        return refuse(format!("nested deeper than {MAX_DEPTH}"));
    }
    let Value::Object(map) = doc else {
        return refuse("a filter (or an item of $and / $or, or $not) must be an object");
    };
    let mut all = Vec::with_capacity(map.len());
    for (key, value) in map {
        all.push(match key.as_str() {
            "$and" | "$or" => {
                let Value::Array(items) = value else {
                    return refuse(format!("{key} takes an array of filters"));
                };
                if items.is_empty() {
                    return refuse(format!("{key} takes at least one filter"));
                }
                let nodes = items
                    .iter()
                    .map(|i| node(i, depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                if key == "$and" {
                    Node::All(nodes)
                } else {
                    Node::Any(nodes)
                }
            }
            "$not" => Node::Not(Box::new(node(value, depth + 1)?)),
            k if k.starts_with('$') => return refuse(format!("unknown operator {k}")),
            k if k.is_empty() || k.split('.').any(str::is_empty) => {
                return refuse(format!("{k:?} is not a field path"));
            }
            k => Node::Field(
                k.split('.').map(str::to_owned).collect(),
                cond(value, depth + 1)?,
            ),
        });
    }
    Ok(Node::All(all))
}

fn cond(value: &Value, depth: usize) -> Result<Cond, FilterError> {
    if depth > MAX_DEPTH {
        return refuse(format!("nested deeper than {MAX_DEPTH}"));
    }
    let Value::Object(map) = value else {
        return Ok(Cond::Eq(value.clone()));
    };
    let operators = map.keys().filter(|k| k.starts_with('$')).count();
    if operators == 0 {
        return Ok(Cond::Nested(Box::new(node(value, depth)?)));
    }
    if operators != map.len() {
        return refuse("operators and field names cannot be mixed in one object");
    }
    let mut all = Vec::with_capacity(map.len());
    for (op, arg) in map {
        let text = |what: &str| -> Result<String, FilterError> {
            arg.as_str()
                .map(str::to_owned)
                .ok_or_else(|| FilterError(format!("{op} takes {what}")))
        };
        let list = || -> Result<Vec<Value>, FilterError> {
            match arg {
                Value::Array(items) => Ok(items.clone()),
                _ => refuse(format!("{op} takes an array")),
            }
        };
        let scalar = || -> Result<Value, FilterError> {
            match arg {
                Value::Number(_) | Value::String(_) => Ok(arg.clone()),
                _ => refuse(format!("{op} takes a number or a string")),
            }
        };
        use std::cmp::Ordering::{Greater, Less};
        all.push(match op.as_str() {
            "$eq" => Cond::Eq(arg.clone()),
            "$neq" | "$ne" => Cond::Neq(arg.clone()),
            "$in" => Cond::In(list()?),
            "$nin" => Cond::Nin(list()?),
            "$gt" => Cond::Cmp(Greater, false, scalar()?),
            "$gte" => Cond::Cmp(Greater, true, scalar()?),
            "$lt" => Cond::Cmp(Less, false, scalar()?),
            "$lte" => Cond::Cmp(Less, true, scalar()?),
            "$exist" | "$exists" => match arg {
                Value::Bool(b) => Cond::Exist(*b),
                _ => return refuse(format!("{op} takes true or false")),
            },
            "$regex" => {
                let pattern = text("a regular expression")?;
                let re = regex::RegexBuilder::new(&pattern)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .dfa_size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| FilterError(format!("$regex {pattern:?}: {e}")))?;
                Cond::Regex(re)
            }
            "$startsWith" => Cond::StartsWith(text("a string")?),
            "$endsWith" => Cond::EndsWith(text("a string")?),
            "$not" => Cond::Not(Box::new(cond(arg, depth + 1)?)),
            other => return refuse(format!("unknown operator {other}")),
        });
    }
    Ok(if all.len() == 1 {
        all.pop().expect("one")
    } else {
        Cond::All(all)
    })
}

impl Node {
    fn matches(&self, v: &Value) -> bool {
        match self {
            Node::All(nodes) => nodes.iter().all(|n| n.matches(v)),
            Node::Any(nodes) => nodes.iter().any(|n| n.matches(v)),
            Node::Not(n) => !n.matches(v),
            Node::Field(path, c) => c.holds(lookup(v, path)),
        }
    }
}

/// The value at a dotted path (an array index is a number).
fn lookup<'a>(mut v: &'a Value, path: &[String]) -> Option<&'a Value> {
    for key in path {
        v = match v {
            Value::Object(m) => m.get(key)?,
            Value::Array(items) => items.get(key.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

/// Equal, numbers by value (`1` equals `1.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// Equal, or an array holding an equal item.
fn equals(field: &Value, want: &Value) -> bool {
    same(field, want) || matches!(field, Value::Array(items) if items.iter().any(|i| same(i, want)))
}

fn compare(field: &Value, want: &Value) -> Option<std::cmp::Ordering> {
    match (field, want) {
        (Value::Number(a), Value::Number(b)) => a.as_f64()?.partial_cmp(&b.as_f64()?),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

impl Cond {
    fn holds(&self, field: Option<&Value>) -> bool {
        match self {
            Cond::Exist(want) => field.is_some_and(|f| !f.is_null()) == *want,
            Cond::Not(c) => !c.holds(field),
            Cond::All(cs) => cs.iter().all(|c| c.holds(field)),
            Cond::Neq(want) => !field.is_some_and(|f| equals(f, want)),
            Cond::Nin(items) => !field.is_some_and(|f| items.iter().any(|i| equals(f, i))),
            _ => {
                let Some(f) = field else { return false };
                match self {
                    Cond::Eq(want) => equals(f, want),
                    Cond::In(items) => items.iter().any(|i| equals(f, i)),
                    Cond::Cmp(order, or_equal, want) => {
                        compare(f, want).is_some_and(|o| o == *order || (*or_equal && o.is_eq()))
                    }
                    Cond::Regex(re) => f.as_str().is_some_and(|s| re.is_match(s)),
                    Cond::StartsWith(p) => f.as_str().is_some_and(|s| s.starts_with(p.as_str())),
                    Cond::EndsWith(p) => f.as_str().is_some_and(|s| s.ends_with(p.as_str())),
                    Cond::Nested(n) => n.matches(f),
                    Cond::Exist(_) | Cond::Not(_) | Cond::All(_) | Cond::Neq(_) | Cond::Nin(_) => {
                        unreachable!("handled above")
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn body() -> Value {
        json!({
            "event_type": "message.failed",
            "event_id": "e-1",
            "data": {"status": "failed", "errors": [{"code": 131026, "title": "Message undeliverable"}],
                "tags": ["vip", "retry"]},
            "message": {"campaign_id": "diwali-2026", "current_status": "failed", "phone_number": "919800000001"},
        })
    }

    fn m(filter: Value) -> bool {
        Filter::compile(&filter).unwrap().matches(&body())
    }

    #[test]
    fn the_documented_examples_match() {
        // Only reads.
        assert!(!m(json!({"event_type": "message.read"})));
        // Only failures with a given error code.
        assert!(m(
            json!({"event_type": "message.failed", "data.errors.0.code": 131026})
        ));
        assert!(m(
            json!({"data": {"errors": {"$exist": true}}, "event_type": {"$in": ["message.failed"]}})
        ));
        // Only one campaign.
        assert!(m(json!({"message": {"campaign_id": "diwali-2026"}})));
        assert!(!m(json!({"message": {"campaign_id": "holi-2026"}})));
    }

    #[test]
    fn every_operator() {
        assert!(m(json!({"event_id": {"$eq": "e-1"}})));
        assert!(m(json!({"event_id": {"$neq": "e-2"}})));
        assert!(m(json!({"data.tags": "vip"})), "an array holds the value");
        assert!(m(json!({"data.tags": {"$nin": ["spam"]}})));
        assert!(m(
            json!({"data.errors.0.code": {"$gte": 131026, "$lt": 131027}})
        ));
        assert!(!m(json!({"data.errors.0.code": {"$gt": 131026}})));
        assert!(m(json!({"data.errors.0.code": {"$lte": 131026.0}})));
        assert!(m(json!({"message.missing": {"$exist": false}})));
        assert!(m(json!({"message.phone_number": {"$regex": "^9198"}})));
        assert!(m(
            json!({"message.campaign_id": {"$startsWith": "diwali", "$endsWith": "2026"}})
        ));
        assert!(m(
            json!({"message.campaign_id": {"$not": {"$startsWith": "holi"}}})
        ));
        assert!(m(
            json!({"$or": [{"event_type": "message.read"}, {"event_type": "message.failed"}]})
        ));
        assert!(!m(
            json!({"$and": [{"event_type": "message.failed"}, {"data.status": "sent"}]})
        ));
        assert!(m(json!({"$not": {"event_type": "message.read"}})));
        assert!(
            !m(json!({"data.errors.0.code": {"$gt": "a"}})),
            "types that do not compare never match"
        );
    }

    #[test]
    fn what_is_refused_names_the_filter() {
        for (bad, says) in [
            (json!([1]), "must be a JSON object"),
            (json!({"a": {"$like": 1}}), "unknown operator $like"),
            (json!({"$nor": []}), "unknown operator $nor"),
            (json!({"a": {"$regex": "("}}), "$regex"),
            (json!({"a": {"$in": 3}}), "$in takes an array"),
            (json!({"a": {"$eq": 1, "b": 2}}), "cannot be mixed"),
            (json!({"$or": []}), "at least one"),
            (json!({"a..b": 1}), "not a field path"),
        ] {
            let e = Filter::compile(&bad).unwrap_err().to_string();
            assert!(e.starts_with("filter: ") && e.contains(says), "{bad}: {e}");
        }
        let deep = (0..10).fold(json!(1), |v, _| json!({"a": v}));
        assert!(
            Filter::compile(&deep)
                .unwrap_err()
                .to_string()
                .contains("deeper")
        );
        let big = json!({"a": {"$in": vec!["x".repeat(100); 100]}});
        assert!(
            Filter::compile(&big)
                .unwrap_err()
                .to_string()
                .contains("bytes")
        );
        let huge_regex = json!({"a": {"$regex": "\\w{1000}{1000}"}});
        assert!(
            Filter::compile(&huge_regex).is_err(),
            "bounded compiled size"
        );
    }
}
