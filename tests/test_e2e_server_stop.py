"""Nothing left behind: a `cloudpilot server` stopped by SIGTERM or SIGINT stops the VMs it started on local
clouds, and their jobs go back to the queue without spending an attempt; `keep_vms_on_stop` keeps them for a
restart, which takes them back. Real server processes, real local VMs, pilots and payloads."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from cloudpilot.clouds.local_procs import is_running
from tests.helpers.pilots import wait_for
from tests.helpers.server import free_port, own_user_clouds
from tests.helpers.server_process import CLI, ServerProcess, ServerProcesses

PY = sys.executable


CLOUD = {"driver": "local", "flavors": {"small": {"cores": 1, "memory_mb": 1024}}, "max_vms": 2, "boot_seconds": 0.2}


class Server:
    """One data directory and port, started and stopped as an operator would (signals to the server only)."""

    def __init__(self, processes: ServerProcesses, tmp: Path, keep: bool) -> None:
        self.processes, self.data, self.port = processes, tmp / "data", free_port()
        self.config = tmp / "server.yaml"
        cloud = {**CLOUD, "keep_vms_on_stop": keep}
        clouds = own_user_clouds({"local-a": cloud})
        self.config.write_text(yaml.safe_dump({"clouds": clouds, "provisioner": {"interval_seconds": 1}}))
        self.current: ServerProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.current = self.processes.start(self.data, "--config", str(self.config), port=self.port)

    def token(self, *args: str) -> str:
        cmd = [*CLI, "token", "create", "--data-dir", str(self.data), *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]

    def stop(self, sig: signal.Signals) -> str:
        assert self.current is not None
        self.current.proc.send_signal(sig)  # the server alone: local VMs run in sessions of their own
        self.current.proc.wait(timeout=30)
        return self.current.log()


@pytest.fixture
def servers(server_processes: ServerProcesses, tmp_path: Path):  # type: ignore[no-untyped-def]
    return lambda keep: Server(server_processes, tmp_path, keep)


def payload(marker: Path, seconds: float) -> dict:
    # The payload writes its pid, then works; done when it finishes.
    code = f"import os,time; open({str(marker)!r},'a').write(str(os.getpid())+'\\n'); time.sleep({seconds})"
    return {"name": "long", "executable": PY, "arguments": ["-c", code],
            "requirements": {"wall_seconds": 600}, "max_attempts": 1}  # fmt: skip


def pids(marker: Path) -> list[int]:
    return [int(line) for line in marker.read_text().split()] if marker.exists() else []


def started_payload(server: Server, marker: Path, seconds: float) -> tuple[str, int, int]:
    """Start the server, submit one payload as alice and wait for it to run: her token, the job, its pid."""
    server.start()
    alice = server.token("--role", "user", "--vo", "lhcb", "--name", "alice")
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {alice}"}) as user:
        (job_id,) = user.post("/api/v1/jobs", json=payload(marker, seconds)).json()["ids"]
    wait_for(lambda: len(pids(marker)) == 1, timeout=60, what="the payload to start")
    (pid,) = pids(marker)
    return alice, job_id, pid


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_server_stops_its_local_vms_and_requeues_their_jobs(servers, tmp_path: Path, sig) -> None:  # type: ignore[no-untyped-def]
    server = servers(keep=False)
    alice, job_id, pid = started_payload(server, marker := tmp_path / "pids", 120)

    log = server.stop(sig)
    deadline = time.time() + 5
    while is_running(pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not is_running(pid), "the payload of a local VM outlived its server"
    assert "stopped with the server" in log

    # Restarted, the server shows the job back in the queue, its one attempt not spent; it runs again.
    server.start()
    user = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {alice}"})
    found = user.get(f"/api/v1/jobs/{job_id}").json()
    assert any("stopped with the server" in e["reason"] for e in found["history"])
    assert found["max_attempts"] == 2  # one more: the server, not the job, ended that attempt
    wait_for(lambda: len(pids(marker)) == 2, timeout=60, what="the job to run again")
    user.close()
    server.stop(signal.SIGTERM)


def test_keep_vms_on_stop_leaves_them_to_a_restart(servers, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = servers(keep=True)
    alice, job_id, pid = started_payload(server, marker := tmp_path / "pids", 8)
    server.stop(signal.SIGTERM)
    assert is_running(pid)  # the VM and its payload carry on

    server.start()  # the pilot reaches the restarted server and reports: the job counts, once
    user = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {alice}"})
    wait_for(lambda: user.get(f"/api/v1/jobs/{job_id}").json()["state"] == "done", timeout=90, what="the job")
    assert len(pids(marker)) == 1
    user.close()
    server.stop(signal.SIGTERM)


def test_a_stopping_server_answers_its_long_polls_at_once_and_logs_no_error(servers) -> None:  # type: ignore[no-untyped-def]
    # A pilot waiting for work in a long poll must not hold the server's stop for its whole grace period, to be
    # cancelled with a traceback in the log: the stop answers it "no job" (204), and the pilot retries elsewhere.
    server = servers(keep=False)
    server.start()
    token = server.token("--role", "pilot", "--name", "shared-pilot", "--vo", "lhcb")
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as pilot:
        registered = pilot.post("/api/v1/pilots", json={"cores": 1}).json()
    session = httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {registered['session_token']}"}, timeout=120
    )
    answers: list[tuple[int, float]] = []

    def long_poll() -> None:
        r = session.post("/api/v1/pilots/match", json={"pilot_id": registered["id"], "wait_seconds": 60})
        answers.append((r.status_code, time.monotonic()))

    poller = threading.Thread(target=long_poll)
    poller.start()
    time.sleep(1.0)  # the poll is waiting in the server
    assert not answers
    stopped_at = time.monotonic()
    log = server.stop(signal.SIGTERM)
    exited_after = time.monotonic() - stopped_at
    poller.join(timeout=10)
    session.close()
    assert answers and answers[0][0] == 204, answers
    assert answers[0][1] - stopped_at < 1.0, "the long poll was held by the stop"
    assert exited_after < 3.0, f"the server took {exited_after:.1f} s to stop"
    assert "Traceback" not in log and "graceful shutdown exceeded" not in log, log
