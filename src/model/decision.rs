//! Decisions and their reasons: the stable codes shared by responses, metrics, logs and the
//! README's troubleshooting table, and the one place they map to gRPC and HTTP statuses.

use std::fmt;
use std::sync::Arc;

use crate::model::identity::Identity;
use crate::model::permission::{Granted, Permission};

/// Why a request was allowed, passed through or denied. The `code` of each is stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    // --- allow / passthrough
    Allowed,
    NoCredentials,
    NotProtected,
    // --- the token
    TokenMalformed,
    TokenEncrypted,
    TokenTooLarge,
    IssuerNotConfigured,
    AlgorithmNotAllowed,
    UnknownKey,
    BadSignature,
    TokenExpired,
    TokenNotYetValid,
    MissingClaim,
    AudienceMismatch,
    TenantMismatch,
    RequiredClaimMismatch,
    NotAnAccessToken,
    // --- the request
    MultipleCredentials,
    PathAmbiguous,
    RouteNotClassified,
    InsufficientScope,
    // --- the identity bridge
    BridgeIdentityInvalid,
    // --- token exchange
    TokenRevoked,
    // --- this service
    KeysUnavailable,
    RevocationUnavailable,
}

impl Reason {
    pub const ALL: [Reason; 25] = [
        Reason::Allowed,
        Reason::NoCredentials,
        Reason::NotProtected,
        Reason::TokenMalformed,
        Reason::TokenEncrypted,
        Reason::TokenTooLarge,
        Reason::IssuerNotConfigured,
        Reason::AlgorithmNotAllowed,
        Reason::UnknownKey,
        Reason::BadSignature,
        Reason::TokenExpired,
        Reason::TokenNotYetValid,
        Reason::MissingClaim,
        Reason::AudienceMismatch,
        Reason::TenantMismatch,
        Reason::RequiredClaimMismatch,
        Reason::NotAnAccessToken,
        Reason::MultipleCredentials,
        Reason::PathAmbiguous,
        Reason::RouteNotClassified,
        Reason::InsufficientScope,
        Reason::BridgeIdentityInvalid,
        Reason::TokenRevoked,
        Reason::KeysUnavailable,
        Reason::RevocationUnavailable,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::NoCredentials => "no_credentials",
            Self::NotProtected => "not_protected",
            Self::TokenMalformed => "token_malformed",
            Self::TokenEncrypted => "token_encrypted",
            Self::TokenTooLarge => "token_too_large",
            Self::IssuerNotConfigured => "issuer_not_configured",
            Self::AlgorithmNotAllowed => "algorithm_not_allowed",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::TokenExpired => "token_expired",
            Self::TokenNotYetValid => "token_not_yet_valid",
            Self::MissingClaim => "missing_claim",
            Self::AudienceMismatch => "audience_mismatch",
            Self::TenantMismatch => "tenant_mismatch",
            Self::RequiredClaimMismatch => "required_claim_mismatch",
            Self::NotAnAccessToken => "not_an_access_token",
            Self::MultipleCredentials => "multiple_credentials",
            Self::PathAmbiguous => "path_ambiguous",
            Self::RouteNotClassified => "route_not_classified",
            Self::InsufficientScope => "insufficient_scope",
            Self::BridgeIdentityInvalid => "bridge_identity_invalid",
            Self::TokenRevoked => "token_revoked",
            Self::KeysUnavailable => "keys_unavailable",
            Self::RevocationUnavailable => "revocation_unavailable",
        }
    }

    /// What the client is told to do, beside the code, in a deny's `WWW-Authenticate`
    /// description and body. Fixed text: a client learns nothing of the configuration (its
    /// audiences, issuers, algorithms, tenants or rules); the detail of a deny goes to the
    /// audit log and `explain` only.
    pub fn client_hint(self) -> &'static str {
        match self {
            Self::Allowed | Self::NotProtected => "no action needed",
            Self::NoCredentials => "send a bearer access token from a trusted identity provider",
            Self::TokenMalformed => "send the access token itself, a signed JWT",
            Self::TokenEncrypted => "send a signed access token, not an encrypted one",
            Self::TokenTooLarge => "the token is too large; request one with fewer claims",
            Self::IssuerNotConfigured => {
                "the token's issuer is not trusted here; use a token from a trusted identity provider"
            }
            Self::AlgorithmNotAllowed => "the token's signature algorithm is not accepted here",
            Self::UnknownKey | Self::BadSignature => {
                "the token's signature cannot be verified; get a fresh token"
            }
            Self::TokenExpired => "the token has expired; get a fresh token",
            Self::TokenNotYetValid => "the token is not valid yet; check the clock and retry",
            Self::MissingClaim | Self::RequiredClaimMismatch => {
                "the token lacks a claim this service requires; ask its administrator"
            }
            Self::AudienceMismatch => {
                "the token was issued for another audience; request a token for this service"
            }
            Self::TenantMismatch => "the token's tenant does not match its issuer",
            Self::NotAnAccessToken => "send an access token, not an ID, refresh or logout token",
            Self::MultipleCredentials => "send one credential, in one Authorization header",
            Self::PathAmbiguous => {
                "send the path unencoded, without doubled slashes or dot segments, and each \
                 query parameter once"
            }
            Self::RouteNotClassified => "this path is not a known Quay route",
            Self::InsufficientScope => {
                "the token's grants do not cover this request; ask for the scope named in the \
                 response"
            }
            Self::BridgeIdentityInvalid => {
                "the token's claims cannot name a Quay user as configured; ask this service's \
                 administrator"
            }
            Self::TokenRevoked => "the token was revoked; exchange a fresh one",
            Self::KeysUnavailable => "tokens cannot be verified right now; retry later",
            Self::RevocationUnavailable => {
                "exchanged tokens cannot be checked right now; retry later"
            }
        }
    }

    /// `code: what to do`, the text a denied client sees.
    pub fn client_message(self) -> String {
        format!("{}: {}", self.code(), self.client_hint())
    }

    /// The status class of a deny for this reason (the single mapping, as Authorino keeps it).
    pub fn deny_status(self) -> DenyStatus {
        match self {
            // RFC 6750 §3.1: more than one credential is `invalid_request`, a 400.
            Self::PathAmbiguous | Self::MultipleCredentials => DenyStatus::BadRequest,
            Self::RouteNotClassified | Self::InsufficientScope | Self::BridgeIdentityInvalid => {
                DenyStatus::Forbidden
            }
            Self::KeysUnavailable | Self::RevocationUnavailable => DenyStatus::Unavailable,
            _ => DenyStatus::Unauthenticated,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// The kinds of deny, each with its gRPC code and HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyStatus {
    Unauthenticated,
    Forbidden,
    BadRequest,
    Unavailable,
}

impl DenyStatus {
    pub fn grpc_code(self) -> tonic::Code {
        match self {
            Self::Unauthenticated => tonic::Code::Unauthenticated,
            Self::Forbidden => tonic::Code::PermissionDenied,
            Self::BadRequest => tonic::Code::InvalidArgument,
            Self::Unavailable => tonic::Code::Unavailable,
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            Self::Unauthenticated => 401,
            Self::Forbidden => 403,
            Self::BadRequest => 400,
            Self::Unavailable => 503,
        }
    }
}

/// What Quay receives in `Authorization` once a request is allowed (the issuer's `upstream`,
/// README "Identity bridge"). Set by the pipeline, written into the OK response by `respond`
/// with `OVERWRITE_IF_EXISTS_OR_ADD`, so what the client sent never survives beside it.
///
/// `Debug` prints the kind, never the credential: a decision logged with `{:?}` must not leak
/// a bridge token or the caller's JWT.
#[derive(Clone, PartialEq, Eq)]
pub enum UpstreamCredential {
    /// The caller's own header, unchanged (`upstream: forward`).
    Forward,
    /// No `Authorization` at all (`upstream: strip`).
    Strip,
    /// `Authorization: Bearer <token>`: a bridge token quay-authz signed (`upstream: exchange`).
    Bearer(Arc<str>),
    /// `Authorization: Basic <this>`, already base64: `$oauthtoken:<JWT>` for Quay's registry
    /// token endpoint, which reads Basic only (see [`UpstreamCredential::for_registry_token`]).
    Basic(Arc<str>),
}

impl std::fmt::Debug for UpstreamCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Forward => "Forward",
            Self::Strip => "Strip",
            Self::Bearer(_) => "Bearer(<redacted>)",
            Self::Basic(_) => "Basic(<redacted>)",
        })
    }
}

impl UpstreamCredential {
    /// What Quay's `GET /v2/auth` receives instead: it reads Basic credentials only, and takes
    /// user `$oauthtoken` with a JWT password down its SSO-JWT path (`auth/credentials.py`,
    /// QUAY-INTEGRATION.md §3). `caller_token` is the verified JWT the caller sent. Forward
    /// hands Quay that token; a bridge token goes in its place; strip stays strip (Quay then
    /// answers as anonymous: public pulls only).
    pub fn for_registry_token(self, caller_token: &str) -> Self {
        use base64::Engine;
        let basic = |token: &str| {
            Self::Basic(
                base64::engine::general_purpose::STANDARD
                    .encode(format!("$oauthtoken:{token}"))
                    .into(),
            )
        };
        match self {
            Self::Forward => basic(caller_token),
            Self::Bearer(token) => basic(&token),
            Self::Strip | Self::Basic(_) => self,
        }
    }
}

/// What Quay's registry token endpoint receives as `scope` parameters (Envoy's query
/// mutation in the OK response). Envoy matches the raw key and *overwrites*: it can leave the
/// parameters alone, remove them all, or put one value in their place — never several.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ScopeRewrite {
    /// Every scope asked for is granted in full: Quay reads exactly what was judged.
    #[default]
    Unchanged,
    /// Something was cut: Quay receives this one scope (a partial grant, which the Docker
    /// token spec allows) instead of every `scope` the caller sent.
    Only(String),
    /// Nothing asked for is granted: every `scope` parameter is removed.
    Removed,
}

/// The outcome of one Check.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// A verified identity whose grants cover the request.
    Allow {
        /// Shared with the verified-token cache: a cache hit costs no copy.
        identity: Arc<Identity>,
        /// What the request may do: the policy's grants (within an exchanged token's scope),
        /// shared with the cached policy outcome.
        grants: Granted,
        rules: Vec<String>,
        /// What the route required (empty: any valid identity), for the audit log.
        required: Vec<Permission>,
        /// The credential Quay receives (the issuer's `upstream`).
        upstream: UpstreamCredential,
        /// On Quay's registry token endpoint, what becomes of the `scope` parameters;
        /// `Unchanged` everywhere else.
        scopes: ScopeRewrite,
    },
    /// Not ours to judge (no bearer JWT from a configured issuer, or a path outside the API):
    /// Quay authenticates it itself. Identity headers are still stripped.
    Passthrough { reason: Reason },
    Deny {
        reason: Reason,
        /// For the audit log and `explain`, never the client (who gets
        /// [`Reason::client_hint`]): it may name configured audiences, issuers, algorithms or
        /// rules, but never a token or key material.
        detail: String,
        /// The permission that was missing or, for 401s, the one the route needs (it goes
        /// into the Docker challenge's `scope`).
        required: Option<Permission>,
        issuer: Option<String>,
    },
}

impl Decision {
    pub fn reason(&self) -> Reason {
        match self {
            Self::Allow { .. } => Reason::Allowed,
            Self::Passthrough { reason } | Self::Deny { reason, .. } => *reason,
        }
    }

    /// `allow`, `passthrough` or `deny` (metrics label).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Allow { .. } => "allow",
            Self::Passthrough { .. } => "passthrough",
            Self::Deny { .. } => "deny",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case() {
        let mut codes: Vec<&str> = Reason::ALL.iter().map(|r| r.code()).collect();
        assert!(
            codes
                .iter()
                .all(|c| c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'))
        );
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), Reason::ALL.len());
    }

    #[test]
    fn every_reason_tells_the_client_what_to_do() {
        for reason in Reason::ALL {
            let message = reason.client_message();
            assert!(message.starts_with(reason.code()), "{message}");
            assert!(message.len() > reason.code().len() + 10, "{message}");
        }
    }

    #[test]
    fn status_mapping() {
        assert_eq!(Reason::TokenExpired.deny_status().http_status(), 401);
        assert_eq!(
            Reason::InsufficientScope.deny_status().grpc_code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(Reason::RouteNotClassified.deny_status().http_status(), 403);
        assert_eq!(Reason::PathAmbiguous.deny_status().http_status(), 400);
        assert_eq!(Reason::KeysUnavailable.deny_status().http_status(), 503);
        assert_eq!(Reason::MultipleCredentials.deny_status().http_status(), 400);
    }

    #[test]
    fn registry_token_endpoint_gets_basic_oauthtoken() {
        use base64::Engine;
        let decode = |credential: UpstreamCredential| match credential {
            UpstreamCredential::Basic(value) => String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(value.as_bytes())
                    .unwrap_or_default(),
            )
            .unwrap_or_default(),
            other => panic!("not Basic: {other:?}"),
        };
        // exchange: the bridge token, never the caller's.
        let bridge = UpstreamCredential::Bearer(Arc::from("bridge.jwt.sig"));
        assert_eq!(
            decode(bridge.for_registry_token("idp.jwt.sig")),
            "$oauthtoken:bridge.jwt.sig"
        );
        // forward: the caller's verified token, under Quay's token user name.
        assert_eq!(
            decode(UpstreamCredential::Forward.for_registry_token("idp.jwt.sig")),
            "$oauthtoken:idp.jwt.sig"
        );
        assert_eq!(
            UpstreamCredential::Strip.for_registry_token("idp.jwt.sig"),
            UpstreamCredential::Strip
        );
    }

    #[test]
    fn upstream_credentials_never_print_their_token() {
        let bearer = UpstreamCredential::Bearer("eyJhbGciOi.secret.sig".into());
        let basic = bearer.clone().for_registry_token("caller.jwt.sig");
        for credential in [bearer, basic] {
            let printed = format!("{credential:?}");
            assert!(printed.contains("<redacted>"), "{printed}");
            assert!(
                !printed.contains("secret") && !printed.contains("JG9hdXRo"),
                "{printed}"
            );
        }
    }
}
