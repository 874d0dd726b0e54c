"""What the web pages show beyond the REST resources: counts per VO and per cloud, the running jobs and VMs of
the last hours, a cloud's VMs over a day, a VM with its jobs. Scoped like the API: a user sees their own jobs,
a site admin their site's clouds and VMs, an admin everything."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import Principal, Role
from cloudpilot.domain.vms import VM
from cloudpilot.services.auth import require
from cloudpilot.services.cloud_health import CloudHealth, CloudStatus, cloud_status
from cloudpilot.services.errors import Forbidden
from cloudpilot.services.jobs import JobService
from cloudpilot.services.site_control import LIVE
from cloudpilot.store.errors import NotFound
from cloudpilot.store.stats import StatsRepository
from cloudpilot.store.timeline import Changes, TimelineRepository
from cloudpilot.store.vms import VMRepository

HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class Series:
    """Sampled step functions: ``values[name][i]`` held at ``times[i]``."""

    times: list[float]
    values: dict[str, list[int]]


class DashboardService:
    def __init__(
        self,
        config: ServerConfig,
        jobs: JobService,
        vms: VMRepository,
        stats: StatsRepository,
        timeline: TimelineRepository,
        health: CloudHealth,
    ) -> None:
        self.config, self.jobs, self.vms, self.stats = config, jobs, vms, stats
        self.timeline, self.health = timeline, health

    # --- scope ------------------------------------------------------------------------------------------

    def clouds_of(self, principal: Principal) -> list[str]:
        """The clouds the caller may look at: a site admin's own site's, everyone else's all."""
        if principal.role is Role.SITE:
            return [n for n, c in self.config.clouds.items() if (c.site or n) == principal.site]
        return list(self.config.clouds)

    def _check_cloud(self, principal: Principal, cloud: str) -> None:
        require(principal, Role.SITE)
        if cloud not in self.config.clouds:
            raise NotFound(f"cloud {cloud} is not configured")
        if cloud not in self.clouds_of(principal):
            raise Forbidden(f"cloud {cloud} is not at your site {principal.site}")

    # --- views ------------------------------------------------------------------------------------------

    def jobs_by_vo(self, principal: Principal) -> dict[str, dict[str, int]]:
        """VO -> state -> jobs the caller may see (site admins see no jobs: an empty map)."""
        if principal.role is Role.SITE:
            return {}
        if principal.is_admin:
            counts: dict[str, dict[str, int]] = {}
            for (vo, state), n in self.stats.jobs_by_vo_state().items():
                counts.setdefault(vo, {})[state] = n
            return dict(sorted(counts.items()))
        assert principal.vo is not None
        return {principal.vo: {s: n for s, n in self.jobs.counts(principal).items() if n}}

    def vms_by_cloud(self, principal: Principal) -> dict[str, dict[str, int]]:
        """Cloud -> state -> VMs not destroyed, of the clouds the caller may see."""
        counts: dict[str, dict[str, int]] = {c: {} for c in self.clouds_of(principal)}
        for (cloud, state), n in self.stats.vms_by_cloud_state().items():
            if cloud in counts:
                counts[cloud][state] = n
        return counts

    def cloud_health(self, principal: Principal, now: float) -> dict[str, CloudStatus]:
        knobs = self.config.policy
        return {c: cloud_status(c, self.vms, self.health, knobs, now) for c in self.clouds_of(principal)}

    def activity(self, principal: Principal, now: float, hours: float = 6.0, points: int = 73) -> Series:
        """Running jobs (the caller's) and running VMs (the caller's clouds) over the last ``hours``."""
        since = now - hours * HOUR
        times = [since + i * (now - since) / (points - 1) for i in range(points)]
        values: dict[str, list[int]] = {}
        if principal.role is not Role.SITE:
            vo, owner = self.jobs.scope(principal)
            values["running jobs"] = _sample(self.timeline.running_jobs(since, vo, owner), times)
        clouds = None if principal.is_admin or principal.role is Role.USER else self.clouds_of(principal)
        values["running VMs"] = _sample(self.timeline.running_vms(since, clouds), times)
        return Series(times, values)

    def cloud_vms(self, principal: Principal, cloud: str, now: float, hours: float = 24.0) -> dict[str, Any]:
        """A cloud's VMs of the last ``hours`` with boot times and failures, and its health."""
        self._check_cloud(principal, cloud)
        vms = self.timeline.vms_of_cloud(cloud, now - hours * HOUR)
        boots = [vm.booted_at - vm.created_at for vm in vms if vm.booted_at is not None]
        failed = [vm for vm in vms if vm.failure_reason]
        return {
            "cloud": cloud,
            "vms": vms,
            "boot_seconds": boots,
            "failed": failed,
            "health": cloud_status(cloud, self.vms, self.health, self.config.policy, now),
        }

    def site_vms(self, principal: Principal, site: str) -> list[VM]:
        """The site's VMs that are up or on their way (the ones a site admin may drain)."""
        require(principal, Role.SITE)
        if not principal.is_admin and principal.site != site:
            raise Forbidden(f"this token administers site {principal.site}, not {site}")
        return [vm for vm in self.vms.list(states=LIVE) if (vm.site or vm.cloud) == site]

    def vm(self, principal: Principal, vm_id: str) -> tuple[VM, list[tuple[float, str | None, str, str]], list[dict]]:
        """A VM, its history and the jobs it ran (admins; site admins for their site's VMs)."""
        require(principal, Role.SITE)
        vm = self.vms.get(vm_id)
        if vm.cloud not in self.clouds_of(principal):
            raise Forbidden(f"VM {vm_id} runs at site {vm.site or vm.cloud}, not at your site {principal.site}")
        return vm, self.vms.history(vm_id), self.timeline.jobs_of_vm(vm_id)


def _sample(changes: Changes, times: Sequence[float]) -> list[int]:
    """The count at each of ``times``, walking back from the current count through the changes."""
    current, deltas = changes
    values = [0] * len(times)
    i = len(deltas) - 1
    count = current
    for k in range(len(times) - 1, -1, -1):
        while i >= 0 and deltas[i][0] > times[k]:
            count -= deltas[i][1]
            i -= 1
        values[k] = max(0, count)
    return values
