package dev.are.sdk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.ByteString;
import dev.are.sdk.v1.CompletionBatch;
import dev.are.sdk.v1.ConnectRequest;
import dev.are.sdk.v1.Failure;
import dev.are.sdk.v1.FailureBatch;
import dev.are.sdk.v1.HeartbeatBatch;
import dev.are.sdk.v1.Payload;
import dev.are.sdk.v1.TaskCompletion;
import dev.are.sdk.v1.TaskFailure;
import dev.are.sdk.v1.TaskHeartbeat;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.stream.IntStream;
import org.junit.jupiter.api.Test;

/**
 * How the worker stream cuts what is pending into messages (no sidecar): by count, and by the
 * encoded size of the items, so that many large results finishing together never make one message
 * over the sidecar's bound (64 MiB), which broke the stream and lost every attempt on it.
 */
class WorkerStreamBatchesTest {
  private static final int COMPLETIONS = CompletionBatch.COMPLETIONS_FIELD_NUMBER;
  private static final int DEFAULT_BUDGET =
      WorkerStream.batchBytes(Options.DEFAULT_MAX_MESSAGE_BYTES);

  private static Payload data(int bytes) {
    byte[] b = new byte[bytes];
    Arrays.fill(b, (byte) 'x');
    return Payload.newBuilder()
        .setData(ByteString.copyFrom(b))
        .setContentType(Json.CONTENT_TYPE)
        .build();
  }

  private static TaskCompletion completion(int i, int outputBytes) {
    return TaskCompletion.newBuilder()
        .setWorkflowId("wf")
        .setTaskId("t-" + i)
        .setAttempt(1)
        .setOutput(data(outputBytes))
        .build();
  }

  private static List<TaskCompletion> completions(int n, int outputBytes) {
    return IntStream.range(0, n).mapToObj(i -> completion(i, outputBytes)).toList();
  }

  private static List<String> ids(List<TaskCompletion> batch) {
    return batch.stream().map(TaskCompletion::getTaskId).toList();
  }

  private static List<Integer> sizes(List<? extends List<?>> batches) {
    return batches.stream().map(List::size).toList();
  }

  /** A batch's message as the writer sends it. */
  private static int messageBytes(List<TaskCompletion> batch) {
    return ConnectRequest.newBuilder()
        .setComplete(CompletionBatch.newBuilder().addAllCompletions(batch))
        .build()
        .getSerializedSize();
  }

  private static int batchBytes(List<TaskCompletion> batch) {
    return CompletionBatch.newBuilder().addAllCompletions(batch).build().getSerializedSize();
  }

  @Test
  void theBudgetIs16MiBOrUnderTheClientsBound() {
    assertEquals(16 * 1024 * 1024, DEFAULT_BUDGET);
    assertEquals(
        8 * 1024 * 1024 - WorkerStream.ENVELOPE_BYTES, WorkerStream.batchBytes(8 * 1024 * 1024));
    assertEquals(0, WorkerStream.batchBytes(100));
  }

  @Test
  void smallItemsAreCutByCount() {
    assertEquals(
        List.of(1000, 1000, 500),
        sizes(WorkerStream.batches(completions(2500, 10), COMPLETIONS, DEFAULT_BUDGET)));
  }

  /**
   * Twenty completions of the largest inline output: by count alone one message of about 80 MiB,
   * over the 64 MiB bound. Each batch is as full as the budget allows: the next item would have
   * taken it over.
   */
  @Test
  void largeItemsAreCutBySizeInOrder() {
    List<TaskCompletion> items = completions(20, Client.MAX_INLINE_BYTES);
    List<List<TaskCompletion>> cut = WorkerStream.batches(items, COMPLETIONS, DEFAULT_BUDGET);
    assertEquals(List.of(3, 3, 3, 3, 3, 3, 2), sizes(cut));
    assertEquals(ids(items), cut.stream().flatMap(b -> ids(b).stream()).toList());
    int next = 0;
    for (List<TaskCompletion> batch : cut) {
      next += batch.size();
      assertTrue(batchBytes(batch) <= DEFAULT_BUDGET, batchBytes(batch) + " bytes");
      assertTrue(messageBytes(batch) <= DEFAULT_BUDGET + 6, messageBytes(batch) + " bytes");
      if (next < items.size()) {
        List<TaskCompletion> more = new ArrayList<>(batch);
        more.add(items.get(next));
        assertTrue(batchBytes(more) > DEFAULT_BUDGET, "cut before it was full");
      }
    }
  }

  /**
   * Each item is counted at its exact encoded length in the batch (tag, length, message): a budget
   * of exactly the bytes of the first k items takes k of them, a byte less k - 1.
   */
  @Test
  void itemsAreCountedAtTheirEncodedLength() {
    List<TaskCompletion> items = new ArrayList<>();
    for (int i = 0; i < 10; i++) {
      // Lengths on both sides of a varint's width (127 / 128, 16383 / 16384 bytes).
      items.add(completion(i, new int[] {90, 100, 16300, 16400, 5, 0, 127, 128, 300, 70000}[i]));
    }
    for (int k = 1; k <= items.size(); k++) {
      int exact = batchBytes(items.subList(0, k));
      assertEquals(k, WorkerStream.batches(items, COMPLETIONS, exact).get(0).size(), "k=" + k);
      if (k > 1) {
        assertEquals(
            k - 1, WorkerStream.batches(items, COMPLETIONS, exact - 1).get(0).size(), "k=" + k);
      }
    }
  }

  /** An item over the budget by itself still goes (alone), and does not hold up those after it. */
  @Test
  void anItemOverTheBudgetGoesAlone() {
    List<TaskCompletion> items =
        List.of(completion(0, 10), completion(1, 2000), completion(2, 10), completion(3, 10));
    List<List<TaskCompletion>> cut = WorkerStream.batches(items, COMPLETIONS, 1000);
    assertEquals(
        List.of(List.of("t-0"), List.of("t-1"), List.of("t-2", "t-3")),
        cut.stream().map(WorkerStreamBatchesTest::ids).toList());
    assertEquals(List.of(), WorkerStream.batches(List.<TaskCompletion>of(), COMPLETIONS, 1000));
    // A client bound of under a kilobyte: one item a message.
    assertEquals(
        3,
        WorkerStream.batches(completions(3, 10), COMPLETIONS, WorkerStream.batchBytes(512))
            .size());
  }

  /** Failures and heartbeats (1 MiB of details each at most) are cut the same way. */
  @Test
  void failuresAndHeartbeatsAreCutBySize() {
    Payload details = data(1024 * 1024);
    List<TaskFailure> failures =
        IntStream.range(0, 40)
            .mapToObj(
                i ->
                    TaskFailure.newBuilder()
                        .setTaskId("t-" + i)
                        .setFailure(Failure.newBuilder().setDetails(details))
                        .build())
            .toList();
    List<List<TaskFailure>> cut =
        WorkerStream.batches(failures, FailureBatch.FAILURES_FIELD_NUMBER, DEFAULT_BUDGET);
    assertEquals(40, cut.stream().mapToInt(List::size).sum());
    for (List<TaskFailure> batch : cut) {
      int bytes =
          ConnectRequest.newBuilder()
              .setFail(FailureBatch.newBuilder().addAllFailures(batch))
              .build()
              .getSerializedSize();
      assertTrue(bytes <= DEFAULT_BUDGET + 6, bytes + " bytes");
    }
    List<TaskHeartbeat> beats =
        IntStream.range(0, 40)
            .mapToObj(
                i -> TaskHeartbeat.newBuilder().setTaskId("t-" + i).setDetails(details).build())
            .toList();
    assertEquals(
        List.of(15, 15, 10),
        sizes(
            WorkerStream.batches(beats, HeartbeatBatch.HEARTBEATS_FIELD_NUMBER, DEFAULT_BUDGET)));
  }
}
