//! A cheap hash for in-memory maps whose keys no client chooses: buffer addresses, sequence
//! and body numbers the broker and the store assign (the store's maps, and the journal's
//! index of waiting records). SipHash (std's default) resists keys picked to collide, which
//! these cannot be, and costs several times as much per lookup on the committer's path.
//! Maps keyed by client ids keep SipHash.

/// Builds [`Mix`] hashers.
#[derive(Clone, Copy, Default, Debug)]
pub struct BuildMix;

/// A multiplicative hash of the words written to it.
#[derive(Default, Debug)]
pub struct Mix(u64);

impl std::hash::BuildHasher for BuildMix {
    type Hasher = Mix;
    fn build_hasher(&self) -> Mix {
        Mix(0)
    }
}

impl std::hash::Hasher for Mix {
    fn finish(&self) -> u64 {
        // The product's high bits carry most of the input; fold them into the low bits, which
        // pick the bucket (an aligned address alone would leave them zero), and mix once more.
        let x = (self.0 ^ (self.0 >> 32)).wrapping_mul(0xD6E8_FEB8_6659_FD93);
        x ^ (x >> 32)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(29) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    use super::BuildMix;

    /// Aligned addresses and small sequential numbers, the keys the store uses, fill the low
    /// bits (a table's bucket index) as a random hash would: 4,096 keys in 1,024 buckets
    /// leave about e^-4 of them (19) empty.
    #[test]
    fn aligned_and_sequential_keys_spread() {
        let buckets = 1024u64;
        for keys in [
            (0..4096u64)
                .map(|i| 0x7f00_0000_0000 + i * 64)
                .collect::<Vec<_>>(),
            (0..4096u64).collect(),
        ] {
            let used: HashSet<u64> = keys
                .iter()
                .map(|k| BuildMix.hash_one(k) % buckets)
                .collect();
            assert!(used.len() > 980, "{} of {buckets} buckets", used.len());
        }
        let pairs: HashSet<u64> = (0..4096u64)
            .map(|i| BuildMix.hash_one((0x5555_0000_0000usize + 4096, i)) % buckets)
            .collect();
        assert!(pairs.len() > 980, "{} of {buckets} buckets", pairs.len());
    }
}
