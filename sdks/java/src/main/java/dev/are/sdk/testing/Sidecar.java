package dev.are.sdk.testing;

import com.fasterxml.jackson.databind.JsonNode;
import dev.are.sdk.AreException;
import dev.are.sdk.Client;
import dev.are.sdk.Json;
import dev.are.sdk.Options;
import io.grpc.Status;
import io.grpc.health.v1.HealthCheckResponse.ServingStatus;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;

/**
 * A real sidecar for the length of a test: {@code PYTHON -m sidecar serve} on 127.0.0.1:0 (or a
 * Unix socket) in a temporary data folder, stopped with SIGTERM by {@link #close()}.
 *
 * <p>PYTHON is {@code $ARE_PYTHON}, else the repository's {@code .venv/bin/python}; the repository
 * is the system property {@code are.repo}, else the first folder up from the working directory
 * that holds {@code sidecar/__main__.py}.
 */
public final class Sidecar implements AutoCloseable {
  private static final Duration START_LIMIT = Duration.ofSeconds(30);

  private final Process process;
  private final Path dir;
  private final String token;
  private String target = "";

  /**
   * How to start a {@link Sidecar}: a token, a Unix socket, TLS (a PEM certificate and key, the
   * certificate trusted by {@link #client()}), more {@code serve} options.
   */
  public record SidecarOptions(
      String token, boolean uds, Path tlsCert, Path tlsKey, List<String> args) {
    /** TCP on 127.0.0.1:0, no token, plaintext, no more options. */
    public static SidecarOptions defaults() {
      return new SidecarOptions(null, false, null, null, List.of());
    }

    /** Requires this bearer token (written to a token file). */
    public SidecarOptions withToken(String t) {
      return new SidecarOptions(t, uds, tlsCert, tlsKey, args);
    }

    /** Listens on a Unix socket in the temporary folder instead of TCP. */
    public SidecarOptions withUds(boolean u) {
      return new SidecarOptions(token, u, tlsCert, tlsKey, args);
    }

    /** Serves TLS with this PEM certificate chain and key. */
    public SidecarOptions withTls(Path cert, Path key) {
      return new SidecarOptions(token, uds, cert, key, args);
    }

    /** More options for {@code serve}. */
    public SidecarOptions withArgs(String... a) {
      return new SidecarOptions(token, uds, tlsCert, tlsKey, List.of(a));
    }
  }

  private final Path tlsCert;

  private Sidecar(Process process, Path dir, String token, Path tlsCert) {
    this.process = process;
    this.dir = dir;
    this.token = token;
    this.tlsCert = tlsCert;
  }

  /** Starts a sidecar with extra {@code serve} options and waits until it answers SERVING. */
  public static Sidecar start(String... args) {
    return start(SidecarOptions.defaults().withArgs(args));
  }

  /** Starts a sidecar as {@code options} say and waits (at most 30 s) until it answers SERVING. */
  public static Sidecar start(SidecarOptions options) {
    Path repo = repo();
    Path python = python(repo);
    Path dir;
    try {
      dir = Files.createTempDirectory("are-sdk-java-");
    } catch (IOException e) {
      throw fail("cannot create a temporary folder: " + e, e);
    }
    Path ready = dir.resolve("ready.json");
    List<String> command = new ArrayList<>();
    command.addAll(
        List.of(
            python.toString(),
            "-m",
            "sidecar",
            "serve",
            "--durability",
            "relaxed",
            "--shutdown-grace-s",
            "1"));
    if (options.uds()) {
      command.addAll(List.of("--listen", "off", "--uds", dir.resolve("are.sock").toString()));
    } else {
      command.addAll(List.of("--listen", "127.0.0.1:0"));
    }
    try {
      if (options.token() != null) {
        Path file = dir.resolve("token");
        Files.writeString(file, options.token(), StandardCharsets.UTF_8);
        command.addAll(List.of("--token-file", file.toString()));
      }
    } catch (IOException e) {
      throw fail("cannot write the token file: " + e, e);
    }
    if (options.tlsCert() != null) {
      command.addAll(List.of("--tls-cert", options.tlsCert().toString()));
      command.addAll(List.of("--tls-key", options.tlsKey().toString()));
    }
    command.addAll(
        List.of(
            "--data-dir", dir.resolve("data").toString(), "--ready-file", ready.toString()));
    command.addAll(options.args());
    Process process;
    try {
      process =
          new ProcessBuilder(command)
              .directory(repo.toFile())
              .redirectErrorStream(true)
              .redirectOutput(dir.resolve("sidecar.log").toFile())
              .redirectInput(ProcessBuilder.Redirect.from(Path.of("/dev/null").toFile()))
              .start();
    } catch (IOException e) {
      throw fail("cannot run " + python + ": " + e, e);
    }
    Sidecar sidecar = new Sidecar(process, dir, options.token(), options.tlsCert());
    try {
      sidecar.awaitServing(ready);
    } catch (RuntimeException e) {
      sidecar.close();
      throw e;
    }
    return sidecar;
  }

  private void awaitServing(Path ready) {
    long deadline = System.nanoTime() + START_LIMIT.toNanos();
    while (System.nanoTime() < deadline) {
      if (!process.isAlive()) {
        throw fail("the sidecar exited with " + process.exitValue() + ": " + log(), null);
      }
      if (Files.exists(ready)) {
        try {
          JsonNode v = Json.decode(Files.readAllBytes(ready));
          String t = v.path("targets").path(0).asText("");
          if (!t.isEmpty()) {
            target = t;
            try (Client c = client()) {
              if (c.health() == ServingStatus.SERVING) {
                return;
              }
            }
          }
        } catch (IOException | AreException e) {
          // Not ready yet (a partly written file cannot be seen: it is renamed into place).
        }
      }
      try {
        Thread.sleep(25);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        throw fail("interrupted while the sidecar started", e);
      }
    }
    throw fail("the sidecar was not SERVING within " + START_LIMIT + ": " + log(), null);
  }

  /** The {@code host:port} (or {@code unix:/path}) it listens on. */
  public String target() {
    return target;
  }

  /** The sidecar's log so far. */
  public String log() {
    try {
      return Files.readString(dir.resolve("sidecar.log"), StandardCharsets.UTF_8);
    } catch (IOException e) {
      return "";
    }
  }

  /** A client of this sidecar, with its token (trusting its certificate); close it when done. */
  public Client client() {
    return Client.connect(
        target, Options.builder().token(token).tlsTrustedCertificates(tlsCert).build());
  }

  /**
   * Kills the sidecar at once (SIGKILL), as a crash or a power loss would, and waits for it to
   * exit: its open calls fail with UNAVAILABLE and nothing answers at its target any more. {@link
   * #close()} still removes its temporary folder.
   */
  public void kill() {
    process.destroyForcibly();
    try {
      process.waitFor(15, TimeUnit.SECONDS);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    }
  }

  /** SIGTERM, up to 15 s for a graceful exit, then SIGKILL; removes the temporary folder. */
  @Override
  public void close() {
    process.destroy();
    try {
      if (!process.waitFor(15, TimeUnit.SECONDS)) {
        process.destroyForcibly();
        process.waitFor(15, TimeUnit.SECONDS);
      }
    } catch (InterruptedException e) {
      process.destroyForcibly();
      Thread.currentThread().interrupt();
    }
    try (Stream<Path> files = Files.walk(dir)) {
      files.sorted(Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
    } catch (IOException e) {
      // A temporary folder left behind is harmless.
    }
  }

  private static Path repo() {
    String property = System.getProperty("are.repo");
    if (property != null && !property.isEmpty()) {
      return Paths.get(property).toAbsolutePath().normalize();
    }
    for (Path p = Paths.get("").toAbsolutePath(); p != null; p = p.getParent()) {
      if (Files.exists(p.resolve("sidecar").resolve("__main__.py"))) {
        return p;
      }
    }
    throw fail("cannot find the ARE repository (set the are.repo system property)", null);
  }

  private static Path python(Path repo) {
    String env = System.getenv("ARE_PYTHON");
    if (env != null && !env.isEmpty()) {
      return Paths.get(env);
    }
    return repo.resolve(".venv").resolve("bin").resolve("python");
  }

  private static AreException fail(String message, Throwable cause) {
    return AreException.local(Status.Code.UNAVAILABLE, "SIDECAR_NOT_STARTED", message, cause);
  }
}
