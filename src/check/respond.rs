//! Respond: a Decision as Envoy's CheckResponse.
//!
//! Envoy turns any non-OK status into a bare 403 unless the denied response sets its status,
//! and appends headers by default; so every deny sets its HTTP status and headers explicitly
//! with `OVERWRITE_IF_EXISTS_OR_ADD`, and identity headers are always overwritten or removed so
//! a client can never inject them.

use std::borrow::Cow;

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption, QueryParameter};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{Struct, Value as ProtoValue, value::Kind};
use envoy_types::pb::google::rpc::Status;

use crate::config::HeaderSettings;
use crate::model::decision::{Decision, DenyStatus, Reason, ScopeRewrite, UpstreamCredential};

/// The identity headers we set on allow (after the configured prefix).
pub const IDENTITY_HEADERS: [&str; 7] = [
    "user", "issuer", "tenant", "client", "groups", "scopes", "subject",
];

/// What the responder needs beyond the decision; built once per configuration.
#[derive(Debug, Clone)]
pub struct ResponseSettings {
    pub headers: HeaderSettings,
    /// Docker challenge realm and service.
    pub realm: String,
    pub service: String,
    /// `prefix` + each of IDENTITY_HEADERS, prebuilt.
    identity_header_names: Vec<String>,
}

impl ResponseSettings {
    pub fn new(headers: HeaderSettings, realm: String, service: String) -> Self {
        let identity_header_names = IDENTITY_HEADERS
            .iter()
            .map(|name| format!("{}{name}", headers.prefix))
            .collect();
        Self {
            headers,
            realm,
            service,
            identity_header_names,
        }
    }
}

/// Builds the CheckResponse. `is_registry` picks the Docker challenge and error body over
/// RFC 6750's.
pub fn build_response(
    decision: &Decision,
    settings: &ResponseSettings,
    is_registry: bool,
) -> CheckResponse {
    match decision {
        Decision::Allow {
            identity,
            grants,
            upstream,
            scopes: registry_scopes,
            ..
        } => {
            // Pre-rendered: the scopes with the (shared, cached) policy outcome, a token's one
            // group is its own text; only several groups are joined here.
            let groups = groups_header(&identity.groups);
            let values: [Option<&str>; 7] = [
                Some(&identity.username),
                Some(&identity.issuer),
                identity.tenant.as_deref(),
                identity.client.as_deref(),
                Some(&groups),
                Some(&grants.header),
                // The bridge token's `sub` (Quay's key for the user), for exchange issuers.
                identity.bridge_subject.as_deref(),
            ];
            let mut headers = Vec::new();
            let mut headers_to_remove = Vec::new();
            for (name, value) in settings.identity_header_names.iter().zip(values) {
                match value.map(sanitize_header_value) {
                    Some(value) if !value.is_empty() => headers.push(header(name, &value)),
                    // Not set by us, so a client-sent one must not survive.
                    _ => headers_to_remove.push(name.clone()),
                }
            }
            // What Quay receives (the issuer's `upstream`); `headers.remove_authorization`
            // strips the caller's token whatever the issuer says, unless we replace it.
            match upstream {
                UpstreamCredential::Bearer(token) => {
                    headers.push(header("authorization", &format!("Bearer {token}")));
                }
                UpstreamCredential::Basic(credentials) => {
                    headers.push(header("authorization", &format!("Basic {credentials}")));
                }
                UpstreamCredential::Strip => headers_to_remove.push("authorization".into()),
                UpstreamCredential::Forward if settings.headers.remove_authorization => {
                    headers_to_remove.push("authorization".into());
                }
                UpstreamCredential::Forward => {}
            }
            let metadata = metadata(&[
                ("decision", "allow"),
                ("reason", Reason::Allowed.code()),
                ("user", &identity.username),
                ("issuer", &identity.issuer),
                ("tenant", identity.tenant.as_deref().unwrap_or("")),
                ("client", identity.client.as_deref().unwrap_or("")),
            ]);
            let mut response = ok_response(headers, headers_to_remove, metadata);
            if let Some(HttpResponse::OkResponse(ok)) = response.http_response.as_mut() {
                rewrite_scopes(ok, registry_scopes);
            }
            response
        }
        Decision::Passthrough { reason } => {
            let metadata = metadata(&[("decision", "passthrough"), ("reason", reason.code())]);
            ok_response(Vec::new(), settings.identity_header_names.clone(), metadata)
        }
        // The deny's detail stays out: it may name the configuration (audit log and explain
        // carry it).
        Decision::Deny {
            reason, required, ..
        } => {
            let status = reason.deny_status();
            let required_scope = required.as_ref().map(|p| p.to_string());
            let docker_scope = required.as_ref().and_then(|p| p.docker_scope());
            let (challenge, body) = if is_registry {
                registry_denial(status, *reason, docker_scope.as_deref(), settings)
            } else {
                api_denial(status, *reason, required_scope.as_deref(), settings)
            };
            let mut headers = vec![header("content-type", "application/json")];
            if let Some(challenge) = challenge {
                headers.push(header("www-authenticate", &challenge));
            }
            if is_registry {
                headers.push(header("docker-distribution-api-version", "registry/2.0"));
            }
            CheckResponse {
                status: Some(Status {
                    code: status.grpc_code() as i32,
                    message: reason.code().to_string(),
                    details: Vec::new(),
                }),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus {
                        code: status.http_status() as i32,
                    }),
                    headers,
                    body,
                })),
                dynamic_metadata: Some(metadata(&[
                    ("decision", "deny"),
                    ("reason", reason.code()),
                ])),
            }
        }
    }
}

/// Adds incoming header names to an OK response's `headers_to_remove` (a deny forwards
/// nothing, so it is left alone); names already listed are not repeated. A name the response
/// sets itself is skipped: Envoy applies removals after additions, so removing it would drop
/// the value we set (which already overwrites the client's).
pub fn remove_also(response: &mut CheckResponse, names: &[&str]) {
    if let Some(HttpResponse::OkResponse(ok)) = response.http_response.as_mut() {
        for name in names {
            let set_here = ok.headers.iter().any(|option| {
                option
                    .header
                    .as_ref()
                    .is_some_and(|header| header.key.eq_ignore_ascii_case(name))
            });
            if !set_here && !ok.headers_to_remove.iter().any(|removed| removed == name) {
                ok.headers_to_remove.push(name.to_string());
            }
        }
    }
}

/// The `scope` query parameters Quay's registry token endpoint receives. Envoy applies
/// `query_parameters_to_set` by overwriting every value of the raw key, then
/// `query_parameters_to_remove` (checked against Envoy 1.40 in tests/e2e_registry_token.rs).
fn rewrite_scopes(ok: &mut OkHttpResponse, scopes: &ScopeRewrite) {
    match scopes {
        ScopeRewrite::Unchanged => {}
        ScopeRewrite::Only(scope) => ok.query_parameters_to_set.push(QueryParameter {
            key: "scope".into(),
            value: scope.clone(),
        }),
        ScopeRewrite::Removed => ok.query_parameters_to_remove.push("scope".into()),
    }
}

fn ok_response(
    headers: Vec<HeaderValueOption>,
    headers_to_remove: Vec<String>,
    metadata: Struct,
) -> CheckResponse {
    CheckResponse {
        status: Some(Status {
            code: tonic::Code::Ok as i32,
            message: String::new(),
            details: Vec::new(),
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers,
            headers_to_remove,
            ..Default::default()
        })),
        dynamic_metadata: Some(metadata),
    }
}

/// RFC 6750 §3: the challenge and a JSON body for API clients.
fn api_denial(
    status: DenyStatus,
    reason: Reason,
    required_scope: Option<&str>,
    settings: &ResponseSettings,
) -> (Option<String>, String) {
    let realm = quote(&settings.service);
    let description = reason.client_message();
    let (error, challenge) = match status {
        // §3.1: a request with no credentials gets a challenge without an error code.
        DenyStatus::Unauthenticated if reason == Reason::NoCredentials => {
            ("invalid_request", Some(format!("Bearer realm={realm}")))
        }
        DenyStatus::Unauthenticated => (
            "invalid_token",
            Some(format!(
                "Bearer realm={realm}, error=\"invalid_token\", error_description={}",
                quote(&description)
            )),
        ),
        DenyStatus::Forbidden => (
            "insufficient_scope",
            Some(format!(
                "Bearer realm={realm}, error=\"insufficient_scope\"{}, error_description={}",
                required_scope
                    .map(|scope| format!(", scope={}", quote(scope)))
                    .unwrap_or_default(),
                quote(&description)
            )),
        ),
        DenyStatus::BadRequest => ("invalid_request", None),
        DenyStatus::Unavailable => ("temporarily_unavailable", None),
    };
    let body = serde_json::json!({
        "error": error,
        "error_description": description,
        "reason": reason.code(),
        "required_scope": required_scope,
    });
    (challenge, body.to_string())
}

/// The Docker token spec's challenge and the distribution spec's error body.
fn registry_denial(
    status: DenyStatus,
    reason: Reason,
    docker_scope: Option<&str>,
    settings: &ResponseSettings,
) -> (Option<String>, String) {
    let mut challenge = format!(
        "Bearer realm={},service={}",
        quote(&settings.realm),
        quote(&settings.service)
    );
    if let Some(scope) = docker_scope {
        challenge.push_str(&format!(",scope={}", quote(scope)));
    }
    let (code, challenge) = match status {
        DenyStatus::Unauthenticated => ("UNAUTHORIZED", Some(challenge)),
        DenyStatus::Forbidden => {
            challenge.push_str(",error=\"insufficient_scope\"");
            ("DENIED", Some(challenge))
        }
        DenyStatus::BadRequest => ("NAME_INVALID", None),
        DenyStatus::Unavailable => ("UNAVAILABLE", None),
    };
    let body = serde_json::json!({"errors": [{
        "code": code,
        "message": reason.client_message(),
        "detail": {"reason": reason.code(), "scope": docker_scope},
    }]});
    (challenge, body.to_string())
}

/// An auth-param quoted-string (RFC 9110 §5.6.4): backslash-escape `"` and `\`, drop controls.
fn quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// The `groups` identity header: the groups comma-separated, borrowed when there is one.
fn groups_header(groups: &[std::sync::Arc<str>]) -> Cow<'_, str> {
    match groups {
        [] => Cow::Borrowed(""),
        [one] => Cow::Borrowed(one),
        several => Cow::Owned(several.join(",")),
    }
}

/// Header values from claims must not smuggle line breaks or other controls. A clean value
/// (nearly all) is borrowed, not copied.
fn sanitize_header_value(value: &str) -> Cow<'_, str> {
    if value.chars().any(char::is_control) {
        Cow::Owned(value.chars().filter(|c| !c.is_control()).collect())
    } else {
        Cow::Borrowed(value)
    }
}

fn header(name: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_string(),
            value: value.to_string(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn metadata(fields: &[(&str, &str)]) -> Struct {
    Struct {
        fields: fields
            .iter()
            .map(|(key, value)| {
                (
                    key.to_string(),
                    ProtoValue {
                        kind: Some(Kind::StringValue(value.to_string())),
                    },
                )
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::identity::Identity;
    use crate::model::permission::{Grant, Granted, Permission, QuayScope};

    fn settings() -> ResponseSettings {
        ResponseSettings::new(
            HeaderSettings {
                prefix: "x-quay-authz-".into(),
                remove_authorization: true,
            },
            "https://quay.example.com/v2/auth".into(),
            "quay.example.com".into(),
        )
    }

    fn headers(response: &CheckResponse) -> (Vec<(String, String, i32)>, Vec<String>, i32) {
        let pairs = |options: &[HeaderValueOption]| -> Vec<(String, String, i32)> {
            options
                .iter()
                .filter_map(|h| {
                    h.header
                        .as_ref()
                        .map(|v| (v.key.clone(), v.value.clone(), h.append_action))
                })
                .collect()
        };
        match &response.http_response {
            Some(HttpResponse::OkResponse(ok)) => {
                (pairs(&ok.headers), ok.headers_to_remove.clone(), 200)
            }
            Some(HttpResponse::DeniedResponse(denied)) => (
                pairs(&denied.headers),
                Vec::new(),
                denied.status.as_ref().map(|s| s.code).unwrap_or_default(),
            ),
            _ => panic!("no http response"),
        }
    }

    fn header_value(response: &CheckResponse, name: &str) -> Option<String> {
        headers(response)
            .0
            .into_iter()
            .find(|(k, _, _)| k == name)
            .map(|(_, v, _)| v)
    }

    #[test]
    fn allow_sets_identity_headers_and_removes_the_rest() {
        let identity = Identity {
            issuer: "github".into(),
            iss: "https://token.actions.githubusercontent.com".into(),
            username: "repo:acme/app:ref:refs/heads/main\r\nx-evil: 1".into(),
            tenant: None,
            client: None,
            audiences: Default::default(),
            groups: Default::default(),
            claims: Default::default(),
            expires_at: 0,
            bridge_subject: None,
            exchanged: None,
        };
        let decision = Decision::Allow {
            identity: std::sync::Arc::new(identity),
            grants: Granted::new(Grant::parse("repository:acme/app:pull,push").expect("grant")),
            rules: vec!["ci".into()],
            required: Vec::new(),
            upstream: UpstreamCredential::Forward,
            scopes: ScopeRewrite::Unchanged,
        };
        let response = build_response(&decision, &settings(), false);
        let (set, removed, status) = headers(&response);
        assert_eq!(status, 200);
        assert_eq!(response.status.as_ref().map(|s| s.code), Some(0));
        assert!(
            set.iter()
                .all(|(_, _, action)| *action == HeaderAppendAction::OverwriteIfExistsOrAdd as i32)
        );
        assert_eq!(
            header_value(&response, "x-quay-authz-user").as_deref(),
            Some("repo:acme/app:ref:refs/heads/mainx-evil: 1")
        );
        assert_eq!(
            header_value(&response, "x-quay-authz-scopes").as_deref(),
            Some("repo:read on acme/app,repo:write on acme/app")
        );
        assert_eq!(
            removed,
            [
                "x-quay-authz-tenant",
                "x-quay-authz-client",
                "x-quay-authz-groups",
                "x-quay-authz-subject",
                "authorization"
            ]
        );
    }

    /// A GitHub Actions identity `ci`, for the tests of what Quay receives.
    fn ci_identity() -> std::sync::Arc<Identity> {
        std::sync::Arc::new(Identity {
            issuer: "github".into(),
            iss: "https://token.actions.githubusercontent.com".into(),
            username: "ci".into(),
            tenant: None,
            client: None,
            audiences: Default::default(),
            groups: Default::default(),
            claims: Default::default(),
            expires_at: 0,
            bridge_subject: None,
            exchanged: None,
        })
    }

    /// The issuer's `upstream` decides what Quay receives: the caller's header untouched, none,
    /// or a bridge token that overwrites whatever the client sent.
    #[test]
    fn allow_writes_the_upstream_credential() {
        let identity = ci_identity();
        let mut settings = settings();
        settings.headers.remove_authorization = false;
        let allow = |upstream| Decision::Allow {
            identity: identity.clone(),
            grants: Granted::new(Grant::parse("repository:acme/app:pull").expect("grant")),
            rules: vec!["ci".into()],
            required: Vec::new(),
            upstream,
            scopes: ScopeRewrite::Unchanged,
        };
        let forward = build_response(&allow(UpstreamCredential::Forward), &settings, false);
        assert_eq!(header_value(&forward, "authorization"), None);
        assert!(!headers(&forward).1.contains(&"authorization".to_string()));

        let strip = build_response(&allow(UpstreamCredential::Strip), &settings, false);
        assert_eq!(header_value(&strip, "authorization"), None);
        assert!(headers(&strip).1.contains(&"authorization".to_string()));

        let bearer = allow(UpstreamCredential::Bearer("bridge.jwt.sig".into()));
        let exchange = build_response(&bearer, &settings, false);
        let (set, removed, _) = headers(&exchange);
        assert!(set.contains(&(
            "authorization".into(),
            "Bearer bridge.jwt.sig".into(),
            HeaderAppendAction::OverwriteIfExistsOrAdd as i32
        )));
        assert!(!removed.contains(&"authorization".to_string()));
        let Some(HttpResponse::OkResponse(ok)) = exchange.http_response else {
            panic!("not ok")
        };
        assert!(ok.query_parameters_to_set.is_empty() && ok.query_parameters_to_remove.is_empty());
    }

    /// Quay's registry token endpoint: the credential is rewritten to Basic and every `scope`
    /// parameter replaced by the downscoped ones.
    #[test]
    fn allow_on_the_registry_token_endpoint_rewrites_credential_and_scopes() {
        let identity = ci_identity();
        let allow = |scopes: ScopeRewrite| Decision::Allow {
            identity: identity.clone(),
            grants: Granted::new(Grant::parse("repository:acme/app:pull").expect("grant")),
            rules: vec!["ci".into()],
            required: Vec::new(),
            upstream: UpstreamCredential::Bearer("bridge.jwt.sig".into())
                .for_registry_token("idp.jwt.sig"),
            scopes,
        };
        let only = ScopeRewrite::Only("repository:acme/app:pull".into());
        let response = build_response(&allow(only), &settings(), true);
        assert_eq!(
            header_value(&response, "authorization").as_deref(),
            Some("Basic JG9hdXRodG9rZW46YnJpZGdlLmp3dC5zaWc=")
        );
        let Some(HttpResponse::OkResponse(ok)) = response.http_response else {
            panic!("not ok")
        };
        assert!(ok.query_parameters_to_remove.is_empty());
        assert_eq!(
            ok.query_parameters_to_set
                .iter()
                .map(|p| (p.key.as_str(), p.value.as_str()))
                .collect::<Vec<_>>(),
            [("scope", "repository:acme/app:pull")]
        );
        // Nothing granted: every scope goes.
        let response = build_response(&allow(ScopeRewrite::Removed), &settings(), true);
        let Some(HttpResponse::OkResponse(ok)) = response.http_response else {
            panic!("not ok")
        };
        assert_eq!(ok.query_parameters_to_remove, ["scope"]);
        assert!(ok.query_parameters_to_set.is_empty());
    }

    #[test]
    fn passthrough_removes_every_identity_header() {
        let response = build_response(
            &Decision::Passthrough {
                reason: Reason::NoCredentials,
            },
            &settings(),
            false,
        );
        let (set, removed, _) = headers(&response);
        assert!(set.is_empty());
        assert_eq!(removed.len(), IDENTITY_HEADERS.len());
        assert!(removed.iter().all(|name| name.starts_with("x-quay-authz-")));
    }

    fn deny(reason: Reason, required: Option<Permission>, registry: bool) -> CheckResponse {
        let decision = Decision::Deny {
            reason,
            detail: "why \"quoted\"".into(),
            required,
            issuer: None,
        };
        build_response(&decision, &settings(), registry)
    }

    #[test]
    fn api_denials_follow_rfc_6750() {
        let expired = deny(Reason::TokenExpired, None, false);
        assert_eq!(headers(&expired).2, 401);
        assert_eq!(
            expired.status.as_ref().map(|s| s.code),
            Some(tonic::Code::Unauthenticated as i32)
        );
        assert_eq!(
            header_value(&expired, "www-authenticate").as_deref(),
            Some(
                r#"Bearer realm="quay.example.com", error="invalid_token", error_description="token_expired: the token has expired; get a fresh token""#
            )
        );
        let missing = deny(Reason::NoCredentials, None, false);
        assert_eq!(
            header_value(&missing, "www-authenticate").as_deref(),
            Some(r#"Bearer realm="quay.example.com""#)
        );
        let scope = deny(
            Reason::InsufficientScope,
            Some(Permission::repository(QuayScope::RepoWrite, "acme", "app")),
            false,
        );
        assert_eq!(headers(&scope).2, 403);
        let challenge = header_value(&scope, "www-authenticate").expect("challenge");
        assert!(
            challenge.contains(r#"error="insufficient_scope", scope="repo:write on acme/app""#),
            "{challenge}"
        );
        assert_eq!(
            header_value(
                &deny(Reason::InsufficientScope, None, false),
                "www-authenticate"
            )
            .as_deref(),
            Some(
                r#"Bearer realm="quay.example.com", error="insufficient_scope", error_description="insufficient_scope: the token's grants do not cover this request; ask for the scope named in the response""#
            )
        );
        let Some(HttpResponse::DeniedResponse(denied)) = &scope.http_response else {
            panic!()
        };
        let body: serde_json::Value = serde_json::from_str(&denied.body).expect("json");
        assert_eq!(body["reason"], "insufficient_scope");
        assert_eq!(body["required_scope"], "repo:write on acme/app");
        assert_eq!(headers(&deny(Reason::KeysUnavailable, None, false)).2, 503);
    }

    #[test]
    fn the_detail_of_a_deny_never_reaches_the_client() {
        for reason in Reason::ALL {
            for registry in [false, true] {
                let response = deny(reason, None, registry);
                let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
                    continue;
                };
                let shown = format!("{denied:?}");
                assert!(!shown.contains("quoted"), "{reason}: {shown}");
                assert!(shown.contains(reason.code()), "{reason}: {shown}");
            }
        }
    }

    #[test]
    fn registry_denials_carry_the_docker_challenge() {
        let response = deny(
            Reason::TokenExpired,
            Some(Permission::repository(QuayScope::RepoRead, "acme", "app")),
            true,
        );
        assert_eq!(
            header_value(&response, "www-authenticate").as_deref(),
            Some(
                r#"Bearer realm="https://quay.example.com/v2/auth",service="quay.example.com",scope="repository:acme/app:pull""#
            )
        );
        let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
            panic!()
        };
        let body: serde_json::Value = serde_json::from_str(&denied.body).expect("json");
        assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");
        let forbidden = deny(
            Reason::InsufficientScope,
            Some(Permission::repository(QuayScope::RepoWrite, "acme", "app")),
            true,
        );
        let Some(HttpResponse::DeniedResponse(denied)) = &forbidden.http_response else {
            panic!()
        };
        assert!(denied.body.contains("\"DENIED\""));
        assert_eq!(denied.status.as_ref().map(|s| s.code), Some(403));
    }
}
