"""The per-payload supervisor: a small process between the pilot and a payload, so the payload's whole process
tree dies with the pilot, however the pilot ends (SIGKILL included).

The pilot runs this file's source with ``python -I -S -c`` (it must stay self-contained: standard library only, no
``cloudpilot`` import) in a new session, so the supervisor leads the payload's process group. It

* asks for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``) and also looks at its parent every
  :data:`POLL_SECONDS`: the signal is sent when the *thread* that forked it ends, which may be before the pilot
  does, so the poll is what makes the check complete;
* makes itself a child subreaper (``PR_SET_CHILD_SUBREAPER``): a grandchild that double-forks or starts a session
  of its own is re-parented to it, not to init, so "every descendant" is a set it can always find;
* starts the payload under the payload user (groups, gid, then uid), with ``PR_SET_PDEATHSIG = SIGKILL`` set
  *after* the user change (the kernel clears it on a credential change);
* when its parent is gone: SIGKILLs every descendant and exits; when the payload's leader exits: SIGKILLs what it
  left behind and exits with the leader's status (dying by the same signal if it was killed), so the pilot sees
  what it would have seen of the payload itself.

A SIGTERM while the pilot lives is the pilot stopping the job: it went to the whole group, the payload got it
too, and the supervisor waits for the leader as usual.

It also measures the leader's memory high-water mark (``VmHWM``) as soon as it has exec'd and at every wake-up,
and writes the largest value to the pilot's pipe ``REPORT_FD`` when the leader has ended: a payload that ends
within milliseconds is measured too, which the pilot, one process further away, could not do.

Usage: ``-c SOURCE PILOT_PID REPORT_FD UID GID GROUPS -- ARGV...`` (``UID`` ``-`` keeps the user; ``GROUPS``
comma-separated).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import sys

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
POLL_SECONDS = 0.2
WATCHED = (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGINT)

_libc = ctypes.CDLL(None, use_errno=True)


def prctl(option: int, value: int) -> None:
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


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


def reap() -> list[tuple[int, int]]:
    """Reap every child that has ended (orphans included): their (pid, status)."""
    ended = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return ended
        if pid == 0:
            return ended
        ended.append((pid, status))


def kill_all() -> None:
    """SIGKILL every descendant until none is left (a dying process may still fork)."""
    me = os.getpid()
    for _ in range(100):
        pids = descendants(me)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        signal.sigtimedwait([signal.SIGCHLD], 0.01)
        reap()


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


def start_payload(argv: list[str], uid: int | None, gid: int, groups: list[int], report: int) -> int:
    """Fork and exec the payload as ``uid``; its pid, once it has exec'd (or failed to)."""
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
        if uid is not None:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != me:
            os._exit(125)
        os.execvp(argv[0], argv)
    except OSError as exc:
        os.write(2, f"cloudpilot: cannot start {argv[0]!r}: {exc}\n".encode())
        os._exit(127)
    finally:
        os._exit(127)


def exit_like(status: int) -> None:
    """Exit with the leader's status: its code, or death by its signal."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        with contextlib.suppress(OSError, ValueError):  # SIGKILL and SIGSTOP take no handler, have none
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)  # a signal that does not kill (not expected)
    os._exit(os.waitstatus_to_exitcode(status))


def main(args: list[str]) -> None:
    pilot, report_text, uid_text, gid_text, groups_text = args[:5]
    report = int(report_text)
    argv = args[args.index("--") + 1 :]
    parent = int(pilot)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # exit_like may re-raise a core-dumping signal
    signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
    prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    if os.getppid() != parent:  # the pilot died before the line above
        os._exit(137)
    uid = None if uid_text == "-" else int(uid_text)
    groups = [int(g) for g in groups_text.split(",") if g]
    leader = start_payload(argv, uid, int(gid_text), groups, report)
    peak = peak_rss(leader)
    while True:
        if os.getppid() != parent:
            kill_all()
            os._exit(137)
        for pid, status in reap():
            if pid == leader:
                kill_all()
                with contextlib.suppress(OSError):
                    os.write(report, f"{peak}\n".encode())
                exit_like(status)
        signal.sigtimedwait(WATCHED, POLL_SECONDS)
        peak = max(peak, peak_rss(leader))


if __name__ == "__main__":
    main(sys.argv[1:])
