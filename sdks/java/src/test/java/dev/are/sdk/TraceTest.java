package dev.are.sdk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.are.sdk.testing.Sidecar;
import dev.are.sdk.v1.AttributeValue;
import dev.are.sdk.v1.Event;
import dev.are.sdk.v1.EventFilter;
import dev.are.sdk.v1.EventType;
import dev.are.sdk.v1.EventsMissed;
import dev.are.sdk.v1.MissedReason;
import dev.are.sdk.v1.ReportEventsRequest;
import dev.are.sdk.v1.ReportedEvent;
import dev.are.sdk.v1.StreamEventsResponse;
import io.grpc.Status;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * The flight recorder through the Java API against one real sidecar whose event streams buffer at
 * most 16 events each (its least), so that a reader that does not read falls behind: paged listing
 * (ListEvents), and the event stream filling in what it missed.
 */
@Timeout(value = 180, unit = TimeUnit.SECONDS)
class TraceTest {
  private static final int BUFFER = 16;

  private static Sidecar sidecar;
  private static Client client;

  @BeforeAll
  static void start() {
    sidecar = Sidecar.start("--event-stream-buffer", String.valueOf(BUFFER));
    client = sidecar.client();
  }

  @AfterAll
  static void stop() {
    if (client != null) {
      client.close();
    }
    if (sidecar != null) {
      sidecar.close();
    }
  }

  /** A workflow of one task, run to its end: events to list, and an attempt to report events of. */
  private static WorkflowHandle ranWorkflow() throws InterruptedException {
    Worker worker =
        new Worker(client, "java-trace", WithSidecar.fast(WorkerOptions.Transport.STREAM))
            .handle("java-trace", task -> Map.of("ok", true))
            .start();
    try {
      WorkflowHandle handle =
          client.submit(new WorkflowBuilder("java-trace").task(new TaskBuilder("t", "java-trace")));
      handle.result(WithSidecar.WAIT);
      return handle;
    } finally {
      WithSidecar.stopWorker(worker);
    }
  }

  /**
   * Records {@code count} custom events of 8 KiB each for the workflow's (ended) task, through
   * ReportEvents (an attempt that ended at most 5 minutes ago may still report), and returns their
   * sequences. Large events fill the transport's flow-control window quickly, so that the stream
   * buffer of a reader that does not read overflows.
   */
  private static List<Long> report(WorkflowHandle handle, int count) {
    String pad = "x".repeat(8192);
    List<Long> sequences = new ArrayList<>();
    for (int done = 0; done < count; done += 100) {
      ReportEventsRequest.Builder req = ReportEventsRequest.newBuilder();
      for (int i = done; i < Math.min(count, done + 100); i++) {
        req.addEvents(
            ReportedEvent.newBuilder()
                .setWorkflowId(handle.id())
                .setTaskId("t")
                .setAttempt(1)
                .setEventType(EventType.EVENT_TYPE_WORKER_CUSTOM)
                .setName("pad-" + i)
                .putAttributes("pad", AttributeValue.newBuilder().setStringValue(pad).build()));
      }
      sequences.addAll(
          client
              .raw()
              .worker()
              .withDeadlineAfter(60, TimeUnit.SECONDS)
              .reportEvents(req.build())
              .getSequencesList());
    }
    return sequences;
  }

  private static EventFilter customOf(WorkflowHandle handle) {
    return EventFilter.newBuilder()
        .addWorkflowIds(handle.id())
        .addEventTypes(EventType.EVENT_TYPE_WORKER_CUSTOM)
        .build();
  }

  @Test
  void listEventsPagesThroughWhatIsRetained() throws Exception {
    WorkflowHandle handle = ranWorkflow();
    EventFilter filter = EventFilter.newBuilder().addWorkflowIds(handle.id()).build();

    // Page by page (2 a page), following the tokens to the last page.
    List<Event> paged = new ArrayList<>();
    EventPage page = null;
    String token = null;
    for (int pages = 0; pages < 100; pages++) {
      page = client.listEvents(filter, 0, 2, token);
      assertTrue(page.events().size() <= 2, "" + page);
      paged.addAll(page.events());
      token = page.nextPageToken();
      if (token.isEmpty()) {
        break;
      }
    }
    assertTrue(token.isEmpty(), "the listing ended");
    assertTrue(paged.size() >= 4, "events: " + paged);
    List<Long> sequences = paged.stream().map(Event::getSequence).toList();
    assertEquals(sequences.stream().sorted().distinct().toList(), sequences, "ascending, once");
    assertTrue(paged.stream().allMatch(e -> e.getWorkflowId().equals(handle.id())));
    List<EventType> types = paged.stream().map(Event::getEventType).toList();
    assertTrue(types.contains(EventType.EVENT_TYPE_WORKFLOW_SUBMITTED), "" + types);
    assertTrue(types.contains(EventType.EVENT_TYPE_WORKFLOW_COMPLETED), "" + types);
    assertTrue(page.lastSequence() >= sequences.get(sequences.size() - 1));
    assertTrue(page.oldestRetainedSequence() >= 1);

    // The same events in one listing, and as the stream replays them before CaughtUp.
    assertEquals(paged, client.events(filter, 0, Integer.MAX_VALUE));
    assertEquals(paged.subList(0, 3), client.events(filter, 0, 3));
    List<Event> replayed = new ArrayList<>();
    try (EventStream stream = client.streamEvents(filter, 0L)) {
      StreamEventsResponse msg = stream.next(WithSidecar.WAIT).orElseThrow();
      while (msg.hasEvent()) {
        replayed.add(msg.getEvent());
        msg = stream.next(WithSidecar.WAIT).orElseThrow();
      }
      assertTrue(msg.hasCaughtUp(), "" + msg);
    }
    assertEquals(paged, replayed);

    // A cursor: after an event, the listing starts at the next one; after the last page, nothing.
    assertEquals(
        paged.subList(2, paged.size()), client.events(filter, sequences.get(1), Integer.MAX_VALUE));
    assertTrue(client.listEvents(filter, page.lastSequence(), 0, null).events().isEmpty());

    AreException badToken =
        assertThrows(AreException.class, () -> client.listEvents(filter, 0, 10, "not-a-token"));
    assertEquals(Status.Code.INVALID_ARGUMENT, badToken.code());
    assertEquals("INVALID_PAGE_TOKEN", badToken.reason());
    AreException beyond =
        assertThrows(
            AreException.class, () -> client.listEvents(filter, Long.MAX_VALUE / 2, 10, null));
    assertEquals(Status.Code.OUT_OF_RANGE, beyond.code());
    assertEquals("SEQUENCE_BEYOND_LOG", beyond.reason());
  }

  /** The sequences of the events a stream delivers up to its CaughtUp (a notice fails the test). */
  private static List<Long> replay(EventStream stream) {
    List<Long> sequences = new ArrayList<>();
    StreamEventsResponse msg = stream.next(WithSidecar.WAIT).orElseThrow();
    while (msg.hasEvent()) {
      sequences.add(msg.getEvent().getSequence());
      msg = stream.next(WithSidecar.WAIT).orElseThrow();
    }
    assertTrue(msg.hasCaughtUp(), "" + msg);
    return sequences;
  }

  /**
   * A replay of 600 events, all ready at once, comes in batches (it came one event per message:
   * the stream did not ask for batches), and the stream delivers them one by one: every event, in
   * order, once, then CaughtUp. A stream resumed from an event inside a batch starts right after
   * it, and a burst of live events comes out in order too.
   */
  @Test
  void aReplayComesInBatchesDeliveredOneByOneInOrder() throws Exception {
    WorkflowHandle handle = ranWorkflow();
    EventFilter filter = customOf(handle);
    List<Long> sequences = report(handle, 600);
    try (EventStream stream = client.streamEvents(filter, 0L)) {
      assertEquals(sequences, replay(stream), "every event, in order, once");
      assertTrue(
          stream.batches() > 0,
          "600 events ready at once and no batch: the stream did not ask for them");
      // Live: a burst, in order, once (batched, or fetched in place of a notice: this sidecar
      // buffers 16 events per stream, and the stream is not read while the burst is recorded).
      List<Long> burst = report(handle, 300);
      List<Long> live = new ArrayList<>();
      while (live.size() < burst.size()) {
        StreamEventsResponse msg = stream.next(WithSidecar.WAIT).orElseThrow();
        assertTrue(msg.hasEvent(), "only events: " + msg);
        live.add(msg.getEvent().getSequence());
      }
      assertEquals(burst, live);
      // Resuming from an event that came inside a batch (the 101st): the next one on.
      List<Long> rest = new ArrayList<>(sequences.subList(101, sequences.size()));
      rest.addAll(burst);
      try (EventStream resumed = client.streamEvents(filter, sequences.get(100))) {
        assertEquals(rest, replay(resumed));
      }
    }
  }

  /**
   * A client that takes messages under 4 MiB (a batch's bound) does not ask for batches, which it
   * could not receive: its events come one per message, all of them, in order.
   */
  @Test
  void aClientTakingSmallMessagesGetsSingleEvents() throws Exception {
    WorkflowHandle handle = ranWorkflow();
    EventFilter filter = customOf(handle);
    List<Long> sequences = report(handle, 300);
    try (Client small =
            Client.connect(
                sidecar.target(), Options.builder().maxMessageBytes(1024 * 1024).build());
        EventStream stream = small.streamEvents(filter, 0L)) {
      assertEquals(sequences, replay(stream));
      assertEquals(0, stream.batches());
    }
  }

  @Test
  void aSlowReaderGetsWhatItMissedInOrderAndOnce() throws Exception {
    WorkflowHandle handle = ranWorkflow();
    EventFilter filter = customOf(handle);
    try (EventStream stream = client.streamEvents(filter, null)) {
      assertTrue(stream.next(WithSidecar.WAIT).orElseThrow().hasCaughtUp());
      List<Long> sequences = report(handle, 3000); // not reading meanwhile
      List<Long> received = new ArrayList<>();
      while (received.size() < sequences.size()) {
        StreamEventsResponse msg = stream.next(WithSidecar.WAIT).orElseThrow();
        assertTrue(msg.hasEvent(), "only events: " + msg);
        received.add(msg.getEvent().getSequence());
      }
      // Every event once, in sequence order: the missed ones in their place.
      assertEquals(sequences, received);
      assertTrue(stream.filled() > 0, "the reader fell behind: raise the event count");
      assertTrue(stream.filled() < sequences.size());
      // Nothing more: a bounded wait says so, and the stream stays usable.
      AreException e =
          assertThrows(AreException.class, () -> stream.next(java.time.Duration.ofMillis(200)));
      assertEquals("TIMEOUT", e.reason());
      List<Long> more = report(handle, 1);
      assertEquals(
          more.get(0), stream.next(WithSidecar.WAIT).orElseThrow().getEvent().getSequence());
    }
  }

  @Test
  void withoutFillTheNoticeComes() throws Exception {
    WorkflowHandle handle = ranWorkflow();
    EventFilter filter = customOf(handle);
    try (EventStream stream = client.streamEvents(filter, null, false)) {
      assertTrue(stream.next(WithSidecar.WAIT).orElseThrow().hasCaughtUp());
      List<Long> sequences = report(handle, 3000);
      List<Long> delivered = new ArrayList<>();
      List<EventsMissed> notices = new ArrayList<>();
      long accounted = 0;
      while (accounted < sequences.size()) {
        StreamEventsResponse msg = stream.next(WithSidecar.WAIT).orElseThrow();
        if (msg.hasEvent()) {
          delivered.add(msg.getEvent().getSequence());
          accounted++;
        } else {
          assertTrue(msg.hasMissed(), "" + msg);
          notices.add(msg.getMissed());
          accounted += msg.getMissed().getMissedCount();
        }
      }
      assertFalse(notices.isEmpty(), "the reader fell behind: raise the event count");
      assertEquals(delivered.size(), new HashSet<>(delivered).size());
      assertEquals(0, stream.filled());
      for (EventsMissed notice : notices) {
        assertEquals(MissedReason.MISSED_REASON_SLOW_SUBSCRIBER, notice.getReason());
        // What the notice names is still there, from its cursor.
        EventPage page = client.listEvents(filter, notice.getResumeAfterSequence(), 1, null);
        assertEquals(notice.getFirstMissedSequence(), page.events().get(0).getSequence());
      }
    }
  }
}
