// Workflow state against a real sidecar: reads by pointer and version, merge and pointer
// patches, optimistic concurrency, checkpoints, forks, memory, and a handler's bound view.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { AreError, Code, Worker, WorkflowSpec, type StateCheckpoint, type TaskContext } from "@are-runtime/sdk";

import { FAST, sharedSidecar, unique, within } from "./helpers.js";

const shared = sharedSidecar();

/** A running workflow (one task nobody serves keeps it open); its state starts at version 1. */
async function openWorkflow(initialState: Record<string, unknown> = {}): Promise<string> {
  const spec = new WorkflowSpec("ts-state", { initialState }).task("hold", { capability: unique("nobody") });
  const handle = await shared.client.workflows.submit(spec);
  return handle.workflowId;
}

async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of items) out.push(item);
  return out;
}

async function rejection(promise: Promise<unknown>): Promise<AreError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  assert.ok(error instanceof AreError, `expected an AreError, got ${String(error)}`);
  return error;
}

describe("state", () => {
  test("get and patch round trip: selected paths, missing paths, reads at a version", async () => {
    const workflowId = await openWorkflow({ plan: { steps: ["search"] }, budget: 10 });
    const first = await shared.client.state.get(workflowId);
    assert.equal(first.version, 1);
    assert.deepEqual(first.values, { "": { plan: { steps: ["search"] }, budget: 10 } });
    assert.ok(first.updateTime instanceof Date);

    const patched = await shared.client.state.patch(workflowId, { merge: { plan: { steps: ["search", "book"] }, budget: null, note: "é" } });
    assert.equal(patched.version, 2);

    // NaN was written as null, which a merge patch reads as "remove": refused, as the Python SDK does.
    const nan = await shared.client.state.patch(workflowId, { merge: { plan: { score: NaN } } }).catch((e: unknown) => e);
    assert.ok(nan instanceof TypeError && /NaN at `plan.score`/.test(nan.message), String(nan));

    const latest = await shared.client.state.get(workflowId, ["/plan/steps/1", "/note", "/budget", "/plan/absent"]);
    assert.equal(latest.version, 2);
    assert.deepEqual(latest.values, { "/plan/steps/1": "book", "/note": "é" });
    assert.deepEqual(latest.missingPaths, ["/budget", "/plan/absent"]);

    const old = await shared.client.state.get(workflowId, ["/budget", "/plan/steps"], { version: 1 });
    assert.equal(old.version, 1);
    assert.deepEqual(old.values, { "/budget": 10, "/plan/steps": ["search"] });

    const bound = shared.client.state.forWorkflow(workflowId);
    assert.deepEqual(await bound.get<string[]>("/plan/steps"), ["search", "book"]);
    assert.equal(await bound.get("/budget"), undefined);
    assert.equal(await bound.get("/budget", { version: 1 }), 10);

    const missing = await rejection(shared.client.state.get(workflowId, [], { version: 99 }));
    assert.equal(missing.code, Code.NOT_FOUND);
    assert.equal(missing.reason, "STATE_VERSION_NOT_FOUND");
    const unknown = await rejection(shared.client.state.get(unique("wf-none")));
    assert.equal(unknown.code, Code.NOT_FOUND);
    assert.equal(unknown.reason, "WORKFLOW_NOT_FOUND");
  });

  test("an expected-version conflict is ABORTED with the sidecar's reason and changes nothing", async () => {
    const workflowId = await openWorkflow({ counter: 0 });
    const state = shared.client.state.forWorkflow(workflowId);
    const { version } = await state.patch({ merge: { counter: 1 } }, { expectedVersion: 1 });
    assert.equal(version, 2);

    const error = await rejection(state.patch({ merge: { counter: 99 } }, { expectedVersion: 1 }));
    assert.equal(error.code, Code.ABORTED);
    assert.equal(error.reason, "STATE_VERSION_MISMATCH");
    assert.equal(error.metadata["current_version"], "2");
    assert.equal(error.field, "expected_version");
    const after = await state.read(["/counter"]);
    assert.equal(after.version, 2);
    assert.deepEqual(after.values, { "/counter": 1 });
  });

  test("pointer operations apply in order; a missing parent is refused and nothing changes", async () => {
    const workflowId = await openWorkflow({ items: ["a"], draft: "x" });
    const state = shared.client.state.forWorkflow(workflowId);
    const { version } = await state.patch(
      {
        operations: [
          { op: "set", path: "/items/-", value: "b" },
          { op: "set", path: "/meta", value: { n: 1.5, ok: true } },
          { op: "set", path: "/meta/tags", value: [] },
          { op: "remove", path: "/draft" },
        ],
      },
      { writer: "ts-test" },
    );
    assert.equal(version, 2);
    assert.deepEqual(await state.get(""), { items: ["a", "b"], meta: { n: 1.5, ok: true, tags: [] } });

    const notApplicable = await rejection(state.patch({ operations: [{ op: "set", path: "/nowhere/deep", value: 1 }] }));
    assert.equal(notApplicable.code, Code.FAILED_PRECONDITION);
    assert.equal(notApplicable.reason, "PATCH_NOT_APPLICABLE");
    const badPointer = await rejection(state.patch({ operations: [{ op: "set", path: "no-slash", value: 1 }] }));
    assert.equal(badPointer.code, Code.INVALID_ARGUMENT);
    assert.equal(badPointer.reason, "INVALID_JSON_POINTER");
    assert.equal((await state.read()).version, 2);

    // Refused before sending: neither or both forms.
    const ambiguous = await rejection(shared.client.state.patch(workflowId, {} as never));
    assert.equal(ambiguous.code, Code.INVALID_ARGUMENT);
    assert.equal(ambiguous.field, "patch");
  });

  test("checkpoints are listed newest first with their writers, in bounded pages", async () => {
    const workflowId = await openWorkflow();
    const state = shared.client.state.forWorkflow(workflowId);
    for (let i = 1; i <= 4; i += 1) await state.patch({ merge: { step: i } }, { writer: `writer-${i}` });

    const all = await collect(state.checkpoints());
    assert.deepEqual(
      all.map((c: StateCheckpoint) => c.version),
      [5, 4, 3, 2, 1],
    );
    assert.equal(all[0]?.writer, "writer-4");
    assert.equal(all[4]?.writer, "submit");
    assert.ok(all.every((c) => c.sizeBytes > 0 && c.createTime instanceof Date));

    const page = await state.listCheckpoints({ pageSize: 2 });
    assert.deepEqual(
      page.checkpoints.map((c) => c.version),
      [5, 4],
    );
    assert.ok(page.nextPageToken);
    assert.equal(page.latestVersion, 5);
    assert.equal(page.oldestVersion, 1);
    const next = await state.listCheckpoints({ pageSize: 2, pageToken: page.nextPageToken });
    assert.deepEqual(
      next.checkpoints.map((c) => c.version),
      [3, 2],
    );
    assert.deepEqual(
      (await collect(shared.client.state.checkpoints(workflowId, { limit: 3 }))).map((c) => c.version),
      [5, 4, 3],
    );
  });

  test("a fork starts from the chosen version with the notes up to then", async () => {
    const workflowId = await openWorkflow({ phase: "draft" });
    const state = shared.client.state.forWorkflow(workflowId);
    await state.memory.add(["an early note"]);
    const { version } = await state.patch({ merge: { phase: "review" } });
    await state.patch({ merge: { phase: "final" } });

    const fork = await state.fork({ version, newWorkflowId: unique("wf-fork") });
    assert.match(fork.workflowId, /^wf-fork-/);
    assert.equal(fork.sourceVersion, version);
    const forked = shared.client.state.forWorkflow(fork.workflowId);
    assert.equal(await forked.get("/phase"), "review");
    assert.equal(await state.get("/phase"), "final");
    const notes = await forked.memory.hydrate("early note");
    assert.deepEqual(notes.texts, ["an early note"]);

    const latest = await shared.client.state.fork(workflowId);
    assert.notEqual(latest.workflowId, workflowId);
    assert.equal(latest.sourceVersion, version + 1);
  });

  test("memory: notes added by text and by vector, hydrated with filter, top-k and budget", async () => {
    const textual = await openWorkflow();
    const ids = await shared.client.state.memory.add(textual, [
      "the user prefers aisle seats",
      { text: "the user is vegetarian", metadata: { kind: "diet" }, content: { source: "chat" } },
      "the meeting moved to friday",
    ]);
    assert.equal(ids.length, 3);
    assert.equal(new Set(ids).size, 3);

    const seats = await shared.client.state.memory.hydrate(textual, "aisle seats preference", { topK: 1 });
    assert.equal(seats.hits.length, 1);
    assert.equal(seats.hits[0]?.memoryId, ids[0]);
    assert.deepEqual(seats.texts, ["the user prefers aisle seats"]);

    const diet = await shared.client.state.memory.hydrate(textual, "user", { metadata: { kind: "diet" } });
    assert.deepEqual(diet.texts, ["the user is vegetarian"]);
    assert.deepEqual(diet.hits[0]?.content, { source: "chat" });
    assert.deepEqual(diet.hits[0]?.metadata, { kind: "diet" });

    const budget = await shared.client.state.memory.hydrate(textual, "the user", { maxBytes: 30 });
    assert.ok(budget.totalBytes <= 30, String(budget.totalBytes));
    assert.equal(budget.truncated, true);

    const vectors = shared.client.state.forWorkflow(await openWorkflow()).memory;
    await vectors.add([
      { text: "north", vector: [1, 0, 0] },
      { text: "east", vector: [0, 1, 0] },
    ]);
    const near = await vectors.hydrate([0.9, 0.1, 0], { topK: 2, includeVectors: true, minSimilarity: 0.5 });
    assert.deepEqual(near.texts, ["north"]);
    assert.deepEqual(near.hits[0]?.vector, [1, 0, 0]);
    assert.ok((near.hits[0]?.similarity ?? 0) > 0.9);
    const mismatch = await rejection(vectors.hydrate([1, 0]));
    assert.equal(mismatch.code, Code.INVALID_ARGUMENT);
    assert.equal(mismatch.reason, "DIMENSION_MISMATCH");
  });

  test("a worker handler patches its workflow through ctx.state, recorded as its attempt", async () => {
    const capability = unique("stateful");
    let seen: { taskId: string; attempt: number; before: unknown } | undefined;
    const worker = new Worker(shared.client, { ...FAST, name: "ts-state" }).handle(capability, async (ctx: TaskContext) => {
      const before = await ctx.state.get("/count");
      const { version } = await ctx.state.patch({ merge: { count: 1, by: ctx.taskId } }, { expectedVersion: ctx.stateVersion });
      await ctx.state.memory.add(["written by a handler"]);
      seen = { taskId: ctx.state.taskId, attempt: ctx.state.attempt, before };
      return { version };
    });
    const running = worker.run();
    try {
      const spec = new WorkflowSpec("ts-state-worker", { initialState: { count: 0 } }).task("work", { capability });
      const handle = await shared.client.workflows.submit(spec);
      assert.deepEqual(await handle.result({ timeoutMs: 30_000 }), { version: 2 });
      assert.deepEqual(seen, { taskId: "work", attempt: 1, before: 0 });

      const state = shared.client.state.forWorkflow(handle.workflowId);
      assert.deepEqual(await state.get(""), { count: 1, by: "work" });
      const [latest] = await collect(state.checkpoints({ limit: 1 }));
      assert.equal(latest?.taskId, "work");
      assert.equal(latest?.attempt, 1);
      assert.deepEqual((await state.memory.hydrate("handler")).texts, ["written by a handler"]);

      // The attempt is no longer held: a patch in its name is refused.
      const stale = await rejection(shared.client.state.forTask({ workflowId: handle.workflowId, taskId: "work", attempt: 1 }).patch({ merge: { late: true } }));
      assert.equal(stale.code, Code.FAILED_PRECONDITION);
    } finally {
      await within(worker.stop({ graceMs: 2_000 }), 20_000, "the worker to stop");
      await running;
    }
  });
});
