"""One provisioning cycle, as the server runs it: the VM monitor settles what happened, then the provisioner reads
a :class:`ProvisioningSnapshot` — built field by field as ``services/provisioner.py`` builds it from its store —
asks the policy (the real one: :class:`cloudpilot.policy.base.DefaultPolicy` or a peer's) and carries out its
actions on the simulated clouds.

The monitor (``services/vm_monitor.py``): a VM whose pilot has not registered within ``boot_timeout_seconds``
fails; a VM past its maximum lifetime is halted; a draining VM without jobs is halted; a VM without jobs gets its
``idle_since``; VMs the cloud took back are lost and their jobs requeued (no attempt spent on a preemptible
cloud); halted, failed and lost VMs are destroyed, and jobs they still held are requeued.
"""

from __future__ import annotations

import time

from cloudpilot.domain.provisioning import (
    Action,
    CloudView,
    DrainVM,
    ProvisioningSnapshot,
    StartVMs,
    StopVM,
    WorkClass,
)
from cloudpilot.domain.shutdown import ShutdownCode
from cloudpilot.domain.vms import VMState
from cloudpilot.policy.base import ProvisioningPolicy
from cloudpilot.sim.clouds import SimCloud, SimVM
from cloudpilot.sim.engine import EventQueue, Kind
from cloudpilot.sim.metrics import Metrics
from cloudpilot.sim.pilots import Pilots
from cloudpilot.sim.scenario import Scenario
from cloudpilot.sim.workload import JobClass, Workload

INF = float("inf")
_ALIVE = (VMState.BOOTING, VMState.RUNNING, VMState.DRAINING)


class SimProvisioner:
    def __init__(
        self,
        scenario: Scenario,
        policy: ProvisioningPolicy,
        clouds: list[SimCloud],
        workload: Workload,
        pilots: Pilots,
        metrics: Metrics,
        queue: EventQueue,
    ) -> None:
        self.policy = policy
        self.clouds = clouds
        self.by_name = {c.name: c for c in clouds}
        self.workload = workload
        self.pilots = pilots
        self.metrics = metrics
        self.queue = queue
        self.vms: dict[str, SimVM] = {}  # not yet destroyed, by id
        self.draining: dict[SimVM, None] = {}
        self.expired: list[SimVM] = []
        self.vo_shares = {vo: v.share for vo, v in scenario.vos.items()}
        self.default_share = scenario.default_share
        # services/provisioner.py counts waiting jobs per class only up to what the clouds could ever hold.
        self.cap = 2 * sum(c.spec.max_vms * max(f.cores for f in c.flavors) for c in clouds) + 1
        self._work_views: dict[int, tuple[int, WorkClass]] = {}
        self._serial = 0
        self.last_vm_created = 0.0
        self.decisions = 0
        self.snapshot_seconds = 0.0  # wall time building snapshots
        self.policy_seconds = 0.0  # wall time in the policy's decide

    def tick(self, now: float) -> int:
        """One cycle; returns how many jobs went back to the queue (they wake the loop sooner)."""
        requeued = self.monitor(now)
        if requeued:
            self.pilots.feed_pool(now)
        started = time.perf_counter()
        snapshot = self.snapshot(now)
        asked = time.perf_counter()
        actions = self.policy.decide(snapshot, now)
        self.snapshot_seconds += asked - started
        self.policy_seconds += time.perf_counter() - asked
        self.decisions += 1
        self.apply(actions, now)
        self.metrics.sample(now, self.clouds)
        return requeued

    # --- VM monitor -------------------------------------------------------------------------------------------

    def monitor(self, now: float) -> int:
        pilots = self.pilots
        for cloud in self.clouds:
            timeout = cloud.spec.boot_timeout_seconds
            booting = cloud.booting
            while booting and now - booting[0].created_at > timeout:
                vm = booting.popleft()
                if vm.state is VMState.BOOTING and not vm.vanished:
                    self._fail(vm, now)
        for vm in self.expired:
            if vm.state in (VMState.RUNNING, VMState.DRAINING) and not vm.vanished:
                pilots.halt(vm, now, None)  # its running jobs are requeued when it is destroyed below
        self.expired.clear()
        for vm in list(self.draining):
            if vm.state is not VMState.DRAINING:
                del self.draining[vm]
            elif vm.busy_cores == 0 and not vm.vanished:
                del self.draining[vm]
                pilots.halt(vm, now, int(ShutdownCode.SHUTDOWN_AS_REQUESTED))  # drained: its pilot is told to stop
        for vm in pilots.became_idle:
            if vm.busy_cores == 0 and vm.idle_since is None and vm.state in _ALIVE and not vm.vanished:
                vm.idle_since = now
                vm.view = None
        pilots.became_idle.clear()
        requeued = 0
        for vm in pilots.vanished:
            if vm.destroyed_at is not None:
                continue
            if vm.state in _ALIVE:
                vm.failed_before_boot = vm.booted_at is None
                if vm.failed_before_boot:
                    self.metrics.vm_failed(vm)
                vm.state = VMState.LOST
                vm.ended_at = now
                vm.view = None
                pilots.ended(vm)
            requeued += pilots.release(vm, now, spend_attempt=not vm.cloud.spec.preemptible)
        pilots.vanished.clear()
        for vm in pilots.to_destroy:
            if vm.destroyed_at is None:
                requeued += self._destroy(vm, now)
        pilots.to_destroy.clear()
        return requeued

    def _fail(self, vm: SimVM, now: float) -> None:
        vm.state = VMState.FAILED
        vm.failed_before_boot = True
        vm.ended_at = now
        vm.view = None
        self.pilots.leave_pool(vm)
        self.metrics.vm_failed(vm)
        self.pilots.ended(vm)

    def _destroy(self, vm: SimVM, now: float) -> int:
        requeued = self.pilots.release(vm, now, spend_attempt=True) if vm.runs else 0
        if not vm.vanished:
            vm.paid_end = now
        vm.cloud.set_instance(vm, False)
        vm.state = VMState.DESTROYED
        vm.destroyed_at = now
        vm.view = None
        vm.cloud.alive.pop(vm.id, None)
        self.vms.pop(vm.id, None)
        self.metrics.vm_gone(vm, now)
        return requeued

    def reclaim(self, cloud: SimCloud, now: float) -> None:
        """The site takes back what is above the cloud's capacity now: the youngest VMs vanish."""
        excess = cloud.instances - cloud.spec.max_vms_at(now)
        if excess <= 0:
            return
        victims = [vm for vm in cloud.alive.values() if not vm.vanished and vm.state in _ALIVE]
        for vm in sorted(victims, key=lambda v: (-v.created_at, v.id))[:excess]:
            self.pilots.vanish(vm, now)

    # --- the snapshot (services/provisioner.py: Provisioner.snapshot) -------------------------------------------

    def snapshot(self, now: float) -> ProvisioningSnapshot:
        self.workload.advance(now)
        work = tuple(self._work_view(c) for c in self.workload.classes if c.waiting > 0)
        clouds = tuple(self._cloud_view(c, now) for c in self.clouds)
        return ProvisioningSnapshot(work, clouds, vo_shares=self.vo_shares, default_share=self.default_share)

    def _work_view(self, cls: JobClass) -> WorkClass:
        waiting = min(cls.waiting, self.cap)
        # The oldest waiting job's submission, as the server's snapshot reads it: a requeued one is older.
        since = cls.requeued[0][0] if cls.requeued else cls.arrival_list[cls.taken]
        cached = self._work_views.get(cls.tq.id)
        if cached is not None and cached[0] == waiting and cached[1].waiting_since == since:
            return cached[1]
        view = WorkClass.of(cls.tq, waiting, since)
        self._work_views[cls.tq.id] = (waiting, view)
        return view

    def _cloud_view(self, cloud: SimCloud, now: float) -> CloudView:
        spec = cloud.spec
        failures, last_failure = cloud.boot_failures_in_row()
        return CloudView(
            name=cloud.name,
            flavors=cloud.flavors,
            vos=cloud.vos,
            max_vms=spec.max_vms_at(now),
            max_cores=spec.max_cores,
            max_memory_mb=spec.max_memory_mb,
            start_rate_per_minute=spec.start_rate_per_minute,
            starts_last_minute=cloud.starts_last_minute(now),
            price_per_core_hour=spec.price_per_core_hour,
            priority=spec.priority,
            site=cloud.site,
            tags=cloud.tag_set,
            boot_failures_in_row=failures,
            last_boot_failure_at=last_failure,
            vms=tuple(vm.view or vm.make_view() for vm in cloud.alive.values()),
            mode=cloud.mode,
            preemptible=spec.preemptible,
            hs06_per_core=spec.hs06_per_core,
            target_shares=spec.target_shares,
            fizzle_seconds=spec.fizzle_seconds,
            backoff_seconds=spec.backoff_seconds,
            recent_ends=cloud.recent_ends(now) if cloud.ends else (),
            shutdown_pending=False,
            boot_seconds=spec.boot_seconds.mean_value(),  # the server reads the median it observed
        )

    # --- acting ---------------------------------------------------------------------------------------------

    def apply(self, actions: list[Action], now: float) -> None:
        for action in actions:
            if isinstance(action, StartVMs):
                cloud = self.by_name.get(action.cloud)
                if cloud is None:
                    raise ValueError(f"policy {self.policy.name} started VMs on unknown cloud {action.cloud!r}")
                for _ in range(action.count):
                    self.create(cloud, action.vo, action.flavor, now)
            elif isinstance(action, StopVM):
                vm = self.vms.get(action.vm_id)
                if vm is not None and vm.state in _ALIVE:
                    self.pilots.halt(vm, now, None)
            elif isinstance(action, DrainVM):
                vm = self.vms.get(action.vm_id)
                if vm is not None and vm.state in (VMState.BOOTING, VMState.RUNNING):
                    vm.state = VMState.DRAINING
                    vm.view = None
                    self.pilots.leave_pool(vm)
                    self.draining[vm] = None

    def create(self, cloud: SimCloud, vo: str, flavor_name: str, now: float) -> SimVM:
        self._serial += 1
        flavor = cloud.flavor_by_name.get(flavor_name)
        vm = SimVM(f"vm-{self._serial:07d}", cloud, vo, flavor or cloud.flavors[0], now)
        cloud.vms.append(vm)
        cloud.alive[vm.id] = vm
        cloud.recent_starts.append(now)
        self.vms[vm.id] = vm
        self.metrics.vm_created(cloud)
        self.last_vm_created = now
        error, hang, boot_seconds, preempt_after = cloud.fate()
        spec = cloud.spec
        if flavor is None or cloud.refuses(flavor, now) is not None or error < spec.create_error_share:
            self._fail(vm, now)  # the cloud refused it (unknown flavor, quota, API error)
            return vm
        cloud.set_instance(vm, True)
        cloud.booting.append(vm)
        if hang >= spec.boot_failure_share:
            self.queue.push(now + boot_seconds, Kind.BOOT, vm)
        if preempt_after < INF:
            self.queue.push(now + preempt_after, Kind.PREEMPT, vm)
        self.queue.push(now + spec.max_lifetime_seconds, Kind.EXPIRE, vm)
        return vm
