"""Which sandboxes exist (the bytes live in :mod:`cloudpilot.storage`)."""

from __future__ import annotations

from sqlalchemy import select

from cloudpilot.store.database import Database
from cloudpilot.store.schema import sandboxes


class SandboxRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, sandbox_id: str, size: int, created_by: str, now: float) -> None:
        with self.db.write() as conn:
            if conn.execute(select(sandboxes.c.id).where(sandboxes.c.id == sandbox_id)).first() is None:
                conn.execute(sandboxes.insert().values(id=sandbox_id, size=size, created_at=now, created_by=created_by))

    def exists(self, sandbox_id: str) -> bool:
        with self.db.read() as conn:
            return conn.execute(select(sandboxes.c.id).where(sandboxes.c.id == sandbox_id)).first() is not None
