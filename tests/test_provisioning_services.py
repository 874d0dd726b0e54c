"""The provisioner and VM monitor loops against the in-package fake cloud, on SQLite and PostgreSQL.

Time is passed in, so boot timeouts, back-off and idle stops are checked without waiting."""

from __future__ import annotations

import pytest

from cloudpilot.clouds.base import InstanceState
from cloudpilot.clouds.errors import QuotaExceeded
from cloudpilot.clouds.fake import FakeCloudDriver
from cloudpilot.config import ServerConfig
from cloudpilot.context import parse_cloud_config
from cloudpilot.domain.auth import Role
from cloudpilot.domain.jobs import JobSpec, JobState
from cloudpilot.domain.provisioning import DrainVM
from cloudpilot.domain.vms import Flavor, VMState
from cloudpilot.services.provisioner import Provisioner
from cloudpilot.services.vm_activity import VMActivity
from cloudpilot.services.vm_monitor import VMMonitor
from cloudpilot.store.database import Database
from cloudpilot.store.jobs import JobRepository
from cloudpilot.store.pilots import PilotRecord, PilotRepository
from cloudpilot.store.sites import SiteRepository
from cloudpilot.store.tokens import TokenRepository
from cloudpilot.store.vms import VMRepository

T0 = 1_800_000_000.0
CONFIG = ServerConfig.model_validate(
    {
        "clouds": {
            "fake": {
                "driver": "local",
                "flavors": {"small": {"cores": 1, "memory_mb": 2048}},
                "max_vms": 3,
                "start_rate_per_minute": 60,
                "boot_timeout_seconds": 100,
            },
        },
        "policy": {"idle_seconds": 50, "min_work_seconds_per_core": 0},
        "provisioner": {"lost_after_seconds": 30},
    }
)


class Loops:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.jobs = JobRepository(db)
        self.vms = VMRepository(db)
        self.tokens = TokenRepository(db)
        self.pilots = PilotRepository(db)
        self.cloud = FakeCloudDriver("fake", {"small": Flavor("small", 1, 2048)}, max_vms=3)
        drivers = {"fake": self.cloud}
        self.provisioner = Provisioner(
            CONFIG,
            self.jobs,
            self.vms,
            self.tokens,
            drivers,
            SiteRepository(db),
            server_url=lambda: "http://127.0.0.1:9",
        )
        self.monitor = VMMonitor(CONFIG, self.vms, self.jobs, self.pilots, self.tokens, drivers)

    def submit(self, n: int, at: float = T0) -> list[int]:
        return self.jobs.submit("lhcb", "alice", [JobSpec(executable="x")] * n, at, 3600)

    def state(self) -> dict[str, VMState]:
        return {vm.id: vm.state for vm in self.vms.list()}


@pytest.fixture
def loops(db: Database) -> Loops:
    return Loops(db)


def test_waiting_jobs_start_vms_with_their_own_token_in_the_user_data(loops: Loops) -> None:
    loops.submit(2)
    loops.provisioner.tick(T0)
    vms = loops.vms.list()
    assert [vm.state for vm in vms] == [VMState.BOOTING, VMState.BOOTING]
    for vm in vms:
        request = loops.cloud.requests[vm.instance_id]  # type: ignore[index]
        files = {f["path"]: f["content"] for f in parse_cloud_config(request.user_data)["write_files"]}
        token = files["/etc/cloudpilot/pilot.token"].strip()
        principal = loops.tokens.authenticate(token, T0)
        assert principal is not None and principal.vm_id == vm.id and principal.role is Role.PILOT
        assert principal.vo == "lhcb"
        assert loops.tokens.authenticate(token, vm.expires_at + 1) is None  # type: ignore[operator]
    loops.provisioner.tick(T0 + 1)  # booting VMs are supply: nothing more
    assert len(loops.vms.list()) == 2


def test_cloud_errors_fail_the_vm_revoke_its_token_and_back_the_cloud_off(loops: Loops) -> None:
    loops.submit(1)
    loops.cloud.fail_next_create(QuotaExceeded("fake", "quota full; token cp_deadbeef_s3cr3t leaked by the SDK"))
    loops.provisioner.tick(T0)
    (vm,) = loops.vms.list()
    assert vm.state is VMState.FAILED
    assert "quota full" in (vm.failure_reason or "") and "s3cr3t" not in (vm.failure_reason or "")
    loops.provisioner.tick(T0 + 60)  # within the 300 s back-off: the cloud is not asked again
    assert [c for c in loops.cloud.calls if c[0] == "create"] == [("create", vm.id, "small")]
    loops.provisioner.tick(T0 + 301)
    assert sum(1 for c in loops.cloud.calls if c[0] == "create") == 2
    loops.monitor.tick(T0 + 302)
    assert loops.vms.get(vm.id).state is VMState.DESTROYED


def test_boot_timeout_fails_and_destroys(loops: Loops) -> None:
    loops.submit(1)
    loops.provisioner.tick(T0)
    (vm,) = loops.vms.list()
    loops.monitor.tick(T0 + 50)
    assert loops.vms.get(vm.id).state is VMState.BOOTING
    changes = loops.monitor.tick(T0 + 101)
    assert any("boot timeout" in c for c in changes)
    assert loops.vms.get(vm.id).state is VMState.DESTROYED
    assert loops.cloud.destroyed == [vm.instance_id]
    assert "boot timeout" in (loops.vms.get(vm.id).failure_reason or "")


def _boot(loops: Loops, vm_id: str, at: float) -> str:
    """What the VM's pilot registering does to the records."""
    loops.vms.move(vm_id, VMState.RUNNING, at, "pilot registered", booted_at=at, last_seen_at=at, idle_since=at)
    pilot_id = f"p-{vm_id}"
    loops.pilots.register(
        PilotRecord(pilot_id, "tok", "lhcb", None, "fake", "h", 1, None, at, at, "active", None, None, vm_id)
    )
    return pilot_id


def test_reconcile_strays_vanished_and_broken_instances(loops: Loops) -> None:
    loops.submit(3)
    loops.provisioner.tick(T0)
    a, b, c = loops.vms.list()
    for vm in (a, b, c):
        _boot(loops, vm.id, T0 + 5)
    stray = loops.cloud.add_foreign("vm-nobody-knows")
    loops.cloud.vanish(a.instance_id)  # type: ignore[arg-type]
    loops.cloud.set_state(b.instance_id, InstanceState.ERROR)  # type: ignore[arg-type]
    loops.monitor.tick(T0 + 10)
    assert stray.instance_id in loops.cloud.destroyed
    history = {vm.id: [h[2] for h in loops.vms.history(vm.id)] for vm in (a, b, c)}
    assert history[a.id][-2:] == ["lost", "destroyed"]
    assert history[b.id][-2:] == ["failed", "destroyed"]
    assert loops.vms.get(c.id).state is VMState.RUNNING


def test_silent_vm_is_lost_and_its_jobs_go_back_at_once(loops: Loops) -> None:
    (job_id,) = loops.submit(1)
    loops.provisioner.tick(T0)
    (vm,) = loops.vms.list()
    pilot_id = _boot(loops, vm.id, T0 + 5)
    tq = loops.jobs.waiting_task_queues()[0]
    assert loops.jobs.claim(tq.id, pilot_id, T0 + 6, lease_seconds=3600) is not None
    loops.monitor.tick(T0 + 20)
    assert loops.vms.get(vm.id).state is VMState.RUNNING
    loops.monitor.tick(T0 + 40)  # 35 s without a word > lost_after_seconds
    assert loops.vms.get(vm.id).state is VMState.DESTROYED
    job = loops.jobs.get(job_id)
    assert job.state is JobState.WAITING and job.attempts == 1  # back long before its one-hour lease ends
    assert f"VM {vm.id} lost" in loops.jobs.history(job_id)[-1].reason


def test_idle_vm_is_stopped_then_destroyed(loops: Loops) -> None:
    loops.submit(1)
    loops.provisioner.tick(T0)
    (vm,) = loops.vms.list()
    _boot(loops, vm.id, T0 + 5)
    loops.jobs.kill(loops.jobs.list(None, None)[0].id, T0 + 6, "not needed")
    loops.vms.update(vm.id, T0 + 45, last_seen_at=T0 + 45)  # alive, but no job since T0 + 5
    loops.provisioner.tick(T0 + 46)
    assert loops.vms.get(vm.id).state is VMState.RUNNING
    actions = loops.provisioner.tick(T0 + 56)
    assert [type(a).__name__ for a in actions] == ["StopVM"]
    assert loops.vms.get(vm.id).state is VMState.HALTED
    loops.monitor.tick(T0 + 57)
    assert loops.vms.get(vm.id).state is VMState.DESTROYED and loops.cloud.destroyed == [vm.instance_id]


def test_a_cloud_serves_only_the_vos_it_has_an_image_for() -> None:
    settings = CONFIG.clouds["fake"].model_copy(update={"images": {"atlas": "img-a"}})
    assert settings.served_vos() == frozenset({"atlas"})
    assert settings.model_copy(update={"images": {"atlas": "a", "*": "b"}}).served_vos() is None
    both = settings.model_copy(update={"images": {"atlas": "a", "lhcb": "b"}, "vos": ["lhcb"]})
    assert both.served_vos() == frozenset({"lhcb"})


def test_a_draining_vm_takes_no_new_work_and_halts_when_its_job_ends(loops: Loops) -> None:
    (job_id, _) = loops.submit(2)
    loops.provisioner.tick(T0)
    vm = loops.vms.list()[0]
    pilot_id = _boot(loops, vm.id, T0 + 5)
    tq = loops.jobs.waiting_task_queues()[0]
    assert loops.jobs.claim(tq.id, pilot_id, T0 + 6, lease_seconds=3600) is not None
    loops.provisioner.apply([DrainVM(vm.id, "another VO needs its pledge")], T0 + 7)
    assert VMActivity(loops.vms).vm_for_work(vm.id) is None
    loops.monitor.tick(T0 + 8)
    assert loops.vms.get(vm.id).state is VMState.DRAINING  # its job still runs
    loops.jobs.report(job_id, 1, JobState.RUNNING, T0 + 9)
    loops.jobs.report(job_id, 1, JobState.DONE, T0 + 10, exit_code=0)
    loops.monitor.tick(T0 + 11)
    assert [h[2] for h in loops.vms.history(vm.id)][-3:] == ["draining", "halted", "destroyed"]
