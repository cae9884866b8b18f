package are_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	are "github.com/are-runtime/are/sdks/go"
	"github.com/are-runtime/are/sdks/go/arev1"
)

// openWorkflow submits a workflow that stays running (its one task needs a
// capability no worker serves), with an initial state document.
func openWorkflow(t *testing.T, ctx context.Context, client *are.Client, initial any) *are.WorkflowHandle {
	t.Helper()
	spec, err := are.NewWorkflow("go-state").
		Task("idle", name("nobody-serves")).
		Configure(func(s *arev1.WorkflowSpec) {
			if initial != nil {
				p, err := are.JSON(initial)
				if err != nil {
					t.Fatal(err)
				}
				s.InitialState = p
			}
		}).
		Build()
	if err != nil {
		t.Fatal(err)
	}
	handle, err := client.Workflows.Submit(ctx, spec)
	if err != nil {
		t.Fatalf("Submit: %v", err)
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		handle.Cancel(cctx, "test over")
	})
	return handle
}

func TestStateGetPatchRoundTrip(t *testing.T) {
	client := connect(t)
	ctx := within(t, 30*time.Second)
	handle := openWorkflow(t, ctx, client, map[string]any{"budget": 10})
	doc := client.State.ForWorkflow(handle.ID)

	first, err := doc.Get(ctx, nil)
	if err != nil {
		t.Fatalf("Get of the whole document: %v", err)
	}
	var whole map[string]any
	if ok, err := first.Decode("", &whole); !ok || err != nil || whole["budget"] != float64(10) {
		t.Fatalf("whole document = %s (%v, %v); want the initial state", first.Values[""], ok, err)
	}

	v1, err := doc.Patch(ctx, are.MergePatch(map[string]any{"plan": map[string]any{"steps": []string{"search", "book"}}}))
	if err != nil {
		t.Fatalf("merge Patch: %v", err)
	}
	if v1 <= first.Version {
		t.Fatalf("Patch made version %d; want more than %d", v1, first.Version)
	}
	v2, err := doc.Patch(ctx, are.MergePatchJSON([]byte(`{"budget":null,"plan":{"done":true}}`)))
	if err != nil || v2 != v1+1 {
		t.Fatalf("second Patch = %d, %v; want version %d", v2, err, v1+1)
	}

	snap, err := client.State.Get(ctx, handle.ID, []string{"/plan/steps", "/budget", "/nope"}, are.AtVersion(v1))
	if err != nil {
		t.Fatalf("Get at version %d: %v", v1, err)
	}
	if snap.Version != v1 || string(snap.Values["/plan/steps"]) != `["search","book"]` || string(snap.Values["/budget"]) != "10" {
		t.Fatalf("Get at version %d = %+v; want the steps and the budget of that version", v1, snap)
	}
	if len(snap.MissingPaths) != 1 || snap.MissingPaths[0] != "/nope" {
		t.Fatalf("MissingPaths = %v; want [/nope]", snap.MissingPaths)
	}
	if snap.UpdateTime.IsZero() {
		t.Fatalf("UpdateTime is zero")
	}

	latest, err := doc.Get(ctx, []string{"/plan/done", "/budget"})
	if err != nil || latest.Version != v2 || string(latest.Values["/plan/done"]) != "true" ||
		len(latest.MissingPaths) != 1 || latest.MissingPaths[0] != "/budget" {
		t.Fatalf("latest Get = %+v, %v; want version %d, done true, the budget removed", latest, err, v2)
	}
	var steps []string
	if ok, err := doc.Decode(ctx, "/plan/steps", &steps); !ok || err != nil || len(steps) != 2 || steps[1] != "book" {
		t.Fatalf("Decode /plan/steps = %v, %v, %v", steps, ok, err)
	}

	_, err = client.State.Get(ctx, name("no-such-workflow"), nil)
	if !errors.Is(err, are.ErrNotFound) || are.ReasonOf(err) != "WORKFLOW_NOT_FOUND" {
		t.Fatalf("Get of an unknown workflow = %v; want NOT_FOUND WORKFLOW_NOT_FOUND", err)
	}
	_, err = doc.Get(ctx, []string{"no-leading-slash"})
	if !errors.Is(err, are.ErrInvalidArgument) || are.ReasonOf(err) != "INVALID_JSON_POINTER" {
		t.Fatalf("Get of a bad pointer = %v; want INVALID_ARGUMENT INVALID_JSON_POINTER", err)
	}
}

func TestStateExpectedVersionConflict(t *testing.T) {
	client := connect(t)
	ctx := within(t, 30*time.Second)
	doc := client.State.ForWorkflow(openWorkflow(t, ctx, client, map[string]any{"n": 0}).ID)

	v1, err := doc.Patch(ctx, are.MergePatch(map[string]int{"n": 1}))
	if err != nil {
		t.Fatal(err)
	}
	v2, err := doc.Patch(ctx, are.MergePatch(map[string]int{"n": 2}), are.ExpectVersion(v1))
	if err != nil || v2 != v1+1 {
		t.Fatalf("Patch expecting the current version = %d, %v; want %d", v2, err, v1+1)
	}
	_, err = doc.Patch(ctx, are.MergePatch(map[string]int{"n": 3}), are.ExpectVersion(v1))
	var e *are.Error
	if !errors.As(err, &e) || !errors.Is(err, are.ErrVersionMismatch) || !errors.Is(err, are.ErrAborted) ||
		e.Reason != "STATE_VERSION_MISMATCH" || e.Domain != "are.v1" {
		t.Fatalf("Patch expecting a stale version = %v; want ABORTED STATE_VERSION_MISMATCH", err)
	}
	// A patch attributed to an attempt this caller does not hold is refused.
	_, err = doc.Patch(ctx, are.MergePatch(map[string]int{"n": 4}), are.AsTask("idle", 1))
	if !errors.Is(err, are.ErrFailedPrecondition) || are.ReasonOf(err) != "TASK_NOT_HELD" {
		t.Fatalf("Patch as an attempt not held = %v; want FAILED_PRECONDITION TASK_NOT_HELD", err)
	}
	snap, err := doc.Get(ctx, []string{"/n"})
	if err != nil || snap.Version != v2 || string(snap.Values["/n"]) != "2" {
		t.Fatalf("after the conflict Get = %+v, %v; want version %d unchanged", snap, err, v2)
	}
}

func TestStatePointerOperations(t *testing.T) {
	client := connect(t)
	ctx := within(t, 30*time.Second)
	doc := client.State.ForWorkflow(openWorkflow(t, ctx, client, map[string]any{"steps": []string{"a"}, "draft": "x"}).ID)

	version, err := doc.Patch(ctx, are.PointerPatch(
		are.SetOp("/steps/-", "b"),
		are.SetOp("/steps/0", "A"),
		are.SetOp("/meta", map[string]any{"owner": "go"}),
		are.SetOp("/raw", json.RawMessage(`{"k":[1,2]}`)),
		are.RemoveOp("/draft"),
		are.RemoveOp("/not-there"),
	), are.AsWriter("go-test"))
	if err != nil {
		t.Fatalf("pointer Patch: %v", err)
	}
	var got map[string]any
	if ok, err := doc.Decode(ctx, "", &got); !ok || err != nil {
		t.Fatalf("Decode: %v, %v", ok, err)
	}
	want := `{"meta":{"owner":"go"},"raw":{"k":[1,2]},"steps":["A","b"]}`
	if data, _ := json.Marshal(got); string(data) != want {
		t.Fatalf("document = %s; want %s", data, want)
	}

	// All or nothing: a set under a missing parent fails the whole patch.
	_, err = doc.Patch(ctx, are.PointerPatch(are.SetOp("/steps/-", "c"), are.SetOp("/missing/child", 1)))
	if !errors.Is(err, are.ErrFailedPrecondition) || are.ReasonOf(err) != "PATCH_NOT_APPLICABLE" {
		t.Fatalf("Patch under a missing parent = %v; want FAILED_PRECONDITION PATCH_NOT_APPLICABLE", err)
	}
	snap, err := doc.Get(ctx, []string{"/steps"})
	if err != nil || snap.Version != version || string(snap.Values["/steps"]) != `["A","b"]` {
		t.Fatalf("after the failed patch = %+v, %v; want version %d unchanged", snap, err, version)
	}

	// Client-side: a value that is not JSON and an empty patch fail before any call.
	if _, err := doc.Patch(ctx, are.PointerPatch(are.SetOp("/f", func() {}))); err == nil {
		t.Fatalf("Patch of a function value succeeded")
	}
	if _, err := doc.Patch(ctx, are.StatePatch{}); !errors.Is(err, are.ErrInvalidArgument) {
		t.Fatalf("Patch of an empty StatePatch = %v; want ErrInvalidArgument", err)
	}
}

// nested is JSON text that nests arrays and objects in turn depth deep ("[]"
// is 1 deep) around a string.
func nested(depth int) string {
	var open, close strings.Builder
	for level := 0; level < depth; level++ {
		if level%2 == 0 {
			open.WriteString("[")
		} else {
			open.WriteString(`{"a":`)
		}
	}
	for level := depth - 1; level >= 0; level-- {
		if level%2 == 0 {
			close.WriteString("]")
		} else {
			close.WriteString("}")
		}
	}
	return open.String() + `"leaf"` + close.String()
}

// The sidecar stores values nested up to 512 deep; the SDK reads and writes
// them all (encoding/json goes to 10,000).
func TestStateValuesNested512DeepRoundTrip(t *testing.T) {
	client := connect(t)
	ctx := within(t, 30*time.Second)
	doc := client.State.ForWorkflow(openWorkflow(t, ctx, client, nil).ID)

	// 512 deep in all, the sidecar's bound: the member adds a level.
	deep := nested(511)
	var value any
	if err := json.Unmarshal([]byte(deep), &value); err != nil {
		t.Fatalf("Unmarshal: %v", err)
	}
	if payload, err := are.JSON(value); err != nil || string(payload.GetData()) != deep {
		t.Fatalf("JSON payload: %v; the text is not the value's", err)
	}
	if _, err := doc.Patch(ctx, are.MergePatch(map[string]any{"merged": value})); err != nil {
		t.Fatalf("merge Patch: %v", err)
	}
	if _, err := doc.Patch(ctx, are.PointerPatch(are.SetOp("/set", value))); err != nil {
		t.Fatalf("pointer Patch: %v", err)
	}
	snap, err := doc.Get(ctx, []string{"", "/merged", "/set"})
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if string(snap.Values["/merged"]) != deep || string(snap.Values["/set"]) != deep {
		t.Fatalf("the values read are not the values written")
	}
	var whole map[string]any
	if ok, err := snap.Decode("", &whole); !ok || err != nil {
		t.Fatalf("Decode of the whole document: %v, %v", ok, err)
	}
	if data, err := json.Marshal(whole["set"]); err != nil || string(data) != deep {
		t.Fatalf("Marshal of the decoded value: %v; the text is not the value's", err)
	}

	// One level more is the sidecar's to refuse.
	_, err = doc.Patch(ctx, are.MergePatchJSON([]byte(`{"deeper":`+nested(512)+`}`)))
	if !errors.Is(err, are.ErrInvalidArgument) || are.ReasonOf(err) != "INVALID_JSON" {
		t.Fatalf("Patch 513 deep = %v; want INVALID_ARGUMENT INVALID_JSON", err)
	}
}

func TestStateCheckpointsAndFork(t *testing.T) {
	client := connect(t)
	ctx := within(t, 30*time.Second)
	handle := openWorkflow(t, ctx, client, map[string]any{"n": 0})
	doc := client.State.ForWorkflow(handle.ID)
	var versions []int64
	for i := 1; i <= 3; i++ {
		v, err := doc.Patch(ctx, are.MergePatch(map[string]int{"n": i}), are.AsWriter("step"))
		if err != nil {
			t.Fatal(err)
		}
		versions = append(versions, v)
	}

	all, err := doc.Checkpoints(ctx, 0)
	if err != nil {
		t.Fatalf("Checkpoints: %v", err)
	}
	if len(all) != 4 || all[0].GetVersion() != versions[2] || all[3].GetVersion() != 1 {
		t.Fatalf("Checkpoints = %v; want 4 versions, newest first", all)
	}
	if all[0].GetWriter() != "step" || all[3].GetWriter() != "submit" || all[0].GetCreateTime() == nil {
		t.Fatalf("writers = %q, %q; want step and submit", all[0].GetWriter(), all[3].GetWriter())
	}
	two, err := doc.Checkpoints(ctx, 2)
	if err != nil || len(two) != 2 || two[1].GetVersion() != versions[1] {
		t.Fatalf("Checkpoints(limit 2) = %v, %v; want the two newest", two, err)
	}
	page, err := client.State.ListCheckpoints(ctx, handle.ID, 3, "")
	if err != nil || len(page.GetCheckpoints()) != 3 || page.GetNextPageToken() == "" || page.GetLatestVersion() != versions[2] {
		t.Fatalf("first page of 3 = %v, %v; want 3 checkpoints and a next page", page, err)
	}
	page, err = client.State.ListCheckpoints(ctx, handle.ID, 3, page.GetNextPageToken())
	if err != nil || len(page.GetCheckpoints()) != 1 || page.GetNextPageToken() != "" || page.GetCheckpoints()[0].GetVersion() != 1 {
		t.Fatalf("second page = %v, %v; want the initial version, last page", page, err)
	}

	forkID := name("go-fork")
	fork, source, err := doc.Fork(ctx, versions[0], are.ForkID(forkID), are.ForkRequestID(forkID))
	if err != nil {
		t.Fatalf("Fork: %v", err)
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		fork.Cancel(cctx, "test over")
	})
	if fork.ID != forkID || source != versions[0] {
		t.Fatalf("Fork = %s from %d; want %s from %d", fork.ID, source, forkID, versions[0])
	}
	var n int
	if ok, err := client.State.ForWorkflow(fork.ID).Decode(ctx, "/n", &n); !ok || err != nil || n != 1 {
		t.Fatalf("the fork's /n = %d (%v, %v); want 1, the value at the fork's version", n, ok, err)
	}
	again, latest, err := doc.Fork(ctx, 0)
	if err != nil || latest != versions[2] || again.ID == "" || again.ID == forkID {
		t.Fatalf("Fork at 0 = %v from %d, %v; want a generated id, from the latest, %d", again, latest, err, versions[2])
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		again.Cancel(cctx, "test over")
	})
	if _, _, err := doc.Fork(ctx, 999); !errors.Is(err, are.ErrNotFound) || are.ReasonOf(err) != "STATE_VERSION_NOT_FOUND" {
		t.Fatalf("Fork at an unknown version = %v; want NOT_FOUND STATE_VERSION_NOT_FOUND", err)
	}
}

func TestStateMemoryAddAndHydrate(t *testing.T) {
	client := connect(t)
	ctx := within(t, 30*time.Second)
	memory := client.State.ForWorkflow(openWorkflow(t, ctx, client, nil).ID).Memory

	ids, err := memory.Add(ctx,
		are.MemoryNote{Text: "the user prefers aisle seats", Metadata: map[string]string{"kind": "preference"}},
		are.MemoryNote{Text: "the flight to Lisbon leaves at nine", Metadata: map[string]string{"kind": "fact"}},
	)
	if err != nil || len(ids) != 2 || ids[0] == "" || ids[0] == ids[1] {
		t.Fatalf("Add = %v, %v; want two ids", ids, err)
	}
	more, err := memory.AddText(ctx, "aisle seats are easier for long flights")
	if err != nil || len(more) != 1 {
		t.Fatalf("AddText = %v, %v", more, err)
	}

	got, err := memory.Hydrate(ctx, "aisle seats", are.HydrateTopK(2))
	if err != nil {
		t.Fatalf("Hydrate: %v", err)
	}
	if len(got.Hits) == 0 || len(got.Hits) > 2 || got.Hits[0].MemoryID == ids[1] || got.TotalBytes <= 0 {
		t.Fatalf("Hydrate = %+v; want at most 2 notes about seats", got)
	}
	for _, hit := range got.Hits {
		if hit.CreateTime.IsZero() || hit.Vector != nil {
			t.Fatalf("hit %+v: want a create time and no vector", hit)
		}
	}
	only, err := memory.Hydrate(ctx, "aisle seats", are.HydrateMatch(map[string]string{"kind": "preference"}))
	if err != nil || len(only.Hits) != 1 || only.Hits[0].MemoryID != ids[0] || only.Hits[0].Metadata["kind"] != "preference" {
		t.Fatalf("Hydrate matching kind=preference = %+v, %v; want the first note only", only, err)
	}
	small, err := memory.Hydrate(ctx, "aisle seats", are.HydrateMaxBytes(40))
	if err != nil || small.TotalBytes > 40 || !small.Truncated {
		t.Fatalf("Hydrate within 40 bytes = %+v, %v; want truncated within the budget", small, err)
	}

	// Vectors, in a memory of their own (one dimension per workflow).
	vectors := client.State.ForWorkflow(openWorkflow(t, ctx, client, nil).ID).Memory
	if _, err := vectors.Add(ctx,
		are.MemoryNote{Text: "north", Vector: []float32{1, 0, 0}},
		are.MemoryNote{Text: "east", Vector: []float32{0, 1, 0}},
	); err != nil {
		t.Fatalf("Add with vectors: %v", err)
	}
	near, err := vectors.HydrateVector(ctx, []float32{0.9, 0.1, 0}, are.HydrateTopK(1), are.HydrateIncludeVectors())
	if err != nil || len(near.Hits) != 1 || near.Hits[0].Text != "north" || len(near.Hits[0].Vector) != 3 || near.Texts()[0] != "north" {
		t.Fatalf("HydrateVector = %+v, %v; want north with its vector", near, err)
	}
	floor, err := vectors.HydrateVector(ctx, []float32{0, 0, 1}, are.HydrateMinSimilarity(0.5))
	if err != nil || len(floor.Hits) != 0 {
		t.Fatalf("HydrateVector with a floor = %+v, %v; want no note", floor, err)
	}
	_, err = vectors.Add(ctx, are.MemoryNote{Text: "flat", Vector: []float32{1, 0}})
	if !errors.Is(err, are.ErrInvalidArgument) || are.ReasonOf(err) != "DIMENSION_MISMATCH" {
		t.Fatalf("Add of a 2-d vector = %v; want INVALID_ARGUMENT DIMENSION_MISMATCH", err)
	}
}

func TestStatePatchedByAWorkerThroughTaskState(t *testing.T) {
	client := connect(t)
	ctx := within(t, 60*time.Second)
	capability := name("go-state-worker")

	worker := client.NewWorker(name("go-state-worker"), fastWorker)
	worker.Handle(capability, func(ctx context.Context, task *are.Task) ([]byte, error) {
		state := task.State()
		var count int
		if _, err := state.Decode(ctx, "/count", &count); err != nil {
			return nil, err
		}
		snap, err := state.Get(ctx, []string{"/count"})
		if err != nil {
			return nil, err
		}
		if _, err := state.Patch(ctx, are.PointerPatch(are.SetOp("/count", count+1), are.SetOp("/by", task.TaskID)),
			are.ExpectVersion(snap.Version)); err != nil {
			return nil, err
		}
		if _, err := state.Memory.AddText(ctx, "counted by "+task.TaskID); err != nil {
			return nil, err
		}
		return json.Marshal(count + 1)
	})
	run(t, worker)

	spec, err := are.NewWorkflow("go-state-worker").
		Task("count", capability).
		Configure(func(s *arev1.WorkflowSpec) { s.InitialState, _ = are.JSON(map[string]int{"count": 41}) }).
		Build()
	if err != nil {
		t.Fatal(err)
	}
	handle, err := client.Workflows.Submit(ctx, spec)
	if err != nil {
		t.Fatalf("Submit: %v", err)
	}
	if _, err := handle.Wait(ctx); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	result, err := handle.TaskResult(ctx, "count")
	if err != nil || string(result) != "42" {
		t.Fatalf("task output = %s, %v; want 42", result, err)
	}
	doc := client.State.ForWorkflow(handle.ID)
	snap, err := doc.Get(ctx, []string{"/count", "/by"})
	if err != nil || string(snap.Values["/count"]) != "42" || string(snap.Values["/by"]) != `"count"` {
		t.Fatalf("state after the task = %+v, %v; want count 42 by count", snap, err)
	}
	checkpoints, err := doc.Checkpoints(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range checkpoints {
		if c.GetTaskId() == "count" && c.GetAttempt() == 1 {
			found = true
		}
	}
	if !found {
		t.Fatalf("checkpoints %v; want one written by task count, attempt 1", checkpoints)
	}
	notes, err := doc.Memory.Hydrate(ctx, "counted")
	if err != nil || len(notes.Hits) != 1 || notes.Hits[0].Text != "counted by count" {
		t.Fatalf("memory = %+v, %v; want the handler's note", notes, err)
	}

	// Outside the worker the attempt is not held: a patch attributed to it is refused.
	_, err = client.State.Patch(ctx, handle.ID, are.MergePatch(map[string]int{"count": 0}), are.AsTask("count", 1))
	if !errors.Is(err, are.ErrFailedPrecondition) {
		t.Fatalf("Patch as a finished attempt = %v; want FAILED_PRECONDITION", err)
	}
	t.Logf("patch as a finished attempt of a closed workflow: %v", err)
}
