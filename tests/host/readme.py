"""The "Install on a server" blocks of docs/operations.md that the host suite runs, as the
document has them.

A block is run when the line before its fence is `<!-- host-test: NAME -->`. The suite names
every block it expects, in order, and may change a block only through `adapt()`, which fails
when the text it replaces is not there: an edit to one of those blocks breaks the test.
"""

from __future__ import annotations

import re
from pathlib import Path

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
MARKED = re.compile(r"^<!-- host-test: ([\w-]+) -->\n```bash\n(.*?)^```$", re.M | re.S)


def marked_blocks(document: Path = OPERATIONS) -> dict[str, str]:
    """NAME -> the shell text of each marked block, in the document's order."""
    blocks: dict[str, str] = {}
    for name, body in MARKED.findall(document.read_text()):
        assert name not in blocks, f"{document.name}: two blocks are marked host-test: {name}"
        blocks[name] = body
    return blocks


def adapt(block: str, old: str, new: str) -> str:
    """`block` with `old` (which must occur exactly once) replaced by `new`."""
    assert block.count(old) == 1, f"install block changed: expected once {old!r} in\n{block}"
    return block.replace(old, new)
