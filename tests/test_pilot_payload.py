"""Running real payloads: outputs, exit codes, the wall-time limit on a whole process group, progress."""

from __future__ import annotations

import io
import os
import signal
import sys
import tarfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from cloudpilot.pilot import procfs
from cloudpilot.pilot.launcher import Launcher
from cloudpilot.pilot.payload import Outcome, Payload, supervise
from cloudpilot.pilot.sandbox import JOB_LOG, pack_outputs

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and /proc: Linux")


def start(tmp_path: Path, code: str, *args: str) -> Payload:
    job_dir = tmp_path / "job"
    job_dir.mkdir(exist_ok=True)
    progress = tmp_path / "progress"
    env = {**os.environ, "CLOUDPILOT_PROGRESS_FILE": str(progress)}
    return Payload.start(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=job_dir,
        env=env,
        log_path=job_dir / JOB_LOG,
        progress_file=progress,
    )


def run(payload: Payload, wall_seconds: float | None = 30, grace: float = 5.0) -> Outcome:
    return supervise(payload, wall_seconds=wall_seconds, abort=threading.Event(), grace=grace)


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_exit_zero_collects_the_outputs_and_the_log(tmp_path: Path) -> None:
    payload = start(
        tmp_path,
        """
        import os, pathlib, sys
        pathlib.Path("result-1.json").write_text('{"pi": 3.14}')
        pathlib.Path("other.txt").write_text("not asked for")
        os.makedirs("plots/deep")
        pathlib.Path("plots/deep/a.png").write_bytes(b"png")
        os.symlink("/etc/hostname", "result-escape.json")
        print("hello on stdout"); print("hello on stderr", file=sys.stderr)
        """,
    )
    outcome = run(payload)
    assert (outcome.state, outcome.exit_code, outcome.reason) == ("done", 0, "")
    assert outcome.usage.cpu_seconds > 0 and outcome.usage.max_rss_bytes > 0

    archive = tmp_path / "out.tar.gz"
    names, packed = pack_outputs(tmp_path / "job", ["result-*.json", "plots", "../*", "/etc/*"], archive)
    assert names == ["job.log", "plots/deep/a.png", "result-1.json"]  # the link out of the job dir is not packed
    assert packed is None
    with tarfile.open(archive) as tar:
        assert tar.getnames() == names
        log = tar.extractfile("job.log").read().decode()  # type: ignore[union-attr]
    assert "hello on stdout" in log and "hello on stderr" in log

    # Small enough to go with the report: the same archive, in memory only; too big: the file again.
    in_memory = tmp_path / "small.tar.gz"
    names, packed = pack_outputs(tmp_path / "job", ["result-*.json", "plots"], in_memory, small=64 * 1024)
    assert packed is not None and not in_memory.exists()
    with tarfile.open(fileobj=io.BytesIO(packed)) as tar:
        assert tar.getnames() == names == ["job.log", "plots/deep/a.png", "result-1.json"]
    names, packed = pack_outputs(tmp_path / "job", ["result-*.json", "plots"], in_memory, small=64)
    assert packed is None and tarfile.is_tarfile(in_memory)


def test_non_zero_exit_and_death_by_signal_fail_with_their_reason(tmp_path: Path) -> None:
    outcome = run(start(tmp_path, "import sys; sys.exit(3)"))
    assert (outcome.state, outcome.exit_code, outcome.reason) == ("failed", 3, "exit code 3")

    outcome = run(start(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    assert (outcome.state, outcome.exit_code, outcome.reason) == ("failed", None, "killed by signal 9")


def test_wall_time_exceeded_kills_the_whole_group_including_a_grandchild(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    payload = start(
        tmp_path,
        """
        import subprocess, sys, time
        stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
        child = subprocess.Popen([sys.executable, "-c", stubborn])
        open(sys.argv[1], "w").write(str(child.pid))
        time.sleep(60)
        """,
        str(pid_file),
    )
    assert wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "")
    grandchild = int(pid_file.read_text())
    assert procfs.alive(grandchild)

    started = time.monotonic()
    outcome = run(payload, wall_seconds=0.5, grace=0.5)
    assert time.monotonic() - started < 5
    assert (outcome.state, outcome.exit_code, outcome.reason) == ("failed", None, "wall time exceeded")
    assert outcome.wall_exceeded
    assert wait_for(lambda: not procfs.alive(grandchild), timeout=5), "the grandchild survived the wall-time kill"
    # nothing of the payload is left in its group; the supervisor lives on for the pilot's next payload
    assert [m.pid for m in procfs.group_members(payload.pid) if m.pid != payload.pid] == []


def test_progress_file_is_read_and_trimmed_and_abort_stops_the_payload(tmp_path: Path) -> None:
    payload = start(
        tmp_path,
        """
        import os, time
        with open(os.environ["CLOUDPILOT_PROGRESS_FILE"], "w") as f:
            f.write("  5/10 events\\n")
        time.sleep(1.0)
        with open(os.environ["CLOUDPILOT_PROGRESS_FILE"], "w") as f:
            f.write("x" * 500)
        time.sleep(60)
        """,
    )
    assert wait_for(lambda: payload.progress() == "5/10 events")
    assert wait_for(lambda: payload.progress() == "x" * 200)
    usage = payload.sample()
    assert usage.max_rss_bytes > 0
    leader = procfs.first_child(payload.pid)
    assert leader is not None and procfs.alive(leader)

    abort = threading.Event()
    abort.set()
    outcome = supervise(payload, wall_seconds=None, abort=abort, grace=1.0)
    assert outcome.aborted and outcome.state == "failed"
    assert not procfs.alive(leader)


def test_a_payload_that_cannot_start_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        Payload.start(["/no/such/program"], cwd=tmp_path, env=dict(os.environ), log_path=tmp_path / JOB_LOG)


def test_a_killed_launcher_takes_its_payloads_down_and_the_next_payload_gets_a_new_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    launcher = Launcher()  # this test's own: the shared one serves the others
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    record = tmp_path / "pids"
    code = """
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import os, time; os.setsid(); time.sleep(60)"])
        open(sys.argv[1], "w").write(f"{os.getpid()} {child.pid}")
        time.sleep(60)
        """
    argv = [sys.executable, "-c", textwrap.dedent(code), str(record)]
    payload = Payload.start(argv, cwd=job_dir, env=dict(os.environ), log_path=job_dir / JOB_LOG, launcher=launcher)
    assert wait_for(lambda: record.exists() and len(record.read_text().split()) == 2)
    pids = [int(p) for p in record.read_text().split()]
    assert launcher.pid is not None
    os.kill(launcher.pid, signal.SIGKILL)
    assert wait_for(lambda: payload.poll() is not None, timeout=5)
    assert payload.poll() == -signal.SIGKILL  # its supervisor ended without a word: the payload was killed
    assert wait_for(lambda: not any(procfs.alive(p) for p in pids), timeout=5), "a payload process survived"

    again = Payload.start([sys.executable, "-c", "print('again')"], cwd=job_dir, env=dict(os.environ),
                          log_path=job_dir / JOB_LOG, launcher=launcher)  # fmt: skip
    assert run(again).state == "done" and "again" in (job_dir / JOB_LOG).read_text()
    assert "the payload launcher has ended; starting a new one" in caplog.text  # the operator is told
    launcher.close()


def test_a_supervisor_killed_by_a_signal_takes_its_payload_group_down(tmp_path: Path) -> None:
    pid_file = tmp_path / "leader.pid"
    payload = start(tmp_path, "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)",
                    str(pid_file))  # fmt: skip
    assert wait_for(lambda: pid_file.exists() and pid_file.read_text() != "")
    leader = int(pid_file.read_text())
    os.kill(payload.pid, signal.SIGKILL)  # what the OOM killer or an operator would do to the supervisor
    assert wait_for(lambda: not procfs.alive(leader), timeout=5), "the payload outlived its supervisor"
    assert wait_for(lambda: payload.poll() is not None, timeout=5)
    assert payload.poll() == -signal.SIGKILL


def test_the_payload_gets_the_signals_its_supervisor_blocks(tmp_path: Path) -> None:
    """The supervisor waits for SIGCHLD and SIGTERM with those signals blocked; its payload must not inherit that
    mask (a payload blind to SIGTERM could not end cleanly at its wall time)."""
    payload = start(tmp_path, """
        import signal, time
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        print("blocked:", sorted(int(s) for s in blocked), flush=True)
        time.sleep(60)
        """)  # fmt: skip
    started = time.monotonic()
    outcome = run(payload, wall_seconds=1.0, grace=10.0)
    assert "blocked: []" in (tmp_path / "job" / JOB_LOG).read_text()
    assert outcome.wall_exceeded and outcome.returncode == -signal.SIGTERM
    assert time.monotonic() - started < 5  # it ended on the SIGTERM, not on the SIGKILL after the 10-s grace


def test_a_file_that_cannot_be_executed_fails_the_job_with_the_reason_in_its_log(tmp_path: Path) -> None:
    script = tmp_path / "not-a-program"
    script.write_bytes(b"\x00\x01binary garbage")  # executable bit but no format the kernel knows
    script.chmod(0o755)
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    outcome = run(Payload.start([str(script)], cwd=job_dir, env=dict(os.environ), log_path=job_dir / JOB_LOG))
    assert (outcome.state, outcome.exit_code) == ("failed", 127)
    assert f"cannot start {str(script)!r}" in (job_dir / JOB_LOG).read_text()


def own_start(launcher: Launcher, job_dir: Path, code: str, *args: str) -> Payload:
    job_dir.mkdir(exist_ok=True)
    argv = [sys.executable, "-c", textwrap.dedent(code), *args]
    return Payload.start(argv, cwd=job_dir, env=dict(os.environ), log_path=job_dir / JOB_LOG, launcher=launcher)


def test_a_supervisor_runs_the_next_payload_and_counts_only_that_payloads_cpu(tmp_path: Path) -> None:
    launcher = Launcher()
    try:
        busy = own_start(
            launcher,
            tmp_path / "a",
            "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass",
        )
        first = run(busy)
        assert first.state == "done" and first.usage.cpu_seconds >= 0.25
        time.sleep(0.3)  # its supervisor tells the launcher it is free again
        idle = own_start(launcher, tmp_path / "b", "print('second')")
        second = run(idle)
        assert idle.pid == busy.pid  # the same supervisor, no fork of a new one
        assert second.state == "done" and "second" in (tmp_path / "b" / JOB_LOG).read_text()
        assert second.usage.cpu_seconds < 0.2  # not the first payload's 0.3 s again
        assert "second" not in (tmp_path / "a" / JOB_LOG).read_text()  # each payload writes to its own log
    finally:
        launcher.close()


def test_a_supervisor_is_given_another_payload_only_after_the_pilot_has_read_its_report(tmp_path: Path) -> None:
    """Until the pilot has read a payload's report it may still signal that payload's process group (a wall time,
    a kill): the group must not hold another payload by then, and a stale handle must never reach the next one."""
    launcher = Launcher()
    try:
        marker = tmp_path / "a-ran"
        first = own_start(launcher, tmp_path / "a", "import sys; open(sys.argv[1], 'w').write('x')", str(marker))
        assert wait_for(lambda: marker.exists() and procfs.first_child(first.pid) is None)  # ended, not yet read
        second = own_start(launcher, tmp_path / "b", "import time; time.sleep(60)")
        assert second.pid != first.pid  # the first one's supervisor is still held by its unread report

        assert run(first).state == "done"  # read: the supervisor is released
        time.sleep(0.3)
        pid_file = tmp_path / "c.pid"
        third = own_start(
            launcher,
            tmp_path / "c",
            "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)",
            str(pid_file),
        )
        assert third.pid == first.pid
        assert wait_for(lambda: pid_file.exists() and pid_file.read_text() != "")
        leader = int(pid_file.read_text())
        first.signal_group(signal.SIGKILL)  # the first payload's handle, used late: nothing happens
        assert first.stop(grace=0.1) == 0
        time.sleep(0.2)
        assert procfs.alive(leader) and third.poll() is None
        for payload in (second, third):
            stopped = threading.Event()
            stopped.set()
            assert supervise(payload, wall_seconds=None, abort=stopped, grace=1.0).aborted
        assert not procfs.alive(leader)
    finally:
        launcher.close()


def test_idle_supervisors_end_with_their_launcher(tmp_path: Path) -> None:
    launcher = Launcher()
    payload = own_start(launcher, tmp_path / "a", "print('done')")
    assert run(payload).state == "done"
    time.sleep(0.3)
    assert procfs.alive(payload.pid)  # idle, kept for the next payload
    assert launcher.pid is not None
    os.kill(launcher.pid, signal.SIGKILL)
    assert wait_for(lambda: not procfs.alive(payload.pid), timeout=5), "an idle supervisor outlived its launcher"
    launcher.close()
