"""``cloudpilot site drain|status|cancel`` and ``token create --role site`` against a real server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from typer.testing import CliRunner

from cloudpilot.cli.main import app
from cloudpilot.cli.sites import parse_deadline
from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import Role
from tests.helpers.server import ServerFactory

runner = CliRunner()


def config() -> ServerConfig:
    return ServerConfig.model_validate(
        {
            "sites": {"siteA": {"pledges": {"lhcb": 4, "alice": {"cores": 2, "core_hours": 100}}}},
            "clouds": {
                "a1": {"driver": "local", "site": "siteA", "grace_secs": 5, "max_vms": 3,
                       "flavors": {"small": {"cores": 2, "memory_mb": 4096}}},
                "b1": {"driver": "local", "site": "siteB", "flavors": {"small": {"cores": 2, "memory_mb": 4096}}},
            },
        }
    )  # fmt: skip


def cli(args: list[str], url: str, token: str) -> Any:
    return runner.invoke(app, args, env={"CLOUDPILOT_URL": url, "CLOUDPILOT_TOKEN": token, "COLUMNS": "250"})


def test_deadlines_are_read_as_offsets_unix_seconds_or_iso_times() -> None:
    assert parse_deadline("+90", 1000.0) == 1090.0
    assert parse_deadline("1790000000", 0) == 1790000000.0
    assert parse_deadline("2026-12-01T18:00:00Z", 0) == parse_deadline("2026-12-01T18:00:00", 0)
    assert parse_deadline("2026-12-01T19:00:00+01:00", 0) == parse_deadline("2026-12-01T18:00:00", 0)


def test_site_drain_status_and_cancel(make_server: ServerFactory) -> None:
    server = make_server(config())
    token = server.token(Role.SITE, "ops", site="siteA")

    drained = cli(["site", "drain", "--cloud", "a1", "--deadline", "+3600", "--reason", "kernel update"],
                  server.url, token)  # fmt: skip
    assert drained.exit_code == 0, drained.output
    assert "scheduled by" in drained.output and "0 VM(s) affected" in drained.output

    shown = cli(["site", "status", "--json"], server.url, token)
    assert shown.exit_code == 0, shown.output
    (site,) = json.loads(shown.output)
    assert site["site"] == "siteA"
    assert site["pledges"]["lhcb"]["cores"] == 4 and site["pledges"]["alice"]["core_hours"] == 100
    (shutdown,) = site["shutdowns"]
    assert shutdown["cloud"] == "a1" and shutdown["reason"] == "kernel update"
    assert abs(shutdown["deadline"] - (time.time() + 3600)) < 60

    table = cli(["site", "status"], server.url, token)
    assert "pending shutdowns" in table.output and "kernel update" in table.output and "lhcb" in table.output

    assert cli(["site", "cancel", str(shutdown["id"])], server.url, token).exit_code == 0
    again = json.loads(cli(["site", "status", "--json"], server.url, token).output)
    assert again[0]["shutdowns"] == []

    too_soon = cli(["site", "drain", "--cloud", "a1", "--deadline", "+1"], server.url, token)
    assert too_soon.exit_code != 0 and "grace_secs" in too_soon.output
    other = cli(["site", "drain", "--cloud", "b1"], server.url, token)
    assert other.exit_code != 0 and "administers site siteA, not siteB" in other.output


def test_token_create_makes_a_site_admin_token(tmp_path) -> None:  # type: ignore[no-untyped-def]
    made = subprocess.run(
        [sys.executable, "-m", "cloudpilot.cli.main", "token", "create", "--data-dir", str(tmp_path),
         "--role", "site", "--site", "siteA", "--init"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert made.stdout.startswith("cp_")
