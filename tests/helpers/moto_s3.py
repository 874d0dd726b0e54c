"""moto's S3 server as a real process on 127.0.0.1 (real HTTP, real S3 API), one per test session.

Each test takes a bucket of its own (``new_bucket``), so tests do not see each other's sandboxes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.server import free_port

REGION = "us-east-1"
# moto takes any key pair; given explicitly so that boto3 never looks for real credentials.
ACCESS_KEY = "AKIAMOTOSANDBOXES"
SECRET_KEY = "moto-sandbox-secret"
KEY_ENV = {"CLOUDPILOT_TEST_S3_ACCESS": ACCESS_KEY, "CLOUDPILOT_TEST_S3_SECRET": SECRET_KEY}


@dataclass
class MotoS3:
    endpoint: str

    def client(self) -> Any:
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def new_bucket(self) -> str:
        name = f"sandboxes-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def storage(self, bucket: str, **extra: object) -> dict[str, object]:
        """A ``storage:`` section on this server, credentials from KEY_ENV's variables."""
        return {
            "kind": "s3",
            "endpoint": self.endpoint,
            "bucket": bucket,
            "region": REGION,
            "addressing_style": "path",
            "access_key": {"env": "CLOUDPILOT_TEST_S3_ACCESS"},
            "secret_key": {"env": "CLOUDPILOT_TEST_S3_SECRET"},
            **extra,
        }


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto's server exited: {log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("moto's server did not listen within 30 s")


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    pytest.importorskip("moto.server")
    pytest.importorskip("boto3")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_listening(port, proc, log)
        yield MotoS3(f"http://127.0.0.1:{port}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture
def s3_keys(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The key pair in the environment variables that MotoS3.storage names (servers in this process read it)."""
    for name, value in KEY_ENV.items():
        monkeypatch.setenv(name, value)
    return KEY_ENV
