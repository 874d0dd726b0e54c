"""Clusters: each cluster's services with their instances, readiness and bounds; forms to scale a service within
its bounds and to delete a cluster (recorded now, carried out by the provisioning cycle)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from cloudpilot.api.clusters import cluster_json
from cloudpilot.api.params import ClusterId
from cloudpilot.services.errors import BadInput
from cloudpilot.web.render import render
from cloudpilot.web.routing import FormDep, PrincipalDep, ServicesDep, WebRoute

router = APIRouter(route_class=WebRoute)  # errors as pages (web/routing.py)


@router.get("/clusters")
def clusters(request: Request, principal: PrincipalDep, services: ServicesDep) -> Response:
    views = [cluster_json(v) for v in services.clusters.list(principal)]
    return render(request, "clusters.html", clusters=views)


@router.post("/clusters/{cluster_id}/services/{service}/scale")
def scale(
    cluster_id: ClusterId, service: str, principal: PrincipalDep, services: ServicesDep, form: FormDep
) -> Response:
    text = form.get("instances", "").strip()
    if not text.isdigit() or int(text) > 10_000:
        raise BadInput(f"instances: {text!r} is not a number of instances (0 to 10000)", "instances")
    services.clusters.scale(principal, cluster_id, service, int(text), services.clock.now())
    services.new_work()  # wakes the provisioning cycle, which starts or stops instances
    return RedirectResponse("/ui/clusters", 303)


@router.post("/clusters/{cluster_id}/delete")
def delete(cluster_id: ClusterId, principal: PrincipalDep, services: ServicesDep, _form: FormDep) -> Response:
    services.clusters.delete(principal, cluster_id, services.clock.now())
    services.new_work()
    return RedirectResponse("/ui/clusters", 303)
