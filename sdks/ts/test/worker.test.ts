// Workflows run by a TypeScript worker on a real sidecar: completion with outputs,
// failures per the retry policy, and cancellation reaching a running handler,
// over both transports (the Connect stream and the unary path).
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  AreError,
  BlobReference,
  Client,
  Code,
  NonRetryableError,
  RawPayload,
  TaskCancelledError,
  TaskError,
  TaskResult,
  Worker,
  WorkflowFailedError,
  WorkflowSpec,
  eventTypeName,
  type AgentCardInput,
  type Event,
  type FailureInfo,
  type TaskContext,
} from "@are-runtime/sdk";

import { FAST, deferred, eventually, serving, sharedSidecar, unique, within } from "./helpers.js";

const WAIT = { timeoutMs: 30_000 };

const shared = sharedSidecar();

class RefusalError extends Error {}
class DbError extends Error {}

/** A failure's levels, outermost first, as [type, message] pairs. */
function levels(failure: FailureInfo | undefined): [string, string][] {
  const out: [string, string][] = [];
  for (let f = failure; f !== undefined; f = f.cause) out.push([f.type, f.message]);
  return out;
}

/** An error whose `cause` getter makes a new one on each read: a chain without end. */
function endless(depth: number): Error {
  const error = new Error(`level ${depth}`);
  Object.defineProperty(error, "cause", { get: () => endless(depth + 1) });
  return error;
}

/**
 * An error with 8 causes, each of them (and the error) with 64 KiB of message and 128 KiB of stack
 * trace in UTF-8 ("é" is two bytes): about 1.7 MiB in all, over the 1 MiB a failure with its
 * causes may take.
 */
function heavyError(): Error {
  let error: Error | undefined;
  for (let i = 8; i >= 0; i -= 1) {
    error = new Error(`${i}`.padEnd(32 * 1024, "é"), error === undefined ? undefined : { cause: error });
    error.stack = "é".repeat(64 * 1024);
  }
  return error!;
}

for (const transport of ["stream", "unary"] as const) {
  const OPTS = { ...FAST, transport };

  describe(`worker (${transport})`, () => {
    test("reported calls carry the GenAI attributes and custom events reach the trace", async () => {
      const capability = unique("genai");
      const refusals: string[] = [];
      const worker = new Worker(shared.client, { ...OPTS, name: "ts-genai" }).handle(capability, (ctx: TaskContext) => {
        ctx.reportLlmCall("gpt-x", {
          inputTokens: 12,
          outputTokens: 3,
          costMicroUsd: 40,
          provider: "openai",
          responseModel: "gpt-x-2025",
          attributes: { temp: 0.5 },
        });
        ctx.reportLlmCall("bare-model");
        ctx.reportToolCall("search", { callId: "call_7", attributes: { hits: 3, cached: true } });
        ctx.reportEvent("chose plan B", { reason: "budget" });
        for (const bad of [
          () => ctx.reportEvent("bad", { x: Number.NaN }),
          () => ctx.reportEvent("bad", { x: [1] as unknown as string }), // not an attribute value, on purpose
          () => ctx.reportLlmCall("bad", { attributes: { x: Number.POSITIVE_INFINITY } }),
        ]) {
          try {
            bad();
            refusals.push("not refused");
          } catch (error) {
            refusals.push(`${(error as Error).name}: ${(error as Error).message}`);
          }
        }
        return null;
      });
      await serving(worker, async () => {
        const handle = await shared.client.workflows.submit(new WorkflowSpec("ts-genai").task("t", { capability }));
        assert.equal(await handle.result(WAIT), null);
        assert.deepEqual(refusals, [
          'RangeError: attribute "x" is NaN: event attributes must be finite numbers',
          'TypeError: attribute "x" is an array: give a string, number, boolean or bigint',
          'RangeError: attribute "x" is Infinity: event attributes must be finite numbers',
        ]);
        assert.equal((await handle.get()).usage.llmCalls, 2); // the refused call is not counted

        let events: Event[] = [];
        await eventually(
          async () => {
            // Reported events may land after the completion (the worker sends them in batches).
            events = [];
            const filter = { workflowIds: [handle.workflowId], eventTypes: ["LLM_CALL", "TOOL_CALL", "WORKER_CUSTOM"] };
            for await (const event of shared.client.trace.iterEvents(filter)) events.push(event);
            return events.length >= 4;
          },
          30_000,
          "the reported events",
        );
        const values = (event: Event | undefined): Record<string, unknown> =>
          Object.fromEntries(
            Object.entries(event?.attributes ?? {}).map(([key, v]) => [
              key,
              v.stringValue ?? v.intValue ?? v.doubleValue ?? v.boolValue,
            ]),
          );
        const [llm, bare, tool, custom] = events;
        assert.equal(llm?.name, "gpt-x");
        assert.deepEqual(values(llm), {
          "gen_ai.system": "openai",
          "gen_ai.response.model": "gpt-x-2025",
          "gen_ai.request.model": "gpt-x",
          "gen_ai.operation.name": "chat",
          "gen_ai.usage.input_tokens": 12,
          "gen_ai.usage.output_tokens": 3,
          temp: 0.5,
        });
        assert.equal(values(bare)["gen_ai.request.model"], "bare-model");
        assert.deepEqual(values(tool), { "gen_ai.tool.name": "search", "gen_ai.tool.call.id": "call_7", hits: 3, cached: true });
        assert.equal(eventTypeName(custom?.eventType ?? 0), "WORKER_CUSTOM");
        assert.equal(custom?.name, "chose plan B");
        assert.deepEqual(values(custom), { reason: "budget" });
        assert.equal(tool?.attributes["hits"]?.intValue, 3); // an integer goes as an int64, 0.5 as a double
        assert.equal(llm?.attributes["temp"]?.doubleValue, 0.5);
      });
    });

    test("a 2-task workflow run by a TS worker COMPLETES with outputs", async () => {
      const research = unique("research");
      const write = unique("write");
      const worker = new Worker(shared.client, { ...OPTS, name: "ts-writer", maxConcurrency: 2 })
        .handle(research, (ctx: TaskContext) => {
          const { topic } = ctx.input as { topic: string };
          ctx.reportLlmCall("model-x", { inputTokens: 10, outputTokens: 5, costMicroUsd: 7 });
          return { notes: `about ${topic}` };
        })
        .handle(write, async (ctx: TaskContext) => {
          const notes = ctx.dependencyOutputs["research"] as { notes: string } | undefined;
          assert.equal(ctx.dependencies["research"]?.state, "COMPLETED");
          return new TaskResult({ draft: `${notes?.notes}!`, attempt: ctx.attempt }, { stateMergePatch: { written: true } });
        });
      await serving(worker, async () => {
        const spec = new WorkflowSpec("ts-two-step")
          .task("research", { capability: research, input: { topic: "tides" } })
          .task("write", { capability: write, dependsOn: ["research"] });
        const handle = await shared.client.workflows.submit(spec);
        assert.match(handle.workflowId, /^wf_/);
        assert.deepEqual(await handle.result(WAIT), { draft: "about tides!", attempt: 1 });

        const info = await handle.get();
        assert.equal(info.state, "COMPLETED");
        assert.equal(info.closed, true);
        assert.equal(info.taskCounts?.completed, 2);
        assert.equal(info.usage.inputTokens, 10);
        assert.equal(info.usage.costMicroUsd, 7);
        const tasks = await handle.tasks({ includePayloads: true });
        assert.deepEqual(
          tasks.map((t) => [t.taskId, t.state, t.output]),
          [
            ["research", "COMPLETED", { notes: "about tides" }],
            ["write", "COMPLETED", { draft: "about tides!", attempt: 1 }],
          ],
        );
        assert.deepEqual(tasks[0]?.input, { topic: "tides" });
        assert.ok(tasks[0]?.workerId.startsWith("ts-writer"), tasks[0]?.workerId);
      });
      assert.equal(worker.stats.completed, 2);
      assert.equal(worker.inFlight, 0);
    });

    test("heartbeat details over 1 MiB are dropped, and the attempt goes on", async () => {
      // The sidecar refuses such a heartbeat; the stream worker took any refusal for a lost
      // lease and dropped the attempt with nothing reported (RUNNING until a timeout).
      const capability = unique("big-beat");
      const warnings: string[] = [];
      const worker = new Worker(shared.client, {
        ...OPTS,
        name: "ts-big-beat",
        logger: { warn: (message: string) => warnings.push(message) },
      }).handle(capability, async (ctx) => {
        await ctx.heartbeat("x".repeat(1 << 20));
        await new Promise((resolve) => setTimeout(resolve, 300));
        return "done";
      });
      await serving(worker, async () => {
        const handle = await shared.client.workflows.submit(
          new WorkflowSpec("ts-big-beat").task("t", { capability, retryPolicy: { maximumAttempts: 1 } }),
        );
        assert.equal(await handle.result(WAIT), "done");
      });
      assert.ok(warnings.some((w) => w.includes("heartbeat details")), warnings.join("\n"));
    });

    test("raw bytes travel as they are, both ways", async () => {
      const capability = unique("bytes");
      const worker = new Worker(shared.client, { ...OPTS, name: "ts-bytes" }).handle(capability, (ctx) => {
        const input = ctx.input as RawPayload;
        assert.ok(input instanceof RawPayload);
        return new RawPayload(Buffer.from(input.text().toUpperCase()), "text/plain");
      });
      await serving(worker, async () => {
        const handle = await shared.client.workflows.submit(
          new WorkflowSpec("ts-bytes").task("shout", { capability, input: new RawPayload("hello", "text/plain") }),
        );
        const result = await handle.result<RawPayload>(WAIT);
        assert.ok(result instanceof RawPayload);
        assert.equal(result.contentType, "text/plain");
        assert.equal(result.text(), "HELLO");
      });
    });

    test("a failing handler fails the workflow after the policy's attempts", async () => {
      const capability = unique("flaky");
      const attempts: number[] = [];
      const worker = new Worker(shared.client, { ...OPTS, name: "ts-flaky" }).handle(capability, (ctx) => {
        attempts.push(ctx.attempt);
        if (ctx.attempt > 1) assert.equal(ctx.lastFailure?.type, "RefusalError");
        throw new RefusalError(`refused on attempt ${ctx.attempt}`);
      });
      await serving(worker, async () => {
        const spec = new WorkflowSpec("ts-flaky").task("ask", {
          capability,
          retryPolicy: { maximumAttempts: 3, initialIntervalMs: 10, maximumIntervalMs: 20 },
        });
        const handle = await shared.client.workflows.submit(spec);
        const error = await handle.result(WAIT).catch((e: unknown) => e);
        assert.ok(error instanceof WorkflowFailedError, String(error));
        assert.equal(error.workflow.state, "FAILED");
        const task = await handle.task("ask");
        assert.equal(task.state, "FAILED");
        assert.equal(task.attempt, 3);
        assert.equal(task.failure?.type, "RefusalError");
        assert.equal(task.failure?.message, "refused on attempt 3");
        assert.equal(task.failure?.kind, "APPLICATION");
        assert.match(task.failure?.stackTrace ?? "", /refused on attempt 3/);
      });
      assert.deepEqual(attempts, [1, 2, 3]);
      assert.equal(worker.stats.failed, 3);
    });

    test("NonRetryableError and non-retryable types are not retried", async () => {
      const fatal = unique("fatal");
      const typed = unique("typed");
      const unserialisable = unique("unserialisable");
      const seen: string[] = [];
      const worker = new Worker(shared.client, { ...OPTS, name: "ts-fatal" })
        .handle(fatal, (ctx) => {
          seen.push(`${ctx.taskId}#${ctx.attempt}`);
          throw new NonRetryableError("no point trying again", { details: { code: 42 } });
        })
        .handle(typed, (ctx) => {
          seen.push(`${ctx.taskId}#${ctx.attempt}`);
          throw new TaskError("quota gone", { type: "QuotaError" });
        })
        .handle(unserialisable, (ctx) => {
          seen.push(`${ctx.taskId}#${ctx.attempt}`);
          return { size: 10n }; // a BigInt is not JSON
        });
      await serving(worker, async () => {
        const spec = new WorkflowSpec("ts-fatal", { defaultRetryPolicy: { maximumAttempts: 5, initialIntervalMs: 10 } })
          .task("a", { capability: fatal })
          .task("b", { capability: typed, retryPolicy: { maximumAttempts: 5, initialIntervalMs: 10, nonRetryableFailureTypes: ["QuotaError"] } })
          .task("c", { capability: unserialisable, retryPolicy: { maximumAttempts: 1 } })
          .task("end", { capability: fatal, dependsOn: ["a", "b"], triggerRule: "all_done" });
        const handle = await shared.client.workflows.submit(spec);
        const workflow = await handle.wait(WAIT);
        assert.equal(workflow.state, "FAILED");
        const a = await handle.task("a");
        assert.equal(a.attempt, 1);
        assert.equal(a.failure?.nonRetryable, true);
        assert.deepEqual(a.failure?.details, { code: 42 });
        const c = await handle.task("c");
        assert.equal(c.failure?.type, "TypeError");
        assert.match(c.failure?.message ?? "", /not JSON-serialisable/);
        const b = await handle.task("b");
        assert.equal(b.attempt, 1);
        assert.equal(b.failure?.type, "QuotaError");
      });
      assert.deepEqual(seen.sort(), ["a#1", "b#1", "c#1", "end#1"]);
    });

    test("a completion the sidecar refuses as invalid is reported as a CompletionRefused failure", async () => {
      // The refusal changes nothing and the attempt stays held: without the failure it would stay RUNNING.
      const capability = unique("refused");
      const worker = new Worker(shared.client, { ...OPTS, name: "ts-refused" }).handle(capability, (ctx) => {
        ctx.reportLlmCall("model-x", { inputTokens: 7, outputTokens: 3, costMicroUsd: 11 });
        return new TaskResult(new Uint8Array([1, 2, 3]), { contentType: "x".repeat(129) });
      });
      await serving(worker, async () => {
        const spec = new WorkflowSpec("ts-refused").task("x", { capability, retryPolicy: { maximumAttempts: 1 } });
        const handle = await shared.client.workflows.submit(spec);
        const workflow = await handle.wait({ timeoutMs: 15_000 });
        assert.equal(workflow.state, "FAILED");
        const task = await handle.task("x");
        assert.equal(task.state, "FAILED");
        assert.equal(task.failure?.type, "CompletionRefused");
        assert.equal(task.failure?.nonRetryable, false);
        const field = transport === "stream" ? "complete.completions[0].output.content_type" : "completion.output.content_type";
        assert.ok(task.failure?.message.includes(field), task.failure?.message);
        assert.match(task.failure?.message ?? "", /LIMIT_EXCEEDED/);
        assert.deepEqual(
          [task.usage.inputTokens, task.usage.outputTokens, task.usage.costMicroUsd, task.usage.llmCalls],
          [7, 3, 11, 1],
        );
      });
      assert.deepEqual([worker.stats.completed, worker.stats.failed], [0, 1]);
    });

    test("a failure past the sidecar's bounds is fitted to them instead of being refused", async () => {
      // A type over 256 characters and details over 1 MiB were refused, leaving the task RUNNING;
      // a negative retry delay threw before the failure was sent.
      const capability = unique("oversized");
      const worker = new Worker(shared.client, { ...OPTS, name: "ts-oversized" }).handle(capability, (ctx) => {
        ctx.addUsage({ inputTokens: 5, outputTokens: -1 });
        throw new TaskError("too big", {
          type: "T".repeat(299) + "😀",
          details: new RawPayload(new Uint8Array(1024 * 1024 + 1), "application/octet-stream"),
          retryAfterMs: -5,
        });
      });
      await serving(worker, async () => {
        const spec = new WorkflowSpec("ts-oversized").task("x", { capability, retryPolicy: { maximumAttempts: 1 } });
        const handle = await shared.client.workflows.submit(spec);
        const workflow = await handle.wait({ timeoutMs: 15_000 });
        assert.equal(workflow.state, "FAILED");
        const task = await handle.task("x");
        assert.equal(task.state, "FAILED");
        assert.equal(task.failure?.type, "T".repeat(256));
        assert.equal(task.failure?.message, "too big (details of 1048577 bytes dropped: over 1 MiB)");
        assert.equal(task.failure?.details, undefined);
        assert.deepEqual([task.usage.inputTokens, task.usage.outputTokens], [5, 0]);
      });
    });

    test("a thrown error's causes go as the failure's causes, and the next attempt sees them", async () => {
      // failureOf sent no cause: `new Error(message, { cause })` and TaskError's cause option were lost.
      const capability = unique("causes");
      let lastFailure: FailureInfo | undefined;
      const cases: Record<string, () => unknown> = {
        chain: () => {
          throw new TaskError("could not save the draft", {
            type: "SaveError",
            cause: new DbError("connection reset", {
              cause: new NonRetryableError("quota gone", { type: "QuotaError", cause: "socket closed" }),
            }),
          });
        },
        object: () => {
          throw new Error("bad reply", { cause: { status: 503 } });
        },
        number: () => Promise.reject(new RefusalError("refused", { cause: 42 })),
        aggregate: () => {
          throw new AggregateError([new Error("first"), new Error("second")], "all failed", { cause: new RangeError("root") });
        },
        undefinedCause: () => {
          throw new Error("plain", { cause: undefined });
        },
        nullCause: () => {
          throw new Error("plain", { cause: null });
        },
      };
      const worker = new Worker(shared.client, { ...OPTS, name: "ts-causes" }).handle(capability, (ctx) => {
        if (ctx.taskId !== "chain" || ctx.attempt === 1) return cases[ctx.taskId]!();
        lastFailure = ctx.lastFailure;
        return "saved";
      });
      await serving(worker, async () => {
        let spec = new WorkflowSpec("ts-causes");
        for (const id of Object.keys(cases)) {
          spec = spec.task(id, { capability, retryPolicy: { maximumAttempts: id === "chain" ? 2 : 1, initialIntervalMs: 10 } });
        }
        const handle = await shared.client.workflows.submit(spec);
        await handle.wait(WAIT);
        const chain = await handle.task("chain");
        assert.deepEqual([chain.state, chain.attempt], ["COMPLETED", 2]);
        const expected = [
          ["SaveError", "could not save the draft"],
          ["DbError", "connection reset"],
          ["QuotaError", "quota gone"],
          ["string", "socket closed"],
        ];
        assert.deepEqual(levels(lastFailure), expected);
        // A cause's own stack trace (a JavaScript stack shows no cause's frames); a string has none.
        assert.match(lastFailure?.cause?.stackTrace ?? "", /^Error: connection reset\n\s+at /);
        assert.equal(lastFailure?.cause?.cause?.cause?.stackTrace, "");
        // Only the failure's own nonRetryable counts: a NonRetryableError cause did not stop the retry.
        assert.deepEqual([lastFailure?.nonRetryable, lastFailure?.cause?.kind], [false, "APPLICATION"]);
        const got: Record<string, [string, string][]> = {};
        for (const id of Object.keys(cases).filter((id) => id !== "chain")) got[id] = levels((await handle.task(id)).failure);
        assert.deepEqual(got, {
          object: [["Error", "bad reply"], ["Object", "[object Object]"]],
          number: [["RefusalError", "refused"], ["number", "42"]],
          // An AggregateError's errors are not followed: its cause alone.
          aggregate: [["AggregateError", "all failed"], ["RangeError", "root"]],
          undefinedCause: [["Error", "plain"]],
          nullCause: [["Error", "plain"]],
        });
      });
    });

    test("cycles, endless and deep cause chains are cut, the deepest cause kept saying how many were dropped", async () => {
      const capability = unique("chains");
      const a = new Error("a");
      const b = new Error("b", { cause: a });
      a.cause = b;
      const self = new Error("self");
      self.cause = self;
      let deep = new Error("e11");
      for (let i = 10; i >= 0; i -= 1) deep = new Error(`e${i}`, { cause: deep });
      const hidden = new DbError("hidden");
      Object.defineProperty(hidden, "message", {
        get(): string {
          throw new Error("no message for you");
        },
      });
      const revoked = Proxy.revocable(new Error("gone"), {});
      revoked.revoke();
      const causeThrows = new Error("its cause cannot be read");
      Object.defineProperty(causeThrows, "cause", {
        get(): unknown {
          throw new Error("no cause for you");
        },
      });
      const thrown: Record<string, unknown> = {
        cycle: a,
        self,
        deep,
        endless: endless(0),
        unreadable: new Error("outer", { cause: hidden }),
        revoked: new Error("outer", { cause: revoked.proxy }),
        causeThrows,
        heavy: heavyError(),
      };
      const worker = new Worker(shared.client, { ...OPTS, name: "ts-chains" }).handle(capability, (ctx) => {
        throw thrown[ctx.taskId];
      });
      await serving(worker, async () => {
        let spec = new WorkflowSpec("ts-chains");
        for (const id of Object.keys(thrown)) spec = spec.task(id, { capability, retryPolicy: { maximumAttempts: 1 } });
        const handle = await shared.client.workflows.submit(spec);
        assert.equal((await handle.wait({ timeoutMs: 20_000 })).state, "FAILED");
        const got: Record<string, [string, string][]> = {};
        for (const id of Object.keys(thrown)) got[id] = levels((await handle.task(id)).failure);
        const heavy = got["heavy"]!;
        delete got["heavy"];
        const tooDeep = (n: string) => `[${n} deeper causes dropped: causes nest at most 8 deep]`;
        assert.deepEqual(got, {
          cycle: [["Error", "a"], ["Error", "b"]],
          self: [["Error", "self"]],
          deep: [...Array(9).keys()].map((i) => ["Error", i < 8 ? `e${i}` : `e8 ${tooDeep("3")}`]),
          endless: [...Array(9).keys()].map((i) => ["Error", i < 8 ? `level ${i}` : `level 8 ${tooDeep("10000 or more")}`]),
          unreadable: [["Error", "outer"], ["DbError", "DbError (its message could not be read)"]],
          revoked: [["Error", "outer"], ["Object", "Object (its message could not be read)"]],
          causeThrows: [["Error", "its cause cannot be read"]],
        });
        // Over 1 MiB with its causes: the deepest dropped until it fits, the note kept within the
        // 32 KiB of message the sidecar keeps.
        assert.deepEqual(heavy.map(([type, message]) => [type, message[0]]), [...Array(5).keys()].map((i) => ["Error", `${i}`]));
        const note = " [4 deeper causes dropped: a failure with its causes is at most 1 MiB]";
        const deepest = heavy[4]![1];
        assert.ok(deepest.endsWith(note), deepest.slice(-200));
        assert.ok(Buffer.byteLength(deepest) <= 32 * 1024, `${Buffer.byteLength(deepest)}`);
      });
    });

    test("cancelling the workflow aborts the running handler's signal", async () => {
      const capability = unique("slow");
      const started = deferred<TaskContext>();
      const aborted = deferred<unknown>();
      const worker = new Worker(shared.client, { ...OPTS, name: "ts-slow", heartbeatIntervalMs: 100 }).handle(capability, (ctx) => {
        started.resolve(ctx);
        return new Promise((_, reject) => {
          ctx.signal.addEventListener("abort", () => {
            aborted.resolve(ctx.signal.reason);
            reject(ctx.signal.reason as Error);
          });
        });
      });
      await serving(worker, async () => {
        const handle = await shared.client.workflows.submit(new WorkflowSpec("ts-cancel").task("think", { capability }));
        const ctx = await within(started.promise, 20_000, "the handler to start");
        assert.equal(ctx.cancelled, false);
        const closed = await handle.cancel({ reason: "changed my mind", requestedBy: "test" });
        assert.equal(closed.state, "CANCELLED");
        const reason = await within(aborted.promise, 20_000, "the handler's signal to abort");
        assert.ok(reason instanceof TaskCancelledError, String(reason));
        assert.ok(["CANCEL_REQUESTED", "NOT_HELD"].includes(reason.kind), reason.kind);
        assert.equal(ctx.cancelled, true);
        const error = await handle.result(WAIT).catch((e: unknown) => e);
        assert.ok(error instanceof WorkflowFailedError);
        assert.equal(error.workflow.state, "CANCELLED");
        assert.equal((await handle.task("think")).state, "CANCELLED");
      });
      assert.equal(worker.stats.cancelled, 1);
    });

    test("stop() hands a task still running after the grace period back for a retry", async () => {
      const capability = unique("stubborn");
      const started = deferred<TaskContext>();
      const worker = new Worker(shared.client, { ...OPTS, name: "ts-stubborn" }).handle(capability, (ctx) => {
        started.resolve(ctx);
        return new Promise(() => undefined); // never settles and ignores its signal
      });
      const running = worker.run();
      const handle = await shared.client.workflows.submit(
        new WorkflowSpec("ts-stop").task("forever", { capability, retryPolicy: { maximumAttempts: 2, initialIntervalMs: 10 } }),
      );
      const ctx = await within(started.promise, 20_000, "the handler to start");
      await within(worker.stop({ graceMs: 100 }), 20_000, "the worker to stop");
      await running;
      assert.equal(ctx.signal.aborted, true);
      assert.equal((ctx.signal.reason as TaskCancelledError).kind, "WORKER_STOPPED");
      const task = await handle.task("forever");
      assert.equal(task.failure?.type, "WORKER_STOPPED");
      assert.ok(["SCHEDULED", "BACKING_OFF"].includes(task.state), task.state);
      await handle.cancel();
    });

    test("heartbeat details reach the next attempt; typed input", async () => {
      const capability = unique("resume");
      const worker = new Worker(shared.client, { ...OPTS, name: "ts-resume" }).handle<{ steps: number }>(capability, async (ctx) => {
        if (ctx.attempt === 1) {
          await ctx.heartbeat({ done: 2 });
          throw new Error("crashed after step 2");
        }
        return { resumedFrom: ctx.lastHeartbeatDetails, steps: ctx.input.steps };
      });
      await serving(worker, async () => {
        const handle = await shared.client.workflows.submit(
          new WorkflowSpec("ts-resume").task("long", { capability, input: { steps: 5 }, retryPolicy: { initialIntervalMs: 10 } }),
        );
        assert.deepEqual(await handle.result(WAIT), { resumedFrom: { done: 2 }, steps: 5 });
      });
    });

    test("payloads over 4 MiB travel through the blob store, both ways", async () => {
      const capability = unique("big");
      const big = "x".repeat(5 * 1024 * 1024);
      const input = await shared.client.blobs.put(Buffer.from(JSON.stringify({ text: big })), { contentType: "application/json" });
      assert.ok(input instanceof BlobReference);
      const worker = new Worker(shared.client, { ...OPTS, name: "ts-big" }).handle<{ text: string }>(capability, (ctx) => ({
        length: ctx.input.text.length,
        echo: ctx.input.text,
      }));
      await serving(worker, async () => {
        const handle = await shared.client.workflows.submit(new WorkflowSpec("ts-big").task("echo", { capability, input }));
        const result = await handle.result<{ length: number; echo: string }>(WAIT);
        assert.equal(result.length, big.length);
        assert.equal(result.echo, big);
      });
    });

    test("a worker the sidecar refuses (bad name) makes run() reject", async () => {
      const worker = new Worker(shared.client, { ...OPTS, name: "not a name!" }).handle(unique("any"), () => 1);
      const error = await within(worker.run(), 20_000, "run() to reject").catch((e: unknown) => e);
      assert.ok(error instanceof AreError, String(error));
      assert.equal(error.code, Code.INVALID_ARGUMENT);
      assert.equal(worker.isRunning, false);
    });

    test("run({ signal }) stops when the signal aborts; a second run() while running is refused", async () => {
      const worker = new Worker(shared.client, { ...OPTS, name: "ts-signal" }).handle(unique("idle"), () => 1);
      const controller = new AbortController();
      const running = worker.run({ signal: controller.signal });
      await assert.rejects(worker.run(), /already running/);
      controller.abort();
      await within(running, 20_000, "run() to return after the abort");
      assert.equal(worker.isRunning, false);
    });

    test("whatever a handler throws fails its attempt, and the worker's slots are freed", async () => {
      // A thrown value whose text or class could not be read made the failure's builder throw: no
      // failure was sent and the task stayed RUNNING, held by the worker (on the stream, one of
      // its maxConcurrency slots at the sidecar) until its lease ended, here never.
      const capability = unique("throws");
      const evil = {
        toString(): string {
          throw new Error("no text for you");
        },
      };
      const unreadable = new Error("hidden");
      Object.defineProperty(unreadable, "message", {
        get(): string {
          throw new Error("no message for you");
        },
      });
      const revoked = Proxy.revocable({}, {});
      revoked.revoke();
      const cases: Record<string, [() => unknown, string, string]> = {
        string: [() => { throw "a plain string"; }, "Error", "a plain string"],
        undefined: [() => { throw undefined; }, "Error", "undefined"],
        toStringThrows: [() => { throw evil; }, "Error", "[object Object]"],
        nullPrototype: [() => { throw Object.create(null); }, "Error", "[object Object]"],
        messageThrows: [() => { throw unreadable; }, "Error", "Error (its message could not be read)"],
        revokedProxy: [() => { throw revoked.proxy; }, "Error", "Error (its message could not be read)"],
        typeNotAString: [() => { throw new TaskError("typed by a number", { type: 42 as unknown as string }); }, "42", "typed by a number"],
        rejected: [() => Promise.reject(new RefusalError("rejected later")), "RefusalError", "rejected later"],
        ownAbort: [
          () => {
            const own = new AbortController(); // the handler's own signal, not the attempt's
            own.abort();
            own.signal.throwIfAborted();
          },
          "DOMException",
          "This operation was aborted",
        ],
      };
      const worker = new Worker(shared.client, { ...OPTS, name: "ts-throws", maxConcurrency: 2, logger: { warn: () => undefined } }).handle(
        capability,
        (ctx) => cases[ctx.taskId]![0](),
      );
      await serving(worker, async () => {
        let spec = new WorkflowSpec("ts-throws");
        for (const id of Object.keys(cases)) spec = spec.task(id, { capability, retryPolicy: { maximumAttempts: 1 } });
        const handle = await shared.client.workflows.submit(spec);
        const workflow = await handle.wait({ timeoutMs: 20_000 });
        assert.equal(workflow.state, "FAILED");
        for (const [id, [, type, message]] of Object.entries(cases)) {
          const task = await handle.task(id);
          assert.deepEqual([id, task.state, task.failure?.type, task.failure?.message], [id, "FAILED", type, message]);
        }
        assert.equal(worker.inFlight, 0);
      });
      assert.equal(worker.stats.failed, Object.keys(cases).length);
    });

    test("a usage count that is not an integer fails its own attempt, and no other", async () => {
      // A fraction (a cost computed as tokens times a price) failed the encoding of the message
      // carrying it: on the stream that ended the stream, losing every attempt the worker held;
      // on the unary path the completion was never sent and the task stayed RUNNING.
      const priced = unique("priced");
      const slow = unique("slow-sibling");
      const slowStarted = deferred();
      const worker = new Worker(shared.client, { ...OPTS, name: "ts-priced", maxConcurrency: 2, logger: { warn: () => undefined } })
        .handle(priced, async (ctx) => {
          await slowStarted.promise;
          ctx.reportLlmCall("model-x", { inputTokens: 10, costMicroUsd: 10 * 0.15 });
          return "priced";
        })
        .handle(slow, async () => {
          slowStarted.resolve();
          await new Promise((resolve) => setTimeout(resolve, 1_000));
          return "slow";
        });
      await serving(worker, async () => {
        const spec = new WorkflowSpec("ts-priced", { defaultRetryPolicy: { maximumAttempts: 1 } })
          .task("priced", { capability: priced })
          .task("slow", { capability: slow });
        const handle = await shared.client.workflows.submit(spec);
        await handle.wait({ timeoutMs: 20_000 });
        const [task, sibling] = [await handle.task("priced"), await handle.task("slow")];
        assert.deepEqual([task.state, task.attempt, task.failure?.type], ["FAILED", 1, "RangeError"]);
        assert.match(task.failure?.message ?? "", /costMicroUsd must be an integer/);
        assert.deepEqual([sibling.state, sibling.attempt, sibling.output], ["COMPLETED", 1, "slow"]);
      });
      if (transport === "stream") assert.equal(worker.stats.connects, 1);
    });

    test("stop() before run() is not lost: run() returns at once", async () => {
      const worker = new Worker(shared.client, { ...OPTS, name: "ts-early-stop" }).handle(unique("idle"), () => 1);
      await worker.stop(); // a SIGTERM handler that ran before run(): it was dropped, and run() served for ever
      await within(worker.run(), 10_000, "run() to return");
      assert.equal(worker.isRunning, false);
      assert.deepEqual([worker.stats.connects, worker.stats.polls], [0, 0]);
      // The request was for that run only: the next run serves until stopped.
      const running = worker.run();
      assert.equal(worker.isRunning, true);
      await within(worker.stop({ graceMs: 100 }), 20_000, "the worker to stop");
      await running;
    });

    test("closing the client under a running worker makes run() reject with CANCELLED", async () => {
      const own = await Client.connect(shared.sidecar.target);
      const worker = new Worker(own, { ...OPTS, name: "ts-orphan", logger: { warn: () => undefined } }).handle(unique("idle"), () => 1);
      const running = worker.run();
      own.close();
      const error = await within(running, 20_000, "run() to reject").catch((e: unknown) => e);
      assert.ok(error instanceof AreError, String(error));
      assert.equal(error.code, Code.CANCELLED);
    });

    test("closing the client under a busy worker aborts its handlers, and run() rejects with CANCELLED", async () => {
      // On the unary transport the attempt's heartbeats failed CANCELLED ("the client is closed")
      // and were retried every interval, warning each time: a handler waiting on its signal was
      // never aborted, held its slot, and run() never returned.
      const own = await Client.connect(shared.sidecar.target);
      const capability = unique("busy");
      const started = deferred<TaskContext>();
      const warnings: string[] = [];
      const logger = { warn: (message: string) => void warnings.push(message) };
      const worker = new Worker(own, { ...OPTS, name: "ts-busy-orphan", maxConcurrency: 1, logger }).handle(capability, (ctx) => {
        started.resolve(ctx);
        return new Promise((resolve) => ctx.signal.addEventListener("abort", resolve, { once: true }));
      });
      const running = worker.run();
      const handle = await shared.client.workflows.submit(new WorkflowSpec("ts-busy-orphan").task("wait", { capability }));
      try {
        const ctx = await within(started.promise, 20_000, "the handler to start");
        own.close();
        const error = await within(running, 10_000, "run() to reject").catch((e: unknown) => e);
        assert.ok(error instanceof AreError, String(error));
        assert.equal(error.code, Code.CANCELLED);
        assert.equal(ctx.signal.aborted, true);
        assert.equal(worker.inFlight, 0);
        assert.ok(warnings.length <= 3, `${warnings.length} warnings:\n${warnings.join("\n")}`);
      } finally {
        await handle.cancel();
      }
    });

    test("a handler that runs on after its attempt is over has what it reports dropped, not kept", async () => {
      // Events reported (and heartbeat details given) by a handler that ignored its cancellation
      // could never be sent, yet each attempt kept the last 10,000 and logged a line per event.
      const capability = unique("runs-on");
      const started = deferred<TaskContext>();
      const release = deferred();
      const drops: string[] = [];
      const logger = { warn: (message: string) => void (message.includes("dropp") && drops.push(message)) };
      const worker = new Worker(shared.client, { ...OPTS, name: "ts-runs-on", logger }).handle(capability, async (ctx) => {
        started.resolve(ctx);
        await release.promise; // ignores its signal
      });
      await serving(worker, async () => {
        try {
          const handle = await shared.client.workflows.submit(new WorkflowSpec("ts-runs-on").task("t", { capability }));
          const ctx = await within(started.promise, 20_000, "the handler to start");
          await handle.cancel();
          await eventually(async () => ctx.signal.aborted && worker.inFlight === 0, 10_000, "the attempt to be over");
          for (let i = 0; i < 12_000; i += 1) ctx.reportToolCall("after the end");
          ctx.reportLlmCall("model", { inputTokens: 1 });
          await ctx.heartbeat({ progress: "x".repeat(100_000) });
          const kept = (ctx as unknown as { attemptState: { events: unknown[]; details: unknown } }).attemptState;
          assert.equal(kept.events.length, 0);
          assert.equal(kept.details, undefined);
          assert.equal(drops.length, 1, drops.join("\n"));
        } finally {
          release.resolve();
        }
      });
    });
  });
}

describe("worker labels", () => {
  // The sidecar shows a worker's labels nowhere (no RPC lists workers with
  // them); what is observable is that it accepts them with the stream
  // registration, and refuses a bad key naming the field.
  test("a labelled worker registers over the stream and runs a task; a bad label key is refused", async () => {
    const capability = unique("ts-labelled");
    const labels = { team: "ts", run: capability };
    const worker = new Worker(shared.client, { ...FAST, name: unique("ts-labelled-worker"), labels }).handle(capability, () => "ok");
    labels.team = "changed after the worker was made"; // the worker keeps its own copy
    assert.equal(worker.transport, "stream");
    assert.deepEqual(worker.labels, { team: "ts", run: capability });
    await serving(worker, async () => {
      const handle = await shared.client.workflows.submit(new WorkflowSpec("ts-labels").task("a", { capability }));
      assert.equal(await handle.result(WAIT), "ok");
    });
    assert.equal(worker.stats.completed, 1);
    assert.ok(worker.stats.connects >= 1);

    const bad = new Worker(shared.client, { ...FAST, name: unique("ts-badly-labelled"), labels: { "bad key!": "x" } }).handle(
      unique("ts-x"),
      () => null,
    );
    const error = await within(bad.run(), 20_000, "run() to reject").catch((e: unknown) => e);
    assert.ok(error instanceof AreError, String(error));
    assert.equal(error.code, Code.INVALID_ARGUMENT);
    assert.ok(
      error.fieldViolations.some((v) => v.field === "register.labels['bad key!']"),
      `violations ${JSON.stringify(error.fieldViolations)}`,
    );
    assert.equal(bad.isRunning, false);
  });
});

describe("worker cards", () => {
  test("workers declare their cards, and an intent goes to the cheapest class", async () => {
    const n = unique("zq");
    const words = `summarise quarterly filings of mining firms ${n}x`;
    const classes = { cheap: 3, dear: 900 } as const;
    const caps = { cheap: unique("ts-sum-cheap"), dear: unique("ts-sum-dear") };
    const workers = Object.entries(classes).map(([name, cost]) => {
      const capability = caps[name as keyof typeof caps];
      const card: AgentCardInput = { agentId: `class-${name}-${n}`, description: words, capabilities: [capability], costPerCallMicroUsd: cost };
      const worker = new Worker(shared.client, { ...FAST, name: `ts-${name}-${n}`, card }).handle(capability, () => name);
      card.costPerCallMicroUsd = 0; // the worker keeps its own copy
      return worker;
    });
    const [cheap, dear] = workers as [Worker, Worker];
    assert.equal(cheap.card?.costPerCallMicroUsd, 3);
    const cardsServing = async (capability: string) => (await shared.client.router.listAgents({ capability })).agents;
    await serving(cheap, () =>
      serving(dear, async () => {
        for (const capability of Object.values(caps)) {
          // both classes are in the index before the intent is routed
          await eventually(async () => (await cardsServing(capability)).some((a) => a.available), 20_000, `the card serving ${capability}`);
        }
        const cards = await cardsServing(caps.cheap);
        assert.deepEqual(
          cards.map((a) => [a.agentId, a.source, a.costPerCallMicroUsd, a.available]),
          [[`class-cheap-${n}`, "worker", 3, true]],
        );
        assert.equal(cards[0]!.description, words);
        assert.deepEqual(cards[0]!.capabilities, [caps.cheap]);
        assert.ok(cards[0]!.workerIds.includes(cheap.workerId), `workers ${JSON.stringify(cards[0]!.workerIds)}`);

        const handle = await shared.client.workflows.submit(new WorkflowSpec("ts-intent").task("a", { intent: words }));
        assert.equal(await handle.result(WAIT), "cheap"); // cost-biased: both clear the threshold
        const routed = (await shared.client.trace.listEvents({ workflowIds: [handle.workflowId], eventTypes: ["TASK_ROUTED"] })).events;
        assert.equal(routed.length, 1);
        assert.equal(routed[0]!.attributes["are.route.agent_id"]?.stringValue, `class-cheap-${n}`);
      }),
    );
    // The workers left: their class is gone, or at least unavailable.
    await eventually(
      async () => {
        const cards = await cardsServing(caps.cheap);
        return cards.length === 0 || (cards.length === 1 && !cards[0]!.available);
      },
      10_000,
      "the cheap class to leave the index",
    );
  });

  test("a declared card is checked and the refusal names the field", async () => {
    const capability = unique("ts-bad-card");
    const badCards = {
      "register.agent_card.vector": { agentId: unique("bad-vector"), capabilities: [capability], vector: [1, 0] },
      "register.agent_card.capabilities[0]": { agentId: unique("bad-cap"), capabilities: [unique("not-served")] },
      "register.agent_card.agent_id": { agentId: "bad id!", capabilities: [capability] },
    };
    for (const [field, card] of Object.entries(badCards)) {
      const worker = new Worker(shared.client, { ...FAST, name: unique("ts-bad-card"), card }).handle(capability, () => null);
      const error = await within(worker.run(), 20_000, "run() to reject").catch((e: unknown) => e);
      assert.ok(error instanceof AreError, String(error));
      assert.equal(error.code, Code.INVALID_ARGUMENT);
      assert.deepEqual(error.fieldViolations.map((v) => v.field), [field]);
      assert.equal(worker.stats.connects, 0);
      assert.equal(worker.isRunning, false);
    }
    assert.deepEqual((await shared.client.router.listAgents({ capability })).agents, []); // nothing was declared
  });
});
