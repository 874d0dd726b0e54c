"""The server's matcher (``services/matcher.py``) over the simulator's queue.

Which job a pilot gets is decided by the real :mod:`cloudpilot.policy.matching` (``place_groups``, ``order``) with
the real fair share (:func:`cloudpilot.policy.fairshare.build_share_state`), exactly as the server uses them: the
share state is reread every ``snapshot_seconds`` (the server's cached snapshot) and each match is charged to it at
once (one half-life per core, ``MatchService._charge``); the pilot gets the oldest job of the first task queue in
that order that still has one. Groups per place (tags, site, VO) are cached as the server caches them.

The functions are looked up on their modules at every call, so a test that patches them changes the simulator too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import cast

from cloudpilot.domain.matching import Offer, TaskQueue
from cloudpilot.policy import fairshare, matching
from cloudpilot.policy.fairshare import ShareState, UsageRecord
from cloudpilot.policy.matching import OwnerGroup
from cloudpilot.sim.workload import JobClass

PlaceKey = tuple[tuple[str, ...], str | None, str]


class SimMatcher:
    def __init__(
        self,
        classes: Iterable[JobClass],
        vo_shares: Mapping[str, float],
        default_share: float,
        snapshot_seconds: float,
        half_life_seconds: float,
    ) -> None:
        self.by_id = {c.tq.id: c for c in classes}
        self.vo_shares = dict(vo_shares)
        self.default_share = default_share
        self.snapshot_seconds = snapshot_seconds
        self.half_life = half_life_seconds
        # Classes that are exhausted (nothing waits, nothing more comes) are left out of the groups: the server
        # skips empty task queues too, and scanning hundreds of them per match would cost without changing a result.
        self._live: dict[int, TaskQueue] = {c.tq.id: c.tq for c in self.by_id.values()}
        self._groups: dict[PlaceKey, tuple[OwnerGroup, ...]] = {}
        # (vo, owner) -> [core_seconds, updated_at, cores held]; every class of the owner holds the same list.
        self._usage: dict[tuple[str, str], list[float]] = {}
        for c in self.by_id.values():
            c.usage = self._usage.setdefault((c.tq.vo, c.tq.owner), [0.0, 0.0, 0])
        self.shares = ShareState(vo_shares=self.vo_shares, default_share=default_share)
        self._users: dict[tuple[str, str], float] = {}
        self._vos: dict[str, float] = {}
        self._taken_at = -float("inf")
        self.matches = 0

    def match(self, offer: Offer, vo: str, now: float) -> JobClass | None:
        """The class whose oldest job the pilot of ``vo`` gets for ``offer``, charged to the shares; or None."""
        if now - self._taken_at >= self.snapshot_seconds:
            self._refresh(now)
        key = (offer.tags, offer.site, vo)
        groups = self._groups.get(key)
        if groups is None:
            groups = matching.place_groups(self._live.values(), offer.tags, offer.site, (vo,))
            self._groups[key] = groups
        by_id = self.by_id
        for tq in matching.order(groups, self.shares, offer):
            cls = by_id[tq.id]
            if cls.arrived > cls.taken or cls.requeued:
                # The server counts a match's cores at once, so a burst of matches spreads over VOs and users.
                weight = tq.cores * self.half_life
                user = (tq.vo, tq.owner)
                self._users[user] = self._users.get(user, 0.0) + weight
                self._vos[tq.vo] = self._vos.get(tq.vo, 0.0) + weight
                self.matches += 1
                return cls
        return None

    def exhausted(self, cls: JobClass) -> None:
        if self._live.pop(cls.tq.id, None) is not None:
            self._groups.clear()

    def revived(self, cls: JobClass) -> None:
        if cls.tq.id not in self._live:
            self._live = {tq_id: c.tq for tq_id, c in self.by_id.items() if tq_id in self._live or tq_id == cls.tq.id}
            self._groups.clear()

    # --- usage (the store's recent usage: decayed core-seconds of ended attempts, cores held now) -------------

    def started(self, cls: JobClass) -> None:
        cls.usage[2] += cls.tq.cores

    def ended(self, cls: JobClass, started_at: float, now: float) -> None:
        rec = cls.usage
        rec[0] = fairshare.decayed(rec[0], rec[1], now, self.half_life) + cls.tq.cores * (now - started_at)
        rec[1] = now
        rec[2] -= cls.tq.cores

    def _refresh(self, now: float) -> None:
        records = {
            key: UsageRecord(core_seconds=cs, updated_at=at, running_cores=int(cores))
            for key, (cs, at, cores) in self._usage.items()
        }
        self.shares = fairshare.build_share_state(records, self.vo_shares, now, self.half_life, self.default_share)
        # Charged in place (the server replaces the state by a charged copy: the same values).
        self._users = cast(dict[tuple[str, str], float], self.shares.user_usage)
        self._vos = cast(dict[str, float], self.shares.vo_usage)
        self._taken_at = now
