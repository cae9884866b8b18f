package dev.are.sdk;

import dev.are.sdk.v1.EventFilter;
import dev.are.sdk.v1.StreamEventsRequest;
import dev.are.sdk.v1.StreamEventsResponse;
import dev.are.sdk.v1.TraceServiceGrpc;
import io.grpc.Status;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;
import java.time.Duration;
import java.util.Optional;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;

/**
 * A live event stream (TraceService.StreamEvents): replayed events (when opened with a cursor),
 * one {@code CaughtUp}, then live events; {@code Missed} says what a slow reader lost. Read it with
 * {@link #next(Duration)}; close it when done. Flow control asks the sidecar for one message at a
 * time, so an unread stream buffers nothing here (the sidecar reports what it had to drop).
 */
public final class EventStream implements AutoCloseable {
  private static final Object END = new Object();

  private final LinkedBlockingQueue<Object> queue = new LinkedBlockingQueue<>();
  private volatile ClientCallStreamObserver<StreamEventsRequest> call;
  private boolean ended;

  EventStream(Client client, EventFilter filter, Long afterSequence) {
    StreamEventsRequest.Builder req = StreamEventsRequest.newBuilder().setFilter(filter);
    if (afterSequence != null) {
      req.setAfterSequence(afterSequence);
    }
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
                queue.add(AreException.from(t));
              }

              @Override
              public void onCompleted() {
                queue.add(END);
              }
            });
  }

  /**
   * The next message, waiting at most {@code timeout}; empty when the stream ended. Nothing in
   * time is DEADLINE_EXCEEDED with reason TIMEOUT (the stream stays usable); a broken stream is
   * its error.
   */
  public Optional<StreamEventsResponse> next(Duration timeout) {
    if (ended) {
      return Optional.empty();
    }
    Object item;
    try {
      item = queue.poll(Durations.nanos(timeout), TimeUnit.NANOSECONDS);
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
    return Optional.of((StreamEventsResponse) item);
  }

  /** Cancels the stream. */
  @Override
  public void close() {
    ended = true;
    ClientCallStreamObserver<StreamEventsRequest> c = call;
    if (c != null) {
      c.cancel("closed by the client", null);
    }
  }
}
