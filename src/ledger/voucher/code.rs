//! Voucher codes, pure: a code as typed in; its normalized form, its identity (a SHA-256
//! `code_hash` with a domain prefix), and its printable masked form out.

use sha2::{Digest, Sha256};

/// Length limits of a voucher code, in characters after normalization.
pub const CODE_LEN: std::ops::RangeInclusive<usize> = 6..=64;

/// Upper-cases and trims a code; refuses anything but `A-Z 0-9 - _`.
pub fn normalize_code(code: &str) -> Result<String, String> {
    let c = code.trim().to_ascii_uppercase();
    if !CODE_LEN.contains(&c.chars().count()) {
        return Err(format!(
            "a voucher code has {} to {} characters",
            CODE_LEN.start(),
            CODE_LEN.end()
        ));
    }
    if !c
        .chars()
        .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
    {
        return Err("a voucher code has only letters, digits, '-' and '_'".into());
    }
    Ok(c)
}

/// SHA-256 (hex) of a normalized code with a domain prefix: the code's identity everywhere.
pub fn code_hash(normalized: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"usage-aggregator voucher v1\0");
    h.update(normalized.as_bytes());
    h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
}

/// The printable form of a code: its first segment when it is at most half the code
/// (`SPRING-2026-X7Q` -> `SPRING-****`), else its first three characters (`ABC****`).
pub fn mask(normalized: &str) -> String {
    let n = normalized.chars().count();
    match normalized.find(['-', '_']) {
        Some(i) if i > 0 && i * 2 <= n => format!("{}****", &normalized[..=i]),
        _ => format!("{}****", normalized.chars().take(3).collect::<String>()),
    }
}

/// `SPRING-**** #1a2b3c4d`: masked code and short hash, for logs and results.
pub fn display(masked: &str, hash: &str) -> String {
    format!("{masked} #{}", &hash[..8.min(hash.len())])
}
