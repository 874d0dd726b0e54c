"""Hiding secrets in text that leaves the process: cloud error messages, log lines."""

from __future__ import annotations

import base64
import urllib.parse
from collections.abc import Iterable

from cloudpilot.domain.auth import TOKEN_PATTERN

MASK = "***"
# Secrets shorter than this are only masked verbatim: their encoded fragments would be short enough to match
# unrelated text.
_MIN_ENCODED = 8


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every occurrence of each secret, and of anything shaped like a cloudpilot token, replaced
    by ``***``.

    Besides the secret itself this masks its URL-encoded form and its base64 forms, because some cloud APIs
    echo the (base64-encoded) user-data back in their error messages. Empty and ``None`` secrets are ignored.
    """
    variants: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        variants.add(secret)
        if len(secret) >= _MIN_ENCODED:
            variants.add(urllib.parse.quote(secret, safe=""))
            variants.update(_base64_cores(secret.encode()))
    # Longest first, so a secret that contains another is masked whole rather than in pieces.
    for variant in sorted(variants, key=len, reverse=True):
        text = text.replace(variant, MASK)
    return TOKEN_PATTERN.sub(MASK, text)


def _base64_cores(data: bytes) -> list[str]:
    """The base64 characters that depend only on ``data``, for each of its 3 possible offsets in a stream.

    At offset ``i`` the first group mixes ``i`` foreign bytes in (skip its first ``ceil(8i/6)`` characters) and
    the last group may mix the following bytes in (keep complete groups only).
    """
    cores = []
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + data).decode()
        start = -(-8 * offset // 6)
        end = 4 * ((offset + len(data)) // 3)
        core = encoded[start:end]
        if len(core) >= _MIN_ENCODED:
            cores.append(core)
    return cores
