//! The verified-token cache: repeated tokens skip parsing, signature work and policy.
//!
//! Usage: `TokenDigest::of(token)` once the token has passed the size limit; `cache.get(&digest,
//! now)` before verifying; after verifying, keep the `Candidate` and, once policy has granted
//! the identity something, `cache.admit(candidate, granted, granted_bytes, now)`: `granted` is
//! what policy made of the identity (the pipeline's `PolicyOutcome`), returned with the identity
//! on every hit so that neither is computed again. Both depend only on the token and on the
//! configuration, and the cache belongs to one `Pipeline`, which a reload replaces whole: a new
//! configuration starts with an empty cache, so a cached outcome is never one of an old policy.
//!
//! Entries are keyed by a SHA-256 of the whole token (the token itself is never kept), bounded
//! in number and in bytes, and never outlive the token's `exp` (plus leeway, as the check itself
//! allows) nor the key that verified it: an entry holds only a weak reference to its key. A key
//! set refresh keeps the key objects of keys whose material did not change (`jwks`), so only a
//! removed or changed key drops the tokens it verified.
//!
//! Admission and eviction, so that tokens nobody configured a grant for cannot push out the
//! ones that matter, and memory stays bounded by construction:
//! - only tokens whose identity received at least one grant are admitted (`admit` is called
//!   after policy); a valid token that grants nothing (any GitHub repository, any tenant of a
//!   multi-tenant app) is verified again each time and never takes a slot;
//! - at most `max_entries` entries and `max_bytes` estimated bytes in all
//!   (`limits.token_cache_entries`, `limits.token_cache_bytes`), split over shards by digest.
//!   An entry's bytes are estimated when it is admitted from what it holds ([`entry_bytes`]:
//!   its slot and index entry, the identity's strings and claims, what policy granted), so a
//!   flood of tokens with large claims fills the byte budget, not the process's memory;
//! - each shard is a ring of slots with a CLOCK hand: a hit marks its slot, and an insertion
//!   into a full shard evicts until the new entry fits, each eviction looking at no more than
//!   `SWEEP` slots for a stale or unmarked one (clearing marks as it goes). Work per insertion
//!   is constant, amortised: an entry is evicted at most once, so an insertion that evicts
//!   several (one large entry replacing small ones) pays for insertions that evicted none.
//!   Never a scan of the whole cache, never a lock on more than one shard.
//!
//! Why our own CLOCK shards rather than a crate: `benches/token_cache.rs` measured them against
//! `quick_cache` holding the same entries under the same byte bound (BENCHMARKS.md,
//! "Verified-token cache: CLOCK shards or a crate"): within 26 ns on a hit (129 vs 103 ns, 2 %
//! of a cached Check), faster to insert into a full cache (224 vs 276 ns), the same heap per
//! entry (1 296 vs 1 263 B). What this cache needs beyond a bounded map is what it does in the
//! lookup itself and a crate would leave to its caller: an entry dies with its key (a `Weak`)
//! or at the token's `exp` and a stale one is dropped on the spot, admission happens only after
//! policy, and entries and bytes are counted into the service's metrics.

use std::collections::HashMap;
use std::mem::size_of;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

use aws_lc_rs::digest;
use serde_json::Value;

use crate::jwks::VerificationKey;
use crate::metrics::Metrics;
use crate::model::identity::Identity;

/// Shards of the cache: enough that Checks on different cores rarely meet on one lock.
const SHARDS: usize = 16;

/// Slots a shard has at least (small caches get fewer shards), so that a hit's mark can
/// protect an entry while others come and go.
const MIN_SHARD_SLOTS: usize = 64;

/// Estimated bytes of a typical entry (an Entra or GitHub Actions token's identity and its
/// grants, `entry_bytes`), for sizing shards only: the bound itself counts each entry's own.
const TYPICAL_ENTRY_BYTES: usize = 2048;

/// Slots an eviction looks at before it takes one anyway.
const SWEEP: usize = 8;

/// The SHA-256 of a whole token: the cache's key, so the token itself is never kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenDigest([u8; 32]);

impl std::hash::Hash for TokenDigest {
    /// Bytes 8..16 as one `u64` (see `BuildDigestHasher`).
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut middle = [0u8; 8];
        middle.copy_from_slice(&self.0[8..16]);
        state.write_u64(u64::from_le_bytes(middle));
    }
}

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

/// What a hit returns: the identity and what policy granted it when it was admitted.
pub struct Cached<G> {
    pub identity: Arc<Identity>,
    pub granted: G,
}

struct Entry<G> {
    candidate: Candidate,
    granted: G,
    /// The estimate `entry_bytes` made at admission, counted against the shard's budget.
    bytes: usize,
}

struct Slot<G> {
    entry: Entry<G>,
    /// Set by a hit, cleared by the CLOCK hand passing: an entry used since the hand last
    /// passed gets a second chance.
    referenced: AtomicBool,
}

impl<G> Slot<G> {
    fn live(&self, now: u64) -> bool {
        let candidate = &self.entry.candidate;
        now < candidate.valid_until && candidate.key.strong_count() > 0
    }

    fn digest(&self) -> TokenDigest {
        self.entry.candidate.digest
    }
}

/// One shard: a ring of at most `capacity` slots holding at most `budget` estimated bytes,
/// and the index of the digests in it.
struct Shard<G> {
    capacity: usize,
    budget: usize,
    bytes: usize,
    slots: Vec<Slot<G>>,
    index: HashMap<TokenDigest, usize, BuildDigestHasher>,
    hand: usize,
}

/// Hashes a `TokenDigest` by taking 8 of its bytes: it is a SHA-256 already, so its bytes are
/// as uniform as any hash of them (SipHash over 32 bytes was a third of a lookup's time). Bytes
/// 8..16, because 0..8 chose the shard, and every digest in a shard shares them modulo the
/// shard count. Keys are digests of tokens, which a client can grind; but only admitted tokens
/// (verified, and granted something) are in the table, so a client cannot fill a bucket.
#[derive(Clone, Copy, Default)]
struct BuildDigestHasher;

#[derive(Default)]
struct DigestHasher(u64);

impl std::hash::BuildHasher for BuildDigestHasher {
    type Hasher = DigestHasher;

    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(0)
    }
}

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }

    /// Only `TokenDigest`'s `write_u64` reaches this hasher; anything else is folded in, so
    /// it stays a hash.
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// What an insertion did.
#[derive(Debug, PartialEq, Eq)]
struct Inserted {
    /// Whether the entry is in the shard now (false: larger than the shard's whole budget, or
    /// a disabled cache).
    stored: bool,
    /// Other entries evicted to make room for it.
    evicted: usize,
    /// Entries held after, minus before.
    entries_delta: isize,
    /// Estimated bytes held after, minus before.
    bytes_delta: isize,
}

impl<G: Clone> Shard<G> {
    fn new(capacity: usize, budget: usize) -> Self {
        Self {
            capacity,
            budget,
            bytes: 0,
            slots: Vec::new(),
            index: HashMap::default(),
            hand: 0,
        }
    }

    fn get(&self, digest: &TokenDigest, now: u64) -> Lookup<G> {
        let Some(slot) = self.index.get(digest).map(|&at| &self.slots[at]) else {
            return Lookup::Absent;
        };
        if !slot.live(now) {
            return Lookup::Stale;
        }
        slot.referenced.store(true, Ordering::Relaxed);
        Lookup::Hit(Cached {
            identity: slot.entry.candidate.identity.clone(),
            granted: slot.entry.granted.clone(),
        })
    }

    fn insert(&mut self, entry: Entry<G>, now: u64) -> Inserted {
        let (entries_before, bytes_before) = (self.slots.len(), self.bytes);
        let digest = entry.candidate.digest;
        // The token's own older entry goes first: its bytes are not the new entry's.
        if let Some(&at) = self.index.get(&digest) {
            self.remove_at(at);
        }
        let fits = entry.bytes <= self.budget && self.capacity > 0;
        let mut evicted = 0;
        while fits
            && !self.slots.is_empty()
            && (self.slots.len() >= self.capacity || self.bytes + entry.bytes > self.budget)
        {
            let victim = self.victim(now);
            self.remove_at(victim);
            evicted += 1;
        }
        if fits {
            self.bytes += entry.bytes;
            self.index.insert(digest, self.slots.len());
            self.slots.push(Slot {
                entry,
                referenced: AtomicBool::new(false),
            });
        }
        Inserted {
            stored: fits,
            evicted,
            entries_delta: self.slots.len() as isize - entries_before as isize,
            bytes_delta: self.bytes as isize - bytes_before as isize,
        }
    }

    /// The slot to evict (CLOCK, second chance): the first of the next `SWEEP` slots that is
    /// stale or unmarked, clearing the marks it passes; if all were marked, the last one looked
    /// at. Constant work whatever the shard's size.
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

    /// Removes the slot at `at` in constant time: the last slot takes its place.
    fn remove_at(&mut self, at: usize) {
        let removed = self.slots.swap_remove(at);
        self.index.remove(&removed.digest());
        self.bytes -= removed.entry.bytes;
        if let Some(moved) = self.slots.get(at) {
            self.index.insert(moved.digest(), at);
        }
        if self.hand >= self.slots.len() {
            self.hand = 0;
        }
    }

    /// Drops the entry for `digest` if it is stale at `now`; the estimated bytes it held.
    fn remove_stale(&mut self, digest: &TokenDigest, now: u64) -> Option<usize> {
        let &at = self.index.get(digest)?;
        if self.slots[at].live(now) {
            return None;
        }
        let bytes = self.slots[at].entry.bytes;
        self.remove_at(at);
        Some(bytes)
    }
}

enum Lookup<G> {
    Hit(Cached<G>),
    Stale,
    Absent,
}

/// Estimated bytes of one cache entry: what its slot, its index entry and its identity take
/// on the heap, plus `granted_bytes` for what policy granted, plus an allocator's overhead per
/// allocation. Strings and lists the configuration shares (`model::identity::Interner`: issuer,
/// `iss`, tenant, known audiences and groups, claim names) cost an entry nothing: an `Arc`
/// held elsewhere too is counted as shared. An estimate, not a measurement:
/// `scripts/bench/resilience.sh` compares it with the RSS the process actually gains per
/// cached token (BENCHMARKS.md, "Resilience").
pub fn entry_bytes(identity: &Identity, granted_bytes: usize) -> usize {
    let slot = size_of::<Slot<()>>() + size_of::<usize>(); // the slot and its granted handle
    // hashbrown keeps one control byte per bucket and at most 7/8 of its buckets full.
    let index = (size_of::<(TokenDigest, usize)>() + 1) * 8 / 7;
    let identity_heap = ALLOCATION + size_of::<Identity>() + 2 * size_of::<usize>() // the Arc
        + shared_str(&identity.issuer)
        + shared_str(&identity.iss)
        + string(&identity.username)
        + identity.tenant.as_ref().map_or(0, shared_str)
        + identity.client.as_deref().map_or(0, string)
        + identity.bridge_subject.as_deref().map_or(0, string)
        + shared_list(&identity.audiences)
        + shared_list(&identity.groups)
        + claims(identity);
    slot + index + identity_heap + granted_bytes
}

/// What an allocator adds to each allocation (its header and rounding), roughly.
const ALLOCATION: usize = 16;

/// The heap bytes of a string (none when empty: no allocation).
fn string(value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        ALLOCATION + value.len()
    }
}

/// An `Arc<str>`: nothing when shared (the configuration's interned copy), else its
/// allocation with the two reference counts.
fn shared_str(value: &Arc<str>) -> usize {
    if Arc::strong_count(value) > 1 {
        0
    } else {
        ALLOCATION + 2 * size_of::<usize>() + value.len()
    }
}

/// An `Arc<[Arc<str>]>`: nothing when shared, else the list and its strings not shared.
fn shared_list(values: &Arc<[Arc<str>]>) -> usize {
    if values.is_empty() || Arc::strong_count(values) > 1 {
        return 0;
    }
    ALLOCATION
        + 2 * size_of::<usize>()
        + std::mem::size_of_val(&**values)
        + values.iter().map(shared_str).sum::<usize>()
}

/// The kept claims: one boxed slice of (name, value) pairs; names are the configuration's.
fn claims(identity: &Identity) -> usize {
    if identity.claims.is_empty() {
        return 0;
    }
    ALLOCATION
        + identity.claims.len() * (size_of::<Arc<str>>() + size_of::<Value>())
        + identity
            .claims
            .iter()
            .map(|(_, json)| value(json))
            .sum::<usize>()
}

/// The heap bytes of a JSON value's contents (its own `Value` is counted by its container).
fn value(json: &Value) -> usize {
    match json {
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        Value::String(text) => string(text),
        Value::Array(items) if items.is_empty() => 0,
        Value::Array(items) => {
            ALLOCATION + items.len() * size_of::<Value>() + items.iter().map(value).sum::<usize>()
        }
        Value::Object(map) => object(map),
    }
}

/// `serde_json::Map` is a `BTreeMap`: entries sit in nodes of up to 11, which are allocated
/// whole (a map of one claim costs a full node); nodes are about two-thirds full on average.
fn object(map: &serde_json::Map<String, Value>) -> usize {
    const NODE_ENTRIES: usize = 11;
    if map.is_empty() {
        return 0;
    }
    let nodes = map.len().div_ceil(NODE_ENTRIES * 2 / 3).max(1);
    let node = ALLOCATION + 16 + NODE_ENTRIES * (size_of::<String>() + size_of::<Value>());
    nodes * node
        + map
            .iter()
            .map(|(key, json)| string(key) + value(json))
            .sum::<usize>()
}

/// The verified-token cache of one `Pipeline`; `G` is what policy granted an admitted identity
/// (cloned on every hit: make it an `Arc`).
pub struct TokenCache<G = ()> {
    shards: Box<[RwLock<Shard<G>>]>,
    enabled: bool,
    metrics: Metrics,
}

impl<G: Clone> TokenCache<G> {
    /// A cache of at most `max_entries` tokens and `max_bytes` estimated bytes (either 0
    /// disables it).
    pub fn new(max_entries: usize, max_bytes: usize, metrics: Metrics) -> Self {
        // As many shards as keep at least MIN_SHARD_SLOTS typical entries each, by count and
        // by bytes: a small byte budget split 16 ways would leave each shard too little for
        // one large entry.
        let typical = max_entries.min(max_bytes / TYPICAL_ENTRY_BYTES);
        let count = (typical / MIN_SHARD_SLOTS).clamp(1, SHARDS);
        // Every shard gets its share; the first ones one more, so the totals are exact.
        let share = |total: usize, index: usize| total / count + usize::from(index < total % count);
        let shards = (0..count)
            .map(|index| {
                RwLock::new(Shard::new(
                    share(max_entries, index),
                    share(max_bytes, index),
                ))
            })
            .collect();
        metrics.token_cache_entries.set(0);
        metrics.token_cache_bytes.set(0);
        Self {
            shards,
            enabled: max_entries > 0 && max_bytes > 0,
            metrics,
        }
    }

    fn shard(&self, digest: &TokenDigest) -> &RwLock<Shard<G>> {
        &self.shards[digest.shard(self.shards.len())]
    }

    fn read(&self, digest: &TokenDigest) -> RwLockReadGuard<'_, Shard<G>> {
        // A panic while holding the lock cannot leave a shard inconsistent in a way that
        // matters to a cache; keep serving rather than fail every Check.
        self.shard(digest)
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self, digest: &TokenDigest) -> RwLockWriteGuard<'_, Shard<G>> {
        self.shard(digest)
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether tokens are cached at all (`limits.token_cache_entries` and `_bytes` not 0):
    /// when not, a Check does not even hash its token.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The identity of a token verified before, and what policy granted it then, if the token
    /// is still valid at `now`.
    pub fn get(&self, digest: &TokenDigest, now: u64) -> Option<Cached<G>> {
        if !self.enabled {
            return None;
        }
        let lookup = self.read(digest).get(digest, now);
        match lookup {
            Lookup::Hit(cached) => {
                self.metrics.token_cache_hits.inc();
                Some(cached)
            }
            Lookup::Absent => {
                self.metrics.token_cache_misses.inc();
                None
            }
            Lookup::Stale => {
                self.metrics.token_cache_misses.inc();
                // A stale entry is dropped now rather than left for the hand to find.
                if let Some(bytes) = self.write(digest).remove_stale(digest, now) {
                    self.metrics.token_cache_entries.dec();
                    self.metrics.token_cache_bytes.sub(bytes as i64);
                }
                None
            }
        }
    }

    /// Stores a verified token with what policy granted it (`granted`, of about
    /// `granted_bytes` on the heap). Call it only for an identity that policy granted
    /// something: the cache is for tokens that are used, and this keeps tokens that grant
    /// nothing from taking the slots of those that do.
    pub fn admit(&self, candidate: Candidate, granted: G, granted_bytes: usize, now: u64) {
        if !self.enabled {
            return;
        }
        let digest = candidate.digest;
        let bytes = entry_bytes(&candidate.identity, granted_bytes);
        let entry = Entry {
            candidate,
            granted,
            bytes,
        };
        let inserted = self.write(&digest).insert(entry, now);
        self.metrics
            .token_cache_entries
            .add(inserted.entries_delta as i64);
        self.metrics
            .token_cache_bytes
            .add(inserted.bytes_delta as i64);
        self.metrics
            .token_cache_evictions
            .inc_by(inserted.evicted as u64);
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

    /// Estimated bytes held now.
    pub fn bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.read().map(|shard| shard.bytes).unwrap_or_default())
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

    /// An entry of `bytes` estimated bytes, as `admit` would store it.
    fn entry(token: &str, key: &Arc<VerificationKey>, valid_until: u64) -> Entry<()> {
        sized(token, key, valid_until, 100)
    }

    fn sized(token: &str, key: &Arc<VerificationKey>, valid_until: u64, bytes: usize) -> Entry<()> {
        Entry {
            candidate: candidate(token, key, valid_until),
            granted: (),
            bytes,
        }
    }

    fn admit(
        cache: &TokenCache,
        token: &str,
        key: &Arc<VerificationKey>,
        valid_until: u64,
        now: u64,
    ) {
        cache.admit(candidate(token, key, valid_until), (), 0, now);
    }

    fn hit(cache: &TokenCache, token: &str, now: u64) -> bool {
        cache.get(&TokenDigest::of(token), now).is_some()
    }

    /// No bound on bytes: the tests of the entry count.
    const UNBOUNDED: usize = usize::MAX / 2;

    #[test]
    fn holds_no_more_than_its_capacity_whatever_is_inserted() {
        let key = key();
        for capacity in [1, 5, 64, 100, 1_030, 2_000] {
            let cache = TokenCache::new(capacity, UNBOUNDED, Metrics::new());
            for index in 0..capacity * 20 {
                admit(&cache, &format!("t{index}"), &key, 500, 0);
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
        let cache = TokenCache::new(4, UNBOUNDED, Metrics::new());
        assert_eq!(cache.shards.len(), 1);
        let hot = "hot";
        admit(&cache, hot, &key, 500, 0);
        for index in 0..1_000 {
            assert!(hit(&cache, hot, 1), "evicted before insertion {index}");
            admit(&cache, &format!("once-{index}"), &key, 500, 1);
        }
    }

    #[test]
    fn an_insertion_looks_at_a_bounded_number_of_slots() {
        let key = key();
        let mut shard = Shard::new(1_000, UNBOUNDED);
        for index in 0..1_000 {
            shard.insert(entry(&format!("t{index}"), &key, 500), 0);
        }
        // Every slot marked, as if each had just been hit: the hand still stops after SWEEP.
        for slot in &shard.slots {
            slot.referenced.store(true, Ordering::Relaxed);
        }
        let before = shard.hand;
        let inserted = shard.insert(entry("new", &key, 500), 0);
        assert_eq!((inserted.stored, inserted.evicted), (true, 1));
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
        let cache = TokenCache::new(1, UNBOUNDED, Metrics::new());
        admit(&cache, "expiring", &key, 10, 0);
        assert!(hit(&cache, "expiring", 9));
        assert!(!hit(&cache, "expiring", 10), "past exp + leeway");
        assert_eq!(cache.len(), 0, "the stale entry was dropped on lookup");

        admit(&cache, "by-other", &other, 500, 0);
        assert!(hit(&cache, "by-other", 1));
        drop(other);
        assert!(!hit(&cache, "by-other", 1), "its key is gone");

        // In a full shard, a marked but stale entry is taken before the hand moves on.
        let mut shard = Shard::new(2, UNBOUNDED);
        shard.insert(entry("live", &key, 500), 0);
        shard.insert(entry("old", &key, 10), 0);
        for slot in &shard.slots {
            slot.referenced.store(true, Ordering::Relaxed);
        }
        shard.hand = 1;
        shard.insert(entry("new", &key, 500), 20);
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
        for (entries, bytes) in [(0, UNBOUNDED), (10, 0)] {
            let cache = TokenCache::new(entries, bytes, Metrics::new());
            admit(&cache, "t", &key, 500, 0);
            assert!(!hit(&cache, "t", 1));
            assert!(cache.is_empty());
        }
    }

    #[test]
    fn holds_no_more_than_its_byte_budget_whatever_is_inserted() {
        let key = key();
        let metrics = Metrics::new();
        let budget = 64 * 1024;
        let cache = TokenCache::new(100_000, budget, metrics.clone());
        // Entries of every size, claims included: the estimate of each is what is counted.
        for index in 0..5_000 {
            let mut identity = (*identity(&format!("t{index}"))).clone();
            identity.groups = (0..index % 40)
                .map(|group| Arc::from(format!("group-{group}")))
                .collect();
            let digest = TokenDigest::of(&format!("t{index}"));
            cache.admit(
                Candidate::new(digest, Arc::new(identity), &key, 500),
                (),
                0,
                0,
            );
            assert!(cache.bytes() <= budget, "{} > {budget}", cache.bytes());
        }
        assert!(cache.len() > 10, "the budget holds more than a few entries");
        assert_eq!(metrics.token_cache_bytes.get() as usize, cache.bytes());
        assert_eq!(metrics.token_cache_entries.get() as usize, cache.len());
    }

    #[test]
    fn a_large_entry_evicts_as_many_as_it_needs_and_one_larger_than_a_shard_is_refused() {
        let key = key();
        let mut shard = Shard::new(100, 1_000);
        for index in 0..10 {
            shard.insert(sized(&format!("small-{index}"), &key, 500, 100), 0);
        }
        assert_eq!(shard.bytes, 1_000);
        let inserted = shard.insert(sized("large", &key, 500, 350), 0);
        assert_eq!((inserted.stored, inserted.evicted), (true, 4));
        assert_eq!(inserted.entries_delta, -3);
        assert_eq!(shard.bytes, 950);
        assert_eq!(shard.index.len(), shard.slots.len());

        let inserted = shard.insert(sized("huge", &key, 500, 1_001), 0);
        assert_eq!((inserted.stored, inserted.evicted), (false, 0));
        assert!(matches!(
            shard.get(&TokenDigest::of("large"), 1),
            Lookup::Hit(_)
        ));

        // The token's own entry is replaced, not counted twice.
        let inserted = shard.insert(sized("large", &key, 500, 300), 0);
        assert_eq!((inserted.entries_delta, inserted.bytes_delta), (0, -50));
    }

    #[test]
    fn a_hit_returns_what_policy_granted_at_admission() {
        let key = key();
        let cache: TokenCache<Arc<str>> = TokenCache::new(10, UNBOUNDED, Metrics::new());
        cache.admit(candidate("t", &key, 500), Arc::from("granted"), 7, 0);
        let cached = cache
            .get(&TokenDigest::of("t"), 1)
            .map(|cached| cached.granted);
        assert_eq!(cached.as_deref(), Some("granted"));
    }

    #[test]
    fn the_estimate_grows_with_what_the_identity_holds() {
        let small = identity("u");
        let mut large = (*small).clone();
        large.groups = (0..100)
            .map(|group| Arc::from(format!("group-{group}")))
            .collect();
        large.claims = crate::model::identity::Claims::all(
            serde_json::json!({"sub": "u", "roles": ["a", "b"], "nested": {"k": "v"}})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        let (small_bytes, large_bytes) = (entry_bytes(&small, 0), entry_bytes(&large, 0));
        assert!(small_bytes > size_of::<Identity>());
        assert!(large_bytes > small_bytes + 100 * size_of::<Arc<str>>());
        assert_eq!(entry_bytes(&small, 40), small_bytes + 40);
    }
}
