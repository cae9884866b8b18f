/**
 * One error tree for everything the SDK throws.
 *
 * ```text
 * AreError                 any failed call: code, reason, metadata, fieldViolations, retryAfterMs
 * ├── WorkflowSpecError    a spec refused client-side (code INVALID_ARGUMENT, fields named as the sidecar does)
 * ├── WorkflowFailedError  handle.result() on a workflow that closed FAILED or CANCELLED
 * └── WaitTimeoutError     a wait's timeoutMs ran out (code DEADLINE_EXCEEDED)
 * ```
 *
 * A failed RPC becomes an {@link AreError} whose `code` is the gRPC status
 * code and whose `reason`, `metadata`, `fieldViolations` and `retryAfterMs`
 * are decoded from the `google.rpc.Status` in the `grpc-status-details-bin`
 * trailer (ErrorInfo, BadRequest and RetryInfo details). An aborted wait
 * rejects with the signal's reason (an `AbortError` unless you gave another),
 * as Node's own APIs do. A task's own failure is data (`FailureInfo`), never
 * an error of this tree.
 *
 * @module
 */
import { Metadata, status } from "@grpc/grpc-js";

import { BadRequest, ErrorInfo, RetryInfo } from "./gen/google/rpc/error_details.js";
import { Status } from "./gen/google/rpc/status.js";

/** gRPC status codes (`Code.NOT_FOUND`, ...), as grpc-js numbers them. */
export const Code = status;
/** A gRPC status code. */
export type Code = status;

const STATUS_DETAILS_KEY = "grpc-status-details-bin";

/** One invalid field of a request: its path (`spec.tasks[3].depends_on[0]`) and why. */
export interface FieldViolation {
  readonly field: string;
  readonly description: string;
}

/** What an {@link AreError} carries besides its code and message. */
export interface AreErrorInit {
  /** The machine-readable reason (`WORKFLOW_NOT_FOUND`), or "". */
  reason?: string;
  /** The ErrorInfo metadata (for example `workflow_id`, `field`, `limit`). */
  metadata?: Record<string, string>;
  /** The invalid fields named by a BadRequest detail. */
  fieldViolations?: readonly FieldViolation[];
  /** How long to wait before retrying, when the sidecar said (RetryInfo). */
  retryAfterMs?: number;
  /** The underlying error, if any. */
  cause?: unknown;
}

/** The name of a gRPC status code (`"NOT_FOUND"`), or `"CODE_<n>"` for an unknown one. */
export function codeName(code: number): string {
  return (status as unknown as Record<number, string>)[code] ?? `CODE_${code}`;
}

/**
 * The base of every error the SDK throws, and the error of every failed call.
 *
 * Check `code` (a {@link Code}) and `reason` (an `ErrorReason` name without
 * its prefix, for example `"WORKFLOW_NOT_FOUND"`); treat an unknown reason
 * like its code alone.
 */
export class AreError extends Error {
  /** The gRPC status code. */
  readonly code: Code;
  /** The status code's name, for example `"INVALID_ARGUMENT"`. */
  readonly codeName: string;
  /** The sidecar's human-readable message (without code or reason). */
  readonly details: string;
  /** The machine-readable reason, or "" when none was sent. */
  readonly reason: string;
  /** The ErrorInfo metadata. */
  readonly metadata: Readonly<Record<string, string>>;
  /** The invalid fields, for INVALID_ARGUMENT. */
  readonly fieldViolations: readonly FieldViolation[];
  /** The retry hint in milliseconds, for RESOURCE_EXHAUSTED; undefined when none was sent. */
  readonly retryAfterMs: number | undefined;

  constructor(code: Code, details: string, init: AreErrorInit = {}) {
    const name = codeName(code);
    let text = `${name}: ${details}`;
    if (init.reason) text += ` [${init.reason}]`;
    for (const violation of init.fieldViolations ?? []) {
      text += `\n  ${violation.field}: ${violation.description}`;
    }
    super(text, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = new.target.name;
    this.code = code;
    this.codeName = name;
    this.details = details;
    this.reason = init.reason ?? "";
    this.metadata = { ...(init.metadata ?? {}) };
    this.fieldViolations = [...(init.fieldViolations ?? [])];
    this.retryAfterMs = init.retryAfterMs;
  }

  /** The first field violation's path, or "" (handy in tests and messages). */
  get field(): string {
    return this.fieldViolations[0]?.field ?? this.metadata["field"] ?? "";
  }
}

/** True for a grpc-js ServiceError (or anything shaped like one). */
function isServiceError(error: unknown): error is { code: number; details?: string; metadata?: Metadata; message: string } {
  return typeof error === "object" && error !== null && typeof (error as { code?: unknown }).code === "number";
}

/**
 * The INTERNAL statuses grpc-js makes up itself, without a trailer, when this side cannot decode a
 * response or encode a request: the client's failure, which as they stand read as the sidecar's.
 */
const CLIENT_CODEC_FAILURES: ReadonlyArray<readonly [prefix: string, meaning: string]> = [
  ["Response message parsing error: ", "the client could not decode the sidecar's response (a client-side error): "],
  ["Request message serialization failure: ", "the client could not encode the request (a client-side error): "],
];

/**
 * Translates an error thrown by a grpc-js call into an {@link AreError},
 * decoding reason, field violations and the retry hint from the rich status
 * trailer. An {@link AreError} is returned as it is; anything else becomes
 * an `UNKNOWN` AreError with it as the cause. A response the client could
 * not decode (or a request it could not encode) stays INTERNAL, as grpc-js
 * reports it, with a message saying the client failed, not the sidecar.
 */
export function toAreError(error: unknown): AreError {
  if (error instanceof AreError) return error;
  if (!isServiceError(error)) {
    const message = error instanceof Error ? error.message : String(error);
    return new AreError(Code.UNKNOWN, message, { cause: error });
  }
  let details = error.details ?? error.message;
  const init: AreErrorInit = { cause: error };
  const metadata: Record<string, string> = {};
  const violations: FieldViolation[] = [];
  const raw = error.metadata instanceof Metadata ? error.metadata.get(STATUS_DETAILS_KEY) : [];
  if (error.code === Code.INTERNAL && raw.length === 0) {
    for (const [prefix, meaning] of CLIENT_CODEC_FAILURES) {
      if (details.startsWith(prefix)) return new AreError(Code.INTERNAL, meaning + details.slice(prefix.length), init);
    }
  }
  for (const value of raw) {
    if (!Buffer.isBuffer(value)) continue;
    let decoded: Status;
    try {
      decoded = Status.decode(value);
    } catch {
      continue; // a malformed trailer: keep the plain status
    }
    if (decoded.message) details = decoded.message;
    for (const any of decoded.details) {
      const type = any.typeUrl.slice(any.typeUrl.lastIndexOf("/") + 1);
      try {
        if (type === "google.rpc.ErrorInfo") {
          const info = ErrorInfo.decode(any.value);
          init.reason = info.reason;
          Object.assign(metadata, info.metadata);
        } else if (type === "google.rpc.BadRequest") {
          for (const v of BadRequest.decode(any.value).fieldViolations) {
            violations.push({ field: v.field, description: v.description });
          }
        } else if (type === "google.rpc.RetryInfo") {
          const delay = RetryInfo.decode(any.value).retryDelay;
          if (delay) init.retryAfterMs = delay.seconds * 1000 + Math.round(delay.nanos / 1e6);
        }
      } catch {
        // An undecodable detail is skipped; the others still count.
      }
    }
  }
  init.metadata = metadata;
  init.fieldViolations = violations;
  return new AreError(error.code, details, init);
}

/**
 * How long to wait, in milliseconds, before trying a refused call again:
 * full jitter over `delayMs` (uniform in [0, delayMs]); or, when the sidecar
 * sent a retry hint (`error.retryAfterMs`: its worker bound reached, its
 * watch subscribers all taken, a store closing), at least that hint, with
 * up to a fifth more so that the callers it refused together do not all
 * come back at once.
 *
 * ```ts
 * await sleep(retryWait(delay, error instanceof AreError ? error.retryAfterMs : undefined));
 * ```
 */
export function retryWait(delayMs: number, hintMs: number | undefined): number {
  let wait = Math.random() * delayMs;
  if (hintMs !== undefined && hintMs > 0) wait = Math.max(wait, hintMs * (1 + Math.random() * 0.2));
  return wait;
}

/** A workflow spec failed the client-side checks; nothing was sent. */
export class WorkflowSpecError extends AreError {
  constructor(violations: readonly FieldViolation[]) {
    super(Code.INVALID_ARGUMENT, "invalid workflow spec", { reason: "INVALID_ARGUMENT", fieldViolations: violations });
  }
}

/** A wait (`handle.wait`, `handle.result`) did not end within its `timeoutMs`. */
export class WaitTimeoutError extends AreError {
  constructor(message: string) {
    super(Code.DEADLINE_EXCEEDED, message);
  }
}
