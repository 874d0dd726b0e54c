"""Counts for monitoring: a few GROUP BY queries over indexed columns, run at each metrics scrape."""

from __future__ import annotations

from sqlalchemy import and_, func, or_, select

from cloudpilot.domain.jobs import ACTIVE_STATES
from cloudpilot.domain.vms import VMState
from cloudpilot.store.database import Database
from cloudpilot.store.jobs import HAS_WAITING
from cloudpilot.store.schema import jobs, pilots, task_queues, vms

_ALIVE = (VMState.BOOTING.value, VMState.RUNNING.value, VMState.DRAINING.value)  # a pilot in it may work


class StatsRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def jobs_by_vo_state(self) -> dict[tuple[str, str], int]:
        """(VO, state) -> jobs. Grouped in the order of the ``(vo, owner, state)`` index, then summed over owners
        here: SQLite then walks the index alone with no sort (80 ms for 10^6 jobs, against 400 ms)."""
        stmt = select(jobs.c.vo, jobs.c.state, func.count()).group_by(jobs.c.vo, jobs.c.owner, jobs.c.state)
        counts: dict[tuple[str, str], int] = {}
        with self.db.read() as conn:
            for vo, state, n in conn.execute(stmt):
                counts[(vo, state)] = counts.get((vo, state), 0) + int(n)
        return counts

    def waiting_classes_by_vo(self) -> dict[str, int]:
        """VO -> requirement classes (task queues) with waiting jobs: what each provisioning cycle reads."""
        stmt = select(task_queues.c.vo, func.count()).where(HAS_WAITING).group_by(task_queues.c.vo)
        with self.db.read() as conn:
            return {vo: int(n) for vo, n in conn.execute(stmt).all()}

    def vms_by_cloud_state(self) -> dict[tuple[str, str], int]:
        """(cloud, state) -> VMs not yet destroyed (destroyed ones only pile up)."""
        stmt = (
            select(vms.c.cloud, vms.c.state, func.count())
            .where(vms.c.state != VMState.DESTROYED.value)
            .group_by(vms.c.cloud, vms.c.state)
        )
        with self.db.read() as conn:
            return {(cloud, state): int(n) for cloud, state, n in conn.execute(stmt).all()}

    def active_pilots_by_vo(self, seen_since: float) -> dict[str | None, int]:
        """VO -> pilots that may take or hold work: registered, not halted, and either in a VM that is alive
        or (a hand-started pilot) holding a job or seen since ``seen_since``."""
        alive_vms = select(vms.c.id).where(vms.c.state.in_(_ALIVE))
        holding = select(jobs.c.pilot_id).where(jobs.c.state.in_([s.value for s in ACTIVE_STATES]))
        stmt = (
            select(pilots.c.vo, func.count())
            .where(
                pilots.c.state == "active",
                or_(
                    pilots.c.vm_id.in_(alive_vms),
                    and_(pilots.c.vm_id.is_(None), or_(pilots.c.last_seen_at >= seen_since, pilots.c.id.in_(holding))),
                ),
            )
            .group_by(pilots.c.vo)
        )
        with self.db.read() as conn:
            return {vo: int(n) for vo, n in conn.execute(stmt).all()}
