"""VM records and their history. Every state change is checked against the domain's VM transitions table
and recorded in ``vm_events`` in the same transaction."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from cloudpilot.domain.vms import VM, VMState, check_vm_transition
from cloudpilot.store.database import Database
from cloudpilot.store.errors import Conflict, NotFound
from cloudpilot.store.schema import vm_events, vms

_FIELDS = [c.name for c in vms.c]
_FAILED = [VMState.FAILED.value, VMState.LOST.value]
BOOT_SAMPLES = 20  # the median boot time is taken over this many of the cloud's latest booted VMs
FAILURE_ROWS = 200  # ended VMs read for the failures in a row (the back-off stops growing after a few cycles)
# A failure reason that starts with this was a configuration mistake, not an outage: it does not back the cloud
# off (the provisioner stops the cloud instead, until a restart with the configuration fixed).
CONFIG_ERROR_PREFIX = "configuration error: "


@dataclass(frozen=True, slots=True)
class BootStats:
    """How VMs of one cloud have booted: the latest boot, and the median seconds from request to a running
    pilot over the latest :data:`BOOT_SAMPLES` boots (None: no VM booted yet)."""

    last_boot_at: float | None
    median_boot_seconds: float | None
    samples: int


@dataclass(frozen=True, slots=True)
class Failure:
    """The latest failed boot of a cloud: its (redacted) reason and when the VM failed."""

    reason: str
    at: float


def vm_from_row(row: Mapping[str, Any]) -> VM:
    return VM(**{**{k: row[k] for k in _FIELDS}, "state": VMState(row["state"])})


class VMRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, vm: VM, reason: str) -> VM:
        """Record a VM about to be started; refused (:class:`Fenced`) from a deposed leader."""
        with self.db.write() as conn:
            self.db.fence.check(conn)
            conn.execute(
                insert(vms).values(
                    **{k: getattr(vm, k) for k in _FIELDS},
                )
            )
            conn.execute(
                insert(vm_events).values(
                    vm_id=vm.id, at=vm.created_at, from_state=None, to_state=vm.state, reason=reason
                )
            )
        return vm

    def get(self, vm_id: str) -> VM:
        with self.db.read() as conn:
            return self._get(conn, vm_id)

    def _get(self, conn: Connection, vm_id: str) -> VM:
        stmt = select(vms).where(vms.c.id == vm_id)
        if self.db.is_postgres:
            stmt = stmt.with_for_update()
        row = conn.execute(stmt).mappings().first()
        if row is None:
            raise NotFound(f"VM {vm_id} does not exist")
        return vm_from_row(row)

    def list(self, states: set[VMState] | None = None, cloud: str | None = None, limit: int = 100_000) -> list[VM]:
        stmt = select(vms).order_by(vms.c.created_at, vms.c.id).limit(limit)
        if states is not None:
            stmt = stmt.where(vms.c.state.in_([s.value for s in states]))
        if cloud is not None:
            stmt = stmt.where(vms.c.cloud == cloud)
        with self.db.read() as conn:
            return [vm_from_row(r) for r in conn.execute(stmt).mappings()]

    def ended_since(self, cloud: str, since: float) -> list[VM]:
        """VMs of the cloud that stopped running (halted, failed, lost or destroyed) since ``since``."""
        ended = [VMState.HALTED.value, VMState.FAILED.value, VMState.LOST.value, VMState.DESTROYED.value]
        stmt = (
            select(vms)
            .where(vms.c.cloud == cloud, vms.c.state.in_(ended), vms.c.updated_at >= since)
            .order_by(vms.c.created_at, vms.c.id)
        )
        with self.db.read() as conn:
            return [vm_from_row(r) for r in conn.execute(stmt).mappings()]

    def history(self, vm_id: str) -> list[tuple[float, str | None, str, str]]:
        with self.db.read() as conn:
            rows = conn.execute(
                select(vm_events.c.at, vm_events.c.from_state, vm_events.c.to_state, vm_events.c.reason)
                .where(vm_events.c.vm_id == vm_id)
                .order_by(vm_events.c.id)
            )
            return [tuple(r) for r in rows]  # type: ignore[misc]

    def move(self, vm_id: str, target: VMState, now: float, reason: str, **values: Any) -> VM:
        """Change a VM's state (and other fields) if the transitions table allows it."""
        with self.db.write() as conn:
            if target is VMState.DESTROYED:
                self.db.fence.check(conn)  # only the leader destroys (services/vm_monitor.py)
            vm = self._get(conn, vm_id)
            check_vm_transition(vm_id, vm.state, target)
            result = conn.execute(
                update(vms)
                .where(vms.c.id == vm_id, vms.c.state == vm.state.value)
                .values(state=target.value, updated_at=now, **values)
            )
            if result.rowcount != 1:
                raise Conflict(f"VM {vm_id} changed state while being moved to {target.value}")
            conn.execute(
                insert(vm_events).values(
                    vm_id=vm_id, at=now, from_state=vm.state.value, to_state=target.value, reason=reason
                )
            )
            return self._get(conn, vm_id)

    def check_fence(self) -> None:
        """Raise :class:`Fenced` if this process led under an epoch that is no longer current: called before a
        cloud call only the leader may make (destroying an instance)."""
        with self.db.read() as conn:
            self.db.fence.check(conn)

    def note(self, vm_id: str, now: float, reason: str) -> None:
        """An event in the VM's history that changes nothing (a security event): from and to its current state."""
        with self.db.write() as conn:
            state = self._get(conn, vm_id).state.value
            conn.execute(insert(vm_events).values(vm_id=vm_id, at=now, from_state=state, to_state=state, reason=reason))

    def update(self, vm_id: str, now: float, **values: Any) -> None:
        """Fields that are not the state (heartbeat times, job counts)."""
        with self.db.write() as conn:
            conn.execute(update(vms).where(vms.c.id == vm_id).values(updated_at=now, **values))

    def touch(self, vm_id: str, now: float) -> float | None:
        """Its pilot is alive (a heartbeat): seen now. Returns the VM's shutdown deadline, read by the same
        statement, so a heartbeat costs one round trip."""
        with self.db.write() as conn:
            row = conn.execute(
                update(vms)
                .where(vms.c.id == vm_id)
                .values(last_seen_at=now, updated_at=now)
                .returning(vms.c.shutdown_deadline)
            ).first()
        return None if row is None else row[0]

    def increment_jobs(self, vm_id: str, now: float) -> None:
        """Its pilot took a job: seen now, not idle, one more job run."""
        with self.db.write() as conn:
            conn.execute(
                update(vms)
                .where(vms.c.id == vm_id)
                .values(jobs_run=vms.c.jobs_run + 1, last_seen_at=now, idle_since=None, updated_at=now)
            )

    def starts_since(self, cloud: str, since: float) -> int:
        with self.db.read() as conn:
            return int(
                conn.execute(select(func.count()).where(vms.c.cloud == cloud, vms.c.created_at >= since)).scalar_one()
            )

    def boot_failures_in_row(self, cloud: str) -> tuple[int, float | None]:
        """Failed provisioning cycles since the cloud's last VM that booted, and when the latest failure
        happened: the back-off's input.

        VMs requested in one cycle share their ``created_at`` (the cycle's ``now``) and count as one attempt,
        failed if any of them failed before booting and none booted: three VMs of one cycle that time out back
        the cloud off once, not three times. A cycle in which a VM booted ends the run. Configuration errors
        (:data:`CONFIG_ERROR_PREFIX`) are no failed boot."""
        failed_at = self._failed_at()
        with self.db.read() as conn:
            rows = conn.execute(
                select(vms.c.created_at, vms.c.booted_at, vms.c.failure_reason, failed_at)
                .where(vms.c.cloud == cloud, vms.c.state.notin_([VMState.REQUESTED.value, VMState.BOOTING.value]))
                .order_by(vms.c.created_at.desc())
                .limit(FAILURE_ROWS)
            ).all()
        cycles: dict[float, tuple[bool, float | None]] = {}  # requested at -> (a VM booted, latest failure)
        for created_at, booted_at, failure_reason, at in rows:
            booted, latest = cycles.get(created_at, (False, None))
            if failure_reason is not None and booted_at is None and not failure_reason.startswith(CONFIG_ERROR_PREFIX):
                # a cloud error, an instance in error, a boot timeout, or lost before it booted
                at = at if at is not None else created_at
                latest = at if latest is None else max(latest, at)
            cycles[created_at] = (booted or booted_at is not None, latest)
        failures, latest = 0, None
        for booted, failed_at_ in cycles.values():  # newest cycle first
            if booted:
                break
            if failed_at_ is not None:
                failures += 1
                latest = failed_at_ if latest is None else max(latest, failed_at_)
        return failures, latest

    def last_failure(self, cloud: str) -> Failure | None:
        """The cloud's latest VM that failed before it booted, whatever came after it."""
        failed_at = self._failed_at()
        with self.db.read() as conn:
            row = conn.execute(
                select(vms.c.failure_reason, failed_at, vms.c.updated_at)
                .where(vms.c.cloud == cloud, vms.c.failure_reason.is_not(None), vms.c.booted_at.is_(None))
                .order_by(vms.c.created_at.desc(), vms.c.id.desc())
                .limit(1)
            ).first()
        if row is None:
            return None
        reason, at, updated_at = row
        return Failure(reason, at if at is not None else updated_at)

    def boot_stats(self, cloud: str) -> BootStats:
        """The cloud's latest boot and median boot time (``booted_at - created_at``: the VM is requested and
        moved to ``booting`` in the same cycle, so this is its booting → running time)."""
        with self.db.read() as conn:
            last = conn.execute(select(func.max(vms.c.booted_at)).where(vms.c.cloud == cloud)).scalar_one()
            rows = conn.execute(
                select(vms.c.created_at, vms.c.booted_at)
                .where(vms.c.cloud == cloud, vms.c.booted_at.is_not(None))
                .order_by(vms.c.created_at.desc())
                .limit(BOOT_SAMPLES)
            ).all()
        durations = [max(0.0, booted - created) for created, booted in rows]
        median = statistics.median(durations) if durations else None
        return BootStats(last, median, len(durations))

    @staticmethod
    def _failed_at() -> Any:
        """When each VM moved to ``failed`` or ``lost`` (its history), as a correlated scalar subquery: unlike
        ``updated_at`` it does not move when the VM is destroyed later."""
        return (
            select(func.max(vm_events.c.at))
            .where(vm_events.c.vm_id == vms.c.id, vm_events.c.to_state.in_(_FAILED))
            .scalar_subquery()
        )
