"""The tail of a running job's job.log: read by the pilot, sent with heartbeats, kept per job, shown by
``GET /api/v1/jobs/{id}/log`` to the job's owner only."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from typer.testing import CliRunner

from cloudpilot.cli.logs import new_text
from cloudpilot.cli.main import app
from cloudpilot.domain.auth import Role
from cloudpilot.pilot.logtail import read_tail
from tests.helpers.server import RunningServer
from tests.test_api import register


def test_read_tail_is_bounded_by_bytes_and_lines(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    assert read_tail(log) is None  # not there yet
    log.write_text("".join(f"line {i}\n" for i in range(1000)))
    tail = read_tail(log)
    assert tail is not None and tail.splitlines() == [f"line {i}" for i in range(950, 1000)]
    log.write_bytes(b"x" * 10_000 + b"\nend\x00\n")
    assert read_tail(log, max_bytes=100) == "end\n"  # the cut first line dropped, the NUL too
    log.write_bytes("é".encode() * 3000)  # one long line cut in a multibyte character
    tail = read_tail(log, max_bytes=101)
    assert tail is not None and len(tail.encode()) <= 104


def test_the_latest_tail_is_kept_and_shown_to_its_owner_only(server: RunningServer) -> None:
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    other = server.client(server.token(Role.USER, "bob", vo="lhcb"))
    (job_id,) = user.post("/api/v1/jobs", json={"executable": "true"}).json()["ids"]
    assert user.get(f"/api/v1/jobs/{job_id}/log").json() == {
        "job_id": job_id, "state": "waiting", "attempt": None, "tail": "", "updated_at": None,
    }  # fmt: skip
    pilot = server.client(server.token(Role.PILOT, vo="lhcb"))
    pid = register(pilot)
    lease = pilot.post("/api/v1/pilots/match", json={"pilot_id": pid}).json()["lease"]["token"]
    pilot.post(f"/api/v1/jobs/{job_id}/report", json={"lease_token": lease, "state": "running"}).raise_for_status()
    for tail in ("one\n", "one\ntwo\n"):
        r = pilot.post(f"/api/v1/jobs/{job_id}/heartbeat", json={"lease_token": lease, "log_tail": tail})
        assert r.status_code == 200, r.text
    shown = user.get(f"/api/v1/jobs/{job_id}/log").json()
    assert shown["tail"] == "one\ntwo\n" and shown["attempt"] == 1 and shown["state"] == "running"
    # A beat without a tail keeps the last one; a too-long tail is a 422.
    pilot.post(f"/api/v1/jobs/{job_id}/heartbeat", json={"lease_token": lease}).raise_for_status()
    assert user.get(f"/api/v1/jobs/{job_id}/log").json()["tail"] == "one\ntwo\n"
    r = pilot.post(f"/api/v1/jobs/{job_id}/heartbeat", json={"lease_token": lease, "log_tail": "x" * 20_000})
    assert r.status_code == 422
    assert other.get(f"/api/v1/jobs/{job_id}/log").status_code == 403
    admin = server.client(server.token(Role.ADMIN, "root"))
    assert admin.get(f"/api/v1/jobs/{job_id}/log").json()["tail"] == "one\ntwo\n"


def test_new_text_prints_each_line_once_as_the_window_moves() -> None:
    assert new_text("", "a\nb\n") == "a\nb\n"
    assert new_text("a\nb\n", "a\nb\nc\n") == "c\n"
    assert new_text("a\nb\nc\n", "b\nc\nd\n") == "d\n"  # the window dropped a line and gained one
    assert new_text("a\nb\n", "x\ny\n") == "x\ny\n"  # moved past everything seen
    assert new_text("a\nb\n", "a\nb\n") == ""


def test_cloudpilot_logs_follows_until_the_job_ends(server: RunningServer, monkeypatch) -> None:
    monkeypatch.setattr("cloudpilot.cli.logs.FOLLOW_SECONDS", 0.1)
    token = server.token(Role.USER, "alice", vo="lhcb")
    user = server.client(token)
    (job_id,) = user.post("/api/v1/jobs", json={"executable": "true"}).json()["ids"]
    pilot = server.client(server.token(Role.PILOT, vo="lhcb"))
    pid = register(pilot)
    lease = pilot.post("/api/v1/pilots/match", json={"pilot_id": pid}).json()["lease"]["token"]
    pilot.post(f"/api/v1/jobs/{job_id}/report", json={"lease_token": lease, "state": "running"}).raise_for_status()

    def pilot_side() -> None:
        for tail in ("one\n", "one\ntwo\n", "two\nthree\n"):
            pilot.post(f"/api/v1/jobs/{job_id}/heartbeat", json={"lease_token": lease, "log_tail": tail})
            time.sleep(0.4)
        pilot.post(f"/api/v1/jobs/{job_id}/report", json={"lease_token": lease, "state": "done", "exit_code": 0})

    beats = threading.Thread(target=pilot_side)
    beats.start()
    env = {"CLOUDPILOT_URL": server.url, "CLOUDPILOT_TOKEN": token}
    result = CliRunner().invoke(app, ["logs", str(job_id), "--follow"], env=env)
    beats.join()
    assert result.exit_code == 0, result.output
    assert result.stdout == "one\ntwo\nthree\n"
