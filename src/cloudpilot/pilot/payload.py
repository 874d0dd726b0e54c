"""Running one payload: its own session and process group, a wall-time limit, CPU and memory sampling.

The payload runs under a small supervisor (:mod:`cloudpilot.pilot.supervisor`), forked by the pilot's launcher,
that leads its process group and takes the payload's whole tree down when the pilot dies, SIGKILL included. When
the payload's leader ends, the supervisor writes its wait status, the CPU time of everything the payload's tree
waited for and the leader's memory high-water mark to a pipe the pilot reads: that pipe is also how the pilot
learns, at once, that the payload has ended. The payload's stdout and stderr go to ``job.log``. Stopping it means
SIGTERM to the whole group, then SIGKILL after a grace period, so grandchildren die with it. Memory comes from
``/proc`` only: the leader's high-water mark twice a second, the whole group every few seconds. (``ru_maxrss`` is
no use here: Linux counts in it the memory of the process that forked it.)
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import stat
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudpilot.pilot import launcher as launchers
from cloudpilot.pilot import procfs
from cloudpilot.pilot.isolation import PayloadUser
from cloudpilot.pilot.launcher import Launcher

PROGRESS_LIMIT = 200
WALL_TIME_EXCEEDED = "wall time exceeded"


@dataclass(frozen=True)
class Usage:
    """CPU seconds (user + system) and the largest resident memory seen, of the whole process group."""

    cpu_seconds: float = 0.0
    max_rss_bytes: int = 0


@dataclass(frozen=True)
class Outcome:
    """How a payload ended.

    ``returncode`` is the exit status, ``-N`` for death by signal ``N``, ``None`` if it never started.
    ``aborted``: the pilot stopped it (the user killed the job, the lease was lost, the pilot is leaving).
    """

    returncode: int | None
    usage: Usage = Usage()
    wall_exceeded: bool = False
    aborted: bool = False
    start_error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.returncode == 0 and not self.wall_exceeded and not self.aborted

    @property
    def state(self) -> str:
        """The state to report: ``done`` or ``failed``."""
        return "done" if self.succeeded else "failed"

    @property
    def exit_code(self) -> int | None:
        """The exit status when the payload exited by itself; ``None`` after a signal or a failed start."""
        if self.returncode is None or self.returncode < 0:
            return None
        return self.returncode

    @property
    def reason(self) -> str:
        """Why it failed, in the words the REST contract expects (empty when it succeeded)."""
        if self.wall_exceeded:
            return WALL_TIME_EXCEEDED
        if self.start_error is not None:
            return f"cannot start the payload: {self.start_error}"
        if self.aborted:
            return "stopped by the pilot"
        if self.returncode is not None and self.returncode < 0:
            return f"killed by signal {-self.returncode}"
        if self.returncode:
            return f"exit code {self.returncode}"
        return ""


class Payload:
    """A running payload: its supervisor's pid (the id of the payload's process group and session) and the pipe on
    which the supervisor reports how the payload ended. Closing that pipe after the report releases the
    supervisor, whose group may then hold another payload: from then on nothing here reads or signals it."""

    def __init__(self, pid: int, report: int, progress_file: Path | None = None) -> None:
        self.pid = pid
        self._report: int | None = report  # the read end of the supervisor's pipe, non-blocking
        self._received = b""
        self._reported = False  # the supervisor said how it ended: it has killed what the payload left, too
        self.progress_file = progress_file
        self._lock = threading.Lock()
        self._returncode: int | None = None
        self._cpu = 0.0
        self._rss = 0

    @classmethod
    def start(
        cls,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        log_path: Path,
        progress_file: Path | None = None,
        user: PayloadUser | None = None,
        launcher: Launcher | None = None,
    ) -> Payload:
        """Start ``argv`` in ``cwd`` in a new session, as ``user`` if given; ``OSError`` if it cannot be executed
        (checked here, as the pilot: the supervisor could only report an exit code)."""
        if shutil.which(argv[0], path=env.get("PATH", os.defpath)) is None:
            raise FileNotFoundError(2, "no such executable file", argv[0])
        ids: dict[str, Any] = {} if user is None else {"uid": user.uid, "gid": user.gid, "groups": user.groups}
        report_r, report_w = os.pipe()
        try:
            log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                pid = (launcher or launchers.shared()).spawn(
                    argv, cwd=str(cwd), env=env, log_fd=log_fd, report_fd=report_w, **ids
                )
            finally:
                os.close(log_fd)
        except OSError:
            os.close(report_r)
            raise
        finally:
            os.close(report_w)
        os.set_blocking(report_r, False)
        return cls(pid, report_r, progress_file)

    def poll(self) -> int | None:
        """The leader's return code once it has exited (``-N`` for signal ``N``), else ``None``."""
        with self._lock:
            if self._returncode is not None or self._report is None:
                return self._returncode
            try:
                chunk = os.read(self._report, 256)
            except BlockingIOError:
                return None
            self._received += chunk
            if chunk and b"\n" not in self._received:
                return None
            os.close(self._report)
            self._report = None
            try:
                status, cpu, peak = self._received.split()
                self._returncode = os.waitstatus_to_exitcode(int(status))
                self._cpu, self._rss = max(self._cpu, float(cpu)), max(self._rss, int(peak))
                self._reported = True
            except ValueError:  # the supervisor died without a word (SIGKILL): so did its payload, by its hand
                self._returncode = -signal.SIGKILL
            return self._returncode

    def wait(self, timeout: float) -> None:
        """Return once the payload has ended or ``timeout`` seconds have passed, whichever comes first."""
        report = self._report
        if report is not None and self._returncode is None:
            with contextlib.suppress(OSError, ValueError):  # closed meanwhile by poll(): it has ended
                select.select([report], [], [], timeout)

    def sample(self) -> Usage:
        """Look at every live process of the group now (but the supervisor); the usage so far (monotonic)."""
        with self._lock:
            if self._report is not None:  # once reported, the group may be the next payload's (see signal_group)
                members = [m for m in procfs.group_members(self.pid) if m.pid != self.pid]
                cpu = sum(m.cpu_seconds for m in members)
                rss = sum(m.rss_bytes for m in members)
                peak = max((procfs.peak_rss_bytes(m.pid) for m in members), default=0)
                self._cpu = max(self._cpu, cpu)
                self._rss = max(self._rss, rss, peak)
        return self.usage()

    def sample_leader(self) -> None:
        """Cheaply note the leader's memory high-water mark (the supervisor's child: two small files)."""
        with self._lock:
            if self._report is not None:
                leader = procfs.first_child(self.pid)
                self._rss = max(self._rss, procfs.peak_rss_bytes(leader) if leader is not None else 0)

    def usage(self) -> Usage:
        with self._lock:
            return Usage(round(self._cpu, 3), self._rss)

    def progress(self, limit: int = PROGRESS_LIMIT) -> str | None:
        """What the payload last wrote into its progress file, trimmed to ``limit`` characters."""
        if self.progress_file is None:
            return None
        try:
            # The payload user owns the directory: never follow a link it may have put there instead.
            fd = os.open(self.progress_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            raw = f.read(limit * 4)
        text = raw.decode("utf-8", "replace").strip()
        return text[:limit] or None

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the process group and to any stray member of the session, unless the supervisor has
        reported: it has killed the payload's whole tree then, and closing the report pipe released its group to
        the next payload (the lock keeps the two apart)."""
        with self._lock:
            if self._reported:
                return
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)
            for member in procfs.group_members(self.pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(member.pid, sig)

    def stop(self, grace: float) -> int:
        """SIGTERM the group, SIGKILL whatever is left after ``grace`` seconds; the leader's return code.

        The group is only signalled while its id is provably ours (the leader not yet reaped, or members left):
        once both are gone the kernel may give the number to another payload.
        """
        if not self._group_held():
            return self._reap()
        self.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self._group_held():
            time.sleep(0.05)
        if self._group_held():
            self.signal_group(signal.SIGKILL)
        return self._reap()

    def _group_held(self) -> bool:
        return self.poll() is None or (not self._reported and bool(procfs.group_members(self.pid)))

    def kill_leftovers(self) -> None:
        """After the leader has exited: SIGKILL what it left running in its group (daemonized children). A
        supervisor that reported has done so already; only one that died unheard may have left some."""
        if not self._reported and procfs.group_members(self.pid):
            self.signal_group(signal.SIGKILL)

    def _reap(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.poll()) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return code if code is not None else -signal.SIGKILL


def supervise(
    payload: Payload,
    *,
    wall_seconds: float | None,
    abort: threading.Event,
    grace: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sample_every: float = 5.0,
    leader_every: float = 0.5,
    on_running: Callable[[], object] | None = None,
    running_after: float = 1.0,
) -> Outcome:
    """Wait for ``payload`` to end, enforcing ``wall_seconds`` and stopping it as soon as ``abort`` is set;
    ``on_running()`` is called once, if the payload still runs ``running_after`` seconds after its start."""
    started = clock()
    next_sample = started + sample_every  # the first look at the whole group: most short payloads end before
    next_leader = started + leader_every
    interval = 0.05  # the payload's end wakes the wait below; an abort is seen within an interval
    while True:
        code = payload.poll()
        if code is not None:
            payload.kill_leftovers()
            return Outcome(code, payload.usage())
        now = clock()
        if wall_seconds is not None and now - started >= wall_seconds:
            payload.sample()
            code = payload.stop(grace)
            return Outcome(code, payload.usage(), wall_exceeded=True)
        if abort.is_set():
            code = payload.stop(grace)
            return Outcome(code, payload.usage(), aborted=True)
        if now >= next_sample:
            payload.sample()
            next_sample = now + sample_every
        elif now >= next_leader:
            payload.sample_leader()
            next_leader = now + leader_every
        if on_running is not None and now - started >= running_after:
            on_running()
            on_running = None
        timeout = interval if wall_seconds is None else max(0.0, min(interval, started + wall_seconds - now))
        if on_running is not None:
            timeout = max(0.0, min(timeout, started + running_after - now))
        payload.wait(timeout)
        interval = min(interval * 2, 0.25)
