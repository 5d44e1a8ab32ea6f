#![allow(dead_code)]
//! quay-authz itself, started in process on ephemeral ports, and a real gRPC client for it.

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use quay_authz::config::Config;
use quay_authz::server::RunningServer;
use tonic::transport::Channel;

pub struct TestService {
    pub running: RunningServer,
    pub client: AuthorizationClient<Channel>,
}

impl TestService {
    /// Starts quay-authz with `config_yaml` (its `listen` section is replaced by loopback
    /// port 0); waits until ready unless `wait_ready` is false.
    pub async fn start(config_yaml: &str, wait_ready: bool) -> TestService {
        let running = start_running("", config_yaml).await;
        let client = AuthorizationClient::connect(format!("http://{}", running.grpc_addr))
            .await
            .expect("gRPC client connects");
        let service = TestService { running, client };
        if wait_ready {
            service.wait_ready().await;
        }
        service
    }

    pub async fn wait_ready(&self) {
        for _ in 0..200 {
            if self.running.service.ready() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "quay-authz did not become ready: {}",
            self.http_get("/readyz").await.1
        );
    }

    pub async fn check(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> CheckResponse {
        self.client
            .clone()
            .check(check_request(method, path, headers))
            .await
            .expect("Check answers")
            .into_inner()
    }

    pub async fn check_bearer(&self, method: &str, path: &str, token: &str) -> CheckResponse {
        let authorization = format!("Bearer {token}");
        self.check(method, path, &[("authorization", &authorization)])
            .await
    }

    /// Sends one Check per token, all at once, and gives each one's reason code in order.
    pub async fn check_bearers_concurrently(
        &self,
        method: &str,
        path: &str,
        tokens: Vec<String>,
    ) -> Vec<String> {
        let checks: Vec<_> = tokens
            .into_iter()
            .map(|token| {
                let mut client = self.client.clone();
                let request = check_request(
                    method,
                    path,
                    &[("authorization", &format!("Bearer {token}"))],
                );
                tokio::spawn(async move {
                    client
                        .check(request)
                        .await
                        .map(|response| decision(response.get_ref()).1)
                })
            })
            .collect();
        let mut reasons = Vec::new();
        for check in checks {
            reasons.push(check.await.expect("task").expect("Check answers"));
        }
        reasons
    }

    pub async fn http_get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("http://{}{path}", self.running.http_addr))
            .await
            .expect("HTTP answers");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }
}

/// Starts quay-authz with `config_yaml` on loopback port 0, with `listen_extra` (lines indented
/// under `listen:`, such as a `grpc_tls:` block) added to its `listen` section. For listeners
/// `TestService`'s plaintext client cannot reach; `wait_until_ready` waits for keys.
pub async fn start_running(listen_extra: &str, config_yaml: &str) -> RunningServer {
    let text = format!(
        "listen:\n  grpc: 127.0.0.1:0\n  http: 127.0.0.1:0\n  admin: 127.0.0.1:0\n{listen_extra}{config_yaml}"
    );
    let config = Config::parse(&text, "test config").unwrap_or_else(|e| panic!("{e}"));
    quay_authz::server::start(config)
        .await
        .expect("server starts")
}

/// Starts quay-authz with `config_yaml` and its HTTP listener on `http_port` (a port another
/// component was configured with first, such as the bridge's issuer URL in Quay's config).
pub async fn start_with_http_port(http_port: u16, config_yaml: &str) -> TestService {
    let text = format!(
        "listen:\n  grpc: 127.0.0.1:0\n  http: 127.0.0.1:{http_port}\n  admin: 127.0.0.1:0\n{config_yaml}"
    );
    let config = Config::parse(&text, "test config").unwrap_or_else(|e| panic!("{e}"));
    let running = quay_authz::server::start(config)
        .await
        .expect("server starts");
    let client = AuthorizationClient::connect(format!("http://{}", running.grpc_addr))
        .await
        .expect("gRPC client connects");
    let service = TestService { running, client };
    service.wait_ready().await;
    service
}

/// Waits until `running` has the keys of its required issuers (a hang guard of 10 s).
pub async fn wait_until_ready(running: &RunningServer) {
    for _ in 0..400 {
        if running.service.ready() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("quay-authz did not become ready");
}

pub fn check_request(method: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    host: "quay.example.com".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// The decision and reason a response carries in its dynamic metadata.
pub fn decision(response: &CheckResponse) -> (String, String) {
    let field = |name: &str| {
        response
            .dynamic_metadata
            .as_ref()
            .and_then(|m| m.fields.get(name))
            .and_then(|v| match &v.kind {
                Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) => {
                    Some(s.clone())
                }
                _ => None,
            })
            .unwrap_or_default()
    };
    (field("decision"), field("reason"))
}

/// HTTP status of a denial (200 for OK responses).
pub fn http_status(response: &CheckResponse) -> i32 {
    match &response.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => {
            denied.status.as_ref().map(|s| s.code).unwrap_or(403)
        }
        _ => 200,
    }
}

/// Headers a response sets (allow or deny).
pub fn response_header(response: &CheckResponse, name: &str) -> Option<String> {
    let headers = match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => &ok.headers,
        Some(HttpResponse::DeniedResponse(denied)) => &denied.headers,
        _ => return None,
    };
    headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == name)
        .map(|h| h.value.clone())
}

impl TestService {
    /// One series of `/metrics` (`name{labels}` exactly as rendered), 0 when it is absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.http_get("/metrics").await;
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }
}
