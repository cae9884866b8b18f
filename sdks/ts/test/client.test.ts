// Client basics against a real sidecar: connect, health, errors with reason and field, abort, token.
import assert from "node:assert/strict";
import { getEventListeners } from "node:events";
import { describe, test } from "node:test";

import { AreError, Client, Code, WaitTimeoutError, WorkflowSpec, WorkflowSpecError } from "@are-runtime/sdk";

import { sharedSidecar, startSidecar, unique, within } from "./helpers.js";

const shared = sharedSidecar({}, (exitCode) => assert.equal(exitCode, 0, "the sidecar exits 0 after SIGTERM"));

describe("connect and health", () => {
  test("health says SERVING", async () => {
    assert.equal(await shared.client.health(), "SERVING");
    assert.equal(await shared.client.health("are.v1.SchedulerService"), "SERVING");
  });

  test("connecting where nothing listens fails with UNAVAILABLE", async () => {
    const error = await Client.connect("127.0.0.1:1", { connectTimeoutMs: 300 }).catch((e: unknown) => e);
    assert.ok(error instanceof AreError);
    assert.equal(error.code, Code.UNAVAILABLE);
  });
});

describe("keepalive", () => {
  test("a client with a custom keepalive, or none, still works", async () => {
    for (const options of [{ keepaliveTimeMs: 10_000, keepaliveTimeoutMs: 5_000 }, { keepaliveTimeMs: null }]) {
      const other = await Client.connect(shared.sidecar.target, options);
      try {
        assert.equal(await other.health(), "SERVING");
        const error = await other.workflows.get("wf-does-not-exist").catch((e: unknown) => e);
        assert.ok(error instanceof AreError);
        assert.equal(error.code, Code.NOT_FOUND);
      } finally {
        other.close();
      }
    }
  });
});

describe("deadlines", () => {
  test("timeoutMs Infinity, or beyond what gRPC can carry, means no deadline: calls, streams, blob uploads", async () => {
    // blobs.put built its deadline without the check the other calls had: grpc-js threw "Deadline
    // is too far in the future" outside any promise, and the process died. A finite timeout past
    // gRPC's bound (about 11,400 years) did the same on every call. (connectTimeoutMs: unit.test.ts.)
    const client = shared.client;
    for (const timeoutMs of [Infinity, 1e15]) {
      const ref = await client.blobs.put(Buffer.from(`no deadline ${timeoutMs}`), { timeoutMs }); // a client stream
      assert.equal((await client.blobs.get(ref, { timeoutMs })).toString(), `no deadline ${timeoutMs}`); // a server stream
      assert.equal(await client.health("", { timeoutMs }), "SERVING"); // a unary call
    }
  });
});

describe("spawn", () => {
  test("a spawned task may depend on a task the workflow already has", async () => {
    // scheduler_service.proto: "New tasks may depend on existing tasks". The SDK refused it
    // client-side ("unknown dependency 'a'"), from a handle and from a worker's ctx.spawn.
    const handle = await shared.client.workflows.submit(new WorkflowSpec("ts-spawn").task("a", { capability: unique("nobody") }));
    try {
      const spawned = await handle.spawn([{ taskId: "b", capability: unique("nobody"), dependsOn: ["a"] }]);
      assert.deepEqual(spawned, ["b"]);
    } finally {
      await handle.cancel();
    }
  });
});

describe("close", () => {
  test("a call after close() is an AreError CANCELLED", async () => {
    const other = await Client.connect(shared.sidecar.target);
    other.close();
    other.close(); // idempotent
    const error = await other.health().catch((e: unknown) => e);
    assert.ok(error instanceof AreError);
    assert.equal(error.code, Code.CANCELLED);
    // A blob upload too (it threw grpc-js's plain "Channel has been shut down").
    const put = await other.blobs.put(Buffer.from("late")).catch((e: unknown) => e);
    assert.ok(put instanceof AreError, String(put));
    assert.equal(put.code, Code.CANCELLED);
  });

  test("close() cancels the waits in flight: they reject with CANCELLED", async () => {
    // grpc-js's Channel.close() let a wait's stream run on for as long as its workflow did
    // (keeping the process alive), and a wait cut under a closed client resumed for ever.
    const other = await Client.connect(shared.sidecar.target);
    const handle = await other.workflows.submit(new WorkflowSpec("ts-close-wait").task("a", { capability: unique("nobody") }));
    const waiting = handle.wait().catch((e: unknown) => e);
    const watching = handle.watch({ includeTasks: true });
    assert.equal((await watching.next()).value?.workflow.state, "RUNNING");
    const next = watching.next().catch((e: unknown) => e);
    await new Promise((resolve) => setTimeout(resolve, 200)); // both streams open
    other.close();
    for (const [what, settled] of [["wait()", waiting], ["watch()", next]] as const) {
      const error = await within(settled, 10_000, `${what} to reject`);
      assert.ok(error instanceof AreError, `${what}: ${String(error)}`);
      assert.equal(error.code, Code.CANCELLED, what);
    }
    await shared.client.workflows.getHandle(handle.workflowId).cancel();
  });
});

describe("unix socket", () => {
  test("connect to unix:PATH", async () => {
    const local = await startSidecar({ uds: true });
    try {
      assert.match(local.target, /^unix:/);
      const viaSocket = await Client.connect(local.target);
      assert.equal(await viaSocket.health(), "SERVING");
      viaSocket.close();
    } finally {
      await local.stop();
    }
  });
});

describe("errors", () => {
  test("PutNamespace with a bad name: INVALID_ARGUMENT, its reason and the field", async () => {
    const error = await shared.client.cache.putNamespace("not a valid name!").catch((e: unknown) => e);
    assert.ok(error instanceof AreError, String(error));
    assert.equal(error.code, Code.INVALID_ARGUMENT);
    assert.equal(error.codeName, "INVALID_ARGUMENT");
    assert.equal(error.reason, "INVALID_ARGUMENT");
    assert.deepEqual(
      error.fieldViolations.map((v) => v.field),
      ["namespace.name"],
    );
    assert.equal(error.field, "namespace.name");
    assert.match(error.message, /^INVALID_ARGUMENT: .*\[INVALID_ARGUMENT\]/);
  });

  test("an unknown workflow: NOT_FOUND, reason WORKFLOW_NOT_FOUND", async () => {
    const error = await shared.client.workflows.get("wf-does-not-exist").catch((e: unknown) => e);
    assert.ok(error instanceof AreError);
    assert.equal(error.code, Code.NOT_FOUND);
    assert.equal(error.reason, "WORKFLOW_NOT_FOUND");
  });

  test("a spec the sidecar refuses names the field (unknown pool)", async () => {
    const spec = new WorkflowSpec("bad-pool").task("a", { capability: "x", pool: unique("no-such-pool") });
    const error = await shared.client.workflows.submit(spec).catch((e: unknown) => e);
    assert.ok(error instanceof AreError);
    assert.equal(error.code, Code.INVALID_ARGUMENT);
    assert.equal(error.reason, "POOL_NOT_FOUND");
    assert.equal(error.field, "spec.tasks[0].pool");
  });

  test("a spec with a cycle is refused client-side, named as the sidecar would", async () => {
    const spec = new WorkflowSpec("cycle")
      .task("a", { capability: "x", dependsOn: ["b"] })
      .task("b", { capability: "x", dependsOn: ["a"] });
    const error = await shared.client.workflows.submit(spec).catch((e: unknown) => e);
    assert.ok(error instanceof WorkflowSpecError);
    assert.ok(error instanceof AreError);
    assert.equal(error.code, Code.INVALID_ARGUMENT);
    assert.equal(error.field, "spec.tasks[0].depends_on");
    assert.match(error.fieldViolations[0]!.description, /a -> b -> a/);
  });

  test("the same spec sent unchecked is refused by the sidecar with DAG_CYCLE", async () => {
    const spec = new WorkflowSpec("cycle")
      .task("a", { capability: "x", dependsOn: ["b"] })
      .task("b", { capability: "x", dependsOn: ["a"] });
    const error = await shared.client.workflows.submit(spec.toMessage({ validate: false })).catch((e: unknown) => e);
    assert.ok(error instanceof AreError);
    assert.equal(error.reason, "DAG_CYCLE");
    assert.ok(error.field.startsWith("spec.tasks["), error.field);
  });
});

describe("workflows", () => {
  test("a retried submit with the same requestId returns the same workflow", async () => {
    const requestId = unique("req");
    const spec = new WorkflowSpec("dedup").task("a", { capability: unique("none") });
    const first = await shared.client.workflows.submit(spec, { requestId });
    const again = await shared.client.workflows.submit(spec, { requestId });
    assert.equal(again.workflowId, first.workflowId);
    assert.equal(first.deduplicated, false);
    assert.equal(again.deduplicated, true);
    await first.cancel();
  });

  test("watch() yields the status after each change and ends once closed", async () => {
    const handle = await shared.client.workflows.submit(
      new WorkflowSpec("watched", { labels: { suite: "ts" } }).task("a", { capability: unique("none") }),
    );
    const states: string[] = [];
    const watching = (async () => {
      for await (const update of handle.watch({ includeTasks: true })) {
        states.push(update.workflow.state);
        if (states.length === 1) await handle.cancel({ reason: "watch test" });
      }
    })();
    await within(watching, 20_000, "the watch to end");
    assert.equal(states[0], "RUNNING");
    assert.equal(states.at(-1), "CANCELLED");
    const listed = [];
    for await (const workflow of shared.client.workflows.list({ labels: { suite: "ts" }, states: ["CANCELLED"], limit: 5 })) listed.push(workflow.workflowId);
    assert.ok(listed.includes(handle.workflowId));
  });
});

describe("list limits", () => {
  test("workflows.list({ limit }) yields nothing for a limit of 0 or less", async () => {
    // It asked for a page of one (Math.max(1, ...)) and yielded it; router.iterAgents and
    // state.checkpoints already yielded nothing.
    const handle = await shared.client.workflows.submit(new WorkflowSpec("listed").task("a", { capability: unique("none") }));
    try {
      for (const limit of [0, -1]) {
        const listed = [];
        for await (const workflow of shared.client.workflows.list({ limit })) listed.push(workflow.workflowId);
        assert.deepEqual(listed, [], `limit ${limit}`);
      }
      const one = [];
      for await (const workflow of shared.client.workflows.list({ limit: 1 })) one.push(workflow.workflowId);
      assert.equal(one.length, 1);
    } finally {
      await handle.cancel();
    }
  });
});

describe("waits that cannot succeed", () => {
  test("a wait rejects a RESOURCE_EXHAUSTED no retry can fix (a status over the client's maxMessageBytes)", async () => {
    // grpc-js refuses the status on this side with RESOURCE_EXHAUSTED and no reason; the wait
    // resumed it until its timeout (forever without one). Only RESOURCE_LIMIT is resumed now.
    const handle = await shared.client.workflows.submit(new WorkflowSpec("n".repeat(256)).task("a", { capability: unique("none") }));
    const small = await Client.connect(shared.sidecar.target, { maxMessageBytes: 200 });
    try {
      const error = await within(
        small.workflows.getHandle(handle.workflowId).wait({ timeoutMs: 30_000 }).catch((e: unknown) => e),
        60_000,
        "the wait",
      );
      assert.ok(error instanceof AreError && !(error instanceof WaitTimeoutError), String(error));
      assert.equal(error.code, Code.RESOURCE_EXHAUSTED);
    } finally {
      small.close();
      await handle.cancel();
    }
  });

  test("connect refuses a reconnectWindowMs that is not positive", async () => {
    for (const reconnectWindowMs of [0, -1, Number.NaN]) {
      const error = await Client.connect(shared.sidecar.target, { reconnectWindowMs }).catch((e: unknown) => e);
      assert.ok(error instanceof RangeError, `${reconnectWindowMs}: ${String(error)}`);
      assert.match(error.message, /reconnectWindowMs/);
    }
    for (const reconnectWindowMs of [1, Infinity]) (await Client.connect(shared.sidecar.target, { reconnectWindowMs })).close();
  });
});

describe("many waits", () => {
  // Each wait holds a WatchWorkflow stream, and the sidecar serves 1,024 streams at once on a
  // connection: on the client's one connection, 1,030 pending waits starved its other calls.
  test("a thousand pending waits hold up no other call of the client", async () => {
    const handle = await shared.client.workflows.submit(new WorkflowSpec("nobody-serves").task("a", { capability: unique("none") }));
    const controller = new AbortController();
    const waits = Array.from({ length: 1030 }, () => handle.wait({ signal: controller.signal }).catch(() => undefined));
    try {
      await new Promise((resolve) => setTimeout(resolve, 1_000)); // the waits open their streams
      assert.equal(await shared.client.health("", { timeoutMs: 10_000 }), "SERVING");
    } finally {
      controller.abort();
      await Promise.all(waits);
      await handle.cancel();
    }
  });
});

describe("bounded waits", () => {
  test("a wait with timeoutMs gives up with WaitTimeoutError", async () => {
    const handle = await shared.client.workflows.submit(new WorkflowSpec("nobody-serves").task("a", { capability: unique("none") }));
    const error = await handle.wait({ timeoutMs: 300 }).catch((e: unknown) => e);
    assert.ok(error instanceof WaitTimeoutError, String(error));
    assert.equal(error.code, Code.DEADLINE_EXCEEDED);
    await handle.cancel();
  });

  test("an aborted wait rejects with the signal's reason", async () => {
    const handle = await shared.client.workflows.submit(new WorkflowSpec("nobody-serves").task("a", { capability: unique("none") }));
    const controller = new AbortController();
    const waiting = handle.result({ signal: controller.signal });
    controller.abort();
    const error = await waiting.catch((e: unknown) => e);
    assert.ok(error instanceof Error);
    assert.equal(error.name, "AbortError");
    const closed = await handle.cancel({ reason: "test over" });
    assert.equal(closed.state, "CANCELLED");
  });

  test("waits given one long-lived signal and a timeout leave nothing on that signal", async () => {
    // With AbortSignal.any([signal, AbortSignal.timeout(ms)]), Node 20 kept an entry per wait in
    // the long-lived signal's dependants for as long as it lived, and each wait's timer until
    // its timeout passed.
    const handle = await shared.client.workflows.submit(new WorkflowSpec("nobody-serves").task("a", { capability: unique("none") }));
    try {
      const shutdown = new AbortController();
      await handle.cancel();
      for (let i = 0; i < 100; i += 1) await handle.wait({ signal: shutdown.signal, timeoutMs: 600_000 });
      assert.equal(getEventListeners(shutdown.signal, "abort").length, 0);
      assert.equal(dependants(shutdown.signal), 0);

      // Both bounds still hold: the timeout first, then the signal first.
      const open = await shared.client.workflows.submit(new WorkflowSpec("nobody-serves").task("a", { capability: unique("none") }));
      try {
        const late = await open.wait({ signal: shutdown.signal, timeoutMs: 200 }).catch((e: unknown) => e);
        assert.ok(late instanceof WaitTimeoutError, String(late));
        const waiting = open.wait({ signal: shutdown.signal, timeoutMs: 600_000 });
        shutdown.abort(new Error("shutting down"));
        const aborted = await waiting.catch((e: unknown) => e);
        assert.equal((aborted as Error).message, "shutting down");
        assert.equal(getEventListeners(shutdown.signal, "abort").length, 0);
      } finally {
        await open.cancel();
      }
    } finally {
      await handle.cancel();
    }
  });

  test("an aborted unary call rejects with the signal's reason", async () => {
    const error = await shared.client.health("", { signal: AbortSignal.abort(new Error("stop")) }).catch((e: unknown) => e);
    assert.ok(error instanceof Error);
    assert.equal(error.message, "stop");
  });
});

describe("bearer token", () => {
  test("calls carry the token; without it they are UNAUTHENTICATED", async () => {
    const guarded = await startSidecar({ token: "s3cret-token" });
    try {
      const anonymous = await Client.connect(guarded.target);
      const refused = await anonymous.workflows.get("wf-x").catch((e: unknown) => e);
      anonymous.close();
      assert.ok(refused instanceof AreError);
      assert.equal(refused.code, Code.UNAUTHENTICATED);
      const authed = await Client.connect(guarded.target, { token: "s3cret-token" });
      const notFound = await authed.workflows.get("wf-x").catch((e: unknown) => e);
      authed.close();
      assert.ok(notFound instanceof AreError);
      assert.equal(notFound.code, Code.NOT_FOUND);
    } finally {
      await guarded.stop();
    }
  });
});

/**
 * How many signals made by `AbortSignal.any` Node keeps in `signal`'s set of dependants (an
 * internal of Node 20's; 0 where a Node keeps no such set).
 */
function dependants(signal: AbortSignal): number {
  const key = Object.getOwnPropertySymbols(signal).find((symbol) => symbol.description === "kDependantSignals");
  const set = key === undefined ? undefined : ((signal as unknown as Record<symbol, unknown>)[key] as { size?: unknown } | undefined);
  return typeof set?.size === "number" ? set.size : 0; // Node's own Set, not this realm's: no instanceof
}
