package dev.are.sdk;

import dev.are.sdk.v1.AgentSource;
import dev.are.sdk.v1.DeregisterAgentRequest;
import dev.are.sdk.v1.GetModelCatalogRequest;
import dev.are.sdk.v1.ListAgentsRequest;
import dev.are.sdk.v1.ListAgentsResponse;
import dev.are.sdk.v1.PutModelCatalogRequest;
import dev.are.sdk.v1.RegisterAgentRequest;
import dev.are.sdk.v1.RegisterAgentResponse;
import dev.are.sdk.v1.ReportOutcomeRequest;
import dev.are.sdk.v1.RouteMode;
import dev.are.sdk.v1.RouteModelRequest;
import dev.are.sdk.v1.RouteModelResponse;
import dev.are.sdk.v1.RouteTaskRequest;
import dev.are.sdk.v1.RouteTaskResponse;
import dev.are.sdk.v1.Usage;
import dev.are.sdk.v1.Vector;
import io.grpc.Status;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;

/**
 * Capability and model routing (RouterService): {@code client.router()}. Agent cards say what each
 * agent can do and what it costs; {@link #routeTask} ranks them for a task by semantic match,
 * cost, load and health. {@link #routeModel} picks the cheapest model of the catalog expected to
 * reach a quality target for a prompt, and learns from the outcomes {@link #reportOutcome} records.
 *
 * <pre>{@code
 * Router router = client.router();
 * router.registerAgent(AgentCard.of("summarizer")
 *     .withDescription("summarise long documents")
 *     .withCapabilities("summarize")
 *     .withCostPerCallMicroUsd(2_000));
 * RouteResult result = router.routeTask("summarise this contract", RouteOptions.defaults());
 * RouteCandidate best = result.candidates().get(0);
 *
 * router.putModelCatalog(ModelSpec.of("small"), ModelSpec.of("large").withTier(8));
 * ModelRoute route = router.routeModel("What is 2 + 2?", ModelRouteOptions.defaults());
 * // ... call route.modelId(), then:
 * router.reportOutcome(route.routeId(), Outcome.success(true));
 * }</pre>
 *
 * <p>Vectors are of the router's dimension, as {@code List<Float>} or {@code float[]}; text is
 * embedded by the sidecar. Every call is bounded by the client's call timeout; every failure is an
 * {@link AreException} with the sidecar's reason: INVALID_ARGUMENT ({@link AreException#field}
 * names the field; reason {@code DIMENSION_MISMATCH} for a vector of the wrong size, with {@code
 * expected_dimension} and {@code actual_dimension} in the metadata), NOT_FOUND ({@code
 * AGENT_NOT_FOUND}, {@code NO_ROUTE_ABOVE_THRESHOLD}, {@code ROUTE_NOT_FOUND}), FAILED_PRECONDITION
 * ({@code EMBEDDER_UNAVAILABLE}, {@code MODEL_CATALOG_EMPTY}, {@code NO_ELIGIBLE_MODEL}, {@code
 * MODEL_NOT_IN_CATALOG}), ALREADY_EXISTS ({@code OUTCOME_ALREADY_REPORTED}).
 */
public final class Router {
  private final Client client;

  Router(Client client) {
    this.client = client;
  }

  /**
   * An agent as the router sees it. The components up to {@code labels} are what is registered:
   * its id (the id alphabet, at most 128 characters), a display name, what it does in prose
   * (embedded by the router when there is no vector), the capabilities it serves (a routed task
   * goes to the first that matches), its own embedding (null: none), the typical cost of one call
   * in micro-US-dollars, the typical latency (null: unknown), the calls it serves at once (0 means
   * 1) and free labels. The sidecar fills in the rest (ignored when registering): how the card got
   * into the index, whether it can take work now, the calls in flight, the connected workers
   * backing it, and when it was created and last changed. Immutable; build one with {@link #of} and
   * the {@code with} methods.
   */
  public record AgentCard(
      String agentId,
      String displayName,
      String description,
      List<String> capabilities,
      List<Float> vector,
      long costPerCallMicroUsd,
      Duration typicalLatency,
      int capacity,
      Map<String, String> labels,
      AgentSource source,
      boolean available,
      int running,
      List<String> workerIds,
      Instant createTime,
      Instant updateTime) {
    /** A card with this id and nothing else set. */
    public static AgentCard of(String agentId) {
      return new AgentCard(
          agentId,
          "",
          "",
          List.of(),
          null,
          0,
          null,
          0,
          Map.of(),
          AgentSource.AGENT_SOURCE_UNSPECIFIED,
          false,
          0,
          List.of(),
          null,
          null);
    }

    /** A human-readable name, at most 256 characters. */
    public AgentCard withDisplayName(String name) {
      return new AgentCard(
          agentId,
          name,
          description,
          capabilities,
          vector,
          costPerCallMicroUsd,
          typicalLatency,
          capacity,
          labels,
          source,
          available,
          running,
          workerIds,
          createTime,
          updateTime);
    }

    /** What the agent does, in prose (at most 8 KiB); embedded when there is no vector. */
    public AgentCard withDescription(String text) {
      return new AgentCard(
          agentId,
          displayName,
          text,
          capabilities,
          vector,
          costPerCallMicroUsd,
          typicalLatency,
          capacity,
          labels,
          source,
          available,
          running,
          workerIds,
          createTime,
          updateTime);
    }

    /** The capabilities it serves, in order of preference. */
    public AgentCard withCapabilities(String... names) {
      return withCapabilities(Arrays.asList(names));
    }

    /** The capabilities it serves, in order of preference. */
    public AgentCard withCapabilities(List<String> names) {
      return new AgentCard(
          agentId,
          displayName,
          description,
          List.copyOf(names),
          vector,
          costPerCallMicroUsd,
          typicalLatency,
          capacity,
          labels,
          source,
          available,
          running,
          workerIds,
          createTime,
          updateTime);
    }

    /** The caller's embedding of the card, of the router's dimension (null: none). */
    public AgentCard withVector(List<Float> v) {
      return new AgentCard(
          agentId,
          displayName,
          description,
          capabilities,
          v == null ? null : List.copyOf(v),
          costPerCallMicroUsd,
          typicalLatency,
          capacity,
          labels,
          source,
          available,
          running,
          workerIds,
          createTime,
          updateTime);
    }

    /** The caller's embedding of the card, of the router's dimension. */
    public AgentCard withVector(float[] v) {
      return withVector(floats(v));
    }

    /** The typical cost of one call, in micro-US-dollars (1 USD = 1,000,000); at least 0. */
    public AgentCard withCostPerCallMicroUsd(long cost) {
      return new AgentCard(
          agentId,
          displayName,
          description,
          capabilities,
          vector,
          cost,
          typicalLatency,
          capacity,
          labels,
          source,
          available,
          running,
          workerIds,
          createTime,
          updateTime);
    }

    /**
     * The typical latency of one call (null: unknown). A latency is a measure, not a bound: one
     * over 100 years ({@code ChronoUnit.FOREVER.getDuration()}) is INVALID_ARGUMENT naming {@code
     * typical_latency} when the card is sent.
     */
    public AgentCard withTypicalLatency(Duration latency) {
      return new AgentCard(
          agentId,
          displayName,
          description,
          capabilities,
          vector,
          costPerCallMicroUsd,
          latency,
          capacity,
          labels,
          source,
          available,
          running,
          workerIds,
          createTime,
          updateTime);
    }

    /** How many calls it serves at once, 1 to 100,000 (0 means 1). */
    public AgentCard withCapacity(int calls) {
      return new AgentCard(
          agentId,
          displayName,
          description,
          capabilities,
          vector,
          costPerCallMicroUsd,
          typicalLatency,
          calls,
          labels,
          source,
          available,
          running,
          workerIds,
          createTime,
          updateTime);
    }

    /** Free labels for routing filters. */
    public AgentCard withLabels(Map<String, String> l) {
      return new AgentCard(
          agentId,
          displayName,
          description,
          capabilities,
          vector,
          costPerCallMicroUsd,
          typicalLatency,
          capacity,
          Map.copyOf(l),
          source,
          available,
          running,
          workerIds,
          createTime,
          updateTime);
    }

    /** Calls in flight divided by capacity: 0 idle, 1 or more full. */
    public double load() {
      return capacity > 0 ? (double) running / capacity : 0.0;
    }

    /** The card as the {@code are.v1.AgentCard} message (the registered fields only). */
    public dev.are.sdk.v1.AgentCard toProto() {
      dev.are.sdk.v1.AgentCard.Builder b =
          dev.are.sdk.v1.AgentCard.newBuilder()
              .setAgentId(agentId == null ? "" : agentId)
              .setDisplayName(displayName == null ? "" : displayName)
              .setDescription(description == null ? "" : description)
              .addAllCapabilities(capabilities == null ? List.of() : capabilities)
              .setCostPerCallMicroUsd(costPerCallMicroUsd)
              .setCapacity(capacity)
              .putAllLabels(labels == null ? Map.of() : labels);
      if (vector != null) {
        b.setVector(Vector.newBuilder().addAllValues(vector));
      }
      if (typicalLatency != null) {
        b.setTypicalLatency(
            Durations.toProto(typicalLatency, "typical_latency", "about 292 years"));
      }
      return b.build();
    }

    /** A card from the {@code are.v1.AgentCard} message. */
    public static AgentCard fromProto(dev.are.sdk.v1.AgentCard c) {
      return new AgentCard(
          c.getAgentId(),
          c.getDisplayName(),
          c.getDescription(),
          List.copyOf(c.getCapabilitiesList()),
          c.hasVector() ? List.copyOf(c.getVector().getValuesList()) : null,
          c.getCostPerCallMicroUsd(),
          c.hasTypicalLatency() ? Durations.fromProto(c.getTypicalLatency()) : null,
          c.getCapacity(),
          Map.copyOf(c.getLabelsMap()),
          c.getSource(),
          c.getAvailable(),
          c.getRunning(),
          List.copyOf(c.getWorkerIdsList()),
          c.hasCreateTime() ? Durations.fromProto(c.getCreateTime()) : null,
          c.hasUpdateTime() ? Durations.fromProto(c.getUpdateTime()) : null);
    }
  }

  /** What {@link #registerAgent} returns: the card as stored, and whether its id was new. */
  public record Registered(AgentCard agent, boolean created) {}

  /**
   * Which cards {@link #listAgents} and {@link #agents} return: only those serving a capability
   * ("": any), having every one of some labels (at most 8), available now. Immutable.
   */
  public record AgentFilter(String capability, Map<String, String> labels, boolean availableOnly) {
    /** Every card. */
    public static AgentFilter defaults() {
      return new AgentFilter("", Map.of(), false);
    }

    /** Only cards serving this capability. */
    public AgentFilter withCapability(String c) {
      return new AgentFilter(c, labels, availableOnly);
    }

    /** Only cards having every one of these labels. */
    public AgentFilter withLabels(Map<String, String> l) {
      return new AgentFilter(capability, Map.copyOf(l), availableOnly);
    }

    /** Only cards that can take work now. */
    public AgentFilter withAvailableOnly(boolean a) {
      return new AgentFilter(capability, labels, a);
    }
  }

  /** One page of cards by agent_id, and the token of the next page (empty on the last). */
  public record AgentPage(List<AgentCard> agents, String nextPageToken) {}

  /**
   * How {@link #routeTask} ranks and filters: how many agents to return (1 to 100; 0 means 5), the
   * mode (null or UNSPECIFIED: the router's default, cost-biased unless configured), the cosine
   * similarity an agent needs (null: the router's default, 0.5 unless configured), the weight of
   * cost in cost-biased mode (null: the default, 1.0, so the cheapest agent above the threshold
   * comes first), agents never to return, capabilities an agent must all serve, labels it must all
   * have, whether unavailable agents may be returned (ranked last), and whether the best agents
   * below the threshold come back as data instead of NOT_FOUND. Immutable.
   */
  public record RouteOptions(
      int topK,
      RouteMode mode,
      Double threshold,
      Double costWeight,
      List<String> excludeAgentIds,
      List<String> requiredCapabilities,
      Map<String, String> labels,
      boolean includeUnavailable,
      boolean includeBelowThreshold) {
    /** The router's defaults throughout. */
    public static RouteOptions defaults() {
      return new RouteOptions(0, null, null, null, List.of(), List.of(), Map.of(), false, false);
    }

    /** How many agents to return, 1 to 100. */
    public RouteOptions withTopK(int k) {
      return new RouteOptions(
          k,
          mode,
          threshold,
          costWeight,
          excludeAgentIds,
          requiredCapabilities,
          labels,
          includeUnavailable,
          includeBelowThreshold);
    }

    /** How to rank: BEST_MATCH (similarity alone) or COST_BIASED. */
    public RouteOptions withMode(RouteMode m) {
      return new RouteOptions(
          topK,
          m,
          threshold,
          costWeight,
          excludeAgentIds,
          requiredCapabilities,
          labels,
          includeUnavailable,
          includeBelowThreshold);
    }

    /** The cosine similarity an agent needs, in [-1, 1]. */
    public RouteOptions withThreshold(double t) {
      return new RouteOptions(
          topK,
          mode,
          t,
          costWeight,
          excludeAgentIds,
          requiredCapabilities,
          labels,
          includeUnavailable,
          includeBelowThreshold);
    }

    /** The weight of cost in cost-biased mode, in [0, 1]. */
    public RouteOptions withCostWeight(double w) {
      return new RouteOptions(
          topK,
          mode,
          threshold,
          w,
          excludeAgentIds,
          requiredCapabilities,
          labels,
          includeUnavailable,
          includeBelowThreshold);
    }

    /** Agents never to return (at most 1,000). */
    public RouteOptions withExcludeAgentIds(String... ids) {
      return new RouteOptions(
          topK,
          mode,
          threshold,
          costWeight,
          List.of(ids),
          requiredCapabilities,
          labels,
          includeUnavailable,
          includeBelowThreshold);
    }

    /** Only agents serving every one of these capabilities (at most 16). */
    public RouteOptions withRequiredCapabilities(String... names) {
      return new RouteOptions(
          topK,
          mode,
          threshold,
          costWeight,
          excludeAgentIds,
          List.of(names),
          labels,
          includeUnavailable,
          includeBelowThreshold);
    }

    /** Only agents having every one of these labels (at most 8). */
    public RouteOptions withLabels(Map<String, String> l) {
      return new RouteOptions(
          topK,
          mode,
          threshold,
          costWeight,
          excludeAgentIds,
          requiredCapabilities,
          Map.copyOf(l),
          includeUnavailable,
          includeBelowThreshold);
    }

    /** Unavailable agents may be returned, ranked last. */
    public RouteOptions withIncludeUnavailable(boolean include) {
      return new RouteOptions(
          topK,
          mode,
          threshold,
          costWeight,
          excludeAgentIds,
          requiredCapabilities,
          labels,
          include,
          includeBelowThreshold);
    }

    /**
     * When no agent reaches the threshold, the best below it come back (with {@code
     * aboveThreshold} false) instead of NOT_FOUND.
     */
    public RouteOptions withIncludeBelowThreshold(boolean include) {
      return new RouteOptions(
          topK,
          mode,
          threshold,
          costWeight,
          excludeAgentIds,
          requiredCapabilities,
          labels,
          includeUnavailable,
          include);
    }
  }

  /**
   * One ranked agent: its id, the capability a task would be dispatched to, its cosine similarity
   * to the task, the ranking score of the mode used, its cost per call (micro-US-dollars), its load
   * (running / capacity), whether it can take work now, whether it reaches the threshold, and why
   * it ranks where it does, for humans.
   */
  public record RouteCandidate(
      String agentId,
      String capability,
      double similarity,
      double score,
      long costPerCallMicroUsd,
      double load,
      boolean available,
      boolean aboveThreshold,
      String reason) {}

  /** The ranked agents, best first, with the mode (resolved) and threshold used. */
  public record RouteResult(List<RouteCandidate> candidates, RouteMode mode, double threshold) {}

  /**
   * One model of the catalog: the id the worker calls it by, its tier (1, cheapest and weakest, to
   * 10; 0 means 1; breaks ties), the prices of input and output tokens in micro-US-dollars per
   * million tokens, the success probability assumed before there is enough history (in [0, 1]; 0
   * means 0.5), the context window in tokens (0: unknown) and free labels. Immutable.
   */
  public record ModelSpec(
      String modelId,
      int tier,
      long inputCostPerMillionTokensMicroUsd,
      long outputCostPerMillionTokensMicroUsd,
      double priorSuccessRate,
      long contextWindowTokens,
      Map<String, String> labels) {
    /** A model of this id, tier 1, free, with the default prior. */
    public static ModelSpec of(String modelId) {
      return new ModelSpec(modelId, 1, 0, 0, 0.0, 0, Map.of());
    }

    /** The tier, 1 to 10. */
    public ModelSpec withTier(int t) {
      return new ModelSpec(
          modelId,
          t,
          inputCostPerMillionTokensMicroUsd,
          outputCostPerMillionTokensMicroUsd,
          priorSuccessRate,
          contextWindowTokens,
          labels);
    }

    /** The prices of input and output tokens, in micro-US-dollars per million tokens. */
    public ModelSpec withPrices(long inputPerMillion, long outputPerMillion) {
      return new ModelSpec(
          modelId,
          tier,
          inputPerMillion,
          outputPerMillion,
          priorSuccessRate,
          contextWindowTokens,
          labels);
    }

    /** The success probability assumed with too little history, in [0, 1]. */
    public ModelSpec withPriorSuccessRate(double p) {
      return new ModelSpec(
          modelId,
          tier,
          inputCostPerMillionTokensMicroUsd,
          outputCostPerMillionTokensMicroUsd,
          p,
          contextWindowTokens,
          labels);
    }

    /** The context window in tokens; longer prompts are not routed to the model. */
    public ModelSpec withContextWindowTokens(long tokens) {
      return new ModelSpec(
          modelId,
          tier,
          inputCostPerMillionTokensMicroUsd,
          outputCostPerMillionTokensMicroUsd,
          priorSuccessRate,
          tokens,
          labels);
    }

    /** Free labels. */
    public ModelSpec withLabels(Map<String, String> l) {
      return new ModelSpec(
          modelId,
          tier,
          inputCostPerMillionTokensMicroUsd,
          outputCostPerMillionTokensMicroUsd,
          priorSuccessRate,
          contextWindowTokens,
          Map.copyOf(l));
    }

    /** The {@code are.v1.ModelSpec} message. */
    public dev.are.sdk.v1.ModelSpec toProto() {
      return dev.are.sdk.v1.ModelSpec.newBuilder()
          .setModelId(modelId == null ? "" : modelId)
          .setTier(tier)
          .setInputCostPerMillionTokensMicroUsd(inputCostPerMillionTokensMicroUsd)
          .setOutputCostPerMillionTokensMicroUsd(outputCostPerMillionTokensMicroUsd)
          .setPriorSuccessRate(priorSuccessRate)
          .setContextWindowTokens(contextWindowTokens)
          .putAllLabels(labels == null ? Map.of() : labels)
          .build();
    }

    /** A spec from the {@code are.v1.ModelSpec} message. */
    public static ModelSpec fromProto(dev.are.sdk.v1.ModelSpec m) {
      return new ModelSpec(
          m.getModelId(),
          m.getTier(),
          m.getInputCostPerMillionTokensMicroUsd(),
          m.getOutputCostPerMillionTokensMicroUsd(),
          m.getPriorSuccessRate(),
          m.getContextWindowTokens(),
          Map.copyOf(m.getLabelsMap()));
    }
  }

  /** The models {@link #routeModel} chooses from, and when the catalog was last replaced. */
  public record ModelCatalog(List<ModelSpec> models, Instant updateTime) {}

  /**
   * Options of {@link #routeModel}: the success probability wanted (in (0, 1]; 0 means 0.8), models
   * never to choose (at most 256), the expected input tokens (for the cost and the context window
   * check; 0: estimated from the prompt, unknown for vectors) and output tokens (0 means 500).
   * Immutable.
   */
  public record ModelRouteOptions(
      double qualityTarget,
      List<String> excludeModelIds,
      long estimatedInputTokens,
      long estimatedOutputTokens) {
    /** The router's defaults throughout. */
    public static ModelRouteOptions defaults() {
      return new ModelRouteOptions(0.0, List.of(), 0, 0);
    }

    /** The success probability wanted, in (0, 1]. */
    public ModelRouteOptions withQualityTarget(double q) {
      return new ModelRouteOptions(
          q, excludeModelIds, estimatedInputTokens, estimatedOutputTokens);
    }

    /** Models never to choose. */
    public ModelRouteOptions withExcludeModelIds(String... ids) {
      return new ModelRouteOptions(
          qualityTarget, List.of(ids), estimatedInputTokens, estimatedOutputTokens);
    }

    /** The expected input and output tokens of the call (0: the defaults). */
    public ModelRouteOptions withEstimatedTokens(long input, long output) {
      return new ModelRouteOptions(qualityTarget, excludeModelIds, input, output);
    }
  }

  /**
   * The router's estimate for one model and one prompt: the expected success probability (or mean
   * score), the expected cost in micro-US-dollars, and how many similar past outcomes it rests on
   * (0: the model's prior).
   */
  public record ModelEstimate(
      String modelId, double expectedQuality, long expectedCostMicroUsd, int samples) {}

  /**
   * The model chosen for a prompt: the route id to report the outcome with (valid 7 days), the
   * model, its expected quality and cost, whether it is expected to reach the target (false: no
   * model is, and this one has the highest expected quality), every eligible model's estimate
   * (cheapest first), and why, for humans.
   */
  public record ModelRoute(
      String routeId,
      String modelId,
      double expectedQuality,
      long expectedCostMicroUsd,
      boolean targetMet,
      List<ModelEstimate> estimates,
      String reason) {}

  /**
   * How a routed call went: whether it met the need ({@link #success}) or a quality score in [0,
   * 1] ({@link #score}), the model actually called when not the one chosen ("": the chosen), its
   * usage (tokens and cost in micro-US-dollars; null: none) and latency (null: unknown).
   * Immutable.
   */
  public record Outcome(
      Boolean success, Double score, String modelId, Usage usage, Duration latency) {
    /** The call met the need, or not. */
    public static Outcome success(boolean met) {
      return new Outcome(met, null, "", null, null);
    }

    /** A quality score in [0, 1]. */
    public static Outcome score(double value) {
      return new Outcome(null, value, "", null, null);
    }

    /** The model actually called, when not the one chosen. */
    public Outcome withModelId(String id) {
      return new Outcome(success, score, id, usage, latency);
    }

    /** Tokens and cost of the call. */
    public Outcome withUsage(Usage u) {
      return new Outcome(success, score, modelId, u, latency);
    }

    /**
     * How long the call took. A measure, not a bound: one over 100 years ({@code
     * ChronoUnit.FOREVER.getDuration()}) is INVALID_ARGUMENT naming {@code latency} when reported
     * (a call that never answered is a failed outcome with no latency).
     */
    public Outcome withLatency(Duration d) {
      return new Outcome(success, score, modelId, usage, d);
    }
  }

  /** Adds a card, or replaces the card with the same id; returns it as stored and whether new. */
  public Registered registerAgent(AgentCard card) {
    RegisterAgentRequest req = RegisterAgentRequest.newBuilder().setAgent(card.toProto()).build();
    RegisterAgentResponse resp =
        client.call(
            "RegisterAgent", () -> client.deadline(client.raw().router()).registerAgent(req));
    return new Registered(AgentCard.fromProto(resp.getAgent()), resp.getCreated());
  }

  /**
   * Removes a registered card (NOT_FOUND, reason {@code AGENT_NOT_FOUND}, if there is none; cards
   * declared by workers go away with their workers).
   */
  public void deregisterAgent(String agentId) {
    DeregisterAgentRequest req = DeregisterAgentRequest.newBuilder().setAgentId(agentId).build();
    client.call(
        "DeregisterAgent", () -> client.deadline(client.raw().router()).deregisterAgent(req));
  }

  /**
   * One page of cards by agent_id ({@code pageSize} 0: 100, at most 1,000; token "": the first,
   * else the previous page's, with the same filter: INVALID_ARGUMENT, reason {@code
   * INVALID_PAGE_TOKEN}, otherwise).
   */
  public AgentPage listAgents(AgentFilter filter, int pageSize, String pageToken) {
    ListAgentsRequest req =
        ListAgentsRequest.newBuilder()
            .setPageSize(pageSize)
            .setPageToken(pageToken == null ? "" : pageToken)
            .setCapability(filter.capability() == null ? "" : filter.capability())
            .putAllLabels(filter.labels() == null ? Map.of() : filter.labels())
            .setAvailableOnly(filter.availableOnly())
            .build();
    ListAgentsResponse resp =
        client.call("ListAgents", () -> client.deadline(client.raw().router()).listAgents(req));
    return new AgentPage(
        resp.getAgentsList().stream().map(AgentCard::fromProto).toList(),
        resp.getNextPageToken());
  }

  /** At most {@code limit} cards matching {@code filter}, by agent_id, fetching pages as needed. */
  public List<AgentCard> agents(AgentFilter filter, int limit) {
    if (limit < 1) {
      throw AreException.local(
          Status.Code.INVALID_ARGUMENT, "INVALID_ARGUMENT", "limit must be at least 1");
    }
    List<AgentCard> out = new ArrayList<>();
    String token = "";
    do {
      AgentPage page = listAgents(filter, Math.min(limit - out.size(), 1000), token);
      for (AgentCard c : page.agents()) {
        if (out.size() < limit) {
          out.add(c);
        }
      }
      token = page.nextPageToken();
    } while (!token.isEmpty() && out.size() < limit);
    return List.copyOf(out);
  }

  /**
   * Ranks agents for a task described in text (at most 8 KiB, embedded by the router) and returns
   * the best, as {@link #routeTask(List, RouteOptions)} does.
   */
  public RouteResult routeTask(String text, RouteOptions options) {
    return routeTask(RouteTaskRequest.newBuilder().setText(text), options);
  }

  /**
   * Ranks agents for a task given as a vector of the router's dimension and returns the best {@code
   * topK}. When no eligible agent reaches the threshold the error is NOT_FOUND, reason {@code
   * NO_ROUTE_ABOVE_THRESHOLD}: its message lists the best below it and its metadata holds {@code
   * best_agent_id}, {@code best_similarity} and {@code threshold} (or ask for them as candidates
   * with {@link RouteOptions#withIncludeBelowThreshold}).
   */
  public RouteResult routeTask(List<Float> vector, RouteOptions options) {
    return routeTask(
        RouteTaskRequest.newBuilder().setVector(Vector.newBuilder().addAllValues(vector)), options);
  }

  /** Ranks agents for a task given as a vector of the router's dimension. */
  public RouteResult routeTask(float[] vector, RouteOptions options) {
    return routeTask(floats(vector), options);
  }

  private RouteResult routeTask(RouteTaskRequest.Builder req, RouteOptions options) {
    req.setTopK(options.topK())
        .setMode(options.mode() == null ? RouteMode.ROUTE_MODE_UNSPECIFIED : options.mode())
        .addAllExcludeAgentIds(
            options.excludeAgentIds() == null ? List.of() : options.excludeAgentIds())
        .addAllRequiredCapabilities(
            options.requiredCapabilities() == null ? List.of() : options.requiredCapabilities())
        .putAllLabels(options.labels() == null ? Map.of() : options.labels())
        .setIncludeUnavailable(options.includeUnavailable())
        .setIncludeBelowThreshold(options.includeBelowThreshold());
    if (options.threshold() != null) {
      req.setThreshold(options.threshold());
    }
    if (options.costWeight() != null) {
      req.setCostWeight(options.costWeight());
    }
    RouteTaskResponse resp =
        client.call(
            "RouteTask", () -> client.deadline(client.raw().router()).routeTask(req.build()));
    List<RouteCandidate> candidates = new ArrayList<>(resp.getCandidatesCount());
    for (dev.are.sdk.v1.RouteCandidate c : resp.getCandidatesList()) {
      candidates.add(
          new RouteCandidate(
              c.getAgentId(),
              c.getCapability(),
              c.getSimilarity(),
              c.getScore(),
              c.getCostPerCallMicroUsd(),
              c.getLoad(),
              c.getAvailable(),
              c.getAboveThreshold(),
              c.getReason()));
    }
    return new RouteResult(List.copyOf(candidates), resp.getMode(), resp.getThreshold());
  }

  /**
   * Replaces the model catalog (1 to 256 models with unique ids); returns it with defaults filled
   * in. Outcomes of models that stay are kept.
   */
  public ModelCatalog putModelCatalog(List<ModelSpec> models) {
    PutModelCatalogRequest req =
        PutModelCatalogRequest.newBuilder()
            .setCatalog(
                dev.are.sdk.v1.ModelCatalog.newBuilder()
                    .addAllModels(models.stream().map(ModelSpec::toProto).toList()))
            .build();
    return catalog(
        client
            .call(
                "PutModelCatalog",
                () -> client.deadline(client.raw().router()).putModelCatalog(req))
            .getCatalog());
  }

  /** Replaces the model catalog with these models. */
  public ModelCatalog putModelCatalog(ModelSpec... models) {
    return putModelCatalog(Arrays.asList(models));
  }

  /** The current model catalog (no models before the first put). */
  public ModelCatalog getModelCatalog() {
    GetModelCatalogRequest req = GetModelCatalogRequest.getDefaultInstance();
    return catalog(
        client
            .call(
                "GetModelCatalog",
                () -> client.deadline(client.raw().router()).getModelCatalog(req))
            .getCatalog());
  }

  /**
   * Picks the cheapest model expected to reach the quality target for a prompt (at most 1 MiB,
   * embedded by the router); FAILED_PRECONDITION, reason {@code MODEL_CATALOG_EMPTY}, before a
   * catalog is put, or {@code NO_ELIGIBLE_MODEL} when every model is excluded or too small.
   */
  public ModelRoute routeModel(String prompt, ModelRouteOptions options) {
    return routeModel(RouteModelRequest.newBuilder().setPrompt(prompt), options);
  }

  /** Picks the model for a prompt given as a vector of the router's prompt-index dimension. */
  public ModelRoute routeModel(List<Float> vector, ModelRouteOptions options) {
    return routeModel(
        RouteModelRequest.newBuilder().setVector(Vector.newBuilder().addAllValues(vector)),
        options);
  }

  /** Picks the model for a prompt given as a vector of the router's prompt-index dimension. */
  public ModelRoute routeModel(float[] vector, ModelRouteOptions options) {
    return routeModel(floats(vector), options);
  }

  private ModelRoute routeModel(RouteModelRequest.Builder req, ModelRouteOptions options) {
    req.setQualityTarget(options.qualityTarget())
        .addAllExcludeModelIds(
            options.excludeModelIds() == null ? List.of() : options.excludeModelIds())
        .setEstimatedInputTokens(options.estimatedInputTokens())
        .setEstimatedOutputTokens(options.estimatedOutputTokens());
    RouteModelResponse resp =
        client.call(
            "RouteModel", () -> client.deadline(client.raw().router()).routeModel(req.build()));
    List<ModelEstimate> estimates = new ArrayList<>(resp.getEstimatesCount());
    for (dev.are.sdk.v1.ModelEstimate e : resp.getEstimatesList()) {
      estimates.add(
          new ModelEstimate(
              e.getModelId(), e.getExpectedQuality(), e.getExpectedCostMicroUsd(), e.getSamples()));
    }
    return new ModelRoute(
        resp.getRouteId(),
        resp.getModelId(),
        resp.getExpectedQuality(),
        resp.getExpectedCostMicroUsd(),
        resp.getTargetMet(),
        List.copyOf(estimates),
        resp.getReason());
  }

  /**
   * Reports how a routed call went, which feeds the estimator of {@link #routeModel}. Each route is
   * reported once, within 7 days: NOT_FOUND, reason {@code ROUTE_NOT_FOUND}, or ALREADY_EXISTS,
   * reason {@code OUTCOME_ALREADY_REPORTED}, otherwise; a score outside [0, 1] is INVALID_ARGUMENT
   * (field {@code score}).
   */
  public void reportOutcome(String routeId, Outcome outcome) {
    if ((outcome.success() == null) == (outcome.score() == null)) {
      throw AreException.local(
          Status.Code.INVALID_ARGUMENT,
          "INVALID_ARGUMENT",
          "an outcome is either a success or a score, exactly one");
    }
    ReportOutcomeRequest.Builder req =
        ReportOutcomeRequest.newBuilder()
            .setRouteId(routeId)
            .setModelId(outcome.modelId() == null ? "" : outcome.modelId());
    if (outcome.success() != null) {
      req.setSuccess(outcome.success());
    } else {
      req.setScore(outcome.score());
    }
    if (outcome.usage() != null) {
      req.setUsage(outcome.usage());
    }
    if (outcome.latency() != null) {
      req.setLatency(Durations.toProto(outcome.latency(), "latency", "about 292 years"));
    }
    client.call(
        "ReportOutcome",
        () -> client.deadline(client.raw().router()).reportOutcome(req.build()));
  }

  private static ModelCatalog catalog(dev.are.sdk.v1.ModelCatalog c) {
    return new ModelCatalog(
        c.getModelsList().stream().map(ModelSpec::fromProto).toList(),
        c.hasUpdateTime() ? Durations.fromProto(c.getUpdateTime()) : null);
  }

  private static List<Float> floats(float[] values) {
    if (values == null) {
      return null;
    }
    List<Float> out = new ArrayList<>(values.length);
    for (float v : values) {
      out.add(v);
    }
    return List.copyOf(out);
  }
}
