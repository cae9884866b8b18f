// Client-side pieces without a sidecar: payload encoding, spec checks, error decoding.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { Metadata } from "@grpc/grpc-js";

import {
  AreError,
  BlobReference,
  Code,
  RawPayload,
  WorkflowSpec,
  WorkflowSpecError,
  decodePayload,
  encodePayload,
  keepaliveChannelOptions,
  retryWait,
  toAreError,
} from "@are-runtime/sdk";
import { Status } from "@are-runtime/sdk/gen/google/rpc/status";
import { BadRequest, ErrorInfo, RetryInfo } from "@are-runtime/sdk/gen/google/rpc/error_details";

describe("payloads", () => {
  test("JSON by default, both ways", () => {
    const payload = encodePayload({ a: [1, "two", null] });
    assert.equal(payload.contentType, "application/json");
    assert.equal(payload.data?.toString(), '{"a":[1,"two",null]}');
    assert.deepEqual(decodePayload(payload), { a: [1, "two", null] });
  });

  test("bytes raw, RawPayload as given, text with a non-JSON type", () => {
    const bytes = encodePayload(new Uint8Array([1, 2, 3]));
    assert.equal(bytes.contentType, "application/octet-stream");
    const decoded = decodePayload(bytes);
    assert.ok(decoded instanceof RawPayload);
    assert.deepEqual([...decoded.data], [1, 2, 3]);
    assert.equal(encodePayload("plain", "text/plain").data?.toString(), "plain");
    assert.equal((decodePayload({ data: Buffer.from("hi"), contentType: "text/plain" }) as RawPayload).text(), "hi");
  });

  test("empty, unset, malformed JSON and blob references", () => {
    assert.equal(decodePayload(undefined), undefined);
    assert.equal(decodePayload({ contentType: "" }), undefined);
    assert.ok(decodePayload({ data: Buffer.from("{nope"), contentType: "application/json" }) instanceof RawPayload);
    const blob = decodePayload({ blob: { sha256: "ab", sizeBytes: 2, contentType: "" }, contentType: "" });
    assert.ok(blob instanceof BlobReference);
    assert.equal(encodePayload(blob).blob?.sha256, "ab");
    assert.throws(() => encodePayload(undefined), TypeError);
    assert.throws(() => encodePayload(() => 1), TypeError);
  });

  test("JSON nested 512 deep, as deep as the sidecar stores it, both ways", () => {
    // Arrays and objects in turn around a string; "[]" is 1 deep.
    const levels = Array.from({ length: 512 }, (_, level) => (level % 2 === 0 ? ["[", "]"] : ['{"a":', "}"]));
    const text = levels.map(([open]) => open).join("") + '"leaf"' + levels.map(([, close]) => close).reverse().join("");
    const value = decodePayload({ data: Buffer.from(text), contentType: "application/json" });
    assert.ok(!(value instanceof RawPayload));
    assert.equal(encodePayload(value).data?.toString(), text);
  });
});

describe("spec checks", () => {
  test("ids, targets, dependencies and conditions are named like the sidecar names them", () => {
    const spec = new WorkflowSpec("bad")
      .task("ok", { capability: "x" })
      .task("ok", { capability: "x" })
      .task("bad id!", { capability: "x" })
      .task("both", { capability: "x", intent: "y" })
      .task("dep", { capability: "x", dependsOn: ["ghost", "dep"], conditions: [{ taskId: "ok", pointer: "", operator: "==" }] });
    const error = (() => {
      try {
        spec.validate();
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    assert.ok(error instanceof WorkflowSpecError);
    assert.deepEqual(
      error.fieldViolations.map((v) => v.field),
      [
        "spec.tasks[1].task_id",
        "spec.tasks[2].task_id",
        "spec.tasks[3].target",
        "spec.tasks[4].depends_on[0]",
        "spec.tasks[4].depends_on[1]",
        "spec.tasks[4].conditions[0].task_id",
      ],
    );
  });

  test("the message carries durations, retry policy and JSON input", () => {
    const message = new WorkflowSpec("good", { labels: { team: "a" }, budget: { maxDurationMs: 1500 } })
      .task("a", {
        capability: "x",
        input: { q: 1 },
        startToCloseTimeoutMs: 2500,
        retryPolicy: { maximumAttempts: 2, initialIntervalMs: 10 },
        triggerRule: "all_done",
      })
      .toMessage();
    const task = message.tasks[0]!;
    assert.deepEqual(task.startToCloseTimeout, { seconds: 2, nanos: 500_000_000 });
    assert.deepEqual(task.retryPolicy?.initialInterval, { seconds: 0, nanos: 10_000_000 });
    assert.equal(task.triggerRule, 2);
    assert.equal(task.input?.data?.toString(), '{"q":1}');
    assert.deepEqual(message.budget?.maxDuration, { seconds: 1, nanos: 500_000_000 });
    assert.deepEqual(message.labels, { team: "a" });
  });
});

describe("error decoding", () => {
  test("reason, metadata, field violations and retry hint come from grpc-status-details-bin", () => {
    const status = Status.encode({
      code: Code.RESOURCE_EXHAUSTED,
      message: "pool full",
      details: [
        { typeUrl: "type.googleapis.com/google.rpc.ErrorInfo", value: Buffer.from(ErrorInfo.encode({ reason: "POOL_QUEUE_FULL", domain: "are.v1", metadata: { pool: "p" } }).finish()) },
        { typeUrl: "type.googleapis.com/google.rpc.RetryInfo", value: Buffer.from(RetryInfo.encode({ retryDelay: { seconds: 1, nanos: 250_000_000 } }).finish()) },
        {
          typeUrl: "type.googleapis.com/google.rpc.BadRequest",
          value: Buffer.from(BadRequest.encode({ fieldViolations: [{ field: "pool", description: "full", reason: "", localizedMessage: undefined }] }).finish()),
        },
      ],
    }).finish();
    const metadata = new Metadata();
    metadata.set("grpc-status-details-bin", Buffer.from(status));
    const error = toAreError({ code: Code.RESOURCE_EXHAUSTED, details: "plain", metadata, message: "8 RESOURCE_EXHAUSTED: plain" });
    assert.ok(error instanceof AreError);
    assert.equal(error.reason, "POOL_QUEUE_FULL");
    assert.equal(error.details, "pool full");
    assert.deepEqual(error.metadata, { pool: "p" });
    assert.equal(error.retryAfterMs, 1250);
    assert.equal(error.field, "pool");
  });

  test("retryWait jitters over the backoff, and waits at least the sidecar's hint with up to a fifth more", () => {
    const plain = Array.from({ length: 200 }, () => retryWait(400, undefined));
    assert.ok(plain.every((w) => w >= 0 && w <= 400), `${Math.min(...plain)}..${Math.max(...plain)}`);
    assert.ok(Math.max(...plain) - Math.min(...plain) > 100, "full jitter, not a fixed wait");
    const hinted = Array.from({ length: 200 }, () => retryWait(400, 5_000)); // the worker bound's 5 s
    assert.ok(hinted.every((w) => w >= 5_000 && w <= 6_000), `${Math.min(...hinted)}..${Math.max(...hinted)}`);
    assert.ok(Math.max(...hinted) - Math.min(...hinted) > 100, "spread, so that refused callers do not return together");
    const longer = Array.from({ length: 200 }, () => retryWait(8_000, 1_000)); // a backoff beyond the hint still counts
    assert.ok(longer.every((w) => w >= 1_000 && w <= 8_000) && Math.max(...longer) > 2_000);
    assert.equal(retryWait(0, 0), 0);
    assert.equal(retryWait(0, undefined), 0);
  });

  test("a plain status keeps its code and message", () => {
    const error = toAreError({ code: Code.UNAVAILABLE, details: "down", metadata: new Metadata(), message: "" });
    assert.equal(error.code, Code.UNAVAILABLE);
    assert.equal(error.reason, "");
    assert.equal(error.message, "UNAVAILABLE: down");
  });
});

describe("keepalive", () => {
  test("the connect options become grpc-js channel options: default, custom, off", () => {
    const on = (timeMs: number, timeoutMs: number): Record<string, number> => ({
      "grpc.keepalive_time_ms": timeMs,
      "grpc.keepalive_timeout_ms": timeoutMs,
      "grpc.keepalive_permit_without_calls": 0,
    });
    assert.deepEqual(keepaliveChannelOptions(), on(30_000, 10_000));
    assert.deepEqual(keepaliveChannelOptions({ keepaliveTimeMs: 2_000, keepaliveTimeoutMs: 500 }), on(2_000, 500));
    assert.deepEqual(keepaliveChannelOptions({ keepaliveTimeMs: 20_000 }), on(20_000, 10_000));
    assert.deepEqual(keepaliveChannelOptions({ keepaliveTimeMs: 0 }), {});
    assert.deepEqual(keepaliveChannelOptions({ keepaliveTimeMs: null }), {});
  });
});
