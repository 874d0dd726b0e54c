"""Virtual machines: their states and the one table of allowed transitions, and flavors."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from cloudpilot.domain.errors import IllegalTransition


class VMState(StrEnum):
    REQUESTED = "requested"  # recorded, the cloud not yet asked
    BOOTING = "booting"  # the cloud accepted it; no pilot has registered yet
    RUNNING = "running"  # its pilot registered and heartbeats
    DRAINING = "draining"  # asked to take no new work and halt when its jobs are done
    HALTED = "halted"  # its pilot reported a shutdown code, or the instance stopped
    DESTROYED = "destroyed"  # the cloud instance is gone
    FAILED = "failed"  # cloud error or boot timeout
    LOST = "lost"  # no heartbeat for too long, or vanished from the cloud

    @property
    def is_final(self) -> bool:
        return self is VMState.DESTROYED


VM_TRANSITIONS: dict[VMState, frozenset[VMState]] = {
    VMState.REQUESTED: frozenset({VMState.BOOTING, VMState.FAILED}),
    VMState.BOOTING: frozenset({VMState.RUNNING, VMState.DRAINING, VMState.HALTED, VMState.FAILED, VMState.LOST}),
    VMState.RUNNING: frozenset({VMState.DRAINING, VMState.HALTED, VMState.FAILED, VMState.LOST}),
    VMState.DRAINING: frozenset({VMState.HALTED, VMState.FAILED, VMState.LOST}),
    VMState.HALTED: frozenset({VMState.DESTROYED}),
    VMState.FAILED: frozenset({VMState.DESTROYED}),
    VMState.LOST: frozenset({VMState.DESTROYED}),
    VMState.DESTROYED: frozenset(),
}

# States whose VMs count as capacity: booting ones too, so VMs are never started twice for the same jobs.
SUPPLY_STATES = frozenset({VMState.REQUESTED, VMState.BOOTING, VMState.RUNNING})
# States whose cloud instance must still be destroyed.
TO_DESTROY_STATES = frozenset({VMState.HALTED, VMState.FAILED, VMState.LOST})


def check_vm_transition(vm_id: object, current: VMState | str, target: VMState | str) -> None:
    cur, tgt = VMState(current), VMState(target)
    if tgt not in VM_TRANSITIONS[cur]:
        raise IllegalTransition("VM", vm_id, cur.value, tgt.value)


@dataclass(frozen=True, slots=True)
class Flavor:
    """A VM size a cloud offers."""

    name: str
    cores: int
    memory_mb: int


@dataclass(frozen=True, slots=True)
class VM:
    """A VM record: what we asked a cloud for, and what became of it."""

    id: str
    cloud: str
    vo: str
    flavor: str
    cores: int
    memory_mb: int
    state: VMState
    created_at: float
    updated_at: float
    instance_id: str | None = None
    booted_at: float | None = None  # when its pilot first registered
    last_seen_at: float | None = None
    idle_since: float | None = None
    expires_at: float | None = None  # the VM's maximum lifetime
    jobs_run: int = 0
    shutdown_code: int | None = None
    shutdown_message: str | None = None
    failure_reason: str | None = None
    terminated_at: float | None = None
    site: str | None = None
    image: str | None = None
    hs06: float | None = None
    shutdown_deadline: float | None = None  # a scheduled shutdown: the VM is gone by then
    permission: str | None = None  # the site policy's last refusal, if any
    cluster_id: int | None = None  # a cluster's VM (not a pilot VM): see domain/clusters.py
    cluster_service: str | None = None
