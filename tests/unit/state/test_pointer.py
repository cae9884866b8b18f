"""RFC 6901 pointers: parsing, escaping, raw resolution, edits."""

from __future__ import annotations

import pytest

from are_core.state import (
    InvalidPointerError,
    PatchNotApplicableError,
    format_pointer,
    parse_pointer,
    resolve_raw,
)
from are_core.state._pointer import remove_at, set_at


@pytest.mark.parametrize(
    ("pointer", "tokens"),
    [
        ("", ()),
        ("/", ("",)),
        ("/a/b", ("a", "b")),
        ("/a~1b", ("a/b",)),
        ("/m~0n", ("m~n",)),
        ("/~01", ("~1",)),
        ("/ /0", (" ", "0")),
    ],
)
def test_parse_and_format_round_trip(pointer: str, tokens: tuple[str, ...]) -> None:
    assert parse_pointer(pointer) == tokens
    assert format_pointer(tokens) == pointer


@pytest.mark.parametrize("pointer", ["a", "/a~", "/a~2", "/~x", "/" + "x" * 1024])
def test_malformed_pointers_are_refused_with_the_field(pointer: str) -> None:
    with pytest.raises(InvalidPointerError) as caught:
        parse_pointer(pointer, field="paths[3]")
    assert caught.value.field == "paths[3]"


RFC_EXAMPLE = b"""{"foo": ["bar", "baz"], "": 0, "a/b": 1, "c%d": 2, "e^f": 3, "g|h": 4,
 "i\\\\j": 5, "k\\"l": 6, " ": 7, "m~n": 8, "num": 1.50}"""


@pytest.mark.parametrize(
    ("pointer", "expected"),
    [
        ("/foo", b'["bar", "baz"]'),
        ("/foo/0", b'"bar"'),
        ("/", b"0"),
        ("/a~1b", b"1"),
        ("/c%d", b"2"),
        ("/e^f", b"3"),
        ("/g|h", b"4"),
        ("/i\\j", b"5"),
        ('/k"l', b"6"),
        ("/ ", b"7"),
        ("/m~0n", b"8"),
        ("/num", b"1.50"),
    ],
)
def test_resolve_raw_follows_the_rfc_examples_and_keeps_the_text(pointer: str, expected: bytes) -> None:
    assert resolve_raw(RFC_EXAMPLE, parse_pointer(pointer)) == expected


@pytest.mark.parametrize("pointer", ["/foo/2", "/foo/-", "/foo/01", "/foo/x", "/num/0", "/nope"])
def test_unresolvable_paths_are_none(pointer: str) -> None:
    assert resolve_raw(RFC_EXAMPLE, parse_pointer(pointer)) is None


def test_set_appends_replaces_and_needs_a_parent() -> None:
    doc = {"a": [1, 2], "o": {}}
    set_at(doc, ("a", "-"), 3, "/a/-")
    set_at(doc, ("a", "0"), 0, "/a/0")
    set_at(doc, ("o", "k"), "v", "/o/k")
    assert doc == {"a": [0, 2, 3], "o": {"k": "v"}}
    for tokens in (("a", "9"), ("x", "y"), ("a", "0", "z")):
        with pytest.raises(PatchNotApplicableError):
            set_at(doc, tokens, 1, format_pointer(tokens))


def test_remove_of_a_missing_member_is_a_no_op() -> None:
    doc = {"a": [1, 2], "o": {"k": 1}}
    assert remove_at(doc, ("a", "0"))
    assert remove_at(doc, ("o", "k"))
    assert not remove_at(doc, ("o", "k"))
    assert not remove_at(doc, ("x", "y"))
    assert not remove_at(doc, ("a", "5"))
    assert doc == {"a": [2], "o": {}}
