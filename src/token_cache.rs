//! The verified-token cache: repeated tokens skip parsing and signature work.
//!
//! Usage: `cache.get(token, now)` before verifying; `cache.insert(token, identity, key)` after.
//! Entries are keyed by a SHA-256 of the whole token (the token itself is never kept), bounded
//! in number, and never outlive the token's `exp` (plus leeway, as the check itself allows)
//! nor the key that verified it: an entry holds only a weak reference to its key, and a key set
//! refresh publishes new key objects, so after any refresh — and certainly after a key's
//! removal — the token is verified again.

use std::sync::{Arc, Weak};

use aws_lc_rs::digest;
use dashmap::DashMap;

use crate::identify::Identity;
use crate::jwks::VerificationKey;
use crate::metrics::Metrics;

struct Entry {
    identity: Arc<Identity>,
    key: Weak<VerificationKey>,
    /// Unix seconds after which the token no longer validates (exp + leeway).
    valid_until: u64,
}

pub struct TokenCache {
    entries: DashMap<[u8; 32], Entry>,
    max_entries: usize,
    metrics: Metrics,
}

impl TokenCache {
    pub fn new(max_entries: usize, metrics: Metrics) -> Self {
        Self {
            entries: DashMap::new(),
            max_entries,
            metrics,
        }
    }

    fn digest(token: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
        out
    }

    /// The identity of a token verified before, if it is still valid at `now`.
    pub fn get(&self, token: &str, now: u64) -> Option<Arc<Identity>> {
        if self.max_entries == 0 {
            return None;
        }
        let digest = Self::digest(token);
        let hit = self.entries.get(&digest).and_then(|entry| {
            (now < entry.valid_until && entry.key.strong_count() > 0)
                .then(|| entry.identity.clone())
        });
        match hit {
            Some(identity) => {
                self.metrics.token_cache.with_label_values(&["hit"]).inc();
                Some(identity)
            }
            None => {
                self.metrics.token_cache.with_label_values(&["miss"]).inc();
                // A stale entry is dropped now rather than left to eviction.
                self.entries.remove_if(&digest, |_, entry| {
                    now >= entry.valid_until || entry.key.strong_count() == 0
                });
                None
            }
        }
    }

    pub fn insert(
        &self,
        token: &str,
        identity: Arc<Identity>,
        key: &Arc<VerificationKey>,
        valid_until: u64,
    ) {
        if self.max_entries == 0 {
            return;
        }
        if self.entries.len() >= self.max_entries {
            self.evict();
        }
        self.entries.insert(
            Self::digest(token),
            Entry {
                identity,
                key: Arc::downgrade(key),
                valid_until,
            },
        );
        self.metrics
            .token_cache_entries
            .set(self.entries.len() as i64);
    }

    /// Makes room: drops entries whose key is gone, then (if still full) about a tenth of the
    /// rest, whichever the map yields first — cheap, and a dropped entry only costs one verify.
    fn evict(&self) {
        let before = self.entries.len();
        self.entries.retain(|_, entry| entry.key.strong_count() > 0);
        if self.entries.len() >= self.max_entries {
            let victims: Vec<[u8; 32]> = self
                .entries
                .iter()
                .take((self.max_entries / 10).max(1))
                .map(|entry| *entry.key())
                .collect();
            for victim in victims {
                self.entries.remove(&victim);
            }
        }
        let evicted = before.saturating_sub(self.entries.len());
        self.metrics.token_cache_evictions.inc_by(evicted as u64);
    }
}
