//! Reading the console's pages in the browser: table rows, the rows the API's entries should
//! give, sign-in, the downloaded CSV, screenshots, browser errors.

use super::*;

pub(crate) fn kind_word(k: &str) -> &str {
    match k {
        "debit" => "Usage",
        "topup" => "Top-up",
        "voucher" => "Voucher",
        "adjustment" => "Adjustment",
        "expiry" => "Expiry",
        other => other,
    }
}

pub(crate) fn quantity_text(q: &Value) -> String {
    q.as_object()
        .into_iter()
        .flatten()
        .map(|(unit, n)| {
            let n = n.as_str().map_or_else(|| n.to_string(), str::to_string);
            format!("{n} {}", unit.replace('_', " "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the Transactions table must show for one API entry, cell by cell (the CSV columns).
pub(crate) fn expected_row(e: &Value) -> Vec<String> {
    let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
    let date = s("date")
        .replacen('T', " ", 1)
        .trim_end_matches('Z')
        .to_string();
    let assets: Vec<&Value> = e["assets"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let net = d(&s("credit")) - d(&s("debit"));
    let credits = if net > Decimal::ZERO {
        format!("+{}", api(net))
    } else {
        api(net)
    };
    let desc = if s("description").is_empty() {
        s("reference")
    } else {
        s("description")
    };
    vec![
        e["seq"].to_string(),
        date,
        kind_word(&s("kind")).to_string(),
        desc,
        assets
            .iter()
            .map(|a| a["asset_id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
            .join("; "),
        assets
            .iter()
            .map(|a| {
                format!(
                    "{}: {}",
                    a["asset_id"].as_str().unwrap(),
                    quantity_text(&a["quantities"])
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        credits,
        s("balance"),
    ]
}

/// The rows of the Transactions table as shown: seq, then each cell's text (lists joined "; ").
pub(crate) async fn shown_rows(b: &Browser) -> Vec<Vec<String>> {
    let v = b
        .js(
            r#"return Array.from(document.querySelectorAll('#entries tbody tr:not(.detail)'), (tr) => {
                const cell = (c) => { const td = tr.querySelector(`td[data-col="${c}"]`);
                  const li = td.querySelectorAll('li');
                  return li.length ? Array.from(li, (x) => x.textContent.trim()).join('; ') : td.textContent.trim(); };
                const assets = cell('assets').split('; ');
                const vol = cell('volume');
                return [tr.dataset.seq, cell('date'), cell('kind'), cell('description'), cell('assets'),
                        vol ? vol.split('; ').map((q, i) => `${assets[i]}: ${q}`).join('; ') : '',
                        cell('credits'), cell('balance')];
            });"#,
            vec![],
        )
        .await;
    serde_json::from_value(v).unwrap()
}

/// The CSV file the browser downloaded, once complete (no `.crdownload` left and the same
/// content twice 100 ms apart); removed after reading.
pub(crate) async fn downloaded_csv(b: &Browser) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last: Option<String> = None;
    loop {
        let files: Vec<std::path::PathBuf> = std::fs::read_dir(b.downloads.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        let partial = files
            .iter()
            .any(|p| p.extension().is_some_and(|x| x == "crdownload"));
        let csv = files
            .iter()
            .find(|p| p.extension().is_some_and(|x| x == "csv"));
        match (partial, csv) {
            (false, Some(p)) => {
                let text = std::fs::read_to_string(p).unwrap();
                if last.as_deref() == Some(text.as_str()) {
                    std::fs::remove_file(p).unwrap();
                    return text;
                }
                last = Some(text);
            }
            _ => last = None,
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no complete CSV was downloaded: {files:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether this build serves the traces API (usage, executions listing, the execution trace
/// with its calls, the event streams). Until it is on main the checks that need it are
/// skipped, said loudly; once it is, they run.
pub(crate) fn has_traces_api(addr: &str) -> bool {
    let (status, body) = api_get(addr, "/v1/accounts/acct-probe/usage", Some(TOKEN));
    let missing = status == 404 && body.to_string().contains("no endpoint");
    if missing {
        eprintln!(
            "SKIPPED: this build has no traces API (/v1/accounts/{{id}}/usage): the Usage page and an execution's calls are not checked"
        );
    }
    !missing
}

/// The rows of a Usage table: key, calls, credits.
pub(crate) async fn usage_groups(b: &Browser, table: &str) -> Vec<Vec<String>> {
    let v = b.js(&format!("return Array.from(document.querySelectorAll('#{table} tbody tr'), tr => [tr.dataset.key, tr.querySelector('[data-col=calls]').textContent.trim(), tr.querySelector('[data-col=amount]').textContent.trim()])"), vec![]).await;
    serde_json::from_value(v).unwrap()
}

/// No script error, refused load or CSP violation in the browser's console (answers 4xx of the
/// API, such as a refusal the page shows, are expected and left out).
pub(crate) async fn assert_no_browser_errors(b: &Browser) {
    let errors: Vec<String> = b
        .severe_logs()
        .await
        .into_iter()
        .filter(|m| {
            !regex::Regex::new(r"the server responded with a status of 4\d\d")
                .unwrap()
                .is_match(m)
        })
        .collect();
    assert!(errors.is_empty(), "browser errors: {errors:#?}");
}

/// Screenshots of the current page at desktop and phone width.
pub(crate) async fn both(b: &Browser, name: &str) -> Vec<std::path::PathBuf> {
    let shots = vec![b.shot(name, DESKTOP).await, b.shot(name, PHONE).await];
    b.size(DESKTOP).await;
    shots
}
