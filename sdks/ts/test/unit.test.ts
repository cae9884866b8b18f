// Client-side pieces without a sidecar: payload encoding, spec checks, error decoding, int64 decoding, connect.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";

import { BinaryWriter } from "@bufbuild/protobuf/wire";
import { Metadata, Server, ServerCredentials } from "@grpc/grpc-js";

import {
  AreError,
  BlobReference,
  Client,
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
import { Usage } from "@are-runtime/sdk/gen/are/v1/common";
import { AttributeValue, Event } from "@are-runtime/sdk/gen/are/v1/event";
import { Status } from "@are-runtime/sdk/gen/google/rpc/status";
import { BadRequest, ErrorInfo, RetryInfo } from "@are-runtime/sdk/gen/google/rpc/error_details";
import { HealthService, type HealthServer } from "@are-runtime/sdk/gen/grpc/health/v1/health";

import { within } from "./helpers.js";

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

  test("NaN and Infinity are refused, naming where, not sent as null", () => {
    // JSON.stringify writes them as null: the value stored was not the value given (and the Python
    // SDK refuses them).
    assert.throws(() => encodePayload({ a: [1, { n: NaN }] }), {
      name: "TypeError",
      message: /payload is not JSON-serialisable \(NaN at `a\[1\]\.n` is not a finite number/,
    });
    assert.throws(() => encodePayload(Infinity), { name: "TypeError", message: /\(Infinity is not a finite number/ });
    assert.throws(() => encodePayload([-Infinity]), { name: "TypeError", message: /-Infinity at `\[0\]`/ });
    assert.throws(() => encodePayload({ at: { toJSON: () => NaN } }), /NaN at `at`/);
    // A null given, or "null" in a string, is no such number.
    assert.equal(encodePayload({ s: "null", n: null }).data?.toString(), '{"s":"null","n":null}');
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

  test("a duration whose nanos round to a whole second carries it into the seconds", () => {
    // Math.round made { seconds: 0, nanos: 1e9 } of 999.9999999999 ms: nanos must stay below 1e9.
    const message = new WorkflowSpec("carry")
      .task("a", { capability: "x", startToCloseTimeoutMs: 999.9999999999 })
      .task("b", { capability: "x", startToCloseTimeoutMs: 2_999.9999999999 })
      .task("c", { capability: "x", startToCloseTimeoutMs: 1_000.0001 })
      .toMessage();
    assert.deepEqual(
      message.tasks.map((task) => task.startToCloseTimeout),
      [
        { seconds: 1, nanos: 0 },
        { seconds: 3, nanos: 0 },
        { seconds: 1, nanos: 100 },
      ],
    );
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

  test("a response the client cannot decode is a client-side error saying so, not the sidecar's INTERNAL", async () => {
    // grpc-js reports a response that does not decode as INTERNAL "Response message parsing error",
    // which read as the sidecar failing. A server answering bytes that are no HealthCheckResponse:
    const server = new Server();
    const check: HealthServer["check"] = (_call, callback) => callback(null, { status: 1 });
    server.addService({ check: { ...HealthService.check, responseSerialize: () => Buffer.from([0x08]) } }, { check });
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (error, bound) => (error ? reject(error) : resolve(bound))),
    );
    const client = await Client.connect(`127.0.0.1:${port}`);
    try {
      const error = await client.health().catch((e: unknown) => e);
      assert.ok(error instanceof AreError, String(error));
      assert.equal(error.code, Code.INTERNAL);
      assert.match(error.message, /^INTERNAL: the client could not decode the sidecar's response \(a client-side error\): premature EOF/);
      // A request the client cannot encode (a uint64 beyond 2^64 - 1) is one too, before anything is sent.
      const encoding = await client.trace.listEvents({}, { afterSequence: 2 ** 64 }).catch((e: unknown) => e);
      assert.ok(encoding instanceof AreError, String(encoding));
      assert.equal(encoding.code, Code.INTERNAL);
      assert.match(encoding.message, /^INTERNAL: the client could not encode the request \(a client-side error\): invalid uint64/);
    } finally {
      client.close();
      server.forceShutdown();
    }
  });

  test("a plain status keeps its code and message", () => {
    const error = toAreError({ code: Code.UNAVAILABLE, details: "down", metadata: new Metadata(), message: "" });
    assert.equal(error.code, Code.UNAVAILABLE);
    assert.equal(error.reason, "");
    assert.equal(error.message, "UNAVAILABLE: down");
  });
});

describe("int64", () => {
  test("values beyond 2^53 decode to the nearest double, never an error", () => {
    // ts-proto's forceLong=number threw above Number.MAX_SAFE_INTEGER, failing the whole call.
    const int64 = (tag: number, value: string): Uint8Array => new BinaryWriter().uint32(tag).int64(value).finish();
    assert.equal(AttributeValue.decode(int64(16, "9223372036854775807")).intValue, 2 ** 63); // int_value, a saturated sum
    assert.equal(AttributeValue.decode(int64(16, "-9223372036854775808")).intValue, -(2 ** 63));
    const clock = AttributeValue.decode(int64(16, "1761000000123456789")).intValue; // a nanosecond clock
    assert.equal(BigInt(clock ?? 0), 1761000000123456768n); // the nearest double (doubles are 256 apart there)
    assert.equal(AttributeValue.decode(int64(16, "9007199254740993")).intValue, 2 ** 53); // ties to even
    assert.equal(Usage.decode(int64(24, "9223372036854775807")).costMicroUsd, 2 ** 63); // cost_micro_usd
    assert.equal(Event.decode(new BinaryWriter().uint32(8).uint64("18446744073709551615").finish()).sequence, 2 ** 64);
    // Safe values stay exact.
    assert.equal(Usage.decode(int64(24, "9007199254740991")).costMicroUsd, Number.MAX_SAFE_INTEGER);
  });
});

describe("connect", () => {
  test("connectTimeoutMs Infinity, or past a timer's longest delay, waits for a sidecar that comes up later", async () => {
    // grpc-js took Infinity ms from now (an invalid Date) as a deadline already passed, and its
    // timer fires at once past about 24.8 days: connect() gave up within a millisecond.
    const folder = await mkdtemp(join(tmpdir(), "are-ts-connect-"));
    try {
      for (const [n, connectTimeoutMs] of [Infinity, 2 ** 32].entries()) {
        const path = join(folder, `late-${n}.sock`);
        const server = new Server();
        const connecting = Client.connect(`unix:${path}`, { connectTimeoutMs });
        await new Promise((resolve) => setTimeout(resolve, 300)); // nothing listens yet
        await new Promise<number>((resolve, reject) =>
          server.bindAsync(`unix:${path}`, ServerCredentials.createInsecure(), (error, port) => (error ? reject(error) : resolve(port))),
        );
        try {
          const client = await within(connecting, 20_000, "the connection to a sidecar that came up late");
          client.close();
        } finally {
          server.forceShutdown();
        }
      }
    } finally {
      await rm(folder, { recursive: true, force: true });
    }
  });

  test("a script awaiting connect() stays alive until the sidecar answers", async () => {
    // Nothing of grpc-js's keeps the event loop alive between connection attempts: with only an
    // unref'd timer waiting, Node ended a script's top-level `await Client.connect(...)` (exit 13).
    const folder = await mkdtemp(join(tmpdir(), "are-ts-connect-"));
    const sdk = new URL("../../dist/index.js", import.meta.url).href; // from build/test
    try {
      for (const [n, timeout] of ["undefined", "Infinity"].entries()) {
        const path = join(folder, `script-${n}.sock`);
        const script = `import { Client } from ${JSON.stringify(sdk)};
          const client = await Client.connect(${JSON.stringify(`unix:${path}`)}, { connectTimeoutMs: ${timeout} });
          console.log("connected");
          client.close();`;
        const child = execFile(process.execPath, ["--input-type=module", "-e", script], { timeout: 20_000 });
        const exited = new Promise<[number | null, string]>((resolve) => {
          let out = "";
          child.stdout?.on("data", (chunk: Buffer) => (out += chunk.toString()));
          child.on("exit", (code) => resolve([code, out]));
        });
        await new Promise((resolve) => setTimeout(resolve, 500)); // nothing listens yet
        const server = new Server();
        await new Promise<number>((resolve, reject) =>
          server.bindAsync(`unix:${path}`, ServerCredentials.createInsecure(), (error, port) => (error ? reject(error) : resolve(port))),
        );
        try {
          assert.deepEqual(await within(exited, 30_000, "the script to end"), [0, "connected\n"], `connectTimeoutMs: ${timeout}`);
        } finally {
          server.forceShutdown();
        }
      }
    } finally {
      await rm(folder, { recursive: true, force: true });
    }
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
