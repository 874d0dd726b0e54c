"""What sites decide at run time: scheduled shutdowns, VOs switched on or off, cloud capacity overrides; and the
usage figures their policy checks (running cores and core-hours per site and VO)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import and_, delete, func, insert, or_, select, update

from cloudpilot.domain.jobs import ACTIVE_STATES, JobState
from cloudpilot.domain.vms import VMState
from cloudpilot.store.database import Database
from cloudpilot.store.errors import NotFound
from cloudpilot.store.schema import cloud_capacity, job_usage, jobs, pilots, site_shutdowns, site_vo_switches, vms

_LIVE_VM_STATES = [s.value for s in (VMState.REQUESTED, VMState.BOOTING, VMState.RUNNING, VMState.DRAINING)]


@dataclass(frozen=True, slots=True)
class ScheduledShutdown:
    id: int
    site: str
    cloud: str | None  # None: every cloud of the site
    vm_id: str | None  # None: every VM of the cloud (or of the site)
    deadline: float
    reason: str
    created_at: float
    created_by: str
    cancelled_at: float | None = None

    def closes(self, site: str | None, cloud: str) -> bool:
        """Whether it shuts the whole cloud (or its site) down: no new VM starts there while it is in force."""
        return self.vm_id is None and self.covers(site, cloud, "")

    def covers(self, site: str | None, cloud: str, vm_id: str) -> bool:
        if self.vm_id is not None:
            return self.vm_id == vm_id
        if self.cloud is not None:
            return self.cloud == cloud
        return self.site == site


@dataclass(frozen=True, slots=True)
class VOSwitch:
    site: str
    vo: str
    enabled: bool
    reason: str
    set_at: float
    set_by: str


class SiteRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- scheduled shutdowns ----------------------------------------------------------------------------

    def add_shutdown(self, s: ScheduledShutdown) -> ScheduledShutdown:
        """Record the shutdown and bring the deadline of every live VM it covers forward to it (never later)."""
        with self.db.write() as conn:
            values = {k: getattr(s, k) for k in ("site", "cloud", "vm_id", "deadline", "reason")}
            new_id = conn.execute(
                insert(site_shutdowns)
                .values(**values, created_at=s.created_at, created_by=s.created_by)
                .returning(site_shutdowns.c.id)
            ).scalar_one()
            if s.vm_id is not None:
                scope = vms.c.id == s.vm_id
            elif s.cloud is not None:
                scope = vms.c.cloud == s.cloud
            else:
                scope = vms.c.site == s.site
            earlier = or_(vms.c.shutdown_deadline.is_(None), vms.c.shutdown_deadline > s.deadline)
            conn.execute(
                update(vms)
                .where(scope, vms.c.state.in_(_LIVE_VM_STATES), earlier)
                .values(shutdown_deadline=s.deadline, updated_at=s.created_at)
            )
        return ScheduledShutdown(**{**_fields(s), "id": int(new_id)})

    def cancel_shutdown(self, shutdown_id: int, now: float) -> ScheduledShutdown:
        """Cancel it; the VMs it covered keep only the deadlines of the shutdowns still pending."""
        with self.db.write() as conn:
            row = conn.execute(select(site_shutdowns).where(site_shutdowns.c.id == shutdown_id)).mappings().first()
            if row is None:
                raise NotFound(f"shutdown {shutdown_id} does not exist")
            conn.execute(update(site_shutdowns).where(site_shutdowns.c.id == shutdown_id).values(cancelled_at=now))
            cancelled = _shutdown(row)
            pending = [
                _shutdown(r)
                for r in conn.execute(select(site_shutdowns).where(site_shutdowns.c.cancelled_at.is_(None))).mappings()
            ]
            for vm_id, site, cloud in conn.execute(
                select(vms.c.id, vms.c.site, vms.c.cloud).where(vms.c.state.in_(_LIVE_VM_STATES))
            ):
                if not cancelled.covers(site, cloud, vm_id):
                    continue
                deadlines = [p.deadline for p in pending if p.covers(site, cloud, vm_id)]
                conn.execute(
                    update(vms).where(vms.c.id == vm_id).values(shutdown_deadline=min(deadlines, default=None))
                )
        return ScheduledShutdown(**{**_fields(cancelled), "cancelled_at": now})

    def get_shutdown(self, shutdown_id: int) -> ScheduledShutdown:
        with self.db.read() as conn:
            row = conn.execute(select(site_shutdowns).where(site_shutdowns.c.id == shutdown_id)).mappings().first()
        if row is None:
            raise NotFound(f"shutdown {shutdown_id} does not exist")
        return _shutdown(row)

    def active_shutdowns(self, site: str | None = None) -> list[ScheduledShutdown]:
        """Shutdowns not cancelled, before or after their deadline: a cloud or site under one stays closed to
        new VMs until its admin cancels it."""
        stmt = select(site_shutdowns).where(site_shutdowns.c.cancelled_at.is_(None))
        if site is not None:
            stmt = stmt.where(site_shutdowns.c.site == site)
        with self.db.read() as conn:
            return [_shutdown(r) for r in conn.execute(stmt.order_by(site_shutdowns.c.deadline)).mappings()]

    # --- VOs switched on or off -------------------------------------------------------------------------

    def set_vo_switch(self, switch: VOSwitch) -> None:
        with self.db.write() as conn:
            conn.execute(
                delete(site_vo_switches).where(
                    site_vo_switches.c.site == switch.site, site_vo_switches.c.vo == switch.vo
                )
            )
            conn.execute(insert(site_vo_switches).values(**_fields(switch)))

    def vo_switches(self) -> dict[tuple[str, str], VOSwitch]:
        with self.db.read() as conn:
            rows = conn.execute(select(site_vo_switches)).mappings().all()
        return {(r["site"], r["vo"]): VOSwitch(**{**r, "enabled": bool(r["enabled"])}) for r in rows}

    # --- capacity overrides -----------------------------------------------------------------------------

    def set_capacity(self, cloud: str, max_vms: int | None, now: float, by: str) -> None:
        """Override the cloud's max_vms (``None``: back to the configuration)."""
        with self.db.write() as conn:
            conn.execute(delete(cloud_capacity).where(cloud_capacity.c.cloud == cloud))
            if max_vms is not None:
                conn.execute(insert(cloud_capacity).values(cloud=cloud, max_vms=max_vms, set_at=now, set_by=by))

    def capacity_overrides(self) -> dict[str, int]:
        with self.db.read() as conn:
            return {c: int(n) for c, n in conn.execute(select(cloud_capacity.c.cloud, cloud_capacity.c.max_vms))}

    # --- usage the site policy checks -------------------------------------------------------------------

    def running_cores(self) -> dict[tuple[str, str], int]:
        """Cores of matched or running jobs per (site, VO), by the site their pilot runs at."""
        stmt = (
            select(pilots.c.site, jobs.c.vo, func.sum(jobs.c.cores))
            .join(pilots, pilots.c.id == jobs.c.pilot_id)
            .where(jobs.c.state.in_([s.value for s in ACTIVE_STATES]), pilots.c.site.is_not(None))
            .group_by(pilots.c.site, jobs.c.vo)
        )
        with self.db.read() as conn:
            return {(site, vo): int(n) for site, vo, n in conn.execute(stmt)}

    def core_hours_since(self, since: float, now: float) -> dict[tuple[str, str], float]:
        """Core-hours per (site, VO) used since ``since``: finished jobs' records plus the running jobs so far."""
        used: dict[tuple[str, str], float] = defaultdict(float)
        ended = (
            select(job_usage.c.site, job_usage.c.vo, func.sum(job_usage.c.wall_seconds * job_usage.c.cores))
            .where(job_usage.c.ended_at >= since, job_usage.c.site.is_not(None))
            .group_by(job_usage.c.site, job_usage.c.vo)
        )
        running = (
            select(pilots.c.site, jobs.c.vo, jobs.c.cores, jobs.c.started_at)
            .join(pilots, pilots.c.id == jobs.c.pilot_id)
            .where(
                and_(jobs.c.state == JobState.RUNNING.value, pilots.c.site.is_not(None), jobs.c.started_at.is_not(None))
            )
        )
        with self.db.read() as conn:
            for site, vo, core_seconds in conn.execute(ended):
                used[(site, vo)] += float(core_seconds or 0) / 3600
            for site, vo, cores, started_at in conn.execute(running):
                used[(site, vo)] += cores * max(0.0, now - max(started_at, since)) / 3600
        return dict(used)


def _fields(obj: object) -> dict[str, object]:
    return {name: getattr(obj, name) for name in obj.__slots__}  # type: ignore[attr-defined]


def _shutdown(row: object) -> ScheduledShutdown:
    r = dict(row)  # type: ignore[call-overload]
    return ScheduledShutdown(**r)
