package are

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/are-runtime/are/sdks/go/arev1"
)

// Router sends work to the cheapest capable agent or model (RouterService):
// Client.Router. Register what your agents can do and what they cost, then
// ask which one should take a task:
//
//	_, _, err := client.Router.RegisterAgent(ctx, are.AgentCard{AgentID: "summarizer",
//		Description: "summarise long documents", Capabilities: []string{"summarize"}, CostPerCallMicroUSD: 2000})
//	result, err := client.Router.RouteTask(ctx, "summarise this contract")
//	best := result.Candidates[0]
//
// And which model should answer a prompt, reporting how it went so the router
// learns which prompts the cheap model handles:
//
//	route, err := client.Router.RouteModel(ctx, "What is 2 + 2?", are.QualityTarget(0.8))
//	// ... call route.ModelID
//	err = client.Router.ReportOutcome(ctx, route.RouteID, are.Success(true), are.OutcomeUsage(usage))
//
// Errors are *Error: INVALID_ARGUMENT for bad input (FieldViolations name the
// field; reason DIMENSION_MISMATCH for a vector of the wrong size, with
// Metadata "expected_dimension" and "actual_dimension"), NOT_FOUND (reasons
// AGENT_NOT_FOUND, NO_ROUTE_ABOVE_THRESHOLD, ROUTE_NOT_FOUND),
// FAILED_PRECONDITION (EMBEDDER_UNAVAILABLE, MODEL_CATALOG_EMPTY,
// NO_ELIGIBLE_MODEL, MODEL_NOT_IN_CATALOG), ALREADY_EXISTS
// (OUTCOME_ALREADY_REPORTED).
type Router struct {
	client *Client
}

// AgentCard is an agent as the router sees it: what it does, what it costs,
// and how busy it is. The fields up to Labels are what you register; Source
// and the fields after it are filled in by the sidecar (and ignored when
// registering).
type AgentCard struct {
	// AgentID is the card's unique id (1 to 128 characters of [A-Za-z0-9._:-]);
	// registering an existing id replaces its card.
	AgentID string
	// DisplayName is a human-readable name.
	DisplayName string
	// Description is what the agent does, in prose; embedded by the router
	// when Vector is nil.
	Description string
	// Capabilities are the capability names it serves; a routed task goes
	// to the first.
	Capabilities []string
	// Vector is your own embedding of the card, of the router's dimension.
	Vector []float32
	// CostPerCallMicroUSD is the typical cost of one call (1 USD = 1,000,000).
	CostPerCallMicroUSD int64
	// TypicalLatency is the typical latency of one call (zero: unknown).
	TypicalLatency time.Duration
	// Capacity is how many calls it serves at once (0 means 1).
	Capacity int32
	// Labels are free labels for routing filters.
	Labels map[string]string

	// Source is how the card got into the index (registered, or declared by
	// a connected worker).
	Source arev1.AgentSource
	// Available is whether the agent can take work now.
	Available bool
	// Running is the number of calls in flight now.
	Running int32
	// WorkerIDs are the connected workers backing the card.
	WorkerIDs []string
	// CreateTime is when the card was first registered.
	CreateTime time.Time
	// UpdateTime is when the card last changed.
	UpdateTime time.Time
}

// Load is the calls in flight divided by the capacity: 0 idle, 1 or more
// full.
func (c *AgentCard) Load() float64 {
	if c.Capacity <= 0 {
		return 0
	}
	return float64(c.Running) / float64(c.Capacity)
}

// Proto returns the card as an arev1.AgentCard (the input fields only).
func (c *AgentCard) Proto() *arev1.AgentCard {
	card := &arev1.AgentCard{
		AgentId:             c.AgentID,
		DisplayName:         c.DisplayName,
		Description:         c.Description,
		Capabilities:        c.Capabilities,
		Vector:              vectorOf(c.Vector),
		CostPerCallMicroUsd: c.CostPerCallMicroUSD,
		Capacity:            c.Capacity,
		Labels:              c.Labels,
	}
	if c.TypicalLatency > 0 {
		card.TypicalLatency = durationpb.New(c.TypicalLatency)
	}
	return card
}

// agentCardOf converts an arev1.AgentCard.
func agentCardOf(card *arev1.AgentCard) AgentCard {
	out := AgentCard{
		AgentID:             card.GetAgentId(),
		DisplayName:         card.GetDisplayName(),
		Description:         card.GetDescription(),
		Capabilities:        card.GetCapabilities(),
		Vector:              card.GetVector().GetValues(),
		CostPerCallMicroUSD: card.GetCostPerCallMicroUsd(),
		Capacity:            card.GetCapacity(),
		Labels:              card.GetLabels(),
		Source:              card.GetSource(),
		Available:           card.GetAvailable(),
		Running:             card.GetRunning(),
		WorkerIDs:           card.GetWorkerIds(),
	}
	if d := card.GetTypicalLatency(); d != nil {
		out.TypicalLatency = d.AsDuration()
	}
	if t := card.GetCreateTime(); t != nil {
		out.CreateTime = t.AsTime()
	}
	if t := card.GetUpdateTime(); t != nil {
		out.UpdateTime = t.AsTime()
	}
	return out
}

// RegisterAgent adds a card to the index, or replaces the card with the same
// id; it returns the card as stored and whether it is new.
func (r *Router) RegisterAgent(ctx context.Context, card AgentCard) (*AgentCard, bool, error) {
	resp, err := r.client.Raw.Router.RegisterAgent(ctx, &arev1.RegisterAgentRequest{Agent: card.Proto()})
	if err != nil {
		return nil, false, err
	}
	stored := agentCardOf(resp.GetAgent())
	return &stored, resp.GetCreated(), nil
}

// DeregisterAgent removes a registered card (NOT_FOUND, reason
// AGENT_NOT_FOUND, if there is none). Cards declared by workers go away with
// their workers instead.
func (r *Router) DeregisterAgent(ctx context.Context, agentID string) error {
	_, err := r.client.Raw.Router.DeregisterAgent(ctx, &arev1.DeregisterAgentRequest{AgentId: agentID})
	return err
}

// AgentFilter selects cards for ListAgents and Agents; the zero filter
// matches every card.
type AgentFilter struct {
	// Capability keeps the cards serving it ("" means any).
	Capability string
	// Labels keeps the cards having every one of these labels (at most 8).
	Labels map[string]string
	// AvailableOnly keeps the cards that can take work now.
	AvailableOnly bool
}

// ListAgents returns one page of cards by agent_id and the token of the next
// page ("" on the last). pageSize 0 means 100, at most 1,000; pageToken is ""
// for the first page (a token from another filter is INVALID_ARGUMENT,
// reason INVALID_PAGE_TOKEN).
func (r *Router) ListAgents(ctx context.Context, filter AgentFilter, pageSize int32, pageToken string) ([]AgentCard, string, error) {
	resp, err := r.client.Raw.Router.ListAgents(ctx, &arev1.ListAgentsRequest{
		PageSize:      pageSize,
		PageToken:     pageToken,
		Capability:    filter.Capability,
		Labels:        filter.Labels,
		AvailableOnly: filter.AvailableOnly,
	})
	if err != nil {
		return nil, "", err
	}
	cards := make([]AgentCard, len(resp.GetAgents()))
	for i, card := range resp.GetAgents() {
		cards[i] = agentCardOf(card)
	}
	return cards, resp.GetNextPageToken(), nil
}

// Agents returns the first limit cards matching filter, by agent_id,
// fetching pages as needed (limit <= 0: every matching card).
func (r *Router) Agents(ctx context.Context, filter AgentFilter, limit int) ([]AgentCard, error) {
	var out []AgentCard
	token := ""
	for {
		size := int32(1000)
		if limit > 0 {
			size = int32(min(limit-len(out), 1000))
		}
		page, next, err := r.ListAgents(ctx, filter, size, token)
		if err != nil {
			return nil, err
		}
		out = append(out, page...)
		if limit > 0 && len(out) >= limit {
			return out[:limit], nil
		}
		if next == "" || len(page) == 0 {
			return out, nil
		}
		token = next
	}
}

// RouteCandidate is one ranked agent of a RouteTask answer.
type RouteCandidate struct {
	// AgentID is the agent.
	AgentID string
	// Capability is the capability a task would be dispatched to.
	Capability string
	// Similarity is the cosine similarity of the agent to the task.
	Similarity float64
	// Score is the ranking score of the mode used.
	Score float64
	// CostPerCallMicroUSD is the agent's cost per call.
	CostPerCallMicroUSD int64
	// Load is the running calls divided by the capacity.
	Load float64
	// Available is whether the agent can take work now.
	Available bool
	// AboveThreshold is whether the similarity reaches the threshold.
	AboveThreshold bool
	// Reason says why it ranks where it does, for humans.
	Reason string
}

// RouteResult is the ranked agents for a task, best first, with the mode and
// the threshold used.
type RouteResult struct {
	Candidates []RouteCandidate
	// Mode is the mode used (the router's default resolved).
	Mode arev1.RouteMode
	// Threshold is the similarity threshold used.
	Threshold float64
}

// RouteOption configures RouteTask and RouteTaskVector.
type RouteOption func(*arev1.RouteTaskRequest)

// RouteTopK returns at most k agents, 1 to 100 (default 5).
func RouteTopK(k int32) RouteOption {
	return func(r *arev1.RouteTaskRequest) { r.TopK = k }
}

// RouteBestMatch ranks by similarity alone.
func RouteBestMatch() RouteOption {
	return func(r *arev1.RouteTaskRequest) { r.Mode = arev1.RouteMode_ROUTE_MODE_BEST_MATCH }
}

// RouteCostBiased ranks by (1 - cost weight) * similarity + cost weight *
// (1 - cost / highest cost): with cost weight 1 (the default) the cheapest
// agent that reaches the threshold comes first. Without RouteBestMatch or
// RouteCostBiased the router's default mode is used (cost-biased unless
// configured otherwise).
func RouteCostBiased() RouteOption {
	return func(r *arev1.RouteTaskRequest) { r.Mode = arev1.RouteMode_ROUTE_MODE_COST_BIASED }
}

// RouteThreshold sets the cosine similarity an agent needs, in [-1, 1]
// (default the router's, 0.5 unless configured).
func RouteThreshold(threshold float64) RouteOption {
	return func(r *arev1.RouteTaskRequest) { r.Threshold = &threshold }
}

// RouteCostWeight sets the weight of cost in cost-biased mode, in [0, 1]
// (default the router's, 1 unless configured).
func RouteCostWeight(weight float64) RouteOption {
	return func(r *arev1.RouteTaskRequest) { r.CostWeight = &weight }
}

// ExcludeAgents never returns these agents (at most 1,000).
func ExcludeAgents(agentIDs ...string) RouteOption {
	return func(r *arev1.RouteTaskRequest) { r.ExcludeAgentIds = append(r.ExcludeAgentIds, agentIDs...) }
}

// RequireCapabilities keeps the agents serving every one of these
// capabilities (at most 16).
func RequireCapabilities(capabilities ...string) RouteOption {
	return func(r *arev1.RouteTaskRequest) {
		r.RequiredCapabilities = append(r.RequiredCapabilities, capabilities...)
	}
}

// RouteLabels keeps the agents having every one of these labels (at most 8).
func RouteLabels(labels map[string]string) RouteOption {
	return func(r *arev1.RouteTaskRequest) { r.Labels = labels }
}

// IncludeUnavailable may return unavailable agents (ranked last).
func IncludeUnavailable() RouteOption {
	return func(r *arev1.RouteTaskRequest) { r.IncludeUnavailable = true }
}

// IncludeBelowThreshold returns the best agents below the threshold as
// candidates (AboveThreshold false) when none reaches it, instead of
// NOT_FOUND, reason NO_ROUTE_ABOVE_THRESHOLD.
func IncludeBelowThreshold() RouteOption {
	return func(r *arev1.RouteTaskRequest) { r.IncludeBelowThreshold = true }
}

// RouteTask ranks agents for a task described in text (at most 8 KiB,
// embedded by the router) and returns the top k, best first. Options:
// RouteTopK, RouteBestMatch, RouteCostBiased, RouteThreshold,
// RouteCostWeight, ExcludeAgents, RequireCapabilities, RouteLabels,
// IncludeUnavailable, IncludeBelowThreshold.
//
// It never picks silently below the threshold: when no eligible agent
// reaches it the error is NOT_FOUND, reason NO_ROUTE_ABOVE_THRESHOLD; its
// Message lists the best agents below the threshold, and its Metadata holds
// "best_agent_id", "best_similarity" and "threshold".
func (r *Router) RouteTask(ctx context.Context, text string, opts ...RouteOption) (*RouteResult, error) {
	return r.routeTask(ctx, &arev1.RouteTaskRequest{Query: &arev1.RouteTaskRequest_Text{Text: text}}, opts)
}

// RouteTaskVector is RouteTask with the task given as a vector of the
// router's dimension.
func (r *Router) RouteTaskVector(ctx context.Context, vector []float32, opts ...RouteOption) (*RouteResult, error) {
	return r.routeTask(ctx, &arev1.RouteTaskRequest{Query: &arev1.RouteTaskRequest_Vector{Vector: &arev1.Vector{Values: vector}}}, opts)
}

func (r *Router) routeTask(ctx context.Context, req *arev1.RouteTaskRequest, opts []RouteOption) (*RouteResult, error) {
	for _, opt := range opts {
		opt(req)
	}
	resp, err := r.client.Raw.Router.RouteTask(ctx, req)
	if err != nil {
		return nil, err
	}
	out := &RouteResult{
		Candidates: make([]RouteCandidate, len(resp.GetCandidates())),
		Mode:       resp.GetMode(),
		Threshold:  resp.GetThreshold(),
	}
	for i, c := range resp.GetCandidates() {
		out.Candidates[i] = RouteCandidate{
			AgentID:             c.GetAgentId(),
			Capability:          c.GetCapability(),
			Similarity:          c.GetSimilarity(),
			Score:               c.GetScore(),
			CostPerCallMicroUSD: c.GetCostPerCallMicroUsd(),
			Load:                c.GetLoad(),
			Available:           c.GetAvailable(),
			AboveThreshold:      c.GetAboveThreshold(),
			Reason:              c.GetReason(),
		}
	}
	return out, nil
}

// ModelSpec is one model of the catalog RouteModel chooses from.
type ModelSpec struct {
	// ModelID is the id the worker calls the model by, in the id alphabet.
	ModelID string
	// Tier is 1 (cheapest, weakest) to 10 (strongest); it breaks ties.
	Tier int32
	// InputCostPerMillionTokensMicroUSD is the price of input tokens (for
	// example 150,000 for $0.15 per million).
	InputCostPerMillionTokensMicroUSD int64
	// OutputCostPerMillionTokensMicroUSD is the price of output tokens.
	OutputCostPerMillionTokensMicroUSD int64
	// PriorSuccessRate is the success probability assumed with too little
	// history, in [0, 1]; 0 means 0.5.
	PriorSuccessRate float64
	// ContextWindowTokens is the model's context window; 0 means unknown.
	ContextWindowTokens int64
	// Labels are free labels.
	Labels map[string]string
}

// Proto returns the spec as an arev1.ModelSpec.
func (m *ModelSpec) Proto() *arev1.ModelSpec {
	return &arev1.ModelSpec{
		ModelId:                            m.ModelID,
		Tier:                               m.Tier,
		InputCostPerMillionTokensMicroUsd:  m.InputCostPerMillionTokensMicroUSD,
		OutputCostPerMillionTokensMicroUsd: m.OutputCostPerMillionTokensMicroUSD,
		PriorSuccessRate:                   m.PriorSuccessRate,
		ContextWindowTokens:                m.ContextWindowTokens,
		Labels:                             m.Labels,
	}
}

// ModelCatalog is the models RouteModel chooses from, and when the catalog
// was last replaced (zero before the first PutModelCatalog).
type ModelCatalog struct {
	Models     []ModelSpec
	UpdateTime time.Time
}

func catalogOf(catalog *arev1.ModelCatalog) *ModelCatalog {
	out := &ModelCatalog{Models: make([]ModelSpec, len(catalog.GetModels()))}
	for i, m := range catalog.GetModels() {
		out.Models[i] = ModelSpec{
			ModelID:                            m.GetModelId(),
			Tier:                               m.GetTier(),
			InputCostPerMillionTokensMicroUSD:  m.GetInputCostPerMillionTokensMicroUsd(),
			OutputCostPerMillionTokensMicroUSD: m.GetOutputCostPerMillionTokensMicroUsd(),
			PriorSuccessRate:                   m.GetPriorSuccessRate(),
			ContextWindowTokens:                m.GetContextWindowTokens(),
			Labels:                             m.GetLabels(),
		}
	}
	if t := catalog.GetUpdateTime(); t != nil {
		out.UpdateTime = t.AsTime()
	}
	return out
}

// PutModelCatalog replaces the model catalog (1 to 256 models with unique
// ids) and returns it with defaults filled in. Outcomes already reported for
// models that stay are kept.
func (r *Router) PutModelCatalog(ctx context.Context, models ...ModelSpec) (*ModelCatalog, error) {
	specs := make([]*arev1.ModelSpec, len(models))
	for i := range models {
		specs[i] = models[i].Proto()
	}
	resp, err := r.client.Raw.Router.PutModelCatalog(ctx, &arev1.PutModelCatalogRequest{Catalog: &arev1.ModelCatalog{Models: specs}})
	if err != nil {
		return nil, err
	}
	return catalogOf(resp.GetCatalog()), nil
}

// GetModelCatalog returns the current model catalog (no models before the
// first PutModelCatalog).
func (r *Router) GetModelCatalog(ctx context.Context) (*ModelCatalog, error) {
	resp, err := r.client.Raw.Router.GetModelCatalog(ctx, &arev1.GetModelCatalogRequest{})
	if err != nil {
		return nil, err
	}
	return catalogOf(resp.GetCatalog()), nil
}

// ModelEstimate is the router's estimate for one model and one prompt.
type ModelEstimate struct {
	ModelID string
	// ExpectedQuality is the expected success probability (or mean score).
	ExpectedQuality float64
	// ExpectedCostMicroUSD is the expected cost of the call.
	ExpectedCostMicroUSD int64
	// Samples is how many similar past outcomes the estimate rests on; 0
	// means the model's prior success rate.
	Samples int32
}

// ModelRoute is the model chosen for a prompt; report how the call went with
// ReportOutcome and RouteID.
type ModelRoute struct {
	// RouteID is the id to report the outcome with (valid 7 days).
	RouteID string
	// ModelID is the chosen model.
	ModelID string
	// ExpectedQuality is its expected success probability (or mean score).
	ExpectedQuality float64
	// ExpectedCostMicroUSD is its expected cost for this call.
	ExpectedCostMicroUSD int64
	// TargetMet is whether it is expected to reach the quality target; when
	// no model is, the one of highest expected quality is chosen.
	TargetMet bool
	// Estimates are every eligible model's estimates, cheapest first.
	Estimates []ModelEstimate
	// Reason says why this model, for humans.
	Reason string
}

// ModelRouteOption configures RouteModel and RouteModelVector.
type ModelRouteOption func(*arev1.RouteModelRequest)

// QualityTarget sets the success probability wanted, in (0, 1] (default 0.8).
func QualityTarget(target float64) ModelRouteOption {
	return func(r *arev1.RouteModelRequest) { r.QualityTarget = target }
}

// ExcludeModels never chooses these models (at most 256).
func ExcludeModels(modelIDs ...string) ModelRouteOption {
	return func(r *arev1.RouteModelRequest) { r.ExcludeModelIds = append(r.ExcludeModelIds, modelIDs...) }
}

// EstimatedTokens gives the expected input and output tokens, for the
// expected cost and the context window check (0 input: estimated from the
// prompt, 4 characters per token, or unknown for vectors; 0 output: 500).
func EstimatedTokens(input, output int64) ModelRouteOption {
	return func(r *arev1.RouteModelRequest) { r.EstimatedInputTokens, r.EstimatedOutputTokens = input, output }
}

// RouteModel picks the cheapest model expected to reach the quality target
// for a prompt (at most 1 MiB, embedded by the router). Options:
// QualityTarget, ExcludeModels, EstimatedTokens. Before any PutModelCatalog
// it fails with FAILED_PRECONDITION, reason MODEL_CATALOG_EMPTY; with every
// model excluded or too small, reason NO_ELIGIBLE_MODEL.
func (r *Router) RouteModel(ctx context.Context, prompt string, opts ...ModelRouteOption) (*ModelRoute, error) {
	return r.routeModel(ctx, &arev1.RouteModelRequest{Query: &arev1.RouteModelRequest_Prompt{Prompt: prompt}}, opts)
}

// RouteModelVector is RouteModel with the prompt given as a vector of the
// router's prompt-index dimension.
func (r *Router) RouteModelVector(ctx context.Context, vector []float32, opts ...ModelRouteOption) (*ModelRoute, error) {
	return r.routeModel(ctx, &arev1.RouteModelRequest{Query: &arev1.RouteModelRequest_Vector{Vector: &arev1.Vector{Values: vector}}}, opts)
}

func (r *Router) routeModel(ctx context.Context, req *arev1.RouteModelRequest, opts []ModelRouteOption) (*ModelRoute, error) {
	for _, opt := range opts {
		opt(req)
	}
	resp, err := r.client.Raw.Router.RouteModel(ctx, req)
	if err != nil {
		return nil, err
	}
	out := &ModelRoute{
		RouteID:              resp.GetRouteId(),
		ModelID:              resp.GetModelId(),
		ExpectedQuality:      resp.GetExpectedQuality(),
		ExpectedCostMicroUSD: resp.GetExpectedCostMicroUsd(),
		TargetMet:            resp.GetTargetMet(),
		Estimates:            make([]ModelEstimate, len(resp.GetEstimates())),
		Reason:               resp.GetReason(),
	}
	for i, e := range resp.GetEstimates() {
		out.Estimates[i] = ModelEstimate{
			ModelID:              e.GetModelId(),
			ExpectedQuality:      e.GetExpectedQuality(),
			ExpectedCostMicroUSD: e.GetExpectedCostMicroUsd(),
			Samples:              e.GetSamples(),
		}
	}
	return out, nil
}

// Outcome is how a routed call went: Success or Score.
type Outcome struct {
	success *bool
	score   *float64
}

// Success is the outcome of a call that met the need (true) or did not.
func Success(ok bool) Outcome { return Outcome{success: &ok} }

// Score is the outcome of a call given as a quality score in [0, 1].
func Score(score float64) Outcome { return Outcome{score: &score} }

// OutcomeOption configures ReportOutcome.
type OutcomeOption func(*arev1.ReportOutcomeRequest)

// OutcomeModel names the model actually called, when it differs from the
// chosen one.
func OutcomeModel(modelID string) OutcomeOption {
	return func(r *arev1.ReportOutcomeRequest) { r.ModelId = modelID }
}

// OutcomeUsage records the call's tokens and cost (in micro-US-dollars).
func OutcomeUsage(usage *arev1.Usage) OutcomeOption {
	return func(r *arev1.ReportOutcomeRequest) { r.Usage = usage }
}

// OutcomeLatency records how long the call took.
func OutcomeLatency(d time.Duration) OutcomeOption {
	return func(r *arev1.ReportOutcomeRequest) { r.Latency = durationpb.New(d) }
}

// ReportOutcome records how a call routed by RouteModel went, which feeds
// the router's estimator. Routes can be reported for 7 days, once each:
// NOT_FOUND, reason ROUTE_NOT_FOUND, for an unknown route; ALREADY_EXISTS,
// reason OUTCOME_ALREADY_REPORTED, for a second report; FAILED_PRECONDITION,
// reason MODEL_NOT_IN_CATALOG, for a model outside the catalog. The zero Outcome is
// refused (INVALID_ARGUMENT, field "outcome") without a call. Options:
// OutcomeModel, OutcomeUsage, OutcomeLatency.
func (r *Router) ReportOutcome(ctx context.Context, routeID string, outcome Outcome, opts ...OutcomeOption) error {
	req := &arev1.ReportOutcomeRequest{RouteId: routeID}
	switch {
	case outcome.success != nil:
		req.Outcome = &arev1.ReportOutcomeRequest_Success{Success: *outcome.success}
	case outcome.score != nil:
		req.Outcome = &arev1.ReportOutcomeRequest_Score{Score: *outcome.score}
	default:
		const message = "ReportOutcome needs an outcome: are.Success(ok) or are.Score(score)"
		return &Error{
			Code:            codes.InvalidArgument,
			Message:         message,
			Reason:          "INVALID_ARGUMENT",
			FieldViolations: []FieldViolation{{Field: "outcome", Description: message}},
		}
	}
	for _, opt := range opts {
		opt(req)
	}
	_, err := r.client.Raw.Router.ReportOutcome(ctx, req)
	return err
}
