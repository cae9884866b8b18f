/**
 * The raw call layer: promises and async iterators over grpc-js calls, with
 * the bearer token, a default deadline, abort signals and error mapping.
 *
 * @internal
 */
import type {
  CallOptions as GrpcCallOptions,
  ClientDuplexStream,
  ClientReadableStream,
  ClientUnaryCall,
  Metadata,
  ServiceError,
} from "@grpc/grpc-js";

import { AreError, Code, toAreError } from "./errors.js";

/** Options every call of the SDK takes. */
export interface CallOptions {
  /** Aborts the call; the promise rejects with the signal's reason. */
  signal?: AbortSignal;
  /** The call's deadline in milliseconds; default 30 s for unary calls. `Infinity` means none. */
  timeoutMs?: number;
}

/** A generated unary method in its (request, metadata, options, callback) form. */
export type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<GrpcCallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => ClientUnaryCall;

/** A generated server-streaming method in its (request, metadata, options) form. */
export type StreamMethod<Req, Res> = (
  request: Req,
  metadata?: Metadata,
  options?: Partial<GrpcCallOptions>,
) => ClientReadableStream<Res>;

/** A generated bidirectional-streaming method in its (metadata, options) form. */
export type DuplexMethod<Req, Res> = (metadata: Metadata, options?: Partial<GrpcCallOptions>) => ClientDuplexStream<Req, Res>;

export const DEFAULT_UNARY_TIMEOUT_MS = 30_000;

/**
 * The longest timeout a deadline can carry: grpc-js sends it as the grpc-timeout header, at most
 * 8 digits of hours (about 11,400 years), and throws on a longer one outside any promise, which
 * ends the process.
 */
const MAX_DEADLINE_MS = 99_999_999 * 3_600_000;

/**
 * A call's deadline `timeoutMs` from now; none (undefined) for `Infinity`, NaN, or a timeout
 * longer than gRPC can carry. Every deadline of the SDK's calls is made here.
 */
export function deadlineAfter(timeoutMs: number): Date | undefined {
  if (!Number.isFinite(timeoutMs) || timeoutMs > MAX_DEADLINE_MS) return undefined;
  return new Date(Date.now() + Math.max(0, timeoutMs));
}

export class Rpc {
  /**
   * Every call in flight, cancelled by {@link cancelCalls} when the client closes: grpc-js's
   * `Channel.close()` lets calls already started run on, so a wait on a workflow (a stream that
   * lasts as long as the workflow runs) would otherwise outlive `client.close()`, and keep the
   * process alive.
   */
  private readonly calls = new Set<{ cancel(): void }>();

  constructor(
    private readonly makeMetadata: () => Metadata,
    private readonly isClosed: () => boolean = () => false,
  ) {}

  /** The error of a call made after `client.close()`: CANCELLED, "the client is closed". */
  closedError(): AreError {
    return new AreError(Code.CANCELLED, "the client is closed");
  }

  /** True once `client.close()` was called: every call then rejects with {@link closedError}. */
  get closed(): boolean {
    return this.isClosed();
  }

  /** A fresh copy of the metadata every call sends (the bearer token, if any). */
  metadata(): Metadata {
    return this.makeMetadata();
  }

  /**
   * Opens a bidirectional stream (no deadline). The caller writes, reads and
   * ends it; closing the client cancels it (with CANCELLED).
   *
   * @throws AreError CANCELLED once the client is closed.
   */
  duplex<Req, Res>(method: DuplexMethod<Req, Res>): ClientDuplexStream<Req, Res> {
    if (this.isClosed()) throw this.closedError();
    const call = method(this.metadata(), {});
    const untrack = this.track(call);
    call.on("status", untrack);
    return call;
  }

  /**
   * Counts a call as in flight until the returned function is called, so that closing the
   * client cancels it (with CANCELLED); for calls made on `raw` clients directly.
   */
  track(call: { cancel(): void }): () => void {
    this.calls.add(call);
    return () => {
      this.calls.delete(call);
    };
  }

  /** Cancels every call in flight, unary or streaming (the client is closing). */
  cancelCalls(): void {
    const calls = [...this.calls];
    this.calls.clear();
    for (const call of calls) call.cancel();
  }

  /** Calls a unary method; rejects with an AreError, or the signal's reason once aborted. */
  unary<Req, Res>(method: UnaryMethod<Req, Res>, request: Req, options: CallOptions = {}): Promise<Res> {
    const { signal } = options;
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.isClosed()) return Promise.reject(this.closedError());
    const deadline = deadlineAfter(options.timeoutMs ?? DEFAULT_UNARY_TIMEOUT_MS);
    const callOptions: Partial<GrpcCallOptions> = deadline === undefined ? {} : { deadline };
    return new Promise<Res>((resolve, reject) => {
      let settled = false;
      let untrack = (): void => undefined;
      const onAbort = (): void => {
        if (settled) return;
        settled = true;
        call.cancel();
        reject(signal?.reason);
      };
      const call = method(request, this.metadata(), callOptions, (error, response) => {
        signal?.removeEventListener("abort", onAbort);
        untrack();
        if (settled) return;
        settled = true;
        if (error) reject(toAreError(error));
        else resolve(response);
      });
      untrack = this.track(call);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  /**
   * Calls a server-streaming method and yields its messages. Breaking out of
   * the loop cancels the call; an abort rejects with the signal's reason;
   * other failures are AreErrors. grpc-js reads the next message only as
   * the consumer asks for it, so the buffer is bounded.
   */
  async *stream<Req, Res>(method: StreamMethod<Req, Res>, request: Req, options: CallOptions = {}): AsyncGenerator<Res> {
    const { signal } = options;
    if (signal?.aborted) throw signal.reason;
    if (this.isClosed()) throw this.closedError();
    const deadline = options.timeoutMs === undefined ? undefined : deadlineAfter(options.timeoutMs);
    const callOptions: Partial<GrpcCallOptions> = deadline === undefined ? {} : { deadline };
    const call = method(request, this.metadata(), callOptions);
    const untrack = this.track(call);
    const onAbort = (): void => call.cancel();
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      for await (const message of call) yield message as Res;
    } catch (error) {
      if (signal?.aborted) throw signal.reason;
      throw toAreError(error);
    } finally {
      signal?.removeEventListener("abort", onAbort);
      untrack();
      call.cancel();
    }
  }
}
