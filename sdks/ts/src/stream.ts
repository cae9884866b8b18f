/**
 * The worker's stream transport: one `WorkerService.Connect` stream per
 * registration. A reader takes assignments, acknowledgements, cancellations
 * and drain notices; one writer sends what is pending (events, heartbeats,
 * completions, failures, a drain, a ping) in batches, everything that
 * accumulated while the previous write was in flight going in the next one;
 * a ticker queues the heartbeats of held attempts. A message is cut at 1,000
 * items or when the next item would take it past 16 MiB (or the client's own
 * bound less 1 KiB, when lower), each item counted at its exact encoded length
 * (see {@link batchBytes}, {@link itemBytes}); what does not fit goes in the
 * next. Pending items are bounded by the attempts held, which the sidecar
 * bounds by the registered concurrency; one message is in flight at a time.
 *
 * The worker ({@link Worker}) owns the attempts and reconnects; this module
 * only speaks the protocol of one stream.
 *
 * @internal
 * @module
 */
import type { ClientDuplexStream, StatusObject } from "@grpc/grpc-js";

import type { Client } from "./client.js";
import { AreError, Code, toAreError } from "./errors.js";
import type { AgentCard as AgentCardMessage } from "./gen/are/v1/agent.js";
import type { Payload } from "./gen/are/v1/common.js";
import { ReportedEvent } from "./gen/are/v1/event.js";
import {
  AckSubject,
  ConnectRequest,
  TaskCancelReason,
  TaskCompletion,
  TaskFailure,
  TaskHeartbeat,
  type ConnectResponse,
  type TaskAck,
  type TaskAssignment,
} from "./gen/are/v1/worker_service.js";
import { ErrorReason } from "./gen/are/v1/errors.js";
import { MAX_TIMER_MS, fromDuration, sleep } from "./time.js";

/** The SDK named in the registration. */
export const SDK_NAME = "are-sdk-ts/0.1";
/** Refusals of a heartbeat that say the attempt's lease is gone (any other refuses the heartbeat alone). */
const LEASE_GONE = new Set<number>([
  ErrorReason.ERROR_REASON_TASK_NOT_HELD,
  ErrorReason.ERROR_REASON_TASK_ALREADY_COMPLETED,
  ErrorReason.ERROR_REASON_TASK_NOT_FOUND,
  ErrorReason.ERROR_REASON_WORKFLOW_NOT_FOUND,
]);
/** The heartbeat interval when the sidecar gives none. */
const DEFAULT_INTERVAL_MS = 10_000;
/** The most items of one kind in one message (the contract's bound for results and events). */
const MAX_BATCH = 1000;
/**
 * The most bytes of items in one message. The sidecar accepts messages of up to 64 MiB, and the
 * client sends none larger than its `maxMessageBytes`; one item can be 4 MiB (an inline output)
 * or 1 MiB (heartbeat details, a failure with its causes). Heartbeats were cut by count alone, and
 * results by their payloads' size against this bound whatever the client's: seventy attempts
 * heartbeating 1 MiB of details at once, or three 3 MiB outputs on a client bounded at 8 MiB, made
 * one message over the bound, which ended the stream and lost every attempt on it. 16 MiB is a
 * quarter of the sidecar's bound, as its own assignment batches (worker_service.proto), and holds
 * three of the largest items; a client with a lower bound cuts below it (see batchBytes).
 */
const MAX_BATCH_BYTES = 16 * 1024 * 1024;
/** What a message holds beside its items: the batch's tag and length in the ConnectRequest (6 bytes at most), with room to spare. */
const ENVELOPE_BYTES = 1024;
/** How long the sidecar gets to answer the registration. */
const REGISTER_TIMEOUT_MS = 10_000;

/** What the session needs of one held attempt (the worker's Attempt). */
export interface StreamAttempt {
  readonly assignment: TaskAssignment;
  /** Progress details not yet sent; the session takes them. */
  details: Payload | undefined;
  /** Events not yet sent; the session takes them. */
  events: ReportedEvent[];
  /** Takes the attempt back: aborts its handler, and no result is reported. */
  lose(kind: "CANCEL_REQUESTED" | "NOT_HELD" | "TIMED_OUT", message: string): void;
}

interface Held {
  attempt: StreamAttempt;
  /** How often it heartbeats, and when next. */
  everyMs: number;
  nextMs: number;
  /** Callers of beat() waiting for the next write of its heartbeat. */
  beaten: (() => void)[];
}

interface PendingResult<T> {
  item: T;
  bytes: number;
  resolve: (ack: TaskAck | undefined) => void;
}

/** The byte budget of one message's items for a client that sends messages of at most `maxSendBytes`. */
function batchBytes(maxSendBytes: number): number {
  return Math.max(0, Math.min(MAX_BATCH_BYTES, maxSendBytes - ENVELOPE_BYTES));
}

/**
 * The bytes an item of `length` encoded bytes adds to a message as an element of its batch's
 * repeated field: a one-byte tag, the length as a varint, the item.
 */
function itemBytes(length: number): number {
  let varint = 1;
  for (let rest = length; rest >= 0x80; rest = Math.floor(rest / 0x80)) varint += 1;
  return 1 + varint + length;
}

/** The key of one attempt. */
export function attemptKey(a: { workflowId: string; taskId: string; attempt: number }): string {
  return `${a.workflowId}\u0000${a.taskId}\u0000${a.attempt}`;
}

/** One registered worker stream. */
export class StreamSession {
  /** Resolves with why the stream ended (an AreError), once it has. */
  readonly ended: Promise<AreError>;
  /** The sidecar's deadline for results after a drain notice (ms since the epoch), or undefined. */
  sidecarDrainDeadline: number | undefined;
  private readonly held = new Map<string, Held>();
  private readonly waiting = new Map<string, PendingResult<unknown>>();
  private completions: PendingResult<TaskCompletion>[] = [];
  private failures: PendingResult<TaskFailure>[] = [];
  private drainReason: string | undefined;
  private closing = false;
  private endReason: AreError | undefined;
  private resolveEnded!: (reason: AreError) => void;
  private wakeWriter: (() => void) | undefined;
  /** Ends the ticker's current sleep (see tickLoop). */
  private wakeTicker: (() => void) | undefined;
  private lastWriteMs = Date.now();
  private readonly stop = new AbortController();

  private constructor(
    private readonly call: ClientDuplexStream<ConnectRequest, ConnectResponse>,
    readonly workerId: string,
    readonly intervalMs: number,
    /** The byte budget of one message's items (see batchBytes). */
    private readonly budget: number,
    private readonly onAssignment: (assignment: TaskAssignment, session: StreamSession) => void,
    private readonly warn: (message: string) => void,
  ) {
    this.ended = new Promise((resolve) => {
      this.resolveEnded = resolve;
    });
    call.on("data", (message: ConnectResponse) => this.read(message));
    void this.writeLoop();
    void this.tickLoop();
  }

  /**
   * Opens the stream and registers; resolves once the sidecar answered
   * `registered`. Rejects with an AreError (the stream's status) otherwise.
   */
  static async open(
    client: Client,
    registration: {
      workerName: string;
      capabilities: string[];
      maxConcurrency: number;
      identity: string;
      labels: Record<string, string>;
      agentCard?: AgentCardMessage;
    },
    onAssignment: (assignment: TaskAssignment, session: StreamSession) => void,
    warn: (message: string) => void,
    signal: AbortSignal,
  ): Promise<StreamSession> {
    if (signal.aborted) throw signal.reason;
    const call = client.rpc.duplex(client.raw.worker.connect.bind(client.raw.worker));
    const first = new Promise<ConnectResponse>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new AreError(Code.DEADLINE_EXCEEDED, `the sidecar did not answer the worker's registration within ${REGISTER_TIMEOUT_MS} ms`));
      }, REGISTER_TIMEOUT_MS);
      const onAbort = (): void => reject(signal.reason);
      signal.addEventListener("abort", onAbort, { once: true });
      const settle = (): void => {
        clearTimeout(timer);
        signal.removeEventListener("abort", onAbort);
        call.off("data", onData);
        call.off("status", onStatus);
      };
      const onData = (message: ConnectResponse): void => {
        call.pause(); // nothing more is read before the session's handler is attached
        settle();
        resolve(message);
      };
      const onStatus = (status: StatusObject): void => {
        settle();
        reject(statusError(status, "the sidecar closed the worker stream before registering it"));
      };
      call.on("data", onData);
      call.on("status", onStatus);
    });
    call.on("error", () => undefined); // the status event carries it
    call.write(ConnectRequest.fromPartial({ register: { ...registration, sdk: SDK_NAME } }));
    let message: ConnectResponse;
    try {
      message = await first;
    } catch (error) {
      call.cancel();
      throw error;
    }
    const registered = message.registered;
    if (registered === undefined) {
      call.cancel();
      throw new AreError(Code.INTERNAL, "the sidecar's first message on the worker stream was not `registered`");
    }
    const intervalMs = fromDuration(registered.heartbeatInterval) || DEFAULT_INTERVAL_MS;
    const session = new StreamSession(call, registered.workerId, intervalMs, batchBytes(client.maxSendBytes), onAssignment, warn);
    call.on("status", (status: StatusObject) => session.end(statusError(status, "the sidecar ended the worker stream")));
    call.resume();
    return session;
  }

  /** True once the stream has ended. */
  get isEnded(): boolean {
    return this.endReason !== undefined;
  }

  /** Holds an attempt: it heartbeats on this stream until released. */
  hold(attempt: StreamAttempt): void {
    if (this.isEnded) {
      attempt.lose("NOT_HELD", `the worker's stream ended: ${this.endReason?.message}`);
      return;
    }
    const timeoutMs = fromDuration(attempt.assignment.heartbeatTimeout);
    const everyMs = Math.max(50, Math.min(this.intervalMs, timeoutMs ? timeoutMs / 3 : Infinity));
    this.held.set(attemptKey(attempt.assignment), { attempt, everyMs, nextMs: Date.now() + everyMs, beaten: [] });
    this.wakeTick(); // its first heartbeat may be due before the ticker would next look
  }

  /** Stops heartbeating an attempt (its handler returned and its result, if any, was acknowledged). */
  release(attempt: StreamAttempt): void {
    const key = attemptKey(attempt.assignment);
    const held = this.held.get(key);
    if (held?.attempt !== attempt) return;
    this.held.delete(key);
    for (const resolve of held.beaten) resolve();
  }

  /** Heartbeats an attempt (with its pending details) in the next write; resolves once written or the stream ended. */
  beat(attempt: StreamAttempt): Promise<void> {
    const held = this.held.get(attemptKey(attempt.assignment));
    if (held === undefined || this.isEnded) return Promise.resolve();
    held.nextMs = 0;
    const written = new Promise<void>((resolve) => held.beaten.push(resolve));
    this.wake();
    return written;
  }

  /** Sends the attempt's pending events in the next write. */
  flushEvents(): void {
    this.wake();
  }

  /** Sends a completion; resolves with its ack, or undefined when the stream ended first. */
  complete(completion: TaskCompletion): Promise<TaskAck | undefined> {
    return this.result(completion, itemBytes(TaskCompletion.encode(completion).finish().length), this.completions);
  }

  /** Sends a failure; resolves with its ack, or undefined when the stream ended first. */
  fail(failure: TaskFailure): Promise<TaskAck | undefined> {
    return this.result(failure, itemBytes(TaskFailure.encode(failure).finish().length), this.failures);
  }

  /** Tells the sidecar to assign no more; results of held attempts are still accepted. */
  drain(reason: string): void {
    this.drainReason = reason;
    this.wake();
  }

  /**
   * Half-closes the stream once everything pending is written, and waits
   * (at most `waitMs`) for the sidecar to end it; then cancels it.
   */
  async close(waitMs: number): Promise<void> {
    this.closing = true;
    this.wake();
    const timer = new AbortController();
    await Promise.race([this.ended, sleep(waitMs, timer.signal).catch(() => undefined)]);
    timer.abort();
    this.cancel();
  }

  /** Cancels the stream at once; held attempts are lost. */
  cancel(): void {
    this.end(new AreError(Code.CANCELLED, "the worker cancelled its stream"));
    this.call.cancel();
  }

  private result<T extends { workflowId: string; taskId: string; attempt: number }>(
    item: T,
    bytes: number,
    queue: PendingResult<T>[],
  ): Promise<TaskAck | undefined> {
    if (this.isEnded) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      const pending = { item, bytes, resolve };
      this.waiting.set(attemptKey(item), pending as PendingResult<unknown>);
      queue.push(pending);
      this.wake();
    });
  }

  private end(reason: AreError): void {
    if (this.endReason !== undefined) return;
    this.endReason = reason;
    this.stop.abort();
    this.wake();
    this.wakeTick();
    for (const pending of this.waiting.values()) pending.resolve(undefined);
    this.waiting.clear();
    for (const held of this.held.values()) {
      for (const resolve of held.beaten) resolve();
      held.attempt.lose("NOT_HELD", `the worker's stream ended: ${reason.message}`);
    }
    this.held.clear();
    this.completions = [];
    this.failures = [];
    this.resolveEnded(reason);
  }

  private read(message: ConnectResponse): void {
    if (message.assignments !== undefined) {
      for (const assignment of message.assignments.assignments) this.onAssignment(assignment, this);
    } else if (message.acks !== undefined) {
      for (const ack of message.acks.acks) this.acknowledged(ack);
    } else if (message.cancellations !== undefined) {
      for (const c of message.cancellations.cancellations) {
        const held = this.held.get(attemptKey(c));
        if (held === undefined) continue;
        this.held.delete(attemptKey(c));
        for (const resolve of held.beaten) resolve();
        const timedOut = c.reason === TaskCancelReason.TASK_CANCEL_REASON_TIMED_OUT;
        held.attempt.lose(timedOut ? "TIMED_OUT" : "CANCEL_REQUESTED", `the sidecar cancelled the attempt: ${c.message || c.reason}`);
      }
    } else if (message.drain !== undefined) {
      const graceMs = fromDuration(message.drain.gracePeriod) ?? 0;
      this.sidecarDrainDeadline = Date.now() + graceMs;
      this.warn(`worker stream: the sidecar is draining (${message.drain.reason}); results are accepted for ${graceMs} ms`);
    }
  }

  private acknowledged(ack: TaskAck): void {
    const key = attemptKey(ack);
    if (ack.subject === AckSubject.ACK_SUBJECT_COMPLETION || ack.subject === AckSubject.ACK_SUBJECT_FAILURE) {
      const pending = this.waiting.get(key);
      this.waiting.delete(key);
      pending?.resolve(ack);
    } else if (ack.subject === AckSubject.ACK_SUBJECT_HEARTBEAT) {
      // Only refusals are acknowledged. One saying the lease is gone ends the attempt; any other
      // (its details invalid) refused the heartbeat alone, and the lease holds: losing the attempt
      // then reported nothing, and the task stayed RUNNING until a timeout.
      if (!LEASE_GONE.has(ack.reason)) {
        this.warn(`worker stream: the sidecar refused a heartbeat of ${ack.workflowId}/${ack.taskId}: ${ack.message}`);
        return;
      }
      const held = this.held.get(key);
      if (held === undefined) return;
      this.held.delete(key);
      for (const resolve of held.beaten) resolve();
      held.attempt.lose("NOT_HELD", `the sidecar refused the attempt's heartbeat: ${ack.message}`);
    } else {
      this.warn(`worker stream: the sidecar refused an event of ${ack.workflowId}/${ack.taskId}: ${ack.message}`);
    }
  }

  private wake(): void {
    const wake = this.wakeWriter;
    this.wakeWriter = undefined;
    wake?.();
  }

  /** Ends the ticker's sleep, so it looks again at the attempts held. */
  private wakeTick(): void {
    const wake = this.wakeTicker;
    this.wakeTicker = undefined;
    wake?.();
  }

  /**
   * Wakes the writer when a heartbeat is due, or a ping (the stream quiet for half the interval),
   * then sleeps until the next one can be, or until hold() wakes it. The sleep was computed from the
   * attempts held before it and lasted half the shortest interval among them: half the sidecar's
   * interval (5 s) when idle, so an attempt held during that sleep sent its first heartbeat only
   * when the sleep ended, after a heartbeat timeout under about 5 s, and the sidecar took it back.
   */
  private async tickLoop(): Promise<void> {
    while (!this.isEnded) {
      const now = Date.now();
      let due = now - this.lastWriteMs >= this.intervalMs / 2;
      // A ping is next due half an interval after the last write; while one is due and the writer
      // busy, the ticker looks again half an interval on.
      let nextMs = due ? now + this.intervalMs / 2 : this.lastWriteMs + this.intervalMs / 2;
      for (const held of this.held.values()) {
        if (held.nextMs <= now) {
          // Due: the writer sends it and sets its next beat at least everyMs from now (an attempt
          // whose result awaits its ack sends none, and the ticker looks again everyMs on).
          due = true;
          nextMs = Math.min(nextMs, now + held.everyMs);
        } else {
          nextMs = Math.min(nextMs, held.nextMs);
        }
      }
      if (due) this.wake();
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          this.wakeTicker = undefined;
          resolve();
        }, Math.min(MAX_TIMER_MS, Math.max(1, nextMs - now)));
        this.wakeTicker = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  /** The one writer: sends what is pending, one message at a time, until the stream ends or is half-closed. */
  private async writeLoop(): Promise<void> {
    while (!this.isEnded) {
      const message = this.nextMessage();
      if (message === undefined) {
        if (this.closing) {
          this.call.end();
          return;
        }
        await new Promise<void>((resolve) => {
          this.wakeWriter = resolve;
        });
        continue;
      }
      const [request, written] = message;
      try {
        await this.write(request);
      } catch {
        return; // the status event ends the session
      }
      this.lastWriteMs = Date.now();
      written?.();
    }
  }

  private write(request: ConnectRequest): Promise<void> {
    return new Promise((resolve, reject) => {
      const onEnd = (): void => reject(this.endReason);
      this.stop.signal.addEventListener("abort", onEnd, { once: true });
      this.call.write(request, (error: Error | null | undefined) => {
        this.stop.signal.removeEventListener("abort", onEnd);
        if (error) reject(toAreError(error));
        else resolve();
      });
    });
  }

  /**
   * The next message to write, in the order events, heartbeats, completions, failures, drain,
   * ping; each batch cut by count and size (the items left over go in the next message).
   */
  private nextMessage(): [ConnectRequest, (() => void) | undefined] | undefined {
    const events: ReportedEvent[] = [];
    let bytes = 0;
    for (const held of this.held.values()) {
      const a = held.attempt;
      let n = 0;
      while (n < a.events.length && events.length + n < MAX_BATCH) {
        const size = itemBytes(ReportedEvent.encode(a.events[n]!).finish().length);
        if (events.length + n > 0 && bytes + size > this.budget) break;
        bytes += size;
        n += 1;
      }
      const left = n < a.events.length; // the message is full: the rest go in the next
      events.push(...a.events.splice(0, n));
      if (left) break;
    }
    if (events.length > 0) return [ConnectRequest.fromPartial({ reportEvents: { events } }), undefined];

    const now = Date.now();
    const heartbeats: TaskHeartbeat[] = [];
    const beaten: (() => void)[] = [];
    bytes = 0;
    for (const held of this.held.values()) {
      if (held.nextMs > now || this.waiting.has(attemptKey(held.attempt.assignment))) continue;
      const { workflowId, taskId, attempt } = held.attempt.assignment;
      const heartbeat = { workflowId, taskId, attempt, details: held.attempt.details };
      const size = itemBytes(TaskHeartbeat.encode(heartbeat).finish().length);
      if (heartbeats.length > 0 && bytes + size > this.budget) break; // due still: it goes in the next message
      bytes += size;
      heartbeats.push(heartbeat);
      held.attempt.details = undefined;
      held.nextMs = now + held.everyMs;
      beaten.push(...held.beaten.splice(0));
      if (heartbeats.length >= MAX_BATCH) break;
    }
    if (heartbeats.length > 0) {
      return [ConnectRequest.fromPartial({ heartbeat: { heartbeats } }), () => beaten.forEach((resolve) => resolve())];
    }

    const completions = takeBatch(this.completions, this.budget);
    if (completions.length > 0) return [ConnectRequest.fromPartial({ complete: { completions } }), undefined];
    const failures = takeBatch(this.failures, this.budget);
    if (failures.length > 0) return [ConnectRequest.fromPartial({ fail: { failures } }), undefined];

    if (this.drainReason !== undefined) {
      const reason = this.drainReason;
      this.drainReason = undefined;
      return [ConnectRequest.fromPartial({ drain: { reason } }), undefined];
    }
    if (!this.closing && now - this.lastWriteMs >= this.intervalMs / 2) {
      return [ConnectRequest.fromPartial({ heartbeat: { heartbeats: [] } }), undefined];
    }
    return undefined;
  }
}

/**
 * Takes the items of one message off the front of `queue`, in order: at most MAX_BATCH, and at most
 * `budget` bytes of them (see itemBytes), but always the first. An item over the budget by itself
 * goes alone: each is fitted to the sidecar's bounds when it is made (an output over 4 MiB goes as
 * a blob, a failure with its causes to 1 MiB), so it still fits a message.
 */
function takeBatch<T>(queue: { item: T; bytes: number }[], budget: number): T[] {
  let bytes = 0;
  let n = 0;
  while (n < queue.length && n < MAX_BATCH && (n === 0 || bytes + queue[n]!.bytes <= budget)) {
    bytes += queue[n]!.bytes;
    n += 1;
  }
  return queue.splice(0, n).map((pending) => pending.item);
}

function statusError(status: StatusObject, whenOk: string): AreError {
  if (status.code === Code.OK) return new AreError(Code.UNAVAILABLE, whenOk);
  return toAreError(Object.assign(new Error(status.details), { code: status.code, details: status.details, metadata: status.metadata }));
}
