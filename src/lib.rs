//! quay-authz: an Envoy external-authorization service that lets OIDC tokens (Microsoft Entra
//! ID v1/v2, GitHub Actions, Keycloak, any OIDC issuer) reach Quay's API and registry.
//!
//! The tree reads as the pipeline of one Check (README, "Layout"):
//!
//! ```text
//! authn::extract ─► route ─► authn (verify, keys from jwks, token_cache) ─► policy ─► check::respond
//!                    └──────────────── check::pipeline runs them, in order ───────────────┘
//! ```
//!
//! Dependencies point one way, down this list, and `scripts/dev/module_graph.py` (run by
//! `scripts/test.sh`) fails on a cycle:
//! - `model`: the shared vocabulary (permissions, identities, decisions); imports nothing of ours;
//! - `tls`: certificate and key loading for the listeners and the key fetcher; nothing of ours;
//! - `config`: the YAML contract (`config::raw`, a leaf) compiled once into the runtime `Config`;
//! - `route`: Quay's route table (knows no identity, no policy);
//! - `policy`: rules → grants (sees only `model` and `config::raw`);
//! - `jwks`: key fetching and caching; `authn`: token extraction and verification (no rules);
//! - `bridge`: the identity bridge (signing keys, templates, minting; `bridge::keys` and
//!   `bridge::template` are leaves `config` compiles with);
//! - `store`: token exchange's shared state (live tokens, revocations, mint counters), in memory
//!   or in Redis;
//! - `metrics`; `check`: the pipeline, the response, audit and explain;
//! - `exchange`: the RFC 8693 token-exchange endpoint's logic (request, subject token verified
//!   by `check`'s pipeline, policy, mint by `bridge`, `store`); only `server` (and `cli`)
//!   reach it;
//! - `server`: gRPC, HTTP, admin API and reload — it calls `check`, never the reverse;
//! - `dev` (cargo feature `dev`): the development issuer and upstream and the bench tooling,
//!   never reached from the serving path and not built into the container image.

pub mod authn;
pub mod bridge;
pub mod check;
pub mod config;
#[cfg(feature = "dev")]
pub mod dev;
pub mod exchange;
pub mod jwks;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod route;
pub mod server;
pub mod store;
pub mod tls;
