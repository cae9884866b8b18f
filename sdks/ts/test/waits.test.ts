// Waits across a sidecar's restarts and its end: a restart on an older event log, a sidecar gone
// for good. Each test runs sidecars of its own, restarted on the same target and data folder.
import assert from "node:assert/strict";
import { cp, mkdtemp, rename, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { describe, test } from "node:test";

import { AreError, Client, Code, WorkflowSpec, type WorkflowUpdate } from "@are-runtime/sdk";
import type { SidecarProcess } from "@are-runtime/sdk/testing";

import { startSidecar, unique, within } from "./helpers.js";

/** A sidecar on `target` and `dataDir` (a restart of an earlier one). */
function restart(target: string, dataDir: string): Promise<SidecarProcess> {
  return startSidecar({ args: ["--durability", "relaxed", "--log-level", "warning", "--listen", target, "--data-dir", dataDir] });
}

/** The next update of a watch, bounded. */
async function next(updates: AsyncIterator<WorkflowUpdate>, what: string): Promise<WorkflowUpdate> {
  const result = await within(updates.next(), 60_000, what);
  assert.equal(result.done, false, `the watch ended before ${what}`);
  return result.value as WorkflowUpdate;
}

describe("waits across restarts", () => {
  test("a watch resumed on an older event log goes on without its cursor", async () => {
    // The restarted sidecar's log ends before the watch's cursor (a power loss under
    // --durability relaxed, a restored backup): it answers OUT_OF_RANGE, SEQUENCE_BEYOND_LOG,
    // and the contract says to watch again without the cursor. The watch (and so wait and
    // result) rejected with that error.
    const first = await startSidecar();
    const { target, dataDir } = first;
    const snapshot = join(await mkdtemp(join(tmpdir(), "are-ts-older-")), "data");
    const sidecars: SidecarProcess[] = [first];
    const clients: Client[] = [];
    try {
      const client = await Client.connect(target, { reconnectWindowMs: 30_000 });
      clients.push(client);
      const capability = unique("nobody");
      const handle = await client.workflows.submit(
        new WorkflowSpec("ts-older-log").task("gate", { capability, requiresApproval: true }).task("after", { capability, dependsOn: ["gate"] }),
      );
      await within(first.stop({ keep: true }), 20_000, "the first sidecar to stop");
      await cp(dataDir, snapshot, { recursive: true });
      const second = await restart(target, dataDir);
      sidecars.push(second);
      const other = await Client.connect(target);
      clients.push(other);
      for (let i = 0; i < 20; i += 1) await other.state.patch(handle.workflowId, { merge: { i } });
      await other.workflows.getHandle(handle.workflowId).approve("gate");

      const updates = handle.watch()[Symbol.asyncIterator]();
      const current = await next(updates, "the current status");
      assert.equal(current.workflow.state, "RUNNING");

      await second.kill();
      await rm(dataDir, { recursive: true, force: true });
      await rename(snapshot, dataDir);
      const third = await restart(target, dataDir);
      sidecars.push(third);
      const older = await next(updates, "the status on the older log");
      assert.equal(older.workflow.state, "RUNNING");
      assert.ok(older.sequence < current.sequence, `sequence ${older.sequence}, after ${current.sequence}`);

      const last = await Client.connect(target);
      clients.push(last);
      await last.workflows.getHandle(handle.workflowId).cancel({ reason: "the test is over" });
      let update = await next(updates, "the closing status");
      while (update.workflow.state === "RUNNING" || update.workflow.state === "CANCELLING") update = await next(updates, "the closing status");
      assert.equal(update.workflow.state, "CANCELLED");
      assert.equal((await within(updates.next(), 10_000, "the watch to end")).done, true);

      // The caller's own afterSequence beyond the log is the caller's error: it rejects.
      const error = await within(
        handle
          .watch({ afterSequence: current.sequence + 1_000_000 })
          [Symbol.asyncIterator]()
          .next()
          .catch((e: unknown) => e),
        20_000,
        "a watch after the end of the log",
      );
      assert.ok(error instanceof AreError, String(error));
      assert.equal(error.code, Code.OUT_OF_RANGE);
      assert.equal(error.reason, "SEQUENCE_BEYOND_LOG");
    } finally {
      for (const client of clients) client.close();
      for (const sidecar of sidecars.reverse()) await sidecar.stop();
      await rm(dirname(dataDir), { recursive: true, force: true });
      await rm(dirname(snapshot), { recursive: true, force: true });
    }
  });

  test("a wait on a sidecar gone for good rejects UNAVAILABLE once the reconnect window passes", async () => {
    // It resumed every two seconds for as long as its timeout allowed: forever without one. As the
    // Python SDK's reconnect_window, it now gives up once the sidecar has been silent that long.
    const sidecar = await startSidecar();
    const client = await Client.connect(sidecar.target, { reconnectWindowMs: 2_000 });
    try {
      const handle = await client.workflows.submit(new WorkflowSpec("ts-gone").task("a", { capability: unique("nobody") }));
      const updates = handle.watch()[Symbol.asyncIterator]();
      await next(updates, "the current status");
      await sidecar.kill();
      const dropped = await within(
        updates.next().catch((e: unknown) => e),
        60_000,
        "the watch to give up",
      );
      assert.ok(dropped instanceof AreError, String(dropped));
      assert.equal(dropped.code, Code.UNAVAILABLE);
      assert.match(dropped.message, /reconnect window/);

      // A wait that starts once the sidecar is gone, without a timeout, ends the same way.
      const waited = await within(
        handle.wait().catch((e: unknown) => e),
        60_000,
        "the wait to give up",
      );
      assert.ok(waited instanceof AreError, String(waited));
      assert.equal(waited.code, Code.UNAVAILABLE);
    } finally {
      client.close();
      await sidecar.stop();
    }
  });
});
