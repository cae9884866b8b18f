// The trace stream against a real sidecar: a workflow's events, and an end on abort.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { InterceptingCall, type CallOptions, type ClientReadableStream, type Interceptor, type Metadata } from "@grpc/grpc-js";

import { Client, EventType, Worker, WorkflowSpec, eventTypeName, type Event, type TraceItem } from "@are-runtime/sdk";
import type { StreamEventsRequest, StreamEventsResponse } from "@are-runtime/sdk/gen/are/v1/trace_service";
import { ReportEventsRequest, type ReportEventsResponse } from "@are-runtime/sdk/gen/are/v1/worker_service";

import { FAST, serving, sharedSidecar, unique, within } from "./helpers.js";

const shared = sharedSidecar();

/** What a client's StreamEvents calls carried: each request's maxBatch, and how many events each message held (1 alone). */
interface EventWire {
  maxBatches: number[];
  messages: number[];
}

/**
 * Records every StreamEvents call of `client` on the returned wire, with a grpc-js interceptor on
 * the call (it sees the request as sent and each response as received, before the SDK does).
 */
function watchEventWire(client: Client): EventWire {
  const wire: EventWire = { maxBatches: [], messages: [] };
  const recorder: Interceptor = (options, nextCall) =>
    new InterceptingCall(nextCall(options), {
      sendMessage(message: StreamEventsRequest, next) {
        wire.maxBatches.push(message.maxBatch);
        next(message);
      },
      start(metadata, _listener, next) {
        next(metadata, {
          onReceiveMessage(message: StreamEventsResponse, nextMessage) {
            if (message.event !== undefined) wire.messages.push(1);
            if (message.batch !== undefined) wire.messages.push(message.batch.events.length);
            nextMessage(message);
          },
        });
      },
    });
  type StreamEvents = (request: StreamEventsRequest, metadata: Metadata, options: Partial<CallOptions>) => ClientReadableStream<StreamEventsResponse>;
  const raw = client.raw.trace as unknown as { streamEvents: StreamEvents };
  const streamEvents = raw.streamEvents.bind(raw);
  raw.streamEvents = (request, metadata, options) => streamEvents(request, metadata, { ...options, interceptors: [recorder] });
  return wire;
}

/** How many events the messages held; each held at most maxBatch (256). */
function carried(messages: number[]): number {
  for (const size of messages) assert.ok(size <= 256, `a message of ${size} events, over maxBatch 256: ${messages.join(",")}`);
  return messages.reduce((sum, size) => sum + size, 0);
}

/** Reads `stream` until `done` holds for the events read (or a caught-up marker, when `done` is not given); no other item may come. */
async function readEvents(stream: AsyncGenerator<TraceItem>, done?: (events: Event[]) => boolean): Promise<Event[]> {
  const events: Event[] = [];
  while (done === undefined || !done(events)) {
    const next = await within(stream.next(), 10_000, `the event after ${events.length}`);
    assert.equal(next.done, false, `the stream ended after ${events.length} events`);
    const item = next.value as TraceItem;
    if (item.type === "caught_up" && done === undefined) break;
    assert.equal(item.type, "event", `item ${JSON.stringify(item)} after ${events.length} events`);
    if (item.type === "event") events.push(item.event);
  }
  return events;
}

/** How many custom events the batched workflow's task reports: enough that a replay has hundreds ready at once. */
const REPORTED = 600;

describe("trace", () => {
  test("the stream sees the workflow's events, live, and ends on abort", async () => {
    const capability = unique("traced");
    const worker = new Worker(shared.client, { ...FAST, name: "ts-traced" }).handle(capability, (ctx) => {
      ctx.reportToolCall("search", { durationMs: 5 });
      ctx.reportLlmCall("model-y", { inputTokens: 3, outputTokens: 4 });
      return "done";
    });
    const running = worker.run();
    const controller = new AbortController();
    // Live only (no afterSequence): the stream is open before the workflow exists.
    const stream = shared.client.trace.stream({}, { signal: controller.signal });
    const first = await within(stream.next(), 10_000, "the caught-up marker");
    assert.equal((first.value as TraceItem).type, "caught_up");

    const handle = await shared.client.workflows.submit(new WorkflowSpec("ts-traced").task("only", { capability }));
    const seen: string[] = [];
    const names: string[] = [];
    const collect = (async () => {
      for await (const item of stream) {
        if (item.type !== "event" || item.event.workflowId !== handle.workflowId) continue;
        seen.push(eventTypeName(item.event.eventType));
        if (item.event.name) names.push(item.event.name);
        if (seen.includes("WORKFLOW_COMPLETED")) controller.abort();
      }
    })();
    await within(collect, 30_000, "the workflow's events");
    await worker.stop();
    await running;

    for (const expected of ["WORKFLOW_SUBMITTED", "TASK_DISPATCHED", "TOOL_CALL", "LLM_CALL", "TASK_COMPLETED", "WORKFLOW_COMPLETED"]) {
      assert.ok(seen.includes(expected), `${expected} in ${seen.join(", ")}`);
    }
    assert.ok(seen.indexOf("WORKFLOW_SUBMITTED") < seen.indexOf("WORKFLOW_COMPLETED"));
    assert.ok(names.includes("search") && names.includes("model-y"), names.join(","));
  });

  test("a replay from a cursor, filtered by workflow and type, then caught up", async () => {
    const handle = await shared.client.workflows.submit(new WorkflowSpec("ts-replay").task("a", { capability: unique("none") }));
    await handle.cancel({ reason: "replay test" });
    const controller = new AbortController();
    const items: TraceItem[] = [];
    const reading = (async () => {
      for await (const item of shared.client.trace.stream(
        { workflowIds: [handle.workflowId], eventTypes: ["WORKFLOW_SUBMITTED", "WORKFLOW_CANCELLED"] },
        { afterSequence: 0, signal: controller.signal },
      )) {
        items.push(item);
        if (item.type === "caught_up") controller.abort();
      }
    })();
    await within(reading, 10_000, "the replay");
    assert.deepEqual(
      items.map((item) => (item.type === "event" ? eventTypeName(item.event.eventType) : item.type)),
      ["WORKFLOW_SUBMITTED", "WORKFLOW_CANCELLED", "caught_up"],
    );
    const page = await shared.client.trace.listEvents({ workflowIds: [handle.workflowId] });
    assert.ok(page.events.length >= 2);
  });

  test("an abort while waiting for live events ends the iterator without an error", async () => {
    const controller = new AbortController();
    const stream = shared.client.trace.stream({ workflowIds: [unique("wf-none")] }, { signal: controller.signal });
    const marker = await within(stream.next(), 10_000, "the caught-up marker");
    assert.equal((marker.value as TraceItem).type, "caught_up");
    const next = stream.next();
    controller.abort();
    const end = await within(next, 10_000, "the stream to end");
    assert.equal(end.done, true);
  });

  test("events the sidecar sends in batches are yielded one by one, in order, each once", async () => {
    // The stream asks for batches (maxBatch), which cost the sidecar far less than one message per
    // event: events followed live, and a replay of hundreds ready at once (which comes in batches),
    // are yielded whole and in order, as ListEvents lists them, and a cursor taken from inside a
    // batch resumes right after it.
    const client = await Client.connect(shared.sidecar.target);
    try {
      const wire = watchEventWire(client);
      const capability = unique("batched");
      const worker = new Worker(client, { ...FAST, name: "ts-batched" }).handle(capability, async (ctx) => {
        const request = ReportEventsRequest.fromPartial({
          events: Array.from({ length: REPORTED }, (_, i) => ({
            workflowId: ctx.workflowId,
            taskId: ctx.taskId,
            attempt: ctx.attempt,
            eventType: EventType.EVENT_TYPE_WORKER_CUSTOM,
            name: `e${i}`,
          })),
        });
        await new Promise<ReportEventsResponse>((resolve, reject) => {
          client.raw.worker.reportEvents(request, client.metadata(), (error, response) => (error ? reject(error) : resolve(response)));
        });
        return "done";
      });
      const workflowId = unique("wf-batched");
      const filter = { workflowIds: [workflowId] };

      // Live: the stream is open before the workflow exists; its events are recorded at once.
      const live = client.trace.stream(filter);
      assert.deepEqual(await readEvents(live), []);
      await serving(worker, async () => {
        const handle = await client.workflows.submit(new WorkflowSpec("ts-batched", { workflowId }).task("only", { capability }));
        assert.equal((await within(handle.wait({ timeoutMs: 60_000 }), 70_000, "the workflow")).state, "COMPLETED");
      });
      const listed: number[] = [];
      for await (const event of client.trace.iterEvents(filter)) listed.push(event.sequence);
      assert.ok(listed.length >= REPORTED, `ListEvents lists ${listed.length} events; want at least ${REPORTED}`);
      const followed = await readEvents(live, (events) => events.length >= listed.length);
      await live.return(undefined); // ends the call
      assert.deepEqual(followed.map((event) => event.sequence), listed);
      assert.deepEqual(wire.maxBatches, [256]);
      assert.equal(carried(wire.messages), listed.length);

      // Replay: every event is ready at once.
      wire.maxBatches = [];
      wire.messages = [];
      const replay = client.trace.stream(filter, { afterSequence: 0 });
      const replayed = await readEvents(replay);
      await replay.return(undefined);
      assert.deepEqual(replayed.map((event) => event.sequence), listed);
      const names = replayed.filter((event) => event.eventType === EventType.EVENT_TYPE_WORKER_CUSTOM).map((event) => event.name);
      assert.deepEqual(names, Array.from({ length: REPORTED }, (_, i) => `e${i}`));
      assert.deepEqual(wire.maxBatches, [256]);
      assert.ok(
        wire.messages.some((size) => size > 1),
        `a replay of ${listed.length} ready events came in ${wire.messages.length} messages, none a batch`,
      );
      assert.equal(carried(wire.messages), listed.length);

      // A resume from an event inside the first batch (its cursor: that event's sequence).
      const first = wire.messages.findIndex((size) => size > 1);
      const middle = carried(wire.messages.slice(0, first)) + Math.floor((wire.messages[first] as number) / 2);
      const resume = client.trace.stream(filter, { afterSequence: (replayed[middle] as Event).sequence });
      const resumed = await readEvents(resume);
      await resume.return(undefined);
      assert.deepEqual(resumed.map((event) => event.sequence), listed.slice(middle + 1));
    } finally {
      client.close(); // cancels the streams an assertion left open
    }
  });
});
