"""Fencing of the leader's writes by epoch (docs/operations.md, "Several servers").

The server that takes leadership raises the epoch in the ``leadership`` table (store/leadership.py) and sets
:attr:`EpochFence.epoch` to it. The writes a deposed leader must not make — a VM start, a VM destroy, a requeue —
call :meth:`EpochFence.check` in their own transaction, and are refused (:class:`Fenced`) once the table holds
a newer epoch. On PostgreSQL the check reads the row ``FOR SHARE``: a new leader's increment waits for the
transactions that passed the check, so none of them commits after the take-over.

A process that never led (``epoch is None``: every SQLite server, an API-only process) does not stamp its
writes; the loops that make these writes run only on the leader.
"""

from __future__ import annotations

from sqlalchemy import Connection, select

from cloudpilot.store.errors import Fenced
from cloudpilot.store.schema import leadership


class EpochFence:
    def __init__(self) -> None:
        self.epoch: int | None = None  # the epoch this process led under, kept after a loss so its writes fail

    def check(self, conn: Connection) -> None:
        """Raise :class:`Fenced` unless this process's epoch is the database's (no-op when it never led)."""
        mine = self.epoch
        if mine is None:
            return
        stmt = select(leadership.c.epoch).where(leadership.c.id == 1)
        if conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update(read=True)
        current = conn.execute(stmt).scalar()
        if current != mine:
            raise Fenced(mine, current)
