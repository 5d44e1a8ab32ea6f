//! The verified caller: what authentication found out, and the only thing policy, the
//! response and the audit event read about a token.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::model::permission::Grant;

#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The configured issuer's name (rules, metrics, headers).
    pub issuer: String,
    /// The token's `iss`.
    pub iss: String,
    /// First present claim of the issuer's `username_claims` chain.
    pub username: String,
    pub tenant: Option<String>,
    /// The client application: `azp` (Entra v2, OIDC) or `appid` (Entra v1).
    pub client: Option<String>,
    pub audiences: Vec<String>,
    pub groups: Vec<String>,
    pub claims: Map<String, Value>,
    pub expires_at: u64,
    /// For an `upstream: exchange` issuer, the `sub` Quay sees: the bridge token's, rendered
    /// from the issuer's `subject` template once per verified token (so the identity headers
    /// name the principal as Quay will). `None` for other issuers.
    pub bridge_subject: Option<String>,
    /// Set when the caller presented a token of our own token exchange (README, "Token
    /// exchange"): what it was granted and how it is revoked. `None` for IdP tokens.
    pub exchanged: Option<Arc<ExchangedToken>>,
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
