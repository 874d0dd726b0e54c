"""The storage port: content-addressed sandboxes (``sha256:<hex>``), streamed in and out.

StorageError
├── TooLarge             more bytes than the configured limit (API: 413)
├── SandboxNotStored     no sandbox under that id (API: 400, as any other bad sandbox id)
├── StorageUnavailable   the object store did not answer or failed; retryable (API: 503)
└── StorageConfigError   checked at server start: unreachable endpoint, missing bucket, refused credentials
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from typing import Protocol

_ID = re.compile(r"^sha256:[0-9a-f]{64}$")


class StorageError(Exception):
    pass


class TooLarge(StorageError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"sandbox is larger than the limit of {limit} bytes (storage.max_sandbox_bytes)")
        self.limit = limit


class SandboxNotStored(StorageError):
    def __init__(self, sandbox_id: str) -> None:
        super().__init__(f"sandbox {sandbox_id} is not stored")
        self.sandbox_id = sandbox_id


class StorageUnavailable(StorageError):
    """The store failed for a reason that is not the caller's (a timeout, a 5xx); trying again may work."""


class StorageConfigError(StorageError):
    """The store cannot work as configured; the message names the key (``storage.bucket``, …)."""


def valid_sandbox_id(sandbox_id: str) -> bool:
    return bool(_ID.match(sandbox_id))


def sandbox_id_from(hexdigest: str) -> str:
    """The id of the sandbox whose SHA-256 is ``hexdigest``."""
    return f"sha256:{hexdigest}"


def sandbox_id_of(data: bytes) -> str:
    """The id of a sandbox held whole in memory."""
    return sandbox_id_from(hashlib.sha256(data).hexdigest())


def digest_of(sandbox_id: str) -> str:
    """The hex digest of a sandbox id, or :class:`StorageError` for anything that is not one (never a path)."""
    if not valid_sandbox_id(sandbox_id):
        raise StorageError(f"{sandbox_id!r} is not a sandbox id (sha256:<64 hex digits>)")
    return sandbox_id.removeprefix("sha256:")


class SandboxSink(Protocol):
    """An upload in progress: ``write`` raises :class:`TooLarge` past the limit; ``commit`` names the blob.

    ``discard`` is always called at the end (``finally``) and removes whatever an uncommitted upload left.
    ``write``, ``commit`` and ``discard`` may block on the network: async callers run them in a thread.
    """

    def write(self, chunk: bytes) -> None: ...

    def commit(self) -> tuple[str, int]: ...

    def discard(self) -> None: ...


class SandboxStore(Protocol):
    """Content-addressed blobs: ``put`` returns ``sha256:<hex>``; the same bytes give the same id, and storing
    them again is harmless (idempotent).

    ``open`` raises :class:`SandboxNotStored` when it is called, not at the first chunk, so an HTTP answer can
    still be an error; the chunks then stream (no whole sandbox in memory).
    """

    max_bytes: int

    def put(self, chunks: Iterable[bytes]) -> tuple[str, int]: ...

    def writer(self) -> SandboxSink: ...

    def open(self, sandbox_id: str) -> Iterator[bytes]: ...

    def exists(self, sandbox_id: str) -> bool: ...


def put_through(sink: SandboxSink, chunks: Iterable[bytes]) -> tuple[str, int]:
    """Every store's ``put``: write, commit, and always discard what an unfinished upload left."""
    try:
        for chunk in chunks:
            sink.write(chunk)
        return sink.commit()
    finally:
        sink.discard()
