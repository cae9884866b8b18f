package are

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// The sidecar rarely says RESOURCE_EXHAUSTED in a test; the decoding of the
// rich status is checked here on a status built as the sidecar builds it.
func TestFromStatusDecodesEveryDetail(t *testing.T) {
	s, err := status.New(codes.ResourceExhausted, "pool default is full").WithDetails(
		&errdetails.ErrorInfo{Reason: "POOL_QUEUE_FULL", Domain: "are.v1", Metadata: map[string]string{"pool": "default"}},
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "spec.tasks[0]", Description: "queue full"}}},
		&errdetails.RetryInfo{RetryDelay: durationpb.New(1500 * time.Millisecond)},
	)
	if err != nil {
		t.Fatal(err)
	}
	e := FromStatus(s)
	if e.Code != codes.ResourceExhausted || e.Reason != "POOL_QUEUE_FULL" || e.Domain != "are.v1" ||
		e.Metadata["pool"] != "default" || e.RetryDelay != 1500*time.Millisecond {
		t.Fatalf("decoded %#v", e)
	}
	if d, ok := e.Field("spec.tasks[0]"); !ok || d != "queue full" {
		t.Fatalf("Field = %q, %v", d, ok)
	}
	want := "RESOURCE_EXHAUSTED: pool default is full [POOL_QUEUE_FULL]; spec.tasks[0]: queue full"
	if e.Error() != want {
		t.Fatalf("Error() = %q; want %q", e.Error(), want)
	}
	var err2 error = e
	if !errors.Is(err2, ErrResourceExhausted) || errors.Is(err2, ErrNotFound) || ReasonOf(err2) != "POOL_QUEUE_FULL" ||
		CodeOf(err2) != codes.ResourceExhausted || status.Code(err2) != codes.ResourceExhausted {
		t.Fatalf("classification of %v is wrong", e)
	}
}

func TestErrorKinds(t *testing.T) {
	cases := map[codes.Code]error{
		codes.InvalidArgument: ErrInvalidArgument, codes.OutOfRange: ErrInvalidArgument,
		codes.NotFound: ErrNotFound, codes.AlreadyExists: ErrAlreadyExists,
		codes.FailedPrecondition: ErrFailedPrecondition, codes.Aborted: ErrAborted,
		codes.Unauthenticated: ErrUnauthenticated, codes.PermissionDenied: ErrPermissionDenied,
		codes.Unimplemented: ErrUnimplemented, codes.Unavailable: ErrUnavailable,
		codes.DeadlineExceeded: ErrDeadlineExceeded, codes.Canceled: ErrCancelled,
		codes.Internal: ErrInternal, codes.DataLoss: ErrInternal, codes.Unknown: ErrInternal,
	}
	for code, kind := range cases {
		if err := FromStatus(status.New(code, "x")); !errors.Is(err, kind) {
			t.Errorf("%v is not %v", code, kind)
		}
	}
	mismatch, _ := status.New(codes.Aborted, "stale").WithDetails(&errdetails.ErrorInfo{Reason: "STATE_VERSION_MISMATCH"})
	if err := FromStatus(mismatch); !errors.Is(err, ErrVersionMismatch) || !errors.Is(err, ErrAborted) {
		t.Errorf("STATE_VERSION_MISMATCH is not both ErrVersionMismatch and ErrAborted")
	}
	if FromStatus(status.New(codes.OK, "")) != nil || AsError(nil) != nil || CodeOf(nil) != codes.OK {
		t.Errorf("OK is not an error")
	}
	plain := errors.New("plain")
	if AsError(plain) != plain || ReasonOf(plain) != "" {
		t.Errorf("a plain error is changed by AsError")
	}
	if e, ok := AsError(status.Error(codes.NotFound, "gone")).(*Error); !ok || e.Code != codes.NotFound {
		t.Errorf("AsError of a status error = %#v", e)
	}
	if err := convert(context.Background(), nil, context.Canceled); err != context.Canceled {
		t.Errorf("convert of a non-status error changed it: %v", err)
	}
}
