package are_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	are "github.com/are-runtime/are/sdks/go"
	"github.com/are-runtime/are/sdks/go/aretest"
	"github.com/are-runtime/are/sdks/go/arev1"
)

// watchedStatuses is a dial option that sends every status a WatchWorkflow
// stream of the client receives to the returned channel (without blocking:
// the channel keeps the first 64), so that a test knows when a wait holds a
// cursor.
func watchedStatuses() (grpc.DialOption, <-chan *arev1.WatchWorkflowResponse) {
	received := make(chan *arev1.WatchWorkflowResponse, 64)
	return grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
		streamer grpc.Streamer, opts ...grpc.CallOption,
	) (grpc.ClientStream, error) {
		stream, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil || method != arev1.SchedulerService_WatchWorkflow_FullMethodName {
			return stream, err
		}
		return &recordingStream{ClientStream: stream, received: received}, nil
	}), received
}

type recordingStream struct {
	grpc.ClientStream
	received chan *arev1.WatchWorkflowResponse
}

func (s *recordingStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if response, ok := m.(*arev1.WatchWorkflowResponse); ok && err == nil {
		select {
		case s.received <- response:
		default:
		}
	}
	return err
}

// ownSidecar starts a sidecar of the test's own on port and dataDir (to
// restart it at the same target), stopped at the end of the test.
func ownSidecar(t *testing.T, ctx context.Context, port, dataDir string) *aretest.Sidecar {
	t.Helper()
	s, err := aretest.Start(ctx, aretest.Options{DataDir: dataDir, Args: []string{"--durability", "relaxed", "--listen", "127.0.0.1:" + port}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop() })
	return s
}

// firstStatus returns the first status a wait received, or fails the test
// once ctx ends.
func firstStatus(t *testing.T, ctx context.Context, received <-chan *arev1.WatchWorkflowResponse) *arev1.WatchWorkflowResponse {
	t.Helper()
	select {
	case response := <-received:
		return response
	case <-ctx.Done():
		t.Fatal("the wait never received the workflow's status")
		return nil
	}
}

// TestWaitResumesWithoutItsCursorOnAnOlderEventLog restarts the sidecar under
// a wait on an older copy of its data folder (what a power loss under
// --durability relaxed, or a restored backup, leaves): the wait's cursor is
// beyond that log's end, and the sidecar refuses it with OUT_OF_RANGE,
// SEQUENCE_BEYOND_LOG. Wait returned that error; as the contract says (and
// the Python SDK does), it now watches again without the cursor, and returns
// once the workflow closes.
func TestWaitResumesWithoutItsCursorOnAnOlderEventLog(t *testing.T) {
	ctx := within(t, 120*time.Second)
	port, dataDir := freePort(t), t.TempDir()
	snapshot := t.TempDir() + "/data"
	target := "127.0.0.1:" + port
	first := ownSidecar(t, ctx, port, dataDir)
	watched, received := watchedStatuses()
	client, err := are.Connect(ctx, target, are.WithDialOptions(watched), are.WithReconnectWindow(60*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	handle := submitWorkflow(t, ctx, client, are.NewWorkflow("go-older-log").
		Task("gate", name("go-nobody"), are.RequiresApproval()).
		Task("after", name("go-nobody"), are.DependsOn("gate")))

	// The older log: the data folder as it was before the events below.
	if err := first.Stop(); err != nil {
		t.Logf("stopping the first sidecar: %v", err)
	}
	if out, err := exec.Command("cp", "-a", dataDir, snapshot).CombinedOutput(); err != nil {
		t.Fatalf("copying the data folder: %v: %s", err, out)
	}
	second := ownSidecar(t, ctx, port, dataDir)
	other, err := are.Connect(ctx, target)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	for i := range 20 {
		if _, err := other.State.Patch(ctx, handle.ID, are.MergePatch(map[string]int{"i": i})); err != nil {
			t.Fatalf("Patch: %v", err)
		}
	}
	if _, err := other.Raw.Scheduler.ResolveApproval(ctx, &arev1.ResolveApprovalRequest{
		WorkflowId: handle.ID, TaskId: "gate", Decision: arev1.ApprovalDecision_APPROVAL_DECISION_APPROVE,
	}); err != nil {
		t.Fatalf("ResolveApproval: %v", err)
	}

	type outcome struct {
		workflow *arev1.Workflow
		err      error
	}
	done := make(chan outcome, 1)
	go func() {
		workflow, err := handle.Wait(ctx)
		done <- outcome{workflow, err}
	}()
	cursor := firstStatus(t, ctx, received).GetSequence()

	// Back on the older log, which ends before the wait's cursor.
	_ = syscall.Kill(second.Pid(), syscall.SIGKILL)
	second.Stop()
	if err := os.RemoveAll(dataDir); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(snapshot, dataDir); err != nil {
		t.Fatal(err)
	}
	ownSidecar(t, ctx, port, dataDir)
	third, err := are.Connect(ctx, target)
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	// The wait is back on the older log once it has the status from there.
	for back := false; !back; {
		select {
		case status := <-received:
			back = status.GetSequence() < cursor
		case got := <-done:
			t.Fatalf("Wait = %v, %v on the older log; want it to go on waiting", got.workflow.GetState(), got.err)
		case <-ctx.Done():
			t.Fatal("the wait never received the status from the older log")
		}
	}
	if _, err := third.Workflows.Handle(handle.ID).Cancel(ctx, "the test is over"); err != nil {
		t.Fatalf("Cancel: %v", err)
	}
	select {
	case got := <-done:
		if got.err != nil || got.workflow.GetState() != arev1.WorkflowState_WORKFLOW_STATE_CANCELLED {
			t.Fatalf("Wait = %v, %v; want the CANCELLED status from the older log", got.workflow.GetState(), got.err)
		}
	case <-ctx.Done():
		t.Fatal("Wait did not return")
	}
}

// TestWaitReturnsAResourceExhaustedNoRetryFixes waits with a client whose
// receive bound is under the workflow's status: grpc refuses the status on
// this side with RESOURCE_EXHAUSTED and no reason, which every retry meets
// again. Wait retried it until ctx ended (forever with
// context.Background()); it now returns it, and resumes only a
// RESOURCE_EXHAUSTED with reason RESOURCE_LIMIT (subscribers all taken).
func TestWaitReturnsAResourceExhaustedNoRetryFixes(t *testing.T) {
	client := connect(t)
	small := connect(t, are.WithMaxMessageBytes(200))
	ctx := within(t, 60*time.Second)
	handle := submitWorkflow(t, ctx, client, are.NewWorkflow(strings.Repeat("n", 256)).Task("a", name("go-nobody")))
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err := small.Workflows.Handle(handle.ID).Wait(wctx)
	if !errors.Is(err, are.ErrResourceExhausted) || wctx.Err() != nil {
		t.Fatalf("Wait = %v; want the RESOURCE_EXHAUSTED of the client's receive bound, before ctx ends", err)
	}
}

// TestWaitEndsOnceTheSidecarIsSilentForTheReconnectWindow kills the sidecar
// under a wait and never restarts it: the wait retried every two seconds for
// as long as ctx allowed, forever with context.Background(). It now returns
// UNAVAILABLE once the client's reconnect window has passed without an
// answer, as the Python SDK's wait does.
func TestWaitEndsOnceTheSidecarIsSilentForTheReconnectWindow(t *testing.T) {
	ctx := within(t, 90*time.Second)
	port := freePort(t)
	s := ownSidecar(t, ctx, port, t.TempDir())
	watched, received := watchedStatuses()
	client, err := are.Connect(ctx, "127.0.0.1:"+port, are.WithDialOptions(watched), are.WithReconnectWindow(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	handle := submitWorkflow(t, ctx, client, are.NewWorkflow("go-gone").Task("a", name("go-nobody")))
	done := make(chan error, 1)
	go func() {
		_, err := handle.Wait(ctx) // bounded by the test's ctx only as a hang guard
		done <- err
	}()
	firstStatus(t, ctx, received)
	_ = syscall.Kill(s.Pid(), syscall.SIGKILL)
	s.Stop()
	select {
	case err := <-done:
		if !errors.Is(err, are.ErrUnavailable) || ctx.Err() != nil {
			t.Fatalf("Wait = %v; want UNAVAILABLE once the reconnect window passed", err)
		}
	case <-ctx.Done():
		t.Fatal("Wait did not return once the reconnect window passed")
	}
	// A wait that starts after the sidecar is gone ends the same way.
	if _, err := handle.Wait(ctx); !errors.Is(err, are.ErrUnavailable) || ctx.Err() != nil {
		t.Fatalf("Wait on a gone sidecar = %v; want UNAVAILABLE", err)
	}
}

// TestConnectRefusesAReconnectWindowThatIsNotPositive: as the Python SDK's
// connect, before any connection is opened.
func TestConnectRefusesAReconnectWindowThatIsNotPositive(t *testing.T) {
	ctx := within(t, 10*time.Second)
	for _, d := range []time.Duration{0, -time.Second} {
		client, err := are.Connect(ctx, sidecar.Target, are.WithReconnectWindow(d))
		if err == nil {
			client.Close()
			t.Fatalf("Connect with WithReconnectWindow(%v) succeeded; want an error", d)
		}
		if !strings.Contains(err.Error(), "WithReconnectWindow") {
			t.Fatalf("Connect with WithReconnectWindow(%v) = %v; want an error naming the option", d, err)
		}
	}
	connect(t, are.WithReconnectWindow(time.Millisecond)).Close()
}
