"""Rank the task queues a pilot's offer may take work from, best first."""

from __future__ import annotations

from collections.abc import Collection, Iterable

from cloudpilot.domain.matching import Offer, TaskQueue, fits
from cloudpilot.policy.fairshare import ShareState


def eligible(offer: Offer, task_queues: Iterable[TaskQueue], vos: Collection[str] | None) -> list[TaskQueue]:
    """Task queues whose jobs fit the offer and belong to one of ``vos`` (``None``: any VO)."""
    return [tq for tq in task_queues if (vos is None or tq.vo in vos) and fits(tq, offer)]


def rank(
    offer: Offer, task_queues: Iterable[TaskQueue], shares: ShareState, vos: Collection[str] | None = None
) -> list[TaskQueue]:
    """Order eligible task queues: VO fair share, then user fair share, then the user's own priority.

    Ties go to the older task queue (lower id), so the order is deterministic.
    """
    return sorted(
        eligible(offer, task_queues, vos),
        key=lambda tq: (shares.vo_key(tq.vo), shares.user_key(tq.vo, tq.owner), -tq.priority, tq.id),
    )
