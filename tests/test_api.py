"""The REST API through a real HTTP server: auth, bad input, leases, long poll."""

from __future__ import annotations

import io
import tarfile
import threading
import time

import httpx

from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import Role
from tests.helpers.archives import tar_gz
from tests.helpers.server import RunningServer, ServerFactory


def register(pilot: httpx.Client, cores: int = 1) -> str:
    """Register with the client's pilot token; from then on the client speaks with the pilot's session."""
    r = pilot.post("/api/v1/pilots", json={"cores": cores, "hostname": "test"})
    assert r.status_code == 201, r.text
    pilot.headers["Authorization"] = f"Bearer {r.json()['session_token']}"
    return r.json()["id"]


def all_jobs(server: RunningServer) -> list[dict]:
    admin = server.client(server.token(Role.ADMIN, "root"))
    return admin.get("/api/v1/jobs").json()["jobs"]


def test_auth_errors_are_clear(server: RunningServer) -> None:
    r = server.client(None).get("/api/v1/jobs")
    assert r.status_code == 401 and "missing token" in r.json()["error"]["message"]
    r = server.client("nonsense").get("/api/v1/jobs")
    assert r.status_code == 401 and "malformed token" in r.json()["error"]["message"]
    r = server.client("cp_0000_wrong").get("/api/v1/jobs")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
    pilot = server.client(server.token(Role.PILOT, vo="lhcb"))
    r = pilot.post("/api/v1/jobs", json={"executable": "echo"})
    assert r.status_code == 403 and "needs a user token" in r.json()["error"]["message"]
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    r = user.post("/api/v1/pilots/match", json={"pilot_id": "x"})
    assert r.status_code == 403


def test_bad_jobs_are_refused_and_nothing_is_stored(server: RunningServer) -> None:
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    assert user.post("/api/v1/jobs", json={"executable": "keep-me"}).status_code == 201
    cases = [
        ({"executable": "echo", "colour": "red"}, "colour"),
        ({"executable": "echo", "requirements": {"cores": 0}}, "requirements.cores"),
        ({"name": "no executable"}, "executable"),
        ([{"executable": "ok"}, {"executable": "echo", "priority": "high"}], "[1].priority"),
        ({"executable": "echo", "input_sandbox": "sha256:" + "0" * 64}, "input_sandbox"),
    ]
    for body, field in cases:
        r = user.post("/api/v1/jobs", json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"]["field"] == field
        assert field.split(".")[-1].strip("[]1") in r.json()["error"]["message"]
    r = user.post("/api/v1/jobs", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["error"]["message"]
    assert [j["spec"]["executable"] for j in all_jobs(server)] == ["keep-me"]


def test_parametric_and_yaml_submission(server: RunningServer) -> None:
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    r = user.post("/api/v1/jobs", json={"job": {"name": "mc-{n}", "executable": "mc"}, "parameter_count": 2000})
    assert r.status_code == 201
    ids = r.json()["ids"]
    assert len(ids) == 2000 and ids == sorted(ids)
    assert user.get(f"/api/v1/jobs/{ids[1999]}").json()["name"] == "mc-1999"
    yaml_doc = b'- executable: echo\n  arguments: [hello]\n- executable: "true"\n'
    r = user.post("/api/v1/jobs", content=yaml_doc, headers={"Content-Type": "application/yaml"})
    assert r.status_code == 201 and len(r.json()["ids"]) == 2
    assert user.get("/api/v1/jobs/summary").json()["counts"]["waiting"] == 2002


def test_users_see_and_kill_only_their_own_jobs(server: RunningServer) -> None:
    alice = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    bob = server.client(server.token(Role.USER, "bob", vo="lhcb"))
    (job_id,) = alice.post("/api/v1/jobs", json={"executable": "echo"}).json()["ids"]
    r = bob.get(f"/api/v1/jobs/{job_id}")
    assert r.status_code == 403 and "another user" in r.json()["error"]["message"]
    assert bob.post(f"/api/v1/jobs/{job_id}/kill").status_code == 403
    assert bob.get("/api/v1/jobs").json()["jobs"] == []
    assert alice.get(f"/api/v1/jobs/{job_id}").json()["state"] == "waiting"
    assert alice.post(f"/api/v1/jobs/{job_id}/kill").json()["state"] == "killed"
    r = alice.post(f"/api/v1/jobs/{job_id}/kill")
    assert r.status_code == 409 and "already killed" in r.json()["error"]["message"]
    assert alice.get("/api/v1/jobs/424242").status_code == 404


def test_oversized_sandbox_gets_413_and_leaves_nothing(make_server: ServerFactory) -> None:
    server = make_server(ServerConfig.model_validate({"storage": {"max_sandbox_bytes": 1000}}))
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    r = user.post("/api/v1/sandboxes", content=b"x" * 5000)
    assert r.status_code == 413 and "max_sandbox_bytes" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: the limit must hold while streaming too
        for _ in range(10):
            yield b"y" * 500

    r = user.post("/api/v1/sandboxes", content=chunks())
    assert r.status_code == 413
    sandbox_dir = server.services.sandbox_store.store.root
    assert [p for p in sandbox_dir.rglob("*") if p.is_file()] == []
    r = user.post("/api/v1/sandboxes", content=b"small")
    assert r.status_code == 201 and r.json()["id"].startswith("sha256:")


def test_full_lease_protocol_and_fencing(server: RunningServer) -> None:
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    sandbox = user.post("/api/v1/sandboxes", content=tar_gz({"in.txt": b"input"})).json()["id"]
    (job_id,) = user.post(
        "/api/v1/jobs", json={"executable": "cat", "input_files": ["in.txt"], "input_sandbox": sandbox}
    ).json()["ids"]
    pilot = server.client(server.token(Role.PILOT, vo="lhcb"))
    other_vo = server.client(server.token(Role.PILOT, vo="atlas"))
    assert other_vo.post("/api/v1/pilots/match", json={"pilot_id": register(other_vo)}).status_code == 204
    pid = register(pilot)
    r = pilot.post("/api/v1/pilots/match", json={"pilot_id": pid, "cores": 1})
    assert r.status_code == 200
    lease = r.json()["lease"]["token"]
    assert r.json()["job"]["id"] == job_id and lease == 1
    r = pilot.get(f"/api/v1/jobs/{job_id}/input", params={"lease_token": lease})
    assert r.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        assert tar.getnames() == ["in.txt"]
    assert other_vo.get(f"/api/v1/jobs/{job_id}/input", params={"lease_token": lease}).status_code == 403
    assert pilot.post(f"/api/v1/jobs/{job_id}/report", json={"lease_token": lease, "state": "running"}).is_success
    r = pilot.post(f"/api/v1/jobs/{job_id}/heartbeat", json={"lease_token": lease, "progress": "3/10"})
    assert r.json()["action"] == "continue"
    r = pilot.post(f"/api/v1/jobs/{job_id}/report", json={"lease_token": 7, "state": "done", "exit_code": 0})
    assert r.status_code == 409 and r.json()["error"]["code"] == "lease_conflict"
    r = pilot.put(f"/api/v1/jobs/{job_id}/output", params={"lease_token": lease}, content=tar_gz({"o": b"1"}))
    assert r.status_code == 200
    r = pilot.post(f"/api/v1/jobs/{job_id}/report", json={"lease_token": lease, "state": "done", "exit_code": 3})
    assert r.status_code == 422 and r.json()["error"]["field"] == "exit_code"
    r = pilot.post(f"/api/v1/jobs/{job_id}/report", json={"lease_token": lease, "state": "done", "exit_code": 0})
    assert r.json()["state"] == "done"
    job = user.get(f"/api/v1/jobs/{job_id}").json()
    assert job["state"] == "done" and job["progress"] == "3/10" and job["has_output"]
    assert user.get(f"/api/v1/jobs/{job_id}/output").content.startswith(b"\x1f\x8b")
    # A report after the end changes nothing.
    r = pilot.post(f"/api/v1/jobs/{job_id}/report", json={"lease_token": lease, "state": "failed", "exit_code": 1})
    assert r.status_code == 409
    assert user.get(f"/api/v1/jobs/{job_id}").json()["state"] == "done"


def test_late_report_of_lost_pilot_gets_409(make_server: ServerFactory) -> None:
    server = make_server(ServerConfig.model_validate({"lease": {"seconds": 1, "reaper_interval_seconds": 0.2}}))
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    (job_id,) = user.post("/api/v1/jobs", json={"executable": "sleep"}).json()["ids"]
    token = server.token(Role.PILOT, vo="lhcb")
    pilot, other = server.client(token), server.client(token)
    lost, fresh = register(pilot), register(other)
    first = pilot.post("/api/v1/pilots/match", json={"pilot_id": lost}).json()
    assert pilot.post(f"/api/v1/jobs/{job_id}/report", json={"lease_token": 1, "state": "running"}).is_success
    time.sleep(2)  # no heartbeat: the reaper requeues the job
    second = other.post("/api/v1/pilots/match", json={"pilot_id": fresh, "wait_seconds": 5}).json()
    assert second["job"]["id"] == job_id and second["lease"]["token"] == 2
    token = first["lease"]["token"]
    r = pilot.post(f"/api/v1/jobs/{job_id}/report", json={"lease_token": token, "state": "done", "exit_code": 0})
    assert r.status_code == 409 and "attempt 2" in r.json()["error"]["message"]
    r = pilot.post(f"/api/v1/jobs/{job_id}/heartbeat", json={"lease_token": token})
    assert r.status_code == 409
    job = user.get(f"/api/v1/jobs/{job_id}").json()
    assert (job["state"], job["attempts"]) == ("matched", 2)
    assert "lease expired" in " ".join(e["reason"] for e in job["history"])


def test_long_poll_hands_out_a_new_job_within_a_second(server: RunningServer) -> None:
    pilot = server.client(server.token(Role.PILOT, vo="lhcb"))
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    pid = register(pilot)
    answer: dict[str, object] = {}

    def poll() -> None:
        r = pilot.post("/api/v1/pilots/match", json={"pilot_id": pid, "wait_seconds": 20})
        answer["status"], answer["at"] = r.status_code, time.monotonic()

    t = threading.Thread(target=poll)
    t.start()
    time.sleep(1.0)
    submitted = time.monotonic()
    user.post("/api/v1/jobs", json={"executable": "echo"})
    t.join(timeout=25)
    assert answer["status"] == 200
    assert float(answer["at"]) - submitted < 1.0  # type: ignore[arg-type]


def test_multicore_offer_and_fair_share_between_users(server: RunningServer) -> None:
    alice = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    bob = server.client(server.token(Role.USER, "bob", vo="lhcb"))
    alice.post("/api/v1/jobs", json={"job": {"executable": "a"}, "parameter_count": 10})
    bob.post("/api/v1/jobs", json={"job": {"executable": "b"}, "parameter_count": 10})
    alice.post("/api/v1/jobs", json={"executable": "big", "requirements": {"cores": 4}})
    pilot = server.client(server.token(Role.PILOT, vo="lhcb"))
    pid = register(pilot, cores=4)
    owners = []
    for _ in range(6):
        job = pilot.post("/api/v1/pilots/match", json={"pilot_id": pid, "cores": 1}).json()["job"]
        owners.append(job["executable"])
    assert sorted(owners) == ["a", "a", "a", "b", "b", "b"]  # alternates between the two users
    job = pilot.post("/api/v1/pilots/match", json={"pilot_id": pid, "cores": 4}).json()["job"]
    assert job["cores"] in (1, 4)
    big = next(j for j in all_jobs(server) if j["spec"]["executable"] == "big")
    r = pilot.post("/api/v1/pilots/match", json={"pilot_id": pid, "cores": 3})
    assert r.status_code == 200 and r.json()["job"]["id"] != big["id"]


def test_bad_query_and_path_values_get_400(server: RunningServer) -> None:
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    r = user.get("/api/v1/jobs", params={"state": "bogus"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "state"
    assert user.get("/api/v1/jobs/abc").status_code == 400
    r = user.post("/api/v1/jobs", json={"job": {"executable": "x"}})
    assert r.status_code == 422 and r.json()["error"]["field"] == "parameter_count"


def test_concurrent_pilots_over_http_never_share_a_job(make_server: ServerFactory, db_url: str) -> None:
    """On SQLite and on PostgreSQL: eight pilots race for 300 jobs; each job goes to exactly one of them."""
    server = make_server(ServerConfig(database_url=None if db_url.startswith("sqlite") else db_url))
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    ids = user.post("/api/v1/jobs", json={"job": {"executable": "x"}, "parameter_count": 300}).json()["ids"]
    token = server.token(Role.PILOT, vo="lhcb")
    got: list[list[int]] = [[] for _ in range(8)]

    def race(k: int) -> None:
        pilot = server.client(token)
        pid = register(pilot)
        while (r := pilot.post("/api/v1/pilots/match", json={"pilot_id": pid, "cores": 1})).status_code == 200:
            got[k].append(r.json()["job"]["id"])

    threads = [threading.Thread(target=race, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    handed = [job for mine in got for job in mine]
    assert sorted(handed) == sorted(ids)
    assert sum(1 for mine in got if mine) > 1  # the race really had several winners


def test_a_submission_without_a_vo_is_refused_not_crashed(server: RunningServer) -> None:
    admin = server.client(server.token(Role.ADMIN, "root"))
    r = admin.post("/api/v1/jobs", json={"executable": "true"})
    assert r.status_code == 403 and "bound to a VO" in r.json()["error"]["message"]


def test_resubmitting_ids_no_column_can_hold_is_a_422_naming_the_field(make_server: ServerFactory, db_url: str) -> None:
    server = make_server(ServerConfig(database_url=db_url))  # found by the fuzzer on PostgreSQL: it was a 500
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    r = user.post("/api/v1/jobs/resubmit", json={"ids": [10**30, 5]})
    assert r.status_code == 422 and "ids" in str(r.json()["error"]), r.text
