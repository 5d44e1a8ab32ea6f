//! In-process benchmarks of the Check path, beside its baselines measured in the same run:
//! a raw RS256/ES256 signature verify (the crypto limit) for uncached Checks.
//!
//!   cargo bench --bench check
//!
//! Figures go to BENCHMARKS.md with the command that produced them.

use std::sync::Arc;

use aws_lc_rs::signature;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{Criterion, criterion_group, criterion_main};
use quay_authz::authn::extract::RequestFacts;
use quay_authz::check::pipeline::Pipeline;
use quay_authz::config::Config;
use quay_authz::dev::issuer::{DevIssuer, SigningKeyKind};
use quay_authz::jwks::KeyStore;
use quay_authz::metrics::Metrics;
use quay_authz::model::clock::unix_now;
use quay_authz::route::RouteTable;
use serde_json::json;

/// `bridge_key`: with the identity bridge and the issuer on `upstream: exchange` (the allowed
/// Check then also takes its bridge token from the mint cache).
fn config(
    issuer: &DevIssuer,
    token_cache_entries: usize,
    extra_rules: usize,
    bridge_key: Option<&std::path::Path>,
) -> Config {
    let mut rules = String::new();
    for index in 0..extra_rules {
        rules.push_str(&format!(
            "  - name: filler-{index}\n    when: {{groups_any: [group-{index}]}}\n    grant: [\"repo:read on ns{index}/*\"]\n"
        ));
    }
    let (bridge, upstream) = match bridge_key {
        Some(key) => (
            format!(
                "bridge: {{issuer: \"https://quay-authz.example.com\", audience: quay-authz, signing_keys: [\"{}\"]}}\n",
                key.display()
            ),
            "    upstream: exchange\n",
        ),
        None => (String::new(), ""),
    };
    let text = format!(
        r#"
quay: {{service: quay.example.com, realm: "https://quay.example.com/v2/auth"}}
limits: {{token_cache_entries: {token_cache_entries}}}
{bridge}issuers:
  - name: dev
    issuer: {iss}
    audiences: [quay]
    algorithms: [RS256, ES256]
    allow_insecure_http: true
{upstream}rules:
{rules}  - name: readers
    when: {{groups_any: [readers]}}
    grant: ["repository:acme/*:pull"]
"#,
        iss = issuer.issuer()
    );
    Config::parse(&text, "bench").expect("config")
}

fn facts(token: &str) -> RequestFacts<'static> {
    RequestFacts {
        method: "GET".into(),
        path: "/v2/acme/app/manifests/latest".into(),
        authorization: Some(format!("Bearer {token}").into()),
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    // Key sources start their refreshers on this runtime.
    let _guard = runtime.enter();
    let issuer = runtime
        .block_on(DevIssuer::start("127.0.0.1:0".parse().expect("addr")))
        .expect("issuer");
    let now = unix_now();
    let claims = json!({"iss": issuer.issuer(), "aud": "quay", "sub": "bench", "groups": ["readers"], "iat": now, "exp": now + 86_400});
    let rsa_token = issuer.mint(SigningKeyKind::Rsa, &claims).expect("mint");
    let ec_token = issuer.mint(SigningKeyKind::Ec, &claims).expect("mint");

    let key_dir = tempfile::tempdir().expect("tempdir");
    let bridge_key = key_dir.path().join("bridge.pem");
    let rsa_pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
        .expect("RSA key")
        .serialize_pem();
    std::fs::write(&bridge_key, rsa_pem).expect("bridge key");
    let pipeline = |cache: usize, extra_rules: usize, bridge: Option<&std::path::Path>| {
        let metrics = Metrics::new();
        let config = config(&issuer, cache, extra_rules, bridge);
        let store = KeyStore::new(config.jwks.clone(), metrics.clone());
        let pipeline = Pipeline::new(Arc::new(config), &store, metrics);
        runtime.block_on(async {
            while !pipeline.ready() {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        });
        (pipeline, store)
    };
    let (cached, _store_a) = pipeline(100_000, 0, None);
    let (uncached, _store_b) = pipeline(0, 0, None);
    let (many_rules, _store_c) = pipeline(100_000, 1000, None);
    let (exchange, _store_d) = pipeline(100_000, 0, Some(&bridge_key));

    let mut group = c.benchmark_group("check");
    for (name, pipeline, token) in [
        ("cached_rs256", &cached, &rsa_token),
        ("uncached_rs256", &uncached, &rsa_token),
        ("uncached_es256", &uncached, &ec_token),
        ("cached_rs256_1000_rules", &many_rules, &rsa_token),
        // The same cached Check for an `upstream: exchange` issuer: the bridge token comes
        // from the mint cache (minted once, on the first iteration).
        ("cached_rs256_exchange", &exchange, &rsa_token),
    ] {
        let request = facts(token);
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                let decision = pipeline.decide(&request, now).await;
                assert_eq!(decision.kind(), "allow");
            })
        });
    }
    group.finish();

    // The crypto limit: verify the same tokens with aws-lc-rs, nothing else. The key is
    // parsed once, outside the loop, as a verifier that keeps its keys would; each iteration
    // decodes the token's signature and verifies it over the signing input.
    let jwks: serde_json::Value = runtime
        .block_on(async { reqwest::get(issuer.jwks_url()).await?.json().await })
        .expect("jwks");
    let jwk = |kid: &str| {
        jwks["keys"]
            .as_array()
            .and_then(|keys| keys.iter().find(|k| k["kid"] == kid))
            .cloned()
            .expect("key")
    };
    let component = |jwk: &serde_json::Value, name: &str| {
        URL_SAFE_NO_PAD
            .decode(jwk[name].as_str().expect("component"))
            .expect("base64url")
    };
    let rsa = jwk("rsa-1");
    let rsa_key = signature::RsaPublicKeyComponents {
        n: component(&rsa, "n"),
        e: component(&rsa, "e"),
    }
    .to_parsed_public_key(&signature::RSA_PKCS1_2048_8192_SHA256)
    .expect("rsa key");
    let ec = jwk("ec-1");
    let point = [vec![4u8], component(&ec, "x"), component(&ec, "y")].concat();
    let ec_key = signature::ParsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &point)
        .expect("ec key");
    let mut group = c.benchmark_group("raw_verify");
    for (name, token, key) in [
        ("rs256", &rsa_token, &rsa_key),
        ("es256", &ec_token, &ec_key),
    ] {
        let (message, encoded) = token.rsplit_once('.').expect("jwt");
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut raw = [0u8; 1027];
                let length = URL_SAFE_NO_PAD
                    .decode_slice(encoded, &mut raw)
                    .expect("signature");
                assert!(key.verify_sig(message.as_bytes(), &raw[..length]).is_ok())
            })
        });
    }
    // The previous baseline, for comparison with older figures: jsonwebtoken's verify
    // builds the key from `n` and `e` on every call.
    let decoding_key = jsonwebtoken::DecodingKey::from_rsa_components(
        rsa["n"].as_str().expect("n"),
        rsa["e"].as_str().expect("e"),
    )
    .expect("decoding key");
    let (message, encoded) = rsa_token.rsplit_once('.').expect("jwt");
    group.bench_function("rs256_jsonwebtoken", |b| {
        b.iter(|| {
            assert!(
                jsonwebtoken::crypto::verify(
                    encoded,
                    message.as_bytes(),
                    &decoding_key,
                    jsonwebtoken::Algorithm::RS256
                )
                .expect("verify")
            )
        })
    });
    group.finish();

    let table = RouteTable::new();
    let mut group = c.benchmark_group("route");
    for (name, method, path) in [
        (
            "registry_manifest",
            "GET",
            "/v2/acme/team/app/manifests/latest",
        ),
        (
            "api_repository_tag",
            "GET",
            "/api/v1/repository/acme/app/tag/",
        ),
        (
            "api_organization_member",
            "PUT",
            "/api/v1/organization/acme/team/devs/members/alice",
        ),
    ] {
        group.bench_function(name, |b| b.iter(|| table.classify(method, path, None)));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
