"""An in-memory :class:`~cloudpilot.clouds.base.CloudDriver` for tests of whatever drives clouds.

It keeps the real drivers' promises (``create`` is idempotent per VM id, ``QuotaExceeded`` past ``max_vms``
instances pending or running, ``CloudConfigError`` for an unknown flavor, ``destroy`` of an unknown instance is
fine), records every call in :attr:`FakeCloudDriver.calls` so tests assert what was asked, and has switches for
what clouds do to us: refuse the next creates, move an instance to another state (halted, errored), lose an
instance without being asked, or show an instance of ours that nobody remembers launching.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import replace

from cloudpilot.clouds.base import Instance, InstanceState, LaunchRequest
from cloudpilot.clouds.errors import CloudConfigError, CloudError, QuotaExceeded
from cloudpilot.domain.vms import Flavor

LIVE_STATES = frozenset({InstanceState.PENDING, InstanceState.RUNNING})


class FakeCloudDriver:
    """Instances are plain records; they stay in ``initial_state`` until a test moves them with :meth:`set_state`.

    ``calls`` holds one tuple per call: ``("create", vm_id, flavor)``, ``("list",)``, ``("destroy", instance_id)``
    (user-data is kept apart, in :attr:`requests`, as it carries credentials).
    """

    def __init__(
        self,
        name: str,
        flavors: dict[str, Flavor],
        max_vms: int = 10,
        *,
        initial_state: InstanceState = InstanceState.PENDING,
    ) -> None:
        self.name = name
        self.flavors = dict(flavors)
        self.max_vms = max_vms
        self.initial_state = initial_state
        self.calls: list[tuple[str, ...]] = []
        self.requests: dict[str, LaunchRequest] = {}  # by instance id: what each instance was launched with
        self.destroyed: list[str] = []  # instance ids, in the order they were destroyed
        self._instances: dict[str, Instance] = {}
        self._failures: list[CloudError] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # -- the port ------------------------------------------------------------------------------------------------

    def create(self, request: LaunchRequest) -> Instance:
        with self._lock:
            self.calls.append(("create", request.vm_id, request.flavor))
            if self._failures:
                raise self._failures.pop(0)
            for inst in self._instances.values():
                if inst.vm_id == request.vm_id:
                    return inst
            if request.flavor not in self.flavors:
                offered = ", ".join(sorted(self.flavors)) or "none"
                raise CloudConfigError(self.name, f"unknown flavor {request.flavor!r} (offered: {offered})")
            live = sum(inst.state in LIVE_STATES for inst in self._instances.values())
            if live >= self.max_vms:
                raise QuotaExceeded(self.name, f"{live} of at most {self.max_vms} instances are pending or running")
            inst = self._add(request.vm_id, request.flavor, self.initial_state)
            self.requests[inst.instance_id] = request
            return inst

    def list(self) -> list[Instance]:
        with self._lock:
            self.calls.append(("list",))
            return list(self._instances.values())

    def destroy(self, instance_id: str) -> None:
        with self._lock:
            self.calls.append(("destroy", instance_id))
            if self._instances.pop(instance_id, None) is not None:
                self.destroyed.append(instance_id)

    # -- switches --------------------------------------------------------------------------------------------------

    def fail_next_create(self, error: CloudError, times: int = 1) -> None:
        """The next ``times`` calls of :meth:`create` raise ``error`` (before anything else is checked)."""
        with self._lock:
            self._failures.extend([error] * times)

    def set_state(self, instance_id: str, state: InstanceState) -> None:
        """Move an instance to ``state``, as the cloud would when the VM halts or breaks."""
        with self._lock:
            self._instances[instance_id] = replace(self._instances[instance_id], state=state)

    def vanish(self, instance_id: str) -> None:
        """The instance disappears from :meth:`list` without anyone destroying it."""
        with self._lock:
            del self._instances[instance_id]

    def add_foreign(
        self, vm_id: str | None, state: InstanceState = InstanceState.RUNNING, flavor: str | None = None
    ) -> Instance:
        """An instance tagged as ours that no create call of this driver made (a lost record, another server)."""
        with self._lock:
            return self._add(vm_id, flavor, state)

    # -- inside ----------------------------------------------------------------------------------------------------

    def _add(self, vm_id: str | None, flavor: str | None, state: InstanceState) -> Instance:
        instance_id = f"{self.name}-{next(self._ids):04d}"
        inst = Instance(instance_id=instance_id, vm_id=vm_id, state=state, flavor=flavor, created_at=time.time())
        self._instances[instance_id] = inst
        return inst
