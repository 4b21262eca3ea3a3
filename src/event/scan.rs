//! Fast path of the event decoder: the text of a JSON object in, the raw text of each member
//! out (`"key"` without quotes, value exactly as written), in one pass and without
//! allocation; or `None` for anything outside the common shape, which the serde_json path
//! then decodes or rejects with its precise message.
//!
//! The common shape: an object whose keys are strings without escapes, each key once, whose
//! values are strings without escapes, JSON numbers, `null`, or (one level down only) such
//! objects. Everything else answers `None`: escapes, `true`/`false`, arrays, deeper nesting,
//! raw control characters, malformed numbers, trailing text. `None` never means "invalid",
//! only "not decided here": the serde path is the single authority for every error, so both
//! paths give the same event or the same rejection for every input (property-tested in
//! `crate::event::tests_scan`).

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, MapAccess, Visitor};
use serde_json::value::RawValue;
use smallvec::SmallVec;

use crate::rejection::excerpt;

/// Members of one object: (key without quotes, raw value text).
pub type Members<'a> = SmallVec<[(&'a str, &'a str); 12]>;

/// Splits `text`, which must be one whole object with only JSON whitespace around it, and
/// hands each member to `each` in order; `each` answering `None` (e.g. an unknown or repeated
/// key) stops with `None`. `nested` allows object values one level down (their raw text is
/// handed over whole). Keys are not checked for repeats here.
pub fn each_member<'a>(
    text: &'a str,
    nested: bool,
    each: impl FnMut(&'a str, &'a str) -> Option<()>,
) -> Option<()> {
    #[cfg(test)]
    if SERDE_ONLY.with(std::cell::Cell::get) {
        return None;
    }
    let mut s = Scanner {
        s: text,
        b: text.as_bytes(),
        i: 0,
    };
    s.ws();
    s.members(nested, each)?;
    s.ws();
    (s.i == s.b.len()).then_some(())
}

/// The members of a flat object (values strings, numbers or `null`), or `None` when the
/// splitter declines, a key repeats, or there are more than `max_members`.
fn object(text: &str, max_members: usize) -> Option<Members<'_>> {
    let mut out = Members::new();
    each_member(text, false, |key, value| {
        if out.len() == max_members || out.iter().any(|(k, _)| *k == key) {
            return None;
        }
        out.push((key, value));
        Some(())
    })?;
    Some(out)
}

/// Members of a nested object (`quantities`, `dimensions`) as (key, raw value text), keys
/// unescaped, in order.
pub type NestedMembers<'a> = SmallVec<[(Cow<'a, str>, &'a str); 4]>;

/// Splits a nested object: the fast splitter's members, or serde's when it declines. serde's
/// errors: a repeated key is "duplicate {what} K", more than `max_members` is "more than
/// {max_members} {what}s", a value of another type "... expected {expecting}", each followed
/// by serde_json's " at line L column C".
pub fn nested_object<'a>(
    text: &'a str,
    what: &'static str,
    expecting: &'static str,
    max_members: usize,
) -> Result<NestedMembers<'a>, serde_json::Error> {
    if let Some(members) = object(text, max_members) {
        return Ok(members
            .into_iter()
            .map(|(k, v)| (Cow::Borrowed(k), v))
            .collect());
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let members = MembersSeed {
        what,
        expecting,
        max_members,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(members)
}

/// serde's side of [`nested_object`].
struct MembersSeed {
    what: &'static str,
    expecting: &'static str,
    max_members: usize,
}

impl<'de> DeserializeSeed<'de> for MembersSeed {
    type Value = NestedMembers<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MembersSeed {
    type Value = NestedMembers<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = NestedMembers::new();
        while let Some(k) = map.next_key::<Cow<'de, str>>()? {
            let v: &'de RawValue = map.next_value()?;
            if out.iter().any(|(seen, _)| *seen == k) {
                return Err(serde::de::Error::custom(format_args!(
                    "duplicate {} {}",
                    self.what,
                    excerpt(&k)
                )));
            }
            if out.len() == self.max_members {
                return Err(serde::de::Error::custom(format_args!(
                    "more than {} {}s",
                    self.max_members, self.what
                )));
            }
            out.push((k, v.get()));
        }
        Ok(out)
    }
}

#[cfg(test)]
thread_local! {
    /// Tests set this to run the decoder on the serde path alone, the reference the fast
    /// path is compared with.
    pub static SERDE_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

struct Scanner<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// Text between `start` and the cursor. Every boundary the scanner stops at is an ASCII
    /// byte of the JSON grammar, hence a char boundary; `get` declines otherwise.
    fn text(&self, start: usize) -> Option<&'a str> {
        self.s.get(start..self.i)
    }

    /// `{ "k": v, ... }` at the cursor; the cursor ends after the `}`.
    fn members(
        &mut self,
        nested: bool,
        mut each: impl FnMut(&'a str, &'a str) -> Option<()>,
    ) -> Option<()> {
        self.eat(b'{')?;
        self.ws();
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            self.ws();
            let key = self.string()?;
            let key = &key[1..key.len() - 1];
            self.ws();
            self.eat(b':')?;
            self.ws();
            let value = self.value(nested)?;
            each(key, value)?;
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn value(&mut self, nested: bool) -> Option<&'a str> {
        let start = self.i;
        match self.peek()? {
            b'"' => self.string(),
            b'-' | b'0'..=b'9' => self.number(),
            b'n' => {
                if self.b[self.i..].starts_with(b"null") {
                    self.i += 4;
                    self.text(start)
                } else {
                    None
                }
            }
            b'{' if nested => {
                self.members(false, |_, _| Some(()))?;
                self.text(start)
            }
            _ => None,
        }
    }

    /// A string without escapes or raw control characters, quotes included.
    fn string(&mut self) -> Option<&'a str> {
        let start = self.i;
        self.eat(b'"')?;
        let rest = &self.b[self.i..];
        let end = memchr::memchr2(b'"', b'\\', rest)?;
        if rest[end] != b'"' || rest[..end].iter().any(|&c| c < 0x20) {
            return None;
        }
        self.i += end + 1;
        self.text(start)
    }

    /// A number by the JSON grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<&'a str> {
        let start = self.i;
        let _ = self.eat(b'-');
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat(b'.').is_some() {
            self.some_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            self.some_digits()?;
        }
        // A digit right after a leading 0 ("01") is not a JSON number.
        if self.peek().is_some_and(|c| c.is_ascii_digit()) {
            return None;
        }
        self.text(start)
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let before = self.i;
        self.digits();
        (self.i > before).then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_the_common_shape() {
        let mut m = Vec::new();
        each_member(
            r#" {"a": "x", "b":12.5e-3 ,"c":null, "q":{"u":1,"v":"2"}} "#,
            true,
            |k, v| {
                m.push((k, v));
                Some(())
            },
        )
        .unwrap();
        assert_eq!(
            m.as_slice(),
            [
                ("a", r#""x""#),
                ("b", "12.5e-3"),
                ("c", "null"),
                ("q", r#"{"u":1,"v":"2"}"#)
            ]
        );
        assert_eq!(object("{}", 0).unwrap().len(), 0);
        assert_eq!(object(r#"{"é":"ü"}"#, 1).unwrap()[0], ("é", "\"ü\""));
    }

    #[test]
    fn leaves_everything_else_to_serde() {
        for text in [
            "",
            "[]",
            r#"{"a":1"#,
            r#"{"a":1,}"#,
            r#"{"a":1} x"#,
            r#"{"a":true}"#,
            r#"{"a":[1]}"#,
            r#"{"a":"x\"y"}"#,
            r#"{"a\u0062":1}"#,
            "{\"a\":\"x\ty\"}",
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":1e}"#,
            r#"{"a":-}"#,
            r#"{"a":+1}"#,
            r#"{"a":nul}"#,
            r#"{"a":{"b":{"c":1}}}"#,
            r#"{a:1}"#,
        ] {
            assert!(each_member(text, true, |_, _| Some(())).is_none(), "{text}");
        }
        assert!(object(r#"{"q":{"u":1}}"#, 12).is_none());
        assert!(object(r#"{"a":1,"b":2}"#, 1).is_none());
        assert!(object(r#"{"a":1,"a":2}"#, 12).is_none());
    }
}
