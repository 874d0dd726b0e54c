"""Real pilot processes for end-to-end tests."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

FINAL = {"done", "failed", "killed"}


@dataclass
class PilotProcesses:
    base: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def start(
        self, url: str, token: str, *, cores: int = 1, idle_timeout: float = 30, extra: list[str] = ()
    ) -> subprocess.Popen:
        workdir = self.base / f"pilot{len(self.procs)}"
        workdir.mkdir(parents=True)
        if "--payload-user" not in extra:
            # The suite's payloads run this interpreter (here under /root) in pytest's 0700 temp dirs, out of an
            # unprivileged user's reach: tests of other things keep the pilot's own user (root or not).
            extra = ["--payload-user", pwd.getpwuid(os.geteuid()).pw_name, *extra]
        cmd = [
            sys.executable, "-m", "cloudpilot.pilot",
            "--server", url, "--token", token,
            "--cores", str(cores), "--idle-timeout", str(idle_timeout),
            "--workdir", str(workdir), *extra,
        ]  # fmt: skip
        log = (self.base / f"pilot{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        proc.workdir = workdir  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def log(self, proc: subprocess.Popen) -> str:
        return (self.base / f"pilot{self.procs.index(proc)}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.fixture
def pilots(tmp_path: Path) -> Iterator[PilotProcesses]:
    group = PilotProcesses(tmp_path / "pilots")
    yield group
    group.stop_all()


def wait_final(client: httpx.Client, ids: list[int], timeout: float = 120) -> dict[int, dict]:
    """Poll until every job is final; return them by id."""
    deadline = time.time() + timeout
    wanted = set(ids)
    while True:
        jobs = {}
        after = 0
        while True:
            page = client.get("/api/v1/jobs", params={"after_id": after, "limit": 10000}).json()
            jobs.update({j["id"]: j for j in page["jobs"] if j["id"] in wanted})
            if page["next_after_id"] is None:
                break
            after = page["next_after_id"]
        if all(j["state"] in FINAL for j in jobs.values()) and len(jobs) == len(wanted):
            return jobs
        if time.time() > deadline:
            states = sorted({j["state"] for j in jobs.values()})
            raise AssertionError(f"jobs not final after {timeout} s; states seen: {states}")
        time.sleep(0.3)


def wait_for(predicate, timeout: float = 30, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
