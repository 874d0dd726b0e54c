"""The port every cloud driver implements: create, list, destroy, with the cloud's own instance id.

Drivers return plain frozen dataclasses; provider-specific arguments and ``extra`` dicts stay inside each
driver. Creating and destroying are safe to repeat: ``create`` is keyed by our VM id (the request id, also put
in a tag on the instance), and ``destroy`` of an instance that is already gone succeeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

# Every instance we create carries these tags, so ``list`` returns ours only and reconciliation can find
# instances whose VM record is unknown.
TAG_MANAGED = "cloudpilot-managed"
TAG_VM_ID = "cloudpilot-vm-id"


class InstanceState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    STOPPED = "stopped"  # powered off (our pilot halts the VM when it is done)
    ERROR = "error"  # the cloud says it will not run
    TERMINATED = "terminated"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class LaunchRequest:
    vm_id: str  # our id for the VM: the idempotency key and the value of TAG_VM_ID
    vo: str
    flavor: str
    user_data: str  # what the VM is given at boot; for a libvirt cloud with context: none, its config drive's file
    image: str | None = None  # None: the cloud's configured image for the VO
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Instance:
    instance_id: str  # the cloud's own id
    vm_id: str | None  # from TAG_VM_ID; None if the tag is missing
    state: InstanceState
    flavor: str | None = None
    created_at: float | None = None


class CloudDriver(Protocol):
    """One configured cloud. Errors are :mod:`cloudpilot.clouds.errors`, never the SDK's own."""

    name: str

    def create(self, request: LaunchRequest) -> Instance:
        """Start one instance booting ``request.user_data``; if one with this VM id exists, return it."""
        ...

    def list(self) -> list[Instance]:
        """Our instances on this cloud (tagged TAG_MANAGED), in any state but gone."""
        ...

    def destroy(self, instance_id: str) -> None:
        """Terminate the instance; an instance that no longer exists is not an error."""
        ...
