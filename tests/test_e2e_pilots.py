"""End to end: a real server, real pilot processes, real payload processes."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import tarfile
import time
from pathlib import Path

from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import Role
from tests.helpers.pilots import PilotProcesses, wait_final, wait_for
from tests.helpers.server import ServerFactory

PY = sys.executable
FAST_LEASE = {"lease": {"seconds": 3, "heartbeat_seconds": 1, "reaper_interval_seconds": 0.5}}


def py_job(code: str, **kw: object) -> dict:
    return {"executable": PY, "arguments": ["-c", code], **kw}


def output_files(client, job_id: int) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    r = client.get(f"/api/v1/jobs/{job_id}/output")
    assert r.status_code == 200, r.text
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_hundred_jobs_over_three_pilots(make_server: ServerFactory, pilots: PilotProcesses) -> None:
    server = make_server()
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    code = "import sys; n=int(sys.argv[1]); open(f'out-{n}.txt','w').write(str(n*n)); print('squared', n)"
    ids = user.post(
        "/api/v1/jobs",
        json={
            "job": py_job(code, name="sq-{n}", output_files=["out-*.txt"]) | {"arguments": ["-c", code, "{n}"]},
            "parameter_count": 100,
        },
    ).json()["ids"]
    token = server.token(Role.PILOT, vo="lhcb")
    procs = [pilots.start(server.url, token, idle_timeout=3) for _ in range(3)]
    jobs = wait_final(user, ids, timeout=180)
    assert {j["state"] for j in jobs.values()} == {"done"}
    assert len({j["pilot_id"] for j in jobs.values()}) == 3  # the work was spread over the three pilots
    for n, job_id in enumerate(ids):
        files = output_files(user, job_id)
        assert files[f"out-{n}.txt"] == str(n * n).encode()
        assert f"squared {n}".encode() in files["job.log"]
    for proc in procs:
        assert proc.wait(timeout=30) == 0  # idle timeout after the work: a clean exit
    message = (procs[0].workdir / "shutdown_message").read_text()  # type: ignore[attr-defined]
    assert message.startswith(("200", "300"))


def test_pilot_killed_mid_job_the_job_is_rescheduled(make_server: ServerFactory, pilots: PilotProcesses,
                                                      tmp_path: Path) -> None:  # fmt: skip
    server = make_server(ServerConfig.model_validate(FAST_LEASE))
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    pidfile = tmp_path / "payload.pid"
    code = (
        "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpgrp())); time.sleep(3);"
        " open('result.txt', 'w').write('finished')"
    )
    (job_id,) = user.post(
        "/api/v1/jobs", json=py_job(code, output_files=["result.txt"]) | {"arguments": ["-c", code, str(pidfile)]}
    ).json()["ids"]
    token = server.token(Role.PILOT, vo="lhcb")
    first = pilots.start(server.url, token, idle_timeout=30)
    wait_for(lambda: user.get(f"/api/v1/jobs/{job_id}").json()["state"] == "running", what="the job to run")
    wait_for(pidfile.exists, what="the payload to start")
    # The VM dies: pilot and payload vanish at once, with no chance to report.
    os.killpg(first.pid, signal.SIGKILL)
    time.sleep(0.2)
    os.killpg(int(pidfile.read_text()), signal.SIGKILL)
    first.wait(timeout=10)
    pidfile.unlink()
    pilots.start(server.url, token, idle_timeout=3)
    job = wait_final(user, [job_id], timeout=60)[job_id]
    assert job["state"] == "done" and job["attempts"] == 2
    assert output_files(user, job_id)["result.txt"] == b"finished"
    reasons = [e["reason"] for e in user.get(f"/api/v1/jobs/{job_id}").json()["history"]]
    assert any("lease expired" in r for r in reasons)


def test_wall_time_exceeded_and_nonzero_exit(make_server: ServerFactory, pilots: PilotProcesses) -> None:
    server = make_server()
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    slow, bad, good = user.post(
        "/api/v1/jobs",
        json=[
            py_job("import time; time.sleep(60)", name="slow", requirements={"wall_seconds": 2}),
            py_job("import sys; print('oops', file=sys.stderr); sys.exit(3)", name="bad"),
            py_job("print('fine')", name="good"),
        ],
    ).json()["ids"]
    pilots.start(server.url, server.token(Role.PILOT, vo="lhcb"), cores=3, idle_timeout=3)
    started = time.time()
    jobs = wait_final(user, [slow, bad, good], timeout=60)
    assert time.time() - started < 30  # the 60 s payload was stopped at its wall time
    assert (jobs[slow]["state"], jobs[slow]["failure_reason"]) == ("failed", "wall time exceeded")
    assert (jobs[bad]["state"], jobs[bad]["exit_code"]) == ("failed", 3)
    assert "3" in jobs[bad]["failure_reason"]
    assert b"oops" in output_files(user, bad)["job.log"]
    assert jobs[good]["state"] == "done" and jobs[good]["exit_code"] == 0


def test_multicore_pilot_fills_its_cores(make_server: ServerFactory, pilots: PilotProcesses, tmp_path: Path) -> None:
    server = make_server()
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    code = (
        "import json, os, sys, time; t0 = time.time(); time.sleep(1.5);"
        " json.dump({'start': t0, 'end': time.time(), 'cores': os.environ.get('CLOUDPILOT_CORES')},"
        " open(os.path.join(sys.argv[1], os.environ['CLOUDPILOT_JOB_ID']), 'w'))"
    )
    small = user.post(
        "/api/v1/jobs", json={"job": py_job(code) | {"arguments": ["-c", code, str(stamps)]}, "parameter_count": 4}
    ).json()["ids"]
    (big,) = user.post(
        "/api/v1/jobs", json=py_job(code, requirements={"cores": 4}) | {"arguments": ["-c", code, str(stamps)]}
    ).json()["ids"]
    pilots.start(server.url, server.token(Role.PILOT, vo="lhcb"), cores=4, idle_timeout=3)
    jobs = wait_final(user, [*small, big], timeout=60)
    assert {j["state"] for j in jobs.values()} == {"done"}
    runs = {int(p.name): json.loads(p.read_text()) for p in stamps.iterdir()}
    assert runs[big]["cores"] == "4"
    # The four one-core jobs ran side by side, and the four-core job never overlapped them.
    small_runs = [runs[i] for i in small]
    assert max(r["start"] for r in small_runs) < min(r["end"] for r in small_runs)
    b = runs[big]
    assert all(r["end"] <= b["start"] or r["start"] >= b["end"] for r in small_runs)


def test_user_kill_stops_the_running_payload(make_server: ServerFactory, pilots: PilotProcesses,
                                             tmp_path: Path) -> None:  # fmt: skip
    server = make_server(ServerConfig.model_validate(FAST_LEASE))
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    marker = tmp_path / "still-running"
    code = "import sys, time\nwhile True:\n    open(sys.argv[1], 'w').write(str(time.time())); time.sleep(0.2)"
    (job_id,) = user.post("/api/v1/jobs", json=py_job(code) | {"arguments": ["-c", code, str(marker)]}).json()["ids"]
    pilots.start(server.url, server.token(Role.PILOT, vo="lhcb"), idle_timeout=3)
    wait_for(marker.exists, what="the payload to start")
    assert user.post(f"/api/v1/jobs/{job_id}/kill").json()["state"] == "killed"
    time.sleep(3)  # a heartbeat (every second here) carries the kill to the pilot
    before = marker.read_text()
    time.sleep(1)
    assert marker.read_text() == before  # the payload is gone
    assert user.get(f"/api/v1/jobs/{job_id}").json()["state"] == "killed"


def test_pilot_of_a_vo_never_runs_another_vos_jobs(make_server: ServerFactory, pilots: PilotProcesses) -> None:
    server = make_server()
    atlas = server.client(server.token(Role.USER, "ann", vo="atlas"))
    (job_id,) = atlas.post("/api/v1/jobs", json=py_job("print(1)")).json()["ids"]
    proc = pilots.start(server.url, server.token(Role.PILOT, vo="lhcb"), idle_timeout=2)
    assert proc.wait(timeout=30) == 0
    assert atlas.get(f"/api/v1/jobs/{job_id}").json()["state"] == "waiting"
    assert (proc.workdir / "shutdown_message").read_text().startswith("300")  # type: ignore[attr-defined]


def test_results_survive_a_server_outage(make_server: ServerFactory, pilots: PilotProcesses, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = make_server(data_dir=data_dir)
    port = int(server.url.rsplit(":", 1)[1])
    user_token = server.token(Role.USER, "alice", vo="lhcb")
    user = server.client(user_token)
    started = tmp_path / "started"
    code = "import sys, time; open(sys.argv[1], 'w').close(); time.sleep(2); open('r.txt', 'w').write('kept')"
    (job_id,) = user.post(
        "/api/v1/jobs", json=py_job(code, output_files=["r.txt"]) | {"arguments": ["-c", code, str(started)]}
    ).json()["ids"]
    pilots.start(server.url, server.token(Role.PILOT, vo="lhcb"), idle_timeout=5)
    wait_for(started.exists, what="the payload to start")
    server.stop()  # the payload finishes while nobody answers
    time.sleep(4)
    revived = make_server(data_dir=data_dir, port=port)
    user = revived.client(user_token)
    job = wait_final(user, [job_id], timeout=60)[job_id]
    assert job["state"] == "done" and job["attempts"] == 1  # delivered late, not rerun
    assert output_files(user, job_id)["r.txt"] == b"kept"
