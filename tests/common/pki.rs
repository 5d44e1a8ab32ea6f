#![allow(dead_code)]
//! Throwaway certificate authorities for TLS tests: generated per test run with rcgen (ECDSA
//! P-256), written to a temporary directory, never committed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// quay-authz's Kubernetes Service name in `deploy/envoy/envoy-mtls.yaml`.
pub const SERVICE_NAME: &str = "quay-authz.quay.svc.cluster.local";

/// A certificate authority that issues server and client certificates.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate with its private key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("self-signed CA"),
        }
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A server certificate with common name `name` for `localhost`, 127.0.0.1 and the
    /// Service name `deploy/envoy/envoy-mtls.yaml` expects.
    pub fn server(&self, name: &str) -> Leaf {
        self.leaf(
            name,
            &["localhost", "127.0.0.1", SERVICE_NAME],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate with common name `name` (Envoy's identity, say).
    pub fn client(&self, name: &str) -> Leaf {
        self.leaf(name, &[name], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(&self, name: &str, alt_names: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        let alt_names: Vec<String> = alt_names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(alt_names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// Server files as `listen.grpc_tls` names them, in a directory of their own.
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

impl ServerFiles {
    pub fn write(dir: &Path, leaf: &Leaf, client_ca: Option<&TestCa>) -> ServerFiles {
        let files = ServerFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            client_ca: dir.join("ca.crt"),
        };
        files.replace(leaf);
        if let Some(ca) = client_ca {
            std::fs::write(&files.client_ca, ca.cert_pem()).expect("write ca.crt");
        }
        files
    }

    /// Overwrites the certificate and key (a rotation).
    pub fn replace(&self, leaf: &Leaf) {
        std::fs::write(&self.cert, &leaf.cert_pem).expect("write tls.crt");
        std::fs::write(&self.key, &leaf.key_pem).expect("write tls.key");
    }

    /// The `listen.grpc_tls` block for these files, with or without the client CA.
    pub fn yaml(&self, mtls: bool) -> String {
        let mut yaml = format!(
            "  grpc_tls:\n    cert_file: {}\n    key_file: {}\n",
            self.cert.display(),
            self.key.display()
        );
        if mtls {
            yaml.push_str(&format!(
                "    client_ca_file: {}\n",
                self.client_ca.display()
            ));
        }
        yaml
    }
}

/// A rustls client configuration trusting `ca`, presenting `identity` when given, speaking h2.
pub fn client_config(ca: &TestCa, identity: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).expect("trust the test CA");
    let builder = rustls::ClientConfig::builder_with_provider(quay_authz::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![leaf.der.clone()],
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("client key"),
            )
            .expect("client identity"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

pub fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").expect("server name")
}

/// A fresh RSA-2048 private key (PKCS#8 PEM) written to `dir/name`: a bridge signing key.
pub fn rsa_key_file(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
    let path = dir.join(name);
    std::fs::write(&path, pair.serialize_pem()).expect("write key");
    path
}
