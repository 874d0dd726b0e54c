"""Why waiting work waits: the provisioning decision in words, per work class. Pure: no I/O, no clock.

The reasons come from the same :func:`cloudpilot.policy.provisioning.plan` call as the decision (each cloud's
"blocked" note is written where ``decide`` gives up on it) plus :func:`why_unsuited` for the clouds that
``suits`` left out, so an explanation cannot disagree with what the provisioner does. Hand-started pilots,
which no cloud starts, get a reason of their own from what they offered lately.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cloudpilot.domain.provisioning import (
    CloudView,
    PilotView,
    ProvisioningKnobs,
    ProvisioningSnapshot,
    WorkClass,
)
from cloudpilot.policy.budget import image_for, jobs_per_vm
from cloudpilot.policy.provisioning import ClassOutcome, plan

PILOT_WINDOW_SECONDS = 600.0  # hand-started pilots count when seen in the last 10 min


@dataclass(frozen=True)
class WaitReason:
    """Why a class of waiting jobs waits: one line, then a reason per cloud and one for hand-started pilots."""

    summary: str
    clouds: dict[str, str] = field(default_factory=dict)
    pilots: str | None = None  # None: a recent hand-started pilot offered enough for it

    def as_json(self) -> dict[str, object]:
        return {"summary": self.summary, "clouds": self.clouds, "pilots": self.pilots}


def explain(
    snapshot: ProvisioningSnapshot,
    knobs: ProvisioningKnobs,
    now: float,
    outcomes: list[ClassOutcome] | None = None,
) -> list[WaitReason | None]:
    """A reason per entry of ``snapshot.work`` (None for a class with no waiting job). ``outcomes``: those of
    the :func:`plan` the caller already made from this snapshot (the provisioner's), so it is not made twice."""
    if outcomes is None:
        outcomes = plan(snapshot, knobs, now).outcomes
    return [
        _reason(wc, outcome, snapshot, now) if wc.waiting > 0 else None
        for wc, outcome in zip(snapshot.work, outcomes, strict=True)
    ]


def why_unsuited(cloud: CloudView, wc: WorkClass) -> str | None:
    """Why VMs of this cloud can never run the class's jobs, checked in the order ``suits`` checks; None when
    it suits them."""
    if wc.vo in cloud.disabled_vos:
        return f"VO {wc.vo} disabled at {cloud.site or cloud.name}"
    if cloud.vos is not None and wc.vo not in cloud.vos:
        return f"runs no VMs for VO {wc.vo}"
    if image_for(cloud, wc) is None:
        missing = sorted(wc.tags - _offered_tags(cloud))
        if missing:
            return f"offers no tag {', '.join(missing)}"
        if wc.image is not None:
            return f"may not boot image {wc.image}"
        return f"has no endorsed image for VO {wc.vo} with the tags it needs"
    if cloud.site in wc.sites_deny:
        return f"site {cloud.site} is excluded by the job"
    if wc.sites_allow and cloud.site not in wc.sites_allow:
        return f"site {cloud.site or 'none'} is not among the job's sites ({', '.join(sorted(wc.sites_allow))})"
    if not any(jobs_per_vm(f, wc) > 0 for f in cloud.flavors):
        return _no_flavor(wc, [cloud], "")
    return None


def why_pilots_wait(wc: WorkClass, pilots: tuple[PilotView, ...], now: float) -> str | None:
    """Why no hand-started pilot takes the class's jobs; None if one seen lately offered enough."""
    recent = [p for p in pilots if now - p.last_seen_at <= PILOT_WINDOW_SECONDS and p.vo in (None, wc.vo)]
    minutes = f"in the last {PILOT_WINDOW_SECONDS / 60:g} min"
    if not recent:
        return f"no pilot of VO {wc.vo} asked for work {minutes}"
    big = [p for p in recent if p.cores >= wc.cores]
    if not big:
        return f"no pilot offered {wc.cores} cores {minutes} (largest {max(p.cores for p in recent)})"
    if wc.memory_mb is not None and not any(p.memory_mb is None or p.memory_mb >= wc.memory_mb for p in big):
        return f"no pilot offered {wc.memory_mb} MB with {wc.cores} cores {minutes}"
    placed = [p for p in big if p.site is None or _site_admits(wc, p.site)]
    if not placed:
        return f"no pilot at an admitted site offered {wc.cores} cores {minutes}"
    return None


def _reason(wc: WorkClass, outcome: ClassOutcome, snapshot: ProvisioningSnapshot, now: float) -> WaitReason:
    clouds: dict[str, str] = {}
    for cloud in snapshot.clouds:
        unsuited = why_unsuited(cloud, wc)
        if unsuited is not None:
            clouds[cloud.name] = unsuited
        elif cloud.name in outcome.blocked:
            clouds[cloud.name] = outcome.blocked[cloud.name]
        elif outcome.started.get(cloud.name):
            clouds[cloud.name] = f"{outcome.started[cloud.name]} of its jobs go to VMs starting or booting here"
        elif outcome.slots.get(cloud.name):
            clouds[cloud.name] = f"{outcome.slots[cloud.name]} of its jobs fit free cores of VMs here"
    pilots = why_pilots_wait(wc, snapshot.pilots, now)
    return WaitReason(_summary(wc, outcome, snapshot, clouds, pilots), clouds, pilots)


def _summary(
    wc: WorkClass, outcome: ClassOutcome, snapshot: ProvisioningSnapshot, clouds: dict[str, str], pilots: str | None
) -> str:
    """The one line: what serves the class, or the first thing that stands in its way."""
    served = {**outcome.slots}
    for name, n in outcome.started.items():
        served[name] = served.get(name, 0) + n
    if outcome.left <= 0 and served:
        where = ", ".join(sorted(served))
        return f"waiting for a pilot: VMs on {where} will take it"
    if not snapshot.clouds:
        return "no clouds configured: " + (pilots or "a pilot seen lately offers enough for it")
    unsuited = [c for c in snapshot.clouds if why_unsuited(c, wc) is not None]
    if len(unsuited) == len(snapshot.clouds):
        summary = _nowhere(wc, snapshot.clouds) or "no cloud can run it: " + "; ".join(
            f"{name}: {why}" for name, why in clouds.items()
        )
    else:
        blocked = [(name, why) for name, why in clouds.items() if name in outcome.blocked]
        if blocked:
            name, why = blocked[0]
            summary = why if len(snapshot.clouds) == 1 else f"{name}: {why}"
        else:  # partly placed: the rest waits for those VMs to take it in turn
            summary = f"waiting for a pilot: VMs on {', '.join(sorted(served)) or 'its clouds'} will take it"
    if pilots is None:
        summary += "; a pilot seen lately offers enough for it"
    return summary


def _nowhere(wc: WorkClass, clouds: tuple[CloudView, ...]) -> str | None:
    """A reason that holds on every cloud at once, said once."""
    offered = set().union(*(_offered_tags(c) for c in clouds))
    missing = sorted(wc.tags - offered)
    if missing:
        return f"tag {', '.join(missing)} offered by no cloud"
    if not any(jobs_per_vm(f, wc) > 0 for c in clouds for f in c.flavors):
        return _no_flavor(wc, list(clouds), " on any cloud")
    if all(wc.vo in c.disabled_vos for c in clouds):
        return f"VO {wc.vo} disabled at every site"
    return None


def _no_flavor(wc: WorkClass, clouds: list[CloudView], where: str) -> str:
    flavors = [f for c in clouds for f in c.flavors]
    largest = max((f.cores for f in flavors), default=0)
    if largest < wc.cores:
        return f"no flavor{where} with {wc.cores} cores (largest {largest})"
    big = max((f.memory_mb for f in flavors if f.cores >= wc.cores), default=0)
    return f"no flavor{where} with {wc.memory_mb} MB for {wc.cores} cores (largest {big} MB)"


def _offered_tags(cloud: CloudView) -> frozenset[str]:
    """Tags a VM of the cloud may offer: the cloud's own and those of any image it may boot."""
    return cloud.tags.union(*cloud.images.values()) if cloud.images else cloud.tags


def _site_admits(wc: WorkClass, site: str) -> bool:
    return site not in wc.sites_deny and (not wc.sites_allow or site in wc.sites_allow)
