"""The cluster service against the in-package fake cloud, on SQLite and PostgreSQL, with time passed in:
dependency order, templates, scaling, teardown order, agent tokens, quotas, back-off, and how the provisioner
and the VM monitor treat cluster VMs."""

from __future__ import annotations

import email
from typing import Any

import pytest
from sqlalchemy import inspect

from cloudpilot.clouds.base import InstanceState
from cloudpilot.clouds.errors import CloudUnavailable
from cloudpilot.clouds.fake import FakeCloudDriver
from cloudpilot.config import ServerConfig
from cloudpilot.context import parse_cloud_config
from cloudpilot.domain.auth import Principal, Role
from cloudpilot.domain.clusters import ClusterDefinition, ClusterState, InstanceReport
from cloudpilot.domain.jobs import JobSpec
from cloudpilot.domain.vms import VM, Flavor, VMState
from cloudpilot.services.clusters import ClusterService, NotYet
from cloudpilot.services.errors import BadInput, Forbidden
from cloudpilot.services.provisioner import Provisioner
from cloudpilot.services.vm_monitor import VMMonitor
from cloudpilot.store.clusters import ClusterRepository
from cloudpilot.store.database import Database
from cloudpilot.store.errors import Conflict, NotFound
from cloudpilot.store.jobs import JobRepository
from cloudpilot.store.migrations import upgrade
from cloudpilot.store.pilots import PilotRepository
from cloudpilot.store.sites import SiteRepository
from cloudpilot.store.tokens import TokenRepository
from cloudpilot.store.vms import VMRepository

T0 = 1_800_000_000.0
CONFIG = ServerConfig.model_validate(
    {
        "clouds": {
            "fake": {
                "driver": "local",
                "flavors": {"small": {"cores": 1, "memory_mb": 2048}, "big": {"cores": 4, "memory_mb": 8192}},
                "max_vms": 8,
                "boot_timeout_seconds": 100,
            },
        },
        "policy": {"idle_seconds": 50, "min_work_seconds_per_core": 0, "backoff_initial_seconds": 100},
        "provisioner": {"lost_after_seconds": 30},
    }
)
ALICE = Principal("t-alice", Role.USER, "alice", vo="lhcb")
BOB = Principal("t-bob", Role.USER, "bob", vo="lhcb")
ADMIN = Principal("t-admin", Role.ADMIN, "root")

WORKER_TEMPLATE = """#cloud-config
write_files:
  - path: /etc/cluster/head
    content: "{{ head.endpoint }} {{ head.id }} {{ cluster.name }} {{ self.id }}"
"""


def cluster_body(**overrides: Any) -> dict[str, Any]:
    services = {
        "head": {"flavor": "small"},
        "worker": {"cores": 2, "min": 2, "max": 5, "depends_on": ["head"], "context": {"template": WORKER_TEMPLATE}},
    }
    return {"name": "demo", "cloud": "fake", "services": services, **overrides}


class World:
    def __init__(self, db: Database) -> None:
        self.vms = VMRepository(db)
        self.tokens = TokenRepository(db)
        self.jobs = JobRepository(db)
        self.sites = SiteRepository(db)
        self.cloud = FakeCloudDriver(
            "fake", {"small": Flavor("small", 1, 2048), "big": Flavor("big", 4, 8192)}, max_vms=8
        )
        drivers = {"fake": self.cloud}
        self.probes: list[str] = []
        self.healthy = False
        self.clusters = ClusterService(
            CONFIG, ClusterRepository(db), self.vms, self.tokens, drivers, self.sites,
            server_url=lambda: "http://127.0.0.1:9", probe=self._probe,
        )  # fmt: skip
        self.monitor = VMMonitor(CONFIG, self.vms, self.jobs, PilotRepository(db), self.tokens, drivers)
        self.provisioner = Provisioner(
            CONFIG, self.jobs, self.vms, self.tokens, drivers, self.sites, server_url=lambda: "http://127.0.0.1:9"
        )

    def _probe(self, url: str, timeout: float) -> bool:
        self.probes.append(url)
        return self.healthy

    def create(self, principal: Principal = ALICE, **overrides: Any) -> int:
        definition = ClusterDefinition.model_validate(cluster_body(**overrides))
        return self.clusters.create(principal, definition, T0).id

    def of(self, cluster_id: int, service: str, states: frozenset[VMState] | None = None) -> list[VM]:
        found = [vm for vm in self.clusters.clusters.vms(cluster_id) if vm.cluster_service == service]
        return [vm for vm in found if states is None or vm.state in states]

    def agent(self, vm: VM) -> Principal:
        """The principal of the token written into the VM's user-data."""
        files = {f["path"]: f["content"] for f in parse_cloud_config(self.user_data(vm))["write_files"]}
        principal = self.tokens.authenticate(files["/etc/cloudpilot/agent.token"].strip(), T0)
        assert principal is not None
        return principal

    def user_data(self, vm: VM) -> str:
        return self.cloud.requests[vm.instance_id].user_data  # type: ignore[index]

    def report(self, cluster_id: int, vm: VM, at: float, address: str = "10.0.0.1", port: int = 4000) -> None:
        self.clusters.report_ready(self.agent(vm), cluster_id, vm.id, InstanceReport(address, port, "h"), at)


LIVE = frozenset({VMState.BOOTING, VMState.RUNNING})


@pytest.fixture
def world(db: Database) -> World:
    return World(db)


def mime_parts(user_data: str) -> list[tuple[str, str]]:
    message = email.message_from_string(user_data)
    return [
        (p.get_filename() or "", p.get_payload(decode=True).decode())  # type: ignore[union-attr]
        for p in message.walk()
        if not p.is_multipart()
    ]


def test_the_head_starts_first_and_workers_only_once_it_is_ready(world: World) -> None:
    cid = world.create()
    world.clusters.tick(T0)
    (head,) = world.of(cid, "head")
    assert head.state is VMState.BOOTING and head.flavor == "small" and head.vo == "lhcb"
    assert world.of(cid, "worker") == []
    world.clusters.tick(T0 + 1)  # the head boots but has not reported: workers still wait
    assert world.of(cid, "worker") == []
    view = world.clusters.get(ALICE, cid)
    assert view.cluster.services["worker"].note == "waiting for head to be ready"

    world.report(cid, head, T0 + 2, address="10.1.2.3", port=4711)
    assert world.vms.get(head.id).state is VMState.RUNNING and world.vms.get(head.id).booted_at == T0 + 2
    world.clusters.tick(T0 + 3)
    workers = world.of(cid, "worker")
    assert len(workers) == 2 and all(w.flavor == "big" for w in workers)  # the smallest with 2 cores
    for worker in workers:
        assert worker.created_at == T0 + 3 and worker.cluster_id == cid
        parts = dict(mime_parts(world.user_data(worker)))
        assert parts["part-001"].endswith(f'content: "10.1.2.3:4711 {head.id} demo {worker.id}"\n')
        assert "cluster-agent.py" in parts["part-002-cloudpilot-agent"]  # the agent runs after the service's part
    assert world.clusters.get(ALICE, cid).cluster.services["worker"].note == ""
    world.clusters.tick(T0 + 4)
    assert len(world.of(cid, "worker")) == 2


def test_scaling_within_bounds_down_newest_first(world: World) -> None:
    cid = world.create()
    world.clusters.tick(T0)
    world.report(cid, world.of(cid, "head")[0], T0 + 1)
    world.clusters.tick(T0 + 2)
    world.clusters.scale(ALICE, cid, "worker", 5, T0 + 3)
    world.clusters.tick(T0 + 3)
    workers = world.of(cid, "worker", LIVE)
    assert len(workers) == 5
    oldest = workers[0]
    world.clusters.scale(ALICE, cid, "worker", 2, T0 + 4)
    world.clusters.tick(T0 + 4)
    assert [vm.id for vm in world.of(cid, "worker", LIVE)] == [w.id for w in workers[:2]]
    halted = world.of(cid, "worker", frozenset({VMState.HALTED}))
    assert {vm.id for vm in halted} == {w.id for w in workers[2:]}
    assert all("scaled to 2" in (vm.shutdown_message or "") for vm in halted)
    world.monitor.tick(T0 + 5)  # the VM monitor destroys them, as any halted VM
    assert all(world.vms.get(vm.id).state is VMState.DESTROYED for vm in halted)
    assert set(world.cloud.destroyed) == {vm.instance_id for vm in halted}
    assert oldest.id in {vm.id for vm in world.of(cid, "worker", LIVE)}

    for bad in (1, 6):
        with pytest.raises(BadInput) as info:
            world.clusters.scale(ALICE, cid, "worker", bad, T0 + 6)
        assert info.value.field == "instances" and "min 2, max 5" in str(info.value)
    with pytest.raises(NotFound):
        world.clusters.scale(ALICE, cid, "nobody", 2, T0 + 6)


def test_delete_tears_down_in_reverse_order(world: World) -> None:
    cid = world.create()
    world.clusters.tick(T0)
    head = world.of(cid, "head")[0]
    world.report(cid, head, T0 + 1)
    world.clusters.tick(T0 + 2)
    assert world.clusters.delete(ALICE, cid, T0 + 3).cluster.state is ClusterState.DELETING
    world.clusters.tick(T0 + 3)
    assert {vm.state for vm in world.of(cid, "worker")} == {VMState.HALTED}
    assert world.vms.get(head.id).state is VMState.RUNNING  # the head waits until its workers are gone
    world.clusters.tick(T0 + 4)
    assert world.vms.get(head.id).state is VMState.RUNNING
    world.monitor.tick(T0 + 5)
    world.clusters.tick(T0 + 5)
    assert world.vms.get(head.id).state is VMState.HALTED
    world.monitor.tick(T0 + 6)
    world.clusters.tick(T0 + 6)
    assert world.clusters.get(ALICE, cid).cluster.state is ClusterState.DELETED
    assert all(vm.state is VMState.DESTROYED for vm in world.clusters.clusters.vms(cid))
    assert world.cloud.list() == []
    assert world.clusters.delete(ALICE, cid, T0 + 7).cluster.state is ClusterState.DELETED  # harmless again
    with pytest.raises(Conflict):
        world.clusters.scale(ALICE, cid, "worker", 3, T0 + 7)


def test_agent_tokens_are_bound_to_their_vm_and_cannot_take_jobs(world: World) -> None:
    cid = world.create()
    world.clusters.tick(T0)
    (head,) = world.of(cid, "head")
    agent = world.agent(head)
    assert agent.role is Role.PILOT and agent.vm_id == head.id and agent.vo == f"cluster:{cid}"
    report = InstanceReport("10.0.0.1", 80)
    other = Principal("x", Role.PILOT, "p", vo="lhcb", vm_id=head.id)
    for principal, cluster_id in ((ALICE, cid), (other, cid), (agent, cid + 1)):
        with pytest.raises(Forbidden):
            world.clusters.report_ready(principal, cluster_id, head.id, report, T0 + 1)
    world.vms.move(head.id, VMState.HALTED, T0 + 2, "stopped")
    with pytest.raises(Conflict):  # the agent of a VM the server let go stops
        world.clusters.report_ready(agent, cid, head.id, report, T0 + 2)


def test_an_agent_reporting_before_its_vm_is_recorded_booting_is_told_to_retry(world: World) -> None:
    cid = world.create()
    world.vms.create(
        VM("vm-early", "fake", "lhcb", "small", 1, 2048, VMState.REQUESTED, T0, T0, cluster_id=cid,
           cluster_service="head"),
        "test",
    )  # fmt: skip
    agent = Principal("a", Role.PILOT, "agent", vo=f"cluster:{cid}", vm_id="vm-early")
    with pytest.raises(NotYet):
        world.clusters.report_ready(agent, cid, "vm-early", InstanceReport("10.0.0.1", 80), T0)


def test_users_see_only_their_own_clusters(world: World) -> None:
    cid = world.create()
    with pytest.raises(NotFound):
        world.clusters.get(BOB, cid)
    with pytest.raises(NotFound):
        world.clusters.delete(BOB, cid, T0)
    assert [v.cluster.id for v in world.clusters.list(ALICE)] == [cid]
    assert world.clusters.list(BOB) == []
    assert [v.cluster.id for v in world.clusters.list(ADMIN)] == [cid]
    with pytest.raises(Forbidden):
        world.clusters.list(Principal("p", Role.PILOT, "pilot", vo="lhcb"))
    with pytest.raises(Forbidden):
        world.create(BOB, vo="atlas")
    with pytest.raises(BadInput) as info:
        world.create(ADMIN)
    assert info.value.field == "vo"
    assert world.clusters.get(ADMIN, world.create(ADMIN, vo="atlas")).cluster.vo == "atlas"


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"cloud": "nowhere"}, "cloud", "unknown cloud 'nowhere' (configured: fake)"),
        ({"services": {"w": {"flavor": "huge"}}}, "services.w.flavor", "unknown flavor 'huge' on cloud 'fake'"),
        ({"services": {"w": {"cores": 64}}}, "services.w.cores", "no flavor of cloud 'fake' has 64 cores"),
        ({"services": {"w": {"memory_mb": 10**6}}}, "services.w.memory_mb", "no flavor"),
        ({"services": {"a": {"depends_on": ["b"]}, "b": {"depends_on": ["a"]}}}, "services.a.depends_on", "a -> b"),
        ({"services": {"w": {"context": {"template": "#!/bin/sh\n" + "x" * 16000}}}}, "services.w.context", "bytes"),
    ],
)
def test_definitions_the_configuration_cannot_serve_are_refused(
    world: World, overrides: dict, field: str, message: str
) -> None:
    with pytest.raises(BadInput) as info:
        world.create(**overrides)
    assert info.value.field == field
    assert message in str(info.value)
    assert world.clusters.list(ADMIN) == []  # nothing stored


def test_a_health_url_decides_readiness(world: World) -> None:
    cid = world.create(
        services={
            "db": {"health_url": "http://{{ self.address }}:5432/"},
            "app": {"depends_on": ["db"]},
        }
    )
    world.clusters.tick(T0)
    (db,) = world.of(cid, "db")
    world.report(cid, db, T0 + 1, address="10.9.9.9")
    world.clusters.tick(T0 + 2)
    assert world.probes == ["http://10.9.9.9:5432/"] and world.of(cid, "app") == []
    world.healthy = True
    world.clusters.tick(T0 + 3)  # answers now: ready, and the app starts in the same cycle
    assert len(world.of(cid, "app")) == 1
    world.clusters.tick(T0 + 4)
    assert len(world.probes) == 2  # a ready instance is not polled again


def test_cluster_vms_count_toward_quotas_but_are_never_idle_or_free(world: World) -> None:
    cid = world.create()
    world.clusters.tick(T0)
    (head,) = world.of(cid, "head")
    world.report(cid, head, T0 + 1)
    world.monitor.tick(T0 + 2)  # sets idle_since on a VM with no job, as for any VM
    snapshot = world.provisioner.snapshot(T0 + 500)
    (cloud,) = snapshot.clouds
    (view,) = cloud.vms
    assert view.id == head.id and view.free_cores == 0 and view.idle_since is None
    world.jobs.submit("lhcb", "alice", [JobSpec(executable="x")], T0, 3600)
    world.provisioner.tick(T0 + 500)  # the job needs a pilot VM: the head is no slot for it, nor stopped as idle
    assert world.vms.get(head.id).state is VMState.RUNNING
    assert any(vm.cluster_id is None for vm in world.vms.list())


def test_quota_and_lost_agents(world: World) -> None:
    cid = world.create()
    for i in range(6):  # other VMs fill the cloud: 6 + head = 7 of 8
        world.vms.create(VM(f"vm-other{i}", "fake", "atlas", "small", 1, 2048, VMState.BOOTING, T0, T0), "test")
    world.clusters.tick(T0)
    head = world.of(cid, "head")[0]
    world.report(cid, head, T0 + 1)
    world.clusters.tick(T0 + 2)
    assert len(world.of(cid, "worker")) == 1
    assert world.clusters.get(ALICE, cid).cluster.services["worker"].note == "cloud fake is full (8 of 8 VMs)"
    # The head's agent falls silent: lost after lost_after_seconds, like a silent pilot; a new head starts.
    changes = world.monitor.tick(T0 + 40)
    assert any(f"{head.id} lost: no word from its cluster agent" in c for c in changes)
    world.clusters.tick(T0 + 41)
    heads = world.of(cid, "head")
    assert len(heads) == 2 and heads[-1].state is VMState.BOOTING


def test_failed_boots_back_the_service_off(world: World) -> None:
    cid = world.create(services={"solo": {}})
    world.cloud.fail_next_create(CloudUnavailable("fake", "down"), times=2)
    world.clusters.tick(T0)
    (first,) = world.of(cid, "solo")
    assert first.state is VMState.FAILED and "down" in (first.failure_reason or "")
    world.clusters.tick(T0 + 50)  # within the 100 s back-off
    assert len(world.of(cid, "solo")) == 1
    assert "backing off" in world.clusters.get(ALICE, cid).cluster.services["solo"].note
    world.clusters.tick(T0 + 101)
    assert len(world.of(cid, "solo")) == 2
    world.clusters.tick(T0 + 250)  # two in a row: 200 s now
    assert len(world.of(cid, "solo")) == 2
    world.clusters.tick(T0 + 302)
    assert world.of(cid, "solo")[-1].state is VMState.BOOTING


def test_a_stopped_instance_of_a_reported_vm_is_replaced(world: World) -> None:
    cid = world.create(services={"solo": {}})
    world.clusters.tick(T0)
    (vm,) = world.of(cid, "solo")
    world.report(cid, vm, T0 + 1)
    world.cloud.set_state(vm.instance_id, InstanceState.STOPPED)  # type: ignore[arg-type]
    world.monitor.tick(T0 + 2)
    assert world.vms.get(vm.id).state is VMState.DESTROYED
    world.clusters.tick(T0 + 3)
    assert [v.state for v in world.of(cid, "solo")] == [VMState.DESTROYED, VMState.BOOTING]


def test_migration_5_adds_clusters_to_a_version_3_database(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(db, target=3)
    with db.write() as conn:  # the shape of vms before migration 5
        conn.exec_driver_sql("DROP INDEX ix_vms_cluster")
        conn.exec_driver_sql("ALTER TABLE vms DROP COLUMN cluster_id")
        conn.exec_driver_sql("ALTER TABLE vms DROP COLUMN cluster_service")
    assert 5 in upgrade(db)
    with db.read() as conn:
        assert {"cluster_id", "cluster_service"} <= {c["name"] for c in inspect(conn).get_columns("vms")}
        assert "ix_vms_cluster" in {i["name"] for i in inspect(conn).get_indexes("vms")}
        assert inspect(conn).has_table("cluster_instances")
    world = World(db)
    cid = world.create()
    world.clusters.tick(T0)
    assert world.of(cid, "head")[0].cluster_id == cid
    db.dispose()
