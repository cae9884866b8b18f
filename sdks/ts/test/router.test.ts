// The router against a real sidecar: cards and paging, RouteTask modes, filters and the no-route
// error, the model catalog, RouteModel learning from reported outcomes, and bad input.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { AreError, Code, type ModelSpec } from "@are-runtime/sdk";

import { sharedSidecar, unique } from "./helpers.js";

/** The dimension of the sidecar's default (lexical) router embedder. */
const DIMENSION = 256;

const shared = sharedSidecar();

/** A DIMENSION vector starting with `components`. */
function unit(...components: number[]): number[] {
  const vector = new Array<number>(DIMENSION).fill(0);
  components.forEach((c, i) => (vector[i] = c));
  return vector;
}

/** The AreError `promise` rejects with, checked for code, reason and (when given) a field violation. */
async function rejection(promise: Promise<unknown>, code: Code, reason: string, field?: string): Promise<AreError> {
  const error = await promise.then(
    () => assert.fail(`resolved; expected ${reason}`),
    (e: unknown) => e,
  );
  assert.ok(error instanceof AreError, String(error));
  assert.equal(error.code, code, error.message);
  assert.equal(error.reason, reason, error.message);
  if (field !== undefined) assert.deepEqual(error.fieldViolations.map((v) => v.field), [field], error.message);
  return error;
}

/** Registers gold, silver and bronze (ever cheaper, ever further from axis 0) and other (orthogonal, cheapest). */
async function registerTrio(run: string): Promise<void> {
  const agents: [string, number[], number][] = [
    ["gold", unit(1), 900],
    ["silver", unit(0.9, 0.3), 300],
    ["bronze", unit(0.7, 0.7), 100],
    ["other", unit(0, 0, 1), 1],
  ];
  for (const [id, vector, cost] of agents) {
    await shared.client.router.registerAgent({ agentId: `${run}-${id}`, capabilities: [id], vector, costPerCallMicroUsd: cost, labels: { run } });
  }
}

describe("router", () => {
  test("register, list by pages, deregister", async () => {
    const run = unique("cards");
    const { agent, created } = await shared.client.router.registerAgent({
      agentId: `${run}-legal`,
      displayName: "Legal",
      description: "summarize legal contracts",
      capabilities: ["legal-summary"],
      costPerCallMicroUsd: 1500,
      typicalLatencyMs: 1500,
      capacity: 4,
      labels: { run, team: "law" },
    });
    assert.equal(created, true);
    assert.equal(agent.source, "registered");
    assert.equal(agent.available, true);
    assert.equal(agent.capacity, 4);
    assert.equal(agent.typicalLatencyMs, 1500);
    assert.equal(agent.load, 0);
    assert.equal(agent.costPerCallMicroUsd, 1500);
    assert.deepEqual(agent.capabilities, ["legal-summary"]);
    assert.ok(agent.createTime instanceof Date);
    const again = await shared.client.router.registerAgent({ agentId: `${run}-legal`, description: "replaced", labels: { run } });
    assert.equal(again.created, false);

    for (let i = 0; i < 5; i += 1) {
      const { agent: stored } = await shared.client.router.registerAgent({ agentId: `${run}-p${i}`, vector: unit(1, i), labels: { run } });
      assert.equal(stored.vector?.length, DIMENSION);
    }
    const seen: string[] = [];
    for await (const card of shared.client.router.iterAgents({ labels: { run } }, { pageSize: 2 })) seen.push(card.agentId);
    assert.deepEqual(seen, [`${run}-legal`, ...[0, 1, 2, 3, 4].map((i) => `${run}-p${i}`)]);
    const limited: string[] = [];
    for await (const card of shared.client.router.iterAgents({ labels: { run } }, { pageSize: 2, limit: 3 })) limited.push(card.agentId);
    assert.deepEqual(limited, seen.slice(0, 3));

    const page = await shared.client.router.listAgents({ labels: { run } }, { pageSize: 4 });
    assert.equal(page.agents.length, 4);
    assert.ok(page.nextPageToken);
    const last = await shared.client.router.listAgents({ labels: { run } }, { pageSize: 4, pageToken: page.nextPageToken });
    assert.deepEqual(last.agents.map((a) => a.agentId), seen.slice(4));
    assert.equal(last.nextPageToken, "");
    await rejection(
      shared.client.router.listAgents({ labels: { run: "another" } }, { pageToken: page.nextPageToken }),
      Code.INVALID_ARGUMENT,
      "INVALID_PAGE_TOKEN",
      "page_token",
    );
    await rejection(shared.client.router.listAgents({}, { pageToken: "not a token!" }), Code.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN", "page_token");
    assert.deepEqual((await shared.client.router.listAgents({ labels: { run }, capability: "legal-summary" })).agents, []);

    await shared.client.router.deregisterAgent(`${run}-legal`);
    const missing = await rejection(shared.client.router.deregisterAgent(`${run}-legal`), Code.NOT_FOUND, "AGENT_NOT_FOUND");
    assert.equal(missing.metadata["agent_id"], `${run}-legal`);
    assert.equal((await shared.client.router.listAgents({ labels: { run } })).agents.length, 5);
  });

  test("routeTask: best match, cost-biased, exclusions, required capabilities", async () => {
    const run = unique("route");
    await registerTrio(run);
    const labels = { run };

    const best = await shared.client.router.routeTask(unit(1), { mode: "best_match", threshold: 0.6, labels });
    assert.deepEqual(best.candidates.map((c) => c.agentId), [`${run}-gold`, `${run}-silver`, `${run}-bronze`]);
    assert.equal(best.mode, "best_match");
    assert.equal(best.threshold, 0.6);
    assert.ok(best.candidates[0]!.similarity > 0.99);
    assert.ok(best.candidates.every((c) => c.aboveThreshold && c.available));

    // The router's default mode is cost-biased: the cheapest above the threshold wins.
    const cheap = await shared.client.router.routeTask(unit(1), { threshold: 0.6, labels });
    assert.equal(cheap.mode, "cost_biased");
    const top = cheap.candidates[0]!;
    assert.equal(top.agentId, `${run}-bronze`);
    assert.equal(top.capability, "bronze");
    assert.equal(top.costPerCallMicroUsd, 100);
    assert.ok(top.reason.startsWith("cheapest above 0.60"), top.reason);
    const unweighted = await shared.client.router.routeTask(unit(1), { mode: "cost_biased", costWeight: 0, threshold: 0.6, labels });
    assert.equal(unweighted.candidates[0]?.agentId, `${run}-gold`);

    const excluded = await shared.client.router.routeTask(unit(1), { threshold: 0.6, labels, excludeAgentIds: [`${run}-bronze`], topK: 1 });
    assert.deepEqual(excluded.candidates.map((c) => c.agentId), [`${run}-silver`]);
    const required = await shared.client.router.routeTask(unit(1), { threshold: 0.6, labels, requiredCapabilities: ["gold"] });
    assert.deepEqual(required.candidates.map((c) => c.agentId), [`${run}-gold`]);
  });

  test("routeTask: nothing above the threshold is NOT_FOUND with the best below it", async () => {
    const run = unique("noroute");
    await registerTrio(run);
    const labels = { run };
    const error = await rejection(shared.client.router.routeTask(unit(0, 1), { threshold: 0.95, labels }), Code.NOT_FOUND, "NO_ROUTE_ABOVE_THRESHOLD");
    assert.equal(error.metadata["best_agent_id"], `${run}-bronze`);
    assert.equal(error.metadata["threshold"], "0.950000");
    assert.ok(Number(error.metadata["best_similarity"]) > 0.5, error.metadata["best_similarity"]);
    assert.match(error.details, new RegExp(`best below it: ${run}-bronze \\(0\\.\\d+\\), ${run}-silver`));

    const below = await shared.client.router.routeTask(unit(0, 1), { threshold: 0.95, labels, includeBelowThreshold: true, topK: 2 });
    assert.deepEqual(below.candidates.map((c) => c.agentId), [`${run}-bronze`, `${run}-silver`]);
    assert.ok(below.candidates.every((c) => !c.aboveThreshold));
  });

  test("routeTask by text, with the router's embedder", async () => {
    const run = unique("text");
    await shared.client.router.registerAgent({ agentId: `${run}-legal`, description: "summarize legal contracts and court rulings", labels: { run } });
    await shared.client.router.registerAgent({ agentId: `${run}-paint`, description: "generate watercolor paintings of landscapes", labels: { run } });
    const result = await shared.client.router.routeTask("summarize these legal contracts", { labels: { run } });
    assert.equal(result.candidates[0]?.agentId, `${run}-legal`);
  });

  test("bad input names the field and the reason", async () => {
    const run = unique("bad");
    const mismatch = await rejection(shared.client.router.routeTask([1, 0, 0]), Code.INVALID_ARGUMENT, "DIMENSION_MISMATCH", "vector");
    assert.equal(mismatch.metadata["expected_dimension"], String(DIMENSION));
    assert.equal(mismatch.metadata["actual_dimension"], "3");
    assert.equal(mismatch.field, "vector");
    await rejection(
      shared.client.router.registerAgent({ agentId: `${run}-a`, vector: [1, 2] }),
      Code.INVALID_ARGUMENT,
      "DIMENSION_MISMATCH",
      "agent.vector",
    );
    await rejection(shared.client.router.registerAgent({ agentId: "bad id!" }), Code.INVALID_ARGUMENT, "INVALID_ARGUMENT", "agent.agent_id");
    await rejection(shared.client.router.registerAgent({ agentId: `${run}-a`, capacity: 100_001 }), Code.INVALID_ARGUMENT, "LIMIT_EXCEEDED", "agent.capacity");
    await rejection(shared.client.router.routeTask("x", { threshold: 1.5 }), Code.INVALID_ARGUMENT, "INVALID_ARGUMENT", "threshold");
    await rejection(shared.client.router.routeTask("x", { topK: 101 }), Code.INVALID_ARGUMENT, "LIMIT_EXCEEDED", "top_k");
    await assert.rejects(shared.client.router.routeTask("x", { mode: "fastest" as never }), RangeError);
  });

  test("routeModel before any catalog is FAILED_PRECONDITION, MODEL_CATALOG_EMPTY", async () => {
    // This file's sidecar is its own and this test runs before the catalog test.
    assert.deepEqual((await shared.client.router.getModelCatalog()).models, []);
    await rejection(shared.client.router.routeModel("a question"), Code.FAILED_PRECONDITION, "MODEL_CATALOG_EMPTY");
    await rejection(shared.client.router.routeModel(unit(1)), Code.FAILED_PRECONDITION, "MODEL_CATALOG_EMPTY");
  });

  test("the model catalog, routeModel and reportOutcome; the router learns from outcomes", async () => {
    const cheapId = unique("cheap");
    const strongId = unique("strong");
    const cheap: ModelSpec = {
      modelId: cheapId,
      tier: 1,
      inputCostPerMillionTokensMicroUsd: 150_000,
      outputCostPerMillionTokensMicroUsd: 600_000,
      priorSuccessRate: 0.9,
      labels: { family: "small" },
    };
    const strong: ModelSpec = {
      modelId: strongId,
      tier: 8,
      inputCostPerMillionTokensMicroUsd: 5_000_000,
      outputCostPerMillionTokensMicroUsd: 15_000_000,
      priorSuccessRate: 0.9,
      contextWindowTokens: 128_000,
    };
    const catalog = await shared.client.router.putModelCatalog([cheap, strong]);
    assert.deepEqual(catalog.models.map((m) => m.modelId), [cheapId, strongId]);
    assert.equal(catalog.models[0]?.labels["family"], "small");
    assert.equal(catalog.models[1]?.contextWindowTokens, 128_000);
    assert.ok(catalog.updateTime instanceof Date);
    assert.deepEqual((await shared.client.router.getModelCatalog()).models, catalog.models);

    // Before any outcome the cheap model's prior clears the target.
    const route = await shared.client.router.routeModel("What is 2 + 2?", { qualityTarget: 0.8, estimatedInputTokens: 100, estimatedOutputTokens: 10 });
    assert.equal(route.modelId, cheapId);
    assert.ok(route.routeId);
    assert.equal(route.targetMet, true);
    assert.ok(route.reason);
    assert.deepEqual(route.estimates.map((e) => [e.modelId, e.samples]), [[cheapId, 0], [strongId, 0]]);
    await shared.client.router.reportOutcome(route.routeId, {
      success: true,
      inputTokens: 100,
      outputTokens: 10,
      costMicroUsd: route.expectedCostMicroUsd,
      latencyMs: 800,
    });
    await rejection(shared.client.router.reportOutcome(route.routeId, { score: 0.5 }), Code.ALREADY_EXISTS, "OUTCOME_ALREADY_REPORTED");

    // The cheap model fails prompts near axis 10: after five such outcomes they go to the strong model.
    const near = (d: number): number[] => {
      const vector = new Array<number>(DIMENSION).fill(0);
      vector[10] = 1;
      vector[11] = d;
      return vector;
    };
    for (let i = 0; i < 6; i += 1) {
      const r = await shared.client.router.routeModel(near(0.01 * i), { qualityTarget: 0.8 });
      await shared.client.router.reportOutcome(r.routeId, { success: r.modelId !== cheapId });
    }
    const learned = await shared.client.router.routeModel(near(0.02), { qualityTarget: 0.8 });
    assert.equal(learned.modelId, strongId, learned.reason);
    const cheapEstimate = learned.estimates.find((e) => e.modelId === cheapId);
    assert.ok(cheapEstimate && cheapEstimate.samples >= 5 && cheapEstimate.expectedQuality < 0.8, JSON.stringify(cheapEstimate));

    const scored = await shared.client.router.routeModel("a short question", { excludeModelIds: [strongId] });
    assert.equal(scored.modelId, cheapId);
    await shared.client.router.reportOutcome(scored.routeId, { score: 0.9, modelId: strongId });

    // Bad outcomes.
    const unknown = await rejection(shared.client.router.reportOutcome("r0000000000000000", { success: true }), Code.NOT_FOUND, "ROUTE_NOT_FOUND");
    assert.equal(unknown.metadata["route_id"], "r0000000000000000");
    const fresh = await shared.client.router.routeModel("another question");
    await rejection(shared.client.router.reportOutcome(fresh.routeId, { score: 1.5 }), Code.INVALID_ARGUMENT, "INVALID_ARGUMENT", "score");
    await rejection(shared.client.router.reportOutcome(fresh.routeId, {}), Code.INVALID_ARGUMENT, "INVALID_ARGUMENT", "outcome");
    await rejection(shared.client.router.reportOutcome(fresh.routeId, { success: true, score: 1 }), Code.INVALID_ARGUMENT, "INVALID_ARGUMENT", "outcome");
    await rejection(shared.client.router.routeModel([1, 0, 0]), Code.INVALID_ARGUMENT, "DIMENSION_MISMATCH", "vector");
    await rejection(
      shared.client.router.putModelCatalog([{ modelId: "a" }, { modelId: "a" }]),
      Code.INVALID_ARGUMENT,
      "INVALID_ARGUMENT",
      "catalog.models[1].model_id",
    );
    await rejection(
      shared.client.router.putModelCatalog([{ modelId: "a", priorSuccessRate: 1.2 }]),
      Code.INVALID_ARGUMENT,
      "INVALID_ARGUMENT",
      "catalog.models[0].prior_success_rate",
    );
    assert.equal((await shared.client.router.getModelCatalog()).models.length, 2);
  });
});
