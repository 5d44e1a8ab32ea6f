//! The verified-token cache: repeated tokens skip parsing and signature work.
//!
//! Usage: `TokenDigest::of(token)` once the token has passed the size limit; `cache.get(&digest,
//! now)` before verifying; after verifying, keep the `Candidate` and `cache.admit(candidate)`
//! only once policy has granted the identity something.
//!
//! Entries are keyed by a SHA-256 of the whole token (the token itself is never kept), bounded
//! in number, and never outlive the token's `exp` (plus leeway, as the check itself allows)
//! nor the key that verified it: an entry holds only a weak reference to its key. A key set
//! refresh keeps the key objects of keys whose material did not change (`jwks`), so only a
//! removed or changed key drops the tokens it verified.
//!
//! Admission and eviction, so that tokens nobody configured a grant for cannot push out the
//! ones that matter, and memory stays bounded:
//! - only tokens whose identity received at least one grant are admitted (`admit` is called
//!   after policy); a valid token that grants nothing (any GitHub repository, any tenant of a
//!   multi-tenant app) is verified again each time and never takes a slot;
//! - at most `max_entries` entries in all, split over shards by digest, each shard a fixed
//!   ring of slots with a CLOCK hand: a hit marks its slot, and an insertion into a full shard
//!   looks at no more than `SWEEP` slots for a stale or unmarked one (clearing marks as it
//!   goes) — never a scan of the whole cache, never a lock on more than one shard.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

use aws_lc_rs::digest;

use crate::jwks::VerificationKey;
use crate::metrics::Metrics;
use crate::model::identity::Identity;

/// Shards of the cache: enough that Checks on different cores rarely meet on one lock.
const SHARDS: usize = 16;

/// Slots a shard has at least (small caches get fewer shards), so that a hit's mark can
/// protect an entry while others come and go.
const MIN_SHARD_SLOTS: usize = 64;

/// Slots an insertion into a full shard looks at before it takes one anyway.
const SWEEP: usize = 8;

/// The SHA-256 of a whole token: the cache's key, so the token itself is never kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// Hash a token only after it passed `limits.max_token_bytes`: an oversized token is
    /// refused unread, not hashed.
    pub fn of(token: &str) -> Self {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
        Self(out)
    }

    fn shard(&self, shards: usize) -> usize {
        let mut low = [0u8; 8];
        low.copy_from_slice(&self.0[..8]);
        (u64::from_le_bytes(low) % shards as u64) as usize
    }
}

/// A token verified just now, waiting for policy: `TokenCache::admit` stores it if the
/// identity was granted something.
pub struct Candidate {
    digest: TokenDigest,
    identity: Arc<Identity>,
    key: Weak<VerificationKey>,
    /// Unix seconds after which the token no longer validates (exp + leeway).
    valid_until: u64,
}

impl Candidate {
    pub fn new(
        digest: TokenDigest,
        identity: Arc<Identity>,
        key: &Arc<VerificationKey>,
        valid_until: u64,
    ) -> Self {
        Self {
            digest,
            identity,
            key: Arc::downgrade(key),
            valid_until,
        }
    }
}

struct Slot {
    entry: Candidate,
    /// Set by a hit, cleared by the CLOCK hand passing: an entry used since the hand last
    /// passed gets a second chance.
    referenced: AtomicBool,
}

impl Slot {
    fn live(&self, now: u64) -> bool {
        now < self.entry.valid_until && self.entry.key.strong_count() > 0
    }
}

/// One shard: a ring of at most `capacity` slots and the index of the digests in it.
struct Shard {
    capacity: usize,
    slots: Vec<Slot>,
    index: HashMap<TokenDigest, usize>,
    hand: usize,
}

/// What an insertion did to the shard's size.
#[derive(Debug, PartialEq, Eq)]
enum Inserted {
    /// A new slot was filled.
    Added,
    /// The token's own entry was refreshed.
    Replaced,
    /// Another entry was evicted for it.
    Evicted,
    /// A shard without room at all (a disabled cache) holds nothing.
    Refused,
}

impl Shard {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            slots: Vec::new(),
            index: HashMap::default(),
            hand: 0,
        }
    }

    fn get(&self, digest: &TokenDigest, now: u64) -> Lookup {
        let Some(slot) = self.index.get(digest).map(|&at| &self.slots[at]) else {
            return Lookup::Absent;
        };
        if !slot.live(now) {
            return Lookup::Stale;
        }
        slot.referenced.store(true, Ordering::Relaxed);
        Lookup::Hit(slot.entry.identity.clone())
    }

    fn insert(&mut self, entry: Candidate, now: u64) -> Inserted {
        if self.capacity == 0 {
            return Inserted::Refused;
        }
        let digest = entry.digest;
        let slot = Slot {
            entry,
            referenced: AtomicBool::new(false),
        };
        if let Some(&at) = self.index.get(&digest) {
            self.slots[at] = slot;
            return Inserted::Replaced;
        }
        if self.slots.len() < self.capacity {
            self.index.insert(digest, self.slots.len());
            self.slots.push(slot);
            return Inserted::Added;
        }
        let victim = self.victim(now);
        self.index.remove(&self.slots[victim].entry.digest);
        self.slots[victim] = slot;
        self.index.insert(digest, victim);
        Inserted::Evicted
    }

    /// The slot to reuse in a full shard (CLOCK, second chance): the first of the next
    /// `SWEEP` slots that is stale or unmarked, clearing the marks it passes; if all were
    /// marked, the last one looked at. Constant work whatever the shard's size.
    fn victim(&mut self, now: u64) -> usize {
        let mut at = self.hand;
        for _ in 0..SWEEP.min(self.slots.len()) {
            at = self.hand;
            self.hand = (self.hand + 1) % self.slots.len();
            let slot = &self.slots[at];
            if !slot.live(now) || !slot.referenced.swap(false, Ordering::Relaxed) {
                break;
            }
        }
        at
    }

    /// Drops the entry for `digest` if it is stale at `now`; whether one was dropped.
    fn remove_stale(&mut self, digest: &TokenDigest, now: u64) -> bool {
        let Some(&at) = self.index.get(digest) else {
            return false;
        };
        if self.slots[at].live(now) {
            return false;
        }
        self.index.remove(digest);
        self.slots.swap_remove(at);
        if let Some(moved) = self.slots.get(at) {
            self.index.insert(moved.entry.digest, at);
        }
        if self.hand >= self.slots.len() {
            self.hand = 0;
        }
        true
    }
}

enum Lookup {
    Hit(Arc<Identity>),
    Stale,
    Absent,
}

pub struct TokenCache {
    shards: Box<[RwLock<Shard>]>,
    enabled: bool,
    metrics: Metrics,
}

impl TokenCache {
    /// A cache of at most `max_entries` tokens (0 disables it).
    pub fn new(max_entries: usize, metrics: Metrics) -> Self {
        let count = (max_entries / MIN_SHARD_SLOTS).clamp(1, SHARDS);
        // Every shard gets its share; the first ones one more, so the total is exact.
        let shards = (0..count)
            .map(|index| {
                let share = max_entries / count + usize::from(index < max_entries % count);
                RwLock::new(Shard::new(share))
            })
            .collect();
        metrics.token_cache_entries.set(0);
        Self {
            shards,
            enabled: max_entries > 0,
            metrics,
        }
    }

    fn shard(&self, digest: &TokenDigest) -> &RwLock<Shard> {
        &self.shards[digest.shard(self.shards.len())]
    }

    fn read(&self, digest: &TokenDigest) -> RwLockReadGuard<'_, Shard> {
        // A panic while holding the lock cannot leave a shard inconsistent in a way that
        // matters to a cache; keep serving rather than fail every Check.
        self.shard(digest)
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self, digest: &TokenDigest) -> RwLockWriteGuard<'_, Shard> {
        self.shard(digest)
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The identity of a token verified before, if it is still valid at `now`.
    pub fn get(&self, digest: &TokenDigest, now: u64) -> Option<Arc<Identity>> {
        if !self.enabled {
            return None;
        }
        let lookup = self.read(digest).get(digest, now);
        match lookup {
            Lookup::Hit(identity) => {
                self.metrics.token_cache.with_label_values(&["hit"]).inc();
                Some(identity)
            }
            Lookup::Absent => {
                self.metrics.token_cache.with_label_values(&["miss"]).inc();
                None
            }
            Lookup::Stale => {
                self.metrics.token_cache.with_label_values(&["miss"]).inc();
                // A stale entry is dropped now rather than left for the hand to find.
                if self.write(digest).remove_stale(digest, now) {
                    self.metrics.token_cache_entries.dec();
                }
                None
            }
        }
    }

    /// Stores a verified token. Call it only for an identity that policy granted something:
    /// the cache is for tokens that are used, and this keeps tokens that grant nothing from
    /// taking the slots of those that do.
    pub fn admit(&self, candidate: Candidate, now: u64) {
        if !self.enabled {
            return;
        }
        let digest = candidate.digest;
        match self.write(&digest).insert(candidate, now) {
            Inserted::Added => self.metrics.token_cache_entries.inc(),
            Inserted::Replaced | Inserted::Refused => {}
            Inserted::Evicted => self.metrics.token_cache_evictions.inc(),
        }
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                shard
                    .read()
                    .map(|shard| shard.slots.len())
                    .unwrap_or_default()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(name: &str) -> Arc<Identity> {
        Arc::new(Identity {
            issuer: "i".into(),
            iss: "https://i".into(),
            username: name.into(),
            tenant: None,
            client: None,
            audiences: Default::default(),
            groups: Default::default(),
            claims: Default::default(),
            expires_at: 1_000,
            bridge_subject: None,
            exchanged: None,
        })
    }

    fn key() -> Arc<VerificationKey> {
        crate::jwks::test_key("k")
    }

    fn candidate(token: &str, key: &Arc<VerificationKey>, valid_until: u64) -> Candidate {
        Candidate::new(TokenDigest::of(token), identity(token), key, valid_until)
    }

    fn hit(cache: &TokenCache, token: &str, now: u64) -> bool {
        cache.get(&TokenDigest::of(token), now).is_some()
    }

    #[test]
    fn holds_no_more_than_its_capacity_whatever_is_inserted() {
        let key = key();
        for capacity in [1, 5, 64, 100, 1_030, 2_000] {
            let cache = TokenCache::new(capacity, Metrics::new());
            for index in 0..capacity * 20 {
                cache.admit(candidate(&format!("t{index}"), &key, 500), 0);
                assert!(cache.len() <= capacity, "{} > {capacity}", cache.len());
            }
            assert_eq!(cache.len(), capacity, "a full cache of {capacity}");
            let shards: usize = cache
                .shards
                .iter()
                .map(|shard| shard.read().map(|s| s.capacity).unwrap_or(0))
                .sum();
            assert_eq!(shards, capacity);
        }
    }

    #[test]
    fn a_token_used_between_insertions_outlives_a_stream_of_one_time_tokens() {
        let key = key();
        // A single shard, so every token meets the hot one's shard.
        let cache = TokenCache::new(4, Metrics::new());
        assert_eq!(cache.shards.len(), 1);
        let hot = "hot";
        cache.admit(candidate(hot, &key, 500), 0);
        for index in 0..1_000 {
            assert!(hit(&cache, hot, 1), "evicted before insertion {index}");
            cache.admit(candidate(&format!("once-{index}"), &key, 500), 1);
        }
    }

    #[test]
    fn an_insertion_looks_at_a_bounded_number_of_slots() {
        let key = key();
        let mut shard = Shard::new(1_000);
        for index in 0..1_000 {
            shard.insert(candidate(&format!("t{index}"), &key, 500), 0);
        }
        // Every slot marked, as if each had just been hit: the hand still stops after SWEEP.
        for slot in &shard.slots {
            slot.referenced.store(true, Ordering::Relaxed);
        }
        let before = shard.hand;
        assert_eq!(
            shard.insert(candidate("new", &key, 500), 0),
            Inserted::Evicted
        );
        assert_eq!(shard.hand, before + SWEEP);
        let cleared = shard
            .slots
            .iter()
            .filter(|slot| !slot.referenced.load(Ordering::Relaxed))
            .count();
        assert_eq!(cleared, SWEEP, "only the swept slots lost their mark");
    }

    #[test]
    fn stale_entries_make_room_first_and_never_hit() {
        let key = key();
        let other = crate::jwks::test_key("other");
        let cache = TokenCache::new(1, Metrics::new());
        cache.admit(candidate("expiring", &key, 10), 0);
        assert!(hit(&cache, "expiring", 9));
        assert!(!hit(&cache, "expiring", 10), "past exp + leeway");
        assert_eq!(cache.len(), 0, "the stale entry was dropped on lookup");

        cache.admit(candidate("by-other", &other, 500), 0);
        assert!(hit(&cache, "by-other", 1));
        drop(other);
        assert!(!hit(&cache, "by-other", 1), "its key is gone");

        // In a full shard, a marked but stale entry is taken before the hand moves on.
        let mut shard = Shard::new(2);
        shard.insert(candidate("live", &key, 500), 0);
        shard.insert(candidate("old", &key, 10), 0);
        for slot in &shard.slots {
            slot.referenced.store(true, Ordering::Relaxed);
        }
        shard.hand = 1;
        shard.insert(candidate("new", &key, 500), 20);
        assert!(matches!(
            shard.get(&TokenDigest::of("live"), 20),
            Lookup::Hit(_)
        ));
        assert!(matches!(
            shard.get(&TokenDigest::of("old"), 20),
            Lookup::Absent
        ));
    }

    #[test]
    fn a_disabled_cache_holds_nothing() {
        let key = key();
        let cache = TokenCache::new(0, Metrics::new());
        cache.admit(candidate("t", &key, 500), 0);
        assert!(!hit(&cache, "t", 1));
        assert!(cache.is_empty());
    }
}
