//! The shared state of token exchange (README, "Token exchange"): the index of live exchanged
//! tokens, the revocation list and the per-principal mint counters. `memory` keeps them in
//! this process (one replica); `redis://` shares them between replicas, each entry expiring
//! with the token it describes, so nothing outlives what it describes.
//!
//! Usage: `TokenStore::open(&location)` once at startup (the `Service` owns it, so a reload
//! keeps it); `record` on every exchange, `is_revoked` on every Check of an exchanged token,
//! `count_mint` before a mint, `list`/`revoke`/`revoke_principal` from the admin API.
//!
//! An enum rather than a trait object: two variants, async methods without boxing.

pub mod memory;
pub mod redis;

use crate::config::bridge::StoreLocation;
use crate::model::decision::Reason;

/// One exchanged token as the lifecycle API shows it: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IssuedToken {
    /// The token's `jti`: what `tokens revoke --jti` names.
    pub jti: String,
    /// The bridge `sub` (the principal Quay sees): what `tokens revoke --principal` names.
    pub principal: String,
    /// The bridge token's `preferred_username`.
    pub username: String,
    /// The configured issuer whose token was exchanged.
    pub source_issuer: String,
    /// The scopes granted, in the grant notation (`repo:write on acme/*`).
    pub scopes: Vec<String>,
    /// `iat` and `exp`, Unix seconds.
    pub issued_at: u64,
    pub expires_at: u64,
}

/// The store cannot answer: the caller fails closed (`revocation_unavailable`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("token store unavailable: {detail}")]
pub struct StoreError {
    /// What failed, without a URL or password (`connection refused`, `timed out`).
    pub detail: String,
}

impl StoreError {
    pub fn new(detail: impl Into<String>) -> Self {
        Self {
            detail: detail.into(),
        }
    }

    /// The stable reason code of a request refused because of it.
    pub fn reason(&self) -> Reason {
        Reason::RevocationUnavailable
    }
}

/// The mint counter's window: one minute, aligned to the clock so replicas agree on it.
pub const MINT_WINDOW_SECONDS: u64 = 60;

/// Whether the store answered its last operation (`/readyz`, `quay_authz_token_store_up`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreHealth {
    /// Nothing asked yet.
    Unknown,
    Up,
    /// The last operation failed: why (no URL or password).
    Down(String),
}

/// The store of one running instance.
pub enum TokenStore {
    Memory(memory::MemoryStore),
    /// Boxed: its client, scripts and connection slot dwarf the other variants.
    Redis(Box<self::redis::RedisStore>),
    /// A Redis location the client crate refused after all (the configuration is validated
    /// with the same parser, so only a configuration built another way gets here): every
    /// operation fails closed, with this detail.
    Broken(StoreError),
}

impl TokenStore {
    /// Opens the configured store; the location was validated with the configuration, so
    /// this cannot fail. Redis is connected lazily: an unreachable server at startup is
    /// reported by `ping` (and `/readyz`), not fatal.
    pub fn open(location: &StoreLocation) -> Self {
        match location {
            StoreLocation::Memory => Self::Memory(memory::MemoryStore::default()),
            StoreLocation::Redis(location) => match self::redis::RedisStore::new(location) {
                Ok(store) => Self::Redis(Box::new(store)),
                Err(error) => Self::Broken(error),
            },
        }
    }

    /// `memory` or `redis`, for `/readyz`, the admin API and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            Self::Redis(_) | Self::Broken(_) => "redis",
        }
    }

    /// `memory`, or `redis://host:6379/0` (never a password): what `/readyz` and logs show.
    pub fn location(&self) -> String {
        match self {
            Self::Memory(_) => "memory".into(),
            Self::Redis(store) => store.location().to_string(),
            Self::Broken(_) => "redis".into(),
        }
    }

    /// Whether the store answers now (`PING` for Redis).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Redis(store) => store.ping().await,
            Self::Broken(error) => Err(error.clone()),
        }
    }

    /// The outcome of the last operation, without asking the store (cheap: for `/readyz`,
    /// which must not wait on Redis).
    pub fn health(&self) -> StoreHealth {
        match self {
            Self::Memory(_) => StoreHealth::Up,
            Self::Redis(store) => store.health(),
            Self::Broken(error) => StoreHealth::Down(error.detail.clone()),
        }
    }

    /// Live (unexpired, unrevoked) tokens, for the live-tokens gauge.
    pub async fn live_count(&self, now: u64) -> Result<u64, StoreError> {
        match self {
            Self::Memory(store) => Ok(store.live_count(now)),
            Self::Redis(store) => store.live_count(now).await,
            Self::Broken(error) => Err(error.clone()),
        }
    }

    /// Adds a freshly minted token to the live index, until its `expires_at`.
    pub async fn record(&self, token: &IssuedToken, now: u64) -> Result<(), StoreError> {
        match self {
            Self::Memory(store) => {
                store.record(token, now);
                Ok(())
            }
            Self::Redis(store) => store.record(token, now).await,
            Self::Broken(error) => Err(error.clone()),
        }
    }

    /// Every live (unexpired, unrevoked) token, oldest first.
    pub async fn list(&self, now: u64) -> Result<Vec<IssuedToken>, StoreError> {
        match self {
            Self::Memory(store) => Ok(store.list(now)),
            Self::Redis(store) => store.list(now).await,
            Self::Broken(error) => Err(error.clone()),
        }
    }

    /// Revokes one token by `jti` until it would have expired; returns it, or `None` when no
    /// live token has that `jti` (already expired, revoked or never issued).
    pub async fn revoke(&self, jti: &str, now: u64) -> Result<Option<IssuedToken>, StoreError> {
        match self {
            Self::Memory(store) => Ok(store.revoke(jti, now)),
            Self::Redis(store) => store.revoke(jti, now).await,
            Self::Broken(error) => Err(error.clone()),
        }
    }

    /// Revokes every token `principal` holds that was issued at or before `now`; the mark
    /// lasts `max_lifetime_seconds` (no older token can outlive it). Returns the live tokens
    /// it revoked.
    pub async fn revoke_principal(
        &self,
        principal: &str,
        now: u64,
        max_lifetime_seconds: u64,
    ) -> Result<Vec<IssuedToken>, StoreError> {
        match self {
            Self::Memory(store) => Ok(store.revoke_principal(principal, now, max_lifetime_seconds)),
            Self::Redis(store) => {
                store
                    .revoke_principal(principal, now, max_lifetime_seconds)
                    .await
            }
            Self::Broken(error) => Err(error.clone()),
        }
    }

    /// Whether the token (`jti`, its `sub` and `iat`) was revoked, one by one or with all its
    /// principal's tokens.
    pub async fn is_revoked(
        &self,
        jti: &str,
        principal: &str,
        issued_at: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        match self {
            Self::Memory(store) => Ok(store.is_revoked(jti, principal, issued_at, now)),
            Self::Redis(store) => store.is_revoked(jti, principal, issued_at, now).await,
            Self::Broken(error) => Err(error.clone()),
        }
    }

    /// Counts one mint for `principal` in the current minute and returns the count so far,
    /// this one included; the caller refuses when it exceeds the limit.
    pub async fn count_mint(&self, principal: &str, now: u64) -> Result<u64, StoreError> {
        match self {
            Self::Memory(store) => Ok(store.count_mint(principal, now)),
            Self::Redis(store) => store.count_mint(principal, now).await,
            Self::Broken(error) => Err(error.clone()),
        }
    }
}

/// The start of the mint window that holds `now`.
pub fn mint_window(now: u64) -> u64 {
    now - now % MINT_WINDOW_SECONDS
}
