//! End to end: Quay's registry token endpoint (`GET /v2/auth`) behind a real Envoy
//! (deploy/envoy/envoy.yaml) and quay-authz, with a recording upstream in Quay's place.
//! `docker login -p "$IDP_TOKEN"` arrives as Basic with a JWT password; Quay must receive
//! `Basic $oauthtoken:<token>` and only the `scope` parameters the policy grants.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::envoy::{Envoy, require_envoy};
use common::issuer::*;
use common::service::TestService;
use common::upstream::RecordingUpstream;

/// The `scope` values a WSGI app (Werkzeug's `request.args.getlist`) reads from `target`.
fn scopes_read_by_quay(target: &str) -> Vec<String> {
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let decode = |text: &str| {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut index = 0;
        while index < bytes.len() {
            match bytes[index] {
                b'+' => out.push(b' '),
                b'%' if index + 2 < bytes.len() => {
                    match u8::from_str_radix(&text[index + 1..index + 3], 16) {
                        Ok(byte) => {
                            out.push(byte);
                            index += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                byte => out.push(byte),
            }
            index += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .filter(|(key, _)| decode(key) == "scope")
        .map(|(_, value)| decode(value))
        .collect()
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quay_receives_downscoped_scopes_and_basic_oauthtoken() {
    let Some(bin) = require_envoy() else { return };
    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, ""), true).await;
    let upstream = RecordingUpstream::start().await;
    let envoy = Envoy::start(&bin, service.running.grpc_addr.port(), upstream.port).await;
    let http = reqwest::Client::new();
    // Grants: repo:write on acme/* (pull and push there, never `*`).
    let token = entra_token(&issuer, &["Quay.acme.write"]);
    let get = |target: &str, authorization: &str| {
        http.get(envoy.url(target))
            .header("authorization", authorization)
            .send()
    };

    // docker login -u anything -p "$TOKEN", then a push: `*` on acme/app and anything on
    // other/app are cut. Envoy sets one value per key, so the first granted scope goes alone;
    // keys that only look like `scope` (decoded once, as Werkzeug does, they are not) stay.
    let response = get(
        "/v2/auth?account=x%26scope%3Drepository%3Aevil%2Fapp%3Apush\
         &sco%2570e=repository:evil/two:push&service=quay.example.com&sco+pe=1\
         &scope=repository:acme/app:pull,push,*\
         &scope=repository%3Aother%2Fapp%3Apull\
         &scope=repository:acme/team/base:pull",
        &basic("anything", &token),
    )
    .await
    .expect("request");
    assert_eq!(response.status(), 200, "{}", envoy.log());
    let seen = upstream.last_request().expect("upstream saw the request");
    assert_eq!(
        scopes_read_by_quay(&seen.path),
        ["repository:acme/app:pull,push"],
        "{}",
        seen.path
    );
    assert!(
        seen.path.contains("service=quay.example.com"),
        "{}",
        seen.path
    );
    // The credential Quay's /v2/auth reads: $oauthtoken with the verified JWT (forward).
    assert_eq!(
        seen.header_values("authorization"),
        [basic("$oauthtoken", &token)]
    );
    assert_eq!(seen.header("x-quay-authz-issuer"), Some("entra"));

    // Every scope granted in full: the query reaches Quay as sent.
    let all_granted = "/v2/auth?service=quay.example.com\
                       &scope=repository:acme/app:push,pull&scope=repository:acme/x/y:pull";
    let response = get(all_granted, &basic("$oauthtoken", &token))
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let seen = upstream.last_request().expect("upstream saw the request");
    assert_eq!(seen.path, all_granted);
    assert_eq!(
        seen.header_values("authorization"),
        [basic("$oauthtoken", &token)]
    );

    // Nothing granted (another namespace, the library namespace): no scope reaches Quay.
    let response = get(
        "/v2/auth?service=quay.example.com&scope=repository:other/app:pull&scope=repository:app:push",
        &basic("u", &token),
    )
    .await
    .expect("request");
    assert_eq!(response.status(), 200);
    let seen = upstream.last_request().expect("upstream saw the request");
    assert_eq!(
        scopes_read_by_quay(&seen.path),
        Vec::<String>::new(),
        "{}",
        seen.path
    );

    // A bare `scope` key (Werkzeug reads an empty value) beside one that is cut: Quay reads
    // only the scope quay-authz wrote.
    let response = get(
        "/v2/auth?scope&scope=repository:acme/app:pull,*&scope=",
        &basic("u", &token),
    )
    .await
    .expect("request");
    assert_eq!(response.status(), 200);
    let seen = upstream.last_request().expect("upstream saw the request");
    assert_eq!(
        scopes_read_by_quay(&seen.path),
        ["repository:acme/app:pull"],
        "{}",
        seen.path
    );

    // A key that Werkzeug decodes to `scope` but Envoy would not overwrite: refused.
    let count = upstream.requests().len();
    let response = get(
        "/v2/auth?scope=repository:acme/app:pull&%73cope=repository:other/app:push",
        &basic("u", &token),
    )
    .await
    .expect("request");
    assert_eq!(response.status(), 400);
    // Two credentials (a repeated Authorization header, which Envoy joins): refused.
    let response = http
        .get(envoy.url("/v2/auth?scope=repository:acme/app:pull"))
        .header("authorization", basic("u", &token))
        .header("authorization", basic("ns+robot", "robot-token"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 400, "{}", envoy.log());
    assert_eq!(
        upstream.requests().len(),
        count,
        "Quay saw a refused request"
    );

    // Basic with a JWT password anywhere else is Quay's business, as before: untouched.
    let response = get("/v2/acme/app/manifests/latest", &basic("u", &token))
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let seen = upstream.last_request().expect("upstream saw the request");
    assert_eq!(seen.header_values("authorization"), [basic("u", &token)]);
    assert_eq!(seen.header("x-quay-authz-user"), None);
}
