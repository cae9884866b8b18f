package are_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	are "github.com/are-runtime/are/sdks/go"
	"github.com/are-runtime/are/sdks/go/arev1"
)

func TestWorkflowOfTwoTasksRunByAGoWorker(t *testing.T) {
	client := connect(t)
	ctx := within(t, 60*time.Second)
	capability := name("go-e2e")

	worker := client.NewWorker(name("go-worker"), fastWorker)
	var seen sync.Map
	worker.Handle(capability, func(ctx context.Context, task *are.Task) ([]byte, error) {
		seen.Store(task.TaskID, task.Attempt)
		switch task.TaskID {
		case "research":
			var in struct{ Topic string }
			if err := task.DecodeInput(&in); err != nil {
				return nil, are.NonRetryable(err)
			}
			task.AddUsage(&arev1.Usage{InputTokens: 10, OutputTokens: 5, LlmCalls: 1})
			return json.Marshal(map[string]string{"notes": "about " + in.Topic})
		case "write":
			notes, ok := task.DependencyOutput("research")
			if !ok {
				return nil, errors.New("no research output")
			}
			return json.Marshal(map[string]string{"draft": string(notes)})
		}
		return nil, are.NonRetryable(errors.New("unexpected task " + task.TaskID))
	})
	run(t, worker)

	spec, err := are.NewWorkflow("go-two-tasks").
		Task("research", capability, are.InputJSON(map[string]string{"topic": "caches"})).
		Task("write", capability, are.DependsOn("research")).
		Build()
	if err != nil {
		t.Fatal(err)
	}
	handle, err := client.Workflows.Submit(ctx, spec)
	if err != nil {
		t.Fatalf("Submit: %v", err)
	}
	workflow, err := handle.Wait(ctx)
	if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if workflow.GetState() != arev1.WorkflowState_WORKFLOW_STATE_COMPLETED {
		t.Fatalf("workflow closed %v (%v); want COMPLETED", workflow.GetState(), workflow.GetFailure())
	}
	if got := workflow.GetTaskCounts().GetCompleted(); got != 2 {
		t.Fatalf("completed tasks = %d; want 2", got)
	}
	if got := workflow.GetUsage().GetUsage().GetInputTokens(); got != 10 {
		t.Fatalf("workflow input tokens = %d; want the 10 the handler reported", got)
	}

	research, err := handle.TaskResult(ctx, "research")
	if err != nil || string(research) != `{"notes":"about caches"}` {
		t.Fatalf("research output = %s, %v", research, err)
	}
	result, err := handle.Result(ctx)
	if err != nil {
		t.Fatalf("Result: %v", err)
	}
	var draft map[string]string
	if err := json.Unmarshal(result, &draft); err != nil || draft["draft"] != `{"notes":"about caches"}` {
		t.Fatalf("result = %s (%v); want the write task's draft of the research notes", result, err)
	}
	for _, id := range []string{"research", "write"} {
		if attempt, ok := seen.Load(id); !ok || attempt.(int32) != 1 {
			t.Fatalf("task %s ran as attempt %v; want once, attempt 1", id, attempt)
		}
	}
	if worker.WorkerID() == "" {
		t.Fatalf("the worker has no id after polling")
	}
	if stats := worker.Stats(); stats.Completed != 2 || stats.Failed != 0 {
		t.Fatalf("worker stats = %+v; want 2 completed", stats)
	}
}

func TestFailingHandlerIsRetriedThenFails(t *testing.T) {
	client := connect(t)
	ctx := within(t, 60*time.Second)
	capability := name("go-fail")

	var calls sync.Map // task id -> *atomic.Int32
	count := func(id string) int32 {
		v, _ := calls.LoadOrStore(id, new(atomic.Int32))
		return v.(*atomic.Int32).Add(1)
	}
	worker := client.NewWorker(name("go-failer"), fastWorker)
	worker.Handle(capability, func(ctx context.Context, task *are.Task) ([]byte, error) {
		n := count(task.TaskID)
		switch task.TaskID {
		case "flaky": // fails once, then succeeds
			if n == 1 {
				return nil, errors.New("transient")
			}
			return []byte(`"ok"`), nil
		case "broken": // always fails with a chosen type
			return nil, &are.TaskError{Message: "boom", Type: "Boom"}
		case "fatal": // fails for good at once
			return nil, are.NonRetryable(errors.New("no point retrying"))
		case "panics":
			panic("handler bug")
		}
		return nil, nil
	})
	run(t, worker)

	retry := are.MaxAttempts(3, 10*time.Millisecond)
	spec, err := are.NewWorkflow("go-failing").
		Task("flaky", capability, retry).
		Task("broken", capability, retry).
		Task("fatal", capability, retry).
		Task("panics", capability, are.MaxAttempts(1, 0)).
		Build()
	if err != nil {
		t.Fatal(err)
	}
	handle, err := client.Workflows.Submit(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	_, err = handle.Result(ctx)
	var failed *are.WorkflowFailedError
	if !errors.As(err, &failed) || failed.Workflow.GetState() != arev1.WorkflowState_WORKFLOW_STATE_FAILED {
		t.Fatalf("Result = %v; want a *WorkflowFailedError, FAILED", err)
	}

	want := map[string]struct {
		state    arev1.TaskState
		attempts int32
		typ      string
	}{
		"flaky":  {arev1.TaskState_TASK_STATE_COMPLETED, 2, "errors.errorString"},
		"broken": {arev1.TaskState_TASK_STATE_FAILED, 3, "Boom"},
		"fatal":  {arev1.TaskState_TASK_STATE_FAILED, 1, "errors.errorString"},
		"panics": {arev1.TaskState_TASK_STATE_FAILED, 1, "panic"},
	}
	for id, w := range want {
		task, err := handle.Task(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		v, _ := calls.Load(id)
		if task.GetState() != w.state || task.GetAttempt() != w.attempts || v.(*atomic.Int32).Load() != w.attempts {
			t.Errorf("task %s: %v after attempt %d (handler called %d times); want %v after %d",
				id, task.GetState(), task.GetAttempt(), v.(*atomic.Int32).Load(), w.state, w.attempts)
		}
		if got := task.GetFailure().GetType(); got != w.typ {
			t.Errorf("task %s failure type %q; want %q", id, got, w.typ)
		}
	}
	if task, _ := handle.Task(ctx, "fatal"); !task.GetFailure().GetNonRetryable() {
		t.Errorf("the NonRetryable failure was not reported non-retryable")
	}
	if task, _ := handle.Task(ctx, "panics"); !strings.Contains(task.GetFailure().GetStackTrace(), "worker_test.go") {
		t.Errorf("a panic's failure carries no stack trace of the handler")
	}
	if _, err := handle.TaskResult(ctx, "broken"); err == nil {
		t.Errorf("TaskResult of a failed task returned no error")
	} else if nc := (*are.TaskNotCompletedError)(nil); !errors.As(err, &nc) || nc.Task.GetFailure().GetMessage() != "boom" {
		t.Errorf("TaskResult of a failed task = %v; want a *TaskNotCompletedError with the failure", err)
	}
}

func TestCancellationReachesARunningHandler(t *testing.T) {
	client := connect(t)
	ctx := within(t, 60*time.Second)
	capability := name("go-cancel")

	started := make(chan struct{}, 1)
	cause := make(chan error, 1)
	worker := client.NewWorker(name("go-canceller"), fastWorker)
	worker.Handle(capability, func(ctx context.Context, task *are.Task) ([]byte, error) {
		started <- struct{}{}
		<-ctx.Done() // a long LLM call, say, that honours its context
		cause <- context.Cause(ctx)
		return nil, ctx.Err()
	})
	run(t, worker)

	spec, err := are.NewWorkflow("go-cancel").Task("long", capability).Build()
	if err != nil {
		t.Fatal(err)
	}
	handle, err := client.Workflows.Submit(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-ctx.Done():
		t.Fatal("the handler never started")
	}
	workflow, err := handle.Cancel(ctx, "the user changed their mind")
	if err != nil {
		t.Fatalf("Cancel: %v", err)
	}
	if workflow.GetState() != arev1.WorkflowState_WORKFLOW_STATE_CANCELLED {
		t.Fatalf("state after Cancel = %v; want CANCELLED", workflow.GetState())
	}
	select {
	case err := <-cause:
		if !errors.Is(err, are.ErrTaskCancelled) {
			t.Fatalf("the handler's context ended with %v; want ErrTaskCancelled", err)
		}
	case <-ctx.Done():
		t.Fatal("the cancellation never reached the handler")
	}
	if _, err := handle.Result(ctx); err == nil {
		t.Fatal("Result of a cancelled workflow returned no error")
	}
}

func TestLargeOutputTravelsAsABlob(t *testing.T) {
	client := connect(t)
	ctx := within(t, 60*time.Second)
	capability := name("go-blob")
	big := bytes.Repeat([]byte("x"), are.MaxInlineBytes+1024)

	worker := client.NewWorker(name("go-blobber"), fastWorker)
	worker.Handle(capability, func(ctx context.Context, task *are.Task) ([]byte, error) {
		if task.TaskID == "consume" {
			in, ok := task.DependencyOutput("produce")
			if !ok || !bytes.Equal(in, big) {
				return nil, are.NonRetryable(errors.New("the dependency's blob output did not arrive whole"))
			}
			return []byte(`"consumed"`), nil
		}
		task.SetOutputContentType("application/octet-stream")
		return big, nil
	})
	run(t, worker)

	spec, err := are.NewWorkflow("go-blob").
		Task("produce", capability).
		Task("consume", capability, are.DependsOn("produce")).
		Build()
	if err != nil {
		t.Fatal(err)
	}
	handle, err := client.Workflows.Submit(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	result, err := handle.Result(ctx)
	if err != nil || string(result) != `"consumed"` {
		t.Fatalf("Result = %q, %v", result, err)
	}
	out, err := handle.TaskResult(ctx, "produce")
	if err != nil || !bytes.Equal(out, big) {
		t.Fatalf("TaskResult(produce) = %d bytes, %v; want the %d bytes produced", len(out), err, len(big))
	}
}

func TestWaitIsBoundedByItsContext(t *testing.T) {
	client := connect(t)
	ctx := within(t, 30*time.Second)
	spec, err := are.NewWorkflow("go-unserved").Task("a", name("nobody-serves-this")).Build()
	if err != nil {
		t.Fatal(err)
	}
	handle, err := client.Workflows.Submit(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := handle.Wait(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait past its deadline = %v; want context.DeadlineExceeded", err)
	}
	if _, err := handle.Cancel(ctx, "test over"); err != nil {
		t.Fatal(err)
	}
}
