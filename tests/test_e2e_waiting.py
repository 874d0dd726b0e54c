"""End to end: no job starves under the default policy, and every waiting job says why it waits — in the job,
in `cloudpilot jobs --why`, and in the answer to a submission nothing configured can run. Real server (SQLite
and PostgreSQL), real local-cloud VMs and pilots, the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import Role
from tests.helpers.pilots import wait_for
from tests.helpers.server import RunningServer, ServerFactory

PY = sys.executable


def local_cloud(**kw: object) -> dict:
    return {"driver": "local", "flavors": {"small": {"cores": 2, "memory_mb": 4096}}, **kw}


def server_config(db_url: str, clouds: dict, **extra: object) -> ServerConfig:
    # The documented defaults (policy, provisioner) on purpose: this is what a new user gets.
    return ServerConfig.model_validate({"database_url": db_url, "clouds": clouds, **extra})


def job(name: str, seconds: float = 0.2, **requirements: object) -> dict:
    code = f"import time; time.sleep({seconds}); print('ok')"
    return {"name": name, "executable": PY, "arguments": ["-c", code], "requirements": requirements}


def cli(server: RunningServer, token: str, *args: str) -> str:
    env = {**os.environ, "CLOUDPILOT_URL": server.url, "CLOUDPILOT_TOKEN": token, "COLUMNS": "200"}
    done = subprocess.run(
        [PY, "-m", "cloudpilot.cli.main", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_lone_short_job_runs_at_once_on_a_cloud_that_boots_in_a_second(
    make_server: ServerFactory, db_url: str
) -> None:
    server = make_server(server_config(db_url, {"local-a": local_cloud(max_vms=3, boot_seconds=1)}))
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    started = time.time()
    (job_id,) = user.post("/api/v1/jobs", json=job("lone", 0.2, wall_seconds=60)).json()["ids"]

    def running() -> bool:
        return user.get(f"/api/v1/jobs/{job_id}").json()["state"] in ("running", "done")

    wait_for(running, timeout=30, what="the lone job to run")
    took = time.time() - started
    print(f"FIGURE lone_job_submit_to_running={took:.2f} s")
    # The behaviour: not deferred by the min-work rule (that would hold it policy.max_defer_seconds, 60 s by
    # default). How fast it starts (<= 3 s on a quiet machine) is benchmarks/provisioning_latency.py's figure:
    # the whole suite loads both cores, and this took 1.8 s alone but 3.1 s inside it.
    assert took < 20, f"a 60-s job on an idle cloud that boots in 1 s took {took:.1f} s to start"
    vms = server.client(server.token(Role.ADMIN, "root")).get("/api/v1/vms").json()["vms"]
    assert len(vms) == 1, f"one lone job started {len(vms)} VMs"


def test_work_below_the_min_work_threshold_is_deferred_then_started(make_server: ServerFactory, db_url: str) -> None:
    # A cloud that boots slowly (as measured, or as configured before any boot): a 30-s job is not worth a VM
    # at once, but it starts one after policy.max_defer_seconds, and says so meanwhile.
    clouds = {"slow": local_cloud(max_vms=2, expected_boot_seconds=600)}
    policy = {"max_defer_seconds": 3}
    server = make_server(server_config(db_url, clouds, policy=policy, provisioner={"interval_seconds": 1}))
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    submitted = time.time()
    (job_id,) = user.post("/api/v1/jobs", json=job("short", 0.2, wall_seconds=30)).json()["ids"]

    def reason() -> str | None:
        return user.get(f"/api/v1/jobs/{job_id}").json()["blocked_reason"]

    wait_for(lambda: reason() is not None, timeout=10, what="an explanation")
    first = user.get(f"/api/v1/jobs/{job_id}").json()
    if first["state"] == "waiting":  # not yet past its deferral
        assert first["blocked_reason"].startswith("deferred: 30 of 600 core-seconds, starts by 20")
        assert first["waiting_reasons"]["clouds"]["slow"] == first["blocked_reason"]
    wait_for(lambda: user.get(f"/api/v1/jobs/{job_id}").json()["state"] == "done", timeout=40, what="the job")
    history = user.get(f"/api/v1/jobs/{job_id}").json()["history"]
    started = next(e["at"] for e in history if e["to_state"] == "matched")
    assert started - submitted >= 3 - 0.5  # it was deferred, not started at once


def test_every_waiting_job_says_why_and_the_cli_groups_them(make_server: ServerFactory, db_url: str) -> None:
    clouds = {
        "local-a": local_cloud(max_vms=1, boot_seconds=0.5, tags=["el8"]),
        "local-b": {**local_cloud(max_vms=1, boot_seconds=0.5), "flavors": {"big": {"cores": 4, "memory_mb": 8192}}},
    }
    server = make_server(server_config(db_url, clouds, provisioner={"interval_seconds": 1}))
    token = server.token(Role.USER, "alice", vo="lhcb")
    user = server.client(token)

    answer = user.post("/api/v1/jobs", json=[job("huge", cores=64), job("el9", tags=["el9"])]).json()
    huge, el9 = answer["ids"]
    warnings = answer["warnings"]
    assert any("huge: no configured cloud can run it" in w and "no flavor with 64 cores" in w for w in warnings)
    assert any("el9: no configured cloud can run it" in w and "offers no tag el9" in w for w in warnings)
    fine = user.post("/api/v1/jobs", json=job("fine", 30, wall_seconds=300)).json()
    assert fine["warnings"] == []

    def explained(job_id: int) -> dict:
        wait_for(
            lambda: user.get(f"/api/v1/jobs/{job_id}").json()["blocked_reason"] is not None,
            timeout=15,
            what=f"job {job_id} explained",
        )
        return user.get(f"/api/v1/jobs/{job_id}").json()

    big = explained(huge)
    assert big["blocked_reason"].startswith("no flavor on any cloud with 64 cores (largest 4)")
    assert big["waiting_reasons"]["clouds"] == {
        "local-a": "no flavor with 64 cores (largest 2)",
        "local-b": "no flavor with 64 cores (largest 4)",
    }
    assert big["waiting_reasons"]["pilots"] == "no pilot of VO lhcb asked for work in the last 10 min"
    tagged = explained(el9)
    assert tagged["blocked_reason"].startswith("tag el9 offered by no cloud")
    assert tagged["waiting_reasons"]["clouds"]["local-a"] == "offers no tag el9"

    # The CLI shows the same, and groups the waiting jobs by reason with counts.
    shown = cli(server, token, "job", str(huge))
    assert "no flavor on any cloud with 64 cores (largest 4)" in shown
    assert "local-b: no flavor with 64 cores (largest 4)" in shown
    user.post("/api/v1/jobs", json={"job": job("more-el9", tags=["el9"]), "parameter_count": 3})
    wait_for(
        lambda: any(g["jobs"] == 4 for g in user.get("/api/v1/jobs/waiting").json()["reasons"]),
        timeout=15,
        what="the new el9 jobs explained",
    )
    grouped = cli(server, token, "jobs", "--state", "waiting", "--why")
    lines = [line for line in grouped.splitlines() if "offered by no cloud" in line or "64 cores" in line]
    assert any("4" in line and "tag el9 offered by no cloud" in line for line in lines), grouped
    assert any("1" in line and "no flavor on any cloud with 64 cores" in line for line in lines), grouped


def test_the_quota_and_back_off_reasons_name_their_figures(make_server: ServerFactory, db_url: str) -> None:
    clouds = {
        "broken": local_cloud(max_vms=2, fail_share=1.0, price_per_core_hour=0.0),
        "full": local_cloud(max_vms=1, boot_seconds=0.5, price_per_core_hour=1.0),
    }
    server = make_server(server_config(db_url, clouds, provisioner={"interval_seconds": 1}))
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    ids = user.post("/api/v1/jobs", json={"job": job("w", 20, wall_seconds=300), "parameter_count": 6}).json()["ids"]

    def reasons() -> dict:
        return user.get(f"/api/v1/jobs/{ids[-1]}").json()["waiting_reasons"] or {"clouds": {}}

    wait_for(
        lambda: reasons()["clouds"].get("broken", "").startswith("backing off until 20")
        and reasons()["clouds"].get("full") == "quota full (1/1 VMs)",
        timeout=30,
        what="back-off and quota reasons",
    )
    print(reasons())
    assert "failed boot cycle(s)" in reasons()["clouds"]["broken"]
