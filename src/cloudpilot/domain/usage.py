"""Recent usage decays with a half-life (HTCondor's accounting model)."""

import math


def decayed(core_seconds: float, updated_at: float, now: float, half_life: float) -> float:
    """``core_seconds`` recorded at ``updated_at``, as worth at ``now``; no decay if ``half_life`` <= 0."""
    if core_seconds <= 0:
        return 0.0
    if half_life <= 0:
        return core_seconds
    return core_seconds * math.pow(0.5, max(0.0, now - updated_at) / half_life)
