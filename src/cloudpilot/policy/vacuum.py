"""Site-driven (vacuum) clouds, as Vac and Vcycle fill theirs: VMs are started by target share, not for
waiting jobs, and a VO whose VMs abort is backed off, then probed. Pure.

- Targets: the cloud's ``target_shares``, else the snapshot's ``vo_shares`` (``default_share`` for a VO of
  ``vos`` without one); only VOs the cloud has an image for (``vos``) and with a share above 0.
- Held: HS06 of the VO's live VMs on the cloud (cores x ``hs06_per_core``); the VO with the lowest
  held / target gets the next VM (ties: the larger target, then the name), one VM at a time.
- Flavor: the biggest (cores, then memory) that still fits the cloud's quota, so the cloud is filled with
  as few, as large VMs as possible and its last cores with smaller ones.
- Back-off per VO, from ``recent_ends``: see :func:`vo_states`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from enum import Enum

from cloudpilot.domain.provisioning import CloudView, ProvisioningSnapshot, StartVMs, VMEnd
from cloudpilot.domain.times import iso
from cloudpilot.domain.vms import Flavor, VMState
from cloudpilot.policy.budget import Budget, boots_for, is_live

GOOD_CODES = frozenset({100, 200})  # shutdown as requested; success: no more work after running some


class Speed(Enum):
    FULL = "full"
    PAUSED = "paused"  # back-off after an abort
    PROBE = "probe"  # back-off over: one VM to see whether the VO works again


@dataclass(frozen=True, slots=True)
class VOState:
    speed: Speed
    abort_at: float | None = None
    probe_alive: bool = False  # a VM started after the abort is still there


def is_abort(end: VMEnd, fizzle_seconds: float) -> bool:
    """Code 300-699 (no more work, error, banned, …), or no code and a life shorter than ``fizzle_seconds``
    without a job (a VM that ran a job did not fizzle)."""
    if end.shutdown_code is not None:
        return 300 <= end.shutdown_code <= 699
    return end.jobs_run == 0 and end.ended_at - end.created_at < fizzle_seconds


def is_good(end: VMEnd, fizzle_seconds: float) -> bool:
    """Code 100 or 200, or it ran a job — unless the same end is an abort (a pilot that ran jobs and then
    left with 300 "no more work" says the VO has none now)."""
    return not is_abort(end, fizzle_seconds) and (end.shutdown_code in GOOD_CODES or end.jobs_run > 0)


def vo_states(cloud: CloudView, now: float) -> dict[str, VOState]:
    """Back-off of each VO with an abort among the cloud's recent ends (the others run at full speed).

    After the latest abort, with no good end after it, the VO is paused until abort + ``backoff_seconds``;
    then it gets one probe: one VM while no VM of it started after the abort is alive. A good end after the
    abort — or a VM started after it that has run a job — returns it to full speed."""
    latest: dict[str, float] = {}
    for end in cloud.recent_ends:
        if is_abort(end, cloud.fizzle_seconds) and end.ended_at >= latest.get(end.vo, -float("inf")):
            latest[end.vo] = end.ended_at
    states: dict[str, VOState] = {}
    for vo, at in latest.items():
        good = any(e.vo == vo and e.ended_at > at and is_good(e, cloud.fizzle_seconds) for e in cloud.recent_ends)
        since = [vm for vm in cloud.vms if vm.vo == vo and vm.state is not VMState.DESTROYED and vm.created_at > at]
        if good or any(vm.jobs_run > 0 for vm in since):
            states[vo] = VOState(Speed.FULL, at)
        elif now < at + cloud.backoff_seconds:
            states[vo] = VOState(Speed.PAUSED, at)
        else:
            states[vo] = VOState(Speed.PROBE, at, probe_alive=bool(since))
    return states


def targets(cloud: CloudView, snapshot: ProvisioningSnapshot) -> dict[str, float]:
    if cloud.target_shares:
        shares = dict(cloud.target_shares)
    elif cloud.vos is not None:
        shares = {vo: snapshot.vo_shares.get(vo, snapshot.default_share) for vo in cloud.vos}
    else:
        shares = dict(snapshot.vo_shares)
    # boots_for: the cloud's VOs, and with image lists in force only those it has an endorsed image for
    return {vo: s for vo, s in shares.items() if s > 0 and boots_for(cloud, vo)}


def vacuum_starts(
    cloud: CloudView, snapshot: ProvisioningSnapshot, budget: Budget, gone: set[str], now: float
) -> list[StartVMs]:
    """The VMs to start on a vacuum cloud now (the caller has checked shutdowns and boot-failure back-off)."""
    shares = targets(cloud, snapshot)
    if not shares:
        return []
    held: dict[str, float] = defaultdict(float)
    for vm in cloud.vms:
        if is_live(vm, gone):
            held[vm.vo] += vm.cores * cloud.hs06_per_core
    states = vo_states(cloud, now)
    probes = {vo for vo, s in states.items() if s.speed is Speed.PROBE and not s.probe_alive}
    eligible = {vo for vo in shares if vo not in states or states[vo].speed is Speed.FULL or vo in probes}
    flavors = sorted(cloud.flavors, key=lambda f: (-f.cores, -f.memory_mb, f.name))
    before = dict(held)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    while eligible:
        flavor = _fitting(flavors, budget)
        if flavor is None:
            break
        vo = min(eligible, key=lambda v: (held[v] / shares[v], -shares[v], v))
        budget.take(flavor, vo, 1)
        held[vo] += flavor.cores * cloud.hs06_per_core
        counts[(vo, flavor.name)] += 1
        if vo in probes:
            eligible.discard(vo)  # one probe at a time
    starts = []
    for (vo, flavor_name), n in sorted(counts.items()):
        if vo in probes:
            reason = f"vacuum: probe VM for {vo} after its back-off (abort at {iso(states[vo].abort_at)})"
        else:
            reason = (
                f"vacuum: {n} VM(s) for {vo}, furthest below its target share "
                f"({before.get(vo, 0):.0f} HS06 held, target share {shares[vo]:g})"
            )
        starts.append(StartVMs(cloud.name, vo, flavor_name, n, reason))
    return starts


def _fitting(flavors: list[Flavor], budget: Budget) -> Flavor | None:
    if budget.vms < 1 or budget.starts < 1:
        return None
    for f in flavors:
        if f.cores <= budget.cores and f.memory_mb <= budget.memory_mb:
            return f
    return None
