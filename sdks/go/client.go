package are

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/are-runtime/are/sdks/go/arev1"
)

// DefaultMaxMessageBytes is the largest message sent or received by default:
// the sidecar's own default bound (64 MiB).
const DefaultMaxMessageBytes = 64 * 1024 * 1024

// DefaultKeepaliveTime and DefaultKeepaliveTimeout are the client's keepalive
// defaults: while a call is open (a worker's Connect stream, a Wait) and the
// connection has been quiet for DefaultKeepaliveTime, the client pings the
// sidecar, and closes the connection when no ack comes within
// DefaultKeepaliveTimeout. See WithKeepalive.
const (
	DefaultKeepaliveTime    = 30 * time.Second
	DefaultKeepaliveTimeout = 10 * time.Second
)

// DefaultReconnectWindow is how long a wait keeps resuming its dropped
// stream while the sidecar does not answer, by default (as the Python SDK's
// reconnect_window). See WithReconnectWindow.
const DefaultReconnectWindow = 60 * time.Second

// SDKName identifies this SDK to the sidecar (worker identity, diagnostics).
const SDKName = "are-sdk-go/0.1"

// Raw holds the generated stub of every are.v1 service, for the RPCs the
// facade does not wrap. Calls through them send the bearer token and return
// *Error for failed calls, like the facade's.
type Raw struct {
	Scheduler arev1.SchedulerServiceClient
	Worker    arev1.WorkerServiceClient
	State     arev1.StateServiceClient
	Cache     arev1.CacheServiceClient
	Router    arev1.RouterServiceClient
	Trace     arev1.TraceServiceClient
	Health    healthpb.HealthClient
}

// Client is a connection to one ARE sidecar. It is safe for concurrent use;
// create it with Connect and release it with Close.
//
// Waits on workflows (WorkflowHandle.Wait and Result) go over a second
// connection that Connect opens. Each holds a stream open for as long as its
// workflow runs, and the sidecar serves 1,024 streams at once on a
// connection: on one connection, a thousand pending waits would hold up every
// other call of the client, a worker's stream included. Past 1,024 waits, the
// next ones queue until streams free.
type Client struct {
	target string
	conn   *grpc.ClientConn
	// watchConn carries the WatchWorkflow streams behind waits (see above);
	// watches is the scheduler's stub on it.
	watchConn *grpc.ClientConn
	watches   arev1.SchedulerServiceClient
	// maxMessageBytes is the largest message the client sends (see
	// WithMaxMessageBytes); a worker's stream cuts its batches below it.
	maxMessageBytes int
	// reconnectWindow bounds how long a wait resumes a dropped stream while
	// the sidecar does not answer (see WithReconnectWindow).
	reconnectWindow time.Duration

	// Raw is the raw service layer: every RPC of the contract.
	Raw Raw
	// Workflows submits and follows workflows (SchedulerService).
	Workflows *Workflows
	// Cache is the semantic cache (CacheService).
	Cache *Cache
	// Trace reads and follows the flight recorder (TraceService).
	Trace *Trace
	// State reads and patches workflows' state documents, lists their
	// checkpoints, forks them, and keeps their memory (StateService).
	State *State
	// Router keeps agent cards and routes tasks to agents and prompts to
	// models (RouterService).
	Router *Router
}

type options struct {
	token            string
	tls              *tls.Config
	useTLS           bool
	maxMessageBytes  int
	keepaliveTime    time.Duration
	keepaliveTimeout time.Duration
	reconnectWindow  time.Duration
	dial             []grpc.DialOption
}

// Option configures Connect.
type Option func(*options)

// WithToken sends "authorization: Bearer <token>" with every call, for a
// sidecar started with --token-file or ARE_TOKEN.
func WithToken(token string) Option { return func(o *options) { o.token = token } }

// WithTLS connects with TLS; a nil config uses the system's roots.
func WithTLS(config *tls.Config) Option {
	return func(o *options) { o.useTLS, o.tls = true, config }
}

// WithMaxMessageBytes sets the largest message sent or received (default
// DefaultMaxMessageBytes). A worker's stream cuts the batches it sends to
// fit under it. Set it to the sidecar's own bound (--max-message-bytes: 64
// MiB by default, 32 MiB at the least): the sidecar sizes some answers to
// its own bound (a page of ListTasks with payloads, a PollTask answer: up to
// that bound less 1 MiB), and an answer over the client's bound fails on
// this side with RESOURCE_EXHAUSTED, which no retry fixes. A bound just
// over 4 MiB, the largest inline payload, is not enough: a workflow's
// closing status with a 4 MiB inline result is 4 MiB and a few hundred
// bytes, a task with its payloads 8 MiB and more, a state document up to
// 16 MiB.
func WithMaxMessageBytes(n int) Option { return func(o *options) { o.maxMessageBytes = n } }

// WithReconnectWindow sets how long a WorkflowHandle's Wait (and Result)
// keeps resuming its dropped stream while the sidecar does not answer
// (default DefaultReconnectWindow, 60 s): a restart shorter than d goes
// unnoticed; after d without an answer since the stream dropped, the wait
// returns the last UNAVAILABLE error (errors.Is(err, ErrUnavailable)). It
// bounds the silence, not the wait: a workflow that runs for hours is
// waited for as long as ctx allows, so long as the sidecar answers. d must
// be positive (Connect refuses it otherwise); a very long d keeps resuming
// for as long as ctx allows, as before.
func WithReconnectWindow(d time.Duration) Option {
	return func(o *options) { o.reconnectWindow = d }
}

// WithKeepalive sets the client's keepalive pings (default
// DefaultKeepaliveTime, DefaultKeepaliveTimeout). While a call is open and the
// connection has been quiet for interval, the client sends an HTTP/2 ping;
// when no ack comes within timeout it closes the connection, so that a sidecar
// that hangs (a stopped process, a frozen VM, a dead NAT entry) fails the open
// calls with UNAVAILABLE instead of leaving them waiting forever, and a worker
// reconnects. No pings are sent while no call is open. interval <= 0 turns
// keepalive off; timeout <= 0 is DefaultKeepaliveTimeout. grpc-go raises an
// interval under 10 s to 10 s. Pings work over TCP and Unix sockets alike.
func WithKeepalive(interval, timeout time.Duration) Option {
	return func(o *options) { o.keepaliveTime, o.keepaliveTimeout = interval, timeout }
}

// WithDialOptions adds grpc dial options (interceptors, ...); they are
// applied after the SDK's own, so that they win over them.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dial = append(o.dial, opts...) }
}

// Connect opens a connection to the sidecar at target ("host:port" for TCP or
// "unix:PATH" for a Unix socket) and waits until it is reachable or ctx ends.
// The wait is bounded by ctx only: give it a deadline.
func Connect(ctx context.Context, target string, opts ...Option) (*Client, error) {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	if o.reconnectWindow <= 0 {
		// Before any connection is opened, as the Python SDK's connect.
		return nil, fmt.Errorf("are: WithReconnectWindow needs a positive duration, got %v", o.reconnectWindow)
	}
	creds := insecure.NewCredentials()
	if o.useTLS {
		config := o.tls
		if config == nil {
			config = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		creds = credentials.NewTLS(config)
	}
	var md metadata.MD
	if o.token != "" {
		md = metadata.Pairs("authorization", "Bearer "+o.token)
	}
	dial := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(o.maxMessageBytes),
			grpc.MaxCallSendMsgSize(o.maxMessageBytes),
		),
		grpc.WithChainUnaryInterceptor(unaryInterceptor(md)),
		grpc.WithChainStreamInterceptor(streamInterceptor(md)),
	}
	if params, ok := o.keepalive(); ok {
		dial = append(dial, grpc.WithKeepaliveParams(params))
	}
	dial = append(dial, o.dial...)
	conn, err := grpc.NewClient(dialTarget(target), dial...)
	if err != nil {
		return nil, fmt.Errorf("are: bad target %q: %w", target, err)
	}
	if err := waitReady(ctx, conn); err != nil {
		conn.Close()
		return nil, &Error{
			Code:    codes.Unavailable,
			Message: fmt.Sprintf("no ARE sidecar answered at %q: %v", target, err),
			cause:   err,
		}
	}
	// Connected at the first wait (see Client); grpc-go gives each ClientConn
	// connections of its own.
	watchConn, err := grpc.NewClient(dialTarget(target), dial...)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("are: bad target %q: %w", target, err)
	}
	client := newClient(target, conn, watchConn, o.maxMessageBytes)
	client.reconnectWindow = o.reconnectWindow
	return client, nil
}

func defaultOptions() options {
	return options{
		maxMessageBytes:  DefaultMaxMessageBytes,
		keepaliveTime:    DefaultKeepaliveTime,
		keepaliveTimeout: DefaultKeepaliveTimeout,
		reconnectWindow:  DefaultReconnectWindow,
	}
}

// keepalive is the connection's keepalive parameters; false when off.
func (o *options) keepalive() (keepalive.ClientParameters, bool) {
	if o.keepaliveTime <= 0 {
		return keepalive.ClientParameters{}, false
	}
	timeout := o.keepaliveTimeout
	if timeout <= 0 {
		timeout = DefaultKeepaliveTimeout
	}
	return keepalive.ClientParameters{Time: o.keepaliveTime, Timeout: timeout, PermitWithoutStream: false}, true
}

// dialTarget makes a plain host:port resolve without DNS (the sidecar is
// local), and keeps unix: and scheme-qualified targets as they are.
func dialTarget(target string) string {
	if strings.Contains(target, ":///") || strings.HasPrefix(target, "unix:") || strings.HasPrefix(target, "unix-abstract:") {
		return target
	}
	return "passthrough:///" + target
}

func waitReady(ctx context.Context, conn *grpc.ClientConn) error {
	conn.Connect()
	for {
		state := conn.GetState()
		switch state {
		case connectivity.Ready:
			return nil
		case connectivity.Idle:
			conn.Connect()
		case connectivity.Shutdown:
			return fmt.Errorf("connection shut down")
		}
		if !conn.WaitForStateChange(ctx, state) {
			return ctx.Err()
		}
	}
}

func newClient(target string, conn, watchConn *grpc.ClientConn, maxMessageBytes int) *Client {
	c := &Client{
		target:          target,
		conn:            conn,
		watchConn:       watchConn,
		watches:         arev1.NewSchedulerServiceClient(watchConn),
		maxMessageBytes: maxMessageBytes,
		reconnectWindow: DefaultReconnectWindow,
		Raw: Raw{
			Scheduler: arev1.NewSchedulerServiceClient(conn),
			Worker:    arev1.NewWorkerServiceClient(conn),
			State:     arev1.NewStateServiceClient(conn),
			Cache:     arev1.NewCacheServiceClient(conn),
			Router:    arev1.NewRouterServiceClient(conn),
			Trace:     arev1.NewTraceServiceClient(conn),
			Health:    healthpb.NewHealthClient(conn),
		},
	}
	c.Workflows = &Workflows{client: c}
	c.Cache = &Cache{client: c}
	c.Trace = &Trace{client: c}
	c.State = &State{client: c, Memory: &Memory{client: c}}
	c.Router = &Router{client: c}
	return c
}

// Target is the target the client was connected to.
func (c *Client) Target() string { return c.target }

// Conn is the underlying connection, for stubs of your own.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// ErrClientClosed is the cause of the error of a call that failed because
// its client was closed (in flight, or made after Close): the call's
// *Error (CANCELLED) unwraps to it, and so do the errors that end a
// WorkflowHandle.Wait or a Worker.Run when the client is closed under it.
var ErrClientClosed = errors.New("are: the client is closed")

// Close closes the connection; calls in flight are cancelled, and those
// calls, later ones, and the waits and workers running on the client end
// with an error that wraps ErrClientClosed.
func (c *Client) Close() error { return errors.Join(c.watchConn.Close(), c.conn.Close()) }

// closedError is the error that ends a wait or a worker, as it retries a
// failed call (err), when conn was closed (nil while it is open): a closed
// connection fails every call at once, and retrying would spin until the
// caller's context ends.
func closedError(conn *grpc.ClientConn, err error) error {
	if conn.GetState() != connectivity.Shutdown {
		return nil
	}
	if err == nil {
		return ErrClientClosed
	}
	return fmt.Errorf("%w: %w", ErrClientClosed, err)
}

// Health returns the sidecar's health status (SERVING when ready to serve).
func (c *Client) Health(ctx context.Context) (healthpb.HealthCheckResponse_ServingStatus, error) {
	return c.ServiceHealth(ctx, "")
}

// ServiceHealth returns the health of one service, such as
// "are.v1.SchedulerService" ("" is the sidecar as a whole).
func (c *Client) ServiceHealth(ctx context.Context, service string) (healthpb.HealthCheckResponse_ServingStatus, error) {
	resp, err := c.Raw.Health.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		return healthpb.HealthCheckResponse_UNKNOWN, err
	}
	return resp.GetStatus(), nil
}

// convert turns a failed call's error into an *Error, remembering the
// context's error when the caller's context ended the call, or
// ErrClientClosed when the call failed because the client (cc) was closed.
func convert(ctx context.Context, cc *grpc.ClientConn, err error) error {
	if err == nil {
		return nil
	}
	s, ok := status.FromError(err)
	if !ok {
		return err
	}
	e := FromStatus(s)
	if cerr := ctx.Err(); cerr != nil && (e.Code == codes.Canceled || e.Code == codes.DeadlineExceeded) {
		e.cause = cerr
	} else if e.Code == codes.Canceled && cc != nil && cc.GetState() == connectivity.Shutdown {
		e.cause = ErrClientClosed
	}
	return e
}

func withToken(ctx context.Context, md metadata.MD) context.Context {
	if md == nil {
		return ctx
	}
	return metadata.NewOutgoingContext(ctx, metadata.Join(md, outgoing(ctx)))
}

func outgoing(ctx context.Context) metadata.MD {
	md, _ := metadata.FromOutgoingContext(ctx)
	return md
}

func unaryInterceptor(md metadata.MD) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		return convert(ctx, cc, invoker(withToken(ctx, md), method, req, reply, cc, opts...))
	}
}

func streamInterceptor(md metadata.MD) grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		stream, err := streamer(withToken(ctx, md), desc, cc, method, opts...)
		if err != nil {
			return nil, convert(ctx, cc, err)
		}
		return &convertingStream{ClientStream: stream, ctx: ctx, cc: cc}, nil
	}
}

// convertingStream returns *Error for a stream's failures (io.EOF stays).
type convertingStream struct {
	grpc.ClientStream
	ctx context.Context
	cc  *grpc.ClientConn
}

func (s *convertingStream) RecvMsg(m any) error {
	return convert(s.ctx, s.cc, s.ClientStream.RecvMsg(m))
}

func (s *convertingStream) SendMsg(m any) error {
	return convert(s.ctx, s.cc, s.ClientStream.SendMsg(m))
}

func (s *convertingStream) CloseSend() error {
	return convert(s.ctx, s.cc, s.ClientStream.CloseSend())
}
