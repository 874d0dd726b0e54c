"""Sites' policies end to end on local clouds: pledges between VOs, site-driven (vacuum) clouds backing a VO off,
and a preemptible VM killed mid-job whose events resume without being lost or computed twice."""

from __future__ import annotations

import io
import itertools
import re
import signal
import sys
import tarfile
import time
from pathlib import Path

import httpx

from cloudpilot.clouds.local_procs import signal_all, vm_processes
from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import Role
from tests.helpers.pilots import wait_final, wait_for
from tests.helpers.server import RunningServer, ServerFactory

PY = sys.executable
SMALL = {"small": {"cores": 1, "memory_mb": 2048}}


def make_config(clouds: dict, idle: float, **extra: object) -> ServerConfig:
    return ServerConfig.model_validate(
        {
            "vos": {"lhcb": {"share": 1}, "alice": {"share": 1}},
            "clouds": clouds,
            "policy": {"idle_seconds": idle, "min_work_seconds_per_core": 0},
            "provisioner": {"interval_seconds": 0.5, "pilot_idle_timeout_seconds": idle, "lost_after_seconds": 20},
            "lease": {"seconds": 10, "heartbeat_seconds": 1, "reaper_interval_seconds": 0.5},
            **extra,
        }
    )


def user_of(server: RunningServer, vo: str) -> httpx.Client:
    return server.client(server.token(Role.USER, f"user-{vo}", vo=vo))


def submit(user: httpx.Client, code: str, n: int = 1, wall: int = 60, **spec: object) -> list[int]:
    job = {"executable": PY, "arguments": ["-c", code], "requirements": {"wall_seconds": wall}, **spec}
    answer = user.post("/api/v1/jobs", json={"job": job, "parameter_count": n})
    assert answer.status_code == 201, answer.text
    return answer.json()["ids"]


def all_vms(server: RunningServer) -> list[dict]:
    admin = server.client(server.token(Role.ADMIN, "root"))
    return admin.get("/api/v1/vms").json()["vms"]


def test_a_pledge_keeps_one_vo_from_starving_another(make_server: ServerFactory) -> None:
    clouds = {"a1": {"driver": "local", "site": "siteA", "flavors": SMALL, "max_vms": 2, "start_rate_per_minute": 60}}
    server = make_server(make_config(clouds, idle=3, sites={"siteA": {"pledges": {"lhcb": 1, "alice": 1}}}))
    lhcb, alice = user_of(server, "lhcb"), user_of(server, "alice")
    lhcb_ids = submit(lhcb, "import time; time.sleep(2)", n=12)
    # Nobody else wants the site: lhcb may use all of it, above its pledge.
    wait_for(lambda: sum(vm["state"] == "running" and vm["vo"] == "lhcb" for vm in all_vms(server)) == 2, 60,
             "lhcb on both VMs")  # fmt: skip
    alice_ids = submit(alice, "print('alice')", n=2)

    alice_jobs = wait_final(alice, alice_ids, timeout=90)
    assert {j["state"] for j in alice_jobs.values()} == {"done"}
    lhcb_states = [lhcb.get(f"/api/v1/jobs/{i}").json()["state"] for i in lhcb_ids]
    assert lhcb_states.count("waiting") >= 3, "alice got in while lhcb still had a backlog"
    # The lhcb VM made room for alice: told by the site's policy, or drained by the provisioner, why.
    reasons = " ".join(
        f"{vm.get('permission') or ''} {vm.get('shutdown_message') or ''}"
        for vm in all_vms(server)
        if vm["vo"] == "lhcb"
    )
    assert "pledge" in reasons
    assert {j["state"] for j in wait_final(lhcb, lhcb_ids, timeout=180).values()} == {"done"}


def test_a_vacuum_cloud_backs_off_a_vo_whose_vms_find_no_work_and_probes_later(make_server: ServerFactory) -> None:
    backoff = 8.0
    clouds = {
        "v1": {"driver": "local", "site": "siteV", "mode": "vacuum", "flavors": SMALL, "max_vms": 2,
               "fizzle_seconds": 0, "backoff_seconds": backoff, "start_rate_per_minute": 60},
    }  # fmt: skip
    server = make_server(make_config(clouds, idle=2))
    lhcb = user_of(server, "lhcb")
    submit(lhcb, "import time; time.sleep(1)", n=4)  # lhcb has work; alice has none
    deadline = time.time() + 45
    while time.time() < deadline:
        alice_vms = [vm for vm in all_vms(server) if vm["vo"] == "alice"]
        if len(alice_vms) >= 3 and all(vm["state"] == "destroyed" for vm in alice_vms[:2]):
            break
        time.sleep(0.5)
    alice_vms = sorted((vm for vm in all_vms(server) if vm["vo"] == "alice"), key=lambda vm: vm["created_at"])
    assert len(alice_vms) >= 3, alice_vms
    first = alice_vms[0]
    assert first["shutdown_code"] == 300, first  # its pilot found no work
    # Backed off after each VM that found no work: the next one (a single probe) only backoff_seconds later.
    for previous, probe in itertools.pairwise(alice_vms):
        assert previous["shutdown_code"] == 300
        assert probe["created_at"] >= previous["terminated_at"] + backoff - 1.5, (previous, probe)
    # lhcb found work: its VMs are not backed off and did its jobs.
    assert sum(vm["jobs_run"] for vm in all_vms(server) if vm["vo"] == "lhcb") >= 4
    # Every VM's shutdown message is recorded ("NNN text").
    for vm in all_vms(server):
        if vm["state"] == "destroyed" and vm["shutdown_code"] is not None:
            assert re.match(r"^\d{3} ", vm["shutdown_message"])


EVENTS_PAYLOAD = """
import os, pathlib, time
first, n = int(os.environ['CLOUDPILOT_FIRST_EVENT']), int(os.environ['CLOUDPILOT_EVENTS'])
log = pathlib.Path(os.environ['EVENT_LOG'])
for i in range(first, n):
    time.sleep(1.2)
    pathlib.Path(f'event_{i}.out').write_text(f'event {i}\\n')
    with log.open('a') as f:
        f.write(f'computed {i}\\n')
    with open(os.environ['CLOUDPILOT_CHECKPOINT_FILE'], 'a') as f:
        f.write(f'{i}\\n')
"""


def test_a_preempted_vm_loses_no_event_and_none_is_computed_twice(make_server: ServerFactory, tmp_path: Path) -> None:
    clouds = {"s1": {"driver": "local", "site": "siteC", "preemptible": True, "flavors": SMALL, "max_vms": 1,
                     "start_rate_per_minute": 60}}  # fmt: skip
    server = make_server(make_config(clouds, idle=5))
    user = user_of(server, "lhcb")
    log = tmp_path / "events.log"
    (job_id,) = submit(
        user, EVENTS_PAYLOAD, wall=300, events=8, output_files=["event_*.out"], max_attempts=1,
        environment={"EVENT_LOG": str(log)},
    )  # fmt: skip
    wait_for(lambda: user.get(f"/api/v1/jobs/{job_id}").json()["events_done"] >= 3, 60, "3 events done")
    # The spot VM vanishes: every process of it is killed at once.
    (vm,) = [vm for vm in all_vms(server) if vm["state"] == "running"]
    driver = server.services.provisioner.drivers["s1"]
    supervisor = driver.supervisor_pid(vm["instance_id"])  # type: ignore[attr-defined]
    signal_all(vm_processes(supervisor, include_supervisor=True), signal.SIGKILL)

    job = wait_final(user, [job_id], timeout=180)[job_id]
    assert job["state"] == "done", job
    assert job["attempts"] == 2 and job["events_done"] == 8
    chunks = user.get(f"/api/v1/jobs/{job_id}/events").json()["chunks"]
    covered = [e for c in chunks for e in range(c["first_event"], c["last_event"] + 1)]
    assert sorted(covered) == list(range(8)), chunks
    assert {c["attempt"] for c in chunks} == {1, 2}
    outputs: list[str] = []
    for c in chunks:
        outputs += _event_files(user.get(f"/api/v1/jobs/{job_id}/events/{c['first_event']}").content)
    outputs += _event_files(user.get(f"/api/v1/jobs/{job_id}/output").content)
    assert sorted(outputs) == sorted(f"event_{i}.out" for i in range(8)), outputs
    computed = [line.split()[1] for line in log.read_text().splitlines()]
    assert sorted(computed, key=int) == [str(i) for i in range(8)], "an event was computed twice"
    history = user.get(f"/api/v1/jobs/{job_id}").json()["history"]
    assert any("preemptible" in e["reason"] and e["to_state"] == "waiting" for e in history)


def _event_files(archive: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return [Path(m.name).name for m in tar.getmembers() if Path(m.name).name.startswith("event_")]


def test_a_shrinking_capacity_drains_the_excess_gracefully(make_server: ServerFactory) -> None:
    clouds = {"s1": {"driver": "local", "site": "siteC", "preemptible": True, "flavors": SMALL, "max_vms": 2,
                     "start_rate_per_minute": 60}}  # fmt: skip
    server = make_server(make_config(clouds, idle=30))
    user = user_of(server, "lhcb")
    ids = submit(user, "import time; time.sleep(6)", n=2)
    wait_for(lambda: sum(vm["state"] == "running" for vm in all_vms(server)) == 2, 60, "two VMs running")
    wait_for(lambda: all(user.get(f"/api/v1/jobs/{i}").json()["state"] == "running" for i in ids), 30, "jobs run")
    site_admin = server.client(server.token(Role.SITE, "ops", site="siteC"))
    assert site_admin.put("/api/v1/clouds/s1/capacity", json={"max_vms": 1}).status_code == 200
    admin = server.client(server.token(Role.ADMIN, "root"))
    assert next(c for c in admin.get("/api/v1/clouds").json()["clouds"] if c["name"] == "s1")["max_vms"] == 1

    jobs = wait_final(user, ids, timeout=90)
    assert {j["state"] for j in jobs.values()} == {"done"}  # the drained VM finished its job first
    assert all(j["attempts"] == 1 for j in jobs.values())
    drained = []
    for vm in all_vms(server):
        history = admin.get(f"/api/v1/vms/{vm['id']}").json()["history"]
        if any(e["to_state"] == "draining" for e in history):
            drained.append((vm, history))
    assert len(drained) == 1, [vm["id"] for vm, _ in drained]
    vm, history = drained[0]
    assert "capacity" in next(e["reason"] for e in history if e["to_state"] == "draining")
    wait_for(lambda: admin.get(f"/api/v1/vms/{vm['id']}").json()["state"] == "destroyed", 30, "drained VM gone")
    assert len(all_vms(server)) == 2  # nothing new started above the capacity
