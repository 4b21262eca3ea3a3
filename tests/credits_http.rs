//! The credits endpoints end to end: the binary's HTTP API on the real broker and
//! ClickHouse, with the operator token and account API keys. Voucher redemptions (granted,
//! already redeemed, expired, reserved for another account, another account's path), a
//! grant's status, per-account thresholds and the automatic top-up rule. Every refusal is
//! checked to look like one: a 4xx status, a JSON body with `error` and its `reason`, and
//! no `applied` / `granted` in it; and nothing it refused reaches the ledger. The thresholds
//! and automatic top-up test is in credits_http/settings.rs (one binary).

mod common;
#[path = "credits_http/settings.rs"]
mod settings;

use std::time::Duration;

use common::ledger::*;
use common::*;
use rust_decimal::Decimal;

/// A running ledger role (it serves the whole HTTP API) with two account keys.
struct Api {
    env: TestEnv,
    addr: String,
    a: String,
    b: String,
    key_a: String,
    key_b: String,
}

fn create_key(env: &TestEnv, account: &str) -> String {
    let out = env.cli(&["keys", "create", account, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["key"].as_str().unwrap().to_string()
}

fn start(name: &str) -> Api {
    let mut env = ledger_env(name);
    let (a, b) = (format!("{}-a", env.name), format!("{}-b", env.name));
    let key_a = create_key(&env, &a);
    let key_b = create_key(&env, &b);
    env.spawn("ledger", "ledger.log");
    let addr = env.cfg.http.listen.clone();
    env.wait_for("keys loaded", Duration::from_secs(60), || {
        http_call(&addr, "GET", "/v1/whoami", Some(&key_b), None).status == 200
    });
    Api {
        env,
        addr,
        a,
        b,
        key_a,
        key_b,
    }
}

impl Api {
    fn call(&self, method: &str, path: &str, who: Option<&str>, body: Option<&str>) -> Answer {
        http_call(&self.addr, method, path, who, body)
    }
}

/// A refusal as a caller sees it: this status, a JSON body with `error` (and `reason` when
/// given), nothing that reads as success.
#[track_caller]
fn assert_refused(a: &Answer, status: u16, reason: Option<&str>) -> serde_json::Value {
    assert_eq!(a.status, status, "{}", a.body);
    let v = a.json();
    assert!(
        v["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{}",
        a.body
    );
    if let Some(r) = reason {
        assert_eq!(v["reason"], r, "{}", a.body);
    }
    for (k, ok) in [("verdict", "applied"), ("verdict", "already_applied")] {
        assert_ne!(v[k], ok, "{}", a.body);
    }
    assert_ne!(v["outcome"], "granted", "{}", a.body);
    assert_ne!(v["outcome"], "created", "{}", a.body);
    v
}

fn dec(v: &serde_json::Value) -> Decimal {
    v.as_str()
        .unwrap_or_else(|| panic!("not a decimal string: {v}"))
        .parse()
        .unwrap()
}

/// The account's balance answer once it has `entries` entries.
fn balance(api: &Api, account: &str, entries: u64) -> serde_json::Value {
    let path = format!("/v1/accounts/{account}/balance");
    let mut last = Answer::default();
    api.env
        .wait_for("the balance", Duration::from_secs(60), || {
            last = api.call("GET", &path, Some(OPERATOR_TOKEN), None);
            last.status == 200 && last.json()["entries"] == entries
        });
    last.json()
}

#[test]
fn voucher_redemptions_answer_granted_or_refused_with_the_reason() {
    let api = start("cvouch");
    let (a, b) = (&api.a, &api.b);
    let op = Some(OPERATOR_TOKEN);
    let create = |body: &str| api.call("POST", "/v1/vouchers", op, Some(body));
    // A key cannot create vouchers; invalid definitions are refused naming the value.
    let r = api.call(
        "POST",
        "/v1/vouchers",
        Some(&api.key_a),
        Some(r#"{"credits":"5"}"#),
    );
    assert_refused(&r, 403, None);
    let v = assert_refused(
        &create(r#"{"credits":"-5","code":"NEG-2026-AAAA"}"#),
        422,
        None,
    );
    assert!(v["error"].as_str().unwrap().contains("-5"), "{v}");
    let v = assert_refused(
        &create(r#"{"credits":"5","code":"DUR-2026-AAAA","credits_valid_for":"soon"}"#),
        422,
        Some("invalid_field"),
    );
    let e = v["error"].as_str().unwrap();
    assert!(e.contains("credits_valid_for") && e.contains("soon"), "{v}");

    let r = create(
        r#"{"code":"WELCOME-2026-HTTP","credits":"15","max_redemptions":5,"credits_valid_for":"30days"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["outcome"], "created", "{}", r.body);
    let r = create(&format!(
        r#"{{"code":"MINE-2026-HTTP","credits":"7","account_id":"{a}"}}"#
    ));
    assert_eq!(r.json()["outcome"], "created", "{}", r.body);
    let r = create(
        r#"{"code":"OLD-2020-HTTP","credits":"9","valid_from":"2020-01-01T00:00:00Z","valid_until":"2020-02-01T00:00:00Z"}"#,
    );
    assert_eq!(r.json()["outcome"], "created", "{}", r.body);
    // The same code with another definition is refused, not a second voucher.
    assert_refused(
        &create(r#"{"code":"WELCOME-2026-HTTP","credits":"99"}"#),
        422,
        Some("already_exists"),
    );

    let redeem = |account: &str, who: &str, code: &str| {
        api.call(
            "POST",
            &format!("/v1/accounts/{account}/redemptions"),
            Some(who),
            Some(&format!(r#"{{"code":"{code}"}}"#)),
        )
    };
    // Success, with the account's own key: the grant, its credits and their expiry.
    let r = redeem(a, &api.key_a, "welcome-2026-http");
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(
        (v["outcome"].as_str(), dec(&v["credits"])),
        (Some("granted"), Decimal::from(15))
    );
    assert!(v.get("error").is_none(), "{v}");
    let grant_id = v["grant_id"].as_str().unwrap().to_string();
    let expires = chrono::DateTime::parse_from_rfc3339(v["credits_expire_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    let days = (expires - chrono::Utc::now()).num_hours();
    assert!((29 * 24..=30 * 24).contains(&days), "{v}");
    assert!(
        !r.body.contains("WELCOME-2026-HTTP"),
        "the code in clear: {}",
        r.body
    );
    // Redeemed again by the same account: refused, not granted twice.
    assert_refused(
        &redeem(a, &api.key_a, "WELCOME-2026-HTTP"),
        422,
        Some("already_redeemed"),
    );
    // Expired, unknown, malformed.
    assert_refused(
        &redeem(a, OPERATOR_TOKEN, "OLD-2020-HTTP"),
        422,
        Some("expired"),
    );
    assert_refused(
        &redeem(a, OPERATOR_TOKEN, "NOPE-2026-HTTP"),
        422,
        Some("unknown"),
    );
    assert_refused(
        &redeem(a, OPERATOR_TOKEN, "bad\\u0007code"),
        422,
        Some("unknown"),
    );
    // Reserved for A: B is refused, A gets it.
    assert_refused(
        &redeem(b, OPERATOR_TOKEN, "MINE-2026-HTTP"),
        422,
        Some("wrong_account"),
    );
    // A's key on B's path: the 404 of something that does not exist; nothing redeemed.
    let r = redeem(b, &api.key_a, "WELCOME-2026-HTTP");
    assert_refused(&r, 404, None);
    assert_refused(
        &api.call(
            "POST",
            &format!("/v1/accounts/{b}/redemptions"),
            None,
            Some(r#"{"code":"WELCOME-2026-HTTP"}"#),
        ),
        401,
        None,
    );
    let r = redeem(a, OPERATOR_TOKEN, "MINE-2026-HTTP");
    assert_eq!(
        (r.status, r.json()["outcome"].as_str()),
        (200, Some("granted")),
        "{}",
        r.body
    );
    // A bad body names what is expected.
    let r = api.call(
        "POST",
        &format!("/v1/accounts/{a}/redemptions"),
        op,
        Some(r#"{"coupon":"X"}"#),
    );
    let v = assert_refused(&r, 422, Some("invalid_json"));
    assert!(v["error"].as_str().unwrap().contains("coupon"), "{v}");

    // The ledger: A has exactly the two vouchers (promotional, the first one expiring),
    // B nothing.
    let v = balance(&api, a, 2);
    assert_eq!(dec(&v["balance"]), Decimal::from(22), "{v}");
    let grants = v["grants"].as_array().unwrap();
    assert_eq!(grants.len(), 2, "{v}");
    assert!(grants.iter().all(|g| g["category"] == "promotional"), "{v}");
    let welcome = grants
        .iter()
        .find(|g| g["grant_id"] == grant_id.as_str())
        .unwrap();
    assert!(welcome["expires_at"].is_string(), "{v}");
    assert_eq!(v["next_expiry"]["grant_id"], grant_id.as_str(), "{v}");
    let r = api.call("GET", &format!("/v1/accounts/{b}/balance"), op, None);
    assert_refused(&r, 404, None);
    // The list shows the redemptions; revoking answers once, then refuses redemptions.
    let r = api.call("GET", "/v1/vouchers", op, None);
    let list = r.json();
    let welcome = list["vouchers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| {
            x["voucher"]
                .as_str()
                .is_some_and(|s| s.starts_with("WELCOME-"))
        })
        .unwrap_or_else(|| panic!("{}", r.body))
        .clone();
    assert!(!r.body.contains("WELCOME-2026-HTTP"), "{}", r.body);
    assert_eq!(welcome["redeemed"], 1, "{welcome}");
    let id = welcome["id"].as_str().unwrap().to_string();
    let revoke =
        |body: Option<&str>| api.call("POST", &format!("/v1/vouchers/{id}/revoke"), op, body);
    let r = revoke(Some(r#"{"reason":"campaign over"}"#));
    assert_eq!(
        (r.status, r.json()["outcome"].as_str()),
        (200, Some("revoked")),
        "{}",
        r.body
    );
    let r = revoke(None);
    assert_eq!(
        (r.status, r.json()["outcome"].as_str()),
        (200, Some("revoked")),
        "{}",
        r.body
    );
    assert_refused(
        &redeem(b, OPERATOR_TOKEN, "WELCOME-2026-HTTP"),
        422,
        Some("revoked"),
    );
    assert_refused(
        &api.call("POST", "/v1/vouchers/deadbeef00/revoke", op, None),
        404,
        None,
    );
    assert_refused(
        &api.call("POST", "/v1/vouchers/nope/revoke", op, None),
        422,
        Some("invalid_field"),
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(balance(&api, a, 2)["entries"], 2);
    assert!(!api.env.log("ledger.log").contains("WELCOME-2026-HTTP"));
}

#[test]
fn grant_status_answers_open_unknown_refused_and_hides_other_accounts() {
    let api = start("cgstat");
    let (a, b) = (&api.a, &api.b);
    let op = Some(OPERATOR_TOKEN);
    let topup = |reference: &str, amount: &str| {
        api.call(
            "POST",
            &format!("/v1/accounts/{a}/topups"),
            op,
            Some(&format!(
                r#"{{"amount":"{amount}","reference":"{reference}"}}"#
            )),
        )
    };
    let r = topup("pay-1", "25");
    assert_eq!(
        (r.status, r.json()["verdict"].as_str()),
        (201, Some("applied")),
        "{}",
        r.body
    );
    // The same reference with another amount: refused by the ledger, the grant unchanged.
    assert_refused(&topup("pay-1", "30"), 422, Some("conflicting_duplicate"));
    let status = |grant: &str, account: Option<&str>, who: &str| {
        let q = account
            .map(|x| format!("?account_id={x}"))
            .unwrap_or_default();
        api.call("GET", &format!("/v1/grants/{grant}{q}"), Some(who), None)
    };
    let r = status("pay-1", Some(a), OPERATOR_TOKEN);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["verdict"], "answered", "{v}");
    let g = &v["grant"];
    assert_eq!(
        (
            g["state"].as_str(),
            g["kind"].as_str(),
            g["category"].as_str()
        ),
        (Some("open"), Some("topup"), Some("paid")),
        "{v}"
    );
    assert_eq!(
        (dec(&g["amount"]), dec(&g["remaining"])),
        (Decimal::from(25), Decimal::from(25)),
        "{v}"
    );
    assert_eq!(g["applied"]["seq"], 1, "{v}");
    assert_eq!(
        g["refusal"]["reason"], "conflicting_duplicate",
        "the refused re-send is remembered: {v}"
    );
    // The account's own key: with or without account_id.
    assert_eq!(
        status("pay-1", None, &api.key_a).json()["grant"]["state"],
        "open"
    );
    assert_eq!(
        status("pay-1", Some(a), &api.key_a).json()["grant"]["state"],
        "open"
    );
    // Another account's key: 404, as for a grant that does not exist.
    assert_refused(&status("pay-1", Some(a), &api.key_b), 404, None);
    // B has no such grant: 404 with the state `unknown`.
    let r = status("pay-1", Some(b), OPERATOR_TOKEN);
    let v = assert_refused(&r, 404, None);
    assert_eq!(v["grant"]["state"], "unknown", "{v}");
    // The operator must say which account.
    let r = status("pay-1", None, OPERATOR_TOKEN);
    let v = assert_refused(&r, 400, None);
    assert!(v["error"].as_str().unwrap().contains("account_id"), "{v}");
    assert_refused(&status("pay-1", Some(a), "wrong-token"), 401, None);
    // A grant the ledger refused (sent to Kafka directly, below the minimum): `refused`
    // with its reason, and no entry.
    let loader = api.env.loader();
    let raw = format!(
        r#"{{"grant_id":"k-small","kind":"topup","account_id":"{a}","amount":"5","occurred_at":"2026-03-01T10:00:00Z"}}"#
    );
    loader
        .send(&api.env.cfg.topics.credit_grants, a, raw.as_bytes())
        .unwrap();
    loader.flush().unwrap();
    let mut v = serde_json::Value::Null;
    api.env
        .wait_for("the refusal", Duration::from_secs(60), || {
            v = status("k-small", Some(a), OPERATOR_TOKEN).json();
            v["grant"]["state"] == "refused"
        });
    assert_eq!(
        v["grant"]["refusal"]["reason"], "topup_below_minimum",
        "{v}"
    );
    assert!(v["grant"].get("applied").is_none(), "{v}");
    // An invalid grant id is refused naming it.
    let r = status("%07bad", Some(a), OPERATOR_TOKEN);
    assert_refused(&r, 422, Some("invalid_field"));
    let v = balance(&api, a, 1);
    assert_eq!(dec(&v["balance"]), Decimal::from(25), "{v}");
}
