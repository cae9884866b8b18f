package are

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/are-runtime/are/sdks/go/arev1"
)

// State is a workflow's state document and memory (StateService):
// Client.State. The document is one JSON value per workflow, read by JSON
// Pointer (RFC 6901) and patched with optimistic concurrency; every patch
// makes a durable version that can be read again, listed and forked from.
//
//	doc := client.State.ForWorkflow(workflowID)
//	version, err := doc.Patch(ctx, are.MergePatch(map[string]any{"plan": map[string]any{"steps": []string{"search"}}}))
//	snap, err := doc.Get(ctx, []string{"/plan/steps", "/budget"}, are.AtVersion(version))
//	_, err = doc.Patch(ctx, are.PointerPatch(are.SetOp("/plan/steps/-", "book")), are.ExpectVersion(version))
//
// Inside a worker handler, task.State() is the same view bound to the task's
// workflow, with each patch recorded as written by the task's attempt.
type State struct {
	client *Client
	// Memory is the workflows' memory of notes (AddMemory, HydrateMemory).
	Memory *Memory
}

// StateSnapshot is what GetState read from one version of a document.
type StateSnapshot struct {
	// Version is the version read.
	Version int64
	// UpdateTime is when that version was written.
	UpdateTime time.Time
	// Values are the JSON values of the paths that resolved, by path ("" is
	// the whole document).
	Values map[string]json.RawMessage
	// MissingPaths are the paths that did not resolve, in request order.
	MissingPaths []string
}

// Decode unmarshals the value at path into v; it reports false (and leaves
// v alone) when the path did not resolve.
func (s *StateSnapshot) Decode(path string, v any) (bool, error) {
	raw, ok := s.Values[path]
	if !ok {
		return false, nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return true, fmt.Errorf("are: state value at %q: %w", path, err)
	}
	return true, nil
}

// StateOption configures State.Get and State.Patch; each uses the options
// that apply to it.
type StateOption func(*stateOptions)

type stateOptions struct {
	version         *int64
	expectedVersion *int64
	taskID          string
	attempt         int32
	writer          string
}

// AtVersion reads a given version instead of the latest (Get).
func AtVersion(version int64) StateOption {
	return func(o *stateOptions) { o.version = &version }
}

// ExpectVersion applies a patch only if version is the document's current
// version; otherwise the patch fails with an *Error of code ABORTED, reason
// STATE_VERSION_MISMATCH (errors.Is(err, ErrVersionMismatch)) and nothing
// changes (Patch).
func ExpectVersion(version int64) StateOption {
	return func(o *stateOptions) { o.expectedVersion = &version }
}

// AsTask records a patch as written by a task's attempt, which the calling
// worker must hold (FAILED_PRECONDITION, reason TASK_NOT_HELD, otherwise).
// Task.State() sets it for you (Patch).
func AsTask(taskID string, attempt int32) StateOption {
	return func(o *stateOptions) { o.taskID, o.attempt = taskID, attempt }
}

// AsWriter records who writes a patch that no task writes, at most 256
// characters (Patch).
func AsWriter(writer string) StateOption {
	return func(o *stateOptions) { o.writer = writer }
}

func collectState(opts []StateOption) stateOptions {
	var o stateOptions
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// StatePatch is one change to a state document, applied all or nothing:
// a JSON Merge Patch (MergePatch, MergePatchJSON) or a list of JSON-pointer
// operations (PointerPatch).
type StatePatch struct {
	patch *arev1.StatePatch
	err   error
}

// MergePatch is a JSON Merge Patch (RFC 7386) of v encoded as JSON: an
// object whose members replace or add members of the document, and whose
// null members remove them. A json.RawMessage is sent as it is.
func MergePatch(v any) StatePatch {
	data, err := json.Marshal(v)
	if err != nil {
		return StatePatch{err: fmt.Errorf("are: merge patch is not JSON-serialisable: %w", err)}
	}
	return MergePatchJSON(data)
}

// MergePatchJSON is a JSON Merge Patch given as JSON text.
func MergePatchJSON(data []byte) StatePatch {
	return StatePatch{patch: &arev1.StatePatch{Patch: &arev1.StatePatch_MergePatchJson{MergePatchJson: data}}}
}

// PatchOp is one JSON-pointer operation of a PointerPatch; make it with
// SetOp or RemoveOp.
type PatchOp struct {
	op  *arev1.PatchOperation
	err error
}

// SetOp sets the value at a JSON Pointer to v encoded as JSON (a
// json.RawMessage is sent as it is): it creates or replaces a member of an
// existing object; on an array "/-" appends and an index replaces.
func SetOp(path string, v any) PatchOp {
	data, err := json.Marshal(v)
	if err != nil {
		return PatchOp{err: fmt.Errorf("are: value at %q is not JSON-serialisable: %w", path, err)}
	}
	return PatchOp{op: &arev1.PatchOperation{Op: arev1.PatchOperationType_PATCH_OPERATION_TYPE_SET, Path: path, ValueJson: data}}
}

// RemoveOp removes the value at a JSON Pointer (a missing member is a no-op).
func RemoveOp(path string) PatchOp {
	return PatchOp{op: &arev1.PatchOperation{Op: arev1.PatchOperationType_PATCH_OPERATION_TYPE_REMOVE, Path: path}}
}

// PointerPatch is a list of JSON-pointer operations (1 to 1,000), applied
// in order, all or nothing.
func PointerPatch(ops ...PatchOp) StatePatch {
	list := &arev1.PatchOperationList{Operations: make([]*arev1.PatchOperation, 0, len(ops))}
	var errs []error
	for _, op := range ops {
		if op.err != nil {
			errs = append(errs, op.err)
			continue
		}
		list.Operations = append(list.Operations, op.op)
	}
	if len(errs) > 0 {
		return StatePatch{err: errors.Join(errs...)}
	}
	return StatePatch{patch: &arev1.StatePatch{Patch: &arev1.StatePatch_Operations{Operations: list}}}
}

// Get reads JSON-pointer paths of a workflow's state document (none: the
// whole document, path "") at the latest version, or at AtVersion's. Paths
// that do not resolve are listed in MissingPaths, not errors.
func (s *State) Get(ctx context.Context, workflowID string, paths []string, opts ...StateOption) (*StateSnapshot, error) {
	o := collectState(opts)
	resp, err := s.client.Raw.State.GetState(ctx, &arev1.GetStateRequest{WorkflowId: workflowID, Paths: paths, Version: o.version})
	if err != nil {
		return nil, err
	}
	snap := &StateSnapshot{
		Version:      resp.GetVersion(),
		Values:       make(map[string]json.RawMessage, len(resp.GetValues())),
		MissingPaths: resp.GetMissingPaths(),
	}
	if t := resp.GetUpdateTime(); t != nil {
		snap.UpdateTime = t.AsTime()
	}
	for _, v := range resp.GetValues() {
		snap.Values[v.GetPath()] = json.RawMessage(v.GetValueJson())
	}
	return snap, nil
}

// Patch applies one patch to a running workflow's state document and
// returns the version it made. Options: ExpectVersion (optimistic
// concurrency), AsTask, AsWriter. On error nothing changes.
func (s *State) Patch(ctx context.Context, workflowID string, patch StatePatch, opts ...StateOption) (int64, error) {
	if patch.err != nil {
		return 0, patch.err
	}
	if patch.patch == nil {
		return 0, &Error{Code: codes.InvalidArgument, Message: "Patch needs a MergePatch or a PointerPatch"}
	}
	o := collectState(opts)
	resp, err := s.client.Raw.State.PatchState(ctx, &arev1.PatchStateRequest{
		WorkflowId:      workflowID,
		Patch:           patch.patch,
		ExpectedVersion: o.expectedVersion,
		TaskId:          o.taskID,
		Attempt:         o.attempt,
		Writer:          o.writer,
	})
	if err != nil {
		return 0, err
	}
	return resp.GetVersion(), nil
}

// ListCheckpoints returns one page of a workflow's retained versions,
// newest first (pageSize 0: 100, at most 1,000; pageToken "" for the first
// page, then the previous page's NextPageToken).
func (s *State) ListCheckpoints(ctx context.Context, workflowID string, pageSize int32, pageToken string) (*arev1.ListCheckpointsResponse, error) {
	return s.client.Raw.State.ListCheckpoints(ctx, &arev1.ListCheckpointsRequest{
		WorkflowId: workflowID, PageSize: pageSize, PageToken: pageToken,
	})
}

// Checkpoints returns the newest limit retained versions of a workflow's
// document, newest first, fetching pages as needed (limit <= 0: every
// retained version, which retention bounds).
func (s *State) Checkpoints(ctx context.Context, workflowID string, limit int) ([]*arev1.Checkpoint, error) {
	var out []*arev1.Checkpoint
	token := ""
	for {
		size := int32(1000)
		if limit > 0 {
			size = int32(min(limit-len(out), 1000))
		}
		page, err := s.ListCheckpoints(ctx, workflowID, size, token)
		if err != nil {
			return nil, err
		}
		out = append(out, page.GetCheckpoints()...)
		if limit > 0 && len(out) >= limit {
			return out[:limit], nil
		}
		token = page.GetNextPageToken()
		if token == "" || len(page.GetCheckpoints()) == 0 {
			return out, nil
		}
	}
}

// ForkOption configures State.Fork.
type ForkOption func(*arev1.ForkWorkflowRequest)

// ForkID sets the new workflow's id (otherwise the sidecar generates one).
func ForkID(workflowID string) ForkOption {
	return func(r *arev1.ForkWorkflowRequest) { r.NewWorkflowId = workflowID }
}

// Rerun runs tasks again (and their dependents) even though they were
// terminal at the checkpoint.
func Rerun(taskIDs ...string) ForkOption {
	return func(r *arev1.ForkWorkflowRequest) { r.RerunTaskIds = append(r.RerunTaskIds, taskIDs...) }
}

// ForkLabels sets the new workflow's labels (otherwise the source's).
func ForkLabels(labels map[string]string) ForkOption {
	return func(r *arev1.ForkWorkflowRequest) { r.Labels = labels }
}

// ForkRequestID makes the fork idempotent: a retry with the same request
// id returns the first fork.
func ForkRequestID(id string) ForkOption {
	return func(r *arev1.ForkWorkflowRequest) { r.RequestId = id }
}

// Fork starts a new running workflow from a version of another (0: the
// latest), open or closed: its document starts as that version, its memory
// as the source's notes up to then, and tasks not terminal then run again.
// It returns a handle on the new workflow and the version it started from.
func (s *State) Fork(ctx context.Context, workflowID string, version int64, opts ...ForkOption) (*WorkflowHandle, int64, error) {
	req := &arev1.ForkWorkflowRequest{WorkflowId: workflowID, Version: version}
	for _, opt := range opts {
		opt(req)
	}
	resp, err := s.client.Raw.State.ForkWorkflow(ctx, req)
	if err != nil {
		return nil, 0, err
	}
	return &WorkflowHandle{client: s.client, ID: resp.GetWorkflowId()}, resp.GetSourceVersion(), nil
}

// ForWorkflow returns a view of one workflow's state and memory; it makes
// no call.
func (s *State) ForWorkflow(workflowID string) *WorkflowState {
	return &WorkflowState{state: s, WorkflowID: workflowID, Memory: &WorkflowMemory{memory: s.Memory, workflowID: workflowID}}
}

// WorkflowState is one workflow's state document and memory, from
// State.ForWorkflow or Task.State. A view from Task.State records each
// patch as written by the task's attempt.
type WorkflowState struct {
	state *State
	// WorkflowID is the workflow.
	WorkflowID string
	// TaskID and Attempt attribute patches to a task attempt (Task.State);
	// empty and 0 otherwise.
	TaskID  string
	Attempt int32
	// Memory is the workflow's memory.
	Memory *WorkflowMemory
}

// Get reads paths of the document (none: the whole document); see State.Get.
func (w *WorkflowState) Get(ctx context.Context, paths []string, opts ...StateOption) (*StateSnapshot, error) {
	return w.state.Get(ctx, w.WorkflowID, paths, opts...)
}

// Decode reads one path ("" for the whole document) into v; it reports
// false when the path does not resolve. Options: AtVersion.
func (w *WorkflowState) Decode(ctx context.Context, path string, v any, opts ...StateOption) (bool, error) {
	snap, err := w.Get(ctx, []string{path}, opts...)
	if err != nil {
		return false, err
	}
	return snap.Decode(path, v)
}

// Patch applies one patch and returns the new version; see State.Patch. A
// view bound to a task attributes it to the task's attempt.
func (w *WorkflowState) Patch(ctx context.Context, patch StatePatch, opts ...StateOption) (int64, error) {
	if w.TaskID != "" {
		opts = append([]StateOption{AsTask(w.TaskID, w.Attempt)}, opts...)
	}
	return w.state.Patch(ctx, w.WorkflowID, patch, opts...)
}

// Checkpoints returns the newest limit retained versions; see
// State.Checkpoints.
func (w *WorkflowState) Checkpoints(ctx context.Context, limit int) ([]*arev1.Checkpoint, error) {
	return w.state.Checkpoints(ctx, w.WorkflowID, limit)
}

// Fork starts a new workflow from a version of this one; see State.Fork.
func (w *WorkflowState) Fork(ctx context.Context, version int64, opts ...ForkOption) (*WorkflowHandle, int64, error) {
	return w.state.Fork(ctx, w.WorkflowID, version, opts...)
}

// State returns a view of the task's workflow state and memory whose
// patches are recorded as written by this attempt (the worker holds it
// while the handler runs). It makes no call.
func (t *Task) State() *WorkflowState {
	view := t.client.State.ForWorkflow(t.WorkflowID)
	view.TaskID, view.Attempt = t.TaskID, t.Attempt
	return view
}

// Memory is the workflows' memory of notes: State.Memory. Notes carry text
// and/or a vector; text without a vector is embedded by the sidecar's
// memory embedder. Hydration returns the notes most relevant to a query,
// capped by count and by bytes, so prompts stay small.
type Memory struct {
	client *Client
}

// MemoryNote is a note to add: text and/or a vector (every vector of a
// workflow's memory has the dimension of its first), metadata for
// filtering, and an optional payload returned with it.
type MemoryNote struct {
	// Text is the note's text, at most 64 KiB.
	Text string
	// Vector is the note's embedding; nil means the sidecar embeds Text.
	Vector []float32
	// Metadata is matched by HydrateMatch.
	Metadata map[string]string
	// Content is an optional payload (at most 64 KiB inline, or a blob
	// reference).
	Content *arev1.Payload
}

// MemoryHit is a note returned by Hydrate.
type MemoryHit struct {
	// MemoryID is the note's id.
	MemoryID string
	// Text is the note's text.
	Text string
	// Similarity is its cosine similarity to the query.
	Similarity float64
	// Metadata is the note's metadata.
	Metadata map[string]string
	// Content is the note's payload, if it has one.
	Content *arev1.Payload
	// Vector is the note's vector (HydrateIncludeVectors only).
	Vector []float32
	// CreateTime is when the note was added.
	CreateTime time.Time
}

// MemoryHydration is the notes chosen, best first, the bytes they carry
// and whether the byte budget skipped some relevant ones.
type MemoryHydration struct {
	Hits       []MemoryHit
	TotalBytes int64
	Truncated  bool
}

// Texts returns the notes' texts, best first.
func (h *MemoryHydration) Texts() []string {
	out := make([]string, len(h.Hits))
	for i, hit := range h.Hits {
		out[i] = hit.Text
	}
	return out
}

// HydrateOption configures Memory.Hydrate.
type HydrateOption func(*arev1.HydrateMemoryRequest)

// HydrateTopK returns at most n notes, 1 to 100 (default 10).
func HydrateTopK(n int32) HydrateOption {
	return func(r *arev1.HydrateMemoryRequest) { r.TopK = n }
}

// HydrateMaxBytes caps the bytes of text (plus inline content) returned
// (default 64 KiB, at most 4 MiB); a note that would exceed it is skipped.
func HydrateMaxBytes(n int64) HydrateOption {
	return func(r *arev1.HydrateMemoryRequest) { r.MaxBytes = n }
}

// HydrateMatch keeps only notes having every one of these metadata entries
// (at most 8).
func HydrateMatch(metadata map[string]string) HydrateOption {
	return func(r *arev1.HydrateMemoryRequest) { r.MetadataMatch = metadata }
}

// HydrateMinSimilarity keeps only notes at least this similar, in [-1, 1].
func HydrateMinSimilarity(similarity float64) HydrateOption {
	return func(r *arev1.HydrateMemoryRequest) { r.MinSimilarity = &similarity }
}

// HydrateIncludeVectors returns the notes' vectors too.
func HydrateIncludeVectors() HydrateOption {
	return func(r *arev1.HydrateMemoryRequest) { r.IncludeVectors = true }
}

// Add stores notes (1 to 1,000) in a workflow's memory and returns their
// ids, in order.
func (m *Memory) Add(ctx context.Context, workflowID string, notes ...MemoryNote) ([]string, error) {
	entries := make([]*arev1.MemoryEntry, len(notes))
	for i, n := range notes {
		entries[i] = &arev1.MemoryEntry{Text: n.Text, Vector: vectorOf(n.Vector), Metadata: n.Metadata, Content: n.Content}
	}
	resp, err := m.client.Raw.State.AddMemory(ctx, &arev1.AddMemoryRequest{WorkflowId: workflowID, Entries: entries})
	if err != nil {
		return nil, err
	}
	return resp.GetMemoryIds(), nil
}

// AddText stores text notes (embedded by the sidecar) and returns their ids.
func (m *Memory) AddText(ctx context.Context, workflowID string, texts ...string) ([]string, error) {
	notes := make([]MemoryNote, len(texts))
	for i, text := range texts {
		notes[i] = MemoryNote{Text: text}
	}
	return m.Add(ctx, workflowID, notes...)
}

// Hydrate returns the notes of a workflow's memory most relevant to a text
// query (embedded by the sidecar), best first. Options: HydrateTopK,
// HydrateMaxBytes, HydrateMatch, HydrateMinSimilarity, HydrateIncludeVectors.
func (m *Memory) Hydrate(ctx context.Context, workflowID, text string, opts ...HydrateOption) (*MemoryHydration, error) {
	return m.hydrate(ctx, &arev1.HydrateMemoryRequest{WorkflowId: workflowID, Query: &arev1.HydrateMemoryRequest_Text{Text: text}}, opts)
}

// HydrateVector is Hydrate with a query vector of the memory's dimension.
func (m *Memory) HydrateVector(ctx context.Context, workflowID string, vector []float32, opts ...HydrateOption) (*MemoryHydration, error) {
	return m.hydrate(ctx, &arev1.HydrateMemoryRequest{WorkflowId: workflowID, Query: &arev1.HydrateMemoryRequest_Vector{Vector: &arev1.Vector{Values: vector}}}, opts)
}

func (m *Memory) hydrate(ctx context.Context, req *arev1.HydrateMemoryRequest, opts []HydrateOption) (*MemoryHydration, error) {
	for _, opt := range opts {
		opt(req)
	}
	resp, err := m.client.Raw.State.HydrateMemory(ctx, req)
	if err != nil {
		return nil, err
	}
	out := &MemoryHydration{Hits: make([]MemoryHit, 0, len(resp.GetHits())), TotalBytes: resp.GetTotalBytes(), Truncated: resp.GetTruncated()}
	for _, hit := range resp.GetHits() {
		e := hit.GetEntry()
		h := MemoryHit{
			MemoryID:   e.GetMemoryId(),
			Text:       e.GetText(),
			Similarity: hit.GetSimilarity(),
			Metadata:   e.GetMetadata(),
			Content:    e.GetContent(),
			Vector:     e.GetVector().GetValues(),
		}
		if t := e.GetCreateTime(); t != nil {
			h.CreateTime = t.AsTime()
		}
		out.Hits = append(out.Hits, h)
	}
	return out, nil
}

// WorkflowMemory is one workflow's memory (WorkflowState.Memory).
type WorkflowMemory struct {
	memory     *Memory
	workflowID string
}

// Add stores notes; see Memory.Add.
func (m *WorkflowMemory) Add(ctx context.Context, notes ...MemoryNote) ([]string, error) {
	return m.memory.Add(ctx, m.workflowID, notes...)
}

// AddText stores text notes; see Memory.AddText.
func (m *WorkflowMemory) AddText(ctx context.Context, texts ...string) ([]string, error) {
	return m.memory.AddText(ctx, m.workflowID, texts...)
}

// Hydrate returns the notes most relevant to text; see Memory.Hydrate.
func (m *WorkflowMemory) Hydrate(ctx context.Context, text string, opts ...HydrateOption) (*MemoryHydration, error) {
	return m.memory.Hydrate(ctx, m.workflowID, text, opts...)
}

// HydrateVector returns the notes most relevant to a vector; see
// Memory.HydrateVector.
func (m *WorkflowMemory) HydrateVector(ctx context.Context, vector []float32, opts ...HydrateOption) (*MemoryHydration, error) {
	return m.memory.HydrateVector(ctx, m.workflowID, vector, opts...)
}
