"""The counts the metrics scrape reads, on SQLite and PostgreSQL."""

from __future__ import annotations

from cloudpilot.domain.jobs import JobSpec
from cloudpilot.domain.vms import VM, VMState
from cloudpilot.store.database import Database
from cloudpilot.store.jobs import JobRepository
from cloudpilot.store.pilots import PilotRecord, PilotRepository
from cloudpilot.store.stats import StatsRepository
from cloudpilot.store.vms import VMRepository

NOW = 1_800_000_000.0


def _pilot(pilot_id: str, vo: str | None, vm_id: str | None, seen: float, state: str = "active") -> PilotRecord:
    return PilotRecord(pilot_id, "t", vo, None, None, None, 1, None, seen, seen, state, None, None, vm_id)


def test_jobs_vms_and_active_pilots_are_counted(db: Database) -> None:
    jobs, vms, pilots = JobRepository(db), VMRepository(db), PilotRepository(db)
    spec = JobSpec(executable="/bin/true")
    jobs.submit("atlas", "alice", [spec] * 3, NOW, 3600)
    jobs.submit("atlas", "bob", [spec] * 2, NOW, 3600)
    (lhcb_job,) = jobs.submit("lhcb", "carol", [spec], NOW, 3600)
    jobs.kill(lhcb_job, NOW, "test")

    for vm_id, cloud, state in [("v1", "a", VMState.RUNNING), ("v2", "a", VMState.BOOTING), ("v3", "b", None)]:
        vms.create(VM(vm_id, cloud, "atlas", "f", 1, 1024, VMState.REQUESTED, NOW, NOW), "work")
        vms.move(vm_id, VMState.BOOTING, NOW, "created")
        if state is VMState.RUNNING:
            vms.move(vm_id, VMState.RUNNING, NOW, "up", booted_at=NOW)
        elif state is None:  # failed and destroyed: no longer counted
            vms.move(vm_id, VMState.FAILED, NOW, "boot timeout", failure_reason="boot timeout")
            vms.move(vm_id, VMState.DESTROYED, NOW, "destroyed", terminated_at=NOW)

    pilots.register(_pilot("in-v1", "atlas", "v1", NOW))
    pilots.register(_pilot("in-v3", "atlas", "v3", NOW))  # its VM is gone
    pilots.register(_pilot("halted", "atlas", "v2", NOW, state="halted"))
    pilots.register(_pilot("by-hand", None, None, NOW))  # asked for work lately
    pilots.register(_pilot("silent", "lhcb", None, NOW - 3600))  # silent for an hour, holding nothing
    pilots.register(_pilot("busy", "lhcb", None, NOW - 3600))  # silent as long, but holding a job
    jobs.submit("lhcb", "carol", [spec], NOW, 3600)
    (lhcb_queue,) = [tq.id for tq in jobs.waiting_task_queues() if tq.vo == "lhcb"]
    assert jobs.claim(lhcb_queue, "busy", NOW, 600) is not None

    stats = StatsRepository(db)
    assert stats.jobs_by_vo_state() == {("atlas", "waiting"): 5, ("lhcb", "killed"): 1, ("lhcb", "matched"): 1}
    assert stats.vms_by_cloud_state() == {("a", "running"): 1, ("a", "booting"): 1}
    assert stats.active_pilots_by_vo(seen_since=NOW - 180) == {"atlas": 1, None: 1, "lhcb": 1}
