"""How soon a woken provisioning cycle may run: a token bucket, shared by the server's loop and the simulator.

New work wakes the cycle so that a job does not wait for the next interval. A flood of submissions must not run
it back to back, though, so woken cycles are paced: on average at most one per ``pace_seconds``. A bucket of
``burst`` tokens, refilled at that pace, lets a wake that follows a quiet moment act at once — the lone job
submitted just after a cycle (after a server start, say) no longer waits out the pace — while a steady stream
of wakes still gets one cycle per ``pace_seconds``. Times are any monotonic clock, in seconds.
"""

from __future__ import annotations

PACE_SECONDS = 0.5  # woken cycles run at most twice a second on average
BURST = 2  # ... and two at once after a quiet second


class WakeBudget:
    def __init__(self, now: float, pace_seconds: float = PACE_SECONDS, burst: int = BURST) -> None:
        if pace_seconds <= 0 or burst < 1:
            raise ValueError("pace_seconds must be positive and burst at least 1")
        self.pace = pace_seconds
        self.burst = float(burst)
        self._tokens = self.burst
        self._at = now

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._at) / self.pace)
        self._at = max(self._at, now)

    def spend(self, now: float) -> None:
        """A cycle ran at ``now`` (woken or not: every cycle counts against the pace)."""
        self._refill(now)
        self._tokens = max(0.0, self._tokens - 1.0)

    def delay(self, now: float) -> float:
        """Seconds a cycle woken at ``now`` waits before it runs: 0 while a token is left."""
        self._refill(now)
        return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) * self.pace
