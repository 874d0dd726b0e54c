"""What a simulation measures, and its result.

Paid VM time runs from a VM's creation until its instance is gone (destroyed by the VM monitor, or taken back by
the cloud), as cloudpilot's accounting counts it. It is split into *booting* (creation until its pilot started, all
of it for a VM that never booted), *busy* (at least one job running) and *idle* (the rest: a pilot waiting for work,
and a halted VM until the monitor destroys it). Busy + idle + booting = paid.
"""

from __future__ import annotations

from array import array
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from cloudpilot.sim.clouds import SimCloud, SimVM

HOUR = 3600.0


@dataclass
class CloudTally:
    vms_started: int = 0
    vms_failed: int = 0
    peak_vms: int = 0
    vm_seconds_busy: float = 0.0
    vm_seconds_idle: float = 0.0
    vm_seconds_booting: float = 0.0
    vm_seconds_paid: float = 0.0
    cost: float = 0.0


@dataclass
class Series:
    """Sampled at every provisioning cycle: per cloud, VMs not yet destroyed and jobs running."""

    times: array = field(default_factory=lambda: array("d"))
    vms: dict[str, array] = field(default_factory=dict)
    jobs: dict[str, array] = field(default_factory=dict)


class Metrics:
    def __init__(self, total_jobs: int, clouds: list[SimCloud]) -> None:
        self.waits = array("f")  # queue wait of every job's first start
        self.done = 0
        self.failed = 0
        self.last_end = 0.0
        self.vms_started = 0
        self.vms_failed = 0
        self.vms_preempted = 0
        self.alive = 0
        self.peak_alive = 0
        self.up = 0
        self.peak_up = 0
        self.core_busy = 0.0  # core-seconds of jobs (every attempt, also those cut short)
        self.core_paid = 0.0
        self.clouds = {c.name: CloudTally() for c in clouds}
        self.series = Series(vms={c.name: array("i") for c in clouds}, jobs={c.name: array("i") for c in clouds})

    def pilot_up(self, delta: int) -> None:
        self.up += delta
        if self.up > self.peak_up:
            self.peak_up = self.up

    def vm_created(self, cloud: SimCloud) -> None:
        self.vms_started += 1
        self.alive += 1
        self.peak_alive = max(self.peak_alive, self.alive)
        tally = self.clouds[cloud.name]
        tally.vms_started += 1
        tally.peak_vms = max(tally.peak_vms, len(cloud.alive))

    def vm_failed(self, vm: SimVM) -> None:
        self.vms_failed += 1
        self.clouds[vm.cloud.name].vms_failed += 1

    def vm_gone(self, vm: SimVM, end: float) -> None:
        """Count a VM's paid time once it is gone (or at the end of the simulation)."""
        self.alive -= 1
        paid_end = vm.paid_end if vm.paid_end is not None else end
        up = vm.pilot_up_at if vm.pilot_up_at is not None and vm.pilot_up_at < paid_end else paid_end
        booting = max(0.0, up - vm.created_at)
        busy = vm.busy_time + (paid_end - vm.busy_since if vm.busy_since is not None else 0.0)
        total = max(0.0, paid_end - vm.created_at)
        self.core_paid += total * vm.cores
        tally = self.clouds[vm.cloud.name]
        tally.vm_seconds_booting += booting
        tally.vm_seconds_busy += busy
        tally.vm_seconds_idle += max(0.0, total - booting - busy)
        tally.vm_seconds_paid += total
        tally.cost += total / HOUR * vm.cores * vm.cloud.spec.price_per_core_hour

    def sample(self, now: float, clouds: list[SimCloud]) -> None:
        self.series.times.append(now)
        for c in clouds:
            self.series.vms[c.name].append(len(c.alive))
            self.series.jobs[c.name].append(c.running_jobs)


@dataclass
class SimResult:
    scenario: str
    policy: str
    seed: int
    jobs_submitted: int
    jobs_done: int
    jobs_failed: int
    jobs_unfinished: int
    makespan_seconds: float
    wait_p50_seconds: float
    wait_p95_seconds: float
    wait_max_seconds: float
    vms_started: int
    vms_failed: int
    vms_preempted: int
    peak_vms: int
    peak_running_vms: int
    vm_hours_busy: float
    vm_hours_idle: float
    vm_hours_booting: float
    vm_hours_paid: float
    idle_share: float
    core_utilisation: float
    cost: float
    simulated_seconds: float
    events: int
    wall_seconds: float
    events_per_second: float
    policy_seconds: float  # of the wall time: in the policy's decide
    snapshot_seconds: float  # of the wall time: building its snapshots
    decisions: int
    clouds: dict[str, dict[str, float]]
    series: Series = field(repr=False, compare=False)

    def summary(self) -> dict[str, Any]:
        """Everything but the time series (the metrics JSON)."""
        data = asdict(self)
        data.pop("series")
        return data

    def outcome(self) -> dict[str, Any]:
        """What the simulated system did, without the cost of simulating it (equal for equal seeds)."""
        data = self.summary()
        for key in ("wall_seconds", "events_per_second", "policy_seconds", "snapshot_seconds"):
            data.pop(key)
        return data


def result(
    metrics: Metrics,
    *,
    scenario: str,
    policy: str,
    seed: int,
    jobs_submitted: int,
    first_arrival: float,
    end: float,
    events: int,
    wall_seconds: float,
    policy_seconds: float = 0.0,
    snapshot_seconds: float = 0.0,
    decisions: int = 0,
) -> SimResult:
    waits = np.frombuffer(metrics.waits, dtype=np.float32) if metrics.waits else np.empty(0, dtype=np.float32)
    p50, p95, top = (float(np.percentile(waits, q)) for q in (50, 95, 100)) if len(waits) else (0.0, 0.0, 0.0)
    tallies = metrics.clouds.values()
    busy = sum(t.vm_seconds_busy for t in tallies) / HOUR
    idle = sum(t.vm_seconds_idle for t in tallies) / HOUR
    booting = sum(t.vm_seconds_booting for t in tallies) / HOUR
    paid = sum(t.vm_seconds_paid for t in tallies) / HOUR
    unfinished = jobs_submitted - metrics.done - metrics.failed
    last = metrics.last_end if unfinished == 0 else end
    return SimResult(
        scenario=scenario,
        policy=policy,
        seed=seed,
        jobs_submitted=jobs_submitted,
        jobs_done=metrics.done,
        jobs_failed=metrics.failed,
        jobs_unfinished=unfinished,
        makespan_seconds=max(0.0, last - first_arrival),
        wait_p50_seconds=p50,
        wait_p95_seconds=p95,
        wait_max_seconds=top,
        vms_started=metrics.vms_started,
        vms_failed=metrics.vms_failed,
        vms_preempted=metrics.vms_preempted,
        peak_vms=metrics.peak_alive,
        peak_running_vms=metrics.peak_up,
        vm_hours_busy=busy,
        vm_hours_idle=idle,
        vm_hours_booting=booting,
        vm_hours_paid=paid,
        idle_share=idle / paid if paid > 0 else 0.0,
        core_utilisation=metrics.core_busy / metrics.core_paid if metrics.core_paid > 0 else 0.0,
        cost=sum(t.cost for t in tallies),
        simulated_seconds=end,
        events=events,
        wall_seconds=wall_seconds,
        events_per_second=events / wall_seconds if wall_seconds > 0 else 0.0,
        policy_seconds=policy_seconds,
        snapshot_seconds=snapshot_seconds,
        decisions=decisions,
        clouds={name: asdict(t) for name, t in metrics.clouds.items()},
        series=metrics.series,
    )
