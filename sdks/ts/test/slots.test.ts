// A worker's slots on a real sidecar, over both transports: a handler deaf to its signal (one
// that runs on after its attempt was cancelled) keeps its slot until it returns, so no more than
// maxConcurrency handlers ever run at once, and its slot is used again once it returns; a stop
// does not wait for such a handler for good.
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { describe, test } from "node:test";

import { Worker, WorkflowSpec, type TaskContext, type WorkflowHandle } from "@are-runtime/sdk";

import { FAST, deferred, eventually, serving, sharedSidecar, unique, within } from "./helpers.js";

const WAIT = { timeoutMs: 30_000 };

const shared = sharedSidecar();

/** Handlers that count how many of them run at once, each deaf to its signal until `release`. */
class DeafHandlers {
  running = 0;
  most = 0;
  /** The workflow ids of the handlers started, in order. */
  readonly started: string[] = [];
  private readonly released = deferred();

  readonly handler = async (ctx: TaskContext): Promise<string> => {
    this.running += 1;
    this.most = Math.max(this.most, this.running);
    this.started.push(ctx.workflowId);
    try {
      if ((ctx.input as { deaf?: boolean } | null)?.deaf === true) await this.released.promise; // ignores ctx.signal
      return "done";
    } finally {
      this.running -= 1;
    }
  };

  release(): void {
    this.released.resolve();
  }
}

for (const transport of ["stream", "unary"] as const) {
  const OPTS = { ...FAST, transport };

  describe(`worker slots (${transport})`, () => {
    test("handlers deaf to their cancellation keep their slots: never more than maxConcurrency run at once", async () => {
      // The slot was given back when the attempt ended, not when its handler returned: the
      // sidecar assigned the next task at once, and each one cancelled added a handler running.
      const capability = unique("deaf");
      const n = 2;
      const deaf = new DeafHandlers();
      const warnings: string[] = [];
      const logger = { warn: (message: string) => void warnings.push(message) };
      const worker = new Worker(shared.client, { ...OPTS, name: "ts-deaf", maxConcurrency: n, logger }).handle(capability, deaf.handler);
      await serving(worker, async () => {
        const handles: WorkflowHandle[] = [];
        for (let i = 0; i < 3 * n; i += 1) {
          handles.push(await shared.client.workflows.submit(new WorkflowSpec("ts-deaf").task("t", { capability, input: { deaf: true } })));
        }
        try {
          // Cancel each workflow as soon as its handler starts, for 2.5 s (bounded): a heartbeat
          // interval is 200 ms, so a slot given back early is taken again well within it.
          const cancelled = new Set<string>();
          const until = Date.now() + 2_500;
          while (Date.now() < until) {
            for (const handle of handles) {
              if (deaf.started.includes(handle.workflowId) && !cancelled.has(handle.workflowId)) {
                cancelled.add(handle.workflowId);
                assert.equal((await handle.cancel()).state, "CANCELLED");
              }
            }
            await sleep(50);
          }
          assert.equal(deaf.started.length, n, `handlers started: ${deaf.started.length}`);
          assert.equal(deaf.running, n);
          assert.ok(deaf.most <= n, `${deaf.most} handlers ran at once (maxConcurrency ${n})`);
          assert.ok(
            warnings.some((w) => w.includes("still running") && w.includes("signal")),
            `no warning about the deaf handlers:\n${warnings.join("\n")}`,
          );

          // Once they return, their slots run the workflows not cancelled.
          deaf.release();
          const rest = handles.filter((h) => !cancelled.has(h.workflowId));
          assert.equal(rest.length, 2 * n);
          for (const handle of rest) assert.equal(await handle.result(WAIT), "done");
          assert.ok(deaf.most <= n, `${deaf.most} handlers ran at once (maxConcurrency ${n})`);
          await eventually(async () => deaf.running === 0, 5_000, "every handler to return");
        } finally {
          deaf.release();
          for (const handle of handles) await handle.cancel().catch(() => undefined);
        }
      });
    });

    test("a deaf handler's slot is used again once it returns", async () => {
      const capability = unique("deaf-one");
      const deaf = new DeafHandlers();
      const worker = new Worker(shared.client, { ...OPTS, name: "ts-deaf-one", maxConcurrency: 1, logger: { warn: () => undefined } }).handle(
        capability,
        deaf.handler,
      );
      await serving(worker, async () => {
        const first = await shared.client.workflows.submit(new WorkflowSpec("ts-deaf-one").task("t", { capability, input: { deaf: true } }));
        let second: WorkflowHandle | undefined;
        try {
          await eventually(async () => deaf.started.length === 1, 20_000, "the deaf handler to start");
          assert.equal((await first.cancel()).state, "CANCELLED");
          second = await shared.client.workflows.submit(new WorkflowSpec("ts-deaf-one").task("t", { capability, input: { deaf: false } }));
          // The only slot stays taken while the deaf handler runs: the second task waits (1 s, bounded).
          await sleep(1_000);
          assert.deepEqual(deaf.started, [first.workflowId], "a handler started while the deaf one held the only slot");
          deaf.release();
          assert.equal(await second.result(WAIT), "done");
          assert.deepEqual(deaf.started, [first.workflowId, second.workflowId]);
          assert.equal(deaf.most, 1);
        } finally {
          deaf.release();
          await first.cancel().catch(() => undefined);
          await second?.cancel().catch(() => undefined);
        }
      });
    });

    test("a task cancelled while a deaf handler holds the only slot never runs, and gives back nothing it did not take", async () => {
      // On the stream the sidecar assigns it meanwhile and it waits for the slot; on the unary
      // transport it is not polled for.
      const capability = unique("deaf-wait");
      const deaf = new DeafHandlers();
      const worker = new Worker(shared.client, { ...OPTS, name: "ts-deaf-wait", maxConcurrency: 1, logger: { warn: () => undefined } }).handle(
        capability,
        deaf.handler,
      );
      await serving(worker, async () => {
        const spec = (deafInput: boolean): WorkflowSpec =>
          new WorkflowSpec("ts-deaf-wait").task("t", { capability, input: { deaf: deafInput } });
        const first = await shared.client.workflows.submit(spec(true));
        const handles = [first];
        try {
          await eventually(async () => deaf.started.length === 1, 20_000, "the deaf handler to start");
          await first.cancel();
          const waiting = await shared.client.workflows.submit(spec(false));
          handles.push(waiting);
          await sleep(500);
          // Pins the case: assigned and waiting on the stream, not polled for on the unary path.
          assert.equal((await waiting.task("t")).state, transport === "stream" ? "RUNNING" : "SCHEDULED");
          assert.deepEqual(deaf.started, [first.workflowId]);
          assert.equal((await waiting.cancel()).state, "CANCELLED");
          await sleep(300);
          deaf.release();
          const last = await shared.client.workflows.submit(spec(false));
          handles.push(last);
          assert.equal(await last.result(WAIT), "done");
          assert.deepEqual(deaf.started, [first.workflowId, last.workflowId], "the cancelled task's handler ran");
          assert.equal(deaf.most, 1);
        } finally {
          deaf.release();
          for (const handle of handles) await handle.cancel().catch(() => undefined);
        }
      });
    });

    test("stop() waits a moment for a deaf handler, not for good, and says it is still running", async () => {
      const capability = unique("deaf-stop");
      const deaf = new DeafHandlers();
      const warnings: string[] = [];
      const logger = { warn: (message: string) => void warnings.push(message) };
      const worker = new Worker(shared.client, { ...OPTS, name: "ts-deaf-stop", maxConcurrency: 1, logger }).handle(capability, deaf.handler);
      const running = worker.run();
      const handle = await shared.client.workflows.submit(new WorkflowSpec("ts-deaf-stop").task("t", { capability, input: { deaf: true } }));
      try {
        await eventually(async () => deaf.started.length === 1, 20_000, "the deaf handler to start");
        await handle.cancel();
        await eventually(async () => worker.inFlight === 0, 10_000, "the attempt to be over");
        await within(worker.stop({ graceMs: 100 }), 10_000, "the worker to stop"); // a hang guard
        await running;
        assert.equal(deaf.running, 1, "the deaf handler returned"); // stop() did not wait for it
        assert.ok(
          warnings.some((w) => w.includes("1 handler(s) still running after the worker stopped")),
          `no warning of the handler left running:\n${warnings.join("\n")}`,
        );
      } finally {
        deaf.release();
      }
    });
  });
}
