//! Security round two, the route half: spellings of a path or query that Quay's router (gunicorn,
//! then Werkzeug) resolves to an API or registry view must be checked as that view, or denied.
//! Each case here was a bypass: the request was passed through, or checked against less than
//! Quay demands.

mod common;

use common::envoy::{Envoy, require_envoy};
use common::issuer::*;
use common::service::*;
use common::upstream::RecordingUpstream;

/// A token whose grants are `repo:write on acme/*` (role `Quay.acme.write`).
async fn writer() -> (TestService, String, quay_authz::dev::issuer::DevIssuer) {
    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, "unauthenticated: deny"), true).await;
    let token = entra_token(&issuer, &["Quay.acme.write"]);
    (service, token, issuer)
}

/// Item 0: Werkzeug strips leading slashes before matching (`MapAdapter.match`), so `//api/…`
/// reaches the API view; it must be checked as the API route, never passed through.
#[tokio::test]
async fn leading_slashes_are_checked_as_the_route_quay_serves() {
    let (service, token, _issuer) = writer().await;
    for path in [
        "//api/v1/repository/acme/app",
        "///api/v1/repository/acme/app",
        "////api/v1/repository/acme/app",
    ] {
        // DELETE of a repository needs repo:admin; the token holds repo:write.
        let response = service.check_bearer("DELETE", path, &token).await;
        assert_eq!(
            decision(&response),
            ("deny".into(), "insufficient_scope".into()),
            "DELETE {path}"
        );
        assert_eq!(http_status(&response), 403, "DELETE {path}");
        // What the token does hold is still allowed under the same spelling.
        let response = service.check_bearer("GET", path, &token).await;
        assert_eq!(decision(&response).1, "allowed", "GET {path}");
    }
    for path in [
        "//v2/other/app/manifests/latest",
        "///v2/other/app/blobs/sha256:ab",
    ] {
        let response = service.check_bearer("GET", path, &token).await;
        assert_eq!(decision(&response).1, "insufficient_scope", "GET {path}");
        // The registry gets the Docker error body, also for this spelling.
        let response = service.check("DELETE", path, &[]).await;
        assert_eq!(decision(&response).1, "no_credentials", "{path}");
        assert!(
            response_header(&response, "www-authenticate")
                .is_some_and(|challenge| challenge.contains("service=")),
            "{path}: Docker challenge expected"
        );
    }
}

/// Gunicorn percent-decodes the path into PATH_INFO, so `/%61pi/…` is `/api/…` to Quay.
#[tokio::test]
async fn percent_encoded_prefixes_are_refused() {
    let (service, token, _issuer) = writer().await;
    for path in [
        "/%61pi/v1/repository/acme/app",
        "/%2fapi/v1/repository/acme/app",
        "/%2Fv2/acme/app/manifests/latest",
        "/v%32/acme/app/manifests/latest",
        "//%61pi/v1/user/",
    ] {
        let response = service.check_bearer("DELETE", path, &token).await;
        assert_eq!(
            decision(&response),
            ("deny".into(), "path_ambiguous".into()),
            "{path}"
        );
        // Without any token too: the spelling alone is refused.
        let response = service.check("DELETE", path, &[]).await;
        assert_eq!(decision(&response).1, "path_ambiguous", "{path}");
    }
    // Paths outside the API and registry keep passing through, encoded or not.
    let response = service.check("GET", "/static/a%20b.css", &[]).await;
    assert_eq!(decision(&response).0, "passthrough");
}

/// Item 2: Werkzeug decodes query keys and values once; a mount source hidden behind an
/// encoded or repeated key must not reach Quay checked only as a push on the target.
#[tokio::test]
async fn mount_source_hidden_in_the_query_is_refused() {
    let (service, token, _issuer) = writer().await;
    for query in [
        "mount=sha256:ab&fr%6Fm=victim/secret",
        "mount=sha256:ab&%66rom=victim/secret",
        "mount=sha256:ab&from=acme/base&from=victim/secret",
        "mount=sha256:ab&from=victim%2Fsecret",
        "mount=sha256:ab&from=victim/secret+",
        "m%6Funt=sha256:ab&from=acme/base",
        "mount=sha256:ab&mount=sha256:cd&from=acme/base",
    ] {
        let path = format!("/v2/acme/app/blobs/uploads/?{query}");
        let response = service.check_bearer("POST", &path, &token).await;
        assert_eq!(
            decision(&response),
            ("deny".into(), "path_ambiguous".into()),
            "{query}"
        );
    }
    // The plain spelling is checked as pull on the source, push on the target.
    let path = "/v2/acme/app/blobs/uploads/?mount=sha256:ab&from=victim/secret";
    let response = service.check_bearer("POST", path, &token).await;
    assert_eq!(decision(&response).1, "insufficient_scope");
    let path = "/v2/acme/app/blobs/uploads/?mount=sha256:ab&from=acme/base";
    let response = service.check_bearer("POST", path, &token).await;
    assert_eq!(decision(&response).1, "allowed");
    // Keys that do not matter may be spelled as the client likes.
    let path = "/v2/acme/app/blobs/uploads/?mount=sha256:ab&from=acme/base&x%20y=1";
    let response = service.check_bearer("POST", path, &token).await;
    assert_eq!(decision(&response).1, "allowed");
}

/// Item 0 through a real Envoy: the DELETE with a leading `//` never reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_never_forwards_a_leading_double_slash_delete() {
    let Some(bin) = require_envoy() else { return };
    let (service, token, _issuer) = writer().await;
    let upstream = RecordingUpstream::start().await;
    let envoy = Envoy::start(&bin, service.running.grpc_addr.port(), upstream.port).await;
    let http = reqwest::Client::new();
    for path in [
        "//api/v1/repository/acme/app",
        "///api/v1/repository/acme/app",
    ] {
        let response = http
            .delete(envoy.url(path))
            .bearer_auth(&token)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 403, "{path}: {}", envoy.log());
    }
    assert!(
        upstream
            .requests()
            .iter()
            .all(|request| request.method != "DELETE"),
        "a DELETE reached the upstream: {:?}",
        upstream.requests()
    );
    // The same token may read, whatever the spelling.
    let response = http
        .get(envoy.url("//api/v1/repository/acme/app"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200, "{}", envoy.log());
}
