"""Pilot sessions through a real HTTP server, on SQLite and PostgreSQL: a VM's token registers once, every
registration gets its own session, and a session acts for its own pilot only."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import Role
from cloudpilot.domain.vms import VM, VMState
from cloudpilot.store.schema import tokens
from tests.helpers.server import RunningServer, ServerFactory


@pytest.fixture
def server(make_server: ServerFactory, db_url: str) -> RunningServer:
    return make_server(ServerConfig(database_url=None if db_url.startswith("sqlite") else db_url))


def _register(server: RunningServer, token: str) -> tuple[str, httpx.Client]:
    r = server.client(token).post("/api/v1/pilots", json={"cores": 1})
    assert r.status_code == 201, r.text
    return r.json()["id"], server.client(r.json()["session_token"])


def _vm_token(server: RunningServer, vm_id: str) -> str:
    now = server.services.clock.now()
    server.services.vms.create(VM(vm_id, "c1", "lhcb", "small", 1, 2048, VMState.REQUESTED, now, now), "test")
    server.services.vms.move(vm_id, VMState.BOOTING, now, "test")
    return server.services.tokens.create(Role.PILOT, vm_id, now, vo="lhcb", expires_at=now + 3600, vm_id=vm_id).token


def test_a_vm_token_registers_once_and_a_second_try_is_a_security_event(server: RunningServer) -> None:
    token = _vm_token(server, "vm-once")
    pilot_id, session = _register(server, token)
    again = server.client(token).post("/api/v1/pilots", json={"cores": 1})
    assert again.status_code == 401 and "registers one pilot only" in again.json()["error"]["message"]
    assert server.client(token).post("/api/v1/pilots/match", json={"pilot_id": pilot_id}).status_code == 401
    history = server.services.vms.history("vm-once")
    assert any(reason.startswith("security:") for _, _, _, reason in history)
    assert session.post("/api/v1/pilots/match", json={"pilot_id": pilot_id}).status_code == 204
    # The session is the VM's: it ends with the VM.
    server.services.tokens.revoke_for_vm("vm-once", server.services.clock.now())
    server.services.auth.forget()
    assert session.post("/api/v1/pilots/match", json={"pilot_id": pilot_id}).status_code == 401


def test_pilots_sharing_a_token_cannot_act_on_each_others_jobs(server: RunningServer) -> None:
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    (job_id,) = user.post("/api/v1/jobs", json={"executable": "sleep"}).json()["ids"]
    shared = server.token(Role.PILOT, vo="lhcb")
    a_id, a = _register(server, shared)
    b_id, b = _register(server, shared)  # a hand-made token stays reusable, with a session each time
    assert a.headers["Authorization"] != b.headers["Authorization"]
    lease = a.post("/api/v1/pilots/match", json={"pilot_id": a_id}).json()["lease"]["token"]
    # B (or the shared token itself) may neither report, heartbeat, download nor ask as A.
    r = b.post(f"/api/v1/jobs/{job_id}/report", json={"lease_token": lease, "state": "failed", "exit_code": 1})
    assert r.status_code == 403 and "not leased to this pilot" in r.json()["error"]["message"]
    assert b.post(f"/api/v1/jobs/{job_id}/heartbeat", json={"lease_token": lease}).status_code == 403
    assert b.post("/api/v1/pilots/match", json={"pilot_id": a_id}).status_code == 403
    raw = server.client(shared)
    r = raw.post(f"/api/v1/jobs/{job_id}/report", json={"lease_token": lease, "state": "failed", "exit_code": 1})
    assert r.status_code == 403 and "session" in r.json()["error"]["message"]
    assert b.post("/api/v1/pilots", json={"cores": 1}).status_code == 403  # a session registers nobody
    r = a.post(f"/api/v1/jobs/{job_id}/report", json={"lease_token": lease, "state": "running"})
    assert r.status_code == 200
    # Halting ends A's session at once; B's lives on until the shared token is revoked.
    assert a.post(f"/api/v1/pilots/{a_id}/halt", json={"code": 200, "message": "done"}).status_code == 200
    assert a.post("/api/v1/pilots/match", json={"pilot_id": a_id}).status_code == 401
    assert b.post("/api/v1/pilots/match", json={"pilot_id": b_id}).status_code == 204
    admin = server.client(server.token(Role.ADMIN, "root"))
    assert admin.delete(f"/api/v1/tokens/{shared.split('_')[1]}").status_code == 200
    assert b.post("/api/v1/pilots/match", json={"pilot_id": b_id}).status_code == 401


def test_sessions_are_stored_hashed_and_expire(server: RunningServer) -> None:
    token = _vm_token(server, "vm-exp")
    _, session = _register(server, token)
    secret = session.headers["Authorization"].split("_", 2)[2]
    session_id = session.headers["Authorization"].split("_")[1]
    with server.services.db.read() as conn:
        stored = conn.execute(select(tokens.c.secret_hash, tokens.c.expires_at).where(tokens.c.id == session_id))
        stored = stored.one()
    assert secret not in stored[0]
    vm_token_expiry = server.services.clock.now() + 3600
    assert stored[1] is not None and stored[1] <= vm_token_expiry + 1  # never outlives the VM's token
