//! Files and pipes: relative paths follow the config file, a closed stdout ends commands
//! quietly, `rate` for scripts (strict mode, rejects file, summary).

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::common::*;
use crate::support::*;

#[test]
fn relative_paths_follow_the_config_file_and_missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::copy(root().join("config/catalog.json"), etc.join("prices.json")).unwrap();
    std::fs::write(
        etc.join("c.toml"),
        "[pricing]\ncatalog_file = \"prices.json\"\n",
    )
    .unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let cfg = etc.join("c.toml");
    let out = elsewhere.path().join("ev.jsonl");
    let o = run_bin(
        elsewhere.path(),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "loadgen",
            "--executions",
            "2",
            "--direct-calls",
            "2",
            "--output",
            out.to_str().unwrap(),
        ],
        &[],
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("generated "),
        "final count"
    );
    std::fs::remove_file(etc.join("prices.json")).unwrap();
    let o = run_bin(
        elsewhere.path(),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "loadgen",
            "--output",
            out.to_str().unwrap(),
        ],
        &[],
        Duration::from_secs(60),
    );
    let err = stderr(&o);
    assert!(
        err.contains("pricing.catalog_file")
            && err.contains(&format!(
                "{}\": cannot read",
                etc.join("prices.json").display()
            )),
        "{err}"
    );
    // Without a config file the default is relative to the current directory: say which.
    let o = run_bin(
        elsewhere.path(),
        &["loadgen", "--output", out.to_str().unwrap()],
        &[],
        Duration::from_secs(60),
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "pricing.catalog_file = \"config/catalog.json\" (in {}): cannot read",
            elsewhere.path().display()
        )) && err.contains("give --catalog FILE"),
        "{err}"
    );
}

/// Spawns `args` with stdin `input`, reads `keep` bytes of stdout and closes it.
fn closed_stdout(args: &[&str], input: &[u8], keep: usize) -> Output {
    let mut child = Command::new(TestEnv::bin())
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = vec![0u8; keep];
    stdout.read_exact(&mut buf).unwrap();
    drop(stdout);
    let out = wait_or_kill(child, Duration::from_secs(60), args);
    feeder.join().unwrap();
    out
}

#[test]
fn a_closed_stdout_ends_commands_quietly() {
    let events: String = (0..20_000)
        .map(|i| {
            format!(
                "{{\"type\":\"tool_call\",\"event_id\":\"e{i}\",\"occurred_at\":\"2026-03-01T10:00:00Z\",\"account_id\":\"a\",\"asset_id\":\"tavily/web-search\",\"quantities\":{{\"requests\":1}}}}\n"
            )
        })
        .collect();
    let o = closed_stdout(
        &["rate", "--catalog", "config/catalog.json"],
        events.as_bytes(),
        10,
    );
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        !err.contains("Broken pipe") && !err.contains("panicked"),
        "{err}"
    );
    let o = closed_stdout(
        &[
            "catalog",
            "check",
            "config/catalog.json",
            "--format",
            "json",
        ],
        b"",
        10,
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_closed_stdout_ends_the_ledger_commands_quietly() {
    // `credits history | head -1` panicked (exit 101): the ledger commands printed with
    // println!. 1000 entries with long descriptions overflow the pipe buffer, so the write
    // after the reader is gone must fail and end the command quietly.
    let env = TestEnv::new("pipehist");
    env.cli(&["setup", "--clickhouse-only"]);
    env.ch(&format!(
        "INSERT INTO {{db}}.ledger (entry_id, account_id, seq, occurred_at, kind, reference, description, credit, debit, balance_after, src_partition, src_offset, ingested_at) \
         SELECT toString(number), 'acct-pipe', number + 1, now(), 'topup', toString(number), '{}', 1, 0, number + 1, 0, number, now() FROM numbers(1000)",
        "d".repeat(200)
    ));
    let c = env.config_path.to_str().unwrap();
    for args in [
        vec![
            "--config",
            c,
            "credits",
            "history",
            "acct-pipe",
            "--limit",
            "1000",
        ],
        vec![
            "--config",
            c,
            "credits",
            "history",
            "acct-pipe",
            "--limit",
            "1000",
            "--format",
            "json",
        ],
    ] {
        let o = closed_stdout(&args, b"", 10);
        let err = stderr(&o);
        assert!(o.status.success(), "{args:?}: {err}");
        assert!(
            !err.contains("Broken pipe") && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn rate_for_scripts_strict_rejects_file_and_summary() {
    let dir = tempfile::tempdir().unwrap();
    let rejects = dir.path().join("rejects.jsonl");
    let ev = |id: &str| {
        format!(
            "{{\"type\":\"tool_call\",\"event_id\":\"{id}\",\"occurred_at\":\"2026-03-01T10:00:00Z\",\"account_id\":\"a\",\"asset_id\":\"tavily/web-search\",\"quantities\":{{\"requests\":1}}}}"
        )
    };
    let input = [ev("1"), ev("1"), "not json".into(), ev("2")].join("\n");
    let mut child = Command::new(TestEnv::bin())
        .args([
            "rate",
            "--catalog",
            "config/catalog.json",
            "--strict",
            "--rejects",
        ])
        .arg(&rejects)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("rated 4 events: 2 debits, 1 rejected (invalid_json 1), 1 duplicates"),
        "{err}"
    );
    assert!(
        err.contains("error: 1 of 4 events rejected (--strict)"),
        "{err}"
    );
    let out = String::from_utf8(o.stdout).unwrap();
    assert_eq!(out.lines().count(), 2);
    assert!(out.lines().all(|l| l.starts_with("{\"debit\":")), "{out}");
    let rej = std::fs::read_to_string(&rejects).unwrap();
    let r: serde_json::Value = serde_json::from_str(rej.trim()).unwrap();
    assert_eq!(r["reason"], "invalid_json");
    assert_eq!(r["line"], 3);
}
