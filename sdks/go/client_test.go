package are_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	are "github.com/are-runtime/are/sdks/go"
	"github.com/are-runtime/are/sdks/go/aretest"
	"github.com/are-runtime/are/sdks/go/arev1"
)

func TestConnectAndHealth(t *testing.T) {
	client := connect(t)
	ctx := within(t, 10*time.Second)
	got, err := client.Health(ctx)
	if err != nil || got != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Health = %v, %v; want SERVING", got, err)
	}
	got, err = client.ServiceHealth(ctx, "are.v1.SchedulerService")
	if err != nil || got != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("ServiceHealth(scheduler) = %v, %v; want SERVING", got, err)
	}
}

func TestConnectGivesUpWithItsContext(t *testing.T) {
	// Nothing listens on port 1 of loopback: Connect must end with ctx.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := are.Connect(ctx, "127.0.0.1:1")
	if !errors.Is(err, are.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Connect to a closed port = %v; want UNAVAILABLE wrapping context.DeadlineExceeded", err)
	}
}

func TestUnixSocketAndToken(t *testing.T) {
	ctx := within(t, 60*time.Second)
	secured, err := aretest.Start(ctx, aretest.Options{UDS: true, Token: "s3cret-token", Args: []string{"--durability", "relaxed"}})
	if err != nil {
		t.Fatal(err)
	}
	defer secured.Stop()
	if len(secured.Target) < 5 || secured.Target[:5] != "unix:" {
		t.Fatalf("target %q is not a unix socket", secured.Target)
	}

	anonymous, err := are.Connect(ctx, secured.Target)
	if err != nil {
		t.Fatal(err)
	}
	defer anonymous.Close()
	_, err = anonymous.Workflows.Get(ctx, "wf-none")
	var e *are.Error
	if !errors.As(err, &e) || !errors.Is(err, are.ErrUnauthenticated) || e.Reason != "UNAUTHENTICATED" {
		t.Fatalf("call without the token = %v; want UNAUTHENTICATED", err)
	}

	authorised, err := are.Connect(ctx, secured.Target, are.WithToken("s3cret-token"))
	if err != nil {
		t.Fatal(err)
	}
	defer authorised.Close()
	_, err = authorised.Workflows.Get(ctx, "wf-none")
	if !errors.Is(err, are.ErrNotFound) || are.ReasonOf(err) != "WORKFLOW_NOT_FOUND" {
		t.Fatalf("call with the token = %v; want NOT_FOUND WORKFLOW_NOT_FOUND", err)
	}
}

func TestErrorCarriesReasonAndField(t *testing.T) {
	client := connect(t)
	ctx := within(t, 10*time.Second)

	_, err := client.Workflows.Get(ctx, "wf-does-not-exist")
	var e *are.Error
	if !errors.As(err, &e) {
		t.Fatalf("GetWorkflow of an unknown id = %v; want an *are.Error", err)
	}
	if e.Code != codes.NotFound || e.Reason != "WORKFLOW_NOT_FOUND" || e.Domain != "are.v1" || !errors.Is(err, are.ErrNotFound) {
		t.Fatalf("error = %#v; want NOT_FOUND, reason WORKFLOW_NOT_FOUND, domain are.v1", e)
	}
	if status.Code(err) != codes.NotFound {
		t.Fatalf("status.Code(err) = %v; want NotFound (GRPCStatus)", status.Code(err))
	}

	// A bad namespace name is refused naming the field.
	_, _, err = client.Cache.PutNamespace(ctx, &arev1.CacheNamespace{Name: "not a valid name!"})
	if !errors.As(err, &e) || !errors.Is(err, are.ErrInvalidArgument) || e.Reason != "INVALID_ARGUMENT" {
		t.Fatalf("PutNamespace with a bad name = %v; want INVALID_ARGUMENT", err)
	}
	if _, ok := e.Field("namespace.name"); !ok {
		t.Fatalf("field violations %v do not name namespace.name", e.FieldViolations)
	}

	// A bound exceeded names the field and carries the bound as metadata.
	namespace := name("go-limits")
	if _, _, err := client.Cache.PutNamespace(ctx, &arev1.CacheNamespace{Name: namespace}); err != nil {
		t.Fatal(err)
	}
	_, err = client.Cache.Store(ctx, namespace, strings.Repeat("p", 1024*1024+1), []byte(`1`))
	if !errors.As(err, &e) || e.Reason != "LIMIT_EXCEEDED" || e.Metadata["limit"] == "" {
		t.Fatalf("Store of a prompt over 1 MiB = %#v; want LIMIT_EXCEEDED with metadata limit", err)
	}
	if _, ok := e.Field("prompt"); !ok {
		t.Fatalf("field violations %v do not name prompt", e.FieldViolations)
	}

	// So is a dependency on a task that does not exist, through the raw stubs too.
	spec, err := are.NewWorkflow("bad").Task("a", "x").Task("b", "x", are.DependsOn("missing")).Build()
	if err != nil {
		t.Fatal(err)
	}
	_, err = client.Raw.Scheduler.SubmitWorkflow(ctx, &arev1.SubmitWorkflowRequest{Spec: spec})
	if !errors.As(err, &e) || e.Reason != "UNKNOWN_DEPENDENCY" {
		t.Fatalf("submit with an unknown dependency = %v; want reason UNKNOWN_DEPENDENCY", err)
	}
	if _, ok := e.Field("spec.tasks[1].depends_on[0]"); !ok {
		t.Fatalf("field violations %v do not name spec.tasks[1].depends_on[0]", e.FieldViolations)
	}
}

func TestCallEndedByItsContext(t *testing.T) {
	client := connect(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := client.Workflows.Get(ctx, "wf-x")
	if !errors.Is(err, context.Canceled) || !errors.Is(err, are.ErrCancelled) {
		t.Fatalf("call with a cancelled context = %v; want CANCELLED wrapping context.Canceled", err)
	}
}

func TestConnectWithCustomKeepalive(t *testing.T) {
	ctx := within(t, 20*time.Second)
	for _, opt := range []are.Option{are.WithKeepalive(10*time.Second, 5*time.Second), are.WithKeepalive(0, 0)} {
		client := connect(t, opt)
		if got, err := client.Health(ctx); err != nil || got != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("Health = %v, %v; want SERVING", got, err)
		}
		if _, err := client.Workflows.Get(ctx, "wf-none"); !errors.Is(err, are.ErrNotFound) {
			t.Fatalf("Get of an unknown workflow = %v; want NOT_FOUND", err)
		}
	}
}

// Each wait holds a WatchWorkflow stream, and the sidecar serves 1,024 streams
// at once on a connection: on the client's one connection, 1,030 pending
// waits starved its other calls. Waits have a connection of their own.
func TestAThousandPendingWaitsHoldUpNoOtherCallOfTheClient(t *testing.T) {
	client := connect(t)
	ctx := within(t, 60*time.Second)
	handle := openWorkflow(t, ctx, client, nil)
	waitCtx, stopWaits := context.WithCancel(ctx)
	var waits sync.WaitGroup
	defer func() {
		stopWaits()
		waits.Wait()
	}()
	for i := 0; i < 1030; i++ {
		waits.Add(1)
		go func() {
			defer waits.Done()
			_, _ = handle.Wait(waitCtx)
		}()
	}
	time.Sleep(time.Second) // the waits open their streams
	healthCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if got, err := client.Health(healthCtx); err != nil || got != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Health beside 1,030 waits = %v, %v; want SERVING", got, err)
	}
}
