package dev.are.sdk;

import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.are.sdk.testing.Sidecar;
import java.time.Duration;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;

/** A real sidecar and a client connected to it, one per test; every wait bounded by {@link #WAIT}. */
abstract class WithSidecar {
  static final Duration WAIT = Duration.ofSeconds(60);

  Sidecar sidecar;
  Client client;

  /** Worker options that keep tests short: a stop is noticed within about 2 s. */
  static WorkerOptions fast(WorkerOptions.Transport transport) {
    return WorkerOptions.builder()
        .transport(transport)
        .concurrency(4)
        .pollTimeout(Duration.ofSeconds(2))
        .heartbeatInterval(Duration.ofMillis(100))
        .shutdownGrace(Duration.ofSeconds(5))
        .build();
  }

  static void stopWorker(Worker worker) throws InterruptedException {
    worker.shutdown();
    assertTrue(worker.awaitTermination(WAIT), "the worker stopped in time");
  }

  @BeforeEach
  void start() {
    sidecar = Sidecar.start();
    client = sidecar.client();
  }

  @AfterEach
  void stop() {
    if (client != null) {
      client.close();
    }
    if (sidecar != null) {
      sidecar.close();
    }
  }
}
