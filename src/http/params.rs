//! The admin API's query values, read once for every route: a page size,
//! a provider, a status, a time. Each comes in as text so that a refusal is
//! the API's JSON 400 naming the parameter, and each bound here is the one
//! the OpenAPI document states (`#[param(...)]` on the fields).

use chrono::{DateTime, Utc};

use crate::error::ApiError;
use crate::model::{Bsp, Status};

/// A page's size when none is asked for.
pub const DEFAULT_PAGE: usize = 50;
/// The largest page any list serves.
pub const MAX_PAGE: usize = 500;

/// A free-text filter: empty is the same as absent.
pub fn given(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

/// `limit`: a whole number from 1 to [`MAX_PAGE`] (`5.0` is five, as JSON
/// Schema counts integers); absent is [`DEFAULT_PAGE`].
pub fn page_limit(v: Option<String>) -> Result<usize, ApiError> {
    let Some(text) = v else {
        return Ok(DEFAULT_PAGE);
    };
    let whole = text.parse::<usize>().ok().or_else(|| {
        text.parse::<f64>()
            .ok()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= MAX_PAGE as f64)
            .map(|f| f as usize)
    });
    match whole {
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        _ => Err(ApiError::BadRequest(format!(
            "limit: must be a whole number from 1 to {MAX_PAGE}, got {text:?}"
        ))),
    }
}

/// A provider, by the name in its route (`datagen`, `meta`, …).
pub fn provider(field: &str, v: Option<String>) -> Result<Option<Bsp>, ApiError> {
    v.map(|name| {
        Bsp::parse(&name).ok_or_else(|| {
            let known: Vec<&str> = Bsp::ALL.iter().map(|b| b.as_str()).collect();
            ApiError::BadRequest(format!(
                "{field}: unknown provider {name:?} (expected one of {})",
                known.join(", ")
            ))
        })
    })
    .transpose()
}

/// A unified status name.
pub fn status(v: Option<String>) -> Result<Option<Status>, ApiError> {
    v.map(|s| {
        Status::parse(&s).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "status: unknown status {s:?} (expected sent, delivered, read, failed, accepted or received)"
            ))
        })
    })
    .transpose()
}

/// An RFC 3339 time.
pub fn time(field: &str, v: Option<String>) -> Result<Option<DateTime<Utc>>, ApiError> {
    v.map(|s| {
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| ApiError::BadRequest(format!("{field}: not an RFC 3339 time: {e}")))
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_limit_is_a_whole_number_in_range() {
        let limit = |s: &str| page_limit(Some(s.to_owned())).ok();
        assert_eq!(page_limit(None).ok(), Some(DEFAULT_PAGE));
        assert_eq!(limit("1"), Some(1));
        assert_eq!(limit("500"), Some(500));
        assert_eq!(limit("5.0"), Some(5));
        assert_eq!(limit("5e0"), Some(5));
        for refused in ["0", "501", "", "-1", "2.5", "NaN", "inf", "1e300", "five"] {
            assert_eq!(limit(refused), None, "{refused}");
        }
    }
}
