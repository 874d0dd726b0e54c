"""Fair share between VOs (configured shares) and between the users of a VO (equal shares).

Usage is HTCondor-style "recent usage": finished core-seconds decay with a half-life, and each core in use
now counts as one half-life of usage, so shares react at once to what runs and still remember what ran.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from cloudpilot.domain.usage import decayed


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """Accumulated core-seconds as of ``updated_at``, and cores held now by matched or running jobs."""

    core_seconds: float = 0.0
    updated_at: float = 0.0
    running_cores: int = 0


def effective_usage(rec: UsageRecord, now: float, half_life: float) -> float:
    return decayed(rec.core_seconds, rec.updated_at, now, half_life) + rec.running_cores * half_life


@dataclass(frozen=True, slots=True)
class ShareState:
    """Everything the ranking needs to order VOs and users; built once per snapshot."""

    vo_usage: Mapping[str, float] = field(default_factory=dict)
    user_usage: Mapping[tuple[str, str], float] = field(default_factory=dict)
    vo_shares: Mapping[str, float] = field(default_factory=dict)
    default_share: float = 1.0

    def vo_key(self, vo: str) -> float:
        """Usage per unit of share: the VO furthest below its share comes first."""
        share = self.vo_shares.get(vo, self.default_share)
        usage = self.vo_usage.get(vo, 0.0)
        return usage / share if share > 0 else math.inf

    def user_key(self, vo: str, owner: str) -> float:
        return self.user_usage.get((vo, owner), 0.0)


def build_share_state(
    usage: Mapping[tuple[str, str], UsageRecord],
    vo_shares: Mapping[str, float],
    now: float,
    half_life: float,
    default_share: float = 1.0,
) -> ShareState:
    user_usage = {key: effective_usage(rec, now, half_life) for key, rec in usage.items()}
    vo_usage: dict[str, float] = {}
    for (vo, _owner), value in user_usage.items():
        vo_usage[vo] = vo_usage.get(vo, 0.0) + value
    return ShareState(vo_usage, user_usage, dict(vo_shares), default_share)
