// The worker stream's batches against a real sidecar: many large items pending at once (heartbeat
// details, outputs, failures with their causes) go in several messages, each under the sidecar's
// bound and the client's own, so the stream holds and no attempt is lost.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { Client, RawPayload, TaskError, Worker, WorkflowSpec, type TaskContext, type TaskInfo } from "@are-runtime/sdk";

import { FAST, sharedSidecar, unique, within } from "./helpers.js";

const shared = sharedSidecar();

/** Resolves for every caller once `n` have called: the handlers then report at the same moment. */
function barrier(n: number): () => Promise<void> {
  let arrived = 0;
  let release!: () => void;
  const all = new Promise<void>((resolve) => {
    release = resolve;
  });
  return () => {
    arrived += 1;
    if (arrived === n) release();
    return all;
  };
}

/**
 * Runs one single-task workflow per id on `worker` (each task failing for good on its first
 * failure) and returns the tasks once every workflow has closed; the worker is always stopped.
 */
async function runAll(worker: Worker, ids: string[], capabilityOf: (id: string) => string): Promise<Map<string, TaskInfo>> {
  const running = worker.run();
  try {
    const handles = await Promise.all(
      ids.map((id) => {
        const spec = new WorkflowSpec("ts-batch").task(id, { capability: capabilityOf(id), retryPolicy: { maximumAttempts: 1 } });
        return shared.client.workflows.submit(spec);
      }),
    );
    await within(Promise.all(handles.map((handle) => handle.wait({ timeoutMs: 60_000 }))), 70_000, "the workflows to close");
    const tasks = await Promise.all(handles.map((handle, i) => handle.task(ids[i]!)));
    return new Map(tasks.map((task) => [task.taskId, task]));
  } finally {
    await within(worker.stop({ graceMs: 2_000 }), 20_000, "the worker to stop");
    await running;
  }
}

/** Each task's state and attempt, counted: `{ "COMPLETED#1": 70 }`. */
function outcomes(tasks: Map<string, TaskInfo>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const task of tasks.values()) out[`${task.state}#${task.attempt}`] = (out[`${task.state}#${task.attempt}`] ?? 0) + 1;
  return out;
}

describe("worker stream batches", () => {
  test("seventy attempts heartbeating 1 MiB of details at once go in messages under the 64 MiB bound", async () => {
    // Heartbeats were batched by count alone: one message of about 70 MiB, which the client refused
    // to send (RESOURCE_EXHAUSTED), ending the stream and losing all seventy attempts.
    const n = 70;
    const capability = unique("beat");
    const warnings: string[] = [];
    const ready = barrier(n);
    const worker = new Worker(shared.client, {
      ...FAST,
      name: "ts-batch-beat",
      maxConcurrency: n,
      logger: { warn: (message: string) => warnings.push(message) },
    }).handle(capability, async (ctx: TaskContext) => {
      await ready();
      await ctx.heartbeat("x".repeat(1_040_000));
      return ctx.attempt;
    });
    const ids = [...Array(n).keys()].map((i) => `t${i}`);
    const tasks = await runAll(worker, ids, () => capability);
    assert.deepEqual(outcomes(tasks), { "COMPLETED#1": n });
    assert.deepEqual(warnings, []);
    assert.equal(worker.stats.connects, 1);
  });

  test("a client bounded below the sidecar cuts completions, failures and heartbeats under its own bound", async () => {
    // Results were cut at 16 MiB whatever the client's bound: three 3 MiB outputs made one 9 MiB
    // message, over this client's 8 MiB, and the stream ended with every attempt on it.
    const bounded = await Client.connect(shared.sidecar.target, { maxMessageBytes: 8 * 1024 * 1024 });
    try {
      const kinds = { complete: 3, fail: 9, beat: 9 };
      const capabilities = { complete: unique("complete"), fail: unique("fail"), beat: unique("beat") };
      const warnings: string[] = [];
      const ready = barrier(kinds.complete + kinds.fail + kinds.beat);
      const worker = new Worker(bounded, {
        ...FAST,
        name: "ts-batch-bounded",
        maxConcurrency: 32,
        logger: { warn: (message: string) => warnings.push(message) },
      })
        .handle(capabilities.complete, async () => {
          await ready();
          return new Uint8Array(3 * 1024 * 1024).fill(7);
        })
        .handle(capabilities.fail, async () => {
          await ready();
          throw new TaskError("failed with details", { details: new RawPayload(new Uint8Array(1_000_000), "application/octet-stream") });
        })
        .handle(capabilities.beat, async (ctx: TaskContext) => {
          await ready();
          await ctx.heartbeat("x".repeat(1_000_000));
          return "beaten";
        });
      const ids = Object.entries(kinds).flatMap(([kind, count]) => [...Array(count).keys()].map((i) => `${kind}-${i}`));
      const tasks = await runAll(worker, ids, (id) => capabilities[id.split("-")[0] as keyof typeof kinds]);
      assert.deepEqual(outcomes(tasks), { "COMPLETED#1": kinds.complete + kinds.beat, "FAILED#1": kinds.fail });
      assert.deepEqual(warnings, []);
      assert.equal(worker.stats.connects, 1);
      const failure = tasks.get("fail-0")?.failure;
      assert.equal(failure?.message, "failed with details");
      assert.equal((failure?.details as RawPayload).data.length, 1_000_000);
    } finally {
      bounded.close();
    }
  });

  test("eighty failures of about 1 MiB each with their causes go in messages under the bound", async () => {
    // A batch of failures was sized by their details and stack trace alone (UTF-16 units, not
    // bytes): with their causes counted as nothing, eighty of them made one message over 64 MiB.
    const n = 80;
    const capability = unique("heavy");
    const warnings: string[] = [];
    const ready = barrier(n);
    const message = "é".repeat(32 * 1024);
    const stack = "é".repeat(64 * 1024);
    const worker = new Worker(shared.client, {
      ...FAST,
      name: "ts-batch-heavy",
      maxConcurrency: n,
      logger: { warn: (line: string) => warnings.push(line) },
    }).handle(capability, async () => {
      await ready();
      let error: Error | undefined;
      for (let i = 0; i < 9; i += 1) {
        error = new Error(message, error === undefined ? undefined : { cause: error });
        error.stack = stack;
      }
      throw error;
    });
    const ids = [...Array(n).keys()].map((i) => `t${i}`);
    const tasks = await runAll(worker, ids, () => capability);
    assert.deepEqual(outcomes(tasks), { "FAILED#1": n });
    assert.deepEqual(warnings, []);
    assert.equal(worker.stats.connects, 1);
    let depth = 0;
    for (let f = tasks.get("t0")?.failure; f !== undefined; f = f.cause) depth += 1;
    assert.equal(depth, 5); // 9 levels of 192 KiB, fitted to 1 MiB
  });
});
