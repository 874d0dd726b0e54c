"""Outages re-run nothing: time the server was down does not count against leases (services/reaper.py)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx
import yaml

from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import Role
from cloudpilot.domain.jobs import JobSpec, JobState
from cloudpilot.services.reaper import LeaseReaper
from cloudpilot.services.tokens import issue_token
from cloudpilot.store.database import Database
from cloudpilot.store.jobs import JobRepository
from cloudpilot.store.migrations import upgrade
from cloudpilot.store.tokens import TokenRepository
from tests.helpers.pilots import PilotProcesses, wait_final, wait_for
from tests.helpers.server_process import ServerProcesses

# The issue's figure is a 130 s outage with a 90 s lease; here both are scaled down by ten unless
# CLOUDPILOT_OUTAGE_SCALE=10 asks for the real one (docs/operations.md, "Outages").
SCALE = float(os.environ.get("CLOUDPILOT_OUTAGE_SCALE", "1"))
LEASE = 9.0 * SCALE
OUTAGE = 13.0 * SCALE
NOW = 1_700_000_000.0

# Each run of a job leaves a marker file of its own: more markers than jobs means a job ran twice. A job then
# waits for the server's crash (the "killed" file) and runs on for its given seconds.
MARK = """
import os, sys, time, uuid
open(os.path.join(sys.argv[1], sys.argv[2] + "-" + uuid.uuid4().hex), "w").close()
while not os.path.exists(os.path.join(sys.argv[1], "..", "killed")):
    time.sleep(0.1)
time.sleep(float(sys.argv[3]))
"""


def test_restart_extends_leases_and_holds_expiry_for_one_lease_period(db: Database) -> None:
    jobs = JobRepository(db)
    config = ServerConfig.model_validate({"lease": {"seconds": 90}})
    jobs.submit("lhcb", "alice", [JobSpec(executable="/bin/true"), JobSpec(executable="/bin/false")], NOW, 3600)
    tq = jobs.waiting_task_queues()[0].id
    alive, silent = jobs.claim(tq, "p-alive", NOW, 90), jobs.claim(tq, "p-silent", NOW, 90)
    assert alive is not None and silent is not None
    reaper = LeaseReaper(jobs, config)
    back = NOW + 130  # the server comes back 130 s later: both leases ran out while it was down
    assert reaper.resume(back) == 2
    assert jobs.get(alive.id).lease_expires_at == back + 90
    assert reaper.tick(back + 1) == []
    jobs.heartbeat(alive.id, alive.lease_token, back + 30, 90)  # the live pilot gets through
    assert reaper.tick(back + 89) == []  # nothing expires in the first lease period
    requeued = reaper.tick(back + 91)  # the silent pilot's job goes back; the live one keeps its lease
    assert [r.job_id for r in requeued] == [silent.id]
    assert jobs.get(alive.id).state is JobState.MATCHED
    # A lease longer than the restart's minimum is left as it is, never shortened.
    jobs.heartbeat(alive.id, alive.lease_token, back + 95, 500)
    assert reaper.resume(back + 100) == 0
    assert jobs.get(alive.id).lease_expires_at == back + 95 + 500


def test_server_killed_for_longer_than_a_lease_reruns_nothing(
    db_url: str, tmp_path: Path, server_processes: ServerProcesses, pilots: PilotProcesses
) -> None:
    db = Database(db_url)
    try:
        upgrade(db)
        tokens = TokenRepository(db)
        user_token = issue_token(tokens, Role.USER, "alice", time.time(), vo="lhcb").token
        pilot_token = issue_token(tokens, Role.PILOT, "pilots", time.time(), vo="lhcb").token
    finally:
        db.dispose()
    config = tmp_path / "server.yaml"
    lease = {"seconds": LEASE, "heartbeat_seconds": LEASE / 3, "reaper_interval_seconds": 0.5}
    config.write_text(yaml.safe_dump({"database_url": db_url, "lease": lease}))
    data_dir, markers = tmp_path / "data", tmp_path / "markers"
    markers.mkdir()
    server = server_processes.start(data_dir, "--config", str(config))
    user = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {user_token}"}, timeout=30)
    # Half the jobs end during the outage (their pilots keep retrying the report), half run past the restart.
    sleeps = [2, 2, 2, OUTAGE + 6, OUTAGE + 6, OUTAGE + 6]
    specs = [
        {"name": f"j{n}", "executable": sys.executable, "arguments": ["-c", MARK, str(markers), f"j{n}", str(s)]}
        for n, s in enumerate(sleeps)
    ]
    ids = user.post("/api/v1/jobs", json=specs).json()["ids"]
    for _ in range(2):
        pilots.start(server.url, pilot_token, cores=3, idle_timeout=60)

    def all_running() -> bool:
        states = [j["state"] for j in user.get("/api/v1/jobs").json()["jobs"]]
        return states == ["running"] * len(ids) and len(list(markers.iterdir())) == len(ids)

    wait_for(all_running, timeout=60, what="every job to run")
    server.kill()
    killed = time.time()
    (tmp_path / "killed").touch()
    time.sleep(OUTAGE - (time.time() - killed))
    server = server_processes.start(data_dir, "--config", str(config), port=int(server.url.rsplit(":", 1)[1]))
    assert f"{len(ids)} active leases, {len(ids)} extended" in server.log()
    jobs = wait_final(user, ids, timeout=90 * SCALE)
    user.close()
    assert {j["state"] for j in jobs.values()} == {"done"}
    runs = sorted(p.name.split("-")[0] for p in markers.iterdir())
    print(f"FIGURE outage_reexecutions={len(runs) - len(ids)} jobs (outage {OUTAGE:.0f} s, lease {LEASE:.0f} s)")
    assert runs == sorted(f"j{n}" for n in range(len(ids))), "a job ran more than once"
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {user_token}"}) as c:
        for job_id in ids:
            history = " ".join(e["reason"] for e in c.get(f"/api/v1/jobs/{job_id}").json()["history"])
            assert "lost" not in history and "expired" not in history
