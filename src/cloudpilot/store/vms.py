"""VM records and their history. Every state change is checked against the domain's VM transitions table
and recorded in ``vm_events`` in the same transaction."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from cloudpilot.domain.vms import VM, VMState, check_vm_transition
from cloudpilot.store.database import Database
from cloudpilot.store.errors import Conflict, NotFound
from cloudpilot.store.schema import vm_events, vms

_FIELDS = [c.name for c in vms.c]


def vm_from_row(row: Mapping[str, Any]) -> VM:
    return VM(**{**{k: row[k] for k in _FIELDS}, "state": VMState(row["state"])})


class VMRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, vm: VM, reason: str) -> VM:
        with self.db.write() as conn:
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
        """Failed boots since the cloud's last VM that booted, and when the latest failed: the back-off's input."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(vms.c.booted_at, vms.c.failure_reason, vms.c.updated_at)
                .where(vms.c.cloud == cloud, vms.c.state.notin_([VMState.REQUESTED.value, VMState.BOOTING.value]))
                .order_by(vms.c.created_at.desc())
                .limit(50)
            ).all()
        failures, latest = 0, None
        for booted_at, failure_reason, updated_at in rows:
            if booted_at is not None:
                break  # a VM that booted resets the count
            if failure_reason is not None:  # failed before booting (cloud error, error state, boot timeout)
                failures += 1
                latest = updated_at if latest is None else max(latest, updated_at)
        return failures, latest
