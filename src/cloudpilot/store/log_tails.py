"""The latest tail of each job's ``job.log``: what its pilot sent with its last heartbeat (docs/dashboard.md)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from cloudpilot.store.database import Database
from cloudpilot.store.schema import job_log_tails
from cloudpilot.store.statements import upsert


@dataclass(frozen=True, slots=True)
class LogTail:
    job_id: int
    attempt: int
    tail: str
    updated_at: float


class LogTailRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def put(self, job_id: int, attempt: int, tail: str, now: float) -> None:
        """Replace the job's tail (one row per job: only the latest matters)."""
        values = {"job_id": job_id, "attempt": attempt, "tail": tail, "updated_at": now}
        with self.db.write() as conn:
            insert = upsert(conn)(job_log_tails).values(**values)
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=["job_id"], set_={"attempt": attempt, "tail": tail, "updated_at": now}
                )
            )

    def get(self, job_id: int) -> LogTail | None:
        with self.db.read() as conn:
            row = conn.execute(select(job_log_tails).where(job_log_tails.c.job_id == job_id)).mappings().first()
        return None if row is None else LogTail(**row)
