//! The token-exchange request (RFC 8693 §2.1), parsed from its form body: pure.

use super::ExchangeError;
use crate::model::permission::{Grant, parse_scope_list};

pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// The parameters read; any other is ignored (RFC 6749 §3.2: "The authorization server MUST
/// ignore unrecognized request parameters").
const KNOWN: [&str; 7] = [
    "grant_type",
    "subject_token",
    "subject_token_type",
    "audience",
    "scope",
    "requested_lifetime",
    "requested_token_type",
];

/// A well-formed exchange request. `Debug` never shows the subject token.
#[derive(Clone, PartialEq, Eq)]
pub struct ExchangeRequest {
    pub subject_token: String,
    /// `audience`, when sent: must be the bridge audience.
    pub audience: Option<String>,
    /// `scope`, when sent, parsed (either notation); `None`: everything the policy grants.
    pub scope: Option<Vec<Grant>>,
    /// `requested_lifetime` in seconds, when sent.
    pub requested_lifetime: Option<u64>,
}

impl std::fmt::Debug for ExchangeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeRequest")
            .field("subject_token", &"<redacted>")
            .field("audience", &self.audience)
            .field("scope", &self.scope)
            .field("requested_lifetime", &self.requested_lifetime)
            .finish()
    }
}

impl ExchangeRequest {
    /// Parses an `application/x-www-form-urlencoded` body (the caller checked the content
    /// type and the size).
    pub fn parse(body: &[u8]) -> Result<Self, ExchangeError> {
        let mut values: [Option<String>; KNOWN.len()] = Default::default();
        for (name, value) in form_urlencoded::parse(body) {
            let Some(index) = KNOWN.iter().position(|known| *known == name) else {
                continue;
            };
            if values[index].is_some() {
                return Err(ExchangeError::DuplicateParameter(KNOWN[index]));
            }
            values[index] = Some(value.into_owned());
        }
        // RFC 6749 §3.1: "Parameters sent without a value MUST be treated as if they were
        // omitted from the request."
        let [
            grant_type,
            subject_token,
            subject_token_type,
            audience,
            scope,
            requested_lifetime,
            requested_token_type,
        ] = values.map(|value| value.filter(|value| !value.is_empty()));
        match grant_type.as_deref() {
            None => return Err(ExchangeError::MissingParameter("grant_type")),
            Some(GRANT_TYPE) => {}
            Some(_) => return Err(ExchangeError::UnsupportedGrantType),
        }
        let subject_token =
            subject_token.ok_or(ExchangeError::MissingParameter("subject_token"))?;
        // An IdP JWT, whether the client calls it a JWT or an access token.
        match subject_token_type.as_deref() {
            None => return Err(ExchangeError::MissingParameter("subject_token_type")),
            Some(TOKEN_TYPE_JWT | TOKEN_TYPE_ACCESS_TOKEN) => {}
            Some(_) => return Err(ExchangeError::UnsupportedTokenType("subject_token_type")),
        }
        // What is issued is a JWT access token: either name for it is fine.
        if let Some(requested) = requested_token_type.as_deref()
            && requested != TOKEN_TYPE_ACCESS_TOKEN
            && requested != TOKEN_TYPE_JWT
        {
            return Err(ExchangeError::UnsupportedTokenType("requested_token_type"));
        }
        let scope = scope
            .map(|text| parse_scope_list(&text))
            .transpose()
            .map_err(|error| ExchangeError::MalformedScope(error.0))?;
        let requested_lifetime = match requested_lifetime {
            None => None,
            Some(text) => match text.parse::<u64>() {
                Ok(seconds) if seconds > 0 => Some(seconds),
                _ => {
                    return Err(ExchangeError::InvalidParameter {
                        name: "requested_lifetime",
                        why: "must be a positive number of seconds",
                    });
                }
            },
        };
        Ok(Self {
            subject_token,
            audience,
            scope,
            requested_lifetime,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange\
        &subject_token=a.b.c&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt";

    fn parse(extra: &str) -> Result<ExchangeRequest, ExchangeError> {
        ExchangeRequest::parse(format!("{BASE}{extra}").as_bytes())
    }

    #[test]
    fn a_minimal_request_and_every_optional_parameter() {
        let request = parse("").unwrap();
        assert_eq!(request.subject_token, "a.b.c");
        assert_eq!(
            (request.audience, request.scope, request.requested_lifetime),
            (None, None, None)
        );
        let request = parse(
            "&audience=quay&scope=repo%3Aread+on+acme%2Fapp+super%3Auser&requested_lifetime=600\
             &requested_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token&foo=1&foo=2",
        )
        .unwrap();
        assert_eq!(request.audience.as_deref(), Some("quay"));
        assert_eq!(request.scope.map(|s| s.len()), Some(2));
        assert_eq!(request.requested_lifetime, Some(600));
        // Empty means absent (RFC 6749 §3.1).
        assert_eq!(parse("&scope=&audience=").unwrap().scope, None);
        assert!(!format!("{:?}", parse("").unwrap()).contains("a.b.c"));
    }

    #[test]
    fn every_malformed_request_has_its_error() {
        let cases: [(&[u8], &str); 9] = [
            (b"subject_token=x", "missing_parameter"),
            (b"grant_type=client_credentials", "unsupported_grant_type"),
            (
                b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange",
                "missing_parameter",
            ),
            (
                format!("{BASE}&subject_token=x").as_bytes().to_vec().leak(),
                "duplicate_parameter",
            ),
            (
                BASE.replace("token-type%3Ajwt", "token-type%3Asaml2")
                    .into_bytes()
                    .leak(),
                "unsupported_token_type",
            ),
            (
                format!("{BASE}&requested_token_type=x").into_bytes().leak(),
                "unsupported_token_type",
            ),
            (
                format!("{BASE}&requested_lifetime=-1").into_bytes().leak(),
                "invalid_parameter",
            ),
            (
                format!("{BASE}&requested_lifetime=0").into_bytes().leak(),
                "invalid_parameter",
            ),
            (
                format!("{BASE}&scope=repo%3Aread+on").into_bytes().leak(),
                "scope_malformed",
            ),
        ];
        for (body, reason) in cases {
            let error = ExchangeRequest::parse(body).expect_err(reason);
            assert_eq!(error.reason(), reason, "{}", String::from_utf8_lossy(body));
        }
    }
}
