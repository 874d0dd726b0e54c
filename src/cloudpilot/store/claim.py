"""The matcher's claim: lease the oldest waiting job of the first non-empty task queue of a ranked list, and
write its history row, in as few round trips to the database as the dialect allows.

* PostgreSQL: one statement, run in autocommit (no BEGIN, no COMMIT: three round trips become one). A
  data-modifying CTE picks the row (``FOR UPDATE SKIP LOCKED``, so concurrent claims never wait for each
  other nor take the same row), updates it and inserts its history row; all of it is one atomic statement.
  The candidate task queues travel as an array and are walked in their rank order by a lateral join, so the
  classes found empty on the way cost nothing more than an index probe inside that same statement.
* SQLite: one ``BEGIN IMMEDIATE`` transaction under the process's write lock, an ``UPDATE … RETURNING`` per
  candidate until one gives a row, then the history ``INSERT``. SQLite is in-process: statements are cheap,
  transactions (the WAL commit) are what costs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Update, bindparam, select, update

from cloudpilot.domain.jobs import Job, JobState, check_transition
from cloudpilot.store.database import Database
from cloudpilot.store.fastpath import CompiledStatement
from cloudpilot.store.rows import job_from_row
from cloudpilot.store.schema import jobs
from cloudpilot.store.statements import job_event_insert

WAITING, MATCHED = JobState.WAITING.value, JobState.MATCHED.value

# The candidates are walked in array order: the function scan yields them in that order and the nested loop
# keeps it, so ``LIMIT 1`` stops at the first class that gives a row (no ORDER BY: sorting would make every
# lateral probe run, and lock a row in each class).
_PG_CLAIM = f"""
WITH pick AS (
    SELECT j.id
    FROM unnest(%(tqs)s::bigint[]) AS t(tq)
    CROSS JOIN LATERAL (
        SELECT jobs.id FROM jobs
        WHERE jobs.tq_id = t.tq AND jobs.state = '{WAITING}'
        ORDER BY jobs.id
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    ) AS j
    LIMIT 1
), claimed AS (
    UPDATE jobs
    SET state = '{MATCHED}', pilot_id = %(pilot)s, attempts = jobs.attempts + 1,
        lease_expires_at = %(expires)s, updated_at = %(now)s
    FROM pick
    WHERE jobs.id = pick.id AND jobs.state = '{WAITING}'
    RETURNING jobs.*
), history AS (
    INSERT INTO job_events (job_id, at, from_state, to_state, reason)
    SELECT claimed.id, %(now)s, '{WAITING}', '{MATCHED}',
           'matched to pilot ' || claimed.pilot_id || ' (attempt ' || claimed.attempts || ')'
    FROM claimed
)
SELECT * FROM claimed
"""


class Claimer:
    """Builds its statements once: they run on every match, where building them would cost more than SQL."""

    def __init__(self, db: Database) -> None:
        check_transition("claim", JobState.WAITING, JobState.MATCHED)
        self.db = db
        if not db.is_postgres:
            self._claim_stmt = CompiledStatement(_sqlite_claim(), db.engine)
            self._event_stmt = db.statements("job_event", job_event_insert)  # the one every move writes

    def claim_first(
        self, tq_ids: Sequence[int], pilot_id: str, now: float, lease_seconds: float
    ) -> tuple[Job | None, int]:
        """Lease the oldest waiting job of the first of ``tq_ids`` that has one. Returns the job (``None`` if
        every class was empty) and how many classes before it were found empty (all of them when ``None``).

        A class whose waiting rows are all being claimed by others right now counts as empty too (its rows
        are skipped, not waited for): the matcher rechecks it at its next snapshot.
        """
        if not tq_ids:
            return None, 0
        params = {"pilot": pilot_id, "expires": now + lease_seconds, "now": now}
        row = self._claim_pg(list(tq_ids), params) if self.db.is_postgres else self._claim_sqlite(tq_ids, params)
        if row is None:
            return None, len(tq_ids)
        job = job_from_row(row)
        return job, list(tq_ids).index(row["tq_id"])

    def _claim_pg(self, tq_ids: list[int], params: dict[str, Any]) -> dict[str, Any] | None:
        with _autocommit(self.db) as conn, conn.cursor() as cur:
            cur.execute(_PG_CLAIM, {**params, "tqs": tq_ids})
            row = cur.fetchone()
            if row is None:
                return None
            return dict(zip([d[0] for d in cur.description], row, strict=True))

    def _claim_sqlite(self, tq_ids: Sequence[int], params: dict[str, Any]) -> dict[str, Any] | None:
        with self.db.hot_write() as conn:
            for tq_id in tq_ids:
                row = self._claim_stmt.first(conn, {**params, "tq": tq_id})
                if row is None:
                    continue
                self._event_stmt.run(
                    conn,
                    {
                        "job_id": row["id"],
                        "at": params["now"],
                        "from_state": WAITING,
                        "to_state": MATCHED,
                        "reason": f"matched to pilot {params['pilot']} (attempt {row['attempts']})",
                    },
                )
                return row
        return None


@contextmanager
def _autocommit(db: Database) -> Iterator[Any]:
    """A pooled psycopg connection in autocommit for one statement, handed back to the pool as it was.
    (Switching autocommit is a client-side flag in psycopg: no round trip.)"""
    raw = db.engine.raw_connection()
    try:
        driver = raw.driver_connection
        assert driver is not None
        driver.autocommit = True
        try:
            yield driver
        finally:
            driver.autocommit = False
    finally:
        raw.close()


def _sqlite_claim() -> Update:
    pick = (
        select(jobs.c.id).where(jobs.c.tq_id == bindparam("tq"), jobs.c.state == WAITING).order_by(jobs.c.id).limit(1)
    )
    return (
        update(jobs)
        .where(jobs.c.id == pick.scalar_subquery(), jobs.c.state == WAITING)
        .values(
            state=MATCHED,
            pilot_id=bindparam("pilot"),
            attempts=jobs.c.attempts + 1,
            lease_expires_at=bindparam("expires"),
            updated_at=bindparam("now"),
        )
        .returning(*jobs.c)
    )
