//! Why a token exchange was refused: each refusal has its RFC 6749 §5.2 `error`, an HTTP
//! status and a stable `reason` code (README, "Token exchange", the error table).

use crate::model::decision::Reason;

/// A refused exchange. `description` is what the client reads (fixed text: never the
/// configuration or the token); `detail` goes to the audit log only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeError {
    /// `grant_type` is not RFC 8693's token exchange.
    UnsupportedGrantType,
    MissingParameter(&'static str),
    /// RFC 6749 §3.2: "Request and response parameters MUST NOT be included more than once."
    DuplicateParameter(&'static str),
    /// `subject_token_type` or `requested_token_type` names a type not accepted here.
    UnsupportedTokenType(&'static str),
    /// A parameter's value cannot be used (`requested_lifetime` not a positive number).
    InvalidParameter {
        name: &'static str,
        why: &'static str,
    },
    /// `requested_lifetime` above `bridge.exchange.max_lifetime_seconds`.
    LifetimeTooLong {
        max: u64,
    },
    /// `scope` does not parse (either notation, `on` joining its neighbours).
    MalformedScope(String),
    /// Not `application/x-www-form-urlencoded` (RFC 6749 §3.2).
    UnsupportedContentType,
    BodyTooLarge {
        limit: usize,
    },
    /// An `Authorization` header or a cookie: the endpoint accepts no credential but the
    /// subject token.
    CredentialNotAllowed(&'static str),
    MethodNotAllowed,
    /// `audience` is not the bridge audience (RFC 8693 §2.2.2).
    InvalidTarget,
    /// The subject token failed verification (the Check's reason code).
    SubjectToken {
        reason: Reason,
        detail: String,
    },
    /// The subject token's issuer is configured, but not with `upstream: exchange`.
    IssuerNotExchangeable {
        issuer: String,
    },
    /// The subject token is one of our own exchanged tokens: no chaining.
    ExchangedTokenNotAccepted,
    /// The policy grants nothing of what was asked (or nothing at all).
    NothingGranted,
    /// `mints_per_principal_per_minute` reached; retry after this many seconds.
    RateLimited {
        retry_after: u64,
        limit: u64,
    },
    /// The token store or the signing keys cannot be used now.
    Unavailable {
        reason: Reason,
        detail: String,
    },
}

impl ExchangeError {
    /// RFC 6749 §5.2 / RFC 8693 §2.2.2 `error`.
    pub fn error(&self) -> &'static str {
        match self {
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::MissingParameter(_)
            | Self::DuplicateParameter(_)
            | Self::UnsupportedTokenType(_)
            | Self::InvalidParameter { .. }
            | Self::LifetimeTooLong { .. }
            | Self::UnsupportedContentType
            | Self::BodyTooLarge { .. }
            | Self::CredentialNotAllowed(_)
            | Self::MethodNotAllowed => "invalid_request",
            Self::MalformedScope(_) | Self::NothingGranted => "invalid_scope",
            Self::InvalidTarget => "invalid_target",
            Self::SubjectToken { .. }
            | Self::IssuerNotExchangeable { .. }
            | Self::ExchangedTokenNotAccepted => "invalid_grant",
            // RFC 6749 defines no code for rate limiting; `temporarily_unavailable` (IANA
            // OAuth Extensions Error registry) says "retry later", which is the truth here,
            // and 429 with Retry-After (RFC 6585 §4) says when.
            Self::RateLimited { .. } | Self::Unavailable { .. } => "temporarily_unavailable",
        }
    }

    /// The stable reason code (logs, metrics, README).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::MissingParameter(_) => "missing_parameter",
            Self::DuplicateParameter(_) => "duplicate_parameter",
            Self::UnsupportedTokenType(_) => "unsupported_token_type",
            Self::InvalidParameter { .. } => "invalid_parameter",
            Self::LifetimeTooLong { .. } => "lifetime_too_long",
            Self::MalformedScope(_) => "scope_malformed",
            Self::UnsupportedContentType => "unsupported_content_type",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::CredentialNotAllowed(_) => "credential_not_allowed",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::InvalidTarget => "audience_not_accepted",
            Self::SubjectToken { reason, .. } | Self::Unavailable { reason, .. } => reason.code(),
            Self::IssuerNotExchangeable { .. } => "issuer_not_exchangeable",
            Self::ExchangedTokenNotAccepted => "exchanged_token_not_accepted",
            Self::NothingGranted => "scope_not_granted",
            Self::RateLimited { .. } => "mint_rate_limited",
        }
    }

    /// The HTTP status (RFC 6749 §5.2: 400 unless said otherwise).
    pub fn status(&self) -> u16 {
        match self {
            Self::BodyTooLarge { .. } => 413,
            Self::MethodNotAllowed => 405,
            Self::RateLimited { .. } => 429,
            Self::Unavailable { .. } => 503,
            _ => 400,
        }
    }

    /// `error_description`: what the client should do. Fixed text, naming parameters and
    /// limits but never the configuration's issuers, audiences or rules, nor the token.
    pub fn description(&self) -> String {
        match self {
            Self::UnsupportedGrantType => {
                "grant_type must be urn:ietf:params:oauth:grant-type:token-exchange".into()
            }
            Self::MissingParameter(name) => format!("{name} is required"),
            Self::DuplicateParameter(name) => format!("{name} must be sent once"),
            Self::UnsupportedTokenType(name) => format!(
                "{name} must be urn:ietf:params:oauth:token-type:jwt or \
                 urn:ietf:params:oauth:token-type:access_token"
            ),
            Self::InvalidParameter { name, why } => format!("{name} {why}"),
            Self::LifetimeTooLong { max } => {
                format!("requested_lifetime must be at most {max} seconds")
            }
            Self::MalformedScope(why) => format!("scope does not parse: {why}"),
            Self::UnsupportedContentType => {
                "send the parameters as application/x-www-form-urlencoded".into()
            }
            Self::BodyTooLarge { limit } => format!("the request body exceeds {limit} bytes"),
            Self::CredentialNotAllowed(what) => format!(
                "this endpoint accepts no credential but the subject_token: remove the {what}"
            ),
            Self::MethodNotAllowed => "use POST".into(),
            Self::InvalidTarget => "audience names no service this endpoint issues for".into(),
            Self::SubjectToken { reason, .. } => {
                format!("subject_token refused: {}", reason.client_message())
            }
            Self::IssuerNotExchangeable { .. } => {
                "tokens of this issuer cannot be exchanged here".into()
            }
            Self::ExchangedTokenNotAccepted => {
                "an exchanged token cannot be exchanged again; exchange the identity \
                 provider's token"
                    .into()
            }
            Self::NothingGranted => "nothing asked for is granted to this identity".into(),
            Self::RateLimited { limit, .. } => {
                format!("more than {limit} tokens a minute for this identity; retry later")
            }
            Self::Unavailable { reason, .. } => reason.client_message(),
        }
    }

    /// What the audit log records beside the reason (never a token).
    pub fn detail(&self) -> String {
        match self {
            Self::SubjectToken { detail, .. } | Self::Unavailable { detail, .. } => detail.clone(),
            Self::IssuerNotExchangeable { issuer } => {
                format!("issuer {issuer} is not configured with upstream: exchange")
            }
            other => other.description(),
        }
    }

    /// `Retry-After` seconds, for the refusals a client should retry.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            Self::Unavailable { .. } => Some(1),
            _ => None,
        }
    }
}
