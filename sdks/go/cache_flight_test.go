package are_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	are "github.com/are-runtime/are/sdks/go"
	"github.com/are-runtime/are/sdks/go/arev1"
)

// flightNamespace creates a namespace of the test's own.
func flightNamespace(t *testing.T, ctx context.Context, client *are.Client) string {
	t.Helper()
	namespace := name("go-flight")
	if _, _, err := client.Cache.PutNamespace(ctx, &arev1.CacheNamespace{Name: namespace}); err != nil {
		t.Fatalf("PutNamespace: %v", err)
	}
	return namespace
}

// untilWaiters returns once n callers wait for the shared call of prompt;
// it fails the test as soon as the call was made more than once (each
// caller paying for its own) or ctx ends.
func untilWaiters(t *testing.T, ctx context.Context, client *are.Client, namespace, prompt string, n int, calls *atomic.Int32, opts ...are.CacheOption) {
	t.Helper()
	for are.FlightWaiters(client.Cache, namespace, prompt, opts...) != n {
		if got := calls.Load(); got > 1 {
			t.Fatalf("the call was made %d times; want one call shared by the concurrent callers", got)
		}
		if ctx.Err() != nil {
			t.Fatalf("%d callers never waited for one shared call", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type flightResult struct {
	value []byte
	hit   *are.CacheHit
	err   error
}

// TestConcurrentGetOrCallShareOneCall: five concurrent GetOrCall of one
// question (the same prompt once normalised as the sidecar does) made five
// lookups and five paid calls; as in the Python SDK, they now share one
// lookup and one call, and each gets its value.
func TestConcurrentGetOrCallShareOneCall(t *testing.T) {
	client := connect(t)
	ctx := within(t, 30*time.Second)
	namespace := flightNamespace(t, ctx, client)
	prompts := []string{
		"Où est le café ?",
		"  Où est  le café ? ",
		"Où est le cafe\u0301 ?", // NFD: NFC makes it the first
		"Où\u3000est le café\u00a0?\n",
		"Où est le café\x1f?",
	}
	var calls atomic.Int32
	release := make(chan struct{})
	call := func(ctx context.Context) ([]byte, *arev1.Usage, error) {
		calls.Add(1)
		<-release
		return []byte(`"near the station"`), &arev1.Usage{CostMicroUsd: 100}, nil
	}
	results := make([]flightResult, len(prompts))
	var wg sync.WaitGroup
	for i, prompt := range prompts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			value, hit, err := client.Cache.GetOrCall(ctx, namespace, prompt, call)
			results[i] = flightResult{value, hit, err}
		}()
	}
	untilWaiters(t, ctx, client, namespace, prompts[0], len(prompts), &calls)
	close(release)
	wg.Wait()
	for i, r := range results {
		if r.err != nil || string(r.value) != `"near the station"` || r.hit != nil {
			t.Fatalf("GetOrCall %d = %s, %+v, %v; want the shared call's value", i, r.value, r.hit, r.err)
		}
	}
	if got := calls.Load(); got != 1 {
		t.Fatalf("the call was made %d times; want 1", got)
	}
	value, hit, err := client.Cache.GetOrCall(ctx, namespace, prompts[1], call)
	if err != nil || hit == nil || string(value) != `"near the station"` || calls.Load() != 1 {
		t.Fatalf("GetOrCall after the shared call = %s, %+v, %v (%d calls); want a hit", value, hit, err, calls.Load())
	}

	// Another threshold is another question: its own call.
	var other atomic.Int32
	entered := make(chan struct{}, 2)
	hold := make(chan struct{})
	slow := func(ctx context.Context) ([]byte, *arev1.Usage, error) {
		other.Add(1)
		entered <- struct{}{}
		<-hold
		return []byte(`"x"`), nil, nil
	}
	question := name("threshold question")
	for _, threshold := range []float64{0.9, 0.8} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, _, err := client.Cache.GetOrCall(ctx, namespace, question, slow, are.WithThreshold(threshold)); err != nil {
				t.Errorf("GetOrCall with threshold %v: %v", threshold, err)
			}
		}()
	}
	for range 2 {
		select {
		case <-entered:
		case <-ctx.Done():
			t.Fatal("GetOrCall of two thresholds did not make two calls")
		}
	}
	close(hold)
	wg.Wait()
}

// TestAGetOrCallCallerGivingUpLeavesTheCallToTheOthers: a caller whose ctx
// ends stops waiting, while the shared call goes on (its context not
// cancelled) for the callers still waiting.
func TestAGetOrCallCallerGivingUpLeavesTheCallToTheOthers(t *testing.T) {
	client := connect(t)
	ctx := within(t, 30*time.Second)
	namespace := flightNamespace(t, ctx, client)
	prompt := name("who gives up")
	var calls atomic.Int32
	release := make(chan struct{})
	callCtxErr := make(chan error, 1)
	call := func(ctx context.Context) ([]byte, *arev1.Usage, error) {
		calls.Add(1)
		<-release
		callCtxErr <- ctx.Err()
		return []byte(`"kept"`), nil, nil
	}
	first, giveUp := context.WithCancel(ctx)
	defer giveUp()
	firstDone := make(chan error, 1)
	go func() {
		_, _, err := client.Cache.GetOrCall(first, namespace, prompt, call)
		firstDone <- err
	}()
	untilWaiters(t, ctx, client, namespace, prompt, 1, &calls)
	secondDone := make(chan flightResult, 1)
	go func() {
		value, hit, err := client.Cache.GetOrCall(ctx, namespace, prompt, call)
		secondDone <- flightResult{value, hit, err}
	}()
	untilWaiters(t, ctx, client, namespace, prompt, 2, &calls)
	giveUp()
	select {
	case err := <-firstDone:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("GetOrCall of the caller that gave up = %v; want context.Canceled", err)
		}
	case <-ctx.Done():
		t.Fatal("the caller that gave up is still waiting")
	}
	close(release)
	select {
	case r := <-secondDone:
		if r.err != nil || string(r.value) != `"kept"` || r.hit != nil {
			t.Fatalf("GetOrCall of the caller still waiting = %s, %+v, %v; want the call's value", r.value, r.hit, r.err)
		}
	case <-ctx.Done():
		t.Fatal("the caller still waiting never got the value")
	}
	if err := <-callCtxErr; err != nil || calls.Load() != 1 {
		t.Fatalf("the shared call's context ended (%v) or it was made %d times; want one call, left running", err, calls.Load())
	}
}

// TestAGetOrCallEveryCallerGaveUpOnIsCancelled: once no caller waits, the
// shared call's context is cancelled, nothing is stored, and the next
// caller makes a call of its own.
func TestAGetOrCallEveryCallerGaveUpOnIsCancelled(t *testing.T) {
	client := connect(t)
	ctx := within(t, 30*time.Second)
	namespace := flightNamespace(t, ctx, client)
	prompt := name("nobody waits")
	var calls atomic.Int32
	entered, cancelled := make(chan struct{}), make(chan struct{})
	call := func(ctx context.Context) ([]byte, *arev1.Usage, error) {
		calls.Add(1)
		close(entered)
		<-ctx.Done()
		close(cancelled)
		return []byte(`"late"`), nil, nil
	}
	caller, giveUp := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, _, err := client.Cache.GetOrCall(caller, namespace, prompt, call)
		done <- err
	}()
	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("the call was never made")
	}
	giveUp()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("GetOrCall = %v; want context.Canceled", err)
		}
	case <-ctx.Done():
		t.Fatal("GetOrCall did not return once its caller gave up")
	}
	select {
	case <-cancelled:
	case <-ctx.Done():
		t.Fatal("the call every caller gave up on was not cancelled")
	}
	value, hit, err := client.Cache.GetOrCall(ctx, namespace, prompt, func(ctx context.Context) ([]byte, *arev1.Usage, error) {
		calls.Add(1)
		return []byte(`"fresh"`), nil, nil
	})
	if err != nil || hit != nil || string(value) != `"fresh"` || calls.Load() != 2 {
		t.Fatalf("GetOrCall after = %s, %+v, %v (%d calls); want a call of its own, nothing stored before", value, hit, err, calls.Load())
	}
}

// TestAGetOrCallErrorIsEveryCallersAndNothingIsStored: the shared call's
// error goes to every caller waiting for it, and nothing is stored.
func TestAGetOrCallErrorIsEveryCallersAndNothingIsStored(t *testing.T) {
	client := connect(t)
	ctx := within(t, 30*time.Second)
	namespace := flightNamespace(t, ctx, client)
	prompt := name("a failing call")
	failed := errors.New("the model is down")
	var calls atomic.Int32
	release := make(chan struct{})
	call := func(ctx context.Context) ([]byte, *arev1.Usage, error) {
		calls.Add(1)
		<-release
		return nil, nil, failed
	}
	errs := make(chan error, 3)
	for range 3 {
		go func() {
			_, _, err := client.Cache.GetOrCall(ctx, namespace, prompt, call)
			errs <- err
		}()
	}
	untilWaiters(t, ctx, client, namespace, prompt, 3, &calls)
	close(release)
	for range 3 {
		select {
		case err := <-errs:
			if !errors.Is(err, failed) {
				t.Fatalf("GetOrCall = %v; want the call's error", err)
			}
		case <-ctx.Done():
			t.Fatal("GetOrCall did not return the call's error")
		}
	}
	if hit, err := client.Cache.Lookup(ctx, namespace, prompt); err != nil || hit != nil || calls.Load() != 1 {
		t.Fatalf("Lookup after the failed call = %+v, %v (%d calls); want a miss after one call", hit, err, calls.Load())
	}
}
