// The SDK when the sidecar pushes back or the connection flaps, against a real sidecar: a
// handler's failure carries the sidecar's retry hint; a watch refused for want of subscribers
// resumes after the hint; a worker whose streams die just after registering backs off.
import assert from "node:assert/strict";
import { createServer, connect, type Server, type Socket } from "node:net";
import { describe, test } from "node:test";

import { AreError, Client, Code, Worker, WorkflowSpec, type TaskContext, type WorkflowUpdate } from "@are-runtime/sdk";

import { FAST, sharedSidecar, unique, within } from "./helpers.js";

/** The sidecar's bound on the tasks of open workflows, kept small so that a spawn can pass it. */
const MAX_OPEN_TASKS = 20;
/** The flight recorder's live subscribers at once (EventRecorder.max_subscribers). */
const MAX_SUBSCRIBERS = 1024;

// More streams per connection than subscribers, so that the subscribers can all be taken from one client.
const shared = sharedSidecar({
  args: ["--durability", "relaxed", "--log-level", "warning", "--max-open-tasks", `${MAX_OPEN_TASKS}`, "--max-concurrent-streams", "4096"],
});

describe("retry hints", () => {
  for (const transport of ["stream", "unary"] as const) {
    test(`a handler's AreError passes the sidecar's retry hint on to its failure (${transport})`, async () => {
      // Only a TaskError's retryAfterMs was sent: a spawn refused RESOURCE_EXHAUSTED "retry in 1 s"
      // failed the attempt with no delay, and the retry (10 ms later by policy) was refused again.
      const capability = unique("spawner");
      const starts: number[] = [];
      let refusal: unknown;
      const worker = new Worker(shared.client, { ...FAST, transport, name: "ts-spawner", logger: { warn: () => undefined } }).handle(
        capability,
        async (ctx: TaskContext) => {
          starts.push(Date.now());
          if (ctx.attempt === 1) {
            // Three more tasks would take the open tasks (17 + 1) past the bound (20).
            const children = ["a", "b", "c"].map((id) => ({ taskId: `child-${id}`, capability: unique("nobody") }));
            await ctx.spawn(children).catch((error: unknown) => {
              refusal = error;
              throw error;
            });
          }
          return `attempt ${ctx.attempt}`;
        },
      );
      // Submissions may fill 90% of the bound (18 tasks): the filler's 17 and the parent.
      let filler = new WorkflowSpec("ts-filler");
      for (let i = 0; i < 17; i += 1) filler = filler.task(`t${i}`, { capability: unique("nobody") });
      const held = await shared.client.workflows.submit(filler);
      const running = worker.run();
      try {
        const handle = await shared.client.workflows.submit(
          new WorkflowSpec("ts-spawner").task("parent", {
            capability,
            retryPolicy: { maximumAttempts: 2, initialIntervalMs: 10, maximumIntervalMs: 10 },
          }),
        );
        assert.equal(await handle.result({ timeoutMs: 20_000 }), "attempt 2");
        assert.ok(refusal instanceof AreError, String(refusal));
        assert.equal(refusal.code, Code.RESOURCE_EXHAUSTED);
        assert.equal(refusal.retryAfterMs, 1_000);
        const gap = starts[1]! - starts[0]!;
        assert.ok(gap >= 950, `the retry came ${gap} ms after the first attempt, before the sidecar's 1 s hint`);
        const task = await handle.task("parent");
        assert.equal(task.attempt, 2);
      } finally {
        await within(worker.stop({ graceMs: 1_000 }), 20_000, "the worker to stop");
        await running;
        await held.cancel();
      }
    });
  }
});

describe("watch subscribers", () => {
  test("a watch refused for want of subscribers resumes after the hint instead of rejecting", async () => {
    // The sidecar serves 1,024 live event streams; a watch with includeTasks is one. Refused
    // RESOURCE_EXHAUSTED with a 1 s hint, the watch rejected at once.
    const filler = await Client.connect(shared.sidecar.target);
    try {
      const streams: AsyncGenerator<unknown>[] = [];
      for (let i = 0; i < MAX_SUBSCRIBERS; i += 1) {
        const stream = filler.trace.stream({ workflowIds: ["wf_none"] }, { afterSequence: 0 });
        assert.equal(((await stream.next()).value as { type: string }).type, "caught_up"); // subscribed
        streams.push(stream);
      }
      const refused = await filler.trace
        .stream({ workflowIds: ["wf_none"] }, { afterSequence: 0 })
        .next()
        .catch((e: unknown) => e);
      assert.ok(refused instanceof AreError, String(refused));
      assert.deepEqual([refused.code, refused.retryAfterMs], [Code.RESOURCE_EXHAUSTED, 1_000]);

      const handle = await shared.client.workflows.submit(new WorkflowSpec("ts-watch-full").task("a", { capability: unique("nobody") }));
      const watching = handle.watch({ includeTasks: true });
      const first = watching.next().catch((e: unknown) => e);
      await new Promise((resolve) => setTimeout(resolve, 1_500));
      await Promise.all(streams.splice(0, 2).map((stream) => stream.return(undefined))); // two subscribers free
      const update = await within(first, 15_000, "the watch to resume");
      assert.ok(!(update instanceof Error), `the watch rejected: ${String(update)}`);
      assert.equal((update as IteratorResult<WorkflowUpdate>).value?.workflow.state, "RUNNING");
      await handle.cancel();
      for await (const next of watching) if (next.workflow.closed) break;
    } finally {
      filler.close();
    }
  });
});

describe("reconnection", () => {
  test("a worker whose streams die just after registering backs off instead of reconnecting at once", async () => {
    // Every registration set the backoff back to 50 ms, so streams dying as soon as they
    // registered were reopened about twenty times a second; only a stream that lived 10 s does now.
    const [host, port] = splitTarget(shared.sidecar.target);
    const sockets = new Set<Socket>();
    const proxy: Server = createServer((downstream) => {
      const upstream = connect(port, host);
      for (const socket of [downstream, upstream]) {
        sockets.add(socket);
        socket.on("error", () => undefined);
        socket.on("close", () => {
          sockets.delete(socket);
          downstream.destroy();
          upstream.destroy();
        });
      }
      downstream.pipe(upstream).pipe(downstream);
    });
    await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
    const address = proxy.address() as { port: number };
    const flaky = await Client.connect(`127.0.0.1:${address.port}`);
    const worker = new Worker(flaky, { ...FAST, name: "ts-flaky-link", logger: { warn: () => undefined } }).handle(unique("idle"), () => 1);
    // The link breaks as soon as each registration has gone through: the sidecar is real, the network is not.
    let seen = 0;
    const breaker = setInterval(() => {
      if (worker.stats.connects === seen) return;
      seen = worker.stats.connects;
      for (const socket of sockets) socket.destroy();
    }, 5);
    const running = worker.run();
    try {
      await new Promise((resolve) => setTimeout(resolve, 3_000));
      const connects = worker.stats.connects;
      // Full jitter over 50, 100, 200, ... ms: about 7 in 3 s (twenty or more at a fixed 50 ms).
      assert.ok(connects >= 2, `${connects} registrations: the link never carried one`);
      assert.ok(connects <= 15, `${connects} registrations in 3 s: the worker reconnected without backing off`);
    } finally {
      clearInterval(breaker);
      await within(worker.stop({ graceMs: 100 }), 20_000, "the worker to stop");
      await running;
      flaky.close();
      proxy.close();
      for (const socket of sockets) socket.destroy();
    }
  });
});

function splitTarget(target: string): [string, number] {
  const colon = target.lastIndexOf(":");
  return [target.slice(0, colon), Number(target.slice(colon + 1))];
}
