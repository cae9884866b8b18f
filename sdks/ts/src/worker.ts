/**
 * The worker: run task handlers for the sidecar, over the `Connect` stream or the unary path.
 *
 * ```ts
 * const worker = new Worker(client, { name: "writer", maxConcurrency: 8 })
 *   .handle("write", async (ctx) => {
 *     const notes = ctx.dependencyOutputs["research"];
 *     ctx.reportLlmCall("gpt-x", { inputTokens: 900, outputTokens: 300, costMicroUsd: 1200 });
 *     return { draft: `About ${JSON.stringify(notes)}`, };   // any JSON value; a Uint8Array raw
 *   });
 * const done = worker.run();        // until worker.stop() or the signal given to run()
 * ```
 *
 * A handler takes a {@link TaskContext} and returns (or resolves to) the
 * task's output; a {@link TaskResult} adds a content type or a state patch.
 * Throwing fails the attempt with a Failure whose type is the error's class
 * name (throw {@link TaskError} to choose type, details and a retry hint,
 * {@link NonRetryableError} to forbid retries). Any thrown value fails it, an
 * Error or not (a string, undefined, an object whose `toString` throws), and
 * an {@link AreError} carrying the sidecar's retry hint (a call the handler
 * made, refused RESOURCE_EXHAUSTED) passes that hint on as the failure's
 * least delay before a retry. The thrown value's `cause` chain (ES2022
 * `new Error(message, { cause })`, and the `cause` option of TaskError and
 * NonRetryableError) goes as the failure's nested causes, each with its
 * message, type and stack trace: at most 8, fewer when the whole would pass
 * 1 MiB, the deepest kept one saying how many were dropped and why; a cycle
 * ends the chain. An AggregateError's `errors` are not sent, only its `cause`.
 *
 * Two transports carry the same handlers (`transport` in {@link WorkerOptions}):
 *
 * - `"stream"` (the default): one `Connect` stream per worker. It registers
 *   (name, capabilities, `maxConcurrency`, identity, labels, card); the sidecar
 *   assigns at most `maxConcurrency` attempts at once; heartbeats of running
 *   attempts go in batches at the interval the registration answer gives (and
 *   at least three times per heartbeat timeout); results and events go in
 *   batches too, every message cut by count and size under the sidecar's and
 *   the client's bounds (see `maxMessageBytes`); each result waits for its
 *   TaskAck (a refusal such as TASK_NOT_HELD is that task's outcome, not the
 *   stream's); a cancellation from the sidecar aborts the handler at once. A
 *   broken stream is reopened with full-jitter backoff (50 ms doubling to
 *   `reconnectMaxDelayMs`, back to 50 ms only after a stream that lived
 *   10 s), and no sooner than the sidecar's retry hint when its refusal
 *   carries one; its attempts are lost (their leases end with it and the
 *   sidecar retries them).
 * - `"unary"`: the worker long-polls `PollTask` for as many tasks as it has
 *   free slots (never more than `maxConcurrency` running), reports with
 *   `CompleteTask` / `FailTask`, and heartbeats every running attempt with
 *   `RecordHeartbeat` (every `heartbeatIntervalMs`, and at least three times
 *   per heartbeat timeout).
 *
 * `ctx.signal` aborts, with a {@link TaskCancelledError} as its reason, when
 * the sidecar says the attempt is over (workflow cancelled or closed, lease
 * lost), when the attempt's deadline passes, or when the worker stops and the
 * grace period has run out. The attempt is reported (or dropped) at once, but
 * its slot is given back only when the handler returns, as in the Go and Java
 * SDKs: a handler that ignores its signal keeps its slot, so the process never
 * runs more than `maxConcurrency` handlers at once. The unary transport polls
 * for fewer tasks meanwhile; on the stream, which has no way to say so, an
 * attempt the sidecar assigns meanwhile waits (heartbeated, its deadline
 * running) for a slot, and is dropped if cancelled before one is free. A
 * handler still running a second after its attempt ended is warned about.
 *
 * @module
 */
import { hostname } from "node:os";

import type { Client } from "./client.js";
import { AreError, Code, retryWait } from "./errors.js";
import { Failure, FailureKind, type Payload, type Usage } from "./gen/are/v1/common.js";
import { ErrorReason } from "./gen/are/v1/errors.js";
import { type AttributeValue, EventType, type ReportedEvent } from "./gen/are/v1/event.js";
import {
  CompleteTaskRequest,
  FailTaskRequest,
  PollTaskRequest,
  RecordHeartbeatRequest,
  ReportEventsRequest,
  type TaskAck,
  type TaskAssignment,
} from "./gen/are/v1/worker_service.js";
import { OCTET_STREAM, decodePayload, encodePayload } from "./payload.js";
import { cardMessage, type AgentCardInput } from "./router.js";
import type { TaskSpec } from "./spec.js";
import type { BoundState } from "./state.js";
import { StreamSession, attemptKey, type StreamAttempt } from "./stream.js";
import { fromDuration, jitter, sleep, toDuration } from "./time.js";
import { failureInfo, taskStateName, type FailureInfo, type TaskState } from "./types.js";
import { spawnTasks, type SpawnOptions } from "./workflows.js";

/** A task handler: takes the context, returns the output (or a promise of it). */
export type Handler<I = any> = (ctx: TaskContext<I>) => unknown;

/** Outputs over this many bytes are uploaded as a blob and completed by reference. */
export const MAX_INLINE_BYTES = 4 * 1024 * 1024;
const MAX_MESSAGE = 32 * 1024;
const MAX_STACK_TRACE = 64 * 1024;
// The sidecar refuses a Failure beyond these bounds (common.proto); a refused failure report would
// leave its attempt RUNNING, so every report the worker builds is fitted to them first (fitReport).
const MAX_FAILURE_TYPE = 256; // characters (code points)
const MAX_FAILURE_DETAILS = 1024 * 1024; // bytes, inline only; also a failure with its causes
const MAX_DETAILS_CONTENT_TYPE = 128; // characters (code points)
const MAX_FAILURE_CAUSES = 8;
/** The sidecar keeps a message's first 32 KiB of UTF-8: a note of dropped causes goes within them. */
const MAX_MESSAGE_BYTES = 32 * 1024;
/**
 * Causes of a handler's error counted beyond the 8 kept, at most: a `cause` getter may make a new
 * error on each read, and the walk must end even then (as the Java SDK's).
 */
const MAX_COUNTED_CAUSES = 10_000;
const MAX_DURATION_SECONDS = 315_576_000_000; // the largest google.protobuf.Duration
const MAX_EVENTS_PER_CALL = 1000;
/** The most bytes of heartbeat details the sidecar takes (worker_service.proto, TaskHeartbeat.details). */
const MAX_HEARTBEAT_DETAILS = 1 << 20;
const MAX_QUEUED_EVENTS = 10_000;
const REPORT_ATTEMPTS = 5;
/** The first wait before reopening the worker stream (full jitter), doubling up to `reconnectMaxDelayMs`. */
const FIRST_RECONNECT_DELAY_MS = 50;
/**
 * Only a stream that lived this long sets the reconnection backoff back to its first wait: one the
 * sidecar ends just after registering it (refusing it, failing) would otherwise be reopened about
 * twenty times a second (the Python SDK's rule).
 */
const STABLE_SESSION_MS = 10_000;
/**
 * How long a handler may run on after its attempt ended before it is warned about, and how long a
 * stopping worker waits for such handlers before returning without them (Go's handBackWait).
 */
const RUN_ON_WAIT_MS = 1_000;
const FATAL_CODES = new Set<number>([Code.INVALID_ARGUMENT, Code.UNAUTHENTICATED, Code.PERMISSION_DENIED, Code.UNIMPLEMENTED]);

/** Throw from a handler to fail the attempt with a chosen type, details and retry hint. */
export class TaskError extends Error {
  /** The failure's type, matched against a retry policy's nonRetryableFailureTypes; default the class name. */
  readonly type: string;
  /** A JSON value (or bytes) carried as the failure's details. */
  readonly details: unknown;
  /** Forbid retries whatever the retry policy says. */
  readonly nonRetryable: boolean;
  /** The least delay before a retry (a provider's Retry-After). */
  readonly retryAfterMs: number | undefined;

  constructor(
    message: string,
    options: { type?: string; details?: unknown; nonRetryable?: boolean; retryAfterMs?: number; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.type = options.type ?? new.target.name;
    this.details = options.details;
    this.nonRetryable = options.nonRetryable ?? false;
    this.retryAfterMs = options.retryAfterMs;
  }
}

/** Throw from a handler to fail the attempt for good: no retry, whatever the policy. */
export class NonRetryableError extends TaskError {
  constructor(message: string, options: { type?: string; details?: unknown; cause?: unknown } = {}) {
    super(message, { ...options, nonRetryable: true });
  }
}

/** Why an attempt's signal aborted. */
export type TaskCancelKind =
  /** The sidecar asked to stop: the workflow was cancelled or closed. */
  | "CANCEL_REQUESTED"
  /** The attempt is no longer held (lease lost, superseded, cancelled). */
  | "NOT_HELD"
  /** The attempt's start-to-close deadline passed. */
  | "TIMED_OUT"
  /** The worker stopped and its grace period ran out. */
  | "WORKER_STOPPED";

/** The reason of `ctx.signal` once an attempt is cancelled. */
export class TaskCancelledError extends Error {
  constructor(
    readonly kind: TaskCancelKind,
    message: string,
  ) {
    super(message);
    this.name = "TaskCancelledError";
  }
}

/** A handler's output with extras: a content type and a JSON Merge Patch of the workflow's state. */
export class TaskResult {
  constructor(
    readonly output: unknown,
    readonly options: { contentType?: string; stateMergePatch?: Record<string, unknown> } = {},
  ) {}
}

/** What a task received about one of its dependencies. */
export interface DependencyResult {
  taskId: string;
  state: TaskState;
  output: unknown;
  failure: FailureInfo | undefined;
}

/**
 * How a worker talks to the sidecar: `"stream"`, one `Connect` stream
 * carrying batches both ways (the fast path), or `"unary"`, `PollTask`
 * long-polls and one call per heartbeat and result.
 */
export type WorkerTransport = "stream" | "unary";

/** Options of {@link Worker}. */
export interface WorkerOptions {
  /** The transport; default `"stream"` (see {@link WorkerTransport}). */
  transport?: WorkerTransport;
  /** The worker's name, shared by its replicas (id alphabet). */
  name: string;
  /** Handlers by capability (more can be added with {@link Worker.handle}). */
  handlers?: Record<string, Handler>;
  /** Capabilities to declare besides those with handlers. */
  capabilities?: string[];
  /**
   * The most handlers run at once (1 to 10,000); default 8. A handler counts until it returns,
   * even after its attempt ended (see the module documentation).
   */
  maxConcurrency?: number;
  /** Who this process is, for humans; default `host:pid N`. */
  identity?: string;
  /**
   * Free labels sent with the stream registration (`WorkerRegistration.labels`):
   * at most 32, keys 1 to 128 characters of `[A-Za-z0-9._:/-]`, values at most
   * 256 UTF-8 bytes. A bad label makes the sidecar refuse the worker: `run()`
   * rejects with INVALID_ARGUMENT naming the field (for example
   * `register.labels['bad key!']`). The unary transport has no field for them
   * (`PollTask` carries none): there they are not sent.
   */
  labels?: Record<string, string>;
  /**
   * How the router shows this worker's class, sent with the stream
   * registration (`WorkerRegistration.agent_card`): agent id, description or
   * vector, cost per call, labels. Replicas sending the same `agentId` share
   * one card whose load and availability follow them (a card registered with
   * `client.router.registerAgent` under that id describes them instead), so
   * a task submitted with an `intent` goes to the cheapest class that fits.
   * Its `capabilities` default to the worker's and must be among them. An
   * invalid card makes the sidecar refuse the worker: `run()` rejects with
   * INVALID_ARGUMENT naming the field under `register.agent_card` (for
   * example `register.agent_card.vector`, reason `DIMENSION_MISMATCH`, for a
   * vector not of the router's dimension). Without a card the worker still
   * appears in the router's index, as a card named after it, with its
   * capabilities, that costs nothing. The card needs the stream transport:
   * the unary one has no registration (`PollTask` carries no card), so there
   * it is not sent.
   */
  card?: AgentCardInput;
  /**
   * The deadline of one long poll (unary transport); the sidecar answers
   * about 1 s before it. It also bounds how long stop() waits for the poll
   * in flight. Default 10 s.
   */
  pollTimeoutMs?: number;
  /**
   * How often running attempts heartbeat (and learn of cancellation) on the
   * unary transport; default 2 s. The stream transport heartbeats at the
   * interval the sidecar gives at registration, and learns of cancellations
   * at once.
   */
  heartbeatIntervalMs?: number;
  /**
   * How long running tasks get to finish on stop(); default 10 s. Those still running are then
   * aborted and handed back, and handlers that ignore their signal get one more second to return
   * before run() resolves without them (they keep their slots until they return).
   */
  shutdownGraceMs?: number;
  /**
   * The longest wait between two reconnections of the stream transport (full jitter from 50 ms);
   * default 5 s. A retry hint of the sidecar's (RetryInfo on its refusal) is waited out even when longer.
   */
  reconnectMaxDelayMs?: number;
  /** Where warnings go (refused results, dropped connections); default `console`. */
  logger?: { warn: (message: string) => void };
}

/** Counters since the worker was made. */
export interface WorkerStats {
  completed: number;
  failed: number;
  cancelled: number;
  /** Long polls sent (unary transport). */
  polls: number;
  /** Streams registered (stream transport). */
  connects: number;
}

/** Everything a handler knows about its task attempt, and what it can report. */
export class TaskContext<I = unknown> {
  readonly workflowId: string;
  readonly taskId: string;
  /** The attempt number, from 1. */
  readonly attempt: number;
  /** The same for every attempt of the task, across restarts: make side effects idempotent with it. */
  readonly idempotencyKey: string;
  readonly capability: string;
  /** The decoded input (typed by the handler's declaration; not checked at run time). */
  readonly input: I;
  /** What each dependency ended as, by task id, in depends_on order. */
  readonly dependencies: Readonly<Record<string, DependencyResult>>;
  /** When the attempt's start-to-close timeout ends. */
  readonly deadline: Date | undefined;
  /** The heartbeat timeout in milliseconds, or undefined (the worker heartbeats on its own). */
  readonly heartbeatTimeoutMs: number | undefined;
  /** The W3C traceparent of the attempt's span ("" if none), so your spans nest under it. */
  readonly traceparent: string;
  readonly tracestate: string;
  readonly labels: Readonly<Record<string, string>>;
  /** The previous attempt's failure, on retries. */
  readonly lastFailure: FailureInfo | undefined;
  /** The previous attempt's last heartbeat details, to resume from. */
  readonly lastHeartbeatDetails: unknown;
  /** The retry policy's maximum attempts. */
  readonly maximumAttempts: number;
  /** The workflow state document's version at dispatch. */
  readonly stateVersion: number;
  /** Aborts (reason: {@link TaskCancelledError}) when the attempt must stop. */
  readonly signal: AbortSignal;
  private boundState: BoundState | undefined;

  /** @internal */
  constructor(
    private readonly attemptState: Attempt,
    assignment: TaskAssignment,
  ) {
    this.workflowId = assignment.workflowId;
    this.taskId = assignment.taskId;
    this.attempt = assignment.attempt;
    this.idempotencyKey = assignment.idempotencyKey;
    this.capability = assignment.capability;
    this.input = decodePayload(assignment.input) as I;
    const dependencies: Record<string, DependencyResult> = {};
    for (const d of assignment.dependencies) {
      dependencies[d.taskId] = {
        taskId: d.taskId,
        state: taskStateName(d.state),
        output: decodePayload(d.output),
        failure: failureInfo(d.failure),
      };
    }
    this.dependencies = dependencies;
    this.deadline = assignment.deadlineTime;
    this.heartbeatTimeoutMs = fromDuration(assignment.heartbeatTimeout);
    this.traceparent = assignment.traceContext?.traceparent ?? "";
    this.tracestate = assignment.traceContext?.tracestate ?? "";
    this.labels = assignment.labels;
    this.lastFailure = failureInfo(assignment.lastFailure);
    this.lastHeartbeatDetails = decodePayload(assignment.lastHeartbeatDetails);
    this.maximumAttempts = assignment.maximumAttempts;
    this.stateVersion = assignment.stateVersion;
    this.signal = attemptState.controller.signal;
  }

  /** The outputs of the dependencies that COMPLETED, by task id. */
  get dependencyOutputs(): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    for (const [id, d] of Object.entries(this.dependencies)) if (d.state === "COMPLETED") out[id] = d.output;
    return out;
  }

  /** True when a failure of this attempt will not be retried by policy. */
  get isLastAttempt(): boolean {
    return this.maximumAttempts > 0 && this.attempt >= this.maximumAttempts;
  }

  /** True once the attempt must stop (same as `signal.aborted`). */
  get cancelled(): boolean {
    return this.signal.aborted;
  }

  /**
   * Heartbeats now, with progress details (any JSON value, at most 1 MiB
   * encoded: larger ones are dropped, logged, keeping those recorded before)
   * that the next attempt receives as `lastHeartbeatDetails` if this one is
   * lost. The worker also heartbeats on its own; await the promise to know
   * the details were recorded (on the stream transport: sent, the sidecar
   * acknowledging only refusals, which abort `signal`). It never rejects: a failure is logged and the
   * details go with the next heartbeat; if the attempt is over, `signal` aborts. Once the worker is
   * done with the attempt (its result reported, or the attempt lost), the details are dropped.
   */
  heartbeat(details?: unknown): Promise<void> {
    if (details !== undefined) this.attemptState.setDetails(encodePayload(details));
    return this.attemptState.beat();
  }

  /**
   * Records one LLM call: an event in the flight recorder, and usage on the result (which budgets count).
   * `provider` ("openai", "anthropic", ...) and `responseModel` become the GenAI attributes
   * "gen_ai.system" and "gen_ai.response.model"; `attributes` adds others (see
   * {@link AttributeScalar}; at most 64 in all, keys 1 to 128 characters). The sidecar fills
   * "gen_ai.request.model", "gen_ai.operation.name" and the token counts from the call itself.
   * Events reported once the worker is done with the attempt (a handler running on after its
   * cancellation) can no longer be sent: they are dropped, with one warning.
   *
   * @throws RangeError A count or cost that is not an integer (round a cost to the nearest
   *   micro-USD), or an attribute value that is NaN or an infinity: thrown in the handler, it
   *   fails the attempt, as in the Python SDK. Nothing is counted or sent.
   * @throws TypeError An attribute value that is not a string, number, boolean or bigint.
   */
  reportLlmCall(model: string, usage: LlmCallOptions = {}): void {
    const call: Usage = {
      inputTokens: counter("inputTokens", usage.inputTokens),
      outputTokens: counter("outputTokens", usage.outputTokens),
      costMicroUsd: counter("costMicroUsd", usage.costMicroUsd),
      llmCalls: 1,
      toolCalls: 0,
    };
    const attributes = eventAttributes(
      { "gen_ai.system": usage.provider, "gen_ai.response.model": usage.responseModel },
      usage.attributes,
    );
    this.addUsage(call);
    this.attemptState.queueEvent(this.event(EventType.EVENT_TYPE_LLM_CALL, model, usage.durationMs, call, attributes));
  }

  /**
   * Records one tool call in the flight recorder and in the attempt's usage (its event dropped,
   * as {@link reportLlmCall}'s, once the worker is done with the attempt). `callId` (the model's
   * id for the call) becomes "gen_ai.tool.call.id"; the sidecar fills "gen_ai.tool.name".
   *
   * @throws RangeError, TypeError An attribute value as {@link reportLlmCall} refuses it; nothing is counted or sent.
   */
  reportToolCall(name: string, options: ToolCallOptions = {}): void {
    const attributes = eventAttributes({ "gen_ai.tool.call.id": options.callId }, options.attributes);
    this.addUsage({ toolCalls: 1 });
    this.attemptState.queueEvent(this.event(EventType.EVENT_TYPE_TOOL_CALL, name, options.durationMs, undefined, attributes));
  }

  /**
   * Records anything else worth seeing in the trace (a decision, a milestone) as a WORKER_CUSTOM
   * event of this attempt: it shows among the attempt's events and on its span in OpenTelemetry
   * (dropped, as {@link reportLlmCall}'s, once the worker is done with the attempt).
   *
   * @throws RangeError, TypeError An attribute value as {@link reportLlmCall} refuses it; nothing is sent.
   */
  reportEvent(name: string, attributes: Readonly<Record<string, AttributeScalar>> = {}): void {
    const values = eventAttributes({}, attributes);
    this.attemptState.queueEvent(this.event(EventType.EVENT_TYPE_WORKER_CUSTOM, name, undefined, undefined, values));
  }

  /**
   * Adds tokens, cost or calls to the usage reported with the attempt's result.
   *
   * @throws RangeError A value that is not an integer (as {@link reportLlmCall}); nothing is added.
   */
  addUsage(usage: Partial<Usage>): void {
    const total = this.attemptState.usage;
    const next = { ...total };
    for (const name of USAGE_COUNTERS) next[name] = counter(name, total[name] + counter(name, usage[name]));
    Object.assign(total, next);
  }

  /**
   * This workflow's state document and memory, with each patch recorded as
   * written by this attempt (refused, TASK_NOT_HELD, once the attempt is no
   * longer held). Same as `client.state.forTask(ctx)`.
   */
  get state(): BoundState {
    this.boundState ??= this.attemptState.client.state.forTask(this);
    return this.boundState;
  }

  /** Adds tasks to this workflow as children of this attempt and returns their ids. */
  spawn(tasks: readonly TaskSpec[], options: Omit<SpawnOptions, "parentTaskId" | "parentAttempt"> = {}): Promise<string[]> {
    const client = this.attemptState.client;
    return spawnTasks(client.raw.scheduler, client.rpc, this.workflowId, tasks, {
      ...options,
      parentTaskId: this.taskId,
      parentAttempt: this.attempt,
    });
  }

  private event(
    type: EventType,
    name: string,
    durationMs: number | undefined,
    usage: Usage | undefined,
    attributes: { [key: string]: AttributeValue },
  ): ReportedEvent {
    return {
      workflowId: this.workflowId,
      taskId: this.taskId,
      attempt: this.attempt,
      eventType: type,
      eventTime: new Date(),
      name,
      duration: toDuration(durationMs),
      usage,
      failure: undefined,
      attributes,
      spanId: "",
    };
  }
}

/**
 * An event attribute's value (event.proto AttributeValue): a string (at most 16 KiB), a boolean,
 * or a finite number. A safe integer (`3`, and so `3.0`, which JavaScript cannot tell apart) is
 * sent as an int64, any other number as a double; a bigint must be a safe integer.
 */
export type AttributeScalar = string | number | boolean | bigint;

/** What {@link TaskContext.reportLlmCall} takes besides the model. */
export interface LlmCallOptions {
  /** Input (prompt) tokens; an integer. */
  inputTokens?: number;
  /** Output (completion) tokens; an integer. */
  outputTokens?: number;
  /** The call's cost in micro-USD; an integer. */
  costMicroUsd?: number;
  /** How long the call took, in milliseconds. */
  durationMs?: number;
  /** The provider ("openai", "anthropic", ...): the attribute "gen_ai.system". */
  provider?: string;
  /** The model that answered, if more precise than the one asked for: "gen_ai.response.model". */
  responseModel?: string;
  /** Further attributes; a key given here wins over the GenAI one above. */
  attributes?: Readonly<Record<string, AttributeScalar>>;
}

/** What {@link TaskContext.reportToolCall} takes besides the tool's name. */
export interface ToolCallOptions {
  /** How long the call took, in milliseconds. */
  durationMs?: number;
  /** The model's id for the call: the attribute "gen_ai.tool.call.id". */
  callId?: string;
  /** Further attributes, as {@link LlmCallOptions.attributes}. */
  attributes?: Readonly<Record<string, AttributeScalar>>;
}

/**
 * The attributes of a reported event: the non-empty GenAI ones, then `attributes` over them. A
 * value the contract cannot carry is refused here, in the handler: sent, a fraction or an unsafe
 * integer in an int64 would fail the encoding of the whole batch, and a non-finite double is
 * refused by the sidecar.
 */
function eventAttributes(
  genAi: Record<string, string | undefined>,
  attributes: Readonly<Record<string, AttributeScalar>> | undefined,
): { [key: string]: AttributeValue } {
  const out: { [key: string]: AttributeValue } = {};
  for (const [key, value] of Object.entries(genAi)) {
    if (value) out[key] = { stringValue: value };
  }
  for (const [key, value] of Object.entries(attributes ?? {})) out[key] = attributeValue(key, value);
  return out;
}

function attributeValue(key: string, value: unknown): AttributeValue {
  switch (typeof value) {
    case "string":
      return { stringValue: value };
    case "boolean":
      return { boolValue: value };
    case "bigint":
      if (value < BigInt(Number.MIN_SAFE_INTEGER) || value > BigInt(Number.MAX_SAFE_INTEGER)) {
        throw new RangeError(`attribute ${JSON.stringify(key)} is ${value}: a bigint attribute must be a safe integer`);
      }
      return { intValue: Number(value) };
    case "number":
      if (!Number.isFinite(value)) {
        throw new RangeError(`attribute ${JSON.stringify(key)} is ${value}: event attributes must be finite numbers`);
      }
      return Number.isSafeInteger(value) ? { intValue: value } : { doubleValue: value };
    default: {
      const kind = value === null ? "null" : Array.isArray(value) ? "array" : typeof value;
      throw new TypeError(
        `attribute ${JSON.stringify(key)} is ${kind === "array" ? "an" : "a"} ${kind}: give a string, number, boolean or bigint`,
      );
    }
  }
}

/** The counters of a Usage. */
const USAGE_COUNTERS = ["inputTokens", "outputTokens", "costMicroUsd", "llmCalls", "toolCalls"] as const;

/**
 * A usage counter as the contract's int64 fields take it (undefined as 0). A fraction (a cost
 * computed as tokens times a price), NaN or an integer beyond 2^53 is refused here, in the
 * handler: sent, it would fail the encoding of the whole message, which on the stream transport
 * ends the stream and loses every attempt the worker holds, and on the unary one leaves the
 * attempt RUNNING with its result never recorded.
 */
function counter(name: string, value: number | undefined): number {
  if (value === undefined) return 0;
  if (!Number.isSafeInteger(value)) {
    throw new RangeError(`${name} must be an integer (round a cost to the nearest micro-USD), got ${textOf(value)}`);
  }
  return value;
}

/** One running attempt: its controllers, queued reports and usage. @internal */
class Attempt implements StreamAttempt {
  readonly controller = new AbortController();
  /** Stops the heartbeat loop once the handler has settled. */
  readonly finished = new AbortController();
  readonly usage: Usage = { inputTokens: 0, outputTokens: 0, costMicroUsd: 0, llmCalls: 0, toolCalls: 0 };
  events: ReportedEvent[] = [];
  details: Payload | undefined;
  cancelKind: TaskCancelKind | undefined;
  /** The sidecar took the attempt back (stream transport): no result is reported. */
  lost = false;
  /** The stream holding the attempt; undefined on the unary transport. */
  session: StreamSession | undefined;
  /** The worker is done with the attempt: its result reported, or the attempt dropped. */
  done: Promise<void> = Promise.resolve();
  /** The handler has returned (or was never called); it may be long after `done`. */
  returned: Promise<void> = Promise.resolve();
  /** The attempt took one of the worker's slots (given back once `done` and `returned`). */
  holdsSlot = false;
  /** Sends one heartbeat now (set by the worker). */
  beat: () => Promise<void> = () => Promise.resolve();
  /**
   * The worker is done with the attempt (its result reported, or the attempt lost): nothing it
   * queues can be sent any more. A handler that runs on (one that ignored its signal, or left
   * work behind that reports) has its events and heartbeat details dropped, not kept.
   */
  private over = false;
  /** Drops were logged once already (a handler reporting fast would log a line per event). */
  private dropsLogged = false;

  constructor(
    readonly client: Client,
    readonly assignment: TaskAssignment,
    private readonly warn: (message: string) => void,
  ) {}

  get label(): string {
    const a = this.assignment;
    return `${a.workflowId}/${a.taskId} attempt ${a.attempt}`;
  }

  queueEvent(event: ReportedEvent): void {
    if (this.over) {
      this.dropped(`events reported after ${this.label} was over are dropped`);
      return;
    }
    if (this.events.length >= MAX_QUEUED_EVENTS) {
      this.events.shift();
      this.dropped(`more than ${MAX_QUEUED_EVENTS} unsent events for ${this.label}; dropping the oldest`);
    }
    this.events.push(event);
  }

  /** Keeps progress details for the next heartbeat; dropped once the attempt is over. */
  setDetails(details: Payload): void {
    if (this.over) return;
    const size = details.data?.length ?? 0;
    if (size > MAX_HEARTBEAT_DETAILS) {
      // The sidecar refuses such a heartbeat, and would every one after it: keep the details
      // recorded before.
      this.warn(`heartbeat details of ${size} bytes dropped (at most ${MAX_HEARTBEAT_DETAILS}): keep progress small`);
      return;
    }
    this.details = details;
  }

  /** The worker is done with the attempt: what is still queued is dropped, and so is what comes later. */
  close(): void {
    this.over = true;
    this.events = [];
    this.details = undefined;
  }

  private dropped(message: string): void {
    if (this.dropsLogged) return;
    this.dropsLogged = true;
    this.warn(`worker: ${message}`);
  }

  lose(kind: "CANCEL_REQUESTED" | "NOT_HELD" | "TIMED_OUT", message: string): void {
    this.lost = true;
    this.cancel(kind, message);
  }

  cancel(kind: TaskCancelKind, message: string): void {
    if (this.controller.signal.aborted) return;
    this.cancelKind = kind;
    this.controller.abort(new TaskCancelledError(kind, message));
  }
}

/** Runs `promise`, or rejects with the signal's reason as soon as it aborts (the promise is then abandoned). */
function raceAbort<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) {
    promise.catch(() => undefined);
    return Promise.reject(signal.reason);
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(error);
      },
    );
  });
}

/** A result's ack as the unary path's outcome: resolves when accepted, throws the refusal as an AreError. */
function ackOutcome(ack: TaskAck | undefined): void {
  if (ack === undefined) throw new AreError(Code.UNAVAILABLE, "the worker stream ended before the result was acknowledged");
  if (ack.accepted) return;
  const reason = ErrorReason[ack.reason]?.replace(/^ERROR_REASON_/, "") ?? `${ack.reason}`;
  throw new AreError(Code.FAILED_PRECONDITION, ack.message || "refused", { reason });
}

/** The failure type an attempt is reported failed with when the sidecar refuses its completion as invalid. */
const COMPLETION_REFUSED = "CompletionRefused";
/** Refusals meaning the attempt is no longer this worker's; any other refusal of a result left it held. */
const GONE_REASONS = new Set(["TASK_NOT_HELD", "TASK_ALREADY_COMPLETED", "TASK_NOT_FOUND", "WORKFLOW_NOT_FOUND"]);

/**
 * Whether a completion's refusal was of the item itself (a bad field, a patch that does not
 * apply, a missing blob: a stream ack, or a unary call's INVALID_ARGUMENT, FAILED_PRECONDITION
 * or NOT_FOUND with a reason), which changes nothing and leaves the attempt held.
 */
function refusedAsInvalid(error: unknown): boolean {
  if (!(error instanceof AreError) || error.reason === "" || GONE_REASONS.has(error.reason)) return false;
  return error.code === Code.INVALID_ARGUMENT || error.code === Code.FAILED_PRECONDITION || error.code === Code.NOT_FOUND;
}

/** A usage with any negative counter (itself a reason to refuse a result) as 0, so that it is not refused again. */
function nonNegative(usage: Usage | undefined): Usage | undefined {
  if (usage === undefined) return undefined;
  const { inputTokens, outputTokens, costMicroUsd, llmCalls, toolCalls } = usage;
  return {
    inputTokens: Math.max(0, inputTokens),
    outputTokens: Math.max(0, outputTokens),
    costMicroUsd: Math.max(0, costMicroUsd),
    llmCalls: Math.max(0, llmCalls),
    toolCalls: Math.max(0, toolCalls),
  };
}

/** The failure reported in place of a refused completion: retryable by policy, quoting the refusal (which names the field). */
function completionRefusedFailure(error: AreError): Failure {
  return Failure.fromPartial({
    message: `the sidecar refused the completion (${error.reason}): ${error.details}`.slice(0, MAX_MESSAGE),
    type: COMPLETION_REFUSED,
    nonRetryable: false,
    kind: FailureKind.FAILURE_KIND_APPLICATION,
  });
}

/** `text` with any lone surrogate (which cannot be UTF-8) as U+FFFD, as the encoder would send it. */
function wellFormed(text: string): string {
  return text.replace(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, "\uFFFD");
}

/** The number of characters (code points) of `text`. */
function codePoints(text: string): number {
  let count = 0;
  for (const _ of text) count += 1;
  return count;
}

/** `text` cut to at most `n` characters (code points), never inside a surrogate pair. */
function cutCodePoints(text: string, n: number): string {
  if (text.length <= n) return text;
  let end = 0;
  for (const char of text) {
    if (n === 0) break;
    end += char.length;
    n -= 1;
  }
  return text.slice(0, end);
}

/**
 * One Failure, not its causes, fitted to the sidecar's bounds: strings well formed, the type cut to
 * 256 characters; details by reference, over 1 MiB or with a content type over 128 characters
 * dropped, saying so in the message (the sidecar cuts a long message or stack trace, never refusing it).
 */
function fitOne(failure: Failure): Failure {
  let message = wellFormed(failure.message);
  let details = failure.details;
  let why: string | undefined;
  if (details?.blob !== undefined) {
    why = `details by reference (${details.blob.sizeBytes} bytes) dropped: inline only`;
  } else if (details?.data !== undefined && details.data.length > MAX_FAILURE_DETAILS) {
    why = `details of ${details.data.length} bytes dropped: over 1 MiB`;
  } else if (details !== undefined && codePoints(wellFormed(details.contentType)) > MAX_DETAILS_CONTENT_TYPE) {
    why = `details dropped: content type of ${codePoints(wellFormed(details.contentType))} characters, over 128`;
  } else if (details !== undefined) {
    details = { ...details, contentType: wellFormed(details.contentType) };
  }
  if (why !== undefined) {
    details = undefined;
    message = `${message} (${why})`;
  }
  return {
    ...failure,
    message,
    type: cutCodePoints(wellFormed(failure.type), MAX_FAILURE_TYPE),
    details,
    stackTrace: wellFormed(failure.stackTrace),
    cause: undefined,
  };
}

/**
 * A Failure fitted to the bounds the sidecar refuses beyond (see fitOne), with at most 8 causes,
 * dropped from the deepest while the whole is over 1 MiB; the deepest cause kept says how many
 * were dropped and why, as the sidecar would (see fitChain).
 */
function fitFailure(failure: Failure): Failure {
  const levels: Failure[] = [];
  let tooDeep = 0;
  for (let f: Failure | undefined = failure; f !== undefined && tooDeep < MAX_COUNTED_CAUSES; f = f.cause) {
    if (levels.length <= MAX_FAILURE_CAUSES) levels.push(f);
    else tooDeep += 1;
  }
  return fitChain(levels, tooDeep, tooDeep === MAX_COUNTED_CAUSES);
}

/**
 * The levels of a failure (outermost first, their own causes ignored) linked into one, each fitted
 * (see fitOne), its deepest causes dropped while the whole is over 1 MiB. When causes were dropped
 * (`tooDeep` of them below the levels given, more if `atLeast`, and any dropped here for size),
 * the deepest level kept says so at the end of its message, in the sidecar's words.
 */
function fitChain(levels: readonly Failure[], tooDeep: number, atLeast: boolean): Failure {
  const fitted = levels.map((level) => fitOne(level));
  let tooBig = 0;
  for (;;) {
    let whole: Failure | undefined;
    for (let i = fitted.length - 1; i >= 0; i -= 1) {
      const one = fitted[i]!;
      if (whole !== undefined) whole = { ...one, cause: whole };
      else if (tooDeep + tooBig > 0) whole = { ...one, message: noted(one.message, causesNote(tooDeep, tooBig, atLeast)) };
      else whole = one;
    }
    if (fitted.length === 1 || Failure.encode(whole!).finish().length <= MAX_FAILURE_DETAILS) return whole!;
    fitted.pop();
    tooBig += 1;
  }
}

/** How many causes below the deepest kept one were dropped, and why, as the sidecar says it (`_causes_note`). */
function causesNote(tooDeep: number, tooBig: number, atLeast: boolean): string {
  const why: string[] = [];
  if (tooDeep > 0) why.push(`causes nest at most ${MAX_FAILURE_CAUSES} deep`);
  if (tooBig > 0) why.push("a failure with its causes is at most 1 MiB");
  const count = tooDeep + tooBig;
  return `[${count}${atLeast ? " or more" : ""} deeper cause${count > 1 || atLeast ? "s" : ""} dropped: ${why.join("; ")}]`;
}

/**
 * `message` with `note` appended, the message cut (whole characters) so that both fit in the
 * 32 KiB of UTF-8 the sidecar keeps: the note is never the part cut off.
 */
function noted(message: string, note: string): string {
  if (message === "") return note;
  let room = MAX_MESSAGE_BYTES - Buffer.byteLength(note, "utf8") - 1;
  let end = 0;
  for (const char of message) {
    const cp = char.codePointAt(0)!;
    room -= cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    if (room < 0) break;
    end += char.length;
  }
  return `${message.slice(0, end)} ${note}`;
}

/**
 * A failure report fitted to the sidecar's bounds, so that it is never refused for its shape: its
 * failure as fitFailure, any negative usage counter as 0, a negative retry delay as none.
 */
function fitReport(report: NonNullable<FailTaskRequest["failure"]>): NonNullable<FailTaskRequest["failure"]> {
  const delay = report.retryAfter;
  const validDelay =
    delay === undefined ||
    (Number.isInteger(delay.seconds) &&
      Number.isInteger(delay.nanos) &&
      delay.seconds >= 0 &&
      delay.seconds <= MAX_DURATION_SECONDS &&
      delay.nanos >= 0 &&
      delay.nanos < 1e9);
  return {
    ...report,
    failure: report.failure === undefined ? undefined : fitFailure(report.failure),
    usage: nonNegative(report.usage),
    retryAfter: validDelay ? delay : undefined,
  };
}

/** A retry hint in milliseconds as a Duration: none for a negative, non-finite or non-number one, a huge one as the largest. */
function retryDelay(ms: unknown): ReturnType<typeof toDuration> {
  if (typeof ms !== "number" || !(ms > 0)) return undefined;
  if (ms >= MAX_DURATION_SECONDS * 1000) return { seconds: MAX_DURATION_SECONDS, nanos: 0 };
  const duration = toDuration(ms)!;
  return duration.nanos >= 1e9 ? { seconds: duration.seconds + 1, nanos: duration.nanos - 1e9 } : duration;
}

/**
 * The least delay before a retry that a handler's error asks for, as the failure's `retry_after`:
 * a {@link TaskError}'s `retryAfterMs`, or the sidecar's hint on a call the handler made (an
 * {@link AreError} such as a spawn refused RESOURCE_EXHAUSTED while the open tasks are at their
 * bound), as the Python SDK passes an RpcError's on. Never throws.
 */
function retryHint(error: unknown): ReturnType<typeof toDuration> {
  try {
    return error instanceof TaskError || error instanceof AreError ? retryDelay(error.retryAfterMs) : undefined;
  } catch {
    return undefined; // a revoked Proxy, a getter that throws: no hint
  }
}

/** `String(value)`, or a description that never throws (a thrown value's toString may throw, or be missing). */
function textOf(value: unknown): string {
  try {
    return String(value);
  } catch {
    // Object.create(null), a toString that throws: fall through
  }
  try {
    return Object.prototype.toString.call(value);
  } catch {
    return typeof value; // a revoked Proxy
  }
}

/** An error's message (any thrown value's text) for a log line; never throws. */
function messageOf(error: unknown): string {
  try {
    return textOf(error instanceof Error ? error.message : error);
  } catch {
    return `${typeName(error)} (its message could not be read)`;
  }
}

/** The class name of what a handler threw ("Error" for anything but an Error); never throws. */
function typeName(error: unknown): string {
  try {
    const name: unknown = error instanceof Error ? error.constructor?.name : undefined;
    return typeof name === "string" && name !== "" ? name : "Error";
  } catch {
    return "Error";
  }
}

/**
 * The Failure of what a handler threw (any value, not only an Error). It never throws: an attempt
 * must always be reported, or it would stay RUNNING, held by this worker, until its lease ended.
 * When the value cannot be read (a message, stack or type getter that throws, a revoked Proxy),
 * the failure says so with its class name alone, as the Python SDK's does.
 */
function failureFromError(error: unknown): Failure {
  let failure: Failure;
  try {
    failure = failureOf(error);
  } catch {
    const type = typeName(error);
    failure = Failure.fromPartial({
      message: `${type} (its message could not be read)`,
      type,
      kind: FailureKind.FAILURE_KIND_APPLICATION,
    });
  }
  try {
    return withCauses(failure, error);
  } catch {
    return failure; // never expected (each read is guarded): the failure goes without its causes
  }
}

/**
 * `failure` (what a handler threw) with the thrown value's causes (its `cause`, that one's
 * `cause`, ..., outermost first) as its nested causes, fitted as fitFailure does: at most 8 causes,
 * the deepest kept one saying how many more there were (counted up to 10,000). A `cause` is
 * followed on any object (an Error chiefly, one from another realm too) and only when present: a
 * cause of `undefined` or `null` is none, and a primitive cause ends the chain. A cause met before
 * ends it (a cycle), and so does a `cause` getter that throws. An AggregateError's `errors` are
 * not followed, only its `cause`: a Failure has one cause, not a list. Each cause has a message,
 * a type and a stack trace as the failure has (see causeFailure). Never throws.
 */
function withCauses(failure: Failure, error: unknown): Failure {
  const levels: Failure[] = [failure];
  const seen = new Set<unknown>([error]);
  let tooDeep = 0;
  for (let link = causeOf(error); link !== undefined && !seen.has(link.value); link = causeOf(link.value)) {
    seen.add(link.value);
    if (levels.length <= MAX_FAILURE_CAUSES) levels.push(causeFailure(link.value));
    else if (++tooDeep === MAX_COUNTED_CAUSES) break;
  }
  return fitChain(levels, tooDeep, tooDeep === MAX_COUNTED_CAUSES);
}

/**
 * The `cause` of a thrown value (boxed: a cause may be any value, `0` or `""` included), or
 * undefined when it has none: not an object, no cause, a cause of `undefined` or `null`, or one
 * that cannot be read (a getter that throws, a revoked Proxy).
 */
function causeOf(value: unknown): { value: unknown } | undefined {
  if (value === null || (typeof value !== "object" && typeof value !== "function")) return undefined;
  try {
    const cause: unknown = (value as { cause?: unknown }).cause;
    return cause === undefined || cause === null ? undefined : { value: cause };
  } catch {
    return undefined;
  }
}

/**
 * One cause of a handler's error as a Failure: its type (see causeType), its message (an Error's
 * `message`, else `String(value)`; read guarded as the failure's own is), and an Error's stack
 * trace, since a JavaScript stack does not show its causes' frames. Never throws.
 */
function causeFailure(cause: unknown): Failure {
  const type = causeType(cause);
  let message: string;
  try {
    message = (cause instanceof Error ? textOf(cause.message) : textOf(cause)).slice(0, MAX_MESSAGE) || type;
  } catch {
    message = `${type} (its message could not be read)`;
  }
  let stackTrace = "";
  try {
    const stack: unknown = cause instanceof Error ? cause.stack : undefined;
    if (typeof stack === "string") stackTrace = stack.slice(-MAX_STACK_TRACE);
  } catch {
    // a stack getter that throws: none
  }
  return Failure.fromPartial({ message, type, kind: FailureKind.FAILURE_KIND_APPLICATION, stackTrace });
}

/**
 * The type of one cause: a {@link TaskError}'s `type`; else, for an object, its constructor's
 * name (as the failure's own type, an Error's class name; "Object" when it has none); else the
 * primitive's `typeof` ("string", "number", ...). Never throws.
 */
function causeType(cause: unknown): string {
  if (typeof cause !== "object" && typeof cause !== "function") return typeof cause;
  try {
    if (cause instanceof TaskError) {
      const own: unknown = cause.type;
      if (typeof own === "string" && own !== "") return own;
    }
    const name: unknown = (cause as { constructor?: { name?: unknown } }).constructor?.name;
    if (typeof name === "string" && name !== "") return name;
    return cause instanceof Error ? "Error" : typeof cause === "function" ? "Function" : "Object";
  } catch {
    return typeof cause === "function" ? "Function" : "Object"; // a revoked Proxy, a getter that throws
  }
}

function failureOf(error: unknown): Failure {
  const asError = error instanceof Error ? error : undefined;
  const type = error instanceof TaskError ? textOf(error.type) : typeName(error);
  const message = (asError ? textOf(asError.message) : textOf(error)).slice(0, MAX_MESSAGE) || type;
  let details: Payload | undefined;
  if (error instanceof TaskError && error.details !== undefined) {
    try {
      details = encodePayload(error.details);
      if (typeof details.contentType !== "string") details = undefined;
    } catch {
      details = undefined; // details that cannot be encoded are dropped, the failure still goes
    }
  }
  const nonRetryable =
    error instanceof TaskError ? error.nonRetryable === true : (error as { nonRetryable?: unknown } | null | undefined)?.nonRetryable === true;
  const stack: unknown = asError?.stack;
  return {
    message,
    type,
    nonRetryable,
    details,
    cause: undefined,
    kind: FailureKind.FAILURE_KIND_APPLICATION,
    timeoutType: 0,
    stackTrace: typeof stack === "string" ? stack.slice(-MAX_STACK_TRACE) : "",
  };
}

/** A frozen copy of a card input, its lists and labels included. */
function copyCard(card: AgentCardInput): Readonly<AgentCardInput> {
  return Object.freeze({
    ...card,
    capabilities: card.capabilities === undefined ? undefined : Object.freeze([...card.capabilities]),
    vector: card.vector === undefined ? undefined : Object.freeze([...card.vector]),
    labels: card.labels === undefined ? undefined : Object.freeze({ ...card.labels }),
  });
}

/**
 * Runs task handlers for one or more capabilities; see the module documentation.
 */
export class Worker {
  readonly name: string;
  readonly maxConcurrency: number;
  readonly identity: string;
  /** The labels sent with the stream registration (a copy of the option's). */
  readonly labels: Readonly<Record<string, string>>;
  /** The card sent with the stream registration (a copy of the option's), if any. */
  readonly card: Readonly<AgentCardInput> | undefined;
  /** Counters since the worker was made. */
  readonly stats: WorkerStats = { completed: 0, failed: 0, cancelled: 0, polls: 0, connects: 0 };
  /** The transport (see {@link WorkerTransport}). */
  readonly transport: WorkerTransport;
  private readonly handlers = new Map<string, Handler>();
  private readonly declared: Set<string>;
  private readonly pollTimeoutMs: number;
  private readonly heartbeatIntervalMs: number;
  private readonly shutdownGraceMs: number;
  private readonly reconnectMaxDelayMs: number;
  private readonly logger: { warn: (message: string) => void };
  private readonly active = new Map<string, Attempt>();
  /**
   * Slots taken: attempts whose handler runs, or whose result is being reported. A slot is given
   * back once both are over; it outlives the run() that took it when its handler ignores its signal.
   */
  private slotsTaken = 0;
  /** Attempts waiting for a slot (stream transport), first come first served. */
  private readonly slotWaiters: (() => void)[] = [];
  /** Attempts whose handler has not returned yet, their attempt over or not. */
  private readonly handling = new Set<Attempt>();
  private running = false;
  private stopping = false;
  /** stop() was called; while not running, it makes the next run() return at once. */
  private stopAsked = false;
  private graceDeadline = 0;
  private stopController = new AbortController();
  private wakeSlot: (() => void) | undefined;
  private stopped: Promise<void> = Promise.resolve();
  private currentWorkerId = "";

  constructor(
    private readonly client: Client,
    options: WorkerOptions,
  ) {
    const maxConcurrency = options.maxConcurrency ?? 8;
    if (!Number.isInteger(maxConcurrency) || maxConcurrency < 1 || maxConcurrency > 10_000) {
      throw new RangeError(`maxConcurrency must be an integer from 1 to 10,000, got ${maxConcurrency}`);
    }
    const transport = options.transport ?? "stream";
    if (transport !== "stream" && transport !== "unary") {
      throw new RangeError(`transport must be "stream" or "unary", got ${JSON.stringify(transport)}`);
    }
    this.transport = transport;
    this.name = options.name;
    this.maxConcurrency = maxConcurrency;
    this.identity = options.identity ?? `${hostname()}:pid ${process.pid}`;
    this.labels = Object.freeze({ ...(options.labels ?? {}) });
    this.card = options.card === undefined ? undefined : copyCard(options.card);
    this.pollTimeoutMs = options.pollTimeoutMs ?? 10_000;
    if (!(this.pollTimeoutMs >= 1_500)) throw new RangeError(`pollTimeoutMs must be at least 1,500, got ${this.pollTimeoutMs}`);
    this.heartbeatIntervalMs = options.heartbeatIntervalMs ?? 2_000;
    this.shutdownGraceMs = options.shutdownGraceMs ?? 10_000;
    this.reconnectMaxDelayMs = options.reconnectMaxDelayMs ?? 5_000;
    this.logger = options.logger ?? console;
    this.declared = new Set(options.capabilities ?? []);
    for (const [capability, handler] of Object.entries(options.handlers ?? {})) this.handle(capability, handler);
  }

  /**
   * Sets the handler of `capability` (replacing any earlier one) and returns
   * the worker. `I` types `ctx.input` (a declaration, not a run-time check).
   */
  handle<I = unknown>(capability: string, handler: Handler<I>): this {
    this.handlers.set(capability, handler);
    return this;
  }

  /** Every capability declared: those with handlers and those given. */
  get capabilities(): string[] {
    return [...new Set([...this.declared, ...this.handlers.keys()])];
  }

  /** The id the sidecar uses for this worker in events and task statuses ("" before the first poll or registration). */
  get workerId(): string {
    return this.currentWorkerId;
  }

  /**
   * How many attempts the worker holds now: running, waiting for a slot or being reported.
   * Handlers running on after their attempt ended are not among them, but keep their slots.
   */
  get inFlight(): number {
    return this.active.size;
  }

  /** True between run() and the end of stop(). */
  get isRunning(): boolean {
    return this.running;
  }

  /**
   * Serves tasks until {@link stop} is called or `signal` aborts, then drains
   * (see {@link stop}) and resolves. Rejects with an {@link AreError} when
   * the sidecar refuses the worker for a reason that retrying cannot fix
   * (INVALID_ARGUMENT, UNAUTHENTICATED, PERMISSION_DENIED, UNIMPLEMENTED);
   * other errors (a restarting sidecar) are retried with backoff. After a
   * {@link stop} called while the worker was not running (a SIGTERM handler
   * that ran first), it returns at once without connecting.
   */
  async run(options: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.running) throw new Error(`worker ${this.name} is already running`);
    const capabilities = this.capabilities;
    if (capabilities.length === 0) throw new Error(`worker ${this.name} declares no capability; add a handler first`);
    this.running = true;
    this.stopping = false;
    this.stopController = new AbortController();
    let resolveStopped!: () => void;
    this.stopped = new Promise((resolve) => {
      resolveStopped = resolve;
    });
    const { signal } = options;
    const onAbort = (): void => void this.stop();
    signal?.addEventListener("abort", onAbort, { once: true });
    if (signal?.aborted || this.stopAsked) onAbort();
    let fatal: unknown;
    try {
      if (this.transport === "stream") await this.streamLoop(capabilities);
      else await this.pollLoop(capabilities);
    } catch (error) {
      fatal = error;
      this.stopping = true;
      this.graceDeadline = Date.now() + this.shutdownGraceMs;
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
    await this.drain(Math.max(0, this.graceDeadline - Date.now()));
    await this.awaitHandlers();
    this.running = false;
    this.stopAsked = false;
    resolveStopped();
    if (fatal !== undefined) throw fatal;
  }

  /**
   * Stops gracefully: no new poll is sent; the one in flight is not
   * cancelled (a cancelled poll could lose a task the sidecar had just
   * assigned, until its lease expired) but answers within `pollTimeoutMs`,
   * and what it brings runs like the rest. Running tasks get `graceMs`
   * (default `shutdownGraceMs`, counted from this call) to finish and
   * report; the rest are aborted (`ctx.signal`, kind WORKER_STOPPED) and
   * failed as retryable, so the sidecar retries them at once. Handlers that
   * ignore their signal get one second more to return, then run() resolves
   * without them, with a warning; they keep their slots until they return.
   * Resolves when run() has returned. Idempotent. Called while the worker is
   * not running, it is not lost: the next run() returns at once.
   */
  stop(options: { graceMs?: number } = {}): Promise<void> {
    this.stopAsked = true;
    if (!this.running) return this.stopped;
    if (!this.stopping) {
      this.stopping = true;
      this.graceDeadline = Date.now() + (options.graceMs ?? this.shutdownGraceMs);
      this.stopController.abort(new Error(`worker ${this.name} is stopping`));
      this.wake();
    }
    return this.stopped;
  }

  private wake(): void {
    const wake = this.wakeSlot;
    this.wakeSlot = undefined;
    wake?.();
  }

  private async pollLoop(capabilities: string[]): Promise<void> {
    let delay = 50;
    const stopSignal = this.stopController.signal;
    while (!this.stopping) {
      // Slots held by handlers running on after their attempt ended count: the poll asks for fewer.
      const free = this.maxConcurrency - this.slotsTaken - this.slotWaiters.length;
      if (free <= 0) {
        await new Promise<void>((resolve) => {
          this.wakeSlot = resolve;
        });
        continue;
      }
      let assignments: TaskAssignment[];
      try {
        const worker = this.client.raw.worker;
        this.stats.polls += 1;
        const response = await this.client.rpc.unary(
          worker.pollTask.bind(worker),
          PollTaskRequest.fromPartial({
            workerName: this.name,
            capabilities,
            maxTasks: Math.min(free, 100),
            identity: this.identity,
          }),
          { timeoutMs: this.pollTimeoutMs },
        );
        if (response.workerId) this.currentWorkerId = response.workerId;
        assignments = response.assignments;
        delay = 50;
      } catch (error) {
        if (this.stopping) return;
        if (error instanceof AreError && FATAL_CODES.has(error.code)) throw error;
        // CANCELLED comes from this side only: the client was closed under the worker.
        if (error instanceof AreError && error.code === Code.CANCELLED) throw error;
        if (error instanceof AreError && error.code === Code.DEADLINE_EXCEEDED) continue;
        this.logger.warn(`worker ${this.name}: poll failed (${(error as Error).message}); retrying`);
        try {
          await sleep(jitter(delay), stopSignal);
        } catch {
          return;
        }
        delay = Math.min(delay * 2, 5_000);
        continue;
      }
      for (const assignment of assignments) this.start(assignment);
    }
  }

  /**
   * Serves over `Connect` streams: registers, runs what the sidecar assigns
   * (it never assigns more than maxConcurrency at once), and reconnects with
   * full-jitter backoff when the stream breaks. On stop it drains: a
   * WorkerDrain, running handlers get their grace, their results are
   * acknowledged, then the stream is half-closed.
   */
  private async streamLoop(capabilities: string[]): Promise<void> {
    let delay = FIRST_RECONNECT_DELAY_MS;
    const stopSignal = this.stopController.signal;
    while (!this.stopping) {
      let session: StreamSession;
      try {
        session = await StreamSession.open(
          this.client,
          {
            workerName: this.name,
            capabilities,
            maxConcurrency: this.maxConcurrency,
            identity: this.identity,
            labels: { ...this.labels },
            agentCard: this.card === undefined ? undefined : cardMessage(this.card),
          },
          (assignment, session) => this.start(assignment, session),
          (message) => this.logger.warn(`worker ${this.name}: ${message}`),
          stopSignal,
        );
      } catch (error) {
        if (this.stopping) return;
        if (error instanceof AreError && (FATAL_CODES.has(error.code) || error.code === Code.CANCELLED)) throw error;
        this.logger.warn(`worker ${this.name}: could not open the worker stream (${messageOf(error)}); retrying`);
        if (!(await this.backoff(delay, error instanceof AreError ? error.retryAfterMs : undefined))) return;
        delay = Math.min(delay * 2, this.reconnectMaxDelayMs);
        continue;
      }
      this.stats.connects += 1;
      this.currentWorkerId = session.workerId;
      const opened = Date.now();
      let onAbort: (() => void) | undefined;
      const onStop = new Promise<undefined>((resolve) => {
        onAbort = () => resolve(undefined);
        stopSignal.addEventListener("abort", onAbort, { once: true });
      });
      const ended = await Promise.race([session.ended, stopSignal.aborted ? undefined : onStop]);
      if (onAbort) stopSignal.removeEventListener("abort", onAbort);
      if (ended === undefined) {
        session.drain(`worker ${this.name} is stopping`);
        // Within the worker's grace, and the sidecar's if it is draining too; assignments sent
        // before the sidecar read the drain still run.
        let deadline = this.graceDeadline;
        if (session.sidecarDrainDeadline !== undefined) deadline = Math.min(deadline, session.sidecarDrainDeadline);
        do await this.drain(Math.max(0, deadline - Date.now()));
        while (this.active.size > 0 && !session.isEnded);
        await session.close(5_000);
        return;
      }
      if (this.stopping) return;
      // CANCELLED comes from this side only: the client was closed under the worker.
      if (FATAL_CODES.has(ended.code) || ended.code === Code.CANCELLED) throw ended;
      // An OK status (the sidecar ended the stream: a drain, a failed commit) arrives as UNAVAILABLE.
      this.logger.warn(`worker ${this.name}: the worker stream ended (${ended.message}); reconnecting`);
      if (Date.now() - opened >= STABLE_SESSION_MS) delay = FIRST_RECONNECT_DELAY_MS;
      if (!(await this.backoff(delay, ended.retryAfterMs))) return;
      delay = Math.min(delay * 2, this.reconnectMaxDelayMs);
    }
  }

  /**
   * Sleeps before reopening the stream: a full-jitter `delayMs`, or at least the sidecar's retry
   * hint when its refusal carried one (its worker bound reached: 5 s); false when the worker
   * stops meanwhile.
   */
  private async backoff(delayMs: number, hintMs: number | undefined): Promise<boolean> {
    try {
      await sleep(retryWait(delayMs, hintMs), this.stopController.signal);
      return true;
    } catch {
      return false;
    }
  }

  private start(assignment: TaskAssignment, session?: StreamSession): void {
    const attempt = new Attempt(this.client, assignment, (message) => this.logger.warn(message));
    attempt.session = session;
    attempt.beat = () => this.sendHeartbeat(attempt, 10_000);
    const key = attemptKey(assignment);
    this.active.set(key, attempt);
    session?.hold(attempt); // heartbeated from now on, while it waits for a slot too
    const slot = this.takeSlot(attempt);
    attempt.done = this.execute(attempt, slot)
      .catch((error: unknown) => this.logger.warn(`worker ${this.name}: ${attempt.label}: ${messageOf(error)}`))
      .finally(() => {
        attempt.close();
        session?.release(attempt);
        if (this.active.get(key) === attempt) this.active.delete(key);
        this.wake();
      });
    void attempt.done.then(() => this.settle(attempt));
  }

  /**
   * Resolves once `attempt` holds a slot: at once when one is free, else when one is given back
   * (first come, first served). Rejects with its signal's reason when the attempt ends first.
   */
  private takeSlot(attempt: Attempt): Promise<void> {
    const signal = attempt.controller.signal;
    if (signal.aborted) return Promise.reject(signal.reason);
    if (this.slotsTaken < this.maxConcurrency && this.slotWaiters.length === 0) {
      this.slotsTaken += 1;
      attempt.holdsSlot = true;
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      const take = (): void => {
        signal.removeEventListener("abort", onAbort);
        attempt.holdsSlot = true;
        resolve();
      };
      const onAbort = (): void => {
        const at = this.slotWaiters.indexOf(take);
        if (at >= 0) this.slotWaiters.splice(at, 1);
        reject(signal.reason);
      };
      signal.addEventListener("abort", onAbort, { once: true });
      this.slotWaiters.push(take);
    });
  }

  /** Gives a slot back: to the attempt that has waited longest, else to the pool (waking the poll loop). */
  private giveSlot(): void {
    const take = this.slotWaiters.shift();
    if (take !== undefined) {
      take();
      return;
    }
    this.slotsTaken -= 1;
    this.wake();
  }

  /**
   * Once the worker is done with an attempt, gives its slot back when its handler has returned: a
   * handler that ignores its signal keeps it. One still running a moment later is warned about.
   */
  private async settle(attempt: Attempt): Promise<void> {
    if (this.handling.has(attempt)) {
      const timer = setTimeout(() => {
        this.logger.warn(
          `worker ${this.name}: the handler of ${attempt.label} is still running ${RUN_ON_WAIT_MS} ms after the attempt ended ` +
            `(${attempt.cancelKind ?? "reported"}): it ignores ctx.signal, and keeps its slot until it returns`,
        );
      }, RUN_ON_WAIT_MS);
      timer.unref();
      await attempt.returned;
      clearTimeout(timer);
    }
    if (attempt.holdsSlot) this.giveSlot();
  }

  /**
   * Gives the handlers still running once the worker has stopped (their attempts are over: they
   * ignore their signal) a moment to return, then warns of those that did not; run() returns
   * without them, as the Go SDK's does. They keep their slots until they return.
   */
  private async awaitHandlers(): Promise<void> {
    if (this.handling.size === 0) return;
    const returned = Promise.all([...this.handling].map((attempt) => attempt.returned));
    const timer = new AbortController();
    await Promise.race([returned, sleep(RUN_ON_WAIT_MS, timer.signal).catch(() => undefined)]);
    timer.abort();
    if (this.handling.size > 0) {
      this.logger.warn(
        `worker ${this.name}: ${this.handling.size} handler(s) still running after the worker stopped: ` +
          "they ignore ctx.signal, and what they return is not reported",
      );
    }
  }

  private async drain(graceMs: number): Promise<void> {
    if (this.active.size === 0) return;
    const all = Promise.allSettled([...this.active.values()].map((attempt) => attempt.done));
    const timer = new AbortController();
    await Promise.race([all, sleep(graceMs, timer.signal).catch(() => undefined)]);
    timer.abort();
    for (const attempt of this.active.values()) {
      attempt.cancel("WORKER_STOPPED", `worker ${this.name} stopped before the task finished`);
    }
    await all;
  }

  private async execute(attempt: Attempt, slot: Promise<void>): Promise<void> {
    const { assignment } = attempt;
    const beats = this.heartbeatLoop(attempt);
    let deadlineTimer: NodeJS.Timeout | undefined;
    if (assignment.deadlineTime) {
      const remaining = assignment.deadlineTime.getTime() - Date.now();
      deadlineTimer = setTimeout(() => attempt.cancel("TIMED_OUT", "the attempt's start-to-close deadline passed"), Math.max(0, remaining));
      deadlineTimer.unref();
    }
    let outcome: { ok: true; value: unknown } | { ok: false; error: unknown };
    try {
      await slot; // rejects when the attempt ends first: its handler is never called
      const ctx = new TaskContext(attempt, await this.inlineBlobs(assignment, attempt.controller.signal));
      const handler = this.handlers.get(assignment.capability);
      const run = handler
        ? Promise.resolve().then(() => handler(ctx))
        : Promise.reject(new NonRetryableError(`worker ${this.name} has no handler for ${JSON.stringify(assignment.capability)}`));
      this.handling.add(attempt);
      attempt.returned = run.then(
        () => void this.handling.delete(attempt),
        () => void this.handling.delete(attempt),
      );
      outcome = { ok: true, value: await raceAbort(run, attempt.controller.signal) };
    } catch (error) {
      outcome = { ok: false, error };
    } finally {
      attempt.finished.abort();
      clearTimeout(deadlineTimer);
    }
    await beats;
    const base = { workflowId: assignment.workflowId, taskId: assignment.taskId, attempt: assignment.attempt };
    if (attempt.cancelKind !== undefined) {
      this.stats.cancelled += 1;
      if (attempt.lost) return; // the sidecar took it back: a result would be refused
      if (attempt.cancelKind === "CANCEL_REQUESTED" || attempt.cancelKind === "WORKER_STOPPED") {
        // The contract asks for a CANCELLED failure after cancel_requested; a stopping worker hands
        // its task back as a retryable failure so the sidecar retries it now, not at lease expiry.
        const cancelled = attempt.cancelKind === "CANCEL_REQUESTED";
        const failure: Failure = {
          ...failureFromError(attempt.controller.signal.reason),
          type: cancelled ? "CANCELLED" : "WORKER_STOPPED",
          kind: cancelled ? FailureKind.FAILURE_KIND_CANCELLED : FailureKind.FAILURE_KIND_APPLICATION,
        };
        await this.report("fail", attempt, () => this.failTask(attempt, { ...base, failure, usage: attempt.usage, retryAfter: undefined }), true);
      }
      return;
    }
    await this.flushEvents(attempt);
    if (outcome.ok) {
      let completion: CompleteTaskRequest | undefined;
      try {
        completion = await this.completion(attempt, outcome.value);
      } catch (error) {
        // An output that cannot be sent (not JSON-serialisable, a failed blob upload) fails the attempt.
        outcome = { ok: false, error };
      }
      if (completion !== undefined) {
        const request = completion;
        let refusal: unknown;
        const recorded = await this.report("complete", attempt, () => this.completeTask(attempt, request), false, (error) => {
          refusal = error;
        });
        if (recorded) {
          this.stats.completed += 1;
        } else if (refusedAsInvalid(refusal)) {
          // An invalid completion changed nothing and the attempt is still held: report it failed
          // instead, once (a refused failure is only logged), with the usage the completion carried.
          const failure = completionRefusedFailure(refusal as AreError);
          const usage = nonNegative(request.completion?.usage);
          if (await this.report("fail", attempt, () => this.failTask(attempt, { ...base, failure, usage, retryAfter: undefined }))) {
            this.stats.failed += 1;
          }
        }
        return;
      }
    }
    if (!outcome.ok) {
      const error = outcome.error;
      const retryAfter = retryHint(error);
      const failure = failureFromError(error);
      if (await this.report("fail", attempt, () => this.failTask(attempt, { ...base, failure, usage: attempt.usage, retryAfter }))) {
        this.stats.failed += 1;
      }
    }
  }

  private async completion(attempt: Attempt, value: unknown): Promise<CompleteTaskRequest> {
    const { assignment } = attempt;
    let output: unknown = value;
    let contentType: string | undefined;
    let stateMergePatch: Record<string, unknown> | undefined;
    if (value instanceof TaskResult) {
      output = value.output;
      contentType = value.options.contentType;
      stateMergePatch = value.options.stateMergePatch;
    }
    let payload = output === undefined && contentType === undefined ? undefined : encodePayload(output ?? null, contentType);
    if (payload?.data !== undefined && payload.data.length > MAX_INLINE_BYTES) {
      const ref = await this.client.blobs.put(payload.data, { contentType: payload.contentType, workflowId: assignment.workflowId });
      payload = encodePayload(ref, payload.contentType);
    }
    return CompleteTaskRequest.fromPartial({
      completion: {
        workflowId: assignment.workflowId,
        taskId: assignment.taskId,
        attempt: assignment.attempt,
        output: payload,
        usage: attempt.usage,
        statePatch: stateMergePatch ? { mergePatchJson: Buffer.from(JSON.stringify(stateMergePatch), "utf8") } : undefined,
      },
    });
  }

  private async completeTask(attempt: Attempt, request: CompleteTaskRequest): Promise<void> {
    if (attempt.session !== undefined && request.completion !== undefined) {
      return ackOutcome(await attempt.session.complete(request.completion));
    }
    const worker = this.client.raw.worker;
    await this.client.rpc.unary(worker.completeTask.bind(worker), request);
  }

  private async failTask(attempt: Attempt, report: FailTaskRequest["failure"]): Promise<void> {
    const failure = report === undefined ? undefined : fitReport(report);
    if (attempt.session !== undefined && failure !== undefined) {
      return ackOutcome(await attempt.session.fail(FailTaskRequest.fromPartial({ failure }).failure!));
    }
    const worker = this.client.raw.worker;
    await this.client.rpc.unary(worker.failTask.bind(worker), FailTaskRequest.fromPartial({ failure }));
  }

  /**
   * Sends a result, retrying a few times while the sidecar is unreachable
   * (it may be restarting). A refusal (TASK_NOT_HELD, ...) is logged, not
   * thrown: the first recorded result stands; `refused` receives the error
   * given up on. Returns whether it was recorded.
   */
  private async report(
    what: string,
    attempt: Attempt,
    send: () => Promise<void>,
    quiet = false,
    refused?: (error: unknown) => void,
  ): Promise<boolean> {
    let delay = 100;
    for (let tries = 1; ; tries += 1) {
      try {
        await send();
        return true;
      } catch (error) {
        // On the stream a result is sent once: a broken stream released the lease, and a retry would be refused.
        const retryable =
          attempt.session === undefined &&
          error instanceof AreError &&
          (error.code === Code.UNAVAILABLE || error.code === Code.DEADLINE_EXCEEDED);
        if (tries > 1 && error instanceof AreError && error.reason === "TASK_ALREADY_COMPLETED") return true; // an earlier try landed
        if (!retryable || tries >= REPORT_ATTEMPTS) {
          if (!quiet) this.logger.warn(`worker ${this.name}: the sidecar refused to ${what} ${attempt.label}: ${(error as Error).message}`);
          refused?.(error);
          return false;
        }
      }
      await sleep(jitter(delay));
      delay *= 2;
    }
  }

  private async flushEvents(attempt: Attempt): Promise<void> {
    if (attempt.session !== undefined) {
      attempt.session.flushEvents(); // written before the attempt's result, in the stream's order
      return;
    }
    const worker = this.client.raw.worker;
    while (attempt.events.length > 0) {
      const batch = attempt.events.splice(0, MAX_EVENTS_PER_CALL);
      try {
        await this.client.rpc.unary(worker.reportEvents.bind(worker), ReportEventsRequest.fromPartial({ events: batch }));
      } catch (error) {
        this.logger.warn(`worker ${this.name}: events of ${attempt.label} were refused: ${(error as Error).message}`);
        return;
      }
    }
  }

  private async heartbeatLoop(attempt: Attempt): Promise<void> {
    if (attempt.session !== undefined) return; // the stream heartbeats its held attempts in batches
    const timeoutMs = fromDuration(attempt.assignment.heartbeatTimeout);
    const interval = Math.max(50, Math.min(this.heartbeatIntervalMs, timeoutMs ? timeoutMs / 3 : Infinity));
    const stop = attempt.finished.signal;
    while (!attempt.controller.signal.aborted) {
      try {
        await sleep(interval, stop);
      } catch {
        return;
      }
      await this.flushEvents(attempt);
      await this.sendHeartbeat(attempt, Math.max(5_000, interval));
    }
  }

  /** One RecordHeartbeat with the pending details; cancels the attempt when the sidecar says it is over. */
  private async sendHeartbeat(attempt: Attempt, timeoutMs: number): Promise<void> {
    const { assignment } = attempt;
    const stop = attempt.finished.signal;
    if (stop.aborted || attempt.controller.signal.aborted) return;
    if (attempt.session !== undefined) return attempt.session.beat(attempt);
    const worker = this.client.raw.worker;
    const details = attempt.details;
    attempt.details = undefined;
    try {
      const response = await this.client.rpc.unary(
        worker.recordHeartbeat.bind(worker),
        RecordHeartbeatRequest.fromPartial({
          heartbeat: { workflowId: assignment.workflowId, taskId: assignment.taskId, attempt: assignment.attempt, details },
        }),
        { signal: stop, timeoutMs },
      );
      if (response.cancelRequested) {
        attempt.cancel("CANCEL_REQUESTED", "the sidecar asked to stop: the workflow was cancelled or closed");
      }
    } catch (error) {
      if (stop.aborted) return;
      if (this.client.rpc.closed) {
        // The client was closed under the worker: nothing more can be sent for the attempt, and
        // the sidecar takes it back when its lease ends. Without this, a handler waiting on its
        // signal held its slot for good (run() never returned) and this warned every interval.
        attempt.lose("NOT_HELD", "the client was closed: the attempt can no longer be reported");
        return;
      }
      if (error instanceof AreError && (error.code === Code.FAILED_PRECONDITION || error.code === Code.NOT_FOUND)) {
        attempt.cancel("NOT_HELD", `the attempt is no longer held: ${error.details}${error.reason ? ` [${error.reason}]` : ""}`);
        return;
      }
      if (details !== undefined && attempt.details === undefined) attempt.setDetails(details); // send it next time
      this.logger.warn(`worker ${this.name}: heartbeat of ${attempt.label} failed: ${(error as Error).message}`);
    }
  }

  /** The assignment with blob inputs and dependency outputs fetched inline, so handlers see values. */
  private async inlineBlobs(assignment: TaskAssignment, signal: AbortSignal): Promise<TaskAssignment> {
    const payloads = [assignment.input, ...assignment.dependencies.map((d) => d.output)];
    if (!payloads.some((p) => p?.blob !== undefined)) return assignment;
    const fetched = new Map<string, Buffer>();
    const inline = async (payload: Payload | undefined): Promise<Payload | undefined> => {
      const blob = payload?.blob;
      if (payload === undefined || blob === undefined) return payload;
      let data = fetched.get(blob.sha256);
      if (data === undefined) {
        data = await this.client.blobs.get(blob.sha256, { signal });
        fetched.set(blob.sha256, data);
      }
      return { data, contentType: payload.contentType || blob.contentType || OCTET_STREAM };
    };
    const dependencies = [];
    for (const d of assignment.dependencies) dependencies.push({ ...d, output: await inline(d.output) });
    return { ...assignment, input: await inline(assignment.input), dependencies };
  }
}
