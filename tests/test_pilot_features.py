"""Machine/Job Features on the pilot's side: reading them, the time left they leave, halting for a shutdown."""

from __future__ import annotations

import io
import json
import socket
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cloudpilot.domain.shutdown import ShutdownCode
from cloudpilot.pilot.cli import build_parser, main
from cloudpilot.pilot.fake_transport import FakeTransport
from cloudpilot.pilot.features import FeatureSource
from tests.helpers.server import free_port
from tests.test_pilot_agent import PY, Background, make_agent, member, states

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and /proc: Linux")

NOW = 1_800_000_000.0  # the pilot's wall clock in these tests: shutdown times are UNIX times
ISO_NOW = "2027-01-15T08:00:00Z"  # NOW, as the shutdown message names it


def features_dir(path: Path, values: dict[str, object]) -> str:
    path.mkdir(parents=True, exist_ok=True)
    for key, value in values.items():
        (path / key).write_text(f"{value}\n")
    return str(path)


class MJF:
    """A features server on 127.0.0.1: ``GET /mjf/<key>``, ``GET /mjf/`` lists the keys; it notes the headers."""

    def __init__(self, values: dict[str, object]) -> None:
        self.values = {k: str(v) for k, v in values.items()}
        self.headers: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.headers.append(dict(self.headers))
                key = self.path.removeprefix("/mjf/")
                body = "\n".join(outer.values) if key == "" else outer.values.get(key)
                self.send_response(200 if body is not None else 404)
                data = (body or "").encode()
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/mjf"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mjf() -> Iterator[MJF]:
    server = MJF({"total_cpu": 8, "hs06": 80.5, "shutdowntime": int(NOW + 120), "grace_secs": 300, "site_extra": "x"})
    yield server
    server.close()


def waiting_payload(flag: Path) -> list[str]:
    """A payload that runs until ``flag`` exists (at most 20 s)."""
    code = (
        "import os, time\n"
        "end = time.time() + 20\n"
        f"while not os.path.exists({str(flag)!r}) and time.time() < end: time.sleep(0.02)\n"
    )
    return ["-c", code]


def offers(fake: FakeTransport) -> list[int | None]:
    return [c.args["offer"]["seconds_left"] for c in fake.calls_of("match")]


# --- the reader --------------------------------------------------------------------------------------------------


def test_features_are_read_from_a_directory(tmp_path: Path) -> None:
    base = features_dir(tmp_path / "mf", {"total_cpu": 8, "hs06": "80.5", "empty": ""})
    (tmp_path / "secret").write_text("not a feature")
    source = FeatureSource(base)
    assert source.read("total_cpu") == "8" and source.read("hs06") == "80.5"
    assert source.read("shutdowntime") is None  # not published
    assert source.read("empty") is None
    assert source.read("../secret") is None  # a key never names a file outside its base
    assert source.keys() == ["empty", "hs06", "total_cpu"]
    assert FeatureSource(f"file://{base}").read("total_cpu") == "8"
    assert FeatureSource(None).read("total_cpu") is None
    assert FeatureSource(str(tmp_path / "missing")).read("total_cpu") is None


def test_features_are_read_over_http_and_a_dead_or_silent_server_gives_none(mjf: MJF) -> None:
    source = FeatureSource(mjf.url + "/")
    assert source.read("total_cpu") == "8" and source.read("hs06") == "80.5"
    assert source.read("wall_limit_secs") is None  # 404
    assert source.keys() == ["grace_secs", "hs06", "shutdowntime", "site_extra", "total_cpu"]
    assert all("Authorization" not in h for h in mjf.headers)  # the values are public: no token goes there

    dead = FeatureSource(f"http://127.0.0.1:{free_port()}/mjf", timeout=0.5)
    assert dead.read("total_cpu") is None
    assert dead.fetch(["total_cpu", "hs06"]) == {}  # unknown, not missing: callers keep what they knew
    with socket.socket() as silent:  # accepts connections (the backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        started = time.monotonic()
        source = FeatureSource(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.3)
        assert source.fetch(["shutdowntime", "grace_secs"]) == {}
        assert time.monotonic() - started < 2  # one timeout, not one per key


# --- time left ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lifetime", "shutdowntime", "shutdowntime_job", "expected"),
    [
        (1000, NOW + 500, NOW + 300, 300),  # the job slot ends first
        (1000, NOW + 200, NOW + 300, 200),  # the machine shuts down first
        (100, NOW + 500, None, 100),  # the pilot's own lifetime is shorter
    ],
)
def test_the_offer_says_the_least_of_lifetime_shutdowntime_and_shutdowntime_job(
    tmp_path: Path, lifetime: float, shutdowntime: float, shutdowntime_job: float | None, expected: int
) -> None:
    mf = features_dir(tmp_path / "mf", {"shutdowntime": int(shutdowntime)})
    jf = features_dir(tmp_path / "jf", {} if shutdowntime_job is None else {"shutdowntime_job": int(shutdowntime_job)})
    fake = FakeTransport()
    agent = make_agent(tmp_path, fake, lifetime=lifetime, machinefeatures=mf, jobfeatures=jf, wall_clock=lambda: NOW)
    shutdown = agent.run()
    assert expected - 1 <= offers(fake)[0] <= expected  # the lifetime ticks on the real clock
    assert shutdown.code is ShutdownCode.SHUTDOWN_AS_REQUESTED


def test_shutdown_times_are_refreshed_and_learnt_from_answers(tmp_path: Path) -> None:
    mf = features_dir(tmp_path / "mf", {"shutdowntime": int(NOW + 500), "grace_secs": 60})
    jf = features_dir(tmp_path / "jf", {"shutdowntime_job": int(NOW + 300)})
    fake = FakeTransport(heartbeat_seconds=0.1)
    flag = tmp_path / "release"
    job = fake.add_job(PY, waiting_payload(flag), wall_seconds=60)
    agent = make_agent(
        tmp_path, fake, cores=2, machinefeatures=mf, jobfeatures=jf, features_refresh=0.2, wall_clock=lambda: NOW
    )
    bg = Background(agent)
    assert fake.wait_until(lambda: states(fake, job) == ["running"] and len(offers(fake)) >= 2)
    assert set(offers(fake)) == {300}

    (Path(jf) / "shutdowntime_job").write_text(str(int(NOW + 200)))  # the slot was shortened
    assert fake.wait_until(lambda: offers(fake)[-1] == 200, timeout=5)
    fake.schedule_shutdown(NOW + 100)  # heartbeat answers tell of a shutdown sooner still
    assert fake.wait_until(lambda: offers(fake)[-1] == 100, timeout=5)
    mirror = tmp_path / "work" / "machinefeatures"
    assert (mirror / "shutdowntime").read_text() == str(int(NOW + 100))
    assert (mirror / "grace_secs").read_text() == "60"
    flag.touch()

    shutdown = bg.wait()
    assert states(fake, job) == ["running", "done"]
    assert shutdown.code is ShutdownCode.SHUTDOWN_AS_REQUESTED
    assert shutdown.message == (
        "100 Shutdown as requested by the VM's host/hypervisor: "
        "nothing to run before 2027-01-15T08:01:40Z (from the server)"
    )
    left = offers(fake)
    assert left == sorted(left, reverse=True)  # never more than what was known at the time


def test_a_job_that_does_not_fit_before_the_shutdown_is_not_taken_and_the_pilot_halts_100(
    tmp_path: Path, mjf: MJF
) -> None:
    fake = FakeTransport()
    fits = fake.add_job(PY, ["-c", "open('out.txt', 'w').write('ok')"], wall_seconds=60, output_files=["out.txt"])
    too_long = fake.add_job(PY, ["-c", "pass"], wall_seconds=600)
    started = time.monotonic()
    shutdown = make_agent(tmp_path, fake, idle_timeout=30, machinefeatures=mjf.url, wall_clock=lambda: NOW).run()

    assert time.monotonic() - started < 5  # it did not wait for the idle timeout
    assert member(fake.outputs[fits], "out.txt") == b"ok"
    assert fake.state(too_long) == "waiting"
    assert offers(fake) and all(left == 120 for left in offers(fake))
    assert shutdown.code is ShutdownCode.SHUTDOWN_AS_REQUESTED and shutdown.exit_status == 0
    assert shutdown.message.endswith("nothing to run before 2027-01-15T08:02:00Z (from machine features)")
    assert fake.halts[-1]["code"] == 100
    mirror = tmp_path / "work" / "machinefeatures"
    assert {p.name: p.read_text() for p in mirror.iterdir()} == {
        "total_cpu": "8",
        "hs06": "80.5",
        "shutdowntime": str(int(NOW + 120)),
        "grace_secs": "300",
        "site_extra": "x",  # a key the base lists is mirrored too
    }


def test_a_shutdown_time_that_has_come_halts_100_without_asking_for_work(tmp_path: Path) -> None:
    mf = features_dir(tmp_path / "mf", {"shutdowntime": int(NOW)})
    fake = FakeTransport()
    fake.add_job(PY, ["-c", "pass"], wall_seconds=1)
    shutdown = make_agent(tmp_path, fake, idle_timeout=30, machinefeatures=mf, wall_clock=lambda: NOW).run()
    assert shutdown.code is ShutdownCode.SHUTDOWN_AS_REQUESTED
    assert shutdown.message.endswith(f"shutdown time {ISO_NOW} (from machine features) reached")
    assert fake.calls_of("match") == []


def test_without_a_shutdown_time_the_idle_pilot_leaves_as_before(tmp_path: Path) -> None:
    mf = features_dir(tmp_path / "mf", {"total_cpu": 4})
    shutdown = make_agent(tmp_path, FakeTransport(), idle_timeout=0.3, machinefeatures=mf).run()
    assert shutdown.code is ShutdownCode.NO_MORE_WORK


# --- halt orders -------------------------------------------------------------------------------------------------


def test_a_halt_order_waits_for_the_running_job_then_halts_with_its_code(tmp_path: Path) -> None:
    fake = FakeTransport()
    flag = tmp_path / "release"
    running = fake.add_job(PY, waiting_payload(flag))
    bg = Background(make_agent(tmp_path, fake, cores=2, idle_timeout=30, wait_seconds=5))
    assert fake.wait_until(lambda: states(fake, running) == ["running"])
    fake.order_halt(300, "lhcb used its 1000 core-hours of the period")
    later = fake.add_job(PY, ["-c", "pass"])
    time.sleep(0.5)  # the long poll under way got the order at once
    assert fake.halts == [] and fake.state(later) == "waiting"  # it waits for its job, and takes no other
    flag.touch()

    shutdown = bg.wait()
    assert shutdown.code is ShutdownCode.NO_MORE_WORK and shutdown.exit_status == 0
    assert shutdown.message == "300 No more work available from task queue: lhcb used its 1000 core-hours of the period"
    assert states(fake, running) == ["running", "done"]
    assert fake.state(later) == "waiting"  # no work taken after the order
    final_report = next(c for c in fake.calls_of("report") if c.args["body"]["state"] == "done")
    assert final_report.at < fake.calls_of("halt")[0].at


@pytest.mark.parametrize(("halt", "code"), [({"code": 400, "reason": "VO disabled"}, 400), ({"code": 42}, 600)])
def test_halt_orders_carry_any_vacuum_code_and_a_bad_one_is_a_protocol_error(
    tmp_path: Path, halt: dict, code: int
) -> None:
    fake = FakeTransport()
    fake.halt_order = halt
    shutdown = make_agent(tmp_path, fake).run()
    assert int(shutdown.code) == code
    if code == 400:
        assert shutdown.message.endswith(": VO disabled")


def test_a_refused_match_still_means_banned(tmp_path: Path) -> None:
    fake = FakeTransport()
    fake.reject("match")
    assert make_agent(tmp_path, fake).run().code is ShutdownCode.BANNED


# --- the payload's job features ----------------------------------------------------------------------------------

DUMP_FEATURES = (
    "import json, os\n"
    "def read(d): return {k: open(os.path.join(d, k)).read() for k in sorted(os.listdir(d))}\n"
    "doc = {'dir': os.environ['JOBFEATURES'], 'job': read(os.environ['JOBFEATURES']),"
    " 'machine': read(os.environ['MACHINEFEATURES'])}\n"
    "open('features.json', 'w').write(json.dumps(doc))\n"
)


def dumped(fake: FakeTransport, job_id: int) -> dict:
    return json.loads(member(fake.outputs[job_id], "features.json"))


def test_each_payload_sees_its_own_job_features(tmp_path: Path) -> None:
    mf = features_dir(tmp_path / "mf", {"total_cpu": 4, "hs06": 40, "grace_secs": 300, "shutdowntime": int(NOW + 1000)})
    fake = FakeTransport()
    big = fake.add_job(PY, ["-c", DUMP_FEATURES], cores=2, wall_seconds=600, output_files=["*"])
    small = fake.add_job(PY, ["-c", DUMP_FEATURES], wall_seconds=100, memory_mb=512, output_files=["*"])
    agent = make_agent(tmp_path, fake, cores=4, memory_mb=4096, machinefeatures=mf, wall_clock=lambda: NOW)
    agent.run()

    start = str(int(NOW))
    assert dumped(fake, big)["job"] == {
        "allocated_cpu": "2",
        "cpu_limit_secs": "1200",
        "grace_secs_job": "300",
        "hs06_job": "20",
        "job_id": str(big),
        "jobstart_secs": start,
        "max_rss_bytes": str(2048 * 1024 * 1024),  # its cores' share of the pilot's 4096 MB
        "shutdowntime_job": str(int(NOW + 600)),  # its wall time ends before the machine's shutdown
        "wall_limit_secs": "600",
    }
    assert dumped(fake, small)["job"] == {
        "allocated_cpu": "1",
        "cpu_limit_secs": "100",
        "grace_secs_job": "300",
        "hs06_job": "10",
        "job_id": str(small),
        "jobstart_secs": start,
        "max_rss_bytes": str(512 * 1024 * 1024),
        "shutdowntime_job": str(int(NOW + 100)),
        "wall_limit_secs": "100",
    }
    assert dumped(fake, big)["dir"] != dumped(fake, small)["dir"]
    assert dumped(fake, big)["machine"] == {
        "grace_secs": "300",
        "hs06": "40",
        "shutdowntime": str(int(NOW + 1000)),
        "total_cpu": "4",
    }
    with tarfile.open(fileobj=io.BytesIO(fake.outputs[big])) as tar:  # its output_files are ["*"]
        assert sorted(tar.getnames()) == ["features.json", "job.log"]  # the pilot's own files are never outputs


def test_a_reused_job_features_directory_holds_only_the_next_payloads_values(tmp_path: Path) -> None:
    # One core: the payloads run one after the other in the same $JOBFEATURES directory. The second's values are
    # shorter, or unknown (no memory asked, none known to the pilot): nothing of the first may show through.
    fake = FakeTransport()
    first = fake.add_job(PY, ["-c", DUMP_FEATURES], wall_seconds=123456, memory_mb=2048, output_files=["*.json"])
    second = fake.add_job(PY, ["-c", DUMP_FEATURES], wall_seconds=60, output_files=["*.json"])
    make_agent(tmp_path, fake, cores=1, wall_clock=lambda: NOW).run()
    assert dumped(fake, first)["job"]["max_rss_bytes"] == str(2048 * 1024 * 1024)
    assert dumped(fake, first)["job"]["wall_limit_secs"] == "123456"
    assert dumped(fake, second)["dir"] == dumped(fake, first)["dir"]
    assert dumped(fake, second)["job"] == {
        "allocated_cpu": "1",
        "cpu_limit_secs": "60",
        "job_id": str(second),
        "jobstart_secs": str(int(NOW)),
        "shutdowntime_job": str(int(NOW + 60)),
        "wall_limit_secs": "60",
    }


def test_job_features_whose_value_is_unknown_are_left_out(tmp_path: Path) -> None:
    fake = FakeTransport()
    job = fake.add_job(PY, ["-c", DUMP_FEATURES], wall_seconds=50, output_files=["features.json"])
    make_agent(tmp_path, fake, wall_clock=lambda: NOW).run()  # no features, no memory known
    assert dumped(fake, job)["job"] == {
        "allocated_cpu": "1",
        "cpu_limit_secs": "50",
        "job_id": str(job),
        "jobstart_secs": str(int(NOW)),
        "shutdowntime_job": str(int(NOW + 50)),
        "wall_limit_secs": "50",
    }
    assert dumped(fake, job)["machine"] == {}


def test_a_running_payload_sees_a_new_shutdown_time(tmp_path: Path) -> None:
    fake = FakeTransport(heartbeat_seconds=0.1)
    code = (
        "import os, time\n"
        "path = os.path.join(os.environ['JOBFEATURES'], 'shutdowntime_job')\n"
        "first = open(path).read()\n"
        "end = time.time() + 10\n"
        "while open(path).read() == first and time.time() < end: time.sleep(0.02)\n"
        "open('seen.txt', 'w').write(first + ' ' + open(path).read())\n"
    )
    job = fake.add_job(PY, ["-c", code], wall_seconds=600, output_files=["seen.txt"])
    bg = Background(make_agent(tmp_path, fake, wall_clock=lambda: NOW))
    assert fake.wait_until(lambda: states(fake, job) == ["running"])
    fake.schedule_shutdown(NOW + 30)
    bg.wait()
    assert member(fake.outputs[job], "seen.txt").decode() == f"{int(NOW + 600)} {int(NOW + 30)}"


# --- the command line --------------------------------------------------------------------------------------------


def test_features_options_default_to_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mf = features_dir(tmp_path / "mf", {"total_cpu": 16})
    monkeypatch.setenv("MACHINEFEATURES", mf)
    monkeypatch.setenv("JOBFEATURES", "http://127.0.0.1:1/job")
    args = build_parser().parse_args(["--server", "http://x"])
    assert (args.machinefeatures, args.jobfeatures, args.features_refresh) == (mf, "http://127.0.0.1:1/job", 60.0)
    args = build_parser().parse_args(["--server", "http://x", "--machinefeatures", "/other", "--features-refresh", "5"])
    assert (args.machinefeatures, args.features_refresh) == ("/other", 5.0)

    workdir = tmp_path / "pilot"
    argv = ["--server", f"http://127.0.0.1:{free_port()}", "--token", "t", "--give-up-seconds", "0"]
    assert main([*argv, "--workdir", str(workdir)]) == 1  # no server: 700
    assert (workdir / "machinefeatures" / "total_cpu").read_text() == "16"
