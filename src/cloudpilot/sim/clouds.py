"""Simulated clouds and their VMs.

A cloud creates VMs within its quota at the time of the request (``max_vms`` after capacity steps, ``max_cores``,
``max_memory_mb``: every instance still running counts, as a real cloud counts them) and decides each VM's fate when
it is created: refused at once (``create_error_share``), never booting (``boot_failure_share``: the VM monitor fails
it at ``boot_timeout_seconds``), or booting after a draw of ``boot_seconds``; and when it will be preempted
(``preemption_rate_per_hour``). Fates come from the cloud's own random stream in creation order, so the n-th VM
of a cloud has the same fate under every policy.

A VM also carries what the server's records hold about it (state, ``idle_since``, ``jobs_run``, …) and caches its
:class:`VMView` until one of those changes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import MISSING, fields
from typing import TYPE_CHECKING

import numpy as np

from cloudpilot.domain.provisioning import CloudMode, VMEnd, VMView
from cloudpilot.domain.vms import Flavor, VMState
from cloudpilot.sim.scenario import CloudSpec

if TYPE_CHECKING:
    from cloudpilot.sim.pilots import Run

FATE_BLOCK = 1024
INF = float("inf")
BOOT_FAILURES_LOOKBACK = 50  # as VMRepository.boot_failures_in_row

# A snapshot of 10^4 VMs rebuilds most of their views every cycle (each job start changes ``jobs_run``): views are
# filled through their slots, which takes half the time of the frozen dataclass's __init__. Fields this module does
# not know get their defaults; a new field without one fails here, at import.
_VIEW_FIELDS = ("id", "vo", "flavor", "state", "cores", "memory_mb", "free_cores", "idle_since", "created_at",
                "jobs_run")  # fmt: skip
_VIEW_SETTERS = tuple(getattr(VMView, name).__set__ for name in _VIEW_FIELDS)
_VIEW_DEFAULTS = tuple(
    (getattr(VMView, f.name).__set__, f.default if f.default is not MISSING else f.default_factory())  # type: ignore[misc]
    for f in fields(VMView)
    if f.name not in _VIEW_FIELDS
)
_new = object.__new__


class SimVM:
    __slots__ = (
        "booted_at", "busy_cores", "busy_since", "busy_time", "cloud", "cores", "created_at", "destroyed_at",
        "ended_at", "failed_before_boot", "flavor", "free_memory", "id", "idle_event", "idle_since", "in_pool",
        "instance", "jobs_run", "lifetime_end", "memory_mb", "paid_end", "pilot_idle_since", "pilot_up_at", "runs",
        "shutdown_code", "state", "vanished", "view", "vo",
    )  # fmt: skip

    def __init__(self, vm_id: str, cloud: SimCloud, vo: str, flavor: Flavor, now: float) -> None:
        self.id = vm_id
        self.cloud = cloud
        self.vo = vo
        self.flavor = flavor.name
        self.cores = flavor.cores
        self.memory_mb = flavor.memory_mb
        self.state = VMState.BOOTING
        self.created_at = now
        self.booted_at: float | None = None  # the server's record: when the pilot first registered
        self.pilot_up_at: float | None = None  # when a pilot started, even in a VM drained while booting
        self.ended_at: float | None = None  # halted, failed or lost
        self.destroyed_at: float | None = None
        self.paid_end: float | None = None  # when the instance stopped running (vanished, or destroyed)
        self.failed_before_boot = False
        self.vanished = False
        self.idle_since: float | None = None  # the server's: set at registration and by the monitor, None on a match
        self.pilot_idle_since = 0.0  # the pilot's: registration or its last job's end
        self.lifetime_end = INF
        self.jobs_run = 0
        self.busy_cores = 0
        self.free_memory = flavor.memory_mb
        self.runs: list[Run] = []
        self.busy_since: float | None = None
        self.busy_time = 0.0
        self.shutdown_code: int | None = None
        self.in_pool = False
        self.idle_event = False
        self.instance = False  # the cloud runs an instance for it (its quota counts it)
        self.view: VMView | None = None

    @property
    def free_cores(self) -> int:
        return self.cores - self.busy_cores

    def make_view(self) -> VMView:
        view = self.view
        if view is None:
            running = self.state is VMState.RUNNING
            free = self.cores - self.busy_cores if running else self.cores
            idle = self.idle_since if self.busy_cores == 0 else None
            view = _new(VMView)
            s_id, s_vo, s_flavor, s_state, s_cores, s_memory, s_free, s_idle, s_created, s_jobs = _VIEW_SETTERS
            s_id(view, self.id)
            s_vo(view, self.vo)
            s_flavor(view, self.flavor)
            s_state(view, self.state)
            s_cores(view, self.cores)
            s_memory(view, self.memory_mb)
            s_free(view, free)
            s_idle(view, idle)
            s_created(view, self.created_at)
            s_jobs(view, self.jobs_run)
            for setter, default in _VIEW_DEFAULTS:
                setter(view, default)
            self.view = view
        return view

    def end_record(self) -> VMEnd:
        return VMEnd(self.vo, self.created_at, self.ended_at or 0.0, self.shutdown_code, self.jobs_run)


class SimCloud:
    def __init__(self, name: str, spec: CloudSpec, index: int, seed: int) -> None:
        self.name = name
        self.spec = spec
        self.site = spec.site or name
        self.tags = tuple(sorted(spec.tags))
        self.tag_set = frozenset(spec.tags)
        self.vos = None if spec.vos is None else frozenset(spec.vos)
        self.mode = CloudMode(spec.mode)
        self.flavors = tuple(Flavor(n, f.cores, f.memory_mb) for n, f in spec.flavors.items())
        self.flavor_by_name = {f.name: f for f in self.flavors}
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 2, index]))
        self.vms: list[SimVM] = []  # every VM ever created here, oldest first (back-off, start rate)
        self.alive: dict[str, SimVM] = {}  # not destroyed: what the provisioner's snapshot lists
        self.booting: deque[SimVM] = deque()  # in creation order, for boot timeouts
        self.recent_starts: deque[float] = deque()
        self.ends: deque[SimVM] = deque()  # vacuum clouds: VMs in the order they ended
        self.instances = 0  # VMs the cloud runs now (its quota counts these)
        self.instance_cores = 0
        self.instance_memory = 0
        self.pilots_up = 0
        self.running_jobs = 0
        self._fates: list[tuple[float, float, float, float]] = []

    # --- the cloud's side -------------------------------------------------------------------------------------

    def refuses(self, flavor: Flavor, now: float) -> str | None:
        """Why the cloud refuses one more instance of ``flavor`` now (its quota), or None."""
        spec = self.spec
        if self.instances + 1 > spec.max_vms_at(now):
            return f"quota: {self.instances} of at most {spec.max_vms_at(now)} instances"
        if spec.max_cores is not None and self.instance_cores + flavor.cores > spec.max_cores:
            return f"quota: {self.instance_cores} of at most {spec.max_cores} cores"
        if spec.max_memory_mb is not None and self.instance_memory + flavor.memory_mb > spec.max_memory_mb:
            return f"quota: {self.instance_memory} of at most {spec.max_memory_mb} MB"
        return None

    def fate(self) -> tuple[float, float, float, float]:
        """The next VM's (create error draw, never-boots draw, boot seconds, seconds until preemption)."""
        if not self._fates:
            rng, spec = self.rng, self.spec
            errors = rng.random(FATE_BLOCK)
            hangs = rng.random(FATE_BLOCK)
            boots = spec.boot_seconds.draw(rng, FATE_BLOCK)
            rate = spec.preemption_rate_per_hour
            preempt = rng.exponential(3600.0 / rate, FATE_BLOCK) if rate > 0 else np.full(FATE_BLOCK, INF)
            self._fates = list(zip(errors.tolist(), hangs.tolist(), boots.tolist(), preempt.tolist(), strict=True))
            self._fates.reverse()
        return self._fates.pop()

    def set_instance(self, vm: SimVM, running: bool) -> None:
        """The cloud starts (or no longer runs) an instance for ``vm``."""
        if vm.instance == running:
            return
        vm.instance = running
        sign = 1 if running else -1
        self.instances += sign
        self.instance_cores += sign * vm.cores
        self.instance_memory += sign * vm.memory_mb

    # --- what the server's records say (services/provisioner.py reads the same from its store) ----------------

    def starts_last_minute(self, now: float) -> int:
        starts = self.recent_starts
        while starts and starts[0] < now - 60:
            starts.popleft()
        return len(starts)

    def boot_failures_in_row(self) -> tuple[int, float | None]:
        """Failed boots since the latest VM that booted, and when the latest of them was last updated."""
        failures, latest, seen = 0, None, 0
        for vm in reversed(self.vms):
            if vm.state is VMState.BOOTING:
                continue
            seen += 1
            if seen > BOOT_FAILURES_LOOKBACK or vm.booted_at is not None:
                break
            if vm.failed_before_boot:
                failures += 1
                updated = vm.destroyed_at if vm.destroyed_at is not None else vm.ended_at
                latest = updated if latest is None else max(latest, updated or 0.0)
        return failures, latest

    def recent_ends(self, now: float) -> tuple[VMEnd, ...]:
        """Vacuum clouds: VMs that ended within the window the server looks back over, oldest created first."""
        spec = self.spec
        window = max(3600.0, 4 * spec.backoff_seconds + spec.fizzle_seconds)
        ends = self.ends
        while ends and (ends[0].ended_at or 0.0) < now - window:
            ends.popleft()
        return tuple(vm.end_record() for vm in sorted(ends, key=lambda v: (v.created_at, v.id)))
