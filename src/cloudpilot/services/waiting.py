"""Why jobs wait, for users and operators: the provisioner's latest explanation of a job's task queue
(:mod:`cloudpilot.policy.explain`), the image reasons (docs/images.md), and waiting jobs grouped by reason.
Also the warnings a submission gets when no configured cloud could ever run it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import Principal
from cloudpilot.domain.jobs import Job, JobSpec, JobState
from cloudpilot.domain.provisioning import CloudView, WorkClass
from cloudpilot.policy.explain import why_unsuited
from cloudpilot.services.images import ImageService
from cloudpilot.services.jobs import JobService
from cloudpilot.store.waiting import WaitingReasonRepository


class WaitingService:
    def __init__(
        self, config: ServerConfig, jobs: JobService, reasons: WaitingReasonRepository, images: ImageService
    ) -> None:
        self.config, self.jobs, self.reasons, self.images = config, jobs, reasons, images

    def why(self, job: Job, now: float) -> dict[str, Any] | None:
        """Why a waiting job waits: ``{summary, clouds, pilots, explained_at}``; None if it does not wait or no
        provisioning cycle has looked at it yet."""
        if job.state is not JobState.WAITING:
            return None
        stored = self.reasons.for_job(job.id)
        image_reason = self.images.why_blocked(job, now)
        if stored is None and image_reason is None:
            return None
        details = stored.details if stored is not None else {"clouds": {}, "pilots": None}
        summary = image_reason or (stored.summary if stored is not None else "")
        return {**details, "summary": summary, "explained_at": stored.explained_at if stored else None}

    def grouped(self, principal: Principal) -> list[dict[str, Any]]:
        """The caller's waiting jobs (an admin's: everyone's) by reason, most jobs first."""
        vo, owner = self.jobs.scope(principal)
        groups: dict[str, dict[str, Any]] = {}
        for stored, count, first_id in self.reasons.grouped(vo, owner):
            summary = stored.summary if stored is not None else "not explained yet (waiting for a provisioning cycle)"
            group = groups.setdefault(summary, {"reason": summary, "jobs": 0, "example_job_id": first_id})
            group["jobs"] += count
            group["example_job_id"] = min(group["example_job_id"], first_id)
        return sorted(groups.values(), key=lambda g: (-g["jobs"], g["reason"]))

    def submission_warnings(self, specs: Sequence[JobSpec], vo: str, now: float) -> list[str]:
        """A warning per distinct requirement that no configured cloud can ever run (it is accepted all the same:
        a pilot may come that offers it)."""
        if not self.config.clouds:
            return []
        catalog = self.images.catalog()
        clouds = [
            _static_view(name, c, self.images.view_fields(name, self.images.cloud_images(name, catalog, now)))
            for name, c in self.config.clouds.items()
        ]
        warnings: dict[WorkClass, str] = {}
        for spec in specs:
            req = spec.requirements
            wall = req.wall_seconds or self.config.jobs.default_wall_seconds
            wc = WorkClass.of_requirements(vo, req, wall)
            if wc in warnings:
                continue
            reasons = [(c.name, why_unsuited(c, wc)) for c in clouds]
            if all(why is not None for _, why in reasons):
                listed = "; ".join(f"{name}: {why}" for name, why in reasons)
                warnings[wc] = f"{spec.name}: no configured cloud can run it ({listed}); it waits for a pilot"
        return list(warnings.values())


def _static_view(name: str, c: Any, image_fields: dict[str, Any]) -> CloudView:
    """What a cloud could run, from its configuration and the images it may boot (no VMs, no limits)."""
    return CloudView(
        name=name, flavors=c.flavor_list(), max_vms=c.max_vms, site=c.site, tags=frozenset(c.tags), **image_fields
    )
