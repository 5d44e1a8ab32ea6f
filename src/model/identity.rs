//! The verified caller: what authentication found out, and the only thing policy, the
//! response and the audit event read about a token.

use serde_json::{Map, Value};

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
}
