"""The final report's protocol extension: an inline output and the slot's next job in the same round trip."""

from __future__ import annotations

import base64
import hashlib
import time

from cloudpilot.domain.auth import Role
from tests.helpers.archives import tar_gz
from tests.helpers.server import RunningServer
from tests.test_api import register


def test_a_final_report_stores_its_inline_output_and_answers_the_next_job(server: RunningServer) -> None:
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    first, second = user.post("/api/v1/jobs", json={"job": {"executable": "true"}, "parameter_count": 2}).json()["ids"]
    pilot = server.client(server.token(Role.PILOT, vo="lhcb"))
    pid = register(pilot)
    lease = pilot.post("/api/v1/pilots/match", json={"pilot_id": pid}).json()["lease"]["token"]
    assert pilot.post(f"/api/v1/jobs/{first}/report", json={"lease_token": lease, "state": "running"}).is_success

    bad = {"lease_token": lease, "state": "running", "output": base64.b64encode(b"x").decode()}
    r = pilot.post(f"/api/v1/jobs/{first}/report", json=bad)
    assert r.status_code == 422 and r.json()["error"]["field"] == "output"
    for garbage in ("%%", "\u00e9t\u00e9=="):  # not base64; not even ASCII (schemathesis found the second a 500)
        r = pilot.post(f"/api/v1/jobs/{first}/report", json={"lease_token": lease, "state": "done", "output": garbage})
        assert r.status_code == 422 and r.json()["error"]["field"] == "output"
    assert user.get(f"/api/v1/jobs/{first}").json()["state"] == "running"  # nothing changed by a refusal

    # A refused report (a stale lease) records no output: the job's output is recorded with its end, or not at all.
    refused = tar_gz({"job.log": b"from a stale lease\n"})
    stale = {"lease_token": lease + 7, "state": "done", "output": base64.b64encode(refused).decode()}
    assert pilot.post(f"/api/v1/jobs/{first}/report", json=stale).status_code == 409
    assert not server.services.sandbox_records.exists(f"sha256:{hashlib.sha256(refused).hexdigest()}")

    archive = tar_gz({"job.log": b"hello\n"})
    final = {"lease_token": lease, "state": "done", "output": base64.b64encode(archive).decode(), "next": {"cores": 1}}
    r = pilot.post(f"/api/v1/jobs/{first}/report", json=final)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["state"] == "done"
    assert answer["next"]["job"]["id"] == second and answer["next"]["lease"]["token"] == 1
    assert user.get(f"/api/v1/jobs/{first}/output").content == archive
    archive_id = f"sha256:{hashlib.sha256(archive).hexdigest()}"
    assert server.services.sandbox_records.exists(archive_id)
    # Held by the database, no file of its own in the sandbox store
    assert server.services.sandbox_records.holds(archive_id)
    assert not server.services.sandbox_store.store.exists(archive_id)
    assert user.get(f"/api/v1/jobs/{second}").json()["state"] == "matched"

    # Nothing left for the slot: next is null. A report without "next" answers as before.
    token = answer["next"]["lease"]["token"]
    r = pilot.post(f"/api/v1/jobs/{second}/report", json={"lease_token": token, "state": "running"})
    assert r.json() == {"id": second, "state": "running"}
    r = pilot.post(f"/api/v1/jobs/{second}/report", json={"lease_token": token, "state": "done", "next": {}})
    assert r.json() == {"id": second, "state": "done", "next": None}
    assert not user.get(f"/api/v1/jobs/{second}").json()["has_output"]

    # Still a sandbox like any other: a later job may take it as its input, and its pilot gets the same bytes.
    chained = user.post("/api/v1/jobs", json={"executable": "true", "input_sandbox": archive_id})
    assert chained.status_code == 201, chained.text
    (third,) = chained.json()["ids"]
    lease = pilot.post("/api/v1/pilots/match", json={"pilot_id": pid}).json()["lease"]["token"]
    assert pilot.get(f"/api/v1/jobs/{third}/input", params={"lease_token": lease}).content == archive


def test_a_job_ended_before_its_running_report_goes_through_running_by_ran_seconds(server: RunningServer) -> None:
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    (job_id,) = user.post("/api/v1/jobs", json={"executable": "true"}).json()["ids"]
    pilot = server.client(server.token(Role.PILOT, vo="lhcb"))
    pid = register(pilot)
    lease = pilot.post("/api/v1/pilots/match", json={"pilot_id": pid}).json()["lease"]["token"]
    report = f"/api/v1/jobs/{job_id}/report"

    r = pilot.post(report, json={"lease_token": lease, "state": "running", "ran_seconds": 1})
    assert r.status_code == 422 and r.json()["error"]["field"] == "ran_seconds"
    r = pilot.post(report, json={"lease_token": lease, "state": "done"})  # matched cannot skip running
    assert r.status_code == 409 and user.get(f"/api/v1/jobs/{job_id}").json()["state"] == "matched"

    time.sleep(0.5)
    r = pilot.post(report, json={"lease_token": lease, "state": "done", "exit_code": 0, "ran_seconds": 0.25})
    assert r.json() == {"id": job_id, "state": "done"}
    job = user.get(f"/api/v1/jobs/{job_id}").json()
    assert [(e["from_state"], e["to_state"]) for e in job["history"]][-2:] == [("matched", "running"),
                                                                               ("running", "done")]  # fmt: skip
    assert abs(job["finished_at"] - job["started_at"] - 0.25) < 0.01
    # The accounting record says how long it ran, not how long the pilot held it.
    (record,) = [u for u in user.get("/api/v1/accounting/jobs").json()["records"] if u["job_id"] == job_id]
    assert abs(record["wall_seconds"] - 0.25) < 0.01

