"""Sandboxes as files under the data directory, named by their SHA-256."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from cloudpilot.storage.base import (
    SandboxNotStored,
    TooLarge,
    digest_of,
    put_through,
    sandbox_id_from,
    valid_sandbox_id,
)

__all__ = ["CHUNK", "LocalSandboxStore", "SandboxWriter", "valid_sandbox_id"]

CHUNK = 1 << 16


class SandboxWriter:
    """Receives a sandbox chunk by chunk (from a sync or async stream) and stops at the size limit."""

    def __init__(self, store: LocalSandboxStore) -> None:
        self._store = store
        self._digest = hashlib.sha256()
        self.size = 0
        fd, self._tmp = tempfile.mkstemp(dir=store.root / "tmp")
        self._out = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self._store.max_bytes:
            raise TooLarge(self._store.max_bytes)
        self._digest.update(chunk)
        self._out.write(chunk)

    def commit(self) -> tuple[str, int]:
        self._out.close()
        sandbox_id = sandbox_id_from(self._digest.hexdigest())
        final = self._store.path_of(sandbox_id)
        final.parent.mkdir(exist_ok=True)
        os.replace(self._tmp, final)
        return sandbox_id, self.size

    def discard(self) -> None:
        self._out.close()
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)


class LocalSandboxStore:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        (root / "tmp").mkdir(parents=True, exist_ok=True)

    def path_of(self, sandbox_id: str) -> Path:
        digest = digest_of(sandbox_id)
        return self.root / digest[:2] / digest

    def writer(self) -> SandboxWriter:
        return SandboxWriter(self)

    def put(self, chunks: Iterable[bytes]) -> tuple[str, int]:
        return put_through(self.writer(), chunks)

    def open(self, sandbox_id: str) -> Iterator[bytes]:
        # Opened here, not in the generator, so a missing sandbox is an error before any answer starts.
        try:
            f = self.path_of(sandbox_id).open("rb")
        except FileNotFoundError:
            raise SandboxNotStored(sandbox_id) from None
        return _chunks(f)

    def exists(self, sandbox_id: str) -> bool:
        return valid_sandbox_id(sandbox_id) and self.path_of(sandbox_id).exists()


def _chunks(f: BinaryIO) -> Iterator[bytes]:
    with f:
        while chunk := f.read(CHUNK):
            yield chunk
