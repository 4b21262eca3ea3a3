//! Per-account alert settings, pure: thresholds (credits, or a share of the last top-up),
//! the "a grant expires within N" warning window and the automatic top-up rule in; which
//! thresholds a balance change crosses, and whether a top-up request is due, out.
//!
//! "Once per crossing" is kept as state, not recomputed from two balances: the set of
//! thresholds the account is announced to be below. A balance change emits `below` for a
//! threshold it is now under and was not announced under, `recovered` for one it is no
//! longer under. A new account starts at 0, so it starts below every positive threshold
//! (its first top-up emits `recovered`). Changing the thresholds re-derives the set from
//! the balance without alerting.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::money::{DEBIT_SCALE, round_up_to_payment, share_of};

/// Which way a threshold was crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Crossing {
    /// From `>= threshold` to `< threshold`.
    Below,
    /// From `< threshold` back to `>= threshold`.
    Recovered,
}

impl Crossing {
    pub fn as_str(self) -> &'static str {
        match self {
            Crossing::Below => "below",
            Crossing::Recovered => "recovered",
        }
    }
}

/// A low-balance threshold: `"10"` (credits; may be negative: an overdraft limit) or
/// `"20%"` (of the account's last top-up; inactive before its first top-up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Threshold {
    Credits(Decimal),
    /// Percent of the last top-up, more than 0 and at most 100.
    Share(Decimal),
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Threshold::Credits(d) => write!(f, "{}", d.normalize()),
            Threshold::Share(p) => write!(f, "{}%", p.normalize()),
        }
    }
}

impl FromStr for Threshold {
    type Err = String;

    /// `"10"`, `"-5"`, `"12.5"` (credits, at most 18 decimals, |t| < 1e10) or `"20%"`
    /// (0 < share <= 100, at most 4 decimals).
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            let share = Decimal::from_str_exact(p.trim())
                .ok()
                .filter(|d| *d > Decimal::ZERO && *d <= Decimal::ONE_HUNDRED)
                .filter(|d| d.normalize().scale() <= 4)
                .ok_or_else(|| {
                    format!("threshold {s:?}: a share is more than 0% and at most 100%, at most 4 decimals")
                })?;
            return Ok(Threshold::Share(share.normalize()));
        }
        let ok = !t.is_empty()
            && t.trim_start_matches('-')
                .bytes()
                .all(|b| b.is_ascii_digit() || b == b'.');
        Decimal::from_str_exact(t)
            .ok()
            .filter(|d| ok && d.normalize().scale() <= DEBIT_SCALE)
            .filter(|d| d.abs() < crate::ledger::funding::MAX_BALANCE)
            .map(|d| Threshold::Credits(d.normalize()))
            .ok_or_else(|| {
                format!("threshold {s:?}: give credits such as 10 or -5, or a share of the last top-up such as 20%")
            })
    }
}

impl Serialize for Threshold {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Threshold {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Threshold {
    /// Its value in credits, given the account's last top-up (`None` for a share before
    /// any top-up).
    pub fn value(&self, last_topup: Option<Decimal>) -> Option<Decimal> {
        match self {
            Threshold::Credits(d) => Some(*d),
            Threshold::Share(p) => last_topup.map(|a| share_of(a, *p)),
        }
    }

    /// True for a share of the last top-up.
    pub fn is_share(&self) -> bool {
        matches!(self, Threshold::Share(_))
    }
}

/// An automatic top-up rule: when the balance goes below `below`, request `fixed` credits,
/// or what brings the balance back to `refill_to`. Exactly one of the two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoTopup {
    #[serde(with = "rust_decimal::serde::str")]
    pub below: Decimal,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    pub fixed: Option<Decimal>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    pub refill_to: Option<Decimal>,
}

impl AutoTopup {
    /// Checks the rule: one of `fixed` (at least `min_topup`) and `refill_to` (above
    /// `below`); amounts with at most 18 decimals inside the exact range.
    pub fn validate(&self, min_topup: Decimal) -> Result<(), String> {
        let in_range = |d: Decimal| d.abs() < crate::ledger::funding::MAX_BALANCE;
        if !in_range(self.below) || self.below.normalize().scale() > DEBIT_SCALE {
            return Err(format!("auto top-up below {} is out of range", self.below));
        }
        match (self.fixed, self.refill_to) {
            (Some(f), None) if f >= min_topup && in_range(f) => Ok(()),
            (Some(f), None) => Err(format!(
                "auto top-up fixed amount must be at least ledger.min_topup {min_topup} (value {f})"
            )),
            (None, Some(t)) if t > self.below && in_range(t) => Ok(()),
            (None, Some(t)) => Err(format!(
                "auto top-up refill_to must be above below {} (value {t})",
                self.below
            )),
            _ => Err("an auto top-up rule has exactly one of fixed and refill_to".into()),
        }
    }

    /// Credits to request at `balance`: the fixed amount, or `refill_to − balance` rounded
    /// up to cents, at least `min_topup`.
    pub fn amount(&self, balance: Decimal, min_topup: Decimal) -> Decimal {
        match (self.fixed, self.refill_to) {
            (Some(f), _) => f.normalize(),
            (None, Some(t)) => round_up_to_payment(t - balance).max(min_topup).normalize(),
            (None, None) => min_topup,
        }
    }
}

/// An account's own settings; `None` fields follow the ledger's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountSettings {
    /// Low-balance thresholds (`None`: `ledger.alert_thresholds`; empty: no alerts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<Vec<Threshold>>,
    /// Seconds before a grant's expiry to raise `grant_expiring` (`None`:
    /// `ledger.expiry_warning`; 0: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry_warning_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_topup: Option<AutoTopup>,
}

/// The thresholds in force with their values, highest first (ties by text); shares before
/// the first top-up are left out.
pub fn effective(
    thresholds: &[Threshold],
    last_topup: Option<Decimal>,
) -> Vec<(Threshold, Decimal)> {
    let mut v: Vec<(Threshold, Decimal)> = thresholds
        .iter()
        .filter_map(|t| t.value(last_topup).map(|v| (*t, v)))
        .collect();
    v.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then_with(|| a.0.to_string().cmp(&b.0.to_string()))
    });
    v.dedup_by(|a, b| a.0 == b.0);
    v
}

/// The announced-below set that a balance implies, without alerts (a new account, changed
/// thresholds).
pub fn derive_below(effective: &[(Threshold, Decimal)], balance: Decimal) -> BTreeSet<String> {
    effective
        .iter()
        .filter(|(_, v)| balance < *v)
        .map(|(t, _)| t.to_string())
        .collect()
}

/// The crossings of a balance change to `balance`: updates `below` (threshold texts
/// announced as below) and returns each crossed threshold with its value, highest first.
/// Thresholds no longer in force are forgotten without an alert.
pub fn crossings(
    below: &mut BTreeSet<String>,
    effective: &[(Threshold, Decimal)],
    balance: Decimal,
) -> Vec<(Threshold, Decimal, Crossing)> {
    let mut out = Vec::new();
    let live: BTreeSet<String> = effective.iter().map(|(t, _)| t.to_string()).collect();
    below.retain(|t| live.contains(t));
    for (t, v) in effective {
        let text = t.to_string();
        match (balance < *v, below.contains(&text)) {
            (true, false) => {
                below.insert(text);
                out.push((*t, *v, Crossing::Below));
            }
            (false, true) => {
                below.remove(&text);
                out.push((*t, *v, Crossing::Recovered));
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn thresholds_parse_and_print_in_both_forms() {
        assert_eq!("10".parse(), Ok(Threshold::Credits(d("10"))));
        assert_eq!("-5.50".parse(), Ok(Threshold::Credits(d("-5.5"))));
        assert_eq!(" 20% ".parse(), Ok(Threshold::Share(d("20"))));
        assert_eq!(Threshold::Share(d("12.50")).to_string(), "12.5%");
        for bad in [
            "",
            "ten",
            "0%",
            "101%",
            "1e3",
            "10000000000",
            "5%%",
            "1.00001%",
        ] {
            assert!(bad.parse::<Threshold>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_share_follows_the_last_topup() {
        let t = Threshold::Share(d("20"));
        assert_eq!(t.value(None), None);
        assert_eq!(t.value(Some(d("50"))), Some(d("10")));
        let e = effective(&[t, Threshold::Credits(d("0"))], None);
        assert_eq!(e, [(Threshold::Credits(d("0")), d("0"))]);
    }

    #[test]
    fn crossings_alert_once_and_follow_a_changing_share() {
        let ts = [Threshold::Share(d("20")), Threshold::Credits(d("0"))];
        let mut below = derive_below(&effective(&ts, None), Decimal::ZERO);
        assert!(below.is_empty());
        // Top-up of 50: the 20 % threshold is 10, balance 50: nothing crossed.
        assert!(crossings(&mut below, &effective(&ts, Some(d("50"))), d("50")).is_empty());
        let c = crossings(&mut below, &effective(&ts, Some(d("50"))), d("9"));
        assert_eq!(c, [(ts[0], d("10"), Crossing::Below)]);
        assert!(crossings(&mut below, &effective(&ts, Some(d("50"))), d("8")).is_empty());
        // A top-up of 100 lifts the balance to 108 and the threshold to 20.
        let c = crossings(&mut below, &effective(&ts, Some(d("100"))), d("108"));
        assert_eq!(c, [(ts[0], d("20"), Crossing::Recovered)]);
        let c = crossings(&mut below, &effective(&ts, Some(d("100"))), d("-1"));
        assert_eq!(
            c,
            [
                (ts[0], d("20"), Crossing::Below),
                (ts[1], d("0"), Crossing::Below)
            ]
        );
    }

    #[test]
    fn auto_topup_amounts_and_rules() {
        let fixed = AutoTopup {
            below: d("10"),
            fixed: Some(d("50")),
            refill_to: None,
        };
        assert_eq!(fixed.amount(d("3"), d("10")), d("50"));
        let refill = AutoTopup {
            below: d("10"),
            fixed: None,
            refill_to: Some(d("100")),
        };
        assert_eq!(refill.amount(d("9.995"), d("10")), d("90.01"));
        assert_eq!(refill.amount(d("95"), d("10")), d("10"));
        assert_eq!(refill.amount(d("-20"), d("10")), d("120"));
        assert!(fixed.validate(d("10")).is_ok() && refill.validate(d("10")).is_ok());
        let small = AutoTopup {
            fixed: Some(d("5")),
            ..fixed.clone()
        };
        assert!(small.validate(d("10")).is_err());
        let both = AutoTopup {
            refill_to: Some(d("100")),
            ..fixed
        };
        assert!(both.validate(d("10")).is_err());
        let low = AutoTopup {
            refill_to: Some(d("10")),
            ..refill
        };
        assert!(low.validate(d("10")).is_err());
    }
}
