/**
 * The semantic cache (`client.cache`): an exact tier (the normalised prompt)
 * then a semantic tier (embedding similarity above the namespace's
 * threshold), so the same thought is not paid for twice.
 *
 * ```ts
 * await client.cache.putNamespace("gpt-4o:sys-3f2a", { similarityThreshold: 0.9 });
 * const result = await client.cache.getOrCall("gpt-4o:sys-3f2a", prompt, () => llm(prompt));
 * result.value; result.fromCache;
 * ```
 *
 * Values are encoded like every payload of the SDK: JSON by default, a
 * Uint8Array raw, a RawPayload as given. A response over 4 MiB is stored in
 * the blob store and the entry holds a reference; lookups fetch it back.
 *
 * @module
 */
import type { Blobs } from "./blobs.js";
import { AreError, Code } from "./errors.js";
import {
  CacheTier,
  DeleteNamespaceRequest,
  GetCacheStatsRequest,
  InvalidateCacheRequest,
  ListNamespacesRequest,
  LookupCacheRequest,
  PutNamespaceRequest,
  StoreCacheRequest,
  VectorDtype,
  type CacheNamespace as CacheNamespaceMessage,
  type CacheServiceClient,
  type CacheStats,
  type LookupCacheResponse,
} from "./gen/are/v1/cache_service.js";
import type { Payload } from "./gen/are/v1/common.js";
import { decodePayload, encodePayload } from "./payload.js";
import type { CallOptions, Rpc } from "./rpc.js";
import { fromDuration, toDuration } from "./time.js";

export type { CacheStats } from "./gen/are/v1/cache_service.js";

/** A response over this many bytes is stored as a blob and the entry holds a reference. */
export const MAX_INLINE_BYTES = 4 * 1024 * 1024;

/** Tokens and cost a response took to produce (credited as savings on each hit). */
export interface CacheUsage {
  inputTokens?: number;
  outputTokens?: number;
  costMicroUsd?: number;
}

/** The entry that answered a lookup. */
export interface CacheHit {
  entryId: string;
  tier: "exact" | "semantic";
  /** Cosine similarity of the entry's prompt (1.0 for exact hits). */
  similarity: number;
  /** The stored response, decoded. */
  value: unknown;
  /** The stored response's bytes. */
  data: Buffer;
  contentType: string;
  matchedPrompt: string;
  metadata: Record<string, string>;
  /** What producing the response cost, i.e. what this hit saved. */
  usage: Required<CacheUsage>;
  createTime: Date | undefined;
}

/** A stored entry. */
export interface CacheStored {
  entryId: string;
  /** True when an entry with the same normalised prompt was replaced. */
  replaced: boolean;
  expireTime: Date | undefined;
}

/** What {@link Cache.getOrCall} returns. */
export interface CachedResult<T> {
  /**
   * The answer, the same on a miss as on a later hit: the stored value decoded (a Uint8Array
   * comes back as a RawPayload, a Date as a string), or the call's result as it is when it
   * could not be encoded (and so was not stored).
   */
  value: T;
  /** True when the cache answered and the call was not made. */
  fromCache: boolean;
  /** The entry that answered, on a hit. */
  hit: CacheHit | undefined;
  /** The entry stored on a miss; undefined on a hit, or when the lookup or the store failed (logged). */
  stored: CacheStored | undefined;
}

/** A namespace's settings as stored (defaults filled in). */
export interface CacheNamespace {
  name: string;
  embedder: string;
  dimension: number;
  similarityThreshold: number;
  defaultTtlMs: number | undefined;
  maxEntries: number;
  maxBytes: number;
  vectorDtype: "f32" | "f16" | "i8";
  description: string;
  /** The search expansion in force: fixed, or calibrated on the namespace's own lookups. */
  searchExpansion: number;
  /** The recall@1 a calibrated expansion keeps. */
  recallTarget: number;
  /** True when searchExpansion was set (fixed), false when it is calibrated. */
  searchExpansionFixed: boolean;
  createTime: Date | undefined;
  updateTime: Date | undefined;
  /** True when put_namespace created it. */
  created: boolean;
}

/** Options of {@link Cache.putNamespace}; zero or unset means the sidecar's default. */
export interface NamespaceOptions extends CallOptions {
  /** `"lexical"` (default), `"caller"` (caller vectors only) or a model configured on the sidecar. */
  embedder?: string;
  /** Vector dimension; 0 means the embedder's (required for `"caller"`). */
  dimension?: number;
  similarityThreshold?: number;
  defaultTtlMs?: number;
  maxEntries?: number;
  maxBytes?: number;
  vectorDtype?: "f32" | "f16" | "i8";
  description?: string;
  /** HNSW ef; 0 or unset means calibrated (see `recallTarget`), otherwise 4 to 1,024, fixed. */
  searchExpansion?: number;
  /** The recall@1 a calibrated expansion keeps, in [0.5, 1); 0 or unset means 0.995. */
  recallTarget?: number;
}

/** The mutable settings {@link Cache.updateNamespace} may change: those given change. */
export type NamespaceUpdate = Pick<
  NamespaceOptions,
  "similarityThreshold" | "defaultTtlMs" | "maxEntries" | "maxBytes" | "description" | "searchExpansion" | "recallTarget"
>;

const UPDATABLE: ReadonlyArray<readonly [keyof NamespaceUpdate, string]> = [
  ["similarityThreshold", "similarity_threshold"],
  ["defaultTtlMs", "default_ttl"],
  ["maxEntries", "max_entries"],
  ["maxBytes", "max_bytes"],
  ["description", "description"],
  ["searchExpansion", "search_expansion"],
  ["recallTarget", "recall_target"],
];

/** Options of {@link Cache.lookup}. */
export interface LookupOptions extends CallOptions {
  /** The prompt's embedding, when you compute your own. */
  vector?: readonly number[];
  /** The similarity a semantic hit needs; default the namespace's. */
  threshold?: number;
  /** Only entries younger than this answer. */
  maxAgeMs?: number;
  /** Consult the exact tier only. */
  exactOnly?: boolean;
}

/** Options of {@link Cache.store}. */
export interface StoreOptions extends CallOptions {
  contentType?: string;
  vector?: readonly number[];
  ttlMs?: number;
  metadata?: Record<string, string>;
  usage?: CacheUsage;
}

/** Options of {@link Cache.getOrCall}. */
export interface GetOrCallOptions<T> extends CallOptions {
  vector?: readonly number[];
  threshold?: number;
  ttlMs?: number;
  metadata?: Record<string, string>;
  /** The result's tokens and cost, or a function computing them from it. */
  usage?: CacheUsage | ((value: T) => CacheUsage);
  /** Where the warnings go (a lookup or a store that failed, the call answering anyway); default `console`. */
  logger?: { warn: (message: string) => void };
}

/**
 * Lookup errors meaning the cache is down or busy, not that the question is wrong: getOrCall
 * makes the call anyway (as the Python SDK's get_or_call does).
 */
const CACHE_DOWN = new Set<number>([Code.UNAVAILABLE, Code.RESOURCE_EXHAUSTED, Code.DEADLINE_EXCEEDED, Code.ABORTED]);

const DTYPES: Record<string, VectorDtype> = {
  "": VectorDtype.VECTOR_DTYPE_UNSPECIFIED,
  f32: VectorDtype.VECTOR_DTYPE_F32,
  f16: VectorDtype.VECTOR_DTYPE_F16,
  i8: VectorDtype.VECTOR_DTYPE_I8,
};

function namespaceView(ns: CacheNamespaceMessage, created = false): CacheNamespace {
  const dtype = ns.vectorDtype === VectorDtype.VECTOR_DTYPE_F16 ? "f16" : ns.vectorDtype === VectorDtype.VECTOR_DTYPE_I8 ? "i8" : "f32";
  return {
    name: ns.name,
    embedder: ns.embedder,
    dimension: ns.dimension,
    similarityThreshold: ns.similarityThreshold,
    defaultTtlMs: fromDuration(ns.defaultTtl),
    maxEntries: ns.maxEntries,
    maxBytes: ns.maxBytes,
    vectorDtype: dtype,
    description: ns.description,
    searchExpansion: ns.searchExpansion,
    recallTarget: ns.recallTarget,
    searchExpansionFixed: ns.searchExpansionFixed,
    createTime: ns.createTime,
    updateTime: ns.updateTime,
    created,
  };
}

/** An error's message for a log line; never throws (a thrown value may be anything). */
function errorText(error: unknown): string {
  try {
    return error instanceof Error ? error.message : String(error);
  } catch {
    return "(the error could not be read)";
  }
}

function usageMessage(usage: CacheUsage | undefined) {
  if (usage === undefined) return undefined;
  return {
    inputTokens: usage.inputTokens ?? 0,
    outputTokens: usage.outputTokens ?? 0,
    costMicroUsd: usage.costMicroUsd ?? 0,
    llmCalls: 0,
    toolCalls: 0,
  };
}

/** A getOrCall under way, shared by the callers waiting for it. */
interface Flight {
  result: Promise<CachedResult<unknown>>;
  /** Aborts the shared lookup and store once no caller waits any more. */
  controller: AbortController;
  waiters: number;
  done: boolean;
}

/**
 * The characters Python's `str.split()` splits on (`str.isspace`), which the sidecar's exact tier
 * collapses: not JavaScript's `\s`, which also takes U+FEFF and leaves out U+001C to U+001F.
 */
const PROMPT_WHITESPACE = /[\t\n\v\f\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+/;

/** The prompt as the sidecar's exact tier keys it: NFC, whitespace runs collapsed to one space, trimmed. */
function normalisePrompt(prompt: string): string {
  return prompt
    .normalize("NFC")
    .split(PROMPT_WHITESPACE)
    .filter((word) => word !== "")
    .join(" ");
}

/** What decides a getOrCall's answer: namespace, normalised prompt, vector, threshold. */
function flightKey(namespace: string, prompt: string, options: { vector?: readonly number[]; threshold?: number }): string {
  const vector = options.vector === undefined ? null : Array.from(options.vector, (x) => String(Number(x)));
  const threshold = options.threshold === undefined ? null : String(options.threshold);
  return JSON.stringify([namespace, normalisePrompt(prompt), vector, threshold]);
}

/** `promise`, or a rejection with the signal's reason once it aborts (the promise goes on). */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (signal === undefined) return promise;
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(error);
      },
    );
  });
}

/** `client.cache`: look up, store, get-or-call, invalidate, statistics, namespaces. */
export class Cache {
  /**
   * getOrCall calls under way, by what decides their answer (see {@link flightKey}): one entry per
   * distinct question being answered now, removed when its call ends or the moment its last
   * caller gives up on it.
   */
  private readonly flights = new Map<string, Flight>();

  /** @internal */
  constructor(
    private readonly raw: CacheServiceClient,
    private readonly rpc: Rpc,
    private readonly blobs: Blobs,
  ) {}

  /** The entry answering a prompt (exact tier, then semantic), or undefined on a miss. */
  async lookup(namespace: string, prompt: string, options: LookupOptions = {}): Promise<CacheHit | undefined> {
    const response = await this.lookupRaw(namespace, prompt, options);
    if (!response.hit) return undefined;
    let payload = response.response ?? { contentType: "" };
    if (payload.blob !== undefined) {
      const data = await this.blobs.get(payload.blob.sha256, { signal: options.signal });
      payload = { data, contentType: payload.contentType || payload.blob.contentType };
    }
    const usage = response.usage;
    return {
      entryId: response.entryId,
      tier: response.tier === CacheTier.CACHE_TIER_SEMANTIC ? "semantic" : "exact",
      similarity: response.similarity,
      value: decodePayload(payload),
      data: payload.data ?? Buffer.alloc(0),
      contentType: payload.contentType,
      matchedPrompt: response.matchedPrompt,
      metadata: response.metadata,
      usage: {
        inputTokens: usage?.inputTokens ?? 0,
        outputTokens: usage?.outputTokens ?? 0,
        costMicroUsd: usage?.costMicroUsd ?? 0,
      },
      createTime: response.createTime,
    };
  }

  /** Like {@link lookup}, returning the response message (with `bestSimilarity` on a miss). */
  lookupRaw(namespace: string, prompt: string, options: LookupOptions = {}): Promise<LookupCacheResponse> {
    const request = LookupCacheRequest.fromPartial({
      namespace,
      prompt,
      vector: options.vector ? { values: [...options.vector] } : undefined,
      threshold: options.threshold,
      maxAge: toDuration(options.maxAgeMs),
      exactOnly: options.exactOnly ?? false,
    });
    return this.rpc.unary(this.raw.lookupCache.bind(this.raw), request, options);
  }

  /** Stores a response under a prompt; an entry of the same normalised prompt is replaced. */
  async store(namespace: string, prompt: string, value: unknown, options: StoreOptions = {}): Promise<CacheStored> {
    return this.storePayload(namespace, prompt, encodePayload(value, options.contentType), options);
  }

  /** {@link store} of a response already encoded (getOrCall encodes it once, for the store and for its answer). */
  private async storePayload(namespace: string, prompt: string, encoded: Payload, options: StoreOptions): Promise<CacheStored> {
    let payload = encoded;
    const inline = payload.data;
    const large = inline !== undefined && inline.length > MAX_INLINE_BYTES;
    if (large) {
      const ref = await this.blobs.put(inline, { contentType: payload.contentType, signal: options.signal });
      payload = encodePayload(ref, payload.contentType);
    }
    const request = StoreCacheRequest.fromPartial({
      namespace,
      prompt,
      vector: options.vector ? { values: [...options.vector] } : undefined,
      response: payload,
      ttl: toDuration(options.ttlMs),
      metadata: { ...(options.metadata ?? {}) },
      usage: usageMessage(options.usage),
    });
    let response;
    try {
      response = await this.rpc.unary(this.raw.storeCache.bind(this.raw), request, options);
    } catch (error) {
      if (!(large && error instanceof AreError && error.reason === "BLOB_NOT_FOUND")) throw error;
      // Swept between the upload and the store (it was near its TTL): send the bytes again.
      const ref = await this.blobs.put(inline, { contentType: payload.contentType, signal: options.signal });
      request.response = encodePayload(ref, payload.contentType);
      response = await this.rpc.unary(this.raw.storeCache.bind(this.raw), request, options);
    }
    return { entryId: response.entryId, replaced: response.replaced, expireTime: response.expireTime };
  }

  /**
   * Looks the prompt up; on a miss awaits `call()` once and stores its result.
   * The call's own errors propagate and nothing is stored.
   *
   * Concurrent calls of one client that ask the same question share one
   * lookup and one `call()` (as in the Python SDK): the same namespace, the
   * same prompt (equal once normalised as the sidecar does: Unicode NFC,
   * whitespace runs collapsed, trimmed), the same `vector` and the same
   * `threshold`. The first caller's other arguments (`call`, `ttlMs`,
   * `metadata`, `usage`, `logger`, `timeoutMs`) are used, and every caller
   * gets its result (the same value: treat it as read-only), or its error
   * (then nothing is stored). A caller whose `signal` aborts rejects with its
   * reason and stops waiting; the shared lookup and store go on for the
   * others, and are aborted only when no other caller still waits (the
   * answer is then not stored; `call()` itself takes no signal and runs to
   * its end). A call arriving after that starts a call of its own.
   *
   * On a miss the value returned is the call's result as a later hit will
   * return it: encoded as it is stored (JSON by default, a Uint8Array raw)
   * and decoded back, so a Buffer comes back as a {@link RawPayload}, a Date
   * as its ISO string, `undefined` in an array as null, on the miss and on
   * the hit alike (as in the Python SDK). A result that cannot be encoded
   * (a BigInt, a cycle, NaN or Infinity, which JSON cannot hold) is returned
   * as it is, and not stored (logged).
   *
   * A cache outage does not stop the calls it stands in front of: a lookup
   * that fails because the cache is down or busy (UNAVAILABLE,
   * RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ABORTED) is logged and the call
   * is made, its answer not stored; other lookup errors (an unknown
   * namespace, a bad vector) reject. A store that fails after the call (an
   * answer over the namespace's `maxBytes` or not JSON-serialisable, a
   * sidecar busy or gone, a `usage` function that throws) is logged, not
   * thrown: the answer paid for is returned, with `stored` undefined. An
   * abort of `signal` rejects with its reason, as everywhere.
   */
  async getOrCall<T>(namespace: string, prompt: string, call: () => T | Promise<T>, options: GetOrCallOptions<T> = {}): Promise<CachedResult<T>> {
    const { signal } = options;
    if (signal?.aborted) throw signal.reason;
    const key = flightKey(namespace, prompt, options);
    let flight = this.flights.get(key);
    if (flight === undefined || flight.done) {
      // Never join a call that has ended (or been given up on).
      const controller = new AbortController();
      const started: Flight = { result: Promise.resolve(undefined as never), controller, waiters: 0, done: false };
      started.result = (async () => {
        try {
          return await this.lookUpOrCall(namespace, prompt, call as () => unknown, options as GetOrCallOptions<unknown>, controller.signal);
        } finally {
          started.done = true;
          if (this.flights.get(key) === started) this.flights.delete(key);
        }
      })();
      started.result.catch(() => undefined); // a flight every caller gave up on rejects unawaited
      this.flights.set(key, started);
      flight = started;
    }
    flight.waiters += 1;
    try {
      const result = await untilAborted(flight.result, signal);
      return { ...result } as CachedResult<T>;
    } finally {
      flight.waiters -= 1;
      if (flight.waiters === 0 && !flight.done) {
        // Every caller gave up on it: forget it now, so that a caller arriving meanwhile starts
        // its own call instead of joining one that will only reject with the abort.
        if (this.flights.get(key) === flight) this.flights.delete(key);
        flight.controller.abort(signal?.reason);
      }
    }
  }

  /** getOrCall's lookup, call and store, shared by its concurrent callers; `signal` is the flight's. */
  private async lookUpOrCall(
    namespace: string,
    prompt: string,
    call: () => unknown,
    options: GetOrCallOptions<unknown>,
    signal: AbortSignal,
  ): Promise<CachedResult<unknown>> {
    const { timeoutMs } = options;
    const logger = options.logger ?? console;
    let hit: CacheHit | undefined;
    try {
      hit = await this.lookup(namespace, prompt, { vector: options.vector, threshold: options.threshold, signal, timeoutMs });
    } catch (error) {
      if (signal.aborted || !(error instanceof AreError) || !CACHE_DOWN.has(error.code)) throw error;
      logger.warn(`cache: ${JSON.stringify(namespace)} could not be looked up, so the call is made: ${error.message}`);
      const value = await call();
      let returned: unknown = value;
      try {
        returned = decodePayload(encodePayload(value));
      } catch {
        // Not encodable: returned as it is (it would not have been stored either).
      }
      return { value: returned, fromCache: false, hit: undefined, stored: undefined };
    }
    if (hit !== undefined) return { value: hit.value, fromCache: true, hit, stored: undefined };
    const value = await call();
    let payload: Payload;
    try {
      payload = encodePayload(value); // once, for the store and for the value returned: what a hit will return
    } catch (error) {
      logger.warn(`cache: the answer to a prompt in ${JSON.stringify(namespace)} was not stored: ${errorText(error)}`);
      return { value, fromCache: false, hit: undefined, stored: undefined };
    }
    const returned = decodePayload(payload);
    let stored: CacheStored;
    try {
      const usage = typeof options.usage === "function" ? options.usage(value) : options.usage;
      stored = await this.storePayload(namespace, prompt, payload, {
        vector: options.vector,
        ttlMs: options.ttlMs,
        metadata: options.metadata,
        usage,
        signal,
        timeoutMs,
      });
    } catch (error) {
      if (signal.aborted) throw signal.reason;
      logger.warn(`cache: the answer to a prompt in ${JSON.stringify(namespace)} was not stored: ${errorText(error)}`);
      return { value: returned, fromCache: false, hit: undefined, stored: undefined };
    }
    return { value: returned, fromCache: false, hit: undefined, stored };
  }

  /** Removes entries by id, by metadata match, or all; returns how many were removed. */
  async invalidate(
    namespace: string,
    selector: { entryIds?: string[]; metadata?: Record<string, string>; all?: boolean },
    options: CallOptions = {},
  ): Promise<number> {
    const response = await this.rpc.unary(
      this.raw.invalidateCache.bind(this.raw),
      InvalidateCacheRequest.fromPartial({
        namespace,
        entryIds: selector.entryIds ?? [],
        metadataMatch: { ...(selector.metadata ?? {}) },
        all: selector.all ?? false,
      }),
      options,
    );
    return response.removedCount;
  }

  /** Counters of one namespace, or of every namespace when `namespace` is "". */
  async stats(namespace = "", options: CallOptions = {}): Promise<CacheStats[]> {
    const response = await this.rpc.unary(
      this.raw.getCacheStats.bind(this.raw),
      GetCacheStatsRequest.fromPartial({ namespace }),
      options,
    );
    return response.stats;
  }

  /** Creates a namespace or updates its mutable settings; returns it as stored. */
  async putNamespace(name: string, options: NamespaceOptions = {}): Promise<CacheNamespace> {
    const dtype = DTYPES[options.vectorDtype ?? ""];
    if (dtype === undefined) throw new RangeError(`vectorDtype must be f32, f16 or i8, got ${JSON.stringify(options.vectorDtype)}`);
    const response = await this.rpc.unary(
      this.raw.putNamespace.bind(this.raw),
      PutNamespaceRequest.fromPartial({
        namespace: {
          name,
          embedder: options.embedder ?? "",
          dimension: options.dimension ?? 0,
          similarityThreshold: options.similarityThreshold ?? 0,
          defaultTtl: toDuration(options.defaultTtlMs),
          maxEntries: options.maxEntries ?? 0,
          maxBytes: options.maxBytes ?? 0,
          vectorDtype: dtype,
          description: options.description ?? "",
          searchExpansion: options.searchExpansion ?? 0,
          recallTarget: options.recallTarget ?? 0,
        },
      }),
      options,
    );
    return namespaceView(response.namespace!, response.created);
  }

  /**
   * Deletes a namespace with its entries, counters and index; resolves to how
   * many entries it held. The entries go first, a chunk per commit: meanwhile
   * lookups still answer those not yet removed, while stores and settings
   * changes reject with `Code.ABORTED`, reason `NAMESPACE_DELETING`. Once it
   * resolves, the name is free (`putNamespace` creates it afresh) and no
   * longer counts toward the sidecar's 1,000 namespaces. Rejects with
   * `NOT_FOUND` (`NAMESPACE_NOT_FOUND`) for an unknown name, and with
   * `RESOURCE_EXHAUSTED` (`RESOURCE_LIMIT`) when the storage is busy: the
   * entries removed so far stay removed (metadata `removed_count`) and
   * calling again finishes the deletion.
   */
  async deleteNamespace(name: string, options: CallOptions = {}): Promise<number> {
    const response = await this.rpc.unary(
      this.raw.deleteNamespace.bind(this.raw),
      DeleteNamespaceRequest.fromPartial({ namespace: name }),
      options,
    );
    return response.removedCount;
  }

  /**
   * Changes only the settings given of an existing namespace; the others keep
   * their values. (`putNamespace` sets every mutable setting: those left out
   * return to their defaults.) A setting given as 0 (or "") still means its
   * default. Rejects with `NOT_FOUND` (`NAMESPACE_NOT_FOUND`) when there is no
   * such namespace.
   */
  async updateNamespace(name: string, settings: NamespaceUpdate, options: CallOptions = {}): Promise<CacheNamespace> {
    const paths: string[] = [];
    for (const [key, path] of UPDATABLE) if (settings[key] !== undefined) paths.push(path);
    const response = await this.rpc.unary(
      this.raw.putNamespace.bind(this.raw),
      PutNamespaceRequest.fromPartial({
        namespace: {
          name,
          similarityThreshold: settings.similarityThreshold ?? 0,
          defaultTtl: toDuration(settings.defaultTtlMs),
          maxEntries: settings.maxEntries ?? 0,
          maxBytes: settings.maxBytes ?? 0,
          description: settings.description ?? "",
          searchExpansion: settings.searchExpansion ?? 0,
          recallTarget: settings.recallTarget ?? 0,
        },
        updateMask: paths, // ts-proto unwraps a FieldMask into its paths
      }),
      options,
    );
    return namespaceView(response.namespace!, response.created);
  }

  /** Every namespace, by name (all pages). */
  async listNamespaces(options: CallOptions = {}): Promise<CacheNamespace[]> {
    const out: CacheNamespace[] = [];
    let pageToken = "";
    for (;;) {
      const response = await this.rpc.unary(
        this.raw.listNamespaces.bind(this.raw),
        ListNamespacesRequest.fromPartial({ pageSize: 1000, pageToken }),
        options,
      );
      out.push(...response.namespaces.map((ns) => namespaceView(ns)));
      pageToken = response.nextPageToken;
      if (!pageToken) return out;
    }
  }
}
