"""The storage port.

StorageError
└── TooLarge   more bytes than the configured limit (API: 413)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol


class StorageError(Exception):
    pass


class TooLarge(StorageError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"sandbox is larger than the limit of {limit} bytes (storage.max_sandbox_bytes)")
        self.limit = limit


class SandboxSink(Protocol):
    """An upload in progress: ``write`` raises :class:`TooLarge` past the limit; ``commit`` names the blob."""

    def write(self, chunk: bytes) -> None: ...

    def commit(self) -> tuple[str, int]: ...

    def discard(self) -> None: ...


class SandboxStore(Protocol):
    """Content-addressed blobs: ``put`` returns ``sha256:<hex>``; the same bytes give the same id."""

    max_bytes: int

    def put(self, chunks: Iterable[bytes]) -> tuple[str, int]: ...

    def writer(self) -> SandboxSink: ...

    def open(self, sandbox_id: str) -> Iterator[bytes]: ...

    def exists(self, sandbox_id: str) -> bool: ...
