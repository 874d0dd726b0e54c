"""Why waiting jobs wait: the latest provisioning cycle's explanation per task queue, kept so every server
process (and the CLI through any of them) shows the same one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import delete, func, insert, select

from cloudpilot.domain.jobs import JobState
from cloudpilot.store.database import Database
from cloudpilot.store.schema import jobs, waiting_reasons


@dataclass(frozen=True, slots=True)
class StoredReason:
    tq_id: int
    summary: str
    details: dict[str, Any]
    explained_at: float


class WaitingReasonRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def replace(self, reasons: dict[int, tuple[str, dict[str, Any]]], now: float) -> None:
        """The reasons of this cycle, replacing the last cycle's (task queues no longer waiting drop out)."""
        rows = [
            {"tq_id": tq_id, "summary": summary, "details": orjson.dumps(details).decode(), "explained_at": now}
            for tq_id, (summary, details) in reasons.items()
        ]
        with self.db.write() as conn:
            conn.execute(delete(waiting_reasons))
            if rows:
                conn.execute(insert(waiting_reasons), rows)

    def for_job(self, job_id: int) -> StoredReason | None:
        """The reason of the job's task queue."""
        stmt = select(waiting_reasons).join(jobs, jobs.c.tq_id == waiting_reasons.c.tq_id).where(jobs.c.id == job_id)
        with self.db.read() as conn:
            row = conn.execute(stmt).mappings().first()
        return None if row is None else _reason(row)

    def grouped(self, vo: str | None, owner: str | None) -> list[tuple[StoredReason | None, int, int]]:
        """Waiting jobs (of one owner, or all) per task queue: its reason (None: not explained yet), how many
        jobs, and the lowest job id as an example."""
        stmt = select(jobs.c.tq_id, func.count(), func.min(jobs.c.id)).where(jobs.c.state == JobState.WAITING.value)
        if vo is not None:
            stmt = stmt.where(jobs.c.vo == vo)
        if owner is not None:
            stmt = stmt.where(jobs.c.owner == owner)
        stmt = stmt.group_by(jobs.c.tq_id)
        with self.db.read() as conn:
            counts = conn.execute(stmt).all()
            ids = [tq_id for tq_id, _, _ in counts]
            found = (
                {
                    row["tq_id"]: _reason(row)
                    for row in conn.execute(select(waiting_reasons).where(waiting_reasons.c.tq_id.in_(ids))).mappings()
                }
                if ids
                else {}
            )
        return [(found.get(tq_id), int(n), int(first)) for tq_id, n, first in counts]


def _reason(row: Any) -> StoredReason:
    return StoredReason(int(row["tq_id"]), row["summary"], orjson.loads(row["details"]), float(row["explained_at"]))
