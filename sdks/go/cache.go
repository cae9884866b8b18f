package are

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"golang.org/x/text/unicode/norm"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/are-runtime/are/sdks/go/arev1"
)

// Cache is the semantic cache of LLM results (CacheService): Client.Cache.
// A lookup tries the exact tier (the normalised prompt), then the semantic
// tier (embedding similarity over the namespace's threshold):
//
//	value, hit, err := client.Cache.GetOrCall(ctx, "gpt-4o:sys-3f2a", prompt,
//		func(ctx context.Context) ([]byte, *arev1.Usage, error) { return callLLM(ctx, prompt) })
type Cache struct {
	client *Client

	mu sync.Mutex
	// flights are the GetOrCall calls under way, by what decides their answer
	// (flightKeyOf): one per distinct question being answered now, removed
	// when it lands or the moment its last caller gives up on it.
	flights map[string]*cacheFlight
}

// CacheHit is the entry that answered a lookup.
type CacheHit struct {
	// EntryID is the entry's id (to invalidate it).
	EntryID string
	// Tier is the tier that answered: exact or semantic.
	Tier arev1.CacheTier
	// Similarity is the cosine similarity of the entry (1 for exact hits).
	Similarity float64
	// Value is the stored response (fetched when stored as a blob).
	Value []byte
	// ContentType is the response's content type ("" means JSON).
	ContentType string
	// MatchedPrompt is the prompt stored with the entry.
	MatchedPrompt string
	// Metadata is the entry's metadata.
	Metadata map[string]string
	// Usage is what producing the response cost: what this hit saved.
	Usage *arev1.Usage
	// Response is the whole LookupCacheResponse.
	Response *arev1.LookupCacheResponse
}

// CacheOption configures Lookup, Store and GetOrCall; each uses the options
// that apply to it.
type CacheOption func(*cacheOptions)

type cacheOptions struct {
	vector      []float32
	threshold   *float64
	maxAge      time.Duration
	exactOnly   bool
	ttl         time.Duration
	metadata    map[string]string
	usage       *arev1.Usage
	contentType string
}

// WithVector gives the prompt's embedding, computed by the caller, for the
// semantic tier (lookups and stores).
func WithVector(vector []float32) CacheOption {
	return func(o *cacheOptions) { o.vector = vector }
}

// WithThreshold sets the similarity a semantic hit needs, in (0, 1]
// (default the namespace's).
func WithThreshold(threshold float64) CacheOption {
	return func(o *cacheOptions) { o.threshold = &threshold }
}

// WithMaxAge lets only entries younger than d answer a lookup.
func WithMaxAge(d time.Duration) CacheOption {
	return func(o *cacheOptions) { o.maxAge = d }
}

// ExactOnly consults the exact tier only.
func ExactOnly() CacheOption {
	return func(o *cacheOptions) { o.exactOnly = true }
}

// WithTTL sets a stored entry's time to live (default the namespace's).
func WithTTL(d time.Duration) CacheOption {
	return func(o *cacheOptions) { o.ttl = d }
}

// WithMetadata sets a stored entry's metadata (matched by InvalidateCache).
func WithMetadata(metadata map[string]string) CacheOption {
	return func(o *cacheOptions) { o.metadata = metadata }
}

// WithUsage records the tokens and cost a stored response took, credited as
// savings on each hit.
func WithUsage(usage *arev1.Usage) CacheOption {
	return func(o *cacheOptions) { o.usage = usage }
}

// WithContentType sets a stored response's content type (default JSON).
func WithContentType(contentType string) CacheOption {
	return func(o *cacheOptions) { o.contentType = contentType }
}

func collect(opts []CacheOption) cacheOptions {
	var o cacheOptions
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

func vectorOf(values []float32) *arev1.Vector {
	if values == nil {
		return nil
	}
	return &arev1.Vector{Values: values}
}

// PutNamespace creates a namespace or updates its mutable settings; it
// returns the namespace as stored and whether it was created.
func (c *Cache) PutNamespace(ctx context.Context, namespace *arev1.CacheNamespace) (*arev1.CacheNamespace, bool, error) {
	resp, err := c.client.Raw.Cache.PutNamespace(ctx, &arev1.PutNamespaceRequest{Namespace: namespace})
	if err != nil {
		return nil, false, err
	}
	return resp.GetNamespace(), resp.GetCreated(), nil
}

// UpdateNamespace changes only the settings of an existing namespace that
// fields names (CacheNamespace field names: "similarity_threshold",
// "default_ttl", "max_entries", "max_bytes", "description",
// "search_expansion", "recall_target"), taking their values from namespace;
// the others keep theirs. PutNamespace, by contrast, sets every mutable
// setting, and those left zero return to their defaults. A named field sent
// as zero means its default. Errors: NOT_FOUND (NAMESPACE_NOT_FOUND) when
// there is no such namespace; INVALID_ARGUMENT naming "update_mask" for a
// field that is not a mutable setting.
func (c *Cache) UpdateNamespace(ctx context.Context, namespace *arev1.CacheNamespace, fields ...string) (*arev1.CacheNamespace, error) {
	resp, err := c.client.Raw.Cache.PutNamespace(ctx, &arev1.PutNamespaceRequest{
		Namespace:  namespace,
		UpdateMask: &fieldmaskpb.FieldMask{Paths: fields},
	})
	if err != nil {
		return nil, err
	}
	return resp.GetNamespace(), nil
}

// DeleteNamespace deletes a namespace with its entries, counters and index;
// it returns how many entries the namespace held. Meanwhile lookups still
// answer the entries not yet removed, while stores and settings changes fail
// with ABORTED (NAMESPACE_DELETING). Once it returns the name is free and no
// longer counts toward the sidecar's 1,000 namespaces. Errors: NOT_FOUND
// (NAMESPACE_NOT_FOUND); RESOURCE_EXHAUSTED (RESOURCE_LIMIT) when the
// storage is busy: the entries removed so far stay removed and calling
// again finishes the deletion.
func (c *Cache) DeleteNamespace(ctx context.Context, name string) (int64, error) {
	resp, err := c.client.Raw.Cache.DeleteNamespace(ctx, &arev1.DeleteNamespaceRequest{Namespace: name})
	if err != nil {
		return 0, err
	}
	return resp.GetRemovedCount(), nil
}

// Lookup returns the entry answering prompt (exact tier, then semantic), or
// nil on a miss. Options: WithVector, WithThreshold, WithMaxAge, ExactOnly.
func (c *Cache) Lookup(ctx context.Context, namespace, prompt string, opts ...CacheOption) (*CacheHit, error) {
	return c.lookup(ctx, namespace, prompt, collect(opts))
}

func (c *Cache) lookup(ctx context.Context, namespace, prompt string, o cacheOptions) (*CacheHit, error) {
	req := &arev1.LookupCacheRequest{
		Namespace: namespace,
		Prompt:    prompt,
		Vector:    vectorOf(o.vector),
		Threshold: o.threshold,
		ExactOnly: o.exactOnly,
	}
	if o.maxAge > 0 {
		req.MaxAge = durationpb.New(o.maxAge)
	}
	resp, err := c.client.Raw.Cache.LookupCache(ctx, req)
	if err != nil {
		return nil, err
	}
	if !resp.GetHit() {
		return nil, nil
	}
	value, err := c.client.PayloadBytes(ctx, resp.GetResponse())
	if err != nil {
		return nil, err
	}
	contentType := resp.GetResponse().GetContentType()
	if contentType == "" && resp.GetResponse().GetBlob() != nil {
		contentType = resp.GetResponse().GetBlob().GetContentType()
	}
	return &CacheHit{
		EntryID:       resp.GetEntryId(),
		Tier:          resp.GetTier(),
		Similarity:    resp.GetSimilarity(),
		Value:         value,
		ContentType:   contentType,
		MatchedPrompt: resp.GetMatchedPrompt(),
		Metadata:      resp.GetMetadata(),
		Usage:         resp.GetUsage(),
		Response:      resp,
	}, nil
}

// Store stores value under prompt; an entry with the same normalised prompt
// is replaced. A value over MaxInlineBytes goes through the blob store: it is
// uploaded unowned, so the sidecar's sweep of unreferenced blobs may delete
// it before the store lands (an old upload of the same bytes near its TTL);
// the store is then refused with BLOB_NOT_FOUND, and the upload and the
// store are made again, up to storeAttempts times in all.
// Options: WithVector, WithTTL, WithMetadata, WithUsage, WithContentType.
func (c *Cache) Store(ctx context.Context, namespace, prompt string, value []byte, opts ...CacheOption) (*arev1.StoreCacheResponse, error) {
	return c.store(ctx, namespace, prompt, value, collect(opts))
}

func (c *Cache) store(ctx context.Context, namespace, prompt string, value []byte, o cacheOptions) (*arev1.StoreCacheResponse, error) {
	contentType := o.contentType
	if contentType == "" {
		contentType = JSONContentType
	}
	req := &arev1.StoreCacheRequest{
		Namespace: namespace,
		Prompt:    prompt,
		Vector:    vectorOf(o.vector),
		Metadata:  o.metadata,
		Usage:     o.usage,
	}
	if o.ttl > 0 {
		req.Ttl = durationpb.New(o.ttl)
	}
	for attempt := 1; ; attempt++ {
		response, err := c.client.inlineOrBlob(ctx, value, contentType, "")
		if err != nil {
			return nil, err
		}
		req.Response = response
		resp, err := c.client.Raw.Cache.StoreCache(ctx, req)
		if err == nil || !blobSwept(err, response) || attempt == storeAttempts || ctx.Err() != nil {
			return resp, err
		}
	}
}

// storeAttempts bounds the uploads and stores of one Store whose blob the
// sweep keeps deleting in between (each upload gives the blob a full TTL
// again, so a second attempt almost always lands).
const storeAttempts = 3

// blobSwept reports whether a store of payload was refused because its blob
// is gone: the sweep deleted it between the upload and the store.
func blobSwept(err error, payload *arev1.Payload) bool {
	return payload.GetBlob() != nil && errors.Is(err, ErrNotFound) && ReasonOf(err) == "BLOB_NOT_FOUND"
}

// Invalidate removes entries by id; it returns how many were removed.
func (c *Cache) Invalidate(ctx context.Context, namespace string, entryIDs ...string) (int64, error) {
	resp, err := c.client.Raw.Cache.InvalidateCache(ctx, &arev1.InvalidateCacheRequest{Namespace: namespace, EntryIds: entryIDs})
	if err != nil {
		return 0, err
	}
	return resp.GetRemovedCount(), nil
}

// Stats returns the counters of one namespace ("" for every namespace).
func (c *Cache) Stats(ctx context.Context, namespace string) ([]*arev1.CacheStats, error) {
	resp, err := c.client.Raw.Cache.GetCacheStats(ctx, &arev1.GetCacheStatsRequest{Namespace: namespace})
	if err != nil {
		return nil, err
	}
	return resp.GetStats(), nil
}

// CacheCall produces a response on a miss, with the tokens and cost it took
// (nil when unknown).
type CacheCall func(ctx context.Context) (value []byte, usage *arev1.Usage, err error)

// GetOrCall looks prompt up; on a hit it returns the cached value and the
// hit, without calling call. On a miss it calls call once, stores its value
// (with its usage) and returns it with a nil hit. An error of call is
// returned as it is and nothing is stored.
//
// Concurrent GetOrCall of one client that ask the same question share one
// lookup and one call (as the Python SDK's get_or_call): the same namespace,
// the same prompt (equal once normalised as the sidecar does: Unicode NFC,
// whitespace runs collapsed, trimmed) and the same lookup options
// (WithVector, WithThreshold, WithMaxAge, ExactOnly). The first caller's
// call and other options (WithTTL, WithMetadata, WithUsage,
// WithContentType) are used, and every caller gets its value and hit (the
// same ones: treat them as read-only), or its error (then nothing is
// stored).
// The shared lookup, call and store run on a context that carries the first
// caller's values but not its deadline or cancellation: a caller whose ctx
// ends stops waiting and gets ctx.Err(), while the others still wait; the
// shared call's context is cancelled only when no caller waits for it any
// more, and a GetOrCall arriving after that starts a call of its own. A
// panic of call is raised again in every caller waiting for it.
//
// A cache outage does not become an outage of the calls it stands in front
// of: a lookup that fails because the cache is down or busy (UNAVAILABLE,
// RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED or ABORTED) is logged as a warning
// (slog.Default) and call is made, its value returned and not stored; other
// lookup errors (an unknown namespace, a bad vector) are returned, and so is
// ctx's own end. A store that fails after the call (the value over the
// namespace's bound, the sidecar busy or gone) is logged too, and the value
// paid for is returned without an error.
func (c *Cache) GetOrCall(ctx context.Context, namespace, prompt string, call CacheCall, opts ...CacheOption) ([]byte, *CacheHit, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	o := collect(opts)
	key := flightKeyOf(namespace, prompt, o)
	c.mu.Lock()
	f := c.flights[key]
	if f == nil {
		// Never one that has ended: a flight leaves the map before it lands.
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		f = &cacheFlight{done: make(chan struct{}), cancel: cancel}
		if c.flights == nil {
			c.flights = map[string]*cacheFlight{}
		}
		c.flights[key] = f
		go c.fly(fctx, key, f, namespace, prompt, call, o)
	}
	f.waiters++
	c.mu.Unlock()
	select {
	case <-f.done:
	case <-ctx.Done():
	}
	c.mu.Lock()
	f.waiters--
	landed := f.landed
	abandoned := !landed && f.waiters == 0
	if abandoned && c.flights[key] == f {
		// Every caller gave up on it: forget it now, so that a caller arriving
		// meanwhile starts its own call instead of joining a cancelled one.
		delete(c.flights, key)
	}
	c.mu.Unlock()
	if abandoned {
		f.cancel()
	}
	if !landed {
		return nil, nil, ctx.Err()
	}
	if f.panicked != nil {
		panic(f.panicked)
	}
	return f.value, f.hit, f.err
}

// cacheFlight is a GetOrCall under way, shared by the callers waiting for it.
type cacheFlight struct {
	done   chan struct{} // closed once it has landed
	cancel context.CancelFunc
	// Guarded by Cache.mu:
	waiters int
	landed  bool
	// Set before done is closed:
	value    []byte
	hit      *CacheHit
	err      error
	panicked any
}

// fly runs a shared GetOrCall and lands it: its result recorded, the flight
// forgotten (before any caller can see it landed), done closed.
func (c *Cache) fly(ctx context.Context, key string, f *cacheFlight, namespace, prompt string, call CacheCall, o cacheOptions) {
	defer func() {
		if p := recover(); p != nil {
			f.panicked = p
		}
		c.mu.Lock()
		f.landed = true
		if c.flights[key] == f {
			delete(c.flights, key)
		}
		c.mu.Unlock()
		f.cancel()
		close(f.done)
	}()
	f.value, f.hit, f.err = c.lookUpOrCall(ctx, namespace, prompt, call, o)
}

// flightKeyOf is what decides a GetOrCall's answer: the namespace, the
// normalised prompt and the lookup options.
func flightKeyOf(namespace, prompt string, o cacheOptions) string {
	var b strings.Builder
	b.WriteString(strconv.Quote(namespace))
	b.WriteString(strconv.Quote(normalisePrompt(prompt)))
	if o.vector != nil {
		b.WriteString("v")
		for _, x := range o.vector {
			fmt.Fprintf(&b, "%08x", math.Float32bits(x))
		}
	}
	if o.threshold != nil {
		fmt.Fprintf(&b, "t%016x", math.Float64bits(*o.threshold))
	}
	fmt.Fprintf(&b, "a%d e%t", o.maxAge, o.exactOnly)
	return b.String()
}

// normalisePrompt is the prompt as the sidecar's exact tier keys it: Unicode
// NFC, runs of whitespace (Python's str.isspace: unicode.IsSpace and U+001C
// to U+001F) collapsed to one space, trimmed.
func normalisePrompt(prompt string) string {
	return strings.Join(strings.FieldsFunc(norm.NFC.String(prompt), func(r rune) bool {
		return unicode.IsSpace(r) || (r >= 0x1c && r <= 0x1f)
	}), " ")
}

// lookUpOrCall is GetOrCall's lookup, call and store, shared by its
// concurrent callers.
func (c *Cache) lookUpOrCall(ctx context.Context, namespace, prompt string, call CacheCall, o cacheOptions) ([]byte, *CacheHit, error) {
	hit, err := c.lookup(ctx, namespace, prompt, o)
	if err != nil {
		if ctx.Err() != nil || !cacheDown(err) {
			return nil, nil, err
		}
		slog.Default().Warn("are: the cache could not be looked up, so the call is made", "namespace", namespace, "error", err)
		value, _, err := call(ctx)
		if err != nil {
			return nil, nil, err
		}
		return value, nil, nil
	}
	if hit != nil {
		return hit.Value, hit, nil
	}
	value, usage, err := call(ctx)
	if err != nil {
		return nil, nil, err
	}
	if usage != nil {
		o.usage = usage
	}
	if _, err := c.store(ctx, namespace, prompt, value, o); err != nil {
		slog.Default().Warn("are: the call's answer was not stored in the cache", "namespace", namespace, "error", err)
	}
	return value, nil, nil
}

// cacheDown reports whether a lookup's error means that the cache is down or
// busy, rather than that the request was wrong.
func cacheDown(err error) bool {
	return errors.Is(err, ErrUnavailable) || errors.Is(err, ErrResourceExhausted) ||
		errors.Is(err, ErrDeadlineExceeded) || errors.Is(err, ErrAborted)
}
