// The worker's stream transport (WorkerService.Connect) on a real sidecar: a
// workflow of several tasks, a cancellation reaching a running handler, an
// attempt kept by the stream's own heartbeats past a short heartbeat timeout, a
// large output completed as a blob, a graceful stop with a running handler, and
// a sidecar restart: the drain notice, a result reported within its grace, and
// the reconnection.
import assert from "node:assert/strict";
import { rm } from "node:fs/promises";
import { dirname } from "node:path";
import { describe, test } from "node:test";

import { BlobReference, Client, TaskCancelledError, Worker, WorkflowFailedError, WorkflowSpec, type TaskContext } from "@are-runtime/sdk";
import type { SidecarProcess } from "@are-runtime/sdk/testing";

import { FAST, deferred, eventually, serving, sharedSidecar, startSidecar, unique, within } from "./helpers.js";

const WAIT = { timeoutMs: 30_000 };
const STREAM = { ...FAST, transport: "stream" } as const;

const shared = sharedSidecar();

describe("worker stream transport", () => {
  test("a fan-out/fan-in workflow of several tasks completes over one stream", async () => {
    const part = unique("part");
    const sum = unique("sum");
    let running = 0;
    let most = 0;
    const worker = new Worker(shared.client, { ...STREAM, name: "ts-stream-fan", maxConcurrency: 3 })
      .handle<{ n: number }>(part, async (ctx) => {
        running += 1;
        most = Math.max(most, running);
        await new Promise((resolve) => setTimeout(resolve, 20));
        running -= 1;
        ctx.reportToolCall("square");
        return ctx.input.n * ctx.input.n;
      })
      .handle(sum, (ctx: TaskContext) => Object.values(ctx.dependencyOutputs).reduce((a: number, b) => a + (b as number), 0));
    await serving(worker, async () => {
      let spec = new WorkflowSpec("ts-stream-fan");
      const parts: string[] = [];
      for (let n = 1; n <= 8; n += 1) {
        spec = spec.task(`p${n}`, { capability: part, input: { n } });
        parts.push(`p${n}`);
      }
      spec = spec.task("sum", { capability: sum, dependsOn: parts });
      const handle = await shared.client.workflows.submit(spec);
      assert.equal(await handle.result(WAIT), 204);
      const info = await handle.get();
      assert.equal(info.taskCounts?.completed, 9);
      assert.equal(info.usage.toolCalls, 8);
    });
    assert.equal(worker.stats.completed, 9);
    assert.equal(worker.stats.connects, 1);
    assert.equal(worker.stats.polls, 0);
    assert.ok(most <= 3, `at most 3 handlers at once, saw ${most}`);
    assert.ok(worker.workerId !== "", "the registration gave a worker id");
  });

  test("a cancelled workflow's cancellation reaches the running handler over the stream", async () => {
    const capability = unique("stream-slow");
    const started = deferred<TaskContext>();
    const aborted = deferred<unknown>();
    const worker = new Worker(shared.client, { ...STREAM, name: "ts-stream-slow" }).handle(capability, (ctx) => {
      started.resolve(ctx);
      return new Promise((_, reject) => {
        ctx.signal.addEventListener("abort", () => {
          aborted.resolve(ctx.signal.reason);
          reject(ctx.signal.reason as Error);
        });
      });
    });
    await serving(worker, async () => {
      const handle = await shared.client.workflows.submit(new WorkflowSpec("ts-stream-cancel").task("think", { capability }));
      await within(started.promise, 20_000, "the handler to start");
      await handle.cancel({ reason: "changed my mind" });
      const reason = await within(aborted.promise, 20_000, "the handler's signal to abort");
      assert.ok(reason instanceof TaskCancelledError, String(reason));
      assert.equal(reason.kind, "CANCEL_REQUESTED");
      const error = await handle.result(WAIT).catch((e: unknown) => e);
      assert.ok(error instanceof WorkflowFailedError);
      assert.equal(error.workflow.state, "CANCELLED");
    });
    assert.equal(worker.stats.cancelled, 1);
  });

  test("an attempt assigned to an idle worker heartbeats by itself well past its short heartbeat timeout", async () => {
    // The sidecar's heartbeat interval is 10 s: an idle stream looks at its attempts again only
    // when its next ping is due, 5 s after it opened. An attempt assigned just after the worker
    // connected heartbeats every second (a third of its 3 s timeout) only if holding it wakes the
    // stream's ticker; the handler heartbeats by hand never, and runs for two timeouts and more.
    const capability = unique("stream-idle-beat");
    const worker = new Worker(shared.client, { ...STREAM, name: "ts-stream-idle-beat" }).handle(
      capability,
      (ctx) =>
        new Promise((resolve, reject) => {
          const timer = setTimeout(() => resolve("done"), 6_500);
          ctx.signal.addEventListener("abort", () => {
            clearTimeout(timer);
            reject(ctx.signal.reason as Error);
          });
        }),
    );
    await serving(worker, async () => {
      await eventually(() => Promise.resolve(worker.stats.connects >= 1), 20_000, "the worker stream to open");
      const handle = await shared.client.workflows.submit(
        new WorkflowSpec("ts-stream-idle-beat").task("long", {
          capability,
          heartbeatTimeoutMs: 3_000,
          retryPolicy: { maximumAttempts: 1 },
        }),
      );
      assert.equal(await handle.result(WAIT), "done");
    });
    assert.equal(worker.stats.completed, 1);
  });

  test("an output over 4 MiB is completed as a blob over the stream", async () => {
    const capability = unique("stream-big");
    const big = "y".repeat(5 * 1024 * 1024);
    const worker = new Worker(shared.client, { ...STREAM, name: "ts-stream-big" }).handle(capability, () => ({ text: big }));
    await serving(worker, async () => {
      const handle = await shared.client.workflows.submit(new WorkflowSpec("ts-stream-big").task("make", { capability }));
      const result = await handle.result<{ text: string }>(WAIT);
      assert.equal(result.text.length, big.length);
      const [task] = await handle.tasks({ includePayloads: true });
      assert.equal(task?.state, "COMPLETED");
      assert.ok(task?.output instanceof BlobReference, "the recorded output is a blob reference");
      assert.ok(task.output.sizeBytes > 4 * 1024 * 1024);
    });
    assert.equal(worker.stats.completed, 1);
  });

  test("stop() drains: a running handler finishes within the grace and its result is recorded", async () => {
    const capability = unique("stream-finish");
    const started = deferred<TaskContext>();
    const release = deferred();
    const worker = new Worker(shared.client, { ...STREAM, name: "ts-stream-finish" }).handle(capability, async (ctx) => {
      started.resolve(ctx);
      await release.promise;
      return { finished: !ctx.cancelled };
    });
    const running = worker.run();
    const handle = await shared.client.workflows.submit(new WorkflowSpec("ts-stream-stop").task("work", { capability }));
    await within(started.promise, 20_000, "the handler to start");
    const stopped = worker.stop({ graceMs: 15_000 });
    setTimeout(() => release.resolve(), 100);
    await within(stopped, 20_000, "the worker to stop");
    await running;
    assert.equal(worker.isRunning, false);
    assert.equal(worker.inFlight, 0);
    assert.equal(worker.stats.completed, 1);
    assert.deepEqual(await handle.result(WAIT), { finished: true });
  });

  test("a sidecar restart: the handler reports within the drain's grace, then the worker reconnects", async () => {
    const first = await startSidecar({ args: ["--shutdown-grace-s", "5"] });
    let second: SidecarProcess | undefined;
    const own = await Client.connect(first.target);
    const capability = unique("stream-restart");
    const started = deferred();
    const drainNotice = deferred();
    const notices: string[] = [];
    const logger = {
      warn: (message: string) => {
        if (message.includes("the sidecar is draining")) {
          drainNotice.resolve();
          notices.push(message);
        }
      },
    };
    const worker = new Worker(own, { ...STREAM, name: "ts-stream-restart", logger, reconnectMaxDelayMs: 200 }).handle(
      capability,
      async (ctx: TaskContext) => {
        if (ctx.input === "first") {
          started.resolve();
          await within(drainNotice.promise, 20_000, "the drain notice");
        }
        return { ran: ctx.input, attempt: ctx.attempt };
      },
    );
    const running = worker.run();
    try {
      const earlier = await own.workflows.submit(new WorkflowSpec("ts-stream-restart").task("t", { capability, input: "first" }));
      await within(started.promise, 20_000, "the handler to start");
      await within(first.stop({ keep: true }), 20_000, "the first sidecar to stop");
      second = await startSidecar({ args: ["--listen", first.target, "--data-dir", first.dataDir] });
      assert.deepEqual(await earlier.result(WAIT), { ran: "first", attempt: 1 });
      const afterRestart = await own.workflows.submit(new WorkflowSpec("ts-stream-restart").task("t", { capability, input: "second" }));
      assert.deepEqual(await afterRestart.result(WAIT), { ran: "second", attempt: 1 });
      assert.ok(worker.stats.connects >= 2, `reconnected: ${worker.stats.connects} connects`);
      // The notice carries the sidecar's shutdown grace (5 s) less its 0.5 s margin.
      assert.match(notices[0] ?? "", /results are accepted for 4500 ms/);
    } finally {
      await within(worker.stop({ graceMs: 2_000 }), 20_000, "the worker to stop");
      await running;
      own.close();
      await second?.stop();
      await first.stop();
      await rm(dirname(first.dataDir), { recursive: true, force: true });
    }
  });
});
