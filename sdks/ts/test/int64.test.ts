// int64 values beyond 2^53 against a real sidecar: an event attribute (a nanosecond clock, as Go
// and Python workers send) and a workflow's usage summed past 2^53 read as the nearest double.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { EventType, Worker, WorkflowSpec, type Event, type TraceItem } from "@are-runtime/sdk";
import { ReportEventsRequest, type ReportEventsResponse } from "@are-runtime/sdk/gen/are/v1/worker_service";

import { FAST, serving, sharedSidecar, unique, within } from "./helpers.js";

const shared = sharedSidecar();

/** A nanosecond clock (about 1.7e18), as the nearest double. */
const CLOCK_NS = Number(1_761_000_000_123_456_789n);
/** The smallest int64, exact as a double. */
const INT64_MIN = -(2 ** 63);

describe("int64 beyond 2^53", () => {
  test("an event attribute and a workflow's usage past 2^53 are read, as the nearest double", async () => {
    // ts-proto's decoding threw above Number.MAX_SAFE_INTEGER, which grpc-js reported as INTERNAL
    // "Response message parsing error": every read covering the event, and every read of the
    // workflow (get, wait, watch, result), failed for good.
    const capability = unique("int64");
    const raw = shared.client.raw.worker;
    const worker = new Worker(shared.client, { ...FAST, name: "ts-int64" }).handle(capability, async (ctx) => {
      ctx.addUsage({ inputTokens: Number.MAX_SAFE_INTEGER, costMicroUsd: Number.MAX_SAFE_INTEGER });
      if (ctx.taskId === "a") {
        const request = ReportEventsRequest.fromPartial({
          events: [
            {
              workflowId: ctx.workflowId,
              taskId: ctx.taskId,
              attempt: ctx.attempt,
              eventType: EventType.EVENT_TYPE_WORKER_CUSTOM,
              eventTime: new Date(),
              name: "ns-clock",
              attributes: { clock_ns: { intValue: CLOCK_NS }, lowest: { intValue: INT64_MIN } },
            },
          ],
        });
        await new Promise<ReportEventsResponse>((resolve, reject) => {
          raw.reportEvents(request, shared.client.metadata(), (error, response) => (error ? reject(error) : resolve(response)));
        });
      }
      return { ok: true };
    });
    const spec = new WorkflowSpec("ts-int64").task("a", { capability }).task("b", { capability }).task("done", {
      capability,
      dependsOn: ["a", "b"],
    });
    const handle = await shared.client.workflows.submit(spec);
    await serving(worker, async () => {
      assert.deepEqual(await within(handle.result({ timeoutMs: 30_000 }), 40_000, "the result"), { ok: true });
    });
    // Three tasks of 2^53 - 1 each: 3 * (2^53 - 1), over 2^54, to the nearest double.
    const total = 3 * Number.MAX_SAFE_INTEGER;
    const waited = await handle.wait({ timeoutMs: 10_000 });
    assert.equal(waited.state, "COMPLETED");
    assert.equal(waited.usage.costMicroUsd, total);
    assert.equal(waited.usage.inputTokens, total);
    assert.equal((await handle.get()).usage.costMicroUsd, total);
    for await (const update of handle.watch()) {
      assert.equal(update.workflow.usage.inputTokens, total);
      if (update.workflow.closed) break;
    }

    const attributes = (event: Event | undefined): Record<string, number | undefined> =>
      Object.fromEntries(Object.entries(event?.attributes ?? {}).map(([key, value]) => [key, value.intValue]));
    const expected = { clock_ns: CLOCK_NS, lowest: INT64_MIN };
    const page = await shared.client.trace.listEvents({ workflowIds: [handle.workflowId] });
    assert.deepEqual(attributes(page.events.find((event) => event.name === "ns-clock")), expected);
    const listed: Event[] = [];
    for await (const event of shared.client.trace.iterEvents({ workflowIds: [handle.workflowId] })) listed.push(event);
    assert.deepEqual(attributes(listed.find((event) => event.name === "ns-clock")), expected);
    const controller = new AbortController();
    const streamed: TraceItem[] = [];
    const reading = (async () => {
      for await (const item of shared.client.trace.stream({ workflowIds: [handle.workflowId] }, { afterSequence: 0, signal: controller.signal })) {
        streamed.push(item);
        if (item.type === "caught_up") controller.abort();
      }
    })();
    await within(reading, 10_000, "the replay to catch up");
    const clock = streamed.find((item) => item.type === "event" && item.event.name === "ns-clock");
    assert.deepEqual(attributes(clock?.type === "event" ? clock.event : undefined), expected);
  });
});
