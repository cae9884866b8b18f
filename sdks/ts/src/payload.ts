/**
 * Payloads: JavaScript values to `are.v1.Payload` and back, JSON by default.
 *
 * The sidecar forwards payloads without reading them, except where a feature
 * needs JSON (conditions, state pointers). So, as in the Python SDK, any value
 * is encoded as compact JSON unless it is a `Uint8Array` (a `Buffer` is one),
 * sent as `application/octet-stream`, or a {@link RawPayload} with a content
 * type of your choice. JSON content types decode back to values; anything
 * else decodes to a {@link RawPayload}; a blob reference to a
 * {@link BlobReference}.
 *
 * @module
 */
import type { BlobRef, Payload } from "./gen/are/v1/common.js";

export const JSON_CONTENT_TYPE = "application/json";
export const OCTET_STREAM = "application/octet-stream";

/** Bytes with a content type, sent and received as they are. */
export class RawPayload {
  readonly data: Uint8Array;
  readonly contentType: string;

  constructor(data: Uint8Array | string, contentType: string = OCTET_STREAM) {
    this.data = typeof data === "string" ? Buffer.from(data, "utf8") : data;
    this.contentType = contentType;
  }

  /** The data decoded as UTF-8 text. */
  text(): string {
    return Buffer.from(this.data.buffer, this.data.byteOffset, this.data.byteLength).toString("utf8");
  }
}

/** A payload kept in the sidecar's blob store, passed by reference. */
export class BlobReference {
  constructor(
    readonly sha256: string,
    readonly sizeBytes: number,
    readonly contentType: string = OCTET_STREAM,
  ) {}
}

/** True for "" (the contract's default), `application/json` and `*+json` types. */
export function isJsonContentType(contentType: string): boolean {
  const base = (contentType.split(";", 1)[0] ?? "").trim().toLowerCase();
  return base === "" || base === JSON_CONTENT_TYPE || base.endsWith("+json");
}

function asBuffer(data: Uint8Array): Buffer {
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

/**
 * Encodes a value as an `are.v1.Payload`.
 *
 * @param value A JSON-serialisable value; a `Uint8Array`/`Buffer` (sent raw);
 *   a {@link RawPayload}; or a {@link BlobReference} (sent by reference).
 * @param contentType Overrides the content type; with a non-JSON type a
 *   string is sent as UTF-8 text rather than as a JSON string.
 * @throws TypeError The value cannot be serialised as JSON, or holds a
 *   number JSON has no form for (NaN, Infinity), which would be sent as null.
 */
export function encodePayload(value: unknown, contentType?: string): Payload {
  if (value instanceof BlobReference) {
    const type = contentType ?? value.contentType;
    const blob: BlobRef = { sha256: value.sha256, sizeBytes: value.sizeBytes, contentType: type };
    return { blob, contentType: type };
  }
  if (value instanceof RawPayload) {
    return { data: asBuffer(value.data), contentType: contentType ?? value.contentType };
  }
  if (value instanceof Uint8Array) {
    return { data: asBuffer(value), contentType: contentType ?? OCTET_STREAM };
  }
  if (contentType !== undefined && !isJsonContentType(contentType) && typeof value === "string") {
    return { data: Buffer.from(value, "utf8"), contentType };
  }
  let text: string | undefined;
  try {
    text = JSON.stringify(value);
    // NaN and ±Infinity are written as null: what a reader gets back would not be what was sent.
    // Only a text with a null can hold one, so only such a text is looked at again.
    if (text?.includes("null")) refuseNonFinite(value);
  } catch (error) {
    throw new TypeError(
      `payload is not JSON-serialisable (${(error as Error).message}); pass a Uint8Array or RawPayload for other content`,
    );
  }
  if (text === undefined) {
    throw new TypeError(`payload is not JSON-serialisable (${typeof value}); pass a Uint8Array or RawPayload for other content`);
  }
  return { data: Buffer.from(text, "utf8"), contentType: contentType ?? JSON_CONTENT_TYPE };
}

/**
 * Throws on a number JSON has no form for (NaN, Infinity, -Infinity), naming where it is
 * (`a[1].n`), as the Python SDK refuses them (`allow_nan=False`). It walks the value as
 * JSON.stringify does (toJSON, Number objects, own enumerable keys), after JSON.stringify took
 * it, so there is no cycle to meet: a walk, as a second JSON.stringify with a replacer took
 * several times as long.
 */
export function refuseNonFinite(value: unknown): void {
  const trail: Array<string | number> = [];
  const visit = (key: string, item: unknown): void => {
    if ((typeof item === "object" && item !== null) || typeof item === "bigint") {
      const toJSON: unknown = (item as { toJSON?: unknown }).toJSON;
      if (typeof toJSON === "function") item = (toJSON as (key: string) => unknown).call(item, key);
    }
    if (item instanceof Number) item = item.valueOf();
    if (typeof item === "number") {
      if (Number.isFinite(item)) return;
      const where = trail.map((step, at) => (typeof step === "number" ? `[${step}]` : at === 0 ? step : `.${step}`)).join("");
      throw new TypeError(`${item}${where === "" ? "" : ` at \`${where}\``} is not a finite number, which JSON cannot hold`);
    }
    if (typeof item !== "object" || item === null) return;
    if (Array.isArray(item)) {
      for (let index = 0; index < item.length; index++) {
        trail.push(index);
        visit(String(index), item[index]);
        trail.pop();
      }
      return;
    }
    for (const name of Object.keys(item)) {
      trail.push(name);
      visit(name, (item as Record<string, unknown>)[name]);
      trail.pop();
    }
  };
  visit("", value);
}

/**
 * Decodes an `are.v1.Payload`: JSON to a value, other types to a
 * {@link RawPayload}, a blob reference to a {@link BlobReference}.
 *
 * An unset or empty JSON payload decodes to `undefined`. JSON that does not
 * parse is returned as a {@link RawPayload} rather than thrown, since
 * payloads are the sender's.
 */
export function decodePayload(payload: Payload | undefined): unknown {
  if (payload === undefined) return undefined;
  if (payload.blob !== undefined) {
    const blob = payload.blob;
    return new BlobReference(blob.sha256, blob.sizeBytes, blob.contentType || OCTET_STREAM);
  }
  const data = payload.data;
  if (data === undefined) return undefined;
  if (isJsonContentType(payload.contentType)) {
    if (data.length === 0) return undefined;
    try {
      return JSON.parse(data.toString("utf8")) as unknown;
    } catch {
      return new RawPayload(data, payload.contentType || JSON_CONTENT_TYPE);
    }
  }
  return new RawPayload(data, payload.contentType);
}
