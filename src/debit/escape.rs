//! Whether a string needs JSON escapes: bytes in, a yes or no out, eight bytes per step.
//!
//! The output encoder ([`super::json`]) writes most strings (ids, names) as they are; this is
//! its check. Byte by byte it was half of the encoder's string writing, itself ~8 % of the
//! pipeline thread in a cold drain (docs/performance.md).

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// True if `bytes` holds a byte JSON must escape: `"`, `\` or a control character below
/// 0x20 (serde_json's rule; DEL and non-ASCII bytes are written as they are).
///
/// Eight bytes at a time (SWAR): for a word `x`, `(x - n * ONES) & !x & HIGH` is non-zero
/// exactly when some byte of `x` is below `n` (`n` ≤ 0x80), and a byte equal to `c` is a
/// zero byte of `x ^ (c * ONES)`. The tail (under eight bytes) is checked byte by byte.
pub fn needs_escape(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let x = u64::from_le_bytes(w.try_into().expect("eight bytes"));
        let quote = x ^ (ONES * u64::from(b'"'));
        let backslash = x ^ (ONES * u64::from(b'\\'));
        let below_space = x.wrapping_sub(ONES * 0x20) & !x;
        let is_quote = quote.wrapping_sub(ONES) & !quote;
        let is_backslash = backslash.wrapping_sub(ONES) & !backslash;
        if (below_space | is_quote | is_backslash) & HIGH != 0 {
            return true;
        }
    }
    words.remainder().iter().copied().any(escaped)
}

/// The byte-by-byte rule.
fn escaped(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn each_byte_value_at_each_position_of_a_word() {
        for b in 0..=255u8 {
            for at in 0..16 {
                let mut bytes = vec![b'a'; 16];
                bytes[at] = b;
                assert_eq!(needs_escape(&bytes), escaped(b), "byte {b:#04x} at {at}");
            }
        }
        assert!(!needs_escape(b""));
        assert!(!needs_escape("exe_01HZ…é😀/\u{7f}".as_bytes()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        #[test]
        fn agrees_with_the_byte_rule(
            bytes in proptest::collection::vec(
                prop_oneof![
                    Just(b'"'), Just(b'\\'), Just(0x1f_u8), Just(0x20_u8), Just(0x7f_u8),
                    Just(0x80_u8), Just(0xff_u8), 0x00u8..0x20, 0x21u8..0x7f, any::<u8>(),
                ],
                0..40,
            )
        ) {
            prop_assert_eq!(needs_escape(&bytes), bytes.iter().copied().any(escaped));
        }
    }
}
