"""Process bookkeeping for the ``local`` cloud: the liveness lock of a VM's supervisor and its process tree.

A local VM is the process tree under one supervisor (:mod:`cloudpilot.clouds.local_vm`). Two questions recur:

* *Is the supervisor alive?* It holds an exclusive ``flock`` on ``<vmdir>/supervisor.lock`` for its whole life
  (the driver takes the lock before spawning it and hands the locked descriptor over), so anyone can ask by
  trying a shared lock. Unlike a pid check this survives pid reuse and a restarted server, and the kernel drops
  the lock whatever way the supervisor dies.
* *Which processes belong to the VM?* Those in the supervisor's process group, and every descendant of the
  supervisor, including the ones that started a session of their own (the pilot runs each payload in its own
  session). On Linux the supervisor is a child subreaper, so orphaned descendants are re-parented to it instead
  of to init, and the parent links stay inside the VM.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

LOCK_FILE = "supervisor.lock"
_PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True, slots=True)
class Proc:
    pid: int
    ppid: int
    pgid: int
    zombie: bool


def process_table() -> list[Proc]:
    """All processes we can see: ``/proc`` on Linux, ``ps`` elsewhere."""
    proc_dir = Path("/proc")
    if (proc_dir / "self" / "stat").exists():
        return _from_proc(proc_dir)
    return _from_ps()


def _from_proc(proc_dir: Path) -> list[Proc]:
    table: list[Proc] = []
    for entry in proc_dir.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:  # exited while we looked
            continue
        # The command name is in parentheses and may itself hold spaces or parentheses: split after the last one.
        fields = raw[raw.rfind(")") + 2 :].split()
        table.append(Proc(int(entry.name), int(fields[1]), int(fields[2]), fields[0] in ("Z", "X")))
    return table


def _from_ps() -> list[Proc]:
    out = subprocess.run(
        ["ps", "-A", "-o", "pid=,ppid=,pgid=,stat="], capture_output=True, text=True, check=False
    ).stdout
    table: list[Proc] = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0].isdigit():
            table.append(Proc(int(parts[0]), int(parts[1]), int(parts[2]), parts[3].startswith("Z")))
    return table


def vm_processes(supervisor_pid: int, *, include_supervisor: bool = False) -> set[int]:
    """Live (non-zombie) members of the supervisor's process group and descendants of the supervisor."""
    table = process_table()
    children: dict[int, list[int]] = {}
    for p in table:
        children.setdefault(p.ppid, []).append(p.pid)
    found: set[int] = set()
    todo = [supervisor_pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    found.update(p.pid for p in table if p.pgid == supervisor_pid)
    zombies = {p.pid for p in table if p.zombie}
    found -= zombies
    if include_supervisor and supervisor_pid not in zombies:
        found.add(supervisor_pid)
    else:
        found.discard(supervisor_pid)
    return found


def signal_all(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def is_running(pid: int) -> bool:
    """Whether ``pid`` names a process that has not exited (a zombie has)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not any(p.pid == pid and p.zombie for p in process_table())


def become_subreaper() -> bool:
    """Make orphaned descendants of this process its children (Linux); False where that is not available."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def take_lock(vmdir: Path) -> int:
    """Open and exclusively lock the supervisor lock of a new VM; the descriptor is handed to the supervisor."""
    fd = os.open(vmdir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


def supervisor_alive(vmdir: Path) -> bool:
    """Whether the VM's supervisor still holds its lock.

    A shared lock is enough to test: it conflicts with the supervisor's exclusive one but not with other
    readers asking the same question at the same time.
    """
    try:
        fd = os.open(vmdir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops our shared lock, if we got it
    return False
