package are

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error is a call the sidecar answered with a non-OK gRPC status. Every
// failed call of the SDK (the facade and the raw stubs alike) returns one,
// decoded from the rich status trailer:
//
//	var e *are.Error
//	if errors.As(err, &e) && e.Reason == "WORKFLOW_NOT_FOUND" { ... }
//
// errors.Is(err, ErrNotFound) and the other kinds classify it by code, as the
// Python SDK's exception tree does (ErrVersionMismatch by reason). It also
// implements GRPCStatus, so status.FromError and status.Code keep working.
type Error struct {
	// Code is the gRPC status code.
	Code codes.Code
	// Message is the human-readable message the sidecar sent.
	Message string
	// Reason is the machine-readable ErrorInfo reason, for example
	// "WORKFLOW_NOT_FOUND" (an arev1.ErrorReason name without its prefix),
	// or "" when the status carried none.
	Reason string
	// Domain is the ErrorInfo domain ("are.v1").
	Domain string
	// Metadata is the ErrorInfo metadata: the identifiers needed to act on
	// the error ("workflow_id", "field", "limit", ...).
	Metadata map[string]string
	// FieldViolations are the invalid fields named by a BadRequest detail,
	// each a path such as "spec.tasks[3].depends_on[0]".
	FieldViolations []FieldViolation
	// RetryDelay is the RetryInfo delay after which a retry is likely to
	// succeed (backpressure); zero when the sidecar gave none.
	RetryDelay time.Duration

	status *status.Status
	cause  error // the context's error when the caller's context ended the call
}

// FieldViolation is one invalid field of a request: its path and why.
type FieldViolation struct {
	// Field is the path of the field, for example "spec.tasks[0].task_id".
	Field string
	// Description says what is wrong with it.
	Description string
}

// The kinds of *Error, for errors.Is. Each matches the status codes given;
// every other code (INTERNAL, UNKNOWN, DATA_LOSS, ...) matches ErrInternal.
var (
	ErrInvalidArgument    = errors.New("are: invalid argument")       // INVALID_ARGUMENT, OUT_OF_RANGE
	ErrNotFound           = errors.New("are: not found")              // NOT_FOUND
	ErrAlreadyExists      = errors.New("are: already exists")         // ALREADY_EXISTS
	ErrFailedPrecondition = errors.New("are: failed precondition")    // FAILED_PRECONDITION
	ErrAborted            = errors.New("are: aborted")                // ABORTED
	ErrVersionMismatch    = errors.New("are: state version mismatch") // ABORTED, reason STATE_VERSION_MISMATCH
	ErrResourceExhausted  = errors.New("are: resource exhausted")     // RESOURCE_EXHAUSTED
	ErrUnauthenticated    = errors.New("are: unauthenticated")        // UNAUTHENTICATED
	ErrPermissionDenied   = errors.New("are: permission denied")      // PERMISSION_DENIED
	ErrUnimplemented      = errors.New("are: unimplemented")          // UNIMPLEMENTED
	ErrUnavailable        = errors.New("are: unavailable")            // UNAVAILABLE
	ErrDeadlineExceeded   = errors.New("are: deadline exceeded")      // DEADLINE_EXCEEDED
	ErrCancelled          = errors.New("are: cancelled")              // CANCELLED
	ErrInternal           = errors.New("are: internal error")         // anything else
)

func kindOf(code codes.Code) error {
	switch code {
	case codes.InvalidArgument, codes.OutOfRange:
		return ErrInvalidArgument
	case codes.NotFound:
		return ErrNotFound
	case codes.AlreadyExists:
		return ErrAlreadyExists
	case codes.FailedPrecondition:
		return ErrFailedPrecondition
	case codes.Aborted:
		return ErrAborted
	case codes.ResourceExhausted:
		return ErrResourceExhausted
	case codes.Unauthenticated:
		return ErrUnauthenticated
	case codes.PermissionDenied:
		return ErrPermissionDenied
	case codes.Unimplemented:
		return ErrUnimplemented
	case codes.Unavailable:
		return ErrUnavailable
	case codes.DeadlineExceeded:
		return ErrDeadlineExceeded
	case codes.Canceled:
		return ErrCancelled
	default:
		return ErrInternal
	}
}

// Error renders the code, the message, the reason and each field violation.
func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s", codeName(e.Code), e.Message)
	if e.Reason != "" {
		fmt.Fprintf(&b, " [%s]", e.Reason)
	}
	for _, v := range e.FieldViolations {
		fmt.Fprintf(&b, "; %s: %s", v.Field, v.Description)
	}
	return b.String()
}

// Is reports whether target is the kind of this error (see ErrNotFound and
// the other kinds).
func (e *Error) Is(target error) bool {
	if target == ErrVersionMismatch {
		return e.Reason == "STATE_VERSION_MISMATCH"
	}
	return target == kindOf(e.Code)
}

// Unwrap returns the context's error (context.Canceled or
// context.DeadlineExceeded) when the caller's context ended the call, so
// errors.Is(err, context.DeadlineExceeded) holds; ErrClientClosed when the
// call failed because its client was closed; nil otherwise.
func (e *Error) Unwrap() error { return e.cause }

// GRPCStatus returns the status the error was decoded from.
func (e *Error) GRPCStatus() *status.Status {
	if e.status == nil {
		return status.New(e.Code, e.Message)
	}
	return e.status
}

// Field returns the description of the violation of field, and whether
// there is one.
func (e *Error) Field(field string) (string, bool) {
	for _, v := range e.FieldViolations {
		if v.Field == field {
			return v.Description, true
		}
	}
	return "", false
}

// codeName is the upper-case name of a code, as in the contract's comments.
func codeName(code codes.Code) string {
	name := code.String()
	if name == "Canceled" {
		return "CANCELLED"
	}
	var b strings.Builder
	for i, r := range name {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return strings.ToUpper(b.String())
}

// FromStatus decodes a gRPC status into an *Error (nil for OK).
func FromStatus(s *status.Status) *Error {
	if s == nil || s.Code() == codes.OK {
		return nil
	}
	e := &Error{Code: s.Code(), Message: s.Message(), status: s}
	for _, detail := range s.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			e.Reason = d.GetReason()
			e.Domain = d.GetDomain()
			if len(d.GetMetadata()) > 0 {
				e.Metadata = make(map[string]string, len(d.GetMetadata()))
				for k, v := range d.GetMetadata() {
					e.Metadata[k] = v
				}
			}
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				e.FieldViolations = append(e.FieldViolations, FieldViolation{Field: v.GetField(), Description: v.GetDescription()})
			}
		case *errdetails.RetryInfo:
			e.RetryDelay = d.GetRetryDelay().AsDuration()
		}
	}
	return e
}

// AsError converts err into an *Error when it carries a gRPC status (an
// *Error already, or any error with a GRPCStatus method); otherwise it
// returns err unchanged. Context errors (context.Canceled,
// context.DeadlineExceeded) are returned as they are.
func AsError(err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	s, ok := status.FromError(err)
	if !ok {
		return err
	}
	return FromStatus(s)
}

// ReasonOf returns the ErrorInfo reason of err ("" when err is not an *Error
// or carried no reason).
func ReasonOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}

// CodeOf returns the gRPC code of err: OK for nil, Unknown for an error that
// carries no status.
func CodeOf(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return status.Code(err)
}
