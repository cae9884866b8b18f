package are_test

import (
	"context"
	"errors"
	"testing"
	"time"

	are "github.com/are-runtime/are/sdks/go"
	"github.com/are-runtime/are/sdks/go/arev1"
)

func TestCacheExactTier(t *testing.T) {
	client := connect(t)
	ctx := within(t, 30*time.Second)
	namespace := name("go-exact")
	if _, created, err := client.Cache.PutNamespace(ctx, &arev1.CacheNamespace{Name: namespace}); err != nil || !created {
		t.Fatalf("PutNamespace = created %v, %v", created, err)
	}

	hit, err := client.Cache.Lookup(ctx, namespace, "What is the capital of France?")
	if err != nil || hit != nil {
		t.Fatalf("Lookup before any store = %+v, %v; want a miss", hit, err)
	}
	stored, err := client.Cache.Store(ctx, namespace, "What is the capital of France?", []byte(`"Paris"`),
		are.WithUsage(&arev1.Usage{InputTokens: 12, OutputTokens: 3, CostMicroUsd: 40}),
		are.WithMetadata(map[string]string{"model": "gpt-x"}))
	if err != nil || stored.GetEntryId() == "" {
		t.Fatalf("Store = %v, %v", stored, err)
	}
	// The exact tier normalises whitespace.
	hit, err = client.Cache.Lookup(ctx, namespace, "  What is the   capital of France?", are.ExactOnly())
	if err != nil || hit == nil {
		t.Fatalf("exact Lookup = %+v, %v; want a hit", hit, err)
	}
	if hit.Tier != arev1.CacheTier_CACHE_TIER_EXACT || string(hit.Value) != `"Paris"` || hit.EntryID != stored.GetEntryId() ||
		hit.Usage.GetOutputTokens() != 3 || hit.Metadata["model"] != "gpt-x" {
		t.Fatalf("exact hit = %+v; want tier EXACT, value \"Paris\", the stored entry's usage and metadata", hit)
	}
	if _, err := client.Cache.Lookup(ctx, name("no-such-namespace"), "x"); !errors.Is(err, are.ErrNotFound) || are.ReasonOf(err) != "NAMESPACE_NOT_FOUND" {
		t.Fatalf("Lookup in an unknown namespace = %v; want NOT_FOUND NAMESPACE_NOT_FOUND", err)
	}
}

func TestCacheUpdateAndDeleteNamespace(t *testing.T) {
	client := connect(t)
	ctx := within(t, 30*time.Second)
	namespace := name("go-namespace")
	if _, _, err := client.Cache.PutNamespace(ctx, &arev1.CacheNamespace{Name: namespace, MaxEntries: 50, Description: "kept"}); err != nil {
		t.Fatalf("PutNamespace: %v", err)
	}
	updated, err := client.Cache.UpdateNamespace(ctx, &arev1.CacheNamespace{Name: namespace, SimilarityThreshold: 0.8}, "similarity_threshold")
	if err != nil || updated.GetSimilarityThreshold() < 0.79 || updated.GetMaxEntries() != 50 || updated.GetDescription() != "kept" {
		t.Fatalf("UpdateNamespace = %v, %v; want threshold 0.8 with max_entries 50 and the description kept", updated, err)
	}
	if _, err := client.Cache.UpdateNamespace(ctx, &arev1.CacheNamespace{Name: namespace}, "dimension"); !errors.Is(err, are.ErrInvalidArgument) {
		t.Fatalf("UpdateNamespace of an immutable field = %v; want INVALID_ARGUMENT", err)
	}
	for _, prompt := range []string{"What is the capital of Spain?", "What is the capital of Italy?"} {
		if _, err := client.Cache.Store(ctx, namespace, prompt, []byte(`"a city"`)); err != nil {
			t.Fatalf("Store: %v", err)
		}
	}
	if removed, err := client.Cache.DeleteNamespace(ctx, namespace); err != nil || removed != 2 {
		t.Fatalf("DeleteNamespace = %d, %v; want 2", removed, err)
	}
	if _, err := client.Cache.Lookup(ctx, namespace, "What is the capital of Spain?"); !errors.Is(err, are.ErrNotFound) || are.ReasonOf(err) != "NAMESPACE_NOT_FOUND" {
		t.Fatalf("Lookup after DeleteNamespace = %v; want NOT_FOUND NAMESPACE_NOT_FOUND", err)
	}
	if _, err := client.Cache.UpdateNamespace(ctx, &arev1.CacheNamespace{Name: namespace, MaxEntries: 3}, "max_entries"); !errors.Is(err, are.ErrNotFound) {
		t.Fatalf("UpdateNamespace of a deleted namespace = %v; want NOT_FOUND", err)
	}
	again, created, err := client.Cache.PutNamespace(ctx, &arev1.CacheNamespace{Name: namespace})
	if err != nil || !created || again.GetDescription() != "" {
		t.Fatalf("PutNamespace after DeleteNamespace = %v, created %v, %v; want created afresh", again, created, err)
	}
}

func TestCacheSemanticTierWithCallerVectors(t *testing.T) {
	client := connect(t)
	ctx := within(t, 30*time.Second)
	namespace := name("go-vectors")
	_, _, err := client.Cache.PutNamespace(ctx, &arev1.CacheNamespace{
		Name: namespace, Embedder: "caller", Dimension: 4, SimilarityThreshold: 0.9,
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Cache.Store(ctx, namespace, "summarise the report", []byte(`{"summary":"short"}`),
		are.WithVector([]float32{1, 0, 0, 0})); err != nil {
		t.Fatal(err)
	}
	hit, err := client.Cache.Lookup(ctx, namespace, "give me a summary of the report", are.WithVector([]float32{0.99, 0.05, 0, 0}))
	if err != nil || hit == nil {
		t.Fatalf("semantic Lookup = %+v, %v; want a hit", hit, err)
	}
	if hit.Tier != arev1.CacheTier_CACHE_TIER_SEMANTIC || hit.Similarity < 0.9 || hit.MatchedPrompt != "summarise the report" {
		t.Fatalf("semantic hit = %+v; want tier SEMANTIC above 0.9 matching the stored prompt", hit)
	}
	miss, err := client.Cache.Lookup(ctx, namespace, "something else", are.WithVector([]float32{0, 1, 0, 0}))
	if err != nil || miss != nil {
		t.Fatalf("Lookup of an orthogonal vector = %+v, %v; want a miss", miss, err)
	}
	_, err = client.Cache.Lookup(ctx, namespace, "wrong size", are.WithVector([]float32{1, 0}))
	var e *are.Error
	if !errors.As(err, &e) || e.Reason != "DIMENSION_MISMATCH" {
		t.Fatalf("Lookup with a 2-d vector = %v; want DIMENSION_MISMATCH", err)
	}
	if _, ok := e.Field("vector"); !ok {
		t.Fatalf("field violations %v do not name vector", e.FieldViolations)
	}
}

func TestCacheGetOrCallCallsOnce(t *testing.T) {
	client := connect(t)
	ctx := within(t, 30*time.Second)
	namespace := name("go-get-or-call")
	if _, _, err := client.Cache.PutNamespace(ctx, &arev1.CacheNamespace{Name: namespace}); err != nil {
		t.Fatal(err)
	}
	calls := 0
	llm := func(ctx context.Context) ([]byte, *arev1.Usage, error) {
		calls++
		return []byte(`"42"`), &arev1.Usage{InputTokens: 7, OutputTokens: 1}, nil
	}
	for i := 0; i < 3; i++ {
		value, hit, err := client.Cache.GetOrCall(ctx, namespace, "the answer to everything", llm)
		if err != nil || string(value) != `"42"` {
			t.Fatalf("GetOrCall #%d = %s, %v", i+1, value, err)
		}
		if (i == 0) != (hit == nil) {
			t.Fatalf("GetOrCall #%d hit = %+v; want a miss first, then hits", i+1, hit)
		}
	}
	if calls != 1 {
		t.Fatalf("the call ran %d times; want once", calls)
	}
	failing := func(ctx context.Context) ([]byte, *arev1.Usage, error) { return nil, nil, errors.New("provider down") }
	if _, _, err := client.Cache.GetOrCall(ctx, namespace, "another prompt", failing); err == nil || err.Error() != "provider down" {
		t.Fatalf("GetOrCall with a failing call = %v; want its error", err)
	}
	if hit, err := client.Cache.Lookup(ctx, namespace, "another prompt"); err != nil || hit != nil {
		t.Fatalf("a failed call was cached: %+v, %v", hit, err)
	}
	stats, err := client.Cache.Stats(ctx, namespace)
	if err != nil || len(stats) != 1 || stats[0].GetSavedTokens() != 16 {
		t.Fatalf("Stats = %v, %v; want two hits saving 8 tokens each", stats, err)
	}
}
