"""``cloudpilot server`` as a real process (its own logging, its own environment), and tokens in its store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import Role
from cloudpilot.services.tokens import issue_token
from cloudpilot.store.database import Database
from cloudpilot.store.migrations import upgrade
from cloudpilot.store.tokens import TokenRepository
from tests.helpers.server import free_port
from tests.helpers.tls import PKI

CLI = [sys.executable, "-c", "from cloudpilot.cli.main import app; app()"]


def store_token(data_dir: Path, role: Role, name: str, vo: str | None = None) -> str:
    """A token written straight into the data directory's database (which it creates), as ``token create``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(ServerConfig().database_url_for(data_dir))
    try:
        upgrade(db)
        return issue_token(TokenRepository(db), role, name, time.time(), vo=vo).token
    finally:
        db.dispose()


@dataclass
class ServerProcess:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to clean up."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, as an operator would; SIGKILL if it does not stop within 15 s."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@dataclass
class ServerProcesses:
    base: Path
    started: list[ServerProcess] = field(default_factory=list)
    data_dirs: set[Path] = field(default_factory=set)  # where local clouds may have left VMs (keep_vms_on_stop)

    def start(
        self,
        data_dir: Path,
        *args: str,
        env: dict[str, str] | None = None,
        port: int | None = None,
        tls: PKI | None = None,
        cwd: Path | None = None,
    ) -> ServerProcess:
        """``tls``: serve HTTPS with its certificate (the URL is https://, checked against its CA)."""
        port = port or free_port()  # a restarted server keeps its port: its pilots know only that URL
        log_path = self.base / f"server{len(self.started)}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [*CLI, "server", "--data-dir", str(data_dir), "--port", str(port), *args]
        self.data_dirs.add((cwd or Path.cwd()) / data_dir)
        if tls is not None:
            cmd += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
                cwd=cwd,
            )
        scheme = "https" if tls is not None else "http"
        server = ServerProcess(f"{scheme}://127.0.0.1:{port}", proc, log_path)
        self.started.append(server)
        deadline = time.time() + 60
        while True:
            try:
                verify = tls.context() if tls is not None else True
                if httpx.get(f"{server.url}/api/v1/health", timeout=2, verify=verify).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"cloudpilot server did not start:\n{server.log()}")
            time.sleep(0.1)

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()
        for data_dir in self.data_dirs:  # a test's local VMs must not outlive it, kept on purpose or not
            destroy_local_vms(data_dir)


def destroy_local_vms(data_dir: Path) -> None:
    """Destroy every local-cloud VM under ``data_dir/clouds`` (VMs run in sessions of their own)."""
    from cloudpilot.clouds.local import LocalCloudDriver

    for root in sorted((data_dir / "clouds").glob("*")) if (data_dir / "clouds").is_dir() else []:
        driver = LocalCloudDriver(root.name, root, {}, max_vms=0)
        for instance in driver.list():
            driver.destroy(instance.instance_id)


@pytest.fixture
def server_processes(tmp_path: Path) -> Iterator[ServerProcesses]:
    group = ServerProcesses(tmp_path / "servers")
    yield group
    group.stop_all()
