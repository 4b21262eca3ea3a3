//! The browser's exact decimal arithmetic (console/js) against rust_decimal, on the console's
//! static files alone.

use super::*;

/// Serves only the console's static files (the router the service merges), in-process.
async fn static_console() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app: axum::Router = usage_aggregator::http::console::router();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// A random decimal string as the API writes them: |x| < 10^10, up to 18 decimals (the ledger's
/// exact range), sometimes with trailing zeros, a "+" or "-0".
fn random_decimal(rng: &mut impl Rng) -> String {
    let int: u64 = match rng.random_range(0..4) {
        0 => 0,
        1 => rng.random_range(0..10),
        2 => rng.random_range(0..100_000),
        _ => rng.random_range(0..10_000_000_000),
    };
    let scale = rng.random_range(0..=18usize);
    let frac: String = (0..scale)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect();
    let sign = match rng.random_range(0..10) {
        0..=3 => "-",
        4 => "+",
        _ => "",
    };
    if scale == 0 {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    }
}

pub(crate) fn d(s: &str) -> Decimal {
    Decimal::from_str(s.trim_start_matches('+')).unwrap()
}

/// The API's way of writing a decimal (rust_decimal, normalized).
pub(crate) fn api(x: Decimal) -> String {
    x.normalize().to_string()
}

/// floor((a - lo) * size * 100 / (hi - lo)) / 100, clamped, as decimal.position() promises,
/// computed with i128 at scale 18.
fn position(a: &str, lo: &str, hi: &str, size: i128) -> String {
    let s = |x: &str| {
        let mut v = d(x);
        v.rescale(18);
        v.mantissa()
    };
    let (x, l, h) = (s(a), s(lo), s(hi));
    if h == l {
        return "0".into();
    }
    let steps = size * 100;
    let q = ((x - l) * steps).div_euclid(h - l).clamp(0, steps);
    api(Decimal::from_i128_with_scale(q, 2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_decimal_arithmetic_equals_rust_decimal() {
    let base = static_console().await;
    let b = Browser::start().await;
    b.goto(&format!("{base}/console/")).await;
    b.wait(
        "the sign-in form",
        "document.getElementById('sign-in') && !document.getElementById('sign-in').hidden",
        Duration::from_secs(30),
    )
    .await;

    let mut rng = rand::rngs::StdRng::seed_from_u64(26);
    let pairs: Vec<(String, String)> = (0..3000)
        .map(|_| (random_decimal(&mut rng), random_decimal(&mut rng)))
        .collect();
    let lists: Vec<Vec<String>> = (0..200)
        .map(|_| {
            (0..rng.random_range(0..40))
                .map(|_| random_decimal(&mut rng))
                .collect()
        })
        .collect();
    let out = b
        .client
        .execute_async(
            r#"const [pairs, lists, done] = arguments;
            import('/console/js/decimal.js').then((d) => {
              const r = pairs.map(([a, b]) => {
                const [lo, hi] = d.cmp(a, b) <= 0 ? [a, b] : [b, a];
                return [d.add(a, b), d.sub(a, b), d.cmp(a, b), d.normalize(a), d.neg(a), d.abs(a),
                        d.sign(a), d.position(a, lo, d.add(hi, '1'), 240), d.ticks(lo, hi, 5)];
              });
              const s = lists.map((l) => [d.sum(l), d.extent(l)]);
              let bad = null;
              for (const t of ['', '1e5', '0x10', '1.2.3', ' ', '--1', 'NaN', '1,5']) {
                try { d.parse(t); bad = t; } catch (e) { /* refused, as it should be */ }
              }
              done({ pairs: r, lists: s, accepted_bad: bad });
            }).catch((e) => done({ error: String(e) }));"#,
            vec![json!(pairs), json!(lists)],
        )
        .await
        .unwrap();
    assert!(out.get("error").is_none(), "{out}");
    assert_eq!(
        out["accepted_bad"],
        Value::Null,
        "a malformed decimal was accepted"
    );
    let mut checked = 0;
    for ((a, bb), r) in pairs.iter().zip(out["pairs"].as_array().unwrap()) {
        let (x, y) = (d(a), d(bb));
        assert_eq!(r[0], json!(api(x + y)), "{a} + {bb}");
        assert_eq!(r[1], json!(api(x - y)), "{a} - {bb}");
        assert_eq!(r[2], json!(x.cmp(&y) as i8), "cmp({a}, {bb})");
        assert_eq!(r[3], json!(api(x)), "normalize({a})");
        assert_eq!(r[4], json!(api(-x)), "neg({a})");
        assert_eq!(r[5], json!(api(x.abs())), "abs({a})");
        assert_eq!(r[6], json!(x.cmp(&Decimal::ZERO) as i8), "sign({a})");
        let (lo, hi) = if x <= y { (a, bb) } else { (bb, a) };
        let hi1 = api(d(hi) + Decimal::ONE);
        let want = position(a, lo, &hi1, 240);
        assert_eq!(
            d(&r[7].to_string()),
            d(&want),
            "position({a}, {lo}, {hi1}, 240)"
        );
        // Ticks: round steps (1, 2 or 5 x 10^k), evenly spaced, covering [lo, hi].
        let ticks: Vec<Decimal> = r[8]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| d(t.as_str().unwrap()))
            .collect();
        assert!(
            ticks.len() >= 2 && ticks.len() <= 12,
            "ticks({lo}, {hi}): {ticks:?}"
        );
        assert!(
            ticks[0] <= d(lo) && *ticks.last().unwrap() >= d(hi),
            "ticks({lo}, {hi}) cover: {ticks:?}"
        );
        let step = ticks[1] - ticks[0];
        assert!(ticks.windows(2).all(|w| w[1] - w[0] == step), "{ticks:?}");
        let digits = step.normalize().mantissa().abs().to_string();
        assert!(
            ["1", "2", "5"].contains(&digits.trim_end_matches('0')),
            "step {step} of ticks({lo}, {hi})"
        );
        checked += 1;
    }
    for (l, r) in lists.iter().zip(out["lists"].as_array().unwrap()) {
        let want: Decimal = l.iter().map(|x| d(x)).sum();
        assert_eq!(r[0], json!(api(want)), "sum of {l:?}");
        let min = l.iter().map(|x| d(x)).min();
        let max = l.iter().map(|x| d(x)).max();
        let got_min = r[1][0].as_str().map(d);
        let got_max = r[1][1].as_str().map(d);
        assert_eq!((got_min, got_max), (min, max), "extent of {l:?}");
    }
    eprintln!(
        "browser decimal arithmetic: {checked} pairs and {} lists equal rust_decimal",
        lists.len()
    );
    assert_no_browser_errors(&b).await;
    b.close().await;
}
