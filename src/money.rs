//! Money rules: every rounding and scale the product applies, named once.
//!
//! Credits are `rust_decimal::Decimal` (1 credit = 1 USD) from parse to output. The rules:
//! - A priced call's cost is `sum(quantity * credits / per)` over its units, computed exactly
//!   and then rounded once to [`LINE_COST_SCALE`] decimals, half away from zero.
//! - A debit's subtotal is the exact sum of its lines' costs (no rounding).
//! - Markup is `subtotal * markup_rate`, exact: the rate has at most [`MAX_MARKUP_RATE_SCALE`]
//!   decimals, so the markup has at most 18 and always fits a `Decimal(38,18)` column.
//! - total = subtotal + markup, exact. Because nothing after the line cost rounds, splitting an
//!   execution's calls over several debits (late adjustments) never changes the sum of totals.

use rust_decimal::{Decimal, RoundingStrategy};

/// Decimals kept for one priced call's cost (and unit prices, quantities).
pub const LINE_COST_SCALE: u32 = 12;
/// Decimals allowed in a configured markup rate.
pub const MAX_MARKUP_RATE_SCALE: u32 = 6;
/// Decimals of a debit amount column (subtotal, markup, total).
pub const DEBIT_SCALE: u32 = LINE_COST_SCALE + MAX_MARKUP_RATE_SCALE;
/// The largest subtotal whose markup is still exact in 28 significant digits.
pub const MAX_EXACT_SUBTOTAL: Decimal = Decimal::from_parts(1_410_065_408, 2, 0, false, 0); // 1e10

/// Why an amount could not be computed exactly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("amount overflows the decimal range")]
    Overflow,
    #[error("subtotal {0} is too large for an exact markup (limit 1e10 credits per debit)")]
    SubtotalTooLarge(Decimal),
    #[error("amount {value} does not fit a decimal column with {scale} decimals")]
    DoesNotFit { value: Decimal, scale: u32 },
}

/// Rounds an exact line cost to [`LINE_COST_SCALE`] decimals, half away from zero.
pub fn round_line_cost(exact: Decimal) -> Decimal {
    exact
        .round_dp_with_strategy(LINE_COST_SCALE, RoundingStrategy::MidpointAwayFromZero)
        .normalize()
}

/// Cost of `quantity` units priced at `credits` per `per` units, before rounding.
pub fn unit_cost(quantity: Decimal, credits: Decimal, per: u64) -> Result<Decimal, MoneyError> {
    let product = quantity.checked_mul(credits).ok_or(MoneyError::Overflow)?;
    product
        .checked_div(Decimal::from(per))
        .ok_or(MoneyError::Overflow)
}

/// Exact markup of a subtotal; fails rather than round.
pub fn markup(subtotal: Decimal, rate: Decimal) -> Result<Decimal, MoneyError> {
    if subtotal.abs() >= MAX_EXACT_SUBTOTAL {
        return Err(MoneyError::SubtotalTooLarge(subtotal));
    }
    let m = subtotal.checked_mul(rate).ok_or(MoneyError::Overflow)?;
    Ok(m.normalize())
}

/// Markup of a debit: exact whenever the subtotal allows (below 1e10 credits); above that,
/// rounded half away from zero to [`DEBIT_SCALE`] decimals. Used for every debit.
pub fn debit_markup(subtotal: Decimal, rate: Decimal) -> Decimal {
    markup(subtotal, rate).unwrap_or_else(|_| {
        (subtotal * rate)
            .round_dp_with_strategy(DEBIT_SCALE, RoundingStrategy::MidpointAwayFromZero)
            .normalize()
    })
}

/// A cost after a plan's percentage discount: `exact * (100 - percent) / 100`, before the
/// line's one rounding ([`round_line_cost`]); `percent` has at most 4 decimals (plans check).
pub fn discounted(exact: Decimal, percent: Decimal) -> Result<Decimal, MoneyError> {
    let keep = Decimal::ONE_HUNDRED
        .checked_sub(percent)
        .ok_or(MoneyError::Overflow)?;
    exact
        .checked_mul(keep)
        .and_then(|v| v.checked_div(Decimal::ONE_HUNDRED))
        .ok_or(MoneyError::Overflow)
}

/// Adds two amounts, failing on overflow.
pub fn add(a: Decimal, b: Decimal) -> Result<Decimal, MoneyError> {
    a.checked_add(b).ok_or(MoneyError::Overflow)
}

/// The scaled integer a ClickHouse `Decimal(38, scale)` column stores, checked: a value with
/// more decimals than `scale` is an error, never silently rounded.
pub fn to_scaled_i128(value: Decimal, scale: u32) -> Result<i128, MoneyError> {
    let v = value.normalize();
    if v.scale() > scale {
        return Err(MoneyError::DoesNotFit { value, scale });
    }
    let mantissa = v.mantissa();
    let factor = 10i128
        .checked_pow(scale - v.scale())
        .ok_or(MoneyError::DoesNotFit { value, scale })?;
    mantissa
        .checked_mul(factor)
        .ok_or(MoneyError::DoesNotFit { value, scale })
}

/// A low-balance threshold given as a share of the last top-up: `amount * percent / 100`,
/// rounded half away from zero to [`DEBIT_SCALE`] decimals (the ledger's scale).
pub fn share_of(amount: Decimal, percent: Decimal) -> Decimal {
    (amount * percent / Decimal::ONE_HUNDRED)
        .round_dp_with_strategy(DEBIT_SCALE, RoundingStrategy::MidpointAwayFromZero)
        .normalize()
}

/// Decimals of an amount a payment service can charge (an automatic top-up request).
pub const PAYMENT_SCALE: u32 = 2;

/// An amount to request from the payment service: rounded **up** (away from zero) to
/// [`PAYMENT_SCALE`] decimals, so a refill never falls short of its target.
pub fn round_up_to_payment(amount: Decimal) -> Decimal {
    amount
        .round_dp_with_strategy(PAYMENT_SCALE, RoundingStrategy::AwayFromZero)
        .normalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn shares_and_payment_amounts_round_as_named() {
        assert_eq!(share_of(d("50"), d("20")), d("10"));
        assert_eq!(share_of(d("33.33"), d("10")), d("3.333"));
        // 1e-18 * 50 % = 5e-19: half away from zero at 18 decimals.
        assert_eq!(
            share_of(d("0.000000000000000001"), d("50")),
            d("0.000000000000000001")
        );
        assert_eq!(share_of(d("0.000000000000000001"), d("49")), d("0"));
        assert_eq!(round_up_to_payment(d("90.001")), d("90.01"));
        assert_eq!(round_up_to_payment(d("90.00")), d("90"));
        assert_eq!(round_up_to_payment(d("0.000000000000000001")), d("0.01"));
    }

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn worked_example_is_exact() {
        let subtotal = add(add(d("0.5"), d("0.1")).unwrap(), d("0.2")).unwrap();
        assert_eq!(subtotal, d("0.8"));
        let m = markup(subtotal, d("0.20")).unwrap();
        assert_eq!(m.to_string(), "0.16");
        assert_eq!(add(subtotal, m).unwrap().normalize().to_string(), "0.96");
    }

    #[test]
    fn line_cost_rounds_half_away_from_zero_at_12_decimals() {
        assert_eq!(round_line_cost(d("0.0000000000005")), d("0.000000000001"));
        assert_eq!(round_line_cost(d("0.0000000000004999")), d("0"));
        assert_eq!(round_line_cost(d("0.0000000000015")), d("0.000000000002"));
        // 1 unit at 1 credit per 3 units is 0.333..., kept to 12 decimals.
        let c = unit_cost(d("1"), d("1"), 3).unwrap();
        assert_eq!(round_line_cost(c), d("0.333333333333"));
    }

    #[test]
    fn discounts_apply_before_the_one_rounding() {
        // 15 % off 0.000375 = 0.00031875 exactly; off 1/3 credit rounds once at 12 decimals.
        assert_eq!(discounted(d("0.000375"), d("15")).unwrap(), d("0.00031875"));
        let third = unit_cost(d("1"), d("1"), 3).unwrap();
        assert_eq!(
            round_line_cost(discounted(third, d("12.5")).unwrap()),
            d("0.291666666667")
        );
        assert_eq!(discounted(d("0.8"), d("100")).unwrap(), d("0"));
    }

    #[test]
    fn token_pricing_is_exact() {
        // 1200 input tokens at 0.15 per 1M tokens.
        let c = unit_cost(d("1200"), d("0.15"), 1_000_000).unwrap();
        assert_eq!(round_line_cost(c), d("0.00018"));
    }

    #[test]
    fn markup_is_exact_and_distributive() {
        let a = d("0.123456789012");
        let b = d("0.000000000007");
        let rate = d("0.175");
        let whole = markup(a + b, rate).unwrap();
        let split = markup(a, rate).unwrap() + markup(b, rate).unwrap();
        assert_eq!(whole, split);
        assert!(whole.scale() <= DEBIT_SCALE);
    }

    #[test]
    fn markup_refuses_to_round_huge_subtotals() {
        assert!(matches!(
            markup(d("20000000000"), d("0.2")),
            Err(MoneyError::SubtotalTooLarge(_))
        ));
        assert_eq!(MAX_EXACT_SUBTOTAL, d("10000000000"));
    }

    #[test]
    fn debit_markup_rounds_only_beyond_the_exact_range() {
        assert_eq!(debit_markup(d("0.8"), d("0.2")), d("0.16"));
        let big = d("12345678901.123456789012");
        let m = debit_markup(big, d("0.123457"));
        assert!(m.scale() <= DEBIT_SCALE);
        assert!((m - big * d("0.123457")).abs() < d("0.000000000000000001"));
    }

    #[test]
    fn scaled_integer_is_checked() {
        assert_eq!(
            to_scaled_i128(d("0.96"), 18).unwrap(),
            960_000_000_000_000_000
        );
        assert_eq!(to_scaled_i128(d("-1.5"), 2).unwrap(), -150);
        assert!(to_scaled_i128(d("0.001"), 2).is_err());
        assert_eq!(to_scaled_i128(d("1.000"), 0).unwrap(), 1);
    }
}
