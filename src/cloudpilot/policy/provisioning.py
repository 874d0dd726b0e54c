"""Which VMs to start, stop and drain, from the task queue and the clouds' state. Pure: no I/O, no clock.

One decision, in order (docs/provisioning.md, "The policy"):
1. running VMs idle for ``idle_seconds`` are stopped (not on vacuum clouds: their pilots leave by themselves);
2. capacity: a cloud with more live VMs than ``max_vms`` drains the excess, idle ones first, then the
   youngest (:mod:`cloudpilot.policy.capacity`); stopped and draining VMs are no supply from here on;
3. work classes are served VO by VO, the VO furthest below its share first, bigger classes first: each first
   takes free slots of its VO's VMs on clouds that suit it (booting VMs and vacuum clouds' VMs count: their
   cores are supply, so the same jobs never start VMs twice);
4. pledges (:mod:`cloudpilot.policy.pledges`): at a site where a pledged VO still waits below its pledge,
   every other VO may only grow up to its own pledge there;
5. the rest of each class starts new VMs: on the suitable demand clouds without a pending shutdown, in
   ``cloud_order``, with the flavor that wastes least, as many as the remaining jobs need, cut to the cloud's
   quota (VMs, cores, memory), its start rate, the pledge caps of its site — or, at a site without pledges,
   the VO's share of the cloud when other VOs want it too — and to as many VMs as the class's whole waiting
   work fills with the min-work threshold each (VMDIRAC's CPUPerInstance: ``min_work_seconds_per_core``, or
   the cloud's boot time if less, per core); work below one VM's threshold is deferred, for at most
   ``max_defer_seconds``; cores a new VM leaves free are offered to the VO's next classes;
6. reclaim: a pledged VO still short at its site because the site's clouds are full gets the cores of VOs
   above their pledge drained, just enough (:func:`cloudpilot.policy.pledges.reclaim`);
7. vacuum clouds start VMs by target share, with a back-off per VO (:mod:`cloudpilot.policy.vacuum`).
A cloud within its back-off after boot failures (``backoff_initial_seconds`` doubling per failure in a row
up to ``backoff_max_seconds``), or with a pending shutdown, starts nothing.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from cloudpilot.domain.provisioning import (
    Action,
    CloudMode,
    CloudOrder,
    CloudView,
    DrainVM,
    ProvisioningKnobs,
    ProvisioningSnapshot,
    StartVMs,
    StopVM,
    WorkClass,
)
from cloudpilot.domain.times import iso
from cloudpilot.domain.vms import SUPPLY_STATES, Flavor, VMState
from cloudpilot.policy.budget import INF, PLAIN_IMAGE, Budget, image_for, jobs_per_vm, quota_budget, suits
from cloudpilot.policy.capacity import capacity_drains
from cloudpilot.policy.pledges import SitePledges, growth_caps, reclaim, site_pledges
from cloudpilot.policy.vacuum import vacuum_starts

__all__ = ["ClassOutcome", "Plan", "backoff_until", "best_flavor", "decide", "min_work_per_core", "plan", "suits"]


def backoff_until(cloud: CloudView, knobs: ProvisioningKnobs) -> float | None:
    """When a cloud may start VMs again after ``boot_failures_in_row`` failed cycles; ``None``: no back-off."""
    return knobs.backoff_end(cloud.boot_failures_in_row, cloud.last_boot_failure_at)


def best_flavor(flavors: tuple[Flavor, ...], wc: WorkClass, jobs: int) -> tuple[Flavor, int] | None:
    """The flavor wasting the smallest share of its cores for ``jobs`` jobs of the class, and how many of those
    jobs one VM of it takes. Ties go to fewer VMs (fewer boots, less of the start rate), then the name."""
    best: tuple[tuple[float, int, str], Flavor, int] | None = None
    for flavor in flavors:
        per_vm = jobs_per_vm(flavor, wc)
        if per_vm <= 0:
            continue
        vms = math.ceil(jobs / per_vm)
        wasted = vms * flavor.cores - jobs * wc.cores
        key = (wasted / (vms * flavor.cores), vms, flavor.name)
        if best is None or key < best[0]:
            best = (key, flavor, per_vm)
    return None if best is None else (best[1], best[2])


DEFERRED = "deferred: "  # how a deferral's reason starts


def min_work_per_core(cloud: CloudView, knobs: ProvisioningKnobs) -> float:
    """Seconds of work per core a new VM must have in sight: ``min_work_seconds_per_core``, but never more than
    the cloud's boot time — a VM that works at least as long as it took to boot is worth booting, so a cloud
    that boots in seconds defers nothing."""
    if cloud.boot_seconds is None:
        return knobs.min_work_seconds_per_core
    return min(knobs.min_work_seconds_per_core, max(0.0, cloud.boot_seconds))


@dataclass
class ClassOutcome:
    """What one decision did for one work class: jobs placed on free cores of live VMs and on VMs started now,
    per cloud, why each suitable cloud started nothing (more) for it, and how many jobs are left unplaced.
    :mod:`cloudpilot.policy.explain` turns it into the reason a job waits."""

    slots: dict[str, int] = field(default_factory=dict)
    started: dict[str, int] = field(default_factory=dict)
    blocked: dict[str, str] = field(default_factory=dict)
    left: int = 0
    deferred_until: float | None = None  # the min-work rule holds it back until then (a VM starts anyway)


@dataclass(frozen=True)
class Plan:
    actions: list[Action]
    outcomes: list[ClassOutcome]  # one per ``snapshot.work`` entry, in its order


@dataclass
class _Slot:
    cores: int
    memory_mb: float
    image: str = PLAIN_IMAGE  # the endorsed image of the VM(s) whose free cores these are
    tags: frozenset[str] = frozenset()  # the tags that image provides


def decide(snapshot: ProvisioningSnapshot, knobs: ProvisioningKnobs, now: float) -> list[Action]:
    """The actions for this cycle: VMs to stop, VMs to drain, then VMs to start (grouped per cloud, VO and
    flavor; demand starts first, then vacuum starts)."""
    return plan(snapshot, knobs, now).actions


def plan(snapshot: ProvisioningSnapshot, knobs: ProvisioningKnobs, now: float) -> Plan:
    """:func:`decide`, with what it did for each work class (the explanations read it, so they cannot
    disagree with the decision)."""
    stops = _idle_stops(snapshot, knobs, now)
    gone = {a.vm_id for a in stops}  # stopped or drained in this decision: no supply, not held
    drains: list[DrainVM] = capacity_drains(snapshot.clouds, gone)
    gone.update(d.vm_id for d in drains)

    clouds = _ordered_clouds(snapshot.clouds, knobs, now)
    pledged_sites = {site for site, pledges in snapshot.pledges.items() if pledges}
    budgets = {c.name: _budget(c, snapshot, c.site in pledged_sites) for c in snapshot.clouds}
    supply = _supply(snapshot.clouds, gone)

    # Free slots first, for every class, so "waiting" (for pledges) means work no slot will take.
    indexed = _ordered_work(snapshot)
    work = [wc for _, wc in indexed]
    outcomes = [ClassOutcome(left=wc.waiting) for wc in snapshot.work]
    suitable = [[c for c in clouds if suits(c, wc)] for wc in work]
    left = []
    for (index, wc), where in zip(indexed, suitable, strict=True):
        remaining = wc.waiting
        for cloud in where:
            remaining = _fill_slots(supply[(cloud.name, wc.vo)], wc, remaining, cloud, outcomes[index].slots)
        left.append(remaining)

    sites = site_pledges(snapshot, gone, list(zip(work, left, strict=True)))
    vos = {wc.vo for wc in work}
    for sp in sites.values():
        caps = growth_caps(sp, vos)
        for cloud in sp.clouds:
            budgets[cloud.name].site_cores = caps  # shared: the cap holds over all the site's clouds

    # New VMs; the free cores they leave (``fresh``) serve the VO's next classes.
    fresh: dict[tuple[str, str], list[_Slot]] = defaultdict(list)
    starts: dict[tuple[str, str, str, str], int] = defaultdict(int)  # (cloud, VO, flavor, image) -> VMs
    for i, ((index, wc), where) in enumerate(zip(indexed, suitable, strict=True)):
        outcome = outcomes[index]
        remaining = left[i]
        for cloud in where:
            remaining = _fill_slots(fresh[(cloud.name, wc.vo)], wc, remaining, cloud, outcome.started)
        for cloud in where:
            if remaining <= 0:
                break
            why_not = _why_no_start(cloud, knobs, now)
            if why_not is None:
                before = remaining
                remaining, why_not = _start_for(cloud, wc, remaining, budgets[cloud.name], fresh, starts, knobs, now)
                if why_not is not None and why_not.startswith(DEFERRED) and wc.waiting_since is not None:
                    outcome.deferred_until = wc.waiting_since + knobs.max_defer_seconds
                if remaining < before:
                    outcome.started[cloud.name] = outcome.started.get(cloud.name, 0) + before - remaining
            if why_not is not None:
                outcome.blocked[cloud.name] = why_not
        left[i] = outcome.left = remaining

    if sites:
        drains.extend(_reclaim(snapshot, sites, work, left, starts, budgets, gone, knobs))

    actions: list[Action] = [*stops, *drains]
    for (cloud_name, vo, flavor, image), count in sorted(starts.items()):
        of_image = f" of image {image}" if image else ""
        reason = f"{count} VM(s){of_image} for waiting {vo} jobs"
        actions.append(StartVMs(cloud_name, vo, flavor, count, reason, image or None))
    for cloud in clouds:
        if cloud.mode is CloudMode.VACUUM and _may_start(cloud, knobs, now):
            actions.extend(vacuum_starts(cloud, snapshot, budgets[cloud.name], gone, now))
    return Plan(actions, outcomes)


def _why_no_start(cloud: CloudView, knobs: ProvisioningKnobs, now: float) -> str | None:
    """Why the demand path starts nothing on this cloud in this cycle, whatever the work; None: it may."""
    if cloud.mode is not CloudMode.DEMAND:
        return "vacuum cloud: the site starts its VMs by target share, not for waiting jobs"
    if cloud.shutdown_pending:
        return "shutdown pending: the site closed it to new VMs"
    if cloud.misconfigured:
        return f"misconfigured (fix the configuration and restart the server): {cloud.misconfigured}"
    until = backoff_until(cloud, knobs)
    if until is not None and now < until:
        error = f": {cloud.last_error}" if cloud.last_error else ""
        failures = cloud.boot_failures_in_row
        return f"backing off until {iso(until)} after {failures} failed boot cycle(s){error}"
    return None


def _may_start(cloud: CloudView, knobs: ProvisioningKnobs, now: float) -> bool:
    return not cloud.shutdown_pending and not cloud.misconfigured and not _backed_off(cloud, knobs, now)


def _reclaim(
    snapshot: ProvisioningSnapshot,
    sites: dict[str, SitePledges],
    work: list[WorkClass],
    left: list[int],
    starts: dict[tuple[str, str, str, str], int],
    budgets: dict[str, Budget],
    gone: set[str],
    knobs: ProvisioningKnobs,
) -> list[DrainVM]:
    by_name = {c.name: c for c in snapshot.clouds}
    new_cores: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))  # site -> VO -> cores
    for (cloud_name, vo, flavor_name, _image), count in starts.items():
        cloud = by_name[cloud_name]
        if cloud.site in sites:
            cores = next(f.cores for f in cloud.flavors if f.name == flavor_name)
            new_cores[cloud.site][vo] += count * cores
    unplaced = [(wc, n) for wc, n in zip(work, left, strict=True) if n > 0]
    drains: list[DrainVM] = []
    for site in sorted(sites):
        drains.extend(reclaim(sites[site], unplaced, new_cores[site], budgets, gone, knobs.min_work_seconds_per_core))
    return drains


def _start_for(
    cloud: CloudView,
    wc: WorkClass,
    remaining: int,
    budget: Budget,
    supply: dict[tuple[str, str], list[_Slot]],
    starts: dict[tuple[str, str, str, str], int],
    knobs: ProvisioningKnobs,
    now: float,
) -> tuple[int, str | None]:
    """Start VMs on this cloud for the class's remaining jobs; the jobs still unplaced, and why, if no VM
    started."""
    choice = best_flavor(cloud.flavors, wc, remaining)
    if choice is None:
        return remaining, "no flavor fits its jobs"  # not reached: ``suits`` checked that one does
    flavor, per_vm = choice
    wanted = math.ceil(remaining / per_vm)
    # CPUPerInstance over the class's whole waiting work: as many VMs as it fills with the threshold each;
    # those VMs then run the class's jobs one after another. Work below one VM's worth is deferred, not starved.
    threshold = min_work_per_core(cloud, knobs) * flavor.cores
    work = remaining * wc.cores * wc.wall_seconds
    target = wanted if work >= threshold * wanted else int(work // threshold)
    if target == 0:
        since = now if wc.waiting_since is None else wc.waiting_since
        if now - since < knobs.max_defer_seconds:
            starts_by = "" if wc.waiting_since is None else f", starts by {iso(since + knobs.max_defer_seconds)}"
            return remaining, f"{DEFERRED}{work:.0f} of {threshold:.0f} core-seconds{starts_by}"
        target = 1
    count = min(target, budget.vms_allowed(flavor, wc.vo))
    if count <= 0:
        return remaining, _why_no_room(cloud, budget, flavor, wc.vo)
    budget.take(flavor, wc.vo, count)
    image = image_for(cloud, wc) or PLAIN_IMAGE
    starts[(cloud.name, wc.vo, flavor.name, image)] += count
    if count == target < wanted:
        return 0, None  # fewer VMs than jobs at once, by the work rule: they take the whole class in turn
    placed = min(remaining, count * per_vm)
    # Cores the new VMs leave free serve the VO's other classes on this cloud.
    leftover_cores = count * flavor.cores - placed * wc.cores
    if leftover_cores > 0:
        used_memory = placed * (wc.memory_mb or 0)
        free_memory = count * flavor.memory_mb - used_memory
        provided = cloud.images.get(image, frozenset())
        supply[(cloud.name, wc.vo)].append(_Slot(leftover_cores, free_memory, image, provided))
    return remaining - placed, None


def _why_no_room(cloud: CloudView, budget: Budget, flavor: Flavor, vo: str) -> str:
    """Which limit of :meth:`Budget.vms_allowed` left no room for one VM of the flavor, in words."""
    if budget.vms < 1:
        return f"quota full ({cloud.max_vms - int(budget.vms)}/{cloud.max_vms} VMs)"
    if budget.starts < 1:
        return f"start rate reached ({math.floor(cloud.start_rate_per_minute)} VMs a minute)"
    if budget.cores < flavor.cores:
        free = max(0, int(budget.cores))
        return f"core quota full ({free} of {cloud.max_cores} cores free, {flavor.name} needs {flavor.cores})"
    if budget.memory_mb < flavor.memory_mb:
        return f"memory quota full ({cloud.max_memory_mb} MB, {max(0, int(budget.memory_mb))} MB free)"
    if budget.site_cores.get(vo, INF) < flavor.cores:
        return f"VO {vo} at its pledge at {cloud.site} while another VO waits below its own"
    if budget.vo_cores.get(vo, INF) < flavor.cores:
        return f"VO {vo} holds its share of {cloud.name} while other VOs wait"
    return "no room for a VM"  # not reached: one of the limits above is what vms_allowed found short


def _fill_slots(slots: list[_Slot], wc: WorkClass, remaining: int, cloud: CloudView, placed: dict[str, int]) -> int:
    """Put jobs on free cores; ``placed`` counts them per cloud."""
    choosy = wc.image is not None or bool(wc.tags)  # else any slot of the VO will do (the common case)
    before = remaining
    for slot in slots:
        if remaining <= 0:
            break
        if choosy and not _slot_suits(slot, wc, cloud):
            continue
        fit = slot.cores // wc.cores
        if wc.memory_mb:
            fit = min(fit, int(slot.memory_mb // wc.memory_mb))
        took = min(fit, remaining)
        slot.cores -= took * wc.cores
        slot.memory_mb -= took * (wc.memory_mb or 0)
        remaining -= took
    if remaining < before:
        placed[cloud.name] = placed.get(cloud.name, 0) + before - remaining
    return remaining


def _slot_suits(slot: _Slot, wc: WorkClass, cloud: CloudView) -> bool:
    """A VM's free cores serve a class only if it runs the image the class requires and offers its tags."""
    if wc.image is not None and slot.image != wc.image:
        return False
    return wc.tags <= cloud.tags or wc.tags <= cloud.tags | slot.tags


def _idle_stops(snapshot: ProvisioningSnapshot, knobs: ProvisioningKnobs, now: float) -> list[StopVM]:
    stops = []
    for cloud in snapshot.clouds:
        if cloud.mode is CloudMode.VACUUM:
            continue  # a vacuum VM's pilot leaves by itself when its VO has nothing for it
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


def _held(cloud: CloudView) -> dict[str, int]:
    """Cores per VO that the cloud's instances hold (every VM not yet destroyed)."""
    per_vo: dict[str, int] = defaultdict(int)
    for vm in cloud.vms:
        if vm.state is not VMState.DESTROYED:
            per_vo[vm.vo] += vm.cores
    return per_vo


def _budget(cloud: CloudView, snapshot: ProvisioningSnapshot, pledged_site: bool) -> Budget:
    budget = quota_budget(cloud)
    if pledged_site or cloud.mode is CloudMode.VACUUM:
        return budget  # pledges (or target shares) rule there instead of the share split below
    # Shares of this cloud apply when several VOs want it; a VO alone may use all of it.
    wanting = sorted({wc.vo for wc in snapshot.work if wc.waiting > 0 and suits(cloud, wc)})
    if len(wanting) > 1:
        per_vo = _held(cloud)
        capacity_cores = cloud.max_cores
        if capacity_cores is None:
            capacity_cores = cloud.max_vms * max((f.cores for f in cloud.flavors), default=0)
        shares = {vo: snapshot.vo_shares.get(vo, snapshot.default_share) for vo in wanting}
        total = sum(shares.values())
        budget.vo_cores = {vo: capacity_cores * share / total - per_vo.get(vo, 0) for vo, share in shares.items()}
    return budget


def _supply(clouds: tuple[CloudView, ...], stopping: set[str]) -> dict[tuple[str, str], list[_Slot]]:
    supply: dict[tuple[str, str], list[_Slot]] = defaultdict(list)
    for cloud in clouds:
        for vm in cloud.vms:
            if vm.state in SUPPLY_STATES and vm.id not in stopping and vm.free_cores > 0:
                share_of_memory = vm.memory_mb * vm.free_cores / max(1, vm.cores)
                slot = _Slot(vm.free_cores, share_of_memory, vm.image or PLAIN_IMAGE, vm.image_tags)
                supply[(cloud.name, vm.vo)].append(slot)
    return supply


def _ordered_work(snapshot: ProvisioningSnapshot) -> list[tuple[int, WorkClass]]:
    """VO furthest below its share (by cores held on every cloud) first, then its biggest classes; each with
    its index in ``snapshot.work``."""
    held: dict[str, int] = defaultdict(int)
    for cloud in snapshot.clouds:
        for vo, cores in _held(cloud).items():
            held[vo] += cores

    def vo_key(vo: str) -> float:
        share = snapshot.vo_shares.get(vo, snapshot.default_share)
        return held[vo] / share if share > 0 else INF

    def key(entry: tuple[int, WorkClass]) -> tuple[float, str, int, int, int, list[str]]:
        wc = entry[1]
        return (vo_key(wc.vo), wc.vo, -wc.waiting * wc.cores, wc.cores, wc.wall_seconds, sorted(wc.tags))

    return sorted(((i, wc) for i, wc in enumerate(snapshot.work) if wc.waiting > 0), key=key)
