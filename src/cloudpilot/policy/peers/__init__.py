"""Peers' published provisioning policies, each in its own module with its source cited, so the same scenarios
can run under cloudpilot's default policy and under theirs (docs/peer-policies.md).

``PEERS`` maps a name to a factory: a policy may keep state between cycles, so every run needs a fresh one.
"""

from __future__ import annotations

from collections.abc import Callable

from cloudpilot.policy.base import ProvisioningPolicy
from cloudpilot.policy.peers.cluster_autoscaler import ClusterAutoscalerPolicy
from cloudpilot.policy.peers.elastiq import ElastiqPolicy
from cloudpilot.policy.peers.vcycle import VcyclePolicy
from cloudpilot.policy.peers.vmdirac2013 import VMDirac2013Policy

PEERS: dict[str, Callable[[], ProvisioningPolicy]] = {
    "vmdirac-2013": VMDirac2013Policy,
    "vcycle": VcyclePolicy,
    "elastiq": ElastiqPolicy,
    "cluster-autoscaler": ClusterAutoscalerPolicy,
}

__all__ = ["PEERS", "ClusterAutoscalerPolicy", "ElastiqPolicy", "VMDirac2013Policy", "VcyclePolicy"]
