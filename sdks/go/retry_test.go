package are

import (
	"errors"
	"testing"
	"time"
)

// retryWait is full jitter over the backoff, or at least the sidecar's hint
// with up to a fifth more (the hint of a refused worker registration, 5 s,
// cannot be reached in a test: it takes 10,000 connected workers).
func TestRetryWaitHonoursTheSidecarsHint(t *testing.T) {
	for i := 0; i < 1000; i++ {
		if got := retryWait(100*time.Millisecond, 0); got < 0 || got > 100*time.Millisecond {
			t.Fatalf("retryWait(100ms, no hint) = %v; want within [0, 100ms]", got)
		}
		if got := retryWait(50*time.Millisecond, 5*time.Second); got < 5*time.Second || got > 6*time.Second {
			t.Fatalf("retryWait(50ms, 5s hint) = %v; want within [5s, 6s]", got)
		}
		if got := retryWait(4*time.Second, time.Second); got < time.Second || got > 4*time.Second {
			t.Fatalf("retryWait(4s, 1s hint) = %v; want within [1s, 4s]", got)
		}
	}
	hint := &Error{RetryDelay: 5 * time.Second}
	if got := retryDelayOf(errors.Join(errors.New("wrapped"), hint)); got != 5*time.Second {
		t.Fatalf("retryDelayOf(a wrapped *Error with a 5 s hint) = %v; want 5s", got)
	}
	if got := retryDelayOf(errors.New("no status")); got != 0 {
		t.Fatalf("retryDelayOf(an error without a status) = %v; want 0", got)
	}
}
