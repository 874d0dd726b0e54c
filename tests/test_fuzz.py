"""Fuzzed in CI: Schemathesis against a live test server's OpenAPI with each role's token. No answer may be a
5xx or break the documented schema; the whole run stays within 3 minutes (15 s per role and database)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import Role
from tests.helpers.server import ServerFactory

pytest.importorskip("schemathesis")

SECONDS_PER_ROLE = 15
ROLES = [(Role.USER, {"vo": "lhcb"}), (Role.ADMIN, {}), (Role.SITE, {"site": "cern"}), (Role.PILOT, {"vo": "lhcb"})]


def test_no_server_error_and_no_schema_break_for_any_role(
    make_server: ServerFactory, db_url: str, tmp_path: Path
) -> None:
    server = make_server(ServerConfig.model_validate({"database_url": db_url, "sites": {"cern": {}}}))
    totals = [0, 0]
    for role, scope in ROLES:
        token = server.token(role, f"fuzz-{role.value}", **scope)
        cmd = [
            sys.executable, "-m", "schemathesis.cli", "run", f"{server.url}/openapi.json",
            "--header", f"Authorization: Bearer {token}",
            "--checks", "not_a_server_error,response_schema_conformance",
            "--phases", "examples,coverage,fuzzing",
            "--max-examples", "10", "--max-time", str(SECONDS_PER_ROLE), "--workers", "1",
            "--generation-database", "none", "--no-color", "--report", "junit",
            "--report-dir", str(tmp_path / role.value),
        ]  # fmt: skip
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=SECONDS_PER_ROLE + 60, cwd=tmp_path)
        assert run.returncode == 0, f"{role.value}: {run.stdout[-6000:]}\n{run.stderr[-2000:]}"
        counts = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
        assert counts is not None, run.stdout[-3000:]
        totals[0] += int(counts[1])
        totals[1] += int(counts[2])
    assert totals[0] == totals[1] > 0
    print(f"FIGURE schemathesis_cases={totals[0]} cases, failures={totals[0] - totals[1]}")
