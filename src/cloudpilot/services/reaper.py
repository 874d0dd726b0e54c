"""The lease reaper: jobs whose pilot stopped heartbeating go back to the queue (or fail, out of attempts).

Time the server was down must not count against leases (docs/operations.md, "Outages"): a pilot that is alive
kept retrying its heartbeats and report and gets through once the server answers again. So the process that
runs the reaper first calls :meth:`LeaseReaper.resume`, which gives every active lease at least one full lease
period from then, and the reaper expires nothing during that period.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from cloudpilot.config import ServerConfig
from cloudpilot.services import metrics
from cloudpilot.store.jobs import JobRepository, Requeued

log = logging.getLogger("cloudpilot.reaper")


class LeaseReaper:
    def __init__(self, jobs: JobRepository, config: ServerConfig, on_requeue: Callable[[], None] = lambda: None):
        self.jobs = jobs
        self.config = config
        self.on_requeue = on_requeue
        self.grace_until: float | None = None  # set by resume(): no lease expires before this

    @property
    def interval(self) -> float:
        return self.config.lease.reaper_interval_seconds

    def resume(self, now: float) -> int:
        """Called once before the first tick by the process that runs the reaper (not by every API process:
        only the reaper's owner knows the server is coming back from a stop). Extends every active lease to at
        least ``now + lease.seconds`` and holds expiries back for one lease period; returns how many leases
        were extended."""
        seconds = self.config.lease.seconds
        self.grace_until = now + seconds
        held, extended = self.jobs.extend_leases(now + seconds)
        log.info(
            "reaper starting: %d active leases, %d extended to at least %.0f s from now "
            "(time the server was down does not count against leases)",
            held,
            extended,
            seconds,
        )
        return extended

    def tick(self, now: float) -> list[Requeued]:
        if self.grace_until is not None and now < self.grace_until:
            return []  # pilots that lived through an outage are still retrying their way back
        handled: list[Requeued] = []
        while True:
            batch = self.jobs.expire_leases(now, half_life=self.config.fair_share.half_life_seconds)
            handled.extend(batch)
            if len(batch) < 500:
                break
        metrics.LEASE_EXPIRIES.inc(len(handled))
        for r in handled:
            log.info("job %d %s: %s", r.job_id, r.new_state.value, r.reason, extra={"job_id": r.job_id})
        metrics.count_requeues(handled, "lease_expired")
        if handled:
            self.on_requeue()
        return handled
