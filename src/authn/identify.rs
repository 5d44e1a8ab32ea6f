//! Identify: from a bearer token to a verified `Identity`.
//!
//! Usage: `parse_token` (pure: size, shape, header, payload), `match_issuer` (pure: the token's
//! `iss` among configured issuers only — nothing is ever fetched from a token-supplied URL),
//! then the caller finds the key (`jwks`), `verify_signature`, and `check_claims` with an
//! explicit `now`, which also builds the identity.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::config::{Config, IssuerConfig, Preset, SigningAlgorithm, TenantBinding};
use crate::jwks::VerificationKey;
use crate::model::claims::{audience_equal, scalar_text, truncate, values};
use crate::model::decision::Reason;
use crate::model::identity::{Claims, Identity, Interner};

/// Why a token was refused, with a detail safe to show (never key material or the token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct IdentifyError {
    pub reason: Reason,
    pub detail: String,
}

impl IdentifyError {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// A token split and decoded, not yet trusted.
#[derive(Debug, Clone)]
pub struct ParsedToken<'t> {
    /// `header.payload`, the signed bytes (RFC 7515 §5.2).
    pub signing_input: &'t str,
    pub signature: &'t str,
    pub algorithm: String,
    pub key_id: Option<String>,
    /// The JOSE header's `typ` (RFC 7515 §4.1.9), which says what kind of token this is.
    pub media_type: Option<String>,
    pub claims: Map<String, Value>,
    pub iss: String,
}

/// The JOSE header fields we read (RFC 7515 §4.1), borrowed from the decoded bytes; any other
/// field is skipped without being built.
/// RFC 7515 §4 lets a parser refuse duplicate members, and serde does.
#[derive(serde::Deserialize)]
struct Header<'h> {
    #[serde(borrow, default, deserialize_with = "present")]
    alg: Option<Text<'h>>,
    #[serde(borrow, default, deserialize_with = "present")]
    kid: Option<Text<'h>>,
    #[serde(borrow, default, deserialize_with = "present")]
    typ: Option<Text<'h>>,
    /// Any value counts as present: `null` must not read as absent (RFC 7515 §4.1.11).
    #[serde(default, deserialize_with = "present_any")]
    crit: Option<serde::de::IgnoredAny>,
}

/// A member that is present, of any value (`null` included), is `Some`.
fn present_any<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<serde::de::IgnoredAny>, D::Error> {
    serde::Deserialize::deserialize(deserializer).map(Some)
}

/// A JSON string, borrowed unless it holds escapes.
#[derive(serde::Deserialize)]
struct Text<'h>(#[serde(borrow)] std::borrow::Cow<'h, str>);

/// A member that is present must be a string: `null` is refused, not taken as absent.
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Text<'de>>, D::Error> {
    serde::Deserialize::deserialize(deserializer).map(Some)
}

/// Refuses a token over `max_bytes` (`limits.max_token_bytes`) before anything reads it: no
/// decoding, no hashing.
pub fn check_size(token: &str, max_bytes: usize) -> Result<(), IdentifyError> {
    if token.len() > max_bytes {
        return Err(IdentifyError::new(
            Reason::TokenTooLarge,
            format!("token is {} bytes, the limit is {max_bytes}", token.len()),
        ));
    }
    Ok(())
}

/// The claims identification reads of every token, whatever the configuration: the issuer,
/// audience and times, what marks a token that is not an access token, the Entra tenant and
/// the client.
pub const CLAIMS_ALWAYS_READ: [&str; 10] = [
    "iss", "aud", "exp", "nbf", "iat", "typ", "nonce", "tid", "azp", "appid",
];

/// Which of a payload's claims are decoded: those some part of the configuration reads. The
/// JSON parser skips every other member without building it (issue 14 item 2: a token's
/// payload is not turned into a map of every claim only to drop most of them).
#[derive(Debug, Clone)]
pub struct ClaimNames {
    /// Sorted, without duplicates; `None` decodes every claim (tools and tests).
    names: Option<Box<[Box<str>]>>,
}

impl ClaimNames {
    pub fn all() -> Self {
        Self { names: None }
    }

    pub fn only<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut names: Vec<Box<str>> = names.into_iter().map(Box::from).collect();
        names.sort_unstable();
        names.dedup();
        Self {
            names: Some(names.into_boxed_slice()),
        }
    }

    /// Every claim `config` can read of a token of one of its issuers: [`CLAIMS_ALWAYS_READ`],
    /// each issuer's username, groups and required claims, and what its rules and bridge
    /// templates read (`IssuerConfig::claims_read`); plus `extra` (an exchanged token's own).
    pub fn read_by<'a>(config: &'a Config, extra: impl IntoIterator<Item = &'a str>) -> Self {
        let per_issuer = config.issuers.iter().flat_map(|issuer| {
            issuer
                .username_claims
                .iter()
                .chain(&issuer.groups_claims)
                .chain(issuer.required_claims.keys())
                .map(String::as_str)
                .chain(issuer.claims_read.iter().map(|name| &**name))
        });
        Self::only(
            CLAIMS_ALWAYS_READ
                .into_iter()
                .chain(per_issuer)
                .chain(extra),
        )
    }

    fn keeps(&self, name: &str) -> bool {
        self.names
            .as_ref()
            .is_none_or(|names| names.binary_search_by(|have| (**have).cmp(name)).is_ok())
    }
}

/// A payload decoded into the claims `ClaimNames` keeps. Like `serde_json`'s map, a repeated
/// member's last value stands.
struct SelectedClaims<'n>(&'n ClaimNames);

impl<'de> serde::de::DeserializeSeed<'de> for SelectedClaims<'_> {
    type Value = Map<String, Value>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for SelectedClaims<'_> {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut members: A,
    ) -> Result<Self::Value, A::Error> {
        let mut claims = Map::new();
        while let Some(Text(name)) = members.next_key::<Text<'de>>()? {
            if self.0.keeps(&name) {
                claims.insert(name.into_owned(), members.next_value::<Value>()?);
            } else {
                members.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(claims)
    }
}

/// Splits and decodes a compact JWS, every claim of it. Refuses oversized input before any
/// decoding.
pub fn parse_token(token: &str, max_bytes: usize) -> Result<ParsedToken<'_>, IdentifyError> {
    parse_token_reading(token, max_bytes, &ClaimNames::all())
}

/// [`parse_token`], decoding only the claims `reading` names (the Check's way).
pub fn parse_token_reading<'t>(
    token: &'t str,
    max_bytes: usize,
    reading: &ClaimNames,
) -> Result<ParsedToken<'t>, IdentifyError> {
    check_size(token, max_bytes)?;
    let mut parts = token.splitn(4, '.');
    let (Some(header_part), Some(payload_part), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(if token.split('.').count() == 5 {
            IdentifyError::new(
                Reason::TokenEncrypted,
                "token is an encrypted JWE; an access token for this API must be a signed JWT",
            )
        } else {
            not_a_jwt()
        });
    };
    if header_part.is_empty() || payload_part.is_empty() {
        return Err(not_a_jwt());
    }
    let header_bytes = decode_part(header_part, "header")?;
    let header: Header<'_> =
        serde_json::from_slice(&header_bytes).map_err(|_| header_error(&header_bytes))?;
    let Some(Text(algorithm)) = header.alg else {
        return Err(IdentifyError::new(
            Reason::TokenMalformed,
            "header has no alg",
        ));
    };
    if header.crit.is_some() {
        // RFC 7515 §4.1.11: we understand no extensions, so a critical one must be refused.
        return Err(IdentifyError::new(
            Reason::TokenMalformed,
            "header lists critical extensions (crit) this service does not understand",
        ));
    }
    let key_id = header.kid.map(|Text(kid)| kid.into_owned());
    let payload = decode_part(payload_part, "payload")?;
    let mut payload_json = serde_json::Deserializer::from_slice(&payload);
    let claims =
        serde::de::DeserializeSeed::deserialize(SelectedClaims(reading), &mut payload_json)
            .and_then(|claims| payload_json.end().map(|()| claims))
            .map_err(|_| not_an_object("payload"))?;
    let iss = match claims.get("iss") {
        Some(Value::String(iss)) => iss.clone(),
        Some(_) => {
            return Err(IdentifyError::new(
                Reason::TokenMalformed,
                "iss is not a string",
            ));
        }
        None => return Err(IdentifyError::new(Reason::MissingClaim, "token has no iss")),
    };
    let signing_input_len = header_part.len() + 1 + payload_part.len();
    Ok(ParsedToken {
        signing_input: &token[..signing_input_len],
        signature,
        algorithm: algorithm.into_owned(),
        key_id,
        media_type: header.typ.map(|Text(typ)| typ.into_owned()),
        claims,
        iss,
    })
}

fn not_a_jwt() -> IdentifyError {
    IdentifyError::new(
        Reason::TokenMalformed,
        "not a JWT: expected three base64url parts separated by dots",
    )
}

fn not_an_object(what: &str) -> IdentifyError {
    IdentifyError::new(
        Reason::TokenMalformed,
        format!("{what} is not a JSON object"),
    )
}

/// Why a header did not decode into `Header`; only on this error path is it decoded loosely,
/// to name the field at fault.
fn header_error(bytes: &[u8]) -> IdentifyError {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(header)) if header.get("alg").is_some_and(|alg| !alg.is_string()) => {
            IdentifyError::new(Reason::TokenMalformed, "header alg is not a string")
        }
        Ok(Value::Object(header)) if header.get("kid").is_some_and(|kid| !kid.is_string()) => {
            IdentifyError::new(Reason::TokenMalformed, "header kid is not a string")
        }
        Ok(Value::Object(header)) if header.get("typ").is_some_and(|typ| !typ.is_string()) => {
            IdentifyError::new(Reason::TokenMalformed, "header typ is not a string")
        }
        _ => IdentifyError::new(
            Reason::TokenMalformed,
            "header is not a JSON object of unique members",
        ),
    }
}

fn decode_part(part: &str, what: &str) -> Result<Vec<u8>, IdentifyError> {
    URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| IdentifyError::new(Reason::TokenMalformed, format!("{what} is not base64url")))
}

/// The configured issuer a token's `iss` selects, with the key source and tenant it implies.
#[derive(Debug, Clone, Copy)]
pub struct IssuerMatch<'c> {
    pub issuer: &'c IssuerConfig,
    /// `issuer`'s index in `config.issuers` (and so in the pipeline's key sources).
    pub issuer_index: usize,
    pub key_source: usize,
    pub tenant: Option<&'c str>,
}

/// Looks `iss` up among configured issuers only (exact match; Entra `tenants: any` matches the
/// two Entra issuer forms with a tenant id).
pub fn match_issuer<'c>(config: &'c Config, iss: &'c str) -> Option<IssuerMatch<'c>> {
    for (issuer_index, issuer) in config.issuers.iter().enumerate() {
        if let Some(string) = issuer.issuer_strings.iter().find(|s| s.iss == iss) {
            return Some(IssuerMatch {
                issuer,
                issuer_index,
                key_source: string.key_source,
                tenant: string.tenant.as_deref(),
            });
        }
    }
    config
        .issuers
        .iter()
        .enumerate()
        .find(|(_, issuer)| issuer.tenants == TenantBinding::Any)
        .and_then(|(issuer_index, issuer)| {
            entra_tenant_of(iss).map(|tenant| IssuerMatch {
                issuer,
                issuer_index,
                key_source: 0,
                tenant: Some(tenant),
            })
        })
}

/// The tenant id inside an Entra v1 or v2 issuer string.
fn entra_tenant_of(iss: &str) -> Option<&str> {
    let tenant = iss
        .strip_prefix("https://sts.windows.net/")
        .and_then(|rest| rest.strip_suffix('/'))
        .or_else(|| {
            iss.strip_prefix("https://login.microsoftonline.com/")
                .and_then(|rest| rest.strip_suffix("/v2.0"))
        })?;
    crate::model::claims::is_tenant_id(tenant).then_some(tenant)
}

/// The algorithm the token names, if the issuer allows it. `none` and HMAC never pass.
pub fn allowed_algorithm(
    issuer: &IssuerConfig,
    algorithm: &str,
) -> Result<SigningAlgorithm, IdentifyError> {
    let refuse = |why: &str| {
        IdentifyError::new(
            Reason::AlgorithmNotAllowed,
            format!("alg {:?} {why}", truncate(algorithm, 16)),
        )
    };
    if algorithm.eq_ignore_ascii_case("none") || algorithm.starts_with("HS") {
        return Err(refuse("is never accepted"));
    }
    match SigningAlgorithm::from_name(algorithm) {
        Some(alg) if issuer.algorithms.contains(&alg) => Ok(alg),
        _ => Err(refuse(&format!(
            "is not allowed for issuer {} (allowed: {})",
            issuer.name,
            issuer.algorithm_names()
        ))),
    }
}

/// The largest signature we decode: RSA-8192 (1 024 bytes); EC and Ed25519 ones are shorter.
const MAX_SIGNATURE_BYTES: usize = 1024;

/// Checks the signature with a public key. The signature is decoded on the stack.
pub fn verify_signature(
    token: &ParsedToken<'_>,
    key: &VerificationKey,
    algorithm: SigningAlgorithm,
) -> Result<(), IdentifyError> {
    let malformed = || {
        IdentifyError::new(
            Reason::BadSignature,
            "signature is malformed or the key does not fit the algorithm",
        )
    };
    // Room for base64's rounded-up length estimate of the largest signature.
    let mut buffer = [0u8; MAX_SIGNATURE_BYTES + 3];
    if token.signature.len() > (MAX_SIGNATURE_BYTES * 4).div_ceil(3) {
        return Err(malformed());
    }
    let length = URL_SAFE_NO_PAD
        .decode_slice(token.signature, &mut buffer)
        .map_err(|_| malformed())?;
    if key.verify(algorithm, token.signing_input.as_bytes(), &buffer[..length]) {
        Ok(())
    } else {
        Err(IdentifyError::new(
            Reason::BadSignature,
            "signature does not verify",
        ))
    }
}

/// Validates the registered and issuer-specific claims (RFC 7519 §4.1) at `now` (Unix
/// seconds) and builds the identity.
/// `media_type` is the header's `typ` ([`ParsedToken::media_type`]).
pub fn check_claims(
    claims: Map<String, Value>,
    media_type: Option<&str>,
    matched: IssuerMatch<'_>,
    iss: &str,
    now: u64,
) -> Result<Identity, IdentifyError> {
    let issuer = matched.issuer;
    let leeway = issuer.leeway_seconds;
    if !issuer.accept_id_tokens {
        check_access_token(media_type, &claims)?;
    }

    let exp = numeric_date(&claims, "exp")?
        .ok_or_else(|| IdentifyError::new(Reason::MissingClaim, "token has no exp"))?;
    if now >= exp.saturating_add(leeway) {
        return Err(IdentifyError::new(
            Reason::TokenExpired,
            format!("token expired {} s ago", now - exp),
        ));
    }
    if let Some(nbf) = numeric_date(&claims, "nbf")?
        && now.saturating_add(leeway) < nbf
    {
        return Err(IdentifyError::new(
            Reason::TokenNotYetValid,
            format!("token is valid only in {} s (nbf)", nbf - now),
        ));
    }
    if let Some(iat) = numeric_date(&claims, "iat")?
        && now.saturating_add(leeway) < iat
    {
        return Err(IdentifyError::new(
            Reason::TokenNotYetValid,
            format!("token was issued {} s in the future (iat)", iat - now),
        ));
    }

    // RFC 7519 §4.1.3: aud is a string or an array of strings.
    // Borrowed, not copied: `identity_from_claims` keeps the audiences.
    let audiences: &[Value] = match claims.get("aud") {
        Some(aud @ Value::String(_)) => std::slice::from_ref(aud),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(IdentifyError::new(
                Reason::TokenMalformed,
                "aud is not a string or list",
            ));
        }
        None => return Err(IdentifyError::new(Reason::MissingClaim, "token has no aud")),
    };
    if !audiences.iter().filter_map(Value::as_str).any(|aud| {
        issuer
            .audiences
            .iter()
            .any(|accepted| audience_equal(accepted, aud))
    }) {
        return Err(IdentifyError::new(
            Reason::AudienceMismatch,
            format!(
                "token audience is not one of issuer {}'s audiences ({})",
                issuer.name,
                issuer.audiences.join(", ")
            ),
        ));
    }

    identity_from_claims(claims, matched, iss, exp)
}

/// The identity a token's claims describe, with the issuer's settings in force: the tenant
/// bound by `iss`, `required_claims`, the username chain, client, groups. The time and
/// audience checks are the caller's: [`check_claims`] for a token presented now; an exchanged
/// token re-runs this on the source token's claims it embeds (their `exp` and `aud` were
/// checked at the exchange and may have passed since), so today's rules judge the holder.
pub fn identity_from_claims(
    claims: Map<String, Value>,
    matched: IssuerMatch<'_>,
    iss: &str,
    expires_at: u64,
) -> Result<Identity, IdentifyError> {
    let issuer = matched.issuer;
    // RFC 7519 §4.1.3: a string or an array of strings (`check_claims` refused other shapes).
    let audiences = issuer.strings.list(
        claims
            .get("aud")
            .map_or(&[][..], values)
            .iter()
            .filter_map(|item| item.as_str().map(|aud| issuer.strings.get(aud)))
            .collect(),
    );
    // Entra: the tenant in `iss` must be the token's `tid`, or a token minted by one tenant
    // could be presented as another's.
    if let Some(tenant) = matched.tenant {
        match claims.get("tid").and_then(Value::as_str) {
            Some(tid) if tid.eq_ignore_ascii_case(tenant) => {}
            Some(_) => {
                return Err(IdentifyError::new(
                    Reason::TenantMismatch,
                    "tid does not match the tenant in iss",
                ));
            }
            None => {
                return Err(IdentifyError::new(
                    Reason::TenantMismatch,
                    "token has no tid",
                ));
            }
        }
    }

    for (name, expected) in &issuer.required_claims {
        if !required_claim_holds(claims.get(name), expected) {
            return Err(IdentifyError::new(
                Reason::RequiredClaimMismatch,
                format!("claim {name} does not have the required value"),
            ));
        }
    }

    let username = issuer
        .username_claims
        .iter()
        .find_map(|claim| {
            claims
                .get(claim)
                .and_then(scalar_text)
                .filter(|v| !v.is_empty())
        })
        .ok_or_else(|| {
            IdentifyError::new(
                Reason::MissingClaim,
                format!(
                    "none of the username claims is present ({})",
                    issuer.username_claims.join(", ")
                ),
            )
        })?;
    let client = ["azp", "appid"]
        .iter()
        .find_map(|claim| claims.get(*claim).and_then(Value::as_str))
        .map(Box::from);
    let mut groups = collect_groups(&claims, &issuer.groups_claims, &issuer.strings);
    if groups.is_empty() {
        groups = issuer
            .default_groups
            .iter()
            .map(|group| issuer.strings.get(group))
            .collect();
    }
    let groups = issuer.strings.list(groups);
    let tenant = match matched.tenant {
        Some(tenant) => Some(issuer.strings.get(tenant)),
        None if issuer.preset == Preset::Entra => claims
            .get("tid")
            .and_then(Value::as_str)
            .map(|tid| issuer.strings.get(tid)),
        None => None,
    };
    Ok(Identity {
        issuer: issuer.shared_name.clone(),
        iss: issuer.strings.get(iss),
        username: username.into(),
        tenant,
        client,
        audiences,
        groups,
        // Only what the configuration reads stays: the identity is what the token cache
        // holds per token (issue 14 item 2).
        claims: Claims::keep(claims, &issuer.claims_read),
        expires_at,
        bridge_subject: None,
        exchanged: None,
    })
}

/// Refuses what says it is not an access token: an OIDC ID token for the right client would
/// otherwise pass, since it is signed by the same keys for the same audience.
///
/// - the JOSE `typ` must be absent, `JWT` or `at+jwt` (RFC 9068 §2.1), compared without case and
///   with or without `application/` (RFC 7515 §4.1.9);
/// - a `typ` claim `ID`, `Refresh`, `Offline` or `Logout` is one of Keycloak's other tokens;
/// - a `nonce` belongs to ID tokens (OpenID Connect Core §2), never to access tokens.
fn check_access_token(
    media_type: Option<&str>,
    claims: &Map<String, Value>,
) -> Result<(), IdentifyError> {
    let refuse = |detail: &str| IdentifyError::new(Reason::NotAnAccessToken, detail);
    if let Some(media_type) = media_type {
        let lower = media_type.to_ascii_lowercase();
        let bare = lower.strip_prefix("application/").unwrap_or(&lower);
        if bare != "jwt" && bare != "at+jwt" {
            return Err(refuse(
                "the token's header typ says it is not an access token (expected JWT or at+jwt)",
            ));
        }
    }
    if let Some(Value::String(kind)) = claims.get("typ")
        && ["id", "refresh", "offline", "logout"].contains(&kind.to_ascii_lowercase().as_str())
    {
        return Err(refuse(
            "the token's typ claim says it is an ID, refresh or logout token, not an access token",
        ));
    }
    if claims.contains_key("nonce") {
        return Err(refuse(
            "the token carries a nonce, so it is an OpenID Connect ID token, not an access token",
        ));
    }
    Ok(())
}

/// A NumericDate claim (RFC 7519 §2): missing is None, anything but a number is malformed.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, IdentifyError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(number)) => number
            .as_u64()
            .or_else(|| number.as_f64().filter(|v| *v >= 0.0).map(|v| v as u64))
            .map(Some)
            .ok_or_else(|| {
                IdentifyError::new(
                    Reason::TokenMalformed,
                    format!("{name} is not a valid date"),
                )
            }),
        Some(_) => Err(IdentifyError::new(
            Reason::TokenMalformed,
            format!("{name} is not a number"),
        )),
    }
}

/// A required claim holds when some value of the claim (an array's items, or the value) equals
/// some expected value, as JSON values: the string `"1"` is not the number `1`, nor `"true"`
/// the boolean `true` (comparing as text let a token satisfy a rule with the wrong type).
fn required_claim_holds(actual: Option<&Value>, expected: &Value) -> bool {
    let Some(actual) = actual else {
        return false;
    };
    let expected = values(expected);
    values(actual).iter().any(|value| expected.contains(value))
}

/// Groups from the configured claims: arrays as they are, strings split on spaces (Entra's
/// `scp` is one space-separated string).
fn collect_groups(
    claims: &Map<String, Value>,
    names: &[String],
    strings: &Interner,
) -> Vec<Arc<str>> {
    let mut groups: Vec<Arc<str>> = Vec::new();
    let mut add = |group: &str| {
        if !group.is_empty() && !groups.iter().any(|g| &**g == group) {
            groups.push(strings.get(group));
        }
    };
    for name in names {
        match claims.get(name) {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).for_each(&mut add),
            Some(Value::String(text)) => text.split(' ').for_each(&mut add),
            _ => {}
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TENANT: &str = "11111111-2222-3333-4444-555555555555";
    const OTHER: &str = "99999999-2222-3333-4444-555555555555";

    fn config() -> Config {
        let text = format!(
            r#"
quay: {{service: quay.example.com, realm: "https://quay.example.com/v2/auth"}}
issuers:
  - name: entra
    preset: entra
    tenants: [{TENANT}]
    audiences: [api://quay-api, 6f1c2d3e-0000-4000-8000-000000000001]
    required_claims: {{ver: ["1.0", "2.0"]}}
    default_groups: [everyone]
  - name: github
    preset: github-actions
    audiences: [https://quay.example.com]
    algorithms: [RS256, ES256]
"#
        );
        Config::parse(&text, "t").expect("config")
    }

    fn encode(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).expect("json"))
    }

    fn token(header: Value, claims: Value) -> String {
        format!("{}.{}.c2ln", encode(&header), encode(&claims))
    }

    fn entra_claims(iss: &str, tid: &str) -> Value {
        json!({"iss": iss, "tid": tid, "aud": "api://quay-api/", "exp": 2000, "iat": 900, "nbf": 900,
               "ver": "1.0", "upn": "alice@example.com", "oid": "o-1", "sub": "s-1", "appid": "app-1",
               "roles": ["Quay.acme.write"], "scp": "user_impersonation Quay.Read"})
    }

    fn check(config: &Config, claims: Value, now: u64) -> Result<Identity, IdentifyError> {
        let text = token(json!({"alg": "RS256", "kid": "k"}), claims);
        let parsed = parse_token(&text, 16384)?;
        let matched = match_issuer(config, &parsed.iss)
            .ok_or_else(|| IdentifyError::new(Reason::IssuerNotConfigured, "x"))?;
        check_claims(
            parsed.claims,
            parsed.media_type.as_deref(),
            matched,
            &parsed.iss,
            now,
        )
    }

    fn reason(result: Result<Identity, IdentifyError>) -> Reason {
        result.expect_err("should fail").reason
    }

    #[test]
    fn entra_v1_and_v2_tokens_of_one_tenant_both_identify() {
        let config = config();
        let [v1, v2] = crate::config::entra_issuer_pair(TENANT);
        let one = check(&config, entra_claims(&v1, TENANT), 1000).expect("v1");
        assert_eq!(&*one.username, "alice@example.com");
        assert_eq!(one.client.as_deref(), Some("app-1"));
        assert_eq!(one.tenant.as_deref(), Some(TENANT));
        assert_eq!(*one.groups, [Arc::from("Quay.acme.write")]);
        let mut v2_claims = entra_claims(&v2, TENANT);
        v2_claims["aud"] = json!("6f1c2d3e-0000-4000-8000-000000000001");
        v2_claims["ver"] = json!("2.0");
        v2_claims["azp"] = json!("app-2");
        let two = check(&config, v2_claims, 1000).expect("v2");
        assert_eq!(&*two.issuer, "entra");
        assert_eq!(two.client.as_deref(), Some("app-2"));
    }

    #[test]
    fn every_claim_failure_has_its_reason() {
        let config = config();
        let [v1, v2] = crate::config::entra_issuer_pair(TENANT);
        let base = entra_claims(&v1, TENANT);
        let with = |key: &str, value: Value| {
            let mut claims = base.clone();
            claims[key] = value;
            claims
        };
        let without = |key: &str| {
            let mut claims = base.clone();
            claims.as_object_mut().expect("object").remove(key);
            claims
        };
        let cases: Vec<(Value, u64, Reason)> = vec![
            (base.clone(), 2060, Reason::TokenExpired),
            (without("exp"), 1000, Reason::MissingClaim),
            (with("exp", json!("soon")), 1000, Reason::TokenMalformed),
            (with("nbf", json!(1100)), 1000, Reason::TokenNotYetValid),
            (with("iat", json!(1100)), 1000, Reason::TokenNotYetValid),
            (
                with("aud", json!("api://other")),
                1000,
                Reason::AudienceMismatch,
            ),
            (
                with("aud", json!(["x", "y"])),
                1000,
                Reason::AudienceMismatch,
            ),
            (without("aud"), 1000, Reason::MissingClaim),
            (with("tid", json!(OTHER)), 1000, Reason::TenantMismatch),
            (without("tid"), 1000, Reason::TenantMismatch),
            (
                with("ver", json!("3.0")),
                1000,
                Reason::RequiredClaimMismatch,
            ),
            (
                with("iss", json!(format!("https://sts.windows.net/{OTHER}/"))),
                1000,
                Reason::IssuerNotConfigured,
            ),
        ];
        // Just inside the leeway (exp 2000 + 60 s) the token still passes.
        assert!(check(&config, base.clone(), 2059).is_ok());
        for (claims, now, expected) in cases {
            assert_eq!(
                reason(check(&config, claims.clone(), now)),
                expected,
                "{claims}"
            );
        }
        // v2 token with a different tenant's tid.
        assert_eq!(
            reason(check(&config, entra_claims(&v2, OTHER), 1000)),
            Reason::TenantMismatch
        );
    }

    /// Issue 14 item 2: the identity (what the token cache holds per token) keeps only the
    /// claims the configuration reads, and shares the configuration's strings.
    #[test]
    fn identity_keeps_only_the_claims_the_configuration_reads() {
        let config = config();
        let entra = config.issuer("entra").expect("entra");
        let [v1, _] = crate::config::entra_issuer_pair(TENANT);
        let mut claims = entra_claims(&v1, TENANT);
        claims["unread"] = json!("x".repeat(4000));
        let one = check(&config, claims.clone(), 1000).expect("v1");
        let kept: Vec<&str> = one.claims.iter().map(|(name, _)| name).collect();
        assert!(
            kept.iter()
                .all(|name| entra.claims_read.iter().any(|read| &**read == *name)),
            "{kept:?} ⊄ {:?}",
            entra.claims_read
        );
        for dropped in ["unread", "iss", "aud", "exp", "iat", "nbf", "appid", "tid"] {
            assert_eq!(one.claims.get(dropped), None, "{dropped}");
        }
        // Read while verifying, not afterwards: nothing keeps them (no rule reads them, and
        // the issuer's tokens are not exchanged).
        assert!(one.claims.is_empty(), "{kept:?}");
        assert_eq!(&*one.username, "alice@example.com");
        // The typed fields still say what the token said.
        assert_eq!(&*one.iss, v1.as_str());
        assert_eq!(*one.audiences, [Arc::from("api://quay-api/")]);
        assert_eq!(one.client.as_deref(), Some("app-1"));
        // One allocation per configuration, not per identity.
        let two = check(&config, claims, 1000).expect("v1");
        assert!(Arc::ptr_eq(&one.issuer, &two.issuer));
        assert!(Arc::ptr_eq(&one.iss, &two.iss));
        assert!(Arc::ptr_eq(
            one.tenant.as_ref().expect("tenant"),
            two.tenant.as_ref().expect("tenant")
        ));
    }

    #[test]
    fn default_groups_and_username_chain() {
        let config = config();
        let [v1, _] = crate::config::entra_issuer_pair(TENANT);
        let mut claims = entra_claims(&v1, TENANT);
        let object = claims.as_object_mut().expect("object");
        object.remove("roles");
        object.remove("upn");
        let identity = check(&config, claims, 1000).expect("valid");
        assert_eq!(*identity.groups, [Arc::from("everyone")]);
        assert_eq!(&*identity.username, "o-1");
    }

    #[test]
    fn parse_refuses_malformed_input() {
        let cases = [
            ("", Reason::TokenMalformed),
            ("abc", Reason::TokenMalformed),
            ("a.b", Reason::TokenMalformed),
            ("a.b.c.d.e", Reason::TokenEncrypted),
            ("!!.e30.x", Reason::TokenMalformed),
            ("e30.e30.x", Reason::TokenMalformed),
        ];
        for (text, expected) in cases {
            assert_eq!(
                parse_token(text, 100).expect_err(text).reason,
                expected,
                "{text}"
            );
        }
        let big = "a".repeat(101);
        assert_eq!(
            parse_token(&big, 100).expect_err("big").reason,
            Reason::TokenTooLarge
        );
        let crit = token(
            json!({"alg": "RS256", "crit": ["b64"]}),
            json!({"iss": "x"}),
        );
        assert_eq!(
            parse_token(&crit, 1000).expect_err("crit").reason,
            Reason::TokenMalformed
        );
        // RFC 7515 §4.1.11: a present crit is refused whatever its value, null included.
        let crit_null = token(json!({"alg": "RS256", "crit": null}), json!({"iss": "x"}));
        assert_eq!(
            parse_token(&crit_null, 1000).expect_err("crit null").reason,
            Reason::TokenMalformed
        );
        let no_iss = token(json!({"alg": "RS256"}), json!({"sub": "x"}));
        assert_eq!(
            parse_token(&no_iss, 1000).expect_err("iss").reason,
            Reason::MissingClaim
        );
        let ok = token(json!({"alg": "RS256", "kid": "k1"}), json!({"iss": "x"}));
        let parsed = parse_token(&ok, 1000).expect("ok");
        assert_eq!(parsed.key_id.as_deref(), Some("k1"));
        assert_eq!(parsed.signature, "c2ln");
        assert!(ok.starts_with(parsed.signing_input));
    }

    #[test]
    fn only_the_claims_the_configuration_reads_are_decoded() {
        let config = config();
        let reading = ClaimNames::read_by(&config, []);
        let header = json!({"alg": "RS256", "kid": "k1"});
        let payload = json!({
            "iss": "x", "aud": ["a", "b"], "exp": 2, "tid": "t", "groups": ["g"],
            "unread": {"deep": [1, 2, {"x": "y"}]}, "also_unread": "z".repeat(500),
        });
        let text = token(header.clone(), payload.clone());
        let parsed = parse_token_reading(&text, 16384, &reading).expect("parses");
        let names: Vec<&str> = parsed.claims.keys().map(String::as_str).collect();
        assert_eq!(names, ["aud", "exp", "groups", "iss", "tid"]);
        assert_eq!(parsed.claims["aud"], json!(["a", "b"]));
        // Every claim, for tools: the same token decoded whole.
        let whole = parse_token(&text, 16384).expect("parses");
        assert_eq!(Value::Object(whole.claims), payload);

        // A repeated member: the last value stands, as serde_json's own map has it.
        let repeated = format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(r#"{"iss":"x","sub":"first","iss":"y","sub":"second"}"#)
        );
        let parsed = parse_token_reading(&repeated, 16384, &ClaimNames::only(["iss", "sub"]))
            .expect("parses");
        assert_eq!(parsed.iss, "y");
        assert_eq!(parsed.claims["sub"], json!("second"));

        // What is skipped must still be JSON, and the payload one object with nothing after it.
        for payload in [
            r#"{"iss":"x","unread":[1,}"#,
            r#"{"iss":"x"} {}"#,
            r#"["iss"]"#,
            r#"{"iss":"x","unread":tru}"#,
        ] {
            let text = format!(
                "{}.{}.c2ln",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(payload)
            );
            let error = parse_token_reading(&text, 16384, &reading).expect_err(payload);
            assert_eq!(error.reason, Reason::TokenMalformed, "{payload}");
        }
    }

    #[test]
    fn algorithms_are_allow_listed_and_none_or_hmac_never_pass() {
        let config = config();
        let github = config.issuer("github").expect("github");
        let entra = config.issuer("entra").expect("entra");
        assert!(allowed_algorithm(github, "ES256").is_ok());
        assert!(allowed_algorithm(entra, "ES256").is_err());
        for alg in ["none", "None", "HS256", "HS512", "XX1"] {
            assert_eq!(
                allowed_algorithm(github, alg).expect_err(alg).reason,
                Reason::AlgorithmNotAllowed
            );
        }
    }

    #[test]
    fn multi_tenant_entry_matches_entra_issuers_only() {
        let text = r#"
quay: {service: q, realm: "https://q/v2/auth"}
issuers:
  - name: entra
    preset: entra
    tenants: any
    audiences: [api://quay-api]
"#;
        let config = Config::parse(text, "t").expect("config");
        let v2 = format!("https://login.microsoftonline.com/{OTHER}/v2.0");
        let matched = match_issuer(&config, &v2).expect("v2 any");
        assert_eq!(matched.tenant, Some(OTHER));
        assert!(match_issuer(&config, &format!("https://sts.windows.net/{OTHER}/")).is_some());
        assert!(match_issuer(&config, "https://sts.windows.net/common/").is_none());
        assert!(match_issuer(&config, "https://evil.example/").is_none());
    }

    #[test]
    fn entra_tenant_in_iss_must_be_a_uuid() {
        let tenant = "11111111-2222-3333-4444-555555555555";
        assert_eq!(
            entra_tenant_of(&format!("https://login.microsoftonline.com/{tenant}/v2.0")),
            Some(tenant)
        );
        assert_eq!(
            entra_tenant_of(&format!("https://sts.windows.net/{tenant}/")),
            Some(tenant)
        );
        for bad in [
            "-".repeat(36),
            "1111111122223333444455555555555555555".into(),
            "11111111-2222-3333-4444-55555555555-".into(),
            "1111111-22222-3333-4444-555555555555".into(),
            "11111111-2222-3333-4444-55555555555G".into(),
            "11111111-2222-3333-4444-55555555555A".into(),
        ] {
            assert_eq!(
                entra_tenant_of(&format!("https://login.microsoftonline.com/{bad}/v2.0")),
                None,
                "{bad}"
            );
        }
    }

    /// `required_claims` compares JSON values: the string `"1"` is not the number `1`.
    #[test]
    fn required_claims_compare_json_values_not_text() {
        assert!(!required_claim_holds(Some(&json!("1")), &json!(1)));
        assert!(!required_claim_holds(Some(&json!(1)), &json!("1")));
        assert!(!required_claim_holds(Some(&json!("true")), &json!(true)));
        assert!(required_claim_holds(Some(&json!(1)), &json!(1)));
        assert!(required_claim_holds(Some(&json!("app")), &json!("app")));
        assert!(required_claim_holds(
            Some(&json!("2.0")),
            &json!(["1.0", "2.0"])
        ));
        assert!(required_claim_holds(Some(&json!(["a", "b"])), &json!("b")));
        assert!(!required_claim_holds(None, &json!("app")));
    }
}
