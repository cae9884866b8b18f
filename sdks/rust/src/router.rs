//! The router: agent cards, task routing and model routing (`client.router()`).
//!
//! Register what your agents can do and what they cost, then ask which one
//! should take a task; and ask which model should answer a prompt, reporting
//! how it went so that the router learns which prompts the cheap model handles.
//!
//! ```no_run
//! use are_sdk::{AgentCard, Client, ModelRouteOptions, ModelSpec, OutcomeOptions, RouteOptions};
//! # async fn demo(client: Client) -> are_sdk::Result<()> {
//! let router = client.router();
//! router
//!     .register_agent(AgentCard {
//!         description: "summarise long documents".into(),
//!         capabilities: vec!["summarize".into()],
//!         cost_per_call_micro_usd: 2_000,
//!         ..AgentCard::new("summarizer")
//!     })
//!     .await?;
//! let result = router.route_task("summarise this contract", &RouteOptions::default()).await?;
//! let best = &result.candidates[0]; // NOT_FOUND, reason NO_ROUTE_ABOVE_THRESHOLD, if none qualifies
//!
//! router.put_model_catalog([ModelSpec::new("small"), ModelSpec::new("large")]).await?;
//! let route = router.route_model("What is 2 + 2?", &ModelRouteOptions::default()).await?;
//! // ... call route.model_id, then:
//! router.report_outcome(&route.route_id, true, &OutcomeOptions::default()).await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use crate::error::Result;
use crate::pb;
use crate::pb::{AgentSource, RouteMode};
use crate::time::to_proto;
use crate::Client;

fn time(stamp: Option<prost_types::Timestamp>) -> Option<SystemTime> {
    stamp.and_then(|t| SystemTime::try_from(t).ok())
}

fn from_duration(d: Option<prost_types::Duration>) -> Option<Duration> {
    d.and_then(|d| Duration::try_from(d).ok())
}

/// An agent as the router sees it: what it does, what it costs, how busy it
/// is. The fields up to `labels` are what you register; `source` and the
/// fields after it are filled in by the sidecar (and ignored when
/// registering). Build one with struct update syntax over
/// [`AgentCard::new`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentCard {
    /// Unique id in the index (the id alphabet, at most 128 characters);
    /// registering an existing id replaces its card.
    pub agent_id: String,
    /// A human-readable name, at most 256 characters.
    pub display_name: String,
    /// What the agent does, in prose (at most 8 KiB); embedded by the
    /// router when no `vector` is given.
    pub description: String,
    /// Capability names it serves; a routed task goes to the first that
    /// matches.
    pub capabilities: Vec<String>,
    /// Your own embedding of the card, of the router's dimension
    /// (DIMENSION_MISMATCH otherwise).
    pub vector: Option<Vec<f32>>,
    /// Typical cost of one call, in micro-US-dollars (1 USD = 1,000,000).
    pub cost_per_call_micro_usd: i64,
    /// Typical latency of one call.
    pub typical_latency: Option<Duration>,
    /// Calls it can serve at once, 1 to 100,000 (0 means 1).
    pub capacity: i32,
    /// Free labels for routing filters.
    pub labels: HashMap<String, String>,
    /// Output only: how the card got into the index (registered, or
    /// declared by a connected worker).
    pub source: AgentSource,
    /// Output only: whether it can take work now.
    pub available: bool,
    /// Output only: calls in flight now.
    pub running: i32,
    /// Output only: connected workers backing the card.
    pub worker_ids: Vec<String>,
    /// Output only: when it was first registered.
    pub create_time: Option<SystemTime>,
    /// Output only: when it last changed.
    pub update_time: Option<SystemTime>,
}

impl AgentCard {
    /// A card with this id and nothing else set.
    pub fn new(agent_id: &str) -> Self {
        AgentCard {
            agent_id: agent_id.to_string(),
            ..Default::default()
        }
    }

    /// Calls in flight divided by capacity: 0 idle, 1 or more full.
    pub fn load(&self) -> f64 {
        if self.capacity > 0 {
            f64::from(self.running) / f64::from(self.capacity)
        } else {
            0.0
        }
    }

    /// The card as the `are.v1.AgentCard` message (input fields only).
    pub fn to_pb(&self) -> pb::AgentCard {
        pb::AgentCard {
            agent_id: self.agent_id.clone(),
            display_name: self.display_name.clone(),
            description: self.description.clone(),
            capabilities: self.capabilities.clone(),
            vector: self.vector.clone().map(|values| pb::Vector { values }),
            cost_per_call_micro_usd: self.cost_per_call_micro_usd,
            typical_latency: self.typical_latency.map(to_proto),
            capacity: self.capacity,
            labels: self.labels.clone(),
            ..Default::default()
        }
    }

    /// A card from the `are.v1.AgentCard` message.
    pub fn from_pb(card: pb::AgentCard) -> Self {
        AgentCard {
            source: AgentSource::try_from(card.source).unwrap_or(AgentSource::Unspecified),
            agent_id: card.agent_id,
            display_name: card.display_name,
            description: card.description,
            capabilities: card.capabilities,
            vector: card.vector.map(|v| v.values),
            cost_per_call_micro_usd: card.cost_per_call_micro_usd,
            typical_latency: from_duration(card.typical_latency),
            capacity: card.capacity,
            labels: card.labels,
            available: card.available,
            running: card.running,
            worker_ids: card.worker_ids,
            create_time: time(card.create_time),
            update_time: time(card.update_time),
        }
    }
}

/// Which cards [`Router::list_agents`] and [`Router::agents`] return; the
/// default is every card.
#[derive(Clone, Debug, Default)]
pub struct AgentFilter {
    /// Only cards serving this capability ("" means any).
    pub capability: String,
    /// Only cards having every one of these labels (at most 8).
    pub labels: HashMap<String, String>,
    /// Only cards that can take work now.
    pub available_only: bool,
}

/// One page of cards, by agent_id.
#[derive(Clone, Debug)]
pub struct AgentPage {
    /// The cards of this page.
    pub agents: Vec<AgentCard>,
    /// The token of the next page; empty on the last page.
    pub next_page_token: String,
}

/// What a task (or a prompt) is routed by: text (embedded by the router) or
/// a vector of the router's dimension. A string or a `Vec<f32>` converts.
#[derive(Clone, Debug, PartialEq)]
pub enum RouteQuery {
    /// Text, embedded by the router's embedder.
    Text(String),
    /// A vector of the router index's dimension.
    Vector(Vec<f32>),
}

impl From<&str> for RouteQuery {
    fn from(text: &str) -> Self {
        RouteQuery::Text(text.to_string())
    }
}

impl From<String> for RouteQuery {
    fn from(text: String) -> Self {
        RouteQuery::Text(text)
    }
}

impl From<Vec<f32>> for RouteQuery {
    fn from(vector: Vec<f32>) -> Self {
        RouteQuery::Vector(vector)
    }
}

impl From<&[f32]> for RouteQuery {
    fn from(vector: &[f32]) -> Self {
        RouteQuery::Vector(vector.to_vec())
    }
}

/// How [`Router::route_task`] ranks and filters; the zero values are the
/// router's defaults.
#[derive(Clone, Debug, Default)]
pub struct RouteOptions {
    /// How many agents to return, 1 to 100 (0 means 5).
    pub top_k: i32,
    /// How to rank: `CostBiased` (with cost_weight 1 the cheapest agent
    /// above the threshold first), `BestMatch` (similarity alone), or
    /// `Unspecified`, the router's default (cost-biased unless configured).
    pub mode: RouteMode,
    /// The cosine similarity an agent needs, in [-1, 1] (`None`: the
    /// router's default, 0.5 unless configured).
    pub threshold: Option<f64>,
    /// The weight of cost in cost-biased mode, in [0, 1] (`None`: the
    /// router's default, 1.0 unless configured).
    pub cost_weight: Option<f64>,
    /// Agents never to return (at most 1,000).
    pub exclude_agent_ids: Vec<String>,
    /// Only agents serving every one of these capabilities (at most 16).
    pub required_capabilities: Vec<String>,
    /// Only agents having every one of these labels (at most 8).
    pub labels: HashMap<String, String>,
    /// Unavailable agents may be returned (ranked last).
    pub include_unavailable: bool,
    /// When no agent reaches the threshold, return the best below it (with
    /// `above_threshold` false) instead of NOT_FOUND.
    pub include_below_threshold: bool,
}

/// One ranked agent of a [`Router::route_task`] answer.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteCandidate {
    /// The agent.
    pub agent_id: String,
    /// The capability a task would be dispatched to.
    pub capability: String,
    /// Cosine similarity of the agent to the task.
    pub similarity: f64,
    /// The ranking score of the mode used.
    pub score: f64,
    /// The agent's cost per call, in micro-US-dollars.
    pub cost_per_call_micro_usd: i64,
    /// Running calls divided by capacity.
    pub load: f64,
    /// Whether it can take work now.
    pub available: bool,
    /// Whether the similarity reaches the threshold.
    pub above_threshold: bool,
    /// Why it ranks where it does, for humans.
    pub reason: String,
}

/// The ranked agents for a task, best first, with the mode and threshold used.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteResult {
    /// The candidates, best first, at most top_k.
    pub candidates: Vec<RouteCandidate>,
    /// The mode used (resolved when `Unspecified` was asked).
    pub mode: RouteMode,
    /// The threshold used.
    pub threshold: f64,
}

/// One model of the catalog. Build one with struct update syntax over
/// [`ModelSpec::new`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelSpec {
    /// The id the worker calls the model by (the id alphabet).
    pub model_id: String,
    /// 1 (cheapest, weakest) to 10 (strongest), 0 means 1; breaks ties.
    pub tier: i32,
    /// Price of input tokens, in micro-US-dollars per million tokens.
    pub input_cost_per_million_tokens_micro_usd: i64,
    /// Price of output tokens, in micro-US-dollars per million tokens.
    pub output_cost_per_million_tokens_micro_usd: i64,
    /// Success probability assumed with too little history, in [0, 1]; 0
    /// means 0.5.
    pub prior_success_rate: f64,
    /// The context window in tokens; 0 means unknown.
    pub context_window_tokens: i64,
    /// Free labels.
    pub labels: HashMap<String, String>,
}

impl ModelSpec {
    /// A model of this id, tier 1, free, with the default prior.
    pub fn new(model_id: &str) -> Self {
        ModelSpec {
            model_id: model_id.to_string(),
            tier: 1,
            ..Default::default()
        }
    }

    /// The `are.v1.ModelSpec` message.
    pub fn to_pb(&self) -> pb::ModelSpec {
        pb::ModelSpec {
            model_id: self.model_id.clone(),
            tier: self.tier,
            input_cost_per_million_tokens_micro_usd: self.input_cost_per_million_tokens_micro_usd,
            output_cost_per_million_tokens_micro_usd: self.output_cost_per_million_tokens_micro_usd,
            prior_success_rate: self.prior_success_rate,
            context_window_tokens: self.context_window_tokens,
            labels: self.labels.clone(),
        }
    }

    /// A spec from the `are.v1.ModelSpec` message.
    pub fn from_pb(m: pb::ModelSpec) -> Self {
        ModelSpec {
            model_id: m.model_id,
            tier: m.tier,
            input_cost_per_million_tokens_micro_usd: m.input_cost_per_million_tokens_micro_usd,
            output_cost_per_million_tokens_micro_usd: m.output_cost_per_million_tokens_micro_usd,
            prior_success_rate: m.prior_success_rate,
            context_window_tokens: m.context_window_tokens,
            labels: m.labels,
        }
    }
}

/// The models [`Router::route_model`] chooses from.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelCatalog {
    /// The models, with defaults filled in.
    pub models: Vec<ModelSpec>,
    /// When the catalog was last replaced (`None` before the first put).
    pub update_time: Option<SystemTime>,
}

impl ModelCatalog {
    fn from_pb(catalog: Option<pb::ModelCatalog>) -> Self {
        let catalog = catalog.unwrap_or_default();
        ModelCatalog {
            models: catalog.models.into_iter().map(ModelSpec::from_pb).collect(),
            update_time: time(catalog.update_time),
        }
    }
}

/// Options of [`Router::route_model`]; the zero values are the router's
/// defaults.
#[derive(Clone, Debug, Default)]
pub struct ModelRouteOptions {
    /// The success probability wanted, in (0, 1]; 0 means 0.8.
    pub quality_target: f64,
    /// Models never to choose (at most 256).
    pub exclude_model_ids: Vec<String>,
    /// Expected input tokens, for the cost and the context window check; 0
    /// means estimated from the prompt (unknown for vectors).
    pub estimated_input_tokens: i64,
    /// Expected output tokens, for the cost; 0 means 500.
    pub estimated_output_tokens: i64,
}

/// The router's estimate for one model and one prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelEstimate {
    /// The model.
    pub model_id: String,
    /// The expected success probability (or mean score).
    pub expected_quality: f64,
    /// The expected cost of the call, in micro-US-dollars.
    pub expected_cost_micro_usd: i64,
    /// How many similar past outcomes the estimate rests on (0: the prior).
    pub samples: i32,
}

/// The model chosen for a prompt; report how it went with `route_id`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelRoute {
    /// Pass it to [`Router::report_outcome`] (valid 7 days).
    pub route_id: String,
    /// The chosen model.
    pub model_id: String,
    /// Its expected success probability (or mean score).
    pub expected_quality: f64,
    /// Its expected cost for this call, in micro-US-dollars.
    pub expected_cost_micro_usd: i64,
    /// Whether it is expected to reach the quality target (false: no model
    /// is, and this one has the highest expected quality).
    pub target_met: bool,
    /// Every eligible model's estimate, cheapest first.
    pub estimates: Vec<ModelEstimate>,
    /// Why this model, for humans.
    pub reason: String,
}

/// How a routed call went: whether it met the need, or a quality score in
/// [0, 1]. A `bool` or an `f64` converts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome {
    /// Whether the call met the need.
    Success(bool),
    /// A quality score in [0, 1].
    Score(f64),
}

impl From<bool> for Outcome {
    fn from(success: bool) -> Self {
        Outcome::Success(success)
    }
}

impl From<f64> for Outcome {
    fn from(score: f64) -> Self {
        Outcome::Score(score)
    }
}

/// What else [`Router::report_outcome`] records about a call.
#[derive(Clone, Debug, Default)]
pub struct OutcomeOptions {
    /// The model actually called, when not the one chosen ("": the chosen).
    pub model_id: String,
    /// Tokens and cost of the call (cost in micro-US-dollars).
    pub usage: Option<pb::Usage>,
    /// How long the call took.
    pub latency: Option<Duration>,
}

/// Capability and model routing: `client.router()`. Every call is bounded
/// by the call timeout; failures are [`Error`](crate::Error)s with the
/// sidecar's reason: INVALID_ARGUMENT (`field_violations` names the field;
/// reason `DIMENSION_MISMATCH` for a vector of the wrong size, with
/// `expected_dimension` / `actual_dimension` in the metadata), NOT_FOUND
/// (`AGENT_NOT_FOUND`, `NO_ROUTE_ABOVE_THRESHOLD`, `ROUTE_NOT_FOUND`),
/// FAILED_PRECONDITION (`EMBEDDER_UNAVAILABLE`, `MODEL_CATALOG_EMPTY`,
/// `NO_ELIGIBLE_MODEL`, `MODEL_NOT_IN_CATALOG`), ALREADY_EXISTS
/// (`OUTCOME_ALREADY_REPORTED`).
#[derive(Clone, Debug)]
pub struct Router {
    client: Client,
}

impl Client {
    /// The router (agent cards, task routing, model routing).
    pub fn router(&self) -> Router {
        Router {
            client: self.clone(),
        }
    }
}

fn query_vector(values: Vec<f32>) -> pb::Vector {
    pb::Vector { values }
}

impl Router {
    /// Adds a card, or replaces the card with the same id; returns it as
    /// stored and whether it is new.
    pub async fn register_agent(&self, card: AgentCard) -> Result<(AgentCard, bool)> {
        let mut stub = self.client.raw().router;
        let req = pb::RegisterAgentRequest {
            agent: Some(card.to_pb()),
        };
        let resp = self
            .client
            .unary("RegisterAgent", stub.register_agent(req))
            .await?;
        Ok((
            AgentCard::from_pb(resp.agent.unwrap_or_default()),
            resp.created,
        ))
    }

    /// Removes a registered card (NOT_FOUND, reason `AGENT_NOT_FOUND`, if
    /// there is none; worker cards go away with their workers).
    pub async fn deregister_agent(&self, agent_id: &str) -> Result<()> {
        let mut stub = self.client.raw().router;
        let req = pb::DeregisterAgentRequest {
            agent_id: agent_id.to_string(),
        };
        self.client
            .unary("DeregisterAgent", stub.deregister_agent(req))
            .await?;
        Ok(())
    }

    /// One page of cards by agent_id (`page_size` 0: 100, at most 1,000;
    /// `page_token` "" for the first page, else the previous page's token
    /// with the same filter: INVALID_ARGUMENT, reason `INVALID_PAGE_TOKEN`,
    /// otherwise).
    pub async fn list_agents(
        &self,
        filter: &AgentFilter,
        page_size: i32,
        page_token: &str,
    ) -> Result<AgentPage> {
        let mut stub = self.client.raw().router;
        let req = pb::ListAgentsRequest {
            page_size,
            page_token: page_token.to_string(),
            capability: filter.capability.clone(),
            labels: filter.labels.clone(),
            available_only: filter.available_only,
        };
        let resp = self
            .client
            .unary("ListAgents", stub.list_agents(req))
            .await?;
        Ok(AgentPage {
            agents: resp.agents.into_iter().map(AgentCard::from_pb).collect(),
            next_page_token: resp.next_page_token,
        })
    }

    /// At most `limit` cards matching `filter`, by agent_id, fetched page by
    /// page (each call bounded by the call timeout).
    pub async fn agents(&self, filter: &AgentFilter, limit: usize) -> Result<Vec<AgentCard>> {
        let mut out = Vec::new();
        let mut token = String::new();
        while out.len() < limit {
            let size = (limit - out.len()).min(1000) as i32;
            let page = self.list_agents(filter, size, &token).await?;
            out.extend(page.agents);
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        out.truncate(limit);
        Ok(out)
    }

    /// Ranks agents for a task given as text or as a vector and returns the
    /// best `top_k`. When no eligible agent reaches the threshold the error
    /// is NOT_FOUND, reason `NO_ROUTE_ABOVE_THRESHOLD`: its message lists
    /// the best below it and its metadata holds `best_agent_id`,
    /// `best_similarity` and `threshold` (or set
    /// `include_below_threshold` to get them as candidates).
    pub async fn route_task(
        &self,
        task: impl Into<RouteQuery>,
        options: &RouteOptions,
    ) -> Result<RouteResult> {
        use pb::route_task_request::Query;
        let mut stub = self.client.raw().router;
        let req = pb::RouteTaskRequest {
            query: Some(match task.into() {
                RouteQuery::Text(t) => Query::Text(t),
                RouteQuery::Vector(v) => Query::Vector(query_vector(v)),
            }),
            top_k: options.top_k,
            mode: options.mode as i32,
            threshold: options.threshold,
            cost_weight: options.cost_weight,
            exclude_agent_ids: options.exclude_agent_ids.clone(),
            required_capabilities: options.required_capabilities.clone(),
            labels: options.labels.clone(),
            include_unavailable: options.include_unavailable,
            include_below_threshold: options.include_below_threshold,
        };
        let resp = self.client.unary("RouteTask", stub.route_task(req)).await?;
        Ok(RouteResult {
            mode: RouteMode::try_from(resp.mode).unwrap_or(RouteMode::Unspecified),
            threshold: resp.threshold,
            candidates: resp
                .candidates
                .into_iter()
                .map(|c| RouteCandidate {
                    agent_id: c.agent_id,
                    capability: c.capability,
                    similarity: c.similarity,
                    score: c.score,
                    cost_per_call_micro_usd: c.cost_per_call_micro_usd,
                    load: c.load,
                    available: c.available,
                    above_threshold: c.above_threshold,
                    reason: c.reason,
                })
                .collect(),
        })
    }

    /// Replaces the model catalog (1 to 256 models with unique ids); returns
    /// it with defaults filled in. Outcomes of models that stay are kept.
    pub async fn put_model_catalog(
        &self,
        models: impl IntoIterator<Item = ModelSpec>,
    ) -> Result<ModelCatalog> {
        let mut stub = self.client.raw().router;
        let req = pb::PutModelCatalogRequest {
            catalog: Some(pb::ModelCatalog {
                models: models.into_iter().map(|m| m.to_pb()).collect(),
                update_time: None,
            }),
        };
        let resp = self
            .client
            .unary("PutModelCatalog", stub.put_model_catalog(req))
            .await?;
        Ok(ModelCatalog::from_pb(resp.catalog))
    }

    /// The current model catalog (no models before the first put).
    pub async fn get_model_catalog(&self) -> Result<ModelCatalog> {
        let mut stub = self.client.raw().router;
        let resp = self
            .client
            .unary(
                "GetModelCatalog",
                stub.get_model_catalog(pb::GetModelCatalogRequest {}),
            )
            .await?;
        Ok(ModelCatalog::from_pb(resp.catalog))
    }

    /// Picks the cheapest model expected to reach the quality target for a
    /// prompt (text or a vector); FAILED_PRECONDITION, reason
    /// `MODEL_CATALOG_EMPTY`, before a catalog is put, or
    /// `NO_ELIGIBLE_MODEL` when every model is excluded or too small.
    pub async fn route_model(
        &self,
        prompt: impl Into<RouteQuery>,
        options: &ModelRouteOptions,
    ) -> Result<ModelRoute> {
        use pb::route_model_request::Query;
        let mut stub = self.client.raw().router;
        let req = pb::RouteModelRequest {
            query: Some(match prompt.into() {
                RouteQuery::Text(t) => Query::Prompt(t),
                RouteQuery::Vector(v) => Query::Vector(query_vector(v)),
            }),
            quality_target: options.quality_target,
            exclude_model_ids: options.exclude_model_ids.clone(),
            estimated_input_tokens: options.estimated_input_tokens,
            estimated_output_tokens: options.estimated_output_tokens,
        };
        let resp = self
            .client
            .unary("RouteModel", stub.route_model(req))
            .await?;
        Ok(ModelRoute {
            route_id: resp.route_id,
            model_id: resp.model_id,
            expected_quality: resp.expected_quality,
            expected_cost_micro_usd: resp.expected_cost_micro_usd,
            target_met: resp.target_met,
            estimates: resp
                .estimates
                .into_iter()
                .map(|e| ModelEstimate {
                    model_id: e.model_id,
                    expected_quality: e.expected_quality,
                    expected_cost_micro_usd: e.expected_cost_micro_usd,
                    samples: e.samples,
                })
                .collect(),
            reason: resp.reason,
        })
    }

    /// Reports how a routed call went (`true`/`false`, or a score in [0, 1]),
    /// which feeds the estimator of [`route_model`](Router::route_model).
    /// Each route is reported once, within 7 days: NOT_FOUND, reason
    /// `ROUTE_NOT_FOUND`, or ALREADY_EXISTS, reason
    /// `OUTCOME_ALREADY_REPORTED`, otherwise.
    pub async fn report_outcome(
        &self,
        route_id: &str,
        outcome: impl Into<Outcome>,
        options: &OutcomeOptions,
    ) -> Result<()> {
        use pb::report_outcome_request::Outcome as O;
        let mut stub = self.client.raw().router;
        let req = pb::ReportOutcomeRequest {
            route_id: route_id.to_string(),
            model_id: options.model_id.clone(),
            outcome: Some(match outcome.into() {
                Outcome::Success(s) => O::Success(s),
                Outcome::Score(s) => O::Score(s),
            }),
            usage: options.usage,
            latency: options.latency.map(to_proto),
        };
        self.client
            .unary("ReportOutcome", stub.report_outcome(req))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cards_round_trip_through_the_message() {
        let card = AgentCard {
            description: "summarize".into(),
            capabilities: vec!["sum".into()],
            vector: Some(vec![1.0, 0.0]),
            cost_per_call_micro_usd: 7,
            typical_latency: Some(Duration::from_millis(1500)),
            capacity: 4,
            labels: HashMap::from([("team".into(), "law".into())]),
            ..AgentCard::new("a")
        };
        let mut message = card.to_pb();
        assert_eq!(
            message.typical_latency,
            Some(prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000
            })
        );
        message.running = 2;
        message.source = AgentSource::Registered as i32;
        let back = AgentCard::from_pb(message);
        assert_eq!(back.load(), 0.5);
        assert_eq!(back.source, AgentSource::Registered);
        assert_eq!(
            AgentCard {
                running: 0,
                source: AgentSource::Unspecified,
                ..back
            },
            card
        );
        assert_eq!(AgentCard::new("idle").load(), 0.0);
    }

    #[test]
    fn queries_and_outcomes_convert() {
        assert_eq!(RouteQuery::from("x"), RouteQuery::Text("x".into()));
        assert_eq!(
            RouteQuery::from(&[1.0f32, 2.0][..]),
            RouteQuery::Vector(vec![1.0, 2.0])
        );
        assert_eq!(Outcome::from(true), Outcome::Success(true));
        assert_eq!(Outcome::from(0.25), Outcome::Score(0.25));
        assert_eq!(RouteOptions::default().mode, RouteMode::Unspecified);
        assert_eq!(ModelSpec::new("m").tier, 1);
    }
}
