package are

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/are-runtime/are/sdks/go/arev1"
)

// The stream writer cuts what it sends by count and by size (batches): cut
// by count alone, twenty completions of 4 MiB queued together made one
// message of about 80 MiB, over the 64 MiB bound, and the stream broke.

func bigCompletion(i, outputBytes int) *arev1.TaskCompletion {
	return &arev1.TaskCompletion{
		WorkflowId: "wf",
		TaskId:     fmt.Sprintf("t-%d", i),
		Attempt:    1,
		Output:     Bytes([]byte(strings.Repeat("x", outputBytes)), JSONContentType),
	}
}

func completions(n, outputBytes int) []*arev1.TaskCompletion {
	items := make([]*arev1.TaskCompletion, n)
	for i := range items {
		items[i] = bigCompletion(i, outputBytes)
	}
	return items
}

func lengths[T any](cut [][]T) []int {
	out := make([]int, len(cut))
	for i, b := range cut {
		out[i] = len(b)
	}
	return out
}

func taskIDs(cut [][]*arev1.TaskCompletion) []string {
	var out []string
	for _, b := range cut {
		for _, c := range b {
			out = append(out, c.GetTaskId())
		}
	}
	return out
}

func TestTheBatchBudgetIs16MiBOrUnderTheClientsBound(t *testing.T) {
	for _, c := range []struct{ maxMessage, want int }{
		{DefaultMaxMessageBytes, 16 << 20},
		{256 << 20, 16 << 20},
		{16<<20 + envelopeBytes, 16 << 20},
		{8 << 20, 8<<20 - envelopeBytes},
		{100, 0},
		{0, 0},
	} {
		if got := batchBytes(c.maxMessage); got != c.want {
			t.Errorf("batchBytes(%d) = %d; want %d", c.maxMessage, got, c.want)
		}
	}
}

func TestSmallItemsAreCutByCount(t *testing.T) {
	cut := batches(completions(2500, 10), batchBytes(DefaultMaxMessageBytes))
	if got := lengths(cut); !slices.Equal(got, []int{1000, 1000, 500}) {
		t.Fatalf("batches of %v; want [1000 1000 500]", got)
	}
}

// Twenty completions of the largest inline output: by count alone, one
// message of about 80 MiB.
func TestLargeItemsAreCutBySizeInOrder(t *testing.T) {
	items := completions(20, MaxInlineBytes)
	budget := batchBytes(DefaultMaxMessageBytes)
	cut := batches(items, budget)
	if got := lengths(cut); !slices.Equal(got, []int{3, 3, 3, 3, 3, 3, 2}) {
		t.Fatalf("batches of %v; want [3 3 3 3 3 3 2]", got)
	}
	if got, want := taskIDs(cut), taskIDs([][]*arev1.TaskCompletion{items}); !slices.Equal(got, want) {
		t.Fatalf("items out of order: %v", got)
	}
	for i, b := range cut {
		msg := &arev1.ConnectRequest{Message: &arev1.ConnectRequest_Complete{Complete: &arev1.CompletionBatch{Completions: b}}}
		if n := proto.Size(msg); n > budget+6 || n > DefaultMaxMessageBytes {
			t.Errorf("message %d is %d bytes; want at most %d", i, n, budget+6)
		}
	}
}

// Each item is counted at its exact length in the batch, so a batch is cut
// exactly when the next item would take it over the budget, not before.
func TestItemsAreCountedAtTheirEncodedLength(t *testing.T) {
	items := completions(7, 1000)
	whole := proto.Size(&arev1.CompletionBatch{Completions: items})
	if got := batches(items, whole); !slices.Equal(lengths(got), []int{7}) {
		t.Fatalf("a budget of exactly the batch's %d bytes cut it into %v", whole, lengths(got))
	}
	if got := batches(items, whole-1); !slices.Equal(lengths(got), []int{6, 1}) {
		t.Fatalf("a budget one byte short of the batch's %d bytes cut it into %v; want [6 1]", whole, lengths(got))
	}
}

// An item over the budget by itself still goes, alone, and does not hold up
// the items after it.
func TestAnItemOverTheBudgetGoesAlone(t *testing.T) {
	items := []*arev1.TaskCompletion{bigCompletion(0, 10), bigCompletion(1, 2000), bigCompletion(2, 10), bigCompletion(3, 10)}
	cut := batches(items, 1000)
	var got [][]string
	for _, b := range cut {
		got = append(got, taskIDs([][]*arev1.TaskCompletion{b}))
	}
	if fmt.Sprint(got) != "[[t-0] [t-1] [t-2 t-3]]" {
		t.Fatalf("batches %v; want [[t-0] [t-1] [t-2 t-3]]", got)
	}
	if got := batches([]*arev1.TaskCompletion(nil), 1000); len(got) != 0 {
		t.Fatalf("no items made %d batches", len(got))
	}
	// A client bound of under a kilobyte: one item a message.
	if got := lengths(batches(completions(3, 10), batchBytes(512))); !slices.Equal(got, []int{1, 1, 1}) {
		t.Fatalf("batches of %v under a 512-byte bound; want one item each", got)
	}
}

// Failures and heartbeats (1 MiB of details each at most) are cut the same
// way, and under a client's lower bound.
func TestFailuresAndHeartbeatsAreCutBySize(t *testing.T) {
	details := func() *arev1.Payload { return Bytes([]byte(strings.Repeat("x", 1<<20)), JSONContentType) }
	failures := make([]*arev1.TaskFailure, 40)
	beats := make([]*arev1.TaskHeartbeat, 40)
	for i := range failures {
		failures[i] = &arev1.TaskFailure{TaskId: fmt.Sprintf("t-%d", i), Failure: &arev1.Failure{Details: details()}}
		beats[i] = &arev1.TaskHeartbeat{TaskId: fmt.Sprintf("t-%d", i), Details: details()}
	}
	for _, maxMessage := range []int{DefaultMaxMessageBytes, 4 << 20} {
		budget := batchBytes(maxMessage)
		total := 0
		for i, b := range batches(failures, budget) {
			total += len(b)
			msg := &arev1.ConnectRequest{Message: &arev1.ConnectRequest_Fail{Fail: &arev1.FailureBatch{Failures: b}}}
			if n := proto.Size(msg); n > budget+6 || n > maxMessage {
				t.Errorf("bound %d: failure message %d is %d bytes; want at most %d", maxMessage, i, n, budget+6)
			}
		}
		if total != len(failures) {
			t.Errorf("bound %d: %d failures in the batches; want %d", maxMessage, total, len(failures))
		}
		cut := batches(beats, budget)
		for i, b := range cut {
			msg := &arev1.ConnectRequest{Message: &arev1.ConnectRequest_Heartbeat{Heartbeat: &arev1.HeartbeatBatch{Heartbeats: b}}}
			if n := proto.Size(msg); n > budget+6 || n > maxMessage {
				t.Errorf("bound %d: heartbeat message %d is %d bytes; want at most %d", maxMessage, i, n, budget+6)
			}
		}
		want := []int{15, 15, 10}
		if maxMessage != DefaultMaxMessageBytes {
			want = []int{3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 1}
		}
		if got := lengths(cut); !slices.Equal(got, want) {
			t.Errorf("bound %d: heartbeat batches of %v; want %v", maxMessage, got, want)
		}
	}
}
