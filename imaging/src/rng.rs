//! Deterministic randomness for augmentation: per-sample seeds derived by hashing, xoshiro256** streams.
//!
//! A sample's draws depend only on `(workflow_seed, case_id, copy)`, never on shard count, thread
//! scheduling or what other samples drew, so any worker can materialize any sample bit-identically.

/// SplitMix64 finalizer (Steele et al.); spreads every input bit over the whole word.
fn fmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The per-sample seed: FNV-1a 64 over the byte string
/// `"wf-sample-seed-v1" ‖ workflow_seed (u64 LE) ‖ len(case_id) (u64 LE) ‖ case_id (UTF-8) ‖ copy (u32 LE)`,
/// then the SplitMix64 finalizer. The length prefix keeps `("ab", 1)` and `("a", …)` apart; the version
/// tag lets the scheme change without silently reusing old seeds. Pinned by a golden test.
pub fn sample_seed(workflow_seed: u64, case_id: &str, copy: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(b"wf-sample-seed-v1");
    eat(&workflow_seed.to_le_bytes());
    eat(&(case_id.len() as u64).to_le_bytes());
    eat(case_id.as_bytes());
    eat(&copy.to_le_bytes());
    fmix(h)
}

/// xoshiro256** (Blackman & Vigna), state filled from the seed by SplitMix64 as its authors recommend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            fmix(x)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    /// The stream for one sample: `Rng::new(sample_seed(..))`.
    pub fn for_sample(workflow_seed: u64, case_id: &str, copy: u32) -> Self {
        Rng::new(sample_seed(workflow_seed, case_id, copy))
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// Uniform integer in [0, n] inclusive, unbiased (Lemire's multiply-shift with rejection).
    pub fn int_inclusive(&mut self, n: u64) -> u64 {
        if n == u64::MAX {
            return self.next_u64();
        }
        let range = n + 1;
        let threshold = range.wrapping_neg() % range;
        loop {
            let m = (self.next_u64() as u128) * (range as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_pinned_and_distinct() {
        // Golden values: changing them changes every materialized sample; bump the version tag instead.
        assert_eq!(
            sample_seed(0, "BRATS_001", 0),
            sample_seed(0, "BRATS_001", 0)
        );
        let a = sample_seed(0, "BRATS_001", 0);
        assert_ne!(a, sample_seed(0, "BRATS_001", 1));
        assert_ne!(a, sample_seed(1, "BRATS_001", 0));
        assert_ne!(a, sample_seed(0, "BRATS_002", 0));
        assert_eq!(format!("{a:016x}"), PINNED);
    }
    const PINNED: &str = "10c2c37d0eb7e806";

    #[test]
    fn uniform_ranges() {
        let mut r = Rng::new(7);
        let mut seen = [false; 5];
        for _ in 0..1000 {
            let v = r.int_inclusive(4) as usize;
            seen[v] = true;
            let f = r.uniform(-0.1, 0.1);
            assert!((-0.1..0.1).contains(&f));
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(r.int_inclusive(0), 0);
    }
}
