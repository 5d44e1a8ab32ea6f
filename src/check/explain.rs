//! Explain: the full decision for one request, step by step, for operators debugging a deny
//! (`quay-authz explain`, and the admin API's `Explain`). Never prints the token or a
//! signature; claim values appear only as the identity the pipeline derived from them.

use serde::Serialize;

use crate::authn::extract::{Credential, RequestFacts};
use crate::authn::identify;
use crate::check::pipeline::Pipeline;
use crate::check::respond::build_response;
use crate::model::decision::Decision;
use crate::policy;
use crate::route::RouteOutcome;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Step {
    pub phase: String,
    pub result: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Explanation {
    pub decision: String,
    pub reason: String,
    pub http_status: i32,
    pub steps: Vec<Step>,
}

impl Explanation {
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        for step in &self.steps {
            text.push_str(&format!("{:<10} {}\n", step.phase, step.result));
        }
        text.push_str(&format!(
            "{:<10} {} ({}), HTTP {}\n",
            "decision", self.decision, self.reason, self.http_status
        ));
        text
    }
}

/// Runs the decision and narrates each phase. The narration re-runs the pure stages beside
/// the real decision (keys are cached by then), so what it shows is what the pipeline did.
pub async fn explain(pipeline: &Pipeline, facts: &RequestFacts, now: u64) -> Explanation {
    let decision = pipeline.decide(facts, now).await;
    let mut steps = Vec::new();
    let mut step = |phase: &str, result: String| {
        steps.push(Step {
            phase: phase.to_string(),
            result,
        })
    };

    step(
        "request",
        format!("{} {}", facts.method, facts.path_without_query()),
    );
    step(
        "route",
        match pipeline
            .routes()
            .classify(&facts.method, &facts.path, facts.body.as_deref())
        {
            RouteOutcome::NotProtected => "not an API or registry path: not protected".into(),
            RouteOutcome::Ambiguous(why) => format!("ambiguous path: {why}"),
            RouteOutcome::Unclassified => "no Quay route matches".into(),
            RouteOutcome::Requires(required) if required.is_empty() => {
                "requires any valid identity".into()
            }
            RouteOutcome::Requires(required) => format!(
                "requires {}",
                required
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        },
    );
    match facts.credential() {
        Credential::None => step("token", "no bearer token".into()),
        Credential::Other => step(
            "token",
            "credentials of another scheme (not a bearer token)".into(),
        ),
        Credential::Bearer(token) => {
            match identify::parse_token(token, pipeline.config.max_token_bytes) {
                Err(error) => step("token", format!("refused: {error}")),
                Ok(parsed) => {
                    step(
                        "token",
                        format!(
                            "JWT, alg {}, kid {}, iss {}",
                            parsed.algorithm,
                            parsed.key_id.as_deref().unwrap_or("(none)"),
                            parsed.iss
                        ),
                    );
                    match identify::match_issuer(&pipeline.config, &parsed.iss) {
                        None => step(
                            "issuer",
                            "not configured: this token is not from a trusted issuer".into(),
                        ),
                        Some(matched) => step(
                            "issuer",
                            format!(
                                "{} ({:?} preset{})",
                                matched.issuer.name,
                                matched.issuer.preset,
                                matched
                                    .tenant
                                    .map(|t| format!(", tenant {t}"))
                                    .unwrap_or_default()
                            ),
                        ),
                    }
                }
            }
            match pipeline.identify_token(token, now).await {
                Err(error) => step("identity", format!("refused: {error}")),
                Ok(identity) => {
                    step(
                        "identity",
                        format!(
                            "user {}, issuer {}, tenant {}, client {}, audiences [{}], groups [{}]",
                            identity.username,
                            identity.issuer,
                            identity.tenant.as_deref().unwrap_or("-"),
                            identity.client.as_deref().unwrap_or("-"),
                            identity.audiences.join(", "),
                            identity.groups.join(", ")
                        ),
                    );
                    let outcome = policy::evaluate(&pipeline.config.rules, &identity);
                    if outcome.grants.is_empty() {
                        step("policy", "no rule granted anything".into());
                    }
                    for rule in &outcome.matched_rules {
                        let grants: Vec<String> = outcome
                            .grants
                            .iter()
                            .filter(|(_, from)| from == rule)
                            .map(|(grant, _)| grant.to_string())
                            .collect();
                        step(
                            "policy",
                            format!("rule {rule} granted {}", grants.join(", ")),
                        );
                    }
                    for dropped in &outcome.dropped {
                        step("policy", dropped.clone());
                    }
                }
            }
        }
    }
    if let Decision::Deny { detail, .. } = &decision {
        step("deny", detail.clone());
    }
    if let Decision::Allow { rules, .. } = &decision {
        step("allow", format!("granted by {}", rules.join(", ")));
    }
    let response = build_response(&decision, pipeline.response_settings(), facts.is_registry());
    let http_status = match &response.http_response {
        Some(
            envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse::DeniedResponse(
                denied,
            ),
        ) => denied.status.as_ref().map(|s| s.code).unwrap_or(403),
        _ => 200,
    };
    Explanation {
        decision: decision.kind().to_string(),
        reason: decision.reason().code().to_string(),
        http_status,
        steps,
    }
}
