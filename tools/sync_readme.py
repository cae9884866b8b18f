"""Rewrites the README's configuration table from the sidecar's option list.

Run it (``make fmt`` does) after adding or changing an option; a unit test
fails while the README and ``sidecar._config.OPTIONS`` disagree.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sidecar._config import options_table_markdown  # noqa: E402

_BLOCK = re.compile(r"(<!-- options:start[^>]*-->\n).*?(\n<!-- options:end -->)", re.DOTALL)


def main() -> int:
    """Replaces the table between the README's option markers."""
    readme = ROOT / "README.md"
    text = readme.read_text()
    updated, count = _BLOCK.subn(lambda m: m.group(1) + options_table_markdown() + m.group(2), text)
    if count != 1:
        print("README.md has no options:start/options:end block")
        return 1
    readme.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
