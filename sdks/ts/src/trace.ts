/**
 * The flight recorder (`client.trace`): list retained events and follow
 * live ones.
 *
 * ```ts
 * const controller = new AbortController();
 * for await (const item of client.trace.stream({ workflowIds: [id] }, { afterSequence: 0, signal: controller.signal })) {
 *   if (item.type === "event") console.log(eventTypeName(item.event.eventType), item.event.taskId);
 * }   // ends, without throwing, once the signal aborts
 * ```
 *
 * Events are the generated `are.v1.Event` messages.
 *
 * @module
 */
import { EventType, type Event, type EventFilter } from "./gen/are/v1/event.js";
import {
  ListEventsRequest,
  MissedReason,
  StreamEventsRequest,
  type EventsMissed,
  type ListEventsResponse,
  type TraceServiceClient,
} from "./gen/are/v1/trace_service.js";
import type { CallOptions, Rpc } from "./rpc.js";

export type { Event, EventFilter } from "./gen/are/v1/event.js";
export type { EventsMissed } from "./gen/are/v1/trace_service.js";
export { EventType } from "./gen/are/v1/event.js";

/** Which events; every field given must match, and lists match any of their values. */
export interface TraceFilter {
  workflowIds?: string[];
  taskIds?: string[];
  /** Names without their prefix (`"TASK_COMPLETED"`) or EventType numbers. */
  eventTypes?: Array<string | EventType>;
  startTime?: Date;
  endTime?: Date;
  workerId?: string;
}

/**
 * The `maxBatch` of every {@link Trace.stream}: the sidecar sends the events it already has ready
 * (a replay, a burst) up to this many in one message, which costs it far less than one message
 * each (it runs the scheduler on the same event loop); the stream yields them one by one. The
 * Python SDK asks for the same.
 */
const STREAM_BATCH = 256;

/** What {@link Trace.stream} yields. */
export type TraceItem =
  | { type: "event"; event: Event }
  /** The end of the replay: every event after it is live. */
  | { type: "caught_up"; sequence: number }
  /** Matching events were not delivered (see EventsMissed); only retention losses when fillMissed is on. */
  | { type: "missed"; missed: EventsMissed };

/** Options of {@link Trace.stream}. */
export interface StreamOptions {
  /** Ends the stream (the iterator returns, it does not throw). */
  signal?: AbortSignal;
  /** Replay retained events after this sequence first (0: from the oldest); unset: live only. */
  afterSequence?: number;
  /** Fetch events a slow subscriber missed with ListEvents and yield them in place (default true). */
  fillMissed?: boolean;
}

/** The name of an EventType number without its prefix (`"TASK_COMPLETED"`). */
export function eventTypeName(type: EventType): string {
  const name = EventType[type];
  return name === undefined || name === "UNRECOGNIZED" ? "UNSPECIFIED" : name.slice("EVENT_TYPE_".length);
}

function eventType(value: string | EventType): EventType {
  if (typeof value === "number") return value;
  const name = value.toUpperCase().startsWith("EVENT_TYPE_") ? value.toUpperCase() : `EVENT_TYPE_${value.toUpperCase()}`;
  const found = (EventType as unknown as Record<string, EventType | undefined>)[name];
  if (found === undefined || found <= 0) throw new RangeError(`unknown event type ${JSON.stringify(value)}`);
  return found;
}

/** The `are.v1.EventFilter` of a {@link TraceFilter}. */
export function eventFilter(filter: TraceFilter = {}): EventFilter {
  return {
    workflowIds: [...(filter.workflowIds ?? [])],
    taskIds: [...(filter.taskIds ?? [])],
    eventTypes: (filter.eventTypes ?? []).map(eventType),
    startTime: filter.startTime,
    endTime: filter.endTime,
    workerId: filter.workerId ?? "",
  };
}

/** The last sequences delivered, to drop an event that arrives twice (bounded). */
class Recent {
  private readonly order: number[] = [];
  private readonly set = new Set<number>();
  private head = 0;

  constructor(private readonly capacity = 16_384) {}

  add(sequence: number): boolean {
    if (this.set.has(sequence)) return false;
    this.set.add(sequence);
    this.order.push(sequence);
    if (this.order.length - this.head > this.capacity) {
      this.set.delete(this.order[this.head] as number);
      this.head += 1;
      if (this.head > this.capacity) {
        this.order.splice(0, this.head);
        this.head = 0;
      }
    }
    return true;
  }
}

/** `client.trace`: the sidecar's flight recorder. */
export class Trace {
  /** @internal */
  constructor(
    private readonly raw: TraceServiceClient,
    private readonly rpc: Rpc,
  ) {}

  /** One page of retained events after `afterSequence` (or `pageToken`). */
  listEvents(
    filter: TraceFilter = {},
    options: CallOptions & { afterSequence?: number; pageSize?: number; pageToken?: string } = {},
  ): Promise<ListEventsResponse> {
    return this.rpc.unary(
      this.raw.listEvents.bind(this.raw),
      ListEventsRequest.fromPartial({
        filter: eventFilter(filter),
        afterSequence: options.afterSequence ?? 0,
        pageSize: options.pageSize ?? 0,
        pageToken: options.pageToken ?? "",
      }),
      options,
    );
  }

  /** Every retained matching event after `afterSequence`, page by page. */
  async *iterEvents(filter: TraceFilter = {}, options: CallOptions & { afterSequence?: number } = {}): AsyncGenerator<Event> {
    let pageToken = "";
    for (;;) {
      const page = await this.listEvents(filter, { ...options, pageSize: 1000, pageToken });
      yield* page.events;
      pageToken = page.nextPageToken;
      if (!pageToken) return;
    }
  }

  /**
   * Follows events: the retained ones after `afterSequence` (unset: none),
   * one `caught_up` marker, then live events until the signal aborts (the
   * iterator then returns) or the caller stops iterating. Errors other than
   * the abort are AreErrors (UNAVAILABLE when the sidecar stops: resume with
   * `afterSequence` set to the last sequence received). Events the sidecar
   * has ready together come in one message and are yielded one by one, as if
   * each had come alone.
   */
  async *stream(filter: TraceFilter = {}, options: StreamOptions = {}): AsyncGenerator<TraceItem> {
    const { signal } = options;
    if (signal?.aborted) return;
    const filters = eventFilter(filter);
    const request = StreamEventsRequest.fromPartial({ filter: filters, afterSequence: options.afterSequence, maxBatch: STREAM_BATCH });
    const seen = new Recent();
    try {
      for await (const message of this.rpc.stream(this.raw.streamEvents.bind(this.raw), request, { signal, timeoutMs: Infinity })) {
        if (message.event !== undefined) {
          if (seen.add(message.event.sequence)) yield { type: "event", event: message.event };
        } else if (message.batch !== undefined) {
          // Consecutive events, in order, with no notice among them.
          for (const event of message.batch.events) {
            if (seen.add(event.sequence)) yield { type: "event", event };
          }
        } else if (message.caughtUp !== undefined) {
          yield { type: "caught_up", sequence: message.caughtUp.sequence };
        } else if (message.missed !== undefined) {
          const missed = message.missed;
          if ((options.fillMissed ?? true) && missed.reason === MissedReason.MISSED_REASON_SLOW_SUBSCRIBER) {
            for await (const event of this.missedEvents(filters, missed, signal)) {
              if (seen.add(event.sequence)) yield { type: "event", event };
            }
          } else {
            yield { type: "missed", missed };
          }
        }
      }
    } catch (error) {
      if (signal?.aborted) return;
      throw error;
    }
  }

  private async *missedEvents(filter: EventFilter, missed: EventsMissed, signal: AbortSignal | undefined): AsyncGenerator<Event> {
    let pageToken = "";
    for (;;) {
      const page = await this.rpc.unary(
        this.raw.listEvents.bind(this.raw),
        ListEventsRequest.fromPartial({ filter, afterSequence: missed.resumeAfterSequence, pageSize: 1000, pageToken }),
        { signal },
      );
      for (const event of page.events) {
        if (event.sequence > missed.lastMissedSequence) return;
        yield event;
      }
      pageToken = page.nextPageToken;
      if (!pageToken || page.lastSequence >= missed.lastMissedSequence) return;
    }
  }
}
