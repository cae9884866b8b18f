/**
 * The scheduler's facade: submit workflows and follow them (`client.workflows`).
 *
 * ```ts
 * const handle = await client.workflows.submit(spec);   // returns at once
 * for await (const update of handle.watch()) console.log(update.workflow.state);
 * const output = await handle.result({ timeoutMs: 60_000 }); // or WorkflowFailedError
 * ```
 *
 * @module
 */
import type { Blobs } from "./blobs.js";
import { AreError, Code, WaitTimeoutError, WorkflowSpecError, retryWait } from "./errors.js";
import type { Event } from "./gen/are/v1/event.js";
import {
  CancelWorkflowRequest,
  DeleteWorkflowRequest,
  GetTaskRequest,
  GetWorkflowRequest,
  ListApprovalsRequest,
  ListTasksRequest,
  ListWorkflowsRequest,
  ResolveApprovalRequest,
  SpawnTasksRequest,
  SubmitWorkflowRequest,
  WatchWorkflowRequest,
  type SchedulerServiceClient,
  type WatchWorkflowResponse,
} from "./gen/are/v1/scheduler_service.js";
import { ApprovalDecision, TaskState as TaskStateEnum } from "./gen/are/v1/task.js";
import { WorkflowState as WorkflowStateEnum, type WorkflowSpec as WorkflowSpecMessage } from "./gen/are/v1/workflow.js";
import { BlobReference, decodePayload } from "./payload.js";
import type { CallOptions, Rpc } from "./rpc.js";
import { WorkflowSpec, taskSpecMessage, taskViolations, type TaskSpec } from "./spec.js";
import { jitter, sleep, withTimeout } from "./time.js";
import { taskInfo, workflowInfo, type TaskInfo, type TaskState, type WorkflowInfo, type WorkflowState } from "./types.js";

const PAGE_SIZE = 1000;
const RESUME_INITIAL_DELAY_MS = 50;
const RESUME_MAX_DELAY_MS = 2000;
/** The longest one probe of a silent sidecar waits (see `WorkflowHandle.untilAnswering`). */
const PROBE_TIMEOUT_MS = 5_000;
/** The default of `reconnectWindowMs` (see `ConnectOptions`), as the Python SDK's `reconnect_window`. */
export const DEFAULT_RECONNECT_WINDOW_MS = 60_000;
/** A probe's errors that mean the sidecar has not answered (yet); any other is an answer. */
const SILENT_CODES = new Set<number>([Code.UNAVAILABLE, Code.CANCELLED, Code.DEADLINE_EXCEEDED]);
const CLOSED = new Set([
  WorkflowStateEnum.WORKFLOW_STATE_COMPLETED,
  WorkflowStateEnum.WORKFLOW_STATE_FAILED,
  WorkflowStateEnum.WORKFLOW_STATE_CANCELLED,
]);

/** `handle.result()` on a workflow that closed FAILED or CANCELLED; `workflow` says why. */
export class WorkflowFailedError extends AreError {
  readonly workflow: WorkflowInfo;

  constructor(workflow: WorkflowInfo) {
    const why = workflow.failure ? `: ${workflow.failure.type ? `${workflow.failure.type}: ` : ""}${workflow.failure.message}` : "";
    super(Code.FAILED_PRECONDITION, `workflow ${workflow.workflowId} closed ${workflow.state}${why}`);
    this.workflow = workflow;
  }
}

/** Options of a wait: an abort signal and a timeout. */
export interface WaitOptions {
  signal?: AbortSignal;
  /** Give up after this many milliseconds with {@link WaitTimeoutError}; default: no limit. */
  timeoutMs?: number;
}

/** One change of a watched workflow. */
export interface WorkflowUpdate {
  workflow: WorkflowInfo;
  /** The task that changed, with `includeTasks`. */
  task: TaskInfo | undefined;
  /** The event that recorded the change; undefined for the initial status. */
  event: Event | undefined;
  /** The cursor to resume from. */
  sequence: number;
}

/** Options of {@link WorkflowHandle.watch}. */
export interface WatchOptions {
  signal?: AbortSignal;
  /** Carry the task that changed in each update. */
  includeTasks?: boolean;
  /** Replay the changes recorded after this sequence first. */
  afterSequence?: number;
}

/** Options of {@link WorkflowHandle.spawn}. */
export interface SpawnOptions extends CallOptions {
  parentTaskId?: string;
  parentAttempt?: number;
  dependentsWait?: boolean;
  requestId?: string;
}

/** @internal Calls SpawnTasks after the client-side checks. */
export async function spawnTasks(
  raw: SchedulerServiceClient,
  rpc: Rpc,
  workflowId: string,
  tasks: readonly TaskSpec[],
  options: SpawnOptions,
): Promise<string[]> {
  // The workflow's own tasks are not known here: a spawned task may depend on any of them.
  const violations = taskViolations(tasks, "tasks", null);
  if (tasks.length === 0) violations.unshift({ field: "tasks", description: "spawn at least one task" });
  if (violations.length > 0) throw new WorkflowSpecError(violations);
  const response = await rpc.unary(
    raw.spawnTasks.bind(raw),
    SpawnTasksRequest.fromPartial({
      workflowId,
      parentTaskId: options.parentTaskId ?? "",
      parentAttempt: options.parentAttempt ?? 0,
      tasks: tasks.map(taskSpecMessage),
      dependentsWait: options.dependentsWait ?? false,
      requestId: options.requestId ?? "",
    }),
    options,
  );
  return response.taskIds;
}

/**
 * A submitted workflow. Creating one makes no call; get one from
 * `client.workflows.submit()` or `client.workflows.getHandle(id)`.
 */
export class WorkflowHandle {
  /** @internal */
  constructor(
    private readonly raw: SchedulerServiceClient,
    private readonly rpc: Rpc,
    private readonly blobs: Blobs,
    /** The workflow's id. */
    readonly workflowId: string,
    /** True when the submit matched an earlier requestId and created nothing. */
    readonly deduplicated = false,
    /** The scheduler on the client's channel for waits (see `Client`); `raw` when none. */
    private readonly watches: SchedulerServiceClient = raw,
    /** How long a dropped watch keeps resuming while the sidecar does not answer (`ConnectOptions.reconnectWindowMs`). */
    private readonly reconnectWindowMs: number = DEFAULT_RECONNECT_WINDOW_MS,
  ) {}

  /** The workflow's current status; `AreError` NOT_FOUND (WORKFLOW_NOT_FOUND) if there is none. */
  async get(options: CallOptions = {}): Promise<WorkflowInfo> {
    const response = await this.rpc.unary(
      this.raw.getWorkflow.bind(this.raw),
      GetWorkflowRequest.fromPartial({ workflowId: this.workflowId }),
      options,
    );
    if (!response.workflow) throw new AreError(Code.INTERNAL, "GetWorkflow answered without a workflow");
    return workflowInfo(response.workflow);
  }

  /**
   * Yields the workflow's status after each change and ends once it is
   * closed. A dropped stream (UNAVAILABLE or CANCELLED, e.g. a sidecar
   * restart) is resumed from the last sequence received, so no change is
   * missed, as long as the sidecar answers again within the client's
   * `reconnectWindowMs` (60 s by default) since the drop; after that the
   * watch rejects with the last `AreError` UNAVAILABLE. A watch the sidecar
   * refuses for want of subscribers (RESOURCE_EXHAUSTED, reason
   * RESOURCE_LIMIT, with a retry hint) is tried again no sooner than the
   * hint; any other RESOURCE_EXHAUSTED (a status over the client's
   * `maxMessageBytes`, refused on this side) rejects, as no retry fixes it.
   * A resumed watch whose cursor is beyond the sidecar's event log
   * (OUT_OF_RANGE, reason SEQUENCE_BEYOND_LOG: it came back on an older
   * log, after a relaxed-durability power loss or a restored backup) is
   * watched again without it, from the current status, as the contract
   * says; the caller's own `afterSequence` beyond the log rejects. An abort
   * rejects with the signal's reason; closing the client rejects with
   * CANCELLED.
   */
  async *watch(options: WatchOptions = {}): AsyncGenerator<WorkflowUpdate> {
    for await (const response of this.watchRaw(options)) {
      yield {
        workflow: workflowInfo(response.workflow!),
        task: response.task ? taskInfo(response.task) : undefined,
        event: response.event,
        sequence: response.sequence,
      };
    }
  }

  private async *watchRaw(options: WatchOptions): AsyncGenerator<WatchWorkflowResponse> {
    const { signal } = options;
    let cursor = options.afterSequence;
    let resumed = false; // whether the cursor is one this watch received (not the caller's afterSequence)
    let delay = RESUME_INITIAL_DELAY_MS;
    for (;;) {
      let hint: number | undefined;
      let dropped: { error: AreError; at: number } | undefined;
      const request = WatchWorkflowRequest.fromPartial({
        workflowId: this.workflowId,
        includeTasks: options.includeTasks ?? false,
        afterSequence: cursor,
      });
      try {
        for await (const response of this.rpc.stream(this.watches.watchWorkflow.bind(this.watches), request, { signal })) {
          if (response.sequence) {
            cursor = response.sequence;
            resumed = true;
          }
          delay = RESUME_INITIAL_DELAY_MS;
          if (!response.workflow) continue;
          yield response;
          if (CLOSED.has(response.workflow.state)) return;
        }
      } catch (error) {
        if (signal?.aborted) throw signal.reason;
        // CANCELLED once the client is closed comes from this side: resuming would loop for ever.
        if (!(error instanceof AreError) || this.rpc.closed) throw error;
        if (resumed && error.code === Code.OUT_OF_RANGE && error.reason === "SEQUENCE_BEYOND_LOG") {
          // Back on another event log (a relaxed-durability power loss, a restored backup): the
          // contract says to watch again without the cursor, from the current status.
          cursor = undefined;
          resumed = false;
          continue;
        }
        if (error.code === Code.RESOURCE_EXHAUSTED && error.reason === "RESOURCE_LIMIT") {
          // Its watch subscribers all taken (a resumed watch is one): no sooner than it says.
          // Any other (a status over this client's maxMessageBytes) would only fail again.
          hint = error.retryAfterMs;
        } else if (error.code === Code.UNAVAILABLE || error.code === Code.CANCELLED) {
          // The sidecar restarted or the connection dropped: resume from the cursor, at once
          // (jittered), once the sidecar answers again within the reconnect window.
          dropped = { error, at: performance.now() };
        } else {
          throw error;
        }
      }
      await sleep(retryWait(delay, hint), signal);
      delay = Math.min(delay * 2, RESUME_MAX_DELAY_MS);
      if (dropped !== undefined) await this.untilAnswering(dropped.error, dropped.at, signal);
    }
  }

  /**
   * Resolves once the sidecar answers a call again; rejects with the last UNAVAILABLE once it
   * stays silent for the client's `reconnectWindowMs` since the stream dropped (at `since`, on
   * `performance.now()`'s clock).
   * A resumed watch can be silent for hours (a cursor with nothing after it), so its opening
   * proves nothing: a unary GetWorkflow on the same channel does. Against a sidecar gone for
   * good, a wait resumed for as long as its timeout allowed, forever without one.
   */
  private async untilAnswering(error: AreError, since: number, signal: AbortSignal | undefined): Promise<void> {
    const window = this.reconnectWindowMs;
    if (!Number.isFinite(window)) return;
    const deadline = since + window;
    let last = error;
    let delay = RESUME_INITIAL_DELAY_MS;
    const request = GetWorkflowRequest.fromPartial({ workflowId: this.workflowId });
    let remaining: number;
    while ((remaining = deadline - performance.now()) > 0) {
      try {
        await this.rpc.unary(this.watches.getWorkflow.bind(this.watches), request, {
          signal,
          timeoutMs: Math.min(remaining, PROBE_TIMEOUT_MS),
        });
        return;
      } catch (probe) {
        if (signal?.aborted) throw signal.reason;
        if (this.rpc.closed) throw probe;
        if (!(probe instanceof AreError) || !SILENT_CODES.has(probe.code)) return; // it answered; the watch meets the error itself
        if (probe.code === Code.UNAVAILABLE) last = probe;
      }
      await sleep(Math.min(jitter(delay), Math.max(0, deadline - performance.now())), signal);
      delay = Math.min(delay * 2, RESUME_MAX_DELAY_MS);
    }
    const why = `WatchWorkflow: the sidecar has not answered for ${window} ms (the reconnect window) since the stream dropped`;
    if (last.code === Code.UNAVAILABLE) {
      throw new AreError(Code.UNAVAILABLE, `${why}: ${last.details}`, {
        reason: last.reason,
        metadata: last.metadata,
        cause: last,
      });
    }
    throw new AreError(Code.UNAVAILABLE, `${why} (${last.codeName}: ${last.details})`, { cause: last });
  }

  /**
   * Waits until the workflow closes, whatever the outcome, and returns its status. Resumes as
   * {@link watch} does; rejects with {@link WaitTimeoutError} after `timeoutMs`, and with
   * `AreError` UNAVAILABLE once the sidecar has not answered for the client's `reconnectWindowMs`.
   */
  async wait(options: WaitOptions = {}): Promise<WorkflowInfo> {
    const { signal, timedOut, dispose } = withTimeout(options.signal, options.timeoutMs);
    try {
      for await (const response of this.watchRaw({ signal })) {
        if (CLOSED.has(response.workflow!.state)) return workflowInfo(response.workflow!);
      }
    } catch (error) {
      if (timedOut()) throw new WaitTimeoutError(`workflow ${this.workflowId} did not close within ${options.timeoutMs} ms`);
      throw error;
    } finally {
      dispose(); // the timer and the listener on options.signal go with the wait
    }
    return this.get(); // not reached: a watch ends only once the workflow is closed
  }

  /**
   * Waits for the workflow to complete and returns its decoded result (the
   * result task's output; a blob result is fetched). Throws
   * {@link WorkflowFailedError} when it closed FAILED or CANCELLED,
   * {@link WaitTimeoutError} after `timeoutMs`.
   */
  async result<T = unknown>(options: WaitOptions = {}): Promise<T> {
    const workflow = await this.wait(options);
    if (workflow.state !== "COMPLETED") throw new WorkflowFailedError(workflow);
    const result = workflow.result;
    if (result instanceof BlobReference) {
      const data = await this.blobs.get(result, { signal: options.signal });
      return decodePayload({ data, contentType: workflow.raw.result?.contentType || result.contentType }) as T;
    }
    return result as T;
  }

  /** Cancels the workflow (idempotent) and returns its status, closed. */
  async cancel(options: CallOptions & { reason?: string; requestedBy?: string } = {}): Promise<WorkflowInfo> {
    const response = await this.rpc.unary(
      this.raw.cancelWorkflow.bind(this.raw),
      CancelWorkflowRequest.fromPartial({
        workflowId: this.workflowId,
        reason: options.reason ?? "",
        requestedBy: options.requestedBy ?? "",
      }),
      options,
    );
    return workflowInfo(response.workflow!);
  }

  /** Deletes the closed workflow and returns the bytes freed (FAILED_PRECONDITION while it runs). */
  async delete(options: CallOptions = {}): Promise<number> {
    const response = await this.rpc.unary(
      this.raw.deleteWorkflow.bind(this.raw),
      DeleteWorkflowRequest.fromPartial({ workflowId: this.workflowId }),
      options,
    );
    return response.freedBytes;
  }

  /** One task's status, with its input and output. */
  async task(taskId: string, options: CallOptions = {}): Promise<TaskInfo> {
    const response = await this.rpc.unary(
      this.raw.getTask.bind(this.raw),
      GetTaskRequest.fromPartial({ workflowId: this.workflowId, taskId }),
      options,
    );
    return taskInfo(response.task!);
  }

  /** The workflow's tasks in submission order, every page read. */
  async tasks(options: CallOptions & { states?: TaskState[]; includePayloads?: boolean } = {}): Promise<TaskInfo[]> {
    const includePayloads = options.includePayloads ?? false;
    const states = (options.states ?? []).map((name) => TaskStateEnum[`TASK_STATE_${name}` as keyof typeof TaskStateEnum]);
    const result: TaskInfo[] = [];
    let pageToken = "";
    for (;;) {
      const response = await this.rpc.unary(
        this.raw.listTasks.bind(this.raw),
        ListTasksRequest.fromPartial({
          workflowId: this.workflowId,
          pageSize: includePayloads ? 100 : PAGE_SIZE,
          pageToken,
          states,
          includePayloads,
        }),
        options,
      );
      result.push(...response.tasks.map(taskInfo));
      pageToken = response.nextPageToken;
      if (!pageToken) return result;
    }
  }

  /** Approves a task waiting at its approval gate. */
  approve(taskId: string, options: CallOptions & { approver?: string; comment?: string } = {}): Promise<TaskInfo> {
    return this.resolve(taskId, ApprovalDecision.APPROVAL_DECISION_APPROVE, options);
  }

  /** Rejects a task waiting at its approval gate; its dependents follow their trigger rules. */
  reject(taskId: string, options: CallOptions & { approver?: string; comment?: string } = {}): Promise<TaskInfo> {
    return this.resolve(taskId, ApprovalDecision.APPROVAL_DECISION_REJECT, options);
  }

  private async resolve(
    taskId: string,
    decision: ApprovalDecision,
    options: CallOptions & { approver?: string; comment?: string },
  ): Promise<TaskInfo> {
    const response = await this.rpc.unary(
      this.raw.resolveApproval.bind(this.raw),
      ResolveApprovalRequest.fromPartial({
        workflowId: this.workflowId,
        taskId,
        decision,
        approver: options.approver ?? "",
        comment: options.comment ?? "",
      }),
      options,
    );
    return taskInfo(response.task!);
  }

  /** Adds tasks to the running workflow and returns their ids. */
  spawn(tasks: readonly TaskSpec[], options: SpawnOptions = {}): Promise<string[]> {
    return spawnTasks(this.raw, this.rpc, this.workflowId, tasks, options);
  }
}

/** Options of {@link Workflows.submit}. */
export interface SubmitOptions extends CallOptions {
  /** An idempotency key: a retried submit with the same key returns the same workflow. */
  requestId?: string;
}

/** `client.workflows`: submit, list and open workflows. */
export class Workflows {
  /** @internal */
  constructor(
    private readonly raw: SchedulerServiceClient,
    private readonly rpc: Rpc,
    private readonly blobs: Blobs,
    /** The scheduler on the client's channel for waits (see `Client`). */
    private readonly watches: SchedulerServiceClient = raw,
    /** How long a dropped watch keeps resuming while the sidecar does not answer (`ConnectOptions.reconnectWindowMs`). */
    private readonly reconnectWindowMs: number = DEFAULT_RECONNECT_WINDOW_MS,
  ) {}

  /**
   * Submits a workflow and returns its handle at once, without waiting for
   * any task. A {@link WorkflowSpec} is validated client-side first
   * ({@link WorkflowSpecError}); an `are.v1.WorkflowSpec` message is sent as it is.
   */
  async submit(spec: WorkflowSpec | WorkflowSpecMessage, options: SubmitOptions = {}): Promise<WorkflowHandle> {
    const message = spec instanceof WorkflowSpec ? spec.toMessage() : spec;
    const response = await this.rpc.unary(
      this.raw.submitWorkflow.bind(this.raw),
      SubmitWorkflowRequest.fromPartial({ spec: message, requestId: options.requestId ?? "" }),
      options,
    );
    return new WorkflowHandle(
      this.raw,
      this.rpc,
      this.blobs,
      response.workflowId,
      response.deduplicated,
      this.watches,
      this.reconnectWindowMs,
    );
  }

  /** A handle on an existing workflow (no call is made). */
  getHandle(workflowId: string): WorkflowHandle {
    return new WorkflowHandle(this.raw, this.rpc, this.blobs, workflowId, false, this.watches, this.reconnectWindowMs);
  }

  /** A workflow's status. */
  get(workflowId: string, options: CallOptions = {}): Promise<WorkflowInfo> {
    return this.getHandle(workflowId).get(options);
  }

  /** Yields workflows, newest first, reading pages as needed (at most `limit`). */
  async *list(
    options: CallOptions & { states?: WorkflowState[]; labels?: Record<string, string>; limit?: number } = {},
  ): AsyncGenerator<WorkflowInfo> {
    const states = (options.states ?? []).map(
      (name) => WorkflowStateEnum[`WORKFLOW_STATE_${name}` as keyof typeof WorkflowStateEnum],
    );
    let pageToken = "";
    let count = 0;
    const limit = options.limit;
    if (limit !== undefined && limit <= 0) return;
    for (;;) {
      const pageSize = limit === undefined ? PAGE_SIZE : Math.max(1, Math.min(PAGE_SIZE, limit - count));
      const response = await this.rpc.unary(
        this.raw.listWorkflows.bind(this.raw),
        ListWorkflowsRequest.fromPartial({ pageSize, pageToken, states, labels: { ...(options.labels ?? {}) } }),
        options,
      );
      for (const workflow of response.workflows) {
        yield workflowInfo(workflow);
        count += 1;
        if (limit !== undefined && count >= limit) return;
      }
      pageToken = response.nextPageToken;
      if (!pageToken) return;
    }
  }

  /** The tasks waiting at approval gates, oldest first, with their inputs. */
  async listApprovals(options: CallOptions & { workflowId?: string; labels?: Record<string, string> } = {}): Promise<TaskInfo[]> {
    const result: TaskInfo[] = [];
    let pageToken = "";
    for (;;) {
      const response = await this.rpc.unary(
        this.raw.listApprovals.bind(this.raw),
        ListApprovalsRequest.fromPartial({
          pageSize: 100,
          pageToken,
          workflowId: options.workflowId ?? "",
          labels: { ...(options.labels ?? {}) },
        }),
        options,
      );
      result.push(...response.tasks.map(taskInfo));
      pageToken = response.nextPageToken;
      if (!pageToken) return result;
    }
  }
}
