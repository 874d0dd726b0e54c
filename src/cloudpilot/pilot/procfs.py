"""Reading ``/proc`` (Linux) for the processes of a payload: CPU time and memory. Best effort everywhere else.

A payload runs in its own session and process group (``start_new_session``), whose id is its leader's pid.
Members are found by that group id or by that session id, so a payload that moves a child to a group of its
own is still counted and still killed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class ProcStat:
    """One process, from ``/proc/<pid>/stat``.

    ``cpu_seconds`` counts its user and system time and that of its children it has already waited for.
    """

    pid: int
    state: str
    pgrp: int
    session: int
    cpu_seconds: float
    rss_bytes: int


def read_stat(pid: int, proc: Path = PROC) -> ProcStat | None:
    """The process ``pid``, or ``None`` if it is gone (or there is no ``/proc``)."""
    try:
        raw = (proc / str(pid) / "stat").read_bytes().decode("ascii", "replace")
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces and parentheses.
    fields = raw[raw.rfind(")") + 2 :].split()
    try:
        utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
        return ProcStat(
            pid=pid,
            state=fields[0],
            pgrp=int(fields[2]),
            session=int(fields[3]),
            cpu_seconds=(utime + stime + cutime + cstime) / CLOCK_TICKS,
            rss_bytes=int(fields[21]) * PAGE_SIZE,
        )
    except (IndexError, ValueError):
        return None


def peak_rss_bytes(pid: int, proc: Path = PROC) -> int:
    """``VmHWM`` (the resident set's high-water mark) of ``/proc/<pid>/status`` in bytes; 0 if unknown."""
    try:
        text = (proc / str(pid) / "status").read_text(errors="replace")
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024
    return 0


def group_members(pgid: int, proc: Path = PROC) -> list[ProcStat]:
    """The live (non-zombie) processes whose process group or session is ``pgid``."""
    members = []
    try:
        entries = os.listdir(proc)
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        st = read_stat(int(entry), proc)
        if st is not None and st.state != "Z" and pgid in (st.pgrp, st.session):
            members.append(st)
    return members


def alive(pid: int, proc: Path = PROC) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    st = read_stat(pid, proc)
    if st is not None:
        return st.state != "Z"
    if proc.is_dir():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_time(pid: int, proc: Path = PROC) -> int:
    """When ``pid`` started, in clock ticks since boot (``/proc/<pid>/stat`` field 22); 0 if unknown."""
    try:
        raw = (proc / str(pid) / "stat").read_bytes().decode("ascii", "replace")
        return int(raw[raw.rfind(")") + 2 :].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def first_child(pid: int, proc: Path = PROC) -> int | None:
    """A child of ``pid`` (``/proc/<pid>/task/<pid>/children``), or ``None``."""
    try:
        children = (proc / str(pid) / "task" / str(pid) / "children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None
