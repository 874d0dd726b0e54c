"""``cloudpilot clouds|vms|vm show|vm stop`` and their SDK methods, against a real server with a local cloud whose
VMs boot from their user-data and run real pilots."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from cloudpilot.cli.common import short_when
from cloudpilot.cli.main import app
from cloudpilot.cli.vms import end_reason
from cloudpilot.client import CloudpilotClient, ConflictError, Forbidden, NotFound
from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import Role
from tests.helpers.pilots import wait_for
from tests.helpers.server import RunningServer, ServerFactory

runner = CliRunner()


def config() -> ServerConfig:
    local = {"driver": "local", "flavors": {"f": {"cores": 2, "memory_mb": 2048}}, "max_vms": 1,
             "start_rate_per_minute": 60, "boot_seconds": 0.2}  # fmt: skip
    return ServerConfig.model_validate(
        {
            "clouds": {"local-a": local, "local-b": {**local, "price_per_core_hour": 0.5, "site": "B"}},
            "policy": {"idle_seconds": 30, "min_work_seconds_per_core": 0},
            "provisioner": {"interval_seconds": 0.5, "pilot_idle_timeout_seconds": 30, "lost_after_seconds": 20},
        }
    )


@pytest.fixture
def cloud_server(make_server: ServerFactory) -> Iterator[RunningServer]:
    """A server with two local clouds; every VM left is destroyed at the end, so no VM outlives the test."""
    server = make_server(config())
    yield server
    for driver in server.services.provisioner.drivers.values():
        for instance in driver.list():
            driver.destroy(instance.instance_id)


def cli(args: list[str], url: str, token: str) -> Any:
    # Wide, so that tables do not cut the ids the tests look for.
    return runner.invoke(app, args, env={"CLOUDPILOT_URL": url, "CLOUDPILOT_TOKEN": token, "COLUMNS": "250"})


def submit_sleepers(server: RunningServer, token: str, n: int, seconds: float) -> list[int]:
    code = f"import time; time.sleep({seconds})"
    job = {"executable": sys.executable, "arguments": ["-c", code], "requirements": {"cores": 1, "wall_seconds": 120}}
    with CloudpilotClient(server.url, token) as user:
        return user.submit({"job": job, "parameter_count": n})


def running_vm(admin: CloudpilotClient) -> dict[str, Any]:
    wait_for(lambda: bool(admin.vms("running")), timeout=60, what="a running VM")
    return admin.vms("running")[0]


def test_vms_and_clouds_list_what_runs_and_vm_stop_destroys_it(cloud_server: RunningServer) -> None:
    server = cloud_server
    admin_token = server.token(Role.ADMIN, "root")
    user_token = server.token(Role.USER, "alice", vo="lhcb")
    ids = submit_sleepers(server, user_token, 2, seconds=60)
    admin = CloudpilotClient(server.url, admin_token)
    vm = running_vm(admin)
    assert vm["cloud"] == "local-a"  # the cheaper cloud first

    result = cli(["vms", "--json"], server.url, admin_token)
    assert result.exit_code == 0, result.output
    listed = {v["id"]: v for v in json.loads(result.stdout)}
    assert vm["id"] in listed
    mine = listed[vm["id"]]
    assert (mine["cloud"], mine["vo"], mine["flavor"], mine["cores"], mine["memory_mb"]) == (
        "local-a", "lhcb", "f", 2, 2048
    )  # fmt: skip
    assert mine["state"] == "running" and mine["instance_id"] and mine["booted_at"] and mine["terminated_at"] is None

    result = cli(["vms", "--state", "running", "--json"], server.url, admin_token)
    assert result.exit_code == 0, result.output
    assert vm["id"] in {v["id"] for v in json.loads(result.stdout)}
    result = cli(["vms", "--state", "destroyed", "--json"], server.url, admin_token)
    assert result.exit_code == 0 and json.loads(result.stdout) == []

    result = cli(["vms"], server.url, admin_token)
    assert result.exit_code == 0, result.output
    assert vm["id"] in result.stdout and "local-a" in result.stdout and "running" in result.stdout

    result = cli(["clouds", "--json"], server.url, user_token)  # users may see the clouds too
    assert result.exit_code == 0, result.output
    clouds = {c["name"]: c for c in json.loads(result.stdout)}
    assert set(clouds) == {"local-a", "local-b"}
    assert clouds["local-a"]["driver"] == "local"
    assert clouds["local-a"]["flavors"] == {"f": {"cores": 2, "memory_mb": 2048}}
    assert clouds["local-a"]["max_vms"] == 1 and clouds["local-a"]["price_per_core_hour"] == 0
    assert clouds["local-a"]["vms"].get("running") == 1
    assert clouds["local-b"]["price_per_core_hour"] == 0.5 and clouds["local-b"]["site"] == "B"

    result = cli(["clouds"], server.url, user_token)
    assert result.exit_code == 0, result.output
    for shown_text in ("local-b", "0.5 per core-hour", "f (2 cores, 2048 MB)", "1 running"):
        assert shown_text in result.stdout

    result = cli(["vm", "show", vm["id"], "--json"], server.url, admin_token)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["id"] == vm["id"]
    assert [h["to_state"] for h in shown["history"]][:3] == ["requested", "booting", "running"]
    result = cli(["vm", "show", vm["id"]], server.url, admin_token)
    assert result.exit_code == 0 and "history" in result.stdout and "pilot registered" in result.stdout

    result = cli(["vm", "stop", vm["id"]], server.url, admin_token)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"VM {vm['id']} is halted"
    wait_for(lambda: admin.vm(vm["id"])["state"] == "destroyed", timeout=30, what="the stopped VM destroyed")
    gone = admin.vm(vm["id"])
    assert gone["terminated_at"] is not None
    assert [(h["to_state"], h["reason"]) for h in gone["history"]][3] == ("halted", "stopped by root")
    assert gone["history"][-1]["to_state"] == "destroyed"

    # A destroyed VM cannot be stopped again; the command says so and fails.
    result = cli(["vm", "stop", vm["id"]], server.url, admin_token)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    with CloudpilotClient(server.url, user_token) as user:
        for job_id in ids:
            user.kill(job_id)
    admin.close()


def test_vm_commands_need_an_admin_and_an_existing_vm(cloud_server: RunningServer) -> None:
    server = cloud_server
    user_token = server.token(Role.USER, "alice", vo="lhcb")
    admin_token = server.token(Role.ADMIN, "root")
    for args in (["vms"], ["vm", "show", "vm-000000000000"], ["vm", "stop", "vm-000000000000"]):
        result = cli(args, server.url, user_token)
        assert result.exit_code == 1, args
        assert result.stderr.startswith("error: "), args
    result = cli(["vm", "stop", "vm-000000000000"], server.url, admin_token)
    assert result.exit_code == 1 and result.stderr.startswith("error: ")
    result = runner.invoke(app, ["vms"], env={"CLOUDPILOT_URL": "", "CLOUDPILOT_TOKEN": ""})
    assert result.exit_code == 2 and "error: no server given" in result.stderr

    with CloudpilotClient(server.url, user_token) as user:
        with pytest.raises(Forbidden):
            user.vms()
        assert {c["name"] for c in user.clouds()} == {"local-a", "local-b"}
    with CloudpilotClient(server.url, admin_token) as admin:
        assert admin.vms() == [] and admin.vms("running") == []
        with pytest.raises(NotFound):
            admin.vm("vm-000000000000")
        with pytest.raises(NotFound):
            admin.stop_vm("vm-000000000000")
        with pytest.raises((NotFound, ConflictError)):
            admin.stop_vm("../jobs")  # one path segment, whatever the id holds


def test_end_reason_and_short_times() -> None:
    assert end_reason({"shutdown_code": 200, "shutdown_message": "200 Intended work completed ok"}) == (
        "200 Intended work completed ok"
    )
    assert end_reason({"shutdown_code": 300, "shutdown_message": "no more work"}) == "300 no more work"
    assert end_reason({"shutdown_code": None, "shutdown_message": "stopped by root"}) == "stopped by root"
    assert end_reason({"failure_reason": "boot timeout"}) == "[red]boot timeout[/red]"
    assert end_reason({}) == ""
    now = time.time()
    assert short_when(None) == ""
    assert short_when(now, now).count(":") == 2
    assert short_when(now - 3 * 86400, now).count("-") == 1
