"""Rank the task queues a pilot's offer may take work from, best first.

Ranking is split so the matcher can cache the costly part. Which task queues a slot's *place* admits (VO,
image, tags, site: set tests over every task queue) changes only when the set of task queues does, so
:func:`place_groups` is cached per (tags, site, VO, image). The order of the owners' groups by fair share and
the *size* tests (cores, memory, wall time: a few comparisons) run on every match, lazily, in :func:`order`,
which stops at the first task queue the matcher can take a job from.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass

from cloudpilot.domain.matching import Offer, TaskQueue, fits_place, fits_size
from cloudpilot.policy.fairshare import ShareState


@dataclass(frozen=True, slots=True)
class OwnerGroup:
    """Task queues of one owner, in the owner's own priority order (then oldest first)."""

    vo: str
    owner: str
    task_queues: tuple[TaskQueue, ...]


def place_groups(
    task_queues: Iterable[TaskQueue],
    tags: Collection[str],
    site: str | None,
    vos: Collection[str] | None = None,
    image: str | None = None,
) -> tuple[OwnerGroup, ...]:
    """Task queues of ``vos`` (``None``: any VO) whose image, tags and sites admit a slot at ``site`` with
    ``tags``, running ``image``."""
    tag_set = frozenset(tags)
    by_owner: dict[tuple[str, str], list[TaskQueue]] = {}
    for tq in task_queues:
        if (vos is None or tq.vo in vos) and fits_place(tq, tag_set, site, image):
            by_owner.setdefault((tq.vo, tq.owner), []).append(tq)
    return tuple(
        OwnerGroup(vo, owner, tuple(sorted(tqs, key=lambda t: (-t.priority, t.id))))
        for (vo, owner), tqs in by_owner.items()
    )


def order(groups: Iterable[OwnerGroup], shares: ShareState, offer: Offer) -> Iterator[TaskQueue]:
    """Task queues that fit ``offer``, best first: the VO furthest below its share, then the user with least
    recent usage, then the user's own priority. Ties between owners go by name, so the order is deterministic.
    """
    ranked = sorted(groups, key=lambda g: (shares.vo_key(g.vo), shares.user_key(g.vo, g.owner), g.vo, g.owner))
    for group in ranked:
        for tq in group.task_queues:
            if fits_size(tq, offer):
                yield tq


def rank(
    offer: Offer, task_queues: Iterable[TaskQueue], shares: ShareState, vos: Collection[str] | None = None
) -> list[TaskQueue]:
    """All eligible task queues for ``offer``, best first."""
    return list(order(place_groups(task_queues, offer.tags, offer.site, vos, offer.image), shares, offer))
