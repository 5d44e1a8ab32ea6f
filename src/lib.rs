//! quay-authz: an Envoy external-authorization service that lets OIDC tokens (Microsoft Entra
//! ID v1/v2, GitHub Actions, Keycloak, any OIDC issuer) reach Quay's API and registry.
//!
//! The pipeline for one Check, a module per stage: `extract` (the request and its bearer
//! token) → `route` (what Quay would demand) → `identify` (verify the token, with keys from
//! `jwks`) → `policy` (grants) → `respond` (Envoy's CheckResponse). `pipeline` runs them in
//! order; `server` wires gRPC and HTTP; `config` compiles the YAML once.

pub mod admin;
pub mod audit;
pub mod bench;
pub mod config;
pub mod decision;
pub mod dev_issuer;
pub mod dev_upstream;
pub mod env_overrides;
pub mod explain;
pub mod extract;
pub mod identify;
pub mod jwks;
pub mod metrics;
pub mod permission;
pub mod pipeline;
pub mod policy;
pub mod respond;
pub mod route;
pub mod server;
pub mod tls;
pub mod token_cache;
