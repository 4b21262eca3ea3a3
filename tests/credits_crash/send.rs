//! What the storm test sends: the plan's steps, the feeder that sends them paced, and the
//! payment service that pays each automatic top-up request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use rust_decimal::Decimal;
use usage_aggregator::debit::Debit;
use usage_aggregator::ledger::client;
use usage_aggregator::ledger::core::TopupRequest;
use usage_aggregator::ledger::grant::{Grant, GrantKind};
use usage_aggregator::ledger::voucher::{self, VoucherRequest};

pub(crate) enum Step {
    Grant(usize),
    Bad(usize),
    Conflict(usize),
    Debit(usize),
    Redeem(usize),
}

/// What the feeder sent: the grants as first sent (expiries fixed at that moment).
pub(crate) struct Sent {
    pub(crate) grants: Vec<Grant>,
    pub(crate) bad_sends: usize,
    pub(crate) conflict_sends: usize,
}

/// Sends the plan, paced so that the storm falls on it; returns what was sent.
pub(crate) fn feed(
    cfg: &usage_aggregator::config::Config,
    plan: Vec<Step>,
    grants: &[(Grant, Option<u64>)],
    debits: &[Debit],
    redeems: &[(String, usize, usize)],
    accounts: &[String],
    codes: &[String],
) -> Sent {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let gp = client::producer(cfg).unwrap();
    let loader = usage_aggregator::bench::Loader::new(cfg).unwrap();
    let mut fixed: HashMap<usize, Grant> = HashMap::new();
    let mut deferred = Vec::new();
    let (mut bad_sends, mut conflict_sends) = (0, 0);
    let send = |g: &Grant| rt.block_on(client::send_grant(cfg, &gp, g)).unwrap();
    for (n, s) in plan.iter().enumerate() {
        match s {
            Step::Grant(i) => {
                let g = fixed.entry(*i).or_insert_with(|| {
                    let (g, expires_in) = &grants[*i];
                    let mut g = g.clone();
                    g.occurred_at = Utc::now();
                    if let Some(s) = expires_in {
                        g.expires_at = Some(g.occurred_at + chrono::Duration::seconds(*s as i64));
                    }
                    g
                });
                send(g);
            }
            Step::Bad(i) => {
                let g = Grant::new(
                    format!("bad-{i}"),
                    GrantKind::Topup,
                    accounts[i % accounts.len()].clone(),
                    Decimal::new(500 + *i as i64 * 10, 2),
                    Utc::now(),
                );
                send(&g);
                bad_sends += 1;
            }
            Step::Conflict(i) => deferred.push(*i),
            Step::Debit(i) => loader
                .send(
                    &cfg.topics.debits,
                    &debits[*i].account_id,
                    &debits[*i].encode(),
                )
                .unwrap(),
            Step::Redeem(i) => {
                let (id, who, v) = &redeems[*i];
                let code = voucher::normalize_code(&codes[*v]).unwrap();
                let req = VoucherRequest::Redeem {
                    request_id: id.clone(),
                    requested_at: Utc::now(),
                    code_hash: voucher::code_hash(&code),
                    masked: voucher::mask(&code),
                    account_id: accounts[*who].clone(),
                };
                rt.block_on(client::send_voucher_request(cfg, &gp, &req))
                    .unwrap();
            }
        }
        // A conflicting re-send goes after the original's first send.
        deferred.retain(|i| match fixed.get(i) {
            Some(g) => {
                let mut c = g.clone();
                c.amount += Decimal::ONE;
                send(&c);
                conflict_sends += 1;
                false
            }
            None => true,
        });
        if n % 40 == 39 {
            loader.flush().unwrap();
            std::thread::sleep(Duration::from_millis(350));
        }
    }
    loader.flush().unwrap();
    assert!(deferred.is_empty());
    let mut grants: Vec<Grant> = fixed.into_values().collect();
    grants.sort_by(|a, b| a.grant_id.cmp(&b.grant_id));
    Sent {
        grants,
        bad_sends,
        conflict_sends,
    }
}

/// The payment service: reads `topup_requests` (read_committed) and pays each request with
/// a top-up whose grant id is the request id, until `stop`. Returns the requests paid.
pub(crate) fn pay_requests(
    cfg: &usage_aggregator::config::Config,
    name: &str,
    stop: &AtomicBool,
) -> Vec<String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .set("group.id", format!("{name}-payer"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    c.subscribe(&[&cfg.topics.topup_requests]).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let p = client::producer(cfg).unwrap();
    let mut paid = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let Some(Ok(m)) = c.poll(Duration::from_millis(200)) else {
            continue;
        };
        let r: TopupRequest = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let g = Grant::new(
            r.request_id.clone(),
            GrantKind::Topup,
            r.account_id.clone(),
            r.amount,
            Utc::now(),
        );
        rt.block_on(client::send_grant(cfg, &p, &g)).unwrap();
        paid.push(r.request_id);
    }
    paid
}
