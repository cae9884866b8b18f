/**
 * The client: one channel to a sidecar, shared by every service.
 *
 * The SDK has three layers, as the Python SDK does: the generated code
 * (`src/gen`, one grpc-js client class per service, exposed as
 * `client.raw`); a call layer that adds the bearer token, deadlines, abort
 * signals and error mapping; and the typed facades (`client.workflows`,
 * `client.state`, `client.cache`, `client.trace`, `client.router`,
 * `client.blobs`, and
 * {@link Worker}).
 *
 * @module
 */
import * as grpc from "@grpc/grpc-js";

import { Blobs } from "./blobs.js";
import { Cache } from "./cache.js";
import { AreError, Code } from "./errors.js";
import { CacheServiceClient } from "./gen/are/v1/cache_service.js";
import { RouterServiceClient } from "./gen/are/v1/router_service.js";
import { SchedulerServiceClient } from "./gen/are/v1/scheduler_service.js";
import { StateServiceClient } from "./gen/are/v1/state_service.js";
import { TraceServiceClient } from "./gen/are/v1/trace_service.js";
import { WorkerServiceClient } from "./gen/are/v1/worker_service.js";
import { HealthCheckRequest, HealthCheckResponse_ServingStatus, HealthClient } from "./gen/grpc/health/v1/health.js";
import { Router } from "./router.js";
import { Rpc, type CallOptions } from "./rpc.js";
import { State } from "./state.js";
import { MAX_TIMER_MS } from "./time.js";
import { Trace } from "./trace.js";
import { DEFAULT_RECONNECT_WINDOW_MS, Workflows } from "./workflows.js";

/** The sidecar's default bound on one message; the client accepts the same. */
export const DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

/** The default interval of the client's keepalive pings, in milliseconds (see {@link ConnectOptions.keepaliveTimeMs}). */
export const DEFAULT_KEEPALIVE_TIME_MS = 30_000;
/** The default wait for a keepalive ping's ack, in milliseconds (see {@link ConnectOptions.keepaliveTimeoutMs}). */
export const DEFAULT_KEEPALIVE_TIMEOUT_MS = 10_000;

/** Options of {@link Client.connect}. */
export interface ConnectOptions {
  /** The bearer token, when the sidecar was started with one. */
  token?: string;
  /** Use TLS (with the system's roots unless `rootCertificates` is given). */
  tls?: boolean;
  /** PEM roots to trust for TLS (implies `tls`). */
  rootCertificates?: Buffer;
  /**
   * The largest message sent or received, in bytes; default 64 MiB like the sidecar. A worker's
   * stream cuts its batches under it (and under 16 MiB). Set it to the sidecar's own bound
   * (`--max-message-bytes`: 64 MiB by default, 32 MiB at the least): the sidecar sizes some
   * answers to its own bound (a page of tasks with payloads, a poll's assignments: up to that bound
   * less 1 MiB), and an answer over the client's bound fails on this side with RESOURCE_EXHAUSTED,
   * which no retry fixes. A bound just over 4 MiB, the largest inline payload, is not enough: a
   * workflow's closing status with a 4 MiB inline result is 4 MiB and a few hundred bytes, a task
   * with payloads 8 MiB and more, a state document up to 16 MiB.
   */
  maxMessageBytes?: number;
  /** How long to wait for the sidecar to answer, in milliseconds; default 10 s. `Infinity` means no bound. */
  connectTimeoutMs?: number;
  /** Aborts the connection attempt. */
  signal?: AbortSignal;
  /**
   * Keepalive: while a call is open (a worker's stream, a wait) the client
   * sends an HTTP/2 ping every `keepaliveTimeMs` and closes the connection
   * when no ack comes within `keepaliveTimeoutMs`, so that a sidecar that
   * hangs (a stopped process, a frozen VM, a dead NAT entry) fails the open
   * calls with `UNAVAILABLE` instead of leaving them waiting forever, and a
   * worker reconnects. No pings are sent while no call is open. Default
   * 30 s; `0` or `null` turns keepalive off.
   */
  keepaliveTimeMs?: number | null;
  /** How long to wait for a keepalive ping's ack, in milliseconds; default 10 s. */
  keepaliveTimeoutMs?: number;
  /**
   * How long a workflow handle's `wait`, `result` or `watch` keeps resuming its dropped stream
   * while the sidecar does not answer, in milliseconds; default 60 s (as the Python SDK's
   * `reconnect_window`). A restart shorter than this goes unnoticed; after it, the call rejects
   * with the last `AreError` UNAVAILABLE. It bounds the silence, not the wait: a workflow that
   * runs for hours is waited for as long as the sidecar answers. `Infinity` resumes for as long as
   * it takes; 0, a negative number or NaN is refused (`RangeError`) before anything is opened.
   */
  reconnectWindowMs?: number;
  /** More grpc-js channel options; they win over the SDK's own. */
  channelOptions?: grpc.ChannelOptions;
}

/** The generated grpc-js clients of every service, sharing the client's channel. */
export interface RawServices {
  readonly scheduler: SchedulerServiceClient;
  readonly worker: WorkerServiceClient;
  readonly state: StateServiceClient;
  readonly cache: CacheServiceClient;
  readonly router: RouterServiceClient;
  readonly trace: TraceServiceClient;
  readonly health: HealthClient;
}

/** The health status names of `grpc.health.v1`. */
export type HealthStatus = "UNKNOWN" | "SERVING" | "NOT_SERVING" | "SERVICE_UNKNOWN";

/**
 * A connection to one ARE sidecar. Create it with {@link Client.connect} and
 * {@link Client.close} it when done.
 */
export class Client {
  /** The gRPC target (`host:port` or `unix:PATH`). */
  readonly target: string;
  /**
   * The generated clients: every RPC of the contract, taking and returning
   * the generated message types. Call them with `client.metadata()` to send
   * the token; prefer the typed facades.
   */
  readonly raw: RawServices;
  /** Submit, follow and cancel workflows (SchedulerService). */
  readonly workflows: Workflows;
  /** Workflow state documents, checkpoints, forks and memory (StateService). */
  readonly state: State;
  /** The semantic cache (CacheService). */
  readonly cache: Cache;
  /** The flight recorder (TraceService). */
  readonly trace: Trace;
  /** Agent cards, task routing and model routing (RouterService). */
  readonly router: Router;
  /** The blob store (StateService blobs). */
  readonly blobs: Blobs;
  /** @internal */
  readonly rpc: Rpc;
  /**
   * The largest message this client sends, in bytes (`maxMessageBytes`, or a
   * `grpc.max_send_message_length` channel option; Infinity when unbounded):
   * the worker stream cuts its batches below it.
   *
   * @internal
   */
  readonly maxSendBytes: number;
  private readonly channel: grpc.Channel;
  /**
   * Waits on workflows (a handle's `wait`, `result` and `watch`) go over a
   * second channel: each holds a stream open for as long as its workflow
   * runs, and the sidecar serves 1,024 streams at once on a connection, so on
   * one connection a thousand pending waits would hold up every other call of
   * the client, a worker's stream included. Past 1,024 waits, the next ones
   * queue until streams free.
   */
  private readonly watchChannel: grpc.Channel;
  private readonly watches: SchedulerServiceClient;
  private closed = false;

  private constructor(
    target: string,
    channel: grpc.Channel,
    watchChannel: grpc.Channel,
    credentials: grpc.ChannelCredentials,
    token: string | undefined,
    maxSendBytes: number,
    reconnectWindowMs: number,
  ) {
    this.target = target;
    this.maxSendBytes = maxSendBytes;
    this.channel = channel;
    this.watchChannel = watchChannel;
    this.watches = new SchedulerServiceClient(target, credentials, { channelOverride: watchChannel });
    const options = { channelOverride: channel };
    this.raw = {
      scheduler: new SchedulerServiceClient(target, credentials, options),
      worker: new WorkerServiceClient(target, credentials, options),
      state: new StateServiceClient(target, credentials, options),
      cache: new CacheServiceClient(target, credentials, options),
      router: new RouterServiceClient(target, credentials, options),
      trace: new TraceServiceClient(target, credentials, options),
      health: new HealthClient(target, credentials, options),
    };
    this.rpc = new Rpc(
      () => {
        const metadata = new grpc.Metadata();
        if (token) metadata.set("authorization", `Bearer ${token}`);
        return metadata;
      },
      () => this.closed,
    );
    this.blobs = new Blobs(this.raw.state, this.rpc);
    this.workflows = new Workflows(this.raw.scheduler, this.rpc, this.blobs, this.watches, reconnectWindowMs);
    this.state = new State(this.raw.state, this.rpc);
    this.cache = new Cache(this.raw.cache, this.rpc, this.blobs);
    this.trace = new Trace(this.raw.trace, this.rpc);
    this.router = new Router(this.raw.router, this.rpc);
  }

  /**
   * Opens a channel to a sidecar and waits until it is reachable.
   *
   * @param target `host:port` (TCP) or `unix:PATH` (a Unix socket).
   * @throws AreError `UNAVAILABLE` when nothing answered within `connectTimeoutMs`.
   * @throws RangeError `reconnectWindowMs` is not positive.
   */
  static async connect(target: string, options: ConnectOptions = {}): Promise<Client> {
    const reconnectWindowMs = options.reconnectWindowMs ?? DEFAULT_RECONNECT_WINDOW_MS;
    if (!(reconnectWindowMs > 0)) {
      // Before any channel is opened, as the Python SDK's connect.
      throw new RangeError(`reconnectWindowMs must be positive (Infinity: no bound), got ${reconnectWindowMs}`);
    }
    const maxMessageBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    const credentials =
      options.tls || options.rootCertificates !== undefined
        ? grpc.credentials.createSsl(options.rootCertificates ?? null)
        : grpc.credentials.createInsecure();
    const channelOptions = {
      "grpc.max_send_message_length": maxMessageBytes,
      "grpc.max_receive_message_length": maxMessageBytes,
      ...keepaliveChannelOptions(options),
      ...options.channelOptions,
    };
    const channel = new grpc.Channel(target, credentials, channelOptions);
    // Connected at the first wait; a subchannel pool of its own keeps grpc-js from putting
    // both channels on one connection, as it does for channels alike.
    const watchChannel = new grpc.Channel(target, credentials, { ...channelOptions, "grpc.use_local_subchannel_pool": 1 });
    const sendBound: unknown = channelOptions["grpc.max_send_message_length"];
    // grpc-js reads -1 as unbounded; a bound given as a channel option wins, as it does there.
    const maxSendBytes = typeof sendBound === "number" && sendBound >= 0 ? sendBound : sendBound === -1 ? Infinity : maxMessageBytes;
    const client = new Client(target, channel, watchChannel, credentials, options.token, maxSendBytes, reconnectWindowMs);
    const timeoutMs = options.connectTimeoutMs ?? 10_000;
    try {
      await waitForReady(client.raw.health, timeoutMs, options.signal);
    } catch (error) {
      client.close();
      if (options.signal?.aborted) throw options.signal.reason;
      throw new AreError(Code.UNAVAILABLE, `no ARE sidecar answered at ${JSON.stringify(target)} within ${timeoutMs} ms`, {
        cause: error,
      });
    }
    return client;
  }

  /** The metadata (the bearer token) every call sends, for calls through `client.raw`. */
  metadata(): grpc.Metadata {
    return this.rpc.metadata();
  }

  /**
   * The sidecar's health status, `"SERVING"` when ready.
   *
   * @param service A service name such as `"are.v1.SchedulerService"`, or "" for the sidecar.
   */
  async health(service = "", options: CallOptions = {}): Promise<HealthStatus> {
    const health = this.raw.health;
    const response = await this.rpc.unary(health.check.bind(health), HealthCheckRequest.fromPartial({ service }), {
      timeoutMs: 5_000,
      ...options,
    });
    return (HealthCheckResponse_ServingStatus[response.status] ?? "UNKNOWN") as HealthStatus;
  }

  /** Closes the channel; calls in flight are cancelled. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.rpc.cancelCalls(); // Channel.close() alone lets calls in flight run on
    for (const service of Object.values(this.raw)) (service as grpc.Client).close();
    this.watches.close();
    this.channel.close();
    this.watchChannel.close();
  }
}

/**
 * The grpc-js channel options {@link Client.connect} sets for keepalive:
 * `grpc.keepalive_time_ms`, `grpc.keepalive_timeout_ms` and
 * `grpc.keepalive_permit_without_calls` (0: no pings while no call is open),
 * or none when keepalive is off.
 */
export function keepaliveChannelOptions(options: Pick<ConnectOptions, "keepaliveTimeMs" | "keepaliveTimeoutMs"> = {}): grpc.ChannelOptions {
  const timeMs = options.keepaliveTimeMs === undefined ? DEFAULT_KEEPALIVE_TIME_MS : options.keepaliveTimeMs;
  if (timeMs === null || !(timeMs > 0)) return {};
  const timeoutMs = options.keepaliveTimeoutMs ?? DEFAULT_KEEPALIVE_TIMEOUT_MS;
  return {
    "grpc.keepalive_time_ms": timeMs,
    "grpc.keepalive_timeout_ms": timeoutMs > 0 ? timeoutMs : DEFAULT_KEEPALIVE_TIMEOUT_MS,
    "grpc.keepalive_permit_without_calls": 0,
  };
}

/**
 * Waits until the channel is ready, for at most `timeoutMs` (`Infinity`: no bound). grpc-js gets
 * no deadline of its own: it took `Infinity` ms from now (an invalid Date) as a deadline already
 * passed, and its one timer fires at once past about 24.8 days. The timer here is re-armed
 * past that, and is not unref'd: while connect() waits, it is what keeps the process alive
 * (grpc-js's connection attempts do not), bound or no bound.
 */
function waitForReady(client: grpc.Client, timeoutMs: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    let timer: NodeJS.Timeout | undefined;
    const settle = (error: unknown): void => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      if (error === undefined) resolve();
      else reject(error);
    };
    const onAbort = (): void => settle(signal?.reason);
    signal?.addEventListener("abort", onAbort, { once: true });
    const deadline = Date.now() + (Number.isNaN(timeoutMs) ? Infinity : Math.max(0, timeoutMs));
    const arm = (): void => {
      timer = setTimeout(() => {
        if (Date.now() < deadline) arm();
        else settle(new Error(`the channel was not ready within ${timeoutMs} ms`));
      }, Math.min(Math.max(0, deadline - Date.now()), MAX_TIMER_MS));
    };
    arm();
    client.waitForReady(Infinity, (error) => settle(error ?? undefined));
  });
}
