"""The pilot's main loop against the in-memory FakeTransport, with real payload processes."""

from __future__ import annotations

import io
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cloudpilot.domain.shutdown import ShutdownCode
from cloudpilot.pilot import procfs
from cloudpilot.pilot.agent import Agent, Shutdown
from cloudpilot.pilot.config import PilotConfig
from cloudpilot.pilot.fake_transport import FakeTransport
from tests.helpers.archives import tar_gz

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and /proc: Linux")

PY = sys.executable


def sleeper(seconds: float, pid_file: Path | None = None) -> list[str]:
    code = "import os, sys, time\n"
    if pid_file is not None:
        code += f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
    code += f"time.sleep({seconds})\nopen('out.txt', 'w').write('slept')\n"
    return ["-c", code]


def make_agent(
    tmp_path: Path,
    fake: FakeTransport,
    *,
    cores: int = 1,
    sleep: Callable[[float], object] | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    **overrides: object,
) -> Agent:
    settings: dict = {"idle_timeout": 0.4, "wait_seconds": 0.2, "give_up_seconds": 60, "kill_grace_seconds": 1}
    settings.update(overrides)
    config = PilotConfig(workdir=tmp_path / "work", cores=cores, hostname="test-host", **settings)
    return Agent(fake, config, clock=clock, wall_clock=wall_clock, sleep=sleep)


class Background:
    """``agent.run()`` in a thread."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.result: Shutdown | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.result = self.agent.run()

    def wait(self, timeout: float = 15) -> Shutdown:
        self.thread.join(timeout)
        assert self.result is not None, "the agent did not finish"
        return self.result


def report_at(fake: FakeTransport, job_id: int, final: bool) -> float:
    """When the running report (or the final one) about ``job_id`` was accepted."""
    calls = [c for c in fake.calls_of("report") if c.args["job_id"] == job_id]
    return next(c.at for c in calls if (c.args["body"]["state"] != "running") == final)


def running_at(fake: FakeTransport, job_id: int) -> float:
    return report_at(fake, job_id, final=False)


def final_at(fake: FakeTransport, job_id: int) -> float:
    return report_at(fake, job_id, final=True)


def member(archive: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return tar.extractfile(name).read()  # type: ignore[union-attr]


def states(fake: FakeTransport, job_id: int) -> list[str]:
    return [r["state"] for r in fake.reports(job_id)]


def test_four_one_core_jobs_fill_four_cores_at_once(tmp_path: Path) -> None:
    fake = FakeTransport()
    ids = [fake.add_job(PY, sleeper(1.0), output_files=["out.txt"]) for _ in range(4)]
    started = time.monotonic()
    shutdown = make_agent(tmp_path, fake, cores=4).run()
    assert time.monotonic() - started < 3.5  # one after the other would take four seconds

    assert shutdown.code is ShutdownCode.WORK_COMPLETED and shutdown.exit_status == 0
    assert [c.args["offer"]["cores"] for c in fake.calls_of("match")][:4] == [4, 3, 2, 1]
    assert max(running_at(fake, j) for j in ids) < min(final_at(fake, j) for j in ids)
    for job_id in ids:
        assert states(fake, job_id) == ["running", "done"]
        assert member(fake.outputs[job_id], "out.txt") == b"slept"
    assert fake.halts == [{"pilot_id": "pilot-1", "code": 200, "message": "200 Intended work completed ok"}]
    assert (tmp_path / "work" / "shutdown_message").read_text() == "200 Intended work completed ok\n"
    assert not list((tmp_path / "work").glob("job-*"))  # delivered jobs leave nothing behind


def test_a_two_core_job_takes_two_cores(tmp_path: Path) -> None:
    fake = FakeTransport()
    cores_env = ["-c", "import os, time; open('cores.txt', 'w').write(os.environ['CLOUDPILOT_CORES']); time.sleep(0.8)"]
    big = fake.add_job(PY, cores_env, cores=2, output_files=["cores.txt"])
    small = fake.add_job(PY, sleeper(0.8))
    late = fake.add_job(PY, sleeper(0.1))
    make_agent(tmp_path, fake, cores=3).run()

    offered = [c.args["offer"]["cores"] for c in fake.calls_of("match")]
    assert offered[:2] == [3, 1]  # the 2-core job took two of three cores, the next job the last one
    assert 0 not in offered
    assert member(fake.outputs[big], "cores.txt") == b"2"
    # the third job had to wait for a free core
    assert running_at(fake, late) > max(running_at(fake, big), running_at(fake, small)) + 0.5
    assert all(states(fake, j) == ["running", "done"] for j in (big, small, late))


def test_idle_pilot_leaves_with_300_after_the_idle_timeout(tmp_path: Path) -> None:
    fake = FakeTransport()
    started = time.monotonic()
    shutdown = make_agent(tmp_path, fake, idle_timeout=0.3, tags=("gpu",), site="s1", cloud="c1").run()
    assert 0.3 <= time.monotonic() - started < 2
    assert shutdown.code is ShutdownCode.NO_MORE_WORK and shutdown.exit_status == 0
    assert shutdown.message == "300 No more work available from task queue"
    assert fake.halts[0]["code"] == 300
    offer = fake.calls_of("match")[0].args["offer"]
    assert offer["pilot_id"] == "pilot-1" and offer["tags"] == ["gpu"] and offer["site"] == "s1"
    assert offer["seconds_left"] is None and 0 < offer["wait_seconds"] <= 0.3
    info = fake.calls_of("register")[0].args["info"]
    assert info["hostname"] == "test-host" and info["cloud"] == "c1"


def test_a_job_added_while_the_pilot_waits_starts_at_once(tmp_path: Path) -> None:
    fake = FakeTransport()
    bg = Background(make_agent(tmp_path, fake, idle_timeout=1.5, wait_seconds=5))
    assert fake.wait_until(lambda: len(fake.calls_of("match")) >= 1)
    time.sleep(0.2)
    added = time.monotonic()
    job = fake.add_job(PY, ["-c", "pass"])
    assert fake.wait_until(lambda: bool(fake.reports(job)), timeout=5)
    assert running_at(fake, job) - added < 1.0
    assert bg.wait().code is ShutdownCode.WORK_COMPLETED
    assert states(fake, job) == ["running", "done"]


def test_failures_are_reported_with_exit_code_and_reason(tmp_path: Path) -> None:
    fake = FakeTransport()
    failing = fake.add_job(PY, ["-c", "import sys, time; print('boom'); time.sleep(0.3); sys.exit(4)"])
    timed_out = fake.add_job(PY, sleeper(30), wall_seconds=1)
    missing = fake.add_job("/no/such/program")
    make_agent(tmp_path, fake, cores=3).run()

    report = fake.reports(failing)[-1]
    assert (report["state"], report["exit_code"], report["reason"]) == ("failed", 4, "exit code 4")
    assert report["cpu_seconds"] > 0 and report["max_rss_bytes"] > 0
    assert b"boom" in member(fake.outputs[failing], "job.log")
    report = fake.reports(timed_out)[-1]
    assert (report["state"], report["exit_code"], report["reason"]) == ("failed", None, "wall time exceeded")
    report = fake.reports(missing)[-1]
    assert report["state"] == "failed" and report["reason"].startswith("cannot start the payload")


def test_the_result_is_kept_and_retried_while_the_server_is_unreachable(tmp_path: Path) -> None:
    fake = FakeTransport()
    job = fake.add_job(PY, ["-c", "open('out.txt', 'w').write('precious')"], output_files=["out.txt"])
    fake.go_unreachable(5, methods={"upload_output", "report"})
    delays: list[float] = []
    shutdown = make_agent(tmp_path, fake, sleep=delays.append).run()

    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0]  # exponential backoff (not really slept here)
    assert len(fake.calls_of("upload_output", failed=True)) + len(fake.calls_of("report", failed=True)) == 5
    assert member(fake.outputs[job], "out.txt") == b"precious"
    assert states(fake, job) == ["running", "done"]
    assert shutdown.code is ShutdownCode.WORK_COMPLETED


def test_backoff_is_capped_at_30_seconds_and_gives_up_with_700(tmp_path: Path) -> None:
    now = [0.0]
    delays: list[float] = []

    def sleep(seconds: float) -> None:
        delays.append(seconds)
        now[0] += seconds

    fake = FakeTransport()
    fake.go_unreachable(10**6, methods={"match", "halt"})
    shutdown = make_agent(tmp_path, fake, sleep=sleep, clock=lambda: now[0], give_up_seconds=200).run()
    assert shutdown.code is ShutdownCode.TRANSIENT_PROBLEM and shutdown.exit_status == 1
    assert shutdown.message.startswith("700 Transient problem with job agent or application within VM: ")
    assert delays[:7] == [1, 2, 4, 8, 16, 30, 30] and max(delays) == 30 and sum(delays) == 200
    assert (tmp_path / "work" / "shutdown_message").read_text().startswith("700 ")


def test_an_unreachable_server_at_registration_gives_700(tmp_path: Path) -> None:
    fake = FakeTransport()
    fake.go_unreachable(10**6)
    shutdown = make_agent(tmp_path, fake, give_up_seconds=0).run()
    assert shutdown.code is ShutdownCode.TRANSIENT_PROBLEM
    assert fake.calls_of("halt", failed=None) == []  # not registered: nobody to tell


def test_a_refused_registration_means_banned(tmp_path: Path) -> None:
    fake = FakeTransport()
    fake.reject("register")
    shutdown = make_agent(tmp_path, fake).run()
    assert shutdown.code is ShutdownCode.BANNED


@pytest.mark.parametrize("how", ["lease lost", "killed by its owner"])
def test_a_lost_or_killed_job_is_stopped_and_never_reported(tmp_path: Path, how: str) -> None:
    fake = FakeTransport(heartbeat_seconds=0.1, lease_seconds=3)
    pid_file = tmp_path / "payload.pid"
    job = fake.add_job(PY, sleeper(30, pid_file))
    bg = Background(make_agent(tmp_path, fake))
    assert fake.wait_until(lambda: pid_file.exists() and pid_file.read_text() != "" and bool(fake.reports(job)))
    pid = int(pid_file.read_text())
    assert procfs.alive(pid)

    (fake.lose_lease if how == "lease lost" else fake.kill_job)(job)
    assert fake.wait_until(lambda: not procfs.alive(pid), timeout=5), "the payload still runs"
    shutdown = bg.wait()
    assert shutdown.code is ShutdownCode.WORK_COMPLETED
    assert states(fake, job) == ["running"]
    assert fake.calls_of("upload_output", failed=None) == []
    if how == "lease lost":
        assert fake.calls_of("heartbeat", failed=True)[-1].args["job_id"] == job
    else:
        assert fake.calls_of("heartbeat")[-1].args["body"]["lease_token"] == 1


def test_heartbeats_carry_usage_and_progress(tmp_path: Path) -> None:
    fake = FakeTransport(heartbeat_seconds=0.1)
    code = (
        "import os, time\n"
        "open(os.environ['CLOUDPILOT_PROGRESS_FILE'], 'w').write('3/10 events')\n"
        "end = time.time() + 0.6\n"
        "while time.time() < end: pass\n"
    )
    job = fake.add_job(PY, ["-c", code])
    make_agent(tmp_path, fake).run()
    beats = [c.args["body"] for c in fake.calls_of("heartbeat")]
    assert beats and all(b["lease_token"] == 1 for b in beats)
    assert any(b["progress"] == "3/10 events" for b in beats)
    assert max(b["cpu_seconds"] or 0 for b in beats) > 0
    assert states(fake, job) == ["running", "done"]


def test_input_sandbox_is_unpacked_into_the_job_directory(tmp_path: Path) -> None:
    fake = FakeTransport()
    good = fake.add_sandbox(tar_gz({"calc.py": b"open('answer.txt', 'w').write(str(6 * 7))"}))
    evil = fake.add_sandbox(tar_gz({"../../evil.py": b""}))
    ok = fake.add_job(PY, ["calc.py"], input_sandbox=good, output_files=["answer.txt"])
    bad = fake.add_job(PY, ["evil.py"], input_sandbox=evil)
    make_agent(tmp_path, fake, cores=2).run()

    assert member(fake.outputs[ok], "answer.txt") == b"42"
    report = fake.reports(bad)[-1]
    assert report["state"] == "failed" and report["reason"].startswith("bad input sandbox")
    assert not (tmp_path / "evil.py").exists()


def test_a_refused_upload_drops_the_job_and_the_pilot_carries_on(tmp_path: Path) -> None:
    fake = FakeTransport()
    first = fake.add_job(PY, ["-c", "pass"])
    fake.reject("upload_output")
    shutdown = make_agent(tmp_path, fake).run()
    assert states(fake, first) == ["running"]
    second = fake.add_job(PY, ["-c", "pass"])
    make_agent(tmp_path, fake).run()
    assert states(fake, second) == ["running", "done"]
    assert shutdown.code is ShutdownCode.WORK_COMPLETED


def test_stop_kills_the_payloads_and_halts_with_100(tmp_path: Path) -> None:
    fake = FakeTransport()
    pid_file = tmp_path / "payload.pid"
    job = fake.add_job(PY, sleeper(30, pid_file))
    agent = make_agent(tmp_path, fake, cores=2, wait_seconds=30, idle_timeout=60)
    bg = Background(agent)
    assert fake.wait_until(lambda: pid_file.exists() and pid_file.read_text() != "")
    assert fake.wait_until(lambda: len(fake.calls_of("match")) == 2)  # the second one is a 30 s long poll
    pid = int(pid_file.read_text())
    stopped = time.monotonic()
    agent.stop()
    shutdown = bg.wait(10)
    assert time.monotonic() - stopped < 3  # neither the long poll nor the payload holds the pilot up
    assert shutdown.code is ShutdownCode.SHUTDOWN_AS_REQUESTED and shutdown.exit_status == 0
    assert not procfs.alive(pid)
    assert states(fake, job) == ["running"]
    assert fake.halts[-1]["code"] == 100


def test_the_lifetime_limits_what_is_offered_and_when_to_leave(tmp_path: Path) -> None:
    fake = FakeTransport()
    too_long = fake.add_job(PY, ["-c", "pass"], wall_seconds=3600)
    started = time.monotonic()
    shutdown = make_agent(tmp_path, fake, idle_timeout=30, lifetime=1.5).run()
    assert time.monotonic() - started < 4
    assert fake.state(too_long) == "waiting"
    assert shutdown.code is ShutdownCode.NO_MORE_WORK
    assert all(c.args["offer"]["seconds_left"] <= 1 for c in fake.calls_of("match"))


def test_a_job_directory_used_again_holds_nothing_of_the_job_before(tmp_path: Path) -> None:
    """Job directories are recycled (emptied, job.log truncated): the next job sees only its own files and log."""
    fake = FakeTransport()
    code = """
import os, sys
print("job", sys.argv[1], "sees", sorted(os.listdir(".")), flush=True)
open(f"out-{sys.argv[1]}.txt", "w").write("mine")
os.mkdir("left-behind-" + sys.argv[1])
"""
    ids = [fake.add_job(PY, ["-c", code, str(n)], output_files=[f"out-{n}.txt"]) for n in range(3)]
    make_agent(tmp_path, fake, cores=1).run()

    for n, job_id in enumerate(ids):
        assert states(fake, job_id)[-1] == "done"
        log = member(fake.outputs[job_id], "job.log").decode()
        assert log.splitlines() == [f"job {n} sees ['job.log']"]  # nothing of the job before, not even its log
        assert member(fake.outputs[job_id], f"out-{n}.txt") == b"mine"
    work = tmp_path / "work"
    assert not list(work.glob("job-*"))
    spares = list((work / ".pilot" / "spare-job-dirs").iterdir())
    assert spares and all(sorted(p.name for p in s.iterdir()) == ["job.log"] for s in spares)
    assert all((s / "job.log").stat().st_size == 0 for s in spares)


def test_the_job_in_hand_is_started_before_the_pilot_asks_for_more(tmp_path: Path) -> None:
    """After a match brings a job, the next long poll waits until that job's payload is started (at most
    a few tens of ms): the request, and the server's work on it, would otherwise compete with the start."""
    from cloudpilot.pilot import launcher

    def children_of(parent: int) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat[stat.rfind(")") + 2 :].split()[1]) == parent:
                    found.append(int(entry.name))
        return found

    seen: list[int] = []

    class Watching(FakeTransport):
        def match(self, offer: dict) -> dict | None:
            if self.calls_of("match"):  # every match after the first: how many payloads run now
                pid = launcher.shared().pid  # its supervisors (some idle, kept from earlier tests) and their payloads
                seen.append(sum(len(children_of(s)) for s in children_of(pid)) if pid is not None else 0)
            return super().match(offer)

    fake = Watching()
    fake.add_job(PY, sleeper(1.0))
    make_agent(tmp_path, fake, cores=2).run()
    assert seen and seen[0] == 1  # the second match came with the first job's payload already running
