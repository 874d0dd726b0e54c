"""Pydantic's validation errors of a configuration as one line a person can act on.

A misspelt key (``flavours``) fails twice: as an unknown key and as the missing key it was meant to be.
Unknown keys come first and name their likely meaning; the ``local``/``libcloud`` tag that a discriminated union
adds to the path is dropped, since it is no key of the file.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

SHOWN = 5  # errors named in one message; the rest are counted


def describe(exc: ValidationError, raw: object) -> str:
    """``path: problem; path: problem …`` for the errors of validating ``raw``, unknown keys first."""
    errors = exc.errors()
    missing: dict[tuple[str, ...], list[str]] = {}
    for error in errors:
        path = _path(error["loc"], raw)
        if error["type"] == "missing" and path:
            missing.setdefault(path[:-1], []).append(path[-1])
    lines: list[str] = []
    for error in sorted(errors, key=lambda e: e["type"] != "extra_forbidden"):
        path = _path(error["loc"], raw)
        where = ".".join(path) or "(top level)"
        if error["type"] == "extra_forbidden":
            guess = difflib.get_close_matches(path[-1], missing.get(path[:-1], []), n=1) if path else []
            line = f"{where}: unknown key" + (f" (did you mean {guess[0]}?)" if guess else "")
        else:
            line = f"{where}: {error['msg']}"
        if line not in lines:
            lines.append(line)
    more = f" (and {len(lines) - SHOWN} more)" if len(lines) > SHOWN else ""
    return "; ".join(lines[:SHOWN]) + more


def _path(loc: Sequence[int | str], raw: object) -> tuple[str, ...]:
    """The keys of ``loc`` as they are in the file: a union's tag (the value of ``driver``) is not one of them."""
    node: Any = raw
    parts: list[str] = []
    for part in loc:
        if isinstance(node, dict) and part not in node and part == node.get("driver"):
            continue  # the discriminator's tag, not a key
        parts.append(str(part))
        node = _child(node, part)
    return tuple(parts)


def _child(node: object, part: int | str) -> object:
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and part < len(node):
        return node[part]
    return None
