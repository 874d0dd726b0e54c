"""``/api/v1/sites``: site control (scheduled shutdowns, VOs switched on or off, cloud capacity) for a site's
admin (a ``site`` token) or an admin."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from cloudpilot.api.deps import PrincipalDep, ServicesDep
from cloudpilot.api.params import Seconds, ShutdownId
from cloudpilot.api.responses import json_response
from cloudpilot.domain.auth import Role
from cloudpilot.domain.jobs import MAX_INT32
from cloudpilot.services.auth import require
from cloudpilot.services.site_control import shutdown_json

router = APIRouter(prefix="/api/v1", tags=["sites"])


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShutdownBody(_Body):
    cloud: str | None = Field(None, description="Only this cloud's VMs; unset: every cloud of the site.")
    vm_id: str | None = Field(None, description="Only this VM.")
    deadline: Seconds | datetime | None = Field(
        None, description="UNIX seconds or ISO 8601 (UTC if no zone); default now + 24 h."
    )
    reason: str = Field("", max_length=1000)

    def deadline_seconds(self) -> float | None:
        if isinstance(self.deadline, datetime):
            moment = self.deadline if self.deadline.tzinfo else self.deadline.replace(tzinfo=UTC)
            return moment.timestamp()
        return self.deadline


class VOSwitchBody(_Body):
    enabled: bool
    reason: str = Field("", max_length=1000)


class CapacityBody(_Body):
    max_vms: int | None = Field(
        ge=0, le=MAX_INT32, description="The cloud's capacity from now on; null: back to the configuration."
    )


@router.get("/sites", summary="Sites this token may see: every site for an admin, its own for a site admin")
def list_sites(principal: PrincipalDep, services: ServicesDep) -> Response:
    require(principal, Role.SITE)
    known = services.config.known_sites()
    return json_response({"sites": known if principal.is_admin else [s for s in known if s == principal.site]})


@router.get("/sites/{site}", summary="A site: clouds, pledges, running cores per VO, disabled VOs, shutdowns")
def site_status(site: str, principal: PrincipalDep, services: ServicesDep) -> Response:
    return json_response(services.sites.status(principal, site, services.clock.now()))


@router.post("/sites/{site}/shutdowns", status_code=201, summary="Schedule the shutdown of a VM, cloud or site")
def schedule_shutdown(site: str, body: ShutdownBody, principal: PrincipalDep, services: ServicesDep) -> Response:
    now = services.clock.now()
    shutdown = services.sites.schedule_shutdown(
        principal,
        site,
        now,
        cloud=body.cloud,
        vm_id=body.vm_id,
        deadline=body.deadline_seconds(),
        reason=body.reason,
    )
    return json_response({**shutdown_json(shutdown), "vms": services.sites.affected_vms(shutdown)}, 201)


@router.delete("/sites/{site}/shutdowns/{shutdown_id}", summary="Cancel a scheduled shutdown")
def cancel_shutdown(site: str, shutdown_id: ShutdownId, principal: PrincipalDep, services: ServicesDep) -> Response:
    shutdown = services.sites.cancel_shutdown(principal, site, shutdown_id, services.clock.now())
    return json_response(shutdown_json(shutdown))


@router.put("/sites/{site}/vos/{vo}", summary="Enable or disable a VO at the site")
def set_vo(site: str, vo: str, body: VOSwitchBody, principal: PrincipalDep, services: ServicesDep) -> Response:
    services.sites.set_vo_enabled(principal, site, vo, body.enabled, body.reason, services.clock.now())
    return json_response({"site": site, "vo": vo, "enabled": body.enabled, "reason": body.reason})


@router.put("/clouds/{cloud}/capacity", summary="Change a cloud's capacity (max_vms) now")
def set_capacity(cloud: str, body: CapacityBody, principal: PrincipalDep, services: ServicesDep) -> Response:
    services.sites.set_capacity(principal, cloud, body.max_vms, services.clock.now())
    return json_response({"cloud": cloud, "max_vms": body.max_vms})
