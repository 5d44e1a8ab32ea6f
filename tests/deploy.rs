//! `deploy/` checked against the service it deploys: every YAML parses; the Kubernetes objects
//! and the Helm chart probe the paths the server serves, on the ports its configuration
//! listens on, locked down; the shipped configurations pass `check-config`; the Istio provider
//! and policy agree with each other and with the Service; the alert rules and the Grafana
//! dashboard are valid PromQL (checked and unit-tested by a real `promtool`) naming metrics
//! a running quay-authz exports; the Dockerfile runs what the manifests expect.
//!
//! What is not checked here: the Helm templates are not rendered (no `helm` is available from
//! the package registries the test machines reach), and the Dockerfile is not built (no
//! container engine runs on them).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use quay_authz::config::Config;
use serde_yaml::Value;

use common::issuer::{config_for, entra_token, start_issuer};
use common::service::TestService;
use common::tools::{require_tool, run_tool};

/// Metrics that dashboards and alerts may name before this branch exports them: added by a
/// concurrent change (the `ops` branch). Once that is merged a running quay-authz exports them
/// and this list should be emptied; until then each entry says where the name comes from.
const ANNOUNCED_METRICS: &[(&str, &str)] = &[(
    "quay_authz_jwks_key_set_age_seconds",
    "key-set age gauge, exported at scrape time by the ops branch",
)];

// === Files ===

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|err| panic!("read {path}: {err}"))
}

/// Every document of a (multi-document) YAML file, empty documents dropped.
fn documents(path: &str) -> Vec<Value> {
    parse_documents(&read(path), path)
}

fn parse_documents(text: &str, origin: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|document| {
            serde::Deserialize::deserialize(document)
                .unwrap_or_else(|err| panic!("{origin} is not valid YAML: {err}"))
        })
        .filter(|value: &Value| !value.is_null())
        .collect()
}

/// Files below `dir` (relative to the repository), recursively, as repository-relative paths.
fn files_under(dir: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![repo(dir)];
    while let Some(dir) = pending.pop() {
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|err| panic!("list {}: {err}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let relative = path
                    .strip_prefix(repo(""))
                    .expect("below the repository")
                    .to_string_lossy()
                    .into_owned();
                found.push(relative);
            }
        }
    }
    found.sort();
    found
}

/// `value[key1][key2]…`, or `Value::Null` where any step is missing.
fn at<'a>(value: &'a Value, keys: &[&str]) -> &'a Value {
    keys.iter()
        .try_fold(value, |value, key| value.get(*key))
        .unwrap_or(&Value::Null)
}

fn text<'a>(value: &'a Value, keys: &[&str]) -> &'a str {
    at(value, keys).as_str().unwrap_or_default()
}

fn list<'a>(value: &'a Value, keys: &[&str]) -> &'a [Value] {
    at(value, keys)
        .as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn require_promtool() -> Option<PathBuf> {
    require_tool(
        "promtool",
        "run scripts/setup.sh (Debian package `prometheus`)",
    )
}

// === YAML ===

#[test]
fn every_yaml_under_deploy_parses() {
    let yaml: Vec<String> = files_under("deploy")
        .into_iter()
        .filter(|path| path.ends_with(".yaml") || path.ends_with(".yml"))
        // Helm templates are Go templates that render to YAML; they are checked against
        // values.yaml in `helm_chart_matches_its_values` instead.
        .filter(|path| !path.contains("/templates/"))
        .collect();
    for expected in [
        "deploy/envoy/envoy.yaml",
        "deploy/kubernetes/deployment.yaml",
        "deploy/istio/mesh-config.yaml",
        "deploy/helm/quay-authz/values.yaml",
        "deploy/prometheus/alerts.yaml",
    ] {
        assert!(
            yaml.contains(&expected.to_string()),
            "{expected} not found in {yaml:?}"
        );
    }
    // Benchmark templates (deploy/envoy/bench) carry `@NAME@` placeholders that their script
    // fills in; a number stands in for each, which is valid wherever a port or a string goes.
    let placeholder = regex::Regex::new(r"@[A-Z][A-Z0-9_]*@").expect("regex");
    for path in &yaml {
        let text = placeholder.replace_all(&read(path), "0").into_owned();
        assert!(
            !parse_documents(&text, path).is_empty(),
            "{path} holds no YAML document"
        );
    }
}

// === Kubernetes ===

/// The objects of deploy/kubernetes, by kind (one of each).
struct Manifests {
    objects: BTreeMap<String, Value>,
    namespace: String,
}

impl Manifests {
    /// Loads what kustomization.yaml lists, checking that it lists every manifest there is.
    fn load() -> Manifests {
        let kustomization = documents("deploy/kubernetes/kustomization.yaml").remove(0);
        let resources: BTreeSet<String> = list(&kustomization, &["resources"])
            .iter()
            .map(|resource| format!("deploy/kubernetes/{}", resource.as_str().unwrap_or("")))
            .collect();
        let on_disk: BTreeSet<String> = files_under("deploy/kubernetes")
            .into_iter()
            .filter(|path| !path.ends_with("kustomization.yaml"))
            .collect();
        assert_eq!(
            resources, on_disk,
            "kustomization.yaml's resources and the manifests in deploy/kubernetes differ"
        );
        let mut objects = BTreeMap::new();
        for path in &resources {
            for object in documents(path) {
                let kind = text(&object, &["kind"]).to_string();
                assert!(!kind.is_empty(), "{path}: an object without kind");
                assert!(
                    objects.insert(kind.clone(), object).is_none(),
                    "two {kind} objects"
                );
            }
        }
        Manifests {
            objects,
            namespace: text(&kustomization, &["namespace"]).to_string(),
        }
    }

    fn get(&self, kind: &str) -> &Value {
        self.objects
            .get(kind)
            .unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes"))
    }

    fn container(&self) -> &Value {
        let containers = list(
            self.get("Deployment"),
            &["spec", "template", "spec", "containers"],
        );
        assert_eq!(containers.len(), 1, "one container expected");
        &containers[0]
    }

    /// The configuration in the ConfigMap, validated.
    fn config(&self) -> Config {
        let yaml = text(self.get("ConfigMap"), &["data", "config.yaml"]);
        Config::parse(yaml, "deploy/kubernetes/configmap.yaml config.yaml")
            .unwrap_or_else(|err| panic!("{err}"))
    }
}

/// The container port named `name`.
fn container_port(container: &Value, name: &str) -> u64 {
    list(container, &["ports"])
        .iter()
        .find(|port| text(port, &["name"]) == name)
        .and_then(|port| at(port, &["containerPort"]).as_u64())
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

fn labels(value: &Value) -> BTreeMap<String, String> {
    value
        .as_mapping()
        .map(|mapping| {
            mapping
                .iter()
                .map(|(key, value)| {
                    (
                        key.as_str().unwrap_or_default().to_string(),
                        value.as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether every label of `selector` is in `labels`, and there is at least one.
fn selects(selector: &Value, target: &Value) -> bool {
    let selector = labels(selector);
    let target = labels(target);
    !selector.is_empty() && selector.iter().all(|(k, v)| target.get(k) == Some(v))
}

#[test]
fn deployment_probes_ports_and_security_match_the_config() {
    let manifests = Manifests::load();
    let config = manifests.config();
    let deployment = manifests.get("Deployment");
    let container = manifests.container();

    assert_eq!(at(deployment, &["spec", "replicas"]).as_u64(), Some(2));

    // The ports are the configuration's `listen` ports; the admin API is loopback-only and not
    // a container port.
    let grpc = container_port(container, "grpc");
    let http = container_port(container, "http-metrics");
    assert_eq!(
        grpc,
        u64::from(config.listen.grpc.port()),
        "grpc port vs listen.grpc"
    );
    assert_eq!(
        http,
        u64::from(config.listen.http.port()),
        "http port vs listen.http"
    );
    assert!(
        config.listen.admin.ip().is_loopback(),
        "listen.admin must stay on loopback"
    );
    let admin = u64::from(config.listen.admin.port());
    assert!(
        list(container, &["ports"])
            .iter()
            .all(|port| at(port, &["containerPort"]).as_u64() != Some(admin)),
        "the admin port {admin} must not be a container port"
    );
    assert!(!config.listen.grpc.ip().is_loopback() && !config.listen.http.ip().is_loopback());

    // Probes: readiness on /readyz, liveness on /healthz, both on the HTTP listener.
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        assert_eq!(
            text(container, &[probe, "httpGet", "path"]),
            path,
            "{probe}"
        );
        let port = text(container, &[probe, "httpGet", "port"]);
        assert_eq!(container_port(container, port), http, "{probe} port {port}");
    }

    // Locked down.
    let pod_security = at(deployment, &["spec", "template", "spec", "securityContext"]);
    let security = at(container, &["securityContext"]);
    assert_eq!(at(pod_security, &["runAsNonRoot"]).as_bool(), Some(true));
    assert_ne!(at(pod_security, &["runAsUser"]).as_u64(), Some(0));
    assert_eq!(
        text(pod_security, &["seccompProfile", "type"]),
        "RuntimeDefault"
    );
    assert_eq!(at(security, &["runAsNonRoot"]).as_bool(), Some(true));
    assert_eq!(
        at(security, &["readOnlyRootFilesystem"]).as_bool(),
        Some(true)
    );
    assert_eq!(
        at(security, &["allowPrivilegeEscalation"]).as_bool(),
        Some(false)
    );
    assert_eq!(
        text(security, &["seccompProfile", "type"]),
        "RuntimeDefault"
    );
    let dropped = list(security, &["capabilities", "drop"]);
    assert!(
        dropped.iter().any(|cap| cap.as_str() == Some("ALL")),
        "{dropped:?}"
    );
    for bound in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                !at(container, &["resources", bound, resource]).is_null(),
                "resources.{bound}.{resource} is missing"
            );
        }
    }

    // The configuration: QUAY_AUTHZ_CONFIG names config.yaml in the directory the ConfigMap is
    // mounted at, as a whole directory (a subPath mount never sees updates: no hot reload).
    let config_env = list(container, &["env"])
        .iter()
        .find(|env| text(env, &["name"]) == "QUAY_AUTHZ_CONFIG")
        .map(|env| text(env, &["value"]))
        .expect("QUAY_AUTHZ_CONFIG is set");
    let volumes = list(deployment, &["spec", "template", "spec", "volumes"]);
    let config_map_name = text(manifests.get("ConfigMap"), &["metadata", "name"]);
    let volume = volumes
        .iter()
        .find(|volume| text(volume, &["configMap", "name"]) == config_map_name)
        .expect("a volume from the ConfigMap");
    let mount = list(container, &["volumeMounts"])
        .iter()
        .find(|mount| text(mount, &["name"]) == text(volume, &["name"]))
        .expect("the ConfigMap volume is mounted");
    assert!(
        at(mount, &["subPath"]).is_null(),
        "no subPath: it breaks hot reload"
    );
    assert_eq!(
        config_env,
        format!("{}/config.yaml", text(mount, &["mountPath"])),
        "QUAY_AUTHZ_CONFIG vs the ConfigMap mount"
    );
    let service_account = manifests.get("ServiceAccount");
    assert_eq!(
        text(
            deployment,
            &["spec", "template", "spec", "serviceAccountName"]
        ),
        text(service_account, &["metadata", "name"])
    );
}

#[test]
fn service_pdb_and_service_monitor_select_the_pods() {
    let manifests = Manifests::load();
    let config = manifests.config();
    let deployment = manifests.get("Deployment");
    let pod_labels = at(deployment, &["spec", "template", "metadata", "labels"]);
    assert!(selects(
        at(deployment, &["spec", "selector", "matchLabels"]),
        pod_labels
    ));

    let service = manifests.get("Service");
    assert!(selects(at(service, &["spec", "selector"]), pod_labels));
    let ports = list(service, &["spec", "ports"]);
    let port = |name: &str| {
        ports
            .iter()
            .find(|port| text(port, &["name"]) == name)
            .unwrap_or_else(|| panic!("no Service port {name}"))
    };
    // appProtocol grpc: Istio and Envoy speak HTTP/2 to the Check port.
    assert_eq!(text(port("grpc"), &["appProtocol"]), "grpc");
    assert_eq!(
        at(port("grpc"), &["port"]).as_u64(),
        Some(u64::from(config.listen.grpc.port()))
    );
    assert_eq!(
        at(port("http-metrics"), &["port"]).as_u64(),
        Some(u64::from(config.listen.http.port()))
    );
    for port in ports {
        let target = text(port, &["targetPort"]);
        container_port(manifests.container(), target);
    }
    assert_eq!(
        ports.len(),
        2,
        "only grpc and http-metrics: the admin API stays private"
    );

    let pdb = manifests.get("PodDisruptionBudget");
    assert!(selects(
        at(pdb, &["spec", "selector", "matchLabels"]),
        pod_labels
    ));
    let min_available = at(pdb, &["spec", "minAvailable"]).as_u64().unwrap_or(0);
    let replicas = at(deployment, &["spec", "replicas"]).as_u64().unwrap_or(0);
    assert!(
        (1..replicas).contains(&min_available),
        "minAvailable {min_available} with {replicas} replicas blocks every drain or none"
    );

    let monitor = manifests.get("ServiceMonitor");
    assert_eq!(text(monitor, &["apiVersion"]), "monitoring.coreos.com/v1");
    assert!(selects(
        at(monitor, &["spec", "selector", "matchLabels"]),
        at(service, &["metadata", "labels"])
    ));
    let endpoint = &list(monitor, &["spec", "endpoints"])[0];
    assert_eq!(text(endpoint, &["path"]), "/metrics");
    port(text(endpoint, &["port"]));
    // The alert rules and the dashboard select job="quay-authz".
    let job_label = text(monitor, &["spec", "jobLabel"]);
    assert_eq!(
        text(service, &["metadata", "labels", job_label]),
        "quay-authz"
    );

    assert_eq!(manifests.namespace, "quay");
}

/// Issue 10 item 7: Quay is reachable only through the proxy. The NetworkPolicy selects Quay's
/// pods (never quay-authz's own), is an Ingress policy, lets only the proxy's pods reach the
/// port Envoy's `quay` cluster sends to, and the chart ships the same policy by default.
#[test]
fn network_policy_lets_only_the_proxy_reach_quay() {
    let manifests = Manifests::load();
    let policy = manifests.get("NetworkPolicy");
    let quay_pods = at(policy, &["spec", "podSelector", "matchLabels"]);
    assert!(
        !labels(quay_pods).is_empty(),
        "an empty podSelector selects every pod"
    );
    let authz_pods = at(
        manifests.get("Deployment"),
        &["spec", "template", "metadata", "labels"],
    );
    assert!(
        !selects(quay_pods, authz_pods),
        "the policy must select Quay's pods, not quay-authz's"
    );
    let types: Vec<&str> = list(policy, &["spec", "policyTypes"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(types, ["Ingress"]);

    // Envoy's upstream port for Quay (deploy/envoy/envoy.yaml's `quay` cluster).
    let envoy = read("deploy/envoy/envoy.yaml");
    assert!(
        envoy.contains("port_value: 8080"),
        "the Envoy config moved Quay's port"
    );
    let ingress = list(policy, &["spec", "ingress"]);
    let rule_for = |port: u64| {
        ingress
            .iter()
            .filter(|rule| {
                list(rule, &["ports"])
                    .iter()
                    .any(|p| at(p, &["port"]).as_u64() == Some(port))
            })
            .collect::<Vec<_>>()
    };
    for port in [8080, 8443] {
        let rules = rule_for(port);
        assert_eq!(rules.len(), 1, "port {port}: one rule");
        let from = list(rules[0], &["from"]);
        assert_eq!(from.len(), 1, "port {port}: only the proxy");
        let proxy = at(&from[0], &["podSelector", "matchLabels"]);
        assert!(
            !labels(proxy).is_empty(),
            "port {port}: a proxy selector, not everyone"
        );
        assert!(!selects(proxy, authz_pods));
    }
    // Only the metrics port is open to every pod.
    for rule in ingress {
        if at(rule, &["from"]).is_null() {
            let ports: Vec<u64> = list(rule, &["ports"])
                .iter()
                .filter_map(|p| at(p, &["port"]).as_u64())
                .collect();
            assert_eq!(ports, [9091], "only Quay's metrics port is open to all");
        }
    }

    // The chart: on by default, with the manifest's selectors and ports.
    let values = documents(&format!("{CHART}/values.yaml")).remove(0);
    let chart = at(&values, &["networkPolicy"]);
    assert_eq!(at(chart, &["enabled"]).as_bool(), Some(true));
    assert_eq!(labels(at(chart, &["quayPodSelector"])), labels(quay_pods));
    let manifest_proxy = at(
        &list(rule_for(8080)[0], &["from"])[0],
        &["podSelector", "matchLabels"],
    );
    assert_eq!(
        labels(at(chart, &["proxyPodSelector"])),
        labels(manifest_proxy)
    );
    let chart_ports: Vec<u64> = list(chart, &["quayPorts"])
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(chart_ports, [8080, 8443]);
    let template = read(&format!("{CHART}/templates/networkpolicy.yaml"));
    assert!(template.contains("policyTypes: [Ingress]"));
}

/// The paths the manifests probe and scrape are served by a real quay-authz: 200 from
/// /healthz and /readyz (once ready) and /metrics, 404 from a path it does not serve.
#[tokio::test]
async fn probed_and_scraped_paths_are_served() {
    let manifests = Manifests::load();
    let container = manifests.container();
    let monitor = manifests.get("ServiceMonitor");
    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, ""), true).await;
    for path in [
        text(container, &["readinessProbe", "httpGet", "path"]),
        text(container, &["livenessProbe", "httpGet", "path"]),
        text(&list(monitor, &["spec", "endpoints"])[0], &["path"]),
    ] {
        let (status, body) = service.http_get(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
    }
    let (status, _) = service.http_get("/no-such-probe").await;
    assert_eq!(status, 404);
}

// === Shipped configurations ===

/// `quay-authz check-config` on `yaml`; returns its output.
fn check_config(yaml: &str, origin: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).expect("write config");
    run_tool(
        Path::new(env!("CARGO_BIN_EXE_quay-authz")),
        &["check-config", &path.to_string_lossy()],
        &format!("check-config on {origin}"),
    )
}

#[test]
fn configmap_config_passes_check_config() {
    let manifests = Manifests::load();
    let yaml = text(manifests.get("ConfigMap"), &["data", "config.yaml"]);
    let summary = check_config(yaml, "the ConfigMap's config.yaml");
    assert!(summary.contains("team-roles"), "{summary}");
    // Shipped as an example to copy: nothing check-config would warn about (GitHub rules pin
    // the owner by id, every super:user grant is narrowed).
    assert!(!summary.contains("warning:"), "{summary}");
}

// === Helm ===

const CHART: &str = "deploy/helm/quay-authz";

/// Every `.Values.a.b` path a template names.
fn values_paths(template: &str) -> BTreeSet<String> {
    let pattern = regex::Regex::new(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)").expect("regex");
    pattern
        .captures_iter(template)
        .map(|captures| captures[1].trim_start_matches('.').to_string())
        .collect()
}

#[test]
fn helm_chart_matches_its_values() {
    let chart = documents(&format!("{CHART}/Chart.yaml")).remove(0);
    assert_eq!(text(&chart, &["apiVersion"]), "v2");
    assert_eq!(text(&chart, &["name"]), "quay-authz");
    assert_eq!(text(&chart, &["appVersion"]), env!("CARGO_PKG_VERSION"));
    let values = documents(&format!("{CHART}/values.yaml")).remove(0);

    // The default configuration is plain data: it passes check-config, and the chart's ports
    // are its listen ports.
    let config_yaml = serde_yaml::to_string(at(&values, &["config"])).expect("serialize config");
    check_config(&config_yaml, "the chart's default config");
    let config = Config::parse(&config_yaml, "values.yaml config").expect("checked above");
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    assert_eq!(
        at(&values, &["ports", "grpc"]).as_u64(),
        Some(u64::from(config.listen.grpc.port()))
    );
    assert_eq!(
        at(&values, &["ports", "http"]).as_u64(),
        Some(u64::from(config.listen.http.port()))
    );
    assert!(config.listen.admin.ip().is_loopback());

    // Templates name only values that exist, and produce the objects deploy/kubernetes has.
    let templates = files_under(&format!("{CHART}/templates"));
    let mut kinds = BTreeSet::new();
    let mut used = 0;
    for path in &templates {
        let template = read(path);
        for value_path in values_paths(&template) {
            used += 1;
            let keys: Vec<&str> = value_path.split('.').collect();
            assert!(
                values.get(keys[0]).is_some() && (keys.len() == 1 || !at(&values, &keys).is_null()),
                "{path} uses .Values.{value_path}, which values.yaml does not define"
            );
        }
        for line in template.lines() {
            if let Some(kind) = line.strip_prefix("kind: ") {
                kinds.insert(kind.trim().to_string());
            }
        }
    }
    assert!(
        used > 0,
        "no .Values found in the templates: the check above saw nothing"
    );
    let expected: BTreeSet<String> = Manifests::load().objects.keys().cloned().collect();
    assert_eq!(kinds, expected, "the chart's kinds vs deploy/kubernetes");

    // The same probes and lock-down as the plain manifests (the template is not rendered here,
    // so this reads its text).
    let deployment = read(&format!("{CHART}/templates/deployment.yaml"));
    for needle in [
        "path: /readyz",
        "path: /healthz",
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        "drop: [\"ALL\"]",
        "type: RuntimeDefault",
        "name: QUAY_AUTHZ_CONFIG",
        "value: /etc/quay-authz/config.yaml",
        "mountPath: /etc/quay-authz",
    ] {
        assert!(
            deployment.contains(needle),
            "the chart's Deployment lacks `{needle}`"
        );
    }
    assert!(read(&format!("{CHART}/templates/service.yaml")).contains("appProtocol: grpc"));

    // No volume inside another (the TLS Secret beside the ConfigMap, not in it): a mount inside
    // a ConfigMap volume is not reliably remounted when the ConfigMap changes.
    let mounts: Vec<&str> = deployment
        .lines()
        .filter_map(|line| line.trim().strip_prefix("mountPath: "))
        .collect();
    assert!(mounts.len() >= 2, "{mounts:?}");
    for outer in &mounts {
        for inner in &mounts {
            assert!(
                !inner.starts_with(&format!("{outer}/")),
                "{inner} is mounted inside {outer}"
            );
        }
    }
}

// === Istio ===

/// The field names of Istio's MeshConfig.ExtensionProvider.EnvoyExternalAuthorizationGrpcProvider
/// and of its request body settings (istio/api mesh/v1alpha1/config.proto), in their YAML form.
const ISTIO_GRPC_PROVIDER_FIELDS: &[&str] = &[
    "service",
    "port",
    "timeout",
    "failOpen",
    "statusOnError",
    "includeRequestBodyInCheck",
];
const ISTIO_REQUEST_BODY_FIELDS: &[&str] =
    &["maxRequestBytes", "allowPartialMessage", "packAsBytes"];

fn keys(value: &Value) -> Vec<String> {
    labels(value).into_keys().collect()
}

#[test]
fn istio_provider_points_at_the_service_and_the_policy_uses_it() {
    let manifests = Manifests::load();
    let service = manifests.get("Service");
    let mesh = documents("deploy/istio/mesh-config.yaml").remove(0);
    let providers = list(&mesh, &["spec", "meshConfig", "extensionProviders"]);
    assert_eq!(providers.len(), 1);
    let provider_name = text(&providers[0], &["name"]);
    let grpc = at(&providers[0], &["envoyExtAuthzGrpc"]);
    for key in keys(grpc) {
        assert!(
            ISTIO_GRPC_PROVIDER_FIELDS.contains(&key.as_str()),
            "unknown field {key}"
        );
    }
    let body = at(grpc, &["includeRequestBodyInCheck"]);
    for key in keys(body) {
        assert!(
            ISTIO_REQUEST_BODY_FIELDS.contains(&key.as_str()),
            "unknown field {key}"
        );
    }

    assert_eq!(
        text(grpc, &["service"]),
        format!(
            "{}.{}.svc.cluster.local",
            text(service, &["metadata", "name"]),
            manifests.namespace
        )
    );
    let grpc_port = list(service, &["spec", "ports"])
        .iter()
        .find(|port| text(port, &["appProtocol"]) == "grpc")
        .and_then(|port| at(port, &["port"]).as_u64());
    assert_eq!(at(grpc, &["port"]).as_u64(), grpc_port);
    assert_eq!(
        at(grpc, &["failOpen"]).as_bool(),
        Some(false),
        "fail closed"
    );
    assert_eq!(text(grpc, &["statusOnError"]), "503");
    // The same timeout and body settings as the Envoy config.
    let envoy = read("deploy/envoy/envoy.yaml");
    let timeout = text(grpc, &["timeout"]);
    assert!(
        envoy.contains(&format!("timeout: {timeout}")),
        "timeout {timeout}"
    );
    let max_bytes = at(body, &["maxRequestBytes"]).as_u64().unwrap_or(0);
    assert!(envoy.contains(&format!("max_request_bytes: {max_bytes}")));
    assert_eq!(at(body, &["allowPartialMessage"]).as_bool(), Some(true));

    let policy = documents("deploy/istio/authorization-policy.yaml").remove(0);
    assert_eq!(text(&policy, &["kind"]), "AuthorizationPolicy");
    assert_eq!(text(&policy, &["spec", "action"]), "CUSTOM");
    assert_eq!(text(&policy, &["spec", "provider", "name"]), provider_name);
    assert!(!labels(at(&policy, &["spec", "selector", "matchLabels"])).is_empty());
    // The API and the registry are covered, and so is everything else (identity headers are
    // stripped only from requests quay-authz sees).
    let rules = list(&policy, &["spec", "rules"]);
    let operations: Vec<&Value> = rules
        .iter()
        .flat_map(|rule| list(rule, &["to"]))
        .map(|to| at(to, &["operation"]))
        .collect();
    let paths: BTreeSet<&str> = operations
        .iter()
        .flat_map(|operation| list(operation, &["paths"]))
        .filter_map(Value::as_str)
        .collect();
    let not_paths: BTreeSet<&str> = operations
        .iter()
        .flat_map(|operation| list(operation, &["notPaths"]))
        .filter_map(Value::as_str)
        .collect();
    assert!(
        paths.contains("/api/*") && paths.contains("/v2/*"),
        "{paths:?}"
    );
    assert_eq!(paths, not_paths, "the rules must cover every path");

    // quay-authz validates JWTs itself: no RequestAuthentication anywhere.
    for path in files_under("deploy/istio") {
        if path.ends_with(".yaml") {
            for object in documents(&path) {
                assert_ne!(text(&object, &["kind"]), "RequestAuthentication", "{path}");
            }
        }
    }
    assert!(read("deploy/istio/README.md").contains("No RequestAuthentication"));
}

// === Prometheus and Grafana ===

const ALERTS: &str = "deploy/prometheus/alerts.yaml";
const DASHBOARD: &str = "deploy/grafana/quay-authz.json";

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let Some(promtool) = require_promtool() else {
        return;
    };
    let checked = run_tool(
        &promtool,
        &["check", "rules", ALERTS],
        "promtool check rules",
    );
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = run_tool(
        &promtool,
        &["test", "rules", "deploy/prometheus/tests/alerts_test.yaml"],
        "promtool test rules",
    );
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// Every PromQL expression of the dashboard, with Grafana's variables replaced by values
/// Prometheus accepts.
fn dashboard_queries() -> Vec<String> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON");
    let mut panels: Vec<&serde_json::Value> = Vec::new();
    let mut pending: Vec<&serde_json::Value> = dashboard["panels"]
        .as_array()
        .map(|panels| panels.iter().collect())
        .unwrap_or_default();
    while let Some(panel) = pending.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            pending.extend(nested);
        }
        panels.push(panel);
    }
    panels
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|target| target["expr"].as_str().map(str::to_string))
        .map(|expr| {
            expr.replace("$__rate_interval", "5m")
                .replace("${job}", "quay-authz")
                .replace("$job", "quay-authz")
        })
        .collect()
}

/// Panels have unique ids and fit Grafana's 24-column grid; every panel but a row queries.
#[test]
fn dashboard_panels_fit_the_grid() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "quay-authz");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(ids.insert(panel["id"].as_u64()), "duplicate id: {title}");
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64(), grid["w"].as_u64());
        assert!(
            matches!((x, w), (Some(x), Some(w)) if w > 0 && x + w <= 24),
            "{title}: gridPos {grid}"
        );
        if panel["type"] != "row" {
            assert!(
                panel["targets"].as_array().is_some_and(|t| !t.is_empty()),
                "{title} has no query"
            );
            assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        }
    }
}

#[test]
fn dashboard_queries_are_valid_promql() {
    let queries = dashboard_queries();
    assert!(queries.len() >= 15, "only {} queries", queries.len());
    for query in &queries {
        assert!(
            !query.contains('$'),
            "an unreplaced Grafana variable in {query}"
        );
    }
    let Some(promtool) = require_promtool() else {
        return;
    };
    // promtool parses the expressions of recording rules: one rule per query.
    let rules = serde_json::json!({
        "groups": [{
            "name": "dashboard",
            "rules": queries
                .iter()
                .enumerate()
                .map(|(index, expr)| serde_json::json!({"record": format!("dashboard:query_{index}"), "expr": expr}))
                .collect::<Vec<_>>(),
        }],
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dashboard_rules.yaml");
    std::fs::write(&path, rules.to_string()).expect("write rules");
    let path = path.to_string_lossy().into_owned();
    let checked = run_tool(
        &promtool,
        &["check", "rules", &path],
        "promtool check rules (dashboard)",
    );
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{checked}"
    );
}

/// The `quay_authz_*` names in a PromQL expression.
fn metric_names_in(expr: &str) -> BTreeSet<String> {
    let pattern = regex::Regex::new(r"\bquay_authz_[a-z0-9_]+").expect("regex");
    pattern
        .find_iter(expr)
        .map(|found| found.as_str().to_string())
        .collect()
}

/// The metric families a running quay-authz exports: its registry's names, and the families
/// of a scrape of `/metrics` after it fetched keys and answered Checks (which also shows
/// families produced at scrape time rather than registered).
async fn exported_metric_names() -> BTreeSet<String> {
    let issuer = start_issuer().await;
    let service = TestService::start(&config_for(&issuer, ""), true).await;
    let token = entra_token(&issuer, &["Quay.acme.read"]);
    for (method, path) in [
        ("GET", "/api/v1/repository/acme/app"),
        ("DELETE", "/api/v1/repository/acme/app"),
    ] {
        service.check_bearer(method, path, &token).await;
    }
    let (status, exposition) = service.http_get("/metrics").await;
    assert_eq!(status, 200, "{exposition}");
    let mut names: BTreeSet<String> = exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect();
    names.extend(service.running.service.metrics.metric_names());
    names
}

#[tokio::test]
async fn dashboard_and_alerts_query_metrics_the_service_exports() {
    let registered = exported_metric_names().await;
    for name in [
        "quay_authz_decisions_total",
        "quay_authz_check_duration_seconds",
        "quay_authz_jwks_fetches_total",
        "quay_authz_build_info",
    ] {
        assert!(registered.contains(name), "{name} not in {registered:?}");
    }
    let exists = |name: &str| {
        registered.contains(name)
            || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|base| registered.contains(base))
            })
            || ANNOUNCED_METRICS
                .iter()
                .any(|(announced, _)| *announced == name)
    };

    let alerts = documents(ALERTS).remove(0);
    let alert_exprs: Vec<String> = list(&alerts, &["groups"])
        .iter()
        .flat_map(|group| list(group, &["rules"]))
        .map(|rule| text(rule, &["expr"]).to_string())
        .collect();
    let dashboard_exprs = dashboard_queries();
    for (source, exprs) in [(ALERTS, &alert_exprs), (DASHBOARD, &dashboard_exprs)] {
        for expr in exprs {
            for name in metric_names_in(expr) {
                assert!(
                    exists(&name),
                    "{source}: `{name}` is not a metric of quay-authz: {expr}"
                );
            }
        }
    }

    // The dashboard shows every family the service exports.
    let shown: BTreeSet<String> = dashboard_exprs
        .iter()
        .flat_map(|e| metric_names_in(e))
        .collect();
    let shown_base =
        |name: &String| shown.contains(name) || shown.contains(&format!("{name}_bucket"));
    for name in registered.iter().chain(
        ANNOUNCED_METRICS
            .iter()
            .map(|(name, _)| name.to_string())
            .collect::<Vec<_>>()
            .iter(),
    ) {
        assert!(shown_base(name), "the dashboard has no panel for {name}");
    }

    // And the alerts cover what the runbook promises.
    let alert_names: BTreeSet<&str> = list(&alerts, &["groups"])
        .iter()
        .flat_map(|group| list(group, &["rules"]))
        .map(|rule| text(rule, &["alert"]))
        .collect();
    for alert in [
        "QuayAuthzDown",
        "QuayAuthzNoDecisions",
        "QuayAuthzJwksFetchFailing",
        "QuayAuthzKeySetStale",
        "QuayAuthzDenySpike",
        "QuayAuthzCheckLatencyHigh",
        "QuayAuthzConfigReloadRejected",
    ] {
        assert!(alert_names.contains(alert), "no alert {alert}");
    }
}

// === Dockerfile ===

#[test]
fn dockerfile_builds_and_runs_what_the_manifests_expect() {
    let dockerfile = read("Dockerfile");
    // Instructions with their continuation lines joined, comments dropped.
    let joined = dockerfile
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ");
    let instructions: Vec<(&str, &str)> = joined
        .lines()
        .filter_map(|line| line.trim().split_once(' '))
        .collect();
    let all = |name: &str| -> Vec<&str> {
        instructions
            .iter()
            .filter(|(instruction, _)| *instruction == name)
            .map(|(_, rest)| rest.trim())
            .collect()
    };

    // A Rust builder stage at or above the crate's rust-version, and a distinct runtime stage.
    let stages = all("FROM");
    assert_eq!(stages.len(), 2, "{stages:?}");
    assert!(stages[0].starts_with("rust:") && stages[0].ends_with(" AS builder"));
    let rust_version = all("ARG")
        .into_iter()
        .find_map(|arg| arg.strip_prefix("RUST_VERSION="))
        .expect("ARG RUST_VERSION");
    let cargo_toml = read("Cargo.toml");
    let minimum = cargo_toml
        .lines()
        .find_map(|line| line.strip_prefix("rust-version = "))
        .map(|value| value.trim_matches('"'))
        .expect("rust-version in Cargo.toml");
    let version = |text: &str| -> Vec<u32> {
        text.split('.')
            .map(|part| part.parse().unwrap_or(0))
            .collect()
    };
    assert!(
        version(rust_version) >= version(minimum),
        "{rust_version} < {minimum}"
    );
    assert!(
        !stages[1].starts_with("rust:"),
        "the runtime stage carries no toolchain"
    );

    let runs = all("RUN").join("\n");
    assert!(runs.contains("cargo build --release --locked"), "{runs}");
    // The image is the service alone: no `dev` feature (the development issuer mints tokens
    // for anyone), no bench binary.
    assert!(
        runs.contains("cargo build --release --locked --no-default-features --bin quay-authz"),
        "{runs}"
    );
    assert!(
        all("ARG").contains(&"QUAY_AUTHZ_GIT_REVISION=unknown")
            && all("ENV").contains(&"QUAY_AUTHZ_GIT_REVISION=${QUAY_AUTHZ_GIT_REVISION}"),
        "the git revision reaches build.rs as QUAY_AUTHZ_GIT_REVISION"
    );

    // Runs as the non-root uid the manifests ask for, exposes the listen ports, serves the
    // configuration the manifests mount.
    let manifests = Manifests::load();
    let config = manifests.config();
    let pod_security = at(
        manifests.get("Deployment"),
        &["spec", "template", "spec", "securityContext"],
    );
    let user = all("USER").last().copied().unwrap_or("root");
    let uid = at(pod_security, &["runAsUser"])
        .as_u64()
        .expect("runAsUser");
    assert_eq!(user.split(':').next(), Some(uid.to_string().as_str()));
    let exposed: BTreeSet<u16> = all("EXPOSE")
        .iter()
        .flat_map(|ports| ports.split_whitespace())
        .filter_map(|port| port.parse().ok())
        .collect();
    assert_eq!(
        exposed,
        BTreeSet::from([config.listen.grpc.port(), config.listen.http.port()])
    );
    assert_eq!(all("ENTRYPOINT"), [r#"["quay-authz"]"#]);
    assert_eq!(
        all("CMD"),
        [r#"["serve", "--config", "/etc/quay-authz/config.yaml"]"#]
    );

    // What the build copies exists and is not excluded from the context by .dockerignore.
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with('!'))
        .map(str::to_string)
        .collect();
    for copy in all("COPY") {
        if copy.starts_with("--from=") {
            continue;
        }
        let parts: Vec<&str> = copy.split_whitespace().collect();
        for source in &parts[..parts.len() - 1] {
            assert!(repo(source).exists(), "COPY {source}: no such file");
            let top = source.split('/').next().unwrap_or(source);
            assert!(
                !ignored.iter().any(|pattern| pattern == top
                    || pattern == source
                    || pattern
                        .strip_prefix('*')
                        .is_some_and(|suffix| source.ends_with(suffix))),
                "COPY {source}, but .dockerignore excludes it"
            );
        }
    }
    for needed in ["target", ".git"] {
        assert!(
            ignored.iter().any(|pattern| pattern == needed),
            ".dockerignore lacks {needed}"
        );
    }
}

/// The dependency layer builds against stub sources: every target Cargo.toml names (binaries,
/// benches) must get a stub, or `cargo build` refuses the manifest and the image never builds.
#[test]
fn dockerfile_stubs_every_cargo_target() {
    let dockerfile = read("Dockerfile");
    let cargo_toml = read("Cargo.toml");
    let mut section = "";
    let mut targets = Vec::new();
    for line in cargo_toml.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if let Some(path) = line.strip_prefix("path = ") {
            targets.push(path.trim_matches('"').to_string());
        } else if section == "[[bench]]"
            && let Some(name) = line.strip_prefix("name = ")
        {
            targets.push(format!("benches/{}.rs", name.trim_matches('"')));
        }
    }
    assert!(
        targets.len() >= 4,
        "expected the lib, two binaries and a bench in Cargo.toml: {targets:?}"
    );
    for target in &targets {
        assert!(
            dockerfile.contains(&format!("> {target}"))
                || dockerfile.contains(&format!("touch {target}")),
            "the Dockerfile's dependency stage does not stub {target}"
        );
    }
}
