"""The exact tier's key: a hash of the normalised prompt."""

from __future__ import annotations

import hashlib
import unicodedata

__all__ = ["entry_id_text", "is_blank", "normalise_prompt", "parse_entry_id", "prompt_hash"]


def normalise_prompt(prompt: str) -> str:
    r"""Unicode NFC, trimmed, runs of whitespace collapsed to one space, case kept.

    ``str.split()`` splits on exactly the characters the ``\s`` of ``re``
    matches (both are ``str.isspace``; a test checks every code point), so
    this is ``re.sub(r"\s+", " ", text).strip()`` at a third of the cost.
    """
    return " ".join(unicodedata.normalize("NFC", prompt).split())


def is_blank(prompt: str) -> bool:
    """``not normalise_prompt(prompt)`` without normalising: empty or whitespace alone.

    NFC never empties a string, and ``str.isspace`` is the test ``split()``
    uses, so the two agree; this one stops at the first other character.
    """
    return not prompt or prompt.isspace()


def prompt_hash(prompt: str) -> bytes:
    """16 bytes of BLAKE2b over the normalised prompt."""
    return hashlib.blake2b(normalise_prompt(prompt).encode("utf-8"), digest_size=16).digest()


def entry_id_text(entry_id: int) -> str:
    """An entry id as the API shows it: ``e`` and 16 hexadecimal digits."""
    return f"e{entry_id:016x}"


def parse_entry_id(text: str) -> int | None:
    """The number of an entry id, or None when it is not one."""
    if len(text) != 17 or text[0] != "e":
        return None
    try:
        return int(text[1:], 16)
    except ValueError:
        return None
