"""Several servers on one PostgreSQL database: a database of their own, and a real HAProxy in front of them
(the binary of Debian's ``haproxy``; skipped without it, failing on CI, where .ci/run installs it)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.conftest import ON_CI
from tests.helpers.server import free_port

ROOT = Path(__file__).resolve().parents[2]
HAPROXY_TEMPLATE = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
# Lines of the site's configuration a test does without: syslog, chroot, its own user, daemon mode.
SITE_ONLY = ("log ", "option httplog", "chroot", "user ", "group ", "daemon", "stats socket")


@contextmanager
def fresh_database(pg_url: str) -> Iterator[str]:
    """A new, empty database on the server of ``pg_url`` (the URL of the session's test database), dropped after."""
    name = f"cloudpilot_{uuid.uuid4().hex[:10]}"
    admin = pg_url.replace("+psycopg", "")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield pg_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if Path(p).exists()), None)
    if found is None:
        if ON_CI:
            pytest.fail("haproxy is not installed, and on CI its tests must run (.ci/run installs it)")
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    return found


def haproxy_config(port: int, backends: list[int]) -> str:
    """deploy/haproxy/haproxy.cfg made to listen on 127.0.0.1:PORT in the foreground, with these servers,
    checked every 500 ms instead of every 2 s (the rest as sites run it)."""
    text = HAPROXY_TEMPLATE.read_text()
    head, _, _servers = text.partition("    # --- servers")
    head = head.replace("bind :8443 ssl crt /etc/haproxy/cloudpilot.pem", f"bind 127.0.0.1:{port}")
    head = head.replace("inter 2s", "inter 500ms")
    head = head.replace("maxconn 20000", "maxconn 1000")  # within a test runner's open-file limit
    keep = [line for line in head.splitlines() if not line.strip().startswith(SITE_ONLY)]
    servers = [f"    server s{n} 127.0.0.1:{p} check" for n, p in enumerate(backends)]
    return "\n".join([*keep, *servers, ""])


@dataclass
class HAProxy:
    url: str
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def haproxy(tmp: Path, backends: list[int]) -> Iterator[HAProxy]:
    binary = haproxy_binary()
    port = free_port()
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(haproxy_config(port, backends))
    check = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, f"haproxy refuses the configuration:\n{check.stdout}{check.stderr}"
    log = (tmp / "haproxy.log").open("wb")
    proc = subprocess.Popen([binary, "-db", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"haproxy did not start: {(tmp / 'haproxy.log').read_text()}") from None
            time.sleep(0.05)
    front = HAProxy(f"http://127.0.0.1:{port}", proc)
    try:
        yield front
    finally:
        front.stop()
        log.close()
