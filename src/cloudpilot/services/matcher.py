"""Hand a pilot the best job for its offer.

The matcher ranks a cached snapshot of the non-empty task queues (a few hundred classes, not the million
jobs in them) with the pure :func:`cloudpilot.policy.matching.rank`, then claims the oldest job of the best
class in one atomic statement (store/claim.py), which tries the next classes in rank order when the best is
empty. A class found empty is dropped from the snapshot until the next refresh.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import islice

from cloudpilot.config import ServerConfig
from cloudpilot.domain.jobs import Job
from cloudpilot.domain.matching import Offer, TaskQueue
from cloudpilot.policy.fairshare import ShareState, UsageRecord, build_share_state
from cloudpilot.policy.matching import OwnerGroup, order, place_groups
from cloudpilot.services import metrics
from cloudpilot.store.jobs import JobRepository


@dataclass
class _Snapshot:
    taken_at: float
    task_queues: dict[int, TaskQueue]
    shares: ShareState
    # (tags, site, VO, image) -> groups; kept across refreshes until a new task queue appears.
    by_place: dict[tuple[tuple[str, ...], str | None, str | None, str | None], tuple[OwnerGroup, ...]] = field(
        default_factory=dict
    )
    empty: set[int] = field(default_factory=set)  # task queues found empty since the snapshot was taken

    def groups_for(self, offer: Offer, vo: str | None) -> tuple[OwnerGroup, ...]:
        key = (offer.tags, offer.site, vo, offer.image)
        groups = self.by_place.get(key)
        if groups is None:
            if len(self.by_place) > MAX_CACHED_PLACES:
                self.by_place.clear()
            vos = None if vo is None else (vo,)
            groups = place_groups(self.task_queues.values(), offer.tags, offer.site, vos, offer.image)
            self.by_place[key] = groups
        return groups


@dataclass
class _FairShareInputs:
    """The cores each (VO, owner) holds and their recorded usage, as read at ``read_at``; the cores of this
    process's matches since then are added as they happen."""

    read_at: float
    running: dict[tuple[str, str], int]
    recorded: dict[tuple[str, str], tuple[float, float]]


MAX_CACHED_PLACES = 20_000
CLAIM_CANDIDATES = 8  # task queues tried per claim statement


class MatchService:
    def __init__(self, jobs: JobRepository, config: ServerConfig) -> None:
        self.jobs = jobs
        self.config = config
        self._snapshot: _Snapshot | None = None
        self._inputs: _FairShareInputs | None = None
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()

    def invalidate(self) -> None:
        """New work arrived: the next match reads a fresh snapshot."""
        with self._lock:
            self._snapshot = None

    def add_work(self, arrived: Iterable[TaskQueue]) -> None:
        """Jobs were submitted (in this process) into the ``arrived`` task queues: the snapshot learns them
        without a reload. It is replaced by an updated copy, so that a background refresh that read the
        database before the submission does not install itself over it (see :meth:`_refresh`)."""
        with self._lock:
            snap = self._snapshot
            if snap is None:  # the next match loads one anyway
                return
            arrived = list(arrived)
            new = {tq.id: tq for tq in arrived if tq.id not in snap.task_queues}
            self._snapshot = _Snapshot(
                taken_at=snap.taken_at,
                task_queues={**snap.task_queues, **new} if new else snap.task_queues,
                shares=snap.shares,
                by_place={} if new else snap.by_place,  # a new class may belong to any place
                empty=snap.empty - {tq.id for tq in arrived},
            )

    def match(self, pilot_id: str, offer: Offer, vo: str | None, now: float) -> Job | None:
        """Lease one job to ``pilot_id``, or ``None``. ``vo`` limits the pilot to one VO's jobs."""
        started = time.perf_counter()
        job = self._match(pilot_id, offer, vo, now)
        metrics.observe_match(job.vo if job is not None else None, time.perf_counter() - started)
        return job

    def _match(self, pilot_id: str, offer: Offer, vo: str | None, now: float) -> Job | None:
        snapshot = self._current(now)
        with self._lock:
            groups = snapshot.groups_for(offer, vo)
            shares = snapshot.shares
        ranked = (tq.id for tq in order(groups, shares, offer) if tq.id not in snapshot.empty)
        # Candidates go to the store a few at a time, best first: one statement claims from the first that
        # has a waiting job, so a class found empty costs no round trip of its own.
        while batch := list(islice(ranked, CLAIM_CANDIDATES)):
            job, empty = self.jobs.claim_first(batch, pilot_id, now, self.config.lease.seconds)
            if empty:
                with self._lock:
                    snapshot.empty.update(batch[:empty])
            if job is not None:
                self._charge(snapshot, job)
                return job
        return None

    def waiting_task_queues(self, now: float) -> list[TaskQueue]:
        """The task queues with waiting jobs, as the current snapshot has them (no query of its own)."""
        snapshot = self._current(now)
        with self._lock:
            return [tq for tq_id, tq in snapshot.task_queues.items() if tq_id not in snapshot.empty]

    def _fair_share_inputs(
        self, now: float
    ) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], tuple[float, float]]]:
        """Cores held and recorded usage per (VO, owner), re-read every ``matcher.usage_seconds``, not at every
        snapshot: counting the cores of every matched or running job scans them all (tens of thousands in a
        busy queue), and usage decays with a half-life of hours. Between reads, jobs that end elsewhere are not
        seen; this process's own matches are (:meth:`_charge`)."""
        with self._lock:
            inputs = self._inputs
        fresh = None
        if inputs is None or now - inputs.read_at >= self.config.matcher.usage_seconds:
            fresh = _FairShareInputs(now, self.jobs.running_cores(), self.jobs.usage())  # read outside the lock
        with self._lock:
            if fresh is not None:
                self._inputs = inputs = fresh
            assert inputs is not None
            return dict(inputs.running), inputs.recorded

    def _charge(self, snapshot: _Snapshot, job: Job) -> None:
        """Count the job's cores at once, so a burst of matches spreads over VOs and users as shares say."""
        weight = job.cores * self.config.fair_share.half_life_seconds
        with self._lock:
            if self._inputs is not None:  # and in the snapshots built before the next read
                key = (job.vo, job.owner)
                self._inputs.running[key] = self._inputs.running.get(key, 0) + job.cores
            user = dict(snapshot.shares.user_usage)
            vos = dict(snapshot.shares.vo_usage)
            user[(job.vo, job.owner)] = user.get((job.vo, job.owner), 0.0) + weight
            vos[job.vo] = vos.get(job.vo, 0.0) + weight
            s = snapshot.shares
            snapshot.shares = ShareState(vos, user, s.vo_shares, s.default_share)

    def _current(self, now: float) -> _Snapshot:
        """The snapshot to rank with. After new work it is reloaded before answering; when it is merely old,
        the reload runs in the background and matches go on with the old one meanwhile (its empty classes are
        skipped, and a class it lacks waits at most one more refresh)."""
        with self._lock:
            snap = self._snapshot
        if snap is None:
            with self._refreshing:
                with self._lock:
                    if self._snapshot is not None:
                        return self._snapshot
                return self._refresh(now, None)
        if now - snap.taken_at >= self.config.matcher.snapshot_seconds and self._refreshing.acquire(blocking=False):
            threading.Thread(target=self._refresh_in_background, args=(now, snap), daemon=True).start()
        return snap

    def _refresh_in_background(self, now: float, previous: _Snapshot) -> None:
        try:
            self._refresh(now, previous)
        finally:
            self._refreshing.release()

    def _refresh(self, now: float, previous: _Snapshot | None) -> _Snapshot:
        fresh = self._load(now)
        if previous is not None and fresh.task_queues.keys() <= previous.task_queues.keys():
            # No new class: what each place admits is unchanged, minus the classes that emptied.
            fresh.by_place = previous.by_place
            fresh.empty = set(previous.task_queues.keys() - fresh.task_queues.keys())
        with self._lock:
            # An invalidation (new work) that came in meanwhile wins: the next match reloads again.
            if self._snapshot is previous:
                self._snapshot = fresh
        return fresh

    def _load(self, now: float) -> _Snapshot:
        task_queues = {tq.id: tq for tq in self.jobs.waiting_task_queues()}
        running, recorded = self._fair_share_inputs(now)
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
