package are

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"unicode/utf8"
)

// The note of dropped causes is the sidecar's own wording
// (sidecar/_scheduler_convert.py, _causes_note), and is never what a long
// message's cut takes off.
func TestTheNoteOfDroppedCausesIsTheSidecars(t *testing.T) {
	for _, c := range []struct {
		tooDeep, tooBig int
		atLeast         bool
		want            string
	}{
		{1, 0, false, "[1 deeper cause dropped: causes nest at most 8 deep]"},
		{0, 3, false, "[3 deeper causes dropped: a failure with its causes is at most 1 MiB]"},
		{2, 3, false, "[5 deeper causes dropped: causes nest at most 8 deep; a failure with its causes is at most 1 MiB]"},
		{10_000, 0, true, "[10000 or more deeper causes dropped: causes nest at most 8 deep]"},
	} {
		if got := causesNote(c.tooDeep, c.tooBig, c.atLeast); got != c.want {
			t.Errorf("causesNote(%d, %d, %v) = %q; want %q", c.tooDeep, c.tooBig, c.atLeast, got, c.want)
		}
	}
	note := causesNote(1, 0, false)
	long := noted(strings.Repeat("é", maxFailureMessage), note)
	if len(long) > maxFailureMessage || !utf8.ValidString(long) || !strings.HasSuffix(long, "é "+note) {
		t.Errorf("a 64 KiB message noted: %d bytes, valid UTF-8 %v, ends %q; want at most 32 KiB ending with the note",
			len(long), utf8.ValidString(long), long[max(0, len(long)-80):])
	}
	if got := noted("", note); got != note {
		t.Errorf("an empty message noted = %q; want the note alone", got)
	}
}

// A handler that fails after the shutdown grace is reported as
// WORKER_LOST, its error's causes kept below.
func TestAFailureAfterTheGraceKeepsTheCauses(t *testing.T) {
	hctx, cancel := context.WithCancelCause(context.Background())
	cancel(ErrWorkerStopped)
	failure, _ := handlerFailure(hctx, fmt.Errorf("reading: %w", io.ErrUnexpectedEOF))
	if failure.GetType() != "WorkerStopped" || failure.GetCause().GetMessage() != "unexpected EOF" ||
		failure.GetCause().GetType() != "errors.errorString" {
		t.Fatalf("failure %v; want WorkerStopped with the cause unexpected EOF (errors.errorString)", failure)
	}
}

// findIn finds what errors.As finds, in every branch of a join, and ends
// where errors.As would not.
func TestFindInIsABoundedErrorsAs(t *testing.T) {
	te := &TaskError{Type: "Second"}
	joined := fmt.Errorf("both: %w", errors.Join(io.EOF, fmt.Errorf("then: %w", te)))
	var got *TaskError
	if !findIn(joined, &got) || got != te {
		t.Fatalf("findIn in the second branch of a join = %v; want the TaskError", got)
	}
	var ae *Error
	if findIn(error(&endlessChain{}), &ae) {
		t.Fatal("findIn found an *Error in a chain without one")
	}
}

// endlessChain makes a new error on every Unwrap.
type endlessChain struct{}

func (*endlessChain) Error() string { return "endless" }
func (*endlessChain) Unwrap() error { return &endlessChain{} }
