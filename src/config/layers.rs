//! The layers of the configuration: the embedded defaults, the environment
//! (`USAGE_AGG__SECTION__KEY`, typed by the defaults) and librdkafka properties from the
//! environment (`USAGE_AGG_KAFKA_PROP_<NAME>`); figment providers out.

use std::path::Path;

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};

use super::{DEFAULT_TOML, ENV_PREFIX};

/// Environment prefix for librdkafka properties that hold secrets:
/// `USAGE_AGG_KAFKA_PROP_SASL_PASSWORD` sets `sasl.password`.
pub const PROP_ENV_PREFIX: &str = "USAGE_AGG_KAFKA_PROP_";

/// The librdkafka properties set in the environment, as (variable, property, value): the
/// one reading of `USAGE_AGG_KAFKA_PROP_<NAME>` (`_` read as `.`), for the clients and for
/// the effective settings.
pub fn kafka_env_properties() -> Vec<(String, String, String)> {
    let mut out: Vec<_> = std::env::vars()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix(PROP_ENV_PREFIX)?;
            let property = name.to_ascii_lowercase().replace('_', ".");
            Some((k, property, v))
        })
        .collect();
    out.sort();
    out
}

pub(super) fn defaults_figment() -> Figment {
    Figment::from(Toml::string(DEFAULT_TOML))
}

/// The layer a value came from.
pub(super) enum Layer<'a> {
    Defaults,
    File(&'a Path),
    Environment,
}

pub(super) fn layer_of(md: Option<&Metadata>) -> Layer<'_> {
    match md {
        Some(Metadata {
            source: Some(Source::File(f)),
            ..
        }) => Layer::File(f),
        Some(m) if m.name.contains("environment") => Layer::Environment,
        _ => Layer::Defaults,
    }
}

/// `USAGE_AGG__SECTION__KEY` variables. A value whose default is a string (or that has no
/// default, like the password) stays the exact text; others are parsed as TOML scalars,
/// except that decimals stay text so that money keeps every digit.
pub(super) struct EnvLayer(Vec<(Vec<String>, Value)>);

impl EnvLayer {
    pub(super) fn new(defaults: &Figment) -> EnvLayer {
        let mut vars = Vec::new();
        for (k, v) in std::env::vars() {
            let Some(rest) = k.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            let textual = !matches!(
                defaults.find_value(&path.join(".")),
                Ok(Value::Num(..) | Value::Bool(..))
            );
            let value = if textual {
                Value::from(v.clone())
            } else {
                match v.parse::<Value>() {
                    Ok(Value::Num(_, n)) if n.to_f64().is_some_and(|f| f.fract() != 0.0) => {
                        Value::from(v.clone())
                    }
                    Ok(parsed) => parsed,
                    Err(_) => Value::from(v.clone()),
                }
            };
            vars.push((path, value));
        }
        EnvLayer(vars)
    }
}

fn insert_nested(dict: &mut Dict, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if entry.as_dict().is_none() {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert_nested(inner, rest, value);
            }
        }
    }
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment variable(s)")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (path, value) in &self.0 {
            insert_nested(&mut dict, path, value.clone());
        }
        Ok(Profile::Default.collect(dict))
    }
}
