"""Simulated pilots, timed like the real one (``cloudpilot.pilot.agent``).

A VM's pilot registers when the VM has booted, then fills its free cores: it offers what is free (cores, memory,
the lifetime it has left, its cloud's tags and site) and the matcher hands it the best job. When nothing fits it
waits in a long poll — here: in the *pool* — and the server wakes it when work arrives. It leaves when no job has
run nor been obtained for ``idle_timeout`` seconds (or its lifetime is over): code 200 if it ran a job, else 300.
A drained VM's pilot gets no new job (its matches answer nothing).

A job is an object (:class:`Run`) only while it runs. Its duration is drawn when it starts; a payload that fails
ends early (``fail_share``), one that outlives its wall time is killed then — both are final, as in the server. When
the VM vanishes (preemption, a site reclaiming capacity) its jobs stop at once; the VM monitor sends them back to
the queue at its next cycle — without spending an attempt on a preemptible cloud — and with ``events`` they resume
from the last finished event.
"""

from __future__ import annotations

import math
from heapq import heappush

from cloudpilot.domain.provisioning import CloudMode
from cloudpilot.domain.shutdown import ShutdownCode
from cloudpilot.domain.vms import VMState
from cloudpilot.sim.clouds import SimVM
from cloudpilot.sim.engine import EventQueue, Kind
from cloudpilot.sim.matcher import SimMatcher
from cloudpilot.sim.metrics import Metrics
from cloudpilot.sim.workload import JobClass, Workload

INF = float("inf")
RUNNING = VMState.RUNNING
DRAINING = VMState.DRAINING
JOB_END = Kind.JOB_END


class SimOffer:
    """What a pilot offers (the fields of :class:`cloudpilot.domain.matching.Offer` the matcher reads), as one
    mutable object: building a pydantic ``Offer`` per match would cost more than the match itself."""

    __slots__ = ("cloud", "cores", "image", "memory_mb", "seconds_left", "site", "tags")

    def __init__(self) -> None:
        self.cores = 1
        self.memory_mb: int | None = None
        self.seconds_left: int | None = None
        self.tags: tuple[str, ...] = ()
        self.site: str | None = None
        self.cloud: str | None = None
        self.image: str | None = None  # image lists are not simulated


class Run:
    """One attempt of one job on one VM."""

    __slots__ = ("arrival", "attempts", "cls", "dead", "duration", "end", "fails", "memory", "progress", "start", "vm")

    def __init__(self, cls: JobClass, vm: SimVM, arrival: float, start: float, end: float, duration: float,
                 progress: float, attempts: int, fails: bool, memory: int) -> None:  # fmt: skip
        self.cls = cls
        self.vm = vm
        self.arrival = arrival
        self.start = start
        self.end = end
        self.duration = duration  # of the whole job: with events, an attempt runs (1 - progress) of it
        self.progress = progress
        self.attempts = attempts
        self.fails = fails
        self.memory = memory
        self.dead = False  # stopped before its end (its VM vanished or was destroyed): its end event is moot

    def saved(self, at: float) -> float:
        """The share of the job done by ``at`` that a next attempt keeps: whole events only, none without events."""
        events = self.cls.events
        if not events or self.duration <= 0:
            return 0.0
        done = self.progress + (at - self.start) / self.duration
        return min(1.0, math.floor(events * done + 1e-9) / events)


class Pilots:
    def __init__(
        self, queue: EventQueue, workload: Workload, matcher: SimMatcher, metrics: Metrics, idle_timeout: float
    ) -> None:
        self.queue = queue
        self.workload = workload
        self.matcher = matcher
        self.metrics = metrics
        self.idle_timeout = idle_timeout
        self.pool: dict[SimVM, None] = {}  # pilots in a long poll with free cores, in the order they began waiting
        self.became_idle: list[SimVM] = []  # VMs whose last job ended since the monitor's last cycle
        self.to_destroy: list[SimVM] = []  # halted, failed or lost: the monitor destroys them at its next cycle
        self.vanished: list[SimVM] = []  # gone without a word: the monitor finds out at its next cycle
        self._arrival_pending = False
        self._offer = SimOffer()
        self._heap, self._serial = queue.heap, queue.serial  # the hot path pushes job ends itself
        self._waits = metrics.waits

    # --- events ---------------------------------------------------------------------------------------------

    def boot(self, vm: SimVM, now: float) -> None:
        """The VM has booted and its pilot registers (refused if the VM was given up meanwhile)."""
        if vm.vanished or vm.state not in (VMState.BOOTING, DRAINING):
            return
        if vm.state is VMState.BOOTING:
            vm.state = RUNNING
            vm.booted_at = now
            vm.idle_since = now
            vm.view = None
        vm.pilot_up_at = now
        vm.pilot_idle_since = now
        vm.lifetime_end = now + vm.cloud.spec.max_lifetime_seconds
        vm.cloud.pilots_up += 1
        self.metrics.pilot_up(1)
        if vm.state is RUNNING:
            self.ask(vm, now)
        if not vm.runs:
            self._idle_check(vm, now + self.idle_timeout)

    def job_end(self, run: Run, now: float) -> None:
        if run.dead:
            return
        vm, cls = run.vm, run.cls
        self._stop_run(run, now)
        vm.runs.remove(run)
        if run.fails:
            cls.failed += 1
            self.metrics.failed += 1
        else:
            cls.done += 1
            self.metrics.done += 1
        self.metrics.last_end = now
        vm.pilot_idle_since = now
        if vm.state is RUNNING:
            self.ask(vm, now)
        if not vm.runs and not vm.idle_event:
            self._idle_check(vm, now + self.idle_timeout)

    def idle(self, vm: SimVM, now: float) -> None:
        """The pilot's idle timeout (or its lifetime's end) may have come."""
        vm.idle_event = False
        if vm.vanished or vm.pilot_up_at is None or vm.state not in (RUNNING, DRAINING) or vm.runs:
            return  # gone, or busy: the end of its last job checks again
        due = min(vm.pilot_idle_since + self.idle_timeout, vm.lifetime_end)
        if now < due:
            self._idle_check(vm, due)
            return
        self.halt(vm, now, ShutdownCode.WORK_COMPLETED if vm.jobs_run else ShutdownCode.NO_MORE_WORK)

    def arrival(self, now: float) -> None:
        """Jobs were submitted: pilots waiting in a long poll are woken and ask again."""
        self._arrival_pending = False
        self.workload.advance(now)
        self.feed_pool(now)
        self._watch_arrivals()

    # --- the pilot's loop -----------------------------------------------------------------------------------

    def ask(self, vm: SimVM, now: float) -> None:
        """Fill the VM's free cores with jobs (one match per job); wait in the pool with what stays free."""
        wl = self.workload
        if wl.next_time <= now:
            wl.advance(now)
        if wl.waiting_total > 0 and vm.busy_cores < vm.cores and vm.free_memory >= 1:
            offer, match = self._offer, self.matcher.match
            cloud = vm.cloud
            offer.tags, offer.site, offer.cloud = cloud.tags, cloud.site, cloud.name
            while wl.waiting_total > 0 and vm.busy_cores < vm.cores and vm.free_memory >= 1:
                offer.cores = vm.cores - vm.busy_cores
                offer.memory_mb = vm.free_memory
                offer.seconds_left = None if vm.lifetime_end == INF else max(0, int(vm.lifetime_end - now))
                cls = match(offer, vm.vo, now)  # type: ignore[arg-type]
                if cls is None:
                    break
                self._start(vm, cls, now)
        if vm.busy_cores < vm.cores:
            if not vm.in_pool:
                vm.in_pool = True
                self.pool[vm] = None
                self._watch_arrivals()
        elif vm.in_pool:
            self.leave_pool(vm)

    def feed_pool(self, now: float) -> None:
        for vm in list(self.pool):
            if self.workload.waiting_total <= 0:
                break
            if vm.in_pool:
                self.ask(vm, now)

    def leave_pool(self, vm: SimVM) -> None:
        if vm.in_pool:
            vm.in_pool = False
            del self.pool[vm]

    def _start(self, vm: SimVM, cls: JobClass, now: float) -> None:
        """The oldest job of ``cls`` (a requeued one first: it was submitted before the fresh ones) runs on ``vm``.

        The hot path of the simulator (once per job): written out rather than split into calls."""
        self.workload.waiting_total -= 1
        if cls.requeued:
            arrival, progress, attempts = cls.requeued.popleft()
        else:
            taken = cls.taken
            arrival = cls.arrival_list[taken]
            cls.taken = taken + 1
            progress, attempts = 0.0, 0
            self._waits.append(now - arrival)
            if taken + 1 >= cls.arrived and cls.arrived >= cls.total and not cls.requeued:
                self.matcher.exhausted(cls)
        durations = cls.durations
        if not durations:
            cls.refill()
        duration = durations.pop()
        u = cls.uniforms.pop()
        run_time = duration * (1.0 - progress)
        fails = u < cls.fail_share
        if fails:
            run_time *= u / cls.fail_share  # the failure strikes at a uniform moment of the run
        tq = cls.tq
        if run_time > tq.wall_seconds:
            run_time, fails = tq.wall_seconds, True  # killed at its wall time
        cores = tq.cores
        memory = tq.memory_mb if tq.memory_mb is not None else vm.memory_mb * cores // vm.cores
        end = now + run_time
        run = Run(cls, vm, arrival, now, end, duration, progress, attempts + 1, fails, memory)
        vm.runs.append(run)
        vm.busy_cores += cores
        vm.free_memory -= memory
        if vm.busy_since is None:
            vm.busy_since = now
        vm.jobs_run += 1
        vm.idle_since = None
        vm.view = None
        cls.running += 1
        vm.cloud.running_jobs += 1
        cls.usage[2] += cores  # cores held now count in the fair share (SimMatcher)
        heappush(self._heap, (end, next(self._serial), JOB_END, run))

    def _stop_run(self, run: Run, now: float) -> None:
        """The run's cores are free again (it ended, or its VM is gone); usage and busy time are counted."""
        vm, cls = run.vm, run.cls
        cores = cls.tq.cores
        vm.busy_cores -= cores
        vm.free_memory += run.memory
        vm.view = None
        cls.running -= 1
        vm.cloud.running_jobs -= 1
        self.matcher.ended(cls, run.start, now)
        self.metrics.core_busy += cores * (now - run.start)
        if vm.busy_cores == 0 and vm.busy_since is not None:
            vm.busy_time += now - vm.busy_since
            vm.busy_since = None
            self.became_idle.append(vm)

    def _idle_check(self, vm: SimVM, at: float) -> None:
        vm.idle_event = True
        self.queue.push(at, Kind.IDLE, vm)

    def _watch_arrivals(self) -> None:
        """While pilots wait in the pool, the next submission must wake them at its time."""
        if self.pool and not self._arrival_pending and self.workload.next_time < INF:
            self._arrival_pending = True
            self.queue.push(self.workload.next_time, Kind.ARRIVAL)

    # --- leaving ----------------------------------------------------------------------------------------------

    def halt(self, vm: SimVM, now: float, code: int | None) -> None:
        """The VM stops working: its pilot left (``code``), or the provisioner or the monitor halted it."""
        if vm.state not in (VMState.BOOTING, RUNNING, DRAINING):
            return
        self.pilot_gone(vm)
        vm.state = VMState.HALTED
        vm.ended_at = now
        vm.shutdown_code = code
        vm.view = None
        self.leave_pool(vm)
        self.ended(vm)

    def pilot_gone(self, vm: SimVM) -> None:
        if vm.pilot_up_at is not None and vm.state in (RUNNING, DRAINING) and not vm.vanished:
            vm.cloud.pilots_up -= 1
            self.metrics.pilot_up(-1)

    def ended(self, vm: SimVM) -> None:
        """Halted, failed or lost: to be destroyed at the monitor's next cycle; vacuum clouds remember the end."""
        self.to_destroy.append(vm)
        if vm.cloud.mode is CloudMode.VACUUM:
            vm.cloud.ends.append(vm)

    def vanish(self, vm: SimVM, now: float) -> None:
        """The cloud took the VM back: it stops running at once; the server learns it at the next cycle."""
        if vm.vanished or vm.destroyed_at is not None or vm.state in (VMState.FAILED, VMState.LOST):
            return
        self.pilot_gone(vm)
        vm.vanished = True
        vm.paid_end = now
        for run in vm.runs:
            run.dead = True
            run.end = now
            self._stop_run(run, now)
        if vm.busy_since is not None:
            vm.busy_time += now - vm.busy_since
            vm.busy_since = None
        self.leave_pool(vm)
        vm.cloud.set_instance(vm, False)
        self.metrics.vms_preempted += 1
        self.vanished.append(vm)

    def release(self, vm: SimVM, now: float, spend_attempt: bool) -> int:
        """The jobs the VM's pilot still held go back to waiting (or fail after their last attempt)."""
        requeued = 0
        for run in vm.runs:
            if not run.dead:
                run.dead = True
                run.end = now
                self._stop_run(run, now)
            cls = run.cls
            attempts = run.attempts if spend_attempt else run.attempts - 1
            if attempts >= cls.max_attempts:
                cls.failed += 1
                self.metrics.failed += 1
                self.metrics.last_end = now
                continue
            if cls.exhausted:
                self.matcher.revived(cls)
            self.workload.requeue(cls, (run.arrival, run.saved(run.end), attempts))
            requeued += 1
        vm.runs.clear()
        return requeued
