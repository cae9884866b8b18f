//! The router facade against a real sidecar (one per test), started from the
//! repository's `.venv`. Ids carry a per-test prefix all the same.

use std::collections::HashMap;
use std::time::Duration;

use are_sdk::testing::Sidecar;
use are_sdk::{
    pb, AgentCard, AgentFilter, AgentSource, Client, Code, ModelRouteOptions, ModelSpec,
    OutcomeOptions, RouteMode, RouteOptions,
};

/// The dimension of the sidecar's default (lexical) router embedder.
const DIMENSION: usize = 256;

async fn start(args: &[&str]) -> (Sidecar, Client) {
    let sidecar = Sidecar::start(args).await.expect("sidecar");
    let client = sidecar.client().await.expect("connect");
    (sidecar, client)
}

/// A vector of `dimension` components starting with `head`, the rest 0.
fn unit(head: &[f32], dimension: usize) -> Vec<f32> {
    let mut v = vec![0.0; dimension];
    v[..head.len()].copy_from_slice(head);
    v
}

fn labels(run: &str) -> HashMap<String, String> {
    HashMap::from([("run".to_string(), run.to_string())])
}

/// gold (the best match, dearest), silver, bronze (the cheapest above 0.6)
/// and other (orthogonal, cheapest of all), labelled `run`.
async fn register_quartet(client: &Client, run: &str) {
    for (name, head, cost) in [
        ("gold", &[1.0f32][..], 900),
        ("silver", &[0.9, 0.3][..], 300),
        ("bronze", &[0.7, 0.7][..], 100),
        ("other", &[0.0, 0.0, 1.0][..], 1),
    ] {
        let (card, created) = client
            .router()
            .register_agent(AgentCard {
                capabilities: vec![name.to_string()],
                vector: Some(unit(head, DIMENSION)),
                cost_per_call_micro_usd: cost,
                labels: labels(run),
                ..AgentCard::new(&format!("{run}-{name}"))
            })
            .await
            .unwrap();
        assert!(created);
        assert_eq!(card.vector.as_ref().map(Vec::len), Some(DIMENSION));
    }
}

fn ids(result: &are_sdk::RouteResult) -> Vec<&str> {
    result
        .candidates
        .iter()
        .map(|c| c.agent_id.as_str())
        .collect()
}

#[tokio::test]
async fn cards_are_registered_listed_by_page_and_deregistered() {
    let (_sidecar, client) = start(&[]).await;
    let router = client.router();
    let run = "rs-cards";

    let (card, created) = router
        .register_agent(AgentCard {
            display_name: "Legal".into(),
            description: "summarize legal contracts".into(),
            capabilities: vec!["legal-summary".into()],
            cost_per_call_micro_usd: 1500,
            typical_latency: Some(Duration::from_millis(2500)),
            capacity: 4,
            labels: HashMap::from([
                ("run".to_string(), run.to_string()),
                ("team".to_string(), "law".to_string()),
            ]),
            ..AgentCard::new(&format!("{run}-legal"))
        })
        .await
        .unwrap();
    assert!(created);
    assert_eq!(card.agent_id, format!("{run}-legal"));
    assert_eq!(card.source, AgentSource::Registered);
    assert!(card.available);
    assert_eq!(card.capacity, 4);
    assert_eq!(card.load(), 0.0);
    assert_eq!(card.typical_latency, Some(Duration::from_millis(2500)));
    assert_eq!(card.capabilities, vec!["legal-summary"]);
    assert!(card.create_time.is_some() && card.update_time.is_some());

    // The same id replaces the card.
    let (card, created) = router
        .register_agent(AgentCard {
            description: "summarize legal contracts".into(),
            labels: labels(run),
            ..AgentCard::new(&format!("{run}-legal"))
        })
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(card.capacity, 1); // 0 means 1
    for i in 0..5 {
        router
            .register_agent(AgentCard {
                vector: Some(unit(&[1.0, i as f32], DIMENSION)),
                labels: labels(run),
                ..AgentCard::new(&format!("{run}-p{i}"))
            })
            .await
            .unwrap();
    }

    // Page by page, by agent_id.
    let filter = AgentFilter {
        labels: labels(run),
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = router.list_agents(&filter, 2, &token).await.unwrap();
        assert!(page.agents.len() <= 2);
        seen.extend(page.agents.into_iter().map(|c| c.agent_id));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut expected = vec![format!("{run}-legal")];
    expected.extend((0..5).map(|i| format!("{run}-p{i}")));
    assert_eq!(seen, expected);
    assert_eq!(pages, 3);
    // The bounded helper: everything, or at most the limit.
    let all: Vec<String> = router
        .agents(&filter, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.agent_id)
        .collect();
    assert_eq!(all, expected);
    assert_eq!(router.agents(&filter, 4).await.unwrap().len(), 4);
    let by_capability = router
        .agents(
            &AgentFilter {
                capability: "legal-summary".into(),
                ..Default::default()
            },
            100,
        )
        .await
        .unwrap();
    assert!(by_capability.is_empty()); // the replacement dropped the capability

    // A token is only good for the filter it was issued for.
    let page = router.list_agents(&filter, 4, "").await.unwrap();
    assert!(!page.next_page_token.is_empty());
    let other = AgentFilter {
        labels: labels("another"),
        ..Default::default()
    };
    let e = router
        .list_agents(&other, 4, &page.next_page_token)
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument, "{e}");
    assert_eq!(e.reason, "INVALID_PAGE_TOKEN");
    assert!(e.field("page_token").is_some(), "{e}");

    // A vector of the wrong dimension names the field and both dimensions.
    let e = router
        .register_agent(AgentCard {
            vector: Some(vec![1.0, 2.0]),
            ..AgentCard::new(&format!("{run}-bad"))
        })
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument, "{e}");
    assert_eq!(e.reason, "DIMENSION_MISMATCH");
    assert_eq!(e.domain, "are.v1");
    assert!(e.field("agent.vector").is_some(), "{e}");
    assert_eq!(e.metadata["expected_dimension"], DIMENSION.to_string());
    assert_eq!(e.metadata["actual_dimension"], "2");
    let e = router
        .register_agent(AgentCard::new("bad id!"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.reason.as_str()),
        (Code::InvalidArgument, "INVALID_ARGUMENT")
    );
    assert!(e.field("agent.agent_id").is_some(), "{e}");

    router
        .deregister_agent(&format!("{run}-legal"))
        .await
        .unwrap();
    let e = router
        .deregister_agent(&format!("{run}-legal"))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::NotFound, "{e}");
    assert_eq!(e.reason, "AGENT_NOT_FOUND");
    assert_eq!(e.metadata["agent_id"], format!("{run}-legal"));
    assert_eq!(router.agents(&filter, 100).await.unwrap().len(), 5);
}

#[tokio::test]
async fn tasks_are_routed_by_mode_with_filters_and_refused_below_the_threshold() {
    let (_sidecar, client) = start(&[]).await;
    let router = client.router();
    let run = "rs-route";
    register_quartet(&client, run).await;
    let base = RouteOptions {
        threshold: Some(0.6),
        labels: labels(run),
        ..Default::default()
    };
    let task = unit(&[1.0], DIMENSION);

    let best = router
        .route_task(
            task.clone(),
            &RouteOptions {
                mode: RouteMode::BestMatch,
                ..base.clone()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        ids(&best),
        [
            format!("{run}-gold"),
            format!("{run}-silver"),
            format!("{run}-bronze")
        ]
    );
    assert_eq!(best.mode, RouteMode::BestMatch);
    assert!((best.threshold - 0.6).abs() < 1e-9);
    assert!((best.candidates[0].similarity - 1.0).abs() < 1e-6);
    assert!(best.candidates.iter().all(|c| c.above_threshold));

    // The router's default mode is cost-biased: the cheapest above the threshold wins.
    let cheap = router.route_task(&task[..], &base).await.unwrap();
    assert_eq!(cheap.mode, RouteMode::CostBiased);
    let first = &cheap.candidates[0];
    assert_eq!(first.agent_id, format!("{run}-bronze"));
    assert_eq!(first.capability, "bronze");
    assert_eq!(first.cost_per_call_micro_usd, 100);
    assert!(first.available);
    assert!(first.reason.starts_with("cheapest above 0.60"), "{first:?}");
    assert!(!ids(&cheap).contains(&format!("{run}-other").as_str()));

    let excluded = router
        .route_task(
            task.clone(),
            &RouteOptions {
                exclude_agent_ids: vec![format!("{run}-bronze")],
                top_k: 1,
                ..base.clone()
            },
        )
        .await
        .unwrap();
    assert_eq!(ids(&excluded), [format!("{run}-silver")]);
    let required = router
        .route_task(
            task.clone(),
            &RouteOptions {
                required_capabilities: vec!["gold".into()],
                ..base.clone()
            },
        )
        .await
        .unwrap();
    assert_eq!(ids(&required), [format!("{run}-gold")]);

    // Nothing reaches 0.95: NOT_FOUND, with the best below the threshold.
    let far = unit(&[0.0, 1.0], DIMENSION);
    let strict = RouteOptions {
        threshold: Some(0.95),
        ..base.clone()
    };
    let e = router.route_task(far.clone(), &strict).await.unwrap_err();
    assert_eq!(e.code, Code::NotFound, "{e}");
    assert_eq!(e.reason, "NO_ROUTE_ABOVE_THRESHOLD");
    assert_eq!(e.metadata["best_agent_id"], format!("{run}-bronze"));
    assert_eq!(e.metadata["threshold"], "0.950000");
    assert!(e.metadata.contains_key("best_similarity"));
    assert!(e.message.contains(&format!("{run}-bronze")), "{e}");
    let below = router
        .route_task(
            far,
            &RouteOptions {
                include_below_threshold: true,
                top_k: 2,
                ..strict
            },
        )
        .await
        .unwrap();
    assert_eq!(
        ids(&below),
        [format!("{run}-bronze"), format!("{run}-silver")]
    );
    assert!(below.candidates.iter().all(|c| !c.above_threshold));

    // Text is embedded by the router's embedder.
    let text_run = "rs-route-text";
    for (name, description) in [
        ("legal", "summarize legal contracts and court rulings"),
        ("paint", "generate watercolor paintings of landscapes"),
    ] {
        router
            .register_agent(AgentCard {
                description: description.into(),
                labels: labels(text_run),
                ..AgentCard::new(&format!("{text_run}-{name}"))
            })
            .await
            .unwrap();
    }
    let by_text = router
        .route_task(
            "summarize these legal contracts",
            &RouteOptions {
                labels: labels(text_run),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(by_text.candidates[0].agent_id, format!("{text_run}-legal"));

    // Bad input names the field.
    let e = router.route_task(vec![1.0], &base).await.unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument, "{e}");
    assert_eq!(e.reason, "DIMENSION_MISMATCH");
    assert!(e.field("vector").is_some(), "{e}");
    let e = router
        .route_task(
            task,
            &RouteOptions {
                top_k: 101,
                ..base.clone()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.reason, "LIMIT_EXCEEDED", "{e}");
    assert!(e.field("top_k").is_some(), "{e}");

    for name in ["gold", "silver", "bronze", "other"] {
        router
            .deregister_agent(&format!("{run}-{name}"))
            .await
            .unwrap();
    }
    let e = router
        .route_task(unit(&[1.0], DIMENSION), &base)
        .await
        .unwrap_err();
    assert_eq!(e.reason, "NO_ROUTE_ABOVE_THRESHOLD", "{e}");
}

/// A prompt of the "easy" cluster (near axis 0) or the "hard" one (near
/// axis 1), the `i`th of its kind; prompts of a cluster are all similar.
fn prompt(hard: bool, i: usize) -> Vec<f32> {
    let mut v = vec![0.0; DIMENSION];
    v[usize::from(hard)] = 1.0;
    v[2 + i % (DIMENSION - 2)] = 0.05;
    v
}

#[tokio::test]
async fn models_are_routed_and_outcomes_reported_and_learned_from() {
    let (_sidecar, client) = start(&[]).await;
    let router = client.router();
    let cheap = ModelSpec {
        input_cost_per_million_tokens_micro_usd: 150_000,
        output_cost_per_million_tokens_micro_usd: 600_000,
        prior_success_rate: 0.9,
        ..ModelSpec::new("rs-cheap")
    };
    let strong = ModelSpec {
        tier: 8,
        input_cost_per_million_tokens_micro_usd: 5_000_000,
        output_cost_per_million_tokens_micro_usd: 15_000_000,
        prior_success_rate: 0.9,
        context_window_tokens: 128_000,
        labels: HashMap::from([("vendor".to_string(), "x".to_string())]),
        ..ModelSpec::new("rs-strong")
    };
    assert!(router.get_model_catalog().await.unwrap().models.is_empty());
    let e = router
        .route_model("before any catalog", &ModelRouteOptions::default())
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.reason.as_str()),
        (Code::FailedPrecondition, "MODEL_CATALOG_EMPTY"),
        "{e}"
    );

    let catalog = router
        .put_model_catalog([cheap.clone(), strong.clone()])
        .await
        .unwrap();
    assert_eq!(catalog.models, vec![cheap.clone(), strong.clone()]);
    assert!(catalog.update_time.is_some());
    assert_eq!(router.get_model_catalog().await.unwrap(), catalog);

    // Before any feedback the prior holds: the cheap model, expected to meet the target.
    let route = router
        .route_model(
            "What is 2 + 2?",
            &ModelRouteOptions {
                quality_target: 0.8,
                estimated_output_tokens: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(route.model_id, "rs-cheap");
    assert!(route.target_met);
    assert!(!route.route_id.is_empty());
    assert!((route.expected_quality - 0.9).abs() < 1e-9);
    let models: Vec<&str> = route
        .estimates
        .iter()
        .map(|e| e.model_id.as_str())
        .collect();
    assert_eq!(models, ["rs-cheap", "rs-strong"]); // cheapest first
    assert_eq!(route.estimates[0].samples, 0);
    assert_eq!(
        route.expected_cost_micro_usd,
        route.estimates[0].expected_cost_micro_usd
    );
    assert!(!route.reason.is_empty());

    // Reported once, with usage and latency; twice is ALREADY_EXISTS.
    router
        .report_outcome(
            &route.route_id,
            true,
            &OutcomeOptions {
                usage: Some(pb::Usage {
                    input_tokens: 10,
                    output_tokens: 5,
                    cost_micro_usd: route.expected_cost_micro_usd,
                    llm_calls: 1,
                    ..Default::default()
                }),
                latency: Some(Duration::from_millis(350)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let e = router
        .report_outcome(&route.route_id, 0.5, &OutcomeOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::AlreadyExists, "{e}");
    assert_eq!(e.reason, "OUTCOME_ALREADY_REPORTED");
    assert_eq!(e.metadata["route_id"], route.route_id);
    let e = router
        .report_outcome("r0000000000000000", true, &OutcomeOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::NotFound, "{e}");
    assert_eq!(e.reason, "ROUTE_NOT_FOUND");
    let other = router
        .route_model("another question", &ModelRouteOptions::default())
        .await
        .unwrap();
    let e = router
        .report_outcome(&other.route_id, 1.5, &OutcomeOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument, "{e}");
    assert!(e.field("score").is_some(), "{e}");
    router
        .report_outcome(
            &other.route_id,
            0.75,
            &OutcomeOptions {
                model_id: "rs-strong".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    // Bad input: a vector of the wrong dimension; everything excluded.
    let e = router
        .route_model(vec![1.0, 0.0, 0.0], &ModelRouteOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument, "{e}");
    assert_eq!(e.reason, "DIMENSION_MISMATCH");
    assert!(e.field("vector").is_some(), "{e}");
    let e = router
        .route_model(
            "x",
            &ModelRouteOptions {
                exclude_model_ids: vec!["rs-cheap".into(), "rs-strong".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::FailedPrecondition, "{e}");

    // Feedback: the cheap model fails the hard prompts, so they move to the strong one.
    let target = ModelRouteOptions {
        quality_target: 0.8,
        ..Default::default()
    };
    for i in 0..12 {
        let route = router.route_model(prompt(true, i), &target).await.unwrap();
        let success = route.model_id != "rs-cheap";
        router
            .report_outcome(&route.route_id, success, &OutcomeOptions::default())
            .await
            .unwrap();
    }
    let hard = router
        .route_model(prompt(true, 100), &target)
        .await
        .unwrap();
    assert_eq!(hard.model_id, "rs-strong", "{hard:?}");
    let cheap_estimate = hard
        .estimates
        .iter()
        .find(|e| e.model_id == "rs-cheap")
        .unwrap();
    assert!(cheap_estimate.samples >= 5, "{hard:?}");
    assert!(cheap_estimate.expected_quality < 0.8, "{hard:?}");
    let easy = router
        .route_model(prompt(false, 100), &target)
        .await
        .unwrap();
    assert_eq!(easy.model_id, "rs-cheap", "{easy:?}");
}

#[tokio::test]
async fn without_an_embedder_only_vectors_are_routed() {
    let (_sidecar, client) = start(&["--router-embedder", "off", "--router-dimension", "8"]).await;
    let router = client.router();
    let e = router
        .register_agent(AgentCard {
            description: "needs an embedder".into(),
            ..AgentCard::new("rs-text")
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.reason.as_str()),
        (Code::FailedPrecondition, "EMBEDDER_UNAVAILABLE"),
        "{e}"
    );
    let e = router
        .route_task("some text", &RouteOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.reason, "EMBEDDER_UNAVAILABLE", "{e}");
    let (card, _) = router
        .register_agent(AgentCard {
            vector: Some(unit(&[1.0], 8)),
            ..AgentCard::new("rs-vector")
        })
        .await
        .unwrap();
    assert_eq!(card.vector, Some(unit(&[1.0], 8)));
    let result = router
        .route_task(unit(&[1.0], 8), &RouteOptions::default())
        .await
        .unwrap();
    assert_eq!(result.candidates[0].agent_id, "rs-vector");
    let e = router
        .route_task(unit(&[1.0], DIMENSION), &RouteOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.reason, "DIMENSION_MISMATCH", "{e}");
    assert_eq!(e.metadata["expected_dimension"], "8");
}
