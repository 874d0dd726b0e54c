"""The lease reaper: jobs whose pilot stopped heartbeating go back to the queue (or fail, out of attempts)."""

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

    @property
    def interval(self) -> float:
        return self.config.lease.reaper_interval_seconds

    def tick(self, now: float) -> list[Requeued]:
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
