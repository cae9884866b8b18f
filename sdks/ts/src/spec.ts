/**
 * A small builder for workflow specs: DAGs of tasks, JSON payloads by default.
 *
 * ```ts
 * const spec = new WorkflowSpec("research-pipeline")
 *   .task("research", { capability: "research", input: { topic: "tides" } })
 *   .task("write", { capability: "write", dependsOn: ["research"] });
 * const handle = await client.workflows.submit(spec);
 * ```
 *
 * The builder checks what is cheap to see on the client (ids, duplicates,
 * unknown dependencies, cycles, a task's target) and throws
 * {@link WorkflowSpecError} naming the field as the sidecar would
 * (`spec.tasks[3].depends_on[0]`). The sidecar stays the authority: every
 * other bound comes back as an {@link AreError} with `INVALID_ARGUMENT`.
 * Durations are milliseconds (`...Ms`).
 *
 * @module
 */
import { WorkflowSpecError, type FieldViolation } from "./errors.js";
import type { RetryPolicy as RetryPolicyMessage } from "./gen/are/v1/common.js";
import {
  ComparisonOperator as ComparisonOperatorEnum,
  TaskSpec as TaskSpecMessage,
  TriggerRule as TriggerRuleEnum,
  type Condition as ConditionMessage,
} from "./gen/are/v1/task.js";
import { WorkflowSpec as WorkflowSpecMessage, type WorkflowBudget } from "./gen/are/v1/workflow.js";
import { encodePayload } from "./payload.js";
import { toDuration } from "./time.js";

const ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** Which outcomes of a task's dependencies let it run. */
export type TriggerRule = "all_success" | "all_done" | "one_failed" | "one_success" | "none_failed";

/** How a {@link Condition} compares an upstream value: a name or a symbol. */
export type ComparisonOperator =
  | "equal"
  | "not_equal"
  | "less_than"
  | "less_than_or_equal"
  | "greater_than"
  | "greater_than_or_equal"
  | "exists"
  | "not_exists"
  | "contains"
  | "in"
  | "truthy"
  | "=="
  | "!="
  | "<"
  | "<="
  | ">"
  | ">=";

const SYMBOLS: Record<string, string> = {
  "==": "equal",
  "!=": "not_equal",
  "<": "less_than",
  "<=": "less_than_or_equal",
  ">": "greater_than",
  ">=": "greater_than_or_equal",
};

/** How failed attempts are retried (exponential backoff, full jitter); unset fields take the sidecar's defaults. */
export interface RetryPolicy {
  /** Attempts counting the first; 0/unset means 3; 1 means no retry. */
  maximumAttempts?: number;
  /** The first retry delay bound; default 1 s. */
  initialIntervalMs?: number;
  /** Growth of the delay bound per attempt; default 2.0. */
  backoffCoefficient?: number;
  /** Cap of the delay bound; default 100 x initialIntervalMs. */
  maximumIntervalMs?: number;
  /** Failure types never retried. */
  nonRetryableFailureTypes?: string[];
}

/** A workflow's budgets (its loop guard); unset means the sidecar's default. */
export interface Budget {
  maxTasks?: number;
  maxCostMicroUsd?: number;
  maxDurationMs?: number;
  maxTokens?: number;
  maxAttempts?: number;
  maxSpawnDepth?: number;
}

/** Runs a task only if a dependency's JSON output satisfies a comparison. */
export interface Condition {
  /** The dependency whose output is inspected (must be in dependsOn). */
  taskId: string;
  /** A JSON Pointer into that output; "" is the whole output. */
  pointer: string;
  operator: ComparisonOperator;
  /** The JSON value to compare with (ignored by exists, not_exists, truthy). */
  value?: unknown;
}

/** The cache key that lets the scheduler answer a task from the semantic cache. */
export interface TaskCacheKey {
  namespace: string;
  prompt: string;
  exactOnly?: boolean;
  readOnly?: boolean;
  ttlMs?: number;
}

/** One task's options; exactly one of `capability` and `intent` must be set. */
export interface TaskOptions {
  capability?: string;
  intent?: string;
  /** The input: JSON by default, a Uint8Array raw, a RawPayload as given. */
  input?: unknown;
  contentType?: string;
  dependsOn?: string[];
  triggerRule?: TriggerRule;
  conditions?: Condition[];
  retryPolicy?: RetryPolicy;
  scheduleToStartTimeoutMs?: number;
  startToCloseTimeoutMs?: number;
  heartbeatTimeoutMs?: number;
  scheduleToCloseTimeoutMs?: number;
  pool?: string;
  /** 1 (most urgent) to 5; 0/unset means 3. */
  priority?: number;
  requiresApproval?: boolean;
  approvalTimeoutMs?: number;
  labels?: Record<string, string>;
  cacheKey?: TaskCacheKey;
  estimatedTokens?: number;
  outputStatePointer?: string;
  excludeDependencyOutputs?: boolean;
  displayName?: string;
}

/** A task: its id and options. */
export interface TaskSpec extends TaskOptions {
  taskId: string;
}

/** The workflow-level options of {@link WorkflowSpec}. */
export interface WorkflowOptions {
  /** A client-chosen id; empty lets the sidecar generate one. */
  workflowId?: string;
  labels?: Record<string, string>;
  budget?: Budget;
  defaultRetryPolicy?: RetryPolicy;
  defaultPool?: string;
  /** The task whose output is the workflow's result; default the only sink task. */
  resultTaskId?: string;
  /** The state document's first version, a JSON object. */
  initialState?: Record<string, unknown>;
  /** A W3C traceparent the workflow's trace continues. */
  traceparent?: string;
}

function triggerRule(value: TriggerRule | undefined): TriggerRuleEnum {
  if (value === undefined) return TriggerRuleEnum.TRIGGER_RULE_UNSPECIFIED;
  const found = (TriggerRuleEnum as unknown as Record<string, TriggerRuleEnum | undefined>)[`TRIGGER_RULE_${value.toUpperCase()}`];
  if (found === undefined || found <= 0) throw new RangeError(`unknown trigger rule ${JSON.stringify(value)}`);
  return found;
}

function operator(value: ComparisonOperator): ComparisonOperatorEnum {
  const name = SYMBOLS[value] ?? value;
  const found = (ComparisonOperatorEnum as unknown as Record<string, ComparisonOperatorEnum | undefined>)[
    `COMPARISON_OPERATOR_${String(name).toUpperCase()}`
  ];
  if (found === undefined || found <= 0) throw new RangeError(`unknown comparison operator ${JSON.stringify(value)}`);
  return found;
}

/** The `are.v1.RetryPolicy` message of a {@link RetryPolicy}. */
export function retryPolicyMessage(policy: RetryPolicy): RetryPolicyMessage {
  return {
    maximumAttempts: policy.maximumAttempts ?? 0,
    initialInterval: toDuration(policy.initialIntervalMs),
    backoffCoefficient: policy.backoffCoefficient ?? 0,
    maximumInterval: toDuration(policy.maximumIntervalMs),
    nonRetryableFailureTypes: [...(policy.nonRetryableFailureTypes ?? [])],
  };
}

function budgetMessage(budget: Budget): WorkflowBudget {
  return {
    maxTasks: budget.maxTasks ?? 0,
    maxCostMicroUsd: budget.maxCostMicroUsd ?? 0,
    maxDuration: toDuration(budget.maxDurationMs),
    maxTokens: budget.maxTokens ?? 0,
    maxAttempts: budget.maxAttempts ?? 0,
    maxSpawnDepth: budget.maxSpawnDepth ?? 0,
  };
}

function conditionMessage(condition: Condition): ConditionMessage {
  return {
    taskId: condition.taskId,
    pointer: condition.pointer,
    operator: operator(condition.operator),
    valueJson: JSON.stringify(condition.value ?? null),
  };
}

/** The `are.v1.TaskSpec` message of a task (no validation; see {@link WorkflowSpec.validate}). */
export function taskSpecMessage(task: TaskSpec): TaskSpecMessage {
  return TaskSpecMessage.fromPartial({
    taskId: task.taskId,
    capability: task.capability,
    intent: task.intent,
    input: task.input !== undefined || task.contentType !== undefined ? encodePayload(task.input ?? null, task.contentType) : undefined,
    dependsOn: [...(task.dependsOn ?? [])],
    triggerRule: triggerRule(task.triggerRule),
    conditions: (task.conditions ?? []).map(conditionMessage),
    retryPolicy: task.retryPolicy ? retryPolicyMessage(task.retryPolicy) : undefined,
    scheduleToStartTimeout: toDuration(task.scheduleToStartTimeoutMs),
    startToCloseTimeout: toDuration(task.startToCloseTimeoutMs),
    heartbeatTimeout: toDuration(task.heartbeatTimeoutMs),
    scheduleToCloseTimeout: toDuration(task.scheduleToCloseTimeoutMs),
    pool: task.pool ?? "",
    priority: task.priority ?? 0,
    requiresApproval: task.requiresApproval ?? false,
    approvalTimeout: toDuration(task.approvalTimeoutMs),
    labels: { ...(task.labels ?? {}) },
    cacheKey: task.cacheKey
      ? {
          namespace: task.cacheKey.namespace,
          prompt: task.cacheKey.prompt,
          exactOnly: task.cacheKey.exactOnly ?? false,
          readOnly: task.cacheKey.readOnly ?? false,
          ttl: toDuration(task.cacheKey.ttlMs),
        }
      : undefined,
    estimatedTokens: task.estimatedTokens ?? 0,
    outputStatePointer: task.outputStatePointer ?? "",
    excludeDependencyOutputs: task.excludeDependencyOutputs ?? false,
    displayName: task.displayName ?? "",
  });
}

/**
 * The client-side checks of a list of tasks: ids, targets, dependencies, cycles.
 *
 * @param prefix The field path of the list (`spec.tasks` or `tasks`).
 * @param known Ids that exist already; null when they are not known here (a spawn: its tasks may
 *   depend on any of the workflow's, which the sidecar checks), so that no dependency outside
 *   `tasks` is refused.
 */
export function taskViolations(tasks: readonly TaskSpec[], prefix: string, known: Iterable<string> | null = []): FieldViolation[] {
  const violations: FieldViolation[] = [];
  const existing = new Set(known ?? []);
  const seen = new Map<string, number>();
  tasks.forEach((task, index) => {
    const path = `${prefix}[${index}]`;
    if (typeof task.taskId !== "string" || !ID.test(task.taskId)) {
      violations.push({ field: `${path}.task_id`, description: "must be 1 to 128 characters of [A-Za-z0-9._:-]" });
    } else if (seen.has(task.taskId) || existing.has(task.taskId)) {
      violations.push({ field: `${path}.task_id`, description: `duplicate task id ${JSON.stringify(task.taskId)}` });
    } else {
      seen.set(task.taskId, index);
    }
    if ((task.capability === undefined) === (task.intent === undefined)) {
      violations.push({ field: `${path}.target`, description: "set exactly one of capability and intent" });
    }
    const priority = task.priority ?? 0;
    if (!Number.isInteger(priority) || priority < 0 || priority > 5) {
      violations.push({ field: `${path}.priority`, description: "must be 0 (default) or 1 to 5" });
    }
    try {
      triggerRule(task.triggerRule);
    } catch (error) {
      violations.push({ field: `${path}.trigger_rule`, description: (error as Error).message });
    }
  });
  const ids = known === null ? null : new Set([...seen.keys(), ...existing]);
  tasks.forEach((task, index) => {
    const path = `${prefix}[${index}]`;
    const dependsOn = task.dependsOn ?? [];
    dependsOn.forEach((dependency, position) => {
      if (dependency === task.taskId) {
        violations.push({ field: `${path}.depends_on[${position}]`, description: "a task cannot depend on itself" });
      } else if (ids !== null && !ids.has(dependency)) {
        violations.push({ field: `${path}.depends_on[${position}]`, description: `unknown dependency ${JSON.stringify(dependency)}` });
      }
    });
    (task.conditions ?? []).forEach((condition, position) => {
      if (!dependsOn.includes(condition.taskId)) {
        violations.push({
          field: `${path}.conditions[${position}].task_id`,
          description: `${JSON.stringify(condition.taskId)} is not in this task's depends_on`,
        });
      }
      try {
        operator(condition.operator);
      } catch (error) {
        violations.push({ field: `${path}.conditions[${position}].operator`, description: (error as Error).message });
      }
    });
  });
  if (violations.length === 0) {
    const cycle = findCycle(tasks);
    if (cycle.length > 0) {
      violations.push({ field: `${prefix}[${seen.get(cycle[0] as string)}].depends_on`, description: `dependency cycle: ${cycle.join(" -> ")}` });
    }
  }
  return violations;
}

/** One dependency cycle as task ids (first id repeated last), or [] for a DAG. Iterative: no recursion limit. */
export function findCycle(tasks: readonly TaskSpec[]): string[] {
  const graph = new Map(tasks.map((task) => [task.taskId, task.dependsOn ?? []] as const));
  const WHITE = 0;
  const GREY = 1;
  const BLACK = 2;
  const color = new Map<string, number>([...graph.keys()].map((id) => [id, WHITE]));
  for (const root of graph.keys()) {
    if (color.get(root) !== WHITE) continue;
    const stack: Array<[string, number]> = [[root, 0]];
    const path: string[] = [root];
    color.set(root, GREY);
    while (stack.length > 0) {
      const top = stack[stack.length - 1] as [string, number];
      const [node, position] = top;
      const edges = graph.get(node) ?? [];
      if (position === edges.length) {
        stack.pop();
        path.pop();
        color.set(node, BLACK);
        continue;
      }
      top[1] = position + 1;
      const next = edges[position] as string;
      const state = color.get(next);
      if (state === undefined) continue;
      if (state === GREY) return [...path.slice(path.indexOf(next)), next];
      if (state === WHITE) {
        color.set(next, GREY);
        stack.push([next, 0]);
        path.push(next);
      }
    }
  }
  return [];
}

/** Builds a workflow spec: name, tasks, budgets, defaults. `task()` chains. */
export class WorkflowSpec {
  readonly name: string;
  readonly options: WorkflowOptions;
  private readonly taskList: TaskSpec[] = [];

  constructor(name = "", options: WorkflowOptions = {}) {
    this.name = name;
    this.options = { ...options };
  }

  /** The tasks added so far, in order. */
  get tasks(): readonly TaskSpec[] {
    return this.taskList;
  }

  /** Adds one task and returns the builder. */
  task(taskId: string, options: TaskOptions): this {
    this.taskList.push({ ...options, taskId });
    return this;
  }

  /** Adds ready-made task specs and returns the builder. */
  add(...tasks: TaskSpec[]): this {
    this.taskList.push(...tasks);
    return this;
  }

  /** Checks what the client can check cheaply; throws {@link WorkflowSpecError} naming each bad field. */
  validate(): void {
    const violations: FieldViolation[] = [];
    const { workflowId, resultTaskId } = this.options;
    if (workflowId && !ID.test(workflowId)) {
      violations.push({ field: "spec.workflow_id", description: "must be 1 to 128 characters of [A-Za-z0-9._:-]" });
    }
    if (this.taskList.length === 0) violations.push({ field: "spec.tasks", description: "a workflow needs at least one task" });
    violations.push(...taskViolations(this.taskList, "spec.tasks"));
    if (resultTaskId && !this.taskList.some((task) => task.taskId === resultTaskId)) {
      violations.push({ field: "spec.result_task_id", description: `unknown task ${JSON.stringify(resultTaskId)}` });
    }
    if (violations.length > 0) throw new WorkflowSpecError(violations);
  }

  /** The `are.v1.WorkflowSpec` message; validates first unless told not to. */
  toMessage(options: { validate?: boolean } = {}): WorkflowSpecMessage {
    if (options.validate ?? true) this.validate();
    const o = this.options;
    return WorkflowSpecMessage.fromPartial({
      workflowId: o.workflowId ?? "",
      name: this.name,
      tasks: this.taskList.map(taskSpecMessage),
      initialState: o.initialState !== undefined ? encodePayload(o.initialState) : undefined,
      budget: o.budget ? budgetMessage(o.budget) : undefined,
      labels: { ...(o.labels ?? {}) },
      defaultRetryPolicy: o.defaultRetryPolicy ? retryPolicyMessage(o.defaultRetryPolicy) : undefined,
      defaultPool: o.defaultPool ?? "",
      resultTaskId: o.resultTaskId ?? "",
      traceContext: o.traceparent ? { traceparent: o.traceparent, tracestate: "" } : undefined,
    });
  }
}
