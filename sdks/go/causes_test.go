package are_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	are "github.com/are-runtime/are/sdks/go"
	"github.com/are-runtime/are/sdks/go/arev1"
)

// The errors a handler's error wraps (errors.Unwrap) reach its task's
// Failure as nested causes, outermost first, against the real sidecar: read
// back with the task (handle.Task, TaskResult's *TaskNotCompletedError),
// cycles and endless chains ended, deep or large chains cut to the
// sidecar's bounds saying so in its words.

// diskFull is an error type of the tests' own, at the bottom of a chain.
type diskFull struct{ path string }

func (e *diskFull) Error() string { return "disk full: " + e.path }

// link is an error that wraps next (nil ends the chain).
type link struct {
	text string
	next error
}

func (e *link) Error() string { return e.text }
func (e *link) Unwrap() error { return e.next }

// self is an error whose Unwrap returns itself.
type self struct{}

func (self) Error() string   { return "I am my own cause" }
func (s self) Unwrap() error { return s }

// endless makes a new error on every Unwrap: its chain never ends.
type endless struct{ depth int }

func (e *endless) Error() string { return "depth " + strconv.Itoa(e.depth) }
func (e *endless) Unwrap() error { return &endless{depth: e.depth + 1} }

// unhashable is its own cause, of a type that cannot be a map key: only the
// walk's bound ends its chain.
type unhashable struct{ parts []string }

func (e unhashable) Error() string { return strings.Join(e.parts, " ") }
func (e unhashable) Unwrap() error { return e }

// badUnwrap is an error whose Unwrap panics.
type badUnwrap struct{}

func (badUnwrap) Error() string { return "cannot say what caused me" }
func (badUnwrap) Unwrap() error { panic("no cause today") }

// level is one level of a failure: its message and its type.
type level struct{ message, typ string }

// levels lists a failure and its causes, outermost first.
func levels(f *arev1.Failure) []level {
	var out []level
	for ; f != nil; f = f.GetCause() {
		out = append(out, level{f.GetMessage(), f.GetType()})
	}
	return out
}

// failures runs one task per handler, each with a single attempt, on a
// worker with opts, and returns each task as the sidecar keeps it after its
// workflow closed.
func failures(t *testing.T, opts are.WorkerOptions, handlers map[string]are.Handler) (*are.WorkflowHandle, map[string]*arev1.Task) {
	t.Helper()
	client := connect(t)
	ctx := within(t, 60*time.Second)
	capability := name("go-causes")
	worker := client.NewWorker(name("go-causer"), opts)
	worker.Handle(capability, func(ctx context.Context, task *are.Task) ([]byte, error) {
		return handlers[task.TaskID](ctx, task)
	})
	run(t, worker)

	builder := are.NewWorkflow("go-causes")
	for id := range handlers {
		builder.Task(id, capability, are.MaxAttempts(1, 0))
	}
	handle := submitWorkflow(t, ctx, client, builder)
	if _, err := handle.Wait(ctx); err != nil {
		t.Fatalf("Wait: %v (a failure not reported leaves its task RUNNING)", err)
	}
	tasks := make(map[string]*arev1.Task, len(handlers))
	for id := range handlers {
		task, err := handle.Task(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if task.GetState() != arev1.TaskState_TASK_STATE_FAILED {
			t.Fatalf("task %s is %v; want FAILED", id, task.GetState())
		}
		tasks[id] = task
	}
	return handle, tasks
}

// failing is a handler that returns err.
func failing(err error) are.Handler {
	return func(context.Context, *are.Task) ([]byte, error) { return nil, err }
}

func TestAHandlersWrappedErrorsAreItsFailuresCauses(t *testing.T) {
	// Only the outermost error was sent: a chain of three came back as one
	// failure without a cause, the types of the errors below it lost.
	want := map[string][]level{
		"wrapped": {
			{"saving: writing the draft: disk full: /data", "fmt.wrapError"},
			{"writing the draft: disk full: /data", "fmt.wrapError"},
			{"disk full: /data", "are_test.diskFull"},
		},
		// A TaskError in the chain gives the failure its type, and is a
		// cause of its own with its message and type.
		"task-error": {
			{"planning: quota exceeded", "QuotaExceeded"},
			{"quota exceeded", "QuotaExceeded"},
			{"EOF", "errors.errorString"},
		},
		// NonRetryable(err) says what err says: err is not repeated as its
		// cause, and the chain goes on below it.
		"non-retryable": {
			{"bad prompt: unexpected EOF", "fmt.wrapError"},
			{"unexpected EOF", "errors.errorString"},
		},
		// A join is followed into its first error, whose text it holds.
		"joined": {
			{"first\nsecond", "errors.joinError"},
			{"first", "errors.errorString"},
		},
		// A handler that panics with an error: that error is the cause.
		"panics": {
			{"handler panicked: parsing: unexpected EOF", "panic"},
			{"parsing: unexpected EOF", "fmt.wrapError"},
			{"unexpected EOF", "errors.errorString"},
		},
		// A cause whose Error panics is named so, as the failure would be.
		"unprintable-cause": {
			{"outer: %!v(PANIC=Error method: no message today)", "fmt.wrapError"},
			{"are_test.unprintable (its message could not be read: no message today)", "are_test.unprintable"},
		},
		"no-cause": {{"plain", "errors.errorString"}},
	}
	eachTransport(t, func(t *testing.T, opts are.WorkerOptions) {
		handle, tasks := failures(t, opts, map[string]are.Handler{
			"wrapped": failing(fmt.Errorf("saving: %w", fmt.Errorf("writing the draft: %w", &diskFull{path: "/data"}))),
			"task-error": failing(fmt.Errorf("planning: %w",
				&are.TaskError{Message: "quota exceeded", Type: "QuotaExceeded", Err: io.EOF})),
			"non-retryable":     failing(are.NonRetryable(fmt.Errorf("bad prompt: %w", io.ErrUnexpectedEOF))),
			"joined":            failing(errors.Join(errors.New("first"), errors.New("second"))),
			"unprintable-cause": failing(fmt.Errorf("outer: %w", unprintable{})),
			"no-cause":          failing(errors.New("plain")),
			"panics": func(context.Context, *are.Task) ([]byte, error) {
				panic(fmt.Errorf("parsing: %w", io.ErrUnexpectedEOF))
			},
		})
		for id, task := range tasks {
			if got := levels(task.GetFailure()); fmt.Sprint(got) != fmt.Sprint(want[id]) {
				t.Errorf("task %s: failure and causes %q; want %q", id, got, want[id])
			}
			for f := task.GetFailure().GetCause(); f != nil; f = f.GetCause() {
				if f.GetKind() != arev1.FailureKind_FAILURE_KIND_APPLICATION || f.GetStackTrace() != "" || f.GetNonRetryable() {
					t.Errorf("task %s: cause %q of kind %v, stack trace %q, non-retryable %v; want APPLICATION, none, false",
						id, f.GetMessage(), f.GetKind(), f.GetStackTrace(), f.GetNonRetryable())
				}
			}
		}
		if !tasks["non-retryable"].GetFailure().GetNonRetryable() {
			t.Errorf("the NonRetryable failure was sent retryable")
		}
		// The causes are reachable where the SDK hands a task's failure over.
		_, err := handle.TaskResult(within(t, 10*time.Second), "wrapped")
		var notCompleted *are.TaskNotCompletedError
		if !errors.As(err, &notCompleted) ||
			notCompleted.Task.GetFailure().GetCause().GetCause().GetType() != "are_test.diskFull" {
			t.Errorf("TaskResult of the failed task: %v; want a *TaskNotCompletedError whose failure has the causes", err)
		}
	})
}

func TestACyclicOrEndlessChainOfCausesEnds(t *testing.T) {
	// A walk of errors.Unwrap alone would never end on these: the worker
	// would hang on the report, the task RUNNING until its timeout.
	a := &link{text: "a"}
	b := &link{text: "b", next: a}
	a.next = b
	endlessNote := "[10000 or more deeper causes dropped: causes nest at most 8 deep]"
	want := map[string][]level{
		"cycle":       {{"a", "are_test.link"}, {"b", "are_test.link"}}, // a met again ends it
		"self":        {{"I am my own cause", "are_test.self"}},
		"bad-unwrap":  {{"outer: cannot say what caused me", "fmt.wrapError"}, {"cannot say what caused me", "are_test.badUnwrap"}},
		"endless":     endlessLevels("depth %d", "are_test.endless", endlessNote),
		"unhashable":  endlessLevels("round and round", "are_test.unhashable", endlessNote),
		"cycle-under": {{"over: a", "fmt.wrapError"}, {"a", "are_test.link"}, {"b", "are_test.link"}},
	}
	eachTransport(t, func(t *testing.T, opts are.WorkerOptions) {
		_, tasks := failures(t, opts, map[string]are.Handler{
			"cycle":       failing(a),
			"self":        failing(self{}),
			"bad-unwrap":  failing(fmt.Errorf("outer: %w", badUnwrap{})),
			"endless":     failing(&endless{}),
			"unhashable":  failing(unhashable{parts: []string{"round", "and", "round"}}),
			"cycle-under": failing(fmt.Errorf("over: %w", a)),
		})
		for id, task := range tasks {
			if got := levels(task.GetFailure()); fmt.Sprint(got) != fmt.Sprint(want[id]) {
				t.Errorf("task %s: failure and causes %q; want %q", id, got, want[id])
			}
		}
	})
}

// endlessLevels are the 9 levels kept of an endless chain whose level i
// says format (with i if it has a verb), the deepest with note.
func endlessLevels(format, typ, note string) []level {
	var out []level
	for i := 0; i <= 8; i++ {
		message := format
		if strings.Contains(format, "%d") {
			message = fmt.Sprintf(format, i)
		}
		out = append(out, level{message, typ})
	}
	out[8].message += " " + note
	return out
}

func TestADeepOrLargeChainIsCutToTheBoundsSayingSo(t *testing.T) {
	// Fifty errors: the failure and 8 causes are kept, the deepest saying
	// that 41 more were dropped, as the sidecar would say it.
	var deep error = &link{text: "level 49"}
	for i := 48; i >= 0; i-- {
		deep = &link{text: "level " + strconv.Itoa(i), next: deep}
	}
	// Details of nearly 1 MiB over a chain of 20 causes of 32 KiB each:
	// the ninth and below are over the depth, and most of the rest over
	// the 1 MiB bound on the whole.
	var large error
	for i := 19; i >= 0; i-- {
		large = &link{text: strings.Repeat(strconv.Itoa(i%10), 32*1024), next: large}
	}
	large = &are.TaskError{Message: "too much", Type: "Large", Details: []byte(`"` + strings.Repeat("x", 1000*1000) + `"`), Err: large}
	eachTransport(t, func(t *testing.T, opts are.WorkerOptions) {
		_, tasks := failures(t, opts, map[string]are.Handler{"deep": failing(deep), "large": failing(large)})

		got := levels(tasks["deep"].GetFailure())
		if len(got) != 9 {
			t.Fatalf("deep: %d levels kept; want the failure and 8 causes", len(got))
		}
		for i, l := range got {
			want := level{"level " + strconv.Itoa(i), "are_test.link"}
			if i == 8 {
				want.message += " [41 deeper causes dropped: causes nest at most 8 deep]"
			}
			if l != want {
				t.Errorf("deep: level %d is %q; want %q", i, l, want)
			}
		}

		failure := tasks["large"].GetFailure()
		if size := proto.Size(failure); size > 1024*1024 {
			t.Errorf("large: the failure with its causes is %d bytes; want at most 1 MiB", size)
		}
		got = levels(failure)
		if len(got) < 2 || len(got) > 8 || got[0].message != "too much" || failure.GetDetails() == nil {
			t.Fatalf("large: %d levels, the failure's message %.40q, details kept %v; want 1 to 7 causes below \"too much\" with its details",
				len(got), got[0].message, failure.GetDetails() != nil)
		}
		deepest := got[len(got)-1].message
		note := regexp.MustCompile(` \[(\d+) deeper causes dropped: causes nest at most 8 deep; a failure with its causes is at most 1 MiB\]$`).FindStringSubmatch(deepest)
		if note == nil {
			t.Fatalf("large: the deepest cause kept ends %q; want the note of causes dropped for both bounds", deepest[max(0, len(deepest)-120):])
		}
		if dropped, _ := strconv.Atoi(note[1]); dropped+len(got)-1 != 20 {
			t.Errorf("large: %d causes kept and %d said dropped; want 20 in all", len(got)-1, dropped)
		}
		if len(deepest) > 32*1024 {
			t.Errorf("large: the deepest cause's message with its note is %d bytes; want at most 32 KiB, the note kept", len(deepest))
		}
	})
}
