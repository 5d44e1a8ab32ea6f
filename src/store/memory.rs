//! The `memory` token store: one replica's live-token index, revocation list and mint
//! counters. Expired entries are dropped by a sweep at most once a second (on a write or a
//! listing), so the maps hold only what is still live, and reads check expiry themselves.

use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use super::{IssuedToken, mint_window};

#[derive(Default)]
pub struct MemoryStore {
    /// Live exchanged tokens by `jti`.
    live: DashMap<String, IssuedToken>,
    /// Revoked `jti` → when the token would have expired (then the mark can go).
    revoked: DashMap<String, u64>,
    /// Principal → (revoked at, mark expires at): its tokens issued at or before are revoked.
    revoked_principals: DashMap<String, (u64, u64)>,
    /// Principal → (window start, mints in it).
    mints: DashMap<String, (u64, u64)>,
    /// The second of the last sweep: a sweep walks every map, so not on every write.
    swept_at: AtomicU64,
}

impl MemoryStore {
    pub fn record(&self, token: &IssuedToken, now: u64) {
        self.prune(now);
        self.live.insert(token.jti.clone(), token.clone());
    }

    pub fn list(&self, now: u64) -> Vec<IssuedToken> {
        self.prune(now);
        let mut tokens: Vec<IssuedToken> = self
            .live
            .iter()
            .filter(|entry| entry.expires_at > now)
            .map(|entry| entry.value().clone())
            .collect();
        tokens.sort_by(|a, b| (a.issued_at, &a.jti).cmp(&(b.issued_at, &b.jti)));
        tokens
    }

    /// Live tokens at `now` (a read: prunes nothing).
    pub fn live_count(&self, now: u64) -> u64 {
        self.live
            .iter()
            .filter(|entry| entry.expires_at > now)
            .count() as u64
    }

    pub fn revoke(&self, jti: &str, now: u64) -> Option<IssuedToken> {
        self.prune(now);
        let (_, token) = self
            .live
            .remove_if(jti, |_, token| token.expires_at > now)?;
        self.revoked.insert(token.jti.clone(), token.expires_at);
        Some(token)
    }

    pub fn revoke_principal(
        &self,
        principal: &str,
        now: u64,
        max_lifetime_seconds: u64,
    ) -> Vec<IssuedToken> {
        self.prune(now);
        self.revoked_principals.insert(
            principal.to_string(),
            (now, now.saturating_add(max_lifetime_seconds)),
        );
        let jtis: Vec<String> = self
            .live
            .iter()
            .filter(|entry| {
                entry.principal == principal && entry.issued_at <= now && entry.expires_at > now
            })
            .map(|entry| entry.key().clone())
            .collect();
        let mut revoked: Vec<IssuedToken> = jtis
            .iter()
            .filter_map(|jti| self.live.remove(jti).map(|(_, token)| token))
            .collect();
        revoked.sort_by(|a, b| (a.issued_at, &a.jti).cmp(&(b.issued_at, &b.jti)));
        revoked
    }

    pub fn is_revoked(&self, jti: &str, principal: &str, issued_at: u64, now: u64) -> bool {
        if self
            .revoked
            .get(jti)
            .is_some_and(|expires_at| *expires_at > now)
        {
            return true;
        }
        self.revoked_principals
            .get(principal)
            .is_some_and(|mark| mark.1 > now && issued_at <= mark.0)
    }

    pub fn count_mint(&self, principal: &str, now: u64) -> u64 {
        let window = mint_window(now);
        let mut entry = self
            .mints
            .entry(principal.to_string())
            .or_insert((window, 0));
        if entry.0 != window {
            *entry = (window, 0);
        }
        entry.1 += 1;
        entry.1
    }

    /// Drops what has expired: tokens, their revocation marks, principal marks, old windows —
    /// at most once per second.
    fn prune(&self, now: u64) {
        if self.swept_at.swap(now, Ordering::Relaxed) == now {
            return;
        }
        self.live.retain(|_, token| token.expires_at > now);
        self.revoked.retain(|_, expires_at| *expires_at > now);
        self.revoked_principals.retain(|_, mark| mark.1 > now);
        let window = mint_window(now);
        self.mints.retain(|_, counter| counter.0 == window);
    }

    /// Entries held, all maps together (tests: nothing outlives what it describes).
    pub fn entries(&self) -> usize {
        self.live.len() + self.revoked.len() + self.revoked_principals.len() + self.mints.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(jti: &str, principal: &str, issued_at: u64, expires_at: u64) -> IssuedToken {
        IssuedToken {
            jti: jti.into(),
            principal: principal.into(),
            username: "u".into(),
            source_issuer: "github".into(),
            scopes: vec!["repo:read on acme/app".into()],
            issued_at,
            expires_at,
        }
    }

    #[test]
    fn revoke_one_token_and_everything_a_principal_holds() {
        let store = MemoryStore::default();
        store.record(&token("a", "p1", 100, 1000), 100);
        store.record(&token("b", "p1", 110, 1000), 110);
        store.record(&token("c", "p2", 110, 1000), 110);
        assert_eq!(store.list(120).len(), 3);

        assert_eq!(store.revoke("a", 120).map(|t| t.jti), Some("a".into()));
        assert!(store.is_revoked("a", "p1", 100, 121));
        assert!(!store.is_revoked("b", "p1", 110, 121));
        assert_eq!(store.revoke("a", 121), None, "already revoked");
        assert_eq!(store.revoke("zzz", 121), None, "never issued");

        let revoked = store.revoke_principal("p1", 130, 3600);
        assert_eq!(
            revoked.iter().map(|t| t.jti.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        assert!(store.is_revoked("b", "p1", 110, 131));
        // Issued after the principal's revocation: live.
        assert!(!store.is_revoked("d", "p1", 131, 131));
        assert!(!store.is_revoked("c", "p2", 110, 131));
        assert_eq!(
            store
                .list(131)
                .iter()
                .map(|t| t.jti.as_str())
                .collect::<Vec<_>>(),
            ["c"]
        );
    }

    #[test]
    fn nothing_outlives_what_it_describes() {
        let store = MemoryStore::default();
        store.record(&token("a", "p1", 100, 200), 100);
        store.record(&token("b", "p1", 100, 300), 100);
        store.revoke("a", 150);
        store.revoke_principal("p2", 150, 60);
        store.count_mint("p1", 150);
        assert!(store.entries() > 0);
        assert!(store.list(250).iter().all(|token| token.jti == "b"));
        // After every token and mark has expired, one write prunes all of it.
        store.record(&token("c", "p3", 400, 500), 400);
        assert_eq!(store.entries(), 1);
        assert!(!store.is_revoked("a", "p1", 100, 400));
    }

    #[test]
    fn mints_are_counted_per_principal_per_minute() {
        let store = MemoryStore::default();
        assert_eq!(store.count_mint("p", 120), 1);
        assert_eq!(store.count_mint("p", 179), 2);
        assert_eq!(store.count_mint("q", 179), 1);
        // A new minute starts a new count.
        assert_eq!(store.count_mint("p", 180), 1);
    }
}
