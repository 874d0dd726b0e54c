"""Keeping payloads away from the pilot: who they run as, what they may read, and what is left of them.

* A pilot running as root runs payloads as an unprivileged :class:`PayloadUser` (``--payload-user``; by default
  ``cloudpilot-payload``, which the VM's user-data creates, else ``nobody``), in a job directory that user owns.
  Running as anyone else, payloads run as the pilot's own user (the limits are in docs/pilot.md).
* The pilot makes itself non-dumpable (``PR_SET_DUMPABLE = 0``): its ``/proc/PID/environ``, ``mem``, ``fd`` and
  the like become root's only, and it cannot be ptraced, so a payload of the same user cannot read its session
  out of its memory either.
* Each payload's supervisor is recorded in the pilot's private directory while it runs; a pilot starting on a
  work directory used before kills whatever the records name that still runs (:func:`sweep`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pwd
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from cloudpilot.pilot import procfs

log = logging.getLogger(__name__)

DEFAULT_PAYLOAD_USER = "cloudpilot-payload"
FALLBACK_PAYLOAD_USER = "nobody"
PRIVATE_DIR = ".pilot"  # in the workdir, mode 0700: archives on their way, records of running payloads
RECORDS_DIR = "payloads"
SPARE_DIRS = "spare-job-dirs"  # emptied job directories waiting for a later job (pilot/jobdirs.py)
PR_SET_DUMPABLE = 4


@dataclass(frozen=True)
class PayloadUser:
    """The account payloads run as (only when the pilot is root and this is another account)."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def resolve_payload_user(requested: str | None) -> PayloadUser | None:
    """The user to run payloads as, or ``None`` for the pilot's own; ``ValueError`` says why not."""
    if os.geteuid() != 0:
        if requested and requested != pwd.getpwuid(os.geteuid()).pw_name:
            raise ValueError(f"--payload-user {requested}: only a pilot running as root can switch users")
        return None
    name = requested or DEFAULT_PAYLOAD_USER
    if name == DEFAULT_PAYLOAD_USER and not _exists(name):  # the user-data names it; a hand-made host may lack it
        log.warning("no user %s on this machine: payloads run as %s", name, FALLBACK_PAYLOAD_USER)
        name = FALLBACK_PAYLOAD_USER
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ValueError(f"--payload-user {name}: no such user on this machine") from None
    if entry.pw_uid == 0:
        log.warning("payloads run as root (--payload-user %s): they can read this pilot's credentials", name)
        return None
    groups = tuple(sorted(set(os.getgrouplist(name, entry.pw_gid))))
    return PayloadUser(name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def make_undumpable() -> None:
    """``PR_SET_DUMPABLE = 0`` on Linux (nothing elsewhere): this process's ``/proc`` entries become root's."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        log.warning("cannot make the pilot non-dumpable: %s", os.strerror(ctypes.get_errno()))


def give(path: Path, user: PayloadUser | None) -> None:
    """Hand a job directory (and all it holds) to the payload user, mode 0700."""
    if user is not None:
        _chown_tree(path, user.uid, user.gid)
    path.chmod(0o700)


def take_back(path: Path, user: PayloadUser | None) -> None:
    """After the payload's tree is gone: the job directory is the pilot's again, before it reads what is in it
    (no process of the payload user can then swap a file for a link while the pilot packs)."""
    if user is not None:
        _chown_tree(path, os.geteuid(), os.getegid())


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.lchown(path, uid, gid)
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.lchown(os.path.join(top, name), uid, gid)  # never through a link


def private_dir(workdir: Path) -> Path:
    """The pilot's own directory in its workdir (0700); the workdir itself becomes 0711: payloads reach their
    job directories by name but list nothing."""
    workdir.chmod(0o711)
    private = workdir / PRIVATE_DIR
    private.mkdir(mode=0o700, exist_ok=True)
    private.chmod(0o700)
    (private / RECORDS_DIR).mkdir(mode=0o700, exist_ok=True)
    return private


def record(private: Path, pid: int, slot: str) -> Path:
    """Note the payload supervisor running in ``slot`` (its pid and start time, so a reused pid is never mistaken
    for it). The slot's file is written over: creating and removing a file per payload costs more on a VM's
    disk than the write."""
    path = private / RECORDS_DIR / slot
    data = f"{pid} {procfs.start_time(pid)}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)
    return path


def clear_record(path: Path) -> None:
    """The recorded payload's tree is gone: its slot's record is emptied (and kept for the slot's next one)."""
    with contextlib.suppress(FileNotFoundError):
        os.truncate(path, 0)


def sweep(private: Path) -> int:
    """Kill the process groups of payloads a previous pilot on this workdir left running; how many."""
    killed = 0
    for path in sorted((private / RECORDS_DIR).glob("*")):
        try:
            pid_text, started = path.read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        if procfs.alive(pid) and str(procfs.start_time(pid)) == started:
            log.warning("killing payload process group %d left by an earlier pilot on this workdir", pid)
            for member in [pid, *(m.pid for m in procfs.group_members(pid))]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(member, signal.SIGKILL)
            killed += 1
        path.unlink(missing_ok=True)
    return killed
