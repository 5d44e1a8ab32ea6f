//! Audit-log sampling: which allow events are written. Denies are always written.
//!
//! Usage: `AllowSampler::new(rate)` once per configuration; per allow,
//! `sampler.keeps(&facts.request_id)`.
//!
//! The choice is a pure function of Envoy's `x-request-id` when there is one, so every replica
//! (and a test) agrees on which requests are logged, and a request that crosses several
//! services can be followed in all their logs or in none. The hash is FNV-1a with a SplitMix64
//! finalizer, written out here so it never changes with a library or compiler version. Without
//! a request id a counter spreads the kept events evenly: exactly `rate` of them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Decides which allow events reach the audit log.
#[derive(Debug)]
pub struct AllowSampler {
    /// The fraction kept, in [0, 1].
    rate: f64,
    /// Allows seen without a request id (the fallback's position).
    without_id: AtomicU64,
}

// === impl AllowSampler ===

impl AllowSampler {
    /// `rate` is clamped to [0, 1] (the configuration refuses anything else already).
    pub fn new(rate: f64) -> Self {
        let rate = if rate.is_nan() {
            1.0
        } else {
            rate.clamp(0.0, 1.0)
        };
        Self {
            rate,
            without_id: AtomicU64::new(0),
        }
    }

    /// Whether the allow event of the request with this `x-request-id` (possibly empty) is
    /// written.
    pub fn keeps(&self, request_id: &str) -> bool {
        if self.rate >= 1.0 {
            return true;
        }
        if self.rate <= 0.0 {
            return false;
        }
        if request_id.is_empty() {
            let n = self.without_id.fetch_add(1, Ordering::Relaxed);
            return keeps_nth(n, self.rate);
        }
        keeps_hash(request_id_hash(request_id), self.rate)
    }
}

/// The `n`th (from 0) of a sequence is kept when it carries the running count of kept events
/// past a whole number: with rate 0.25, events 3, 7, 11, …
fn keeps_nth(n: u64, rate: f64) -> bool {
    let before = (n as f64 * rate).floor();
    let after = ((n + 1) as f64 * rate).floor();
    after > before
}

/// A hash spread uniformly over u64 is kept when it falls in the lowest `rate` of the range.
fn keeps_hash(hash: u64, rate: f64) -> bool {
    // The top 53 bits as a fraction in [0, 1): exact in an f64.
    let fraction = (hash >> 11) as f64 / (1u64 << 53) as f64;
    fraction < rate
}

/// FNV-1a 64 of the id's bytes, finished with SplitMix64's mixer so that ids differing in a
/// few trailing characters (sequential ids) spread over the whole range.
pub fn request_id_hash(request_id: &str) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = FNV_OFFSET;
    for byte in request_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(count: usize) -> impl Iterator<Item = String> {
        (0..count).map(|n| format!("{n:08x}-5b1c-4d0e-9a3f-{:012x}", n * 7919))
    }

    #[test]
    fn hash_is_fixed_across_builds() {
        const HASH_OF_UUID: u64 = 0x7f5d_8b36_8a93_9711;
        // Replicas of different versions must agree: these values may never change.
        assert_eq!(request_id_hash(""), 0xf52a_15e9_a9b5_e89b);
        assert_eq!(
            request_id_hash("0b4d1a60-5b1c-4d0e-9a3f-2f4c1e0a9b77"),
            HASH_OF_UUID
        );
        assert_ne!(request_id_hash("a"), request_id_hash("b"));
    }

    #[test]
    fn rate_bounds_keep_all_or_none() {
        let all = AllowSampler::new(1.0);
        let none = AllowSampler::new(0.0);
        for id in ids(100).chain([String::new()]) {
            assert!(all.keeps(&id));
            assert!(!none.keeps(&id));
        }
        assert!(AllowSampler::new(f64::NAN).keeps("x"));
        assert!(!AllowSampler::new(-3.0).keeps("x"));
    }

    #[test]
    fn same_request_id_same_choice_in_every_replica() {
        let first = AllowSampler::new(0.3);
        let second = AllowSampler::new(0.3);
        for id in ids(500) {
            assert_eq!(first.keeps(&id), second.keeps(&id), "{id}");
            assert_eq!(first.keeps(&id), first.keeps(&id), "{id}");
        }
    }

    #[test]
    fn hashed_ids_are_kept_near_the_rate() {
        for rate in [0.01, 0.1, 0.5, 0.9] {
            let sampler = AllowSampler::new(rate);
            let kept = ids(20_000).filter(|id| sampler.keeps(id)).count();
            let expected = 20_000.0 * rate;
            // Fixed inputs: this is deterministic; the tolerance only says the hash spreads.
            assert!(
                (kept as f64 - expected).abs() < expected * 0.1 + 20.0,
                "rate {rate}: kept {kept} of 20000"
            );
        }
    }

    #[test]
    fn lower_rate_keeps_a_subset() {
        let low = AllowSampler::new(0.1);
        let high = AllowSampler::new(0.4);
        for id in ids(2_000) {
            assert!(!low.keeps(&id) || high.keeps(&id), "{id}");
        }
    }

    #[test]
    fn without_request_id_exactly_the_rate_is_kept_evenly() {
        let sampler = AllowSampler::new(0.25);
        let kept: Vec<bool> = (0..12).map(|_| sampler.keeps("")).collect();
        assert_eq!(
            kept,
            [
                false, false, false, true, false, false, false, true, false, false, false, true
            ]
        );
        let sampler = AllowSampler::new(0.1);
        assert_eq!((0..1000).filter(|_| sampler.keeps("")).count(), 100);
    }
}
