"""The payload launcher and its supervisors: the processes between the pilot and its payloads, so each
payload's whole process tree dies with the pilot, however the pilot ends (SIGKILL included).

The pilot starts this file once, as the *launcher* (``python -I -S -c SOURCE serve FD``: it must stay
self-contained, standard library only, no ``cloudpilot`` import). The launcher is a small single-threaded process
that hands each payload the pilot asks for on the socket ``FD`` to a *supervisor*: an idle one if it has one,
else a new fork of itself. A supervisor runs one payload at a time and is kept for the next one: forking one per
payload cost 2-4 ms of CPU (page-table copy, copy-on-write faults, the exit's teardown), three times the
payload's own exec. The launcher lives as long as the pilot: the pilot's end of the socket closes when the pilot
ends, however it ends, and the launcher then exits at once; idle supervisors end with it.

A request is a length-prefixed JSON object (argv, environment, directory, uid, gid, groups) with two file
descriptors attached: the payload's log (its stdout and stderr) and the write end of a *report* pipe. The answer
is the supervisor's pid, which is also its session and process group id. Each supervisor

* asks for SIGTERM when the launcher dies (``PR_SET_PDEATHSIG``; the launcher is single-threaded, so the signal
  means the process, not a thread, has gone) and also looks at its parent every :data:`POLL_SECONDS`;
* makes itself a child subreaper (``PR_SET_CHILD_SUBREAPER``): a grandchild that double-forks or starts a session
  of its own is re-parented to it, not to init, so "every descendant" is a set it can always find;
* starts the payload: under another payload user, by a fork that sets groups, gid, then uid and
  ``PR_SET_PDEATHSIG = SIGKILL`` *after* the user change (the kernel clears it on a credential change), then
  execs; as the pilot's own user, by ``posix_spawn`` (no copy of the interpreter; a payload of the same user
  could kill its supervisor anyway). Either way, a supervisor killed by a signal has its process group killed
  by the launcher;
* when its parent is gone: SIGKILLs every descendant and exits; when the payload's leader exits: SIGKILLs what it
  left behind and writes ``STATUS CPU PEAK`` to the report pipe: the leader's wait status, the CPU seconds of the
  payload's tree (every process it waited for, this payload's only) and the leader's memory high-water mark
  (``VmHWM``), measured as soon as it has exec'd and at every wake-up, so a payload that ends within
  milliseconds is measured too;
* then waits until the pilot closes its end of the report pipe (the pilot has read the report and will neither
  signal nor sample this process group again), and only then tells the launcher it is free: a pilot late to
  stop a payload that has just ended can never reach the next one.

A SIGTERM while the pilot lives is the pilot stopping the job: it went to the whole group, the payload got it
too, and the supervisor waits for the leader as usual (a SIGKILL to the group ends the supervisor too; the
launcher forks another when needed).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import resource
import select
import shutil
import signal
import socket
import struct
import sys

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36
POLL_SECONDS = 0.2
WATCHED = (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
HEADER = struct.Struct("!I")  # the length of a request's JSON
PID = struct.Struct("!i")  # the answer: the supervisor's pid, or -errno when it could not be forked
MAX_REQUEST = 64 * 1024 * 1024
READY = b"r"  # a supervisor to its launcher: released by the pilot, it can take another payload
MAX_IDLE = 64  # idle supervisors kept; one released beyond that ends
NOT_STARTED = f"{127 << 8} 0 0\n".encode()  # the report of a payload that could not be started (exit code 127)

_libc = ctypes.CDLL(None, use_errno=True)


def prctl(option: int, value: int) -> None:
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def name_process(name: bytes) -> None:
    """Set what ``ps -o comm``, ``top`` and ``perf`` show for this process (at most 15 bytes)."""
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)


# --- the supervisor: one payload ---------------------------------------------------------------------------


def descendants(root: int) -> list[int]:
    """Every live process below ``root``, from ``/proc/*/stat``'s parent ids."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                raw = f.read().decode("ascii", "replace")
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2 :].split()
        if len(fields) > 1 and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def reap() -> tuple[list[tuple[int, int]], bool]:
    """Reap every child that has ended (orphans included): their (pid, status), and whether any child is left."""
    ended = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return ended, False
        if pid == 0:
            return ended, True
        ended.append((pid, status))


def kill_all() -> None:
    """SIGKILL every descendant until none is left (a dying process may still fork). As a subreaper with no
    child left, it has no descendant either (an orphan would have come to it): the usual case costs no scan."""
    me = os.getpid()
    for _ in range(100):
        _, children_left = reap()
        if not children_left:
            return
        pids = descendants(me)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        signal.sigtimedwait([signal.SIGCHLD], 0.01)


def peak_rss(pid: int) -> int:
    """``VmHWM`` of ``pid`` in bytes; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def cannot_start(name: str, exc: OSError) -> bytes:
    """What the payload's log says when it could not be started."""
    return f"cloudpilot: cannot start {name!r}: {exc}\n".encode()


def start_payload(argv: list[str], env: dict[str, str], uid: int | None, gid: int, groups: list[int],
                  report: int) -> int:  # fmt: skip
    """Start the payload, as ``uid`` if given; its pid, once it has exec'd. ``OSError`` if it could not."""
    if uid is None:
        # Nothing to change in the child: the C library's spawn (vfork and exec) instead of a fork of this
        # interpreter, which copies its page tables and then makes both processes fault on every page they
        # write (measured: 1.4 ms of CPU and 1 ms of latency per payload). There is no PR_SET_PDEATHSIG on
        # this path; the launcher kills the group of a supervisor that dies by a signal instead.
        os.set_inheritable(report, False)
        path = shutil.which(argv[0], path=env.get("PATH", os.defpath)) or argv[0]  # as execvpe would find it
        return os.posix_spawn(path, argv, env, setsigmask=())
    me = os.getpid()
    exec_r, exec_w = os.pipe()  # both close-on-exec: EOF on exec_r means the exec happened
    pid = os.fork()
    if pid:
        os.close(exec_w)
        os.read(exec_r, 1)
        os.close(exec_r)
        return pid
    try:  # the child: nothing here may return to the supervisor's code
        os.close(exec_r)
        os.close(report)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.setgroups(groups)
        os.setgid(gid)
        os.setuid(uid)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != me:
            os._exit(125)
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        os.write(2, cannot_start(argv[0], exc))
        os._exit(127)
    finally:
        os._exit(127)


def children_cpu() -> float:
    """CPU seconds of every child this process has waited for, since it started."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def supervise(parent: int, report: int, request: dict) -> None:
    """Run one payload to its end and write its report: start it, wait for its leader, kill what it left."""
    before = children_cpu()  # this supervisor may have run payloads before: count this one's tree only
    try:
        leader = start_payload(request["argv"], request["env"], request.get("uid"), request.get("gid", 0),
                               request.get("groups", []), report)  # fmt: skip
    except OSError as exc:
        os.write(2, cannot_start(request["argv"][0], exc))
        os.write(report, NOT_STARTED)
        return
    peak = peak_rss(leader)
    while True:
        if os.getppid() != parent:
            kill_all()
            os._exit(137)
        ended, _ = reap()
        for pid, status in ended:
            if pid == leader:
                kill_all()
                cpu = children_cpu() - before
                with contextlib.suppress(OSError):
                    os.write(report, f"{status} {cpu:.3f} {peak}\n".encode())
                return
        signal.sigtimedwait(WATCHED, POLL_SECONDS)
        peak = max(peak, peak_rss(leader))


def released(parent: int, report: int) -> bool:
    """Wait until the pilot has closed its end of the report pipe: it has read the report and will signal this
    process group no more, so the group may hold another payload. False if the launcher has gone meanwhile."""
    poller = select.poll()
    poller.register(report, 0)  # a pipe's writer gets POLLERR once no reader is left
    while not poller.poll(POLL_SECONDS * 1000):
        if os.getppid() != parent:
            return False
    return True


def run_one(parent: int, request: dict, log_fd: int, report: int, null: int) -> None:
    """One payload, in its directory with its log as stdout and stderr; back to an idle state after it (``null``:
    this supervisor's descriptor of ``/dev/null``)."""
    try:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        os.chdir(request["cwd"])
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.write(2, f"cloudpilot: cannot supervise the payload: {exc}\n".encode())
            os.write(report, NOT_STARTED)
    else:
        supervise(parent, report, request)
    os.dup2(null, 1)  # the job's log is not held open between payloads
    os.dup2(null, 2)
    os.chdir("/")


def serve_payloads(parent: int, sock: socket.socket) -> None:
    """A supervisor's life: one payload at a time, each handed over by the launcher on ``sock``; after each, wait
    for the pilot to release the group, then say ``READY``. Ends when the launcher closes its end or dies."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
    prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    if os.getppid() != parent:  # the launcher died before the line above
        os._exit(137)
    null = os.open(os.devnull, os.O_RDWR)  # kept: between payloads, stdout and stderr go back to it
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    while True:
        received = receive(sock)
        if received is None:
            os._exit(0)
        body, fds = received
        if len(fds) != 2:
            os._exit(127)
        log_fd, report = fds
        run_one(parent, json.loads(body), log_fd, report, null)
        free = released(parent, report)
        os.close(report)
        if not free:
            os._exit(0)
        sock.sendall(READY)


def become_supervisor(launcher: int, sock: socket.socket, inherited: list[int]) -> None:
    """In the launcher's fresh fork: its own name and session, then :func:`serve_payloads`. Never returns."""
    name_process(b"cp-supervisor")
    try:
        for fd in inherited:  # the launcher's: its pilot socket, wake-up pipe, other supervisors' sockets
            os.close(fd)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # the launcher's, not ours
            signal.signal(sig, signal.SIG_DFL)
        os.setsid()
        serve_payloads(launcher, sock)
    except BaseException as exc:  # nothing may return into the launcher's loop
        with contextlib.suppress(OSError):
            os.write(2, f"cloudpilot: the payload supervisor failed: {exc}\n".encode())
    finally:
        os._exit(127)


# --- the launcher: one per pilot ---------------------------------------------------------------------------


def send(sock: socket.socket, body: bytes, fds: list[int]) -> None:
    """Send a request: its length, its body and, with its first bytes, the file descriptors ``fds``."""
    message = HEADER.pack(len(body)) + body
    sent = socket.send_fds(sock, [message[:4096]], fds)
    sock.sendall(message[sent:])


def receive(sock: socket.socket) -> tuple[bytes, list[int]] | None:
    """The next request's body and its file descriptors; ``None`` when the other end has closed."""
    data, fds, _, _ = socket.recv_fds(sock, HEADER.size, 2)
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    while len(data) < HEADER.size:
        more = sock.recv(HEADER.size - len(data))
        if not more:
            return None
        data += more
    (size,) = HEADER.unpack(data)
    if size > MAX_REQUEST:
        raise ValueError(f"request of {size} bytes")
    body = bytearray()
    while len(body) < size:
        more = sock.recv(min(size - len(body), 1 << 20))
        if not more:
            return None
        body += more
    return bytes(body), list(fds)


def reap_supervisors() -> None:
    """Reap the supervisors that have ended. One killed by a signal (the OOM killer, an operator) could not kill
    its payload: the launcher kills what is left of its process group."""
    ended, _ = reap()
    for pid, status in ended:
        if os.WIFSIGNALED(status):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


class Supervisors:
    """The launcher's supervisors: each one's socket, and those idle (released by the pilot, waiting for work)."""

    def __init__(self, launcher: int, inherited: list[int]) -> None:
        self.launcher = launcher
        self.inherited = inherited  # what a new supervisor must close: the launcher's own descriptors
        self.pids: dict[socket.socket, int] = {}
        self.idle: list[socket.socket] = []

    def hand_over(self, body: bytes, fds: list[int]) -> int:
        """Give a payload to an idle supervisor, or to a new one; its pid (``OSError`` if none could be forked)."""
        while self.idle:
            sock = self.idle.pop()
            try:
                send(sock, body, fds)
                return self.pids[sock]
            except OSError:  # it has just died: its end-of-file has not been read yet
                self.drop(sock)
        sock = self.fork()
        send(sock, body, fds)
        return self.pids[sock]

    def fork(self) -> socket.socket:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = os.fork()
        except OSError:
            mine.close()
            theirs.close()
            raise
        if pid == 0:
            become_supervisor(self.launcher, theirs, [*self.inherited, *(s.fileno() for s in self.pids), mine.fileno()])
        theirs.close()
        self.pids[mine] = pid
        return mine

    def heard(self, sock: socket.socket) -> None:
        """A supervisor's socket is readable: it is idle again, or it has ended."""
        try:
            said = sock.recv(64)
        except OSError:
            said = b""
        if not said:
            self.drop(sock)
        elif len(self.idle) < MAX_IDLE:
            self.idle.append(sock)
        else:  # enough are idle: closing its socket ends it
            self.drop(sock)

    def drop(self, sock: socket.socket) -> None:
        if sock in self.idle:
            self.idle.remove(sock)
        self.pids.pop(sock, None)
        sock.close()


def serve(sock_fd: int) -> None:
    """Hand each payload the pilot asks for to a supervisor until the pilot's end of the socket closes."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # the launcher ends with its pilot, not before
        signal.signal(sig, signal.SIG_IGN)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the select below through the wakeup fd
    sock = socket.socket(fileno=sock_fd)
    name_process(b"cp-launcher")
    supervisors = Supervisors(os.getpid(), [sock_fd, wake_r, wake_w])
    gc.freeze()  # its collections leave these objects alone: their pages stay shared with the supervisors
    while True:
        readable, _, _ = select.select([sock, wake_r, *supervisors.pids], [], [], 1.0)
        if wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 4096)
        reap_supervisors()
        for ready in readable:
            if ready in supervisors.pids:
                supervisors.heard(ready)
        if sock not in readable:
            continue
        received = receive(sock)
        if received is None:
            os._exit(0)
        body, fds = received
        try:
            if len(fds) != 2:
                raise OSError(0, f"{len(fds)} file descriptors with the request, not 2")
            pid = supervisors.hand_over(body, fds)
        except OSError as exc:
            pid = -(exc.errno or 1)
        finally:
            for fd in fds:
                os.close(fd)
        sock.sendall(PID.pack(pid))


if __name__ == "__main__":
    if sys.argv[1:2] != ["serve"]:
        sys.exit("usage: supervisor.py serve FD")
    serve(int(sys.argv[2]))
