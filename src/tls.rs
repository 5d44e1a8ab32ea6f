//! TLS: the gRPC listener's server identity (optionally mTLS), reloaded when its files change,
//! and the trust and proxy settings of outbound discovery and JWKS fetches.
//!
//! Usage: `ServerTls::load(files)` reads and checks a certificate chain, its key and an optional
//! client CA bundle (configuration loading calls it, so a bad file rejects the configuration);
//! `ReloadingServerConfig::new(loaded)` holds the rustls `ServerConfig` behind an ArcSwap and
//! `watch` re-reads the files every few seconds, swapping in new material when their contents
//! change (a Kubernetes Secret rotation) and keeping the old one when the new files are bad;
//! `incoming(listener, identity)` turns a TCP listener into a stream of established TLS
//! connections for tonic's `serve_with_incoming`. Every handshake takes the configuration that
//! is current when it starts, so new connections see rotated certificates without a restart
//! while established ones keep theirs.
//!
//! Crypto is aws-lc-rs, passed explicitly, the provider reqwest already uses.

use std::collections::hash_map::DefaultHasher;
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::Stream;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How often the certificate files are re-read: Kubernetes takes a minute or more to project
/// a rotated Secret, so a few seconds adds nothing noticeable.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// A client that opens a connection and sends nothing cannot hold a handshake task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The crypto provider for every TLS configuration built here.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

// === Errors ===

/// Why a certificate, key or CA file cannot be used. Messages name the file and never print
/// key material. `field` is the configuration field that names the file (`cert_file`, ...).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        field: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{} is not valid PEM: {detail}", path.display())]
    BadPem {
        field: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("{} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate { field: &'static str, path: PathBuf },
    #[error(
        "{} holds no PEM private key (expected -----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)",
        path.display()
    )]
    NoPrivateKey { path: PathBuf },
    #[error(
        "the private key in {} does not match the certificate in {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("{} cannot be used: {detail}", path.display())]
    Unusable {
        field: &'static str,
        path: PathBuf,
        detail: String,
    },
}

impl TlsError {
    /// The configuration field naming the offending file.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Read { field, .. }
            | Self::BadPem { field, .. }
            | Self::NoCertificate { field, .. }
            | Self::Unusable { field, .. } => field,
            Self::NoPrivateKey { .. } | Self::KeyMismatch { .. } => "key_file",
        }
    }
}

// === Reading files ===

/// Certificates from a PEM file (a chain or a CA bundle); at least one.
pub fn read_certificates(
    path: &Path,
    field: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path, field)?;
    parse_certificates(&bytes, path, field)
}

fn read(path: &Path, field: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        field,
        path: path.to_path_buf(),
        source,
    })
}

fn parse_certificates(
    bytes: &[u8],
    path: &Path,
    field: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::BadPem {
            field,
            path: path.to_path_buf(),
            detail: error.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate {
            field,
            path: path.to_path_buf(),
        });
    }
    Ok(certificates)
}

// === impl ServerTls ===

/// The files of the gRPC listener's identity, as configured in `listen.grpc_tls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// When set, clients must present a certificate issued by one of these CAs (mTLS).
    pub client_ca_file: Option<PathBuf>,
}

/// A checked server TLS configuration and the fingerprint of the file contents it came from.
#[derive(Clone)]
pub struct ServerTls {
    pub files: ServerTlsFiles,
    pub config: Arc<ServerConfig>,
    fingerprint: u64,
}

/// The files only: the configuration holds the private key, which debug output must not show.
impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// The raw contents of the three files, read once so the fingerprint and the configuration
/// describe the same bytes.
struct FileContents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl FileContents {
    fn read(files: &ServerTlsFiles) -> Result<Self, TlsError> {
        Ok(Self {
            cert: read(&files.cert_file, "cert_file")?,
            key: read(&files.key_file, "key_file")?,
            client_ca: match &files.client_ca_file {
                Some(path) => Some(read(path, "client_ca_file")?),
                None => None,
            },
        })
    }

    /// Contents, not modification times: rewritten files of equal size within one timestamp
    /// tick still count as a change, and a touched but unchanged file does not.
    fn fingerprint(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        (&self.cert, &self.key, &self.client_ca).hash(&mut hasher);
        hasher.finish()
    }
}

impl ServerTls {
    /// Reads and checks the files: the chain parses, the key matches its first certificate,
    /// the client CA bundle holds usable certificates.
    pub fn load(files: &ServerTlsFiles) -> Result<Self, TlsError> {
        Self::build(files, &FileContents::read(files)?)
    }

    fn build(files: &ServerTlsFiles, contents: &FileContents) -> Result<Self, TlsError> {
        let chain = parse_certificates(&contents.cert, &files.cert_file, "cert_file")?;
        let key = PrivateKeyDer::from_pem_slice(&contents.key).map_err(|error| match error {
            rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey {
                path: files.key_file.clone(),
            },
            other => TlsError::BadPem {
                field: "key_file",
                path: files.key_file.clone(),
                detail: other.to_string(),
            },
        })?;
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError::Unusable {
                field: "cert_file",
                path: files.cert_file.clone(),
                detail: error.to_string(),
            })?;
        let builder = match (&files.client_ca_file, &contents.client_ca) {
            (Some(path), Some(bundle)) => {
                let unusable = |detail: String| TlsError::Unusable {
                    field: "client_ca_file",
                    path: path.clone(),
                    detail,
                };
                let mut roots = RootCertStore::empty();
                for certificate in parse_certificates(bundle, path, "client_ca_file")? {
                    roots
                        .add(certificate)
                        .map_err(|error| unusable(error.to_string()))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|error| unusable(error.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|error| server_identity_error(error, files))?;
        // Envoy and gRPC clients speak HTTP/2; advertising it lets ALPN-checking clients agree.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            files: files.clone(),
            config: Arc::new(config),
            fingerprint: contents.fingerprint(),
        })
    }
}

/// Names the file to blame when rustls refuses a chain and key.
fn server_identity_error(error: rustls::Error, files: &ServerTlsFiles) -> TlsError {
    match error {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            key: files.key_file.clone(),
            cert: files.cert_file.clone(),
        },
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            TlsError::Unusable {
                field: "cert_file",
                path: files.cert_file.clone(),
                detail: error.to_string(),
            }
        }
        other => TlsError::Unusable {
            field: "key_file",
            path: files.key_file.clone(),
            detail: other.to_string(),
        },
    }
}

// === impl ReloadingServerConfig ===

/// The current server configuration, replaced when the files change and the new contents
/// are good.
pub struct ReloadingServerConfig {
    files: ServerTlsFiles,
    current: ArcSwap<ServerConfig>,
    /// Fingerprint of the contents `current` was built from.
    applied: Mutex<u64>,
}

/// What one look at the files found.
#[derive(Debug, PartialEq, Eq)]
pub enum Refresh {
    Unchanged,
    Applied,
}

impl ReloadingServerConfig {
    pub fn new(loaded: ServerTls) -> Self {
        Self {
            files: loaded.files,
            current: ArcSwap::new(loaded.config),
            applied: Mutex::new(loaded.fingerprint),
        }
    }

    /// The configuration new handshakes use.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Re-reads the files and swaps in new material if their contents changed. On an error
    /// the previous configuration stays and the files are tried again on the next call (a
    /// rotation that writes the certificate before the key is briefly inconsistent).
    pub fn refresh(&self) -> Result<Refresh, TlsError> {
        let contents = FileContents::read(&self.files)?;
        let fingerprint = contents.fingerprint();
        let mut applied = self
            .applied
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if fingerprint == *applied {
            return Ok(Refresh::Unchanged);
        }
        let loaded = ServerTls::build(&self.files, &contents)?;
        self.current.store(loaded.config);
        *applied = fingerprint;
        Ok(Refresh::Applied)
    }

    /// Polls the files until `stop` turns true, logging each swap and each new reason for
    /// refusing the files (once, not every poll).
    pub async fn watch(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut last_refusal: Option<String> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RELOAD_INTERVAL) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
            match self.refresh() {
                Ok(refresh) => {
                    last_refusal = None;
                    if refresh == Refresh::Applied {
                        tracing::info!(
                            cert_file = %self.files.cert_file.display(),
                            "gRPC TLS certificate reloaded; new connections use it"
                        );
                    }
                }
                Err(error) => {
                    let refusal = format!("listen.grpc_tls.{}: {error}", error.field());
                    if last_refusal.as_ref() != Some(&refusal) {
                        tracing::error!(
                            "gRPC TLS files cannot be used, the previous certificate keeps serving: {refusal}"
                        );
                        last_refusal = Some(refusal);
                    }
                }
            }
        }
    }
}

// === impl TlsConnection ===

/// An established server-side TLS connection, as tonic serves it.
pub struct TlsConnection(tokio_rustls::server::TlsStream<TcpStream>);

impl Connected for TlsConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

// === Accepting ===

/// Established TLS connections from `listener`. Handshakes run concurrently (a slow client
/// does not hold up the others) with a deadline; one that fails (no client certificate, a
/// certificate from another CA, not TLS at all) is logged and dropped and never reaches gRPC.
/// The accept loop ends when tonic drops the stream (shutdown).
pub fn incoming(
    listener: TcpListener,
    identity: Arc<ReloadingServerConfig>,
) -> impl Stream<Item = Result<TlsConnection, Infallible>> + Send + 'static {
    let (established, receiver) = mpsc::channel::<TlsConnection>(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = established.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(%error, "gRPC listener cannot accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(identity.current());
            let established = established.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(connection)) => {
                        let _ = established.send(TlsConnection(connection)).await;
                    }
                    Ok(Err(error)) => log_refused_handshake(peer, &error),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|connection| (Ok(connection), receiver))
    })
}

/// A refused certificate is worth an operator's eye (a misconfigured Envoy sidecar); a TCP
/// probe that closes without a handshake is not.
fn log_refused_handshake(peer: std::net::SocketAddr, error: &io::Error) {
    let tls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls_error {
        Some(tls_error) => tracing::warn!(%peer, error = %tls_error, "TLS handshake refused"),
        None => tracing::debug!(%peer, %error, "TLS handshake did not complete"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed server certificate and its key, as PEM.
    fn identity(name: &str) -> (String, String) {
        let certified = rcgen::generate_simple_self_signed(vec![name.to_string()])
            .unwrap_or_else(|error| panic!("generate a certificate: {error}"));
        (certified.cert.pem(), certified.signing_key.serialize_pem())
    }

    fn write(path: &Path, contents: &str) {
        std::fs::write(path, contents).unwrap_or_else(|error| panic!("write: {error}"));
    }

    #[test]
    fn refresh_applies_good_files_and_keeps_serving_through_bad_ones() {
        let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("tempdir: {error}"));
        let files = ServerTlsFiles {
            cert_file: dir.path().join("tls.crt"),
            key_file: dir.path().join("tls.key"),
            client_ca_file: None,
        };
        let (cert, key) = identity("first");
        write(&files.cert_file, &cert);
        write(&files.key_file, &key);
        let reloading = ReloadingServerConfig::new(ServerTls::load(&files).expect("loads"));
        let first = reloading.current();
        assert_eq!(reloading.refresh().expect("same files"), Refresh::Unchanged);

        // Rotation half done: the new certificate with the old key.
        let (second_cert, second_key) = identity("second");
        write(&files.cert_file, &second_cert);
        let error = reloading.refresh().expect_err("mismatched pair refused");
        assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error}");
        assert!(Arc::ptr_eq(&first, &reloading.current()));

        write(&files.key_file, "not a key\n");
        let error = reloading.refresh().expect_err("garbage key refused");
        assert_eq!(error.field(), "key_file");
        assert!(Arc::ptr_eq(&first, &reloading.current()));

        std::fs::remove_file(&files.cert_file).expect("remove");
        let error = reloading.refresh().expect_err("missing file refused");
        assert!(
            matches!(
                error,
                TlsError::Read {
                    field: "cert_file",
                    ..
                }
            ),
            "{error}"
        );
        assert!(Arc::ptr_eq(&first, &reloading.current()));

        write(&files.cert_file, &second_cert);
        write(&files.key_file, &second_key);
        assert_eq!(reloading.refresh().expect("good pair"), Refresh::Applied);
        assert!(!Arc::ptr_eq(&first, &reloading.current()));
        assert_eq!(reloading.refresh().expect("same files"), Refresh::Unchanged);
    }
}
