"""The log of a real ``cloudpilot server`` process: JSON lines with ids (``--log-format json``), the human format as
it was by default, and no token in either."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from cloudpilot.domain.auth import Role
from tests.helpers.server_process import ServerProcesses, store_token

HUMAN_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ")


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _exercise(server_url: str, tokens: dict[str, str]) -> tuple[list[int], str]:
    """What a user, a pilot, an operator and a stranger do; returns the job ids and the pilot id."""
    with httpx.Client(base_url=server_url, timeout=30) as c:
        job = {"job": {"executable": "/bin/true"}, "parameter_count": 2}
        ids = c.post("/api/v1/jobs", json=job, headers=_bearer(tokens["user"])).json()["ids"]
        assert c.get("/api/v1/jobs", headers=_bearer(tokens["bad"])).status_code == 401
        assert c.get("/api/v1/jobs", headers=_bearer(tokens["user"] + "x")).status_code == 401  # wrong secret
        r = c.post("/api/v1/pilots", json={"cores": 1, "hostname": "wn01"}, headers=_bearer(tokens["pilot"]))
        assert r.status_code == 201, r.text
        pilot_id, session = r.json()["id"], r.json()["session_token"]
        r = c.post("/api/v1/pilots/match", json={"pilot_id": pilot_id}, headers=_bearer(session))
        assert r.status_code == 200, r.text
        assert c.get("/metrics", headers=_bearer(tokens["admin"])).status_code == 200
        assert c.get("/api/v1/health", headers={"X-Request-ID": "trace-me-42"}).headers["x-request-id"] == "trace-me-42"
    return ids, pilot_id


@pytest.mark.parametrize("log_format", ["json", "human"])
def test_server_log_has_ids_and_no_token(server_processes: ServerProcesses, tmp_path: Path, log_format: str) -> None:
    data = tmp_path / "data"
    tokens = {
        "admin": store_token(data, Role.ADMIN, "root"),
        "user": store_token(data, Role.USER, "alice", vo="atlas"),
        "pilot": store_token(data, Role.PILOT, "pilot-atlas", vo="atlas"),
        "bad": "cp_0123456789abcdef_" + "S3cr3tS3cr3tS3cr3tS3cr3t",  # shaped like a token, known to nobody
    }
    args = ["--log-format", log_format] if log_format == "json" else []
    server = server_processes.start(data, *args)
    ids, pilot_id = _exercise(server.url, tokens)
    server.stop()
    log = server.log()

    for token in tokens.values():
        secret = token.split("_", 2)[2]
        assert secret not in log
    assert "S3cr3t" not in log

    if log_format == "human":
        # As before: cloudpilot's lines in the basic format, uvicorn's own, and no line per request.
        assert re.search(rf"^.* INFO cloudpilot\.pilots: pilot {pilot_id} registered", log, re.MULTILINE)
        ours = [line for line in log.splitlines() if " cloudpilot." in line]
        assert ours and all(HUMAN_LINE.match(line) for line in ours)
        assert "cloudpilot.access" not in log
        return

    lines = [json.loads(line) for line in log.splitlines()]  # every line is one JSON object
    for line in lines:
        assert {"time", "level", "logger", "message"} <= line.keys()
        assert datetime.fromisoformat(line["time"]).tzinfo is not None
    assert any(line["logger"].startswith("uvicorn") for line in lines)  # the web server's own lines too
    (registered,) = [line for line in lines if line.get("pilot_id") == pilot_id]
    assert registered["vo"] == "atlas" and "registered" in registered["message"]
    assert registered.get("request_id")
    assert any(line.get("job_id") == ids[0] and line["logger"] == "cloudpilot.jobs" for line in lines)
    access = [line for line in lines if line["logger"] == "cloudpilot.access"]
    assert access and all(line.get("request_id") for line in access)
    refused = [line for line in access if line["status"] == 401]
    assert len(refused) == 2 and {line["route"] for line in refused} == {"/api/v1/jobs"}
    assert any(line["request_id"] == "trace-me-42" and line["path"] == "/api/v1/health" for line in access)
