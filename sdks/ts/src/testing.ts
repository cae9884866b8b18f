/**
 * Start a real ARE sidecar for tests: a temporary folder, an ephemeral port.
 *
 * ```ts
 * import { SidecarProcess } from "@are-runtime/sdk/testing";
 *
 * const sidecar = await SidecarProcess.start({ command: [".venv/bin/python", "-m", "sidecar"] });
 * const client = await Client.connect(sidecar.target);
 * // ...
 * client.close();
 * await sidecar.stop();   // SIGTERM, then the folder is removed
 * ```
 *
 * The sidecar runs as `<command> serve --listen 127.0.0.1:0 --data-dir <tmp>
 * --ready-file <tmp>/ready.json`, the same way the Python SDK's
 * `are_sdk.testing.SidecarProcess` starts it: the ready file names the bound
 * target, then the health check must say SERVING. The command defaults to
 * the `ARE_SIDECAR_COMMAND` environment variable (split on spaces), else `are`.
 *
 * @module
 */
import { spawn, type ChildProcess } from "node:child_process";
import { openSync, closeSync, readFileSync, existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { Client } from "./client.js";
import { sleep } from "./time.js";

/** Options of {@link SidecarProcess.start}. */
export interface SidecarOptions {
  /** The command that runs the sidecar, before `serve`; default `ARE_SIDECAR_COMMAND` or `["are"]`. */
  command?: string[];
  /** More options for `serve`. */
  args?: string[];
  /** Extra environment variables (ARE_* variables of this process are not passed on). */
  env?: Record<string, string>;
  /** Require this bearer token (passed through ARE_TOKEN). */
  token?: string;
  /** Listen on a Unix socket in the temporary folder instead of TCP. */
  uds?: boolean;
  /** The working directory of the child. */
  cwd?: string;
  /** How long to wait for SERVING; default 30 s. */
  timeoutMs?: number;
}

/** The sidecar exited or did not become ready in time; the message has its log. */
export class SidecarStartError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SidecarStartError";
  }
}

/** A sidecar child process with its own data folder and endpoint. */
export class SidecarProcess {
  private exitCode: number | null = null;
  private readonly exited: Promise<number | null>;

  private constructor(
    private readonly child: ChildProcess,
    /** The gRPC target (`127.0.0.1:PORT` or `unix:PATH`). */
    readonly target: string,
    /** The data folder the sidecar owns. */
    readonly dataDir: string,
    /** The file receiving the sidecar's log. */
    readonly logPath: string,
    private readonly workdir: string,
    exited: Promise<number | null>,
  ) {
    this.exited = exited.then((code) => {
      this.exitCode = code;
      return code;
    });
  }

  /** Starts a sidecar and resolves once its health check says SERVING. */
  static async start(options: SidecarOptions = {}): Promise<SidecarProcess> {
    const workdir = await mkdtemp(join(tmpdir(), "are-ts-test-"));
    const dataDir = join(workdir, "data");
    const readyFile = join(workdir, "ready.json");
    const logPath = join(workdir, "sidecar.log");
    const configured = process.env["ARE_SIDECAR_COMMAND"];
    const command = options.command ?? (configured ? configured.split(" ").filter(Boolean) : ["are"]);
    const argv = [...command.slice(1), "serve", "--data-dir", dataDir, "--ready-file", readyFile];
    argv.push(...(options.uds ? ["--listen", "off", "--uds", join(workdir, "are.sock")] : ["--listen", "127.0.0.1:0"]));
    argv.push(...(options.args ?? []));
    const env: Record<string, string> = {};
    for (const [key, value] of Object.entries(process.env)) if (!key.startsWith("ARE_") && value !== undefined) env[key] = value;
    Object.assign(env, options.env ?? {});
    if (options.token !== undefined) env["ARE_TOKEN"] = options.token;
    const log = openSync(logPath, "w");
    let child: ChildProcess;
    try {
      child = spawn(command[0] as string, argv, { cwd: options.cwd, env, stdio: ["ignore", log, log] });
    } finally {
      closeSync(log);
    }
    const exited = new Promise<number | null>((resolve) => {
      child.once("exit", (code, signal) => resolve(code ?? (signal ? 128 : null)));
      child.once("error", () => resolve(127));
    });
    // Never leave a sidecar behind when this process exits without stopping it.
    const reap = (): void => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    };
    process.once("exit", reap);
    void exited.then(() => process.removeListener("exit", reap));
    const sidecar = new SidecarProcess(child, "", dataDir, logPath, workdir, exited);
    const deadline = Date.now() + (options.timeoutMs ?? 30_000);
    try {
      const target = await sidecar.waitReadyFile(readyFile, deadline);
      await sidecar.waitServing(target, deadline, options.token);
      return new SidecarProcess(child, target, dataDir, logPath, workdir, sidecar.exited);
    } catch (error) {
      child.kill("SIGKILL");
      await sidecar.exited;
      await rm(workdir, { recursive: true, force: true });
      throw error;
    }
  }

  /** The child's process id. */
  get pid(): number | undefined {
    return this.child.pid;
  }

  /** Everything the sidecar has logged so far. */
  logText(): string {
    try {
      return readFileSync(this.logPath, "utf8");
    } catch {
      return "(no log)";
    }
  }

  private tail(lines = 40): string {
    return this.logText().split("\n").slice(-lines).join("\n");
  }

  private async waitReadyFile(readyFile: string, deadline: number): Promise<string> {
    while (!existsSync(readyFile)) {
      if (this.exitCode !== null) throw new SidecarStartError(`sidecar exited with status ${this.exitCode}:\n${this.tail()}`);
      if (Date.now() > deadline) throw new SidecarStartError(`sidecar wrote no ready file in time:\n${this.tail()}`);
      await sleep(20);
    }
    // The sidecar writes the file atomically (a temporary file, then a rename).
    const ready = JSON.parse(readFileSync(readyFile, "utf8")) as { targets: string[] };
    const target = ready.targets[0];
    if (!target) throw new SidecarStartError(`the ready file names no target:\n${this.tail()}`);
    return target;
  }

  private async waitServing(target: string, deadline: number, token: string | undefined): Promise<void> {
    const client = await Client.connect(target, { token, connectTimeoutMs: Math.max(1, deadline - Date.now()) });
    try {
      for (;;) {
        if (this.exitCode !== null) throw new SidecarStartError(`sidecar exited with status ${this.exitCode}:\n${this.tail()}`);
        try {
          if ((await client.health("", { timeoutMs: 1_000 })) === "SERVING") return;
        } catch {
          // not yet
        }
        if (Date.now() > deadline) throw new SidecarStartError(`sidecar never reported SERVING:\n${this.tail()}`);
        await sleep(20);
      }
    } finally {
      client.close();
    }
  }

  /**
   * Asks the sidecar to shut down (SIGTERM), waits up to `timeoutMs` (then
   * SIGKILL), removes its temporary folder unless `keep`, and returns its exit status.
   */
  async stop(options: { timeoutMs?: number; keep?: boolean } = {}): Promise<number | null> {
    if (this.exitCode === null) {
      this.child.kill("SIGTERM");
      const timer = new AbortController();
      const killed = sleep(options.timeoutMs ?? 15_000, timer.signal).then(
        () => {
          this.child.kill("SIGKILL");
        },
        () => undefined,
      );
      await this.exited;
      timer.abort();
      await killed;
    }
    if (!options.keep) await rm(this.workdir, { recursive: true, force: true });
    return this.exitCode;
  }

  /** Kills the sidecar at once (SIGKILL), as a crash would. */
  async kill(): Promise<void> {
    if (this.exitCode === null) this.child.kill("SIGKILL");
    await this.exited;
  }
}
