"""A VM's first record (``requested``), as the provisioner and the cluster keeper both write it."""

from __future__ import annotations

import secrets
from typing import Any

from cloudpilot.config.clouds import LibcloudCloudConfig, LocalCloudConfig
from cloudpilot.domain.vms import VM, VMState
from cloudpilot.store.sites import SiteRepository


def cloud_shutdown_deadline(
    sites: SiteRepository, cloud: str, settings: LocalCloudConfig | LibcloudCloudConfig
) -> float | None:
    """The deadline of a cloud- or site-wide shutdown in force on the cloud, if any: a VM started now knows it
    from the start."""
    deadlines = [s.deadline for s in sites.active_shutdowns(settings.site) if s.closes(settings.site, cloud)]
    return min(deadlines, default=None)


def requested_vm(
    cloud: str,
    settings: LocalCloudConfig | LibcloudCloudConfig,
    vo: str,
    flavor_name: str,
    image: str | None,
    deadline: float | None,
    now: float,
    **extra: Any,
) -> VM:
    flavor = settings.flavors[flavor_name]
    return VM(
        f"vm-{secrets.token_hex(6)}",
        cloud,
        vo,
        flavor_name,
        flavor.cores,
        flavor.memory_mb,
        VMState.REQUESTED,
        now,
        now,
        expires_at=now + settings.max_lifetime_seconds,
        site=settings.site,
        image=image,
        hs06=flavor.cores * settings.hs06_per_core,
        shutdown_deadline=deadline,
        **extra,
    )
