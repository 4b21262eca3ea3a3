//! Per-account thresholds and the automatic top-up rule over HTTP: set, listed, and each
//! refusal naming the field and the value.

use super::*;

#[test]
fn thresholds_and_auto_topup_are_set_listed_and_refused_naming_field_and_value() {
    let mut api = start("csettings");
    let a = api.a.clone();
    let op = Some(OPERATOR_TOKEN);
    let path = format!("/v1/accounts/{a}/thresholds");
    let put = |api: &Api, body: &str| api.call("PUT", &path, op, Some(body));
    // Set: answered with the account as the ledger holds it.
    let r = put(
        &api,
        r#"{"thresholds":["50","20%",0],"expiry_warning":"3days"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["verdict"], "answered", "{v}");
    let acct = &v["account"];
    assert_eq!(acct["custom_thresholds"], true, "{v}");
    assert_eq!(acct["expiry_warning_secs"], 3 * 86_400, "{v}");
    // The share has no value before the first top-up: two thresholds in force.
    let rules: Vec<&str> = acct["thresholds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["50", "0"], "{v}");
    // List: the same, with the account's own key too; another account's key gets 404.
    let r = api.call("GET", &path, Some(&api.key_a), None);
    assert_eq!(
        (r.status, &r.json()["account"]["thresholds"]),
        (200, &acct["thresholds"]),
        "{}",
        r.body
    );
    assert_refused(&api.call("GET", &path, Some(&api.key_b), None), 404, None);
    assert_refused(&api.call("PUT", &path, None, Some("{}")), 401, None);
    // Refusals name the field and the value, and change nothing.
    for (body, reason, words) in [
        (
            r#"{"thresholds":["abc"]}"#,
            "invalid_field",
            &["threshold", "abc"][..],
        ),
        (
            r#"{"thresholds":["150%"]}"#,
            "invalid_field",
            &["threshold", "150%"],
        ),
        (r#"{"thresholds":5}"#, "invalid_field", &["thresholds", "5"]),
        (
            r#"{"thresholds":[true]}"#,
            "invalid_field",
            &["threshold", "true"],
        ),
        (
            r#"{"expiry_warning":"soon"}"#,
            "invalid_field",
            &["expiry_warning", "soon"],
        ),
        (
            r#"{"expiry_warning":7}"#,
            "invalid_field",
            &["expiry_warning", "7"],
        ),
        (r#"{"limit":"10"}"#, "unknown_field", &["limit"]),
        (r#"["50"]"#, "invalid_json", &["thresholds"]),
    ] {
        let v = assert_refused(&put(&api, body), 422, Some(reason));
        let e = v["error"].as_str().unwrap();
        for w in words {
            assert!(e.contains(w), "{body}: {e:?} does not name {w:?}");
        }
    }
    let r = api.call("GET", &path, op, None);
    assert_eq!(
        r.json()["account"]["thresholds"],
        acct["thresholds"],
        "{}",
        r.body
    );

    // Auto top-up: refusals first, each naming its field and value.
    let auto = format!("/v1/accounts/{a}/auto-topup");
    for (body, words) in [
        (r#"{"below":"10","fixed":"5"}"#, &["fixed", "5"][..]),
        (r#"{"below":"10","refill_to":"8"}"#, &["refill_to", "8"]),
        (r#"{"below":"10"}"#, &["fixed", "refill_to"]),
        (
            r#"{"below":"10","fixed":"50","refill_to":"100"}"#,
            &["fixed", "refill_to"],
        ),
    ] {
        let v = assert_refused(
            &api.call("PUT", &auto, op, Some(body)),
            422,
            Some("invalid_field"),
        );
        let e = v["error"].as_str().unwrap();
        for w in words {
            assert!(e.contains(w), "{body}: {e:?} does not name {w:?}");
        }
    }
    for (body, words) in [
        (r#"{"below":"ten","fixed":"50"}"#, &["ten"][..]),
        (r#"{"below":"10","fixed":"50","every":"day"}"#, &["every"]),
    ] {
        let v = assert_refused(
            &api.call("PUT", &auto, op, Some(body)),
            422,
            Some("invalid_json"),
        );
        let e = v["error"].as_str().unwrap();
        for w in words {
            assert!(e.contains(w), "{body}: {e:?} does not name {w:?}");
        }
    }
    // A top-up, then the rule: request 50 when the balance goes below 10.
    let r = api.call(
        "POST",
        &format!("/v1/accounts/{a}/topups"),
        op,
        Some(r#"{"amount":"20","reference":"pay-1"}"#),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let r = api.call(
        "PUT",
        &auto,
        Some(&api.key_a),
        Some(r#"{"below":"10","fixed":"50"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["account"]["auto_topup"]["fixed"], "50", "{v}");
    assert_eq!(v["account"]["last_topup"], "20", "{v}");
    // Now the share has its value (20% of 20 = 4).
    assert!(
        v["account"]["thresholds"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["rule"] == "20%" && dec(&t["value"]) == Decimal::from(4)),
        "{v}"
    );
    // Two debits: the first crosses 10 (one request), the second stays below (none).
    let loader = api.env.loader();
    let costs = [Decimal::new(1335, 2), Decimal::new(1, 0)];
    let mut spent = Decimal::ZERO;
    for (i, cost) in costs.iter().enumerate() {
        let d = debit(&format!("dc_{}_{i}", api.env.name), &a, *cost);
        spent += d.total;
        loader
            .send(&api.env.cfg.topics.debits, &a, &d.encode())
            .unwrap();
    }
    loader.flush().unwrap();
    let v = balance(&api, &a, 3);
    assert_eq!(
        dec(&v["balance"]),
        (Decimal::from(20) - spent).normalize(),
        "{v}"
    );
    let requests: Vec<serde_json::Value> = read_all(&api.env, &api.env.cfg.topics.topup_requests)
        .into_iter()
        .map(|(_, _, _, p)| serde_json::from_slice(&p).unwrap())
        .collect();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(
        (
            requests[0]["account_id"].as_str(),
            requests[0]["amount"].as_str()
        ),
        (Some(a.as_str()), Some("50"))
    );
    // A request is not a grant: the balance stayed what the debits left (checked above).
    // Off: DELETE answers without a rule; reset the thresholds to the defaults.
    let r = api.call("DELETE", &auto, op, None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.json()["account"].get("auto_topup").is_none(),
        "{}",
        r.body
    );
    let r = put(&api, r#"{"thresholds":null}"#);
    assert_eq!(
        r.json()["account"]["custom_thresholds"],
        false,
        "{}",
        r.body
    );
    assert_eq!(
        r.json()["account"]["expiry_warning_secs"],
        3 * 86_400,
        "{}",
        r.body
    );
    // The settings survive a restart of the ledger (kept in its changelog).
    let r = api.call("PUT", &auto, op, Some(r#"{"below":"1","refill_to":"100"}"#));
    assert_eq!(r.status, 200, "{}", r.body);
    api.env.kill9(0);
    api.env.spawn("ledger", "ledger.log");
    let mut v = serde_json::Value::Null;
    api.env
        .wait_for("the restarted ledger", Duration::from_secs(90), || {
            let r = api.call("GET", &path, op, None);
            v = if r.status == 200 {
                r.json()
            } else {
                serde_json::Value::Null
            };
            r.status == 200
        });
    assert_eq!(v["account"]["auto_topup"]["refill_to"], "100", "{v}");
    assert_eq!(v["account"]["custom_thresholds"], false, "{v}");
}
