//! TLS and mTLS on the gRPC listener, certificate rotation without a restart, and JWKS fetches
//! that trust a custom CA: real handshakes on loopback with certificates made per run.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::issuer::*;
use common::pki::*;
use common::service::{check_request, decision, start_running, wait_until_ready};
use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use quay_authz::config::Config;
use quay_authz::dev::issuer::{DevIssuer, SigningKeyKind};
use quay_authz::server::RunningServer;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const PULL: &str = "/v2/acme/app/manifests/latest";

/// The loopback issuer, a CA, and quay-authz serving gRPC over TLS with a certificate from
/// that CA, requiring client certificates from it too when `mtls`.
struct Fixture {
    issuer: DevIssuer,
    ca: TestCa,
    /// The certificate quay-authz serves first.
    server: Leaf,
    files: ServerFiles,
    running: RunningServer,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn start(mtls: bool) -> Fixture {
        let issuer = start_issuer().await;
        let ca = TestCa::new("quay-authz test CA");
        let dir = tempfile::tempdir().expect("tempdir");
        let server = ca.server("quay-authz first");
        let files = ServerFiles::write(dir.path(), &server, mtls.then_some(&ca));
        let running = start_running(&files.yaml(mtls), &config_for(&issuer, "")).await;
        wait_until_ready(&running).await;
        Fixture {
            issuer,
            ca,
            server,
            files,
            running,
            _dir: dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.running.grpc_addr
    }

    /// A client trusting the fixture's CA, presenting a certificate from it as `envoy`.
    fn envoy(&self) -> Arc<rustls::ClientConfig> {
        client_config(&self.ca, Some(&self.ca.client("envoy")))
    }

    fn token(&self) -> String {
        self.issuer
            .mint(SigningKeyKind::Rsa, &dev_claims(&self.issuer, &["readers"]))
            .expect("mint")
    }
}

/// A gRPC channel to `addr` over TLS with `tls` (tonic dials through our connector, so the
/// client side is plain rustls too).
async fn channel(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Channel, tonic::transport::Error> {
    let connector = TlsConnector::from(tls);
    Endpoint::from_static("http://localhost")
        .connect_timeout(Duration::from_secs(10))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            async move {
                let tcp = TcpStream::connect(addr).await?;
                let stream = connector.connect(localhost(), tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

/// A pull Check with a token the configuration allows, over a new TLS connection; Err says
/// why the connection or the call failed.
async fn check_over_tls(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    token: &str,
) -> Result<CheckResponse, String> {
    let channel = channel(addr, tls)
        .await
        .map_err(|error| format!("connect: {error:?}"))?;
    let authorization = format!("Bearer {token}");
    AuthorizationClient::new(channel)
        .check(check_request(
            "GET",
            PULL,
            &[("authorization", &authorization)],
        ))
        .await
        .map(|response| response.into_inner())
        .map_err(|status| format!("Check: {status:?}"))
}

/// The first certificate the server presents on a new connection.
async fn served_certificate(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> CertificateDer<'static> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let stream = TlsConnector::from(tls)
        .connect(localhost(), tcp)
        .await
        .expect("TLS handshake");
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("server presents a certificate")
        .clone()
        .into_owned()
}

#[tokio::test]
async fn mtls_client_with_a_certificate_from_the_ca_is_served() {
    let fixture = Fixture::start(true).await;
    let tls = fixture.envoy();

    let response = check_over_tls(fixture.addr(), tls.clone(), &fixture.token())
        .await
        .expect("Check answers over mTLS");
    assert_eq!(decision(&response).0, "allow", "{response:?}");

    // Health over the same kind of connection; it turns SERVING shortly after readiness
    // (the reporter follows it), so poll with a hang guard.
    let mut health = HealthClient::new(channel(fixture.addr(), tls).await.expect("connect"));
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    let mut status = None;
    for _ in 0..400 {
        let answer = health
            .check(HealthCheckRequest {
                service: "envoy.service.auth.v3.Authorization".into(),
            })
            .await
            .expect("health answers over mTLS");
        status = Some(answer.into_inner().status);
        if status == Some(serving) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status, Some(serving), "health never turned SERVING");
    fixture.running.shutdown().await;
}

#[tokio::test]
async fn mtls_refuses_clients_without_a_certificate_or_with_one_from_another_ca() {
    let fixture = Fixture::start(true).await;
    let token = fixture.token();

    let anonymous = check_over_tls(fixture.addr(), client_config(&fixture.ca, None), &token).await;
    assert!(
        anonymous.is_err(),
        "a client without a certificate got an answer: {anonymous:?}"
    );

    let stranger_ca = TestCa::new("someone else's CA");
    let stranger = stranger_ca.client("envoy");
    // The client trusts the server (same CA) but presents a certificate from another CA.
    let foreign = check_over_tls(
        fixture.addr(),
        client_config(&fixture.ca, Some(&stranger)),
        &token,
    )
    .await;
    assert!(
        foreign.is_err(),
        "a client certificate from another CA was accepted: {foreign:?}"
    );

    // Plaintext gRPC on a TLS port gets nowhere either.
    let plaintext = Endpoint::from_shared(format!("http://{}", fixture.addr()))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(10))
        .connect()
        .await;
    if let Ok(channel) = plaintext {
        let answer = AuthorizationClient::new(channel)
            .check(check_request("GET", PULL, &[]))
            .await;
        assert!(answer.is_err(), "plaintext Check answered: {answer:?}");
    }

    // And the refusals did not disturb a proper client.
    let served = check_over_tls(fixture.addr(), fixture.envoy(), &token)
        .await
        .expect("a client with a certificate from the CA is served");
    assert_eq!(decision(&served).0, "allow");
    fixture.running.shutdown().await;
}

#[tokio::test]
async fn tls_without_client_ca_serves_clients_without_certificates() {
    let fixture = Fixture::start(false).await;
    let token = fixture.token();

    let response = check_over_tls(fixture.addr(), client_config(&fixture.ca, None), &token)
        .await
        .expect("Check answers over TLS without a client certificate");
    assert_eq!(decision(&response).0, "allow", "{response:?}");

    // A client that does not trust the server's CA refuses the server.
    let other = TestCa::new("unrelated CA");
    let distrustful = check_over_tls(fixture.addr(), client_config(&other, None), &token).await;
    assert!(distrustful.is_err(), "{distrustful:?}");
    fixture.running.shutdown().await;
}

#[tokio::test]
async fn rotated_certificate_files_serve_new_connections_without_a_restart() {
    let fixture = Fixture::start(true).await;
    let tls = fixture.envoy();
    let first = &fixture.server;
    assert_eq!(
        served_certificate(fixture.addr(), tls.clone()).await,
        first.der
    );

    // A connection made before the rotation keeps working after it.
    let established = channel(fixture.addr(), tls.clone()).await.expect("connect");

    let second = fixture.ca.server("quay-authz second");
    fixture.files.replace(&second);
    let mut served = None;
    // Hang guard only: the files are polled every couple of seconds.
    for _ in 0..300 {
        let certificate = served_certificate(fixture.addr(), tls.clone()).await;
        if certificate == second.der {
            served = Some(certificate);
            break;
        }
        assert_eq!(
            certificate, first.der,
            "neither the old nor the new certificate"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        served.is_some(),
        "the rotated certificate was not served within 30 s"
    );

    let token = fixture.token();
    let response = check_over_tls(fixture.addr(), tls, &token)
        .await
        .expect("Check answers on a new connection after the rotation");
    assert_eq!(decision(&response).0, "allow");
    let authorization = format!("Bearer {token}");
    let old = AuthorizationClient::new(established)
        .check(check_request(
            "GET",
            PULL,
            &[("authorization", &authorization)],
        ))
        .await
        .expect("the connection from before the rotation still answers");
    assert_eq!(decision(old.get_ref()).0, "allow");
    fixture.running.shutdown().await;
}

/// A configuration reload that names unusable certificate files is rejected whole; the
/// running listener keeps its certificate and keeps answering.
#[tokio::test]
async fn reload_naming_unusable_certificate_files_is_rejected() {
    let fixture = Fixture::start(true).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let garbage = dir.path().join("garbage.crt");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        format!(
            "listen:\n  grpc: 127.0.0.1:0\n  grpc_tls:\n    cert_file: {}\n    key_file: {}\n{}",
            garbage.display(),
            fixture.files.key.display(),
            config_for(&fixture.issuer, "")
        ),
    )
    .expect("write config");
    let error = fixture
        .running
        .service
        .reload(&path)
        .expect_err("unusable certificate rejected");
    assert!(
        error.to_string().contains("listen.grpc_tls.cert_file: "),
        "{error}"
    );
    assert_eq!(
        served_certificate(fixture.addr(), fixture.envoy()).await,
        fixture.server.der
    );
    let response = check_over_tls(fixture.addr(), fixture.envoy(), &fixture.token())
        .await
        .expect("Check still answers");
    assert_eq!(decision(&response).0, "allow");
    fixture.running.shutdown().await;
}

#[test]
fn unusable_certificate_files_are_configuration_errors() {
    let ca = TestCa::new("quay-authz test CA");
    let dir = tempfile::tempdir().expect("tempdir");
    let leaf = ca.server("quay-authz");
    let files = ServerFiles::write(dir.path(), &leaf, Some(&ca));
    let other = ca.server("another key");
    let mismatched = dir.path().join("other.key");
    std::fs::write(&mismatched, &other.key_pem).expect("write");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM at all\n").expect("write");
    let missing = dir.path().join("missing.crt");

    let base = "quay:\n  service: quay.example.com\n  realm: https://quay.example.com/v2/auth\nissuers:\n  - name: dev\n    issuer: https://sso.example.com\n    audiences: [quay]\n";
    let error = |cert: &std::path::Path, key: &std::path::Path, ca: &std::path::Path| {
        let text = format!(
            "listen:\n  grpc: 127.0.0.1:0\n  grpc_tls:\n    cert_file: {}\n    key_file: {}\n    client_ca_file: {}\n{base}",
            cert.display(),
            key.display(),
            ca.display()
        );
        match Config::parse(&text, "config.yaml") {
            Ok(_) => panic!("accepted cert {cert:?}, key {key:?}, CA {ca:?}"),
            Err(error) => error.to_string(),
        }
    };

    let message = error(&missing, &files.key, &files.client_ca);
    assert!(
        message.starts_with("config.yaml:4: listen.grpc_tls.cert_file: cannot read "),
        "{message}"
    );
    assert!(message.contains("missing.crt"), "{message}");

    let message = error(&garbage, &files.key, &files.client_ca);
    assert!(
        message.contains("config.yaml:4: listen.grpc_tls.cert_file: ")
            && message.contains("holds no PEM certificate"),
        "{message}"
    );

    let message = error(&files.cert, &garbage, &files.client_ca);
    assert!(
        message.contains("config.yaml:5: listen.grpc_tls.key_file: ")
            && message.contains("holds no PEM private key"),
        "{message}"
    );

    let message = error(&files.cert, &mismatched, &files.client_ca);
    assert!(
        message.contains("config.yaml:5: listen.grpc_tls.key_file: the private key in ")
            && message.contains("does not match the certificate in"),
        "{message}"
    );
    assert!(
        !message.contains("PRIVATE KEY-----"),
        "key material in an error: {message}"
    );

    let message = error(&files.cert, &files.key, &garbage);
    assert!(
        message.contains("config.yaml:6: listen.grpc_tls.client_ca_file: ")
            && message.contains("holds no PEM certificate"),
        "{message}"
    );

    let message = match Config::parse(
        &format!("jwks:\n  ca_file: {}\n{base}", garbage.display()),
        "config.yaml",
    ) {
        Ok(_) => panic!("garbage jwks.ca_file accepted"),
        Err(error) => error.to_string(),
    };
    assert!(
        message.contains("config.yaml:2: jwks.ca_file: ")
            && message.contains("holds no PEM certificate"),
        "{message}"
    );

    // The files themselves are fine: the same configuration with them loads.
    let text = format!("listen:\n  grpc: 127.0.0.1:0\n{}{base}", files.yaml(true));
    let config = Config::parse(&text, "config.yaml").unwrap_or_else(|e| panic!("{e}"));
    assert!(config.listen.grpc_tls.is_some());
}

// === JWKS over HTTPS with a custom CA ===

/// A loopback HTTPS server answering every request with `body` (a JWKS), with a certificate
/// from `ca`. HTTP/1.1 only, one request per connection: enough for a key fetch.
async fn https_jwks_server(ca: &TestCa, body: String) -> SocketAddr {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = ServerFiles::write(dir.path(), &ca.server("jwks.example"), None);
    let loaded = quay_authz::tls::ServerTls::load(&quay_authz::tls::ServerTlsFiles {
        cert_file: files.cert.clone(),
        key_file: files.key.clone(),
        client_ca_file: None,
    })
    .expect("server TLS files load");
    let mut config = (*loaded.config).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(tcp).await else {
                    return;
                };
                if request_line(&mut stream).await.is_none() {
                    return;
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// Reads an HTTP request head and returns its first line (`GET /keys HTTP/1.1`); None if the
/// connection ends first.
async fn request_line(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<String> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return None,
            Ok(read) => head.extend_from_slice(&buffer[..read]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    head.lines().next().map(str::to_string)
}

/// Configuration for the loopback issuer's tokens with keys served over HTTPS at `jwks`.
fn https_jwks_config(issuer: &DevIssuer, jwks: &str, jwks_section: &str) -> String {
    format!(
        r#"
quay:
  service: quay.example.com
  realm: https://quay.example.com/v2/auth
jwks:
  proxy_from_environment: false
{jwks_section}
issuers:
  - name: dev
    issuer: {iss}
    audiences: [quay]
    jwks_uri: {jwks}
    allow_insecure_http: true
rules:
  - name: dev-readers
    issuers: [dev]
    when: {{groups_any: [readers]}}
    grant: ["repository:acme/*:pull"]
"#,
        iss = issuer.issuer()
    )
}

#[tokio::test]
async fn jwks_fetch_trusts_the_configured_ca_bundle_and_only_then() {
    let issuer = start_issuer().await;
    let keys = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(issuer.jwks_url())
        .send()
        .await
        .expect("issuer serves its JWKS")
        .text()
        .await
        .expect("JWKS body");
    let ca = TestCa::new("corporate root CA");
    let addr = https_jwks_server(&ca, keys).await;
    let jwks = format!("https://127.0.0.1:{}/keys", addr.port());
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("corporate-ca.pem");
    std::fs::write(&bundle, ca.cert_pem()).expect("write bundle");
    let with_bundle = format!("  ca_file: {}", bundle.display());

    // The client as KeyStore builds it: the bundle makes the difference.
    let client = |section: &str| {
        let config = Config::parse(&https_jwks_config(&issuer, &jwks, section), "t")
            .unwrap_or_else(|e| panic!("{e}"));
        quay_authz::jwks::client::configure_fetch_client(
            reqwest::Client::builder().timeout(Duration::from_secs(10)),
            &config.jwks,
        )
        .expect("configure")
        .build()
        .expect("build")
    };
    let refused = client("").get(&jwks).send().await;
    let error = refused.expect_err("a server certificate from an unknown CA was trusted");
    assert!(error.is_connect(), "{error:?}");
    let fetched = client(&with_bundle)
        .get(&jwks)
        .send()
        .await
        .expect("the bundle's CA is trusted");
    assert_eq!(fetched.status(), 200);
    assert!(
        fetched.text().await.expect("body").contains("\"keys\""),
        "not a JWKS"
    );

    // The whole service: with the bundle, keys load and a token is allowed.
    let running = start_running("", &https_jwks_config(&issuer, &jwks, &with_bundle)).await;
    wait_until_ready(&running).await;
    let mut client = AuthorizationClient::connect(format!("http://{}", running.grpc_addr))
        .await
        .expect("connect");
    let token = issuer
        .mint(SigningKeyKind::Rsa, &dev_claims(&issuer, &["readers"]))
        .expect("mint");
    let authorization = format!("Bearer {token}");
    let response = client
        .check(check_request(
            "GET",
            PULL,
            &[("authorization", &authorization)],
        ))
        .await
        .expect("Check answers")
        .into_inner();
    assert_eq!(decision(&response).0, "allow", "{response:?}");
    running.shutdown().await;
}

/// `jwks.proxy` carries fetches whatever the environment says, except to hosts in `no_proxy`,
/// which are fetched directly.
#[tokio::test]
async fn explicit_proxy_carries_fetches_except_to_no_proxy_hosts() {
    let proxy = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let proxy_addr = proxy.local_addr().expect("address");
    let requests = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let recorded = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = proxy.accept().await {
            let first_line = request_line(&mut tcp).await.unwrap_or_default();
            recorded.lock().expect("record").push(first_line);
            let _ = tcp
                .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let text = format!(
        "jwks:\n  proxy: http://{proxy_addr}\n  no_proxy: [127.0.0.1]\nquay:\n  service: quay.example.com\n  realm: https://quay.example.com/v2/auth\nissuers:\n  - name: dev\n    issuer: https://sso.example.com\n    audiences: [quay]\n"
    );
    let config = Config::parse(&text, "t").unwrap_or_else(|e| panic!("{e}"));
    let client = quay_authz::jwks::client::configure_fetch_client(
        reqwest::Client::builder().timeout(Duration::from_secs(10)),
        &config.jwks,
    )
    .expect("configure")
    .build()
    .expect("build");

    let proxied = client
        .get("https://jwks.quay-authz.invalid/keys")
        .send()
        .await;
    assert!(
        proxied.is_err(),
        "the proxy refused the tunnel: {proxied:?}"
    );
    let direct = client
        .get(format!("https://127.0.0.1:{closed_port}/keys"))
        .send()
        .await;
    assert!(direct.is_err(), "nothing listens there: {direct:?}");
    assert_eq!(
        *requests.lock().expect("records"),
        ["CONNECT jwks.quay-authz.invalid:443 HTTP/1.1"]
    );
}
