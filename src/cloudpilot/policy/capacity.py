"""Capacity shrink: a cloud whose capacity (``max_vms`` at ``now``: schedule or override applied) fell below
its live VMs drains the excess. Pure."""

from __future__ import annotations

from cloudpilot.domain.provisioning import CloudView, DrainVM
from cloudpilot.policy.budget import drain_order, drainable, is_live


def capacity_drains(clouds: tuple[CloudView, ...], gone: set[str]) -> list[DrainVM]:
    """``DrainVM`` for the VMs beyond each cloud's ``max_vms``: idle ones first, then the youngest. VMs already
    leaving (draining, halted, …, or stopped in this decision: ``gone``) are not counted, so a drain is asked
    once and the next cycles see the cloud within its capacity."""
    drains: list[DrainVM] = []
    for cloud in clouds:
        live = [vm for vm in cloud.vms if is_live(vm, gone)]
        excess = len(live) - max(0, cloud.max_vms)
        if excess <= 0:
            continue
        reason = f"capacity of cloud {cloud.name} is {max(0, cloud.max_vms)} VM(s), {len(live)} alive"
        victims = sorted((vm for vm in live if drainable(vm, gone)), key=drain_order)[:excess]
        drains.extend(DrainVM(vm.id, reason) for vm in victims)
    return drains
