"""``/api/v1/vms`` and ``/api/v1/clouds``: what runs where (admins), and stopping a VM."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Response

from cloudpilot.api.deps import PrincipalDep, ServicesDep
from cloudpilot.api.responses import json_response
from cloudpilot.domain.auth import Role
from cloudpilot.domain.images import iso
from cloudpilot.domain.vms import VM, VMState
from cloudpilot.services.auth import require
from cloudpilot.services.cloud_health import CloudStatus, cloud_status

router = APIRouter(prefix="/api/v1", tags=["vms"])


def vm_json(vm: VM) -> dict[str, Any]:
    return {**asdict(vm), "state": vm.state.value}


def health_json(status: CloudStatus) -> dict[str, Any]:
    """A cloud's health for ``/clouds``; times in ISO 8601 (UTC)."""

    def when(at: float | None) -> str | None:
        return None if at is None else iso(at)

    return {
        "backoff_until": when(status.backoff_until),
        "failures_in_row": status.failures_in_row,
        "last_error": status.last_error,
        "last_error_at": when(status.last_error_at),
        "last_boot_at": when(status.last_boot_at),
        "median_boot_seconds": status.median_boot_seconds,
        "misconfigured": status.misconfigured,
    }


@router.get("/vms", summary="VMs, newest last (admin; a site admin sees its site's)")
def list_vms(principal: PrincipalDep, services: ServicesDep, state: VMState | None = None) -> Response:
    require(principal, Role.SITE)
    vms = services.vms.list(states=None if state is None else {state})
    if not principal.is_admin:
        vms = [vm for vm in vms if (vm.site or vm.cloud) == principal.site]
    return json_response({"vms": [vm_json(vm) for vm in vms]})


@router.get("/vms/{vm_id}", summary="One VM with its history (admin)")
def get_vm(vm_id: str, principal: PrincipalDep, services: ServicesDep) -> Response:
    require(principal, Role.ADMIN)
    history = [
        {"at": at, "from_state": old, "to_state": new, "reason": reason}
        for at, old, new, reason in services.vms.history(vm_id)
    ]
    return json_response({**vm_json(services.vms.get(vm_id)), "history": history})


@router.post("/vms/{vm_id}/stop", summary="Stop a VM: it is halted and destroyed by the next cycle (admin)")
def stop_vm(vm_id: str, principal: PrincipalDep, services: ServicesDep) -> Response:
    require(principal, Role.ADMIN)
    vm = services.vms.move(
        vm_id,
        VMState.HALTED,
        services.clock.now(),
        f"stopped by {principal.name}",
        shutdown_message=f"stopped by {principal.name}",
    )
    return json_response(vm_json(vm))


@router.get("/clouds", summary="Configured clouds with their VMs per state")
def list_clouds(principal: PrincipalDep, services: ServicesDep) -> Response:
    require(principal, Role.ADMIN, Role.USER, Role.SITE)
    counts: dict[str, Counter[str]] = {name: Counter() for name in services.config.clouds}
    for vm in services.vms.list(states={s for s in VMState if not s.is_final}):
        counts.setdefault(vm.cloud, Counter())[vm.state.value] += 1
    clouds = []
    overrides, now = services.sites.sites.capacity_overrides(), services.clock.now()
    catalog = services.images.catalog()
    health = services.provisioner.health
    for name, settings in services.config.clouds.items():
        images = services.images.cloud_images(name, catalog, now)
        status = cloud_status(name, services.vms, health, services.config.policy, now)
        clouds.append(
            {
                "name": name,
                "driver": settings.driver,
                "flavors": {f: {"cores": v.cores, "memory_mb": v.memory_mb} for f, v in settings.flavors.items()},
                "max_vms": overrides.get(name, settings.max_vms_at(now)),
                "price_per_core_hour": settings.price_per_core_hour,
                "site": settings.site,
                "mode": settings.mode,
                "preemptible": settings.preemptible,
                "vms": dict(counts[name]),
                # docs/images.md: endorsed images it may boot now (identifier -> its image id) and those refused
                "images": {
                    "endorsed_only": images.enforced,
                    "bootable": {i: images.mapping[i] for i in sorted(images.bootable)},
                    "refused": dict(sorted(images.refused.items())),
                },
                **health_json(status),
            }
        )
    return json_response({"clouds": clouds})
