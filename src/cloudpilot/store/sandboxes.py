"""Which sandboxes exist (the bytes live in :mod:`cloudpilot.storage`)."""

from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import Connection, bindparam, select

from cloudpilot.store.database import Database
from cloudpilot.store.schema import sandboxes
from cloudpilot.store.statements import upsert


class StoredSandbox(NamedTuple):
    """A sandbox to be recorded (with the write that refers to it): its bytes are in the sandbox store, or, for
    a small one, in ``content``, which the record holds."""

    id: str
    size: int
    created_by: str
    content: bytes | None = None


class SandboxRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, sandbox_id: str, size: int, created_by: str, now: float) -> None:
        """Note a stored sandbox (one already known, being content-addressed, stays as it was)."""
        with self.db.write() as conn:
            record_sandbox(self.db, conn, StoredSandbox(sandbox_id, size, created_by), now)

    def exists(self, sandbox_id: str) -> bool:
        with self.db.read() as conn:
            return conn.execute(select(sandboxes.c.id).where(sandboxes.c.id == sandbox_id)).first() is not None

    def holds(self, sandbox_id: str) -> bool:
        """Whether the database holds the bytes of this sandbox."""
        held = select(sandboxes.c.id).where(sandboxes.c.id == sandbox_id, sandboxes.c.content.is_not(None))
        with self.db.read() as conn:
            return conn.execute(held).first() is not None

    def content(self, sandbox_id: str) -> bytes | None:
        """The bytes of a sandbox held in the database; ``None`` for one in the sandbox store (or unknown)."""
        with self.db.read() as conn:
            row = conn.execute(select(sandboxes.c.content).where(sandboxes.c.id == sandbox_id)).first()
        return None if row is None or row[0] is None else bytes(row[0])


def record_sandbox(db: Database, conn: Connection, stored: StoredSandbox, now: float) -> None:
    """Record ``stored`` in the caller's transaction."""
    row = {"id": stored.id, "size": stored.size, "created_at": now, "created_by": stored.created_by,
           "content": stored.content}  # fmt: skip
    db.statements("record_sandbox", lambda: _record_statement(conn)).run(conn, row)


def _record_statement(conn: Connection) -> Any:
    columns = ("id", "size", "created_at", "created_by", "content")
    return (
        upsert(conn)(sandboxes).values({c: bindparam(c) for c in columns}).on_conflict_do_nothing(index_elements=["id"])
    )
