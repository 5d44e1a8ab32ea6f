//! Authentication: from the request to a verified identity, knowing no rules.
//!
//! `extract` takes the request's facts and its bearer token; `identify` parses the JWS, finds
//! the issuer, verifies the signature with a key from `jwks` and checks the claims into an
//! `Identity`; `token_cache` lets a repeated token skip that work; `exchanged` verifies a
//! token of our own token exchange with the bridge's keys. `check::pipeline` calls them in
//! that order.

pub mod exchanged;
pub mod extract;
pub mod identify;
pub mod token_cache;
