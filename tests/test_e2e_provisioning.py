"""End to end through the provisioner: jobs wait, VMs boot on local clouds from their user-data and start
pilots, the jobs run, and idle VMs are stopped and destroyed. Real server, real VM processes, real pilots."""

from __future__ import annotations

import logging
import signal
import sys

import pytest

from cloudpilot.clouds.local_procs import signal_all, vm_processes
from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import TOKEN_PATTERN, Role
from tests.helpers.pilots import wait_final, wait_for
from tests.helpers.server import RunningServer, ServerFactory

PY = sys.executable


def config(**clouds: dict) -> ServerConfig:
    return ServerConfig.model_validate(
        {
            "clouds": clouds,
            "policy": {"idle_seconds": 4, "min_work_seconds_per_core": 0},
            "provisioner": {"interval_seconds": 0.5, "pilot_idle_timeout_seconds": 4, "lost_after_seconds": 6},
            "lease": {"seconds": 6, "heartbeat_seconds": 1, "reaper_interval_seconds": 0.5},
        }
    )


def local(max_vms: int, cores: int = 1, **kw: object) -> dict:
    return {"driver": "local", "flavors": {"f": {"cores": cores, "memory_mb": 2048}}, "max_vms": max_vms,
            "start_rate_per_minute": 60, **kw}  # fmt: skip


def vms(server: RunningServer) -> list[dict]:
    admin = server.client(server.token(Role.ADMIN, "root"))
    return admin.get("/api/v1/vms").json()["vms"]


def submit(server: RunningServer, n: int, seconds: float = 0.5) -> tuple[object, list[int]]:
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    code = f"import time; time.sleep({seconds}); print('ok')"
    body = {"job": {"executable": PY, "arguments": ["-c", code], "requirements": {"wall_seconds": 120}},
            "parameter_count": n}  # fmt: skip
    return user, user.post("/api/v1/jobs", json=body).json()["ids"]


def test_jobs_boot_vms_which_run_them_and_go_away(make_server: ServerFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="cloudpilot")
    server = make_server(config(**{"local-a": local(2, cores=2, boot_seconds=0.5), "local-b": local(1)}))
    user, ids = submit(server, 12)
    jobs = wait_final(user, ids, timeout=120)  # type: ignore[arg-type]
    assert {j["state"] for j in jobs.values()} == {"done"}
    seen = vms(server)
    assert 1 <= len(seen) <= 3  # within the quotas of both clouds
    assert {vm["cloud"] for vm in seen} <= {"local-a", "local-b"}
    # No work left: the pilots idle out and power their VMs off; the monitor destroys them.
    wait_for(lambda: all(vm["state"] == "destroyed" for vm in vms(server)), timeout=60, what="VMs destroyed")
    final = vms(server)
    assert sum(vm["jobs_run"] for vm in final) >= 12
    assert all(vm["terminated_at"] for vm in final)
    assert any((vm["shutdown_message"] or "").startswith(("200", "stopped")) for vm in final)
    for name in ("local-a", "local-b"):
        assert server.services.provisioner.drivers[name].list() == []  # nothing left running
    # The VM tokens were written into the VMs only: not in the server's log, not on the VMs' consoles.
    consoles = list((server.services.data_dir / "clouds").rglob("*.log"))
    assert consoles and caplog.records
    for text in [p.read_text(errors="replace") for p in consoles] + [r.getMessage() for r in caplog.records]:
        assert not TOKEN_PATTERN.search(text)


def test_boot_failures_back_off_a_cloud_and_the_other_does_the_work(make_server: ServerFactory) -> None:
    server = make_server(
        config(
            broken=local(2, fail_share=1.0, price_per_core_hour=0.0),  # cheapest, so tried first
            good=local(2, price_per_core_hour=1.0),
        )
    )
    user, ids = submit(server, 6)
    jobs = wait_final(user, ids, timeout=120)  # type: ignore[arg-type]
    assert {j["state"] for j in jobs.values()} == {"done"}
    broken = [vm for vm in vms(server) if vm["cloud"] == "broken"]
    assert broken and all(vm["state"] in ("failed", "destroyed") and vm["failure_reason"] for vm in broken)
    assert len(broken) <= 2  # backed off after the failures instead of retrying every cycle
    assert all(vm["booted_at"] is None for vm in broken)


def test_a_killed_vm_is_lost_and_its_job_runs_elsewhere(make_server: ServerFactory) -> None:
    server = make_server(config(c=local(2, boot_seconds=0.2)))
    user, (job_id,) = submit(server, 1, seconds=8)
    wait_for(lambda: user.get(f"/api/v1/jobs/{job_id}").json()["state"] == "running", timeout=60, what="run")
    (vm,) = [v for v in vms(server) if v["state"] == "running"]
    driver = server.services.provisioner.drivers["c"]
    # The VM loses power under its job: every process of it at once, with no chance to report.
    supervisor = driver.supervisor_pid(vm["instance_id"])  # type: ignore[attr-defined]
    signal_all(vm_processes(supervisor, include_supervisor=True), signal.SIGKILL)
    job = wait_final(user, [job_id], timeout=120)[job_id]  # type: ignore[arg-type]
    assert job["state"] == "done" and job["attempts"] == 2
    admin = server.client(server.token(Role.ADMIN, "root"))
    history = admin.get(f"/api/v1/vms/{vm['id']}").json()["history"]
    assert "lost" in [h["to_state"] for h in history]
