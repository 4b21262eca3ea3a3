use super::*;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

const TWO_VERSIONS: &str = r#"[
  {"asset_id":"m","asset_type":"model","vendor":"v","effective_from":"2026-06-01T00:00:00Z",
   "prices":{"input_tokens":{"credits":"0.12","per":1000000}}},
  {"asset_id":"m","asset_type":"model","vendor":"v","effective_from":"2024-01-01T00:00:00Z",
   "prices":{"input_tokens":{"credits":"0.15","per":1000000}}},
  {"asset_id":"slack","asset_type":"integration","vendor":"slack","effective_from":"2024-01-01T00:00:00Z","prices":{}}
]"#;

#[test]
fn point_in_time_lookup() {
    let c = Catalog::from_json(TWO_VERSIONS.as_bytes()).unwrap();
    assert_eq!(c.version_count(), 3);
    let old = c.lookup("m", t("2026-05-31T23:59:59Z")).unwrap();
    assert_eq!(
        old.price_of("input_tokens").unwrap().credits.to_string(),
        "0.15"
    );
    let new = c.lookup("m", t("2026-06-01T00:00:00Z")).unwrap();
    assert_eq!(
        new.price_of("input_tokens").unwrap().credits.to_string(),
        "0.12"
    );
    assert_eq!(&*new.label, "2026-06-01T00:00:00Z");
    assert_eq!(
        c.lookup("nope", t("2026-01-01T00:00:00Z")),
        Err(LookupError::UnknownAsset)
    );
    assert!(matches!(
        c.lookup("m", t("2023-01-01T00:00:00Z")),
        Err(LookupError::BeforeFirstVersion(_))
    ));
}

#[test]
fn same_version_twice_is_idempotent_but_a_different_one_conflicts() {
    let mut c = Catalog::from_json(TWO_VERSIONS.as_bytes()).unwrap();
    let v = c.versions().next().unwrap().clone();
    assert!(!c.insert(v.clone()).unwrap());
    let mut changed = v;
    changed.vendor = "other".into();
    assert!(matches!(
        c.insert(changed),
        Err(CatalogError::Conflict { .. })
    ));
}

#[test]
fn invalid_versions_name_the_field() {
    let bad = TWO_VERSIONS.replace("\"0.12\"", "\"-1\"");
    let e = Catalog::from_json(bad.as_bytes()).unwrap_err().to_string();
    assert!(e.contains("prices.input_tokens.credits"), "{e}");
    let bad = TWO_VERSIONS.replace("\"per\":1000000}}},", "\"per\":0}}},");
    let e = Catalog::from_json(bad.as_bytes()).unwrap_err().to_string();
    assert!(e.contains("per"), "{e}");
    let bad = TWO_VERSIONS.replace("\"credits\":\"0.12\"", "\"credits\":0.12");
    assert!(
        Catalog::from_json(bad.as_bytes()).is_err(),
        "float prices are refused"
    );
}

fn shipped() -> Catalog {
    let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/config/catalog.json")).unwrap();
    Catalog::from_json(&bytes).unwrap()
}

#[test]
fn sdk_names_resolve_to_the_canonical_asset() {
    let c = shipped();
    for (sent, canonical) in [
        ("gpt-4o-mini-2024-07-18", "openai/gpt-4o-mini"),
        ("openai/gpt-4o-mini-2024-07-18", "openai/gpt-4o-mini"),
        ("gpt-4o-mini", "openai/gpt-4o-mini"),
        ("gpt-4o-2024-08-06", "openai/gpt-4o"),
        ("claude-3-5-sonnet-20241022", "anthropic/claude-3-5-sonnet"),
        (
            "anthropic/claude-3-5-sonnet-20240620",
            "anthropic/claude-3-5-sonnet",
        ),
        ("models/gemini-1.5-flash-002", "google/gemini-1.5-flash"),
        ("gemini-1.5-flash-001", "google/gemini-1.5-flash"),
        ("openai/gpt-4o-mini", "openai/gpt-4o-mini"),
    ] {
        assert_eq!(c.resolve(sent), Some(canonical), "{sent}");
    }
    for unknown in [
        "gpt-4o-mini-2024-07",
        "GPT-4o-mini-2024-07-18",
        "azure/gpt-4o-mini-2024-07-18",
        "claude-3-5-sonnet-2024102",
        "models/gemini-1.5-flash-8b",
        "gpt-4o-mini-2024-07-18 ",
    ] {
        assert_eq!(c.resolve(unknown), None, "{unknown}");
    }
}

fn version(asset: &str, from: &str, aliases: &[&str], patterns: &[&str]) -> PriceVersion {
    PriceVersion {
        asset_id: asset.into(),
        asset_type: AssetType::Model,
        vendor: "v".into(),
        effective_from: t(from),
        prices: [(
            "input_tokens".to_string(),
            UnitPrice {
                credits: Decimal::new(15, 2),
                per: 1_000_000,
                whole: None,
            },
        )]
        .into(),
        aliases: aliases.iter().map(|s| s.to_string()).collect(),
        alias_patterns: patterns.iter().map(|s| s.to_string()).collect(),
        correction: None,
        tiers: Vec::new(),
    }
}

#[test]
fn ambiguous_aliases_are_refused_and_named() {
    let mut c = shipped();
    let cases = [
        // exact vs exact alias
        (
            version("x/a", "2024-01-01T00:00:00Z", &["gpt-4o-mini"], &[]),
            "gpt-4o-mini",
            "openai/gpt-4o-mini",
        ),
        // exact vs pattern
        (
            version(
                "x/b",
                "2024-01-01T00:00:00Z",
                &["claude-3-5-sonnet-20250101"],
                &[],
            ),
            "claude-3-5-sonnet-20250101",
            "anthropic/claude-3-5-sonnet",
        ),
        // exact alias vs another asset's id
        (
            version("x/c", "2024-01-01T00:00:00Z", &["openai/gpt-4o"], &[]),
            "openai/gpt-4o",
            "openai/gpt-4o",
        ),
        // pattern vs another asset's id
        (
            version("x/d", "2024-01-01T00:00:00Z", &[], &["openai/.*"]),
            "openai/",
            "openai/",
        ),
        // pattern vs pattern: a witness both accept
        (
            version("x/e", "2024-01-01T00:00:00Z", &[], &["(models/)?gemini-.*"]),
            "gemini-1.5-flash",
            "google/gemini-1.5-flash",
        ),
        // a new asset whose id is already an alias
        (
            version(
                "models/gemini-1.5-flash-002",
                "2024-01-01T00:00:00Z",
                &[],
                &[],
            ),
            "models/gemini-1.5-flash-002",
            "google/gemini-1.5-flash",
        ),
    ];
    for (v, name, other) in cases {
        let asset = v.asset_id.clone();
        match c.insert(v) {
            Err(CatalogError::Ambiguous {
                name: n,
                other_asset,
                ..
            }) => {
                assert!(n.starts_with(name), "{asset}: {n}");
                assert!(other_asset.starts_with(other), "{asset}: {other_asset}");
            }
            other => panic!("{asset}: {other:?}"),
        }
        assert_eq!(
            c.lookup(&asset, t("2025-01-01T00:00:00Z")).err(),
            Some(LookupError::UnknownAsset),
            "a refused version leaves no trace"
        );
    }
    // A disjoint alias is fine and the message of a refusal names both sides.
    assert!(
        c.insert(version(
            "x/f",
            "2024-01-01T00:00:00Z",
            &["gpt-4o-mini-fast"],
            &["x-[0-9]+"]
        ))
        .unwrap()
    );
    let bad = r#"[{"asset_id":"x/g","asset_type":"model","vendor":"v","effective_from":"2024-01-01T00:00:00Z",
        "prices":{"input_tokens":{"credits":"1","per":1}},"alias_patterns":["gpt-4o-mini-.*"]}]"#;
    let shipped_bytes =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/config/catalog.json")).unwrap();
    let mut all: Vec<serde_json::Value> = serde_json::from_slice(&shipped_bytes).unwrap();
    all.extend(serde_json::from_str::<Vec<serde_json::Value>>(bad).unwrap());
    let (_, errors) = Catalog::from_json_all_errors(&serde_json::to_vec(&all).unwrap()).unwrap();
    let msg = errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        msg.contains("x/g") && msg.contains("openai/gpt-4o-mini") && msg.contains("gpt-4o-mini-"),
        "{msg}"
    );
}

#[test]
fn a_published_version_may_gain_aliases_but_never_lose_them() {
    let mut c = Catalog::default();
    assert!(
        c.insert(version("m", "2024-01-01T00:00:00Z", &["m-1"], &[]))
            .unwrap()
    );
    assert!(
        c.insert(version(
            "m",
            "2024-01-01T00:00:00Z",
            &["m-1", "m-2"],
            &["m-[0-9]{4}"]
        ))
        .unwrap()
    );
    assert_eq!(c.version_count(), 1);
    assert_eq!(c.resolve("m-2"), Some("m"));
    assert_eq!(c.resolve("m-2024"), Some("m"));
    assert!(
        !c.insert(version(
            "m",
            "2024-01-01T00:00:00Z",
            &["m-1", "m-2"],
            &["m-[0-9]{4}"]
        ))
        .unwrap()
    );
    assert!(matches!(
        c.insert(version(
            "m",
            "2024-01-01T00:00:00Z",
            &["m-2"],
            &["m-[0-9]{4}"]
        )),
        Err(CatalogError::Conflict { .. })
    ));
    // Aliases belong to the asset: one declared on a later version resolves for all times.
    assert!(
        c.insert(version("m", "2026-01-01T00:00:00Z", &["m-3"], &[]))
            .unwrap()
    );
    assert_eq!(c.resolve("m-1"), Some("m"));
    assert_eq!(c.resolve("m-3"), Some("m"));
    assert_eq!(
        &*c.lookup("m", t("2025-01-01T00:00:00Z")).unwrap().label,
        "2024-01-01T00:00:00Z"
    );
}

#[test]
fn bad_alias_declarations_name_the_field() {
    let mut v = version("m", "2024-01-01T00:00:00Z", &[""], &[]);
    assert!(v.validate().unwrap_err().to_string().contains("aliases[0]"));
    v.aliases = vec!["a\nb".into()];
    assert!(v.validate().unwrap_err().to_string().contains("aliases[0]"));
    v.aliases.clear();
    v.alias_patterns = vec!["ok".into(), "(".into()];
    assert!(
        v.validate()
            .unwrap_err()
            .to_string()
            .contains("alias_patterns[1]")
    );
    v.alias_patterns = (0..65).map(|i| format!("m{i}")).collect();
    assert!(v.validate().unwrap_err().to_string().contains("aliases"));
}

#[test]
fn asset_types_are_named_once() {
    for (i, t) in AssetType::ALL.into_iter().enumerate() {
        assert_eq!(t as usize, i, "ALL is in declaration order");
        let json = format!("\"{}\"", t.as_str());
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            json,
            "serde and as_str agree"
        );
        assert_eq!(serde_json::from_str::<AssetType>(&json).unwrap(), t);
    }
}

#[test]
fn whole_units_come_from_the_catalog_with_a_default_from_the_unit_name() {
    let c = Catalog::from_json(
        br#"[
          {"asset_id":"tts","asset_type":"model","vendor":"v","effective_from":"2024-01-01T00:00:00Z",
           "prices":{"characters":{"credits":"15","per":1000000,"whole":false},
                     "input_tokens":{"credits":"1","per":1000000},
                     "gpu_seconds":{"credits":"0.001","per":1,"whole":true},
                     "audio_minutes":{"credits":"0.006","per":1}}},
          {"asset_id":"tts","asset_type":"model","vendor":"v","effective_from":"2026-01-01T00:00:00Z",
           "prices":{"characters":{"credits":"15","per":1000000}}},
          {"asset_id":"slack","asset_type":"integration","vendor":"slack","effective_from":"2024-01-01T00:00:00Z","prices":{}}
        ]"#,
    )
    .unwrap();
    let at = t("2025-01-01T00:00:00Z");
    // Flags in the version in force win over the name.
    assert!(!c.whole_unit("tts", at, "characters"));
    assert!(c.whole_unit("tts", at, "gpu_seconds"));
    // Absent: the name decides, as in catalogs written before the flag.
    assert!(c.whole_unit("tts", at, "input_tokens"));
    assert!(!c.whole_unit("tts", at, "audio_minutes"));
    // Point in time: the newer version does not flag `characters`, so the name decides.
    assert!(c.whole_unit("tts", t("2026-02-01T00:00:00Z"), "characters"));
    // Not priced (unknown asset, before the first version, integration, unknown unit).
    assert!(c.whole_unit("nope", at, "requests"));
    assert!(!c.whole_unit("nope", at, "gpu_seconds"));
    assert!(c.whole_unit("tts", t("2020-01-01T00:00:00Z"), "characters"));
    assert!(c.whole_unit("slack", at, "requests"));
    assert!(!c.whole_unit("tts", at, "widgets"));
}

#[test]
fn versions_without_the_whole_flag_keep_their_bytes() {
    let c = Catalog::from_json(TWO_VERSIONS.as_bytes()).unwrap();
    for v in c.versions() {
        let json = serde_json::to_string(v).unwrap();
        assert!(!json.contains("whole"), "{json}");
        assert_eq!(&Catalog::parse_version(json.as_bytes()).unwrap(), v);
    }
    let flagged =
        TWO_VERSIONS.replace("\"per\":1000000}}},", "\"per\":1000000,\"whole\":false}}},");
    let c = Catalog::from_json(flagged.as_bytes()).unwrap();
    let json = serde_json::to_string(c.versions().next().unwrap()).unwrap();
    assert!(json.contains("\"whole\":false"), "{json}");
    let bad = TWO_VERSIONS.replace(
        "\"per\":1000000}}},",
        "\"per\":1000000,\"whole\":\"yes\"}}},",
    );
    assert!(Catalog::from_json(bad.as_bytes()).is_err());
}

#[test]
fn shipped_catalog_parses() {
    let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/config/catalog.json")).unwrap();
    let c = Catalog::from_json(&bytes).unwrap();
    assert!(c.version_count() >= 10);
    // Integrations price at zero; the second gpt-4o-mini version is point-in-time.
    assert!(
        c.versions()
            .any(|v| v.asset_type == AssetType::Integration && v.prices.is_empty())
    );
}
