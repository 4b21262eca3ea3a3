//! `report` for billing periods through the binary, on the real ClickHouse: event-time
//! windows, `--top 0`, "N of M", exact JSON and CSV, display rounding, unknown accounts.

mod common;

use common::*;

fn debit(id: &str, kind: &str, account: &str, total: &str, at: &str) -> String {
    format!(
        "('{id}','{kind}','{account}','x-{id}',{total},0.2,0,{total},1,'{at}','{at}',['llm'],[{total}],0,0,'2026-11-29 00:00:00')"
    )
}

#[test]
fn report_for_a_billing_period() {
    let env = TestEnv::new("report");
    env.cli(&["setup", "--clickhouse-only"]);
    let rows = [
        debit(
            "d1",
            "agent_execution",
            "acct-a",
            "10.123456",
            "2026-10-03 10:00:00",
        ),
        debit(
            "d2",
            "model_call",
            "acct-a",
            "0.00004",
            "2026-10-31 23:59:59",
        ),
        debit(
            "d3",
            "agent_execution",
            "acct-b",
            "5",
            "2026-10-15 00:00:00",
        ),
        debit(
            "d4",
            "agent_execution",
            "acct-c",
            "7",
            "2026-11-01 00:00:00",
        ),
        debit(
            "d5",
            "agent_execution",
            "acct-c",
            "1",
            "2026-09-30 23:59:59",
        ),
    ];
    env.ch(&format!(
        "INSERT INTO {{db}}.debits (debit_id, kind, account_id, execution_id, subtotal, markup_rate, markup, total, calls, first_event_at, last_event_at, breakdown_assets, breakdown_costs, src_partition, src_offset, ingested_at) VALUES {}",
        rows.join(",")
    ));
    let json = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["report", "--format", "json"];
        all.extend_from_slice(args);
        serde_json::from_str(&env.cli(&all)).unwrap()
    };
    let october = json(&["--from", "2026-10-01", "--to", "2026-10-31"]);
    assert_eq!(october["accounts_total"], 2);
    assert_eq!(
        october["totals"]["total"], "15.123496",
        "exact, by event time"
    );
    // Rows without the vendor split (as before migration 6) show it as unclassified; the
    // components still add up to the total.
    assert_eq!(
        october["components"],
        serde_json::json!({"models": "0", "tools": "0", "unclassified": "15.123496", "markup": "0", "total": "15.123496"})
    );
    assert_eq!(october["accounts"][0]["account_id"], "acct-a");
    assert_eq!(october["accounts"][0]["total"], "10.123496");
    assert_eq!(october["window"]["from"], "2026-10-01T00:00:00Z");
    assert_eq!(october["window"]["to"], "2026-11-01T00:00:00Z");
    assert!(october["generated_at"].is_string());
    let top1 = json(&["--from", "2026-10-01", "--to", "2026-10-31", "--top", "1"]);
    assert_eq!(top1["accounts"].as_array().unwrap().len(), 1);
    assert_eq!(top1["accounts_total"], 2);
    assert_eq!(top1["executions_total"], 2);
    let all = json(&["--top", "0"]);
    assert_eq!(
        all["accounts"].as_array().unwrap().len(),
        3,
        "--top 0 is all"
    );
    assert_eq!(all["top_executions"].as_array().unwrap().len(), 4);

    let text = env.cli(&[
        "report",
        "--from",
        "2026-10-01",
        "--to",
        "2026-10-31",
        "--top",
        "1",
    ]);
    assert!(
        text.contains("Spend by account (1 of 2 accounts)"),
        "{text}"
    );
    assert!(text.contains("10.1235"), "rounded for display: {text}");
    assert!(
        text.contains("event time 2026-10-01T00:00:00Z .. 2026-11-01T00:00:00Z"),
        "{text}"
    );
    // Issue 23 item 9: a table's columns line up whatever the width of a cell (an account id
    // longer than the old fixed 28 columns).
    let long = "acct-with-a-rather-long-identifier-0042";
    env.ch(&format!(
        "INSERT INTO {{db}}.debits (debit_id, kind, account_id, execution_id, subtotal, markup_rate, markup, total, calls, first_event_at, last_event_at, breakdown_assets, breakdown_costs, src_partition, src_offset, ingested_at) VALUES {},{}",
        debit(
            "d6",
            "agent_execution",
            long,
            "123.5",
            "2026-08-20 00:00:00"
        ),
        debit(
            "d7",
            "model_call",
            "acct-s",
            "1234567.5",
            "2026-08-21 00:00:00"
        )
    ));
    let text = env.cli(&["report", "--from", "2026-08-01", "--to", "2026-08-31"]);
    let table: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("Spend by account"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(table.len(), 3, "header and two accounts: {text}");
    assert!(table[2].starts_with(long), "{text}");
    let ends: Vec<usize> = table.iter().map(|l| l.len()).collect();
    assert!(ends.iter().all(|e| *e == ends[0]), "totals line up: {text}");
    let debits_end = table[0].find("debits").unwrap() + "debits".len();
    assert!(
        table[1..]
            .iter()
            .all(|l| &l[debits_end - 2..debits_end] == " 1"),
        "debit counts right-aligned under their header: {text}"
    );

    let csv = env.cli(&[
        "report",
        "--format",
        "csv",
        "--top",
        "0",
        "--from",
        "2026-10-01T00:00:00Z",
        "--to",
        "2026-11-01T00:00:00Z",
    ]);
    assert_eq!(
        csv,
        "account_id,debits,subtotal,markup,total\nacct-a,2,10.123496,0,10.123496\nacct-b,1,5,0,5\n"
    );

    let out = std::process::Command::new(TestEnv::bin())
        .args([
            "--config",
            env.config_path.to_str().unwrap(),
            "report",
            "--account",
            "acct-zz",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("account \"acct-zz\" has no debits at all"),
        "{err}"
    );
    let out = std::process::Command::new(TestEnv::bin())
        .args([
            "--config",
            env.config_path.to_str().unwrap(),
            "report",
            "--from",
            "last week",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    // A usage error (exit 2), like every malformed argument value.
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("'--from <TIME>': \"last week\" is neither a date"),
        "{err}"
    );
}
