//! Configuration tests: one source of defaults, typed values, errors that name the key as
//! written, path resolution, prefix, cross-field rules.

#![allow(clippy::result_large_err)]

use super::*;

fn jail(f: impl FnOnce(&mut figment::Jail) -> figment::error::Result<()>) {
    figment::Jail::expect_with(f);
}

fn load_err(jail: &mut figment::Jail, toml: &str) -> String {
    jail.create_file("c.toml", toml).unwrap();
    Config::load(Some(Path::new("c.toml")))
        .unwrap_err()
        .to_string()
}

#[test]
fn one_source_of_defaults() {
    let d = Config::default();
    d.validate().unwrap();
    // The rollup core's own defaults are the shipped ones.
    assert_eq!(d.rollup_config(), RollupConfig::default());
    assert_eq!(d.rollup.markup_rate.to_string(), "0.20");
    // The shipped file, read as a --config file from its place, gives the same configuration
    // (its relative catalog path resolves to the same file).
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
    // Inside the jail: it holds the lock other tests take to set USAGE_AGG__* variables,
    // which this load would otherwise read when they run at the same time.
    let mut from_file = None;
    jail(|_| {
        from_file = Some(Config::load(Some(&path)).unwrap());
        Ok(())
    });
    let from_file = from_file.expect("loaded");
    assert_eq!(
        from_file.pricing.catalog_file,
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/catalog.json")
    );
    assert_eq!(d.pricing.catalog_file, Path::new("config/catalog.json"));
    let strip = |c: &Config| {
        let mut c = c.clone();
        c.pricing.catalog_file = PathBuf::new();
        toml::to_string(&c).unwrap()
    };
    assert_eq!(strip(&from_file), strip(&d));
}

#[test]
fn errors_name_key_and_value() {
    let mut c = Config::default();
    c.rollup.markup_rate = "0.1234567".parse().unwrap();
    let e = c.validate().unwrap_err().to_string();
    assert!(
        e.contains("rollup.markup_rate") && e.contains("0.1234567"),
        "{e}"
    );
    jail(|j| {
        let e = load_err(j, "[rollup]\nmarkup_rate = \"abc\"\n");
        assert!(
            e.contains("rollup.markup_rate (in ") && e.contains("\"abc\""),
            "{e}"
        );
        let e = load_err(j, "[rollup]\nmarkup_rate = 0.2\n");
        assert!(
            e.contains("rollup.markup_rate") && e.contains("as a string"),
            "{e}"
        );
        let e = load_err(j, "[rollup]\nexecution_idle_timeout = 5\n");
        assert!(
            e.contains("rollup.execution_idle_timeout") && e.contains("\"30s\""),
            "{e}"
        );
        let e = load_err(j, "[rollup]\nexecution_idle_timeout = \"0s\"\n");
        assert!(e.contains("= 0s:"), "durations echoed as written: {e}");
        Ok(())
    });
}

#[test]
fn unknown_keys_get_a_suggestion_in_the_users_terms() {
    jail(|j| {
        let e = load_err(j, "[kafka]\nbroker = \"x:1\"\n");
        assert!(
            e.contains("unknown key kafka.broker (in ")
                && e.contains("did you mean kafka.brokers?"),
            "{e}"
        );
        assert!(!e.contains("default."), "no profile name: {e}");
        let e = load_err(j, "[pipeline]\nmax_event_bytes = 1\n");
        assert!(e.contains("did you mean rollup.max_event_bytes?"), "{e}");
        j.set_env("USAGE_AGG__ROLLUP__EXECUTION_IDLE_TIMOUT", "5s");
        let e = Config::load(None).unwrap_err().to_string();
        assert!(
            e.contains("unknown setting USAGE_AGG__ROLLUP__EXECUTION_IDLE_TIMOUT")
                && e.contains("did you mean USAGE_AGG__ROLLUP__EXECUTION_IDLE_TIMEOUT?"),
            "{e}"
        );
        Ok(())
    });
    jail(|j| {
        j.set_env("USAGE_AGG__ROLLUP__EXECUTION_IDLE_TIMEOUT", "soon");
        let e = Config::load(None).unwrap_err().to_string();
        assert!(
            e.starts_with("USAGE_AGG__ROLLUP__EXECUTION_IDLE_TIMEOUT: invalid duration \"soon\""),
            "{e}"
        );
        Ok(())
    });
}

#[test]
fn environment_overrides_file_and_keeps_text_exact() {
    jail(|j| {
        j.create_file("c.toml", "[kafka]\nbrokers = \"file:1\"\n")?;
        j.set_env("USAGE_AGG__KAFKA__BROKERS", "env:2");
        j.set_env("USAGE_AGG__ROLLUP__EXECUTION_IDLE_TIMEOUT", "2s");
        j.set_env("USAGE_AGG__ROLLUP__MARKUP_RATE", "0.250");
        j.set_env("USAGE_AGG__ROLLUP__MAX_OPEN_EXECUTIONS", "7");
        j.set_env("USAGE_AGG__CLICKHOUSE__PASSWORD", "12345");
        let c = Config::load(Some(Path::new("c.toml"))).unwrap();
        assert_eq!(c.kafka.brokers, "env:2");
        assert_eq!(c.rollup.execution_idle_timeout, Duration::from_secs(2));
        assert_eq!(c.rollup.markup_rate.to_string(), "0.250");
        assert_eq!(c.rollup.max_open_executions, 7);
        assert_eq!(c.clickhouse.password.as_deref(), Some("12345"));
        Ok(())
    });
}

#[test]
fn relative_paths_follow_the_config_file() {
    jail(|j| {
        std::fs::create_dir_all(j.directory().join("etc")).unwrap();
        j.create_file(
            "etc/c.toml",
            "[pricing]\ncatalog_file = \"prices.json\"\n[clickhouse]\npassword_file = \"pw\"\n",
        )?;
        j.create_file("etc/pw", "s3cret\n")?;
        let c = Config::load(Some(Path::new("etc/c.toml"))).unwrap();
        assert_eq!(c.pricing.catalog_file, Path::new("etc/prices.json"));
        assert_eq!(c.clickhouse.password.as_deref(), Some("s3cret"));
        j.create_file("etc/d.toml", "[clickhouse]\npassword_file = \"missing\"\n")?;
        let e = Config::load(Some(Path::new("etc/d.toml")))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("clickhouse.password_file = \"etc/missing\": cannot be read"),
            "{e}"
        );
        // From the environment: against the current directory.
        j.set_env("USAGE_AGG__PRICING__CATALOG_FILE", "here.json");
        let c = Config::load(Some(Path::new("etc/c.toml"))).unwrap();
        assert_eq!(c.pricing.catalog_file, Path::new("here.json"));
        Ok(())
    });
}

#[test]
fn prefix_isolates_topics_groups_and_database() {
    jail(|j| {
        j.create_file(
            "c.toml",
            "[kafka]\nprefix = \"trial1-\"\n[topics]\ndebits = \"my_debits\"\n",
        )?;
        let c = Config::load(Some(Path::new("c.toml"))).unwrap();
        assert_eq!(c.topics.usage_events, "trial1-usage_events");
        assert_eq!(c.topics.debits, "trial1-my_debits");
        assert_eq!(c.kafka.sink_group_id, "trial1-usage-aggregator-sink");
        assert_eq!(
            c.ledger.voucher_group_id,
            "trial1-usage-aggregator-vouchers"
        );
        assert_eq!(
            c.clickhouse.database, "trial1_usage",
            "a database name has no '-'"
        );
        assert_eq!(c.kafka.prefix, "", "applied once");
        Ok(())
    });
}

#[test]
fn cross_field_and_format_rules() {
    let check = |f: &dyn Fn(&mut Config), want: &str| {
        let mut c = Config::default();
        f(&mut c);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(want), "{e} should contain {want}");
    };
    check(
        &|c| c.pipeline.drain_timeout = Duration::from_secs(20),
        "pipeline.drain_timeout = 20s: must not exceed kafka.session_timeout (10s)",
    );
    check(
        &|c| c.topics.min_insync_replicas = 2,
        "topics.min_insync_replicas = 2: must be between 1 and topics.replication_factor (1)",
    );
    check(
        &|c| c.clickhouse.url = "htp:/x".into(),
        "clickhouse.url = \"htp:/x\": scheme \"htp\"",
    );
    check(
        &|c| c.clickhouse.url = "127.0.0.1:18123".into(),
        "clickhouse.url = \"127.0.0.1:18123\"",
    );
    check(
        &|c| c.clickhouse.url = "http://u:pw@h:1".into(),
        "must not hold credentials",
    );
    check(&|c| c.kafka.brokers = "a:1,,b:2".into(), "kafka.brokers");
    check(
        &|c| c.kafka.brokers = "host:port".into(),
        "\"host:port\" is not host:port",
    );
    check(
        &|c| {
            c.kafka
                .properties
                .insert("sasl.password".into(), "x".into());
        },
        "USAGE_AGG_KAFKA_PROP_SASL_PASSWORD",
    );
    check(
        &|c| {
            c.kafka
                .properties
                .insert("session.timeout.ms".into(), "1".into());
        },
        "kafka.session_timeout",
    );
    check(
        &|c| c.topics.debits = "bad name".into(),
        "topics.debits = \"bad name\"",
    );
    check(
        &|c| c.clickhouse.database = "x;drop".into(),
        "clickhouse.database",
    );
    check(
        &|c| c.http.listen = "localhost".into(),
        "http.listen = localhost",
    );
    check(
        &|c| c.alerts.execution_credits = Some(Decimal::ZERO),
        "alerts.execution_credits",
    );
}

#[test]
fn effective_settings_never_show_the_password() {
    let mut c = Config::default();
    c.clickhouse.password = Some("hunter2".into());
    c.kafka
        .properties
        .insert("sasl.username".into(), "me".into());
    let s = format!("{:?}", c.effective_settings());
    assert!(!s.contains("hunter2") && !s.contains("\"me\""), "{s}");
    assert!(
        s.contains("clickhouse.password") && s.contains("topics.debits"),
        "{s}"
    );
}

#[test]
fn at_least_once_is_refused_naming_key_value_and_the_way_out() {
    jail(|j| {
        let e = load_err(j, "[pipeline]\ndelivery = \"at_least_once\"\n");
        assert!(
            e.contains("pipeline.delivery")
                && e.contains("\"at_least_once\"")
                && e.contains("removed")
                && e.contains("exactly_once"),
            "{e}"
        );
        j.create_file("ok.toml", "[pipeline]\ndelivery = \"exactly_once\"\n")?;
        Config::load(Some(Path::new("ok.toml"))).unwrap();
        Ok(())
    });
}

#[test]
fn expiry_warning_bound_is_the_ledgers() {
    assert_eq!(
        super::validate::MAX_EXPIRY_WARNING_SECS,
        crate::ledger::command::MAX_WARNING_SECS
    );
}
