//! The verified-token cache against `quick_cache` (issue 14 item 3): lookups that hit, and
//! insertions into a full cache, with the same keys and values; then the heap each holds for
//! 100 000 identities, counted by a counting allocator (printed before the timings).
//!
//! `cargo bench --bench token_cache -- --warm-up-time 1 --measurement-time 4`
//!
//! Both caches are given what the service needs: a bound in bytes (quick_cache through its
//! `Weighter`, with the same estimate, `token_cache::entry_bytes`), and on a hit the token's
//! expiry and its key are checked (our cache does it inside `get`; quick_cache's caller must,
//! on the value it got back).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use quay_authz::authn::token_cache::{Candidate, TokenCache, TokenDigest, entry_bytes};
use quay_authz::jwks::{VerificationKey, parse_jwks};
use quay_authz::metrics::Metrics;
use quay_authz::model::identity::Identity;

/// Bytes allocated and not yet freed, process-wide.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const ENTRIES: usize = 100_000;
const NOW: u64 = 1_000;

fn key() -> Arc<VerificationKey> {
    use base64::Engine;
    let mut n = vec![0xC1u8; 256];
    n[255] = 0x01;
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&n);
    let jwks =
        format!(r#"{{"keys":[{{"kty":"RSA","kid":"k","alg":"RS256","n":"{n}","e":"AQAB"}}]}}"#);
    parse_jwks(jwks.as_bytes(), 10)
        .ok()
        .and_then(|keys| keys.into_iter().next())
        .expect("a usable key")
}

/// The identity of one of the dev issuer's tokens (what `resilience.sh` caches 100 000 of), as
/// the pipeline builds it for the quickstart configuration: issuer, `iss`, audience and group
/// lists shared by the configuration, and no claims kept (its rules read none).
fn identity(index: usize) -> Arc<Identity> {
    static SHARED: std::sync::LazyLock<SharedStrings> =
        std::sync::LazyLock::new(|| SharedStrings {
            issuer: "dev".into(),
            iss: "http://127.0.0.1:9000".into(),
            audiences: Arc::from([Arc::<str>::from("quay")]),
            groups: Arc::from([Arc::<str>::from("acme-developers")]),
        });
    Arc::new(Identity {
        issuer: SHARED.issuer.clone(),
        iss: SHARED.iss.clone(),
        username: format!("user-{index}").into(),
        tenant: None,
        client: None,
        audiences: SHARED.audiences.clone(),
        groups: SHARED.groups.clone(),
        claims: Default::default(),
        expires_at: 2_000_000_000,
        bridge_subject: None,
        exchanged: None,
    })
}

struct SharedStrings {
    issuer: Arc<str>,
    iss: Arc<str>,
    audiences: Arc<[Arc<str>]>,
    groups: Arc<[Arc<str>]>,
}

fn digest(index: usize) -> TokenDigest {
    TokenDigest::of(&format!("token-{index}"))
}

/// quick_cache's value: what our entries hold.
#[derive(Clone)]
struct Value {
    identity: Arc<Identity>,
    granted: Arc<()>,
    key: std::sync::Weak<VerificationKey>,
    valid_until: u64,
    bytes: u64,
}

#[derive(Clone)]
struct ByEstimate;

impl quick_cache::Weighter<TokenDigest, Value> for ByEstimate {
    fn weight(&self, _key: &TokenDigest, value: &Value) -> u64 {
        value.bytes
    }
}

type Quick = quick_cache::sync::Cache<TokenDigest, Value, ByEstimate>;

fn quick(max_bytes: u64) -> Quick {
    quick_cache::sync::Cache::with_weighter(ENTRIES, max_bytes, ByEstimate)
}

fn quick_value(identity: Arc<Identity>, key: &Arc<VerificationKey>) -> Value {
    Value {
        bytes: entry_bytes(&identity, 0) as u64,
        identity,
        granted: Arc::new(()),
        key: Arc::downgrade(key),
        valid_until: 2_000_000_000,
    }
}

fn quick_get(cache: &Quick, digest: &TokenDigest) -> Option<(Arc<Identity>, Arc<()>)> {
    let value = cache.get(digest)?;
    (NOW < value.valid_until && value.key.strong_count() > 0)
        .then_some((value.identity, value.granted))
}

/// Heap bytes held by the cache filled by `fill`, per entry, beyond the identities themselves
/// (which both share with the caller, as the pipeline's `Arc`s are).
fn heap_per_entry(fill: impl FnOnce() -> Box<dyn std::any::Any>) -> (usize, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    let cache = fill();
    let after = LIVE.load(Ordering::Relaxed);
    drop(cache);
    ((after - before) / ENTRIES, after - before)
}

fn memory_report() {
    let key = key();
    let unbounded = usize::MAX / 4;
    let (clock, clock_total) = heap_per_entry(|| {
        let cache: TokenCache<Arc<()>> = TokenCache::new(ENTRIES, unbounded, Metrics::new());
        for index in 0..ENTRIES {
            cache.admit(
                Candidate::new(digest(index), identity(index), &key, 2_000_000_000),
                Arc::new(()),
                0,
                0,
            );
        }
        Box::new(cache)
    });
    let (quick_bytes, quick_total) = heap_per_entry(|| {
        let cache = quick(unbounded as u64);
        for index in 0..ENTRIES {
            cache.insert(digest(index), quick_value(identity(index), &key));
        }
        assert_eq!(cache.len(), ENTRIES);
        Box::new(cache)
    });
    let estimate = entry_bytes(&identity(ENTRIES / 2), 0);
    println!(
        "heap for {ENTRIES} cached identities (counting allocator, identities included): \
         CLOCK shards {clock} B/entry ({:.1} MiB), quick_cache {quick_bytes} B/entry ({:.1} MiB); \
         entry_bytes estimate {estimate} B/entry",
        clock_total as f64 / 1_048_576.0,
        quick_total as f64 / 1_048_576.0,
    );
}

fn bench(c: &mut Criterion) {
    memory_report();
    let key = key();
    let mut group = c.benchmark_group("token_cache");

    // Lookups that hit, in a cache of 100 000.
    let clock: TokenCache<Arc<()>> = TokenCache::new(ENTRIES, usize::MAX / 4, Metrics::new());
    let quick_cache = quick(u64::MAX / 4);
    for index in 0..ENTRIES {
        let identity = identity(index);
        clock.admit(
            Candidate::new(digest(index), identity.clone(), &key, 2_000_000_000),
            Arc::new(()),
            0,
            0,
        );
        quick_cache.insert(digest(index), quick_value(identity, &key));
    }
    let probes: Vec<TokenDigest> = (0..1024).map(|i| digest(i * 97 % ENTRIES)).collect();
    let mut at = 0;
    group.bench_function("clock_hit", |b| {
        b.iter(|| {
            at = (at + 1) % probes.len();
            black_box(clock.get(&probes[at], NOW).is_some())
        })
    });
    group.bench_function("quick_cache_hit", |b| {
        b.iter(|| {
            at = (at + 1) % probes.len();
            black_box(quick_get(&quick_cache, &probes[at]).is_some())
        })
    });

    // Insertions into a full cache (each evicts), bounded by bytes.
    let budget = 8 * 1024 * 1024;
    let clock_full: TokenCache<Arc<()>> = TokenCache::new(ENTRIES, budget, Metrics::new());
    let quick_full = quick(budget as u64);
    let identities: Vec<Arc<Identity>> = (0..4096).map(identity).collect();
    let digests: Vec<TokenDigest> = (0..1 << 16).map(|i| digest(ENTRIES + i)).collect();
    for (index, digest) in digests.iter().enumerate() {
        let identity = identities[index % identities.len()].clone();
        clock_full.admit(
            Candidate::new(*digest, identity.clone(), &key, 2_000_000_000),
            Arc::new(()),
            0,
            0,
        );
        quick_full.insert(*digest, quick_value(identity, &key));
    }
    let mut next = 0usize;
    group.bench_function("clock_insert_full", |b| {
        b.iter(|| {
            next = next.wrapping_add(1);
            let identity = identities[next % identities.len()].clone();
            clock_full.admit(
                Candidate::new(digests[next % digests.len()], identity, &key, 2_000_000_000),
                Arc::new(()),
                0,
                0,
            );
        })
    });
    group.bench_function("quick_cache_insert_full", |b| {
        b.iter(|| {
            next = next.wrapping_add(1);
            let identity = identities[next % identities.len()].clone();
            quick_full.insert(digests[next % digests.len()], quick_value(identity, &key));
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
