/**
 * ARE's TypeScript SDK: talk to the Agent Runtime Environment sidecar.
 *
 * {@link Client.connect} opens one channel to a sidecar; every failed call
 * throws an {@link AreError}; workflows are built with {@link WorkflowSpec},
 * submitted with `client.workflows.submit` (a {@link WorkflowHandle} comes
 * back at once) and run by {@link Worker} handlers; `client.state` holds each
 * workflow's state document and memory, `client.cache` is the
 * semantic cache, `client.router` routes tasks to agents and prompts to
 * models, and `client.trace` is the flight recorder.
 * `@are-runtime/sdk/testing` starts a real sidecar for tests, and
 * `@are-runtime/sdk/gen/are/v1/<file>` exposes the generated messages.
 *
 * @module
 */
export { Blobs, MAX_BLOB_BYTES, type PutBlobOptions } from "./blobs.js";
export {
  Cache,
  type CacheHit,
  type CacheNamespace,
  type CacheStats,
  type CacheStored,
  type CacheUsage,
  type CachedResult,
  type GetOrCallOptions,
  type LookupOptions,
  type NamespaceOptions,
  type NamespaceUpdate,
  type StoreOptions,
} from "./cache.js";
export {
  Client,
  DEFAULT_KEEPALIVE_TIMEOUT_MS,
  DEFAULT_KEEPALIVE_TIME_MS,
  DEFAULT_MAX_MESSAGE_BYTES,
  keepaliveChannelOptions,
  type ConnectOptions,
  type HealthStatus,
  type RawServices,
} from "./client.js";
export {
  AreError,
  Code,
  WaitTimeoutError,
  WorkflowSpecError,
  codeName,
  retryWait,
  toAreError,
  type AreErrorInit,
  type FieldViolation,
} from "./errors.js";
export { BlobReference, RawPayload, decodePayload, encodePayload, isJsonContentType } from "./payload.js";
export type { CallOptions } from "./rpc.js";
export {
  Router,
  type AgentCard,
  type AgentCardInput,
  type AgentFilter,
  type AgentPage,
  type ModelCatalog,
  type ModelEstimate,
  type ModelRoute,
  type ModelSpec,
  type OutcomeReport,
  type RouteCandidate,
  type RouteModeName,
  type RouteModelOptions,
  type RouteResult,
  type RouteTaskOptions,
} from "./router.js";
export {
  BoundMemory,
  BoundState,
  State,
  StateMemory,
  type CheckpointPage,
  type ForkOptions,
  type GetStateOptions,
  type HydrateOptions,
  type MemoryHit,
  type MemoryHydration,
  type MemoryNote,
  type PatchOperation,
  type PatchOptions,
  type PatchResult,
  type StateChange,
  type StateCheckpoint,
  type StateFork,
  type StateSnapshot,
  type TaskIdentity,
} from "./state.js";
export {
  WorkflowSpec,
  type Budget,
  type ComparisonOperator,
  type Condition,
  type RetryPolicy,
  type TaskCacheKey,
  type TaskOptions,
  type TaskSpec,
  type TriggerRule,
  type WorkflowOptions,
} from "./spec.js";
export {
  EventType,
  Trace,
  eventFilter,
  eventTypeName,
  type Event,
  type EventFilter,
  type EventsMissed,
  type StreamOptions,
  type TraceFilter,
  type TraceItem,
} from "./trace.js";
export {
  CLOSED_WORKFLOW_STATES,
  type FailureInfo,
  type TaskInfo,
  type TaskState,
  type UsageInfo,
  type WorkflowInfo,
  type WorkflowState,
} from "./types.js";
export {
  NonRetryableError,
  TaskCancelledError,
  TaskContext,
  TaskError,
  TaskResult,
  Worker,
  type AttributeScalar,
  type DependencyResult,
  type Handler,
  type LlmCallOptions,
  type TaskCancelKind,
  type ToolCallOptions,
  type WorkerOptions,
  type WorkerTransport,
  type WorkerStats,
} from "./worker.js";
export {
  DEFAULT_RECONNECT_WINDOW_MS,
  WorkflowFailedError,
  WorkflowHandle,
  Workflows,
  type SpawnOptions,
  type SubmitOptions,
  type WaitOptions,
  type WatchOptions,
  type WorkflowUpdate,
} from "./workflows.js";

/** The SDK's version, sent nowhere yet; kept equal to package.json's. */
export const VERSION = "0.1.0";
