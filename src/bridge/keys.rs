//! The bridge's RSA signing keys: PEM files, the last one signs and all are published, each
//! named by its RFC 7638 thumbprint. Re-read like the gRPC TLS files: new contents apply
//! without a restart, and files that cannot be used keep the previous keys signing.
//!
//! A leaf (imports nothing of ours) so `config` can load the keys when it validates a file.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

/// Why a key file cannot be used. Names the file, never its contents.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeyError {
    #[error("no signing key configured")]
    Empty,
    #[error("cannot read {path}: {detail}")]
    Read { path: String, detail: String },
    #[error("{path} holds no PEM private key")]
    NoKey { path: String },
    #[error("{path} is not an RSA private key of 2048 bits or more ({detail})")]
    NotRsa { path: String, detail: String },
}

/// One signing key and its public half as a JWK.
pub struct SigningKey {
    /// RFC 7638 thumbprint of the public key.
    pub kid: String,
    pair: RsaKeyPair,
    n: String,
    e: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    fn from_pem(bytes: &[u8], path: &Path) -> Result<Self, KeyError> {
        let name = path.display().to_string();
        let der = PrivateKeyDer::from_pem_slice(bytes)
            .map_err(|_| KeyError::NoKey { path: name.clone() })?;
        let pair = match &der {
            PrivateKeyDer::Pkcs8(key) => RsaKeyPair::from_pkcs8(key.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(key) => RsaKeyPair::from_der(key.secret_pkcs1_der()),
            _ => {
                return Err(KeyError::NotRsa {
                    path: name,
                    detail: "an EC key".into(),
                });
            }
        }
        .map_err(|error| KeyError::NotRsa {
            path: name.clone(),
            detail: error.to_string(),
        })?;
        if pair.public_modulus_len() < 256 {
            return Err(KeyError::NotRsa {
                path: name,
                detail: "shorter than 2048 bits".into(),
            });
        }
        let public = pair.public_key();
        let n = public.modulus().big_endian_without_leading_zero().to_vec();
        let e = public.exponent().big_endian_without_leading_zero().to_vec();
        Ok(Self {
            kid: rsa_thumbprint(&n, &e),
            n: URL_SAFE_NO_PAD.encode(&n),
            e: URL_SAFE_NO_PAD.encode(&e),
            pair,
        })
    }

    /// RS256 (RSASSA-PKCS1-v1_5 with SHA-256, RFC 7518 §3.3) over `message`.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, aws_lc_rs::error::Unspecified> {
        let mut signature = vec![0u8; self.pair.public_modulus_len()];
        self.pair.sign(
            &RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            message,
            &mut signature,
        )?;
        Ok(signature)
    }

    /// The public JWK as Quay's OIDC client reads it (`kty` RSA, `kid`, `n`, `e`).
    pub fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.kid,
            "n": self.n,
            "e": self.e,
        })
    }
}

/// RFC 7638 §3: SHA-256 over the required members in lexicographic order, no whitespace,
/// base64url without padding.
pub fn rsa_thumbprint(n: &[u8], e: &[u8]) -> String {
    let canonical = format!(
        r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(e),
        URL_SAFE_NO_PAD.encode(n)
    );
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        canonical.as_bytes(),
    ))
}

/// The keys of one reading of the files, in configured order.
#[derive(Debug)]
pub struct KeySet {
    pub keys: Vec<Arc<SigningKey>>,
    /// A hash of the files' contents: changes when any key changes (mint-cache entries of
    /// another generation are minted again).
    pub generation: u64,
}

impl KeySet {
    /// Reads and checks every file.
    pub fn load(paths: &[PathBuf]) -> Result<Self, KeyError> {
        let contents = read_all(paths)?;
        Self::build(paths, &contents)
    }

    fn build(paths: &[PathBuf], contents: &[Vec<u8>]) -> Result<Self, KeyError> {
        if paths.is_empty() {
            return Err(KeyError::Empty);
        }
        let keys = paths
            .iter()
            .zip(contents)
            .map(|(path, bytes)| SigningKey::from_pem(bytes, path).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            keys,
            generation: fingerprint(contents),
        })
    }

    /// The key that signs: the last configured (a new key is added last, published beside the
    /// old ones, which keep verifying what they signed until it expires).
    pub fn signing(&self) -> &Arc<SigningKey> {
        // `build` refuses an empty list.
        &self.keys[self.keys.len() - 1]
    }

    /// `{"keys": [...]}` (RFC 7517 §5): every key, so tokens signed before a rotation verify.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": self.keys.iter().map(|key| key.jwk()).collect::<Vec<_>>() })
    }
}

fn read_all(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>, KeyError> {
    paths
        .iter()
        .map(|path| {
            std::fs::read(path).map_err(|error| KeyError::Read {
                path: path.display().to_string(),
                detail: error.to_string(),
            })
        })
        .collect()
}

fn fingerprint(contents: &[Vec<u8>]) -> u64 {
    let mut hasher = DefaultHasher::new();
    contents.hash(&mut hasher);
    hasher.finish()
}

/// The key set in force, re-read by [`SigningKeys::refresh`].
#[derive(Debug)]
pub struct SigningKeys {
    paths: Vec<PathBuf>,
    current: ArcSwap<KeySet>,
    /// Serialises refreshes.
    refreshing: Mutex<()>,
}

impl SigningKeys {
    pub fn new(paths: Vec<PathBuf>, loaded: KeySet) -> Self {
        Self {
            paths,
            current: ArcSwap::from_pointee(loaded),
            refreshing: Mutex::new(()),
        }
    }

    pub fn current(&self) -> Arc<KeySet> {
        self.current.load_full()
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Re-reads the files; swaps in new keys when their contents changed and all of them are
    /// usable. Ok(true) when new keys apply. On an error the previous keys keep signing.
    pub fn refresh(&self) -> Result<bool, KeyError> {
        let _guard = self
            .refreshing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let contents = read_all(&self.paths)?;
        if fingerprint(&contents) == self.current.load().generation {
            return Ok(false);
        }
        let loaded = KeySet::build(&self.paths, &contents)?;
        self.current.store(Arc::new(loaded));
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7638 §3.1's example key and its thumbprint.
    #[test]
    fn thumbprint_matches_rfc_7638_example() {
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let n = URL_SAFE_NO_PAD.decode(n).unwrap();
        assert_eq!(
            rsa_thumbprint(&n, &[1, 0, 1]),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    pub(crate) fn rsa_pem() -> String {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        pair.serialize_pem()
    }

    #[test]
    fn refresh_applies_new_keys_and_keeps_the_old_ones_through_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("a.pem");
        std::fs::write(&first, rsa_pem()).unwrap();
        let paths = vec![first.clone()];
        let keys = SigningKeys::new(paths.clone(), KeySet::load(&paths).unwrap());
        let kid = keys.current().signing().kid.clone();
        assert!(!keys.refresh().unwrap(), "unchanged files change nothing");

        std::fs::write(&first, "not a key").unwrap();
        assert!(keys.refresh().is_err());
        assert_eq!(
            keys.current().signing().kid,
            kid,
            "a bad file keeps the old key"
        );

        std::fs::write(&first, rsa_pem()).unwrap();
        assert!(keys.refresh().unwrap());
        assert_ne!(keys.current().signing().kid, kid);
    }

    #[test]
    fn the_last_key_signs_and_all_are_published() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<_> = ["a.pem", "b.pem"]
            .iter()
            .map(|name| {
                let path = dir.path().join(name);
                std::fs::write(&path, rsa_pem()).unwrap();
                path
            })
            .collect();
        let set = KeySet::load(&paths).unwrap();
        let jwks = set.jwks();
        let kids: Vec<_> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|key| key["kid"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(kids.len(), 2);
        assert_eq!(set.signing().kid, kids[1]);
        assert!(KeySet::load(&[]).is_err());
    }
}
