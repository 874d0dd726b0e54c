"""``/api/v1/accounting`` through a real server, and ``cloudpilot accounting report|export`` on top of it: who sees
which records, clear 400s, a table, a plot and an APEL file that reads back into the server's records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cloudpilot.cli.main import app
from cloudpilot.client import CloudpilotClient, Forbidden, InvalidRequest
from cloudpilot.domain.auth import Role
from cloudpilot.services.apel import parse_apel, to_apel
from tests.helpers.server import RunningServer
from tests.test_accounting import HOUR, T0, WORKLOAD, run_workload

runner = CliRunner()
ALL_VMS = {"vm-a", "vm-b", "vm-c"}


@pytest.fixture
def filled(server: RunningServer) -> RunningServer:
    run_workload(server.services.db)
    return server


def client(server: RunningServer, role: Role, **scope: str) -> CloudpilotClient:
    return CloudpilotClient(server.url, server.token(role, **scope))


def cli(server: RunningServer, token: str, *args: str) -> Any:
    env = {"CLOUDPILOT_URL": server.url, "CLOUDPILOT_TOKEN": token, "COLUMNS": "250"}
    return runner.invoke(app, ["accounting", *args], env=env)


def test_each_caller_sees_only_its_scope(filled: RunningServer) -> None:
    with client(filled, Role.ADMIN, name="root") as admin:
        assert {r["vm_id"] for r in admin.accounting_vms()} == ALL_VMS
        assert {r["vm_id"] for r in admin.accounting_vms(site="S2")} == {"vm-b"}
        assert len(admin.accounting_jobs()) == 4
        assert {r["vm_id"] for r in admin.accounting_vms(since=T0 + 1000, until=T0 + 9000)} == {"vm-a", "vm-c"}
        assert {r["vm_id"] for r in admin.accounting_vms(since="2027-01-15T08:16:41Z")} == ALL_VMS - {"vm-c"}
    with client(filled, Role.SITE, name="s1-admin", site="S1") as site_admin:
        assert {r["vm_id"] for r in site_admin.accounting_vms()} == {"vm-a", "vm-c"}
        assert {r["site"] for r in site_admin.accounting_jobs()} == {"S1"}
        assert {row["key"]["site"] for row in site_admin.accounting_report("site")["rows"]} == {"S1"}
        assert {r.site_name for r in parse_apel(site_admin.accounting_apel())} == {"S1"}
        with pytest.raises(Forbidden, match="S1"):
            site_admin.accounting_vms(site="S2")
    with client(filled, Role.USER, name="alice", vo="lhcb") as user:
        assert {r["vm_id"] for r in user.accounting_vms()} == {"vm-a"}
        assert {r["vo"] for r in user.accounting_jobs()} == {"lhcb"} and len(user.accounting_jobs()) == 3
        report = user.accounting_report("vo,site")
        assert [row["key"] for row in report["rows"]] == [{"vo": "lhcb", "site": "S1"}, {"vo": "lhcb", "site": None}]
        assert report["total"]["vms"]["core_hours"] == pytest.approx(8.0)
        assert [r.vm_uuid for r in parse_apel(user.accounting_apel())] == ["vm-a"]
        with pytest.raises(Forbidden, match="lhcb"):
            user.accounting_jobs(vo="atlas")
    with client(filled, Role.PILOT, name="pilot", vo="lhcb") as pilot:
        for call in (pilot.accounting_vms, pilot.accounting_jobs, pilot.accounting_report, pilot.accounting_apel):
            with pytest.raises(Forbidden):
                call()


def test_report_and_apel_over_http(filled: RunningServer) -> None:
    http = filled.client(filled.token(Role.ADMIN, "root"))
    answer = http.get("/api/v1/accounting/report", params={"by": "vo,site,cloud"})
    assert answer.status_code == 200
    body = answer.json()
    assert body["by"] == ["vo", "site", "cloud"]
    expected = sum(r.wall * r.cores for r in WORKLOAD) / HOUR
    assert body["total"]["vms"]["core_hours"] == pytest.approx(expected)
    assert sum(row["vms"]["core_hours"] for row in body["rows"]) == pytest.approx(expected)
    assert sum(sum(bars) for bars in body["series"]["core_hours"].values()) == pytest.approx(expected)
    answer = http.get("/api/v1/accounting/apel")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    stored = filled.services.accounting.records.vm_records()
    assert parse_apel(answer.text) == [to_apel(r) for r in stored]


@pytest.mark.parametrize(
    ("path", "params", "field", "words"),
    [
        ("report", {"by": "vo,flavor"}, "by", "'flavor'"),
        ("report", {"since": "last week"}, "since", "not a date"),
        ("vms", {"until": "2027-13-01"}, "until", "not a date"),
        ("apel", {"since": str(T0), "until": str(T0 - 1)}, "until", "later than since"),
    ],
)
def test_bad_queries_are_400_naming_the_parameter(
    filled: RunningServer, path: str, params: dict[str, str], field: str, words: str
) -> None:
    http = filled.client(filled.token(Role.ADMIN, "root"))
    answer = http.get(f"/api/v1/accounting/{path}", params=params)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["field"]) == ("bad_request", field)
    assert words in error["message"] and error["message"].startswith(f"{field}: ")
    with client(filled, Role.ADMIN, name="root") as admin, pytest.raises(InvalidRequest) as caught:
        admin.accounting_report(by="cores")
    assert caught.value.field == "by"


def test_cli_report_prints_a_table_and_draws_the_plot(filled: RunningServer, tmp_path: Path) -> None:
    admin = filled.token(Role.ADMIN, "root")
    plot = tmp_path / "usage.png"
    result = cli(filled, admin, "report", "--by", "vo,site", "--plot", str(plot))
    assert result.exit_code == 0, result.output
    for text in ("lhcb", "atlas", "S1", "S2", "total", "core-h", "8.00", f"plot written to {plot}"):
        assert text in result.stdout, text
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and plot.stat().st_size > 5000

    result = cli(
        filled, admin, "report", "--by", "cloud", "--since", str(T0 + 1000), "--until", str(T0 + 9000), "--json"
    )
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    # vm-b ended after the window but its job (T0+8000) in it; the failed job of vm-a ended before it.
    assert [(row["key"], row["vms"]["vms"], row["jobs"]["jobs"]) for row in found["rows"]] == [
        ({"cloud": "c1"}, 2, 1),
        ({"cloud": "c2"}, 0, 1),
    ]
    assert found["since"] == T0 + 1000 and found["until"] == T0 + 9000

    empty = tmp_path / "empty.png"
    result = cli(filled, admin, "report", "--since", "2001-01-01", "--until", "2001-02-01", "--plot", str(empty))
    assert result.exit_code == 0 and empty.read_bytes().startswith(b"\x89PNG")


def test_cli_export_writes_apel_that_reads_back(filled: RunningServer, tmp_path: Path) -> None:
    admin = filled.token(Role.ADMIN, "root")
    expected = [to_apel(r) for r in filled.services.accounting.records.vm_records()]
    result = cli(filled, admin, "export", "--format", "apel")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("APEL-cloud-message: v0.4\n")
    assert parse_apel(result.stdout) == expected
    out = tmp_path / "apel.txt"
    result = cli(filled, admin, "export", "--format", "apel", "--output", str(out), "--since", str(T0 + 1001))
    assert result.exit_code == 0, result.output
    assert parse_apel(out.read_text()) == [r for r in expected if r.vm_uuid != "vm-c"]
    assert "2 records written" in result.stderr and result.stdout == ""


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["report", "--by", "owner"], "--by"),
        (["report", "--since", "someday"], "not a date"),
        (["report", "--since", "2027-02-01", "--until", "2027-01-01"], "later than --since"),
        (["export", "--format", "csv"], "apel"),
    ],
)
def test_cli_usage_errors_exit_2(filled: RunningServer, args: list[str], words: str) -> None:
    result = cli(filled, filled.token(Role.ADMIN, "root"), *args)
    assert result.exit_code == 2 and result.stderr.startswith("error: ") and words in result.stderr


def test_cli_refuses_a_pilot(filled: RunningServer) -> None:
    result = cli(filled, filled.token(Role.PILOT, "pilot", vo="lhcb"), "report")
    assert result.exit_code == 1 and "error: " in result.stderr
