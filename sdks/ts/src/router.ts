/**
 * The router (`client.router`): agent cards, task routing and model routing.
 *
 * Register what your agents can do and what they cost, then ask which one
 * should take a task:
 *
 * ```ts
 * await client.router.registerAgent({
 *   agentId: "summarizer", description: "summarise long documents", capabilities: ["summarize"], costPerCallMicroUsd: 2_000,
 * });
 * const result = await client.router.routeTask("summarise this contract");
 * const best = result.candidates[0];
 * ```
 *
 * And which model should answer a prompt, reporting how it went so the
 * router learns which prompts the cheap model handles:
 *
 * ```ts
 * const route = await client.router.routeModel("What is 2 + 2?", { qualityTarget: 0.8 });
 * // ... call route.modelId
 * await client.router.reportOutcome(route.routeId, { success: true, costMicroUsd: 42 });
 * ```
 *
 * Errors are {@link AreError}s: INVALID_ARGUMENT for bad input
 * (`fieldViolations` name the field; reason `DIMENSION_MISMATCH` for a vector
 * of the wrong size, with `metadata.expected_dimension`), NOT_FOUND (reasons
 * `AGENT_NOT_FOUND`, `NO_ROUTE_ABOVE_THRESHOLD`, `ROUTE_NOT_FOUND`),
 * FAILED_PRECONDITION (`EMBEDDER_UNAVAILABLE`, `MODEL_CATALOG_EMPTY`,
 * `NO_ELIGIBLE_MODEL`, `MODEL_NOT_IN_CATALOG`), ALREADY_EXISTS
 * (`OUTCOME_ALREADY_REPORTED`).
 *
 * @module
 */
import { AreError, Code } from "./errors.js";
import { AgentSource, type AgentCard as AgentCardMessage } from "./gen/are/v1/agent.js";
import {
  DeregisterAgentRequest,
  GetModelCatalogRequest,
  ListAgentsRequest,
  PutModelCatalogRequest,
  RegisterAgentRequest,
  ReportOutcomeRequest,
  RouteMode,
  RouteModelRequest,
  RouteTaskRequest,
  type ModelCatalog as ModelCatalogMessage,
  type ModelSpec as ModelSpecMessage,
  type RouterServiceClient,
} from "./gen/are/v1/router_service.js";
import type { CallOptions, Rpc } from "./rpc.js";
import { fromDuration, toDuration } from "./time.js";

/** How {@link Router.routeTask} ranks the agents that reach the threshold. */
export type RouteModeName = "best_match" | "cost_biased";

/** The page size {@link Router.iterAgents} asks for unless told. */
const AGENT_PAGE_SIZE = 100;

const MODES: Record<RouteModeName, RouteMode> = {
  best_match: RouteMode.ROUTE_MODE_BEST_MATCH,
  cost_biased: RouteMode.ROUTE_MODE_COST_BIASED,
};

/** A card to register: what the agent does, costs, and can take at once. */
export interface AgentCardInput {
  /** Unique id in the index (1 to 128 characters of `[A-Za-z0-9._:-]`); registering an existing id replaces its card. */
  agentId: string;
  /** What the agent does, in prose (at most 8 KiB); embedded by the router when no `vector` is given. */
  description?: string;
  /** Capability names it serves; a routed task goes to the first. */
  capabilities?: readonly string[];
  /** A human-readable name. */
  displayName?: string;
  /** Your own embedding of the card, of the router's dimension. */
  vector?: readonly number[];
  /** Typical cost of one call, in micro-US-dollars (1 USD = 1,000,000). */
  costPerCallMicroUsd?: number;
  /** Typical latency of one call, in milliseconds. */
  typicalLatencyMs?: number;
  /** Calls it can serve at once, 1 to 100,000; 0 means 1. */
  capacity?: number;
  /** Free labels for routing filters. */
  labels?: Record<string, string>;
}

/** An agent card as the sidecar stores it, with its live fields. */
export interface AgentCard {
  agentId: string;
  description: string;
  capabilities: string[];
  displayName: string;
  /** The card's vector, when it was registered with one. */
  vector: number[] | undefined;
  costPerCallMicroUsd: number;
  typicalLatencyMs: number | undefined;
  capacity: number;
  labels: Record<string, string>;
  /** `"registered"` (RegisterAgent) or `"worker"` (declared by a connected worker). */
  source: "registered" | "worker" | "";
  /** Whether it can take work now. */
  available: boolean;
  /** Calls in flight now. */
  running: number;
  /** Calls in flight divided by capacity: 0 idle, 1 or more full. */
  load: number;
  /** The connected workers backing the card. */
  workerIds: string[];
  createTime: Date | undefined;
  updateTime: Date | undefined;
}

/** Which cards {@link Router.listAgents} and {@link Router.iterAgents} return; unset means any. */
export interface AgentFilter {
  /** Only cards serving this capability. */
  capability?: string;
  /** Only cards having every one of these labels (at most 8). */
  labels?: Record<string, string>;
  /** Only cards that can take work now. */
  availableOnly?: boolean;
}

/** One page of {@link Router.listAgents}. */
export interface AgentPage {
  /** The cards of the page, by agent id. */
  agents: AgentCard[];
  /** The token of the next page; "" on the last page. */
  nextPageToken: string;
}

/** Options of {@link Router.routeTask}; unset means the router's default. */
export interface RouteTaskOptions extends CallOptions {
  /** How many agents to return, 1 to 100; default 5. */
  topK?: number;
  /** `"cost_biased"` (with cost weight 1, the cheapest agent above the threshold first) or `"best_match"`; default the router's (cost-biased unless configured). */
  mode?: RouteModeName;
  /** The cosine similarity an agent needs, in [-1, 1]; default the router's (0.5 unless configured). */
  threshold?: number;
  /** The weight of cost in cost-biased mode, in [0, 1]; default the router's (1 unless configured). */
  costWeight?: number;
  /** Agents never to return (at most 1,000). */
  excludeAgentIds?: readonly string[];
  /** Only agents serving every one of these capabilities (at most 16). */
  requiredCapabilities?: readonly string[];
  /** Only agents having every one of these labels (at most 8). */
  labels?: Record<string, string>;
  /** Unavailable agents may be returned (ranked last). */
  includeUnavailable?: boolean;
  /** When no agent reaches the threshold, return the best below it (`aboveThreshold` false) instead of throwing. */
  includeBelowThreshold?: boolean;
}

/** One ranked agent of a {@link RouteResult}. */
export interface RouteCandidate {
  agentId: string;
  /** The capability a task would be dispatched to. */
  capability: string;
  /** Cosine similarity of the agent to the task. */
  similarity: number;
  /** The ranking score of the mode used. */
  score: number;
  costPerCallMicroUsd: number;
  /** Running calls divided by capacity. */
  load: number;
  available: boolean;
  /** Whether the similarity reaches the threshold. */
  aboveThreshold: boolean;
  /** Why it ranks where it does, for humans (for example "cheapest above 0.80; load 0.25"). */
  reason: string;
}

/** The ranked agents for a task, best first, with the mode and threshold used. */
export interface RouteResult {
  candidates: RouteCandidate[];
  mode: RouteModeName | "";
  threshold: number;
}

/** One model of the catalog. */
export interface ModelSpec {
  /** The id the worker calls the model by (for example `"gpt-4o-mini"`). */
  modelId: string;
  /** 1 (cheapest, weakest) to 10 (strongest); breaks ties. Default 1. */
  tier?: number;
  /** Price of input tokens, in micro-US-dollars per million tokens (150,000 for $0.15). */
  inputCostPerMillionTokensMicroUsd?: number;
  /** Price of output tokens, in micro-US-dollars per million tokens. */
  outputCostPerMillionTokensMicroUsd?: number;
  /** Success probability assumed with too little history, in [0, 1]; 0 means 0.5. */
  priorSuccessRate?: number;
  /** Context window in tokens; 0 means unknown. */
  contextWindowTokens?: number;
  labels?: Record<string, string>;
}

/** The models {@link Router.routeModel} chooses from, and when the catalog was last replaced. */
export interface ModelCatalog {
  models: Required<ModelSpec>[];
  updateTime: Date | undefined;
}

/** Options of {@link Router.routeModel}. */
export interface RouteModelOptions extends CallOptions {
  /** The success probability wanted, in (0, 1]; default 0.8. */
  qualityTarget?: number;
  /** Models never to choose (at most 256). */
  excludeModelIds?: readonly string[];
  /** Expected input tokens; default estimated from the prompt (4 characters per token), unknown for vectors. */
  estimatedInputTokens?: number;
  /** Expected output tokens; default 500. */
  estimatedOutputTokens?: number;
}

/** The router's estimate for one model and one prompt. */
export interface ModelEstimate {
  modelId: string;
  /** Expected success probability (or mean score). */
  expectedQuality: number;
  expectedCostMicroUsd: number;
  /** How many similar past outcomes it rests on; 0 means the model's prior. */
  samples: number;
}

/** The model chosen for a prompt; report how it went with `routeId`. */
export interface ModelRoute {
  /** Pass it to {@link Router.reportOutcome} (valid 7 days). */
  routeId: string;
  modelId: string;
  expectedQuality: number;
  expectedCostMicroUsd: number;
  /** Whether it is expected to reach the quality target (else it is the best there is). */
  targetMet: boolean;
  /** Every eligible model's estimate, cheapest first. */
  estimates: ModelEstimate[];
  /** Why this model, for humans. */
  reason: string;
}

/** How a routed call went: exactly one of `success` and `score`, and what it cost. */
export interface OutcomeReport extends CallOptions {
  /** Whether the call met the need. */
  success?: boolean;
  /** A quality score in [0, 1]. */
  score?: number;
  /** The model actually called, when it differs from the chosen one. */
  modelId?: string;
  inputTokens?: number;
  outputTokens?: number;
  /** The call's cost in micro-US-dollars. */
  costMicroUsd?: number;
  /** How long the call took, in milliseconds. */
  latencyMs?: number;
}

/** @internal The `are.v1.AgentCard` of a card input (its input fields only). */
export function cardMessage(card: AgentCardInput): AgentCardMessage {
  return {
    agentId: card.agentId,
    displayName: card.displayName ?? "",
    description: card.description ?? "",
    capabilities: [...(card.capabilities ?? [])],
    vector: card.vector ? { values: [...card.vector] } : undefined,
    costPerCallMicroUsd: card.costPerCallMicroUsd ?? 0,
    typicalLatency: toDuration(card.typicalLatencyMs),
    capacity: card.capacity ?? 0,
    labels: { ...(card.labels ?? {}) },
    source: AgentSource.AGENT_SOURCE_UNSPECIFIED,
    available: false,
    running: 0,
    workerIds: [],
    createTime: undefined,
    updateTime: undefined,
  };
}

function cardView(card: AgentCardMessage): AgentCard {
  return {
    agentId: card.agentId,
    description: card.description,
    capabilities: card.capabilities,
    displayName: card.displayName,
    vector: card.vector ? [...card.vector.values] : undefined,
    costPerCallMicroUsd: card.costPerCallMicroUsd,
    typicalLatencyMs: fromDuration(card.typicalLatency),
    capacity: card.capacity,
    labels: card.labels,
    source:
      card.source === AgentSource.AGENT_SOURCE_REGISTERED ? "registered" : card.source === AgentSource.AGENT_SOURCE_WORKER ? "worker" : "",
    available: card.available,
    running: card.running,
    load: card.capacity > 0 ? card.running / card.capacity : 0,
    workerIds: card.workerIds,
    createTime: card.createTime,
    updateTime: card.updateTime,
  };
}

function modeName(mode: RouteMode): RouteModeName | "" {
  if (mode === RouteMode.ROUTE_MODE_BEST_MATCH) return "best_match";
  if (mode === RouteMode.ROUTE_MODE_COST_BIASED) return "cost_biased";
  return "";
}

function modelMessage(spec: ModelSpec): ModelSpecMessage {
  return {
    modelId: spec.modelId,
    tier: spec.tier ?? 1,
    inputCostPerMillionTokensMicroUsd: spec.inputCostPerMillionTokensMicroUsd ?? 0,
    outputCostPerMillionTokensMicroUsd: spec.outputCostPerMillionTokensMicroUsd ?? 0,
    priorSuccessRate: spec.priorSuccessRate ?? 0,
    contextWindowTokens: spec.contextWindowTokens ?? 0,
    labels: { ...(spec.labels ?? {}) },
  };
}

function catalogView(catalog: ModelCatalogMessage | undefined): ModelCatalog {
  return {
    models: (catalog?.models ?? []).map((m) => ({
      modelId: m.modelId,
      tier: m.tier,
      inputCostPerMillionTokensMicroUsd: m.inputCostPerMillionTokensMicroUsd,
      outputCostPerMillionTokensMicroUsd: m.outputCostPerMillionTokensMicroUsd,
      priorSuccessRate: m.priorSuccessRate,
      contextWindowTokens: m.contextWindowTokens,
      labels: m.labels,
    })),
    updateTime: catalog?.updateTime,
  };
}

function query(task: string | readonly number[], textField: "text" | "prompt") {
  return typeof task === "string" ? { [textField]: task } : { vector: { values: [...task] } };
}

/** `client.router`: agent cards, task routing, the model catalog, model routing and outcomes (RouterService). */
export class Router {
  /** @internal */
  constructor(
    private readonly raw: RouterServiceClient,
    private readonly rpc: Rpc,
  ) {}

  /** Adds a card, or replaces the card with the same id; returns it as stored and whether it is new. */
  async registerAgent(card: AgentCardInput, options: CallOptions = {}): Promise<{ agent: AgentCard; created: boolean }> {
    const response = await this.rpc.unary(
      this.raw.registerAgent.bind(this.raw),
      RegisterAgentRequest.fromPartial({ agent: cardMessage(card) }),
      options,
    );
    return { agent: cardView(response.agent!), created: response.created };
  }

  /**
   * Removes a registered card. Cards declared by workers go away with their workers instead.
   *
   * @throws AreError NOT_FOUND, reason `AGENT_NOT_FOUND` (`metadata.agent_id`).
   */
  async deregisterAgent(agentId: string, options: CallOptions = {}): Promise<void> {
    await this.rpc.unary(this.raw.deregisterAgent.bind(this.raw), DeregisterAgentRequest.fromPartial({ agentId }), options);
  }

  /**
   * One page of cards by agent id (`pageSize` default 100, at most 1,000).
   *
   * @throws AreError INVALID_ARGUMENT, reason `INVALID_PAGE_TOKEN`, for a token of another filter.
   */
  async listAgents(filter: AgentFilter = {}, options: CallOptions & { pageSize?: number; pageToken?: string } = {}): Promise<AgentPage> {
    const response = await this.rpc.unary(
      this.raw.listAgents.bind(this.raw),
      ListAgentsRequest.fromPartial({
        pageSize: options.pageSize ?? 0,
        pageToken: options.pageToken ?? "",
        capability: filter.capability ?? "",
        labels: { ...(filter.labels ?? {}) },
        availableOnly: filter.availableOnly ?? false,
      }),
      options,
    );
    return { agents: response.agents.map(cardView), nextPageToken: response.nextPageToken };
  }

  /** Yields every card matching the filter, by agent id, reading pages as needed (at most `limit`). */
  async *iterAgents(filter: AgentFilter = {}, options: CallOptions & { pageSize?: number; limit?: number } = {}): AsyncGenerator<AgentCard> {
    const { limit } = options;
    if (limit !== undefined && limit <= 0) return;
    const size = options.pageSize ?? AGENT_PAGE_SIZE;
    let pageToken = "";
    let count = 0;
    for (;;) {
      const pageSize = limit === undefined ? size : Math.max(1, Math.min(size, limit - count));
      const page = await this.listAgents(filter, { signal: options.signal, timeoutMs: options.timeoutMs, pageSize, pageToken });
      for (const agent of page.agents) {
        yield agent;
        count += 1;
        if (limit !== undefined && count >= limit) return;
      }
      pageToken = page.nextPageToken;
      if (!pageToken) return;
    }
  }

  /**
   * Ranks agents for a task given as text (at most 8 KiB, embedded by the
   * router) or as a vector of the router's dimension, and returns the
   * `topK`, best first.
   *
   * It never picks silently below the threshold:
   *
   * @throws AreError NOT_FOUND, reason `NO_ROUTE_ABOVE_THRESHOLD`, when no
   *   eligible agent reaches it; `details` lists the best below it,
   *   `metadata` holds `best_agent_id`, `best_similarity` and `threshold`
   *   (ask with `includeBelowThreshold` to get them as candidates).
   *   INVALID_ARGUMENT, reason `DIMENSION_MISMATCH` (field `vector`) or
   *   `INVALID_ARGUMENT`; FAILED_PRECONDITION, reason `EMBEDDER_UNAVAILABLE`.
   */
  async routeTask(task: string | readonly number[], options: RouteTaskOptions = {}): Promise<RouteResult> {
    let mode = RouteMode.ROUTE_MODE_UNSPECIFIED;
    if (options.mode !== undefined) {
      mode = MODES[options.mode];
      if (mode === undefined) throw new RangeError(`mode must be "best_match" or "cost_biased", got ${JSON.stringify(options.mode)}`);
    }
    const request = RouteTaskRequest.fromPartial({
      ...query(task, "text"),
      topK: options.topK ?? 0,
      mode,
      threshold: options.threshold,
      costWeight: options.costWeight,
      excludeAgentIds: [...(options.excludeAgentIds ?? [])],
      requiredCapabilities: [...(options.requiredCapabilities ?? [])],
      labels: { ...(options.labels ?? {}) },
      includeUnavailable: options.includeUnavailable ?? false,
      includeBelowThreshold: options.includeBelowThreshold ?? false,
    });
    const response = await this.rpc.unary(this.raw.routeTask.bind(this.raw), request, options);
    return {
      candidates: response.candidates.map((c) => ({
        agentId: c.agentId,
        capability: c.capability,
        similarity: c.similarity,
        score: c.score,
        costPerCallMicroUsd: c.costPerCallMicroUsd,
        load: c.load,
        available: c.available,
        aboveThreshold: c.aboveThreshold,
        reason: c.reason,
      })),
      mode: modeName(response.mode),
      threshold: response.threshold,
    };
  }

  /** Replaces the model catalog (1 to 256 models, unique ids); returns it with defaults filled in. */
  async putModelCatalog(models: readonly ModelSpec[], options: CallOptions = {}): Promise<ModelCatalog> {
    const response = await this.rpc.unary(
      this.raw.putModelCatalog.bind(this.raw),
      PutModelCatalogRequest.fromPartial({ catalog: { models: models.map(modelMessage) } }),
      options,
    );
    return catalogView(response.catalog);
  }

  /** The current model catalog (no models before the first put). */
  async getModelCatalog(options: CallOptions = {}): Promise<ModelCatalog> {
    const response = await this.rpc.unary(this.raw.getModelCatalog.bind(this.raw), GetModelCatalogRequest.fromPartial({}), options);
    return catalogView(response.catalog);
  }

  /**
   * Picks the cheapest model expected to reach `qualityTarget` for a prompt
   * (text, at most 1 MiB, or a vector of the router's dimension). Expected
   * quality comes from the outcomes of the nearest past prompts, or the
   * model's prior with fewer than 5; when no model reaches the target the
   * best one is chosen and `targetMet` is false.
   *
   * @throws AreError FAILED_PRECONDITION, reason `MODEL_CATALOG_EMPTY`, before {@link putModelCatalog},
   *   or `NO_ELIGIBLE_MODEL` with every model excluded or too small; INVALID_ARGUMENT, reason
   *   `DIMENSION_MISMATCH`.
   */
  async routeModel(prompt: string | readonly number[], options: RouteModelOptions = {}): Promise<ModelRoute> {
    const request = RouteModelRequest.fromPartial({
      ...query(prompt, "prompt"),
      qualityTarget: options.qualityTarget ?? 0,
      excludeModelIds: [...(options.excludeModelIds ?? [])],
      estimatedInputTokens: options.estimatedInputTokens ?? 0,
      estimatedOutputTokens: options.estimatedOutputTokens ?? 0,
    });
    const response = await this.rpc.unary(this.raw.routeModel.bind(this.raw), request, options);
    return {
      routeId: response.routeId,
      modelId: response.modelId,
      expectedQuality: response.expectedQuality,
      expectedCostMicroUsd: response.expectedCostMicroUsd,
      targetMet: response.targetMet,
      estimates: response.estimates.map((e) => ({
        modelId: e.modelId,
        expectedQuality: e.expectedQuality,
        expectedCostMicroUsd: e.expectedCostMicroUsd,
        samples: e.samples,
      })),
      reason: response.reason,
    };
  }

  /**
   * Reports how a routed call went, which feeds the estimator of
   * {@link routeModel}; give exactly one of `success` and `score`. Routes can
   * be reported for 7 days, once each.
   *
   * @throws AreError NOT_FOUND, reason `ROUTE_NOT_FOUND`; ALREADY_EXISTS, reason `OUTCOME_ALREADY_REPORTED`;
   *   INVALID_ARGUMENT (field `outcome`) for neither or both of `success` and `score`, checked before sending,
   *   or (field `score`) a score outside [0, 1].
   */
  async reportOutcome(routeId: string, outcome: OutcomeReport): Promise<void> {
    if ((outcome.success === undefined) === (outcome.score === undefined)) {
      const message = "give exactly one of success and score";
      throw new AreError(Code.INVALID_ARGUMENT, message, {
        reason: "INVALID_ARGUMENT",
        fieldViolations: [{ field: "outcome", description: message }],
      });
    }
    const request = ReportOutcomeRequest.fromPartial({
      routeId,
      modelId: outcome.modelId ?? "",
      success: outcome.success,
      score: outcome.score,
      usage: {
        inputTokens: outcome.inputTokens ?? 0,
        outputTokens: outcome.outputTokens ?? 0,
        costMicroUsd: outcome.costMicroUsd ?? 0,
        llmCalls: 1,
        toolCalls: 0,
      },
      latency: toDuration(outcome.latencyMs),
    });
    await this.rpc.unary(this.raw.reportOutcome.bind(this.raw), request, outcome);
  }
}
