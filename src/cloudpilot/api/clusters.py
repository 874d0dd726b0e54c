"""``/api/v1/clusters``: clusters of services (users see their own, admins all) and their agents' reports.

Tearing down, scaling and starting happen in the provisioning cycle (:mod:`cloudpilot.services.clusters`); these
calls only record what is wanted, so they answer at once.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from cloudpilot.api.deps import PrincipalDep, ServicesDep
from cloudpilot.api.params import ClusterId
from cloudpilot.api.responses import error_body, json_response
from cloudpilot.domain.clusters import ClusterDefinition, InstanceReport
from cloudpilot.domain.vms import VMState
from cloudpilot.services.clusters import ClusterView, NotYet
from cloudpilot.services.errors import BadInput

router = APIRouter(prefix="/api/v1", tags=["clusters"])


class ScaleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instances: int = Field(ge=0, le=10_000)


class ReadyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: str = Field(max_length=64)
    port: int = Field(ge=1, le=65535)
    hostname: str = Field("", max_length=255)


def cluster_json(view: ClusterView) -> dict[str, Any]:
    """A cluster as the API shows it: its services in start order, each with its live instances."""
    cluster = view.cluster
    definition = cluster.definition
    services = []
    for name in cluster.order():
        spec, status = definition.services[name], cluster.services[name]
        instances = []
        for vm in view.vms:
            if vm.cluster_service != name or vm.state is VMState.DESTROYED:
                continue
            instance = view.instances.get(vm.id)
            report = instance.report if instance else None
            instances.append(
                {
                    "vm_id": vm.id,
                    "state": vm.state.value,
                    "ready": instance is not None and instance.ready_at is not None,
                    "ready_at": instance.ready_at if instance else None,
                    "address": report.address if report else None,
                    "port": report.port if report else None,
                    "endpoint": report.endpoint if report else None,
                    "hostname": report.hostname if report else None,
                    "cloud": vm.cloud,
                    "flavor": vm.flavor,
                    "created_at": vm.created_at,
                    "booted_at": vm.booted_at,
                    "failure_reason": vm.failure_reason,
                }
            )
        services.append(
            {
                "name": name,
                "cloud": definition.cloud_of(name),
                "min": spec.min,
                "max": spec.upper,
                "desired": status.desired,
                "depends_on": spec.depends_on,
                "ready": view.service_ready(name),
                "note": status.note,
                "instances": instances,
            }
        )
    return {
        "id": cluster.id,
        "name": cluster.name,
        "vo": cluster.vo,
        "owner": cluster.owner,
        "state": cluster.state.value,
        "created_at": cluster.created_at,
        "updated_at": cluster.updated_at,
        "vms_destroyed": sum(vm.state is VMState.DESTROYED for vm in view.vms),
        "services": services,
        "definition": definition.model_dump(mode="json", exclude_none=True),
    }


@router.post("/clusters", status_code=201, summary="Instantiate a cluster definition (user or admin)")
def create_cluster(definition: ClusterDefinition, principal: PrincipalDep, services: ServicesDep) -> Response:
    now = services.clock.now()
    cluster = services.clusters.create(principal, definition, now)
    services.new_work()  # wakes the provisioning cycle, which starts the first services
    return json_response(cluster_json(services.clusters.view(cluster)), 201)


@router.get("/clusters", summary="The caller's clusters (an admin's: all), oldest first")
def list_clusters(principal: PrincipalDep, services: ServicesDep) -> Response:
    return json_response({"clusters": [cluster_json(v) for v in services.clusters.list(principal)]})


@router.get("/clusters/{cluster_id}", summary="A cluster: each service's instances and their states")
def get_cluster(cluster_id: ClusterId, principal: PrincipalDep, services: ServicesDep) -> Response:
    return json_response(cluster_json(services.clusters.get(principal, cluster_id)))


@router.patch("/clusters/{cluster_id}/services/{service}", summary="Scale a service within its min and max")
def scale_service(
    cluster_id: ClusterId, service: str, body: ScaleBody, principal: PrincipalDep, services: ServicesDep
) -> Response:
    view = services.clusters.scale(principal, cluster_id, service, body.instances, services.clock.now())
    services.new_work()
    return json_response(cluster_json(view))


@router.delete("/clusters/{cluster_id}", summary="Tear a cluster down, in reverse start order")
def delete_cluster(cluster_id: ClusterId, principal: PrincipalDep, services: ServicesDep) -> Response:
    view = services.clusters.delete(principal, cluster_id, services.clock.now())
    services.new_work()
    return json_response(cluster_json(view), 202)


@router.post("/clusters/{cluster_id}/instances/{vm_id}/ready", summary="A cluster VM's agent reports in")
def instance_ready(
    cluster_id: ClusterId, vm_id: str, body: ReadyBody, principal: PrincipalDep, services: ServicesDep
) -> Response:
    try:
        report = InstanceReport(body.address, body.port, body.hostname)
    except ValueError as exc:
        raise BadInput(f"address: {exc}", "address") from None
    try:
        instance = services.clusters.report_ready(principal, cluster_id, vm_id, report, services.clock.now())
    except NotYet as exc:
        return _not_yet(exc)
    services.new_work()  # services waiting for this one may start now
    return json_response({"vm_id": instance.vm_id, "ready": instance.ready_at is not None})


@router.post("/clusters/{cluster_id}/instances/{vm_id}/heartbeat", summary="A cluster VM's agent is alive")
def instance_heartbeat(cluster_id: ClusterId, vm_id: str, principal: PrincipalDep, services: ServicesDep) -> Response:
    try:
        services.clusters.heartbeat(principal, cluster_id, vm_id, services.clock.now())
    except NotYet as exc:
        return _not_yet(exc)
    return Response(status_code=204)


def _not_yet(exc: NotYet) -> Response:
    response = json_response(error_body("not_yet", str(exc)), 503)
    response.headers["Retry-After"] = "1"
    return response
