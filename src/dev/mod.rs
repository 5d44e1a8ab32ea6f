//! Development and measuring tools, behind the cargo feature `dev` (on by default for the
//! quickstart and the tests; the container image is built without it):
//! - `issuer`: an OIDC issuer on loopback that mints tokens for anyone — never in production;
//! - `upstream`: an HTTP upstream that echoes the request, for the quickstart;
//! - `bench`: the gRPC load generator, the no-op ext_authz server and the report writers.
//!
//! Nothing in the serving path imports this module.

pub mod bench;
pub mod issuer;
pub mod upstream;
