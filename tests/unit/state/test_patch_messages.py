"""Patch errors name the caller's place: the pointer in the whole document, the bad escape.

Defects (found against a real sidecar):

* PATCH_NOT_APPLICABLE named a pointer without its first token: an
  operation edits a member's value apart from the member's name, and the
  messages were built from the tokens below it (``/a/b/0/z`` reported
  ``'/b/0' is not an object or array``, ``/n/x`` reported ``''``).
* A merge patch with a lone surrogate escape (``"\\ud800"``) was refused
  with the right code and the decoder's "Input data was truncated".

Real LMDB in a temporary folder, no server.
"""

from __future__ import annotations

import json

import pytest

from are_core.state import InvalidJsonError, PatchNotApplicableError, PatchOp, StateEngine
from are_core.storage import GroupCommitter, Storage

Store = tuple[Storage, GroupCommitter]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/a/b/0/z", "cannot set '/a/b/0/z': '/a/b/0' is not an object or array"),
        ("/n/x", "cannot set '/n/x': '/n' is not an object or array"),
        ("/n/x/y", "cannot set '/n/x/y': '/n' is not an object or array"),
        ("/a/c/d", "cannot set '/a/c/d': '/a/c' does not exist"),
        ("/l/3/x", "cannot set '/l/3/x': index '3' is out of range at '/l' (length 1)"),
        ("/l/0/5", "cannot set '/l/0/5': index '5' is out of range at '/l/0' (length 1)"),
        ("/s~1t/x/y", "cannot set '/s~1t/x/y': '/s~1t/x' is not an object or array"),
        ("/s~1t/~0u/y", "cannot set '/s~1t/~0u/y': '/s~1t/~0u' does not exist"),
    ],
)
async def test_a_set_that_cannot_apply_names_the_place_in_the_whole_document(
    store: Store, path: str, message: str
) -> None:
    engine = StateEngine(*store)
    await engine.patch("wf", merge_patch=b'{"a": {"b": [7]}, "n": 5, "l": [[1]], "s/t": {"x": 1}}')
    with pytest.raises(PatchNotApplicableError) as caught:
        await engine.patch("wf", operations=[PatchOp("set", "/n", b"6"), PatchOp("set", path, b"1")])
    assert str(caught.value) == message
    assert caught.value.field == "operations.operations[1].path"
    head = engine.head("wf")
    assert head is not None and head.latest_version == 1  # nothing applied


@pytest.mark.parametrize(
    ("text", "escape", "offset", "kind"),
    [
        (rb'{"a": "\ud800"}', r"\ud800", 7, "high"),
        (rb'{"a": "x\uDBFFy"}', r"\uDBFF", 8, "high"),
        (rb'{"\ud800": 1}', r"\ud800", 2, "high"),
        (rb'{"a": "\ud83d\ude00\ud800"}', r"\ud800", 19, "high"),
        (rb'{"a": "\\\ud800"}', r"\ud800", 9, "high"),
        (rb'{"a": "\udc00"}', r"\udc00", 7, "low"),
        (rb'{"a": "\ud800\u0041"}', r"\ud800", 7, "high"),
    ],
)
async def test_a_lone_surrogate_escape_is_named(
    store: Store, text: bytes, escape: str, offset: int, kind: str
) -> None:
    engine = StateEngine(*store)
    with pytest.raises(InvalidJsonError) as caught:
        await engine.patch("wf", merge_patch=text)
    assert caught.value.field == "merge_patch_json"
    message = str(caught.value)
    assert f"'{escape}' at byte {offset} is a lone UTF-16 {kind} surrogate" in message, message
    assert "truncated" not in message
    with pytest.raises(InvalidJsonError) as caught:
        await engine.patch("wf", operations=[PatchOp("set", "/a", text)])
    assert caught.value.field == "operations.operations[0].value_json"
    assert f"'{escape}' at byte {offset}" in str(caught.value)
    assert engine.head("wf") is None  # nothing stored


async def test_surrogate_pairs_and_escaped_backslashes_are_text_and_truncation_stays_named(
    store: Store,
) -> None:
    engine = StateEngine(*store)
    await engine.patch("wf", merge_patch=rb'{"pair": "\ud83d\ude00", "text": "\\ud800"}')
    values = engine.get("wf", ["/pair", "/text"]).values
    assert [json.loads(value) for _, value in values] == ["\U0001f600", "\\ud800"]
    with pytest.raises(InvalidJsonError) as caught:
        await engine.patch("wf", merge_patch=b'{"a": "abc')
    assert "truncated" in str(caught.value)
