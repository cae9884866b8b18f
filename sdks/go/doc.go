// Package are is the Go client of ARE, the Agent Runtime Environment: a gRPC
// sidecar that schedules, stores, caches, routes and traces the work of AI
// agent processes. Its whole contract is proto/are/v1 (package are.v1); the
// generated code is in the arev1 package.
//
// The SDK has three layers, like the Python one (are_sdk): the generated
// stubs (arev1), a raw layer (Client.Raw: every service's stub, sending the
// bearer token and returning *Error for failed calls), and a small typed
// facade on top:
//
//   - Connect, Client.Close and Client.Health;
//   - Client.Workflows: submit a workflow (an arev1.WorkflowSpec, or one made
//     with NewWorkflow), get it, wait for it to close, cancel it, read a
//     task's output;
//   - Client.NewWorker: a worker with a Run loop of bounded concurrency, on
//     the Connect stream (the default: batched assignments, heartbeats and
//     results, pushed cancellations, reconnection with backoff) or on the
//     unary path (PollTask long poll, CompleteTask / FailTask,
//     RecordHeartbeat while a handler runs);
//   - Client.Cache: Lookup, Store and GetOrCall on the semantic cache;
//   - Client.Trace: the flight recorder, listed or followed live;
//   - Client.State: a workflow's state document (Get by JSON Pointer, Patch
//     with optimistic concurrency, checkpoints, Fork) and its memory (Add,
//     Hydrate); Task.State is the view bound to a running task's attempt;
//   - Client.Router: agent cards (RegisterAgent, ListAgents, Agents),
//     RouteTask to the best or cheapest capable agent, and RouteModel to the
//     cheapest model expected to reach a quality target, learning from
//     ReportOutcome.
//
// Every failed call returns an *Error carrying the gRPC code, the ErrorInfo
// reason, the BadRequest field violations and the RetryInfo delay; use
// errors.As to read it, or errors.Is with the Err* kinds (ErrNotFound, ...).
// A task's own failure is data (arev1.Failure), never an *Error.
//
// Every wait takes a context: deadlines and cancellation bound it. A wait on
// a workflow (WorkflowHandle.Wait, Result) also ends, with UNAVAILABLE, once
// the sidecar has not answered for the client's reconnect window
// (WithReconnectWindow, 60 s by default) since its stream dropped.
package are
