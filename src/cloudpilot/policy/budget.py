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


PLAIN_IMAGE = ""  # image_for: the VO's configured image, no image list in force


def image_for(cloud: CloudView, wc: WorkClass) -> str | None:
    """The endorsed image a VM of this cloud boots for the class (docs/images.md), :data:`PLAIN_IMAGE` for the
    VO's configured image when no image list is in force, or ``None``: nothing this cloud may boot suits it.

    An image the class requires must be one the cloud may boot now; without one, the VO's endorsed image (from
    the cloud's ``images``); a cloud without ``images`` boots the first endorsed image (by identifier) that
    offers the class's tags. A VM offers the cloud's tags and its image's."""
    if cloud.vos is not None and wc.vo not in cloud.vos:
        return None
    if wc.image is not None:
        provided = cloud.images.get(wc.image)
        return wc.image if provided is not None and wc.tags <= cloud.tags | provided else None
    if not cloud.endorsed_only:
        return PLAIN_IMAGE if wc.tags <= cloud.tags else None
    if cloud.vo_images:
        default = cloud.vo_images.get(wc.vo, cloud.vo_images.get("*"))
        provided = cloud.images.get(default) if default is not None else None
        return default if provided is not None and wc.tags <= cloud.tags | provided else None
    for identifier in sorted(cloud.images):
        if wc.tags <= cloud.tags | cloud.images[identifier]:
            return identifier
    return None


def boots_for(cloud: CloudView, vo: str) -> bool:
    """Whether the cloud may boot a VM for the VO's jobs that need no particular image or tag."""
    return vo not in cloud.disabled_vos and image_for(cloud, WorkClass.any_of(vo)) is not None


def suits(cloud: CloudView, wc: WorkClass) -> bool:
    """Whether VMs of this cloud may run the class's jobs at all (an image it may boot for them, tags, site, a
    big enough flavor, a site that has not switched the VO off). :func:`cloudpilot.policy.explain.why_unsuited`
    says which of these fails, in this order."""
    if wc.vo in cloud.disabled_vos or image_for(cloud, wc) is None:
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
