"""Hand a pilot the best job for its offer.

The matcher ranks a cached snapshot of the non-empty task queues (a few hundred classes, not the million
jobs in them) with the pure :func:`cloudpilot.policy.matching.rank`, then claims the oldest job of the best
class in one atomic UPDATE. A class found empty is dropped from the snapshot until the next refresh.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from cloudpilot.config import ServerConfig
from cloudpilot.domain.jobs import Job
from cloudpilot.domain.matching import Offer, TaskQueue
from cloudpilot.policy.fairshare import ShareState, UsageRecord, build_share_state
from cloudpilot.policy.matching import rank
from cloudpilot.store.jobs import JobRepository


@dataclass
class _Snapshot:
    taken_at: float
    task_queues: dict[int, TaskQueue]
    shares: ShareState


class MatchService:
    def __init__(self, jobs: JobRepository, config: ServerConfig) -> None:
        self.jobs = jobs
        self.config = config
        self._snapshot: _Snapshot | None = None
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()

    def invalidate(self) -> None:
        """New work arrived: the next match reads a fresh snapshot."""
        with self._lock:
            self._snapshot = None

    def match(self, pilot_id: str, offer: Offer, vo: str | None, now: float) -> Job | None:
        """Lease one job to ``pilot_id``, or ``None``. ``vo`` limits the pilot to one VO's jobs."""
        snapshot = self._current(now)
        with self._lock:
            candidates = rank(offer, list(snapshot.task_queues.values()), snapshot.shares, None if vo is None else {vo})
        for tq in candidates:
            job = self.jobs.claim(tq.id, pilot_id, now, self.config.lease.seconds)
            if job is not None:
                self._charge(snapshot, job)
                return job
            with self._lock:
                snapshot.task_queues.pop(tq.id, None)
        return None

    def _charge(self, snapshot: _Snapshot, job: Job) -> None:
        """Count the job's cores at once, so a burst of matches spreads over VOs and users as shares say."""
        weight = job.cores * self.config.fair_share.half_life_seconds
        with self._lock:
            user = dict(snapshot.shares.user_usage)
            vos = dict(snapshot.shares.vo_usage)
            user[(job.vo, job.owner)] = user.get((job.vo, job.owner), 0.0) + weight
            vos[job.vo] = vos.get(job.vo, 0.0) + weight
            s = snapshot.shares
            snapshot.shares = ShareState(vos, user, s.vo_shares, s.default_share)

    def _current(self, now: float) -> _Snapshot:
        with self._lock:
            snap = self._snapshot
        if snap is not None and now - snap.taken_at < self.config.matcher.snapshot_seconds:
            return snap
        # One thread refreshes; the others keep using the previous snapshot meanwhile, if there is one.
        if not self._refreshing.acquire(blocking=snap is None):
            return snap  # type: ignore[return-value]
        try:
            fresh = self._load(now)
            with self._lock:
                self._snapshot = fresh
            return fresh
        finally:
            self._refreshing.release()

    def _load(self, now: float) -> _Snapshot:
        task_queues = {tq.id: tq for tq in self.jobs.waiting_task_queues()}
        running = self.jobs.running_cores()
        recorded = self.jobs.usage()
        records = {
            key: UsageRecord(
                core_seconds=recorded.get(key, (0.0, now))[0],
                updated_at=recorded.get(key, (0.0, now))[1],
                running_cores=running.get(key, 0),
            )
            for key in set(running) | set(recorded)
        }
        shares = build_share_state(
            records,
            self.config.vo_shares(),
            now,
            self.config.fair_share.half_life_seconds,
            self.config.default_vo_share,
        )
        return _Snapshot(taken_at=now, task_queues=task_queues, shares=shares)
