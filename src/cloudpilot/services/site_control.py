"""What a site admin may do: schedule and cancel shutdowns, switch VOs on or off, change a cloud's capacity;
and what the site looks like now. A site token acts on its own site only; an admin on every site."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import Principal, Role
from cloudpilot.domain.times import iso
from cloudpilot.domain.vms import VM, VMState
from cloudpilot.services.auth import require
from cloudpilot.services.errors import BadInput, Forbidden
from cloudpilot.services.site_policy import SitePolicy
from cloudpilot.store.errors import NotFound
from cloudpilot.store.sites import ScheduledShutdown, SiteRepository, VOSwitch
from cloudpilot.store.vms import VMRepository

DEFAULT_NOTICE_SECONDS = 24 * 3600.0
LIVE = {VMState.REQUESTED, VMState.BOOTING, VMState.RUNNING, VMState.DRAINING}


@dataclass
class SiteControl:
    config: ServerConfig
    sites: SiteRepository
    vms: VMRepository
    policy: SitePolicy

    def schedule_shutdown(
        self,
        principal: Principal,
        site: str,
        now: float,
        *,
        cloud: str | None = None,
        vm_id: str | None = None,
        deadline: float | None = None,
        reason: str = "",
    ) -> ScheduledShutdown:
        self._check_site(principal, site)
        clouds = self._clouds_of(site)
        if cloud is not None:
            self._check_cloud(principal, site, cloud)
        if vm_id is not None:
            try:
                vm = self.vms.get(vm_id)
            except NotFound as exc:
                raise NotFound(f"VM {vm_id} does not exist") from exc
            if (vm.site or vm.cloud) != site:
                raise Forbidden(f"VM {vm_id} runs at site {vm.site or vm.cloud}, not at {site}")
            if cloud is not None and vm.cloud != cloud:
                raise BadInput(f"VM {vm_id} runs on cloud {vm.cloud}, not on {cloud}", "vm_id")
            if vm.state not in LIVE:
                raise BadInput(f"VM {vm_id} is {vm.state.value}: there is nothing to shut down", "vm_id")
            cloud = vm.cloud
        grace = max((self.config.clouds[c].grace_secs for c in ([cloud] if cloud else clouds)), default=0)
        if deadline is None:
            deadline = now + max(DEFAULT_NOTICE_SECONDS, grace)
        elif deadline <= now:
            raise BadInput(f"the deadline {iso(deadline)} is in the past (now is {iso(now)})", "deadline")
        elif deadline < now + grace:
            raise BadInput(
                f"the deadline must leave VMs at least their grace_secs ({grace} s) of notice: not before "
                f"{iso(now + grace)}",
                "deadline",
            )
        shutdown = self.sites.add_shutdown(
            ScheduledShutdown(0, site, cloud, vm_id, deadline, reason[:1000], now, principal.name)
        )
        self.policy.invalidate()
        return shutdown

    def cancel_shutdown(self, principal: Principal, site: str, shutdown_id: int, now: float) -> ScheduledShutdown:
        self._check_site(principal, site)
        if self.sites.get_shutdown(shutdown_id).site != site:
            raise NotFound(f"shutdown {shutdown_id} of site {site} does not exist")
        return self.sites.cancel_shutdown(shutdown_id, now)

    def set_vo_enabled(self, principal: Principal, site: str, vo: str, enabled: bool, reason: str, now: float) -> None:
        self._check_site(principal, site)
        self.sites.set_vo_switch(VOSwitch(site, vo, enabled, reason[:1000], now, principal.name))
        self.policy.invalidate()

    def set_capacity(self, principal: Principal, cloud: str, max_vms: int | None, now: float) -> None:
        settings = self.config.clouds.get(cloud)
        if settings is None:
            raise NotFound(f"cloud {cloud} is not configured")
        self._check_site(principal, settings.site or cloud)
        if max_vms is not None and max_vms < 0:
            raise BadInput("max_vms must be 0 or more", "max_vms")
        self.sites.set_capacity(cloud, max_vms, now, principal.name)

    def status(self, principal: Principal, site: str, now: float) -> dict[str, Any]:
        self._check_site(principal, site)
        clouds = self._clouds_of(site)
        site_config = self.config.site_config(site)
        running = {vo: n for (s, vo), n in self.sites.running_cores().items() if s == site}
        switches = {vo: sw for (s, vo), sw in self.sites.vo_switches().items() if s == site}
        disabled = {vo for vo in site_config.disabled_vos if vo not in switches}
        disabled |= {vo for vo, sw in switches.items() if not sw.enabled}
        overrides = self.sites.capacity_overrides()
        live = [vm for vm in self.vms.list(states=LIVE) if vm.cloud in clouds]
        return {
            "site": site,
            "clouds": [
                {
                    "name": c,
                    "max_vms": overrides.get(c, self.config.clouds[c].max_vms_at(now)),
                    "vms": sum(1 for vm in live if vm.cloud == c),
                    "mode": self.config.clouds[c].mode,
                    "preemptible": self.config.clouds[c].preemptible,
                }
                for c in clouds
            ],
            "pledges": {vo: p.model_dump() for vo, p in site_config.pledges.items()},
            "running_cores": running,
            "disabled_vos": sorted(disabled),
            "shutdowns": [
                {**shutdown_json(s), "vms": self.affected_vms(s, live)}
                for s in self.sites.active_shutdowns(site)
                if s.vm_id is None or self.affected_vms(s, live)  # a VM's own shutdown ends with the VM
            ],
        }

    def affected_vms(self, shutdown: ScheduledShutdown, live: list[VM] | None = None) -> list[str]:
        if live is None:
            live = self.vms.list(states=LIVE)
        return [vm.id for vm in live if shutdown.covers(vm.site or vm.cloud, vm.cloud, vm.id)]

    # --- checks -----------------------------------------------------------------------------------------

    def _check_site(self, principal: Principal, site: str) -> None:
        require(principal, Role.SITE)
        if site not in self.config.known_sites():
            raise NotFound(f"site {site} is not configured (known: {', '.join(self.config.known_sites()) or 'none'})")
        if not principal.is_admin and principal.site != site:
            raise Forbidden(f"this token administers site {principal.site}, not {site}")

    def _check_cloud(self, principal: Principal, site: str, cloud: str) -> None:
        settings = self.config.clouds.get(cloud)
        if settings is None:
            raise NotFound(f"cloud {cloud} is not configured")
        if settings.site != site:
            raise Forbidden(f"cloud {cloud} belongs to site {settings.site}, not to {site}")

    def _clouds_of(self, site: str) -> list[str]:
        return [name for name, c in self.config.clouds.items() if c.site == site]


def shutdown_json(s: ScheduledShutdown) -> dict[str, Any]:
    return {
        "id": s.id,
        "site": s.site,
        "cloud": s.cloud,
        "vm_id": s.vm_id,
        "deadline": s.deadline,
        "reason": s.reason,
        "created_at": s.created_at,
        "created_by": s.created_by,
        "cancelled_at": s.cancelled_at,
    }
