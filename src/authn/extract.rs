//! Extract: the facts of one request from Envoy's CheckRequest, and its credential.

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;

/// What the request carries in the way of credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential<'r> {
    /// `Authorization: Bearer <token>` (RFC 6750 §2.1).
    Bearer(&'r str),
    /// `Authorization: Basic base64(user:password)` whose password is shaped like a JWS
    /// (three base64url parts): `docker login -u anything -p "$IDP_TOKEN"`. Ours on Quay's
    /// registry token endpoint only; anywhere else it is Basic, Quay's business.
    BasicJwt(String),
    /// Some other scheme (Basic, Quay's own): Quay's business.
    Other,
    /// More than one credential in one request (a repeated `Authorization` header, which
    /// Envoy joins with `,`), one of them a bearer token or a Basic one: which one Quay reads
    /// is not ours to guess (RFC 6750 §3.1, `invalid_request`).
    Multiple,
    None,
}

/// The request as the pipeline sees it, borrowed from Envoy's CheckRequest: a Check copies
/// none of its headers or body (`described` requests, from `explain`, own theirs).
#[derive(Debug, Clone, Default)]
pub struct RequestFacts<'r> {
    pub method: Cow<'r, str>,
    /// Envoy's `:path`, query included.
    pub path: Cow<'r, str>,
    /// The `Authorization` header (Envoy sends header names lower-cased), the only request
    /// header the pipeline reads.
    pub authorization: Option<Cow<'r, str>>,
    /// Present when Envoy is configured `with_request_body` (and the body is UTF-8); only
    /// `POST /api/v1/repository` reads it.
    pub body: Option<Cow<'r, str>>,
    /// Envoy's `x-request-id`, for the audit log.
    pub request_id: Cow<'r, str>,
    /// Incoming header names that a WSGI server would read as one of our identity headers
    /// (lower-cased, `_` as `-`, starting with the prefix): `x_quay_authz_user` reaches Quay as
    /// `HTTP_X_QUAY_AUTHZ_USER` when the proxy lets underscores through, so each actual
    /// spelling is removed. Only these names are kept, not the headers; almost always none.
    pub identity_header_spellings: Vec<&'r str>,
}

impl<'r> RequestFacts<'r> {
    /// `identity_prefix` is the configured identity header prefix (`x-quay-authz-`).
    pub fn from_check_request(request: &'r CheckRequest, identity_prefix: &str) -> Self {
        let Some(http) = request
            .attributes
            .as_ref()
            .and_then(|attributes| attributes.request.as_ref())
            .and_then(|request| request.http.as_ref())
        else {
            return Self::default();
        };
        let body = if !http.body.is_empty() {
            Some(Cow::Borrowed(http.body.as_str()))
        } else if !http.raw_body.is_empty() {
            std::str::from_utf8(&http.raw_body).ok().map(Cow::Borrowed)
        } else {
            None
        };
        Self {
            method: Cow::Borrowed(&http.method),
            path: Cow::Borrowed(&http.path),
            authorization: http
                .headers
                .get("authorization")
                .map(|value| Cow::Borrowed(value.as_str())),
            body,
            identity_header_spellings: http
                .headers
                .keys()
                .filter(|name| folds_to_prefix(name, identity_prefix))
                .map(String::as_str)
                .collect(),
            request_id: Cow::Borrowed(
                http.headers
                    .get("x-request-id")
                    .map_or(http.id.as_str(), String::as_str),
            ),
        }
    }

    /// A request described by hand (`explain`): method, path, an optional bearer token and body.
    pub fn described(
        method: String,
        path: String,
        token: Option<String>,
        body: Option<String>,
    ) -> Self {
        Self {
            method: Cow::Owned(method),
            path: Cow::Owned(path),
            body: body.filter(|body| !body.is_empty()).map(Cow::Owned),
            authorization: token
                .filter(|token| !token.is_empty())
                .map(|token| Cow::Owned(format!("Bearer {token}"))),
            ..Default::default()
        }
    }

    /// The path without the query, for logs (queries may carry secrets).
    pub fn path_without_query(&self) -> &str {
        self.path.split('?').next().unwrap_or_default()
    }

    pub fn credential(&self) -> Credential<'_> {
        let Some(value) = self.authorization.as_deref() else {
            return Credential::None;
        };
        let value = value.trim();
        if value.eq_ignore_ascii_case("bearer") {
            return Credential::None;
        }
        // Neither a token68 (RFC 9110 §11.2) nor a JWS contains `,`: a comma joins headers.
        if value.contains(',') {
            let credentials = value.split(',').filter(|part| !part.trim().is_empty());
            if credentials.clone().count() > 1
                && credentials.clone().any(|part| {
                    let scheme = part.trim().split(' ').next().unwrap_or_default();
                    scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("basic")
                })
            {
                return Credential::Multiple;
            }
        }
        match value.split_once(' ') {
            // The scheme is case-insensitive (RFC 9110 §11.1).
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                let token = token.trim();
                if token.is_empty() {
                    Credential::None
                } else {
                    Credential::Bearer(token)
                }
            }
            Some((scheme, encoded)) if scheme.eq_ignore_ascii_case("basic") => {
                basic_jwt_password(encoded.trim()).map_or(Credential::Other, Credential::BasicJwt)
            }
            _ => Credential::Other,
        }
    }

    /// Whether the request reaches Quay's registry, judged as Quay's router will see the path
    /// (`//v2/…` is the registry too), so a denial speaks Docker's dialect there.
    pub fn is_registry(&self) -> bool {
        crate::route::area(&self.path) == crate::route::Area::Registry
    }
}

/// The password of a Basic credential (RFC 7617) when it is shaped like a compact JWS:
/// three non-empty base64url parts. The user name is ignored (`docker login -u anything`;
/// Quay's `$oauthtoken`). Anything else (a Quay password, robot or app token) is not ours.
fn basic_jwt_password(encoded: &str) -> Option<String> {
    let decoded = STANDARD.decode(encoded).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (_user, password) = decoded.split_once(':')?;
    let parts: Vec<&str> = password.split('.').collect();
    let is_jws = parts.len() == 3
        && parts.iter().all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    is_jws.then(|| password.to_string())
}

/// Whether `name`, lower-cased with `_` read as `-` (as WSGI folds them), starts with `prefix`.
/// Compared byte by byte, so no folded copy is made for the many headers that do not match.
fn folds_to_prefix(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len()
        && name.bytes().zip(prefix.bytes()).all(|(n, p)| {
            let n = if n == b'_' {
                b'-'
            } else {
                n.to_ascii_lowercase()
            };
            n == p.to_ascii_lowercase()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(authorization: Option<&str>) -> RequestFacts<'_> {
        RequestFacts {
            path: "/v2/acme/app/manifests/latest?x=1".into(),
            authorization: authorization.map(Cow::Borrowed),
            ..Default::default()
        }
    }

    #[test]
    fn credentials() {
        assert_eq!(
            facts(Some("Bearer abc")).credential(),
            Credential::Bearer("abc")
        );
        assert_eq!(
            facts(Some("bearer   abc ")).credential(),
            Credential::Bearer("abc")
        );
        assert_eq!(
            facts(Some("Basic dXNlcjpwYXNz")).credential(),
            Credential::Other
        );
        assert_eq!(facts(Some("Bearer ")).credential(), Credential::None);
        // docker login -u anything -p <JWT>
        let basic = |text: &str| format!("Basic {}", STANDARD.encode(text));
        assert_eq!(
            facts(Some(&basic("anything:eyJh.eyJz.c2ln"))).credential(),
            Credential::BasicJwt("eyJh.eyJz.c2ln".into())
        );
        assert_eq!(
            facts(Some(&basic("$oauthtoken:a.b.c"))).credential(),
            Credential::BasicJwt("a.b.c".into())
        );
        for not_a_jwt in [
            "user:password",
            "ns+robot:TOKEN",
            "user:a.b",
            "user:a..c",
            "user:a.b.c.d",
            "user:a.b.c=",
            "no-colon-a.b.c",
        ] {
            assert_eq!(
                facts(Some(&basic(not_a_jwt))).credential(),
                Credential::Other,
                "{not_a_jwt}"
            );
        }
        assert_eq!(facts(Some("Basic !!!")).credential(), Credential::Other);
        // Two headers, joined by Envoy.
        for two in [
            "Bearer a.b.c,Bearer d.e.f",
            "Bearer a.b.c, Basic dXNlcjpwYXNz",
            &format!("{}, {}", basic("u:a.b.c"), basic("u:p")),
        ] {
            assert_eq!(facts(Some(two)).credential(), Credential::Multiple, "{two}");
        }
        assert_eq!(facts(None).credential(), Credential::None);
        assert_eq!(
            facts(None).path_without_query(),
            "/v2/acme/app/manifests/latest"
        );
        assert!(facts(None).is_registry());
    }

    #[test]
    fn from_check_request_keeps_only_what_is_read() {
        use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
        use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
        let headers = [
            ("authorization", "Bearer abc"),
            ("x-request-id", "req-1"),
            ("cookie", "session=secret"),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
        let request = CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(HttpRequest {
                        method: "GET".into(),
                        path: "/v2/".into(),
                        headers,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        let facts = RequestFacts::from_check_request(&request, "x-quay-authz-");
        assert_eq!(facts.credential(), Credential::Bearer("abc"));
        assert_eq!(facts.request_id, "req-1");
        assert_eq!(facts.authorization.as_deref(), Some("Bearer abc"));
        assert!(facts.identity_header_spellings.is_empty());
        // Borrowed, not copied: the facts point into the request.
        let http = request
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .expect("http");
        assert!(
            matches!(facts.path, Cow::Borrowed(path) if std::ptr::eq(path, http.path.as_str()))
        );
        assert!(matches!(facts.authorization, Some(Cow::Borrowed(_))));
    }
}
