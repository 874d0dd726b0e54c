"""The overview: jobs by state per VO, VMs by cloud and state, clouds in trouble, running jobs and VMs lately."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from cloudpilot.domain.jobs import JobState
from cloudpilot.domain.vms import VMState
from cloudpilot.web.render import render
from cloudpilot.web.routing import PrincipalDep, ServicesDep, WebRoute

router = APIRouter(route_class=WebRoute)  # errors as pages (web/routing.py)
HOURS = 6.0


@router.get("/")
def overview(request: Request, principal: PrincipalDep, services: ServicesDep) -> Response:
    dash, now = services.dashboard, services.clock.now()
    health = dash.cloud_health(principal, now)
    troubled = {
        name: status
        for name, status in health.items()
        if status.misconfigured or (status.backoff_until is not None and status.backoff_until > now)
        or status.failures_in_row
    }  # fmt: skip
    return render(
        request,
        "overview.html",
        jobs_by_vo=dash.jobs_by_vo(principal),
        job_states=[s.value for s in JobState],
        vms_by_cloud=dash.vms_by_cloud(principal),
        vm_states=[s.value for s in VMState if not s.is_final],
        troubled=troubled,
        activity=dash.activity(principal, now, HOURS),
        hours=HOURS,
        now=now,
    )
