//! Configuration errors: figment's errors in, one short line per problem out, naming the key
//! the way the user wrote it (`kafka.brokers` in FILE, or `USAGE_AGG__KAFKA__BROKERS`), with
//! "did you mean" for near-miss keys.

use figment::error::Kind;
use figment::{Figment, Metadata, Provider, Source};

/// Where a configuration problem is; never carries a secret value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// One or more problems reading the layers (types, unknown keys, syntax).
    #[error("{}", .0.join("\n"))]
    Load(Vec<String>),
    /// A value that parsed but breaks a rule.
    #[error("{key} = {value}: {why}")]
    Invalid {
        key: String,
        value: String,
        why: String,
    },
    /// A file named by a key cannot be used.
    #[error("{key} = \"{path}\": {why}")]
    File {
        key: &'static str,
        path: String,
        why: String,
    },
}

impl ConfigError {
    pub fn invalid(key: &str, value: impl std::fmt::Display, why: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_string(),
            value: value.to_string(),
            why: why.into(),
        }
    }
}

/// Environment prefix of configuration keys.
pub const ENV_PREFIX: &str = "USAGE_AGG__";

/// A key as the user wrote it in the layer `md` came from.
pub fn key_in(md: Option<&Metadata>, path: &[String]) -> String {
    let dotted = path.join(".").to_ascii_lowercase();
    match md {
        Some(m) if m.name.contains("environment") => {
            format!("{ENV_PREFIX}{}", path.join("__").to_ascii_uppercase())
        }
        Some(Metadata {
            source: Some(Source::File(f)),
            ..
        }) => format!("{dotted} (in {})", f.display()),
        _ => dotted,
    }
}

/// Every dotted key the configuration knows (from the built-in defaults).
fn known_keys(defaults: &Figment) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(dict) = defaults.data() {
        for d in dict.values() {
            for (section, v) in d {
                match v.as_dict() {
                    Some(inner) => {
                        out.extend(inner.keys().map(|k| format!("{section}.{k}")));
                        out.push(section.clone());
                    }
                    None => out.push(section.clone()),
                }
            }
        }
    }
    out
}

/// The closest known key to `wanted` (dotted), if close enough to be a likely typo, or the
/// same key name in another section.
pub fn suggest(wanted: &str, known: &[String]) -> Option<String> {
    let leaf = wanted.rsplit('.').next().unwrap_or(wanted);
    if let Some(moved) = known
        .iter()
        .find(|k| k.as_str() != wanted && k.rsplit('.').next() == Some(leaf) && k.contains('.'))
    {
        return Some(moved.clone());
    }
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(wanted, k), k))
        .filter(|(score, _)| *score > 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k.clone())
}

/// One line per problem in a figment error.
pub fn render(err: figment::Error, fig: &Figment, defaults: &Figment) -> ConfigError {
    let known = known_keys(defaults);
    let mut lines = Vec::new();
    for e in err {
        let line = match &e.kind {
            Kind::UnknownField(field, _) => {
                let mut path = e.path.clone();
                if path.last() != Some(field) {
                    path.push(field.clone());
                }
                let dotted = path.join(".").to_ascii_lowercase();
                let md = fig.find_metadata(&path.join("."));
                let shown = key_in(md.or(e.metadata.as_ref()), &path);
                let env = md.is_some_and(|m| m.name.contains("environment"));
                match suggest(&dotted, &known) {
                    Some(s) if env => format!(
                        "unknown setting {shown}: did you mean {ENV_PREFIX}{}?",
                        s.replace('.', "__").to_ascii_uppercase()
                    ),
                    Some(s) => format!("unknown key {shown}: did you mean {s}?"),
                    None => format!(
                        "unknown key {shown}; known keys of this section are listed in config/default.toml"
                    ),
                }
            }
            kind => {
                let shown = key_in(e.metadata.as_ref(), &e.path);
                let what = match kind {
                    Kind::Message(m) => m.clone(),
                    other => other.to_string(),
                };
                if e.path.is_empty() {
                    match e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
                        Some(src) => format!("{src}: {what}"),
                        None => what,
                    }
                } else {
                    format!("{shown}: {what}")
                }
            }
        };
        lines.push(line);
    }
    ConfigError::Load(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_for_typos_and_moved_keys() {
        let known: Vec<String> = [
            "kafka.brokers",
            "kafka.group_id",
            "rollup.max_event_bytes",
            "rollup.markup_rate",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            suggest("kafka.broker", &known).as_deref(),
            Some("kafka.brokers")
        );
        assert_eq!(
            suggest("pipeline.max_event_bytes", &known).as_deref(),
            Some("rollup.max_event_bytes")
        );
        assert_eq!(suggest("kafka.zzz_qqq", &known), None);
    }
}
