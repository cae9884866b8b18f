package dev.are.sdk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.are.sdk.Router.AgentCard;
import dev.are.sdk.Router.AgentFilter;
import dev.are.sdk.Router.AgentPage;
import dev.are.sdk.Router.ModelCatalog;
import dev.are.sdk.Router.ModelEstimate;
import dev.are.sdk.Router.ModelRoute;
import dev.are.sdk.Router.ModelRouteOptions;
import dev.are.sdk.Router.ModelSpec;
import dev.are.sdk.Router.Outcome;
import dev.are.sdk.Router.Registered;
import dev.are.sdk.Router.RouteCandidate;
import dev.are.sdk.Router.RouteOptions;
import dev.are.sdk.Router.RouteResult;
import dev.are.sdk.testing.Sidecar;
import dev.are.sdk.v1.AgentSource;
import dev.are.sdk.v1.RouteMode;
import dev.are.sdk.v1.Usage;
import io.grpc.Status;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * The router facade against a real sidecar, shared by the tests of this class (each uses ids of
 * its own), started from the repository's .venv.
 */
@Timeout(value = 120, unit = TimeUnit.SECONDS)
class RouterTest {
  /** The dimension of the sidecar's default (lexical) router embedder. */
  private static final int DIMENSION = 256;

  private static Sidecar sidecar;
  private static Client client;

  @BeforeAll
  static void start() {
    sidecar = Sidecar.start();
    client = sidecar.client();
  }

  @AfterAll
  static void stop() {
    if (client != null) {
      client.close();
    }
    if (sidecar != null) {
      sidecar.close();
    }
  }

  /** An id prefix (and label value) unique to one test. */
  private static String run() {
    return "java-" + UUID.randomUUID().toString().substring(0, 8);
  }

  /** A vector of {@code dimension} components starting with {@code head}, the rest 0. */
  private static float[] unit(int dimension, float... head) {
    float[] v = new float[dimension];
    System.arraycopy(head, 0, v, 0, head.length);
    return v;
  }

  private static List<String> ids(RouteResult result) {
    return result.candidates().stream().map(RouteCandidate::agentId).toList();
  }

  private static void assertError(
      AreException e, Status.Code code, String reason, String field) {
    assertEquals(code, e.code(), e.getMessage());
    assertEquals(reason, e.reason(), e.getMessage());
    assertEquals("are.v1", e.domain(), e.getMessage());
    if (field != null) {
      assertTrue(e.field(field).isPresent(), e.getMessage());
    }
  }

  @Test
  void cardsAreRegisteredListedByPageAndDeregistered() {
    Router router = client.router();
    String run = run();
    Registered legal =
        router.registerAgent(
            AgentCard.of(run + "-legal")
                .withDisplayName("Legal")
                .withDescription("summarize legal contracts")
                .withCapabilities("legal-summary")
                .withCostPerCallMicroUsd(1500)
                .withTypicalLatency(Duration.ofMillis(2500))
                .withCapacity(4)
                .withLabels(Map.of("run", run, "team", "law")));
    assertTrue(legal.created());
    AgentCard card = legal.agent();
    assertEquals(run + "-legal", card.agentId());
    assertEquals("Legal", card.displayName());
    assertEquals(AgentSource.AGENT_SOURCE_REGISTERED, card.source());
    assertTrue(card.available());
    assertEquals(4, card.capacity());
    assertEquals(0.0, card.load());
    assertEquals(Duration.ofMillis(2500), card.typicalLatency());
    assertEquals(List.of("legal-summary"), card.capabilities());
    assertNotNull(card.createTime());
    assertNotNull(card.updateTime());

    // The same id replaces the card.
    Registered again =
        router.registerAgent(
            AgentCard.of(run + "-legal")
                .withDescription("summarize legal contracts")
                .withLabels(Map.of("run", run)));
    assertFalse(again.created());
    assertEquals(1, again.agent().capacity()); // 0 means 1
    for (int i = 0; i < 5; i++) {
      router.registerAgent(
          AgentCard.of(run + "-p" + i)
              .withVector(unit(DIMENSION, 1f, i))
              .withLabels(Map.of("run", run)));
    }

    // Page by page, by agent_id.
    AgentFilter filter = AgentFilter.defaults().withLabels(Map.of("run", run));
    List<String> seen = new ArrayList<>();
    String token = "";
    int pages = 0;
    do {
      AgentPage page = router.listAgents(filter, 2, token);
      assertTrue(page.agents().size() <= 2);
      page.agents().forEach(c -> seen.add(c.agentId()));
      token = page.nextPageToken();
      pages++;
    } while (!token.isEmpty());
    List<String> expected = new ArrayList<>(List.of(run + "-legal"));
    for (int i = 0; i < 5; i++) {
      expected.add(run + "-p" + i);
    }
    assertEquals(expected, seen);
    assertEquals(3, pages);
    // The bounded helper: everything, or at most the limit.
    assertEquals(expected, router.agents(filter, 100).stream().map(AgentCard::agentId).toList());
    assertEquals(4, router.agents(filter, 4).size());
    assertEquals(
        List.of(),
        router.agents(filter.withCapability("legal-summary"), 100)); // the replacement dropped it
    assertEquals(DIMENSION, router.agents(filter, 100).get(1).vector().size());

    // A page token is only good for the filter it was issued for.
    AgentPage first = router.listAgents(filter, 4, "");
    assertFalse(first.nextPageToken().isEmpty());
    AreException badToken =
        assertThrows(
            AreException.class,
            () ->
                router.listAgents(
                    AgentFilter.defaults().withLabels(Map.of("run", "another")),
                    4,
                    first.nextPageToken()));
    assertError(badToken, Status.Code.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN", "page_token");

    // A vector of the wrong dimension names the field and both dimensions.
    AreException dimension =
        assertThrows(
            AreException.class,
            () -> router.registerAgent(AgentCard.of(run + "-bad").withVector(new float[] {1, 2})));
    assertError(dimension, Status.Code.INVALID_ARGUMENT, "DIMENSION_MISMATCH", "agent.vector");
    assertEquals(String.valueOf(DIMENSION), dimension.metadata().get("expected_dimension"));
    assertEquals("2", dimension.metadata().get("actual_dimension"));
    AreException badId =
        assertThrows(AreException.class, () -> router.registerAgent(AgentCard.of("bad id!")));
    assertError(badId, Status.Code.INVALID_ARGUMENT, "INVALID_ARGUMENT", "agent.agent_id");

    router.deregisterAgent(run + "-legal");
    AreException gone =
        assertThrows(AreException.class, () -> router.deregisterAgent(run + "-legal"));
    assertError(gone, Status.Code.NOT_FOUND, "AGENT_NOT_FOUND", null);
    assertEquals(run + "-legal", gone.metadata().get("agent_id"));
    assertEquals(5, router.agents(filter, 100).size());
  }

  @Test
  void tasksAreRoutedByModeWithFiltersAndRefusedBelowTheThreshold() {
    Router router = client.router();
    String run = run();
    Map<String, String> labels = Map.of("run", run);
    Object[][] quartet = {
      {"gold", new float[] {1f}, 900L},
      {"silver", new float[] {0.9f, 0.3f}, 300L},
      {"bronze", new float[] {0.7f, 0.7f}, 100L},
      {"other", new float[] {0f, 0f, 1f}, 1L},
    };
    for (Object[] agent : quartet) {
      String name = (String) agent[0];
      assertTrue(
          router
              .registerAgent(
                  AgentCard.of(run + "-" + name)
                      .withCapabilities(name)
                      .withVector(unit(DIMENSION, (float[]) agent[1]))
                      .withCostPerCallMicroUsd((Long) agent[2])
                      .withLabels(labels))
              .created());
    }
    RouteOptions base = RouteOptions.defaults().withThreshold(0.6).withLabels(labels);
    float[] task = unit(DIMENSION, 1f);

    RouteResult best = router.routeTask(task, base.withMode(RouteMode.ROUTE_MODE_BEST_MATCH));
    assertEquals(List.of(run + "-gold", run + "-silver", run + "-bronze"), ids(best));
    assertEquals(RouteMode.ROUTE_MODE_BEST_MATCH, best.mode());
    assertEquals(0.6, best.threshold(), 1e-9);
    assertEquals(1.0, best.candidates().get(0).similarity(), 1e-6);
    assertTrue(best.candidates().stream().allMatch(RouteCandidate::aboveThreshold));

    // The router's default mode is cost-biased: the cheapest above the threshold wins.
    RouteResult cheap = router.routeTask(task, base);
    assertEquals(RouteMode.ROUTE_MODE_COST_BIASED, cheap.mode());
    RouteCandidate first = cheap.candidates().get(0);
    assertEquals(run + "-bronze", first.agentId());
    assertEquals("bronze", first.capability());
    assertEquals(100, first.costPerCallMicroUsd());
    assertTrue(first.available());
    assertTrue(first.reason().startsWith("cheapest above 0.60"), first.reason());
    assertFalse(ids(cheap).contains(run + "-other"));

    RouteResult excluded =
        router.routeTask(task, base.withExcludeAgentIds(run + "-bronze").withTopK(1));
    assertEquals(List.of(run + "-silver"), ids(excluded));
    RouteResult required = router.routeTask(task, base.withRequiredCapabilities("gold"));
    assertEquals(List.of(run + "-gold"), ids(required));

    // Nothing reaches 0.95: NOT_FOUND, with the best below the threshold.
    float[] far = unit(DIMENSION, 0f, 1f);
    RouteOptions strict = base.withThreshold(0.95);
    AreException none = assertThrows(AreException.class, () -> router.routeTask(far, strict));
    assertError(none, Status.Code.NOT_FOUND, "NO_ROUTE_ABOVE_THRESHOLD", null);
    assertEquals(run + "-bronze", none.metadata().get("best_agent_id"));
    assertEquals("0.950000", none.metadata().get("threshold"));
    assertTrue(none.metadata().containsKey("best_similarity"));
    assertTrue(none.getMessage().contains(run + "-bronze"), none.getMessage());
    RouteResult below = router.routeTask(far, strict.withIncludeBelowThreshold(true).withTopK(2));
    assertEquals(List.of(run + "-bronze", run + "-silver"), ids(below));
    assertTrue(below.candidates().stream().noneMatch(RouteCandidate::aboveThreshold));

    // Text is embedded by the router's embedder.
    Map<String, String> textLabels = Map.of("run", run + "-text");
    router.registerAgent(
        AgentCard.of(run + "-legal")
            .withDescription("summarize legal contracts and court rulings")
            .withLabels(textLabels));
    router.registerAgent(
        AgentCard.of(run + "-paint")
            .withDescription("generate watercolor paintings of landscapes")
            .withLabels(textLabels));
    RouteResult byText =
        router.routeTask(
            "summarize these legal contracts", RouteOptions.defaults().withLabels(textLabels));
    assertEquals(run + "-legal", byText.candidates().get(0).agentId());

    // Bad input names the field.
    AreException wrongSize =
        assertThrows(AreException.class, () -> router.routeTask(new float[] {1f}, base));
    assertError(wrongSize, Status.Code.INVALID_ARGUMENT, "DIMENSION_MISMATCH", "vector");
    AreException tooMany =
        assertThrows(AreException.class, () -> router.routeTask(task, base.withTopK(101)));
    assertError(tooMany, Status.Code.INVALID_ARGUMENT, "LIMIT_EXCEEDED", "top_k");

    for (Object[] agent : quartet) {
      router.deregisterAgent(run + "-" + agent[0]);
    }
    AreException empty = assertThrows(AreException.class, () -> router.routeTask(task, base));
    assertEquals("NO_ROUTE_ABOVE_THRESHOLD", empty.reason(), empty.getMessage());
  }

  /**
   * A prompt of the "easy" cluster (near axis 0) or the "hard" one (near axis 1), the {@code i}th
   * of its kind; prompts of a cluster are all similar.
   */
  private static float[] prompt(boolean hard, int i) {
    float[] v = new float[DIMENSION];
    v[hard ? 1 : 0] = 1f;
    v[2 + i % (DIMENSION - 2)] = 0.05f;
    return v;
  }

  @Test
  void modelsAreRoutedAndOutcomesReportedAndLearnedFrom() {
    Router router = client.router();
    String run = run();
    String cheapId = run + "-cheap";
    String strongId = run + "-strong";
    ModelSpec cheap = ModelSpec.of(cheapId).withPrices(150_000, 600_000).withPriorSuccessRate(0.9);
    ModelSpec strong =
        ModelSpec.of(strongId)
            .withTier(8)
            .withPrices(5_000_000, 15_000_000)
            .withPriorSuccessRate(0.9)
            .withContextWindowTokens(128_000)
            .withLabels(Map.of("vendor", "x"));

    ModelCatalog catalog = router.putModelCatalog(cheap, strong);
    assertEquals(List.of(cheap, strong), catalog.models());
    assertNotNull(catalog.updateTime());
    assertEquals(catalog, router.getModelCatalog());

    // Before any feedback the prior holds: the cheap model, expected to meet the target.
    ModelRoute route =
        router.routeModel(
            "What is 2 + 2?",
            ModelRouteOptions.defaults().withQualityTarget(0.8).withEstimatedTokens(0, 100));
    assertEquals(cheapId, route.modelId());
    assertTrue(route.targetMet());
    assertFalse(route.routeId().isEmpty());
    assertEquals(0.9, route.expectedQuality(), 1e-9);
    assertEquals(
        List.of(cheapId, strongId),
        route.estimates().stream().map(ModelEstimate::modelId).toList()); // cheapest first
    assertEquals(0, route.estimates().get(0).samples());
    assertEquals(route.estimates().get(0).expectedCostMicroUsd(), route.expectedCostMicroUsd());
    assertFalse(route.reason().isEmpty());

    // Reported once, with usage and latency; twice is ALREADY_EXISTS.
    router.reportOutcome(
        route.routeId(),
        Outcome.success(true)
            .withUsage(
                Usage.newBuilder()
                    .setInputTokens(10)
                    .setOutputTokens(5)
                    .setCostMicroUsd(route.expectedCostMicroUsd())
                    .setLlmCalls(1)
                    .build())
            .withLatency(Duration.ofMillis(350)));
    AreException twice =
        assertThrows(
            AreException.class, () -> router.reportOutcome(route.routeId(), Outcome.score(0.5)));
    assertError(twice, Status.Code.ALREADY_EXISTS, "OUTCOME_ALREADY_REPORTED", null);
    assertEquals(route.routeId(), twice.metadata().get("route_id"));
    AreException unknown =
        assertThrows(
            AreException.class,
            () -> router.reportOutcome("r0000000000000000", Outcome.success(true)));
    assertError(unknown, Status.Code.NOT_FOUND, "ROUTE_NOT_FOUND", null);
    ModelRoute other = router.routeModel("another question", ModelRouteOptions.defaults());
    AreException badScore =
        assertThrows(
            AreException.class, () -> router.reportOutcome(other.routeId(), Outcome.score(1.5)));
    assertError(badScore, Status.Code.INVALID_ARGUMENT, "INVALID_ARGUMENT", "score");
    AreException neither =
        assertThrows(
            AreException.class,
            () -> router.reportOutcome(other.routeId(), new Outcome(null, null, "", null, null)));
    assertEquals(AreException.SDK_DOMAIN, neither.domain());
    router.reportOutcome(other.routeId(), Outcome.score(0.75).withModelId(strongId));

    // Bad input: a vector of the wrong dimension; every model excluded.
    AreException wrongSize =
        assertThrows(
            AreException.class,
            () -> router.routeModel(new float[] {1f, 0f, 0f}, ModelRouteOptions.defaults()));
    assertError(wrongSize, Status.Code.INVALID_ARGUMENT, "DIMENSION_MISMATCH", "vector");
    AreException allExcluded =
        assertThrows(
            AreException.class,
            () ->
                router.routeModel(
                    "x", ModelRouteOptions.defaults().withExcludeModelIds(cheapId, strongId)));
    assertEquals(Status.Code.FAILED_PRECONDITION, allExcluded.code(), allExcluded.getMessage());

    // Feedback: the cheap model fails the hard prompts, so they move to the strong one.
    ModelRouteOptions target = ModelRouteOptions.defaults().withQualityTarget(0.8);
    for (int i = 0; i < 12; i++) {
      ModelRoute r = router.routeModel(prompt(true, i), target);
      router.reportOutcome(r.routeId(), Outcome.success(!r.modelId().equals(cheapId)));
    }
    ModelRoute hard = router.routeModel(prompt(true, 100), target);
    assertEquals(strongId, hard.modelId(), hard.toString());
    ModelEstimate cheapEstimate =
        hard.estimates().stream().filter(e -> e.modelId().equals(cheapId)).findFirst().get();
    assertTrue(cheapEstimate.samples() >= 5, hard.toString());
    assertTrue(cheapEstimate.expectedQuality() < 0.8, hard.toString());
    ModelRoute easy = router.routeModel(prompt(false, 100), target);
    assertEquals(cheapId, easy.modelId(), easy.toString());
  }

  @Test
  void withoutAnEmbedderOnlyVectorsAreRouted() {
    try (Sidecar vectorsOnly =
            Sidecar.start("--router-embedder", "off", "--router-dimension", "8");
        Client c = vectorsOnly.client()) {
      Router router = c.router();
      AreException text =
          assertThrows(
              AreException.class,
              () ->
                  router.registerAgent(
                      AgentCard.of("java-text").withDescription("needs an embedder")));
      assertError(text, Status.Code.FAILED_PRECONDITION, "EMBEDDER_UNAVAILABLE", null);
      AreException query =
          assertThrows(
              AreException.class, () -> router.routeTask("some text", RouteOptions.defaults()));
      assertError(query, Status.Code.FAILED_PRECONDITION, "EMBEDDER_UNAVAILABLE", null);
      AgentCard card =
          router.registerAgent(AgentCard.of("java-vector").withVector(unit(8, 1f))).agent();
      assertEquals(List.of(1f, 0f, 0f, 0f, 0f, 0f, 0f, 0f), card.vector());
      assertEquals(
          "java-vector",
          router.routeTask(unit(8, 1f), RouteOptions.defaults()).candidates().get(0).agentId());
      AreException wrongSize =
          assertThrows(
              AreException.class,
              () -> router.routeTask(unit(DIMENSION, 1f), RouteOptions.defaults()));
      assertError(wrongSize, Status.Code.INVALID_ARGUMENT, "DIMENSION_MISMATCH", "vector");
      assertEquals("8", wrongSize.metadata().get("expected_dimension"));

      assertEquals(List.of(), router.getModelCatalog().models());
      AreException empty =
          assertThrows(
              AreException.class,
              () -> router.routeModel(unit(8, 1f), ModelRouteOptions.defaults()));
      assertError(empty, Status.Code.FAILED_PRECONDITION, "MODEL_CATALOG_EMPTY", null);
    }
  }
}
