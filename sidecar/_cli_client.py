"""The client commands of ``are``: talk to a running sidecar and show the answers with rich.

Every command connects with ``--target`` (``ARE_TARGET``, default
``127.0.0.1:50051``; ``unix:PATH`` for a socket; checked before connecting),
``--token`` (``ARE_TOKEN``) and, for a TLS sidecar, ``--tls`` (``ARE_TLS``,
the system's roots) or ``--ca-file`` (``ARE_CA_FILE``, PEM roots; implies
``--tls``). An empty ``ARE_*`` variable counts as unset. An error answer is
printed with its code, reason and field violations and exits 1; a service
this sidecar does not implement yet prints the server's UNIMPLEMENTED message
and exits 1 too. SIGTERM or SIGHUP ends a command cleanly (a live display
restores the terminal) with status 128 + the signal's number; Ctrl-C exits 130.

Text from the sidecar or the command line (ids, messages, descriptions) is
printed as it is, never read as rich markup.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import functools
import ipaddress
import json
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import click
import msgspec
import yaml
from google.protobuf import json_format
from rich.console import Console, RenderableType
from rich.json import JSON
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.status import Status
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from are_sdk import Client, NotFoundError, RpcError, UnavailableError
from are_sdk._payload import is_json_content_type
from are_sdk._proto.are.v1 import (
    cache_service_pb2,
    common_pb2,
    event_pb2,
    scheduler_service_pb2,
    state_service_pb2,
    task_pb2,
    trace_service_pb2,
    workflow_pb2,
)

__all__ = ["register_client_commands"]

_MAX_ROWS = 1000  # cards `are agents` prints at most
_PIPED_MAX_WIDTH = 1000  # columns a table or tree printed to a pipe or file may take
_TREE_DEPTH = 64  # levels `are status` nests at most; deeper tasks are listed flat
_TREE_LABEL_MIN = 30  # columns a task's label keeps at the deepest level shown
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # end a command as Ctrl-C does
_WORKFLOW_CHECK_S = 5.0  # how often `trace --follow` asks whether a quiet workflow has ended
_TAIL_WINDOW = 1000  # sequences `events --limit N` reads back from the log's end first (at least N)
_EVENTS_LIMIT = 100  # events `are events` shows by default: the most recent
_EXIT_GRACE_S = 10.0  # how long a command that has printed its error may take to end (see _ExitGuard)
_TERMINAL_WORKFLOW_EVENTS = frozenset(
    {
        event_pb2.EVENT_TYPE_WORKFLOW_COMPLETED,
        event_pb2.EVENT_TYPE_WORKFLOW_FAILED,
        event_pb2.EVENT_TYPE_WORKFLOW_CANCELLED,
        event_pb2.EVENT_TYPE_WORKFLOW_DELETED,
    }
)
_TERMINAL_WORKFLOW_STATES = frozenset(
    {
        workflow_pb2.WORKFLOW_STATE_COMPLETED,
        workflow_pb2.WORKFLOW_STATE_FAILED,
        workflow_pb2.WORKFLOW_STATE_CANCELLED,
    }
)
_STATE_STYLES = {
    "COMPLETED": "green",
    "RUNNING": "cyan",
    "SCHEDULED": "blue",
    "PENDING": "dim",
    "BACKING_OFF": "yellow",
    "AWAITING_APPROVAL": "magenta",
    "FAILED": "red",
    "REJECTED": "red",
    "CANCELLED": "red",
    "CANCELLING": "yellow",
    "SKIPPED": "dim",
}

# Neither console reads ":name:" as an emoji code: ids and messages are printed as they are.
# Error lines soft-wrap: a pipe or a log file gets each one whole, not cut at 80 columns.
out = Console(highlight=False, emoji=False)
err = Console(stderr=True, highlight=False, emoji=False, soft_wrap=True)


def _print_wide(renderable: RenderableType) -> None:
    """Prints ``renderable`` on stdout; to a pipe or a file, at the width it needs.

    Printed to a pipe or a file (no terminal, no ``COLUMNS``), rich would
    squeeze a table or a tree into 80 columns, cutting every header and cell
    short and wrapping labels mid-word; it takes up to ``_PIPED_MAX_WIDTH``.
    """
    if _piped():
        wanted = Measurement.get(out, out.options.update(max_width=_PIPED_MAX_WIDTH), renderable).maximum
        if wanted > out.width:
            Console(highlight=False, emoji=False, width=wanted).print(renderable)
            return
    out.print(renderable)


def _piped() -> bool:
    return not out.is_terminal and "COLUMNS" not in os.environ


def _print_table(table: Table, *, empty: str) -> bool:
    """Prints ``table`` (see :func:`_print_wide`), or ``empty`` on stderr when it has no rows.

    Returns:
        Whether the table had any rows.
    """
    if not table.row_count:
        err.print(empty)
        return False
    _print_wide(table)
    return True


class _Settings:
    """The connection settings shared by every client command."""

    def __init__(
        self,
        target: str,
        token: str | None,
        connect_timeout: float,
        *,
        tls: bool = False,
        root_certificates: bytes | None = None,
    ) -> None:
        self.target = target
        self.token = token
        self.connect_timeout = connect_timeout
        self.tls = tls
        self.root_certificates = root_certificates


def _target_problem(target: str) -> str | None:
    """What is wrong with a gRPC target the CLI accepts, or None.

    grpc takes a target its resolver refuses (an empty host: ``""``,
    ``dns:``, ``dns:///``; an ``ipv4:`` or ``ipv6:`` address that is not one
    or has no port) only to fail to connect, and the channel it leaves
    behind then blocks the process's exit: such a target is refused before
    any channel is made (and :class:`_ExitGuard` ends a process that hangs
    so anyway).
    """
    expected = "expected HOST:PORT, unix:PATH or dns:[//AUTHORITY/]HOST:PORT"
    if not target:
        return f"{expected}, got an empty target"
    scheme, sep, rest = target.partition(":")
    if sep and scheme in {"unix", "unix-abstract"}:
        path = rest.removeprefix("//") if scheme == "unix" else rest
        return None if path else f"{expected}: {target!r} names no socket path"
    if sep and scheme in {"dns", "ipv4", "ipv6"} and rest.startswith("//"):
        rest = rest[2:].partition("/")[2]  # dns://AUTHORITY/HOST:PORT, ipv4:///ADDRESS:PORT
    if sep and scheme in {"ipv4", "ipv6"}:
        return _addresses_problem(scheme, rest, f"{expected}, or {scheme}:ADDRESS:PORT[,...]")
    host, port = _split_host_port(rest if sep and scheme == "dns" else target)
    if port is None or not host.strip("[]"):
        return f"{expected}, got {target!r}"
    return None


def _addresses_problem(scheme: str, addresses: str, expected: str) -> str | None:
    """What is wrong with the comma-separated ``ADDRESS:PORT`` list of an ipv4: or ipv6: target, or None."""
    for address in addresses.split(","):
        host, port = _split_host_port(address)
        if scheme == "ipv6":
            if not (host.startswith("[") and host.endswith("]")) or port is None:
                return f"{expected}: write an IPv6 address with its port as [ADDRESS]:PORT, got {address!r}"
            host = host[1:-1]
        try:
            ipaddress.IPv4Address(host) if scheme == "ipv4" else ipaddress.IPv6Address(host)
        except ValueError:
            return f"{expected}: {host!r} is no {scheme} address"
        if port is None:
            return f"{expected}: {address!r} has no port"
    return None


def _split_host_port(address: str) -> tuple[str, int | None]:
    """``HOST:PORT`` as the host and the port (None when it is not a port number)."""
    host, sep, port = address.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        return address, None
    return host, int(port)


def _check_target(ctx: click.Context, param: click.Parameter, value: str) -> str:
    del ctx, param
    target = value.strip()
    problem = _target_problem(target)
    if problem:
        raise click.BadParameter(f"{problem} [--target or ARE_TARGET]")
    return target


def _read_ca_file(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError as error:
        raise click.BadParameter(
            f"cannot read {str(path)!r}: {error.strerror}", param_hint="--ca-file"
        ) from None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise click.BadParameter(f"{str(path)!r} holds no PEM certificate", param_hint="--ca-file")
    return data


def _client_command(function: Callable[..., Awaitable[int | None]]) -> Callable[..., None]:
    """Adds the connection options and runs the async body with a connected client."""

    @click.option(
        "--target",
        envvar="ARE_TARGET",
        default="127.0.0.1:50051",
        show_default=True,
        callback=_check_target,
        help="The sidecar: HOST:PORT or unix:PATH [env ARE_TARGET].",
    )
    @click.option("--token", envvar="ARE_TOKEN", default=None, help="Bearer token [env ARE_TOKEN].")
    @click.option(
        "--tls",
        is_flag=True,
        envvar="ARE_TLS",
        help="Connect with TLS, trusting the system's roots [env ARE_TLS].",
    )
    @click.option(
        "--ca-file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        envvar="ARE_CA_FILE",
        default=None,
        help="Connect with TLS, trusting the PEM certificates in FILE (implies --tls) [env ARE_CA_FILE].",
        metavar="FILE",
    )
    @click.option(
        "--connect-timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=5.0,
        show_default=True,
        help="Seconds to wait for the sidecar.",
    )
    @functools.wraps(function)
    def wrapper(
        target: str,
        token: str | None,
        tls: bool,
        ca_file: Path | None,
        connect_timeout: float,
        **kwargs: Any,
    ) -> None:
        settings = _Settings(
            target, token, connect_timeout, tls=tls, root_certificates=_read_ca_file(ca_file)
        )
        guard = _ExitGuard()
        try:
            code = asyncio.run(_run(settings, functools.partial(function, **kwargs), guard))
        except KeyboardInterrupt:
            code = 130
        finally:
            guard.disarm()
        raise SystemExit(code)

    return wrapper


class _ExitGuard:
    """Ends the process with its status if, once an error is printed, it does not end on its own.

    A channel grpc could not set up (a target its resolver refuses that
    :func:`_target_problem` let through) is freed with the error that
    reports it, and its finalizer then waits forever on grpc's poller
    thread. Armed when the error has been printed and disarmed when the
    command returns, the guard flushes the output and exits after
    ``_EXIT_GRACE_S`` only if the command never returned.
    """

    def __init__(self) -> None:
        self._timer: threading.Timer | None = None

    def arm(self, code: int) -> None:
        self._timer = threading.Timer(_EXIT_GRACE_S, self.exit, (code,))
        self._timer.daemon = True
        self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    @staticmethod
    def exit(code: int) -> None:
        """Flushes the output and ends the process at once with status ``code``."""
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


async def _run(
    settings: _Settings, body: Callable[[Client], Awaitable[int | None]], guard: _ExitGuard
) -> int:
    """Runs ``body`` with a connected client; returns the exit status.

    SIGTERM and SIGHUP cancel the body, as Ctrl-C does, so that a live
    display (``--follow``, ``submit --wait``) closes and shows the cursor
    again; the status is then 128 + the signal's number, as a shell reports
    it. A second signal ends the process at once.
    """
    main = asyncio.current_task()
    assert main is not None
    received: list[int] = []

    def on_signal(signum: int) -> None:
        if received:  # a second signal: the first has not ended the command
            _ExitGuard.exit(128 + received[0])
        received.append(signum)
        main.cancel()

    loop = asyncio.get_running_loop()
    previous = {signum: signal.getsignal(signum) for signum in _STOP_SIGNALS}
    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        async with await Client.connect(
            settings.target,
            token=settings.token,
            tls=settings.tls,
            root_certificates=settings.root_certificates,
            timeout=settings.connect_timeout,
        ) as client:
            return (await body(client)) or 0
    except asyncio.CancelledError:
        if not received:
            raise
        main.uncancel()
        return 128 + received[0]
    except UnavailableError as error:
        err.print(Text.assemble(("error:", "red"), f" {error.message or error}"))
        guard.arm(1)  # before the error, and any channel its traceback holds, is freed
        return 1
    except RpcError as error:
        _print_rpc_error(error)
        guard.arm(1)
        return 1
    finally:
        for signum, handler in previous.items():
            loop.remove_signal_handler(signum)
            if handler is not None:  # None: set outside Python, and cannot be put back
                signal.signal(signum, handler)


def _print_rpc_error(error: RpcError) -> None:
    reason = f" ({error.reason})" if error.reason else ""
    err.print(Text.assemble(("error:", "red"), f" {error.code.name}{reason}: {error.message}"))
    for violation in error.field_violations:
        err.print(Text.assemble("  ", (violation.field, "bold"), f": {violation.description}"))


def register_client_commands(group: click.Group) -> None:
    """Adds the client commands to the ``are`` group."""
    for command in (
        submit,
        status,
        result,
        trace,
        events,
        workflows,
        cancel,
        approve,
        reject,
        approvals,
        state,
        pools,
        cache,
        agents,
        route,
    ):
        group.add_command(command)


# Formatting helpers


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    try:
        return str(enum.Name(value)).removeprefix(prefix)
    except ValueError:
        return str(value)


def _styled_state(name: str) -> Text:
    return Text(name, style=_STATE_STYLES.get(name, ""))


def _format_time(timestamp: Any) -> str:
    if not timestamp.seconds and not timestamp.nanos:
        return "-"
    moment = datetime.fromtimestamp(timestamp.seconds + timestamp.nanos / 1e9, tz=UTC).astimezone()
    return moment.strftime("%H:%M:%S.%f")[:-3]


def _seconds(timestamp: Any) -> float:
    return float(timestamp.seconds + timestamp.nanos / 1e9)


def _format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{rest:02d}s"


def _attribute(value: event_pb2.AttributeValue) -> str:
    kind = value.WhichOneof("value")
    return "" if kind is None else str(getattr(value, kind))


def event_line(event: event_pb2.Event, *, with_workflow: bool = False) -> Text:
    """One event as a coloured line: time, sequence, type, [workflow,] task/attempt and details.

    ``with_workflow`` shows the workflow id ("-" for an event of none), for
    listings that mix workflows: a task id alone does not say whose it is.
    """
    kind = _enum_name(event_pb2.EventType, event.event_type, "EVENT_TYPE_")
    style = "red" if ("FAILED" in kind or "REJECTED" in kind or "TIMED_OUT" in kind) else ""
    if kind.endswith(("COMPLETED", "APPROVED", "CACHE_HIT")):
        style = "green"
    elif kind.endswith(("DISPATCHED", "SUBMITTED")):
        style = "cyan"
    line = Text()
    line.append(f"{_format_time(event.event_time)} ", style="dim")
    line.append(f"#{event.sequence:<6} ", style="dim")
    line.append(f"{kind:<24}", style=style or "bold")
    if with_workflow:
        line.append(f" {event.workflow_id or '-'}")
    where = event.task_id + (f"#{event.attempt}" if event.attempt else "")
    line.append(f" {where:<20}" if where else f" {'':<20}")
    details: list[str] = []
    if event.event_type == event_pb2.EVENT_TYPE_TASK_ATTEMPT_FAILED and event.task_state:
        # What the failure led to: a retry (BACKING_OFF) or the task's end (FAILED).
        details.append("then " + _enum_name(task_pb2.TaskState, event.task_state, "TASK_STATE_"))
    if event.name:
        details.append(event.name)
    if event.worker_id:
        details.append(f"worker={event.worker_id}")
    if event.HasField("duration"):
        details.append(_format_duration(event.duration.seconds + event.duration.nanos / 1e9))
    if event.HasField("usage") and (event.usage.input_tokens or event.usage.output_tokens):
        usage = event.usage
        details.append(
            f"tokens={usage.input_tokens}/{usage.output_tokens} cost=${usage.cost_micro_usd / 1e6:.6f}"
        )
    if event.HasField("failure"):
        details.append(f"failure={event.failure.type or 'error'}: {event.failure.message[:120]}")
    details.extend(f"{key}={_attribute(value)}" for key, value in sorted(event.attributes.items()))
    line.append(" " + " ".join(details))
    return line


# trace / events


def _types(values: Iterable[str]) -> list[str]:
    names = []
    for value in values:
        name = value.upper().removeprefix("EVENT_TYPE_")
        if "EVENT_TYPE_" + name not in event_pb2.EventType.keys():  # noqa: SIM118 - protobuf enum wrapper
            raise click.BadParameter(f"unknown event type {value!r}", param_hint="--type")
        names.append(name)
    return names


class _EventPrinter:
    """Prints the events that pass the user's ``--type`` filter, up to ``--limit``, and keeps the cursor.

    ``trace`` asks the sidecar for the terminal workflow events besides the
    user's types, to know when the workflow ends; those are shown only if the
    user asked for them.
    """

    def __init__(
        self, types: list[str], limit: int | None, after: int, *, with_workflow: bool = False
    ) -> None:
        self._shown_types = {event_pb2.EventType.Value("EVENT_TYPE_" + name) for name in types}
        self._limit = limit
        self._with_workflow = with_workflow
        self.shown = 0
        self.cursor = after  # the sequence up to which the log has been read
        self.ended = False  # a terminal workflow event was read

    def full(self) -> bool:
        """Whether ``--limit`` events have been shown."""
        return self._limit is not None and self.shown >= self._limit

    def take(self, event: event_pb2.Event) -> None:
        """Reads one event: prints it if it is wanted and the limit allows, and moves the cursor."""
        self.cursor = max(self.cursor, event.sequence)
        self.ended = self.ended or event.event_type in _TERMINAL_WORKFLOW_EVENTS
        if self.full() or (self._shown_types and event.event_type not in self._shown_types):
            return
        out.print(event_line(event, with_workflow=self._with_workflow), soft_wrap=True)
        self.shown += 1


class _Filter(msgspec.Struct, frozen=True):
    """The events a listing and a stream ask the sidecar for."""

    workflow_ids: tuple[str, ...] = ()
    task_ids: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ()


async def _print_retained(client: Client, printer: _EventPrinter, which: _Filter) -> None:
    """Prints the retained events after the printer's cursor, up to its limit."""
    after, token = printer.cursor, ""
    while not printer.full():
        page = await client.trace.list_events(
            workflow_ids=which.workflow_ids,
            task_ids=which.task_ids,
            event_types=which.event_types,
            after_sequence=after,
            page_size=500,
            page_token=token,
        )
        for event in page.events:
            printer.take(event)
            if printer.full():
                return
        printer.cursor = max(printer.cursor, page.last_sequence)
        if not page.next_page_token:
            return
        token = page.next_page_token


async def _print_recent(client: Client, printer: _EventPrinter, which: _Filter, limit: int) -> bool:
    """Prints the last ``limit`` retained events after the printer's cursor, oldest first, like ``tail``.

    The log is read back from its end in windows of sequences that double
    (the first at least ``limit`` wide) until ``limit`` events match or the
    cursor is reached, so an unfiltered listing reads about ``limit`` events
    whatever the retention holds; at most ``limit`` events are held at once.
    The printer's cursor ends at the log's end as read, where a follow
    resumes. Returns whether earlier matching events may have been left out.
    """
    floor = printer.cursor
    end = await _log_end(client, floor)
    recent: collections.deque[event_pb2.Event] = collections.deque()
    width = max(limit, _TAIL_WINDOW)
    top: int | None = None  # the first window is open above: it takes what is recorded meanwhile
    while True:
        low = max(floor, (end if top is None else top) - width)
        window, scanned, dropped = await _list_window(client, which, low, top, limit - len(recent))
        recent.extendleft(reversed(window))
        if top is None:
            printer.cursor = max(printer.cursor, scanned)
        if dropped or len(recent) >= limit or low <= floor:
            break
        top, width = low, width * 2
    for event in recent:
        printer.take(event)
    return dropped or (len(recent) >= limit and low > floor)


async def _list_window(
    client: Client, which: _Filter, low: int, top: int | None, keep: int
) -> tuple[list[event_pb2.Event], int, bool]:
    """The last ``keep`` matching events of sequences in (low, top] (top None: to the log's end).

    Returns them (ascending), the sequence up to which the log was read, and
    whether matching events before them were left out.
    """
    kept: collections.deque[event_pb2.Event] = collections.deque(maxlen=keep)
    seen, scanned, token = 0, low, ""
    while True:
        page = await client.trace.list_events(
            workflow_ids=which.workflow_ids,
            task_ids=which.task_ids,
            event_types=which.event_types,
            after_sequence=low,
            page_size=1000,
            page_token=token,
        )
        inside = [e for e in page.events if top is None or e.sequence <= top]
        kept.extend(inside)
        seen += len(inside)
        scanned = max(scanned, page.last_sequence)
        if not page.next_page_token or len(inside) < len(page.events) or (top is not None and scanned >= top):
            return list(kept), scanned, seen > len(kept)
        token = page.next_page_token


async def _log_end(client: Client, floor: int) -> int:
    """The last settled sequence of the event log (ListEvents' ``end_sequence``).

    Raises:
        InvalidArgumentError: ``floor`` (the user's cursor) is beyond the log (SEQUENCE_BEYOND_LOG).
    """
    page = await client.trace.list_events(after_sequence=floor, page_size=1)
    return max(int(page.end_sequence), floor)


async def _workflow_closed(client: Client, workflow_id: str) -> bool:
    """Whether the workflow has ended.

    Raises:
        NotFoundError: There is no such workflow (never was, or was deleted).
    """
    response = await client.raw.scheduler.GetWorkflow(
        scheduler_service_pb2.GetWorkflowRequest(workflow_id=workflow_id)
    )
    return response.workflow.state in _TERMINAL_WORKFLOW_STATES


async def _follow(client: Client, printer: _EventPrinter, which: _Filter, workflow_id: str | None) -> None:
    """Prints live events after the printer's cursor until the limit, or until ``workflow_id`` ends.

    With no ``workflow_id`` (``are events --follow``) it follows until cancelled, whatever ends.

    The workflow's end is its terminal event; should that never come (dropped
    by retention before this stream read it), a workflow that has been quiet
    for ``_WORKFLOW_CHECK_S`` is asked for its state, and once it has ended
    (twice in a row, so that its last events are recorded), the retained
    events after the cursor are printed and following stops.
    """
    items: asyncio.Queue[object] = asyncio.Queue(maxsize=1000)
    pumping = asyncio.create_task(_pump(client, which, printer.cursor, items))
    try:
        with out.status("[dim]following live events (Ctrl-C to stop)…[/]", spinner="dots") as spinner:
            await _print_live(client, printer, items, spinner, workflow_id)
    finally:
        pumping.cancel()
        await asyncio.gather(pumping, return_exceptions=True)
    if workflow_id is not None and not printer.ended:
        await _print_retained(client, printer, which)  # the workflow ended unseen: its last events


async def _pump(client: Client, which: _Filter, after: int, items: asyncio.Queue[object]) -> None:
    """Puts the stream's items on ``items``, then the error that ends it, if any."""
    try:
        stream = client.trace.stream(
            workflow_ids=which.workflow_ids,
            task_ids=which.task_ids,
            event_types=which.event_types,
            after_sequence=after,
        )
        async for item in stream:
            await items.put(item)
    except Exception as error:  # noqa: BLE001 - handed to the printing loop, which raises it
        await items.put(error)


async def _print_live(
    client: Client,
    printer: _EventPrinter,
    items: asyncio.Queue[object],
    spinner: Status,
    workflow_id: str | None,
) -> None:
    ended_checks = 0  # quiet periods in a row at whose end the workflow had ended
    # Only a followed workflow's end stops the follow: `events --follow` reads the ends of
    # other workflows (or of the one --workflow names) and goes on, as tail -f does.
    while not printer.full() and not (workflow_id is not None and printer.ended) and ended_checks < 2:
        try:
            item = await asyncio.wait_for(items.get(), None if workflow_id is None else _WORKFLOW_CHECK_S)
        except TimeoutError:
            ended_checks = ended_checks + 1 if await _has_ended(client, workflow_id) else 0
            continue
        if isinstance(item, Exception):
            raise item
        if isinstance(item, event_pb2.Event):
            printer.take(item)
            spinner.update(f"[dim]following live events: {printer.shown} so far (Ctrl-C to stop)…[/]")
        elif isinstance(item, trace_service_pb2.EventsMissed):
            err.print(
                f"[yellow]missed {item.missed_count} events "
                f"(#{item.first_missed_sequence}..#{item.last_missed_sequence}): "
                "dropped by retention[/]"
            )


async def _has_ended(client: Client, workflow_id: str | None) -> bool:
    """Whether the workflow has ended or is gone (False for no workflow)."""
    if workflow_id is None:
        return False
    try:
        return await _workflow_closed(client, workflow_id)
    except NotFoundError:
        return True  # deleted


@click.command("trace")
@click.argument("workflow_id")
@click.option("--follow", "-f", is_flag=True, help="Keep following live events until the workflow ends.")
@click.option("--type", "types", multiple=True, help="Only events of this type (repeatable), e.g. LLM_CALL.")
@_client_command
async def trace(client: Client, workflow_id: str, *, follow: bool, types: tuple[str, ...]) -> int:
    """Show the events of a workflow; with --follow, stream them live until it ends.

    A workflow that does not exist is NOT_FOUND (exit 1), unless events of it
    are still retained (it was deleted): those are shown. A workflow that has
    already ended shows its retained events even with --follow.
    """
    wanted = _types(types)
    # With a --type filter the terminal workflow events are asked for too (and shown only if
    # wanted): following must see the workflow end whatever the user filters.
    ends = sorted(_enum_name(event_pb2.EventType, t, "EVENT_TYPE_") for t in _TERMINAL_WORKFLOW_EVENTS)
    which = _Filter(
        workflow_ids=(workflow_id,), event_types=tuple(dict.fromkeys([*wanted, *ends])) if wanted else ()
    )
    printer = _EventPrinter(wanted, None, 0)
    try:
        closed = await _workflow_closed(client, workflow_id)
    except NotFoundError:
        if not await _any_event(client, workflow_id):
            raise
        err.print(Text(f"(no workflow {workflow_id} now; its retained events are shown)", "dim"))
        closed = True
    await _print_retained(client, printer, which)
    if follow and not closed and not printer.ended:
        await _follow(client, printer, which, workflow_id)
    if not printer.shown:
        err.print("[dim]no events[/]")
    return 0


async def _any_event(client: Client, workflow_id: str) -> bool:
    page = await client.trace.list_events(workflow_ids=[workflow_id], page_size=1)
    return bool(page.events)


@click.command("events")
@click.option("--workflow", "workflows", multiple=True, help="Only this workflow (repeatable).")
@click.option("--task", "tasks", multiple=True, help="Only this task id (repeatable).")
@click.option(
    "--type", "types", multiple=True, help="Only this event type (repeatable), e.g. TASK_ATTEMPT_FAILED."
)
@click.option(
    "--after",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Only events after this sequence (a cursor).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=_EVENTS_LIMIT,
    show_default=True,
    help="Show the most recent N retained events that match (after --after), oldest first, "
    "like tail; 0 shows every one. With --follow, live events then follow without a limit.",
)
@click.option(
    "--follow", "-f", is_flag=True, help="Then follow new events live, as tail -f does (until Ctrl-C)."
)
@_client_command
async def events(
    client: Client,
    *,
    workflows: tuple[str, ...],
    tasks: tuple[str, ...],
    types: tuple[str, ...],
    after: int,
    limit: int,
    follow: bool,
) -> int:
    """List the flight recorder's most recent events (all workflows unless filtered).

    Like ``tail``: the last --limit matching events (100 by default; 0 for
    every retained one), oldest first; with --follow, new events are then
    printed as they happen, until Ctrl-C. A note on stderr says when earlier
    events were left out. Each line names its workflow, unless one
    --workflow is given.
    """
    which = _Filter(workflow_ids=workflows, task_ids=tasks, event_types=tuple(_types(types)))
    # The workflow of each event is shown unless one --workflow says it.
    printer = _EventPrinter([], None, after, with_workflow=len(set(workflows)) != 1)
    if limit:
        if await _print_recent(client, printer, which, limit):
            err.print(f"[dim](the last {limit} events shown; --limit 0 shows every retained one)[/]")
    else:
        await _print_retained(client, printer, which)
    if follow:
        await _follow(client, printer, which, None)
    if not printer.shown and not follow:
        err.print("[dim]no events[/]")
    return 0


# submit / status


_PAYLOAD_TYPE_KEYS = ("contentType", "content_type")
_STATE_KEYS = ("initial_state", "initialState")


def load_workflow_spec(path: Path) -> workflow_pb2.WorkflowSpec:
    """Reads a workflow spec from YAML or JSON (the proto JSON mapping of ``are.v1.WorkflowSpec``).

    Field names may be snake_case or lowerCamelCase (``initial_state`` or
    ``initialState``); durations are strings such as ``"30s"``. Every value
    must be a JSON value: NaN, Infinity, a YAML date, ``!!binary`` or set, or
    a mapping key that is not a string is refused, naming its path.

    A task's ``input`` and ``initial_state`` are sent as JSON payloads of the
    value exactly as written, with one exception: a mapping of exactly two
    keys, ``data`` (base64) and a non-empty ``contentType`` (or
    ``content_type``), is a Payload in the proto JSON mapping, as
    ``json_format.MessageToJson`` writes it, and is sent as it is (for a JSON
    content type, only if ``data`` decodes to JSON); so is one of ``blob``
    (a BlobRef) and a content type. Any other value, ``{data: ...}`` alone
    included, is JSON.

    Raises:
        click.BadParameter: the file cannot be read or is not a valid spec.
    """
    document = _read_document(path)
    problem = _json_problem(document)
    if problem is not None:
        raise click.BadParameter(f"{path}: {problem}", param_hint="FILE")
    _encode_payloads(document, path)
    spec = workflow_pb2.WorkflowSpec()
    try:
        json_format.ParseDict(document, spec)
    except json_format.ParseError as error:
        raise click.BadParameter(f"{path} is not a valid workflow spec: {error}", param_hint="FILE") from None
    return spec


def _read_document(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
        document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as error:  # ValueError: also text that is not UTF-8
        raise click.BadParameter(f"cannot read {path}: {error}", param_hint="FILE") from None
    if not isinstance(document, dict):
        raise click.BadParameter(f"{path} must hold a mapping (a WorkflowSpec)", param_hint="FILE")
    return document


def _encode_payloads(document: dict[str, Any], path: Path) -> None:
    """Replaces the initial state and every task input with a Payload in the proto JSON mapping."""
    state_keys = [key for key in _STATE_KEYS if key in document]
    if len(state_keys) > 1:
        raise click.BadParameter(f"{path} gives both initial_state and initialState", param_hint="FILE")
    for key in state_keys:
        document[key] = _payload(document[key])
    tasks = document.get("tasks")
    if tasks is not None and not isinstance(tasks, list):
        raise click.BadParameter(
            f"{path}: `tasks` must be a list of task specs, not {_json_kind(tasks)}", param_hint="FILE"
        )
    for index, task in enumerate(tasks or []):
        if not isinstance(task, dict):
            raise click.BadParameter(
                f"{path}: `tasks[{index}]` must be a mapping (a TaskSpec), not {_json_kind(task)}",
                param_hint="FILE",
            )
        if "input" in task:
            task["input"] = _payload(task["input"])


def _json_kind(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    kinds = {int: "a number", float: "a number", str: "a string", list: "a list", dict: "a mapping"}
    return kinds.get(type(value), f"a {type(value).__name__}")


def _json_problem(document: dict[str, Any]) -> str | None:
    """What keeps ``document`` from being JSON, naming the first such path (``tasks[2].input.x``), or None."""
    stack: list[tuple[Any, str]] = [(document, "")]
    while stack:
        value, where = stack.pop()
        if value is None or isinstance(value, bool | int | str):
            continue
        if isinstance(value, float):
            if not math.isfinite(value):
                return f"`{where}` is {value!r}, which JSON cannot carry"
            continue
        if isinstance(value, list):
            stack.extend((item, f"{where}[{index}]") for index, item in reversed(list(enumerate(value))))
            continue
        if isinstance(value, dict):
            keyed: list[tuple[Any, str]] = []
            for key, item in value.items():
                if not isinstance(key, str):
                    return f"`{where or '(top)'}` has the key {key!r}, which is not a string (quote it)"
                keyed.append((item, f"{where}.{key}" if where else key))
            stack.extend(reversed(keyed))
            continue
        kind = "binary data (!!binary)" if isinstance(value, bytes) else f"a {type(value).__name__}"
        return f"`{where}` is {kind}, not a JSON value (quote it to send it as a string)"
    return None


def _payload(value: Any) -> dict[str, Any]:
    """``value`` in the proto JSON mapping of a Payload (see :func:`load_workflow_spec` for the rule)."""
    given = _given_payload(value)
    if given is not None:
        return given
    payload = common_pb2.Payload(
        data=json.dumps(value, allow_nan=False).encode(), content_type="application/json"
    )
    return json_format.MessageToDict(payload)


def _given_payload(value: Any) -> dict[str, Any] | None:
    """``value`` if it is a complete Payload in the proto JSON mapping, else None."""
    content_type = _payload_content_type(value)
    if content_type is None:
        return None
    if isinstance(value.get("blob"), dict):
        return {"blob": value["blob"], "contentType": content_type}
    data = value.get("data")
    try:
        raw = base64.b64decode(data, validate=True) if isinstance(data, str) else None
        if raw is not None and is_json_content_type(content_type):
            json.loads(raw)
    except ValueError:  # binascii.Error too; bytes that are not JSON, or not text
        return None
    return None if raw is None else {"data": data, "contentType": content_type}


def _payload_content_type(value: Any) -> str | None:
    """The content type of a mapping of exactly one content key and one non-empty content type."""
    if not isinstance(value, dict) or len(value) != 2:
        return None
    given = [value[key] for key in _PAYLOAD_TYPE_KEYS if key in value]
    if len(given) != 1 or not isinstance(given[0], str) or not given[0].strip():
        return None
    return given[0]


@click.command("submit")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--wait",
    is_flag=True,
    help="Wait for the workflow to end, showing progress, then print its result (see `are result`) "
    "or, on stderr, why it did not complete (exit 1).",
)
@click.option("--request-id", default="", help="Idempotency key: resubmitting it returns the same workflow.")
@_client_command
async def submit(client: Client, file: Path, *, wait: bool, request_id: str) -> int:
    """Submit a workflow spec from a YAML or JSON FILE (are.v1.WorkflowSpec in its JSON mapping).

    A task's input and initial_state (or initialState) are sent as JSON of the
    value exactly as written. Only a mapping of exactly `data` (base64) and a
    `contentType` (or `content_type`), as MessageToJson writes a Payload, is
    sent as that Payload (with a JSON content type, only if the data decodes
    to JSON). NaN, Infinity and YAML values JSON lacks (dates, !!binary) are
    refused.
    """
    spec = load_workflow_spec(file)
    response = await client.raw.scheduler.SubmitWorkflow(
        scheduler_service_pb2.SubmitWorkflowRequest(spec=spec, request_id=request_id)
    )
    note = " (deduplicated)" if response.deduplicated else ""
    out.print(Text.assemble("submitted ", (response.workflow_id, "bold"), note))
    if not wait:
        return 0
    return await _wait(client, response.workflow_id)


async def _wait(client: Client, workflow_id: str) -> int:
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=out, transient=False) as progress:
        bar = progress.add_task(workflow_id, total=None)
        while True:
            response = await client.raw.scheduler.GetWorkflow(
                scheduler_service_pb2.GetWorkflowRequest(workflow_id=workflow_id)
            )
            workflow = response.workflow
            counts = workflow.task_counts
            done = counts.completed + counts.failed + counts.skipped + counts.rejected + counts.cancelled
            state = _enum_name(workflow_pb2.WorkflowState, workflow.state, "WORKFLOW_STATE_")
            progress.update(
                bar, total=counts.total or None, completed=done, description=f"{workflow_id} {state}"
            )
            if workflow.state in _TERMINAL_WORKFLOW_STATES:
                break
            await asyncio.sleep(0.5)
    out.print(Text.assemble("workflow ", (workflow_id, "bold"), " ", _styled_state(state)))
    if workflow.state != workflow_pb2.WORKFLOW_STATE_COMPLETED:
        await _print_failure(client, workflow)
        return 1
    if _payload_kind(workflow.result) == "none":
        err.print(f"({_no_result(workflow)})", style="dim")
    else:
        _print_result(
            workflow.result,
            of=f"task {workflow.result_task_id}",
            command=f"are result {workflow_id}",
            raw_to_file=False,
        )
    return 0


async def _all_tasks(client: Client, workflow_id: str) -> list[task_pb2.Task]:
    tasks: list[task_pb2.Task] = []
    request = scheduler_service_pb2.ListTasksRequest(workflow_id=workflow_id, page_size=1000)
    for _ in range(1000):  # bounded: a million tasks
        page = await client.raw.scheduler.ListTasks(request)
        tasks.extend(page.tasks)
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    return tasks


def _task_label(task: task_pb2.Task, now: float) -> Text:
    state = _enum_name(task_pb2.TaskState, task.state, "TASK_STATE_")
    label = Text.assemble((task.task_id, "bold"), " ", _styled_state(state))
    if task.spec.display_name:
        label.append(f" {task.spec.display_name}", style="dim")
    if task.attempt > 1:
        label.append(f" attempt {task.attempt}", style="yellow")
    # The duration of the current attempt counts on only while it runs; a closed task's is final.
    # Otherwise (backing off, waiting) the last attempt's end is not known: no duration is shown.
    if task.HasField("start_time") and (
        task.HasField("close_time") or task.state == task_pb2.TASK_STATE_RUNNING
    ):
        end = _seconds(task.close_time) if task.HasField("close_time") else now
        label.append(f" {_format_duration(max(0.0, end - _seconds(task.start_time)))}", style="dim")
    if task.state == task_pb2.TASK_STATE_BACKING_OFF and task.HasField("next_attempt_time"):
        wait = max(0.0, _seconds(task.next_attempt_time) - now)
        label.append(f" next attempt in {_format_duration(wait)}", style="yellow")
    if task.worker_id and task.state == task_pb2.TASK_STATE_RUNNING:
        label.append(f" on {task.worker_id}", style="dim")
    usage = task.usage.usage
    if usage.input_tokens or usage.output_tokens:
        label.append(f" tokens {usage.input_tokens}/{usage.output_tokens}", style="dim")
    if task.HasField("failure"):
        label.append(f" — {task.failure.message[:80]}", style="red")
    return label


def workflow_tree(
    workflow: workflow_pb2.Workflow, tasks: list[task_pb2.Task], now: float, *, max_depth: int = _TREE_DEPTH
) -> Tree:
    """The DAG as a tree: each task under its first dependency, with state and duration.

    Every task is shown. The tree nests ``max_depth`` levels at most; the
    tasks below that (a long chain) are listed flat after it, under a note,
    each with the tasks it runs after.
    """
    root = Tree(_workflow_label(workflow, now))
    by_id = {task.task_id: task for task in tasks}
    children: dict[str, list[task_pb2.Task]] = {}
    tops: list[task_pb2.Task] = []
    for task in tasks:
        parents = [d for d in task.spec.depends_on if d in by_id]
        if parents:
            children.setdefault(parents[0], []).append(task)
        else:
            tops.append(task)
    placed: set[str] = set()

    def add(node: Tree, task: task_pb2.Task, depth: int) -> None:
        placed.add(task.task_id)
        label = _task_label(task, now)
        others = [d for d in task.spec.depends_on if d in by_id][1:]
        if others:
            label.append(f" (also after {', '.join(others)})", style="dim")
        branch = node.add(label)
        if depth + 1 < max_depth:
            for child in children.get(task.task_id, []):
                add(branch, child, depth + 1)

    for task in tops:
        add(root, task, 0)
    rest = [task for task in tasks if task.task_id not in placed]
    if rest:
        _add_flat(root, rest, by_id, now, max_depth)
    return root


def _add_flat(
    root: Tree, rest: list[task_pb2.Task], by_id: dict[str, task_pb2.Task], now: float, max_depth: int
) -> None:
    """Lists the tasks the tree could not nest, each with the tasks it runs after."""
    flat = root.add(
        Text(f"{len(rest)} more tasks, nested deeper than {max_depth} levels, listed flat:", "dim")
    )
    for task in rest:
        label = _task_label(task, now)
        after = [d for d in task.spec.depends_on if d in by_id]
        if after:
            label.append(f" (after {', '.join(after)})", style="dim")
        flat.add(label)


def _state_counts(tasks: list[task_pb2.Task]) -> Text:
    """One line: how many tasks there are, and how many in each state."""
    return _counts_line(collections.Counter(task.state for task in tasks), len(tasks))


def _counts_line(counts: Mapping[int, int], total: int) -> Text:
    """One line: ``total`` tasks, and how many in each state (``TaskState`` values) that has any."""
    line = Text(f"{total} task{'' if total == 1 else 's'}")
    for index, state in enumerate(sorted(s for s in counts if counts[s])):
        name = _enum_name(task_pb2.TaskState, state, "TASK_STATE_")
        line.append(": " if index == 0 else ", ")
        line.append(f"{counts[state]} ")
        line.append(_styled_state(name))
    return line


def _workflow_label(workflow: workflow_pb2.Workflow, now: float) -> Text:
    state = _enum_name(workflow_pb2.WorkflowState, workflow.state, "WORKFLOW_STATE_")
    title = Text.assemble(("workflow ", "dim"), (workflow.workflow_id, "bold"), " ", _styled_state(state))
    if workflow.name:
        title.append(f" {workflow.name}", style="dim")
    if workflow.HasField("create_time"):
        end = _seconds(workflow.close_time) if workflow.HasField("close_time") else now
        title.append(f" {_format_duration(max(0.0, end - _seconds(workflow.create_time)))}", style="dim")
    usage = workflow.usage.usage
    if usage.input_tokens or usage.output_tokens or usage.cost_micro_usd:
        title.append(
            f" tokens {usage.input_tokens}/{usage.output_tokens} ${usage.cost_micro_usd / 1e6:.4f}",
            style="dim",
        )
    return title


@click.command("status")
@click.argument("workflow_id")
@_client_command
async def status(client: Client, workflow_id: str) -> int:
    """Show a workflow's DAG as a tree with task states and durations, and a count per state.

    Every task is shown: past the depth the tree can nest (64 levels, fewer
    in a narrow terminal) the deeper tasks are listed flat.
    """
    response = await client.raw.scheduler.GetWorkflow(
        scheduler_service_pb2.GetWorkflowRequest(workflow_id=workflow_id)
    )
    tasks = await _all_tasks(client, workflow_id)
    # Nest only as deep as the width leaves a label room (rich drops what does not fit), and to a
    # pipe or a file at the width the tree needs: labels are then never wrapped mid-word.
    width = _PIPED_MAX_WIDTH if _piped() else out.width
    depth = max(1, min(_TREE_DEPTH, (width - _TREE_LABEL_MIN) // 4 - 1))
    _print_wide(workflow_tree(response.workflow, tasks, time.time(), max_depth=depth))
    out.print(_state_counts(tasks))
    return 0


# approve / reject


async def _resolve(
    client: Client, workflow_id: str, task_id: str, *, decision: Any, approver: str, comment: str
) -> int:
    response = await client.raw.scheduler.ResolveApproval(
        scheduler_service_pb2.ResolveApprovalRequest(
            workflow_id=workflow_id, task_id=task_id, decision=decision, approver=approver, comment=comment
        )
    )
    state = _enum_name(task_pb2.TaskState, response.task.state, "TASK_STATE_")
    out.print(Text.assemble("task ", (task_id, "bold"), " is now ", _styled_state(state)))
    return 0


@click.command("approve")
@click.argument("workflow_id")
@click.argument("task_id")
@click.option("--approver", default="", help="Who approves (recorded on the event).")
@click.option("--comment", default="", help="Why.")
@_client_command
async def approve(client: Client, workflow_id: str, task_id: str, *, approver: str, comment: str) -> int:
    """Approve a task waiting at its approval gate."""
    return await _resolve(
        client,
        workflow_id,
        task_id,
        decision=task_pb2.APPROVAL_DECISION_APPROVE,
        approver=approver,
        comment=comment,
    )


@click.command("reject")
@click.argument("workflow_id")
@click.argument("task_id")
@click.option("--approver", default="", help="Who rejects (recorded on the event).")
@click.option("--comment", default="", help="Why.")
@_client_command
async def reject(client: Client, workflow_id: str, task_id: str, *, approver: str, comment: str) -> int:
    """Reject a task waiting at its approval gate."""
    return await _resolve(
        client,
        workflow_id,
        task_id,
        decision=task_pb2.APPROVAL_DECISION_REJECT,
        approver=approver,
        comment=comment,
    )


# workflows / cancel / approvals


_LIST_LIMIT = 100  # rows `workflows`, `approvals` and `state --history` show by default
_LIST_LIMIT_MAX = 10_000  # rows they show at most
_MAX_PAGES = 10_000  # pages a listing reads at most, should a server return empty pages with a token
_AGO = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_AGO_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_WORKFLOW_STATE_NAMES = tuple(
    name.removeprefix("WORKFLOW_STATE_").lower()
    for name in workflow_pb2.WorkflowState.keys()  # noqa: SIM118 - protobuf enum wrapper
    if name != "WORKFLOW_STATE_UNSPECIFIED"
)


def _limit_option(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--limit",
        type=click.IntRange(1, _LIST_LIMIT_MAX),
        default=None,
        help=f"Show at most N {what} (default {_LIST_LIMIT}, at most {_LIST_LIMIT_MAX:,}); "
        "a note on stderr says when more remain.",
        metavar="N",
    )


def _json_option(help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("--json", "as_json", is_flag=True, help=help_text)


def _check_labels(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    del ctx, param
    labels: dict[str, str] = {}
    for value in values:
        key, sep, label = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {value!r}", param_hint="--label")
        if key in labels and labels[key] != label:
            raise click.BadParameter(f"{key!r} is given twice, with different values", param_hint="--label")
        labels[key] = label
    return labels


def _check_moment(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """A ``--created-*`` value: an ISO 8601 date or time (local unless it says), or an age such as ``2h``."""
    del ctx
    if value is None:
        return None
    ago = _AGO.fullmatch(value.strip())
    if ago:
        return datetime.now(UTC) - timedelta(seconds=float(ago[1]) * _AGO_UNITS[ago[2]])
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise click.BadParameter(
            f"expected an ISO 8601 date or time (2025-06-01, 2025-06-01T12:00:00Z) or an age "
            f"such as 90s, 30m, 2h or 7d, got {value!r}",
            param=param,
        ) from None
    return moment if moment.tzinfo is not None else moment.astimezone()


def _format_moment(timestamp: Any) -> str:
    """A Timestamp as local date and time to the second, or ``-`` when unset."""
    if not timestamp.seconds and not timestamp.nanos:
        return "-"
    moment = datetime.fromtimestamp(timestamp.seconds + timestamp.nanos / 1e9, tz=UTC).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _format_age(seconds: float) -> str:
    """A duration as :func:`_format_duration` writes it, in days and hours from two days on."""
    if seconds < 2 * 86400:
        return _format_duration(seconds)
    days, rest = divmod(int(seconds), 86400)
    return f"{days}d{rest // 3600:02d}h"


def _print_json_line(message: Any) -> None:
    """Prints a protobuf message on stdout as one line of JSON (its proto JSON mapping)."""
    _write_line(json.dumps(json_format.MessageToDict(message), ensure_ascii=False))


def _write_line(text: str) -> None:
    """Writes ``text`` and a newline on stdout as it is: no markup, no wrapping, no colour."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def _first_items(
    call: Callable[[Any], Awaitable[Any]], request: Any, field: str, limit: int, page_max: int
) -> tuple[list[Any], bool]:
    """The first ``limit`` items of a paged listing, following page tokens, and whether more remain.

    Each page asks for one item more than is still wanted (at most
    ``page_max``), so that a listing of exactly ``limit`` items is not
    reported as cut short.
    """
    items: list[Any] = []
    for _ in range(_MAX_PAGES):
        request.page_size = min(page_max, limit + 1 - len(items))
        page = await call(request)
        items.extend(getattr(page, field))
        if len(items) > limit:
            return items[:limit], True
        if not page.next_page_token:
            return items, False
        request.page_token = page.next_page_token
    return items, True


def _tasks_cell(counts: workflow_pb2.TaskCounts) -> Text:
    """A workflow's tasks in a cell: how many of how many are done, and those running, waiting or failed."""
    done = counts.completed + counts.failed + counts.skipped + counts.rejected + counts.cancelled
    cell = Text(f"{done}/{counts.total}")
    for number, what, style in (
        (counts.running, "running", "cyan"),
        (counts.awaiting_approval, "awaiting approval", "magenta"),
        (counts.failed + counts.rejected, "failed", "red"),
    ):
        if number:
            cell.append(", ")
            cell.append(f"{number} {what}", style=style)
    return cell


def _task_counts(counts: workflow_pb2.TaskCounts) -> Mapping[int, int]:
    """A workflow's TaskCounts as a count per ``TaskState`` value."""
    return {
        task_pb2.TaskState.Value("TASK_STATE_" + field.name.upper()): getattr(counts, field.name)
        for field in counts.DESCRIPTOR.fields
        if field.name != "total"
    }


@click.command("workflows")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(_WORKFLOW_STATE_NAMES, case_sensitive=False),
    help="Only workflows in this state (repeatable).",
)
@click.option(
    "--label",
    "labels",
    multiple=True,
    callback=_check_labels,
    metavar="KEY=VALUE",
    help="Only workflows with this label (repeatable: every one must match).",
)
@click.option(
    "--created-after",
    callback=_check_moment,
    metavar="WHEN",
    help="Only workflows created at or after WHEN: an ISO 8601 date or time (local unless it "
    "gives a zone) or an age such as 30m, 2h or 7d (that long ago).",
)
@click.option(
    "--created-before", callback=_check_moment, metavar="WHEN", help="Only workflows created before WHEN."
)
@_limit_option("workflows, the newest")
@_json_option("Print each workflow as a line of JSON (the proto JSON mapping), not a table.")
@_client_command
async def workflows(
    client: Client,
    *,
    states: tuple[str, ...],
    labels: dict[str, str],
    created_after: datetime | None,
    created_before: datetime | None,
    limit: int | None,
    as_json: bool,
) -> int:
    """List workflows, newest first: state, name, tasks done, when created and how long ago.

    The tasks column counts the tasks done (completed, failed, skipped,
    rejected or cancelled) of all, then those running, awaiting approval or
    failed. Filters combine: every one given must match.
    """
    request = scheduler_service_pb2.ListWorkflowsRequest(
        states=["WORKFLOW_STATE_" + s.upper() for s in states],
        labels=labels,
    )
    if created_after is not None:
        request.start_time.FromDatetime(created_after)
    if created_before is not None:
        request.end_time.FromDatetime(created_before)
    limit = limit or _LIST_LIMIT
    found, more = await _first_items(client.raw.scheduler.ListWorkflows, request, "workflows", limit, 1000)
    if as_json:
        for workflow in found:
            _print_json_line(workflow)
    else:
        now = time.time()
        table = Table("workflow", "state", "name", "tasks", "created", "age")
        for workflow in found:
            state = _enum_name(workflow_pb2.WorkflowState, workflow.state, "WORKFLOW_STATE_")
            age = max(0.0, now - _seconds(workflow.create_time)) if workflow.HasField("create_time") else None
            table.add_row(
                Text(workflow.workflow_id),
                _styled_state(state),
                Text(workflow.name),
                _tasks_cell(workflow.task_counts),
                _format_moment(workflow.create_time),
                "-" if age is None else _format_age(age),
            )
        filtered = bool(states or labels or created_after or created_before)
        _print_table(table, empty="no workflows" + (" match" if filtered else ""))
    if more:
        err.print(f"(the newest {limit:,} workflows shown; --limit N shows more)", style="dim")
    return 0


@click.command("cancel")
@click.argument("workflow_id")
@click.option("--reason", default="", help="Why (recorded with the cancellation; at most 1 KiB).")
@click.option("--requested-by", default="", help="Who asks (recorded on the event).")
@_client_command
async def cancel(client: Client, workflow_id: str, *, reason: str, requested_by: str) -> int:
    """Cancel a workflow: its pending and running tasks become CANCELLED and it closes CANCELLED.

    Workers holding its running tasks are told to stop. A workflow that has
    already closed is left as it is; its state is printed (exit 0 either way).
    """
    response = await client.raw.scheduler.CancelWorkflow(
        scheduler_service_pb2.CancelWorkflowRequest(
            workflow_id=workflow_id, reason=reason, requested_by=requested_by
        )
    )
    workflow = response.workflow
    state = _enum_name(workflow_pb2.WorkflowState, workflow.state, "WORKFLOW_STATE_")
    line = Text.assemble("workflow ", (workflow_id, "bold"))
    if (
        workflow.state == workflow_pb2.WORKFLOW_STATE_CANCELLED
        or workflow.state not in _TERMINAL_WORKFLOW_STATES
    ):
        line.append_text(Text.assemble(" is now ", _styled_state(state)))
    else:
        line.append_text(Text.assemble(" had already closed ", _styled_state(state), " (not cancelled)"))
    if workflow.failure.message:
        line.append(f" — {workflow.failure.message[:200]}", style="dim")
    out.print(line, soft_wrap=True)
    out.print(_counts_line(_task_counts(workflow.task_counts), workflow.task_counts.total), soft_wrap=True)
    return 0


def _payload_preview(payload: common_pb2.Payload, width: int = 60) -> Text:
    """A payload in a few words: its JSON cut to ``width`` characters, or its size and type."""
    if payload.HasField("blob"):
        blob = payload.blob
        return Text(f"blob {blob.sha256[:12]}… {_format_bytes(blob.size_bytes)}", style="dim")
    if not payload.data:
        return Text("-", style="dim")
    if is_json_content_type(payload.content_type or "application/json"):
        try:
            text = json.dumps(json.loads(payload.data), ensure_ascii=False, separators=(",", ":"))
        except ValueError:
            text = None
        if text is not None:
            return Text(text if len(text) <= width else text[: width - 1] + "…")
    return Text(f"{_format_bytes(len(payload.data))} {payload.content_type}", style="dim")


@click.command("approvals")
@click.option("--workflow", "workflow_id", default="", help="Only the gates of this workflow.")
@click.option(
    "--label",
    "labels",
    multiple=True,
    callback=_check_labels,
    metavar="KEY=VALUE",
    help="Only tasks with this label (repeatable: every one must match).",
)
@_limit_option("gates, the oldest")
@_json_option(
    "Print each waiting task, with its input, as a line of JSON (the proto JSON mapping), not a table."
)
@_client_command
async def approvals(
    client: Client, *, workflow_id: str, labels: dict[str, str], limit: int | None, as_json: bool
) -> int:
    """List the tasks waiting at an approval gate, oldest first, to decide with `are approve` or `are reject`.

    Shows how long each has waited, when its gate times out (then the task
    is REJECTED; "-": not before its workflow's deadline) and its input.
    """
    request = scheduler_service_pb2.ListApprovalsRequest(workflow_id=workflow_id, labels=labels)
    limit = limit or _LIST_LIMIT
    found, more = await _first_items(client.raw.scheduler.ListApprovals, request, "tasks", limit, 100)
    if as_json:
        for task in found:
            _print_json_line(task)
    else:
        now = time.time()
        table = Table("workflow", "task", "name", "waiting", "times out in", "input")
        for task in found:
            gate = task.approval
            waited = now - _seconds(gate.request_time) if gate.HasField("request_time") else None
            left = _seconds(gate.expire_time) - now if gate.HasField("expire_time") else None
            table.add_row(
                Text(task.workflow_id),
                Text(task.task_id, style="bold"),
                Text(task.spec.display_name),
                "-" if waited is None else _format_age(max(0.0, waited)),
                "-" if left is None else _format_age(max(0.0, left)),
                _payload_preview(task.spec.input),
            )
        which = " of this workflow" if workflow_id else ""
        which += " with these labels" if labels else ""
        if _print_table(table, empty=f"no task is waiting for approval{which}"):
            err.print("(decide with: are approve WORKFLOW TASK, or are reject WORKFLOW TASK)", style="dim")
    if more:
        err.print(f"(the oldest {limit:,} gates shown; --limit N shows more)", style="dim")
    return 0


# state


# Characters of JSON a terminal gets coloured; a longer document is printed plain.
_JSON_HIGHLIGHT_MAX = 1 << 20


def _check_pointers(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    """Refuses a ``--path`` that is not a JSON Pointer (RFC 6901), naming it, before connecting."""
    del ctx, param
    for pointer in values:
        problem = None
        if pointer and not pointer.startswith("/"):
            problem = "must be empty (the whole document) or start with '/'"
        elif re.search(r"~(?![01])", pointer):
            problem = "'~' must be followed by '0' or '1' (write ~0 for '~' and ~1 for '/')"
        if problem:
            raise click.BadParameter(f"{pointer!r} is not a JSON pointer: {problem}", param_hint="--path")
    return tuple(dict.fromkeys(values))


def _checked_first(check: Callable[..., None]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Runs ``check`` on a client command's arguments before it connects: a usage error needs no sidecar."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(command)
        def checked(**kwargs: Any) -> None:
            check(**kwargs)
            command(**kwargs)

        return checked

    return decorate


def _state_usage(
    *, version: int | None, paths: tuple[str, ...], history: bool, limit: int | None, **_: Any
) -> None:
    if history and (version is not None or paths):
        raise click.UsageError("--history lists the versions: it takes no --version or --path")
    if limit is not None and not history:
        raise click.UsageError("--limit applies to --history only")


def _print_json_document(value: Any) -> None:
    """Prints a JSON value indented; coloured in a terminal, plain to a pipe or a file."""
    text = json.dumps(value, indent=2, ensure_ascii=False)
    if out.is_terminal and len(text) <= _JSON_HIGHLIGHT_MAX:
        out.print(JSON(text), soft_wrap=True)
    else:
        _write_line(text)


@click.command("state")
@click.argument("workflow_id")
@click.option(
    "--version",
    type=click.IntRange(min=1),
    default=None,
    help="Read this version of the document (time travel; see --history); default the latest.",
)
@click.option(
    "--path",
    "paths",
    multiple=True,
    callback=_check_pointers,
    metavar="POINTER",
    help="Print only the value at this JSON pointer, e.g. /plan/steps/0 (repeatable: then an object "
    "keyed by pointer).",
)
@click.option(
    "--history", is_flag=True, help="List the retained versions (checkpoints) instead, newest first."
)
@_limit_option("versions with --history, the newest")
@_json_option(
    "Print one line of JSON: the version read, when it was written, the values keyed by pointer and "
    "the missing paths; with --history, each version as a line (the proto JSON mapping)."
)
@_checked_first(_state_usage)
@_client_command
async def state(
    client: Client,
    workflow_id: str,
    *,
    version: int | None,
    paths: tuple[str, ...],
    history: bool,
    limit: int | None,
    as_json: bool,
) -> int:
    """Print a workflow's state document as indented JSON, or with --history its versions.

    With one --path only the value there is printed; with several, an object
    keyed by pointer. A path with no value is named on stderr and exits 1
    (the values found are still printed). With --json, one line holds the
    version read, when it was written, the values keyed by pointer and the
    missing paths.
    """
    if history:
        return await _print_history(client, workflow_id, limit or _LIST_LIMIT, as_json=as_json)
    response = await client.raw.state.GetState(
        state_service_pb2.GetStateRequest(workflow_id=workflow_id, paths=paths, version=version)
    )
    values = {value.path: json.loads(value.value_json) for value in response.values}
    if as_json:
        answer = json_format.MessageToDict(response)
        answer["values"] = values
        _write_line(json.dumps(answer, ensure_ascii=False))
    else:
        if out.is_terminal:
            written = _format_moment(response.update_time)
            err.print(f"(state version {response.version} of {workflow_id}, written {written})", style="dim")
        if len(paths) > 1:
            _print_json_document(values)
        elif values:
            _print_json_document(next(iter(values.values())))
    for missing in response.missing_paths:
        err.print(
            Text.assemble(("error:", "red"), f" no value at {missing!r} in state version {response.version}")
        )
    return 1 if response.missing_paths else 0


async def _print_history(client: Client, workflow_id: str, limit: int, *, as_json: bool) -> int:
    request = state_service_pb2.ListCheckpointsRequest(workflow_id=workflow_id)
    pages: list[state_service_pb2.ListCheckpointsResponse] = []

    async def listing(request: state_service_pb2.ListCheckpointsRequest) -> Any:
        pages.append(await client.raw.state.ListCheckpoints(request))
        return pages[-1]

    found, more = await _first_items(listing, request, "checkpoints", limit, 1000)
    if as_json:
        for checkpoint in found:
            _print_json_line(checkpoint)
    else:
        now = time.time()
        table = Table("version", "written", "age", "by", "size", "event")
        for checkpoint in found:
            by = checkpoint.task_id + (f"#{checkpoint.attempt}" if checkpoint.attempt else "")
            table.add_row(
                str(checkpoint.version),
                _format_moment(checkpoint.create_time),
                _format_age(max(0.0, now - _seconds(checkpoint.create_time))),
                Text(f"task {by}") if checkpoint.task_id else Text(checkpoint.writer),
                _format_bytes(checkpoint.size_bytes),
                f"#{checkpoint.event_sequence}",
            )
        _print_table(table, empty="no versions")
        first = pages[0]
        err.print(
            f"(versions {first.oldest_version} to {first.latest_version} retained; "
            f"read one with --version N)",
            style="dim",
        )
    if more:
        err.print(f"(the newest {limit:,} versions shown; --limit N shows more)", style="dim")
    return 0


# result

_RESULT_TERMINAL_MAX = 64 * 1024  # characters of a result a terminal is shown; a pipe or a file gets it all
_FAILURE_TERMINAL_MAX = 4096  # characters of a failure message a terminal is shown
_FAILED_TASKS_SHOWN = 5  # failed tasks a failed workflow's report names
_CAUSES_SHOWN = 8  # causes of a failure it names (the contract keeps at most 8)
_TEXT_TYPES = frozenset(
    {"application/xml", "application/yaml", "application/x-yaml", "application/toml", "application/x-ndjson"}
)
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CLOSED_TASK_STATES = frozenset(
    {
        task_pb2.TASK_STATE_COMPLETED,
        task_pb2.TASK_STATE_FAILED,
        task_pb2.TASK_STATE_SKIPPED,
        task_pb2.TASK_STATE_REJECTED,
        task_pb2.TASK_STATE_CANCELLED,
    }
)
_PayloadKind = Literal["none", "blob", "json", "text", "binary"]


def _content_type(payload: common_pb2.Payload) -> str:
    """The payload's media type, the contract's defaults filled in."""
    if payload.HasField("blob"):
        return payload.content_type or payload.blob.content_type or "application/octet-stream"
    return payload.content_type or "application/json"


def _is_text_type(content_type: str) -> bool:
    base = content_type.split(";", 1)[0].strip().lower()
    return (
        base.startswith("text/")
        or base in _TEXT_TYPES
        or base.endswith(("+xml", "+yaml"))
        or "charset=" in content_type.lower()
    )


def _payload_kind(payload: common_pb2.Payload) -> _PayloadKind:
    """How a result is shown: JSON that parses, UTF-8 text, a blob reference, other bytes, or nothing."""
    content = payload.WhichOneof("content")
    if content is None:
        return "none"
    if content == "blob":
        return "blob"
    content_type = _content_type(payload)
    if is_json_content_type(content_type):
        try:
            json.loads(payload.data)
        except ValueError:
            pass
        else:
            return "json"
    if is_json_content_type(content_type) or _is_text_type(content_type):
        try:
            payload.data.decode()
        except UnicodeDecodeError:
            return "binary"
        return "text"
    return "binary"


def _describe_payload(payload: common_pb2.Payload) -> str:
    """A payload in words: its content type and size, and a blob's sha256."""
    if payload.HasField("blob"):
        blob = payload.blob
        return f"blob sha256:{blob.sha256}, {_format_bytes(blob.size_bytes)}, {_content_type(payload)}"
    return f"{_format_bytes(len(payload.data))} of {_content_type(payload)}"


def _escape_controls(text: str) -> str:
    r"""``text`` with its control characters but newline and tab escaped (``\x1b``), for a terminal."""
    return _CONTROL_CHARACTERS.sub(lambda match: repr(match[0])[1:-1], text)


def _print_bounded(text: str) -> None:
    """Writes ``text`` on stdout: whole to a pipe or a file; to a terminal, safe and cut short.

    A terminal gets no control characters (escape sequences in an output
    could rewrite the screen; they are shown escaped) and at most
    ``_RESULT_TERMINAL_MAX`` characters, a note on stderr saying how to get the rest.
    """
    if not out.is_terminal:
        _write_line(text.removesuffix("\n"))
        return
    shown = text[:_RESULT_TERMINAL_MAX]
    _write_line(_escape_controls(shown).removesuffix("\n"))
    if len(text) > len(shown):
        err.print(
            f"(the first {len(shown):,} of {len(text):,} characters shown; "
            "redirect to a file or a pipe for all of it)",
            style="dim",
        )


def _print_result(payload: common_pb2.Payload, *, of: str, command: str, raw_to_file: bool) -> None:
    """Prints a result on stdout: JSON indented, text as text, anything else described.

    A terminal first gets, on stderr, which task the result is of and its
    content type and size. Bytes that are neither (or a blob reference) are
    described, never written to a terminal (``command`` is the ``are result``
    that saves them); with ``raw_to_file`` they are written as they are to a
    pipe or a file.
    """
    kind = _payload_kind(payload)
    if out.is_terminal:
        err.print(f"(result of {of}: {_describe_payload(payload)})", style="dim")
    if kind == "json":
        text = json.dumps(json.loads(payload.data), indent=2, ensure_ascii=False)
        if out.is_terminal and len(text) <= min(_JSON_HIGHLIGHT_MAX, _RESULT_TERMINAL_MAX):
            out.print(JSON(text), soft_wrap=True)
        else:
            _print_bounded(text)
    elif kind == "text":
        _print_bounded(payload.data.decode())
    elif kind == "binary" and raw_to_file and not out.is_terminal:
        sys.stdout.flush()
        sys.stdout.buffer.write(payload.data)
        sys.stdout.buffer.flush()
    elif kind == "binary":
        out.print(Text(f"{_describe_payload(payload)} (binary: not printed)"), soft_wrap=True)
        err.print(Text(f"(save it with: {command} > FILE)", style="dim"))
    elif kind == "blob":
        out.print(
            Text(f"{_describe_payload(payload)} (in the sidecar's blob store: not printed)"), soft_wrap=True
        )


def _failure_text(failure: common_pb2.Failure | str) -> str:
    """A failure as ``(TYPE) MESSAGE``, or a state reason, for stderr; safe and cut short in a terminal."""
    if isinstance(failure, str):
        text = failure
    else:
        text = (f"({failure.type}) " if failure.type else "") + (failure.message or "(no message)")
    if err.is_terminal:
        cut = len(text) > _FAILURE_TERMINAL_MAX
        text = _escape_controls(text[:_FAILURE_TERMINAL_MAX]) + ("…" if cut else "")
    return text


def _print_failure_causes(failure: common_pb2.Failure, indent: str) -> None:
    cause, depth = failure, 0
    while cause.HasField("cause") and depth < _CAUSES_SHOWN:
        cause, depth = cause.cause, depth + 1
        err.print(Text(f"{indent}caused by {_failure_text(cause)}"))


async def _failed_tasks(client: Client, workflow_id: str) -> tuple[list[task_pb2.Task], bool]:
    """The workflow's first FAILED or REJECTED tasks, and whether there are more."""
    request = scheduler_service_pb2.ListTasksRequest(
        workflow_id=workflow_id, states=[task_pb2.TASK_STATE_FAILED, task_pb2.TASK_STATE_REJECTED]
    )
    return await _first_items(client.raw.scheduler.ListTasks, request, "tasks", _FAILED_TASKS_SHOWN, 100)


async def _print_failure(
    client: Client, workflow: workflow_pb2.Workflow, tasks: list[task_pb2.Task] | None = None
) -> None:
    """Says on stderr why a workflow did not complete: its failure, and its failed tasks' failures."""
    state = _enum_name(workflow_pb2.WorkflowState, workflow.state, "WORKFLOW_STATE_")
    line = Text.assemble(("error:", "red"), f" workflow {workflow.workflow_id} {state}")
    if workflow.HasField("failure"):
        line.append(f": {_failure_text(workflow.failure)}")
    err.print(line)
    if workflow.HasField("failure"):
        _print_failure_causes(workflow.failure, "  ")
    more = False
    if tasks is None:
        tasks, more = await _failed_tasks(client, workflow.workflow_id)
    for task in tasks:
        task_state = _enum_name(task_pb2.TaskState, task.state, "TASK_STATE_")
        attempt = f" after {task.attempt} attempts" if task.attempt > 1 else ""
        why = _failure_text(task.failure if task.HasField("failure") else task.state_reason)
        err.print(Text(f"  task {task.task_id} {task_state}{attempt}" + (f": {why}" if why else "")))
        if task.HasField("failure"):
            _print_failure_causes(task.failure, "    ")
    if more:
        err.print(f"  (more failed tasks: are status {workflow.workflow_id})", style="dim")


def _no_result(workflow: workflow_pb2.Workflow) -> str:
    """Why a COMPLETED workflow has no result to show."""
    if not workflow.result_task_id:
        return (
            f"workflow {workflow.workflow_id} has no result: its spec names no result_task_id and it has "
            "more than one final task (show one task's output with: "
            f"are result {workflow.workflow_id} --task TASK_ID)"
        )
    return (
        f"workflow {workflow.workflow_id} has no result: "
        f"its result task {workflow.result_task_id} gave no output"
    )


def _result_json(payload: common_pb2.Payload) -> dict[str, Any]:
    """The --json fields of a result: its content type and size, and its value, text, data or blob."""
    kind = _payload_kind(payload)
    if kind == "none":
        return {}
    answer: dict[str, Any] = {"contentType": _content_type(payload)}
    if kind == "blob":
        answer["blob"] = json_format.MessageToDict(payload.blob)
        return answer
    answer["sizeBytes"] = len(payload.data)
    if kind == "json":
        answer["value"] = json.loads(payload.data)
    elif kind == "text":
        answer["text"] = payload.data.decode()
    else:
        answer["data"] = base64.b64encode(payload.data).decode()
    return answer


def _workflow_result_json(workflow: workflow_pb2.Workflow, failed: list[task_pb2.Task]) -> dict[str, Any]:
    """``are result --json``: the workflow's id and state, its result, its failure and failed tasks."""
    answer: dict[str, Any] = {
        "workflowId": workflow.workflow_id,
        "state": _enum_name(workflow_pb2.WorkflowState, workflow.state, "WORKFLOW_STATE_"),
    }
    if workflow.result_task_id:
        answer["taskId"] = workflow.result_task_id
    if workflow.state == workflow_pb2.WORKFLOW_STATE_COMPLETED:
        answer.update(_result_json(workflow.result))
    if workflow.HasField("failure"):
        answer["failure"] = json_format.MessageToDict(workflow.failure)
    if failed:
        answer["failedTasks"] = [
            {"taskId": task.task_id, "state": _enum_name(task_pb2.TaskState, task.state, "TASK_STATE_")}
            | ({"failure": json_format.MessageToDict(task.failure)} if task.HasField("failure") else {})
            for task in failed
        ]
    return answer


@click.command("result")
@click.argument("workflow_id")
@click.option("--task", "task_id", default=None, metavar="TASK_ID", help="Print this task's output instead.")
@_json_option(
    "Print one line of JSON: the workflow (or task) id and state, the result's content type and size "
    "and its value (JSON), text, data (base64) or blob; a failure as its proto JSON mapping."
)
@_client_command
async def result(client: Client, workflow_id: str, *, task_id: str | None, as_json: bool) -> int:
    """Print what a workflow produced: the output of its result task (or, with --task, of one task).

    JSON is printed indented, text as text. Other bytes are described
    (content type and size) in a terminal and written as they are to a pipe
    or a file; a blob reference is described by its sha256, size and
    content type. A terminal is shown at most 64 KiB of text, a pipe or a
    file all of it. Exits 1, saying why on stderr, when the workflow (task)
    has not ended, did not complete (with its failure and its failed tasks'),
    or has no result.
    """
    if task_id is not None:
        return await _task_result(client, workflow_id, task_id, as_json=as_json)
    response = await client.raw.scheduler.GetWorkflow(
        scheduler_service_pb2.GetWorkflowRequest(workflow_id=workflow_id)
    )
    workflow = response.workflow
    state = _enum_name(workflow_pb2.WorkflowState, workflow.state, "WORKFLOW_STATE_")
    ended = workflow.state in _TERMINAL_WORKFLOW_STATES
    completed = workflow.state == workflow_pb2.WORKFLOW_STATE_COMPLETED
    failed: list[task_pb2.Task] = []
    if ended and not completed:
        failed, _ = await _failed_tasks(client, workflow_id)
    if as_json:
        _write_line(json.dumps(_workflow_result_json(workflow, failed), ensure_ascii=False))
    if not ended:
        err.print(
            Text.assemble(
                ("error:", "red"),
                f" workflow {workflow_id} is {state}: it has not ended, so it has no result yet "
                f"(follow it with: are status {workflow_id})",
            )
        )
        return 1
    if not completed:
        await _print_failure(client, workflow, failed)
        return 1
    if _payload_kind(workflow.result) == "none":
        err.print(Text.assemble(("error:", "red"), f" {_no_result(workflow)}"))
        return 1
    if not as_json:
        _print_result(
            workflow.result,
            of=f"task {workflow.result_task_id}",
            command=f"are result {workflow_id}",
            raw_to_file=True,
        )
    return 0


async def _task_result(client: Client, workflow_id: str, task_id: str, *, as_json: bool) -> int:
    """``are result WORKFLOW_ID --task TASK_ID``: one task's output, or why it has none."""
    response = await client.raw.scheduler.GetTask(
        scheduler_service_pb2.GetTaskRequest(workflow_id=workflow_id, task_id=task_id)
    )
    task = response.task
    state = _enum_name(task_pb2.TaskState, task.state, "TASK_STATE_")
    completed = task.state == task_pb2.TASK_STATE_COMPLETED
    if as_json:
        answer: dict[str, Any] = {"workflowId": workflow_id, "taskId": task_id, "state": state}
        answer.update(_result_json(task.output) if completed else {})
        if task.HasField("failure"):
            answer["failure"] = json_format.MessageToDict(task.failure)
        _write_line(json.dumps(answer, ensure_ascii=False))
    problem = None
    if task.state not in _CLOSED_TASK_STATES:
        problem = (
            f"task {task_id} of workflow {workflow_id} is {state}: it has not ended, so it has no output yet"
        )
    elif not completed:
        why = _failure_text(task.failure if task.HasField("failure") else task.state_reason)
        problem = f"task {task_id} of workflow {workflow_id} {state}" + (f": {why}" if why else "")
    elif _payload_kind(task.output) == "none":
        problem = f"task {task_id} of workflow {workflow_id} gave no output"
    if problem:
        err.print(Text.assemble(("error:", "red"), f" {problem}"))
        if task.HasField("failure"):
            _print_failure_causes(task.failure, "  ")
        return 1
    if not as_json:
        _print_result(
            task.output,
            of=f"task {task_id}",
            command=f"are result {workflow_id} --task {task_id}",
            raw_to_file=True,
        )
    return 0


# pools / cache


@click.command("pools")
@_client_command
async def pools(client: Client) -> int:
    """List the worker pools with their live status."""
    table = Table(
        "pool", "running", "queued", "backlog", "dispatched", "rejected", "oldest queued", "description"
    )
    request = scheduler_service_pb2.ListPoolsRequest(page_size=1000)
    for _ in range(100):
        page = await client.raw.scheduler.ListPools(request)
        for entry in page.pools:
            pool, state = entry.pool, entry.status
            table.add_row(
                Text(pool.name),
                str(state.running),
                str(state.queued),
                str(state.backlog),
                str(state.dispatched_total),
                str(state.rejected_total),
                _format_duration(state.oldest_queued_age_ms / 1000) if state.oldest_queued_age_ms else "-",
                Text(pool.description),
            )
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    _print_table(table, empty="no pools")
    return 0


@click.group("cache")
def cache() -> None:
    """The semantic cache."""


@cache.command("stats")
@click.option("--namespace", default="", help="Only this namespace (default: every namespace).")
@_client_command
async def cache_stats(client: Client, *, namespace: str) -> int:
    """Show hit rates, sizes and savings per cache namespace."""
    response = await client.raw.cache.GetCacheStats(
        cache_service_pb2.GetCacheStatsRequest(namespace=namespace)
    )
    table = Table(
        "namespace",
        "lookups",
        "exact",
        "semantic",
        "misses",
        "hit rate",
        "entries",
        "size",
        "saved tokens",
        "saved $",
        "ef (recall@1)",
    )
    for stats in response.stats:
        table.add_row(
            Text(stats.namespace),
            str(stats.lookups),
            str(stats.exact_hits),
            str(stats.semantic_hits),
            str(stats.misses),
            f"{stats.hit_rate:.1%}",
            _entries_cell(stats.entries, stats.unindexed_entries),
            _format_bytes(stats.size_bytes),
            str(stats.saved_tokens),
            f"{stats.saved_cost_micro_usd / 1e6:.4f}",
            _expansion_cell(stats.search_expansion, stats.measured_recall, stats.recall_samples),
        )
    _print_table(table, empty="no cache namespaces yet (a namespace is created with PutNamespace)")
    return 0


@cache.command("delete")
@click.argument("namespace")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@_client_command
async def cache_delete(client: Client, namespace: str, *, yes: bool) -> int:
    """Delete a cache namespace with its entries, counters and index.

    Asks first (showing how many entries it holds) unless --yes is given;
    without a terminal to ask on, --yes is required. The name is free
    afterwards, and the namespace no longer counts toward the 1,000.
    """
    [stats] = (
        await client.raw.cache.GetCacheStats(cache_service_pb2.GetCacheStatsRequest(namespace=namespace))
    ).stats
    if not yes:
        if not sys.stdin.isatty():
            err.print("[red]error:[/] not deleting without confirmation: pass --yes (no terminal to ask on)")
            return 2
        held = f"{stats.entries:,} entries, {_format_bytes(stats.size_bytes)}"
        if not await asyncio.to_thread(click.confirm, f"Delete cache namespace {namespace!r} ({held})?"):
            err.print("not deleted")
            return 1
    response = await client.raw.cache.DeleteNamespace(
        cache_service_pb2.DeleteNamespaceRequest(namespace=namespace)
    )
    out.print(Text.assemble("deleted ", (namespace, "bold"), f" ({response.removed_count:,} entries)"))
    return 0


def _expansion_cell(expansion: int, recall: float, samples: int) -> str:
    return f"{expansion} ({recall:.3f} of {samples})" if samples else f"{expansion} (not measured)"


def _entries_cell(entries: int, unindexed: int) -> str:
    return f"{entries} ({unindexed} to index)" if unindexed else str(entries)


# agents / route


@click.command("agents")
@click.option("--capability", default="", help="Only cards serving this capability.")
@click.option("--available", is_flag=True, help="Only cards that can take work now.")
@_client_command
async def agents(client: Client, *, capability: str, available: bool) -> int:
    """List the router's agent cards: registered ones and connected workers' classes."""
    table = Table("agent", "source", "capabilities", "cost $/call", "load", "available", "workers")
    shown, more = 0, False
    async for card in client.router.iter_agents(capability=capability, available_only=available):
        if shown == _MAX_ROWS:
            more = True
            break
        shown += 1
        table.add_row(
            Text(card.agent_id),
            Text(card.source),
            Text(", ".join(card.capabilities)),
            f"{card.cost_per_call_micro_usd / 1e6:.6f}",
            f"{card.running}/{card.capacity}",
            Text("yes") if card.available else Text("no", style="red"),
            str(len(card.worker_ids)),
        )
    which = "".join((f" serving {capability!r}" if capability else "", " available now" if available else ""))
    _print_table(
        table,
        empty=escape(f"no agent cards{which} (register one with RegisterAgent, or connect a worker)"),
    )
    if more:
        err.print(f"(the first {_MAX_ROWS:,} cards; filter with --capability)")
    return 0


@click.command("route")
@click.argument("task")
@click.option(
    "--mode",
    type=click.Choice(["cost_biased", "best_match"]),
    default=None,
    help="Ranking mode (default: the router's).",
)
@click.option("--threshold", type=float, default=None, help="Similarity an agent must reach.")
@click.option("--top-k", type=click.IntRange(1, 100), default=5, show_default=True, help="Agents shown.")
@_client_command
async def route(
    client: Client,
    *,
    task: str,
    mode: Literal["cost_biased", "best_match"] | None,
    threshold: float | None,
    top_k: int,
) -> int:
    """Show which agents a task described by TASK would go to, and why (nothing is dispatched)."""
    result = await client.router.route_task(
        task,
        mode=mode,
        threshold=threshold,
        top_k=top_k,
        include_below_threshold=True,
    )
    table = Table("#", "agent", "capability", "similarity", "cost $/call", "load", "why")
    for rank, c in enumerate(result.candidates, 1):
        table.add_row(
            str(rank),
            Text(c.agent_id, style="" if c.above_threshold else "dim"),
            Text(c.capability),
            f"{c.similarity:.3f}",
            f"{c.cost_per_call_micro_usd / 1e6:.6f}",
            f"{c.load:.2f}",
            Text(c.reason),
        )
    out.print(Text(f"mode {result.mode}, threshold {result.threshold:.2f}"))
    if not _print_table(
        table,
        empty="[red]no agent to route to[/]: none is registered or connected, or none can take "
        "work now (see `are agents`)",
    ):
        return 1
    if not any(c.above_threshold for c in result.candidates):
        err.print("[red]no agent reaches the threshold[/] (the best below it are shown)")
        err.print(
            "texts are embedded by the sidecar's --router-embedder; the default, lexical, matches shared "
            "words, not meaning (see README, Routing text)"
        )
        return 1
    return 0


def _format_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover
