"""Which sandboxes exist (the bytes live in :mod:`cloudpilot.storage`)."""

from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import Connection, bindparam, select

from cloudpilot.store.database import Database
from cloudpilot.store.schema import sandboxes
from cloudpilot.store.statements import upsert


class StoredSandbox(NamedTuple):
    """A sandbox whose bytes are stored, to be recorded (with the write that refers to it)."""

    id: str
    size: int
    created_by: str


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


def record_sandbox(db: Database, conn: Connection, stored: StoredSandbox, now: float) -> None:
    """Record ``stored`` in the caller's transaction."""
    row = {"id": stored.id, "size": stored.size, "created_at": now, "created_by": stored.created_by}
    db.statements("record_sandbox", lambda: _record_statement(conn)).run(conn, row)


def _record_statement(conn: Connection) -> Any:
    columns = ("id", "size", "created_at", "created_by")
    return (
        upsert(conn)(sandboxes).values({c: bindparam(c) for c in columns}).on_conflict_do_nothing(index_elements=["id"])
    )
