"""Sites keep control, end to end on local clouds: scheduled shutdowns with a deadline, Machine/Job Features,
bad requests of site admins. Real server, real VM processes, real pilots and payloads."""

from __future__ import annotations

import io
import json
import sys
import tarfile
import time

import httpx

from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import Role
from tests.helpers.pilots import wait_final, wait_for
from tests.helpers.server import RunningServer, ServerFactory

PY = sys.executable


def site_config(**extra: object) -> ServerConfig:
    """siteA's cloud a1 is free, so it is filled first; siteB's b1 costs and takes what a1 cannot."""
    clouds = {
        "a1": {"driver": "local", "site": "siteA", "grace_secs": 1, "price_per_core_hour": 0.0, "max_vms": 1,
               "flavors": {"small": {"cores": 1, "memory_mb": 2048}}, "start_rate_per_minute": 60},
        "b1": {"driver": "local", "site": "siteB", "price_per_core_hour": 1.0, "max_vms": 1,
               "flavors": {"small": {"cores": 1, "memory_mb": 2048}}, "start_rate_per_minute": 60},
    }  # fmt: skip
    return ServerConfig.model_validate(
        {
            "clouds": clouds,
            "policy": {"idle_seconds": 60, "min_work_seconds_per_core": 0},
            "provisioner": {"interval_seconds": 0.5, "pilot_idle_timeout_seconds": 60, "lost_after_seconds": 20},
            "lease": {"seconds": 10, "heartbeat_seconds": 1, "reaper_interval_seconds": 0.5},
            **extra,
        }
    )


def submit(server: RunningServer, code: str, wall: int = 60, **spec: object) -> tuple[httpx.Client, int]:
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    job = {"executable": PY, "arguments": ["-c", code], "requirements": {"wall_seconds": wall}, **spec}
    answer = user.post("/api/v1/jobs", json=job)
    assert answer.status_code == 201, answer.text
    return user, answer.json()["ids"][0]


def vms_of(server: RunningServer, cloud: str) -> list[dict]:
    admin = server.client(server.token(Role.ADMIN, "root"))
    return [vm for vm in admin.get("/api/v1/vms").json()["vms"] if vm["cloud"] == cloud]


def running_vm(server: RunningServer, cloud: str) -> dict:
    wait_for(lambda: any(vm["state"] == "running" for vm in vms_of(server, cloud)), 60, f"a running VM on {cloud}")
    return next(vm for vm in vms_of(server, cloud) if vm["state"] == "running")


def test_drained_idle_vm_halts_100_and_a_job_too_long_for_its_deadline_runs_elsewhere(
    make_server: ServerFactory,
) -> None:
    server = make_server(site_config())
    user, first = submit(server, "print('first')")
    assert wait_final(user, [first], timeout=90)[first]["state"] == "done"
    vm = running_vm(server, "a1")  # up and idle: its pilot waits for work for 60 s

    site_admin = server.client(server.token(Role.SITE, "ops", site="siteA"))
    deadline = time.time() + 30
    answer = site_admin.post("/api/v1/sites/siteA/shutdowns", json={"cloud": "a1", "deadline": deadline})
    assert answer.status_code == 201, answer.text
    assert answer.json()["vms"] == [vm["id"]]
    # Its features say so at once, over HTTP as the VM reads them.
    assert int(httpx.get(f"{server.url}/mjf/{vm['id']}/machine/shutdowntime").text) == int(deadline)

    _, second = submit(server, "print('second')", wall=120)  # 120 s does not fit in the 30 s left
    jobs = wait_final(user, [second], timeout=90)
    assert jobs[second]["state"] == "done"
    wait_for(lambda: vms_of(server, "a1")[0]["state"] == "destroyed", 60, "the drained VM destroyed")
    drained = vms_of(server, "a1")
    assert len(drained) == 1, "no new VM may start on a cloud being shut down"
    assert drained[0]["shutdown_code"] == 100
    assert drained[0]["shutdown_message"].startswith("100 ")
    assert drained[0]["jobs_run"] == 1  # the first job only
    assert [vm["jobs_run"] for vm in vms_of(server, "b1")] == [1]

    # Each VM left a usage record when it was destroyed, with the jobs it ran.
    admin = server.client(server.token(Role.ADMIN, "root"))
    for vm in vms_of(server, "b1"):  # idle for up to a minute otherwise
        admin.post(f"/api/v1/vms/{vm['id']}/stop").raise_for_status()
    wait_for(lambda: all(v["state"] == "destroyed" for v in vms_of(server, "b1")), 30, "b1's VM destroyed")
    records = {r["vm_id"]: r for r in admin.get("/api/v1/accounting/vms").json()["records"]}
    for vm in vms_of(server, "a1") + vms_of(server, "b1"):
        assert records[vm["id"]]["jobs_run"] == vm["jobs_run"]
        assert records[vm["id"]]["site"] == ("siteA" if vm["cloud"] == "a1" else "siteB")
    assert records[drained[0]["id"]]["shutdown_code"] == 100

    status = site_admin.get("/api/v1/sites/siteA").json()
    assert [s["cloud"] for s in status["shutdowns"]] == ["a1"]
    site_admin.delete(f"/api/v1/sites/siteA/shutdowns/{status['shutdowns'][0]['id']}").raise_for_status()
    assert site_admin.get("/api/v1/sites/siteA").json()["shutdowns"] == []


def test_a_job_still_running_at_the_deadline_goes_back_to_waiting_and_is_done_elsewhere(
    make_server: ServerFactory,
) -> None:
    server = make_server(site_config())
    # One attempt only: were the site's shutdown counted against the job, it would fail.
    user, job_id = submit(server, "import time; time.sleep(6); print('ok')", max_attempts=1)
    wait_for(lambda: user.get(f"/api/v1/jobs/{job_id}").json()["state"] == "running", 60, "the job running")
    vm = running_vm(server, "a1")

    site_admin = server.client(server.token(Role.SITE, "ops", site="siteA"))
    answer = site_admin.post("/api/v1/sites/siteA/shutdowns", json={"vm_id": vm["id"], "deadline": time.time() + 2})
    assert answer.status_code == 201, answer.text

    job = wait_final(user, [job_id], timeout=120)[job_id]
    assert job["state"] == "done" and job["attempts"] == 2
    history = user.get(f"/api/v1/jobs/{job_id}").json()["history"]
    requeued = [e for e in history if e["to_state"] == "waiting" and e["from_state"] is not None]
    assert len(requeued) == 1
    assert f"site shutdown of {vm['id']} at its deadline" in requeued[0]["reason"]
    assert "not counted against its attempts" in requeued[0]["reason"]
    # Done on another VM (a shutdown of one VM does not close its cloud).
    others = [v for v in vms_of(server, "a1") + vms_of(server, "b1") if v["id"] != vm["id"]]
    assert [v["jobs_run"] for v in others] == [1]
    gone = next(v for v in vms_of(server, "a1") if v["id"] == vm["id"])
    assert gone["state"] == "destroyed"
    assert "site shutdown" in gone["shutdown_message"]


def test_site_admins_get_clear_errors_and_nothing_changes(make_server: ServerFactory) -> None:
    server = make_server(site_config())
    site_a = server.client(server.token(Role.SITE, "ops-a", site="siteA"))
    site_b = server.client(server.token(Role.SITE, "ops-b", site="siteB"))
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))

    def refused(client: httpx.Client, path: str, body: dict, status: int, words: str, field: str | None = None) -> None:
        answer = client.post(path, json=body)
        assert answer.status_code == status, answer.text
        error = answer.json()["error"]
        assert words in error["message"]
        assert error["field"] == field

    refused(site_a, "/api/v1/sites/siteA/shutdowns", {"cloud": "a1", "deadline": time.time() - 60}, 422,
            "in the past", "deadline")  # fmt: skip
    refused(site_a, "/api/v1/sites/siteA/shutdowns", {"cloud": "a1", "deadline": time.time() + 0.2}, 422,
            "grace_secs", "deadline")  # fmt: skip
    refused(site_a, "/api/v1/sites/siteA/shutdowns", {"cloud": "nowhere"}, 404, "cloud nowhere is not configured")
    refused(site_a, "/api/v1/sites/siteA/shutdowns", {"cloud": "b1"}, 403, "belongs to site siteB")
    refused(site_a, "/api/v1/sites/siteB/shutdowns", {}, 403, "administers site siteA, not siteB")
    refused(site_a, "/api/v1/sites/siteZ/shutdowns", {}, 404, "site siteZ is not configured")
    refused(user, "/api/v1/sites/siteA/shutdowns", {}, 403, "needs a site token")
    assert site_a.put("/api/v1/clouds/b1/capacity", json={"max_vms": 0}).status_code == 403
    # Another site's VM.
    submit(server, "print(1)")
    vm = running_vm(server, "a1")
    refused(site_b, "/api/v1/sites/siteB/shutdowns", {"vm_id": vm["id"]}, 403, "runs at site siteA")
    refused(site_b, "/api/v1/sites/siteB/shutdowns", {"vm_id": "vm-nope"}, 404, "VM vm-nope does not exist")

    for client, site in ((site_a, "siteA"), (site_b, "siteB")):
        assert client.get(f"/api/v1/sites/{site}").json()["shutdowns"] == []
    assert all(v["shutdown_deadline"] is None for v in vms_of(server, "a1"))


def test_vms_and_payloads_read_their_machine_and_job_features(make_server: ServerFactory) -> None:
    server = make_server(site_config())
    code = (
        "import json, os, pathlib, urllib.request\n"
        "mf, jf = os.environ['MACHINEFEATURES'], os.environ['JOBFEATURES']\n"
        "read = lambda base, key: (pathlib.Path(base) / key).read_text().strip()\n"
        "out = {k: read(jf, k) for k in os.listdir(jf)}\n"
        "out['total_cpu'] = read(mf, 'total_cpu')\n"
        "out['vm_env'] = open('/etc/cloudpilot/env').read() if os.path.exists('/etc/cloudpilot/env') else ''\n"
        "pathlib.Path('features.json').write_text(json.dumps(out))\n"
    )
    user, job_id = submit(server, code, wall=300, output_files=["features.json"])
    job = wait_final(user, [job_id], timeout=90)[job_id]
    assert job["state"] == "done", job
    with tarfile.open(fileobj=io.BytesIO(user.get(f"/api/v1/jobs/{job_id}/output").content)) as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith("features.json"))
        seen = json.loads(archive.extractfile(member).read())  # type: ignore[union-attr]
    # The payload's own job features describe this job, not the VM.
    assert seen["job_id"] == str(job_id)
    assert seen["allocated_cpu"] == "1"
    assert seen["wall_limit_secs"] == "300"
    assert seen["cpu_limit_secs"] == "300"
    assert seen["total_cpu"] == "1"
    assert int(seen["shutdowntime_job"]) >= int(seen["jobstart_secs"]) + 300 - 1

    # The server serves the VM's own over HTTP, one value per key.
    vm = vms_of(server, "a1")[0]
    keys = httpx.get(f"{server.url}/mjf/{vm['id']}/machine/").text.split()
    assert set(keys) == {"total_cpu", "hs06", "grace_secs"}  # no shutdowntime: none is scheduled
    assert httpx.get(f"{server.url}/mjf/{vm['id']}/machine/hs06").text == "10.0"
    assert httpx.get(f"{server.url}/mjf/{vm['id']}/job/allocated_cpu").text == "1"
    assert httpx.get(f"{server.url}/mjf/{vm['id']}/machine/nothing").status_code == 404
