"""State: versioned JSON documents, selective reads, checkpoints, memory, blobs.

* :class:`StateEngine` keeps one JSON document per workflow, split by
  top-level member and copy-on-write per version, so that a patch costs what
  it changes and a read of ``/plan/steps`` at any retained version is one
  cursor seek plus a raw walk of one member (see ``_documents``).
* :class:`MemoryStore` keeps notes per workflow and answers top-k queries
  through a usearch index derived from LMDB.
* :class:`BlobStore` keeps content-addressed blobs in 1 MiB chunks, with
  the references that keep them (``stage_reference`` into the caller's
  batch, ``release_referrer``) and a sweep of old unreferenced ones.

Exceptions::

    StateError
    ├── InvalidStateArgumentError   malformed value
    ├── InvalidJsonError            not JSON / merge patch not an object
    ├── InvalidPointerError         not an RFC 6901 pointer
    ├── LimitExceededError          over a documented bound (.limit)
    ├── PatchNotApplicableError     pointer op cannot apply
    ├── VersionMismatchError        expected_version is stale (.current)
    ├── VersionNotFoundError        unknown or pruned version
    ├── WorkflowNotFoundError       no state for the workflow
    ├── WorkflowClosedError         (scheduler gate) workflow closed
    ├── TaskNotHeldError            (scheduler gate) task attempt not held
    ├── WorkflowExistsError         fork target already has state
    ├── BlobNotFoundError           unknown digest
    ├── BlobDigestMismatchError     bytes do not hash to the declared digest
    ├── BlobSizeMismatchError       byte count differs from the declared size
    ├── DimensionMismatchError      vector dimension differs from the memory's
    └── EmbedderUnavailableError    text given, no compatible embedder
"""

from ._blobs import (
    BLOB_TABLES,
    MAX_BLOB_BYTES,
    MAX_CHUNK_BYTES,
    MAX_REFERRER_BYTES,
    TOUCH_GRACE_S,
    BlobInfo,
    BlobStore,
    BlobUpload,
    SweepResult,
    check_digest,
    workflow_referrer,
)
from ._documents import (
    MAX_DOCUMENT_BYTES,
    MAX_JSON_DEPTH,
    MAX_MEMBERS,
    MAX_OPERATIONS,
    MAX_PATCH_BYTES,
    MAX_READ_PATHS,
    STATE_TABLES,
    StateEngine,
    json_depth,
)
from ._errors import (
    BlobDigestMismatchError,
    BlobNotFoundError,
    BlobSizeMismatchError,
    DimensionMismatchError,
    EmbedderUnavailableError,
    InvalidJsonError,
    InvalidPointerError,
    InvalidStateArgumentError,
    LimitExceededError,
    PatchNotApplicableError,
    ResourceLimitError,
    StateError,
    TaskNotHeldError,
    UnknownTaskError,
    VersionMismatchError,
    VersionNotFoundError,
    WorkflowClosedError,
    WorkflowExistsError,
    WorkflowNotFoundError,
)
from ._memory import (
    MAX_NOTES_PER_CALL,
    MEMORY_TABLES,
    MemoryHit,
    MemoryStore,
    Note,
    NoteContent,
    NoteInput,
)
from ._model import Checkpoint, PatchOp, PatchResult, ReadResult, Retention, StateHead
from ._pointer import escape_token, format_pointer, parse_pointer, resolve_raw

__all__ = [
    "BLOB_TABLES",
    "MAX_BLOB_BYTES",
    "MAX_CHUNK_BYTES",
    "MAX_DOCUMENT_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_MEMBERS",
    "MAX_NOTES_PER_CALL",
    "MAX_OPERATIONS",
    "MAX_PATCH_BYTES",
    "MAX_READ_PATHS",
    "MAX_REFERRER_BYTES",
    "MEMORY_TABLES",
    "STATE_TABLES",
    "TOUCH_GRACE_S",
    "BlobDigestMismatchError",
    "BlobInfo",
    "BlobNotFoundError",
    "BlobSizeMismatchError",
    "BlobStore",
    "BlobUpload",
    "Checkpoint",
    "DimensionMismatchError",
    "EmbedderUnavailableError",
    "InvalidJsonError",
    "InvalidPointerError",
    "InvalidStateArgumentError",
    "LimitExceededError",
    "MemoryHit",
    "MemoryStore",
    "Note",
    "NoteContent",
    "NoteInput",
    "PatchNotApplicableError",
    "PatchOp",
    "PatchResult",
    "ReadResult",
    "ResourceLimitError",
    "Retention",
    "StateEngine",
    "StateError",
    "StateHead",
    "SweepResult",
    "TaskNotHeldError",
    "UnknownTaskError",
    "VersionMismatchError",
    "VersionNotFoundError",
    "WorkflowClosedError",
    "WorkflowExistsError",
    "WorkflowNotFoundError",
    "check_digest",
    "escape_token",
    "format_pointer",
    "json_depth",
    "parse_pointer",
    "resolve_raw",
    "workflow_referrer",
]
