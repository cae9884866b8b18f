package dev.are.sdk;

import java.util.concurrent.atomic.AtomicLong;

/** A worker's counters. */
public final class WorkerStats {
  final AtomicLong completed = new AtomicLong();
  final AtomicLong failed = new AtomicLong();
  final AtomicLong cancelled = new AtomicLong();

  WorkerStats() {}

  /** Attempts reported completed. */
  public long completed() {
    return completed.get();
  }

  /** Attempts reported failed. */
  public long failed() {
    return failed.get();
  }

  /** Attempts the sidecar cancelled or took back. */
  public long cancelled() {
    return cancelled.get();
  }

  @Override
  public String toString() {
    return "WorkerStats{completed=" + completed() + ", failed=" + failed() + ", cancelled="
        + cancelled() + "}";
  }
}
