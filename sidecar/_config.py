"""The sidecar's configuration: flags, ``ARE_*`` environment variables, a TOML file.

Precedence, highest first: command-line flag, environment variable, TOML file
(``--config`` or ``ARE_CONFIG``), built-in default. An environment variable
set to the empty string counts as unset (``ARE_DATA_DIR=`` does not put the
data in the working folder, ``ARE_LISTEN=`` does not turn TCP off: say
``off``). The bearer token follows the same order: ``--token-file``, then
``ARE_TOKEN_FILE`` or ``ARE_TOKEN`` (the file first when both are set), then
the TOML file's ``token_file``. Files the options name (the TOML file, the
token file) must be UTF-8 text. Every option is declared once in
:data:`OPTIONS`; the flag parser, the environment reader, the TOML reader,
``--help`` and the README's table are all derived from that list, so they
cannot drift apart. Any unknown or invalid setting is a :class:`ConfigError`
naming it, which the CLI turns into exit status 2.
"""

from __future__ import annotations

import argparse
import enum
import importlib.util
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from are_core.embed import EmbedderError, load_embedder
from sidecar._conventions import ID

__all__ = [
    "OPTIONS",
    "Config",
    "ConfigError",
    "LogFormat",
    "Option",
    "check_model_directory",
    "load_config",
    "options_table_markdown",
    "parse_cache_models",
]


class ConfigError(ValueError):
    """A configuration setting is unknown or invalid; the message names it."""


class LogFormat(enum.StrEnum):
    """How the sidecar writes its log lines."""

    TEXT = "text"
    JSON = "json"


class Config(msgspec.Struct, frozen=True, kw_only=True):
    """The sidecar's resolved configuration.

    The bearer token itself is kept out of ``repr`` so that it is never logged.
    """

    listen: str | None
    uds: Path | None
    data_dir: Path
    durability: str
    token: str | None = msgspec.field(default=None)
    tls_cert: Path | None
    tls_key: Path | None
    log_format: LogFormat
    log_level: str
    shutdown_grace_s: float
    max_message_bytes: int
    max_concurrent_streams: int
    keepalive_time_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    cpu_affinity: tuple[int, ...] = ()
    ready_file: Path | None
    config_file: Path | None
    otlp_endpoint: str | None = None
    otlp_max_export_bytes: int = 3 * 1024 * 1024
    otlp_max_queue_bytes: int = 64 * 1024 * 1024
    event_retention_count: int = 10_000_000
    event_retention_age_s: float = 7 * 86_400.0
    event_stream_buffer: int = 10_000
    state_keep_versions: int = 1000
    state_keep_age_s: float = 7 * 86_400.0
    blob_unreferenced_ttl_s: float = 86_400.0
    memory_embedder: str = "lexical"
    router_embedder: str = "lexical"
    router_dimension: int = 256
    router_threshold: float = 0.5
    router_cost_weight: float = 1.0
    router_mode: str = "cost_biased"
    router_model_exploration: float = 0.05
    router_reroute_grace_s: float = 10.0
    max_open_tasks: int = 1_000_000
    max_open_bytes: int = 1 << 30
    cache_models: str = ""
    cache_search: str = "inline"
    cache_hot_bytes: int = 64 * 1024 * 1024
    cache_index_at_start: int = 4096
    cache_checkpoint_changes: int = 0
    cache_repair_changes: int = 0
    cache_huge_pages: str = "on"

    def __repr__(self) -> str:
        shown = {f: getattr(self, f) for f in self.__struct_fields__ if f != "token"}
        shown["token"] = "<set>" if self.token else None
        return "Config(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    def loggable(self) -> dict[str, Any]:
        """The settings as plain values for a startup log line, token redacted."""
        out: dict[str, Any] = {}
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if name == "token":
                value = "<set>" if value else None
            elif isinstance(value, Path | enum.Enum):
                value = str(value)
            out[name] = value
        return out


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: its name, default, parser and documentation."""

    name: str
    default: Any
    help: str
    parse: Callable[[str], Any]
    metavar: str = "VALUE"
    env: bool = True

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env_var(self) -> str:
        return "ARE_" + self.name.upper()


def _listen(text: str) -> str | None:
    if text.lower() in {"off", "none", ""}:
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not host or not _DIGITS.fullmatch(port) or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT (or 'off'), got {text!r}")
    return text


def _optional_path(text: str) -> Path | None:
    return Path(text) if text else None


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return text

    return parse


_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() also takes "²" and other scripts' digits
_CPU_RANGE = re.compile(r"([0-9]+)(?:-([0-9]+))?")

# Upper bounds of the duration options. Each is far beyond any useful setting,
# and keeps the value's nanoseconds (what consumers compute: int(seconds * 1e9),
# then now - that) within a signed 64-bit integer: 100 years is 3.2e18 ns,
# 2^63 is 9.2e18. Non-finite values (inf, nan) are refused by every parser.
_HOUR_S = 3600.0
_CENTURY_S = 100 * 365.25 * 86_400.0  # 3,155,760,000 s

# The smallest --max-message-bytes. Worker streams carry batches of up to
# 16 MiB each way: the sidecar cuts its assignment batches there
# (sidecar/_scheduler_worker.py, MAX_ASSIGNMENT_BATCH_BYTES) and the SDKs cut
# their completion batches there, and an item alone may be 4 MiB of inline
# payload and 1 MiB of failure. A message over the limit ends the whole stream
# (RESOURCE_EXHAUSTED), taking every attempt on it back. Twice 16 MiB leaves
# room for the envelopes and for the sidecar's estimate, which takes the
# characters of failure texts for bytes (so non-ASCII texts weigh up to 4x;
# the 64 MiB default has room for that too).
_MIN_MESSAGE_BYTES = 32 * 1024 * 1024


def _number(text: str, expected: str) -> float:
    """``text`` as a finite float (``-0.0`` made ``0.0``); ``expected`` words the error."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected {expected}, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"expected {expected}, got {text!r}")
    return value + 0.0  # -0.0 + 0.0 == +0.0: no negative zero reaches a consumer


def _seconds(high: float, *, describe: str) -> Callable[[str], float]:
    """A duration in seconds, above 0 and at most ``high`` (``describe`` names that bound in words)."""
    expected = f"a number of seconds above 0 and at most {high:.0f} ({describe})"

    def parse(text: str) -> float:
        value = _number(text, expected)
        if not 0 < value <= high:
            raise ValueError(f"expected {expected}, got {text!r}")
        return value

    return parse


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    expected = f"an integer from {low} to {high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:  # also a float ("5000.0"), or more than Python's 4,300 digits
            raise ValueError(f"expected {expected}, got {text!r}") from None
        if not low <= value <= high:
            raise ValueError(f"expected {expected}, got {text!r}")
        return value

    return parse


def _cpu_list(text: str) -> tuple[int, ...]:
    """``2`` or ``0,2`` or ``2-3``: CPUs this process may run on (empty: no pinning)."""
    text = text.strip()
    if not text:
        return ()
    if not hasattr(os, "sched_setaffinity"):
        raise ValueError("pinning to CPUs is supported on Linux only")
    allowed = os.sched_getaffinity(0)
    cpus: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        match = _CPU_RANGE.fullmatch(part)
        first = int(match.group(1)) if match else -1
        last = int(match.group(2) or first) if match else -1
        if match is None or last < first:
            raise ValueError(f"expected CPU numbers or ranges like 2-3, got {part!r}")
        if last > max(allowed):  # checked before the range is built: "0-999999999" must not take memory
            raise ValueError(f"CPU {last} is not available (allowed: {sorted(allowed)})")
        cpus.update(range(first, last + 1))
    if not cpus <= allowed:
        raise ValueError(f"CPUs {sorted(cpus - allowed)} are not available (allowed: {sorted(allowed)})")
    return tuple(sorted(cpus))


def _bounded_float(low: float, high: float) -> Callable[[str], float]:
    expected = f"a number from {low:g} to {high:g}"

    def parse(text: str) -> float:
        value = _number(text, expected)
        if not low <= value <= high:
            raise ValueError(f"expected {expected}, got {text!r}")
        return value

    return parse


# The files a model directory must hold, as are_core.embed.OnnxEmbedder looks
# for them (tests/unit/test_config.py pins the two lists together): one of the
# model files, and the tokenizer.
_MODEL_FILES = ("model.onnx", "onnx/model.onnx", "model_quantized.onnx", "onnx/model_quantized.onnx")
_TOKENIZER_FILE = "tokenizer.json"
_MODEL_MODULES = ("onnxruntime", "tokenizers")  # the embed-model extra


def check_model_directory(text: str) -> Path:
    """The model directory ``text`` names, checked as far as it can be without loading it.

    It must exist and hold a model file and ``tokenizer.json``, and the
    runtime (the ``embed-model`` extra) must be installed. A typo in a path
    is thus refused at start; a model that looks right but cannot be run is
    found when it is loaded.

    Raises:
        ValueError: It cannot be a model directory; the message says why.
    """
    root = Path(text).expanduser()
    if not root.is_dir():
        raise ValueError(f"model directory {text!r} does not exist or is not a directory")
    if not any((root / name).is_file() for name in _MODEL_FILES):
        raise ValueError(f"model directory {text!r} has no model file ({', '.join(_MODEL_FILES)})")
    if not (root / _TOKENIZER_FILE).is_file():
        raise ValueError(f"model directory {text!r} has no {_TOKENIZER_FILE}")
    missing = [name for name in _MODEL_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"a model directory needs {' and '.join(missing)}: install the `embed-model` extra")
    return root


def _embedder(*, off: frozenset[str]) -> Callable[[str], str]:
    """An embedder spec: ``lexical``, ``lexical:DIM``, ``model:DIR``, or one of ``off`` (made ``off``).

    A lexical spec is built once here (cheap) so that its dimension is
    checked exactly as the embedder checks it; a model directory is checked
    by :func:`check_model_directory`, and loaded by the capability at start.
    """
    usage = "'lexical', 'lexical:DIM', 'model:DIR' or 'off'"

    def parse(text: str) -> str:
        spec = text.strip()
        if spec.lower() in off:
            return "off"
        kind, sep, argument = spec.partition(":")
        if kind == "lexical":
            try:
                load_embedder(spec)
            except EmbedderError as error:
                raise ValueError(f"{error} (expected {usage})") from None
            return spec
        if kind == "model" and sep:
            if not argument.strip():
                raise ValueError(f"give the model directory, model:/path/to/dir, got {text!r}")
            check_model_directory(argument)
            return spec
        raise ValueError(f"expected {usage}, got {text!r}")

    return parse


def parse_cache_models(text: str) -> dict[str, Path]:
    """``NAME=DIR[,NAME=DIR...]`` (the ``cache_models`` option) as a mapping; empty items are skipped.

    Each name is an id (not ``lexical`` or ``caller``, the built-in
    embedders) given once, and each directory is checked by
    :func:`check_model_directory`; the models themselves are loaded when a
    namespace first needs them.

    Raises:
        ValueError: An item is not ``NAME=DIR``, a name is repeated, or a
            directory cannot be a model directory.
    """
    models: dict[str, Path] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, directory = item.partition("=")
        name, directory = name.strip(), directory.strip()
        if not sep or not ID.fullmatch(name) or not directory or name in {"lexical", "caller"}:
            raise ValueError(f"expected NAME=DIR[,NAME=DIR...] (NAME not lexical or caller), got {item!r}")
        if name in models:
            raise ValueError(f"model {name!r} is named twice")
        try:
            models[name] = check_model_directory(directory)
        except ValueError as error:
            raise ValueError(f"model {name!r}: {error}") from None
    return models


def _cache_models(text: str) -> str:
    parse_cache_models(text)
    return text.strip()


def _token_file(text: str) -> Path | None:
    return Path(text) if text else None


OPTIONS: tuple[Option, ...] = (
    Option(
        "config",
        None,
        "TOML file with any of these settings (keys are the option names with underscores).",
        _optional_path,
        "PATH",
    ),
    Option(
        "listen",
        "127.0.0.1:50051",
        "TCP address to listen on, HOST:PORT; port 0 picks a free port; 'off' disables TCP.",
        _listen,
        "HOST:PORT",
    ),
    Option(
        "uds",
        None,
        "Also listen on this Unix socket path (created with owner-only permissions); a path a "
        "process listens on is refused, a stale socket replaced.",
        _optional_path,
        "PATH",
    ),
    Option(
        "data_dir",
        "./.are-data",
        "Folder holding the LMDB environment and vector indexes; locked against a second sidecar.",
        Path,
        "PATH",
    ),
    Option(
        "durability",
        "sync",
        "'sync': every acknowledged change is fsynced first; 'relaxed': no fsync, "
        "a power loss may drop the last seconds (a process crash loses nothing).",
        _choice("sync", "relaxed"),
        "MODE",
    ),
    Option(
        "token_file",
        None,
        "File whose first line is the bearer token every call must carry (UTF-8, a byte order mark "
        "ignored): printable ASCII without spaces. The token's sources, highest first: --token-file, "
        "ARE_TOKEN_FILE, ARE_TOKEN (the token itself), the TOML file's token_file.",
        _token_file,
        "PATH",
    ),
    Option(
        "tls_cert",
        None,
        "PEM certificate chain; with --tls-key, serve TLS instead of plaintext.",
        _optional_path,
        "PATH",
    ),
    Option("tls_key", None, "PEM private key for --tls-cert.", _optional_path, "PATH"),
    Option(
        "log_format",
        "text",
        "Log lines as readable 'text' or 'json' (one object per line).",
        _choice("text", "json"),
        "FORMAT",
    ),
    Option(
        "log_level",
        "info",
        "Least severe log level written.",
        _choice("debug", "info", "warning", "error"),
        "LEVEL",
    ),
    Option(
        "shutdown_grace_s",
        10.0,
        "Seconds (above 0, at most 3600) in-flight calls get to finish after SIGTERM/SIGINT before "
        "they are cancelled.",
        _seconds(_HOUR_S, describe="an hour"),
        "SECONDS",
    ),
    Option(
        "max_message_bytes",
        64 * 1024 * 1024,
        "Largest request or response message, in bytes (32 MiB to 256 MiB): worker streams carry "
        "batches of up to 16 MiB each way; payloads over 4 MiB travel as blobs.",
        _bounded_int(_MIN_MESSAGE_BYTES, 256 * 1024 * 1024),
        "BYTES",
    ),
    Option(
        "max_concurrent_streams",
        1024,
        "Most concurrent calls per client connection (1 to 65536).",
        _bounded_int(1, 65536),
        "N",
    ),
    Option(
        "keepalive_time_s",
        60.0,
        "Ping a client connection after this many quiet seconds (1 to 7200); one that does not "
        "answer within --keepalive-timeout-s is closed, so a hung or vanished worker frees its "
        "stream and shows as disconnected. Clients may ping the sidecar as often as once a second.",
        _bounded_float(1.0, 7200.0),
        "SECONDS",
    ),
    Option(
        "keepalive_timeout_s",
        20.0,
        "Seconds a keepalive ping waits for its answer before the connection is closed (1 to 600).",
        _bounded_float(1.0, 600.0),
        "SECONDS",
    ),
    Option(
        "cpu_affinity",
        None,
        "Run the sidecar (all its threads) on these CPUs only, e.g. '3', '2,3' or '2-3' (Linux); "
        "empty: wherever the OS schedules it. A core the agents do not use keeps the sidecar's "
        "caches warm between calls (benchmarks/README.md, --pin).",
        _cpu_list,
        "CPUS",
    ),
    Option(
        "ready_file",
        None,
        "Once serving, write the bound endpoints as JSON to this file (for supervisors and tests); "
        "its folder must exist.",
        _optional_path,
        "PATH",
    ),
    Option(
        "otlp_endpoint",
        None,
        "Export traces (a span per task attempt) with OTLP/gRPC to this collector, e.g. "
        "http://127.0.0.1:4317; when unset, OTEL_EXPORTER_OTLP_ENDPOINT is used; neither: no export; "
        "'off': no export, whatever the OTEL_* variables say.",
        str,
        "URL",
    ),
    Option(
        "otlp_max_export_bytes",
        3 * 1024 * 1024,
        "Largest OTLP export request, encoded, in bytes (64 KiB to 64 MiB): batches of spans are split "
        "to stay under it, and a span larger on its own keeps the events that fit and is marked "
        "are.span.truncated. Keep it under the collector's receive limit (4 MiB by default: "
        "max_recv_msg_size_mib), which refuses a larger request and every span in it.",
        _bounded_int(64 * 1024, 64 * 1024 * 1024),
        "BYTES",
    ),
    Option(
        "otlp_max_queue_bytes",
        64 * 1024 * 1024,
        "Memory the spans waiting for OTLP export may hold, estimated from their attributes and events, "
        "in bytes (1 MiB to 16 GiB); the queue also holds at most 65,536 spans. A span that finds it "
        "full (the collector is down or slower than the spans come) is dropped and counted: a warning "
        "says how many, at most every 30 s while it lasts, and the shutdown line gives the total.",
        _bounded_int(1024 * 1024, 16 * 1024 * 1024 * 1024),
        "BYTES",
    ),
    Option(
        "event_retention_count",
        10_000_000,
        "Most events the flight recorder keeps; the oldest are dropped first.",
        _bounded_int(1, 10**12),
        "N",
    ),
    Option(
        "event_retention_age_s",
        7 * 86_400.0,
        "Seconds (above 0, at most 100 years) the flight recorder keeps an event, from when the sidecar "
        "recorded it (not the event time a worker reported, whose clock may be off).",
        _seconds(_CENTURY_S, describe="100 years"),
        "SECONDS",
    ),
    Option(
        "event_stream_buffer",
        10_000,
        "Unread events one StreamEvents subscriber may buffer (and at most 64 MiB of them) before it is "
        "told it missed some.",
        _bounded_int(16, 1_000_000),
        "N",
    ),
    Option(
        "state_keep_versions",
        1000,
        "State versions kept per workflow (besides those younger than --state-keep-age-s) "
        "unless its WorkflowSpec.state_retention says otherwise.",
        _bounded_int(1, 10**9),
        "N",
    ),
    Option(
        "state_keep_age_s",
        7 * 86_400.0,
        "Seconds (above 0, at most 100 years) a state version is kept even beyond --state-keep-versions.",
        _seconds(_CENTURY_S, describe="100 years"),
        "SECONDS",
    ),
    Option(
        "blob_unreferenced_ttl_s",
        86_400.0,
        "Seconds (above 0, at most 100 years) after its upload that a blob nothing references (no "
        "owning workflow, task payload, memory note or cache entry) is kept; a background sweep then "
        "deletes it.",
        _seconds(_CENTURY_S, describe="100 years"),
        "SECONDS",
    ),
    Option(
        "memory_embedder",
        "lexical",
        "Embedder of workflow memory texts: 'lexical', 'lexical:DIM' (DIM 16 to 4096), 'model:DIR' "
        "(a directory holding model.onnx and tokenizer.json, loaded at start; needs the embed-model "
        "extra), or 'off' (callers send vectors).",
        _embedder(off=frozenset({"off", "none", ""})),
        "SPEC",
    ),
    Option(
        "router_embedder",
        "lexical",
        "Embedder of agent descriptions, RouteTask texts and RouteModel prompts: 'lexical', "
        "'lexical:DIM' (DIM 16 to 4096), 'model:DIR' (as for --memory-embedder), or 'off' (callers "
        "send vectors of --router-dimension).",
        _embedder(off=frozenset({"off"})),
        "SPEC",
    ),
    Option(
        "router_dimension",
        256,
        "Dimension of the router's vectors when --router-embedder is 'off' (else the embedder's).",
        _bounded_int(1, 65_536),
        "N",
    ),
    Option(
        "router_threshold",
        0.5,
        "Default cosine similarity an agent needs in RouteTask and intent routing, in [-1, 1].",
        _bounded_float(-1.0, 1.0),
        "SIMILARITY",
    ),
    Option(
        "router_cost_weight",
        1.0,
        "Default weight of cost in cost-biased routing, in [0, 1]; 1 picks the cheapest agent "
        "above the threshold.",
        _bounded_float(0.0, 1.0),
        "WEIGHT",
    ),
    Option(
        "router_mode",
        "cost_biased",
        "RouteTask's mode when a request leaves it unspecified: 'cost_biased' or 'best_match'.",
        _choice("cost_biased", "best_match"),
        "MODE",
    ),
    Option(
        "router_model_exploration",
        0.05,
        "Share of RouteModel calls, in [0, 1], that go to a cheaper model with too little history "
        "near the prompt (fewer than 5 similar outcomes), so that it gets the outcomes it needs to "
        "be estimated; 0 never explores.",
        _bounded_float(0.0, 1.0),
        "SHARE",
    ),
    Option(
        "router_reroute_grace_s",
        10.0,
        "Seconds (0 to 3600) a worker class may go unserved (no stream worker, no unary poll) before "
        "the intent tasks waiting on it are routed to another class; counted from the start for a "
        "class not back yet after a restart, and from the end of its last poll (or of the last "
        "attempt a poller held, or its last heartbeat: a poller silent for the grace while it holds "
        "an attempt counts as gone) for one served by unary polls. 0 re-routes at once (a second "
        "after that end, for those).",
        _bounded_float(0.0, 3600.0),
        "SECONDS",
    ),
    Option(
        "max_open_tasks",
        1_000_000,
        "Most tasks of open (running or cancelling) workflows held in memory, 1 to 10^9: each takes "
        "about 1.3 KB (2 KB resident) plus its inline input and output, so the default is about 2 GB "
        "at most besides those payloads (bounded by --max-open-bytes). SpawnTasks that would go over, and "
        "SubmitWorkflow and ForkWorkflow that would go over 90% of it (the rest is kept so that "
        "running workflows can still spawn; a larger workflow is admitted when nothing else is open), "
        "are refused with RESOURCE_EXHAUSTED, reason RESOURCE_LIMIT (metadata limit=max_open_tasks, "
        "share=new_work or all) and a retry hint until workflows close; a data folder holding more "
        "(the bound was lowered) still starts and serves them all.",
        _bounded_int(1, 10**9),
        "N",
    ),
    Option(
        "max_open_bytes",
        1 << 30,
        "Most bytes of inline payloads (task inputs, cache-key prompts and condition values; once "
        "reported, outputs, the last heartbeat details and the last failure with its causes; a blob "
        "reference counts none) that open workflows hold in memory, 1 to 2^40. The default, 1 GiB, "
        "keeps their payloads to about a gigabyte of memory beside the tasks themselves, yet holds "
        "128 tasks at the largest inline input and output (4 MiB each), or a million tasks at 1 KiB. "
        "Work that would go over is refused as for --max-open-tasks (metadata limit=max_open_bytes); "
        "a workflow larger than it alone is INVALID_ARGUMENT, LIMIT_EXCEEDED (send large payloads as "
        "blobs). A task's output, heartbeat or failure is never refused for it: it is counted even "
        "past the bound, and new work is refused until workflows close.",
        _bounded_int(1, 1 << 40),
        "BYTES",
    ),
    Option(
        "cache_models",
        "",
        "Local embedding models that cache namespaces may name as their embedder, as "
        "NAME=DIR[,NAME=DIR...] (ONNX model directories with tokenizer.json, checked at start and "
        "loaded when a namespace first needs them; needs the embed-model extra).",
        _cache_models,
        "MODELS",
    ),
    Option(
        "cache_search",
        "inline",
        "How semantic lookups search: 'inline' (each on the event loop) or 'coalesced' (concurrent "
        "lookups batched into one native call in a worker thread; pays only with idle cores: "
        "compare `python -m benchmarks cache --concurrency 8` with and without ARE_CACHE_SEARCH=coalesced).",
        _choice("inline", "coalesced"),
        "MODE",
    ),
    Option(
        "cache_hot_bytes",
        64 * 1024 * 1024,
        "Memory for the bodies of recently answered cache entries, so that repeated hits skip the "
        "LMDB read (least recently used dropped first); 0 reads every hit from LMDB.",
        _bounded_int(0, 1 << 40),
        "BYTES",
    ),
    Option(
        "cache_index_at_start",
        4096,
        "Vectors missing from a cache namespace's saved index (after a crash, or with no index file) "
        "that are indexed before the sidecar serves; past that many the sidecar serves at once and "
        "indexes them in the background (the semantic tier answers from those indexed so far).",
        _bounded_int(0, 1 << 40),
        "N",
    ),
    Option(
        "cache_checkpoint_changes",
        0,
        "Entries changed in a cache namespace before its index is written again, from a forked "
        "child, so that a start after a crash has few vectors to index again; 0 means 4096 or a "
        "twentieth of the index, whichever is more (and at least every ten minutes while it changes).",
        _bounded_int(0, 1 << 40),
        "N",
    ),
    Option(
        "cache_repair_changes",
        0,
        "Entries with vectors removed or replaced in a cache namespace (evicted, expired, "
        "invalidated, stored again) before its index is swept, from a forked child at idle "
        "priority, for entries no search reaches by their own vector, which are then inserted "
        "again; 0 means 1000 or a tenth of the index, whichever is more. Namespaces of 2048 "
        "vectors or fewer are searched exactly and never swept.",
        _bounded_int(0, 1 << 40),
        "N",
    ),
    Option(
        "cache_huge_pages",
        "on",
        "'on': after a start, copy each cache namespace's saved index from its file's mapping into "
        "memory in transparent huge pages, in the background (semantic searches about a fifth faster at "
        "1M entries, for the index's size in resident memory); 'off' serves from the file's mapping "
        "(page cache: shared and reclaimable). Nothing changes where huge pages are off (`never`).",
        _choice("on", "off"),
        "on|off",
    ),
)

_BY_NAME = {option.name: option for option in OPTIONS}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds one flag per option; defaults are shown but not applied by argparse."""
    for option in OPTIONS:
        default = "none" if option.default is None else option.default
        parser.add_argument(
            option.flag,
            dest=option.name,
            metavar=option.metavar,
            default=argparse.SUPPRESS,
            # argparse expands %-formats in help texts: a literal "90%" must reach it as "90%%".
            help=f"{option.help} [env {option.env_var}; default: {default}]".replace("%", "%%"),
        )


def load_config(flags: Mapping[str, str], environ: Mapping[str, str] | None = None) -> Config:
    """Resolves the configuration from flags, environment and TOML file.

    Args:
        flags: The flags given on the command line, by option name, as text.
        environ: The environment; ``os.environ`` when None.

    Raises:
        ConfigError: A setting is unknown or invalid; the message names the
            flag, variable or TOML key and says what was expected.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {
        option.name: option.parse(option.default) if isinstance(option.default, str) else option.default
        for option in OPTIONS
    }

    sources: dict[str, str] = {}  # where each setting given came from, to name it in an error
    config_path: Path | None = None
    config_source = "--config" if "config" in flags else "ARE_CONFIG"
    if "config" in flags:
        config_path = _parse(_BY_NAME["config"], flags["config"], "--config")
    elif env.get("ARE_CONFIG"):
        config_path = _parse(_BY_NAME["config"], env["ARE_CONFIG"], "ARE_CONFIG")
    file_values: dict[str, Any] = {}
    if config_path is not None:
        file_values = _read_toml(config_path, config_source)
        values.update(file_values)
        sources.update({key: f"{key!r} in {str(config_path)!r}" for key in file_values})

    for option in OPTIONS:
        if env.get(option.env_var) and option.name != "config":  # empty counts as unset
            values[option.name] = _parse(option, env[option.env_var], option.env_var)
            sources[option.name] = option.env_var
    for name, text in flags.items():
        values[name] = _parse(_BY_NAME[name], text, _BY_NAME[name].flag)
        sources[name] = _BY_NAME[name].flag

    values.pop("token_file")
    token = _resolve_token(flags, env, file_values.get("token_file"), f"'token_file' in {str(config_path)!r}")
    if values["ready_file"] is not None:
        _check_ready_file(values["ready_file"], sources["ready_file"])
    if (values["tls_cert"] is None) != (values["tls_key"] is None):
        raise ConfigError("--tls-cert and --tls-key must be given together")
    if values["listen"] is None and values["uds"] is None:
        raise ConfigError("--listen is 'off' and no --uds is given: the sidecar would be unreachable")
    return Config(
        listen=values["listen"],
        uds=values["uds"],
        data_dir=values["data_dir"],
        durability=values["durability"],
        token=token,
        tls_cert=values["tls_cert"],
        tls_key=values["tls_key"],
        log_format=LogFormat(values["log_format"]),
        log_level=values["log_level"],
        shutdown_grace_s=values["shutdown_grace_s"],
        max_message_bytes=values["max_message_bytes"],
        max_concurrent_streams=values["max_concurrent_streams"],
        keepalive_time_s=values["keepalive_time_s"],
        keepalive_timeout_s=values["keepalive_timeout_s"],
        cpu_affinity=values["cpu_affinity"] or (),
        ready_file=values["ready_file"],
        config_file=config_path,
        otlp_endpoint=values["otlp_endpoint"] or None,
        otlp_max_export_bytes=values["otlp_max_export_bytes"],
        otlp_max_queue_bytes=values["otlp_max_queue_bytes"],
        event_retention_count=values["event_retention_count"],
        event_retention_age_s=values["event_retention_age_s"],
        event_stream_buffer=values["event_stream_buffer"],
        state_keep_versions=values["state_keep_versions"],
        state_keep_age_s=values["state_keep_age_s"],
        blob_unreferenced_ttl_s=values["blob_unreferenced_ttl_s"],
        memory_embedder=values["memory_embedder"],
        router_embedder=values["router_embedder"],
        router_dimension=values["router_dimension"],
        router_threshold=values["router_threshold"],
        router_cost_weight=values["router_cost_weight"],
        router_mode=values["router_mode"],
        router_model_exploration=values["router_model_exploration"],
        router_reroute_grace_s=values["router_reroute_grace_s"],
        max_open_tasks=values["max_open_tasks"],
        max_open_bytes=values["max_open_bytes"],
        cache_models=values["cache_models"],
        cache_search=values["cache_search"],
        cache_hot_bytes=values["cache_hot_bytes"],
        cache_index_at_start=values["cache_index_at_start"],
        cache_checkpoint_changes=values["cache_checkpoint_changes"],
        cache_repair_changes=values["cache_repair_changes"],
        cache_huge_pages=values["cache_huge_pages"],
    )


def _parse(option: Option, text: str, source: str) -> Any:
    try:
        return option.parse(text)
    except ValueError as error:
        raise ConfigError(f"invalid value for {source}: {error}") from None


def _read_toml(path: Path, source: str) -> dict[str, Any]:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot read config file {str(path)!r} ({source}): {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"config file {str(path)!r} ({source}) is not UTF-8 text: byte {error.object[error.start]:#04x} "
            f"at offset {error.start}"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {error}") from None
    values: dict[str, Any] = {}
    for key, raw in document.items():
        option = _BY_NAME.get(key)
        if option is None or key == "config":
            raise ConfigError(f"unknown setting {key!r} in config file {str(path)!r}")
        if isinstance(raw, dict | list | bool):
            raise ConfigError(f"invalid value for {key!r} in {str(path)!r}: expected a string or number")
        values[key] = _parse(option, str(raw), f"{key!r} in {str(path)!r}")
    return values


# What a bearer token may hold: RFC 6750's b64token is a subset, and anything
# else (a space, a control character, a non-ASCII letter) is a value gRPC
# clients refuse to send in metadata, or send as something else, so that every
# call would fail.
_TOKEN = re.compile(r"[\x21-\x7e]+")


def _resolve_token(
    flags: Mapping[str, str], env: Mapping[str, str], file_token_file: Path | None, file_source: str
) -> str | None:
    """The bearer token, from the first of its sources that is set, highest first.

    The sources follow the documented precedence (flag, environment, TOML
    file): ``--token-file``, then ``ARE_TOKEN_FILE``, then ``ARE_TOKEN`` (the
    token itself), then the TOML file's ``token_file`` (``file_token_file``,
    named ``file_source`` in errors). An empty value counts as unset.
    """
    option = _BY_NAME["token_file"]
    for path_text, source in (
        (flags.get("token_file"), option.flag),
        (env.get(option.env_var), option.env_var),
    ):
        path = _parse(option, path_text, source) if path_text else None
        if path is not None:
            return _read_token_file(path, source)
    if env.get("ARE_TOKEN"):
        token = env["ARE_TOKEN"].strip()
        if not token:
            raise ConfigError("ARE_TOKEN holds only whitespace: give the token, or leave it empty for none")
        _check_token(token, "ARE_TOKEN")
        return token
    if file_token_file is not None:
        return _read_token_file(file_token_file, file_source)
    return None


def _read_token_file(path: Path, source: str) -> str:
    """The token on the first line of ``path`` (a byte order mark and surrounding whitespace dropped)."""
    named = f"token file {str(path)!r} ({source})"
    try:
        # utf-8-sig: a byte order mark (as Windows editors write) is not part of the token.
        text = path.read_text(encoding="utf-8-sig") if path.stat().st_size else ""
    except OSError as error:
        raise ConfigError(f"cannot read {named}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{named} is not UTF-8 text: byte {error.object[error.start]:#04x} at offset {error.start}"
        ) from None
    lines = text.splitlines()
    token = lines[0].strip() if lines else ""
    if not token:
        raise ConfigError(f"{named} is empty" if not text.strip() else f"{named} has an empty first line")
    _check_token(token, named)
    return token


def _check_token(token: str, source: str) -> None:
    """Refuses a token no gRPC client can send, naming its source but not showing the secret."""
    if _TOKEN.fullmatch(token):
        return
    position, char = next((i, c) for i, c in enumerate(token) if not "\x21" <= c <= "\x7e")
    if char == " ":
        what = "a space"
    elif char < " " or char == "\x7f":
        what = "a control character"
    else:
        what = "a character that is not ASCII"
    raise ConfigError(
        f"the token from {source} holds {what} (character {position + 1} of {len(token)}): a bearer "
        "token must be printable ASCII without spaces (RFC 6750), or no gRPC client can send it"
    )


def _check_ready_file(path: Path, source: str) -> None:
    """Refuses a ready file that could not be written once serving: no folder to hold it, or a folder."""
    folder = path.parent
    if not folder.is_dir():
        raise ConfigError(
            f"invalid value for {source}: its folder {str(folder)!r} does not exist or is not a folder"
        )
    if path.is_dir():
        raise ConfigError(f"invalid value for {source}: {str(path)!r} is a folder, not a file")


def options_table_markdown() -> str:
    """The configuration table for the README, generated from :data:`OPTIONS`."""
    rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for option in OPTIONS:
        default = "none" if option.default is None else f"`{option.default}`"
        rows.append(f"| `{option.flag}` | `{option.env_var}` | {default} | {option.help} |")
    rows.append(
        "| | `ARE_TOKEN` | none | The bearer token itself "
        "(prefer `--token-file`; a flag would show in `ps`). |"
    )
    return "\n".join(rows)
