"""SSH contextualization without a VM: the script it sends, and the loop's retries and failures (fake runner)."""

from __future__ import annotations

import base64
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cloudpilot.config.clouds import SshContextConfig
from cloudpilot.context.ssh_plan import STARTED_MARK, ssh_plan
from cloudpilot.context.userdata import PilotContext
from cloudpilot.domain.auth import Role
from cloudpilot.domain.vms import VM, VMState
from cloudpilot.services.ssh_context import SshContextualizer
from cloudpilot.services.ssh_transport import SshNotReady, SshScriptFailed, SshTarget
from cloudpilot.store.database import Database
from cloudpilot.store.tokens import TokenRepository
from cloudpilot.store.vms import VMRepository

TOKEN = "cp_pilot_tok3n-very-secret"


def context() -> PilotContext:
    return PilotContext(server_url="http://10.0.2.2:8080", vm_id="vm-1", vo="lhcb", pilot_token=TOKEN, cores=1)


def test_the_script_installs_files_and_starts_the_pilot_detached_with_no_secret_in_clear() -> None:
    script = ssh_plan(context(), b"PK-zipapp-bytes").script
    assert TOKEN not in script  # files travel base64-encoded on the session's stdin, never on a command line
    blobs = re.findall(r"<<'CLOUDPILOT_EOF'\n(.*?)\nCLOUDPILOT_EOF", script, flags=re.S)
    decoded = [base64.b64decode(b) for b in blobs]
    assert TOKEN.encode() + b"\n" in decoded and b"PK-zipapp-bytes" in decoded
    start = next(d.decode() for d in decoded if d.startswith(b"#!/bin/sh"))
    assert "--token-file" in start and "--delete-token-file" in start and start.rstrip().endswith("poweroff")
    assert "chmod 0600 /etc/cloudpilot/pilot.token" in script
    assert "nohup setsid /bin/sh /opt/cloudpilot/start.sh" in script
    assert script.rstrip().endswith(f"echo '{STARTED_MARK}'")


class Endpoints:
    def __init__(self) -> None:
        self.endpoint: tuple[str, int] | None = None

    def ssh_endpoint(self, instance_id: str) -> tuple[str, int] | None:
        return self.endpoint


class Runner:
    def __init__(self) -> None:
        self.outcomes: list[str | Exception] = []
        self.targets: list[SshTarget] = []

    def run(self, target: SshTarget, script: str) -> str:
        self.targets.append(target)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def setup(db: Database, tmp_path: Path) -> tuple[SshContextualizer, Endpoints, Runner, VMRepository]:
    vms, tokens = VMRepository(db), TokenRepository(db)
    now = time.time()
    vms.create(VM("vm-1", "golden", "lhcb", "f", 1, 1024, VMState.REQUESTED, now, now), "test")
    vms.move("vm-1", VMState.BOOTING, now, "created", instance_id="i-1")
    tokens.create(Role.PILOT, "vm-1", now, vo="lhcb", vm_id="vm-1")
    endpoints, runner = Endpoints(), Runner()
    settings = {"golden": SshContextConfig(key_file=tmp_path / "key", retry_seconds=1)}
    loop = SshContextualizer(vms, tokens, {"golden": endpoints}, settings, runner, _pool=ThreadPoolExecutor(1))
    loop.submit("vm-1", "golden", "i-1", context(), deadline=now + 100, now=now)
    return loop, endpoints, runner, vms


def settle(loop: SshContextualizer, now: float) -> list[str]:
    done = loop.tick(now)
    time.sleep(0.05)  # the attempt runs in the pool
    return done + loop.tick(now)


def test_waits_for_an_address_retries_while_the_vm_boots_then_starts_the_pilot(db: Database, tmp_path: Path) -> None:
    loop, endpoints, runner, vms = setup(db, tmp_path)
    now = time.time()
    assert settle(loop, now) == [] and runner.targets == []  # no endpoint yet: nothing tried
    endpoints.endpoint = ("127.0.0.1", 40022)
    runner.outcomes = [SshNotReady("connection refused"), f"{STARTED_MARK}\n"]
    assert settle(loop, now + 1) == []  # refused: sshd not up yet
    assert settle(loop, now + 1.5) == []  # not before retry_seconds
    assert settle(loop, now + 3) == ["vm-1"]
    assert [(t.host, t.port, t.user) for t in runner.targets] == [("127.0.0.1", 40022, "root")] * 2
    assert vms.get("vm-1").state == VMState.BOOTING and loop.waiting == []


def test_a_failed_script_fails_the_vm_with_the_token_redacted(db: Database, tmp_path: Path) -> None:
    loop, endpoints, runner, vms = setup(db, tmp_path)
    endpoints.endpoint = ("10.1.2.3", 22)
    runner.outcomes = [SshScriptFailed(f"the contextualization script exited 1: useradd: cannot lock; {TOKEN}")]
    settle(loop, time.time())
    vm = vms.get("vm-1")
    assert vm.state == VMState.FAILED and "useradd" in (vm.failure_reason or "")
    assert TOKEN not in (vm.failure_reason or "")


def test_no_session_by_the_boot_timeout_fails_the_vm_with_the_last_error(db: Database, tmp_path: Path) -> None:
    loop, endpoints, runner, vms = setup(db, tmp_path)
    endpoints.endpoint = ("127.0.0.1", 40022)
    runner.outcomes = [SshNotReady("127.0.0.1:40022: timed out")]
    now = time.time()
    settle(loop, now)
    settle(loop, now + 101)
    vm = vms.get("vm-1")
    assert vm.state == VMState.FAILED
    assert "boot timeout" in (vm.failure_reason or "") and "timed out" in (vm.failure_reason or "")
