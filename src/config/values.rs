//! Serde forms of typed configuration values: durations written with a unit (`"30s"`),
//! decimals written as strings (`"0.20"`), optional decimals (`"off"`). Text in, typed values
//! out; errors say what to write instead, and values are written back the way people write them.

use std::fmt;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

/// A duration as people write it, in one token: the largest unit that divides it exactly
/// (`0s`, `500ms`, `1500ms`, `90s`, `2m`; never `0ns`, `1.5e0` or `1s 500ms`, whose space
/// would split a `key=value` list). Parses back to the same value.
pub fn show_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    const UNITS: [(u128, &str); 6] = [
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    let (size, unit) = UNITS
        .into_iter()
        .find(|(size, _)| ns.is_multiple_of(*size))
        .unwrap_or((1, "ns"));
    format!("{}{unit}", ns / size)
}

/// What to write instead of a bad duration.
const DURATION_EXAMPLE: &str =
    "write a number with a unit, e.g. \"30s\", \"500ms\", \"2m\" or \"1h\"";

/// A duration as given on the command line or in the config (`30s`, `500ms`, `2m`); the
/// error says what was wrong and gives an example. The one parser of every duration
/// argument (`value_parser = parse_duration`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration \"{s}\" ({e}); {DURATION_EXAMPLE}"))
}

/// An instant given on the command line, RFC 3339 (`2026-07-01T00:00:00Z`); the error
/// shows the value, why, and an example. The one parser of every instant argument.
pub fn parse_instant(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| {
            format!("\"{s}\" is not an RFC 3339 instant ({e}); write it like 2026-07-01T00:00:00Z")
        })
}

/// `#[serde(with = "duration")]`: `"30s"`, `"500ms"`, `"2m"`.
pub mod duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&show_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurationVisitor)
    }

    struct DurationVisitor;

    const EXAMPLE: &str = DURATION_EXAMPLE;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration such as \"30s\"")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(E::custom)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "a duration needs a unit: got {v}; {EXAMPLE}"
            )))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "a duration needs a unit: got {v}; {EXAMPLE}"
            )))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "a duration needs a unit: got {v}; {EXAMPLE}"
            )))
        }
    }
}

const DECIMAL_HINT: &str = "write it as a string so it stays exact, e.g. \"0.20\"";

fn parse_decimal<E: de::Error>(v: &str) -> Result<Decimal, E> {
    Decimal::from_str_exact(v.trim())
        .map_err(|_| E::custom(format!("\"{v}\" is not a decimal number; {DECIMAL_HINT}")))
}

struct DecimalVisitor {
    /// Whether "off" and "" mean "no value".
    optional: bool,
}

impl Visitor<'_> for DecimalVisitor {
    type Value = Option<Decimal>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a decimal string such as \"0.20\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<Decimal>, E> {
        if self.optional && matches!(v.trim(), "" | "off") {
            return Ok(None);
        }
        parse_decimal(v).map(Some)
    }

    /// Integers are exact: accepted as they are.
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Option<Decimal>, E> {
        Ok(Some(Decimal::from(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Option<Decimal>, E> {
        Ok(Some(Decimal::from(v)))
    }

    /// A float has already lost exactness in the parser: refused with the fix.
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Option<Decimal>, E> {
        Err(E::custom(format!(
            "got the number {v}; money is never a float: {DECIMAL_HINT}"
        )))
    }
}

/// `#[serde(with = "decimal")]`: a decimal string; floats refused.
pub mod decimal {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&d.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        d.deserialize_any(DecimalVisitor { optional: false })?
            .ok_or_else(|| de::Error::custom("a value is required"))
    }
}

/// `#[serde(with = "optional_decimal")]`: a decimal string, or `"off"` / `""` for none.
pub mod optional_decimal {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&d.to_string()),
            None => s.serialize_str("off"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
        d.deserialize_any(DecimalVisitor { optional: true })
    }
}

/// `#[serde(with = "decimal_list")]`: a list of decimal strings, e.g. `["10", "0"]`.
pub mod decimal_list {
    use super::*;
    use serde::ser::SerializeSeq;

    pub fn serialize<S: Serializer>(d: &[Decimal], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(d.len()))?;
        for x in d {
            seq.serialize_element(&x.to_string())?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Decimal>, D::Error> {
        struct One(Decimal);
        impl<'de> serde::Deserialize<'de> for One {
            fn deserialize<D2: Deserializer<'de>>(d: D2) -> Result<One, D2::Error> {
                super::decimal::deserialize(d).map(One)
            }
        }
        let v: Vec<One> = serde::Deserialize::deserialize(d)?;
        Ok(v.into_iter().map(|o| o.0).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct T {
        #[serde(with = "duration")]
        d: Duration,
        #[serde(with = "decimal")]
        m: Decimal,
        #[serde(with = "optional_decimal")]
        o: Option<Decimal>,
    }

    fn parse(s: &str) -> Result<T, String> {
        toml::from_str(s).map_err(|e| e.to_string())
    }

    #[test]
    fn typed_values_parse_and_echo_as_written() {
        let t = parse("d = \"0s\"\nm = \"0.20\"\no = \"off\"").unwrap();
        assert_eq!(t.d, Duration::ZERO);
        assert_eq!(t.m.to_string(), "0.20");
        assert_eq!(t.o, None);
        let back = toml::to_string(&t).unwrap();
        assert!(
            back.contains("d = \"0s\"") && back.contains("o = \"off\""),
            "{back}"
        );
        assert_eq!(parse(&back).unwrap(), t);
        for (d, shown) in [
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_secs(7200), "2h"),
            (Duration::from_micros(1), "1us"),
            (Duration::from_nanos(1_000_001), "1000001ns"),
        ] {
            assert_eq!(show_duration(d), shown);
            let back = parse(&format!("d = \"{shown}\"\nm = \"1\"\no = \"\"")).unwrap();
            assert_eq!(back.d, d, "{shown} parses back");
        }
        let t = parse("d = \"2m\"\nm = 3\no = \"25\"").unwrap();
        assert_eq!(t.m, Decimal::from(3));
        assert_eq!(t.o, Some(Decimal::from(25)));
    }

    #[test]
    fn errors_say_what_to_write() {
        let e = parse("d = 5\nm = \"1\"\no = \"\"").unwrap_err();
        assert!(e.contains("needs a unit") && e.contains("\"30s\""), "{e}");
        let e = parse("d = \"5 parsecs\"\nm = \"1\"\no = \"\"").unwrap_err();
        assert!(e.contains("5 parsecs") && e.contains("\"500ms\""), "{e}");
        let e = parse("d = \"1s\"\nm = 0.2\no = \"\"").unwrap_err();
        assert!(
            e.contains("never a float") && e.contains("as a string"),
            "{e}"
        );
        let e = parse("d = \"1s\"\nm = \"abc\"\no = \"\"").unwrap_err();
        assert!(e.contains("\"abc\" is not a decimal"), "{e}");
    }
}
