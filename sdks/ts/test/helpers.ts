// Shared test helpers: a real sidecar from the repository's .venv (one per file, with a client), and bounded waits.
import { dirname, resolve } from "node:path";
import { after, before } from "node:test";
import { fileURLToPath } from "node:url";

import { Client, type Worker } from "@are-runtime/sdk";
import { SidecarProcess, type SidecarOptions } from "@are-runtime/sdk/testing";

/** The repository root (this file runs from sdks/ts/build/test). */
export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../../..");

/** Starts `<repo>/.venv/bin/python -m sidecar serve` on 127.0.0.1 with a temporary data folder. */
export function startSidecar(options: SidecarOptions = {}): Promise<SidecarProcess> {
  return SidecarProcess.start({
    command: [resolve(REPO, ".venv/bin/python"), "-m", "sidecar"],
    cwd: REPO,
    args: ["--durability", "relaxed", "--log-level", "warning"],
    timeoutMs: 60_000,
    ...options,
  });
}

/** A test file's sidecar and a client connected to it, both there once the file's before hook has run. */
export interface SharedSidecar {
  readonly sidecar: SidecarProcess;
  readonly client: Client;
}

/**
 * For the test file that calls it (at its top level): a before hook that starts a sidecar
 * (startSidecar(options)) and connects a client to it, and an after hook that closes the client
 * and stops the sidecar, handing its exit status to `stopped` when given.
 */
export function sharedSidecar(options: SidecarOptions = {}, stopped?: (exitCode: number | null) => void): SharedSidecar {
  let sidecar: SidecarProcess | undefined;
  let client: Client | undefined;
  before(async () => {
    sidecar = await startSidecar(options);
    client = await Client.connect(sidecar.target);
  });
  after(async () => {
    client?.close();
    if (sidecar) {
      const exitCode = await sidecar.stop();
      stopped?.(exitCode);
    }
  });
  return {
    get sidecar(): SidecarProcess {
      if (sidecar === undefined) throw new Error("the shared sidecar is not started: the before hook has not run");
      return sidecar;
    },
    get client(): Client {
      if (client === undefined) throw new Error("the shared client is not connected: the before hook has not run");
      return client;
    },
  };
}

/** Resolves with `promise`, or rejects once `ms` pass: no test waits without a bound. */
export function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Runs `body` with the worker serving, and always stops it (bounded). */
export async function serving(worker: Worker, body: () => Promise<void>): Promise<void> {
  const running = worker.run();
  try {
    await body();
  } finally {
    await within(worker.stop({ graceMs: 2_000 }), 20_000, "the worker to stop");
    await running;
  }
}

/** Polls `condition` every 20 ms until it holds; rejects after `ms`. */
export async function eventually(condition: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** A promise with its resolve function outside. */
export function deferred<T = void>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/** A unique suffix, so tests sharing a sidecar never share capabilities or namespaces. */
export function unique(prefix: string): string {
  return `${prefix}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
}

/** Worker options that keep stop() quick in tests: a short long-poll, frequent heartbeats. */
export const FAST = { pollTimeoutMs: 1_500, heartbeatIntervalMs: 200 } as const;
