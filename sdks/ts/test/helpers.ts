// Shared test helpers: a real sidecar from the repository's .venv, and bounded waits.
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

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

/** Resolves with `promise`, or rejects once `ms` pass: no test waits without a bound. */
export function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
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
