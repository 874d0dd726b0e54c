"""Pledges at a site (``snapshot.pledges[site][vo]``, cores): caps on growth while a pledged VO waits below its
pledge, and reclaiming cores from VOs above theirs when the site is full. Pure.

Cores *held* at a site are those of the VO's live VMs (requested, booting, running; not the ones leaving) on
every cloud of the site. A VO without a pledge at a pledged site has a pledge of 0 there: it runs only
opportunistically.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from cloudpilot.domain.provisioning import CloudMode, CloudView, DrainVM, ProvisioningSnapshot, WorkClass
from cloudpilot.domain.vms import VMState
from cloudpilot.policy.budget import INF, Budget, drain_order, drainable, is_live, room_cores, suits

Left = list[tuple[WorkClass, int]]  # work classes and how many of their jobs are still unplaced


@dataclass
class SitePledges:
    site: str
    pledges: dict[str, int]
    clouds: list[CloudView]  # the site's clouds that start VMs for waiting work (demand, no shutdown pending)
    held: dict[str, int]  # live cores per VO at the site, all its clouds
    below: set[str] = field(default_factory=set)  # pledged VOs below their pledge, waiting for these clouds

    def pledge(self, vo: str) -> int:
        return self.pledges.get(vo, 0)

    def suitable(self, wc: WorkClass) -> list[CloudView]:
        return [c for c in self.clouds if suits(c, wc)]


def site_pledges(snapshot: ProvisioningSnapshot, gone: set[str], left: Left) -> dict[str, SitePledges]:
    """Every site with pledges; ``left``: the work that the VMs' free slots could not take (jobs a free slot
    will run do not make their VO "waiting")."""
    result: dict[str, SitePledges] = {}
    for site, pledges in snapshot.pledges.items():
        if not pledges:
            continue
        at_site = [c for c in snapshot.clouds if c.site == site]
        held: dict[str, int] = defaultdict(int)
        for cloud in at_site:
            for vm in cloud.vms:
                if is_live(vm, gone):
                    held[vm.vo] += vm.cores
        starting = [c for c in at_site if c.mode is CloudMode.DEMAND and not c.shutdown_pending]
        sp = SitePledges(site, pledges, starting, held)
        for wc, remaining in left:
            if remaining > 0 and wc.vo not in sp.below and held[wc.vo] < sp.pledge(wc.vo) and sp.suitable(wc):
                sp.below.add(wc.vo)
        result[site] = sp
    return result


def growth_caps(sp: SitePledges, vos: set[str]) -> dict[str, float]:
    """Cores each VO may still add at the site: up to its pledge while *another* pledged VO waits below its
    own; no cap (opportunistic use) when nobody else waits. One dict, shared by the budgets of the site's
    clouds, so the cap holds over all of them."""
    caps: dict[str, float] = {}
    for vo in vos:
        if sp.below - {vo}:
            caps[vo] = max(0, sp.pledge(vo) - sp.held.get(vo, 0))
    return caps


def reclaim(
    sp: SitePledges,
    left: Left,
    new_cores: dict[str, int],
    budgets: dict[str, Budget],
    gone: set[str],
    min_work_seconds_per_core: float,
) -> list[DrainVM]:
    """Drains for pledged VOs still short after this decision's starts because the site's clouds are full.

    ``left``: the work no slot nor new VM took; ``new_cores``: cores started at the site per VO in this decision.
    A waiting VO lacks min(pledge - held - new, its unplaced cores). What the site's suitable clouds will have
    room for — quota left now plus what their leaving VMs (draining, halted, …) free — covers that first, so a
    drain asked in one cycle is not asked again in the next. The rest is drained from VOs above their pledge
    (idle VMs, then the youngest), never taking one below its own pledge. ``gone`` grows with the drained VMs.
    """
    unplaced: dict[str, int] = defaultdict(int)
    wanted_clouds: dict[str, dict[str, CloudView]] = defaultdict(dict)
    for wc, remaining in left:
        # A class too small to start a VM of its own size (min_work_seconds_per_core) is not worth a drain.
        if remaining <= 0 or remaining * wc.wall_seconds < min_work_seconds_per_core or wc.vo not in sp.below:
            continue
        clouds = sp.suitable(wc)
        if clouds:
            unplaced[wc.vo] += remaining * wc.cores
            wanted_clouds[wc.vo].update((c.name, c) for c in clouds)
    if not unplaced:
        return []

    held = dict(sp.held)
    freeing = {c.name: _future_room(c, budgets.get(c.name), gone) for c in sp.clouds}

    def order(vo: str) -> tuple[float, str]:
        return ((held.get(vo, 0) + new_cores.get(vo, 0)) / sp.pledge(vo), vo)

    drains: list[DrainVM] = []
    for vo in sorted(unplaced, key=order):
        pledge, mine = sp.pledge(vo), held.get(vo, 0) + new_cores.get(vo, 0)
        need = min(pledge - mine, unplaced[vo])
        clouds = sorted(wanted_clouds[vo].values(), key=lambda c: c.name)
        for cloud in clouds:
            took = min(need, freeing[cloud.name])
            freeing[cloud.name] -= took
            need -= took
        if need <= 0:
            continue
        cloud_of = {vm.id: c.name for c in clouds for vm in c.vms if vm.vo != vo and drainable(vm, gone)}
        victims = sorted((vm for c in clouds for vm in c.vms if vm.id in cloud_of), key=drain_order)
        for vm in victims:
            if need <= 0:
                break
            if held.get(vm.vo, 0) - vm.cores < sp.pledge(vm.vo):
                continue  # never below its own pledge (a VO at or below it is never drained)
            reason = (
                f"pledge at site {sp.site}: {vo} holds {mine} of its {pledge} pledged cores and waits; "
                f"{vm.vo} holds {held[vm.vo]}, above its pledge of {sp.pledge(vm.vo)}"
            )
            drains.append(DrainVM(vm.id, reason))
            gone.add(vm.id)
            held[vm.vo] -= vm.cores
            need -= vm.cores
            if need < 0:  # the last VM freed more than this VO lacks: the rest may serve the next one
                freeing[cloud_of[vm.id]] += -need
    return drains


def _future_room(cloud: CloudView, budget: Budget | None, gone: set[str]) -> float:
    """Cores the cloud's quota will have for new VMs once its leaving VMs are destroyed (start rate left out:
    it only delays)."""
    if budget is None:
        return 0
    vms, cores, memory = budget.vms, budget.cores, budget.memory_mb
    for vm in cloud.vms:
        if vm.state is not VMState.DESTROYED and not is_live(vm, gone):
            vms, cores, memory = vms + 1, cores + vm.cores, memory + vm.memory_mb
    room = room_cores(cloud.flavors, vms, cores, memory)
    return INF if room >= 1 << 30 else room
