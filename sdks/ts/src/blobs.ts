/**
 * The blob store (`client.blobs`): content-addressed bytes passed by
 * reference, for payloads over the 4 MiB inline bound.
 *
 * @module
 */
import { createHash } from "node:crypto";

import { toAreError } from "./errors.js";
import { GetBlobRequest, PutBlobRequest, type PutBlobResponse, type StateServiceClient } from "./gen/are/v1/state_service.js";
import { BlobReference, OCTET_STREAM } from "./payload.js";
import { deadlineAfter, type CallOptions, type Rpc } from "./rpc.js";

/** The largest chunk one PutBlob message carries (the contract's bound). */
const CHUNK_BYTES = 1024 * 1024;
/** The largest blob the contract allows. */
export const MAX_BLOB_BYTES = 256 * 1024 * 1024;

/** Options of {@link Blobs.put}. */
export interface PutBlobOptions extends CallOptions {
  /** The media type recorded with the blob; default `application/octet-stream`. */
  contentType?: string;
  /** A workflow that owns the blob (it is kept at least as long as the workflow). */
  workflowId?: string;
}

export class Blobs {
  /** @internal */
  constructor(
    private readonly raw: StateServiceClient,
    private readonly rpc: Rpc,
  ) {}

  /** Reads a whole blob (by digest or reference); at most 256 MiB. */
  async get(blob: string | BlobReference, options: CallOptions = {}): Promise<Buffer> {
    const sha256 = typeof blob === "string" ? blob : blob.sha256;
    const chunks: Buffer[] = [];
    let size = 0;
    const stream = this.rpc.stream(this.raw.getBlob.bind(this.raw), GetBlobRequest.fromPartial({ sha256 }), {
      ...options,
      timeoutMs: options.timeoutMs ?? 120_000,
    });
    for await (const message of stream) {
      size += message.chunk.length;
      if (size > MAX_BLOB_BYTES) throw new RangeError(`blob ${sha256} is larger than ${MAX_BLOB_BYTES} bytes`);
      chunks.push(message.chunk);
    }
    return Buffer.concat(chunks, size);
  }

  /** Stores bytes (in 1 MiB chunks) and returns their reference; identical bytes are stored once. */
  async put(data: Uint8Array, options: PutBlobOptions = {}): Promise<BlobReference> {
    const { signal } = options;
    if (signal?.aborted) throw signal.reason;
    if (this.rpc.closed) throw this.rpc.closedError(); // as every other call: not grpc-js's plain Error
    if (data.byteLength > MAX_BLOB_BYTES) throw new RangeError(`a blob is at most ${MAX_BLOB_BYTES} bytes, got ${data.byteLength}`);
    const bytes = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    const sha256 = createHash("sha256").update(bytes).digest("hex");
    const contentType = options.contentType ?? OCTET_STREAM;
    const deadline = deadlineAfter(options.timeoutMs ?? 120_000); // none for Infinity, as every call's
    const response = await new Promise<PutBlobResponse>((resolve, reject) => {
      let settled = false;
      let untrack = (): void => undefined;
      const onAbort = (): void => {
        if (settled) return;
        settled = true;
        call.cancel();
        reject(signal?.reason);
      };
      const call = this.raw.putBlob(this.rpc.metadata(), deadline === undefined ? {} : { deadline }, (error, result) => {
        signal?.removeEventListener("abort", onAbort);
        untrack();
        if (settled) return;
        settled = true;
        if (error) reject(toAreError(error));
        else resolve(result);
      });
      untrack = this.rpc.track(call); // closing the client cancels it
      signal?.addEventListener("abort", onAbort, { once: true });
      call.write(
        PutBlobRequest.fromPartial({
          header: { contentType, sizeBytes: bytes.length, sha256, workflowId: options.workflowId ?? "" },
        }),
      );
      // grpc-js buffers what the transport has not taken yet; at most 256 MiB, bounded above.
      for (let offset = 0; offset < bytes.length; offset += CHUNK_BYTES) {
        call.write(PutBlobRequest.fromPartial({ chunk: bytes.subarray(offset, offset + CHUNK_BYTES) }));
      }
      call.end();
    });
    const blob = response.blob;
    return new BlobReference(blob?.sha256 ?? sha256, blob?.sizeBytes ?? bytes.length, blob?.contentType || contentType);
  }
}
