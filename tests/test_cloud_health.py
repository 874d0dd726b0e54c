"""Clouds that tell (issue 10, item 3): ``/clouds`` and ``cloudpilot clouds`` show each cloud's back-off, failed
cycles in a row, last error, last good boot and median boot time; VM failures are logged once, a repeated cloud
error once a minute; a region the Keystone catalog lacks is a configuration error, not an outage."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from typer.testing import CliRunner

from cloudpilot.cli.main import app
from cloudpilot.clouds.errors import CloudUnavailable
from cloudpilot.clouds.libcloud_driver import LibcloudDriver
from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import Role
from cloudpilot.services.cloud_health import CloudHealth
from cloudpilot.services.vm_monitor import VMMonitor
from cloudpilot.store.database import Database
from cloudpilot.store.jobs import JobRepository
from cloudpilot.store.pilots import PilotRepository
from cloudpilot.store.tokens import TokenRepository
from cloudpilot.store.vms import VMRepository
from tests.helpers.clouds import wait_for
from tests.helpers.fake_openstack import FakeOpenStack
from tests.helpers.server import RunningServer, ServerFactory, free_port

T0 = 1_800_000_000.0
runner = CliRunner()


def server_config(clouds: dict[str, Any], interval: float = 0.3) -> ServerConfig:
    return ServerConfig.model_validate(
        {
            "clouds": clouds,
            "policy": {"idle_seconds": 30, "min_work_seconds_per_core": 0},
            "provisioner": {"interval_seconds": interval, "pilot_idle_timeout_seconds": 30, "lost_after_seconds": 30},
        }
    )


def local(**kw: object) -> dict[str, Any]:
    return {"driver": "local", "flavors": {"f": {"cores": 1, "memory_mb": 1024}}, "start_rate_per_minute": 60, **kw}


def submit(server: RunningServer, n: int) -> None:
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    job = {"executable": sys.executable, "arguments": ["-c", "print('ok')"], "requirements": {"wall_seconds": 120}}
    assert user.post("/api/v1/jobs", json={"job": job, "parameter_count": n}).status_code == 201


def clouds(server: RunningServer, token: str) -> dict[str, dict[str, Any]]:
    result = runner.invoke(app, ["clouds", "--json"], env={"CLOUDPILOT_URL": server.url, "CLOUDPILOT_TOKEN": token})
    assert result.exit_code == 0, result.output
    return {c["name"]: c for c in json.loads(result.stdout)}


def clouds_table(server: RunningServer, token: str) -> str:
    env = {"CLOUDPILOT_URL": server.url, "CLOUDPILOT_TOKEN": token, "COLUMNS": "300"}
    result = runner.invoke(app, ["clouds"], env=env)
    assert result.exit_code == 0, result.output
    return result.stdout


def epoch(moment: str) -> float:
    assert moment.endswith("Z"), moment  # ISO 8601, UTC
    return datetime.fromisoformat(moment.replace("Z", "+00:00")).timestamp()


def test_vms_timing_out_in_one_cycle_back_off_once_and_the_clouds_tell(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cloudpilot")
    server = make_server(
        server_config(
            {
                # cheapest, so tried first; its VMs never boot
                "hung": local(max_vms=3, hang_share=1.0, boot_timeout_seconds=2),
                "good": local(max_vms=3, boot_seconds=0.2, price_per_core_hour=1.0),
            }
        )
    )
    token = server.token(Role.USER, "alice", vo="lhcb")
    submit(server, 3)

    def hung_failed() -> dict[str, Any] | None:
        found = clouds(server, token)
        return found if found["hung"]["failures_in_row"] and found["good"]["last_boot_at"] else None

    found = wait_for(hung_failed, timeout=60, what="the hung cloud's VMs to time out and the good one to boot")

    hung, good = found["hung"], found["good"]
    admin = server.client(server.token(Role.ADMIN, "root"))
    hung_vms = [vm for vm in admin.get("/api/v1/vms").json()["vms"] if vm["cloud"] == "hung"]
    assert len(hung_vms) == 3 and len({vm["created_at"] for vm in hung_vms}) == 1  # one cycle asked for all three
    # three VMs of one cycle are one failed cycle: the first back-off step (300 s), not 1,200 s
    assert hung["failures_in_row"] == 1
    assert epoch(hung["backoff_until"]) - epoch(hung["last_error_at"]) == pytest.approx(300, abs=1)
    assert hung["last_error"].startswith("boot timeout: no pilot after 2 s")
    assert hung["last_boot_at"] is None and hung["median_boot_seconds"] is None and hung["misconfigured"] is None
    assert good["failures_in_row"] == 0 and good["backoff_until"] is None and good["last_error"] is None
    assert 0 <= good["median_boot_seconds"] < 30
    assert abs(epoch(good["last_boot_at"]) - server.services.clock.now()) < 60

    table = clouds_table(server, token)
    assert "backing off until" in table and "1 failed cycle(s) in a row" in table
    assert "boot timeout" in table and "median" in table

    # each VM failure is logged once, at WARNING, with the VM's id, its cloud and why
    for vm in hung_vms:
        lines = [r for r in caplog.records if vm["id"] in r.getMessage() and "failed" in r.getMessage()]
        assert len(lines) == 1, [r.getMessage() for r in lines]
        assert lines[0].levelno == logging.WARNING
        assert "on hung" in lines[0].getMessage() and "boot timeout" in lines[0].getMessage()


@pytest.fixture
def openstack() -> Iterator[FakeOpenStack]:
    """Requested before make_server, so the servers stop (listing their clouds) before the fake does."""
    fake = FakeOpenStack(password="demo-password", regions=("RegionOne",)).start()
    try:
        yield fake
    finally:
        fake.stop()


def openstack_cloud(fake: FakeOpenStack, image: str = "img-alma9", **driver_kwargs: str) -> dict[str, Any]:
    kwargs = {"ex_force_auth_url": fake.url, "ex_force_auth_version": "3.x_password", "ex_tenant_name": "physics"}
    return {
        "driver": "libcloud",
        "provider": "openstack",
        "driver_args": {"key": "demo", "secret": "demo-password"},
        "driver_kwargs": {**kwargs, "timeout": 5, **driver_kwargs},
        "images": {"*": image},
        "flavors": {"small": {"cores": 1, "memory_mb": 2048, "size": "m1.small"}},
        "max_vms": 2,
        "start_rate_per_minute": 60,
    }


def test_a_region_the_catalog_lacks_is_a_configuration_error_not_an_outage(
    openstack: FakeOpenStack, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cloudpilot")
    cloud = openstack_cloud(openstack, ex_force_service_region="RegionTwo")  # the catalog has RegionOne only
    server = make_server(server_config({"os": cloud}, interval=0.2))
    token = server.token(Role.USER, "alice", vo="lhcb")
    submit(server, 2)

    wait_for(lambda: clouds(server, token)["os"]["misconfigured"], timeout=30, what="the cloud marked misconfigured")
    time.sleep(2)  # ten more cycles
    os_cloud = clouds(server, token)["os"]

    message = os_cloud["misconfigured"]
    assert message.startswith("configuration error: ")
    assert "region 'RegionTwo'" in message and "compute 'nova' in RegionOne" in message
    assert "ex_force_service_region" in message
    assert os_cloud["last_error"] == message and os_cloud["last_error_at"] is not None
    # not an outage: no back-off, no failed boot, and nothing asked of Nova
    assert os_cloud["failures_in_row"] == 0 and os_cloud["backoff_until"] is None
    assert ("POST", "/compute/v2.1/servers") not in openstack.requests
    assert "demo-password" not in json.dumps(os_cloud)
    assert "misconfigured" in clouds_table(server, token)

    logged = [r for r in caplog.records if "catalog" in r.getMessage()]
    assert len(logged) == 1, [r.getMessage() for r in logged]  # once, however many cycles saw it
    assert logged[0].levelno == logging.ERROR and "cloud os is misconfigured" in logged[0].getMessage()


def test_an_image_the_cloud_refuses_stops_the_cloud_without_backing_it_off(
    openstack: FakeOpenStack, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cloudpilot")
    server = make_server(server_config({"os": openstack_cloud(openstack, image="img-retired")}, interval=0.2))
    token = server.token(Role.USER, "alice", vo="lhcb")
    submit(server, 2)  # two VMs wanted in one cycle

    wait_for(lambda: clouds(server, token)["os"]["misconfigured"], timeout=30, what="the cloud marked misconfigured")
    time.sleep(1)  # five more cycles
    os_cloud = clouds(server, token)["os"]

    admin = server.client(server.token(Role.ADMIN, "root"))
    (vm,) = admin.get("/api/v1/vms").json()["vms"]  # the second VM of the cycle was not attempted
    assert vm["state"] in ("failed", "destroyed")
    assert vm["failure_reason"].startswith("configuration error: ") and "Invalid imageRef" in vm["failure_reason"]
    assert os_cloud["misconfigured"] == vm["failure_reason"] == os_cloud["last_error"]
    assert os_cloud["failures_in_row"] == 0 and os_cloud["backoff_until"] is None
    assert openstack.requests.count(("POST", "/compute/v2.1/servers")) == 1
    logged = [r for r in caplog.records if "Invalid imageRef" in r.getMessage()]
    assert len(logged) == 1 and logged[0].levelno == logging.ERROR, [r.getMessage() for r in logged]
    assert vm["id"] in logged[0].getMessage() and "cloud os is misconfigured" in logged[0].getMessage()


def test_a_dead_endpoint_is_logged_once_a_minute_with_a_count(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cloudpilot")
    dead = LibcloudDriver(
        "dead",
        "openstack",
        {"key": "demo", "secret": "demo-password"},
        {"ex_force_auth_url": f"http://127.0.0.1:{free_port()}", "ex_force_auth_version": "3.x_password",
         "ex_tenant_name": "physics", "timeout": 2},
        {"*": "img"},
        {"small": "m1.small"},
    )  # fmt: skip
    config = server_config({"dead": local()})
    health = CloudHealth()
    monitor = VMMonitor(
        config, VMRepository(db), JobRepository(db), PilotRepository(db), TokenRepository(db), {"dead": dead},
        health=health,
    )  # fmt: skip

    for i in range(13):  # every 5 s for a minute: the first is logged, the other 12 counted
        monitor.tick(T0 + 5 * i)

    lines = [r.getMessage() for r in caplog.records if "cannot list dead" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "Connection refused" in lines[0] and "repeated" not in lines[0]
    assert lines[1].endswith("(repeated 12 times in the last 60 s)")
    message, at = health.last_error("dead")  # type: ignore[misc]
    assert "Connection refused" in message and at == T0 + 60


def test_repeats_of_an_error_that_stopped_are_counted_once_the_minute_is_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="cloudpilot")
    health = CloudHealth()
    error = CloudUnavailable("c", "list instances: HTTP 503 <Response object at 0x7f0011223344>")

    for i in range(4):
        health.report("c", error, T0 + i)
        health.flush(T0 + i)
    health.flush(T0 + 59)
    assert len(caplog.records) == 1
    health.flush(T0 + 61)

    assert [r.getMessage() for r in caplog.records][1].endswith("(repeated 3 times in the last 61 s)")
    health.flush(T0 + 200)
    assert len(caplog.records) == 2
