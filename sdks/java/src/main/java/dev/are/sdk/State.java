package dev.are.sdk;

import com.fasterxml.jackson.databind.JsonNode;
import com.google.protobuf.ByteString;
import dev.are.sdk.v1.AddMemoryRequest;
import dev.are.sdk.v1.ForkWorkflowRequest;
import dev.are.sdk.v1.ForkWorkflowResponse;
import dev.are.sdk.v1.GetStateRequest;
import dev.are.sdk.v1.GetStateResponse;
import dev.are.sdk.v1.HydrateMemoryRequest;
import dev.are.sdk.v1.HydrateMemoryResponse;
import dev.are.sdk.v1.ListCheckpointsRequest;
import dev.are.sdk.v1.ListCheckpointsResponse;
import dev.are.sdk.v1.MemoryEntry;
import dev.are.sdk.v1.MemoryHit;
import dev.are.sdk.v1.PatchOperation;
import dev.are.sdk.v1.PatchOperationList;
import dev.are.sdk.v1.PatchOperationType;
import dev.are.sdk.v1.PatchStateRequest;
import dev.are.sdk.v1.Payload;
import dev.are.sdk.v1.StatePatch;
import dev.are.sdk.v1.StateValue;
import dev.are.sdk.v1.Vector;
import io.grpc.Status;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;

/**
 * What workflows know (StateService): {@code client.state()}. One versioned JSON document per
 * workflow, read by JSON Pointer (RFC 6901) and patched with optimistic concurrency; every patch
 * makes a durable version that can be read again, listed and forked from. Beside it each workflow
 * has a memory of notes, hydrated best first within a byte budget.
 *
 * <pre>{@code
 * State.Bound state = client.state().forWorkflow(workflowId);
 * long v = state.patch(State.Patch.merge(Map.of("plan", Map.of("steps", List.of("search")))));
 * State.Snapshot snap = state.get(List.of("/plan/steps", "/budget"), v);
 * state.patch(State.Patch.ops().set("/plan/steps/-", "book"), PatchOptions.expecting(v));
 * state.memory().add(State.Note.text("the user prefers aisle seats"));
 * List<String> notes =
 *     state.memory().hydrate("seat preference", HydrateOptions.defaults().withTopK(5)).texts();
 * }</pre>
 *
 * <p>Inside a worker handler, {@code client.state().forTask(task)} binds the task's workflow and
 * records the attempt as the writer of each patch. Every call is bounded by the client's call
 * timeout; every failure is an {@link AreException} (a stale {@code expectedVersion} is ABORTED,
 * reason {@code STATE_VERSION_MISMATCH}).
 */
public final class State {
  private final Client client;
  private final Memory memory;

  State(Client client) {
    this.client = client;
    this.memory = new Memory(client);
  }

  /**
   * Values read from one version of a state document: the version, when it was written, the values
   * by the path asked for (in request order; "" is the whole document) and the paths that did not
   * resolve.
   */
  public record Snapshot(
      long version, Instant updateTime, Map<String, JsonNode> values, List<String> missingPaths) {
    /** The value at {@code path}, if it resolved. */
    public Optional<JsonNode> find(String path) {
      return Optional.ofNullable(values.get(path));
    }

    /** The value at {@code path}; a path that did not resolve is NOT_FOUND / PATH_NOT_FOUND. */
    public JsonNode get(String path) {
      JsonNode node = values.get(path);
      if (node == null) {
        throw AreException.local(
            Status.Code.NOT_FOUND,
            "PATH_NOT_FOUND",
            "`" + path + "` did not resolve at state version " + version);
      }
      return node;
    }

    /** The value at {@code path} converted to {@code type}. */
    public <T> T get(String path, Class<T> type) {
      return Json.convert(get(path), type);
    }
  }

  /**
   * One state patch: a JSON Merge Patch (RFC 7386: members replace or add, null members remove) or
   * an ordered list of JSON-pointer operations, applied all or nothing. Immutable.
   */
  public static final class Patch {
    private final byte[] merge;
    private final List<PatchOperation> operations;

    private Patch(byte[] merge, List<PatchOperation> operations) {
      this.merge = merge;
      this.operations = operations;
    }

    /** A merge patch: {@code value} (a map, a record, a JsonNode) is written as a JSON object. */
    public static Patch merge(Object value) {
      return new Patch(Json.encode(value), List.of());
    }

    /** An empty list of pointer operations, to extend with {@link #set} and {@link #remove}. */
    public static Patch ops() {
      return new Patch(null, List.of());
    }

    /**
     * This list plus one set: the value (written as JSON) at {@code path}, creating or replacing
     * the member; on an array "/-" appends. The parent must exist.
     */
    public Patch set(String path, Object value) {
      return add(
          PatchOperation.newBuilder()
              .setOp(PatchOperationType.PATCH_OPERATION_TYPE_SET)
              .setPath(path)
              .setValueJson(ByteString.copyFrom(Json.encode(value)))
              .build());
    }

    /** This list plus one remove (a missing member is a no-op). */
    public Patch remove(String path) {
      return add(
          PatchOperation.newBuilder()
              .setOp(PatchOperationType.PATCH_OPERATION_TYPE_REMOVE)
              .setPath(path)
              .build());
    }

    private Patch add(PatchOperation op) {
      if (merge != null) {
        throw AreException.local(
            Status.Code.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            "a patch is either a merge patch or pointer operations, not both");
      }
      List<PatchOperation> ops = new ArrayList<>(operations);
      ops.add(op);
      return new Patch(null, Collections.unmodifiableList(ops));
    }

    /** The patch as sent. */
    public StatePatch toProto() {
      if (merge != null) {
        return StatePatch.newBuilder().setMergePatchJson(ByteString.copyFrom(merge)).build();
      }
      return StatePatch.newBuilder()
          .setOperations(PatchOperationList.newBuilder().addAllOperations(operations))
          .build();
    }
  }

  /**
   * Options of a patch: the version it expects to replace (null: any), and who writes: a task
   * attempt (the worker must hold it, else FAILED_PRECONDITION / TASK_NOT_HELD) or a free-form
   * writer. Immutable.
   */
  public record PatchOptions(Long expectedVersion, String taskId, int attempt, String writer) {
    /** Any version, no task, no writer. */
    public static PatchOptions defaults() {
      return new PatchOptions(null, "", 0, "");
    }

    /** Applies only if {@code version} is the latest (optimistic concurrency). */
    public static PatchOptions expecting(long version) {
      return defaults().withExpectedVersion(version);
    }

    /** Applies only if {@code version} is the latest; null: any. */
    public PatchOptions withExpectedVersion(Long version) {
      return new PatchOptions(version, taskId, attempt, writer);
    }

    /** Attributes the patch to a task attempt the caller's worker holds. */
    public PatchOptions withTask(String id, int n) {
      return new PatchOptions(expectedVersion, id, n, writer);
    }

    /** Who writes, when not a task (at most 256 characters), for the record. */
    public PatchOptions withWriter(String w) {
      return new PatchOptions(expectedVersion, taskId, attempt, w);
    }
  }

  /** One retained version of a state document: when, by whom, how large. */
  public record Checkpoint(
      long version,
      Instant createTime,
      String taskId,
      int attempt,
      String writer,
      long sizeBytes,
      long eventSequence) {}

  /**
   * One page of checkpoints, newest first, with the token of the next page (empty on the last),
   * the oldest retained and the latest version.
   */
  public record CheckpointPage(
      List<Checkpoint> checkpoints, String nextPageToken, long oldestVersion, long latestVersion) {}

  /** The workflow a fork created and the state version it started from. */
  public record Fork(String workflowId, long sourceVersion) {}

  /** Workflow memory (AddMemory, HydrateMemory). */
  public Memory memory() {
    return memory;
  }

  /** A view of one workflow's state and memory; makes no call. */
  public Bound forWorkflow(String workflowId) {
    return new Bound(this, workflowId, PatchOptions.defaults());
  }

  /**
   * A view for a worker handler: its task's workflow, each patch attributed to the running attempt
   * (which the worker holds); makes no call.
   */
  public Bound forTask(TaskContext task) {
    return new Bound(
        this, task.workflowId(), PatchOptions.defaults().withTask(task.taskId(), task.attempt()));
  }

  /** The latest version of the whole document (path ""), or of the given JSON pointers. */
  public Snapshot get(String workflowId, String... paths) {
    return get(workflowId, Arrays.asList(paths), null);
  }

  /**
   * Reads JSON pointers (empty: the whole document, path "") at {@code version} (null: the
   * latest). Unresolved paths are listed in {@link Snapshot#missingPaths()}, not errors.
   */
  public Snapshot get(String workflowId, List<String> paths, Long version) {
    GetStateRequest.Builder req =
        GetStateRequest.newBuilder().setWorkflowId(workflowId).addAllPaths(paths);
    if (version != null) {
      req.setVersion(version);
    }
    GetStateResponse resp =
        client.call("GetState", () -> client.deadline(client.raw().state()).getState(req.build()));
    Map<String, JsonNode> values = new LinkedHashMap<>();
    for (StateValue v : resp.getValuesList()) {
      values.put(v.getPath(), Json.decode(v.getValueJson().toByteArray()));
    }
    return new Snapshot(
        resp.getVersion(),
        Durations.fromProto(resp.getUpdateTime()),
        Collections.unmodifiableMap(values),
        List.copyOf(resp.getMissingPathsList()));
  }

  /** Applies a patch to any version; returns the version it made. */
  public long patch(String workflowId, Patch patch) {
    return patch(workflowId, patch, PatchOptions.defaults());
  }

  /**
   * Applies a patch; returns the version it made. A stale expected version is ABORTED, reason
   * {@code STATE_VERSION_MISMATCH}, and changes nothing.
   */
  public long patch(String workflowId, Patch patch, PatchOptions options) {
    PatchStateRequest.Builder req =
        PatchStateRequest.newBuilder()
            .setWorkflowId(workflowId)
            .setPatch(patch.toProto())
            .setTaskId(options.taskId() == null ? "" : options.taskId())
            .setAttempt(options.attempt())
            .setWriter(options.writer() == null ? "" : options.writer());
    if (options.expectedVersion() != null) {
      req.setExpectedVersion(options.expectedVersion());
    }
    return client
        .call("PatchState", () -> client.deadline(client.raw().state()).patchState(req.build()))
        .getVersion();
  }

  /** One page of retained versions, newest first ({@code pageSize} 0: 100; token "": the first). */
  public CheckpointPage listCheckpoints(String workflowId, int pageSize, String pageToken) {
    ListCheckpointsRequest req =
        ListCheckpointsRequest.newBuilder()
            .setWorkflowId(workflowId)
            .setPageSize(pageSize)
            .setPageToken(pageToken == null ? "" : pageToken)
            .build();
    ListCheckpointsResponse resp =
        client.call(
            "ListCheckpoints", () -> client.deadline(client.raw().state()).listCheckpoints(req));
    List<Checkpoint> list = new ArrayList<>(resp.getCheckpointsCount());
    for (dev.are.sdk.v1.Checkpoint c : resp.getCheckpointsList()) {
      list.add(
          new Checkpoint(
              c.getVersion(),
              Durations.fromProto(c.getCreateTime()),
              c.getTaskId(),
              c.getAttempt(),
              c.getWriter(),
              c.getSizeBytes(),
              c.getEventSequence()));
    }
    return new CheckpointPage(
        List.copyOf(list),
        resp.getNextPageToken(),
        resp.getOldestVersion(),
        resp.getLatestVersion());
  }

  /** At most {@code limit} retained versions, newest first, fetching pages as needed. */
  public List<Checkpoint> checkpoints(String workflowId, int limit) {
    if (limit < 1) {
      throw AreException.local(
          Status.Code.INVALID_ARGUMENT, "INVALID_ARGUMENT", "limit must be at least 1");
    }
    List<Checkpoint> out = new ArrayList<>();
    String token = "";
    do {
      CheckpointPage page =
          listCheckpoints(workflowId, Math.min(limit - out.size(), 1000), token);
      for (Checkpoint c : page.checkpoints()) {
        if (out.size() < limit) {
          out.add(c);
        }
      }
      token = page.nextPageToken();
    } while (!token.isEmpty() && out.size() < limit);
    return List.copyOf(out);
  }

  /** Forks a workflow from a state version (0: the latest) into a new running workflow. */
  public Fork fork(String workflowId, long version) {
    return fork(
        ForkWorkflowRequest.newBuilder().setWorkflowId(workflowId).setVersion(version).build());
  }

  /** Forks with every field of the request (new id, tasks to rerun, labels, request id). */
  public Fork fork(ForkWorkflowRequest request) {
    ForkWorkflowResponse resp =
        client.call(
            "ForkWorkflow", () -> client.deadline(client.raw().state()).forkWorkflow(request));
    return new Fork(resp.getWorkflowId(), resp.getSourceVersion());
  }

  /**
   * A note to add to a workflow's memory: text and/or a vector (without one the sidecar embeds
   * the text), metadata for filtering, and an optional payload returned with it. Immutable.
   */
  public record Note(
      String text, List<Float> vector, Map<String, String> metadata, Payload content) {
    /** A text note, embedded by the sidecar. */
    public static Note text(String text) {
      return new Note(text, null, Map.of(), null);
    }

    /** A note with the vector the caller computed. */
    public Note withVector(List<Float> v) {
      return new Note(text, v, metadata, content);
    }

    /** Metadata for filtering ({@code "kind": "decision"}). */
    public Note withMetadata(Map<String, String> m) {
      return new Note(text, vector, Map.copyOf(m), content);
    }

    /** A payload stored and returned with the note (at most 64 KiB inline, or a blob). */
    public Note withContent(Payload p) {
      return new Note(text, vector, metadata, p);
    }
  }

  /**
   * Options of a hydration: how many notes (0: 10, at most 100), metadata they must all have, the
   * budget of text plus inline content bytes (0: 64 KiB), the least cosine similarity (null: no
   * floor), and whether to return vectors. Immutable.
   */
  public record HydrateOptions(
      int topK,
      Map<String, String> metadata,
      long maxBytes,
      Double minSimilarity,
      boolean includeVectors) {
    /** The sidecar's defaults: 10 notes, 64 KiB, no filter, no floor, no vectors. */
    public static HydrateOptions defaults() {
      return new HydrateOptions(0, Map.of(), 0, null, false);
    }

    /** At most this many notes (1 to 100). */
    public HydrateOptions withTopK(int k) {
      return new HydrateOptions(k, metadata, maxBytes, minSimilarity, includeVectors);
    }

    /** Only notes having every one of these metadata entries (at most 8). */
    public HydrateOptions withMetadata(Map<String, String> m) {
      return new HydrateOptions(topK, Map.copyOf(m), maxBytes, minSimilarity, includeVectors);
    }

    /** The most bytes of text and inline content returned (at most 4 MiB). */
    public HydrateOptions withMaxBytes(long b) {
      return new HydrateOptions(topK, metadata, b, minSimilarity, includeVectors);
    }

    /** Only notes at least this similar to the query, in [-1, 1]. */
    public HydrateOptions withMinSimilarity(double s) {
      return new HydrateOptions(topK, metadata, maxBytes, s, includeVectors);
    }

    /** Returns the notes' vectors too. */
    public HydrateOptions withIncludeVectors(boolean v) {
      return new HydrateOptions(topK, metadata, maxBytes, minSimilarity, v);
    }
  }

  /**
   * A note returned by a hydration: its id, text, cosine similarity to the query, metadata, when it
   * was added, its payload (or null; read with {@link Client#payloadBytes}) and its vector (null
   * unless asked for).
   */
  public record Hit(
      String memoryId,
      String text,
      double similarity,
      Map<String, String> metadata,
      Instant createTime,
      Payload content,
      List<Float> vector) {}

  /**
   * The notes chosen, best first, the bytes of text and content they carry, and whether the byte
   * budget left relevant notes out.
   */
  public record Hydration(List<Hit> hits, long totalBytes, boolean truncated) {
    /** The notes' texts, best first (ready for a prompt). */
    public List<String> texts() {
      return hits.stream().map(Hit::text).toList();
    }
  }

  /** Workflow memory (AddMemory, HydrateMemory): {@code client.state().memory()}. */
  public static final class Memory {
    private final Client client;

    Memory(Client client) {
      this.client = client;
    }

    /** Stores notes (1 to 1,000); returns their ids in order. */
    public List<String> add(String workflowId, List<Note> notes) {
      AddMemoryRequest.Builder req = AddMemoryRequest.newBuilder().setWorkflowId(workflowId);
      for (Note n : notes) {
        MemoryEntry.Builder e =
            MemoryEntry.newBuilder()
                .setText(n.text() == null ? "" : n.text())
                .putAllMetadata(n.metadata() == null ? Map.of() : n.metadata());
        if (n.vector() != null) {
          e.setVector(Vector.newBuilder().addAllValues(n.vector()));
        }
        if (n.content() != null) {
          e.setContent(n.content());
        }
        req.addEntries(e);
      }
      return List.copyOf(
          client
              .call("AddMemory", () -> client.deadline(client.raw().state()).addMemory(req.build()))
              .getMemoryIdsList());
    }

    /** Stores text notes; returns their ids in order. */
    public List<String> addTexts(String workflowId, String... texts) {
      return add(workflowId, Arrays.stream(texts).map(Note::text).toList());
    }

    /** The notes most relevant to {@code text} (embedded by the sidecar), best first. */
    public Hydration hydrate(String workflowId, String text, HydrateOptions options) {
      return hydrate(HydrateMemoryRequest.newBuilder().setText(text), workflowId, options);
    }

    /** The notes most relevant to a query vector of the memory's dimension, best first. */
    public Hydration hydrate(String workflowId, List<Float> vector, HydrateOptions options) {
      return hydrate(
          HydrateMemoryRequest.newBuilder().setVector(Vector.newBuilder().addAllValues(vector)),
          workflowId,
          options);
    }

    private Hydration hydrate(
        HydrateMemoryRequest.Builder req, String workflowId, HydrateOptions options) {
      req.setWorkflowId(workflowId)
          .setTopK(options.topK())
          .putAllMetadataMatch(options.metadata() == null ? Map.of() : options.metadata())
          .setMaxBytes(options.maxBytes())
          .setIncludeVectors(options.includeVectors());
      if (options.minSimilarity() != null) {
        req.setMinSimilarity(options.minSimilarity());
      }
      HydrateMemoryResponse resp =
          client.call(
              "HydrateMemory",
              () -> client.deadline(client.raw().state()).hydrateMemory(req.build()));
      List<Hit> hits = new ArrayList<>(resp.getHitsCount());
      for (MemoryHit h : resp.getHitsList()) {
        MemoryEntry e = h.getEntry();
        hits.add(
            new Hit(
                e.getMemoryId(),
                e.getText(),
                h.getSimilarity(),
                Map.copyOf(e.getMetadataMap()),
                Durations.fromProto(e.getCreateTime()),
                e.hasContent() ? e.getContent() : null,
                e.hasVector() ? List.copyOf(e.getVector().getValuesList()) : null));
      }
      return new Hydration(List.copyOf(hits), resp.getTotalBytes(), resp.getTruncated());
    }
  }

  /** One workflow's memory, from {@link Bound#memory()}. */
  public static final class BoundMemory {
    private final Memory memory;
    private final String workflowId;

    BoundMemory(Memory memory, String workflowId) {
      this.memory = memory;
      this.workflowId = workflowId;
    }

    /** Stores notes; returns their ids in order. */
    public List<String> add(Note... notes) {
      return memory.add(workflowId, Arrays.asList(notes));
    }

    /** Stores text notes; returns their ids in order. */
    public List<String> addTexts(String... texts) {
      return memory.addTexts(workflowId, texts);
    }

    /** The notes most relevant to {@code text}, best first. */
    public Hydration hydrate(String text, HydrateOptions options) {
      return memory.hydrate(workflowId, text, options);
    }

    /** The notes most relevant to a query vector, best first. */
    public Hydration hydrate(List<Float> vector, HydrateOptions options) {
      return memory.hydrate(workflowId, vector, options);
    }
  }

  /**
   * One workflow's state and memory, from {@link #forWorkflow} or {@link #forTask} (then each
   * patch is attributed to the task attempt). Makes no call until used; safe to share.
   */
  public static final class Bound {
    private final State state;
    private final String workflowId;
    private final PatchOptions writer;
    private final BoundMemory memory;

    Bound(State state, String workflowId, PatchOptions writer) {
      this.state = state;
      this.workflowId = workflowId;
      this.writer = writer;
      this.memory = new BoundMemory(state.memory, workflowId);
    }

    /** The workflow. */
    public String workflowId() {
      return workflowId;
    }

    /** The task patches are attributed to ("" when none). */
    public String taskId() {
      return writer.taskId();
    }

    /** The attempt patches are attributed to (0 when none). */
    public int attempt() {
      return writer.attempt();
    }

    /** The workflow's memory. */
    public BoundMemory memory() {
      return memory;
    }

    /** The latest version of the whole document (path ""), or of the given JSON pointers. */
    public Snapshot get(String... paths) {
      return state.get(workflowId, Arrays.asList(paths), null);
    }

    /** JSON pointers (empty: the whole document) at a version (null: the latest). */
    public Snapshot get(List<String> paths, Long version) {
      return state.get(workflowId, paths, version);
    }

    /** Applies a patch to any version; returns the version it made. */
    public long patch(Patch patch) {
      return patch(patch, PatchOptions.defaults());
    }

    /**
     * Applies a patch; returns the version it made. The view's task attempt (for {@link
     * #forTask}) replaces any task given in {@code options}.
     */
    public long patch(Patch patch, PatchOptions options) {
      PatchOptions o =
          writer.taskId().isEmpty() ? options : options.withTask(writer.taskId(), writer.attempt());
      return state.patch(workflowId, patch, o);
    }

    /** At most {@code limit} retained versions, newest first. */
    public List<Checkpoint> checkpoints(int limit) {
      return state.checkpoints(workflowId, limit);
    }

    /** Forks this workflow from a state version (0: the latest). */
    public Fork fork(long version) {
      return state.fork(workflowId, version);
    }
  }
}
