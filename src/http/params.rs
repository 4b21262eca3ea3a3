//! Strict query strings: a raw query string and the names an endpoint accepts in, typed
//! values or an [`ApiError::parameter`] naming the parameter and the value out. An unknown,
//! repeated or malformed parameter is a 400, never ignored: the body is the API's one error
//! JSON, `{"error", "parameter", "value"}` (docs/operations.md, Errors).

use chrono::{DateTime, Utc};

pub use super::error::ApiError;
use super::error::excerpt;

/// Checks an id taken from the path or the query (`account_id`, `execution_id`, ...): the
/// event contract's id rules (non-empty, at most 256 bytes, no control characters), else a
/// 400 naming it.
pub fn check_id(name: &str, value: &str) -> Result<(), ApiError> {
    let why = if value.is_empty() {
        "must not be empty"
    } else if value.len() > 256 {
        "is longer than 256 bytes"
    } else if value.chars().any(char::is_control) {
        "holds a control character"
    } else {
        return Ok(());
    };
    Err(ApiError::parameter(
        name,
        Some(value),
        format!("{name} {why}"),
    ))
}

/// A parsed query string whose every name the endpoint accepts, each at most once.
#[derive(Debug, Default)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Parses `raw` (the part after `?`, percent-decoded here). Refuses a name not in
    /// `allowed` (the error lists them) and a name given twice.
    pub fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Params, ApiError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (k, v) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            if !allowed.contains(&k.as_ref()) {
                let hint = if allowed.is_empty() {
                    "this endpoint takes no query parameters".to_string()
                } else {
                    format!("allowed: {}", allowed.join(", "))
                };
                return Err(ApiError::parameter(
                    &k,
                    Some(&v),
                    format!("unknown query parameter \"{}\"; {hint}", excerpt(&k)),
                ));
            }
            if pairs.iter().any(|(n, _)| *n == k) {
                return Err(ApiError::parameter(
                    &k,
                    Some(&v),
                    format!("query parameter \"{k}\" is given more than once"),
                ));
            }
            pairs.push((k.into_owned(), v.into_owned()));
        }
        Ok(Params { pairs })
    }

    /// The raw value of `name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A non-empty string; an empty value is refused.
    pub fn string(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some("") => Err(ApiError::parameter(
                name,
                Some(""),
                format!("{name} must not be empty; leave it out instead"),
            )),
            Some(v) => Ok(Some(v.to_string())),
        }
    }

    /// An instant: RFC 3339 (`2026-10-01T12:00:00Z`) or a UTC date (`2026-10-01`: midnight
    /// at its start, or with `end` the midnight after it, so `to=2026-10-31` includes that day).
    pub fn instant(&self, name: &str, end: bool) -> Result<Option<DateTime<Utc>>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => crate::report::parse_instant(v, end)
                .map(Some)
                .map_err(|e| ApiError::parameter(name, Some(v), format!("{name}: {e}"))),
        }
    }

    /// A whole number in `min..=max`.
    pub fn number(&self, name: &str, min: u64, max: u64) -> Result<Option<u64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(ApiError::parameter(
                    name,
                    Some(v),
                    format!(
                        "{name} must be a whole number from {min} to {max}, got \"{}\"",
                        excerpt(v)
                    ),
                )),
            },
        }
    }

    /// `true` or `false` (also `1`/`0`); absent is `false`.
    pub fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None => Ok(false),
            Some("true" | "1") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(v) => Err(ApiError::parameter(
                name,
                Some(v),
                format!("{name} must be true or false, got \"{}\"", excerpt(v)),
            )),
        }
    }

    /// `from` and `to` as a half-open window `[from, to)`; `from` must come before `to`.
    pub fn window(&self) -> Result<crate::report::Window, ApiError> {
        let from = self.instant("from", false)?;
        let to = self.instant("to", true)?;
        if let (Some(f), Some(t)) = (from, to)
            && f >= t
        {
            return Err(ApiError::parameter(
                "to",
                self.get("to"),
                format!(
                    "the window is empty: from {} is not before to {}",
                    f.to_rfc3339(),
                    t.to_rfc3339()
                ),
            ));
        }
        Ok((from, to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use serde_json::json;

    #[test]
    fn unknown_repeated_and_malformed_parameters_are_named() {
        let e = Params::parse(Some("from=2026-01-01&form=x"), &["from", "to"]).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            e.body(),
            json!({"error": "unknown query parameter \"form\"; allowed: from, to", "parameter": "form", "value": "x"})
        );
        let e = Params::parse(Some("to=1&to=2"), &["to"]).unwrap_err();
        assert!(e.message.contains("more than once"), "{e:?}");
        let p = Params::parse(
            Some("from=yesterday&limit=0&follow=yes"),
            &["from", "limit", "follow"],
        )
        .unwrap();
        let e = p.instant("from", false).unwrap_err();
        assert_eq!(e.body()["parameter"], "from");
        assert_eq!(e.body()["value"], "yesterday");
        assert!(
            p.number("limit", 1, 1000)
                .unwrap_err()
                .message
                .contains("1 to 1000")
        );
        assert!(p.flag("follow").is_err());
        let e = Params::parse(Some("x=1"), &[]).unwrap_err();
        assert!(e.message.contains("takes no query parameters"), "{e:?}");
    }

    #[test]
    fn values_are_percent_decoded_and_windows_checked() {
        let p = Params::parse(
            Some("from=2026-03-01T10%3A00%3A00%2B01%3A00&to=2026-03-01&cursor=a%2Bb"),
            &["from", "to", "cursor"],
        )
        .unwrap();
        assert_eq!(p.get("cursor"), Some("a+b"));
        let (from, to) = p.window().unwrap();
        assert_eq!(from.unwrap().to_rfc3339(), "2026-03-01T09:00:00+00:00");
        assert_eq!(to.unwrap().to_rfc3339(), "2026-03-02T00:00:00+00:00");
        let p = Params::parse(Some("from=2026-03-02&to=2026-03-01"), &["from", "to"]).unwrap();
        assert_eq!(p.window().unwrap_err().body()["parameter"], "to");
    }
}
