//! Error text (keys as written, once, with hints; catalog problems with path and fix) and
//! no log line on success.

use std::time::Duration;

use crate::common::*;
use crate::support::*;

#[test]
fn error_text_names_keys_as_written_once_with_hints() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[kafka]\nbroker = \"x:1\"\n").unwrap();
    let check = |args: &[&str], env: &[(&str, &str)], code: i32, want: &str| {
        let o = run_bin(dir.path(), args, env, Duration::from_secs(30));
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err} should contain {want}");
        err
    };
    let c = cfg.to_str().unwrap();
    check(
        &["--config", c, "catalog", "check", "x"],
        &[],
        2,
        "unknown key kafka.broker (in ",
    );
    check(
        &["--config", c, "catalog", "check", "x"],
        &[],
        2,
        "did you mean kafka.brokers?",
    );
    check(
        &["catalog", "check", "x"],
        &[("USAGE_AGG__ROLLUP__EXECUTION_IDLE_TIMEOUT", "5")],
        2,
        "USAGE_AGG__ROLLUP__EXECUTION_IDLE_TIMEOUT: invalid duration \"5\"",
    );
    check(
        &["catalog", "check", "x"],
        &[("USAGE_AGG__ROLLUP__EXECUTION_IDLE_TIMEOUT", "0s")],
        2,
        "rollup.execution_idle_timeout = 0s: must be at least 100ms",
    );
    let err = check(
        &["--log-json", "catalog", "check", "x"],
        &[("USAGE_AGG__KAFKA__BROKR", "x:1")],
        2,
        "did you mean USAGE_AGG__KAFKA__BROKERS?",
    );
    let v: serde_json::Value =
        serde_json::from_str(err.trim()).expect("--log-json errors are JSON");
    assert_eq!(v["level"], "ERROR");
    // Usage errors too (they were clap's text whatever --log-json said).
    for (args, want) in [
        (
            vec!["--log-json", "report", "--since", "1x"],
            "invalid value '1x' for '--since <DURATION>': invalid duration",
        ),
        (
            vec!["report", "--log-json", "--top", "x"],
            "invalid value 'x' for '--top <TOP>'",
        ),
        (
            vec!["--log-json", "bogus"],
            "unrecognized subcommand 'bogus'",
        ),
    ] {
        let err = check(&args, &[], 2, want);
        let v: serde_json::Value = serde_json::from_str(err.trim())
            .unwrap_or_else(|e| panic!("{args:?}: not one JSON object ({e}): {err}"));
        assert_eq!(v["level"], "ERROR", "{err}");
        assert!(v["message"].as_str().unwrap().starts_with(want), "{err}");
    }
    let o = run_bin(
        dir.path(),
        &["--log-json", "report", "--help"],
        &[],
        Duration::from_secs(30),
    );
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("--from"));
    // Bad argument values are usage errors (exit 2), said as written, durations with an
    // example, whichever command takes them.
    check(
        &["report", "--from", "yesterday"],
        &[],
        2,
        "\"yesterday\" is neither a date",
    );
    check(
        &["report", "--from", "2026-11-30", "--to", "2026-11-01"],
        &[],
        2,
        "--from 2026-11-30 is not before --to 2026-11-01",
    );
    for args in [
        vec!["report", "--since", "1x"],
        vec!["vouchers", "create", "--credits", "10", "--valid-for", "1x"],
        vec!["dead-letters", "replay", "--timeout", "1x"],
    ] {
        check(&args, &[], 2, "invalid duration \"1x\"");
        check(&args, &[], 2, "e.g. \"30s\"");
    }
    for args in [
        vec![
            "catalog",
            "import",
            "--format",
            "litellm",
            "x.json",
            "--effective-from",
            "2030-01-01",
        ],
        vec![
            "vouchers",
            "create",
            "--credits",
            "10",
            "--valid-from",
            "2030-01-01",
        ],
        vec![
            "vouchers",
            "create",
            "--credits",
            "10",
            "--valid-until",
            "2030-01-01",
        ],
    ] {
        check(
            &args,
            &[],
            2,
            "\"2030-01-01\" is not an RFC 3339 instant (premature end of input); write it like 2026-07-01T00:00:00Z",
        );
    }
    // A catalog: every problem, with its path and the fix.
    let cat = dir.path().join("cat.json");
    std::fs::write(
        &cat,
        r#"[{"asset_id":"a","asset_type":"model","vendor":"v","effective_from":"2024-01-01","prices":{"t":{"credits":"1","per":1}}},
           {"asset_id":"b","asset_type":"model","vendor":"v","effective_from":"2024-01-01T00:00:00Z","prices":{"t":{"credits":0.5,"per":1}}},
           {"asset_id":"c","asset_type":"modle","vendor":"v","effective_from":"2024-01-01T00:00:00Z","prices":{"t":{"credits":0.5,"per":1},"u":{"credits":0.7,"per":1}},"colour":"red"}]"#,
    )
    .unwrap();
    // Every problem of a version, not only its first (serde stops at the first field).
    let err = check(
        &["catalog", "check", cat.to_str().unwrap()],
        &[],
        1,
        "6 problem(s)",
    );
    for want in [
        "[2] c: asset_type = \"modle\": unknown variant",
        "[2] c: colour = \"red\": unknown field `colour`",
        "[2] c: prices.t.credits = 0.5",
        "[2] c: prices.u.credits = 0.7",
    ] {
        assert!(err.contains(want), "{want} in {err}");
    }
    // And every rule a well-formed version breaks.
    std::fs::write(
        &cat,
        r#"[{"asset_id":"d","asset_type":"model","vendor":"v","effective_from":"2024-01-01T00:00:00Z","prices":{"t":{"credits":"-1","per":0},"u":{"credits":"0.1234567890123","per":1}}}]"#,
    )
    .unwrap();
    let rules = check(
        &["catalog", "check", cat.to_str().unwrap()],
        &[],
        1,
        "3 problem(s)",
    );
    for want in [
        "[0] d: prices.t.per: must be at least 1",
        "[0] d: prices.t.credits: must not be negative, got -1",
        "[0] d: prices.u.credits: has more than 12 decimals",
    ] {
        assert!(rules.contains(want), "{want} in {rules}");
    }
    assert!(
        err.contains("[0] a: effective_from = \"2024-01-01\"")
            && err.contains("e.g. \"2024-01-01T00:00:00Z\""),
        "{err}"
    );
    assert!(
        err.contains("[1] b: prices.t.credits = 0.5") && err.contains("write it as a string"),
        "{err}"
    );
    std::fs::write(&cat, "[]").unwrap();
    check(
        &["catalog", "check", cat.to_str().unwrap()],
        &[],
        1,
        "the catalog is empty",
    );
}

#[test]
fn a_successful_catalog_command_writes_no_log_line() {
    // Reading the catalog topic to its end is how publish and check finish: it must not
    // surface as a log line (it was `ERROR ... Global error: PartitionEOF` on every run).
    let env = TestEnv::new("quietcat");
    env.cli(&["setup", "--kafka-only"]);
    let c = env.config_path.to_str().unwrap();
    for args in [
        vec!["--config", c, "catalog", "publish", "config/catalog.json"],
        vec!["--config", c, "catalog", "publish", "config/catalog.json"],
        vec![
            "--config",
            c,
            "catalog",
            "check",
            "config/catalog.json",
            "--against-topic",
        ],
    ] {
        let o = run_bin(&root(), &args, &[], Duration::from_secs(60));
        let err = stderr(&o);
        assert!(o.status.success(), "{args:?}: {err}");
        assert!(
            !err.contains("ERROR") && !err.contains("WARN") && !err.contains("PartitionEOF"),
            "{args:?}: {err}"
        );
    }
    // A retroactive version is not "ok" in the listing when the comparison refuses it.
    let retro = env.dir.path().join("retro.json");
    std::fs::write(
        &retro,
        r#"[{"asset_id":"openai/gpt-4o-mini","asset_type":"model","vendor":"openai","effective_from":"2025-01-01T00:00:00Z","prices":{"input_tokens":{"credits":"0.2","per":1000000}}}]"#,
    )
    .unwrap();
    let o = run_bin(
        &root(),
        &[
            "--config",
            c,
            "catalog",
            "check",
            retro.to_str().unwrap(),
            "--against-topic",
        ],
        &[],
        Duration::from_secs(60),
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        out.contains("1 versions of 1 assets well-formed, but refused against the topic"),
        "{out}"
    );
    assert!(stderr(&o).contains("would reprice past events"));
}
