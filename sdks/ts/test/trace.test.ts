// The trace stream against a real sidecar: a workflow's events, and an end on abort.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { Worker, WorkflowSpec, eventTypeName, type TraceItem } from "@are-runtime/sdk";

import { FAST, sharedSidecar, unique, within } from "./helpers.js";

const shared = sharedSidecar();

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
});
