package dev.are.sdk;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import dev.are.sdk.v1.BlobRef;
import io.grpc.Status;
import java.time.Duration;
import java.util.Random;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * A blob download or upload is bounded by its progress, not its length: over a slow link (a {@link
 * TcpProxy} passing the sidecar's bytes, or the client's, at a set rate) it outlasts the client's
 * call timeout and still succeeds, while one that stalls fails within about the call timeout.
 */
@Timeout(value = 120, unit = TimeUnit.SECONDS)
class BlobProgressTest extends WithSidecar {
  private static final Duration SHORT_CALLS = Duration.ofSeconds(2);

  private BlobRef stored(int size) {
    byte[] data = new byte[size];
    new Random(7).nextBytes(data);
    return client.putBlob(data, "application/octet-stream", "");
  }

  @Test
  void aSlowDownloadThatKeepsComingSucceedsPastTheCallTimeout() throws Exception {
    byte[] data = new byte[16 * 1024 * 1024];
    new Random(7).nextBytes(data);
    BlobRef ref = client.putBlob(data, "application/octet-stream", "");
    try (TcpProxy proxy = new TcpProxy(sidecar.target());
        Client slow =
            Client.connect(proxy.target(), Options.builder().callTimeout(SHORT_CALLS).build())) {
      // 4 MiB/s: a 1 MiB chunk every quarter second, 16 MiB in no less than 4 s, twice the call
      // timeout (the proxy's pace guarantees it: no clock is read here).
      proxy.paceDownstream(4L * 1024 * 1024);
      assertArrayEquals(data, slow.getBlob(ref.getSha256()));
    }
  }

  @Test
  void aStalledDownloadFailsWithinTheCallTimeout() throws Exception {
    BlobRef ref = stored(3 * 1024 * 1024);
    try (TcpProxy proxy = new TcpProxy(sidecar.target());
        Client slow =
            Client.connect(proxy.target(), Options.builder().callTimeout(SHORT_CALLS).build())) {
      assertEquals(3 * 1024 * 1024, slow.getBlob(ref.getSha256()).length);
      proxy.holdDownstream(); // nothing more comes from the sidecar
      AreException e = assertThrows(AreException.class, () -> slow.getBlob(ref.getSha256()));
      assertEquals(Status.Code.DEADLINE_EXCEEDED, e.code());
      assertEquals("TIMEOUT", e.reason());
      assertEquals(AreException.SDK_DOMAIN, e.domain());
      proxy.releaseDownstream();
      // The connection is still good: the next download goes through.
      assertEquals(3 * 1024 * 1024, slow.getBlob(ref.getSha256()).length);
    }
  }

  /**
   * 64 MiB at 16 MiB/s: no less than 4 s, twice the call timeout, and stored whole. (Bounded by
   * the call timeout as a whole, as it was, the upload failed at 2 s.) The link is fast enough that
   * what is in flight after the last chunk (the sidecar's flow-control window, some MiB) passes
   * well within the call timeout that bounds the wait for the answer.
   */
  @Test
  void aSlowUploadThatKeepsGoingSucceedsPastTheCallTimeout() throws Exception {
    byte[] data = new byte[64 * 1024 * 1024];
    new Random(11).nextBytes(data);
    try (TcpProxy proxy = new TcpProxy(sidecar.target());
        Client slow =
            Client.connect(proxy.target(), Options.builder().callTimeout(SHORT_CALLS).build())) {
      proxy.paceUpstream(16L * 1024 * 1024);
      BlobRef ref = slow.putBlob(data, "application/octet-stream", "");
      assertEquals(data.length, ref.getSizeBytes());
      assertArrayEquals(data, client.getBlob(ref.getSha256()));
    }
  }

  @Test
  void aStalledUploadFailsWithinTheCallTimeout() throws Exception {
    byte[] data = new byte[16 * 1024 * 1024];
    new Random(13).nextBytes(data);
    try (TcpProxy proxy = new TcpProxy(sidecar.target());
        Client slow =
            Client.connect(proxy.target(), Options.builder().callTimeout(SHORT_CALLS).build())) {
      proxy.holdUpstream(); // nothing more reaches the sidecar
      AreException e =
          assertThrows(
              AreException.class, () -> slow.putBlob(data, "application/octet-stream", ""));
      assertEquals(Status.Code.DEADLINE_EXCEEDED, e.code(), e.getMessage());
      assertEquals("TIMEOUT", e.reason());
      assertEquals(AreException.SDK_DOMAIN, e.domain());
      proxy.releaseUpstream();
      // The connection is still good: the next upload goes through.
      byte[] small = new byte[2 * 1024 * 1024];
      assertEquals(small.length, slow.putBlob(small, "", "").getSizeBytes());
    }
  }

  @Test
  void anUnknownBlobIsNotFound() {
    AreException e = assertThrows(AreException.class, () -> client.getBlob("0".repeat(64)));
    assertEquals(Status.Code.NOT_FOUND, e.code());
    assertEquals("BLOB_NOT_FOUND", e.reason());
  }
}
