package dev.are.sdk;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.time.Duration;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * A TCP proxy in front of a real sidecar, for network faults: it forwards every connection to the
 * sidecar byte for byte, counts them, and breaks them on demand ({@link #cutAll()}) or each one a
 * while after it opened ({@link #cutEachAfter}), or holds what the clients send (a link that
 * stalls: {@link #holdUpstream}), or what the sidecar sends ({@link #holdDownstream}), or passes
 * what the sidecar or the clients send at a set rate (a slow link: {@link #paceDownstream},
 * {@link #paceUpstream}). Nothing of the
 * sidecar is imitated.
 */
final class TcpProxy implements AutoCloseable {
  private static final int PACE_PIECE = 16 * 1024;

  private final ServerSocket server;
  private final InetSocketAddress upstream;
  private final Set<Socket> open = ConcurrentHashMap.newKeySet();
  private final AtomicInteger accepted = new AtomicInteger();
  private final ScheduledExecutorService timers =
      Executors.newSingleThreadScheduledExecutor(
          r -> {
            Thread t = new Thread(r, "tcp-proxy-timer");
            t.setDaemon(true);
            return t;
          });
  private volatile Duration cutAfter;
  /** While set, bytes from the clients wait in the proxy (guarded by {@code this}). */
  private boolean held;

  /** While set, bytes from the sidecar wait in the proxy (guarded by {@code this}). */
  private boolean heldDown;

  /** Bytes per second passed from the sidecar to the clients; 0: as fast as they come. */
  private volatile long downstreamRate;

  /** Bytes per second passed from the clients to the sidecar; 0: as fast as they come. */
  private volatile long upstreamRate;

  /** A proxy of {@code target} ({@code host:port}) on 127.0.0.1, on a free port. */
  TcpProxy(String target) throws IOException {
    int colon = target.lastIndexOf(':');
    upstream =
        new InetSocketAddress(
            target.substring(0, colon), Integer.parseInt(target.substring(colon + 1)));
    server = new ServerSocket();
    // A fixed receive buffer (Linux autotunes it up to tcp_rmem's maximum, tens of MiB), so that
    // what the proxy holds backs up into the client at once.
    server.setReceiveBufferSize(64 * 1024);
    server.bind(new InetSocketAddress(InetAddress.getByName("127.0.0.1"), 0), 50);
    Thread acceptor = new Thread(this::accept, "tcp-proxy-accept");
    acceptor.setDaemon(true);
    acceptor.start();
  }

  /** The {@code host:port} to connect to instead of the sidecar. */
  String target() {
    return "127.0.0.1:" + server.getLocalPort();
  }

  /** How many connections it accepted so far. */
  int accepted() {
    return accepted.get();
  }

  /** Breaks every connection open now (later ones are forwarded as usual). */
  void cutAll() {
    for (Socket s : open) {
      close(s);
    }
  }

  /** Breaks each connection accepted from now on {@code d} after it opened (null: never). */
  void cutEachAfter(Duration d) {
    cutAfter = d;
  }

  /**
   * Stops forwarding what the clients send (what the sidecar sends still goes) until {@link
   * #releaseUpstream()}: their sends back up into their own buffers and gRPC's flow control, as
   * behind a slow link.
   */
  synchronized void holdUpstream() {
    held = true;
  }

  /** Forwards what the clients send again, what was held first. */
  synchronized void releaseUpstream() {
    held = false;
    notifyAll();
  }

  private synchronized void awaitRelease(boolean upstream) throws InterruptedException {
    while (upstream ? held : heldDown) {
      wait();
    }
  }

  /**
   * Stops forwarding what the sidecar sends (what the clients send still goes) until {@link
   * #releaseDownstream()}: a download stalls, as on a link that stopped.
   */
  synchronized void holdDownstream() {
    heldDown = true;
  }

  /** Forwards what the sidecar sends again, what was held first. */
  synchronized void releaseDownstream() {
    heldDown = false;
    notifyAll();
  }

  /**
   * Passes what the sidecar sends at no more than {@code bytesPerSecond} (0: no limit), in pieces
   * of at most 16 KiB: a slow link, on which data keeps coming but takes its time.
   */
  void paceDownstream(long bytesPerSecond) {
    downstreamRate = bytesPerSecond;
  }

  /**
   * Passes what the clients send at no more than {@code bytesPerSecond} (0: no limit), in pieces of
   * at most 16 KiB: a slow link for uploads.
   */
  void paceUpstream(long bytesPerSecond) {
    upstreamRate = bytesPerSecond;
  }

  private void accept() {
    while (!server.isClosed()) {
      Socket client;
      try {
        client = server.accept();
      } catch (IOException e) {
        return; // closed
      }
      accepted.incrementAndGet();
      Socket sidecar = new Socket();
      try {
        sidecar.connect(upstream, 5000);
      } catch (IOException e) {
        close(client);
        continue;
      }
      open.add(client);
      open.add(sidecar);
      pipe(client, sidecar, true);
      pipe(sidecar, client, false);
      Duration d = cutAfter;
      if (d != null) {
        timers.schedule(
            () -> {
              close(client);
              close(sidecar);
            },
            d.toNanos(),
            TimeUnit.NANOSECONDS);
      }
    }
  }

  private void pipe(Socket from, Socket to, boolean upstream) {
    Thread t =
        new Thread(
            () -> {
              byte[] buffer = new byte[64 * 1024];
              try (InputStream in = from.getInputStream();
                  OutputStream out = to.getOutputStream()) {
                int n;
                while ((n = in.read(buffer)) >= 0) {
                  awaitRelease(upstream);
                  long rate = upstream ? upstreamRate : downstreamRate;
                  if (rate <= 0) {
                    out.write(buffer, 0, n);
                    out.flush();
                    continue;
                  }
                  for (int at = 0; at < n; at += PACE_PIECE) {
                    int piece = Math.min(PACE_PIECE, n - at);
                    out.write(buffer, at, piece);
                    out.flush();
                    long nanos = piece * 1_000_000_000L / rate;
                    Thread.sleep(nanos / 1_000_000, (int) (nanos % 1_000_000));
                  }
                }
              } catch (IOException e) {
                // Cut, or closed by either end.
              } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
              } finally {
                close(from);
                close(to);
              }
            },
            "tcp-proxy-pipe");
    t.setDaemon(true);
    t.start();
  }

  private void close(Socket s) {
    open.remove(s);
    try {
      s.close();
    } catch (IOException e) {
      // Already closed.
    }
  }

  @Override
  public void close() {
    try {
      server.close();
    } catch (IOException e) {
      // Already closed.
    }
    paceDownstream(0);
    releaseDownstream();
    releaseUpstream();
    cutAll();
    timers.shutdownNow();
  }
}
