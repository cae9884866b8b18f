package dev.are.sdk;

import dev.are.sdk.v1.Event;
import dev.are.sdk.v1.EventFilter;
import dev.are.sdk.v1.EventsMissed;
import dev.are.sdk.v1.ListEventsRequest;
import dev.are.sdk.v1.ListEventsResponse;
import dev.are.sdk.v1.MissedReason;
import dev.are.sdk.v1.StreamEventsRequest;
import dev.are.sdk.v1.StreamEventsResponse;
import dev.are.sdk.v1.TraceServiceGrpc;
import io.grpc.Status;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;
import java.time.Duration;
import java.util.ArrayDeque;
import java.util.HashSet;
import java.util.Optional;
import java.util.Set;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;

/**
 * A live event stream (TraceService.StreamEvents): replayed events (when opened with a cursor), one
 * {@code CaughtUp}, then live events. Read it with {@link #next(Duration)} from one thread; close
 * it when done (from any thread). Flow control asks the sidecar for one message at a time, so an
 * unread stream buffers at most one message here: the sidecar keeps a bounded buffer per stream
 * and, when a slow reader lets it overflow, drops events and sends an {@code EventsMissed} notice.
 *
 * <p>The stream asks for batches ({@code max_batch} 256, as the Python SDK): events the sidecar has
 * ready together (a replay, a burst) come in one message, which costs the sidecar far less than one
 * message each, and {@link #next} still delivers them one at a time, each as a message holding one
 * {@code event}, in order, as if each had come alone (it never delivers a {@code batch}); the
 * sequence of the last event delivered is the cursor to resume from, as before. A client whose
 * {@link Options#maxMessageBytes()} is under 4 MiB (a batch's bound) does not ask for them.
 *
 * <p>With missed-event fill (the default), a slow-subscriber notice is not delivered: the events it
 * names are still in the flight recorder, so the stream fetches them with ListEvents (from the
 * notice's {@code resume_after_sequence} up to its {@code last_missed_sequence}, page by page, each
 * page bounded by the client's call timeout) and delivers them in its place, before what came after
 * it on the stream: every matching event once, in sequence order. A retention notice
 * (MISSED_REASON_RETENTION: the events are gone) is always delivered. Without fill, every notice is
 * delivered as it comes.
 */
public final class EventStream implements AutoCloseable {
  private static final Object END = new Object();

  /** Sequences remembered to deliver each event once (live and fetched may overlap). */
  private static final int RECENT = 16_384;

  /** Events asked for per ListEvents page of a fill (the most the sidecar gives). */
  private static final int FILL_PAGE = 1000;

  /**
   * The {@code max_batch} of every stream, as the Python SDK's: the sidecar sends the events it
   * already has ready up to this many in one message, which costs it far less than one message
   * each (it runs the scheduler on the same event loop).
   */
  private static final int STREAM_BATCH = 256;

  /**
   * The largest message a batch makes (the sidecar's bound: gRPC's default receive limit). A client
   * that takes less does not ask for batches, which it could not receive.
   */
  private static final int STREAM_BATCH_BYTES = 4 << 20;

  private final Client client;
  private final EventFilter filter;
  private final boolean fillMissed;
  private final LinkedBlockingQueue<Object> queue = new LinkedBlockingQueue<>();
  private volatile ClientCallStreamObserver<StreamEventsRequest> call;
  private boolean ended;

  /** The rest of a batch received: events not yet delivered, in order. */
  private final ArrayDeque<Event> batched = new ArrayDeque<>();

  /** Batches received so far. */
  private long batches;

  /** Missed events fetched and not yet delivered. */
  private final ArrayDeque<Event> pending = new ArrayDeque<>();

  /** The next page of a fill under way (null: none), and the last sequence it covers. */
  private ListEventsRequest fill;

  private long fillThrough;

  /** The last sequences delivered, oldest first, and the same as a set (bounded by RECENT). */
  private final ArrayDeque<Long> recentOrder = new ArrayDeque<>();

  private final Set<Long> recent = new HashSet<>();

  /** Events delivered from fills so far. */
  private long filled;

  EventStream(Client client, EventFilter filter, Long afterSequence, boolean fillMissed) {
    this.client = client;
    this.filter = filter;
    this.fillMissed = fillMissed;
    StreamEventsRequest.Builder req = StreamEventsRequest.newBuilder().setFilter(filter);
    if (client.maxMessageBytes() >= STREAM_BATCH_BYTES) {
      req.setMaxBatch(STREAM_BATCH);
    }
    if (afterSequence != null) {
      req.setAfterSequence(afterSequence);
    }
    client.opened(this); // before it can end
    TraceServiceGrpc.newStub(client.raw().channel())
        .withMaxInboundMessageSize(client.maxMessageBytes())
        .streamEvents(
            req.build(),
            new ClientResponseObserver<StreamEventsRequest, StreamEventsResponse>() {
              @Override
              public void beforeStart(ClientCallStreamObserver<StreamEventsRequest> stream) {
                call = stream;
                stream.disableAutoRequestWithInitial(1);
              }

              @Override
              public void onNext(StreamEventsResponse value) {
                queue.add(value);
              }

              @Override
              public void onError(Throwable t) {
                client.ended(EventStream.this);
                queue.add(
                    client.isClosed()
                        ? Client.closedError("the event stream", t)
                        : AreException.from(t));
              }

              @Override
              public void onCompleted() {
                client.ended(EventStream.this);
                queue.add(END);
              }
            });
  }

  /**
   * The next message, waiting at most {@code timeout}; empty when the stream ended. Nothing in time
   * is DEADLINE_EXCEEDED with reason TIMEOUT (the stream stays usable: a fill under way goes on at
   * the next call); a broken stream is its error, and so is a failed ListEvents of a fill (the
   * stream is then closed: resume with a new one after the last sequence received).
   */
  public Optional<StreamEventsResponse> next(Duration timeout) {
    long deadline = Durations.deadline(timeout);
    while (true) {
      if (ended) {
        return Optional.empty();
      }
      Event next = batched.poll();
      if (next != null) {
        if (firstTime(next.getSequence())) {
          return Optional.of(StreamEventsResponse.newBuilder().setEvent(next).build());
        }
        continue;
      }
      Event missed = pending.poll();
      if (missed != null) {
        if (firstTime(missed.getSequence())) {
          filled++;
          return Optional.of(StreamEventsResponse.newBuilder().setEvent(missed).build());
        }
        continue;
      }
      if (fill != null) {
        fetchMissed(timeout, deadline);
        continue;
      }
      Object item;
      try {
        item = queue.poll(Math.max(0, deadline - System.nanoTime()), TimeUnit.NANOSECONDS);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        throw AreException.local(Status.Code.CANCELLED, "INTERRUPTED", "interrupted", e);
      }
      if (item == null) {
        throw AreException.timeout("waiting for an event", timeout);
      }
      if (item == END) {
        ended = true;
        return Optional.empty();
      }
      if (item instanceof AreException e) {
        ended = true;
        throw e;
      }
      call.request(1);
      StreamEventsResponse msg = (StreamEventsResponse) item;
      switch (msg.getMessageCase()) {
        case EVENT -> {
          if (firstTime(msg.getEvent().getSequence())) {
            return Optional.of(msg);
          }
        }
        case BATCH -> {
          // Consecutive events, in order, with no notice among them: delivered one by one before
          // the next message is read.
          batches++;
          batched.addAll(msg.getBatch().getEventsList());
        }
        case MISSED -> {
          EventsMissed notice = msg.getMissed();
          if (!fillMissed || notice.getReason() != MissedReason.MISSED_REASON_SLOW_SUBSCRIBER) {
            return Optional.of(msg);
          }
          fill =
              ListEventsRequest.newBuilder()
                  .setFilter(filter)
                  .setAfterSequence(notice.getResumeAfterSequence())
                  .setPageSize(FILL_PAGE)
                  .build();
          fillThrough = notice.getLastMissedSequence();
        }
        default -> {
          return Optional.of(msg);
        }
      }
    }
  }

  /**
   * Fetches the next page of the fill under way into {@link #pending}, within the call timeout and
   * what is left of the caller's. Running out of time keeps the fill for the next call; any other
   * failure ends the stream.
   */
  private void fetchMissed(Duration timeout, long deadline) {
    long left = deadline - System.nanoTime();
    if (left <= 0) {
      throw AreException.timeout("waiting for an event", timeout);
    }
    ListEventsRequest req = fill;
    long bound = Math.min(left, Durations.nanos(client.callTimeout()));
    ListEventsResponse page;
    try {
      page =
          client.call(
              "ListEvents of the events this stream missed",
              () ->
                  client
                      .raw()
                      .trace()
                      .withDeadlineAfter(bound, TimeUnit.NANOSECONDS)
                      .listEvents(req));
    } catch (AreException e) {
      if (e.code() == Status.Code.DEADLINE_EXCEEDED) {
        // Nothing in time: the fill goes on at the next call, from the same page.
        throw deadline - System.nanoTime() <= 0
            ? AreException.timeout("waiting for an event", timeout)
            : e;
      }
      close();
      throw e;
    }
    for (Event event : page.getEventsList()) {
      if (event.getSequence() > fillThrough) {
        fill = null;
        return;
      }
      pending.add(event);
    }
    if (page.getNextPageToken().isEmpty() || page.getLastSequence() >= fillThrough) {
      fill = null;
    } else {
      fill = req.toBuilder().setPageToken(page.getNextPageToken()).build();
    }
  }

  /** Whether {@code sequence} was not delivered yet (among the last {@link #RECENT}); notes it. */
  private boolean firstTime(long sequence) {
    if (!recent.add(sequence)) {
      return false;
    }
    recentOrder.add(sequence);
    if (recentOrder.size() > RECENT) {
      recent.remove(recentOrder.poll());
    }
    return true;
  }

  /** How many events this stream delivered in place of slow-subscriber notices. */
  long filled() {
    return filled;
  }

  /** How many batches this stream received (each delivered as the events it holds). */
  long batches() {
    return batches;
  }

  /** Cancels the stream. */
  @Override
  public void close() {
    ended = true;
    cancel("closed by the client");
  }

  /**
   * Cancels the stream as its client closes: a reader's {@code next} then throws CANCELLED, reason
   * {@code CLIENT_CLOSED}, once it has read what came before.
   */
  void cancelForClose() {
    cancel("the client was closed");
  }

  private void cancel(String why) {
    client.ended(this);
    ClientCallStreamObserver<StreamEventsRequest> c = call;
    if (c != null) {
      c.cancel(why, null);
    }
  }
}
