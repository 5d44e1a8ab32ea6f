//! The configuration exactly as written. Field names here are the user-facing contract.
//!
//! A leaf: it imports nothing else of this crate, so `policy` (which compiles rules from it)
//! and `config` (which compiles the rest) can both depend on it without a cycle.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use serde::Serialize;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Document {
    #[serde(default)]
    pub listen: Listen,
    pub quay: Quay,
    #[serde(default)]
    pub unauthenticated: Unauthenticated,
    #[serde(default)]
    pub headers: Headers,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub jwks: Jwks,
    #[serde(default)]
    pub paths: Paths,
    /// The identity bridge: quay-authz as an OIDC provider Quay trusts, signing the tokens
    /// `upstream: exchange` issuers hand to Quay. Absent: off.
    pub bridge: Option<Bridge>,
    pub issuers: Vec<Issuer>,
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub audit: Audit,
    /// On SIGTERM or SIGINT, how long Checks in flight may take to finish before the
    /// process exits anyway.
    #[serde(default = "default_shutdown_grace_seconds")]
    pub shutdown_grace_seconds: u64,
}

fn default_shutdown_grace_seconds() -> u64 {
    10
}

/// The audit log: one event per decision (target `audit`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Audit {
    /// Fraction of allow events written, from 0 to 1. Denies are always written. The choice
    /// follows a hash of Envoy's `x-request-id`, so every replica picks the same requests.
    pub allow_sample_rate: f64,
}

impl Default for Audit {
    fn default() -> Self {
        Self {
            allow_sample_rate: 1.0,
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    pub grpc: String,
    pub http: String,
    pub admin: String,
    /// TLS for the gRPC listener (ext_authz Check and health). Absent: plaintext gRPC.
    /// The HTTP (metrics, probes) and admin listeners stay plaintext either way.
    pub grpc_tls: Option<GrpcTls>,
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            grpc: "0.0.0.0:9191".into(),
            http: "0.0.0.0:9090".into(),
            admin: "127.0.0.1:9192".into(),
            grpc_tls: None,
        }
    }
}

/// The gRPC listener's certificate, key and optional client CA, as PEM files. Their
/// contents are re-read every few seconds: a rotated certificate serves new connections
/// without a restart, and files that cannot be used keep the previous one serving.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrpcTls {
    /// PEM certificate chain, the server's own certificate first (a Kubernetes TLS
    /// Secret's `tls.crt`).
    pub cert_file: String,
    /// PEM private key of the first certificate: PKCS#8, PKCS#1 (RSA) or SEC1 (EC)
    /// (`tls.key`).
    pub key_file: String,
    /// PEM bundle of CAs that issue client certificates. When set, every client must
    /// present a certificate issued by one of them (mutual TLS); when absent, clients
    /// are not asked for a certificate.
    pub client_ca_file: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Quay {
    /// `service` in Docker challenges and registry tokens (Quay's SERVER_HOSTNAME).
    pub service: String,
    /// The Docker token realm clients are sent to (`https://quay.example.com/v2/auth`).
    pub realm: String,
}

#[derive(Debug, Deserialize, JsonSchema, Serialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Unauthenticated {
    /// Requests with no bearer JWT from a configured issuer go on to Quay, which applies
    /// its own authentication (Basic, its OAuth tokens, session cookies).
    #[default]
    Passthrough,
    Deny,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Headers {
    /// Prefix of the identity headers set on allow (and always stripped from requests).
    pub prefix: String,
    /// Strip `Authorization` before the request reaches Quay.
    pub remove_authorization: bool,
}

impl Default for Headers {
    fn default() -> Self {
        Self {
            prefix: "x-quay-authz-".into(),
            remove_authorization: false,
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Longest bearer token inspected; longer ones are refused unread.
    pub max_token_bytes: usize,
    /// Verified tokens remembered (0 disables the cache).
    pub token_cache_entries: usize,
    /// Estimated bytes the verified-token cache may hold, whatever the number of entries (0
    /// disables the cache). The default, 64 MiB, fits the shipped Kubernetes memory limit
    /// (256 MiB) with room to spare.
    pub token_cache_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_token_bytes: 16 * 1024,
            token_cache_entries: 100_000,
            token_cache_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Jwks {
    /// Key-set lifetime when the IdP sends no `Cache-Control: max-age`.
    pub default_ttl_seconds: u64,
    /// `Cache-Control: max-age` is clamped to at least this.
    pub min_ttl_seconds: u64,
    /// `Cache-Control: max-age` is clamped to at most this.
    pub max_ttl_seconds: u64,
    /// An unknown `kid` refetches a key set at most once per this interval.
    pub min_refetch_interval_seconds: u64,
    /// Key sets are refreshed at least this often, whatever `Cache-Control: max-age`
    /// says, so a key the IdP removes stops validating within it.
    pub max_refresh_interval_seconds: u64,
    /// Per discovery or JWKS fetch.
    pub fetch_timeout_seconds: u64,
    /// Larger discovery or JWKS documents are refused.
    pub max_response_bytes: usize,
    /// Keys kept per JWKS.
    pub max_keys: usize,
    /// How long keys keep serving after refreshes start failing.
    pub stale_limit_seconds: u64,
    /// PEM bundle of CA certificates trusted for discovery and JWKS fetches in addition
    /// to the system's roots (an internal IdP, a TLS-inspecting corporate proxy).
    pub ca_file: Option<String>,
    /// HTTP proxy for discovery and JWKS fetches (`http://proxy.example.com:3128`, or
    /// `https://`; credentials as `http://user:password@host:port`). When set, the
    /// proxy environment variables are ignored.
    pub proxy: Option<String>,
    /// Hosts fetched without `proxy`: names (`sso.example.com`, `.example.com` for a
    /// domain and its subdomains), IP addresses or CIDR ranges. Only with `proxy`.
    pub no_proxy: Vec<String>,
    /// Honour `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (or their lowercase
    /// forms) when `proxy` is not set; default true, as curl and Go do. false: connect
    /// directly whatever the environment says.
    // Absent and true mean the same (the environment is honoured), but only an explicit
    // true contradicts `proxy`; so the field stays optional and the schema (and the README
    // table generated from it) shows the effective default.
    #[schemars(default = "proxy_from_environment_default")]
    pub proxy_from_environment: Option<bool>,
}

fn proxy_from_environment_default() -> Option<bool> {
    Some(true)
}

impl Default for Jwks {
    fn default() -> Self {
        Self {
            default_ttl_seconds: 3600,
            min_ttl_seconds: 300,
            max_ttl_seconds: 86_400,
            min_refetch_interval_seconds: 30,
            max_refresh_interval_seconds: 600,
            fetch_timeout_seconds: 5,
            max_response_bytes: 1024 * 1024,
            max_keys: 100,
            stale_limit_seconds: 86_400,
            ca_file: None,
            proxy: None,
            no_proxy: Vec::new(),
            proxy_from_environment: None,
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Paths {
    /// What happens to paths outside `/api/` and `/v2/` (UI, static files, `/oauth`).
    pub non_api: NonApi,
}

impl Default for Paths {
    fn default() -> Self {
        Self {
            non_api: NonApi::Passthrough,
        }
    }
}

/// quay-authz as one of Quay's OIDC login providers (README, "Identity bridge"). Discovery
/// (`{issuer}/.well-known/openid-configuration`) and the JWKS (`{issuer}/.well-known/jwks.json`)
/// are served on the HTTP listener, and so is the token-exchange endpoint when `exchange` is set.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Bridge {
    /// `iss` of bridge tokens and the base of the discovery and JWKS URLs Quay fetches
    /// (Quay's `OIDC_SERVER` is this plus `/`): `https://quay-authz.example.com`, or a path
    /// below the host. `http://` only for a Quay that runs with `DEBUGGING`.
    pub issuer: String,
    /// `aud` and `azp` of bridge tokens: the `CLIENT_ID` of Quay's login provider for quay-authz.
    pub audience: String,
    /// RSA private keys as PEM files (PKCS#8 or PKCS#1, 2048 bits or more). The last one signs;
    /// all are published, so adding a file rotates without refusing tokens signed before. The
    /// contents are re-read every few seconds; files that cannot be used keep the previous keys.
    pub signing_keys: Vec<String>,
    /// Lifetime of a bridge token, 60 to 3600 seconds. A token is reused for the same caller
    /// until 80 % of it has passed.
    #[serde(default = "default_bridge_token_lifetime_seconds")]
    pub token_lifetime_seconds: u64,
    /// Bridge tokens remembered for reuse (one per caller); 0 mints on every allowed request.
    #[serde(default = "default_bridge_mint_cache_entries")]
    pub mint_cache_entries: usize,
    /// The RFC 8693 token-exchange endpoint for automation (README, "Token exchange"). Absent: off.
    #[serde(default)]
    pub exchange: Option<Exchange>,
    /// Where the live exchanged tokens, the revocation list and the mint counters are kept:
    /// `memory` (one replica) or `redis://host:6379/0` (`rediss://` for TLS), required with
    /// more than one replica so a revocation on one holds on all.
    #[serde(default = "default_bridge_store")]
    pub store: String,
}

/// `bridge.exchange`: trade an identity provider's token for a scoped token of quay-authz's
/// own (RFC 8693).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Exchange {
    /// Path of the endpoint on the HTTP listener (`POST`, form-encoded).
    #[serde(default = "default_exchange_path")]
    pub path: String,
    /// Longest lifetime a client may ask for with `requested_lifetime`, 60 to 3600 seconds
    /// (Quay accepts SSO tokens of at most an hour).
    #[serde(default = "default_exchange_max_lifetime_seconds")]
    pub max_lifetime_seconds: u64,
    /// Lifetime when the client does not ask for one (at most `max_lifetime_seconds`).
    #[serde(default = "default_exchange_default_lifetime_seconds")]
    pub default_lifetime_seconds: u64,
    /// Exchanges one principal may make per minute, counted across replicas through the
    /// store; a leaked CI token cannot mint without bound.
    #[serde(default = "default_exchange_mints_per_principal_per_minute")]
    pub mints_per_principal_per_minute: u64,
}

fn default_exchange_path() -> String {
    "/oauth2/token".into()
}

fn default_exchange_max_lifetime_seconds() -> u64 {
    3600
}

fn default_exchange_default_lifetime_seconds() -> u64 {
    900
}

fn default_exchange_mints_per_principal_per_minute() -> u64 {
    60
}

fn default_bridge_store() -> String {
    "memory".into()
}

fn default_bridge_token_lifetime_seconds() -> u64 {
    300
}

fn default_bridge_mint_cache_entries() -> usize {
    10_000
}

#[derive(Debug, Deserialize, JsonSchema, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NonApi {
    Passthrough,
    Deny,
}

#[derive(Debug, Deserialize, JsonSchema, Serialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    #[default]
    Oidc,
    Entra,
    GithubActions,
}

/// `tenants: [a, b]` or `tenants: any`.
#[derive(Debug, Deserialize, JsonSchema, Clone)]
#[serde(untagged)]
pub enum Tenants {
    List(Vec<String>),
    Keyword(String),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Issuer {
    pub name: String,
    #[serde(default)]
    pub preset: Preset,
    pub issuer: Option<String>,
    pub tenants: Option<Tenants>,
    #[serde(default)]
    pub audiences: Vec<String>,
    pub algorithms: Option<Vec<String>>,
    pub leeway_seconds: Option<u64>,
    pub username_claims: Option<Vec<String>>,
    pub groups_claims: Option<Vec<String>>,
    #[serde(default)]
    pub default_groups: Vec<String>,
    #[serde(default)]
    pub required_claims: BTreeMap<String, serde_json::Value>,
    pub required: Option<bool>,
    pub discovery: Option<String>,
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// Accept tokens that say they are not access tokens (an ID token's `nonce`, a `typ`
    /// other than JWT/at+jwt). Only for an IdP that marks its access tokens so.
    #[serde(default)]
    pub accept_id_tokens: bool,
    /// What Quay receives once a request with this issuer's token is allowed: the caller's
    /// token (`forward`), a bridge token quay-authz signs (`exchange`, needs `bridge:`), or no
    /// `Authorization` at all (`strip`).
    #[serde(default)]
    pub upstream: Upstream,
    /// `upstream: exchange` only: the bridge token's `sub`, which Quay keys its user by and so
    /// must name one principal forever. Literal text with `{claims.NAME}` placeholders; values
    /// are percent-encoded outside `[A-Za-z0-9._~-]`. Default per preset: entra
    /// `entra:{claims.tid}:{claims.oid}`, github-actions
    /// `github:{claims.repository_owner_id}:{claims.repository_id}`, oidc `oidc:{claims.sub}`.
    pub subject: Option<String>,
    /// `upstream: exchange` only: the bridge token's `preferred_username`, the name Quay gives a
    /// new user. Must render to a Quay username (a-z, 0-9, `_` or `-` between them), else the
    /// request is denied (`bridge_identity_invalid`); `{claims.NAME|slug}` turns `acme/app` into
    /// `acme-app`. Default per preset: entra `{claims.oid}`, github-actions
    /// `gh-{claims.repository_owner_id}-{claims.repository_id}`, oidc `{claims.sub|slug}`.
    pub username: Option<String>,
    /// `upstream: exchange` only: the bridge token's `email` (e.g. `{claims.email}`); absent, no
    /// email. `email_verified` is true only when the caller's token says `email_verified: true`.
    pub email: Option<String>,
}

/// What Quay receives from an allowed request (README, "Identity bridge").
#[derive(Debug, Deserialize, JsonSchema, Serialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Upstream {
    /// The caller's token, unchanged: for IdPs Quay trusts itself (Quay ≥ 3.18 with Entra).
    #[default]
    Forward,
    /// A short-lived token quay-authz signs as one of Quay's OIDC login providers.
    Exchange,
    /// No `Authorization`: only the identity headers (upstreams that trust the mesh).
    Strip,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    #[serde(default)]
    pub issuers: Vec<String>,
    #[serde(default)]
    pub when: When,
    #[serde(default)]
    pub grant: Vec<String>,
    pub grant_from_groups: Option<GroupGrant>,
}

#[derive(Debug, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct When {
    #[serde(default)]
    pub groups_any: Vec<String>,
    #[serde(default)]
    pub groups_all: Vec<String>,
    /// claim name → value, list of values (any of), or glob (`refs/heads/*`).
    #[serde(default)]
    pub claims: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Tenant ids the rule trusts, or `any`. A rule for a multi-tenant issuer
    /// (`tenants: any`) must say one or the other.
    pub tenants: Option<Tenants>,
    #[serde(default)]
    pub clients: Vec<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupGrant {
    pub pattern: String,
    pub grant: Vec<String>,
}
