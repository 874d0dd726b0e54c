"""``/mjf/{vm_id}/machine/{key}`` and ``/mjf/{vm_id}/job/{key}``: Machine/Job Features over HTTP.

As HEPiX serves them inside a site: no token (a payload reads them with curl); the VM id in the path is the
VM's own random name, and the values are not secret. ``.../machine/`` lists the keys.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response

from cloudpilot.api.deps import ServicesDep
from cloudpilot.domain.features import job_slot_features, machine_features
from cloudpilot.store.errors import NotFound

router = APIRouter(prefix="/mjf", tags=["machine/job features"])

Kind = Literal["machine", "job"]


def _features(services: ServicesDep, vm_id: str, kind: Kind) -> dict[str, str]:
    vm = services.vms.get(vm_id)
    settings = services.config.clouds.get(vm.cloud)
    grace = settings.grace_secs if settings else 600
    hs06_per_core = settings.hs06_per_core if settings else 10.0
    build = machine_features if kind == "machine" else job_slot_features
    return build(vm, grace, hs06_per_core)


@router.get("/{vm_id}/{kind}/", summary="The keys a VM's machine or job features hold, one per line")
def list_keys(vm_id: str, kind: Kind, services: ServicesDep) -> Response:
    return Response("".join(f"{k}\n" for k in _features(services, vm_id, kind)), media_type="text/plain")


@router.get("/{vm_id}/{kind}/{key}", summary="One Machine/Job Features value")
def get_key(vm_id: str, kind: Kind, key: str, services: ServicesDep) -> Response:
    values = _features(services, vm_id, kind)
    if key not in values:
        raise NotFound(f"{kind} features of VM {vm_id} have no {key}")
    return Response(values[key], media_type="text/plain")
