"""End to end: a cluster of a head and workers on a local cloud, through a real server. The VMs are real process
trees booted from their user-data, and their agents really report in over HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import yaml
from typer.testing import CliRunner

from cloudpilot.cli.main import app as cli
from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import Role
from tests.helpers.pilots import wait_for
from tests.helpers.server import ServerFactory

WORKER_TEMPLATE = """#cloud-config
write_files:
  - path: /etc/cluster/head
    content: "{{ head.endpoint }} {{ head.id }}"
runcmd:
  - echo "worker {{ self.id }} of {{ head.address }}" > "${CLOUDPILOT_VM_ROOT:-}/etc/cluster/hello"
"""

HEAD_TEMPLATE = "#cloud-config\nwrite_files: [{path: /etc/role, content: head}]"

DEFINITION: dict[str, Any] = {
    "name": "demo",
    "cloud": "local",
    "services": {
        "head": {"flavor": "small", "context": {"template": HEAD_TEMPLATE}},
        # Starts with 2 and may go down to 1: the "min: 2" and "scale 2 -> 5 -> 1" only both hold so.
        "worker": {
            "flavor": "small",
            "min": 1,
            "instances": 2,
            "max": 5,
            "depends_on": ["head"],
            "context": {"template": WORKER_TEMPLATE},
        },
    },
}


def config() -> ServerConfig:
    return ServerConfig.model_validate(
        {
            "clouds": {
                "local": {
                    "driver": "local",
                    "flavors": {"small": {"cores": 1, "memory_mb": 1024}},
                    "max_vms": 8,
                    "boot_seconds": 0.2,
                    "start_rate_per_minute": 60,
                }
            },
            "provisioner": {"interval_seconds": 0.5},
        }
    )


def live(cluster: dict, service: str) -> list[dict]:
    (found,) = [s for s in cluster["services"] if s["name"] == service]
    return [vm for vm in found["instances"] if vm["state"] in ("requested", "booting", "running")]


def ready(cluster: dict, service: str) -> list[dict]:
    return [vm for vm in live(cluster, service) if vm["ready"] and vm["state"] == "running"]


def test_a_head_and_its_workers_come_up_in_order_scale_and_go_away(make_server: ServerFactory) -> None:
    server = make_server(config())
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    admin = server.client(server.token(Role.ADMIN, "root"))
    answer = user.post("/api/v1/clusters", json=DEFINITION)
    assert answer.status_code == 201, answer.text
    cid = answer.json()["id"]
    assert [s["name"] for s in answer.json()["services"]] == ["head", "worker"]

    def cluster() -> dict:
        return user.get(f"/api/v1/clusters/{cid}").json()

    wait_for(lambda: len(ready(cluster(), "worker")) == 2, timeout=120, what="the head and two ready workers")
    state = cluster()
    (head,) = ready(state, "head")
    workers = ready(state, "worker")
    # In order: every worker VM was created after the head's agent had reported in.
    assert all(w["created_at"] >= head["ready_at"] for w in workers)
    assert head["address"] == "127.0.0.1"  # the local cloud's VMs share the host's loopback
    # Each worker got the head's endpoint and id through its template, written into its root file system.
    driver = server.services.clusters.drivers["local"]
    instance_of = {vm["id"]: vm["instance_id"] for vm in admin.get("/api/v1/vms").json()["vms"]}
    for worker in workers:
        root = driver.vm_root(instance_of[worker["vm_id"]])  # type: ignore[attr-defined]
        assert (root / "etc/cluster/head").read_text() == f"{head['endpoint']} {head['vm_id']}"
        assert (root / "etc/cluster/hello").read_text() == f"worker {worker['vm_id']} of 127.0.0.1\n"
    # ... and that endpoint is the head's agent, which answers with its identity.
    identity = httpx.get(f"http://{head['endpoint']}/", timeout=10).json()
    assert identity == {"vm_id": head["vm_id"], "cluster_id": cid, "service": "head"}

    # Scale 2 -> 5 -> 1.
    assert user.patch(f"/api/v1/clusters/{cid}/services/worker", json={"instances": 5}).status_code == 200
    wait_for(lambda: len(ready(cluster(), "worker")) == 5, timeout=120, what="five ready workers")
    five = ready(cluster(), "worker")
    assert user.patch(f"/api/v1/clusters/{cid}/services/worker", json={"instances": 1}).status_code == 200
    wait_for(lambda: len(live(cluster(), "worker")) == 1, timeout=60, what="one worker left")
    (left,) = live(cluster(), "worker")
    assert left["vm_id"] == min(five, key=lambda w: w["created_at"])["vm_id"]  # the newest went first
    wait_for(lambda: len(driver.list()) == 2, timeout=60, what="the scaled-down instances destroyed")

    for beyond in (6, 0):
        refused = user.patch(f"/api/v1/clusters/{cid}/services/worker", json={"instances": beyond})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "instances"
        assert "(min 1, max 5)" in refused.json()["error"]["message"]

    # Delete: the worker goes before the head, and nothing is left running.
    assert user.delete(f"/api/v1/clusters/{cid}").status_code == 202
    wait_for(lambda: cluster()["state"] == "deleted", timeout=120, what="the cluster deleted")
    vms = [vm for vm in admin.get("/api/v1/vms").json()["vms"] if vm["cluster_id"] == cid]
    assert len(vms) == 6 and all(vm["state"] == "destroyed" for vm in vms)
    assert driver.list() == []
    (head_vm,) = [vm for vm in vms if vm["cluster_service"] == "head"]
    last_worker = max(vm["terminated_at"] for vm in vms if vm["cluster_service"] == "worker")
    assert head_vm["terminated_at"] >= last_worker
    # Cluster VMs are accounted like any other VM, to the user's VO.
    records = {r["vm_id"]: r for r in user.get("/api/v1/accounting/vms").json()["records"]}
    assert {vm["id"] for vm in vms} <= records.keys()
    assert all(records[vm["id"]]["vo"] == "lhcb" and records[vm["id"]]["wall_seconds"] > 0 for vm in vms)


def test_bad_definitions_are_4xx_and_nothing_starts(make_server: ServerFactory) -> None:
    server = make_server(config())
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    loop = {"a": {"depends_on": ["b"]}, "b": {"depends_on": ["c"]}, "c": {"depends_on": ["a"]}}
    cyclic = {"name": "loop", "cloud": "local", "services": loop}
    answer = user.post("/api/v1/clusters", json=cyclic)
    assert answer.status_code == 422
    assert answer.json()["error"]["message"] == "services.a.depends_on: dependency cycle: a -> b -> c -> a"
    assert answer.json()["error"]["field"] == "services.a.depends_on"
    unknown = {"name": "u", "cloud": "local", "services": {"w": {"depends_on": ["head"]}}}
    answer = user.post("/api/v1/clusters", json=unknown)
    assert answer.status_code == 422 and "unknown service 'head'" in answer.json()["error"]["message"]
    typo = {"name": "t", "cloud": "local", "services": {"w": {"flavour": "small"}}}
    answer = user.post("/api/v1/clusters", json=typo)
    assert answer.status_code == 422 and answer.json()["error"]["field"] == "services.w.flavour"
    assert user.get("/api/v1/clusters").json() == {"clusters": []}
    pilot = server.client(server.token(Role.PILOT, "p", vo="lhcb"))
    assert pilot.post("/api/v1/clusters", json=DEFINITION).status_code == 403
    assert user.get("/api/v1/clusters/99").status_code == 404


def test_the_example_through_the_cli(make_server: ServerFactory) -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "cluster"
    server_config = yaml.safe_load((example / "server.yaml").read_text())
    server_config["clouds"]["local-a"]["boot_seconds"] = 0.2
    server_config["provisioner"]["interval_seconds"] = 0.5
    server = make_server(ServerConfig.model_validate(server_config))
    env = {"CLOUDPILOT_URL": server.url, "CLOUDPILOT_TOKEN": server.token(Role.USER, "alice", vo="lhcb")}
    runner = CliRunner()
    created = runner.invoke(cli, ["cluster", "create", str(example / "cluster.yaml")], env=env)
    assert created.exit_code == 0, created.output
    assert "cluster 1 (demo) created; services start in order: head -> worker" in created.output
    wait_for(lambda: all(s["ready"] for s in _status(runner, env)["services"]), timeout=120, what="all ready")
    shown = runner.invoke(cli, ["cluster", "status", "1"], env=env)
    assert shown.exit_code == 0 and "worker" in shown.output and "running" in shown.output
    status = _status(runner, env)
    (head,) = live(status, "head")
    driver = server.services.clusters.drivers["local-a"]
    for worker in live(status, "worker"):
        root = driver.vm_root(server.services.vms.get(worker["vm_id"]).instance_id)  # type: ignore[attr-defined]
        assert json.loads((root / "etc/cluster/head.json").read_text())["vm_id"] == head["vm_id"]
    scaled = runner.invoke(cli, ["cluster", "scale", "1", "worker", "1"], env=env)
    assert scaled.exit_code == 0 and "scaled to 1" in scaled.output
    beyond = runner.invoke(cli, ["cluster", "scale", "1", "worker", "6"], env=env)
    assert beyond.exit_code == 1 and "outside the bounds" in beyond.output
    deleted = runner.invoke(cli, ["cluster", "delete", "1"], env=env)
    assert deleted.exit_code == 0 and "is deleting" in deleted.output
    wait_for(lambda: _status(runner, env)["state"] == "deleted", timeout=120, what="deleted")
    listed = runner.invoke(cli, ["cluster", "list"], env=env)
    assert listed.exit_code == 0 and "deleted" in listed.output
    assert driver.list() == []


def _status(runner: CliRunner, env: dict[str, str]) -> dict:
    shown = runner.invoke(cli, ["cluster", "status", "1", "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    return json.loads(shown.output)
