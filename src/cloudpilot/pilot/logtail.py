"""The tail of a running job's ``job.log``, sent with each heartbeat so users can watch it (``cloudpilot logs``).

Bounded twice, by bytes and by lines, so a payload printing one endless line or a flood of short ones costs a
heartbeat no more than a few KiB.
"""

from __future__ import annotations

import os
from pathlib import Path

MAX_BYTES = 4096
MAX_LINES = 50


def read_tail(path: Path, max_bytes: int = MAX_BYTES, max_lines: int = MAX_LINES) -> str | None:
    """The last ``max_lines`` lines of the file within its last ``max_bytes`` bytes; ``None`` if it cannot be
    read (not there yet, or the payload user's and out of our reach)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            f.seek(start)
            data = f.read(max_bytes)
    except OSError:
        return None
    text = data.decode("utf-8", errors="replace")
    if start > 0 and "\n" in text:  # the first line is cut: drop its remains
        text = text.split("\n", 1)[1]
    lines = text.splitlines(keepends=True)[-max_lines:]
    return "".join(lines).replace("\x00", "")  # the server refuses NULs in bodies
