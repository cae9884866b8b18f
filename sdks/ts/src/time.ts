/** Conversions between milliseconds and protobuf Durations, and abortable sleeps. @internal */
import type { Duration } from "./gen/google/protobuf/duration.js";

/** Milliseconds as a `google.protobuf.Duration` (undefined stays undefined). */
export function toDuration(ms: number | undefined): Duration | undefined {
  if (ms === undefined) return undefined;
  if (!Number.isFinite(ms) || ms < 0) throw new RangeError(`a duration must be a finite number of milliseconds >= 0, got ${ms}`);
  const seconds = Math.floor(ms / 1000);
  // Rounded to the nanosecond, a fraction just under a second (999.9999999999 ms) is a whole one:
  // carried, as a Duration's nanos stay below 1e9 (and never below 0, where ms/1000 rounded up).
  const nanos = Math.max(0, Math.round((ms - seconds * 1000) * 1e6));
  return nanos >= 1e9 ? { seconds: seconds + 1, nanos: nanos - 1e9 } : { seconds, nanos };
}

/** A `google.protobuf.Duration` as milliseconds (undefined stays undefined). */
export function fromDuration(duration: Duration | undefined): number | undefined {
  if (duration === undefined) return undefined;
  return duration.seconds * 1000 + duration.nanos / 1e6;
}

/** Resolves after `ms`, or rejects with the signal's reason once it aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** A uniformly random delay in [0, ms] (full jitter). */
export function jitter(ms: number): number {
  return Math.random() * ms;
}

/** The longest delay a Node timer takes (about 24.8 days); a longer one would fire at once. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * One signal that aborts when `signal` does or `timeoutMs` passes; `timedOut()`
 * tells which, and `dispose()` (call it once the work is done) clears the timer
 * and leaves nothing on `signal`. Without a timeout, the signal is `signal` itself.
 *
 * Not `AbortSignal.any([signal, AbortSignal.timeout(ms)])`: Node 20 keeps every
 * signal made by `AbortSignal.any` in its sources' sets of dependants for as long
 * as they live, so each wait given one long-lived signal (a process-wide shutdown
 * signal) left an entry behind for good; and an `AbortSignal.timeout` holds its
 * signal and timer until the delay passes, long after a wait that ended sooner.
 */
export function withTimeout(
  signal: AbortSignal | undefined,
  timeoutMs: number | undefined,
): { signal: AbortSignal | undefined; timedOut: () => boolean; dispose: () => void } {
  if (timeoutMs === undefined) return { signal, timedOut: () => false, dispose: () => undefined };
  const controller = new AbortController();
  let timedOut = false;
  let timer: NodeJS.Timeout | undefined;
  const onAbort = (): void => {
    clearTimeout(timer);
    controller.abort(signal?.reason);
  };
  const dispose = (): void => {
    clearTimeout(timer);
    signal?.removeEventListener("abort", onAbort);
  };
  if (signal?.aborted) {
    controller.abort(signal.reason);
    return { signal: controller.signal, timedOut: () => false, dispose };
  }
  signal?.addEventListener("abort", onAbort, { once: true });
  const deadline = Date.now() + Math.max(0, timeoutMs);
  const arm = (): void => {
    // Unref'd, as AbortSignal.timeout's is: a timeout alone keeps no process alive.
    timer = setTimeout(() => {
      if (Date.now() < deadline) return arm(); // over a timer's longest delay: wait again
      timedOut = true;
      signal?.removeEventListener("abort", onAbort);
      controller.abort(new DOMException("The operation was aborted due to timeout", "TimeoutError"));
    }, Math.min(Math.max(0, deadline - Date.now()), MAX_TIMER_MS));
    timer.unref();
  };
  arm();
  return { signal: controller.signal, timedOut: () => timedOut, dispose };
}
