"""What a VM's pilot tells us about the VM: it booted, it works, it is alive, it halted."""

from __future__ import annotations

import contextlib
import logging

from cloudpilot.domain.vms import VM, VMState
from cloudpilot.services import metrics
from cloudpilot.services.errors import Forbidden
from cloudpilot.store.errors import NotFound
from cloudpilot.store.vms import VMRepository

ALIVE = frozenset({VMState.BOOTING, VMState.RUNNING, VMState.DRAINING})
TOKEN_REUSED = "security: its registration token was presented again after its pilot registered; refused"

log = logging.getLogger("cloudpilot.security")


class VMActivity:
    def __init__(self, vms: VMRepository) -> None:
        self.vms = vms

    def pilot_registered(self, vm_id: str, now: float) -> None:
        """The VM booted: its pilot is up. A pilot of a VM we gave up on may not start working."""
        try:
            vm = self.vms.get(vm_id)
        except NotFound as exc:
            raise Forbidden(f"VM {vm_id} of this token is not known") from exc
        if vm.state not in ALIVE:
            raise Forbidden(f"VM {vm_id} is {vm.state.value}: its pilot may not take work")
        if vm.state is VMState.BOOTING:
            self.vms.move(
                vm_id, VMState.RUNNING, now, "pilot registered", booted_at=now, last_seen_at=now, idle_since=now
            )
            metrics.vm_booted(vm.cloud, vm.created_at, now)
        else:
            self.vms.touch(vm_id, now)

    def token_reused(self, vm_id: str, now: float) -> None:
        """Someone holds a copy of the VM's one-time token (a payload read it, or the user-data leaked): keep
        it in the VM's history and log it; the caller refuses the request."""
        log.warning("VM %s: %s", vm_id, TOKEN_REUSED, extra={"vm_id": vm_id})
        with contextlib.suppress(NotFound):  # a VM since forgotten: the log line is all there is to keep
            self.vms.note(vm_id, now, TOKEN_REUSED)

    def vm_for_work(self, vm_id: str) -> VM | None:
        """The VM, if it may take new work: a draining VM (or one being stopped) gets no new job; its pilot
        idles out and powers off."""
        try:
            vm = self.vms.get(vm_id)
        except NotFound:
            return None
        return vm if vm.state in (VMState.BOOTING, VMState.RUNNING) else None

    def heartbeat(self, vm_id: str, now: float) -> float | None:
        """Its pilot is alive; returns the VM's scheduled shutdown deadline, if any."""
        return self.vms.touch(vm_id, now)

    def refused(self, vm: VM, reason: str, now: float) -> None:
        """Keep the site policy's refusal on the VM's record (written only when it changes)."""
        if vm.permission != reason:
            self.vms.update(vm.id, now, permission=reason[:1000])

    def seen(self, vm_id: str, now: float, matched: bool) -> None:
        if matched:
            self.vms.increment_jobs(vm_id, now)
        else:
            self.vms.touch(vm_id, now)

    def pilot_halted(self, vm_id: str, code: int, message: str, now: float) -> None:
        vm = self.vms.get(vm_id)
        values = {"shutdown_code": code, "shutdown_message": message[:1000]}
        if vm.state in (VMState.RUNNING, VMState.DRAINING, VMState.BOOTING):
            self.vms.move(vm_id, VMState.HALTED, now, f"pilot halted: {message[:200]}", **values)
        elif vm.shutdown_message is None:
            self.vms.update(vm_id, now, **values)
        # Otherwise the VM was stopped first (by an admin, the provisioner, its lifetime): that reason stays.
