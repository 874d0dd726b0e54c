"""A real cloudpilot server (uvicorn, real HTTP) on 127.0.0.1 in a background thread, and token helpers."""

from __future__ import annotations

import os
import pwd
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import uvicorn

from cloudpilot.api.app import create_app
from cloudpilot.api.http_server import uvicorn_options
from cloudpilot.clouds.errors import CloudConfigError
from cloudpilot.config import ServerConfig
from cloudpilot.config.clouds import LocalCloudConfig
from cloudpilot.domain.auth import Role
from cloudpilot.services.container import Services
from cloudpilot.services.tokens import issue_token


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningServer:
    url: str
    services: Services
    server: uvicorn.Server
    thread: threading.Thread
    clients: list[httpx.Client] = field(default_factory=list)

    def token(self, role: Role, name: str = "", vo: str | None = None, site: str | None = None) -> str:
        now = self.services.clock.now()
        return issue_token(self.services.tokens, role, name or f"{role.value}-{vo}", now, vo=vo, site=site).token

    def client(self, token: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        c = httpx.Client(base_url=self.url, headers=headers, timeout=30)
        self.clients.append(c)
        return c

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        self.server.should_exit = True
        self.thread.join(timeout=10)
        # VMs outlive their server on a real cloud; a test's local VMs must not outlive the test.
        for driver in self.services.provisioner.drivers.values():
            try:
                instances = driver.list()
            except CloudConfigError:  # a misconfigured cloud (a test of one) cannot have started anything
                continue
            for instance in instances:
                driver.destroy(instance.instance_id)
        self.services.close()


def this_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def own_user_clouds(clouds: dict[str, dict]) -> dict[str, dict]:
    """The same for a configuration given as YAML data (servers run as processes): local clouds that name no
    payload user run payloads as this process's user."""
    return {
        name: {**c, "payload_user": this_user()} if c.get("driver") == "local" and "payload_user" not in c else c
        for name, c in clouds.items()
    }


def _own_user_payloads(config: ServerConfig) -> ServerConfig:
    """Local clouds whose test does not name a payload user run payloads as this process's user: the suite's
    payloads run its interpreter (here under /root) in pytest's 0700 temp dirs, out of nobody's reach."""
    clouds = {
        name: c.model_copy(update={"payload_user": this_user()})
        if isinstance(c, LocalCloudConfig) and "payload_user" not in c.model_fields_set
        else c
        for name, c in config.clouds.items()
    }
    return config.model_copy(update={"clouds": clouds})


def start_server(config: ServerConfig, data_dir: Path, port: int | None = None) -> RunningServer:
    config = _own_user_payloads(config)
    services = Services.build(config, data_dir)
    app = create_app(services)
    port = port or free_port()
    # Long polls end at the stop (api/notify.py); anything else a test leaves running must not hold it either.
    settings = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        **{**uvicorn_options(config), "timeout_graceful_shutdown": 1},
    )
    server = uvicorn.Server(settings)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 15
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    services.public_url = f"http://127.0.0.1:{port}"  # where VMs of local clouds reach it
    return RunningServer(services.public_url, services, server, thread)


ServerFactory = Callable[..., RunningServer]


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start servers with a given configuration; all are stopped at the end of the test."""
    started: list[RunningServer] = []

    def make(
        config: ServerConfig | None = None, data_dir: Path | None = None, port: int | None = None
    ) -> RunningServer:
        cfg = config or ServerConfig()
        srv = start_server(cfg, data_dir or tmp_path / f"data{len(started)}", port)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture
def server(make_server: ServerFactory) -> RunningServer:
    return make_server()
