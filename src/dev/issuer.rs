//! A development OIDC issuer — FOR LOCAL TESTING ONLY.
//!
//! It serves an OIDC discovery document and a JWKS over plain HTTP on loopback, and mints
//! tokens signed with keys it generates at start (RSA-2048 and EC P-256). The quickstart and
//! the integration tests use it as a real issuer: real HTTP, real keys, real signatures. It has
//! no authentication at all; never expose it.
//!
//! Usage: `let issuer = DevIssuer::start("127.0.0.1:0".parse()?).await?;` then
//! `issuer.mint(SigningKeyKind::Rsa, claims)`; `issuer.rotate()` adds a new key,
//! `issuer.remove_key(kid)` drops one, `issuer.set_jwks_failure(true)` makes the JWKS endpoint
//! answer 500 (`set_jwks_garbage`, `set_jwks_delay` for other misbehaviour), and
//! `issuer.jwks_fetches()` counts how often keys were fetched.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// Which kind of key signs a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningKeyKind {
    Rsa,
    Ec,
}

enum KeyMaterial {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

struct SigningKey {
    kid: String,
    material: KeyMaterial,
}

impl SigningKey {
    fn generate(kind: SigningKeyKind, kid: String) -> Result<Self, DevIssuerError> {
        let material = match kind {
            SigningKeyKind::Rsa => KeyMaterial::Rsa(
                RsaKeyPair::generate(KeySize::Rsa2048)
                    .map_err(|_| DevIssuerError::KeyGeneration)?,
            ),
            SigningKeyKind::Ec => KeyMaterial::Ec(
                EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
                    .map_err(|_| DevIssuerError::KeyGeneration)?,
            ),
        };
        Ok(Self { kid, material })
    }

    fn kind(&self) -> SigningKeyKind {
        match self.material {
            KeyMaterial::Rsa(_) => SigningKeyKind::Rsa,
            KeyMaterial::Ec(_) => SigningKeyKind::Ec,
        }
    }

    fn jwk(&self) -> Value {
        match &self.material {
            KeyMaterial::Rsa(pair) => {
                let public = pair.public_key();
                json!({
                    "kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
                    "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
                    "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
                })
            }
            KeyMaterial::Ec(pair) => {
                // Uncompressed SEC1 point: 0x04 || x (32 bytes) || y (32 bytes).
                let point = pair.public_key().as_ref();
                let (x, y) = point[1..].split_at(32);
                json!({
                    "kty": "EC", "use": "sig", "alg": "ES256", "crv": "P-256", "kid": self.kid,
                    "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
                })
            }
        }
    }

    fn sign(&self, signing_input: &[u8]) -> Result<Vec<u8>, DevIssuerError> {
        let rng = SystemRandom::new();
        match &self.material {
            KeyMaterial::Rsa(pair) => {
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    signing_input,
                    &mut signature,
                )
                .map_err(|_| DevIssuerError::Signing)?;
                Ok(signature)
            }
            KeyMaterial::Ec(pair) => Ok(pair
                .sign(&rng, signing_input)
                .map_err(|_| DevIssuerError::Signing)?
                .as_ref()
                .to_vec()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DevIssuerError {
    #[error("cannot generate a key")]
    KeyGeneration,
    #[error("cannot sign")]
    Signing,
    #[error("no {0:?} key to sign with")]
    NoKey(SigningKeyKind),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error(
        "will not listen on {0}: the development issuer signs a token for anyone who asks, so it \
         listens on loopback only (127.0.0.1, ::1); --allow-non-loopback overrides this for a \
         throwaway test network"
    )]
    NotLoopback(SocketAddr),
}

struct IssuerState {
    issuer: String,
    /// Keys published in the JWKS, newest last.
    published: Mutex<Vec<Arc<SigningKey>>>,
    /// Keys that sign but are not (or no longer) published.
    unpublished: Mutex<Vec<Arc<SigningKey>>>,
    jwks_fetches: AtomicU64,
    discovery_fetches: AtomicU64,
    fail_jwks: AtomicBool,
    garbage_jwks: AtomicBool,
    /// Milliseconds the JWKS endpoint waits before answering (a slow IdP).
    jwks_delay_ms: AtomicU64,
    cache_control: Mutex<Option<String>>,
    next_kid: AtomicU64,
}

/// A running development issuer.
pub struct DevIssuer {
    pub address: SocketAddr,
    state: Arc<IssuerState>,
    task: JoinHandle<()>,
}

impl Drop for DevIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DevIssuer {
    /// Starts an issuer whose `iss` is its own base URL (`http://127.0.0.1:PORT`). `listen`
    /// must be a loopback address (`NotLoopback` otherwise).
    pub async fn start(listen: SocketAddr) -> Result<Self, DevIssuerError> {
        Self::start_with_issuer(listen, None).await
    }

    /// Starts an issuer; `issuer` overrides the `iss` it announces (for tokens that keep a
    /// real issuer's `iss`, such as Entra's, while keys come from loopback). Loopback only.
    pub async fn start_with_issuer(
        listen: SocketAddr,
        issuer: Option<String>,
    ) -> Result<Self, DevIssuerError> {
        if !listen.ip().is_loopback() {
            return Err(DevIssuerError::NotLoopback(listen));
        }
        Self::bind(listen, issuer).await
    }

    /// Starts an issuer on any address, loopback or not. Anyone who reaches it can mint
    /// tokens it signs: the caller warns (`dev-issuer --allow-non-loopback`).
    pub async fn start_on_any_address(listen: SocketAddr) -> Result<Self, DevIssuerError> {
        Self::bind(listen, None).await
    }

    async fn bind(listen: SocketAddr, issuer: Option<String>) -> Result<Self, DevIssuerError> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|error| DevIssuerError::Bind(listen, error))?;
        let address = listener
            .local_addr()
            .map_err(|error| DevIssuerError::Bind(listen, error))?;
        let issuer = issuer.unwrap_or_else(|| format!("http://{address}"));
        let state = Arc::new(IssuerState {
            issuer,
            published: Mutex::new(vec![
                Arc::new(SigningKey::generate(SigningKeyKind::Rsa, "rsa-1".into())?),
                Arc::new(SigningKey::generate(SigningKeyKind::Ec, "ec-1".into())?),
            ]),
            unpublished: Mutex::new(Vec::new()),
            jwks_fetches: AtomicU64::new(0),
            discovery_fetches: AtomicU64::new(0),
            fail_jwks: AtomicBool::new(false),
            garbage_jwks: AtomicBool::new(false),
            jwks_delay_ms: AtomicU64::new(0),
            cache_control: Mutex::new(None),
            next_kid: AtomicU64::new(2),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/token", get(token_endpoint))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            address,
            state,
            task,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.state.issuer
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/jwks", self.base_url())
    }

    /// Signs `claims` with the newest published key of `kind`.
    pub fn mint(&self, kind: SigningKeyKind, claims: &Value) -> Result<String, DevIssuerError> {
        let key = self.newest_key(kind)?;
        sign_token(&key, claims, None)
    }

    /// Signs with the newest key of `kind` and the JOSE header `typ` given (None: no `typ`), as
    /// an IdP marks its ID tokens (`JWT`), RFC 9068 access tokens (`at+jwt`) or other tokens.
    pub fn mint_with_typ(
        &self,
        kind: SigningKeyKind,
        claims: &Value,
        typ: Option<&str>,
    ) -> Result<String, DevIssuerError> {
        let key = self.newest_key(kind)?;
        sign_token_typed(&key, claims, None, typ)
    }

    /// Signs with the newest key of `kind` but writes `kid` into the header.
    pub fn mint_with_kid(
        &self,
        kind: SigningKeyKind,
        claims: &Value,
        kid: &str,
    ) -> Result<String, DevIssuerError> {
        let key = self.newest_key(kind)?;
        sign_token(&key, claims, Some(kid))
    }

    fn newest_key(&self, kind: SigningKeyKind) -> Result<Arc<SigningKey>, DevIssuerError> {
        newest_key(&self.state, kind).ok_or(DevIssuerError::NoKey(kind))
    }

    /// Signs with a fresh key that is not published (a forger's key, or a key the IdP has
    /// yet to publish). Returns the token and the key id; `publish` later makes it valid.
    pub fn mint_with_unpublished_key(
        &self,
        kind: SigningKeyKind,
        claims: &Value,
    ) -> Result<(String, String), DevIssuerError> {
        let kid = format!(
            "key-{}",
            self.state.next_kid.fetch_add(1, Ordering::Relaxed)
        );
        let key = Arc::new(SigningKey::generate(kind, kid.clone())?);
        let token = sign_token(&key, claims, None)?;
        lock(&self.state.unpublished).push(key);
        Ok((token, kid))
    }

    /// Publishes an unpublished key (the IdP rotating in a new key).
    pub fn publish(&self, kid: &str) {
        let mut unpublished = lock(&self.state.unpublished);
        if let Some(index) = unpublished.iter().position(|key| key.kid == kid) {
            let key = unpublished.remove(index);
            lock(&self.state.published).push(key);
        }
    }

    /// Adds a new published key of `kind` and returns its kid.
    pub fn rotate(&self, kind: SigningKeyKind) -> Result<String, DevIssuerError> {
        let kid = format!(
            "key-{}",
            self.state.next_kid.fetch_add(1, Ordering::Relaxed)
        );
        lock(&self.state.published).push(Arc::new(SigningKey::generate(kind, kid.clone())?));
        Ok(kid)
    }

    /// Removes a key from the JWKS.
    pub fn remove_key(&self, kid: &str) {
        lock(&self.state.published).retain(|key| key.kid != kid);
    }

    pub fn set_jwks_failure(&self, fail: bool) {
        self.state.fail_jwks.store(fail, Ordering::Relaxed);
    }

    /// Makes the JWKS endpoint answer 200 with a body that is not a JWKS.
    pub fn set_jwks_garbage(&self, garbage: bool) {
        self.state.garbage_jwks.store(garbage, Ordering::Relaxed);
    }

    /// Makes the JWKS endpoint wait before answering.
    pub fn set_jwks_delay(&self, delay: std::time::Duration) {
        self.state
            .jwks_delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn set_cache_control(&self, value: Option<&str>) {
        *lock(&self.state.cache_control) = value.map(str::to_string);
    }

    pub fn jwks_fetches(&self) -> u64 {
        self.state.jwks_fetches.load(Ordering::Relaxed)
    }

    pub fn discovery_fetches(&self) -> u64 {
        self.state.discovery_fetches.load(Ordering::Relaxed)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn newest_key(state: &IssuerState, kind: SigningKeyKind) -> Option<Arc<SigningKey>> {
    lock(&state.published)
        .iter()
        .rev()
        .find(|key| key.kind() == kind)
        .cloned()
}

fn sign_token(
    key: &SigningKey,
    claims: &Value,
    kid_override: Option<&str>,
) -> Result<String, DevIssuerError> {
    sign_token_typed(key, claims, kid_override, Some("JWT"))
}

/// Signs with the given header `typ` (None: no typ member).
fn sign_token_typed(
    key: &SigningKey,
    claims: &Value,
    kid_override: Option<&str>,
    typ: Option<&str>,
) -> Result<String, DevIssuerError> {
    let alg = match key.kind() {
        SigningKeyKind::Rsa => "RS256",
        SigningKeyKind::Ec => "ES256",
    };
    let mut header = json!({"alg": alg, "kid": kid_override.unwrap_or(&key.kid)});
    if let Some(typ) = typ {
        header["typ"] = json!(typ);
    }
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = key.sign(signing_input.as_bytes())?;
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    ))
}

async fn discovery(
    State(state): State<Arc<IssuerState>>,
    headers: axum::http::HeaderMap,
) -> Response {
    state.discovery_fetches.fetch_add(1, Ordering::Relaxed);
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    axum::Json(json!({
        "issuer": state.issuer,
        "jwks_uri": format!("http://{host}/jwks"),
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
    }))
    .into_response()
}

async fn jwks(State(state): State<Arc<IssuerState>>) -> Response {
    state.jwks_fetches.fetch_add(1, Ordering::Relaxed);
    let delay = state.jwks_delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    if state.garbage_jwks.load(Ordering::Relaxed) {
        return (StatusCode::OK, "<html>maintenance</html>").into_response();
    }
    if state.fail_jwks.load(Ordering::Relaxed) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "failing on purpose").into_response();
    }
    let keys: Vec<Value> = lock(&state.published).iter().map(|key| key.jwk()).collect();
    let mut response = axum::Json(json!({"keys": keys})).into_response();
    if let Some(value) = lock(&state.cache_control).clone()
        && let Ok(value) = value.parse()
    {
        response.headers_mut().insert("cache-control", value);
    }
    response
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    sub: Option<String>,
    aud: Option<String>,
    groups: Option<String>,
    lifetime: Option<u64>,
}

/// `GET /token?sub=alice&aud=quay&groups=a,b&lifetime=3600`: a signed token for experiments.
async fn token_endpoint(
    State(state): State<Arc<IssuerState>>,
    Query(query): Query<TokenQuery>,
) -> Response {
    let now = crate::model::clock::unix_now();
    let claims = json!({
        "iss": state.issuer,
        "sub": query.sub.as_deref().unwrap_or("dev-user"),
        "preferred_username": query.sub.as_deref().unwrap_or("dev-user"),
        "aud": query.aud.as_deref().unwrap_or("quay"),
        "groups": query.groups.as_deref().map(|g| g.split(',').collect::<Vec<_>>()).unwrap_or_default(),
        "iat": now,
        "nbf": now,
        "exp": now + query.lifetime.unwrap_or(3600).min(86_400),
    });
    match newest_key(&state, SigningKeyKind::Rsa).map(|key| sign_token(&key, &claims, None)) {
        Some(Ok(token)) => (StatusCode::OK, format!("{token}\n")).into_response(),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "no signing key").into_response(),
    }
}

/// A quay-authz configuration that trusts `issuer` (used by the quickstart).
pub fn quickstart_config(issuer: &DevIssuer) -> String {
    format!(
        r#"# Written by `quay-authz dev-issuer` for the quickstart. FOR LOCAL TESTING ONLY.
listen:
  grpc: 127.0.0.1:9191
  http: 127.0.0.1:9090
  admin: 127.0.0.1:9192
quay:
  service: localhost:8000
  realm: http://localhost:8000/v2/auth
# No real Quay stands behind the quickstart to handle Basic auth or its own tokens, so
# requests without a token from the dev issuer are refused here (production default: passthrough).
unauthenticated: deny
issuers:
  - name: dev
    issuer: {iss}
    allow_insecure_http: true   # the development issuer serves plain HTTP on loopback
    audiences: [quay]
    algorithms: [RS256, ES256]
rules:
  - name: acme-developers
    issuers: [dev]
    when: {{groups_any: [acme-developers]}}
    grant: ["repository:acme/app:pull,push", "repo:read on acme/*"]
  - name: team-roles
    issuers: [dev]
    grant_from_groups:
      pattern: '^quay\.(?P<ns>[a-z0-9_]+)\.(?P<role>read|write|admin)$'
      grant: ["repo:{{role}} on {{ns}}/*"]
"#,
        iss = issuer.issuer()
    )
}
