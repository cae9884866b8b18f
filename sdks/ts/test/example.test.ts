// The README's example, run against a real sidecar (kept in step with README.md by hand;
// FAST only shortens the long poll so that stop() returns sooner).
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Client, Worker, WorkflowSpec, WorkflowFailedError } from "@are-runtime/sdk";
import type { SidecarProcess } from "@are-runtime/sdk/testing";

import { FAST, startSidecar } from "./helpers.js";

let sidecar: SidecarProcess;

before(async () => {
  sidecar = await startSidecar();
});

after(async () => {
  if (sidecar) await sidecar.stop();
});

test("the README example runs", async () => {
  const client = await Client.connect(sidecar.target);
  assert.equal(await client.health(), "SERVING");

  const worker = new Worker(client, { ...FAST, name: "writer", maxConcurrency: 4 })
    .handle("research", async (ctx) => {
      const { topic } = ctx.input as { topic: string };
      ctx.reportLlmCall("gpt-x", { inputTokens: 900, outputTokens: 300, costMicroUsd: 1200 });
      return { notes: `three facts about ${topic}` };
    })
    .handle("write", async (ctx) => {
      const { notes } = ctx.dependencyOutputs["research"] as { notes: string };
      return { draft: await draft(notes, { signal: ctx.signal }) };
    });
  const serving = worker.run();

  const spec = new WorkflowSpec("research-pipeline")
    .task("research", { capability: "research", input: { topic: "vector caches" } })
    .task("write", {
      capability: "write",
      dependsOn: ["research"],
      retryPolicy: { maximumAttempts: 3, initialIntervalMs: 500 },
    });
  const handle = await client.workflows.submit(spec);
  let output: unknown;
  try {
    output = await handle.result({ timeoutMs: 60_000 });
  } catch (error) {
    if (error instanceof WorkflowFailedError) console.error(error.workflow.failure);
    throw error;
  }
  assert.deepEqual(output, { draft: "A draft from three facts about vector caches" });

  await worker.stop();
  await serving;
  client.close();
});

async function draft(notes: string, _: { signal: AbortSignal }): Promise<string> {
  return `A draft from ${notes}`;
}
