"""What a pilot offers and what the task queue groups jobs by."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from cloudpilot.domain.jobs import Requirements


class Offer(BaseModel):
    """A pilot's free resources when it asks for work."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cores: int = Field(1, ge=1)
    memory_mb: int | None = Field(None, ge=1, description="Free memory; unset means not limited.")
    seconds_left: int | None = Field(None, ge=0, description="Wall seconds the slot can still give; unset: no limit.")
    tags: tuple[str, ...] = ()
    site: str | None = None
    cloud: str | None = None
    image: str | None = Field(None, description="The endorsed image the slot's VM runs (docs/images.md).")


@dataclass(frozen=True, slots=True)
class TaskQueue:
    """A class of waiting jobs that share an owner and identical requirements (DIRAC's task queue).

    The matcher ranks these few hundred classes instead of the millions of jobs in them.
    """

    id: int
    vo: str
    owner: str
    priority: int
    cores: int
    memory_mb: int | None
    wall_seconds: int
    tags: frozenset[str]
    sites_allow: frozenset[str]
    sites_deny: frozenset[str]
    image: str | None = None  # the endorsed image the jobs must run on


def task_queue_key(vo: str, owner: str, priority: int, req: Requirements, wall_seconds: int) -> str:
    """A stable digest of everything that makes two jobs interchangeable for the matcher."""
    doc = {
        "vo": vo,
        "owner": owner,
        "priority": priority,
        "cores": req.cores,
        "memory_mb": req.memory_mb,
        "wall_seconds": wall_seconds,
        "tags": sorted(req.tags),
        "allow": sorted(req.sites.allow),
        "deny": sorted(req.sites.deny),
    }
    if req.image is not None:  # only then: the keys of classes without an image stay what they were
        doc["image"] = req.image
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


def fits_place(
    tq: TaskQueue, tags: frozenset[str] | tuple[str, ...], site: str | None, image: str | None = None
) -> bool:
    """The set-based half of the fit: the slot runs the image the jobs need, if any, has every tag they need,
    and its site is admitted."""
    if tq.image is not None and tq.image != image:
        return False
    if tq.tags and not tq.tags.issubset(tags):
        return False
    if site is not None and site in tq.sites_deny:
        return False
    return not tq.sites_allow or site in tq.sites_allow


def fits_size(tq: TaskQueue, offer: Offer) -> bool:
    """The numeric half of the fit: cores, memory and wall time."""
    if tq.cores > offer.cores:
        return False
    if tq.memory_mb is not None and offer.memory_mb is not None and tq.memory_mb > offer.memory_mb:
        return False
    return offer.seconds_left is None or tq.wall_seconds <= offer.seconds_left


def fits(tq: TaskQueue, offer: Offer) -> bool:
    """Whether every job of ``tq`` may run in the slot ``offer`` describes."""
    return fits_size(tq, offer) and fits_place(tq, offer.tags, offer.site, offer.image)
