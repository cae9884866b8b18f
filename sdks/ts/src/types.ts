/**
 * Typed views of the contract's status messages: workflows, tasks, failures.
 * Enums become string names (`"COMPLETED"`), payloads are decoded, and each
 * view keeps the message it came from as `raw`.
 *
 * @module
 */
import { FailureKind, TimeoutType, type Failure, type Usage, type UsageSummary } from "./gen/are/v1/common.js";
import { TaskState as TaskStateEnum, type Task } from "./gen/are/v1/task.js";
import { WorkflowState as WorkflowStateEnum, type TaskCounts, type Workflow } from "./gen/are/v1/workflow.js";
import { decodePayload } from "./payload.js";

/** A workflow's lifecycle state. */
export type WorkflowState = "UNSPECIFIED" | "RUNNING" | "CANCELLING" | "COMPLETED" | "FAILED" | "CANCELLED";
/** A task's lifecycle state. */
export type TaskState =
  | "UNSPECIFIED"
  | "PENDING"
  | "SCHEDULED"
  | "AWAITING_APPROVAL"
  | "RUNNING"
  | "BACKING_OFF"
  | "COMPLETED"
  | "FAILED"
  | "SKIPPED"
  | "REJECTED"
  | "CANCELLED";

/** The workflow states in which a workflow is closed. */
export const CLOSED_WORKFLOW_STATES: ReadonlySet<WorkflowState> = new Set(["COMPLETED", "FAILED", "CANCELLED"]);

function enumName(enumeration: Record<number, string>, value: number, prefix: string): string {
  const name = enumeration[value];
  return name === undefined || name === "UNRECOGNIZED" ? "UNSPECIFIED" : name.slice(prefix.length);
}

/** The name of an `are.v1.WorkflowState` number. */
export function workflowStateName(value: WorkflowStateEnum): WorkflowState {
  return enumName(WorkflowStateEnum, value, "WORKFLOW_STATE_") as WorkflowState;
}

/** The name of an `are.v1.TaskState` number. */
export function taskStateName(value: TaskStateEnum): TaskState {
  return enumName(TaskStateEnum, value, "TASK_STATE_") as TaskState;
}

/** Why a task attempt or a workflow failed: data, never an error. */
export interface FailureInfo {
  message: string;
  type: string;
  nonRetryable: boolean;
  /** Where it came from: `"APPLICATION"`, `"TIMEOUT"`, `"CANCELLED"`, `"BUDGET_EXCEEDED"`, ... */
  kind: string;
  /** Which timeout fired, for kind TIMEOUT (`"START_TO_CLOSE"`, ...), else `"UNSPECIFIED"`. */
  timeoutType: string;
  /** The decoded details, if any. */
  details: unknown;
  cause: FailureInfo | undefined;
  stackTrace: string;
}

/** A {@link FailureInfo} from an `are.v1.Failure` (undefined stays undefined). */
export function failureInfo(failure: Failure | undefined): FailureInfo | undefined {
  if (failure === undefined) return undefined;
  return {
    message: failure.message,
    type: failure.type,
    nonRetryable: failure.nonRetryable,
    kind: failure.kind === FailureKind.FAILURE_KIND_UNSPECIFIED ? "APPLICATION" : enumName(FailureKind, failure.kind, "FAILURE_KIND_"),
    timeoutType: enumName(TimeoutType, failure.timeoutType, "TIMEOUT_TYPE_"),
    details: decodePayload(failure.details),
    cause: failureInfo(failure.cause),
    stackTrace: failure.stackTrace,
  };
}

/** Tokens, cost and runtime counters of a task or workflow. */
export interface UsageInfo {
  inputTokens: number;
  outputTokens: number;
  costMicroUsd: number;
  llmCalls: number;
  toolCalls: number;
  taskAttempts: number;
  retries: number;
  cacheHits: number;
  cacheSavedTokens: number;
  cacheSavedCostMicroUsd: number;
  tasksCompleted: number;
  tasksFailed: number;
}

const NO_USAGE: Usage = { inputTokens: 0, outputTokens: 0, costMicroUsd: 0, llmCalls: 0, toolCalls: 0 };

function usageInfo(summary: UsageSummary | undefined): UsageInfo {
  const usage = summary?.usage ?? NO_USAGE;
  return {
    ...usage,
    taskAttempts: summary?.taskAttempts ?? 0,
    retries: summary?.retries ?? 0,
    cacheHits: summary?.cacheHits ?? 0,
    cacheSavedTokens: summary?.cacheSavedTokens ?? 0,
    cacheSavedCostMicroUsd: summary?.cacheSavedCostMicroUsd ?? 0,
    tasksCompleted: summary?.tasksCompleted ?? 0,
    tasksFailed: summary?.tasksFailed ?? 0,
  };
}

/** A workflow's status. */
export interface WorkflowInfo {
  workflowId: string;
  name: string;
  state: WorkflowState;
  /** True once the workflow is COMPLETED, FAILED or CANCELLED. */
  closed: boolean;
  labels: Record<string, string>;
  taskCounts: TaskCounts | undefined;
  usage: UsageInfo;
  /** The result task's decoded output, once COMPLETED (a BlobReference when passed as a blob). */
  result: unknown;
  /** Why it FAILED or was CANCELLED. */
  failure: FailureInfo | undefined;
  stateVersion: number;
  traceId: string;
  resultTaskId: string;
  createTime: Date | undefined;
  closeTime: Date | undefined;
  deadlineTime: Date | undefined;
  /** The message this view was made from. */
  raw: Workflow;
}

/** A {@link WorkflowInfo} from an `are.v1.Workflow`. */
export function workflowInfo(workflow: Workflow): WorkflowInfo {
  const state = workflowStateName(workflow.state);
  return {
    workflowId: workflow.workflowId,
    name: workflow.name,
    state,
    closed: CLOSED_WORKFLOW_STATES.has(state),
    labels: workflow.labels,
    taskCounts: workflow.taskCounts,
    usage: usageInfo(workflow.usage),
    result: decodePayload(workflow.result),
    failure: failureInfo(workflow.failure),
    stateVersion: workflow.stateVersion,
    traceId: workflow.traceId,
    resultTaskId: workflow.resultTaskId,
    createTime: workflow.createTime,
    closeTime: workflow.closeTime,
    deadlineTime: workflow.deadlineTime,
    raw: workflow,
  };
}

/** A task's status. */
export interface TaskInfo {
  workflowId: string;
  taskId: string;
  state: TaskState;
  stateReason: string;
  /** The current or last attempt, from 1; 0 before the first dispatch. */
  attempt: number;
  capability: string;
  /** The decoded input (when the listing included payloads). */
  input: unknown;
  /** The decoded output, once COMPLETED (when the listing included payloads). */
  output: unknown;
  failure: FailureInfo | undefined;
  usage: UsageInfo;
  workerId: string;
  parentTaskId: string;
  createTime: Date | undefined;
  startTime: Date | undefined;
  closeTime: Date | undefined;
  raw: Task;
}

/** A {@link TaskInfo} from an `are.v1.Task`. */
export function taskInfo(task: Task): TaskInfo {
  return {
    workflowId: task.workflowId,
    taskId: task.taskId,
    state: taskStateName(task.state),
    stateReason: task.stateReason,
    attempt: task.attempt,
    capability: task.capability,
    input: decodePayload(task.spec?.input),
    output: decodePayload(task.output),
    failure: failureInfo(task.failure),
    usage: usageInfo(task.usage),
    workerId: task.workerId,
    parentTaskId: task.parentTaskId,
    createTime: task.createTime,
    startTime: task.startTime,
    closeTime: task.closeTime,
    raw: task,
  };
}
