package dev.are.sdk;

/** Why a running attempt was told to stop. */
public enum CancelReason {
  /** The sidecar asked to stop (the workflow was cancelled or closed). */
  CANCEL_REQUESTED,
  /** The worker no longer holds the attempt (TASK_NOT_HELD and the like). */
  LEASE_LOST,
  /** The attempt's start-to-close deadline passed. */
  DEADLINE_EXCEEDED,
  /** The worker stopped and the handler outlived the shutdown grace. */
  WORKER_STOPPED,
}
