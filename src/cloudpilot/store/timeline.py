"""Read-only queries for the dashboard: how many jobs and VMs ran over the last hours (rebuilt from the state
changes in ``job_events`` and ``vm_events``, so every server process draws the same chart with no sampler), the
VMs of a cloud over a window, and the jobs a VM ran."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, or_, select

from cloudpilot.domain.jobs import JobState
from cloudpilot.domain.vms import VM, VMState
from cloudpilot.store.database import Database
from cloudpilot.store.schema import job_events, job_usage, jobs, pilots, vm_events, vms
from cloudpilot.store.vms import vm_from_row

RUNNING_JOB = JobState.RUNNING.value
RUNNING_VM = VMState.RUNNING.value

Changes = tuple[int, list[tuple[float, int]]]  # (how many now, [(at, +1 or -1)] oldest first)


class TimelineRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def running_jobs(self, since: float, vo: str | None = None, owner: str | None = None) -> Changes:
        """Running jobs now and each change of that number since ``since`` (the caller's jobs only)."""
        now_stmt = select(func.count()).select_from(jobs).where(jobs.c.state == RUNNING_JOB)
        events = (
            select(job_events.c.at, job_events.c.from_state, job_events.c.to_state)
            .where(
                job_events.c.at >= since,
                or_(job_events.c.to_state == RUNNING_JOB, job_events.c.from_state == RUNNING_JOB),
            )
            .order_by(job_events.c.at, job_events.c.id)
        )
        if vo is not None or owner is not None:
            scoped = select(jobs.c.id)
            if vo is not None:
                now_stmt, scoped = now_stmt.where(jobs.c.vo == vo), scoped.where(jobs.c.vo == vo)
            if owner is not None:
                now_stmt, scoped = now_stmt.where(jobs.c.owner == owner), scoped.where(jobs.c.owner == owner)
            events = events.where(job_events.c.job_id.in_(scoped))
        with self.db.read() as conn:
            current = int(conn.execute(now_stmt).scalar_one())
            return current, _deltas(conn.execute(events).all(), RUNNING_JOB)

    def running_vms(self, since: float, clouds: Iterable[str] | None = None) -> Changes:
        """Running VMs now and each change of that number since ``since`` (of ``clouds`` only, if given)."""
        now_stmt = select(func.count()).select_from(vms).where(vms.c.state == RUNNING_VM)
        events = (
            select(vm_events.c.at, vm_events.c.from_state, vm_events.c.to_state)
            .where(
                vm_events.c.at >= since,
                or_(vm_events.c.to_state == RUNNING_VM, vm_events.c.from_state == RUNNING_VM),
            )
            .order_by(vm_events.c.at, vm_events.c.id)
        )
        if clouds is not None:
            names = list(clouds)
            now_stmt = now_stmt.where(vms.c.cloud.in_(names))
            events = events.where(vm_events.c.vm_id.in_(select(vms.c.id).where(vms.c.cloud.in_(names))))
        with self.db.read() as conn:
            current = int(conn.execute(now_stmt).scalar_one())
            return current, _deltas(conn.execute(events).all(), RUNNING_VM)

    def vms_of_cloud(self, cloud: str, since: float, limit: int = 500) -> list[VM]:
        """The cloud's VMs alive at some point since ``since``: not destroyed, or changed since then; newest first."""
        stmt = (
            select(vms)
            .where(vms.c.cloud == cloud, or_(vms.c.state != VMState.DESTROYED.value, vms.c.updated_at >= since))
            .order_by(vms.c.created_at.desc(), vms.c.id.desc())
            .limit(limit)
        )
        with self.db.read() as conn:
            return [vm_from_row(r) for r in conn.execute(stmt).mappings()]

    def jobs_of_vm(self, vm_id: str, limit: int = 200) -> list[dict[str, Any]]:
        """Jobs that ran on the VM: those whose last pilot was one of its pilots, and ended ones recorded for it."""
        held = select(pilots.c.id).where(pilots.c.vm_id == vm_id)
        ended = select(job_usage.c.job_id).where(job_usage.c.vm_id == vm_id)
        stmt = (
            select(jobs.c.id, jobs.c.name, jobs.c.vo, jobs.c.owner, jobs.c.state, jobs.c.started_at)
            .where(or_(jobs.c.pilot_id.in_(held), jobs.c.id.in_(ended)))
            .order_by(jobs.c.id)
            .limit(limit)
        )
        with self.db.read() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]


def _deltas(rows: Iterable[Any], state: str) -> list[tuple[float, int]]:
    out: list[tuple[float, int]] = []
    for at, old, new in rows:
        if new == state and old != state:
            out.append((float(at), 1))
        elif old == state and new != state:
            out.append((float(at), -1))
    return out
