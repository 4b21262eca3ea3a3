//! `catalog import --format litellm` and `catalog check` through the binary: the LiteLLM
//! fixture converts exactly (every price kind, every skip reason), the result loads and
//! rates events (aliases included) to the exact amounts; ambiguous aliases are named.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use common::root;
use usage_aggregator::catalog::PriceVersion;

const FIXTURE: &str = "tests/fixtures/litellm/model_prices_and_context_window.json";

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_usage-aggregator"));
    c.current_dir(root());
    c
}

/// Runs the import; returns (versions by asset id, stderr).
fn import(extra: &[&str]) -> (BTreeMap<String, PriceVersion>, String, tempfile::TempDir) {
    import_from(FIXTURE, extra)
}

fn import_from(
    fixture: &str,
    extra: &[&str],
) -> (BTreeMap<String, PriceVersion>, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("imported.json");
    let out = bin()
        .args(["catalog", "import", "--format", "litellm", fixture])
        .args(["--effective-from", "2026-07-01T00:00:00Z", "--output"])
        .arg(&out_path)
        .args(extra)
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{err}");
    let versions: Vec<PriceVersion> =
        serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap();
    let map = versions
        .into_iter()
        .map(|v| (v.asset_id.clone(), v))
        .collect();
    (map, err, dir)
}

/// "credits/per" of each unit of an asset.
fn prices(v: &PriceVersion) -> BTreeMap<&str, String> {
    v.prices
        .iter()
        .map(|(u, p)| (u.as_str(), format!("{}/{}", p.credits, p.per)))
        .collect()
}

/// (asset id, asset type, [(unit, "credits/per")]).
type Expected<'a> = (&'a str, &'a str, &'a [(&'a str, String)]);

#[test]
fn litellm_fixture_converts_every_price_kind_exactly() {
    let (v, err, _dir) = import(&[]);
    let m = 1_000_000;
    let expect: &[Expected<'_>] = &[
        (
            "openai/gpt-4o-mini",
            "model",
            &[
                ("cached_input_tokens", format!("0.075/{m}")),
                ("input_tokens", format!("0.15/{m}")),
                ("output_tokens", format!("0.6/{m}")),
            ],
        ),
        (
            "anthropic/claude-3-5-sonnet-20241022",
            "model",
            &[
                ("cache_creation_input_tokens", format!("3.75/{m}")),
                ("cached_input_tokens", format!("0.3/{m}")),
                ("input_tokens", format!("3/{m}")),
                ("output_tokens", format!("15/{m}")),
            ],
        ),
        (
            "anthropic/claude-3-7-sonnet-20250219",
            "model",
            &[
                ("cache_creation_1h_input_tokens", format!("6/{m}")),
                ("cache_creation_input_tokens", format!("3.75/{m}")),
                ("cached_input_tokens", format!("0.3/{m}")),
                ("input_tokens", format!("3/{m}")),
                ("output_tokens", format!("15/{m}")),
            ],
        ),
        (
            "gemini/gemini-2.5-flash-preview-04-17",
            "model",
            &[
                ("input_audio_tokens", format!("1/{m}")),
                ("input_tokens", format!("0.15/{m}")),
                ("output_tokens", format!("0.6/{m}")),
                ("reasoning_tokens", format!("3.5/{m}")),
            ],
        ),
        (
            "openai/gpt-4o-audio-preview",
            "model",
            &[
                ("input_audio_tokens", format!("40/{m}")),
                ("input_tokens", format!("2.5/{m}")),
                ("output_audio_tokens", format!("80/{m}")),
                ("output_tokens", format!("10/{m}")),
            ],
        ),
        (
            "openai/256-x-256/dall-e-2",
            "model",
            &[
                ("input_pixels", format!("0.24414/{m}")),
                ("output_pixels", format!("0/{m}")),
            ],
        ),
        (
            "vertex_ai-image-models/vertex_ai/imagegeneration@006",
            "model",
            &[("images", "0.02/1".into())],
        ),
        (
            "vertex_ai-vision-models/gemini-pro-vision",
            "model",
            &[
                ("input_images", "0.0025/1".into()),
                ("input_tokens", format!("0.5/{m}")),
                ("output_tokens", format!("1.5/{m}")),
            ],
        ),
        (
            "openai/whisper-1",
            "model",
            &[
                ("input_seconds", "0.0001/1".into()),
                ("output_seconds", "0.0001/1".into()),
            ],
        ),
        (
            "openai/tts-1",
            "model",
            &[("input_characters", format!("15/{m}"))],
        ),
        (
            "vertex_ai-video-models/vertex_ai/veo-2.0-generate-001",
            "model",
            &[("output_seconds", "0.35/1".into())],
        ),
        ("tavily/search", "tool", &[("queries", "0.008/1".into())]),
        (
            "cohere/rerank-english-v3.0",
            "model",
            &[
                ("input_tokens", format!("0/{m}")),
                ("output_tokens", format!("0/{m}")),
                ("queries", "0.002/1".into()),
            ],
        ),
        (
            "mistral/mistral-ocr-latest",
            "model",
            &[("pages", "0.001/1".into())],
        ),
        (
            "deepseek/deepseek-chat",
            "model",
            &[
                ("cached_input_tokens", format!("0.07/{m}")),
                ("input_tokens", format!("0.27/{m}")),
                ("output_tokens", format!("1.1/{m}")),
            ],
        ),
        (
            "ollama/llama3",
            "model",
            &[
                ("input_tokens", format!("0/{m}")),
                ("output_tokens", format!("0/{m}")),
            ],
        ),
        (
            "openai/text-embedding-3-small",
            "model",
            &[
                ("input_tokens", format!("0.02/{m}")),
                ("output_tokens", format!("0/{m}")),
            ],
        ),
        (
            "tiny/fraction-model",
            "model",
            &[("input_tokens", "0.0000000123/1000000000".into())],
        ),
        // Long-context rates become tiers (asserted in their own test); these are the
        // default prices.
        (
            "gemini/gemini-1.5-pro",
            "model",
            &[
                ("input_tokens", format!("1.25/{m}")),
                ("output_tokens", format!("5/{m}")),
            ],
        ),
        (
            "anthropic/claude-sonnet-4-20250514",
            "model",
            &[
                ("cache_creation_input_tokens", format!("3.75/{m}")),
                ("cached_input_tokens", format!("0.3/{m}")),
                ("input_tokens", format!("3/{m}")),
                ("output_tokens", format!("15/{m}")),
            ],
        ),
    ];
    for (asset, kind, units) in expect {
        let version = v
            .get(*asset)
            .unwrap_or_else(|| panic!("{asset} missing: {err}"));
        assert_eq!(version.asset_type.as_str(), *kind, "{asset}");
        assert_eq!(
            &version.effective_from.to_rfc3339(),
            "2026-07-01T00:00:00+00:00"
        );
        let want: BTreeMap<&str, String> = units.iter().map(|(u, p)| (*u, p.clone())).collect();
        assert_eq!(prices(version), want, "{asset}");
    }
    assert_eq!(v.len(), expect.len(), "{:?}", v.keys().collect::<Vec<_>>());
    // The provider is the vendor; the LiteLLM name stays reachable as an alias.
    assert_eq!(v["openai/gpt-4o-mini"].vendor, "openai");
    assert_eq!(v["openai/gpt-4o-mini"].aliases, ["gpt-4o-mini"]);
    assert!(
        v["gemini/gemini-2.5-flash-preview-04-17"]
            .aliases
            .is_empty()
    );
    assert_eq!(v["openai/whisper-1"].aliases, ["whisper-1"]);
    // Every model it cannot express is reported with its reason, never imported.
    for (key, why) in [
        (
            "vertex-char-long-model",
            "input_cost_per_character_above_128k_tokens",
        ),
        (
            "output-tier-only-model",
            "without input_cost_per_token_above_200k_tokens: LiteLLM never applies it",
        ),
        ("gpt-4o-search-preview", "search_context_cost_per_query"),
        ("veo-3.0-generate-preview", "output_cost_per_second_1080p"),
        ("mystery-model", "not guessed"),
        ("string-price-model", "must be a json number"),
        ("negative-price-model", "negative"),
        ("no-provider-model", "litellm_provider"),
        ("metadata-only-model", "no price"),
        ("duplicate-price-model", "more than once"),
        ("clash", "different prices"),
        ("acme/clash", "different prices"),
    ] {
        let line = err
            .lines()
            .find(|l| l.starts_with(&format!("skipped {key}:")))
            .unwrap_or_else(|| panic!("{key} not reported: {err}"));
        assert!(line.contains(why), "{line}");
    }
    assert!(!err.contains("skipped sample_spec") && !err.contains("fallback_generalizations"));
    assert!(
        err.contains("not imported: input_cost_per_token_batches on 1 models"),
        "{err}"
    );
    assert!(
        err.contains("priced 0 as written in the file: ollama/llama3"),
        "{err}"
    );
    assert!(
        err.contains("not imported: input_cost_per_token_above_200k_tokens_priority on 1 models"),
        "{err}"
    );
    assert!(
        err.contains("imported 21 models as 20 price versions"),
        "{err}"
    );
}

#[test]
fn provider_filter_and_with_catalog_check() {
    let (v, _, _dir) = import(&["--provider", "anthropic", "--provider", "tavily"]);
    assert_eq!(
        v.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "anthropic/claude-3-5-sonnet-20241022",
            "anthropic/claude-3-7-sonnet-20250219",
            "anthropic/claude-sonnet-4-20250514",
            "tavily/search"
        ]
    );
    // Next to the sample catalog, whose claude-3-5-sonnet pattern already claims the dated
    // name, the dated import is refused and reported, the rest kept.
    let (v, err, _dir) = import(&[
        "--provider",
        "anthropic",
        "--with-catalog",
        "config/catalog.json",
    ]);
    assert!(
        !v.contains_key("anthropic/claude-3-5-sonnet-20241022"),
        "{err}"
    );
    assert!(v.contains_key("anthropic/claude-3-7-sonnet-20250219"));
    assert!(
        err.contains("skipped anthropic/claude-3-5-sonnet-20241022: refused next to config/catalog.json: ambiguous alias"),
        "{err}"
    );
}

/// Issue 23: the undated name LiteLLM's map gives (an entry of that name, or its `-latest`
/// entry) is the asset id; dated names with the same prices are its aliases (key and
/// provider-prefixed id); a dated name with other prices stays an asset of its own.
#[test]
fn dated_names_become_aliases_of_the_undated_asset() {
    let (v, err, dir) = import_from("tests/fixtures/litellm/dated_names.json", &[]);
    let aliases = |id: &str| v[id].aliases.join(" ");
    assert_eq!(
        v.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "anthropic/claude-3-5-sonnet",
            "anthropic/claude-3-7-sonnet-20250219",
            "openai/gpt-4o",
            "openai/gpt-4o-2024-05-13"
        ],
        "{err}"
    );
    assert_eq!(
        aliases("openai/gpt-4o"),
        "gpt-4o gpt-4o-2024-08-06 openai/gpt-4o-2024-08-06"
    );
    assert_eq!(
        aliases("anthropic/claude-3-5-sonnet"),
        "anthropic/claude-3-5-sonnet-20241022 anthropic/claude-3-5-sonnet-latest claude-3-5-sonnet claude-3-5-sonnet-20241022 claude-3-5-sonnet-latest"
    );
    assert!(
        err.contains("openai/gpt-4o-2024-08-06 is an alias of openai/gpt-4o (same prices)")
            && err.contains("openai/gpt-4o-2024-05-13 stays an asset of its own"),
        "{err}"
    );
    // A dated name is billed and recorded under the undated asset.
    let out = rate(
        &dir.path().join("imported.json"),
        r#"{"type":"model_call","event_id":"e","occurred_at":"2026-08-01T00:00:00Z","account_id":"a","asset_id":"gpt-4o-2024-08-06","quantities":{"input_tokens":1000000}}"#,
    );
    let line = out.iter().find_map(|r| r.get("line")).unwrap();
    assert_eq!(
        (line["asset_id"].as_str(), line["cost"].as_str()),
        (Some("openai/gpt-4o"), Some("2.5"))
    );
}

fn rate(catalog: &std::path::Path, input: &str) -> Vec<serde_json::Value> {
    let mut child = bin()
        .args(["rate", "--lines", "--catalog"])
        .arg(catalog)
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
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn imported_catalog_rates_to_the_exact_amounts() {
    let (_, _, dir) = import(&[]);
    let path = dir.path().join("imported.json");
    let ev = |id: &str, asset: &str, q: &str| {
        format!(
            r#"{{"type":"model_call","event_id":"{id}","occurred_at":"2026-07-02T00:00:00Z","account_id":"a","asset_id":"{asset}","quantities":{q}}}"#
        )
    };
    let input = [
        ev(
            "e1",
            "gpt-4o-mini",
            r#"{"input_tokens":1000000,"cached_input_tokens":1000000,"output_tokens":1000000}"#,
        )
        .replace(
            "}}",
            r#"},"dimensions":{"project":"apollo","end_user":"u1"}}"#,
        ),
        ev("e2", "whisper-1", r#"{"input_seconds":"90.5"}"#),
        ev(
            "e3",
            "tiny/fraction-model",
            r#"{"input_tokens":1000000000}"#,
        ),
        ev("e4", "tts-1", r#"{"input_characters":1000}"#),
        ev(
            "e5",
            "deepseek/deepseek-chat",
            r#"{"input_tokens":1,"cached_input_tokens":1}"#,
        ),
        ev("e6", "gpt-4o-mini", r#"{"input_tokens":1}"#).replace("2026-07-02", "2026-06-30"),
        ev("e7", "gpt-4o-mini", r#"{"search_queries":1}"#),
    ]
    .join("\n");
    let records = rate(&path, &input);
    let lines: BTreeMap<String, &serde_json::Value> = records
        .iter()
        .filter_map(|r| r.get("line"))
        .map(|l| (l["event_id"].as_str().unwrap().to_string(), l))
        .collect();
    let cost = |id: &str| lines[id]["cost"].as_str().unwrap().to_string();
    assert_eq!(cost("e1"), "0.825");
    assert_eq!(lines["e1"]["asset_id"], "openai/gpt-4o-mini");
    assert_eq!(lines["e1"]["asset_name_sent"], "gpt-4o-mini");
    assert_eq!(
        lines["e1"]["dimensions"],
        serde_json::json!({"end_user": "u1", "project": "apollo"})
    );
    assert!(lines["e2"].get("dimensions").is_none());
    assert_eq!(cost("e2"), "0.00905");
    assert_eq!(cost("e3"), "0.0000000123");
    assert_eq!(cost("e4"), "0.015");
    assert_eq!(cost("e5"), "0.00000034");
    // Before the imported versions take effect, and units it never priced: rejected, not 0.
    let reasons: Vec<&str> = records
        .iter()
        .filter_map(|r| r.get("rejected"))
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["no_price_at_time", "unknown_unit"]);
}

#[test]
fn catalog_check_names_both_sides_of_an_ambiguity() {
    let dir = tempfile::tempdir().unwrap();
    let mut all: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(root().join("config/catalog.json")).unwrap())
            .unwrap();
    all.push(serde_json::json!({
        "asset_id": "azure/gpt-4o-mini", "asset_type": "model", "vendor": "azure",
        "effective_from": "2024-01-01T00:00:00Z",
        "prices": {"input_tokens": {"credits": "0.165", "per": 1000000}},
        "alias_patterns": ["(azure/)?gpt-4o-mini(-[0-9]{4}-[0-9]{2}-[0-9]{2})?"]
    }));
    let f = dir.path().join("c.json");
    std::fs::write(&f, serde_json::to_vec(&all).unwrap()).unwrap();
    let out = bin().args(["catalog", "check"]).arg(&f).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(
            "refused: ambiguous alias: \"gpt-4o-mini\" would resolve to azure/gpt-4o-mini"
        ) && err.contains("openai/gpt-4o-mini"),
        "{err}"
    );
    let out = bin()
        .args(["catalog", "check", "config/catalog.json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("aliases: gpt-4o-mini /(openai/)?gpt-4o-mini-"),
        "{text}"
    );
}

/// LiteLLM's `*_above_Nk_tokens` keys become tiers that bill the boundary as LiteLLM does:
/// `prompt_tokens` (every input-side token unit) above N prices every tiered unit at its
/// long-context rate; at N exactly, the base rates.
#[test]
fn litellm_long_context_rates_bill_the_boundary_exactly() {
    let (v, _, dir) = import(&[]);
    let path = dir.path().join("imported.json");
    let sonnet = &v["anthropic/claude-sonnet-4-20250514"];
    assert_eq!(sonnet.tiers.len(), 1);
    let t = &sonnet.tiers[0];
    assert_eq!(t.name, "above_200k_tokens");
    assert_eq!(
        serde_json::to_value(&t.when).unwrap(),
        serde_json::json!([{"units": ["input_tokens", "cached_input_tokens", "cache_creation_input_tokens"], "above": 200000}])
    );
    let tier_prices: BTreeMap<&str, String> = t
        .prices
        .iter()
        .map(|(u, p)| (u.as_str(), format!("{}/{}", p.credits, p.per)))
        .collect();
    let m = 1_000_000;
    assert_eq!(
        tier_prices,
        BTreeMap::from([
            ("cache_creation_input_tokens", format!("7.5/{m}")),
            ("cached_input_tokens", format!("0.6/{m}")),
            ("input_tokens", format!("6/{m}")),
            ("output_tokens", format!("22.5/{m}")),
        ])
    );
    // The imported file passes the check, which shows the tier.
    let out = bin()
        .args(["catalog", "check"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("tier above_200k_tokens (input_tokens+cached_input_tokens+cache_creation_input_tokens above 200000): cache_creation_input_tokens 7.5/1000000"),
        "{text}"
    );
    let ev = |id: &str, asset: &str, q: &str| {
        format!(
            r#"{{"type":"model_call","event_id":"{id}","occurred_at":"2026-07-02T00:00:00Z","account_id":"a","asset_id":"{asset}","quantities":{q}}}"#
        )
    };
    let input = [
        // 150 000 + 30 000 + 20 000 = 200 000 prompt tokens: base rates.
        ev(
            "at",
            "claude-sonnet-4-20250514",
            r#"{"input_tokens":150000,"cached_input_tokens":30000,"cache_creation_input_tokens":20000,"output_tokens":1000}"#,
        ),
        // 200 001: every unit at the long-context rate, output included.
        ev(
            "above",
            "claude-sonnet-4-20250514",
            r#"{"input_tokens":150001,"cached_input_tokens":30000,"cache_creation_input_tokens":20000,"output_tokens":1000}"#,
        ),
        // Output tokens do not count towards the threshold.
        ev(
            "output",
            "claude-sonnet-4-20250514",
            r#"{"input_tokens":200000,"output_tokens":500000}"#,
        ),
        ev(
            "g128",
            "gemini/gemini-1.5-pro",
            r#"{"input_tokens":128000,"output_tokens":100}"#,
        ),
        ev(
            "g128+1",
            "gemini/gemini-1.5-pro",
            r#"{"input_tokens":128001,"output_tokens":100}"#,
        ),
    ]
    .join("\n");
    let records = rate(&path, &input);
    let lines: BTreeMap<String, &serde_json::Value> = records
        .iter()
        .filter_map(|r| r.get("line"))
        .map(|l| (l["event_id"].as_str().unwrap().to_string(), l))
        .collect();
    let got = |id: &str| {
        (
            lines[id]["cost"].as_str().unwrap().to_string(),
            lines[id]["tier"].as_str().unwrap().to_string(),
        )
    };
    // 150000*3 + 30000*0.3 + 20000*3.75 + 1000*15, per million
    assert_eq!(got("at"), ("0.549".into(), "default".into()));
    // 150001*6 + 30000*0.6 + 20000*7.5 + 1000*22.5, per million
    assert_eq!(
        got("above"),
        ("1.090506".into(), "above_200k_tokens".into())
    );
    assert_eq!(got("output"), ("8.1".into(), "default".into()));
    // 128000*1.25 + 100*5; 128001*2.5 + 100*10
    assert_eq!(got("g128"), ("0.1605".into(), "default".into()));
    assert_eq!(
        got("g128+1"),
        ("0.3210025".into(), "above_128k_tokens".into())
    );
}
