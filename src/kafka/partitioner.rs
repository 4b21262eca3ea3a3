//! The partition librdkafka's producer gives a keyed message: a key, a partition count and
//! the `partitioner` property in, the partition out. The outputs are keyed by `account_id`,
//! so an account's priced lines and debits are all in this one partition of each output
//! topic (they have the same partition count): the traces and streams read only it.

/// Which partitioner the producers use (librdkafka's `partitioner`; default
/// `consistent_random`). Those not listed (`random`, `fnv1a`, ...) cannot be followed by key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitioner {
    /// `consistent` and `consistent_random`: CRC-32 of the key, modulo the partition count.
    Crc32,
    /// `murmur2` and `murmur2_random` (the Java client's default): murmur2 of the key, top
    /// bit cleared, modulo the partition count.
    Murmur2,
}

impl Partitioner {
    /// The partitioner librdkafka uses for the property value `name` (`None`: the default).
    pub fn from_property(name: Option<&str>) -> Result<Partitioner, String> {
        match name.unwrap_or("consistent_random") {
            "consistent" | "consistent_random" => Ok(Partitioner::Crc32),
            "murmur2" | "murmur2_random" => Ok(Partitioner::Murmur2),
            other => Err(format!(
                "kafka partitioner \"{other}\" does not place a key in a fixed partition this service can compute; use consistent_random (the default) or murmur2_random"
            )),
        }
    }

    /// The partition of `key` among `partitions` (> 0).
    pub fn partition(self, key: &[u8], partitions: i32) -> i32 {
        let n = partitions.max(1) as u32;
        let p = match self {
            Partitioner::Crc32 => crc32fast::hash(key) % n,
            Partitioner::Murmur2 => (murmur2(key) & 0x7fff_ffff) % n,
        };
        p as i32
    }
}

/// Kafka's murmur2 (seed 0x9747b28c), as the Java client and librdkafka compute it.
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h = SEED ^ len as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // CRC-32 (IEEE) check value, and Kafka's murmur2 test vectors (the Java client's
        // UtilsTest: "21" -> -973932308, "foobar" -> -790332482).
        assert_eq!(crc32fast::hash(b"123456789"), 0xcbf4_3926);
        assert_eq!(murmur2(b"21") as i32, -973_932_308);
        assert_eq!(murmur2(b"foobar") as i32, -790_332_482);
        assert_eq!(
            Partitioner::Crc32.partition(b"123456789", 4),
            (0xcbf4_3926u32 % 4) as i32
        );
        assert!(Partitioner::from_property(Some("random")).is_err());
        assert_eq!(
            Partitioner::from_property(None).unwrap(),
            Partitioner::Crc32
        );
    }
}
