"""The pilot's side of the payload launcher (:mod:`cloudpilot.pilot.supervisor`): one long-lived process per
pilot that hands each payload to a supervisor it forked (and keeps for the next payload once this one is over),
instead of a fresh interpreter per payload.

The launcher is started on first use and again if it has died; a request is serialized with a lock (it takes at
most a fork, well under a millisecond), so job threads may call :meth:`Launcher.spawn` at the same time.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence

from cloudpilot.pilot import supervisor

log = logging.getLogger(__name__)


class LauncherError(OSError):
    """The launcher could not start a supervisor."""


class Launcher:
    """A running launcher process and the pilot's end of its socket."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def spawn(
        self,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        log_fd: int,
        report_fd: int,
        uid: int | None = None,
        gid: int = 0,
        groups: Sequence[int] = (),
    ) -> int:
        """Start a supervised payload; the supervisor's pid (its process group and session id)."""
        request = {"argv": list(argv), "env": dict(env), "cwd": cwd, "uid": uid, "gid": gid, "groups": list(groups)}
        body = json.dumps(request).encode()
        with self._lock:
            for _attempt in (1, 2):  # a launcher found dead is replaced once
                sock = self._running()
                try:
                    supervisor.send(sock, body, [log_fd, report_fd])
                    answer = _read_exactly(sock, supervisor.PID.size)
                except OSError:
                    answer = b""
                if len(answer) == supervisor.PID.size:
                    (pid,) = supervisor.PID.unpack(answer)
                    if pid < 0:
                        raise LauncherError(-pid, f"cannot fork a payload supervisor: {os.strerror(-pid)}")
                    return pid
                self._lost()
            raise LauncherError(0, "the payload launcher died twice in a row")

    def close(self) -> None:
        """End the launcher (it exits when its socket closes); running supervisors then kill their payloads."""
        with self._lock:
            self._discard()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    def _running(self) -> socket.socket:
        if self._sock is not None and self._process is not None and self._process.poll() is None:
            return self._sock
        if self._process is not None:
            self._lost()
        self._discard()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # -I -S: nothing from the environment or site-packages; the source is self-contained. The launcher
            # stays in the pilot's process group (what counts the pilot's CPU counts its payloads too).
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _source(), "serve", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                close_fds=True,
            )
        except OSError:
            mine.close()
            raise
        finally:
            theirs.close()
        self._sock = mine
        return mine

    def _lost(self) -> None:
        """The launcher has gone (killed, out of memory): its running payloads went with it."""
        assert self._process is not None
        self._discard()
        log.warning("the payload launcher has ended; starting a new one")

    def _discard(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._process is not None:
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = sock.recv(size - len(data))
        if not more:
            break
        data += more
    return data


@functools.cache
def _source() -> str:
    """The supervisor module's source, run with ``python -c`` (found in a zipapp as in a checkout)."""
    return inspect.getsource(supervisor)


_shared: Launcher | None = None
_shared_lock = threading.Lock()


def shared() -> Launcher:
    """This process's launcher (one per pilot)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Launcher()
        return _shared
