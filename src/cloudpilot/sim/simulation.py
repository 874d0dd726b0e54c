"""The discrete-event loop that ties the parts together.

The provisioning cycle runs every ``interval_seconds`` and, like the server's loop, sooner — paced as it is
(domain/wake_budget.py) — when jobs are submitted or requeued. The simulation ends when every job is done or
failed and no VM is left; or when the jobs are over and VMs linger ``TAIL_SECONDS`` (a policy that never lets
its VMs go); or when work is left that nothing starts a VM for (``STALL_SECONDS`` without a VM and without a
job running); or at ``until_seconds``.
"""

from __future__ import annotations

import gc
import time
from heapq import heappop

from cloudpilot.domain.wake_budget import WakeBudget
from cloudpilot.policy.base import ProvisioningPolicy
from cloudpilot.sim.clouds import SimCloud
from cloudpilot.sim.engine import EventQueue, Kind
from cloudpilot.sim.matcher import SimMatcher
from cloudpilot.sim.metrics import Metrics, SimResult, result
from cloudpilot.sim.pilots import Pilots
from cloudpilot.sim.policies import make_policy
from cloudpilot.sim.provisioner import SimProvisioner
from cloudpilot.sim.scenario import Scenario
from cloudpilot.sim.workload import build_workload

TAIL_SECONDS = 6 * 3600.0
STALL_SECONDS = 86400.0


class Simulation:
    def __init__(self, scenario: Scenario, policy: ProvisioningPolicy, seed: int) -> None:
        self.scenario = scenario
        self.policy = policy
        self.seed = seed
        self.queue = EventQueue()
        self.workload = build_workload(scenario, seed)
        self.clouds = [SimCloud(name, spec, i, seed) for i, (name, spec) in enumerate(scenario.clouds.items())]
        self.metrics = Metrics(self.workload.total, self.clouds)
        vo_shares = {vo: v.share for vo, v in scenario.vos.items()}
        self.matcher = SimMatcher(
            self.workload.classes,
            vo_shares,
            scenario.default_share,
            scenario.matcher.snapshot_seconds,
            scenario.matcher.half_life_seconds,
        )
        self.pilots = Pilots(self.queue, self.workload, self.matcher, self.metrics, scenario.pilot.idle_timeout_seconds)
        self.provisioner = SimProvisioner(
            scenario, policy, self.clouds, self.workload, self.pilots, self.metrics, self.queue
        )
        self._tick_serial = 0
        self._wakes = WakeBudget(0.0)  # paces woken cycles as the server's loop does (api/app.py)
        self.now = 0.0

    def run(self) -> SimResult:
        # Millions of short-lived objects (runs, heap entries) among ~10^5 long-lived ones make the cyclic garbage
        # collector rescan the long-lived ones again and again; reference counting frees the runs already.
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._run()
        finally:
            if collecting:
                gc.enable()

    def _run(self) -> SimResult:
        started = time.perf_counter()
        self._schedule_reclaims()
        self.queue.push(0.0, Kind.TICK, self._tick_serial)
        until = self.scenario.until_seconds
        queue, pilots = self.queue, self.pilots
        job_end, boot, idle = pilots.job_end, pilots.boot, pilots.idle
        heap = queue.heap
        job_end_kind = int(Kind.JOB_END)
        done = False
        popped = 0
        while heap and not done:
            at, _, kind, subject = heappop(heap)
            popped += 1
            if at > until:
                break
            self.now = at
            if kind == job_end_kind:
                job_end(subject, at)
            elif kind == Kind.TICK:
                if subject == self._tick_serial:
                    done = self._tick(at)
            elif kind == Kind.BOOT:
                boot(subject, at)
            elif kind == Kind.IDLE:
                idle(subject, at)
            elif kind == Kind.ARRIVAL:
                pilots.arrival(at)
            elif kind == Kind.PREEMPT:
                pilots.vanish(subject, at)
            elif kind == Kind.EXPIRE:
                self.provisioner.expired.append(subject)
            elif kind == Kind.RECLAIM:
                self.provisioner.reclaim(subject, at)
        queue.popped += popped
        end = min(self.now, until)
        for cloud in self.clouds:
            for vm in list(cloud.alive.values()):
                self.metrics.vm_gone(vm, end)
        return result(
            self.metrics,
            scenario=self.scenario.name,
            policy=self.policy.name,
            seed=self.seed,
            jobs_submitted=self.workload.total,
            first_arrival=self.workload.first_arrival,
            end=end,
            events=queue.popped,
            wall_seconds=time.perf_counter() - started,
            policy_seconds=self.provisioner.policy_seconds,
            snapshot_seconds=self.provisioner.snapshot_seconds,
            decisions=self.provisioner.decisions,
        )

    def _tick(self, now: float) -> bool:
        """One provisioning cycle and the scheduling of the next; whether the simulation is over."""
        requeued = self.provisioner.tick(now)
        if self._over(now):
            return True
        interval = self.scenario.interval_seconds
        self._wakes.spend(now)
        soonest = now + min(self._wakes.delay(now), interval)
        nxt = now + interval
        if requeued:
            nxt = soonest
        if self.workload.next_time < nxt:
            nxt = max(soonest, self.workload.next_time)  # new work wakes the loop
        self._tick_serial += 1
        self.queue.push(nxt, Kind.TICK, self._tick_serial)
        return False

    def _over(self, now: float) -> bool:
        m, wl = self.metrics, self.workload
        jobs_over = m.done + m.failed >= wl.total
        vms_left = any(c.alive for c in self.clouds)
        if jobs_over:
            return not vms_left or now - max(m.last_end, wl.last_arrival) > TAIL_SECONDS
        stalled = not vms_left and wl.next_time == float("inf") and not any(c.running for c in wl.classes)
        return stalled and now - max(self.provisioner.last_vm_created, wl.last_arrival) > STALL_SECONDS

    def _schedule_reclaims(self) -> None:
        for cloud in self.clouds:
            after = cloud.spec.reclaim_after_seconds
            if after is None:
                continue
            for step in cloud.spec.capacity:
                self.queue.push(step.at + after, Kind.RECLAIM, cloud)


def simulate(scenario: Scenario, *, seed: int | None = None, policy: str | None = None) -> SimResult:
    """Run ``scenario`` under ``policy`` (default: the scenario's) with ``seed`` (default: the scenario's)."""
    name = policy or scenario.policy
    run_seed = scenario.seed if seed is None else seed
    return Simulation(scenario, make_policy(name, scenario.knobs), run_seed).run()
