"""The VM monitor: no VM record stays stuck, and no instance of ours runs unknown.

Every ``tick(now)``:
1. VMs that time out: ``booting`` past the cloud's ``boot_timeout_seconds`` → ``failed``; ``running`` or
   ``draining`` with no word from their pilot for ``provisioner.lost_after_seconds``, or whose instance
   stopped without the pilot's shutdown report → ``lost``, and the jobs
   their pilots held go back to the queue at once;
2. VMs past a scheduled shutdown's deadline → ``halted``, their jobs back to ``waiting`` without spending an
   attempt; VMs past their maximum lifetime → ``halted``;
3. reconciliation with each cloud's own list: an instance tagged as ours whose VM is unknown or destroyed is
   destroyed; a live VM whose instance is gone → ``lost``; an instance that stopped (the pilot powered the VM
   off) → ``halted``; one in error → ``failed``;
4. ``halted``, ``failed`` and ``lost`` VMs are destroyed through their driver, their tokens revoked, and
   their usage recorded (``record_usage``, before the VM is marked destroyed so a restart cannot lose it).
Jobs of a lost VM of a preemptible cloud go back without spending an attempt: the cloud took the VM away.
A cloud that cannot be listed is skipped this cycle (its VMs are left as they are), not guessed about.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from cloudpilot.clouds.base import CloudDriver, Instance, InstanceState
from cloudpilot.clouds.errors import CloudError
from cloudpilot.config import ServerConfig
from cloudpilot.config.clouds import LocalCloudConfig
from cloudpilot.domain.vms import TO_DESTROY_STATES, VM, VM_TRANSITIONS, VMState
from cloudpilot.services import metrics
from cloudpilot.services.cloud_health import CloudHealth
from cloudpilot.services.log_ids import vm_ids
from cloudpilot.store.jobs import JobRepository
from cloudpilot.store.pilots import PilotRepository
from cloudpilot.store.tokens import TokenRepository
from cloudpilot.store.vms import VMRepository

log = logging.getLogger("cloudpilot.vm_monitor")

ALIVE = frozenset({VMState.BOOTING, VMState.RUNNING, VMState.DRAINING})


@dataclass
class VMMonitor:
    config: ServerConfig
    vms: VMRepository
    jobs: JobRepository
    pilots: PilotRepository
    tokens: TokenRepository
    drivers: dict[str, CloudDriver]
    on_requeue: Callable[[], None] = lambda: None
    record_usage: Callable[[VM, float], None] = lambda vm, now: None
    health: CloudHealth = field(default_factory=CloudHealth)  # shared with the provisioner (cloud errors)

    @property
    def interval(self) -> float:
        return self.config.provisioner.interval_seconds

    def tick(self, now: float) -> list[str]:
        """Returns a line per VM it changed (for logs and tests)."""
        changes: list[str] = []
        busy = self.jobs.active_cores_by_vm()
        for vm in self.vms.list(states=set(ALIVE)):
            changes += self._timeouts(vm, now, busy.get(vm.id, 0))
        for cloud, driver in self.drivers.items():
            changes += self._reconcile(cloud, driver, now)
        for vm in self.vms.list(states=set(TO_DESTROY_STATES)):
            changes += self._destroy(vm, now)
        self.health.flush(now)
        return changes

    def _fail(self, vm: VM, now: float, reason: str) -> str:
        """A VM that will never run: logged once, here, with its cloud and why."""
        self.vms.move(vm.id, VMState.FAILED, now, reason, failure_reason=reason)
        log.warning("VM %s on %s failed: %s", vm.id, vm.cloud, reason, extra=vm_ids(vm))
        return f"{vm.id} failed: {reason}"

    def _timeouts(self, vm: VM, now: float, busy_cores: int) -> list[str]:
        settings = self.config.clouds.get(vm.cloud)
        boot_timeout = settings.boot_timeout_seconds if settings else 600.0
        who = "pilot" if vm.cluster_id is None else "cluster agent"  # a cluster VM runs an agent, no pilot
        if vm.state is VMState.BOOTING and now - vm.created_at > boot_timeout:
            reason = f"boot timeout: no {who} after {boot_timeout:.0f} s"
            changed = self._fail(vm, now, reason)
            metrics.vm_failed(vm.cloud, "boot_timeout", vm.booted_at)
            return [changed]
        if vm.state is VMState.BOOTING:
            return []
        if vm.shutdown_deadline is not None and now >= vm.shutdown_deadline:
            return [self._shut_down(vm, now)]
        silent = now - (vm.last_seen_at or vm.booted_at or vm.created_at)
        if silent > self.config.provisioner.lost_after_seconds:
            return [self._lose(vm, now, f"no word from its {who} for {silent:.0f} s")]
        if vm.expires_at is not None and now >= vm.expires_at:
            self.vms.move(vm.id, VMState.HALTED, now, "maximum lifetime reached", shutdown_message="lifetime reached")
            return [f"{vm.id} halted: maximum lifetime"]
        if vm.state is VMState.DRAINING and busy_cores == 0:
            # The VM's end says why it was drained (capacity, a pledge's reclaim, an image revoked, an admin).
            why = next((r for _, _, to, r in reversed(self.vms.history(vm.id)) if to == VMState.DRAINING.value), "")
            message = why.replace("draining: ", "drained: ", 1) if why else "drained"
            self.vms.move(vm.id, VMState.HALTED, now, "drained: its last job ended", shutdown_message=message)
            return [f"{vm.id} halted: {message}"]
        if busy_cores == 0 and vm.idle_since is None:
            self.vms.update(vm.id, now, idle_since=now)
        return []

    def _shut_down(self, vm: VM, now: float) -> str:
        """The site's deadline has come: what still runs goes back to the queue, the VM goes."""
        why = f"site shutdown of {vm.id} at its deadline"
        released = self._release(vm, now, why, spend_attempt=False)
        self.vms.move(vm.id, VMState.HALTED, now, why, shutdown_message=f"{why}; {released} job(s) requeued")
        return f"{vm.id} halted: {why}; {released} job(s) requeued"

    def stop_with_server(self, now: float) -> list[str]:
        """The server is stopping: VMs of local clouds (processes of this machine, which nobody would stop
        otherwise) stop too, unless the cloud keeps them (``keep_vms_on_stop``); their jobs go back to the
        queue without spending an attempt, since the server, not the job, ended them."""
        changes: list[str] = []
        for vm in self.vms.list(states=set(ALIVE) | {VMState.REQUESTED}):
            settings = self.config.clouds.get(vm.cloud)
            if not isinstance(settings, LocalCloudConfig) or settings.keep_vms_on_stop:
                continue
            why = "the server stopped"
            released = self._release(vm, now, f"VM {vm.id} stopped with the server", spend_attempt=False)
            target = VMState.HALTED if VMState.HALTED in VM_TRANSITIONS[vm.state] else VMState.FAILED
            self.vms.move(vm.id, target, now, why, shutdown_message=f"{why}; {released} job(s) requeued")
            changes.append(f"{vm.id} stopped with the server; {released} job(s) requeued")
            changes += self._destroy(self.vms.get(vm.id), now)
        return changes

    def _lose(self, vm: VM, now: float, why: str) -> str:
        self.vms.move(vm.id, VMState.LOST, now, why, failure_reason=why if vm.booted_at is None else None)
        log.warning("VM %s on %s lost: %s", vm.id, vm.cloud, why, extra=vm_ids(vm))
        settings = self.config.clouds.get(vm.cloud)
        preempted = settings is not None and settings.preemptible
        what = f"VM {vm.id} of preemptible cloud {vm.cloud} lost" if preempted else f"VM {vm.id} lost"
        released = self._release(vm, now, what, spend_attempt=not preempted)
        return f"{vm.id} lost: {why}; {released} job(s) requeued"

    def _release(self, vm: VM, now: float, why: str, *, spend_attempt: bool = True) -> int:
        released = self.jobs.release_pilots(
            self.pilots.ids_in_vm(vm.id),
            now,
            why,
            self.config.fair_share.half_life_seconds,
            spend_attempt=spend_attempt,
        )
        metrics.count_requeues(released, "vm_ended")
        if released:
            self.on_requeue()
        return len(released)

    def _reconcile(self, cloud: str, driver: CloudDriver, now: float) -> list[str]:
        try:
            instances = driver.list()
        except CloudError as exc:
            self.health.report(cloud, exc, now, f"cannot list {cloud} this cycle")
            return []
        known = {vm.id: vm for vm in self.vms.list(cloud=cloud)}
        changes: list[str] = []
        seen: set[str] = set()
        for inst in instances:
            vm = known.get(inst.vm_id or "")
            if vm is None or vm.state is VMState.DESTROYED:
                changes += self._destroy_stray(cloud, driver, inst, now)
                continue
            seen.add(vm.id)
            changes += self._follow_instance(vm, inst, now)
        for vm in known.values():
            if vm.state in ALIVE and vm.instance_id is not None and vm.id not in seen:
                changes.append(self._lose(vm, now, f"instance {vm.instance_id} vanished from cloud {cloud}"))
        return changes

    def _follow_instance(self, vm: VM, inst: Instance, now: float) -> list[str]:
        if vm.state not in ALIVE:
            return []
        if inst.state is InstanceState.STOPPED:
            if vm.shutdown_code is None and vm.booted_at is not None:
                # Powered off without its pilot's last word: it died under its jobs.
                return [self._lose(vm, now, "the instance stopped without a shutdown report from its pilot")]
            self.vms.move(vm.id, VMState.HALTED, now, "the instance stopped")
            return [f"{vm.id} halted: instance stopped"]
        if inst.state is InstanceState.ERROR:
            reason = f"instance {inst.instance_id} is in error on cloud {vm.cloud}"
            changed = self._fail(vm, now, reason)
            metrics.vm_failed(vm.cloud, "instance_error", vm.booted_at)
            return [changed]
        return []

    def _destroy_stray(self, cloud: str, driver: CloudDriver, inst: Instance, now: float) -> list[str]:
        self.vms.check_fence()  # an instance the new leader just started looks stray to an old snapshot
        try:
            driver.destroy(inst.instance_id)
        except CloudError as exc:
            self.health.report(cloud, exc, now, f"cannot destroy stray instance {inst.instance_id} on {cloud}")
            return []
        return [f"stray instance {inst.instance_id} on {cloud} destroyed"]

    def _destroy(self, vm: VM, now: float) -> list[str]:
        driver = self.drivers.get(vm.cloud)
        if vm.instance_id is not None and driver is not None:
            self.vms.check_fence()  # a deposed leader destroys nothing (it raises Fenced)
            try:
                driver.destroy(vm.instance_id)
            except CloudError as exc:
                self.health.report(vm.cloud, exc, now, f"cannot destroy {vm.id} ({vm.instance_id}) yet")
                return []
        self.tokens.revoke_for_vm(vm.id, now)
        # Jobs still held by its pilots (a VM halted at the end of its lifetime) go back to the queue now.
        self._release(vm, now, f"VM {vm.id} destroyed")
        self.record_usage(vm, now)
        self.vms.move(vm.id, VMState.DESTROYED, now, f"destroyed after {vm.state.value}", terminated_at=now)
        if vm.state is VMState.HALTED:
            return [f"{vm.id} destroyed"]
        return [f"{vm.id} destroyed ({vm.state.value})"]
