package are_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	are "github.com/are-runtime/are/sdks/go"
	"github.com/are-runtime/are/sdks/go/arev1"
)

func TestWorkflowOfTwoTasksRunByAGoWorker(t *testing.T) {
	eachTransport(t, func(t *testing.T, opts are.WorkerOptions) {
		client := connect(t)
		ctx := within(t, 60*time.Second)
		capability := name("go-e2e")

		worker := client.NewWorker(name("go-worker"), opts)
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
		stop := run(t, worker)

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
		stop() // the last result's report may end after the workflow is visibly closed
		if stats := worker.Stats(); stats.Completed != 2 || stats.Failed != 0 {
			t.Fatalf("worker stats = %+v; want 2 completed", stats)
		}
	})
}

func TestFailingHandlerIsRetriedThenFails(t *testing.T) {
	eachTransport(t, func(t *testing.T, opts are.WorkerOptions) {
		client := connect(t)
		ctx := within(t, 60*time.Second)
		capability := name("go-fail")

		var calls sync.Map // task id -> *atomic.Int32
		count := func(id string) int32 {
			v, _ := calls.LoadOrStore(id, new(atomic.Int32))
			return v.(*atomic.Int32).Add(1)
		}
		worker := client.NewWorker(name("go-failer"), opts)
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
	})
}

func TestCancellationReachesARunningHandler(t *testing.T) {
	eachTransport(t, func(t *testing.T, opts are.WorkerOptions) {
		client := connect(t)
		ctx := within(t, 60*time.Second)
		capability := name("go-cancel")

		started := make(chan struct{}, 1)
		cause := make(chan error, 1)
		worker := client.NewWorker(name("go-canceller"), opts)
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
	})
}

func TestLargeOutputTravelsAsABlob(t *testing.T) {
	eachTransport(t, func(t *testing.T, opts are.WorkerOptions) {
		client := connect(t)
		ctx := within(t, 60*time.Second)
		capability := name("go-blob")
		big := bytes.Repeat([]byte("x"), are.MaxInlineBytes+1024)

		worker := client.NewWorker(name("go-blobber"), opts)
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
	})
}

func TestARefusedCompletionIsReportedAsAFailure(t *testing.T) {
	// A completion the sidecar refuses as invalid (an output content type
	// over 128 characters) leaves the attempt held: the worker reports a
	// CompletionRefused failure naming the field, with the completion's
	// usage, instead of leaving the task RUNNING.
	eachTransport(t, func(t *testing.T, opts are.WorkerOptions) {
		client := connect(t)
		ctx := within(t, 15*time.Second)
		capability := name("go-refused")

		worker := client.NewWorker(name("go-refuser"), opts)
		worker.Handle(capability, func(ctx context.Context, task *are.Task) ([]byte, error) {
			task.AddUsage(&arev1.Usage{InputTokens: 7, OutputTokens: 3, CostMicroUsd: 11, LlmCalls: 1})
			task.SetOutputContentType(strings.Repeat("x", 129))
			return []byte("out"), nil
		})
		stop := run(t, worker)

		task := failedTask(ctx, t, client, "go-refused", capability)
		failure := task.GetFailure()
		field := "complete.completions[0].output.content_type"
		if opts.Transport == are.TransportUnary {
			field = "completion.output.content_type"
		}
		if task.GetState() != arev1.TaskState_TASK_STATE_FAILED || failure.GetType() != are.CompletionRefusedType ||
			failure.GetNonRetryable() || !strings.Contains(failure.GetMessage(), "LIMIT_EXCEEDED") ||
			!strings.Contains(failure.GetMessage(), field) {
			t.Fatalf("task %v, failure %v; want FAILED, a retryable %s naming %s", task.GetState(), failure, are.CompletionRefusedType, field)
		}
		if u := task.GetUsage().GetUsage(); u.GetInputTokens() != 7 || u.GetOutputTokens() != 3 || u.GetCostMicroUsd() != 11 || u.GetLlmCalls() != 1 {
			t.Errorf("task usage %v; want the completion's", u)
		}
		stop()
		if stats := worker.Stats(); stats.Completed != 0 || stats.Failed != 1 {
			t.Errorf("worker stats = %+v; want 1 failed", stats)
		}
	})
}

func TestAFailurePastTheSidecarsBoundsIsFittedToThem(t *testing.T) {
	// A TaskError whose type is over 256 characters and details over 1 MiB,
	// with negative usage and retry delay, was refused by the sidecar,
	// leaving the task RUNNING: the worker cuts the type, drops the details
	// saying so and clamps the rest, so the task ends FAILED.
	eachTransport(t, func(t *testing.T, opts are.WorkerOptions) {
		client := connect(t)
		ctx := within(t, 15*time.Second)
		capability := name("go-oversized")

		worker := client.NewWorker(name("go-oversized"), opts)
		worker.Handle(capability, func(ctx context.Context, task *are.Task) ([]byte, error) {
			task.AddUsage(&arev1.Usage{InputTokens: 5, OutputTokens: -1})
			return nil, &are.TaskError{
				Message:    "too big",
				Type:       strings.Repeat("T", 299) + "é",
				Details:    []byte(`"` + strings.Repeat("x", 1024*1024) + `"`),
				RetryAfter: -time.Second,
			}
		})
		run(t, worker)

		task := failedTask(ctx, t, client, "go-oversized", capability)
		failure := task.GetFailure()
		if want := "too big (details of 1048578 bytes dropped: over 1 MiB)"; task.GetState() != arev1.TaskState_TASK_STATE_FAILED ||
			failure.GetType() != strings.Repeat("T", 256) || failure.GetMessage() != want || failure.GetDetails() != nil {
			t.Fatalf("task %v, failure type %q, message %q, details %v; want FAILED, the type cut to 256, %q",
				task.GetState(), failure.GetType(), failure.GetMessage(), failure.GetDetails() != nil, want)
		}
		if u := task.GetUsage().GetUsage(); u.GetInputTokens() != 5 || u.GetOutputTokens() != 0 {
			t.Errorf("task usage %v; want the reported one, negative as 0", u)
		}
	})
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

func TestSpawnAndReportedCalls(t *testing.T) {
	eachTransport(t, func(t *testing.T, opts are.WorkerOptions) {
		client := connect(t)
		ctx := within(t, 60*time.Second)
		capability := name("go-spawn")

		worker := client.NewWorker(name("go-spawner"), opts)
		worker.Handle(capability, func(ctx context.Context, task *are.Task) ([]byte, error) {
			switch task.TaskID {
			case "plan":
				child, err := are.NewTaskSpec("step", capability, are.InputJSON(3))
				if err != nil {
					return nil, are.NonRetryable(err)
				}
				ids, err := task.Spawn(ctx, []*arev1.TaskSpec{child}, true, task.TaskID+".plan")
				if err != nil || len(ids) != 1 || ids[0] != "step" {
					return nil, fmt.Errorf("spawn = %v, %v", ids, err)
				}
				return []byte(`"planned"`), nil
			case "step":
				var n int
				if err := task.DecodeInput(&n); err != nil {
					return nil, are.NonRetryable(err)
				}
				if err := task.ReportLLMCall(ctx, "gpt-x", &arev1.Usage{InputTokens: 20, OutputTokens: 4}, 15*time.Millisecond); err != nil {
					return nil, err
				}
				if err := task.ReportToolCall(ctx, "search", time.Millisecond); err != nil {
					return nil, err
				}
				return json.Marshal(n * 2)
			case "sum":
				step, ok := task.DependencyOutput("step")
				if !ok {
					return nil, are.NonRetryable(errors.New("the spawned step's output did not arrive"))
				}
				return step, nil
			}
			return nil, nil
		})
		run(t, worker)

		spec, err := are.NewWorkflow("go-spawn").
			Task("plan", capability).
			Task("sum", capability, are.DependsOn("plan")).
			Build()
		if err != nil {
			t.Fatal(err)
		}
		handle, err := client.Workflows.Submit(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		result, err := handle.Result(ctx)
		if err != nil || string(result) != "6" {
			t.Fatalf("Result = %s, %v; want the spawned step's 6 passed on to sum", result, err)
		}
		step, err := handle.Task(ctx, "step")
		if err != nil || step.GetParentTaskId() != "plan" {
			t.Fatalf("spawned task = %v, %v; want parent plan", step, err)
		}
		if u := step.GetUsage().GetUsage(); u.GetInputTokens() != 20 || u.GetLlmCalls() != 1 || u.GetToolCalls() != 1 {
			t.Fatalf("step usage = %v; want the reported LLM and tool call", u)
		}
		page, err := client.Trace.List(ctx, are.TraceFilter{
			WorkflowIDs: []string{handle.ID},
			EventTypes:  []arev1.EventType{arev1.EventType_EVENT_TYPE_LLM_CALL, arev1.EventType_EVENT_TYPE_TOOL_CALL},
		}, 0, 100)
		if err != nil || len(page.GetEvents()) != 2 || page.GetEvents()[0].GetName() != "gpt-x" {
			t.Fatalf("reported events = %v, %v; want the LLM call then the tool call", page.GetEvents(), err)
		}
	})
}

// The GenAI attributes of reported calls (those given and those the sidecar
// fills from the call), and a custom event, reach the trace; attribute values
// the contract cannot carry are refused in the handler.
func TestReportedCallsCarryGenAIAttributesAndCustomEventsReachTheTrace(t *testing.T) {
	client := connect(t)
	ctx := within(t, 60*time.Second)
	capability := name("go-genai")

	worker := client.NewWorker(name("go-genai"), are.WorkerOptions{})
	worker.Handle(capability, func(ctx context.Context, task *are.Task) ([]byte, error) {
		checks := []error{
			task.ReportLLMCall(ctx, "gpt-x", &arev1.Usage{InputTokens: 12, OutputTokens: 3, CostMicroUsd: 40}, 0,
				are.WithProvider("openai"), are.WithResponseModel("gpt-x-2025"), are.WithAttributes(map[string]any{"temp": 0.5})),
			task.ReportLLMCall(ctx, "bare-model", nil, 0),
			task.ReportToolCall(ctx, "search", time.Millisecond,
				are.WithCallID("call_7"), are.WithAttributes(map[string]any{"hits": 3, "cached": true})),
			task.ReportEvent(ctx, "chose plan B", map[string]any{"reason": "budget"}),
		}
		if err := errors.Join(checks...); err != nil {
			return nil, are.NonRetryable(err)
		}
		refused := []struct {
			err  error
			want string
		}{
			{task.ReportEvent(ctx, "bad", map[string]any{"x": math.NaN()}), `attribute "x" is NaN: event attributes must be finite numbers`},
			{task.ReportEvent(ctx, "bad", map[string]any{"x": []int{1}}), `attribute "x" is a []int: give a string, bool, integer or float`},
			{task.ReportLLMCall(ctx, "bad", nil, 0, are.WithAttributes(map[string]any{"x": math.Inf(1)})), "finite"},
			{task.ReportToolCall(ctx, "bad", 0, are.WithProvider("openai")), "for ReportLLMCall"},
		}
		for _, r := range refused {
			if r.err == nil || !strings.Contains(r.err.Error(), r.want) {
				return nil, are.NonRetryable(fmt.Errorf("error = %v; want one saying %q", r.err, r.want))
			}
		}
		return nil, nil
	})
	run(t, worker)

	spec, err := are.NewWorkflow("go-genai").Task("t", capability).Build()
	if err != nil {
		t.Fatal(err)
	}
	handle, err := client.Workflows.Submit(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := handle.Result(ctx); err != nil {
		t.Fatalf("Result: %v (the handler's checks failed?)", err)
	}
	step, err := handle.Task(ctx, "t")
	if u := step.GetUsage().GetUsage(); err != nil || u.GetInputTokens() != 12 || u.GetLlmCalls() != 2 || u.GetToolCalls() != 1 {
		t.Fatalf("usage = %v, %v; want the refused calls not counted", u, err)
	}
	page, err := client.Trace.List(ctx, are.TraceFilter{
		WorkflowIDs: []string{handle.ID},
		EventTypes: []arev1.EventType{
			arev1.EventType_EVENT_TYPE_LLM_CALL, arev1.EventType_EVENT_TYPE_TOOL_CALL, arev1.EventType_EVENT_TYPE_WORKER_CUSTOM,
		},
	}, 0, 100)
	if err != nil || len(page.GetEvents()) != 4 {
		t.Fatalf("reported events = %v, %v; want 4", page.GetEvents(), err)
	}
	values := func(e *arev1.Event) map[string]any {
		out := map[string]any{}
		for k, v := range e.GetAttributes() {
			switch v := v.GetValue().(type) {
			case *arev1.AttributeValue_StringValue:
				out[k] = v.StringValue
			case *arev1.AttributeValue_IntValue:
				out[k] = v.IntValue
			case *arev1.AttributeValue_DoubleValue:
				out[k] = v.DoubleValue
			case *arev1.AttributeValue_BoolValue:
				out[k] = v.BoolValue
			}
		}
		return out
	}
	events := page.GetEvents()
	llm, bare, tool, custom := events[0], events[1], events[2], events[3]
	if want := map[string]any{
		"gen_ai.system":              "openai",
		"gen_ai.response.model":      "gpt-x-2025",
		"gen_ai.request.model":       "gpt-x",
		"gen_ai.operation.name":      "chat",
		"gen_ai.usage.input_tokens":  int64(12),
		"gen_ai.usage.output_tokens": int64(3),
		"temp":                       0.5,
	}; llm.GetName() != "gpt-x" || !reflect.DeepEqual(values(llm), want) {
		t.Errorf("LLM call %q attributes = %v; want %v", llm.GetName(), values(llm), want)
	}
	if got := values(bare)["gen_ai.request.model"]; got != "bare-model" {
		t.Errorf("bare LLM call gen_ai.request.model = %v; want bare-model", got)
	}
	if want := map[string]any{
		"gen_ai.tool.name":    "search",
		"gen_ai.tool.call.id": "call_7",
		"hits":                int64(3),
		"cached":              true,
	}; !reflect.DeepEqual(values(tool), want) {
		t.Errorf("tool call attributes = %v; want %v", values(tool), want)
	}
	if want := map[string]any{"reason": "budget"}; custom.GetEventType() != arev1.EventType_EVENT_TYPE_WORKER_CUSTOM ||
		custom.GetName() != "chose plan B" || !reflect.DeepEqual(values(custom), want) {
		t.Errorf("custom event = %s %q %v; want WORKER_CUSTOM \"chose plan B\" %v", custom.GetEventType(), custom.GetName(), values(custom), want)
	}
}

func TestGracefulStop(t *testing.T) {
	eachTransport(t, func(t *testing.T, opts are.WorkerOptions) {
		client := connect(t)
		ctx := within(t, 60*time.Second)
		capability := name("go-stop")

		started := make(chan string, 2)
		release := make(chan struct{})
		opts.ShutdownGrace = 500 * time.Millisecond
		worker := client.NewWorker(name("go-stopper"), opts)
		worker.Handle(capability, func(ctx context.Context, task *are.Task) ([]byte, error) {
			started <- task.TaskID
			if task.TaskID == "finishes" {
				<-release // finishes within the grace, whatever ctx says
				return []byte(`"done"`), nil
			}
			<-ctx.Done() // outlives the grace: its context ends with ErrWorkerStopped
			return nil, context.Cause(ctx)
		})
		stop := run(t, worker)

		spec, err := are.NewWorkflow("go-stop").
			Task("finishes", capability).
			Task("outlives", capability, are.MaxAttempts(2, 10*time.Millisecond)).
			Build()
		if err != nil {
			t.Fatal(err)
		}
		handle, err := client.Workflows.Submit(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2; i++ {
			select {
			case <-started:
			case <-ctx.Done():
				t.Fatal("the handlers never started")
			}
		}
		go func() {
			time.Sleep(100 * time.Millisecond)
			close(release)
		}()
		stop() // returns once both results are reported

		finished, err := handle.Task(ctx, "finishes")
		if err != nil || finished.GetState() != arev1.TaskState_TASK_STATE_COMPLETED {
			t.Fatalf("the task finishing within the grace is %v (%v); want COMPLETED", finished.GetState(), err)
		}
		outlived, err := handle.Task(ctx, "outlives")
		if err != nil {
			t.Fatal(err)
		}
		if f := outlived.GetFailure(); f.GetKind() != arev1.FailureKind_FAILURE_KIND_WORKER_LOST || f.GetType() != "WorkerStopped" {
			t.Fatalf("the task outliving the grace failed with %v; want WORKER_LOST, WorkerStopped", f)
		}
		// Handed back once; the stopped worker took no retry of it.
		if s := outlived.GetState(); outlived.GetAttempt() != 1 || (s != arev1.TaskState_TASK_STATE_BACKING_OFF && s != arev1.TaskState_TASK_STATE_SCHEDULED) {
			t.Fatalf("the handed-back task is %v after attempt %d; want attempt 1 waiting for a retry", s, outlived.GetAttempt())
		}
		if _, err := handle.Cancel(ctx, "test over"); err != nil {
			t.Fatal(err)
		}
	})
}

func TestWorkerRefusedForABadCapabilityStops(t *testing.T) {
	eachTransport(t, func(t *testing.T, opts are.WorkerOptions) {
		client := connect(t)
		ctx := within(t, 30*time.Second)
		worker := client.NewWorker(name("go-bad"), opts)
		worker.Handle("not a capability!", func(ctx context.Context, task *are.Task) ([]byte, error) { return nil, nil })
		err := worker.Run(ctx)
		if !errors.Is(err, are.ErrInvalidArgument) {
			t.Fatalf("Run with a bad capability = %v; want INVALID_ARGUMENT at once", err)
		}
	})
}

func TestWorkerLabelsAreSentWithTheStreamRegistration(t *testing.T) {
	client := connect(t)
	ctx := within(t, 60*time.Second)
	capability := name("go-labelled")
	opts := fastWorker // the stream, the default transport
	opts.Labels = map[string]string{"team": "go", "run": capability}
	// The sidecar shows a worker's labels nowhere (no RPC lists workers with
	// them); what is observable is that it accepts them, and refuses a bad
	// key naming the field.
	worker := client.NewWorker(name("go-labelled-worker"), opts)
	opts.Labels["team"] = "changed after NewWorker" // the worker keeps its own copy
	worker.Handle(capability, func(ctx context.Context, task *are.Task) ([]byte, error) {
		return []byte(`"ok"`), nil
	})
	stop := run(t, worker)
	spec, err := are.NewWorkflow("go-labels").Task("a", capability).Build()
	if err != nil {
		t.Fatal(err)
	}
	handle, err := client.Workflows.Submit(ctx, spec)
	if err != nil {
		t.Fatalf("Submit: %v", err)
	}
	result, err := handle.Result(ctx)
	if err != nil || string(result) != `"ok"` {
		t.Fatalf("result = %s, %v; want the labelled worker's \"ok\"", result, err)
	}
	stop()
	if stats := worker.Stats(); stats.Completed != 1 || stats.Connects < 1 {
		t.Fatalf("worker stats = %+v; want 1 completed over the stream", stats)
	}

	bad := fastWorker
	bad.Labels = map[string]string{"bad key!": "x"}
	refused := client.NewWorker(name("go-badly-labelled"), bad)
	refused.Handle(name("go-x"), func(ctx context.Context, task *are.Task) ([]byte, error) { return nil, nil })
	err = refused.Run(within(t, 30*time.Second))
	var aerr *are.Error
	if !errors.Is(err, are.ErrInvalidArgument) || !errors.As(err, &aerr) {
		t.Fatalf("Run with a bad label key = %v; want INVALID_ARGUMENT at once", err)
	}
	if _, ok := aerr.Field("register.labels['bad key!']"); !ok {
		t.Fatalf("Run with a bad label key = %v; want a violation of register.labels['bad key!']", err)
	}
}

// cardsServing lists the router's cards serving capability.
func cardsServing(t *testing.T, ctx context.Context, client *are.Client, capability string) []are.AgentCard {
	t.Helper()
	cards, _, err := client.Router.ListAgents(ctx, are.AgentFilter{Capability: capability}, 0, "")
	if err != nil {
		t.Fatalf("ListAgents(%s): %v", capability, err)
	}
	return cards
}

// eventually polls cond every 20 ms until it holds, failing the test after d.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestWorkersDeclareTheirCardsAndIntentsGoToTheCheapestClass(t *testing.T) {
	client := connect(t)
	ctx := within(t, 90*time.Second)
	n := fmt.Sprintf("%d-%d", os.Getpid(), unique.Add(1))
	words := fmt.Sprintf("summarise quarterly filings of mining firms zq%sx", n)
	classes := []struct {
		name string
		cost int64
	}{{"cheap", 3}, {"dear", 900}}
	caps := map[string]string{}
	workers := map[string]*are.Worker{}
	var stops []func()
	for _, class := range classes {
		caps[class.name] = name("go-sum-" + class.name)
		opts := fastWorker // the stream, the default transport
		opts.Card = &are.AgentCard{
			AgentID:             fmt.Sprintf("class-%s-%s", class.name, n),
			Description:         words,
			Capabilities:        []string{caps[class.name]},
			CostPerCallMicroUSD: class.cost,
		}
		worker := client.NewWorker(fmt.Sprintf("go-%s-%s", class.name, n), opts)
		opts.Card.CostPerCallMicroUSD = 0 // the worker keeps its own copy
		answer := []byte(`"` + class.name + `"`)
		worker.Handle(caps[class.name], func(ctx context.Context, task *are.Task) ([]byte, error) { return answer, nil })
		workers[class.name] = worker
		stops = append(stops, run(t, worker))
	}
	for _, class := range classes { // both classes are in the index before the intent is routed
		eventually(t, 20*time.Second, "the "+class.name+" worker's card", func() bool {
			cards := cardsServing(t, ctx, client, caps[class.name])
			return len(cards) == 1 && cards[0].Available
		})
	}

	cards := cardsServing(t, ctx, client, caps["cheap"])
	if len(cards) != 1 {
		t.Fatalf("cards serving %s = %+v; want the cheap class's", caps["cheap"], cards)
	}
	card := cards[0]
	if card.AgentID != "class-cheap-"+n || card.Source != arev1.AgentSource_AGENT_SOURCE_WORKER ||
		card.CostPerCallMicroUSD != 3 || !card.Available || card.Description != words {
		t.Fatalf("card = %+v; want class-cheap-%s declared by a worker, cost 3, available, described as %q", card, n, words)
	}
	if !slices.Equal(card.Capabilities, []string{caps["cheap"]}) || !slices.Contains(card.WorkerIDs, workers["cheap"].WorkerID()) {
		t.Fatalf("card = %+v; want capability %s backed by worker %s", card, caps["cheap"], workers["cheap"].WorkerID())
	}

	// The builder sets a capability; an intent goes in the task's target.
	spec, err := are.NewWorkflow("go-intent").
		Task("a", "", are.ConfigureTask(func(task *arev1.TaskSpec) { task.Target = &arev1.TaskSpec_Intent{Intent: words} })).
		Build()
	if err != nil {
		t.Fatal(err)
	}
	handle, err := client.Workflows.Submit(ctx, spec)
	if err != nil {
		t.Fatalf("Submit: %v", err)
	}
	result, err := handle.Result(ctx)
	if err != nil || string(result) != `"cheap"` { // cost-biased: both clear the threshold
		t.Fatalf("result = %s, %v; want the cheap class's \"cheap\"", result, err)
	}
	events, err := client.Trace.List(ctx, are.TraceFilter{
		WorkflowIDs: []string{handle.ID}, EventTypes: []arev1.EventType{arev1.EventType_EVENT_TYPE_TASK_ROUTED},
	}, 0, 0)
	if err != nil {
		t.Fatalf("Trace.List: %v", err)
	}
	if len(events.GetEvents()) != 1 {
		t.Fatalf("TASK_ROUTED events = %v; want one", events.GetEvents())
	}
	if got := events.GetEvents()[0].GetAttributes()["are.route.agent_id"].GetStringValue(); got != "class-cheap-"+n {
		t.Fatalf("are.route.agent_id = %q; want class-cheap-%s", got, n)
	}

	for _, stop := range stops {
		stop()
	}
	eventually(t, 10*time.Second, "the cheap class to leave the index", func() bool { // the worker left: its class is gone
		cards := cardsServing(t, ctx, client, caps["cheap"])
		return len(cards) == 0 || (len(cards) == 1 && !cards[0].Available)
	})
}

func TestADeclaredCardIsCheckedAndNamesTheField(t *testing.T) {
	client := connect(t)
	ctx := within(t, 60*time.Second)
	capability := name("go-bad-card")
	for _, c := range []struct {
		field string
		card  are.AgentCard
	}{
		{"register.agent_card.vector", are.AgentCard{AgentID: name("bad-vector"), Capabilities: []string{capability}, Vector: []float32{1, 0}}},
		{"register.agent_card.capabilities[0]", are.AgentCard{AgentID: name("bad-cap"), Capabilities: []string{name("not-served")}}},
		{"register.agent_card.agent_id", are.AgentCard{AgentID: "bad id!", Capabilities: []string{capability}}},
	} {
		opts := fastWorker
		opts.Card = &c.card
		worker := client.NewWorker(name("go-bad-card"), opts)
		worker.Handle(capability, func(ctx context.Context, task *are.Task) ([]byte, error) { return nil, nil })
		err := worker.Run(within(t, 30*time.Second))
		var aerr *are.Error
		if !errors.Is(err, are.ErrInvalidArgument) || !errors.As(err, &aerr) {
			t.Fatalf("Run with a bad card (%s) = %v; want INVALID_ARGUMENT at once", c.field, err)
		}
		var fields []string
		for _, v := range aerr.FieldViolations {
			fields = append(fields, v.Field)
		}
		if !slices.Equal(fields, []string{c.field}) {
			t.Fatalf("Run with a bad card: violations %v; want [%s]", fields, c.field)
		}
		if stats := worker.Stats(); stats.Connects != 0 {
			t.Fatalf("worker stats = %+v; want no connect", stats)
		}
	}
	if cards := cardsServing(t, ctx, client, capability); len(cards) != 0 {
		t.Fatalf("cards serving %s = %+v; want none: nothing was declared", capability, cards)
	}
}

// failedTask submits a workflow of one task "x" for capability, with a
// single attempt, and returns the task once the workflow has FAILED (within
// ctx: a task left RUNNING fails the test).
func failedTask(ctx context.Context, t *testing.T, client *are.Client, workflow, capability string) *arev1.Task {
	t.Helper()
	spec, err := are.NewWorkflow(workflow).Task("x", capability, are.MaxAttempts(1, 0)).Build()
	if err != nil {
		t.Fatal(err)
	}
	handle, err := client.Workflows.Submit(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	final, err := handle.Wait(ctx)
	if err != nil {
		t.Fatalf("Wait: %v (the task stayed RUNNING?)", err)
	}
	if final.GetState() != arev1.WorkflowState_WORKFLOW_STATE_FAILED {
		t.Fatalf("workflow %v; want FAILED", final.GetState())
	}
	task, err := handle.Task(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	return task
}
