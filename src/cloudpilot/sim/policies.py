"""Which provisioning policies the simulator can run: cloudpilot's own, and its peers' published ones.

The peers live in :mod:`cloudpilot.policy.peers` (``PEERS``: name -> factory); it is imported when needed, so the
simulator works without it (then only cloudpilot's policy is available).
"""

from __future__ import annotations

from collections.abc import Callable

from cloudpilot.domain.provisioning import ProvisioningKnobs
from cloudpilot.policy.base import DefaultPolicy, ProvisioningPolicy

DEFAULT = "cloudpilot"
_DEFAULT_ALIASES = frozenset({DEFAULT, "default"})


class UnknownPolicy(ValueError):
    pass


def peers() -> dict[str, Callable[[], ProvisioningPolicy]]:
    try:
        from cloudpilot.policy.peers import PEERS
    except ModuleNotFoundError as exc:
        if exc.name in ("cloudpilot.policy.peers", "cloudpilot.policy"):
            return {}
        raise
    return dict(PEERS)


def names() -> list[str]:
    """Every policy ``--compare`` runs: cloudpilot's first, then the peers by name."""
    return [DEFAULT, *sorted(peers())]


def make_policy(name: str, knobs: ProvisioningKnobs) -> ProvisioningPolicy:
    """A fresh policy object (peers keep state between cycles, so every run gets its own)."""
    if name in _DEFAULT_ALIASES:
        return DefaultPolicy(knobs)
    factories = peers()
    if name not in factories:
        known = ", ".join(names())
        raise UnknownPolicy(f"unknown policy {name!r} (known: {known})")
    return factories[name]()
