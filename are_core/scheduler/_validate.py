"""Graph checks on a workflow's tasks: unique ids, known dependencies, no cycle."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from ._conditions import check_pointer
from ._errors import SpecError
from ._model import TaskSpec

__all__ = ["find_cycle", "validate_graph"]


def validate_graph(  # noqa: C901 - one check per contract rule, in the contract's order
    tasks: Sequence[TaskSpec],
    *,
    field: str = "spec.tasks",
    existing: Mapping[str, object] | Collection[str] = (),
) -> None:
    """Raises :class:`SpecError` naming the first bad field of ``tasks``.

    ``existing`` holds the ids already in the workflow (for SpawnTasks): new
    tasks may depend on them, and may not reuse them.
    """
    index: dict[str, int] = {}
    for i, task in enumerate(tasks):
        if task.task_id in index:
            raise SpecError(
                "DUPLICATE_TASK_ID",
                f"{field}[{i}].task_id",
                f"task id {task.task_id!r} is already used by {field}[{index[task.task_id]}]",
            )
        index[task.task_id] = i
    for i, task in enumerate(tasks):
        seen: set[str] = set()
        for j, dep in enumerate(task.depends_on):
            if dep not in index and dep not in existing:
                raise SpecError(
                    "UNKNOWN_DEPENDENCY",
                    f"{field}[{i}].depends_on[{j}]",
                    f"task {task.task_id!r} depends on {dep!r}, which is not a task of the workflow",
                )
            if dep == task.task_id:
                raise SpecError(
                    "DAG_CYCLE",
                    f"{field}[{i}].depends_on[{j}]",
                    f"task {task.task_id!r} depends on itself",
                )
            if dep in seen:
                raise SpecError(
                    "INVALID_ARGUMENT", f"{field}[{i}].depends_on[{j}]", f"dependency {dep!r} is listed twice"
                )
            seen.add(dep)
        for j, condition in enumerate(task.conditions):
            if condition.task_id not in seen:
                raise SpecError(
                    "UNKNOWN_DEPENDENCY",
                    f"{field}[{i}].conditions[{j}].task_id",
                    f"condition on {condition.task_id!r}, which is not in depends_on of {task.task_id!r}",
                )
            problem = check_pointer(condition.pointer)
            if problem:
                raise SpecError("INVALID_JSON_POINTER", f"{field}[{i}].conditions[{j}].pointer", problem)
    cycle = find_cycle(tasks)
    if cycle:
        first = index[cycle[0]]
        path = " -> ".join([*cycle, cycle[0]])
        raise SpecError("DAG_CYCLE", f"{field}[{first}].depends_on", f"the dependencies form a cycle: {path}")


def find_cycle(tasks: Sequence[TaskSpec]) -> list[str]:
    """Returns one cycle among ``tasks`` (ids in dependency order), or [] if acyclic.

    Dependencies on ids outside ``tasks`` are ignored (they are existing,
    already acyclic tasks). Iterative, so deep chains do not hit recursion limits.
    """
    deps = {t.task_id: [d for d in t.depends_on if d != t.task_id] for t in tasks}
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(deps, white)
    for root in deps:
        if color[root] != white:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        color[root] = grey
        while stack:
            node, position = stack[-1]
            edges = deps[node]
            if position < len(edges):
                stack[-1] = (node, position + 1)
                nxt = edges[position]
                state = color.get(nxt)
                if state is None or state == black:
                    continue
                if state == grey:
                    path = [n for n, _ in stack]
                    cycle = path[path.index(nxt) :]
                    cycle.reverse()  # dependency order: a depends on b -> b first
                    return cycle
                color[nxt] = grey
                stack.append((nxt, 0))
            else:
                color[node] = black
                stack.pop()
    return []
