//! The verified caller: what authentication found out, and the only thing policy, the
//! response and the audit event read about a token.
//!
//! Compact by design (issue 14 item 2): the verified-token cache holds one per token, so it
//! keeps only the claims the configuration can read ([`Claims`]), and strings every identity
//! of an issuer shares (issuer name, `iss`, tenant, configured audiences, group names the
//! rules name) are one `Arc<str>` per configuration ([`Interner`]) rather than a copy each.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::model::permission::Grant;

#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The configured issuer's name (rules, metrics, headers).
    pub issuer: Arc<str>,
    /// The token's `iss`.
    pub iss: Arc<str>,
    /// First present claim of the issuer's `username_claims` chain.
    pub username: Box<str>,
    pub tenant: Option<Arc<str>>,
    /// The client application: `azp` (Entra v2, OIDC) or `appid` (Entra v1).
    pub client: Option<Box<str>>,
    /// The token's `aud` (its string items).
    pub audiences: Arc<[Arc<str>]>,
    pub groups: Arc<[Arc<str>]>,
    /// The token's claims that the configuration reads, and only those
    /// (`IssuerConfig::claims_read`).
    pub claims: Claims,
    pub expires_at: u64,
    /// For an `upstream: exchange` issuer, the `sub` Quay sees: the bridge token's, rendered
    /// from the issuer's `subject` template once per verified token (so the identity headers
    /// name the principal as Quay will). `None` for other issuers.
    pub bridge_subject: Option<String>,
    /// Set when the caller presented a token of our own token exchange (README, "Token
    /// exchange"): what it was granted and how it is revoked. `None` for IdP tokens.
    pub exchanged: Option<Arc<ExchangedToken>>,
}

impl Identity {
    /// The claims an exchanged token embeds (README, "Token exchange"): those kept, plus what
    /// rebuilding this identity from them needs and the typed fields already hold — `iss`,
    /// `aud`, the tenant as `tid` and the client as `azp` — where not kept as claims.
    /// `authn::identify::identity_from_claims` reads them back to the same identity.
    pub fn embedded_claims(&self) -> Map<String, Value> {
        let mut map: Map<String, Value> = self
            .claims
            .iter()
            .map(|(name, value)| (name.to_string(), value.clone()))
            .collect();
        map.entry("iss")
            .or_insert_with(|| Value::String(self.iss.to_string()));
        map.entry("aud").or_insert_with(|| {
            Value::Array(
                self.audiences
                    .iter()
                    .map(|aud| Value::String(aud.to_string()))
                    .collect(),
            )
        });
        if let Some(tenant) = &self.tenant {
            map.entry("tid")
                .or_insert_with(|| Value::String(tenant.to_string()));
        }
        if let Some(client) = &self.client
            && !map.contains_key("azp")
            && !map.contains_key("appid")
        {
            map.insert("azp".into(), Value::String(client.to_string()));
        }
        map
    }
}

/// Some of a token's claims, by name: those the configuration reads. A small sorted slice
/// (a handful of entries), not a map of the whole payload; names are the configuration's
/// own `Arc<str>`s, shared by every identity.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Claims(Box<[(Arc<str>, Value)]>);

impl Claims {
    /// Keeps, of `claims`, those named in `names` (the claim names of a configuration,
    /// sorted and without duplicates); the rest of the payload is dropped.
    pub fn keep(mut claims: Map<String, Value>, names: &[Arc<str>]) -> Self {
        let mut kept = Vec::with_capacity(names.len().min(claims.len()));
        for name in names {
            if let Some(value) = claims.remove(&**name) {
                kept.push((name.clone(), value));
            }
        }
        Self(kept.into_boxed_slice())
    }

    /// Every claim of `claims`, for tests and tools that build an identity by hand.
    pub fn all(claims: Map<String, Value>) -> Self {
        let mut kept: Vec<(Arc<str>, Value)> = claims
            .into_iter()
            .map(|(name, value)| (Arc::from(name), value))
            .collect();
        kept.sort_by(|a, b| a.0.cmp(&b.0));
        Self(kept.into_boxed_slice())
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0
            .binary_search_by(|(have, _)| (**have).cmp(name))
            .ok()
            .map(|index| &self.0[index].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(name, value)| (&**name, value))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The strings a configuration's identities share: one `Arc<str>` each, handed out instead of
/// a new allocation when a token's value is one of them; likewise whole lists (a token's one
/// known group or audience, the default groups).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interner {
    /// Each known string, with the list of just it.
    strings: HashMap<Arc<str>, Arc<[Arc<str>]>>,
    /// Known lists of any other length.
    lists: Vec<Arc<[Arc<str>]>>,
}

impl Interner {
    pub fn insert(&mut self, text: &str) -> Arc<str> {
        if let Some((known, _)) = self.strings.get_key_value(text) {
            return known.clone();
        }
        let shared: Arc<str> = Arc::from(text);
        let list: Arc<[Arc<str>]> = Arc::from([shared.clone()]);
        self.strings.insert(shared.clone(), list);
        shared
    }

    pub fn insert_list(&mut self, items: &[String]) {
        let list: Arc<[Arc<str>]> = items.iter().map(|item| self.insert(item)).collect();
        if list.len() != 1 && !self.lists.contains(&list) {
            self.lists.push(list);
        }
    }

    /// The shared copy of `text` when the configuration knows it, else a new one.
    pub fn get(&self, text: &str) -> Arc<str> {
        match self.strings.get_key_value(text) {
            Some((known, _)) => known.clone(),
            None => Arc::from(text),
        }
    }

    /// The shared copy of the list `items` when the configuration knows it, else a new one.
    pub fn list(&self, items: Vec<Arc<str>>) -> Arc<[Arc<str>]> {
        if let [one] = items.as_slice()
            && let Some(list) = self.strings.get(&**one)
        {
            return list.clone();
        }
        match self.lists.iter().find(|list| ***list == *items) {
            Some(list) => list.clone(),
            None => Arc::from(items),
        }
    }
}

/// What an exchanged token carries besides the identity it was issued to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangedToken {
    /// `jti` and `iat`: the revocation list is consulted with them on every Check.
    pub jti: String,
    pub issued_at: u64,
    /// The token's `scope`: a request is allowed only within it (and within today's policy).
    pub scopes: Vec<Grant>,
}
