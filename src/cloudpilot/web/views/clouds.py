"""Clouds and VMs: each cloud's health and VMs; a cloud's VMs of the last 24 h; a VM with its history and jobs."""

from __future__ import annotations

import statistics

from fastapi import APIRouter, Request, Response

from cloudpilot.domain.vms import VMState
from cloudpilot.web.render import render
from cloudpilot.web.routing import PrincipalDep, ServicesDep, WebRoute

router = APIRouter(route_class=WebRoute)  # errors as pages (web/routing.py)


@router.get("/clouds")
def clouds(request: Request, principal: PrincipalDep, services: ServicesDep) -> Response:
    dash, now = services.dashboard, services.clock.now()
    return render(
        request,
        "clouds.html",
        health=dash.cloud_health(principal, now),
        vms_by_cloud=dash.vms_by_cloud(principal),
        vm_states=[s.value for s in VMState if not s.is_final],
        config=services.config.clouds,
        now=now,
    )


@router.get("/clouds/{cloud}")
def cloud_page(cloud: str, request: Request, principal: PrincipalDep, services: ServicesDep) -> Response:
    now = services.clock.now()
    view = services.dashboard.cloud_vms(principal, cloud, now)
    boots = view["boot_seconds"]
    return render(
        request,
        "cloud.html",
        view=view,
        median_boot=statistics.median(boots) if boots else None,
        max_boot=max(boots) if boots else None,
        now=now,
    )


@router.get("/vms/{vm_id}")
def vm_page(vm_id: str, request: Request, principal: PrincipalDep, services: ServicesDep) -> Response:
    vm, history, jobs = services.dashboard.vm(principal, vm_id)
    return render(request, "vm.html", vm=vm, history=history, jobs=jobs)
