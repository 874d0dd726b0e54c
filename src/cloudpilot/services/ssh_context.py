"""SSH contextualization (a cloud's ``context: ssh``): the loop that logs in to booting VMs and starts their pilots.

The provisioner hands over each VM it started on such a cloud with the pilot context it would have put in the
user-data (the token exists only in memory: tokens are stored hashed). Each tick, for every VM still waiting,
the loop asks the cloud driver for the VM's SSH endpoint and, once there is one, runs the contextualization script
(:mod:`cloudpilot.context.ssh_plan`) in a worker thread so a slow guest never holds up the tick. Connection errors
are retried while the VM boots; a failed script, or no session by the cloud's boot timeout, fails the VM with
the reason (the token redacted) and revokes its token. A server restarted meanwhile forgets its waiting VMs, and
the VM monitor fails them at the boot timeout.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from cloudpilot.config import ServerConfig
from cloudpilot.config.clouds import LibvirtCloudConfig, SshContextConfig
from cloudpilot.context.pilot_zipapp import pilot_zipapp
from cloudpilot.context.redact import redact
from cloudpilot.context.ssh_plan import STARTED_MARK, ssh_plan
from cloudpilot.context.userdata import PilotContext
from cloudpilot.domain.vms import VM_TRANSITIONS, VMState
from cloudpilot.services.ssh_transport import ParamikoRunner, SshNotReady, SshRunner, SshScriptFailed, SshTarget
from cloudpilot.store.tokens import TokenRepository
from cloudpilot.store.vms import VMRepository

log = logging.getLogger("cloudpilot.ssh_context")

WORKERS = 4  # SSH sessions at once; each takes a few seconds


@dataclass
class _Waiting:
    cloud: str
    instance_id: str
    context: PilotContext
    deadline: float
    next_try: float
    last_error: str = "the VM has no SSH endpoint yet"
    attempt: Future[str] | None = None


@dataclass
class SshContextualizer:
    vms: VMRepository
    tokens: TokenRepository
    drivers: dict[str, Any]  # drivers with ssh_endpoint(instance_id) -> (host, port) | None
    settings: dict[str, SshContextConfig]  # the clouds with context: ssh
    runner: SshRunner = field(default_factory=ParamikoRunner)
    _waiting: dict[str, _Waiting] = field(default_factory=dict)
    _pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(WORKERS, "ssh-context"))

    def handles(self, cloud: str) -> bool:
        return cloud in self.settings

    def submit(
        self, vm_id: str, cloud: str, instance_id: str, context: PilotContext, deadline: float, now: float
    ) -> None:
        """Contextualize this VM once it answers on SSH, by ``deadline`` (epoch seconds)."""
        self._waiting[vm_id] = _Waiting(cloud, instance_id, context, deadline, now)

    @property
    def waiting(self) -> list[str]:
        return sorted(self._waiting)

    def tick(self, now: float) -> list[str]:
        """Start attempts that are due, settle those that ended; the VM ids contextualized in this tick."""
        done = []
        for vm_id, item in list(self._waiting.items()):
            if item.attempt is not None and item.attempt.done():
                if self._settle(vm_id, item, now):
                    done.append(vm_id)
                continue
            if item.attempt is None and not self._still_booting(vm_id):
                del self._waiting[vm_id]  # failed, halted or destroyed meanwhile: nothing to do
            elif item.attempt is None and now >= item.deadline:
                self._fail(vm_id, item, f"no SSH session by the boot timeout: {item.last_error}", now)
            elif item.attempt is None and now >= item.next_try:
                self._try(vm_id, item, now)
        return done

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _try(self, vm_id: str, item: _Waiting, now: float) -> None:
        settings = self.settings[item.cloud]
        item.next_try = now + settings.retry_seconds
        endpoint = self.drivers[item.cloud].ssh_endpoint(item.instance_id)
        if endpoint is None:
            return
        host, port = endpoint
        if host != "127.0.0.1":
            port = settings.port  # a VM with its own address: the configured port (forwards carry their own)
        target = SshTarget(host, port, settings.user, settings.key_file, settings.connect_timeout_seconds)
        script = ssh_plan(item.context, pilot_zipapp().content).script
        item.attempt = self._pool.submit(self.runner.run, target, script)

    def _settle(self, vm_id: str, item: _Waiting, now: float) -> bool:
        attempt, item.attempt = item.attempt, None
        assert attempt is not None
        try:
            output = attempt.result()
        except SshNotReady as exc:
            item.last_error = str(exc)
            return False
        except SshScriptFailed as exc:
            self._fail(vm_id, item, f"SSH contextualization failed: {exc}", now)
            return False
        if STARTED_MARK not in output:
            self._fail(vm_id, item, "SSH contextualization failed: the script did not report the pilot started", now)
            return False
        del self._waiting[vm_id]
        log.info("VM %s contextualized over SSH; its pilot started", vm_id, extra={"vm_id": vm_id})
        return True

    def _still_booting(self, vm_id: str) -> bool:
        return self.vms.get(vm_id).state in (VMState.BOOTING, VMState.REQUESTED)

    def _fail(self, vm_id: str, item: _Waiting, reason: str, now: float) -> None:
        del self._waiting[vm_id]
        reason = redact(reason, [item.context.pilot_token])
        if VMState.FAILED in VM_TRANSITIONS[self.vms.get(vm_id).state]:
            self.vms.move(vm_id, VMState.FAILED, now, reason, failure_reason=reason)
            self.tokens.revoke_for_vm(vm_id, now)
        log.warning("VM %s on %s: %s", vm_id, item.cloud, reason, extra={"vm_id": vm_id, "cloud": item.cloud})


def ssh_contextualizer(
    config: ServerConfig, vms: VMRepository, tokens: TokenRepository, drivers: dict[str, Any]
) -> SshContextualizer | None:
    """The contextualizer for the configuration's ``context: ssh`` clouds; None when there are none."""
    settings = {
        name: cloud.ssh
        for name, cloud in config.clouds.items()
        if isinstance(cloud, LibvirtCloudConfig) and cloud.context == "ssh" and cloud.ssh is not None
    }
    return SshContextualizer(vms, tokens, drivers, settings) if settings else None
