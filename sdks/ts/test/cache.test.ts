// The semantic cache against a real sidecar: exact and caller-vector lookups, getOrCall.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { inspect } from "node:util";

import { AreError, Client, Code, RawPayload } from "@are-runtime/sdk";

import { deferred, sharedSidecar, startSidecar, unique, within } from "./helpers.js";

const shared = sharedSidecar();

describe("cache", () => {
  test("store then an exact lookup of the normalised prompt", async () => {
    const ns = unique("exact");
    const created = await shared.client.cache.putNamespace(ns, { description: "ts exact" });
    assert.equal(created.created, true);
    assert.equal(created.embedder, "lexical");
    assert.equal(created.searchExpansionFixed, false); // calibrated on its own lookups
    assert.equal(created.recallTarget, 0.995);
    const fixed = await shared.client.cache.putNamespace(ns, { description: "ts exact", searchExpansion: 48, recallTarget: 0.99 });
    assert.equal(fixed.searchExpansion, 48);
    assert.equal(fixed.searchExpansionFixed, true);
    assert.equal(fixed.recallTarget, 0.99);
    const stored = await shared.client.cache.store(ns, "What is the capital of France?", { answer: "Paris" }, {
      usage: { inputTokens: 12, outputTokens: 3, costMicroUsd: 40 },
      metadata: { model: "m1" },
    });
    assert.ok(stored.entryId);
    assert.equal(stored.replaced, false);

    const hit = await shared.client.cache.lookup(ns, "  What is the capital   of France? ");
    assert.ok(hit);
    assert.equal(hit.tier, "exact");
    assert.equal(hit.entryId, stored.entryId);
    assert.deepEqual(hit.value, { answer: "Paris" });
    assert.equal(hit.similarity, 1);
    assert.deepEqual(hit.usage, { inputTokens: 12, outputTokens: 3, costMicroUsd: 40 });
    assert.deepEqual(hit.metadata, { model: "m1" });

    assert.equal(await shared.client.cache.lookup(ns, "Something else entirely", { exactOnly: true }), undefined);
    const [stats] = await shared.client.cache.stats(ns);
    assert.equal(stats?.exactHits, 1);
    assert.equal(stats?.misses, 1);
    assert.equal(stats?.searchExpansion, 48);
    assert.equal(stats?.recallSamples, 0); // too few vectors and lookups to measure
    assert.equal(stats?.unindexedEntries, 0);
  });

  test("a deleted namespace is gone, and its name is free", async () => {
    const ns = unique("deleted");
    await shared.client.cache.putNamespace(ns, { description: "old" });
    await shared.client.cache.store(ns, "What is the capital of Spain?", "Madrid");
    await shared.client.cache.store(ns, "What is the capital of Italy?", "Rome");
    assert.equal(await shared.client.cache.deleteNamespace(ns), 2);
    await assert.rejects(shared.client.cache.lookup(ns, "What is the capital of Spain?"), (error: unknown) => {
      assert.ok(error instanceof AreError);
      assert.equal(error.code, Code.NOT_FOUND);
      assert.equal(error.reason, "NAMESPACE_NOT_FOUND");
      return true;
    });
    assert.ok(!(await shared.client.cache.listNamespaces()).some((n) => n.name === ns));
    const again = await shared.client.cache.putNamespace(ns);
    assert.equal(again.created, true);
    assert.equal(again.description, "");
    assert.equal(await shared.client.cache.lookup(ns, "What is the capital of Spain?", { exactOnly: true }), undefined);
  });

  test("updateNamespace changes only the settings given", async () => {
    const ns = unique("updated");
    await shared.client.cache.putNamespace(ns, { maxEntries: 50, description: "kept", defaultTtlMs: 3_600_000 });
    const updated = await shared.client.cache.updateNamespace(ns, { similarityThreshold: 0.8 });
    assert.ok(Math.abs(updated.similarityThreshold - 0.8) < 1e-6);
    assert.equal(updated.maxEntries, 50);
    assert.equal(updated.description, "kept");
    assert.equal(updated.defaultTtlMs, 3_600_000);
    await assert.rejects(shared.client.cache.updateNamespace(unique("none"), { maxEntries: 3 }), (error: unknown) => {
      assert.ok(error instanceof AreError);
      assert.equal(error.code, Code.NOT_FOUND);
      return true;
    });
  });

  test("a semantic hit from the caller's own vectors", async () => {
    const ns = unique("vectors");
    await shared.client.cache.putNamespace(ns, { embedder: "caller", dimension: 4, similarityThreshold: 0.9 });
    await shared.client.cache.store(ns, "first prompt", "first answer", { vector: [1, 0, 0, 0] });
    await shared.client.cache.store(ns, "second prompt", "second answer", { vector: [0, 1, 0, 0] });

    const hit = await shared.client.cache.lookup(ns, "a differently worded prompt", { vector: [0.99, 0.05, 0, 0] });
    assert.ok(hit);
    assert.equal(hit.tier, "semantic");
    assert.equal(hit.value, "first answer");
    assert.equal(hit.matchedPrompt, "first prompt");
    assert.ok(hit.similarity > 0.99 && hit.similarity <= 1, String(hit.similarity));

    assert.equal(await shared.client.cache.lookup(ns, "unrelated", { vector: [0, 0, 1, 0] }), undefined);
    const raw = await shared.client.cache.lookupRaw(ns, "unrelated", { vector: [0.1, 0, 1, 0] });
    assert.equal(raw.hit, false);
    assert.ok(raw.bestSimilarity > 0 && raw.bestSimilarity < 0.9, String(raw.bestSimilarity));

    const wrong = await shared.client.cache.lookup(ns, "x", { vector: [1, 0, 0] }).catch((e: unknown) => e);
    assert.ok(wrong instanceof AreError);
    assert.equal(wrong.code, Code.INVALID_ARGUMENT);
    assert.equal(wrong.reason, "DIMENSION_MISMATCH");
    assert.equal(wrong.field, "vector");
  });

  test("getOrCall calls once, then answers from the cache", async () => {
    const ns = unique("calls");
    await shared.client.cache.putNamespace(ns);
    let calls = 0;
    const llm = async (): Promise<{ text: string }> => {
      calls += 1;
      return { text: "forty-two" };
    };
    const first = await shared.client.cache.getOrCall(ns, "the answer?", llm, { usage: () => ({ outputTokens: 2 }) });
    assert.equal(first.fromCache, false);
    assert.deepEqual(first.value, { text: "forty-two" });
    assert.ok(first.stored?.entryId);
    const second = await shared.client.cache.getOrCall(ns, "the answer?", llm);
    assert.equal(second.fromCache, true);
    assert.deepEqual(second.value, { text: "forty-two" });
    assert.equal(second.hit?.entryId, first.stored?.entryId);
    assert.equal(second.hit?.usage.outputTokens, 2);
    assert.equal(calls, 1);
  });

  test("concurrent getOrCall of one question share one lookup and one call", async () => {
    // Each concurrent caller made its own lookup and, on the miss, its own (paid) call; as in the
    // Python SDK, callers of one client asking the same question (the prompt equal once
    // normalised as the sidecar does) now share them.
    const ns = unique("flight");
    await shared.client.cache.putNamespace(ns);
    let calls = 0;
    const release = deferred();
    const started = deferred();
    const llm = async (): Promise<{ answer: string }> => {
      calls += 1;
      started.resolve();
      await release.promise;
      return { answer: "near the station" };
    };
    const prompts = ["Où est le café ?", "  Où est  le café ? ", "Où est le cafe\u0301 ?", "Où\u3000est le café\u00a0?\n", "Où est le café\x1f?"];
    const pending = prompts.map((prompt) => shared.client.cache.getOrCall(ns, prompt, llm));
    await within(started.promise, 10_000, "the call");
    release.resolve();
    const results = await within(Promise.all(pending), 20_000, "the callers' answers");
    assert.equal(calls, 1);
    for (const result of results) {
      assert.deepEqual(result.value, { answer: "near the station" });
      assert.equal(result.fromCache, false);
      assert.ok(result.stored?.entryId);
    }
    const later = await shared.client.cache.getOrCall(ns, prompts[1] as string, llm);
    assert.equal(later.fromCache, true);
    assert.equal(calls, 1);

    // Another threshold is another question: a call of its own (each waits for the other's).
    let other = 0;
    const both = deferred();
    const slow = async (): Promise<string> => {
      other += 1;
      if (other === 2) both.resolve();
      await both.promise;
      return "x";
    };
    const thresholds = [0.9, 0.8].map((threshold) => shared.client.cache.getOrCall(ns, "a question of threshold", slow, { threshold }));
    await within(Promise.all(thresholds), 20_000, "a call for each threshold");
    assert.equal(other, 2);
  });

  test("a getOrCall caller that aborts stops waiting; the others still get the shared call's answer", async () => {
    const ns = unique("flight-abort");
    await shared.client.cache.putNamespace(ns);
    let calls = 0;
    const release = deferred();
    const started = deferred();
    const llm = async (): Promise<string> => {
      calls += 1;
      started.resolve();
      await release.promise;
      return "kept";
    };
    const controller = new AbortController();
    const first = shared.client.cache.getOrCall(ns, "who gives up", llm, { signal: controller.signal });
    const second = shared.client.cache.getOrCall(ns, "who gives up", llm);
    await within(started.promise, 10_000, "the call");
    controller.abort(new Error("gave up"));
    await assert.rejects(within(first, 10_000, "the aborted caller"), /gave up/);
    release.resolve();
    const answer = await within(second, 20_000, "the caller still waiting");
    assert.equal(answer.value, "kept");
    assert.ok(answer.stored?.entryId, "the answer is stored: a caller still waited for it");
    assert.equal(calls, 1);
  });

  test("a getOrCall every caller aborted is not stored, and the next caller makes its own call", async () => {
    const ns = unique("flight-abandoned");
    await shared.client.cache.putNamespace(ns);
    let calls = 0;
    const release = deferred();
    const started = deferred();
    const controller = new AbortController();
    const only = shared.client.cache.getOrCall(
      ns,
      "nobody waits",
      async () => {
        calls += 1;
        started.resolve();
        await release.promise;
        return "late";
      },
      { signal: controller.signal },
    );
    await within(started.promise, 10_000, "the call");
    controller.abort(new Error("gave up"));
    await assert.rejects(within(only, 10_000, "the aborted caller"), /gave up/);
    release.resolve();
    const next = await within(
      shared.client.cache.getOrCall(ns, "nobody waits", async () => {
        calls += 1;
        return "fresh";
      }),
      20_000,
      "the next caller",
    );
    assert.equal(next.value, "fresh");
    assert.equal(next.fromCache, false);
    assert.equal(calls, 2);
  });

  test("a shared getOrCall's error goes to every caller, and nothing is stored", async () => {
    const ns = unique("flight-error");
    await shared.client.cache.putNamespace(ns);
    let calls = 0;
    const release = deferred();
    const llm = async (): Promise<string> => {
      calls += 1;
      await release.promise;
      throw new Error("the model is down");
    };
    const pending = Promise.allSettled([1, 2, 3].map(() => shared.client.cache.getOrCall(ns, "a failing call", llm)));
    release.resolve();
    const settled = await within(pending, 20_000, "the callers");
    for (const outcome of settled) {
      assert.equal(outcome.status, "rejected");
      assert.match(String((outcome as PromiseRejectedResult).reason), /the model is down/);
    }
    assert.equal(calls, 1);
    assert.equal(await shared.client.cache.lookup(ns, "a failing call"), undefined);
  });

  test("getOrCall returns the answer paid for when storing it fails", async () => {
    // The store's refusal (an answer over the namespace's maxBytes, one not JSON-serialisable, a
    // usage function that throws) rejected getOrCall after the call was made: the answer was lost.
    const ns = unique("small");
    await shared.client.cache.putNamespace(ns, { maxBytes: 1024 });
    const warnings: string[] = [];
    const logger = { warn: (message: string) => void warnings.push(message) };
    let calls = 0;
    const big = await shared.client.cache.getOrCall(ns, "a long answer?", async () => {
      calls += 1;
      return "x".repeat(5_000);
    }, { logger });
    assert.deepEqual([big.value.length, big.fromCache, big.stored], [5_000, false, undefined]);
    const odd = await shared.client.cache.getOrCall(ns, "a big number?", () => {
      calls += 1;
      return { n: 10n };
    }, { logger });
    assert.deepEqual([odd.value, odd.stored], [{ n: 10n }, undefined]);
    const costly = await shared.client.cache.getOrCall(ns, "a costly answer?", () => {
      calls += 1;
      return "short";
    }, {
      logger,
      usage: () => {
        throw new Error("no price list");
      },
    });
    assert.deepEqual([costly.value, costly.stored], ["short", undefined]);
    assert.equal(calls, 3);
    assert.equal(warnings.length, 3);
    assert.match(warnings[0]!, /was not stored: .*max_bytes/);
    assert.match(warnings[1]!, /was not stored: .*not JSON-serialisable/);
    assert.match(warnings[2]!, /was not stored: no price list/);
    assert.equal(await shared.client.cache.lookup(ns, "a long answer?"), undefined);
  });

  test("getOrCall makes the call when the cache is down, and rejects on other lookup errors", async () => {
    // A lookup that failed with UNAVAILABLE rejected getOrCall: a cache outage became an outage of
    // the calls it stands in front of.
    const own = await startSidecar();
    const other = await Client.connect(own.target);
    try {
      const ns = unique("down");
      await other.cache.putNamespace(ns);
      await own.stop();
      const warnings: string[] = [];
      const result = await other.cache.getOrCall(ns, "still there?", () => "yes", {
        logger: { warn: (message: string) => void warnings.push(message) },
      });
      assert.deepEqual([result.value, result.fromCache, result.hit, result.stored], ["yes", false, undefined, undefined]);
      assert.equal(warnings.length, 1);
      assert.match(warnings[0]!, /could not be looked up, so the call is made: UNAVAILABLE/);
    } finally {
      other.close();
      await own.stop();
    }
    // Not an outage: the question is wrong, and the call is not made.
    let called = false;
    const error = await shared.client.cache
      .getOrCall(unique("missing"), "hello", () => {
        called = true;
        return 1;
      })
      .catch((e: unknown) => e);
    assert.ok(error instanceof AreError);
    assert.equal(error.code, Code.NOT_FOUND);
    assert.equal(called, false);
  });

  test("getOrCall returns on a miss what the next hit returns; NaN is refused, not stored as null", async () => {
    // The miss returned the call's value as it was (a Buffer, a Date), the hit its stored encoding
    // decoded (a RawPayload, a string); and NaN was stored as null.
    const ns = unique("same");
    await shared.client.cache.putNamespace(ns);
    const answers: Array<[string, () => unknown, (value: unknown) => void]> = [
      ["bytes?", () => Buffer.from("hi"), (value) => assert.ok(value instanceof RawPayload && value.text() === "hi", inspect(value))],
      ["a date?", () => ({ at: new Date(0), list: [1, undefined] }), (value) => assert.deepEqual(value, { at: "1970-01-01T00:00:00.000Z", list: [1, null] })],
      ["raw text?", () => new RawPayload("plain", "text/plain"), (value) => assert.ok(value instanceof RawPayload && value.contentType === "text/plain", inspect(value))],
    ];
    for (const [prompt, call, check] of answers) {
      const miss = await shared.client.cache.getOrCall(ns, prompt, call);
      const hit = await shared.client.cache.getOrCall(ns, prompt, call);
      assert.deepEqual([miss.fromCache, hit.fromCache], [false, true], prompt);
      check(miss.value);
      check(hit.value);
      assert.deepEqual(miss.value, hit.value, prompt);
    }
    const warnings: string[] = [];
    const logger = { warn: (message: string) => void warnings.push(message) };
    let calls = 0;
    const nan = { n: NaN };
    for (let round = 0; round < 2; round++) {
      const result = await shared.client.cache.getOrCall(ns, "not a number?", () => {
        calls += 1;
        return nan;
      }, { logger });
      assert.equal(result.value, nan, "returned as it is");
      assert.deepEqual([result.fromCache, result.stored], [false, undefined]);
    }
    assert.equal(calls, 2, "nothing was stored, so the second call is made too");
    assert.equal(warnings.length, 2);
    assert.match(warnings[0]!, /was not stored: payload is not JSON-serialisable \(NaN at `n` is not a finite number/);
    await assert.rejects(shared.client.cache.store(ns, "infinite?", [Infinity]), { name: "TypeError", message: /Infinity at `\[0\]`/ });
  });

  test("bytes are stored raw and come back as a RawPayload", async () => {
    const ns = unique("bytes");
    await shared.client.cache.putNamespace(ns);
    await shared.client.cache.store(ns, "png?", Buffer.from([0x89, 0x50, 0x4e, 0x47]));
    const hit = await shared.client.cache.lookup(ns, "png?");
    assert.ok(hit?.value instanceof RawPayload);
    assert.equal(hit.contentType, "application/octet-stream");
    assert.deepEqual([...hit.data], [0x89, 0x50, 0x4e, 0x47]);
  });

  test("an unknown namespace is NOT_FOUND with its reason", async () => {
    const error = await shared.client.cache.lookup(unique("missing"), "hello").catch((e: unknown) => e);
    assert.ok(error instanceof AreError);
    assert.equal(error.code, Code.NOT_FOUND);
    assert.equal(error.reason, "NAMESPACE_NOT_FOUND");
  });
});
