//! Small helpers for reading provider JSON defensively: every field may be
//! missing, null, or of another type than documented.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;

/// The value at `path`, if every step exists.
pub fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, key| cur.get(key))
}

/// A scalar at `path` as a trimmed, non-empty string (numbers and booleans
/// are accepted: providers are inconsistent about ids and codes).
pub fn text(v: &Value, path: &[&str]) -> Option<String> {
    let s = match at(v, path)? {
        Value::String(s) => s.trim().to_owned(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    (!s.is_empty()).then_some(s)
}

/// A provider timestamp: epoch seconds or milliseconds (number or numeric
/// string, told apart by magnitude) or an RFC 3339 string.
pub fn time(v: &Value) -> Option<DateTime<Utc>> {
    let from_number = |n: f64| -> Option<DateTime<Utc>> {
        if !n.is_finite() || n <= 0.0 {
            return None;
        }
        // Anything past ~Sat Mar 03 5138 in seconds is taken as milliseconds.
        let ms = if n >= 1e11 { n } else { n * 1000.0 };
        if ms > 8.0e15 {
            return None;
        }
        Utc.timestamp_millis_opt(ms as i64).single()
    };
    match v {
        Value::Number(n) => n.as_f64().and_then(from_number),
        Value::String(s) => {
            let s = s.trim();
            if let Ok(n) = s.parse::<f64>() {
                return from_number(n);
            }
            DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| t.with_timezone(&Utc))
        }
        _ => None,
    }
}

/// The raw string form of a timestamp field, for dedup keys.
pub fn raw_scalar(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// The dedup key of a status event within its message: its raw status
/// (any case) and the provider's time as sent, so the same report twice is
/// one event and the same status at another time is another.
pub fn status_key(raw_status: Option<&str>, time: Option<&Value>) -> String {
    format!(
        "{}|{}",
        raw_status.unwrap_or("").to_ascii_lowercase(),
        raw_scalar(time)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times_in_seconds_milliseconds_and_rfc3339_agree() {
        let expect = Utc.timestamp_opt(1_749_540_007, 0).unwrap();
        assert_eq!(time(&json!(1_749_540_007_000_i64)), Some(expect));
        assert_eq!(time(&json!(1_749_540_007)), Some(expect));
        assert_eq!(time(&json!("1749540007")), Some(expect));
        assert_eq!(time(&json!("2025-06-10T07:20:07Z")), Some(expect));
        assert_eq!(time(&json!(-1)), None);
        assert_eq!(time(&json!(1e300)), None);
        assert_eq!(time(&json!("soon")), None);
    }

    #[test]
    fn text_accepts_numbers_and_skips_blanks() {
        let v = json!({"a": {"b": 131026, "c": "  ", "d": " x "}});
        assert_eq!(text(&v, &["a", "b"]).as_deref(), Some("131026"));
        assert_eq!(text(&v, &["a", "c"]), None);
        assert_eq!(text(&v, &["a", "d"]).as_deref(), Some("x"));
        assert_eq!(text(&v, &["a", "zz", "b"]), None);
    }
}
