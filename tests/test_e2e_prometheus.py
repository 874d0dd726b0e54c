"""A real Prometheus scrapes a real cloudpilot server with an admin token, and answers a job count back."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cloudpilot.domain.auth import Role
from tests.conftest import ON_CI
from tests.helpers.server import ServerFactory, free_port


@pytest.fixture
def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        if ON_CI:
            pytest.fail("the prometheus binary is missing (Debian package prometheus), and on CI this test must run")
        pytest.skip("the prometheus binary is not installed (Debian package prometheus)")
    return found


class Prometheus:
    def __init__(self, binary: str, workdir: Path, target: str, token: str) -> None:
        workdir.mkdir()
        self.url = f"http://127.0.0.1:{free_port()}"
        config = workdir / "prometheus.yml"
        scrape = {
            "job_name": "cloudpilot",
            "scrape_interval": "1s",
            "scrape_timeout": "1s",
            "authorization": {"credentials": token},
            "static_configs": [{"targets": [target]}],
        }
        # JSON is YAML; the file holds a token, so only its owner may read it.
        config.write_text(json.dumps({"global": {"scrape_interval": "1s"}, "scrape_configs": [scrape]}))
        config.chmod(0o600)
        self.log_path = workdir / "prometheus.log"
        cmd = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address={self.url.removeprefix('http://')}",
        ]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def query(self, expr: str) -> list[dict]:
        try:
            r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5)
        except httpx.TransportError:
            return []  # not listening yet
        return r.json()["data"]["result"] if r.status_code == 200 else []

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def start_prometheus(prometheus_binary: str, tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    started: list[Prometheus] = []

    def start(target: str, token: str) -> Prometheus:
        prom = Prometheus(prometheus_binary, tmp_path / f"prometheus{len(started)}", target, token)
        started.append(prom)
        return prom

    yield start
    for prom in started:
        prom.stop()


def test_prometheus_scrapes_the_job_count(make_server: ServerFactory, start_prometheus) -> None:  # type: ignore[no-untyped-def]
    server = make_server()
    user = server.client(server.token(Role.USER, "alice", vo="atlas"))
    r = user.post("/api/v1/jobs", json={"job": {"executable": "/bin/true"}, "parameter_count": 3})
    assert r.status_code == 201, r.text
    prom: Prometheus = start_prometheus(server.url.removeprefix("http://"), server.token(Role.ADMIN, "prometheus"))

    query = 'cloudpilot_jobs{job="cloudpilot", vo="atlas", state="waiting"}'
    deadline = time.monotonic() + 90
    while prom.value(query) != 3:
        if time.monotonic() > deadline or prom.proc.poll() is not None:
            targets = prom.query("up")
            pytest.fail(f"Prometheus never saw 3 waiting jobs; up: {targets}\n{prom.log_path.read_text()[-3000:]}")
        time.sleep(0.5)
    assert prom.value('up{job="cloudpilot"}') == 1
    submitted = prom.value('cloudpilot_jobs_submitted_total{job="cloudpilot", vo="atlas"}')
    assert submitted is not None and submitted >= 3
