"""The task queue: jobs, their task queues (requirement classes) and their history.

Every state change goes through :meth:`JobRepository._move`, which checks the domain's transitions table,
guards the UPDATE with the state it read, and appends the history row in the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Float,
    and_,
    any_,
    bindparam,
    case,
    func,
    insert,
    literal,
    null,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY

from cloudpilot.domain.jobs import ACTIVE_STATES, Job, JobEvent, JobSpec, JobState, check_transition
from cloudpilot.domain.matching import TaskQueue, task_queue_key
from cloudpilot.domain.usage import decayed
from cloudpilot.store.claim import Claimer
from cloudpilot.store.database import Database
from cloudpilot.store.errors import Conflict, NotFound, TooManyClasses
from cloudpilot.store.rows import event_from_row, job_from_row, task_queue_from_row
from cloudpilot.store.sandboxes import StoredSandbox, record_sandbox
from cloudpilot.store.schema import event_chunks, job_events, job_usage, jobs, pilots, task_queues, usage
from cloudpilot.store.statements import insert_of, job_event_insert, upsert


@dataclass(frozen=True, slots=True)
class Requeued:
    """What the lease reaper did to one job whose lease expired."""

    job_id: int
    new_state: JobState
    reason: str


# First key of the PostgreSQL advisory lock a submission holds while it counts its owner's classes (the second:
# a hash of VO and owner). Two-key advisory locks never meet the one-key ones of leadership and migrations.
CLASS_COUNT_LOCK = int.from_bytes(b"cpcl", "big", signed=True)


class WaitingClass(NamedTuple):
    """A task queue with waiting jobs, as the provisioner sees it."""

    task_queue: TaskQueue
    waiting: int  # as many as counted (the caller's cap)
    since: float  # when its first waiting job in claim order was submitted


# The waiting jobs of the task queue of the enclosing statement, in claim order.
_claim_order = (
    select(jobs.c.id)
    .where(jobs.c.tq_id == task_queues.c.id, jobs.c.state == JobState.WAITING.value)
    .order_by(jobs.c.id)
)
# Whether that task queue has a waiting job: one index probe, as a subquery with LIMIT, which PostgreSQL runs as
# written whatever its statistics (as EXISTS, on a young database, it walked every waiting job per class).
HAS_WAITING = _claim_order.limit(1).scalar_subquery().is_not(None)

COUNTED_TOGETHER = 64  # waiting jobs of every class counted in one statement; a class with more, on its own
# Each class costs a few index probes: its first waiting job, whether it has more than COUNTED_TOGETHER (the one
# past them), and only if not, how many.
_WAITING_CLASSES = (
    select(
        task_queues,
        case(
            (_claim_order.offset(COUNTED_TOGETHER).limit(1).scalar_subquery().is_not(None), COUNTED_TOGETHER + 1),
            else_=_claim_order.with_only_columns(func.count()).order_by(None).scalar_subquery(),
        ).label("n"),
        _claim_order.with_only_columns(jobs.c.submitted_at).limit(1).scalar_subquery().label("since"),
    )
    .where(HAS_WAITING)
    .order_by(task_queues.c.id)
)
# The classes of one owner with waiting jobs, counted against jobs.max_waiting_classes_per_user.
_OWNER_WAITING_CLASSES = select(func.count().label("n")).where(
    task_queues.c.vo == bindparam("vo"), task_queues.c.owner == bindparam("owner"), HAS_WAITING
)

_one_class = select(literal(1)).where(jobs.c.tq_id == bindparam("tq"), jobs.c.state == JobState.WAITING.value)
# One class's waiting jobs, all or up to :cap (one index walk).
_COUNT_WAITING = select(func.count()).select_from(_one_class.subquery())
_COUNT_WAITING_UP_TO = select(func.count()).select_from(_one_class.limit(bindparam("cap")).subquery())


class JobRepository:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._claimer = Claimer(db)

    # --- submission -------------------------------------------------------------------------------------

    def submit(self, vo: str, owner: str, specs: Sequence[JobSpec], now: float, default_wall_seconds: int) -> list[int]:
        """Store ``specs`` as waiting jobs in one transaction; return their ids in the order given."""
        return self.submit_into_classes(vo, owner, specs, now, default_wall_seconds)[0]

    def submit_into_classes(
        self,
        vo: str,
        owner: str,
        specs: Sequence[JobSpec],
        now: float,
        default_wall_seconds: int,
        max_classes: int | None = None,
    ) -> tuple[list[int], list[TaskQueue]]:
        """:meth:`submit`, which also returns the task queues the jobs went into (the matcher adds them to its
        snapshot instead of reloading it). With ``max_classes``, the owner's jobs may not then wait in more
        classes than that (:class:`TooManyClasses`, and nothing is stored)."""
        if not specs:
            return [], []
        with self.db.write() as conn:
            tq_ids, classes = self._task_queue_ids(conn, vo, owner, specs, now, default_wall_seconds)
            if max_classes is not None and len(classes) > max_classes:  # before writing a job
                raise TooManyClasses(owner, len(classes), max_classes)
            rows = [
                {
                    "tq_id": tq_id,
                    "vo": vo,
                    "owner": owner,
                    "name": spec.name,
                    "spec": spec.model_dump_json(),
                    "state": JobState.WAITING.value,
                    "priority": spec.priority,
                    "cores": spec.requirements.cores,
                    "wall_seconds": spec.requirements.wall_seconds or default_wall_seconds,
                    "attempts": 0,
                    "max_attempts": spec.max_attempts,
                    "submitted_at": now,
                    "updated_at": now,
                    "kill_requested": False,
                    "events_done": 0,
                }
                for spec, tq_id in zip(specs, tq_ids, strict=True)
            ]
            ids = self._insert_jobs(conn, rows)
            if max_classes is not None:  # counted with these jobs in
                if self.db.is_postgres:  # one of the owner's submissions at a time from here: none misses another's
                    conn.exec_driver_sql(
                        "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (CLASS_COUNT_LOCK, f"{vo}/{owner}")
                    )
                waiting = self.db.statements("owner_waiting_classes", lambda: _OWNER_WAITING_CLASSES)
                found = waiting.first(conn, {"vo": vo, "owner": owner})
                assert found is not None
                if found["n"] > max_classes:
                    raise TooManyClasses(owner, found["n"], max_classes)
            if len(ids) == 1:  # the usual submission: its history row as a job's every later move writes it
                self._history(conn, ids[0], now, None, JobState.WAITING, "submitted")
                return ids, classes
            # One statement writes every history row; the ids are a contiguous run on SQLite (one writer)
            # and an explicit array on PostgreSQL (concurrent submissions may interleave the sequence).
            chosen = (
                jobs.c.id == any_(bindparam("ids", ids, type_=ARRAY(BigInteger)))
                if self.db.is_postgres
                else (jobs.c.id.between(ids[0], ids[-1]))
            )
            history = select(
                jobs.c.id,
                literal(now, Float),
                null(),
                literal(JobState.WAITING.value),
                literal("submitted"),
            ).where(chosen)
            conn.execute(insert(job_events).from_select(["job_id", "at", "from_state", "to_state", "reason"], history))
        return ids, classes

    def _insert_jobs(self, conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
        """Insert rows and return their ids in order. On PostgreSQL the ids are reserved from the sequence and
        the rows sent with COPY: building and parsing multi-row INSERTs costs more than the database's work. One
        row (most submissions) goes through an INSERT compiled once: building the statement per call cost more
        than running it."""
        if len(rows) == 1:
            columns = tuple(rows[0])
            stmt = self.db.statements(
                ("insert_returning_id", "jobs", columns), lambda: insert_of(jobs, columns).returning(jobs.c.id)
            )
            inserted = stmt.first(conn, rows[0])
            assert inserted is not None
            return [inserted["id"]]
        if not self.db.is_postgres:
            result = conn.execute(insert(jobs).returning(jobs.c.id, sort_by_parameter_order=True), rows)
            return [r[0] for r in result]
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence('jobs', 'id')) FROM generate_series(1, %s)", (len(rows),)
            )
            ids = sorted(r[0] for r in cursor.fetchall())
            columns = list(rows[0])
            with cursor.copy(f"COPY jobs (id, {', '.join(columns)}) FROM STDIN") as copy:
                for job_id, row in zip(ids, rows, strict=True):
                    copy.write_row((job_id, *row.values()))
        finally:
            cursor.close()
        return ids

    def _task_queue_ids(
        self,
        conn: Connection,
        vo: str,
        owner: str,
        specs: Sequence[JobSpec],
        now: float,
        default_wall_seconds: int,
    ) -> tuple[list[int], list[TaskQueue]]:
        """The task queue of each spec, in order, creating the classes not seen before; and the classes."""
        keys: list[str] = []
        new: dict[str, dict[str, Any]] = {}
        for spec in specs:
            req = spec.requirements
            wall = req.wall_seconds or default_wall_seconds
            key = task_queue_key(vo, owner, spec.priority, req, wall)
            keys.append(key)
            if key not in new:
                new[key] = {
                    "key": key,
                    "vo": vo,
                    "owner": owner,
                    "priority": spec.priority,
                    "cores": req.cores,
                    "memory_mb": req.memory_mb,
                    "wall_seconds": wall,
                    "tags": json.dumps(sorted(req.tags)),
                    "sites_allow": json.dumps(sorted(req.sites.allow)),
                    "sites_deny": json.dumps(sorted(req.sites.deny)),
                    "created_at": now,
                    "image": req.image,
                }
        known = self._lookup_task_queues(conn, list(new))
        missing = [row for key, row in new.items() if key not in known]
        if missing:
            # Another API process may create the same class concurrently: the unique key decides.
            conn.execute(upsert(conn)(task_queues).on_conflict_do_nothing(index_elements=["key"]), missing)
            known = self._lookup_task_queues(conn, list(new))
        classes = [task_queue_from_row({**row, "id": known[key]}) for key, row in new.items()]
        return [known[k] for k in keys], classes

    def _lookup_task_queues(self, conn: Connection, keys: list[str]) -> dict[str, int]:
        if len(keys) == 1:  # one class: a statement compiled once
            found = self.db.statements("task_queue_by_key", _task_queue_by_key).first(conn, {"key": keys[0]})
            return {} if found is None else {found["key"]: found["id"]}
        rows = conn.execute(select(task_queues.c.key, task_queues.c.id).where(task_queues.c.key.in_(keys)))
        return {key: tq_id for key, tq_id in rows}

    # --- reading ----------------------------------------------------------------------------------------

    def get(self, job_id: int) -> Job:
        with self.db.read() as conn:
            return self._get(conn, job_id)

    def _get(self, conn: Connection, job_id: int, for_update: bool = False) -> Job:
        row = self.db.statements(("job", for_update), lambda: _job_by_id(for_update)).first(conn, {"id": job_id})
        if row is None:
            raise NotFound(f"job {job_id} does not exist")
        return job_from_row(row)

    def history(self, job_id: int) -> list[JobEvent]:
        with self.db.read() as conn:
            rows = conn.execute(
                select(job_events).where(job_events.c.job_id == job_id).order_by(job_events.c.id)
            ).mappings()
            return [event_from_row(r) for r in rows]

    def list(
        self,
        vo: str | None,
        owner: str | None,
        state: JobState | None = None,
        limit: int = 1000,
        after_id: int = 0,
        name: str | None = None,
    ) -> list[Job]:
        """Jobs visible to a caller (``None`` scopes mean all), oldest first, by keyset pagination; ``name`` is a
        glob (``*`` any run of characters, ``?`` one; case-insensitive) or, without either, the exact name."""
        stmt = select(jobs).where(jobs.c.id > after_id).order_by(jobs.c.id).limit(limit)
        if name is not None:
            stmt = stmt.where(_name_matches(name))
        if vo is not None:
            stmt = stmt.where(jobs.c.vo == vo)
        if owner is not None:
            stmt = stmt.where(jobs.c.owner == owner)
        if state is not None:
            stmt = stmt.where(jobs.c.state == state.value)
        with self.db.read() as conn:
            return [job_from_row(r) for r in conn.execute(stmt).mappings()]

    def counts(self, vo: str | None, owner: str | None, ids: Iterable[int] | None = None) -> dict[str, int]:
        stmt = select(jobs.c.state, func.count()).group_by(jobs.c.state)
        if vo is not None:
            stmt = stmt.where(jobs.c.vo == vo)
        if owner is not None:
            stmt = stmt.where(jobs.c.owner == owner)
        if ids is not None:
            stmt = stmt.where(jobs.c.id.in_(list(ids)))
        with self.db.read() as conn:
            found = dict(conn.execute(stmt).all())
        return {s.value: int(found.get(s.value, 0)) for s in JobState}

    def waiting_task_queues(self) -> list[TaskQueue]:
        """Task queues that hold at least one waiting job (an index probe per class, not a scan of jobs)."""
        with self.db.read() as conn:
            rows = conn.execute(select(task_queues).where(HAS_WAITING).order_by(task_queues.c.id)).mappings()
            return [task_queue_from_row(r) for r in rows]

    def running_cores(self) -> dict[tuple[str, str], int]:
        """Cores held by matched or running jobs, per (VO, owner)."""
        stmt = (
            select(jobs.c.vo, jobs.c.owner, func.sum(jobs.c.cores))
            .where(jobs.c.state.in_([s.value for s in ACTIVE_STATES]))
            .group_by(jobs.c.vo, jobs.c.owner)
        )
        with self.db.read() as conn:
            return {(vo, owner): int(n) for vo, owner, n in conn.execute(stmt)}

    def usage(self) -> dict[tuple[str, str], tuple[float, float]]:
        """Recorded (core_seconds, updated_at) per (VO, owner)."""
        with self.db.read() as conn:
            rows = conn.execute(select(usage.c.vo, usage.c.owner, usage.c.core_seconds, usage.c.updated_at))
            return {(vo, owner): (cs, at) for vo, owner, cs, at in rows}

    # --- the pilot's side -------------------------------------------------------------------------------

    def claim(self, tq_id: int, pilot_id: str, now: float, lease_seconds: float) -> Job | None:
        """Atomically lease the oldest waiting job of a task queue to ``pilot_id``; ``None`` if it is empty.

        One statement picks and takes the row, so two pilots can never get the same job: SQLite runs it under
        the single writer lock, PostgreSQL skips rows another transaction has locked (store/claim.py).
        """
        return self._claimer.claim_first([tq_id], pilot_id, now, lease_seconds)[0]

    def claim_first(
        self, tq_ids: Sequence[int], pilot_id: str, now: float, lease_seconds: float
    ) -> tuple[Job | None, int]:
        """:meth:`claim` from the first of ``tq_ids`` (best first) that has a waiting job, in one round trip on
        PostgreSQL; also how many classes before it were empty (all of them if no job)."""
        return self._claimer.claim_first(tq_ids, pilot_id, now, lease_seconds)

    def heartbeat(
        self,
        job_id: int,
        lease_token: int,
        now: float,
        lease_seconds: float,
        cpu_seconds: float | None = None,
        max_rss_bytes: int | None = None,
        progress: str | None = None,
    ) -> Job:
        """Renew the lease. A job killed by its user is returned as is, so the pilot learns to stop it."""
        with self.db.write() as conn:
            job = self._get(conn, job_id, for_update=self.db.is_postgres)
            if job.state is JobState.KILLED and job.attempts == lease_token:
                return job
            job.check_lease(lease_token)
            values: dict[str, Any] = {"lease_expires_at": now + lease_seconds, "updated_at": now}
            if cpu_seconds is not None:
                values["cpu_seconds"] = cpu_seconds
            if max_rss_bytes is not None:
                values["max_rss_bytes"] = max_rss_bytes
            if progress is not None:
                values["progress"] = progress[:200]
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(**values))
            return job.model_copy(update=values)

    def set_output(self, job_id: int, lease_token: int, sandbox_id: str, now: float) -> None:
        with self.db.write() as conn:
            job = self._get(conn, job_id, for_update=self.db.is_postgres)
            job.check_lease(lease_token)
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(output_sandbox=sandbox_id, updated_at=now))

    def report(
        self,
        job_id: int,
        lease_token: int,
        target: JobState,
        now: float,
        *,
        exit_code: int | None = None,
        reason: str = "",
        cpu_seconds: float | None = None,
        max_rss_bytes: int | None = None,
        half_life: float = 86400.0,
        check: Callable[[Job], None] | None = None,
        output: StoredSandbox | None = None,
        ran_seconds: float | None = None,
    ) -> Job:
        """A pilot's report about the job it holds: ``running``, ``done`` or ``failed``.

        ``check`` sees the locked row first (the caller's authorization: who may report, in its own order of
        refusals), so no separate read is needed; ``output`` records the job's output sandbox with its end, in
        the same transaction.
        ``ran_seconds`` comes with the end of a job still ``matched`` (a payload so short its pilot reported it
        only once): it went through ``running`` from ``ran_seconds`` ago, which history and accounting show."""
        with self.db.write() as conn:
            job = self._get(conn, job_id, for_update=self.db.is_postgres)
            if check is not None:
                check(job)
            job.check_lease(lease_token)
            if (started := job.unreported_start(target, now, ran_seconds)) is not None:
                job = self._move(conn, job, JobState.RUNNING, started, _default_reason(JobState.RUNNING, None),
                                 {"started_at": started})  # fmt: skip
            values: dict[str, Any] = {}
            if target is JobState.RUNNING:
                values["started_at"] = now
            else:
                values.update(finished_at=now, exit_code=exit_code, lease_expires_at=None)
                if output is not None:
                    record_sandbox(self.db, conn, output, now)
                    values["output_sandbox"] = output.id
                if target is JobState.FAILED:
                    values["failure_reason"] = reason or "failed"
                if cpu_seconds is not None:
                    values["cpu_seconds"] = cpu_seconds
                if max_rss_bytes is not None:
                    values["max_rss_bytes"] = max_rss_bytes
                self._record_usage(conn, job, now, half_life)
            return self._move(conn, job, target, now, reason or _default_reason(target, exit_code), values)

    # --- users and admins -------------------------------------------------------------------------------

    def kill(self, job_id: int, now: float, reason: str, half_life: float = 86400.0) -> Job:
        with self.db.write() as conn:
            job = self._get(conn, job_id, for_update=self.db.is_postgres)
            if job.state.is_final:
                raise Conflict(f"job {job_id} is already {job.state.value}; only a job not yet final can be killed")
            if job.state in ACTIVE_STATES:
                self._record_usage(conn, job, now, half_life)
            values = {"finished_at": now, "lease_expires_at": None, "kill_requested": job.state in ACTIVE_STATES}
            return self._move(conn, job, JobState.KILLED, now, reason, values)

    # --- the lease reaper -------------------------------------------------------------------------------

    def expire_leases(self, now: float, limit: int = 500, half_life: float = 86400.0) -> list[Requeued]:
        """Send jobs whose lease ran out back to ``waiting``, or to ``failed`` once out of attempts."""
        expired = and_(jobs.c.state.in_([s.value for s in ACTIVE_STATES]), jobs.c.lease_expires_at < now)
        return self._release(expired, now, "lease expired", limit, half_life)

    def extend_leases(self, until: float) -> tuple[int, int]:
        """Push every active lease that ends before ``until`` to ``until`` (the server was down: that time must
        not count against the pilots). Returns (active leases, leases extended)."""
        active = jobs.c.state.in_([s.value for s in ACTIVE_STATES])
        with self.db.write() as conn:
            self.db.fence.check(conn)
            held = conn.execute(select(func.count()).select_from(jobs).where(active)).scalar_one()
            short = and_(active, jobs.c.lease_expires_at < until)
            extended = conn.execute(update(jobs).where(short).values(lease_expires_at=until)).rowcount
        return int(held), int(extended)

    def release_pilots(
        self, pilot_ids: list[str], now: float, why: str, half_life: float = 86400.0, *, spend_attempt: bool = True
    ) -> list[Requeued]:
        """The pilots are gone (their VM was lost or destroyed): their jobs go back now, not at lease expiry.

        ``spend_attempt=False`` when the site took the VM away (a shutdown deadline, a preempted VM): the jobs
        go back to ``waiting`` whatever their attempts, and ``max_attempts`` grows by one so the lost attempt
        does not count against them."""
        if not pilot_ids:
            return []
        held = and_(jobs.c.state.in_([s.value for s in ACTIVE_STATES]), jobs.c.pilot_id.in_(pilot_ids))
        return self._release(held, now, why, 100_000, half_life, spend_attempt=spend_attempt)

    def _release(
        self, where: Any, now: float, why: str, limit: int, half_life: float, *, spend_attempt: bool = True
    ) -> list[Requeued]:
        done: list[Requeued] = []
        with self.db.write() as conn:
            self.db.fence.check(conn)  # requeues are the leader's (reaper, VM monitor): not a deposed one's
            stmt = select(jobs).where(where).order_by(jobs.c.lease_expires_at).limit(limit)
            if self.db.is_postgres:
                stmt = stmt.with_for_update(skip_locked=True)
            for row in conn.execute(stmt).mappings().all():
                job = job_from_row(row)
                lost = f"{why}: pilot {job.pilot_id} lost during attempt {job.attempts}"
                self._record_usage(conn, job, now, half_life)
                if spend_attempt and job.attempts >= job.max_attempts:
                    reason = f"{lost}; no attempts left ({job.attempts}/{job.max_attempts})"
                    values = {"failure_reason": reason, "finished_at": now, "lease_expires_at": None}
                    self._move(conn, job, JobState.FAILED, now, reason, values)
                    done.append(Requeued(job.id, JobState.FAILED, reason))
                else:
                    values = {"pilot_id": None, "lease_expires_at": None, "started_at": None}
                    if not spend_attempt:
                        values["max_attempts"] = job.max_attempts + 1
                        lost += " (not counted against its attempts)"
                    self._move(conn, job, JobState.WAITING, now, lost, values)
                    done.append(Requeued(job.id, JobState.WAITING, lost))
        return done

    # --- the provisioner's view -------------------------------------------------------------------------

    def waiting_per_task_queue(self, cap: int | Callable[[TaskQueue], int] | None = None) -> list[WaitingClass]:
        """Every task queue with waiting jobs, how many (counted up to ``cap`` only, a number or one per task
        queue, if given: a caller that can place at most ``cap`` jobs of a class need not count a million), and
        when its first waiting job in claim order was submitted. One statement reads every class and counts up
        to :data:`COUNTED_TOGETHER` jobs of each: many small classes cost no round trip each (a user's 100,000
        classes of one job took the provisioner 12 s a cycle); only a class with more is counted on its own."""
        found = []
        with self.db.read() as conn:
            for row in conn.execute(_WAITING_CLASSES).mappings().all():
                tq, n = task_queue_from_row(row), int(row["n"])
                limit = cap(tq) if callable(cap) else cap
                if n > COUNTED_TOGETHER and (limit is None or limit > COUNTED_TOGETHER):
                    count = _COUNT_WAITING if limit is None else _COUNT_WAITING_UP_TO
                    n = int(conn.execute(count, {"tq": tq.id, "cap": limit}).scalar_one())
                found.append(WaitingClass(tq, n if limit is None else min(n, limit), float(row["since"])))
        return found

    def active_cores_by_vm(self) -> dict[str, int]:
        """Cores held by matched or running jobs, per VM (through the pilots running in it)."""
        stmt = (
            select(pilots.c.vm_id, func.sum(jobs.c.cores))
            .join(pilots, pilots.c.id == jobs.c.pilot_id)
            .where(jobs.c.state.in_([s.value for s in ACTIVE_STATES]), pilots.c.vm_id.is_not(None))
            .group_by(pilots.c.vm_id)
        )
        with self.db.read() as conn:
            return {vm_id: int(n) for vm_id, n in conn.execute(stmt)}

    # --- internals --------------------------------------------------------------------------------------

    def _move(
        self, conn: Connection, job: Job, target: JobState, now: float, reason: str, values: dict[str, Any]
    ) -> Job:
        check_transition(job.id, job.state, target)
        values = {**values, "state": target.value, "updated_at": now}
        columns = tuple(sorted(values))
        stmt = self.db.statements(("move", columns), lambda: _move_statement(columns))
        if stmt.run(conn, {**{f"v_{c}": v for c, v in values.items()}, "job": job.id, "from": job.state.value}) != 1:
            raise Conflict(f"job {job.id} changed state while being moved to {target.value}")
        self._history(conn, job.id, now, job.state, target, reason)
        moved = job.model_copy(update={**values, "state": target})
        if target.is_final:
            self._record_job_end(conn, moved, now)
        return moved

    def _history(
        self, conn: Connection, job_id: int, at: float, source: JobState | None, target: JobState, reason: str
    ) -> None:
        """A job's history row: its move from ``source`` (``None``: submitted) to ``target``, and why."""
        event = {"job_id": job_id, "at": at, "from_state": None if source is None else source.value,
                 "to_state": target.value}  # fmt: skip
        self.db.statements("job_event", job_event_insert).run(conn, {**event, "reason": reason})

    def _record_job_end(self, conn: Connection, job: Job, now: float) -> None:
        """The job's accounting record, in the transaction that makes it final (so it is never lost)."""
        site = cloud = vm_id = None
        if job.pilot_id is not None:
            found = self.db.statements("pilot_place", _pilot_place_statement).first(conn, {"pilot": job.pilot_id})
            if found is not None:
                site, cloud, vm_id = found["site"], found["cloud"], found["vm_id"]
        started = job.started_at
        record = {
            "job_id": job.id,
            "vo": job.vo,
            "owner": job.owner,
            "state": job.state.value,
            "site": site,
            "cloud": cloud,
            "vm_id": vm_id,
            "cores": job.cores,
            "submitted_at": job.submitted_at,
            "started_at": started,
            "ended_at": now,
            "wall_seconds": max(0.0, now - started) if started is not None else 0.0,
            "cpu_seconds": job.cpu_seconds or 0.0,
            "exit_code": job.exit_code,
            "attempts": job.attempts,
        }
        self.db.statements(("insert", "job_usage"), lambda: insert_of(job_usage, record)).run(conn, record)

    # --- events -----------------------------------------------------------------------------------------

    def add_event_chunk(self, job_id: int, lease_token: int, first: int, last: int, sandbox_id: str, now: float) -> Job:
        """Record the output of events ``first..last`` (finished by the current attempt) and move
        ``events_done`` past them. Chunks must follow each other: ``first`` is the current ``events_done``."""
        with self.db.write() as conn:
            job = self._get(conn, job_id, for_update=self.db.is_postgres)
            job.check_lease(lease_token)
            if job.spec.events is None:
                raise Conflict(f"job {job_id} declares no events")
            if first != job.events_done:
                raise Conflict(f"job {job_id} has events up to {job.events_done - 1} done; a chunk starts there")
            if not first <= last < job.spec.events:
                raise Conflict(f"events {first}..{last} are not within job {job_id}'s {job.spec.events} events")
            conn.execute(
                insert(event_chunks).values(
                    job_id=job_id,
                    attempt=job.attempts,
                    first_event=first,
                    last_event=last,
                    sandbox_id=sandbox_id,
                    at=now,
                )
            )
            values = {"events_done": last + 1, "updated_at": now, "progress": f"{last + 1}/{job.spec.events} events"}
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(**values))
            return job.model_copy(update=values)

    def event_chunks(self, job_id: int) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            rows = conn.execute(
                select(event_chunks).where(event_chunks.c.job_id == job_id).order_by(event_chunks.c.first_event)
            ).mappings()
            return [{str(k): v for k, v in r.items()} for r in rows]  # keys are quoted_name, not str

    def _record_usage(self, conn: Connection, job: Job, now: float, half_life: float) -> None:
        """Add the core-seconds of the attempt that ends now to its owner's recent usage."""
        start = job.started_at or job.updated_at
        spent = max(0.0, now - start) * job.cores
        owner = {"vo": job.vo, "owner": job.owner}
        row = self.db.statements("usage_of", _usage_statement).first(conn, owner)
        if row is None:
            # Two first-ever usages of an owner may race on PostgreSQL: the loser adds to the winner's row.
            first = upsert(conn)(usage).values(vo=job.vo, owner=job.owner, core_seconds=spent, updated_at=now)
            conn.execute(
                first.on_conflict_do_update(
                    index_elements=["vo", "owner"],
                    set_={"core_seconds": usage.c.core_seconds + spent, "updated_at": now},
                )
            )
        else:
            total = decayed(row["core_seconds"], row["updated_at"], now, half_life) + spent
            self.db.statements("usage_set", _usage_update_statement).run(conn, {**owner, "v_core": total, "v_at": now})


def _job_by_id(for_update: bool) -> Any:
    stmt = select(jobs).where(jobs.c.id == bindparam("id"))
    return stmt.with_for_update() if for_update else stmt


def _move_statement(columns: tuple[str, ...]) -> Any:
    """UPDATE of a job's ``columns`` (parameters ``v_<column>``) if it still is in state ``from``."""
    where = and_(jobs.c.id == bindparam("job"), jobs.c.state == bindparam("from"))
    return update(jobs).where(where).values({c: bindparam(f"v_{c}") for c in columns})


def _pilot_place_statement() -> Any:
    return select(pilots.c.site, pilots.c.cloud, pilots.c.vm_id).where(pilots.c.id == bindparam("pilot"))


def _usage_key() -> Any:
    return and_(usage.c.vo == bindparam("vo"), usage.c.owner == bindparam("owner"))


def _usage_statement() -> Any:
    return select(usage.c.core_seconds, usage.c.updated_at).where(_usage_key()).with_for_update()


def _usage_update_statement() -> Any:
    return update(usage).where(_usage_key()).values(core_seconds=bindparam("v_core"), updated_at=bindparam("v_at"))


def _name_matches(glob: str) -> ColumnElement[bool]:
    """``jobs.name`` against a shell-style glob, as a case-insensitive LIKE (SQLite's LIKE ignores ASCII case,
    PostgreSQL's does not: ILIKE makes both agree) with SQL's own wildcards escaped."""
    if "*" not in glob and "?" not in glob:
        return jobs.c.name == glob
    escaped = glob.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return jobs.c.name.ilike(escaped.replace("*", "%").replace("?", "_"), escape="\\")


def _default_reason(target: JobState, exit_code: int | None) -> str:
    if target is JobState.RUNNING:
        return "payload started"
    if target is JobState.DONE:
        return "payload exited with code 0"
    return f"exit code {exit_code}" if exit_code is not None else "failed"


def _task_queue_by_key() -> Any:
    return select(task_queues.c.key, task_queues.c.id).where(task_queues.c.key == bindparam("key"))
