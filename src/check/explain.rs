//! Explain: the full decision for one request, step by step, for operators debugging a deny
//! (`quay-authz explain`, and the admin API's `Explain`). Never prints the token or a
//! signature; claim values appear only as the identity the pipeline derived from them.

use serde::Serialize;

use crate::authn::extract::{Credential, RequestFacts};
use crate::authn::identify::{IdentifyError, IssuerMatch, ParsedToken};
use crate::check::pipeline::{PhaseObserver, Pipeline};
use crate::check::respond::build_response;
use crate::model::decision::{Decision, ScopeRewrite};
use crate::model::identity::Identity;
use crate::model::permission::format_scope_list;
use crate::policy::PolicyOutcome;
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

/// Runs the real decision with an observer that narrates each phase as it runs: the steps
/// are what the pipeline did, never a re-run beside it. A phase the decision never reached
/// (a token on a path that needs none) has no step.
pub async fn explain(pipeline: &Pipeline, facts: &RequestFacts<'_>, now: u64) -> Explanation {
    let mut narrator = Narrator {
        steps: vec![Step {
            phase: "request".into(),
            result: format!("{} {}", facts.method, facts.path_without_query()),
        }],
    };
    let decision = pipeline.decide_observed(facts, now, &mut narrator).await;
    let mut steps = narrator.steps;
    let mut step = |phase: &str, result: String| {
        steps.push(Step {
            phase: phase.to_string(),
            result,
        })
    };
    if let Decision::Deny { detail, .. } = &decision {
        step("deny", detail.clone());
    }
    if let Decision::Allow { rules, scopes, .. } = &decision {
        step("allow", format!("granted by {}", rules.join(", ")));
        // Quay's registry token endpoint: what its `scope` parameters become.
        match scopes {
            ScopeRewrite::Unchanged if facts.path_without_query() != "/v2/auth" => {}
            ScopeRewrite::Unchanged => step("scopes", "every scope granted in full".into()),
            ScopeRewrite::Only(scope) => step("scopes", format!("Quay receives only {scope}")),
            ScopeRewrite::Removed => step("scopes", "nothing granted: every scope removed".into()),
        }
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

/// The observer `explain` runs the pipeline with: one step per report, in the phases' order.
struct Narrator {
    steps: Vec<Step>,
}

impl Narrator {
    fn step(&mut self, phase: &str, result: String) {
        self.steps.push(Step {
            phase: phase.to_string(),
            result,
        });
    }
}

impl PhaseObserver for Narrator {
    fn route(&mut self, outcome: &RouteOutcome) {
        let result = match outcome {
            RouteOutcome::NotProtected => "not an API or registry path: not protected".into(),
            RouteOutcome::Ambiguous(why) => format!("ambiguous path: {why}"),
            RouteOutcome::Unclassified => "no Quay route matches".into(),
            RouteOutcome::RegistryToken(scopes) => format!(
                "Quay's registry token endpoint: requires any valid identity; {} scope \
                 parameter(s) cut to the grants",
                scopes.len()
            ),
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
        };
        self.step("route", result);
    }

    fn credential(&mut self, credential: &Credential<'_>) {
        match credential {
            Credential::None => self.step("token", "no bearer token".into()),
            Credential::Other => self.step(
                "token",
                "credentials of another scheme (not a bearer token)".into(),
            ),
            Credential::Multiple => {
                self.step("token", "more than one credential in Authorization".into())
            }
            // Told by `cached` or `token` next (a Basic JWT password counts on /v2/auth only).
            Credential::Bearer(_) | Credential::BasicJwt(_) => {}
        }
    }

    fn cached(&mut self) {
        self.step(
            "token",
            "verified before: taken from the verified-token cache".into(),
        );
    }

    fn token(&mut self, parsed: Result<&ParsedToken<'_>, &IdentifyError>) {
        let result = match parsed {
            Err(error) => format!("refused: {error}"),
            Ok(parsed) => format!(
                "JWT, alg {}, kid {}, iss {}",
                parsed.algorithm,
                parsed.key_id.as_deref().unwrap_or("(none)"),
                parsed.iss
            ),
        };
        self.step("token", result);
    }

    fn issuer(&mut self, matched: Option<&IssuerMatch<'_>>) {
        let result = match matched {
            None => "not configured: this token is not from a trusted issuer".into(),
            Some(matched) => format!(
                "{} ({:?} preset{})",
                matched.issuer.name,
                matched.issuer.preset,
                matched
                    .tenant
                    .map(|t| format!(", tenant {t}"))
                    .unwrap_or_default()
            ),
        };
        self.step("issuer", result);
    }

    fn identity(&mut self, result: Result<&Identity, &IdentifyError>) {
        let result_identity = result.ok();
        let result = match result {
            Err(error) => format!("refused: {error}"),
            Ok(identity) => format!(
                "user {}, issuer {}, tenant {}, client {}, audiences [{}], groups [{}]",
                identity.username,
                identity.issuer,
                identity.tenant.as_deref().unwrap_or("-"),
                identity.client.as_deref().unwrap_or("-"),
                identity.audiences.join(", "),
                identity.groups.join(", ")
            ),
        };
        self.step("identity", result);
        if let Some(Identity {
            exchanged: Some(exchanged),
            bridge_subject,
            ..
        }) = result_identity
        {
            self.step(
                "exchanged",
                format!(
                    "a token of this service's token exchange (jti {}, principal {}), scope \
                     [{}]: allowed only within it and today's policy; checked against the \
                     revocation list",
                    exchanged.jti,
                    bridge_subject.as_deref().unwrap_or("-"),
                    format_scope_list(&exchanged.scopes)
                ),
            );
        }
    }

    fn policy(&mut self, outcome: &PolicyOutcome) {
        if outcome.grants.is_empty() {
            self.step("policy", "no rule granted anything".into());
        }
        for rule in &outcome.matched_rules {
            let grants: Vec<String> = outcome
                .grants
                .iter()
                .filter(|(_, from)| from == rule)
                .map(|(grant, _)| grant.to_string())
                .collect();
            self.step(
                "policy",
                format!("rule {rule} granted {}", grants.join(", ")),
            );
        }
        for dropped in &outcome.dropped {
            self.step("policy", dropped.clone());
        }
    }
}
