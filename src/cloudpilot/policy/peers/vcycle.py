"""Vcycle: the site keeps each space (cloud) filled with VMs of its machinetypes (VOs) by target share,
regardless of any queue, growing by at most 10 % of the space's limit per cycle, and backs a machinetype off
after one of its VMs aborts.

Source: github.com/vacproject/vcycle at 9b039d308942a2690e9c69242b457de71d301990 (2019-09-03, 03.00+pre06).
- shared.py ``makeMachines``: ``creationsPerCycle = int(0.9999999 + processors_limit * 0.1)`` processors per
  space and cycle; stop when the space's processors in any state reach ``processors_limit``; each creation goes
  to the eligible machinetype with the lowest ``weightedMachines`` (HS06 of its machines in any state / its
  ``target_share``, counted once at the start of the cycle); not eligible: ``target_share`` <= 0; less than
  ``backoff_seconds`` since its ``lastAbortTime``; or less than ``backoff_seconds + fizzle_seconds`` since it
  while ``notPassedFizzle`` > 0 (its machines starting, or running for less than ``fizzle_seconds``; a creation
  adds one), so after a back-off one VM is started and must outlive ``fizzle_seconds`` before the next.
- shared.py (machine scan): an abort is a stop with a shutdown code 300-699, or a stop less than
  ``fizzle_seconds`` after the machine started (whatever its code; a machine that never started is no abort);
  ``lastAbortTime`` only moves forward. The stop time is when Vcycle first sees the machine stopped.
- vcycled: ``sleepSeconds = 60`` between cycles; vcycle.conf.5: ``backoff_seconds`` and ``fizzle_seconds`` are
  required per machinetype (example.vcycle.conf: 600 and 600, cloudpilot's per-cloud defaults too); a space
  past its ``shutdown_time`` allocates nothing.

Rules as implemented (one cycle every ``cycle_seconds``, 60)
1. Space = cloud; limit = its ``max_cores``, else ``max_vms`` x the cores of its largest flavor. Per cycle at
   most ceil(10 % of the limit) cores are started (a VM is started while the count is below it, as Vcycle does).
2. Machinetypes = the VOs with a target share on the cloud (the cloud's ``target_shares``, else the VO shares, as
   for cloudpilot's vacuum clouds; with no shares at all, every VO the snapshot shows at ``default_share``),
   limited to the VOs the cloud may boot a VM for (``boots_for``; a start names that image). Weights are HS06
   (cores x ``hs06_per_core``) of the VO's VMs not yet destroyed / its share, fixed for the cycle: the cycle's
   starts all go to the lowest, unless it stops being eligible (ties: the name, where Vcycle shuffles).
3. Back-off per (cloud, VO) with the cloud's ``backoff_seconds`` and ``fizzle_seconds``, as above. Aborts are
   read from the cloud's ``recent_ends`` and from VMs this policy saw alive that vanished or ended (stop time:
   the call that first sees it; start: the call that first saw it running, or its creation).
4. Each VM is of the cloud's largest flavor (a machinetype has one flavor); the cloud's quota (VMs, cores,
   memory) and start rate cut the cycle. No VM is stopped: pilots leave when their VO has no work, and
   lifetimes are enforced by the VM monitor.

Simplifications: Vcycle's per-machinetype ``processors_limit`` and ``max_starting_processors`` default to no
extra limit and are left out; a recent end's lifetime runs from its creation (the snapshot has no start time);
``recent_ends`` is only filled for vacuum clouds by cloudpilot's provisioner, so on demand clouds aborts come
from what the policy itself sees.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from cloudpilot.domain.provisioning import Action, CloudView, ProvisioningSnapshot, StartVMs
from cloudpilot.domain.vms import VMState
from cloudpilot.policy.budget import Budget, boots_for
from cloudpilot.policy.peers._common import ENDED, UPCOMING, Every, budgets, largest, plain_image, startable
from cloudpilot.policy.vacuum import targets

ABORT_CODES = range(300, 700)


@dataclass
class _Seen:
    cloud: str
    vo: str
    started_at: float | None  # when first seen running (its creation if already running when first seen)


class VcyclePolicy:
    name = "vcycle"

    def __init__(self, cycle_seconds: float = 60.0, creations_fraction: float = 0.1) -> None:
        self.creations_fraction = creations_fraction
        self._cycle = Every(cycle_seconds)
        self._seen: dict[str, _Seen] = {}
        self.last_abort: dict[tuple[str, str], float] = {}  # (cloud, VO) -> lastAbortTime

    def decide(self, snapshot: ProvisioningSnapshot, now: float) -> list[Action]:
        self._observe(snapshot, now)  # every call, so a stop is timed as closely as the calls allow
        if not self._cycle.due(now):
            return []
        left = budgets(snapshot)
        actions: list[Action] = []
        for cloud in startable(snapshot):
            actions.extend(self._make_machines(cloud, snapshot, left[cloud.name], now))
        return actions

    # --- aborts --------------------------------------------------------------------------------------------

    def _abort(self, cloud: str, vo: str, at: float) -> None:
        key = (cloud, vo)
        if at > self.last_abort.get(key, -math.inf):
            self.last_abort[key] = at

    def _observe(self, snapshot: ProvisioningSnapshot, now: float) -> None:
        present: set[str] = set()
        for cloud in snapshot.clouds:
            for end in cloud.recent_ends:
                code = end.shutdown_code
                if (code is not None and code in ABORT_CODES) or end.ended_at - end.created_at < cloud.fizzle_seconds:
                    self._abort(cloud.name, end.vo, end.ended_at)
            for vm in cloud.vms:
                if vm.state in ENDED:
                    continue
                present.add(vm.id)
                seen = self._seen.get(vm.id)
                if seen is None:
                    # Already running when first seen: its creation is the best estimate of its start.
                    started = vm.created_at if vm.state is VMState.RUNNING else None
                    self._seen[vm.id] = _Seen(cloud.name, vm.vo, started)
                elif seen.started_at is None and vm.state is VMState.RUNNING:
                    seen.started_at = now
        fizzle = {c.name: c.fizzle_seconds for c in snapshot.clouds}
        for vm_id in [i for i in self._seen if i not in present]:
            seen = self._seen.pop(vm_id)
            limit = fizzle.get(seen.cloud)
            if limit is not None and seen.started_at is not None and now - seen.started_at < limit:
                self._abort(seen.cloud, seen.vo, now)

    # --- creations -----------------------------------------------------------------------------------------

    def _make_machines(
        self, cloud: CloudView, snapshot: ProvisioningSnapshot, budget: Budget, now: float
    ) -> list[StartVMs]:
        shares = _machinetypes(cloud, snapshot)
        if not shares or not cloud.flavors:
            return []
        fl = largest(cloud.flavors)
        limit = cloud.max_cores if cloud.max_cores is not None else cloud.max_vms * fl.cores
        per_cycle = int(0.9999999 + limit * self.creations_fraction)
        weighted: dict[str, float] = defaultdict(float)
        not_passed: dict[str, int] = defaultdict(int)
        for vm in cloud.vms:
            if vm.state is VMState.DESTROYED or vm.vo not in shares:
                continue
            weighted[vm.vo] += vm.cores * cloud.hs06_per_core / shares[vm.vo]
            if vm.state in UPCOMING:
                not_passed[vm.vo] += 1
            elif vm.state is VMState.RUNNING:
                seen = self._seen.get(vm.id)
                started = seen.started_at if seen is not None and seen.started_at is not None else vm.created_at
                if now - started < cloud.fizzle_seconds:
                    not_passed[vm.vo] += 1
        created: dict[str, int] = defaultdict(int)
        cores_created = 0
        while cores_created < per_cycle:
            eligible = [vo for vo in shares if self._eligible(cloud, vo, not_passed[vo], now)]
            if not eligible:
                break
            vo = min(eligible, key=lambda v: (weighted[v], v))
            if budget.vms_allowed(fl, vo) < 1:
                break  # the space is full (quota or start rate)
            budget.take(fl, vo, 1)
            cores_created += fl.cores
            not_passed[vo] += 1
            created[vo] += 1
        return [
            StartVMs(
                cloud.name,
                vo,
                fl.name,
                n,
                f"vcycle: {n} VM(s) for {vo}, lowest weighted HS06/share ({weighted[vo]:.0f}); "
                f"{per_cycle} core(s) per cycle = 10 % of the space limit {limit}",
                plain_image(cloud, vo),
            )
            for vo, n in sorted(created.items())
        ]

    def _eligible(self, cloud: CloudView, vo: str, not_passed_fizzle: int, now: float) -> bool:
        abort = self.last_abort.get((cloud.name, vo))
        if abort is None:
            return True
        if now < abort + cloud.backoff_seconds:
            return False
        # After the back-off: no new VM while one is still younger than fizzle_seconds (one probe at a time).
        return not (now < abort + cloud.backoff_seconds + cloud.fizzle_seconds and not_passed_fizzle > 0)


def _machinetypes(cloud: CloudView, snapshot: ProvisioningSnapshot) -> dict[str, float]:
    shares = targets(cloud, snapshot)
    if shares or cloud.target_shares or snapshot.vo_shares:
        return shares
    # No shares configured anywhere: every VO the snapshot shows, equal shares (its default_share).
    vos = {wc.vo for wc in snapshot.work} | {vm.vo for c in snapshot.clouds for vm in c.vms}
    if snapshot.default_share <= 0:
        return {}
    return {vo: snapshot.default_share for vo in vos if boots_for(cloud, vo)}
