"""The ``local`` cloud with real processes: booting user-data, failure injection, destroy, restart."""

from __future__ import annotations

import base64
import gzip
import json
import os
import signal
import stat
import sys
import time
from collections.abc import Callable, Iterator
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any

import pytest

from cloudpilot.clouds.base import Instance, InstanceState
from cloudpilot.clouds.local import LocalCloudDriver
from cloudpilot.clouds.local_cloudinit import UserDataError, parse_user_data, plan_boot
from tests.helpers.clouds import BUSY_USER_DATA, FLAVORS, SECRET, launch, wait_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the local cloud needs POSIX processes")

MakeDriver = Callable[..., LocalCloudDriver]

READ_AND_WRITE = (
    "import os; r = os.environ['CLOUDPILOT_VM_ROOT']; "
    "open(r + '/result.txt', 'w').write(open(r + '/etc/cloudpilot/secret.txt').read().upper())"
)
GZIPPED = base64.b64encode(gzip.compress(b"zipped payload\n")).decode()

BOOT_USER_DATA = f"""#cloud-config
write_files:
  - path: /etc/cloudpilot/secret.txt
    permissions: '0600'
    owner: root:root
    content: {SECRET}
  - path: /opt/data/zipped.txt
    encoding: gz+b64
    content: {GZIPPED}
runcmd:
  - [python3, -c, "{READ_AND_WRITE}"]
  - while [ ! -f go ]; do sleep 0.02; done
power_state:
  mode: poweroff
"""


@pytest.fixture
def make_driver(tmp_path: Path) -> Iterator[MakeDriver]:
    """Drivers on ``tmp_path/cloud``; every VM they leave behind is destroyed at the end."""
    made: list[LocalCloudDriver] = []

    def make(**options: Any) -> LocalCloudDriver:
        options.setdefault("root", tmp_path / "cloud")
        driver = LocalCloudDriver("local", flavors=FLAVORS, **options)
        made.append(driver)
        return driver

    yield make
    for driver in made:
        for inst in driver.list():
            driver.destroy(inst.instance_id)


def state_of(driver: LocalCloudDriver, instance_id: str) -> InstanceState | None:
    return next((i.state for i in driver.list() if i.instance_id == instance_id), None)


def wait_state(driver: LocalCloudDriver, inst: Instance, state: InstanceState, timeout: float = 10) -> None:
    wait_for(lambda: state_of(driver, inst.instance_id) is state, timeout=timeout, what=f"state {state}")


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited; a zombie waiting for a parent that does not reap counts as exited."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat_line[stat_line.rfind(")") + 2] in "ZX"


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def test_boot_writes_files_runs_commands_and_halts(make_driver: MakeDriver) -> None:
    driver = make_driver(boot_seconds=0.3)
    inst = driver.create(launch("vm-1", user_data=BOOT_USER_DATA))
    root = driver.vm_root(inst.instance_id)
    assert inst.state is InstanceState.PENDING
    assert state_of(driver, inst.instance_id) is InstanceState.PENDING
    assert not (root / "etc").exists()  # still booting

    wait_state(driver, inst, InstanceState.RUNNING)  # a VM runs before cloud-init has done anything
    result = root / "result.txt"
    wait_for(lambda: result.exists() and result.read_text(), what="the runcmd result")
    assert result.read_text() == SECRET.upper()
    secret = root / "etc/cloudpilot/secret.txt"
    assert secret.read_text() == SECRET
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert (root / "opt/data/zipped.txt").read_bytes() == b"zipped payload\n"
    assert stat.S_IMODE((root / "opt/data/zipped.txt").stat().st_mode) == 0o644
    assert state_of(driver, inst.instance_id) is InstanceState.RUNNING  # the second command waits for "go"

    (root / "go").touch()
    wait_state(driver, inst, InstanceState.STOPPED)
    console = driver.console_path(inst.instance_id).read_text()
    assert "runcmd 0: exit code 0" in console
    assert "runcmd 1: exit code 0" in console
    assert "power_state" in console
    assert SECRET not in console


def test_boot_seconds_delays_the_boot(make_driver: MakeDriver) -> None:
    driver = make_driver(boot_seconds=0.8)
    started = time.monotonic()
    inst = driver.create(launch("vm-1", user_data="#cloud-config\nruncmd:\n  - touch booted\n"))
    booted = driver.vm_root(inst.instance_id) / "booted"
    time.sleep(0.4)
    assert state_of(driver, inst.instance_id) is InstanceState.PENDING
    assert not booted.exists()
    wait_for(booted.exists, what="the boot")
    assert time.monotonic() - started >= 0.8
    wait_state(driver, inst, InstanceState.STOPPED)  # no power_state: halts once its last process is done


def test_without_power_state_the_vm_runs_until_its_last_process_ends(make_driver: MakeDriver) -> None:
    driver = make_driver()
    user_data = "#cloud-config\nruncmd:\n  - (while [ ! -f go ]; do sleep 0.02; done) > /dev/null 2>&1 &\n"
    inst = driver.create(launch("vm-1", user_data=user_data))
    wait_for(lambda: "runcmd 0: exit code 0" in driver.console_path(inst.instance_id).read_text(), what="runcmd")
    time.sleep(0.2)
    assert state_of(driver, inst.instance_id) is InstanceState.RUNNING  # the background loop still runs
    (driver.vm_root(inst.instance_id) / "go").touch()
    wait_state(driver, inst, InstanceState.STOPPED)


def test_failed_boot_ends_in_error_and_runs_nothing(make_driver: MakeDriver) -> None:
    driver = make_driver(fail_share=1)
    inst = driver.create(launch("vm-1", user_data=BOOT_USER_DATA))
    wait_state(driver, inst, InstanceState.ERROR)
    root = driver.vm_root(inst.instance_id)
    assert list(root.iterdir()) == []
    assert "failure injection" in driver.state_reason(inst.instance_id)


def test_hung_boot_stays_pending_until_destroyed(make_driver: MakeDriver) -> None:
    driver = make_driver(hang_share=1)
    inst = driver.create(launch("vm-1", user_data=BOOT_USER_DATA))
    wait_for(lambda: "boot hangs" in driver.console_path(inst.instance_id).read_text(), what="the hang")
    time.sleep(0.3)
    assert state_of(driver, inst.instance_id) is InstanceState.PENDING
    assert list(driver.vm_root(inst.instance_id).iterdir()) == []
    pid = driver.supervisor_pid(inst.instance_id)
    assert pid is not None
    driver.destroy(inst.instance_id)
    assert driver.list() == []
    wait_for(lambda: gone(pid), timeout=3, what="the supervisor to exit")


def test_failure_injection_is_repeatable_with_a_seed(make_driver: MakeDriver, tmp_path: Path) -> None:
    def outcomes(root: Path) -> list[str]:
        driver = make_driver(root=root, fail_share=0.4, hang_share=0.3, seed=7, boot_seconds=30)
        made = [driver.create(launch(f"vm-{n}")) for n in range(8)]
        return [json.loads((root / i.instance_id / "instance.json").read_text())["boot_outcome"] for i in made]

    first, second = outcomes(tmp_path / "a"), outcomes(tmp_path / "b")
    assert first == second
    assert set(first) <= {"ok", "fail", "hang"} and len(set(first)) > 1


def test_destroy_kills_the_whole_process_tree(make_driver: MakeDriver) -> None:
    # A shell, a background child, and a grandchild that moved to a session of its own (as pilot payloads do).
    user_data = """#cloud-config
write_files:
  - path: /spawn.py
    content: |
      import subprocess, time
      p = subprocess.Popen(["sleep", "300"], start_new_session=True)
      open("session.pid", "w").write(str(p.pid))
      time.sleep(300)
runcmd:
  - |
    echo $$ > sh.pid
    sleep 300 &
    echo $! > child.pid
    python3 spawn.py &
    wait
power_state:
  mode: poweroff
"""
    driver = make_driver()
    inst = driver.create(launch("vm-1", user_data=user_data))
    root = driver.vm_root(inst.instance_id)
    names = ("sh.pid", "child.pid", "session.pid")
    pids = wait_for(lambda: [read_pid(root / n) for n in names] if all(read_pid(root / n) for n in names) else None)
    supervisor = driver.supervisor_pid(inst.instance_id)
    assert supervisor is not None and not gone(supervisor)
    assert not any(gone(pid) for pid in pids)

    driver.destroy(inst.instance_id)
    assert driver.list() == []
    assert not (driver.root / inst.instance_id).exists()
    assert "runcmd 0: start" in driver.console_path(inst.instance_id).read_text()  # the console is kept
    wait_for(lambda: all(gone(pid) for pid in [*pids, supervisor]), timeout=3, what="the VM's processes to exit")
    driver.destroy(inst.instance_id)  # again: nothing to do


def test_a_new_driver_on_the_same_root_sees_the_same_instances(make_driver: MakeDriver) -> None:
    first = make_driver()
    busy = first.create(launch("vm-busy"))
    done = first.create(launch("vm-done", user_data="#cloud-config\nruncmd:\n  - 'true'\n"))
    wait_state(first, busy, InstanceState.RUNNING)
    wait_state(first, done, InstanceState.STOPPED)

    second = make_driver()
    assert [(i.instance_id, i.vm_id, i.state, i.flavor) for i in second.list()] == [
        (i.instance_id, i.vm_id, i.state, i.flavor) for i in first.list()
    ]
    assert second.create(launch("vm-busy")).instance_id == busy.instance_id
    second.destroy(busy.instance_id)
    assert [i.instance_id for i in first.list()] == [done.instance_id]


def test_a_killed_supervisor_reads_as_stopped_and_destroy_clears_what_it_left(make_driver: MakeDriver) -> None:
    driver = make_driver()
    inst = driver.create(launch("vm-1", user_data="#cloud-config\nruncmd:\n  - echo $$ > sh.pid; exec sleep 60\n"))
    pid_file = driver.vm_root(inst.instance_id) / "sh.pid"
    wait_for(lambda: read_pid(pid_file), what="the command to start")
    supervisor = driver.supervisor_pid(inst.instance_id)
    assert supervisor is not None
    os.kill(supervisor, signal.SIGKILL)
    wait_state(driver, inst, InstanceState.STOPPED)
    leftover = read_pid(pid_file)
    assert leftover is not None and not gone(leftover)
    driver.destroy(inst.instance_id)
    wait_for(lambda: gone(leftover), timeout=3, what="the orphaned command to be killed")


def test_a_path_escaping_the_root_is_refused_before_anything_is_written(make_driver: MakeDriver) -> None:
    user_data = f"""#cloud-config
write_files:
  - path: /etc/fine.txt
    content: fine
  - path: ../../outside.txt
    content: {SECRET}
runcmd:
  - touch ran
"""
    driver = make_driver()
    inst = driver.create(launch("vm-1", user_data=user_data))
    wait_state(driver, inst, InstanceState.ERROR)
    root = driver.vm_root(inst.instance_id)
    assert list(root.iterdir()) == []
    assert not (driver.root / "outside.txt").exists()
    assert not (driver.root.parent / "outside.txt").exists()
    reason = driver.state_reason(inst.instance_id)
    assert "write_files entry 1" in reason
    assert SECRET not in reason and "outside" not in reason


def test_mime_multipart_user_data_boots(make_driver: MakeDriver) -> None:
    message = MIMEMultipart()
    message.attach(MIMEText("#cloud-config\nwrite_files:\n  - path: /etc/a.txt\n    content: a\n", "cloud-config"))
    message.attach(MIMEText("#!/bin/sh\ntouch script-ran\n", "x-shellscript"))
    message.attach(MIMEText("#cloud-config\nruncmd:\n  - cp etc/a.txt copied.txt\n", "cloud-config"))
    driver = make_driver()
    inst = driver.create(launch("vm-1", user_data=message.as_string()))
    wait_state(driver, inst, InstanceState.STOPPED)
    root = driver.vm_root(inst.instance_id)
    assert (root / "copied.txt").read_text() == "a"
    assert not (root / "script-ran").exists()  # only the cloud-config subset is applied
    assert "text/x-shellscript: ignored" in driver.console_path(inst.instance_id).read_text()


def test_user_data_errors_never_quote_the_user_data(tmp_path: Path) -> None:
    with pytest.raises(UserDataError) as caught:
        parse_user_data(f"#cloud-config\nwrite_files: [{SECRET}\n")
    assert SECRET not in str(caught.value)
    with pytest.raises(UserDataError) as caught:
        plan_boot(f"#cloud-config\nwrite_files:\n  - path: /x\n    encoding: gz+b64\n    content: {SECRET}\n", tmp_path)
    assert SECRET not in str(caught.value)
    assert plan_boot(BUSY_USER_DATA, tmp_path).power_off
    assert plan_boot("", tmp_path).runcmd == []


def test_mime_parts_merge_as_their_merge_type_says() -> None:
    def user_data(merge_type: str | None) -> str:
        message = MIMEMultipart()
        message.attach(MIMEText("#cloud-config\nruncmd: [ours]\npower_state: {mode: poweroff}\n", "cloud-config"))
        site = MIMEText("#cloud-config\nruncmd: [theirs]\npower_state: {mode: reboot}\n", "cloud-config")
        if merge_type:
            site["Merge-Type"] = merge_type
        message.attach(site)
        return message.as_string()

    appended, _ = parse_user_data(user_data("dict(no_replace,recurse_list)+list(append)+str()"))
    assert appended["runcmd"] == ["ours", "theirs"]
    assert appended["power_state"] == {"mode": "poweroff"}
    replaced, _ = parse_user_data(user_data(None))  # cloud-init's default: a later part replaces
    assert replaced["runcmd"] == ["theirs"]
