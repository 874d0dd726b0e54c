"""VM records on SQLite and PostgreSQL: transitions checked, history kept, back-off inputs derived."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from cloudpilot.domain.errors import IllegalTransition
from cloudpilot.domain.jobs import JobSpec
from cloudpilot.domain.vms import VM, VMState
from cloudpilot.store.database import Database
from cloudpilot.store.jobs import JobRepository
from cloudpilot.store.migrations import LATEST, upgrade
from cloudpilot.store.vms import Failure, VMRepository

NOW = 1_800_000_000.0


def new_vm(vm_id: str, cloud: str = "c1", at: float = NOW) -> VM:
    return VM(vm_id, cloud, "lhcb", "small", 1, 2048, VMState.REQUESTED, at, at)


def test_vm_lifecycle_is_checked_and_recorded(db: Database) -> None:
    repo = VMRepository(db)
    repo.create(new_vm("v1"), "2 lhcb jobs waiting")
    repo.move("v1", VMState.BOOTING, NOW + 1, "instance i-1 created", instance_id="i-1")
    with pytest.raises(IllegalTransition, match="'booting' to 'destroyed'"):
        repo.move("v1", VMState.DESTROYED, NOW + 2, "skip")
    repo.move("v1", VMState.RUNNING, NOW + 3, "pilot registered", booted_at=NOW + 3)
    repo.move("v1", VMState.HALTED, NOW + 4, "300 No more work", shutdown_code=300)
    vm = repo.move("v1", VMState.DESTROYED, NOW + 5, "destroyed", terminated_at=NOW + 5)
    assert (vm.state, vm.instance_id, vm.shutdown_code, vm.terminated_at) == (VMState.DESTROYED, "i-1", 300, NOW + 5)
    assert [h[2] for h in repo.history("v1")] == ["requested", "booting", "running", "halted", "destroyed"]
    assert [v.id for v in repo.list({VMState.DESTROYED})] == ["v1"]


def test_boot_failures_in_a_row_reset_by_a_boot(db: Database) -> None:
    repo = VMRepository(db)
    for i, (booted, failed) in enumerate([(True, False), (False, True), (False, False), (False, True)]):
        at = NOW + i
        repo.create(new_vm(f"v{i}", at=at), "work")
        repo.move(f"v{i}", VMState.BOOTING, at, "created")
        if booted:
            repo.move(f"v{i}", VMState.RUNNING, at, "up", booted_at=at)
        target = VMState.FAILED if failed else VMState.HALTED
        repo.move(f"v{i}", target, at + 10, "end", failure_reason="boot timeout" if failed else None)
    assert repo.boot_failures_in_row("c1") == (2, NOW + 13)
    assert repo.boot_failures_in_row("other") == (0, None)
    assert repo.starts_since("c1", NOW + 2) == 2


def fail_to_boot(repo: VMRepository, vm_id: str, requested: float, failed: float, reason: str) -> None:
    repo.create(new_vm(vm_id, at=requested), "work")
    repo.move(vm_id, VMState.BOOTING, requested, "created")
    repo.move(vm_id, VMState.FAILED, failed, reason, failure_reason=reason)


def test_failures_in_a_row_count_failed_cycles_not_vms(db: Database) -> None:
    repo = VMRepository(db)
    for i in range(3):  # one cycle asked for three VMs; all timed out in a later cycle
        fail_to_boot(repo, f"a{i}", NOW, NOW + 600, "boot timeout: no pilot after 600 s")
    assert repo.boot_failures_in_row("c1") == (1, NOW + 600)

    for i in range(2):  # after the back-off, the next cycle's two VMs were refused at once
        fail_to_boot(repo, f"b{i}", NOW + 900, NOW + 900, "cloud c1: create: HTTP 503")
    repo.move("b0", VMState.DESTROYED, NOW + 950, "destroyed")  # destroying a failed VM is not a new failure
    assert repo.boot_failures_in_row("c1") == (2, NOW + 900)
    assert repo.last_failure("c1") == Failure("cloud c1: create: HTTP 503", NOW + 900)

    # a cycle in which one VM booted ends the run, even if its other VM failed
    fail_to_boot(repo, "c0", NOW + 2000, NOW + 2010, "instance in error")
    repo.create(new_vm("c1", at=NOW + 2000), "work")
    repo.move("c1", VMState.BOOTING, NOW + 2000, "created")
    repo.move("c1", VMState.RUNNING, NOW + 2030, "up", booted_at=NOW + 2030)
    assert repo.boot_failures_in_row("c1") == (0, None)
    assert repo.last_failure("c1") == Failure("instance in error", NOW + 2010)
    assert repo.last_failure("other") is None


def test_boot_stats_give_the_last_boot_and_the_median_boot_time(db: Database) -> None:
    repo = VMRepository(db)
    assert (repo.boot_stats("c1").last_boot_at, repo.boot_stats("c1").median_boot_seconds) == (None, None)
    for i, seconds in enumerate([30.0, 90.0, 40.0]):
        requested = NOW + 100 * i
        repo.create(new_vm(f"v{i}", at=requested), "work")
        repo.move(f"v{i}", VMState.BOOTING, requested, "created")
        repo.move(f"v{i}", VMState.RUNNING, requested + seconds, "up", booted_at=requested + seconds)
    fail_to_boot(repo, "v9", NOW + 500, NOW + 1100, "boot timeout")  # a VM that never booted is no sample

    stats = repo.boot_stats("c1")

    assert (stats.last_boot_at, stats.median_boot_seconds, stats.samples) == (NOW + 240, 40.0, 3)


def test_migrations_upgrade_a_version_one_database(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(db, target=1)
    JobRepository(db).submit("lhcb", "alice", [JobSpec(executable="true")], NOW, 3600)
    with db.write() as conn:  # the shape version 1 really had
        conn.exec_driver_sql("ALTER TABLE tokens DROP COLUMN vm_id")
        conn.exec_driver_sql("ALTER TABLE pilots DROP COLUMN vm_id")
        conn.exec_driver_sql("ALTER TABLE jobs DROP COLUMN events_done")
    assert upgrade(db) == list(range(2, LATEST + 1))  # every later step, whatever their number
    with db.read() as conn:
        assert "vm_id" in {c["name"] for c in inspect(conn).get_columns("tokens")}
        assert {"site", "shutdown_deadline"} <= {c["name"] for c in inspect(conn).get_columns("vms")}
        assert inspect(conn).has_table("vm_usage")
    assert JobRepository(db).get(1).events_done == 0
    db.dispose()
