"""The ids a log line carries for the JSON log format (``log.info(..., extra=vm_ids(vm))``; docs/operations.md)."""

from __future__ import annotations

from cloudpilot.domain.vms import VM


def vm_ids(vm: VM) -> dict[str, str]:
    """A line about a VM: its id, cloud and VO."""
    return {"vm_id": vm.id, "cloud": vm.cloud, "vo": vm.vo}
