"""Machine/Job Features (HEPiX, HSF-TN-2016-02) of a VM: one value per key, as the server serves them.

``shutdowntime`` is present only when a shutdown is scheduled (the key is optional: "no shutdown foreseen");
the VM's maximum lifetime is its job slot's limit (``wall_limit_secs``, ``shutdowntime_job``).
"""

from __future__ import annotations

from cloudpilot.domain.vms import VM

MACHINE_KEYS = ("total_cpu", "hs06", "shutdowntime", "grace_secs")
JOB_KEYS = (
    "allocated_cpu",
    "hs06_job",
    "jobstart_secs",
    "job_id",
    "wall_limit_secs",
    "cpu_limit_secs",
    "max_rss_bytes",
    "shutdowntime_job",
    "grace_secs_job",
)


def machine_features(vm: VM, grace_secs: int, hs06_per_core: float) -> dict[str, str]:
    values = {
        "total_cpu": vm.cores,
        "hs06": _hs06(vm, hs06_per_core),
        "shutdowntime": None if vm.shutdown_deadline is None else int(vm.shutdown_deadline),
        "grace_secs": grace_secs,
    }
    return {k: str(v) for k, v in values.items() if v is not None}


def job_slot_features(vm: VM, grace_secs: int, hs06_per_core: float) -> dict[str, str]:
    """The VM as one job slot (the pilot gives each payload its own, narrower, job features)."""
    start = vm.booted_at or vm.created_at
    wall = None if vm.expires_at is None else max(0, int(vm.expires_at - start))
    ends = [t for t in (vm.expires_at, vm.shutdown_deadline) if t is not None]
    values = {
        "allocated_cpu": vm.cores,
        "hs06_job": _hs06(vm, hs06_per_core),
        "jobstart_secs": int(start),
        "job_id": vm.id,
        "wall_limit_secs": wall,
        "cpu_limit_secs": None if wall is None else wall * vm.cores,
        "max_rss_bytes": vm.memory_mb * 1024 * 1024,
        "shutdowntime_job": int(min(ends)) if ends else None,
        "grace_secs_job": grace_secs,
    }
    return {k: str(v) for k, v in values.items() if v is not None}


def _hs06(vm: VM, hs06_per_core: float) -> float:
    return round(vm.hs06 if vm.hs06 is not None else vm.cores * hs06_per_core, 2)
