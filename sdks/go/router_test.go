package are_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	are "github.com/are-runtime/are/sdks/go"
	"github.com/are-runtime/are/sdks/go/arev1"
)

// routerDimension is the dimension of the sidecar's default (lexical) router
// embedder.
const routerDimension = 256

// unit returns a routerDimension vector starting with components.
func unit(components ...float32) []float32 {
	v := make([]float32, routerDimension)
	copy(v, components)
	return v
}

// axis returns a routerDimension vector along axis i, nudged by d along
// axis i+1.
func axis(i int, d float32) []float32 {
	v := make([]float32, routerDimension)
	v[i], v[i+1] = 1, d
	return v
}

// wantError fails the test unless err is an *are.Error of code and reason,
// naming field among its violations when field is not "".
func wantError(t *testing.T, what string, err error, code codes.Code, reason, field string) *are.Error {
	t.Helper()
	var e *are.Error
	if !errors.As(err, &e) || e.Code != code || e.Reason != reason {
		t.Fatalf("%s = %v; want %v %s", what, err, code, reason)
	}
	if field != "" {
		if _, ok := e.Field(field); !ok {
			t.Fatalf("%s: field violations %v do not name %q", what, e.FieldViolations, field)
		}
	}
	return e
}

func ids(candidates []are.RouteCandidate) []string {
	out := make([]string, len(candidates))
	for i, c := range candidates {
		out[i] = c.AgentID
	}
	return out
}

func TestRouterRegisterListAndDeregister(t *testing.T) {
	client := connect(t)
	ctx := within(t, 30*time.Second)
	run := name("go-router")
	labels := map[string]string{"run": run}

	card, created, err := client.Router.RegisterAgent(ctx, are.AgentCard{
		AgentID:             run + "-legal",
		DisplayName:         "Legal",
		Description:         "summarize legal contracts",
		Capabilities:        []string{"legal-summary"},
		CostPerCallMicroUSD: 1500,
		TypicalLatency:      1500 * time.Millisecond,
		Capacity:            4,
		Labels:              map[string]string{"run": run, "team": "law"},
	})
	if err != nil || !created {
		t.Fatalf("RegisterAgent = created %v, %v; want a new card", created, err)
	}
	if card.Source != arev1.AgentSource_AGENT_SOURCE_REGISTERED || !card.Available || card.Capacity != 4 ||
		card.TypicalLatency != 1500*time.Millisecond || card.CreateTime.IsZero() || card.Load() != 0 ||
		card.Labels["team"] != "law" || card.CostPerCallMicroUSD != 1500 {
		t.Fatalf("stored card = %+v", card)
	}
	if _, created, err := client.Router.RegisterAgent(ctx, are.AgentCard{AgentID: run + "-legal", Description: "replaced", Labels: labels}); err != nil || created {
		t.Fatalf("re-RegisterAgent = created %v, %v; want a replacement", created, err)
	}
	// Cards with their own vectors, of the router's dimension.
	for i := 0; i < 5; i++ {
		vector := unit(1, float32(i))
		stored, _, err := client.Router.RegisterAgent(ctx, are.AgentCard{AgentID: name(run + "-p"), Vector: vector, Labels: labels})
		if err != nil {
			t.Fatal(err)
		}
		if len(stored.Vector) != routerDimension {
			t.Fatalf("stored vector has %d components; want %d", len(stored.Vector), routerDimension)
		}
	}

	// Paging: three pages of two, by agent_id.
	filter := are.AgentFilter{Labels: labels}
	var paged []string
	token := ""
	pages := 0
	for {
		page, next, err := client.Router.ListAgents(ctx, filter, 2, token)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, c := range page {
			paged = append(paged, c.AgentID)
		}
		if next == "" {
			break
		}
		token = next
	}
	if pages != 3 || len(paged) != 6 || paged[0] != run+"-legal" {
		t.Fatalf("ListAgents by 2 = %d pages %v; want 3 pages of the 6 cards, by id", pages, paged)
	}
	all, err := client.Router.Agents(ctx, filter, 0)
	if err != nil || len(all) != 6 {
		t.Fatalf("Agents = %d cards, %v; want 6", len(all), err)
	}
	for i, c := range all {
		if c.AgentID != paged[i] {
			t.Fatalf("Agents[%d] = %s; want %s (the pages' order)", i, c.AgentID, paged[i])
		}
	}
	if first, err := client.Router.Agents(ctx, filter, 4); err != nil || len(first) != 4 || first[3].AgentID != paged[3] {
		t.Fatalf("Agents limit 4 = %d, %v", len(first), err)
	}
	if capable, err := client.Router.Agents(ctx, are.AgentFilter{Labels: labels, Capability: "legal-summary"}, 0); err != nil || len(capable) != 0 {
		// The replacement dropped the capability.
		t.Fatalf("Agents by a capability the replacement dropped = %d, %v; want none", len(capable), err)
	}

	_, token, err = client.Router.ListAgents(ctx, filter, 4, "")
	if err != nil || token == "" {
		t.Fatalf("ListAgents by 4 = token %q, %v; want a next page", token, err)
	}
	_, _, err = client.Router.ListAgents(ctx, are.AgentFilter{Labels: map[string]string{"run": "another"}}, 4, token)
	wantError(t, "ListAgents with another filter's token", err, codes.InvalidArgument, "INVALID_PAGE_TOKEN", "page_token")
	_, _, err = client.Router.ListAgents(ctx, filter, 0, "not a token!")
	wantError(t, "ListAgents with a bad token", err, codes.InvalidArgument, "INVALID_PAGE_TOKEN", "page_token")

	if err := client.Router.DeregisterAgent(ctx, run+"-legal"); err != nil {
		t.Fatal(err)
	}
	err = client.Router.DeregisterAgent(ctx, run+"-legal")
	e := wantError(t, "DeregisterAgent twice", err, codes.NotFound, "AGENT_NOT_FOUND", "")
	if !errors.Is(err, are.ErrNotFound) || e.Metadata["agent_id"] != run+"-legal" {
		t.Fatalf("DeregisterAgent twice = %v (metadata %v); want ErrNotFound naming the agent", err, e.Metadata)
	}
	if rest, err := client.Router.Agents(ctx, filter, 0); err != nil || len(rest) != 5 {
		t.Fatalf("Agents after the deregistration = %d, %v; want 5", len(rest), err)
	}
}

// registerTrio registers gold, silver and bronze (ever cheaper, ever further
// from axis 0) and other (orthogonal, cheapest), labelled run.
func registerTrio(t *testing.T, client *are.Client, run string) {
	t.Helper()
	ctx := within(t, 30*time.Second)
	for _, a := range []struct {
		id     string
		vector []float32
		cost   int64
	}{
		{"gold", unit(1), 900},
		{"silver", unit(0.9, 0.3), 300},
		{"bronze", unit(0.7, 0.7), 100},
		{"other", unit(0, 0, 1), 1},
	} {
		_, _, err := client.Router.RegisterAgent(ctx, are.AgentCard{
			AgentID:             run + "-" + a.id,
			Capabilities:        []string{a.id},
			Vector:              a.vector,
			CostPerCallMicroUSD: a.cost,
			Labels:              map[string]string{"run": run},
		})
		if err != nil {
			t.Fatalf("RegisterAgent %s: %v", a.id, err)
		}
	}
}

func TestRouterRouteTask(t *testing.T) {
	client := connect(t)
	ctx := within(t, 30*time.Second)
	run := name("go-route")
	registerTrio(t, client, run)
	labels := are.RouteLabels(map[string]string{"run": run})

	best, err := client.Router.RouteTaskVector(ctx, unit(1), are.RouteBestMatch(), are.RouteThreshold(0.6), labels)
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(best.Candidates); strings.Join(got, ",") != run+"-gold,"+run+"-silver,"+run+"-bronze" {
		t.Fatalf("best match = %v; want gold, silver, bronze", got)
	}
	if best.Mode != arev1.RouteMode_ROUTE_MODE_BEST_MATCH || best.Threshold != 0.6 || !best.Candidates[0].AboveThreshold ||
		best.Candidates[0].Similarity < 0.99 {
		t.Fatalf("best match = %+v", best)
	}

	// The router's default mode is cost-biased: the cheapest above the threshold wins.
	cheap, err := client.Router.RouteTaskVector(ctx, unit(1), are.RouteThreshold(0.6), labels)
	if err != nil {
		t.Fatal(err)
	}
	top := cheap.Candidates[0]
	if cheap.Mode != arev1.RouteMode_ROUTE_MODE_COST_BIASED || top.AgentID != run+"-bronze" || top.Capability != "bronze" ||
		top.CostPerCallMicroUSD != 100 || !strings.HasPrefix(top.Reason, "cheapest above 0.60") || !top.Available {
		t.Fatalf("cost-biased top = %+v (mode %v); want bronze, the cheapest above 0.6", top, cheap.Mode)
	}
	// With cost weight 0 cost-biased ranks as best match.
	weighted, err := client.Router.RouteTaskVector(ctx, unit(1), are.RouteCostBiased(), are.RouteCostWeight(0), are.RouteThreshold(0.6), labels)
	if err != nil || weighted.Candidates[0].AgentID != run+"-gold" {
		t.Fatalf("cost weight 0 = %v, %v; want gold first", weighted, err)
	}

	excluded, err := client.Router.RouteTaskVector(ctx, unit(1), are.RouteThreshold(0.6), labels,
		are.ExcludeAgents(run+"-bronze"), are.RouteTopK(1))
	if err != nil || strings.Join(ids(excluded.Candidates), ",") != run+"-silver" {
		t.Fatalf("excluding bronze, top 1 = %v, %v; want silver", excluded, err)
	}
	required, err := client.Router.RouteTaskVector(ctx, unit(1), are.RouteThreshold(0.6), labels, are.RequireCapabilities("gold"))
	if err != nil || strings.Join(ids(required.Candidates), ",") != run+"-gold" {
		t.Fatalf("requiring gold = %v, %v; want gold", required, err)
	}

	// Nothing above 0.95: NOT_FOUND with the best below it.
	_, err = client.Router.RouteTaskVector(ctx, unit(0, 1), are.RouteThreshold(0.95), labels)
	e := wantError(t, "RouteTask above 0.95", err, codes.NotFound, "NO_ROUTE_ABOVE_THRESHOLD", "")
	if !errors.Is(err, are.ErrNotFound) || e.Metadata["best_agent_id"] != run+"-bronze" || e.Metadata["threshold"] != "0.950000" ||
		e.Metadata["best_similarity"] == "" || !strings.Contains(e.Message, run+"-bronze") || !strings.Contains(e.Message, run+"-silver") {
		t.Fatalf("no route = %v (metadata %v); want bronze as the best below 0.95, and the others listed", err, e.Metadata)
	}
	below, err := client.Router.RouteTaskVector(ctx, unit(0, 1), are.RouteThreshold(0.95), labels,
		are.IncludeBelowThreshold(), are.RouteTopK(2))
	if err != nil || strings.Join(ids(below.Candidates), ",") != run+"-bronze,"+run+"-silver" {
		t.Fatalf("below the threshold = %v, %v; want bronze, silver", below, err)
	}
	for _, c := range below.Candidates {
		if c.AboveThreshold {
			t.Fatalf("%s is marked above the threshold", c.AgentID)
		}
	}

	// By text, with the router's embedder.
	for _, a := range []are.AgentCard{
		{AgentID: run + "-law", Description: "summarize legal contracts and court rulings", Labels: map[string]string{"run": run + "-text"}},
		{AgentID: run + "-paint", Description: "generate watercolor paintings of landscapes", Labels: map[string]string{"run": run + "-text"}},
	} {
		if _, _, err := client.Router.RegisterAgent(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	byText, err := client.Router.RouteTask(ctx, "summarize these legal contracts", are.RouteLabels(map[string]string{"run": run + "-text"}))
	if err != nil || byText.Candidates[0].AgentID != run+"-law" {
		t.Fatalf("RouteTask by text = %+v, %v; want law first", byText, err)
	}

	// Bad input: the field and reason come back.
	_, err = client.Router.RouteTaskVector(ctx, []float32{1, 0, 0}, labels)
	e = wantError(t, "RouteTask with a 3-d vector", err, codes.InvalidArgument, "DIMENSION_MISMATCH", "vector")
	if !errors.Is(err, are.ErrInvalidArgument) || e.Metadata["expected_dimension"] != "256" || e.Metadata["actual_dimension"] != "3" {
		t.Fatalf("dimension mismatch metadata = %v", e.Metadata)
	}
	_, err = client.Router.RouteTask(ctx, "x", are.RouteThreshold(1.5))
	wantError(t, "RouteTask with threshold 1.5", err, codes.InvalidArgument, "INVALID_ARGUMENT", "threshold")
	_, err = client.Router.RouteTask(ctx, "x", are.RouteTopK(101))
	wantError(t, "RouteTask with top k 101", err, codes.InvalidArgument, "LIMIT_EXCEEDED", "top_k")
	_, _, err = client.Router.RegisterAgent(ctx, are.AgentCard{AgentID: run + "-bad", Vector: []float32{1, 2}})
	wantError(t, "RegisterAgent with a 2-d vector", err, codes.InvalidArgument, "DIMENSION_MISMATCH", "agent.vector")
	_, _, err = client.Router.RegisterAgent(ctx, are.AgentCard{AgentID: "bad id!"})
	wantError(t, "RegisterAgent with a bad id", err, codes.InvalidArgument, "INVALID_ARGUMENT", "agent.agent_id")
}

func TestRouterModelRouting(t *testing.T) {
	client := connect(t)
	ctx := within(t, 60*time.Second)
	cheapID, strongID := name("cheap"), name("strong")
	cheap := are.ModelSpec{
		ModelID: cheapID, Tier: 1,
		InputCostPerMillionTokensMicroUSD: 150_000, OutputCostPerMillionTokensMicroUSD: 600_000,
		PriorSuccessRate: 0.9, Labels: map[string]string{"family": "small"},
	}
	strong := are.ModelSpec{
		ModelID: strongID, Tier: 8,
		InputCostPerMillionTokensMicroUSD: 5_000_000, OutputCostPerMillionTokensMicroUSD: 15_000_000,
		PriorSuccessRate: 0.9, ContextWindowTokens: 128_000,
	}
	catalog, err := client.Router.PutModelCatalog(ctx, cheap, strong)
	if err != nil {
		t.Fatal(err)
	}
	if len(catalog.Models) != 2 || catalog.Models[0].ModelID != cheapID || catalog.Models[1].ContextWindowTokens != 128_000 ||
		catalog.Models[0].Labels["family"] != "small" || catalog.UpdateTime.IsZero() {
		t.Fatalf("PutModelCatalog = %+v", catalog)
	}
	got, err := client.Router.GetModelCatalog(ctx)
	if err != nil || len(got.Models) != 2 || got.Models[1].ModelID != strongID || got.Models[1].Tier != 8 {
		t.Fatalf("GetModelCatalog = %+v, %v", got, err)
	}

	// Before any outcome the cheap model's prior clears the target.
	route, err := client.Router.RouteModel(ctx, "What is 2 + 2?", are.QualityTarget(0.8), are.EstimatedTokens(100, 10))
	if err != nil {
		t.Fatal(err)
	}
	if route.ModelID != cheapID || route.RouteID == "" || !route.TargetMet || len(route.Estimates) != 2 ||
		route.Estimates[0].ModelID != cheapID || route.Estimates[0].Samples != 0 || route.Reason == "" {
		t.Fatalf("RouteModel = %+v; want the cheap model on its prior", route)
	}
	if err := client.Router.ReportOutcome(ctx, route.RouteID, are.Success(true),
		are.OutcomeUsage(&arev1.Usage{InputTokens: 100, OutputTokens: 10, CostMicroUsd: route.ExpectedCostMicroUSD, LlmCalls: 1}),
		are.OutcomeLatency(800*time.Millisecond)); err != nil {
		t.Fatalf("ReportOutcome: %v", err)
	}
	err = client.Router.ReportOutcome(ctx, route.RouteID, are.Score(0.5))
	wantError(t, "ReportOutcome twice", err, codes.AlreadyExists, "OUTCOME_ALREADY_REPORTED", "")
	if !errors.Is(err, are.ErrAlreadyExists) {
		t.Fatalf("ReportOutcome twice = %v; want ErrAlreadyExists", err)
	}

	// The cheap model fails prompts near axis 10: after five such outcomes
	// the router sends them to the strong model.
	for i := 0; i < 6; i++ {
		route, err := client.Router.RouteModelVector(ctx, axis(10, 0.01*float32(i)), are.QualityTarget(0.8))
		if err != nil {
			t.Fatal(err)
		}
		if err := client.Router.ReportOutcome(ctx, route.RouteID, are.Success(route.ModelID != cheapID)); err != nil {
			t.Fatal(err)
		}
	}
	learned, err := client.Router.RouteModelVector(ctx, axis(10, 0.02), are.QualityTarget(0.8))
	if err != nil {
		t.Fatal(err)
	}
	if learned.ModelID != strongID || learned.Estimates[0].ModelID != cheapID || learned.Estimates[0].Samples < 5 ||
		learned.Estimates[0].ExpectedQuality >= 0.8 {
		t.Fatalf("RouteModel after the failures = %+v; want the strong model, the cheap one's estimate resting on its failures", learned)
	}
	scored, err := client.Router.RouteModel(ctx, "a short question", are.ExcludeModels(strongID))
	if err != nil || scored.ModelID != cheapID {
		t.Fatalf("RouteModel excluding the strong model = %+v, %v", scored, err)
	}
	if err := client.Router.ReportOutcome(ctx, scored.RouteID, are.Score(0.9), are.OutcomeModel(strongID)); err != nil {
		t.Fatalf("ReportOutcome with a score = %v", err)
	}

	// Bad input.
	err = client.Router.ReportOutcome(ctx, "r0000000000000000", are.Success(true))
	e := wantError(t, "ReportOutcome of an unknown route", err, codes.NotFound, "ROUTE_NOT_FOUND", "")
	if e.Metadata["route_id"] != "r0000000000000000" {
		t.Fatalf("ROUTE_NOT_FOUND metadata = %v; want the route_id", e.Metadata)
	}
	route, err = client.Router.RouteModel(ctx, "another question")
	if err != nil {
		t.Fatal(err)
	}
	err = client.Router.ReportOutcome(ctx, route.RouteID, are.Score(1.5))
	wantError(t, "ReportOutcome with score 1.5", err, codes.InvalidArgument, "INVALID_ARGUMENT", "score")
	err = client.Router.ReportOutcome(ctx, route.RouteID, are.Outcome{})
	wantError(t, "ReportOutcome without an outcome", err, codes.InvalidArgument, "INVALID_ARGUMENT", "outcome")
	_, err = client.Router.RouteModelVector(ctx, []float32{1, 0, 0})
	wantError(t, "RouteModel with a 3-d vector", err, codes.InvalidArgument, "DIMENSION_MISMATCH", "vector")
	_, err = client.Router.PutModelCatalog(ctx, are.ModelSpec{ModelID: "a"}, are.ModelSpec{ModelID: "a"})
	wantError(t, "PutModelCatalog with a duplicate", err, codes.InvalidArgument, "INVALID_ARGUMENT", "catalog.models[1].model_id")
	_, err = client.Router.PutModelCatalog(ctx, are.ModelSpec{ModelID: "a", PriorSuccessRate: 1.2})
	wantError(t, "PutModelCatalog with prior 1.2", err, codes.InvalidArgument, "INVALID_ARGUMENT", "catalog.models[0].prior_success_rate")
	if kept, err := client.Router.GetModelCatalog(ctx); err != nil || len(kept.Models) != 2 {
		t.Fatalf("the catalog after refused puts = %+v, %v; want it unchanged", kept, err)
	}
}
