//! Contract v1.1 `dimensions`: the raw JSON value of the field in, a bounded, sorted map of
//! string keys to string values out, or a rejection naming the key and value. Dimensions
//! label a call for analytics (project, end user, feature); they never change its price.

use std::collections::BTreeMap;

use crate::rejection::{RejectReason, Rejection, excerpt};

/// Dimensions of one call, sorted by key (the canonical order everywhere downstream).
pub type Dimensions = BTreeMap<String, String>;

/// Most keys one event may carry.
pub const MAX_DIMENSIONS: usize = 16;
/// Longest key, in bytes (keys are ASCII).
pub const MAX_DIMENSION_KEY_BYTES: usize = 64;
/// Longest value, in bytes of UTF-8.
pub const MAX_DIMENSION_VALUE_BYTES: usize = 256;

/// True for a key of the documented form `^[a-z][a-z0-9_]{0,63}$`.
pub fn is_valid_key(k: &str) -> bool {
    let b = k.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_DIMENSION_KEY_BYTES
        && b[0].is_ascii_lowercase()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

fn bad(message: String) -> Rejection {
    Rejection::new(RejectReason::InvalidDimension, message)
}

/// Parses the `dimensions` field. `{}` is the same as no dimensions.
pub fn parse(raw: &str) -> Result<Dimensions, Rejection> {
    if !raw.starts_with('{') {
        return Err(bad(format!(
            "field dimensions must be an object of key to string value, got {}",
            excerpt(raw)
        )));
    }
    let map = crate::event::scan::nested_object(
        raw,
        "key",
        "an object of dimension key to string value",
        MAX_DIMENSIONS,
    )
    .map_err(|e| {
        let m = e.to_string();
        let m = m.split(" at line").next().unwrap_or(&m).to_string();
        if m.starts_with("duplicate key") {
            Rejection::new(RejectReason::DuplicateKey, format!("dimensions: {m}"))
        } else {
            bad(format!("field dimensions is not valid: {m}"))
        }
    })?;
    let mut out = Dimensions::new();
    for (k, v) in map {
        if !is_valid_key(&k) {
            return Err(bad(format!(
                "dimensions key {:?} must match ^[a-z][a-z0-9_]{{0,63}}$ (lowercase letter first, then lowercase letters, digits, _)",
                excerpt(&k)
            )));
        }
        let text = v;
        if !text.starts_with('"') {
            return Err(bad(format!(
                "dimensions.{k} must be a string, got {}",
                excerpt(text)
            )));
        }
        let inner = &text[1..text.len() - 1];
        let value: String = if inner.contains('\\') {
            serde_json::from_str(text)
                .map_err(|e| bad(format!("dimensions.{k} is not a valid string: {e}")))?
        } else {
            inner.to_string()
        };
        if value.is_empty() {
            return Err(bad(format!(
                "dimensions.{k} must not be empty; leave the key out instead"
            )));
        }
        if value.len() > MAX_DIMENSION_VALUE_BYTES {
            return Err(bad(format!(
                "dimensions.{k} is {} bytes, the limit is {MAX_DIMENSION_VALUE_BYTES} (value {})",
                value.len(),
                excerpt(&value)
            )));
        }
        if crate::event::has_control(&value) {
            return Err(bad(format!(
                "dimensions.{k} contains control characters (value {})",
                excerpt(&value)
            )));
        }
        out.insert(k.into_owned(), value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Dimensions, Rejection> {
        parse(s)
    }

    #[test]
    fn parses_and_sorts() {
        let d = p(r#"{"project":"apollo","end_user":"u-42","feature":"chat\u00e9"}"#).unwrap();
        assert_eq!(
            d.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>(),
            ["end_user=u-42", "feature=chaté", "project=apollo"]
        );
        assert!(p("{}").unwrap().is_empty());
        let sixteen = (0..16)
            .map(|i| format!("\"k{i}\":\"v\""))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(p(&format!("{{{sixteen}}}")).unwrap().len(), 16);
        let key64 = format!("k{}", "x".repeat(63));
        assert!(p(&format!("{{\"{key64}\":\"v\"}}")).is_ok());
        assert!(p(&format!("{{\"k\":\"{}\"}}", "é".repeat(128))).is_ok());
    }

    #[test]
    fn violations_name_key_and_value() {
        let sixteen = (0..17)
            .map(|i| format!("\"k{i}\":\"v\""))
            .collect::<Vec<_>>()
            .join(",");
        let too_many = format!("{{{sixteen}}}");
        let key65 = format!("{{\"k{}\":\"v\"}}", "x".repeat(64));
        let long_value = format!("{{\"k\":\"{}\"}}", "é".repeat(129));
        let cases: &[(&str, RejectReason, &str)] = &[
            ("[]", RejectReason::InvalidDimension, "must be an object"),
            ("\"x\"", RejectReason::InvalidDimension, "must be an object"),
            (&too_many, RejectReason::InvalidDimension, "more than 16"),
            (
                r#"{"Project":"a"}"#,
                RejectReason::InvalidDimension,
                "Project",
            ),
            (r#"{"1st":"a"}"#, RejectReason::InvalidDimension, "1st"),
            (
                r#"{"end-user":"a"}"#,
                RejectReason::InvalidDimension,
                "end-user",
            ),
            (r#"{"":"a"}"#, RejectReason::InvalidDimension, "must match"),
            (&key65, RejectReason::InvalidDimension, "must match"),
            (
                r#"{"team":7}"#,
                RejectReason::InvalidDimension,
                "dimensions.team must be a string, got 7",
            ),
            (
                r#"{"team":null}"#,
                RejectReason::InvalidDimension,
                "got null",
            ),
            (
                r#"{"team":{"a":"b"}}"#,
                RejectReason::InvalidDimension,
                "must be a string",
            ),
            (
                r#"{"team":""}"#,
                RejectReason::InvalidDimension,
                "must not be empty",
            ),
            (&long_value, RejectReason::InvalidDimension, "258 bytes"),
            (
                r#"{"team":"a\u0007b"}"#,
                RejectReason::InvalidDimension,
                "control",
            ),
            (
                r#"{"team":"a","team":"b"}"#,
                RejectReason::DuplicateKey,
                "duplicate key team",
            ),
        ];
        for (input, reason, needle) in cases {
            let r = p(input).unwrap_err();
            assert_eq!(r.reason, *reason, "{input}: {}", r.message);
            assert!(r.message.contains(needle), "{input}: {}", r.message);
        }
    }
}
