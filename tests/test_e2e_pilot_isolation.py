"""End to end, real processes: a payload dies with its pilot, an input-sandbox bomb fails fast, and a payload in a
local-cloud VM finds no credential the API accepts."""

from __future__ import annotations

import gzip
import io
import os
import signal
import tarfile
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import TOKEN_PATTERN, Role
from tests.helpers.pilots import PilotProcesses, wait_final, wait_for
from tests.helpers.server import ServerFactory

SH = "/bin/sh"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigkill_of_the_pilot_leaves_no_payload_and_the_job_runs_once_more(
    make_server: ServerFactory, pilots: PilotProcesses, tmp_path: Path
) -> None:
    server = make_server(ServerConfig.model_validate({"lease": {"seconds": 3, "reaper_interval_seconds": 0.3}}))
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    pids = tmp_path / "pids"
    pids.mkdir()
    # The payload starts a grandchild in a session of its own (escaping its group), then both sleep.
    script = (
        f'echo $$ >> {pids}/run-$CLOUDPILOT_JOB_ID; setsid sleep 300 & echo $! >> {pids}/run-$CLOUDPILOT_JOB_ID; '
        f'[ -e {pids}/second ] && exit 0; touch {pids}/second; sleep 300'
    )
    (job_id,) = user.post("/api/v1/jobs", json={"executable": SH, "arguments": ["-c", script]}).json()["ids"]
    token = server.token(Role.PILOT, vo="lhcb")
    first = pilots.start(server.url, token)
    record = pids / f"run-{job_id}"
    wait_for(lambda: record.exists() and len(record.read_text().split()) == 2, what="the payload and its grandchild")
    tree = [int(p) for p in record.read_text().split()]
    assert all(_alive(p) for p in tree)
    os.kill(first.pid, signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: not any(_alive(p) for p in tree), timeout=2, what="the payload's tree to die")
    gone_after = time.monotonic() - killed
    assert gone_after < 2
    # The lease expires; a new pilot runs the job again, once, with nothing of the first attempt alive.
    pilots.start(server.url, token)
    job = wait_final(user, [job_id], timeout=60)[job_id]
    assert job["state"] == "done" and job["attempts"] == 2
    print(f"payload tree gone {gone_after:.2f} s after SIGKILL of its pilot")


def _bomb(size: int) -> bytes:
    """A gzipped tar holding one file of ``size`` zero bytes (compressed a thousandfold)."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as gz, tarfile.open(fileobj=gz, mode="w|") as tar:
        info = tarfile.TarInfo("zeros")
        info.size = size
        tar.addfile(info, _Zeros(size))
    return out.getvalue()


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def test_an_input_sandbox_bomb_fails_fast_without_being_written(
    make_server: ServerFactory, pilots: PilotProcesses
) -> None:
    server = make_server(ServerConfig.model_validate({"storage": {"max_sandbox_bytes": 8 * 1024 * 1024}}))
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    bomb = _bomb(2 * 1024**3)
    assert len(bomb) < 4 * 1024 * 1024
    sandbox = user.post("/api/v1/sandboxes", content=bomb).json()["id"]
    spec = {"executable": SH, "arguments": ["-c", "true"], "input_sandbox": sandbox}
    (job_id,) = user.post("/api/v1/jobs", json=spec).json()["ids"]
    proc = pilots.start(server.url, server.token(Role.PILOT, vo="lhcb"), extra=["--keep-job-dirs"])
    started = time.monotonic()
    job = wait_final(user, [job_id], timeout=60)[job_id]
    took = time.monotonic() - started
    history = user.get(f"/api/v1/jobs/{job_id}").json()["history"]
    assert job["state"] == "failed" and "--max-unpacked-bytes" in history[-1]["reason"]
    written = sum(p.stat().st_size for p in Path(proc.workdir).rglob("*") if p.is_file())  # type: ignore[attr-defined]
    assert written < 16 * 1024 * 1024 and took < 20
    print(f"2 GiB bomb ({len(bomb)} bytes) failed after {took:.1f} s, {written} bytes on disk")


HUNT = r"""
import os, re, sys
pattern = re.compile(rb"cp_[0-9a-fA-F]+_[A-Za-z0-9_\-]+")
found = set()
def scan(data):
    found.update(m.decode() for m in pattern.findall(data))
for top in sys.argv[1:]:
    for base, dirs, files in os.walk(top):
        for name in files:
            try:
                with open(os.path.join(base, name), "rb") as f:
                    scan(f.read(1 << 22))
            except OSError:
                pass
scan("\0".join(f"{k}={v}" for k, v in os.environ.items()).encode())
for pid in os.listdir("/proc"):
    if pid.isdigit():
        for entry in ("environ", "cmdline", "mem"):
            try:
                with open(f"/proc/{pid}/{entry}", "rb") as f:
                    scan(f.read(1 << 20))
            except OSError:
                pass
print("uid", os.getuid())
for token in sorted(found):
    print("FOUND", token)
"""


@pytest.mark.parametrize("payload_user", ["nobody"])
def test_a_payload_in_a_local_vm_finds_no_credential_the_api_accepts(
    make_server: ServerFactory, db_url: str, payload_user: str
) -> None:
    # The VM tree must be reachable by the payload user: a data directory outside pytest's 0700 temp dirs.
    data = Path(tempfile.mkdtemp(prefix="cloudpilot-hunt-", dir="/tmp"))
    data.chmod(0o711)
    config = ServerConfig.model_validate(
        {
            "database_url": None if db_url.startswith("sqlite") else db_url,
            "clouds": {
                "c1": {
                    "driver": "local", "flavors": {"f": {"cores": 1, "memory_mb": 2048}}, "max_vms": 1,
                    "start_rate_per_minute": 60, "payload_user": payload_user,
                }
            },
            "policy": {"idle_seconds": 4, "min_work_seconds_per_core": 0},
            "provisioner": {"interval_seconds": 0.5, "pilot_idle_timeout_seconds": 4},
        }
    )
    server = make_server(config, data_dir=data / "data")
    (data / "data").chmod(0o711)
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    spec = {"executable": "/usr/bin/python3", "arguments": ["-c", HUNT, str(data)], "output_files": []}
    (job_id,) = user.post("/api/v1/jobs", json=spec).json()["ids"]
    job = wait_final(user, [job_id], timeout=120)[job_id]
    assert job["state"] == "done", job
    log = user.get(f"/api/v1/jobs/{job_id}/output")
    with tarfile.open(fileobj=io.BytesIO(log.content)) as tar:
        text = tar.extractfile("job.log").read().decode()  # type: ignore[union-attr]
    assert "uid 65534" in text
    found = [line.split()[1] for line in text.splitlines() if line.startswith("FOUND")]
    for token in found:
        assert TOKEN_PATTERN.fullmatch(token)
        r = httpx.get(f"{server.url}/api/v1/jobs", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401, (token[:12], r.status_code)
    print(f"credential hunt as {payload_user}: {len(found)} token-shaped strings, all refused")
