"""What the peers' policies share: a cycle clock that reads only ``now``, the clouds they may start on, and
free slots of VMs. Pure; the quota arithmetic is cloudpilot's own (:mod:`cloudpilot.policy.budget`)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from cloudpilot.domain.provisioning import CloudView, ProvisioningSnapshot, WorkClass
from cloudpilot.domain.vms import Flavor, VMState
from cloudpilot.policy.budget import PLAIN_IMAGE, Budget, image_for, quota_budget

UPCOMING = frozenset({VMState.REQUESTED, VMState.BOOTING})  # asked for, pilot not registered yet
LIVE = frozenset({VMState.REQUESTED, VMState.BOOTING, VMState.RUNNING})
ENDED = frozenset({VMState.HALTED, VMState.FAILED, VMState.LOST, VMState.DESTROYED})


class Every:
    """A daemon's period: due at the first call, then once ``period`` seconds of ``now`` have passed since the
    last run. The simulator may call a policy every 10 s; a peer whose loop is slower skips the calls between."""

    def __init__(self, period: float) -> None:
        self.period = period
        self.next_at: float | None = None

    def due(self, now: float) -> bool:
        if self.next_at is not None and now < self.next_at:
            return False
        self.next_at = now + self.period  # like the daemons: the next run is scheduled from this one's start
        return True


def startable(snapshot: ProvisioningSnapshot) -> list[CloudView]:
    """Clouds a peer may start VMs on, cheapest core-hour first (then priority, then name). A pending cloud- or
    site-wide shutdown is an outside limit no peer knows of; it is treated as a cloud with no room."""
    clouds = [c for c in snapshot.clouds if not c.shutdown_pending]
    return sorted(clouds, key=lambda c: (c.price_per_core_hour, -c.priority, c.name))


def budgets(snapshot: ProvisioningSnapshot) -> dict[str, Budget]:
    """Per cloud: VMs, cores, memory and start rate left (every VM not yet destroyed counts)."""
    return {c.name: quota_budget(c) for c in snapshot.clouds}


def flavor(cloud: CloudView, name: str) -> Flavor | None:
    return next((f for f in cloud.flavors if f.name == name), None)


def largest(flavors: tuple[Flavor, ...]) -> Flavor:
    return max(flavors, key=lambda f: (f.cores, f.memory_mb, f.name))


def image_of(cloud: CloudView, wc: WorkClass) -> str | None:
    """The image to name in a start for the class: the endorsed one the cloud boots for it, or None for the VO's
    configured image (no image list in force, or nothing suits: the caller has checked ``suits``)."""
    return image_for(cloud, wc) or None


def plain_image(cloud: CloudView, vo: str) -> str | None:
    """The image a VM for the VO's jobs that need no particular image or tag boots (site-driven starts)."""
    return image_of(cloud, WorkClass.any_of(vo))


@dataclass
class Slot:
    """Free room on one VM (or one new VM) for jobs of its VO."""

    cores: float
    memory_mb: float
    image: str = PLAIN_IMAGE  # the endorsed image the VM runs
    tags: frozenset[str] = frozenset()  # the tags that image provides


def free_slots(
    snapshot: ProvisioningSnapshot, states: frozenset[VMState], skip: set[str]
) -> dict[tuple[str, str], list[Slot]]:
    """Free cores (and their share of memory) of the VMs in ``states``, per (cloud, VO)."""
    slots: dict[tuple[str, str], list[Slot]] = defaultdict(list)
    for cloud in snapshot.clouds:
        for vm in cloud.vms:
            if vm.state in states and vm.id not in skip and vm.free_cores > 0:
                memory = vm.memory_mb * vm.free_cores / max(1, vm.cores)
                slots[(cloud.name, vm.vo)].append(Slot(vm.free_cores, memory, vm.image or PLAIN_IMAGE, vm.image_tags))
    return slots


def fill(slots: list[Slot], wc: WorkClass, jobs: int, cloud: CloudView) -> int:
    """Place up to ``jobs`` jobs of the class into the slots of VMs of ``cloud``; returns how many are left.
    A slot serves the class only on the image it requires, with the tags it needs."""
    for slot in slots:
        if jobs <= 0:
            break
        if wc.image is not None and (slot.image or None) != wc.image:
            continue
        if not wc.tags <= cloud.tags | slot.tags:
            continue
        fit = int(slot.cores // wc.cores)
        if wc.memory_mb:
            fit = min(fit, int(slot.memory_mb // wc.memory_mb))
        took = min(fit, jobs)
        slot.cores -= took * wc.cores
        slot.memory_mb -= took * (wc.memory_mb or 0)
        jobs -= took
    return jobs
