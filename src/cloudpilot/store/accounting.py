"""Usage records: ``vm_usage`` written here when a VM ends, ``job_usage`` written by the job repository when a
job becomes final; and their readers by time window, site and VO."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Select, func, select

from cloudpilot.domain.accounting import JobUsage, VMUsage
from cloudpilot.domain.jobs import ACTIVE_STATES
from cloudpilot.domain.vms import VM
from cloudpilot.store.database import Database
from cloudpilot.store.schema import job_usage, jobs, pilots, vm_usage

_VM_FIELDS = [c.name for c in vm_usage.c]
_JOB_FIELDS = [c.name for c in job_usage.c]


class AccountingRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record_vm(self, vm: VM, *, ended_at: float, price_per_core_hour: float, now: float) -> None:
        """Write (or replace) the usage record of ``vm``, which ends at ``ended_at``.

        Called again for the same VM it replaces the record, so a monitor that crashed between recording and
        destroying can simply record again. Wall time runs from ``vm.created_at`` (when the cloud was asked:
        a booting VM is billed too) to ``ended_at``. CPU time is the sum over the jobs it ran: the final
        ``job_usage`` records that name this VM, plus the last heartbeat of jobs still held by its pilots."""
        wall = max(0.0, ended_at - vm.created_at)
        values: dict[str, Any] = {
            "vm_id": vm.id,
            "cloud": vm.cloud,
            "site": vm.site or vm.cloud,  # a cloud without a site is its own site (as in the configuration)
            "vo": vm.vo,
            "flavor": vm.flavor,
            "cores": vm.cores,
            "memory_mb": vm.memory_mb,
            "image": vm.image,
            "instance_id": vm.instance_id,
            "started_at": vm.created_at,
            "ended_at": ended_at,
            "wall_seconds": wall,
            "hs06": vm.hs06 or 0.0,
            "price_per_core_hour": price_per_core_hour,
            "cost": wall / 3600.0 * vm.cores * price_per_core_hour,
            "jobs_run": vm.jobs_run,
            "final_state": vm.state.value,
            "shutdown_code": vm.shutdown_code,
            "shutdown_message": vm.shutdown_message,
            "recorded_at": now,
        }
        with self.db.write() as conn:
            values["cpu_seconds"] = _cpu_seconds_of(conn, vm.id)
            insert = _insert_for(conn)(vm_usage).values(**values)
            replace = {k: v for k, v in values.items() if k != "vm_id"}
            conn.execute(insert.on_conflict_do_update(index_elements=["vm_id"], set_=replace))

    def vm_records(
        self,
        since: float | None = None,
        until: float | None = None,
        site: str | None = None,
        vo: str | None = None,
        cloud: str | None = None,
    ) -> list[VMUsage]:
        """VM records that ended in ``[since, until)`` (``None``: unbounded), by end time."""
        stmt = _window(select(vm_usage), vm_usage.c.ended_at, since, until)
        stmt = _scoped(stmt, vm_usage, site=site, vo=vo, cloud=cloud).order_by(vm_usage.c.ended_at, vm_usage.c.vm_id)
        with self.db.read() as conn:
            return [vm_usage_from_row(r) for r in conn.execute(stmt).mappings()]

    def job_records(
        self,
        since: float | None = None,
        until: float | None = None,
        site: str | None = None,
        vo: str | None = None,
        cloud: str | None = None,
        vm_id: str | None = None,
    ) -> list[JobUsage]:
        """Job records that ended in ``[since, until)`` (``None``: unbounded), by end time."""
        stmt = _window(select(job_usage), job_usage.c.ended_at, since, until)
        stmt = _scoped(stmt, job_usage, site=site, vo=vo, cloud=cloud, vm_id=vm_id)
        stmt = stmt.order_by(job_usage.c.ended_at, job_usage.c.job_id)
        with self.db.read() as conn:
            return [job_usage_from_row(r) for r in conn.execute(stmt).mappings()]


def vm_usage_from_row(row: Mapping[str, Any]) -> VMUsage:
    return VMUsage(**{k: row[k] for k in _VM_FIELDS})


def job_usage_from_row(row: Mapping[str, Any]) -> JobUsage:
    return JobUsage(**{k: row[k] for k in _JOB_FIELDS})


def _cpu_seconds_of(conn: Connection, vm_id: str) -> float:
    finished = select(func.coalesce(func.sum(job_usage.c.cpu_seconds), 0.0)).where(job_usage.c.vm_id == vm_id)
    # A job still held by one of its pilots has no final record yet; its last heartbeat says what it used.
    held = (
        select(func.coalesce(func.sum(jobs.c.cpu_seconds), 0.0))
        .join(pilots, pilots.c.id == jobs.c.pilot_id)
        .where(pilots.c.vm_id == vm_id, jobs.c.state.in_([s.value for s in ACTIVE_STATES]))
    )
    return float(conn.execute(finished).scalar_one()) + float(conn.execute(held).scalar_one())


def _window(stmt: Select[Any], ended_at: Any, since: float | None, until: float | None) -> Select[Any]:
    if since is not None:
        stmt = stmt.where(ended_at >= since)
    if until is not None:
        stmt = stmt.where(ended_at < until)
    return stmt


def _scoped(stmt: Select[Any], table: Any, **equal: str | None) -> Select[Any]:
    for column, value in equal.items():
        if value is not None:
            stmt = stmt.where(table.c[column] == value)
    return stmt


def _insert_for(conn: Connection):  # type: ignore[no-untyped-def]
    """The dialect's INSERT with ON CONFLICT (SQLite and PostgreSQL both have it)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert
