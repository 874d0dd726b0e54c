"""A provisioning policy as the provisioner and the simulator use it: something that, given what the clouds
and the queue look like now, says which VMs to start, drain and stop.

cloudpilot's own policy is the pure function :func:`cloudpilot.policy.provisioning.decide`;
:class:`DefaultPolicy` is it with its knobs. Peers' published policies (``cloudpilot.policy.peers``) may keep
state between cycles (how long a queue has stayed long, since when a VM is unneeded), so a policy is an object.
"""

from __future__ import annotations

from typing import Protocol

from cloudpilot.domain.provisioning import Action, ProvisioningKnobs, ProvisioningSnapshot
from cloudpilot.policy import provisioning


class ProvisioningPolicy(Protocol):
    name: str

    def decide(self, snapshot: ProvisioningSnapshot, now: float) -> list[Action]:
        """The actions for this cycle; ``now`` is the (real or simulated) time of the snapshot."""
        ...


class DefaultPolicy:
    """cloudpilot's own policy (docs/provisioning.md): the server's provisioner and the simulator both run it."""

    name = "cloudpilot"

    def __init__(self, knobs: ProvisioningKnobs | None = None) -> None:
        self.knobs = knobs or ProvisioningKnobs()

    def decide(self, snapshot: ProvisioningSnapshot, now: float) -> list[Action]:
        # Looked up at call time, so that the server and the simulator always run the module's current decide.
        return provisioning.decide(snapshot, self.knobs, now)
