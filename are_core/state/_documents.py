"""Versioned JSON state documents: patch, selective read, checkpoints, fork, retention.

Storage layout. A document is stored *split by top-level member*,
copy-on-write per version:

* ``state_heads``    ``wid`` -> :class:`StateHead` (latest/oldest version, size)
* ``state_versions`` ``wid NUL u64(version)`` -> :class:`VersionRecord`
* ``state_members``  ``wid NUL blake2b16(name) u64(version)`` ->
  :class:`MemberRecord` (the member's compact JSON from that version on, or a
  tombstone)

A patch writes only the members it changes, so a version costs the size of
what changed, not of the document. Reading ``/plan/steps`` at version *v* is
one LMDB cursor seek (the newest ``plan`` row at or below *v*) and a raw,
level-by-level walk of that member's JSON (msgspec ``Raw``): no other member,
no other version and no history is read or decoded, whatever the size of the
document or the number of versions. Retention drops version rows and the
member rows they superseded; a member unchanged for a long time keeps one
row, still the value at the oldest retained version.

Why this layout (``python -m benchmarks.state --layout``, 1 MiB document,
in-process, sync durability, on a shared 2-vCPU VM): reading one small path
takes ~9 µs against ~850 µs to decode the whole document that a
"full document per version" layout needs, and a one-member patch ~0.5-0.7 ms
against ~5-9 ms to re-encode and fsync 1 MiB per version (which also grows
the database by 1 MiB per version). Periodic snapshots plus deltas would
make a read at a version replay deltas; per-member rows make every read one
seek. The cost is paid by reads *inside* one very large member
(``/history/3000/content`` in a 0.9 MiB array: ~0.4 ms, a raw scan of that
member) and by whole-document reads, which assemble the members (sorted by
name) from their rows: keep large collections as their own top-level
members.

Numbers: JSON numbers are kept as Python ``int`` (any size) or IEEE-754
doubles, as msgspec decodes them; an untouched member is returned byte for
byte as it was stored. Nesting: a value taken in, and a document patched
with it, nests at most :data:`MAX_JSON_DEPTH` (512) arrays and objects deep.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import msgspec

from are_core.storage import Batch, GroupCommitter, KeyedLocks, KeyExistsError, ReadView, Storage, u64_key
from are_core.trace import Event, EventDraft, EventSink

from ._errors import (
    InvalidJsonError,
    InvalidStateArgumentError,
    LimitExceededError,
    PatchNotApplicableError,
    VersionMismatchError,
    VersionNotFoundError,
    WorkflowExistsError,
    WorkflowNotFoundError,
)
from ._model import (
    Checkpoint,
    MemberRecord,
    PatchOp,
    PatchResult,
    ReadResult,
    Retention,
    StateHead,
    VersionRecord,
)
from ._pointer import parse_pointer, remove_at, resolve_raw, set_at

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_MEMBERS",
    "MAX_OPERATIONS",
    "MAX_PATCH_BYTES",
    "MAX_READ_PATHS",
    "STATE_TABLES",
    "StateEngine",
    "json_depth",
]

MiB = 1024 * 1024
MAX_DOCUMENT_BYTES = 16 * MiB
MAX_PATCH_BYTES = 4 * MiB
MAX_OPERATIONS = 1000
MAX_READ_PATHS = 100
MAX_MEMBERS = 20_000
"""Top-level members a document holds at most (nest a larger collection under one member).

Each member is a row, and a version is one commit, which the group
committer bounds (100,000 mutations): a patch writes a row per member it
changes, a root replace one per member of the old and of the new document
(up to twice this), a fork one per member, and the prune of a version up
to two rows per member it changed (its own and the one it superseded, or
a tombstone and its successor): up to four times this for a root replace,
which must fit :data:`_BATCH_ROWS` beside a small patch. Unbounded, a
document that two patches grew to 120,000 members could never be forked
nor replaced (its rows did not fit one commit). The sidecar's engine refuses a
patch that would leave more (``StateEngine(max_members=...)``); one that
shrinks a larger document (stored before this bound) is not refused.
"""
_BATCH_ROWS = 90_000
"""Mutations a patch's batch may reach with the prune of old versions (under the committer's 100,000)."""
MAX_WRITER_CHARS = 256
# How deep a JSON value taken in may nest arrays and objects ([] is 1 deep, a scalar 0), and a
# patched document with it. Decoding, merging and encoding recurse a level at a time within
# the interpreter's limit (1,000 frames, the caller's stack included), which would otherwise
# decide at a depth that depends on the code path: a document one path stores could fail to
# encode or decode on another. Half of the limit leaves room for any path.
MAX_JSON_DEPTH = 512
_PRUNE_PER_PATCH = 16
_SCAN_PAGE = 1000

HEADS, VERSIONS, MEMBERS = "state_heads", "state_versions", "state_members"
STATE_TABLES = (HEADS, VERSIONS, MEMBERS)

_head_codec_enc = msgspec.msgpack.Encoder()
_head_dec = msgspec.msgpack.Decoder(StateHead)
_version_dec = msgspec.msgpack.Decoder(VersionRecord)
_member_dec = msgspec.msgpack.Decoder(MemberRecord)
_json_enc = msgspec.json.Encoder()
_json_dec = msgspec.json.Decoder()
_MISSING: Any = object()


def _encode(obj: object) -> bytes:
    return _head_codec_enc.encode(obj)


def member_hash(name: str) -> bytes:
    """The fixed-width (16-byte) key part of a top-level member name."""
    return hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _wid(workflow_id: str) -> bytes:
    return workflow_id.encode() + b"\x00"


def _pair_bytes(name: str, value: bytes) -> int:
    return len(_json_enc.encode(name)) + 1 + len(value)


def json_depth(value: Any, *, limit: int = MAX_JSON_DEPTH) -> int:
    """How deep ``value`` nests arrays and objects (``[]`` is 1, a scalar 0), counted to ``limit + 1``.

    It walks one level at a time, never recursing, and stops once past ``limit``.
    """
    level = [value] if isinstance(value, dict | list) else []
    depth = 0
    while level and depth <= limit:
        depth += 1
        children: list[Any] = []
        for node in level:
            children.extend(node.values() if isinstance(node, dict) else node)
        level = [child for child in children if isinstance(child, dict | list)]
    return depth


def _may_nest(text: bytes, depth: int) -> bool:
    """Whether JSON ``text`` can nest more than ``depth`` deep: it opens more arrays and objects.

    A count in C that spares the walk of :func:`json_depth` to nearly every value.
    """
    return text.count(b"[") + text.count(b"{") > depth


def decode_json(data: bytes, *, field: str) -> Any:
    """Decode JSON text, naming ``field`` on failure (numbers: int, or IEEE double).

    Also refused: NaN and Infinity (not JSON), a number beyond a double, a lone
    surrogate escape (not Unicode; the decoder refuses them) and nesting past
    :data:`MAX_JSON_DEPTH`.
    """
    try:
        value = _json_dec.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as error:
        reason = _lone_surrogate(data, error) or str(error)
        raise InvalidJsonError(f"{field or 'value'} is not valid JSON: {reason}", field=field) from None
    except RecursionError:  # nested deeper than the decoder goes
        raise InvalidJsonError(f"{field or 'value'} is nested too deep to decode", field=field) from None
    if _may_nest(data, MAX_JSON_DEPTH) and json_depth(value) > MAX_JSON_DEPTH:
        raise InvalidJsonError(
            f"{field or 'value'} nests arrays and objects more than {MAX_JSON_DEPTH} deep", field=field
        )
    return value


_SURROGATE_ESCAPE = re.compile(rb"\\+u[dD][89a-fA-F][0-9a-fA-F]{2}")
"""A run of backslashes then ``u`` and a UTF-16 surrogate (D800-DFFF): an escape if the run is odd."""


def _lone_surrogate(data: bytes, error: Exception) -> str | None:
    r"""Why ``data`` failed to decode, if a surrogate escape without its pair is the cause; else None.

    msgspec refuses ``"\ud800"`` followed by anything but a low surrogate
    escape, saying "Input data was truncated": the message names the escape
    and its byte offset instead.
    """
    if not isinstance(error, msgspec.DecodeError) or (
        "truncated" not in str(error) and "surrogate" not in str(error)
    ):
        return None
    escapes: list[tuple[int, bytes]] = []  # (offset, escape) of each surrogate escape, in order
    for match in _SURROGATE_ESCAPE.finditer(data):
        slashes = len(match.group()) - 5
        if slashes % 2:  # an even run is escaped backslashes followed by the letters "ud800": text
            escapes.append((match.end() - 6, match.group()[-6:]))
    i = 0
    while i < len(escapes):
        offset, escape = escapes[i]
        high = escape[3:4] in b"89abAB"
        if high and i + 1 < len(escapes):
            after, second = escapes[i + 1]
            if after == offset + 6 and second[3:4] not in b"89abAB":
                i += 2  # a pair: one character
                continue
        kind, partner = ("high", "a low (\\udc00-\\udfff)") if high else ("low", "a high (\\ud800-\\udbff)")
        return (
            f"the escape '{escape.decode()}' at byte {offset} is a lone UTF-16 {kind} surrogate, "
            f"not Unicode (it must be paired with {partner} surrogate escape)"
        )
    return None


class _Work:
    """The members a patch touches: loaded lazily at the current version, edited in memory."""

    def __init__(self, view: ReadView, workflow_id: str, version: int) -> None:
        self.view = view
        self.prefix = _wid(workflow_id)
        self.version = version
        self.values: dict[str, Any] = {}
        self.old_pairs: dict[str, int] = {}
        self.dirty: set[str] = set()

    def _old_raw(self, name: str) -> bytes | None:
        if self.version == 0:
            return None
        return member_at(self.view, self.prefix, member_hash(name), self.version)

    def peek(self, name: str) -> None:
        """Records the old size of ``name`` without decoding its value."""
        if name not in self.old_pairs:
            raw = self._old_raw(name)
            self.old_pairs[name] = _pair_bytes(name, raw) if raw is not None else -1

    def get(self, name: str) -> Any:
        if name not in self.values:
            raw = self._old_raw(name)
            if name not in self.old_pairs:
                self.old_pairs[name] = _pair_bytes(name, raw) if raw is not None else -1
            self.values[name] = _MISSING if raw is None else _json_dec.decode(raw)
        return self.values[name]

    def put(self, name: str, value: Any) -> None:
        self.peek(name)
        self.values[name] = value
        self.dirty.add(name)

    def drop(self, name: str) -> None:
        self.peek(name)
        self.values[name] = _MISSING
        self.dirty.add(name)

    def replace_all(self, document: dict[str, Any]) -> None:
        if self.version:
            for name, _ in iter_members(self.view, self.prefix, self.version):
                self.drop(name)
        for name in list(self.values):  # members set by earlier operations of the same patch
            self.drop(name)
        for name, value in document.items():
            self.put(name, value)


def member_at(view: ReadView, prefix: bytes, mhash: bytes, version: int) -> bytes | None:
    """The JSON of a member at ``version`` (its newest row at or below it), or None."""
    low = prefix + mhash
    rows = view.scan(MEMBERS, start=low, end=low + u64_key(version + 1), reverse=True, limit=1)
    if not rows:
        return None
    return _member_dec.decode(rows[0][1]).value


def iter_members(view: ReadView, prefix: bytes, version: int) -> Iterator[tuple[str, bytes]]:
    """Every member present at ``version``: (name, JSON), in key order.

    Each member's rows are walked by key; only the newest row at or below
    ``version`` is decoded.
    """
    start = prefix
    end = prefix[:-1] + b"\x01"
    width = len(prefix) + 16
    current_hash = b""
    best: bytes | None = None
    while True:
        rows = view.scan(MEMBERS, start=start, end=end, limit=_SCAN_PAGE)
        for key, value in rows:
            mhash = key[len(prefix) : width]
            if mhash != current_hash:
                if best is not None:
                    yield from _present(best)
                current_hash, best = mhash, None
            if int.from_bytes(key[width:], "big") <= version:
                best = value
        if len(rows) < _SCAN_PAGE:
            break
        start = rows[-1][0] + b"\x00"
    if best is not None:
        yield from _present(best)


def _present(raw: bytes) -> Iterator[tuple[str, bytes]]:
    record = _member_dec.decode(raw)
    if record.value is not None:
        yield record.name, record.value


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 MergePatch (on decoded JSON)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


class StateEngine:
    """One versioned JSON document per workflow, durable before every acknowledgement.

    The document's root is always a JSON object. Any valid workflow id may be
    patched: the first patch creates the document (version 1) — existence and
    open/closed checks belong to the scheduler, which can install
    ``gate`` to run them (see :attr:`gate`).

    Patches to one workflow are serialised (a per-workflow lock held from the
    read of the current version to the durable commit), so ``expected_version``
    checks are exact; patches to different workflows share group commits.
    """

    def __init__(
        self,
        storage: Storage,
        committer: GroupCommitter,
        *,
        retention: Retention | None = None,
        events: EventSink | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        max_members: int | None = None,
    ) -> None:
        """Bind the engine to storage; ``retention`` is the sidecar-wide default.

        ``max_members``: the top-level members a patch may leave in a
        document (the sidecar passes :data:`MAX_MEMBERS`, with which every
        document's fork, root replace and prune fit in one commit); None
        leaves only the commit's bound, for tools that build data folders.
        """
        self._storage = storage
        self.max_members = max_members
        self._committer = committer
        self.retention = retention or Retention()
        self._events = events
        self._clock_ns = clock_ns
        self._locks = KeyedLocks()

    # Locking

    def locked(self, workflow_id: str) -> AbstractAsyncContextManager[None]:
        """Holds the workflow's patch lock (for callers that stage patches themselves)."""
        return self._locks.hold(workflow_id)

    # Reads

    def head(self, workflow_id: str) -> StateHead | None:
        """The workflow's head row, or None if it has no state."""
        raw = self._storage.get(HEADS, workflow_id.encode())
        return None if raw is None else _head_dec.decode(raw)

    def get(
        self,
        workflow_id: str,
        paths: Sequence[str] = (),
        version: int | None = None,
        *,
        max_bytes: int | None = None,
    ) -> ReadResult:
        """Read JSON-pointer ``paths`` (empty: the whole document) at ``version`` (None: latest).

        A path asked twice is read once. ``max_bytes`` bounds the values
        read together: past it the read stops (before, 100 paths of a 16 MiB
        document held 1.6 GiB before the answer was refused for its size).

        Raises:
            WorkflowNotFoundError: the workflow has no state.
            VersionNotFoundError: the version is unknown or removed by retention.
            InvalidPointerError: a path is malformed (``paths[i]``).
            LimitExceededError: more than 100 paths, or values over ``max_bytes`` (``paths``).
        """
        if len(paths) > MAX_READ_PATHS:
            raise LimitExceededError(
                f"{len(paths)} paths asked; at most {MAX_READ_PATHS}", field="paths", limit=MAX_READ_PATHS
            )
        parsed = [parse_pointer(p, field=f"paths[{i}]") for i, p in enumerate(paths)] if paths else [()]
        asked = list(paths) if paths else [""]
        prefix = _wid(workflow_id)
        with self._storage.read() as view:
            head = self._head_in(view, workflow_id)
            target, update_ns = self._resolve_version(view, workflow_id, head, version)
            values: list[tuple[str, bytes]] = []
            missing: list[str] = []
            members: dict[str, bytes | None] = {}
            read: dict[str, bytes | None] = {}  # by pointer: a path asked again shares its value
            total = 0
            for pointer, tokens in zip(asked, parsed, strict=True):
                if pointer not in read:
                    if not tokens:
                        read[pointer] = self._whole(view, prefix, target)
                    else:
                        name = tokens[0]
                        if name not in members:
                            members[name] = member_at(view, prefix, member_hash(name), target)
                        raw = members[name]
                        read[pointer] = None if raw is None else resolve_raw(raw, tokens[1:])
                found = read[pointer]
                if found is None:
                    missing.append(pointer)
                    continue
                values.append((pointer, found))
                total += len(found)
                if max_bytes is not None and total > max_bytes:
                    raise LimitExceededError(
                        f"the values asked come to over {max_bytes} bytes, more than one answer holds; "
                        "read fewer paths at once",
                        field="paths",
                        limit=max_bytes,
                    )
        return ReadResult(version=target, update_time_ns=update_ns, values=values, missing_paths=missing)

    def _whole(self, view: ReadView, prefix: bytes, version: int) -> bytes:
        pairs = sorted(iter_members(view, prefix, version))
        return b"{" + b",".join(_json_enc.encode(n) + b":" + v for n, v in pairs) + b"}"

    def _head_in(self, view: ReadView, workflow_id: str) -> StateHead:
        raw = view.get(HEADS, workflow_id.encode())
        if raw is None:
            raise WorkflowNotFoundError(
                f"workflow {workflow_id!r} has no state", field="workflow_id", workflow_id=workflow_id
            )
        return _head_dec.decode(raw)

    def _resolve_version(
        self, view: ReadView, workflow_id: str, head: StateHead, version: int | None
    ) -> tuple[int, int]:
        if version is None or version == head.latest_version:
            return head.latest_version, head.update_time_ns
        raw = None
        if head.oldest_version <= version <= head.latest_version:
            raw = view.get(VERSIONS, _wid(workflow_id) + u64_key(version))
        if raw is None:
            raise VersionNotFoundError(
                f"workflow {workflow_id!r} has no state version {version} "
                f"(retained: {head.oldest_version} to {head.latest_version})",
                oldest=head.oldest_version,
                latest=head.latest_version,
            )
        return version, _version_dec.decode(raw).create_time_ns

    def checkpoints(
        self, workflow_id: str, *, before: int | None = None, limit: int = 100
    ) -> tuple[list[Checkpoint], StateHead]:
        """Retained versions below ``before`` (None: all), newest first, at most ``limit``."""
        prefix = _wid(workflow_id)
        with self._storage.read() as view:
            head = self._head_in(view, workflow_id)
            end = prefix + u64_key(before) if before is not None else prefix[:-1] + b"\x01"
            rows = view.scan(VERSIONS, start=prefix, end=end, reverse=True, limit=limit)
        out = []
        for _, raw in rows:
            rec = _version_dec.decode(raw)
            out.append(
                Checkpoint(
                    version=rec.version,
                    create_time_ns=rec.create_time_ns,
                    writer=rec.writer,
                    task_id=rec.task_id,
                    attempt=rec.attempt,
                    size_bytes=rec.size_bytes,
                    event_sequence=rec.event_sequence,
                )
            )
        return out, head

    # Writes

    async def patch(
        self,
        workflow_id: str,
        *,
        merge_patch: bytes | None = None,
        operations: Sequence[PatchOp] | None = None,
        expected_version: int | None = None,
        writer: str = "",
        task_id: str = "",
        attempt: int = 0,
        span_id: str = "",
        extra: Callable[[Batch], None] | None = None,
    ) -> PatchResult:
        """Apply one merge patch or operation list as one new version, durably.

        ``extra`` may add the caller's own mutations to the same atomic batch
        (the scheduler writing a task completion with its output). Field names
        in errors are relative to ``StatePatch`` (``operations.operations[2].path``).
        ``span_id`` is the writing attempt's span, for its STATE_PATCHED event.

        Raises:
            VersionMismatchError, InvalidJsonError, InvalidPointerError,
            LimitExceededError, PatchNotApplicableError,
            InvalidStateArgumentError; storage errors. Nothing changes on error.
        """
        async with self.locked(workflow_id):
            batch = self._storage.batch()
            events: list[Event] = []
            result = self.stage_patch(
                batch,
                workflow_id,
                merge_patch=merge_patch,
                operations=operations,
                expected_version=expected_version,
                writer=writer,
                task_id=task_id,
                attempt=attempt,
                span_id=span_id,
                events_out=events,
            )
            if extra is not None:
                extra(batch)
            await self._committer.submit(batch)
        if self._events is not None and events:
            self._events.publish(events)
        return result

    def stage_patch(
        self,
        batch: Batch,
        workflow_id: str,
        *,
        merge_patch: bytes | None = None,
        operations: Sequence[PatchOp] | None = None,
        expected_version: int | None = None,
        writer: str = "",
        task_id: str = "",
        attempt: int = 0,
        span_id: str = "",
        events_out: list[Event] | None = None,
        then_operations: Sequence[PatchOp] = (),
        retention: Retention | None = None,
        deferred: list[Callable[[], None]] | None = None,
        max_patch_bytes: int = MAX_PATCH_BYTES,
    ) -> PatchResult:
        """Add a patch's mutations to ``batch``; call under :meth:`locked` and then commit it.

        ``then_operations`` are applied after the patch in the same version
        (the scheduler's ``output_state_pointer`` write after a completion's
        patch); ``retention`` is the document's own retention when this
        patch creates it. With ``deferred``, the STATE_PATCHED event and the
        version row that names its sequence are left to a callable appended
        there, which the caller must run before the batch commits: a submit
        records its WORKFLOW_SUBMITTED first, so the trace shows the workflow
        before its first state.
        """
        if (merge_patch is None) == (operations is None):
            raise InvalidStateArgumentError(
                "exactly one of merge_patch_json or operations must be set", field=""
            )
        if len(writer) > MAX_WRITER_CHARS:
            raise LimitExceededError(
                f"writer is {len(writer)} characters; at most {MAX_WRITER_CHARS}", field="writer", limit=256
            )
        decoded_ops = _check_patch(merge_patch, operations, max_patch_bytes)
        now = self._clock_ns()
        prefix = _wid(workflow_id)
        with self._storage.read() as view:
            raw_head = view.get(HEADS, workflow_id.encode())
            head = None if raw_head is None else _head_dec.decode(raw_head)
            current = head.latest_version if head else 0
            if expected_version is not None and expected_version != current:
                raise VersionMismatchError(
                    f"workflow {workflow_id!r} is at state version {current}, not {expected_version}",
                    expected=expected_version,
                    current=current,
                )
            work = _Work(view, workflow_id, current)
            if merge_patch is not None:
                _apply_merge(work, decoded_ops[0])
            else:
                assert operations is not None
                _apply_operations(work, operations, decoded_ops)
            if then_operations:
                _apply_operations(work, then_operations, _check_operations(then_operations))
            version = current + 1
            rows, count, pairs = _member_rows(work, head)
            new_head = StateHead(
                latest_version=version,
                oldest_version=head.oldest_version if head else 1,
                update_time_ns=now,
                member_count=count,
                pairs_bytes=pairs,
                keep_versions=head.keep_versions if head else (retention.keep_versions if retention else 0),
                keep_seconds=head.keep_seconds if head else (retention.keep_seconds if retention else -1.0),
            )
            _check_document(
                new_head,
                head,
                max_members=self.max_members,
                field="merge_patch_json" if merge_patch is not None else "operations",
            )
            # Nothing raises past this point: the batch only grows once the patch is valid.
            for mhash, record in rows:
                batch.put(MEMBERS, prefix + mhash + u64_key(version), _encode(record))
            patch_bytes = (
                len(merge_patch)
                if merge_patch is not None
                else sum(len(op.path) + len(op.value_json) for op in operations or ())
            ) + sum(len(op.path) + len(op.value_json) for op in then_operations)
            changed = [mhash for mhash, _ in rows]
            size_bytes = new_head.size_bytes

            def record_version() -> None:
                sequence = self._record_event(
                    batch,
                    workflow_id=workflow_id,
                    task_id=task_id,
                    attempt=attempt,
                    span_id=span_id,
                    version=version,
                    writer=writer,
                    patch_bytes=patch_bytes,
                    events_out=events_out,
                )
                version_record = VersionRecord(
                    version=version,
                    create_time_ns=now,
                    writer=writer,
                    task_id=task_id,
                    attempt=attempt,
                    size_bytes=size_bytes,
                    event_sequence=sequence,
                    changed=changed,
                )
                batch.put(VERSIONS, prefix + u64_key(version), _encode(version_record))

            if deferred is None:
                record_version()
            else:
                deferred.append(record_version)
            new_head = self._stage_prune(view, batch, prefix, new_head, written=set(changed), now=now)
            batch.put(HEADS, workflow_id.encode(), _encode(new_head))
        return PatchResult(version=version, update_time_ns=now)

    def _record_event(
        self,
        batch: Batch,
        *,
        workflow_id: str,
        task_id: str,
        attempt: int,
        span_id: str,
        version: int,
        writer: str,
        patch_bytes: int,
        events_out: list[Event] | None,
    ) -> int:
        """Adds a STATE_PATCHED event to ``batch``; returns its sequence (0 without a sink)."""
        if self._events is None:
            return 0
        event = self._events.record(
            batch,
            EventDraft(
                event_type="STATE_PATCHED",
                workflow_id=workflow_id,
                task_id=task_id,
                attempt=attempt,
                span_id=span_id,
                attributes={
                    "are.state.version": version,
                    "are.state.writer": writer or "client",
                    "are.state.patch_size_bytes": patch_bytes,
                },
            ),
        )
        if events_out is not None:
            events_out.append(event)
        return event.sequence

    def _stage_prune(
        self, view: ReadView, batch: Batch, prefix: bytes, head: StateHead, *, written: set[bytes], now: int
    ) -> StateHead:
        """Drop up to 16 of the oldest versions that are outside both retention bounds.

        As many as fit the batch: the prune of a version deletes a row or two
        per member it changed (its own, and the one it superseded), and the
        batch stays within :data:`_BATCH_ROWS`; versions that do not fit are
        dropped by the next patches (a smaller one has room for any version).
        """
        keep_versions = head.keep_versions or self.retention.keep_versions
        keep_seconds = head.keep_seconds if head.keep_seconds >= 0 else self.retention.keep_seconds
        latest = head.latest_version
        count_floor = latest - keep_versions + 1  # versions below it are outside the count bound
        if head.oldest_version >= count_floor:
            return head
        age_floor = now - int(keep_seconds * 1e9)
        rows = view.scan(
            VERSIONS,
            start=prefix + u64_key(head.oldest_version),
            end=prefix + u64_key(min(count_floor, latest)),
            limit=_PRUNE_PER_PATCH,
        )
        doomed: list[VersionRecord] = []
        deletions = 0  # at most: the version row, and two rows per member it changed
        for _, raw in rows:
            rec = _version_dec.decode(raw)
            if rec.create_time_ns > age_floor:
                break
            deletions += 1 + 2 * len(rec.changed)
            if len(batch) + deletions > _BATCH_ROWS:
                break
            doomed.append(rec)
        if not doomed:
            return head
        new_oldest = doomed[-1].version + 1
        for rec in doomed:
            batch.delete(VERSIONS, prefix + u64_key(rec.version))
        for mhash in dict.fromkeys(m for rec in doomed for m in rec.changed):
            _stage_dead_rows(
                view,
                batch,
                prefix + mhash,
                new_oldest,
                live_in_batch=new_oldest == latest and mhash in written,
            )
        return msgspec.structs.replace(head, oldest_version=new_oldest)

    def stage_initial(
        self,
        batch: Batch,
        workflow_id: str,
        document_json: bytes,
        *,
        writer: str = "submit",
        retention: Retention | None = None,
        deferred: list[Callable[[], None]] | None = None,
    ) -> PatchResult:
        """Stage version 1 of a new workflow's document (for SubmitWorkflow's batch).

        ``retention`` (keep_versions 0 / keep_seconds negative: the default)
        is the workflow's own, recorded in the same head row; ``deferred`` is
        :meth:`stage_patch`'s.

        Raises:
            InvalidJsonError: not JSON, or not an object.
            LimitExceededError: over 16 MiB.
        """
        if len(document_json) > MAX_DOCUMENT_BYTES:
            raise LimitExceededError(
                f"the initial state is {len(document_json):,} bytes; at most {MAX_DOCUMENT_BYTES:,}",
                field="initial_state",
                limit=MAX_DOCUMENT_BYTES,
            )
        doc = decode_json(document_json, field="initial_state") if document_json else {}
        if not isinstance(doc, dict):
            raise InvalidJsonError("the initial state must be a JSON object", field="initial_state")
        try:
            # A document, not a patch: bounded as a document is (16 MiB), not as a patch (4 MiB).
            return self.stage_patch(
                batch,
                workflow_id,
                operations=[PatchOp("set", "", _json_enc.encode(doc))],
                expected_version=0,
                writer=writer,
                retention=retention,
                deferred=deferred,
                max_patch_bytes=MAX_DOCUMENT_BYTES,
            )
        except LimitExceededError as error:  # named for what the caller sent, not the patch it became
            message = error.message.replace("the patched document", "the initial state")
            raise LimitExceededError(
                message.replace("the operations are", "the initial state is (re-encoded)"),
                field="initial_state",
                limit=error.limit,
            ) from None

    def stage_retention(self, batch: Batch, workflow_id: str, retention: Retention) -> None:
        """Record a workflow's own retention (``WorkflowSpec.state_retention``); needs a head."""
        head = self.head(workflow_id)
        if head is None:
            raise WorkflowNotFoundError(
                f"workflow {workflow_id!r} has no state", field="workflow_id", workflow_id=workflow_id
            )
        batch.put(
            HEADS,
            workflow_id.encode(),
            _encode(
                msgspec.structs.replace(
                    head, keep_versions=retention.keep_versions, keep_seconds=retention.keep_seconds
                )
            ),
        )

    async def fork(
        self,
        workflow_id: str,
        version: int,
        new_workflow_id: str,
        *,
        extra: Callable[[Batch, int], None] | None = None,
    ) -> int:
        """Start ``new_workflow_id``'s document (version 1) as ``workflow_id`` at ``version`` (0: latest).

        ``extra(batch, source_version)`` may add the caller's own mutations to
        the same atomic batch (the sidecar's record that the fork is not
        finished yet). Returns the source version used.

        Raises:
            WorkflowNotFoundError, VersionNotFoundError, WorkflowExistsError.
        """
        prefix, new_prefix = _wid(workflow_id), _wid(new_workflow_id)
        now = self._clock_ns()
        batch = self._storage.batch()
        with self._storage.read() as view:
            head = self._head_in(view, workflow_id)
            source, _ = self._resolve_version(view, workflow_id, head, version or None)
            if view.get(HEADS, new_workflow_id.encode()) is not None:
                raise WorkflowExistsError(
                    f"workflow {new_workflow_id!r} already has state", field="new_workflow_id"
                )
            count = pairs = 0
            changed = []
            for name, value in iter_members(view, prefix, source):
                mhash = member_hash(name)
                changed.append(mhash)
                count += 1
                pairs += _pair_bytes(name, value)
                batch.put(MEMBERS, new_prefix + mhash + u64_key(1), _encode(MemberRecord(name, value)))
        new_head = StateHead(
            latest_version=1,
            oldest_version=1,
            update_time_ns=now,
            member_count=count,
            pairs_bytes=pairs,
            keep_versions=head.keep_versions,
            keep_seconds=head.keep_seconds,
        )
        record = VersionRecord(
            version=1,
            create_time_ns=now,
            writer="fork",
            task_id="",
            attempt=0,
            size_bytes=new_head.size_bytes,
            event_sequence=0,
            changed=changed,
        )
        batch.put(VERSIONS, new_prefix + u64_key(1), _encode(record))
        batch.put_if_absent(HEADS, new_workflow_id.encode(), _encode(new_head))
        if extra is not None:
            extra(batch, source)
        try:
            await self._committer.submit(batch)
        except KeyExistsError:
            raise WorkflowExistsError(
                f"workflow {new_workflow_id!r} already has state", field="new_workflow_id"
            ) from None
        return source

    async def delete(self, workflow_id: str) -> int:
        """Remove every version of the workflow's document; returns the bytes removed (0: none).

        The head goes first (readers see no state at once); the rest follows in
        bounded batches, so a crash half-way leaves only unreachable rows that
        a repeated call removes.
        """
        prefix = _wid(workflow_id)
        head = self._storage.get(HEADS, workflow_id.encode())
        removed = 0
        if head is not None:
            await self._committer.submit(self._storage.batch().delete(HEADS, workflow_id.encode()))
            removed += len(head)
        for table in (MEMBERS, VERSIONS):
            while True:
                rows = self._storage.scan(table, prefix=prefix, limit=5000)
                if not rows:
                    break
                batch = self._storage.batch()
                for key, value in rows:
                    batch.delete(table, key)
                    removed += len(key) + len(value)
                await self._committer.submit(batch)
        return removed


def _stage_dead_rows(view: ReadView, batch: Batch, low: bytes, oldest: int, *, live_in_batch: bool) -> None:
    """Delete a member's rows that no version from ``oldest`` on reads (``low``: its key prefix).

    A member changed at a version retention drops is read, from the new
    oldest version on, from its newest row at or below it: every older row
    is dead, whichever version wrote it (also one an earlier prune kept
    because it still served the oldest version then), and so is that row
    itself if it is a tombstone. ``live_in_batch``: the newest row is at
    ``oldest`` in the batch being staged.
    """
    if live_in_batch:
        keep_from = oldest
    else:
        newest = view.scan(MEMBERS, start=low, end=low + u64_key(oldest + 1), reverse=True, limit=1)
        if not newest:
            return
        keep_from = int.from_bytes(newest[0][0][-8:], "big")
        if _member_dec.decode(newest[0][1]).value is None:
            keep_from += 1  # a tombstone reads as no row at all
    for key, _ in view.scan(MEMBERS, start=low, end=low + u64_key(keep_from), limit=_SCAN_PAGE):
        batch.delete(MEMBERS, key)


def _member_rows(work: _Work, head: StateHead | None) -> tuple[list[tuple[bytes, MemberRecord]], int, int]:
    """The member rows a patch writes, and the document's new member count and pair bytes."""
    count = head.member_count if head else 0
    pairs = head.pairs_bytes if head else 0
    rows: list[tuple[bytes, MemberRecord]] = []
    for name in sorted(work.dirty):
        value = work.values[name]
        old = work.old_pairs[name]
        if value is _MISSING and old < 0:
            continue  # removing what was never there changes nothing
        if old >= 0:
            count -= 1
            pairs -= old
        encoded: bytes | None = None
        if value is not _MISSING:
            encoded = _json_enc.encode(value)
            count += 1
            pairs += _pair_bytes(name, encoded)
        rows.append((member_hash(name), MemberRecord(name, encoded)))
    return rows, count, pairs


def _check_document(
    new_head: StateHead, head: StateHead | None, *, max_members: int | None, field: str
) -> None:
    """Refuses a patched document over 16 MiB, or over ``max_members`` members unless it shrank."""
    count = new_head.member_count
    if max_members is not None and count > max_members and count > (head.member_count if head else 0):
        raise LimitExceededError(
            f"the patched document would have {count:,} top-level members; at most "
            f"{max_members:,} (nest a large collection under one member)",
            field=field,
            limit=max_members,
        )
    if new_head.size_bytes > MAX_DOCUMENT_BYTES:
        raise LimitExceededError(
            f"the patched document would be {new_head.size_bytes} bytes; at most {MAX_DOCUMENT_BYTES}",
            field=field,
            limit=MAX_DOCUMENT_BYTES,
        )


def _check_patch(
    merge_patch: bytes | None, operations: Sequence[PatchOp] | None, max_bytes: int = MAX_PATCH_BYTES
) -> list[Any]:
    """Check bounds and decode the JSON of a patch (before any read)."""
    if merge_patch is not None:
        return [_check_merge(merge_patch, max_bytes)]
    assert operations is not None
    return _check_operations(operations, max_bytes)


def _check_merge(merge_patch: bytes, max_bytes: int = MAX_PATCH_BYTES) -> dict[str, Any]:
    if len(merge_patch) > max_bytes:
        raise LimitExceededError(
            f"the merge patch is {len(merge_patch)} bytes; at most {max_bytes}",
            field="merge_patch_json",
            limit=max_bytes,
        )
    doc = decode_json(merge_patch, field="merge_patch_json")
    if not isinstance(doc, dict):
        raise InvalidJsonError("a merge patch must be a JSON object", field="merge_patch_json")
    return doc


def _check_operations(operations: Sequence[PatchOp], max_bytes: int = MAX_PATCH_BYTES) -> list[Any]:
    if not operations:
        raise InvalidStateArgumentError("give 1 to 1,000 operations", field="operations.operations")
    if len(operations) > MAX_OPERATIONS:
        raise LimitExceededError(
            f"{len(operations)} operations; at most {MAX_OPERATIONS}",
            field="operations.operations",
            limit=MAX_OPERATIONS,
        )
    total = sum(len(op.path) + len(op.value_json) for op in operations)
    if total > max_bytes:
        raise LimitExceededError(
            f"the operations are {total} bytes; at most {max_bytes}",
            field="operations.operations",
            limit=max_bytes,
        )
    values = []
    for i, op in enumerate(operations):
        field = f"operations.operations[{i}]"
        tokens = parse_pointer(op.path, field=f"{field}.path")
        if op.op == "set":
            value = decode_json(op.value_json, field=f"{field}.value_json")
            if not tokens and not isinstance(value, dict):
                raise InvalidJsonError(
                    "the document root must stay a JSON object", field=f"{field}.value_json"
                )
            room = MAX_JSON_DEPTH - len(tokens)  # the value sits len(tokens) levels down
            if _may_nest(op.value_json, room) and json_depth(value, limit=room) > room:
                raise InvalidJsonError(
                    f"set at {op.path[:80]!r} (depth {len(tokens)}), the value would nest the "
                    f"document's arrays and objects more than {MAX_JSON_DEPTH} deep",
                    field=f"{field}.value_json",
                )
            values.append((tokens, value))
        else:
            if not tokens:
                raise InvalidStateArgumentError(
                    "removing the document root is not allowed", field=f"{field}.path"
                )
            values.append((tokens, None))
    return values


def _apply_merge(work: _Work, patch: dict[str, Any]) -> None:
    for name, value in patch.items():
        if value is None:
            work.drop(name)
        elif isinstance(value, dict):
            old = work.get(name)
            work.put(name, _merge(None if old is _MISSING else old, value))
        else:
            work.put(name, value)


def _apply_operations(work: _Work, operations: Sequence[PatchOp], decoded: list[Any]) -> None:
    for i, (op, (tokens, value)) in enumerate(zip(operations, decoded, strict=True)):
        field = f"operations.operations[{i}].path"
        if not tokens:
            work.replace_all(value)
            continue
        name = tokens[0]
        if op.op == "set":
            if len(tokens) == 1:
                work.put(name, value)
                continue
            member = work.get(name)
            if member is _MISSING:
                raise PatchNotApplicableError(
                    f"cannot set {op.path!r}: /{tokens[0]!s} does not exist", field=field
                )
            try:
                work.put(name, set_at(member, tokens[1:], value, op.path))
            except PatchNotApplicableError as error:
                error.field = field
                raise
        elif len(tokens) == 1:
            work.drop(name)
        else:
            member = work.get(name)
            if member is not _MISSING and remove_at(member, tokens[1:]):
                work.put(name, member)
