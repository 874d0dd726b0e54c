"""What a cloud can still take in one decision, which work it suits, and which VMs count as alive. Shared by
the demand path (:mod:`cloudpilot.policy.provisioning`), pledges, capacity drains and vacuum clouds. Pure."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cloudpilot.domain.provisioning import CloudView, VMView, WorkClass
from cloudpilot.domain.vms import SUPPLY_STATES, Flavor, VMState

INF = math.inf

# VMs that hold or will hold work: not destroyed, not already leaving (draining, halted, failed, lost).
LIVE_STATES = SUPPLY_STATES


def suits(cloud: CloudView, wc: WorkClass) -> bool:
    """Whether VMs of this cloud may run the class's jobs at all (VO image, tags, site, a big enough flavor)."""
    if cloud.vos is not None and wc.vo not in cloud.vos:
        return False
    if not wc.tags <= cloud.tags:
        return False
    if cloud.site in wc.sites_deny or (wc.sites_allow and cloud.site not in wc.sites_allow):
        return False
    return any(jobs_per_vm(f, wc) > 0 for f in cloud.flavors)


def jobs_per_vm(flavor: Flavor, wc: WorkClass) -> int:
    by_cores = flavor.cores // wc.cores
    by_memory = by_cores if wc.memory_mb is None else flavor.memory_mb // wc.memory_mb
    return min(by_cores, by_memory)


def is_live(vm: VMView, gone: set[str]) -> bool:
    """Alive and not stopped or drained earlier in this same decision."""
    return vm.state in LIVE_STATES and vm.id not in gone


def drain_order(vm: VMView) -> tuple[int, float, str]:
    """Which VM to drain first: idle ones (no busy core: nothing is lost), then the youngest (least work lost
    to a restart, and the newest is the one whose start was the most opportunistic); the id breaks ties."""
    return (0 if vm.free_cores >= vm.cores else 1, -vm.created_at, vm.id)


def drainable(vm: VMView, gone: set[str]) -> bool:
    # A requested VM has no instance yet and cannot move to draining (VM_TRANSITIONS); it boots or fails soon.
    return is_live(vm, gone) and vm.state is not VMState.REQUESTED


@dataclass
class Budget:
    """What a cloud can still take in this decision."""

    vms: float
    cores: float
    memory_mb: float
    starts: float
    vo_cores: dict[str, float] = field(default_factory=dict)  # this cloud's share split (sites without pledges)
    site_cores: dict[str, float] = field(default_factory=dict)  # pledge caps, one dict shared by a site's clouds

    def vms_allowed(self, flavor: Flavor, vo: str) -> int:
        limit = min(
            self.vms,
            self.starts,
            self.cores / flavor.cores,
            self.memory_mb / flavor.memory_mb,
            self.vo_cores.get(vo, INF) / flavor.cores,
            self.site_cores.get(vo, INF) / flavor.cores,
        )
        return max(0, int(limit)) if limit != INF else 1 << 30

    def take(self, flavor: Flavor, vo: str, count: int) -> None:
        self.vms -= count
        self.starts -= count
        self.cores -= count * flavor.cores
        self.memory_mb -= count * flavor.memory_mb
        if vo in self.vo_cores:
            self.vo_cores[vo] -= count * flavor.cores
        if vo in self.site_cores:
            self.site_cores[vo] -= count * flavor.cores


def quota_budget(cloud: CloudView) -> Budget:
    """The cloud's quota left (every VM not yet destroyed holds its share of it) and its start rate left."""
    vms = cores = memory = 0
    for vm in cloud.vms:
        if vm.state is not VMState.DESTROYED:
            vms += 1
            cores += vm.cores
            memory += vm.memory_mb
    return Budget(
        vms=cloud.max_vms - vms,
        cores=INF if cloud.max_cores is None else cloud.max_cores - cores,
        memory_mb=INF if cloud.max_memory_mb is None else cloud.max_memory_mb - memory,
        starts=math.floor(cloud.start_rate_per_minute) - cloud.starts_last_minute,
    )


def room_cores(flavors: tuple[Flavor, ...], vms: float, cores: float, memory_mb: float) -> int:
    """How many cores new VMs of one flavor could still get within a quota (the start rate left out)."""
    best = 0
    for f in flavors:
        n = min(vms, cores / f.cores, memory_mb / f.memory_mb)
        if n >= 1:
            best = max(best, (1 << 30 if n == INF else int(n)) * f.cores)
    return best
