"""The supervisor of one ``local`` VM: ``python -m cloudpilot.clouds.local_vm <vmdir> <lock-fd>``.

The driver starts it detached, in a session of its own, holding the VM's liveness lock on ``<lock-fd>``. It plays
the VM's firmware and cloud-init:

1. stays ``pending`` for the flavor's boot time (``boot_seconds``), or for ever if the boot is meant to hang,
   or ends in ``error`` if the boot is meant to fail (failure injection, drawn by the driver);
2. checks the whole user-data first (:func:`~cloudpilot.clouds.local_cloudinit.plan_boot`): anything it cannot
   apply, such as a file path leaving the VM root, ends the boot in ``error`` before a byte is written;
3. turns ``running``, writes ``write_files`` under the VM root, then runs each ``runcmd`` entry in order (whatever
   the exit codes, like cloud-init) with the VM root as working directory and a minimal environment, output
   appended to the console log like a serial console;
4. halts (``stopped``): right away if the user-data has ``power_state``, killing what is left of the VM,
   otherwise once the VM's last process has ended (a local VM has no operating system to idle in).

SIGTERM (the driver's ``destroy``) powers the VM off: every process of the VM gets SIGTERM, then SIGKILL after
:data:`KILL_GRACE_SECONDS`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO

from cloudpilot.clouds.local_cloudinit import BootPlan, UserDataError, plan_boot
from cloudpilot.clouds.local_procs import become_subreaper, signal_all, vm_processes

# Files of one VM directory, shared with the driver.
INSTANCE_FILE = "instance.json"  # written once by the driver: ids, flavor, tags, the boot plan
USER_DATA_FILE = "user-data"  # mode 0600: it carries the pilot's credential
STATE_FILE = "state.json"  # the supervisor's view: pending → running → stopped, or error
PID_FILE = "supervisor.pid"  # also the VM's process group id (the supervisor leads its session)
CONSOLE_FILE = "console.log"
ROOTFS_DIR = "rootfs"  # the VM's root directory: CLOUDPILOT_VM_ROOT

BOOT_OK, BOOT_FAIL, BOOT_HANG = "ok", "fail", "hang"
KILL_GRACE_SECONDS = 1.0
_STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class _PoweredOff(Exception):
    """Raised by the SIGTERM handler to leave whatever the supervisor is doing."""


def write_state(vmdir: Path, state: str, reason: str = "") -> None:
    """Replace the state file in one step, so a reader never sees half of it."""
    tmp = vmdir / f"{STATE_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"state": state, "since": time.time(), "reason": reason}))
    os.replace(tmp, vmdir / STATE_FILE)


def write_pid(vmdir: Path, pid: int) -> None:
    tmp = vmdir / f"{PID_FILE}.{os.getpid()}.tmp"
    tmp.write_text(str(pid))
    os.replace(tmp, vmdir / PID_FILE)


def read_state(vmdir: Path) -> dict[str, Any]:
    try:
        return json.loads((vmdir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {"state": "pending", "reason": ""}


class Supervisor:
    def __init__(self, vmdir: Path, console: BinaryIO) -> None:
        self.vmdir = vmdir
        self.rootfs = vmdir / ROOTFS_DIR
        self.console = console
        self.meta: dict[str, Any] = json.loads((vmdir / INSTANCE_FILE).read_text())

    def say(self, line: str) -> None:
        at = time.time()  # to the millisecond: boot timings are read from the console
        stamp = f"{time.strftime('%H:%M:%S', time.localtime(at))}.{int(at % 1 * 1000):03d}"
        self.console.write(f"[local-vm {stamp}] {line}\n".encode())
        self.console.flush()

    def fail(self, reason: str) -> int:
        self.say(f"boot failed: {reason}")
        write_state(self.vmdir, "error", reason)
        return 1

    def boot(self) -> int:
        meta = self.meta
        if not become_subreaper():
            self.say("no child subreaper here: processes that leave the VM's session may outlive it")
        self.say(f"booting {meta['instance_id']} ({meta['flavor']}: {meta['cores']} cores, {meta['memory_mb']} MB)")
        time.sleep(float(meta.get("boot_seconds", 0)))
        outcome = meta.get("boot_outcome", BOOT_OK)
        if outcome == BOOT_HANG:
            self.say("boot hangs (failure injection)")
            while True:
                signal.pause()
        if outcome == BOOT_FAIL:
            return self.fail("boot failed (failure injection)")
        try:
            plan = plan_boot((self.vmdir / USER_DATA_FILE).read_text(), self.rootfs)
        except UserDataError as exc:
            return self.fail(str(exc))
        for note in plan.notes:
            self.say(note)
        write_state(self.vmdir, "running")
        self.say("running")
        error = self.write_files(plan)
        if error:
            return self.fail(error)
        self.run_commands(plan)
        if plan.power_off:
            self.say("power_state: powering off")
            self.kill_tree()
        else:
            self.say("runcmd done; the VM halts when its last process ends")
            self.wait_for_all_children()
        write_state(self.vmdir, "stopped")
        self.say("halted")
        return 0

    def write_files(self, plan: BootPlan) -> str:
        """Write the planned files; the reason the boot fails, or ``""``."""
        for index, item in enumerate(plan.files):
            try:
                item.target.parent.mkdir(parents=True, exist_ok=True)
                flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if item.append else os.O_TRUNC)
                fd = os.open(item.target, flags | os.O_NOFOLLOW, item.mode)
                with os.fdopen(fd, "wb") as out:
                    out.write(item.data)
                os.chmod(item.target, item.mode)  # the mode given to open() was narrowed by the umask
            except OSError as exc:
                return f"write_files entry {index}: cannot write the file ({type(exc).__name__})"
        return ""

    def run_commands(self, plan: BootPlan) -> None:
        home = self.rootfs / "root"
        tmp = self.rootfs / "tmp"
        for d in (home, tmp):
            d.mkdir(parents=True, exist_ok=True)
        env = {
            # The server's interpreter comes first: it is the VM's "system" Python, of a version the pilot runs on.
            "PATH": f"{Path(sys.executable).parent}:{_STANDARD_PATH}",
            "HOME": str(home),
            "TMPDIR": str(tmp),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "CLOUDPILOT_VM_ROOT": str(self.rootfs),
            # The host's users are the VM's: payloads run as this one (the user-data's default is created
            # on real VMs only).
            "CLOUDPILOT_PAYLOAD_USER": str(self.meta.get("payload_user") or "nobody"),
        }
        for index, argv in enumerate(plan.runcmd):
            self.say(f"runcmd {index}: start")
            try:
                proc = subprocess.Popen(
                    argv, cwd=self.rootfs, env=env, stdin=subprocess.DEVNULL, stdout=self.console,
                    stderr=subprocess.STDOUT,
                )  # fmt: skip
            except OSError as exc:
                self.say(f"runcmd {index}: cannot start ({type(exc).__name__})")
                continue
            code = self.wait_for(proc)
            self.say(f"runcmd {index}: exit code {code}")

    def wait_for(self, proc: subprocess.Popen[bytes]) -> int:
        """Wait for ``proc`` while reaping every other child: as subreaper we also inherit orphans."""
        while True:
            pid, status = os.waitpid(-1, 0)
            if pid == proc.pid:
                proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen never waits on a reaped pid
                return proc.returncode

    def wait_for_all_children(self) -> None:
        with contextlib.suppress(ChildProcessError):
            while True:
                os.waitpid(-1, 0)

    def reap(self) -> None:
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass

    def kill_tree(self, grace: float = KILL_GRACE_SECONDS) -> None:
        """SIGTERM every process of the VM, SIGKILL what is left after ``grace`` seconds."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second destroy must not cut the power-off short
        me = os.getpid()
        pids = vm_processes(me)
        signal_all(pids, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            time.sleep(0.02)
            self.reap()
            pids = vm_processes(me)
        for _ in range(50):  # a dying process may still fork: repeat until nothing is left
            if not pids:
                break
            signal_all(pids, signal.SIGKILL)
            time.sleep(0.02)
            self.reap()
            pids = vm_processes(me)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # from here on the power-off runs to its end
    raise _PoweredOff


def main(argv: list[str]) -> int:
    vmdir = Path(argv[0])
    _lock_fd = int(argv[1])  # kept open, never used: holding it is what "this VM is alive" means
    signal.signal(signal.SIGTERM, _on_sigterm)
    write_pid(vmdir, os.getpid())
    with (vmdir / CONSOLE_FILE).open("ab", buffering=0) as console:
        supervisor = Supervisor(vmdir, console)
        try:
            return supervisor.boot()
        except _PoweredOff:
            supervisor.say("powered off")
            supervisor.kill_tree()
            return 0
        except Exception as exc:
            # The exception's message could quote user-data; the console gets its type and where it happened.
            supervisor.say(f"internal error: {type(exc).__name__}\n{''.join(traceback.format_tb(exc.__traceback__))}")
            write_state(vmdir, "error", f"internal error: {type(exc).__name__}")
            supervisor.kill_tree()
            return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
