"""Which VMs to start and stop, from the task queue and the clouds' state. Pure: no I/O, no clock.

One decision, in order:
1. running VMs idle for ``idle_seconds`` are stopped;
2. work classes are served VO by VO, the VO furthest below its share first, bigger classes first;
3. a class first takes free slots of its VO's VMs on clouds that suit it (booting VMs count: their
   cores are supply, so the same jobs never start VMs twice), then new VMs: on the suitable clouds in
   ``cloud_order``, with the flavor that wastes least, as many as the remaining jobs need, cut to the
   cloud's quota (VMs, cores, memory), its start rate, the VO's share of the cloud when other VOs want it
   too, and to VMs with at least ``min_work_seconds_per_core`` of estimated work per core;
4. cores a new VM leaves free are offered to the VO's next classes.
A cloud within its back-off after boot failures (``backoff_initial_seconds`` doubling per failure in a row
up to ``backoff_max_seconds``) starts nothing.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from cloudpilot.domain.provisioning import (
    Action,
    CloudOrder,
    CloudView,
    ProvisioningKnobs,
    ProvisioningSnapshot,
    StartVMs,
    StopVM,
    WorkClass,
)
from cloudpilot.domain.vms import SUPPLY_STATES, Flavor, VMState

INF = math.inf


def backoff_until(cloud: CloudView, knobs: ProvisioningKnobs) -> float | None:
    """When a cloud may start VMs again after ``boot_failures_in_row`` failures; ``None``: no back-off."""
    if cloud.boot_failures_in_row <= 0 or cloud.last_boot_failure_at is None:
        return None
    delay = knobs.backoff_initial_seconds * 2 ** (cloud.boot_failures_in_row - 1)
    return cloud.last_boot_failure_at + min(delay, knobs.backoff_max_seconds)


def suits(cloud: CloudView, wc: WorkClass) -> bool:
    """Whether VMs of this cloud may run the class's jobs at all (VO image, tags, site, a big enough flavor)."""
    if cloud.vos is not None and wc.vo not in cloud.vos:
        return False
    if not wc.tags <= cloud.tags:
        return False
    if cloud.site in wc.sites_deny or (wc.sites_allow and cloud.site not in wc.sites_allow):
        return False
    return any(_jobs_per_vm(f, wc) > 0 for f in cloud.flavors)


def _jobs_per_vm(flavor: Flavor, wc: WorkClass) -> int:
    by_cores = flavor.cores // wc.cores
    by_memory = by_cores if wc.memory_mb is None else flavor.memory_mb // wc.memory_mb
    return min(by_cores, by_memory)


def best_flavor(flavors: tuple[Flavor, ...], wc: WorkClass, jobs: int) -> tuple[Flavor, int] | None:
    """The flavor wasting the smallest share of its cores for ``jobs`` jobs of the class, and how many of those
    jobs one VM of it takes. Ties go to fewer VMs (fewer boots, less of the start rate), then the name."""
    best: tuple[tuple[float, int, str], Flavor, int] | None = None
    for flavor in flavors:
        per_vm = _jobs_per_vm(flavor, wc)
        if per_vm <= 0:
            continue
        vms = math.ceil(jobs / per_vm)
        wasted = vms * flavor.cores - jobs * wc.cores
        key = (wasted / (vms * flavor.cores), vms, flavor.name)
        if best is None or key < best[0]:
            best = (key, flavor, per_vm)
    return None if best is None else (best[1], best[2])


@dataclass
class _Slot:
    cores: int
    memory_mb: float


@dataclass
class _Budget:
    """What a cloud can still take in this decision."""

    vms: float
    cores: float
    memory_mb: float
    starts: float
    vo_cores: dict[str, float]

    def vms_allowed(self, flavor: Flavor, vo: str) -> int:
        limit = min(
            self.vms,
            self.starts,
            self.cores / flavor.cores,
            self.memory_mb / flavor.memory_mb,
            self.vo_cores.get(vo, INF) / flavor.cores,
        )
        return max(0, int(limit)) if limit != INF else 1 << 30

    def take(self, flavor: Flavor, vo: str, count: int) -> None:
        self.vms -= count
        self.starts -= count
        self.cores -= count * flavor.cores
        self.memory_mb -= count * flavor.memory_mb
        if vo in self.vo_cores:
            self.vo_cores[vo] -= count * flavor.cores


def decide(snapshot: ProvisioningSnapshot, knobs: ProvisioningKnobs, now: float) -> list[Action]:
    """The actions for this cycle: VMs to stop, then VMs to start (grouped per cloud, VO and flavor)."""
    actions: list[Action] = [*_idle_stops(snapshot, knobs, now)]
    stopping = {a.vm_id for a in actions if isinstance(a, StopVM)}
    clouds = _ordered_clouds(snapshot.clouds, knobs, now)
    budgets = {c.name: _budget(c, snapshot) for c in snapshot.clouds}
    supply = _supply(snapshot.clouds, stopping)
    starts: dict[tuple[str, str, str], int] = defaultdict(int)

    for wc in _ordered_work(snapshot):
        remaining = wc.waiting
        suitable = [c for c in clouds if suits(c, wc)]
        for cloud in suitable:  # free slots first, including those of booting VMs
            remaining = _fill_slots(supply[(cloud.name, wc.vo)], wc, remaining)
        for cloud in suitable:
            if remaining <= 0:
                break
            if cloud.name not in budgets or _backed_off(cloud, knobs, now):
                continue
            remaining = _start_for(cloud, wc, remaining, budgets[cloud.name], supply, starts, knobs)

    for (cloud, vo, flavor), count in sorted(starts.items()):
        actions.append(StartVMs(cloud, vo, flavor, count, f"{count} VM(s) for waiting {vo} jobs"))
    return actions


def _start_for(
    cloud: CloudView,
    wc: WorkClass,
    remaining: int,
    budget: _Budget,
    supply: dict[tuple[str, str], list[_Slot]],
    starts: dict[tuple[str, str, str], int],
    knobs: ProvisioningKnobs,
) -> int:
    choice = best_flavor(cloud.flavors, wc, remaining)
    if choice is None:
        return remaining
    flavor, per_vm = choice
    count = min(math.ceil(remaining / per_vm), budget.vms_allowed(flavor, wc.vo))
    min_work = knobs.min_work_seconds_per_core * flavor.cores
    # CPUPerInstance: the last VM, which may be partly filled, must still have enough work; full ones too.
    while count > 0:
        last_jobs = min(per_vm, remaining - (count - 1) * per_vm)
        if last_jobs * wc.cores * wc.wall_seconds >= min_work:
            break
        count -= 1
    if count <= 0:
        return remaining
    budget.take(flavor, wc.vo, count)
    starts[(cloud.name, wc.vo, flavor.name)] += count
    placed = min(remaining, count * per_vm)
    # Cores the new VMs leave free serve the VO's other classes on this cloud.
    leftover_cores = count * flavor.cores - placed * wc.cores
    if leftover_cores > 0:
        used_memory = placed * (wc.memory_mb or 0)
        supply[(cloud.name, wc.vo)].append(_Slot(leftover_cores, count * flavor.memory_mb - used_memory))
    return remaining - placed


def _fill_slots(slots: list[_Slot], wc: WorkClass, remaining: int) -> int:
    for slot in slots:
        if remaining <= 0:
            break
        fit = slot.cores // wc.cores
        if wc.memory_mb:
            fit = min(fit, int(slot.memory_mb // wc.memory_mb))
        took = min(fit, remaining)
        slot.cores -= took * wc.cores
        slot.memory_mb -= took * (wc.memory_mb or 0)
        remaining -= took
    return remaining


def _idle_stops(snapshot: ProvisioningSnapshot, knobs: ProvisioningKnobs, now: float) -> list[StopVM]:
    stops = []
    for cloud in snapshot.clouds:
        for vm in cloud.vms:
            if vm.state is VMState.RUNNING and vm.idle_since is not None and now - vm.idle_since >= knobs.idle_seconds:
                stops.append(StopVM(vm.id, f"idle for {now - vm.idle_since:.0f} s (policy.idle_seconds)"))
    return stops


def _backed_off(cloud: CloudView, knobs: ProvisioningKnobs, now: float) -> bool:
    until = backoff_until(cloud, knobs)
    return until is not None and now < until


def _ordered_clouds(clouds: tuple[CloudView, ...], knobs: ProvisioningKnobs, now: float) -> list[CloudView]:
    if knobs.cloud_order is CloudOrder.PRICE:
        return sorted(clouds, key=lambda c: (c.price_per_core_hour, -c.priority, c.name))
    return sorted(clouds, key=lambda c: (-c.priority, c.price_per_core_hour, c.name))


def _held(cloud: CloudView) -> tuple[int, int, int, dict[str, int]]:
    """VMs, cores, memory and cores per VO that the cloud's instances hold (every VM not yet destroyed)."""
    live = [vm for vm in cloud.vms if vm.state is not VMState.DESTROYED]
    per_vo: dict[str, int] = defaultdict(int)
    for vm in live:
        per_vo[vm.vo] += vm.cores
    return len(live), sum(vm.cores for vm in live), sum(vm.memory_mb for vm in live), per_vo


def _budget(cloud: CloudView, snapshot: ProvisioningSnapshot) -> _Budget:
    vms, cores, memory, per_vo = _held(cloud)
    capacity_cores = cloud.max_cores
    if capacity_cores is None:
        capacity_cores = cloud.max_vms * max((f.cores for f in cloud.flavors), default=0)
    # Shares of this cloud apply when several VOs want it; a VO alone may use all of it.
    wanting = sorted({wc.vo for wc in snapshot.work if wc.waiting > 0 and suits(cloud, wc)})
    vo_cores: dict[str, float] = {}
    if len(wanting) > 1:
        shares = {vo: snapshot.vo_shares.get(vo, snapshot.default_share) for vo in wanting}
        total = sum(shares.values())
        vo_cores = {vo: capacity_cores * share / total - per_vo.get(vo, 0) for vo, share in shares.items()}
    return _Budget(
        vms=cloud.max_vms - vms,
        cores=INF if cloud.max_cores is None else cloud.max_cores - cores,
        memory_mb=INF if cloud.max_memory_mb is None else cloud.max_memory_mb - memory,
        starts=math.floor(cloud.start_rate_per_minute) - cloud.starts_last_minute,
        vo_cores=vo_cores,
    )


def _supply(clouds: tuple[CloudView, ...], stopping: set[str]) -> dict[tuple[str, str], list[_Slot]]:
    supply: dict[tuple[str, str], list[_Slot]] = defaultdict(list)
    for cloud in clouds:
        for vm in cloud.vms:
            if vm.state in SUPPLY_STATES and vm.id not in stopping and vm.free_cores > 0:
                share_of_memory = vm.memory_mb * vm.free_cores / max(1, vm.cores)
                supply[(cloud.name, vm.vo)].append(_Slot(vm.free_cores, share_of_memory))
    return supply


def _ordered_work(snapshot: ProvisioningSnapshot) -> list[WorkClass]:
    """VO furthest below its share (by cores held on every cloud) first, then its biggest classes."""
    held: dict[str, int] = defaultdict(int)
    for cloud in snapshot.clouds:
        for vo, cores in _held(cloud)[3].items():
            held[vo] += cores

    def vo_key(vo: str) -> float:
        share = snapshot.vo_shares.get(vo, snapshot.default_share)
        return held[vo] / share if share > 0 else INF

    return sorted(
        (wc for wc in snapshot.work if wc.waiting > 0),
        key=lambda wc: (vo_key(wc.vo), wc.vo, -wc.waiting * wc.cores, wc.cores, wc.wall_seconds, sorted(wc.tags)),
    )
