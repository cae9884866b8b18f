"""The client commands of ``are``: talk to a running sidecar and show the answers with rich.

Every command connects with ``--target`` (``ARE_TARGET``, default
``127.0.0.1:50051``; ``unix:PATH`` for a socket) and ``--token``
(``ARE_TOKEN``). An error answer is printed with its code, reason and field
violations and exits 1; a service this sidecar does not implement yet prints
the server's UNIMPLEMENTED message and exits 1 too.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import click
import yaml
from google.protobuf import json_format
from rich.console import Console
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from are_sdk import Client, RpcError, UnavailableError
from are_sdk._proto.are.v1 import (
    cache_service_pb2,
    common_pb2,
    event_pb2,
    scheduler_service_pb2,
    task_pb2,
    trace_service_pb2,
    workflow_pb2,
)

__all__ = ["register_client_commands"]

_MAX_ROWS = 1000  # cards `are agents` prints at most
_PIPED_MAX_WIDTH = 1000  # columns a table printed to a pipe or file may take
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

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def _print_table(table: Table, *, empty: str) -> bool:
    """Prints ``table``, or ``empty`` on stderr when it has no rows; returns whether it had any.

    Printed to a pipe or a file (no terminal, no ``COLUMNS``), the table takes
    the width it needs: rich would otherwise squeeze it into 80 columns and
    cut every header and cell short.
    """
    if not table.row_count:
        err.print(empty)
        return False
    if not out.is_terminal and "COLUMNS" not in os.environ:
        wanted = Measurement.get(out, out.options.update(max_width=_PIPED_MAX_WIDTH), table).maximum
        if wanted > out.width:
            Console(highlight=False, width=wanted).print(table)
            return True
    out.print(table)
    return True


class _Settings:
    """The connection settings shared by every client command."""

    def __init__(self, target: str, token: str | None, connect_timeout: float) -> None:
        self.target = target
        self.token = token
        self.connect_timeout = connect_timeout


def _client_command(function: Callable[..., Awaitable[int | None]]) -> Callable[..., None]:
    """Adds the connection options and runs the async body with a connected client."""

    @click.option(
        "--target",
        envvar="ARE_TARGET",
        default="127.0.0.1:50051",
        show_default=True,
        help="The sidecar: HOST:PORT or unix:PATH [env ARE_TARGET].",
    )
    @click.option("--token", envvar="ARE_TOKEN", default=None, help="Bearer token [env ARE_TOKEN].")
    @click.option(
        "--connect-timeout", default=5.0, show_default=True, help="Seconds to wait for the sidecar."
    )
    @functools.wraps(function)
    def wrapper(target: str, token: str | None, connect_timeout: float, **kwargs: Any) -> None:
        settings = _Settings(target, token, connect_timeout)
        try:
            code = asyncio.run(_run(settings, functools.partial(function, **kwargs)))
        except KeyboardInterrupt:
            code = 130
        raise SystemExit(code)

    return wrapper


async def _run(settings: _Settings, body: Callable[[Client], Awaitable[int | None]]) -> int:
    try:
        async with await Client.connect(
            settings.target, token=settings.token, timeout=settings.connect_timeout
        ) as client:
            return (await body(client)) or 0
    except UnavailableError as error:
        err.print(f"[red]error:[/] {error.message or error}")
        return 1
    except RpcError as error:
        _print_rpc_error(error)
        return 1


def _print_rpc_error(error: RpcError) -> None:
    reason = f" ({error.reason})" if error.reason else ""
    err.print(f"[red]error:[/] {error.code.name}{reason}: {error.message}")
    for violation in error.field_violations:
        err.print(f"  [bold]{violation.field}[/]: {violation.description}")


def register_client_commands(group: click.Group) -> None:
    """Adds the client commands to the ``are`` group."""
    for command in (submit, status, trace, events, approve, reject, pools, cache, agents, route):
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


def event_line(event: event_pb2.Event) -> Text:
    """One event as a coloured line: time, sequence, type, task/attempt and details."""
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
    where = event.task_id + (f"#{event.attempt}" if event.attempt else "")
    line.append(f" {where:<20}" if where else f" {'':<20}")
    details: list[str] = []
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


async def _print_events(
    client: Client,
    *,
    workflow_ids: list[str],
    task_ids: list[str],
    event_types: list[str],
    after: int,
    limit: int | None,
    follow: bool,
    stop_when_workflow_ends: bool,
) -> int:
    last = after
    shown = 0
    ended = False
    async for event in client.trace.iter_events(
        workflow_ids=workflow_ids,
        task_ids=task_ids,
        event_types=event_types,
        after_sequence=after,
        page_size=500,
    ):
        out.print(event_line(event), soft_wrap=True)
        last = event.sequence
        shown += 1
        ended = ended or event.event_type in _TERMINAL_WORKFLOW_EVENTS
        if limit is not None and shown >= limit and not follow:
            return 0
    if not follow or (stop_when_workflow_ends and ended):
        if not shown:
            err.print("[dim]no events[/]")
        return 0
    stream = client.trace.stream(
        workflow_ids=workflow_ids, task_ids=task_ids, event_types=event_types, after_sequence=last
    )
    with out.status("[dim]following live events (Ctrl-C to stop)…[/]", spinner="dots") as spinner:
        async for item in stream:
            if isinstance(item, event_pb2.Event):
                out.print(event_line(item), soft_wrap=True)
                shown += 1
                spinner.update(f"[dim]following live events: {shown} so far (Ctrl-C to stop)…[/]")
                if stop_when_workflow_ends and item.event_type in _TERMINAL_WORKFLOW_EVENTS:
                    break
            elif isinstance(item, trace_service_pb2.EventsMissed):
                err.print(
                    f"[yellow]missed {item.missed_count} events "
                    f"(#{item.first_missed_sequence}..#{item.last_missed_sequence}): "
                    "dropped by retention[/]"
                )
    return 0


@click.command("trace")
@click.argument("workflow_id")
@click.option("--follow", "-f", is_flag=True, help="Keep following live events until the workflow ends.")
@click.option("--type", "types", multiple=True, help="Only events of this type (repeatable), e.g. LLM_CALL.")
@_client_command
async def trace(client: Client, workflow_id: str, *, follow: bool, types: tuple[str, ...]) -> int:
    """Show the events of a workflow; with --follow, stream them live."""
    return await _print_events(
        client,
        workflow_ids=[workflow_id],
        task_ids=[],
        event_types=_types(types),
        after=0,
        limit=None,
        follow=follow,
        stop_when_workflow_ends=True,
    )


@click.command("events")
@click.option("--workflow", "workflows", multiple=True, help="Only this workflow (repeatable).")
@click.option("--task", "tasks", multiple=True, help="Only this task id (repeatable).")
@click.option("--type", "types", multiple=True, help="Only this event type (repeatable), e.g. TASK_FAILED.")
@click.option("--after", default=0, show_default=True, help="Start after this sequence (a cursor).")
@click.option("--limit", default=100, show_default=True, help="Show at most this many retained events.")
@click.option("--follow", "-f", is_flag=True, help="Then follow new events live.")
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
    """List the flight recorder's events (all workflows unless filtered)."""
    return await _print_events(
        client,
        workflow_ids=list(workflows),
        task_ids=list(tasks),
        event_types=_types(types),
        after=after,
        limit=limit,
        follow=follow,
        stop_when_workflow_ends=False,
    )


# submit / status


def load_workflow_spec(path: Path) -> workflow_pb2.WorkflowSpec:
    """Reads a workflow spec from YAML or JSON (the proto JSON mapping of ``are.v1.WorkflowSpec``).

    ``input`` of a task and ``initial_state`` may be any JSON value; they are
    sent as JSON payloads. Durations are strings such as ``"30s"``.

    Raises:
        click.BadParameter: the file cannot be read or is not a valid spec.
    """
    try:
        text = path.read_text()
        document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise click.BadParameter(f"cannot read {path}: {error}", param_hint="FILE") from None
    if not isinstance(document, dict):
        raise click.BadParameter(f"{path} must hold a mapping (a WorkflowSpec)", param_hint="FILE")
    if "initial_state" in document:
        document["initial_state"] = _payload(document["initial_state"])
    for task in document.get("tasks") or []:
        if isinstance(task, dict) and "input" in task:
            task["input"] = _payload(task["input"])
    spec = workflow_pb2.WorkflowSpec()
    try:
        json_format.ParseDict(document, spec)
    except json_format.ParseError as error:
        raise click.BadParameter(f"{path} is not a valid workflow spec: {error}", param_hint="FILE") from None
    return spec


def _payload(value: Any) -> dict[str, str]:
    if isinstance(value, dict) and set(value) <= {"data", "blob", "content_type"} and value:
        return value  # already a Payload in the proto JSON mapping
    payload = common_pb2.Payload(data=json.dumps(value).encode(), content_type="application/json")
    return json_format.MessageToDict(payload)


@click.command("submit")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--wait", is_flag=True, help="Wait for the workflow to end, showing progress.")
@click.option("--request-id", default="", help="Idempotency key: resubmitting it returns the same workflow.")
@_client_command
async def submit(client: Client, file: Path, *, wait: bool, request_id: str) -> int:
    """Submit a workflow spec from a YAML or JSON FILE."""
    spec = load_workflow_spec(file)
    response = await client.raw.scheduler.SubmitWorkflow(
        scheduler_service_pb2.SubmitWorkflowRequest(spec=spec, request_id=request_id)
    )
    note = " (deduplicated)" if response.deduplicated else ""
    out.print(f"submitted [bold]{response.workflow_id}[/]{note}")
    if not wait:
        return 0
    return await _wait(client, response.workflow_id)


async def _wait(client: Client, workflow_id: str) -> int:
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
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
    return 0 if workflow.state == workflow_pb2.WORKFLOW_STATE_COMPLETED else 1


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
    if task.HasField("start_time"):
        end = _seconds(task.close_time) if task.HasField("close_time") else now
        label.append(f" {_format_duration(max(0.0, end - _seconds(task.start_time)))}", style="dim")
    if task.worker_id and task.state == task_pb2.TASK_STATE_RUNNING:
        label.append(f" on {task.worker_id}", style="dim")
    usage = task.usage.usage
    if usage.input_tokens or usage.output_tokens:
        label.append(f" tokens {usage.input_tokens}/{usage.output_tokens}", style="dim")
    if task.HasField("failure"):
        label.append(f" — {task.failure.message[:80]}", style="red")
    return label


def workflow_tree(workflow: workflow_pb2.Workflow, tasks: list[task_pb2.Task], now: float) -> Tree:
    """The DAG as a tree: each task under its first dependency, with state and duration."""
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

    def add(node: Tree, task: task_pb2.Task, depth: int) -> None:
        label = _task_label(task, now)
        others = [d for d in task.spec.depends_on if d in by_id][1:]
        if others:
            label.append(f" (also after {', '.join(others)})", style="dim")
        branch = node.add(label)
        if depth < 64:
            for child in children.get(task.task_id, []):
                add(branch, child, depth + 1)

    for task in tops:
        add(root, task, 0)
    return root


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
    """Show a workflow's DAG as a tree with task states and durations."""
    response = await client.raw.scheduler.GetWorkflow(
        scheduler_service_pb2.GetWorkflowRequest(workflow_id=workflow_id)
    )
    tasks = await _all_tasks(client, workflow_id)
    out.print(workflow_tree(response.workflow, tasks, time.time()))
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
                pool.name,
                str(state.running),
                str(state.queued),
                str(state.backlog),
                str(state.dispatched_total),
                str(state.rejected_total),
                _format_duration(state.oldest_queued_age_ms / 1000) if state.oldest_queued_age_ms else "-",
                pool.description,
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
            stats.namespace,
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
            card.agent_id,
            card.source,
            ", ".join(card.capabilities),
            f"{card.cost_per_call_micro_usd / 1e6:.6f}",
            f"{card.running}/{card.capacity}",
            "yes" if card.available else "[red]no[/]",
            str(len(card.worker_ids)),
        )
    which = "".join((f" serving {capability!r}" if capability else "", " available now" if available else ""))
    _print_table(
        table,
        empty=f"no agent cards{which} (register one with RegisterAgent, or connect a worker)",
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
        style = "" if c.above_threshold else "[dim]"
        table.add_row(
            str(rank),
            f"{style}{c.agent_id}",
            c.capability,
            f"{c.similarity:.3f}",
            f"{c.cost_per_call_micro_usd / 1e6:.6f}",
            f"{c.load:.2f}",
            c.reason,
        )
    out.print(f"mode {result.mode}, threshold {result.threshold:.2f}")
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
