"""Many jobs at once, against a real server on SQLite and PostgreSQL: `jobs --name --limit`, `kill ID...`,
`kill --state --name` with its confirmation, and `resubmit ID...` (the new job runs with the original's input
files, through a real pilot)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from cloudpilot.cli.main import app
from cloudpilot.client import CloudpilotClient
from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import Role
from tests.helpers.pilots import PilotProcesses, wait_final
from tests.helpers.server import RunningServer, ServerFactory

runner = CliRunner()


def cli(server: RunningServer, token: str, *args: str, stdin: str | None = None) -> Any:
    env = {"CLOUDPILOT_URL": server.url, "CLOUDPILOT_TOKEN": token, "COLUMNS": "250"}
    return runner.invoke(app, list(args), env=env, input=stdin)


@pytest.fixture
def server(make_server: ServerFactory, db_url: str) -> RunningServer:
    return make_server(ServerConfig(database_url=db_url))


def submit(server: RunningServer, token: str, *names: str) -> list[int]:
    with CloudpilotClient(server.url, token) as client:
        return client.submit([{"name": n, "executable": "true"} for n in names])


def states(server: RunningServer, token: str) -> dict[str, str]:
    listed = cli(server, token, "jobs", "--json")
    assert listed.exit_code == 0, listed.output
    return {j["name"]: j["state"] for j in json.loads(listed.stdout)}


def test_jobs_filters_by_name_glob_and_limits(server: RunningServer) -> None:
    alice = server.token(Role.USER, "alice", vo="lhcb")
    submit(server, alice, "mc-1", "MC-2", "mc-10", "mc_x", "mc%y", "a_b", "axb", "other")

    def names(*args: str) -> list[str]:
        result = cli(server, alice, "jobs", "--json", *args)
        assert result.exit_code == 0, result.output
        return [j["name"] for j in json.loads(result.stdout)]

    assert names("--name", "mc-*") == ["mc-1", "MC-2", "mc-10"]  # a prefix, whatever the case
    assert names("--name", "mc-?") == ["mc-1", "MC-2"]
    assert names("--name", "a_b") == ["a_b"]  # no wildcard: the exact name, "_" is no SQL wildcard
    assert names("--name", "a?b") == ["a_b", "axb"]
    assert names("--name", "*%*") == ["mc%y"]
    assert names("--name", "nothing*") == []
    assert names("--limit", "3") == ["mc-1", "MC-2", "mc-10"]  # the oldest three
    assert names("--name", "mc*", "--limit", "2", "--state", "waiting") == ["mc-1", "MC-2"]
    table = cli(server, alice, "jobs", "--name", "other")
    assert "1 jobs" in table.output and "other" in table.output
    bad = cli(server, alice, "jobs", "--limit", "0")
    assert bad.exit_code == 2 and "--limit" in bad.output


def test_kill_several_ids_and_by_state_and_name_with_a_confirmation(server: RunningServer) -> None:
    alice = server.token(Role.USER, "alice", vo="lhcb")
    bob = server.token(Role.USER, "bob", vo="lhcb")
    a1, a2, _, _, keep = submit(server, alice, "a-1", "a-2", "b-1", "b-2", "keep")
    (bobs,) = submit(server, bob, "b-bob")

    declined = cli(server, alice, "kill", str(a1), str(a2), stdin="n\n")
    assert declined.exit_code == 1 and f"kill 2 jobs ({a1}, {a2})?" in declined.output
    assert "nothing killed" in declined.output
    assert set(states(server, alice).values()) == {"waiting"}

    confirmed = cli(server, alice, "kill", str(a1), str(a2), stdin="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    assert f"job {a1} is killed" in confirmed.output and f"job {a2} is killed" in confirmed.output

    by_filter = cli(server, alice, "kill", "--state", "waiting", "--name", "b-*", "--yes")
    assert by_filter.exit_code == 0, by_filter.output
    assert states(server, alice) == {"a-1": "killed", "a-2": "killed", "b-1": "killed", "b-2": "killed",
                                     "keep": "waiting"}  # fmt: skip
    assert states(server, bob) == {"b-bob": "waiting"}  # a filter only ever reaches the caller's own jobs
    assert cli(server, alice, "kill", "--name", "b-*", "--yes").output.strip() == "no job to kill"

    # One refusal (already final, another user's) does not stop the others; the exit status tells.
    mixed = cli(server, alice, "kill", str(a1), str(bobs), str(keep), "--yes")
    assert mixed.exit_code == 1
    assert f"error: job {a1}: job {a1} is already killed" in mixed.output
    assert f"error: job {bobs}: job {bobs} belongs to another user" in mixed.output
    assert f"job {keep} is killed" in mixed.output
    assert states(server, bob) == {"b-bob": "waiting"}

    usage = cli(server, alice, "kill")
    assert usage.exit_code == 2 and "IDs, --state or --name" in usage.output
    both = cli(server, alice, "kill", "1", "--state", "waiting")
    assert both.exit_code == 2 and "not both" in both.output


def test_resubmit_makes_new_jobs_that_run_with_the_originals_input_files(
    server: RunningServer, tmp_path: Path, pilots: PilotProcesses
) -> None:
    alice = server.token(Role.USER, "alice", vo="lhcb")
    bob = server.token(Role.USER, "bob", vo="lhcb")
    admin = server.token(Role.ADMIN, "root")
    (tmp_path / "in.txt").write_text("from the input sandbox\n")
    job = {"name": "cat", "executable": "/bin/sh", "arguments": ["-c", "cat in.txt > out.txt"],
           "input_files": ["in.txt"], "output_files": ["out.txt"]}  # fmt: skip
    with CloudpilotClient(server.url, alice) as client:
        (first,) = client.submit(job, base_dir=tmp_path)
    (tmp_path / "in.txt").unlink()  # resubmitting needs no local file: the server kept the sandbox

    not_final = cli(server, alice, "resubmit", str(first))
    assert not_final.exit_code == 1
    assert f"only final jobs can be resubmitted; not final yet: {first} (waiting)" in not_final.output
    assert cli(server, alice, "kill", str(first)).exit_code == 0

    refused = cli(server, bob, "resubmit", str(first))
    assert refused.exit_code == 1 and "belongs to another user" in refused.output
    again = cli(server, alice, "resubmit", str(first), str(first))
    assert again.exit_code == 0, again.output
    (second,) = [int(x) for x in again.stdout.split()]
    by_admin = cli(server, admin, "resubmit", str(first))
    assert by_admin.exit_code == 0, by_admin.output
    (third,) = [int(x) for x in by_admin.stdout.split()]

    with CloudpilotClient(server.url, alice) as client:
        original, copy, admins = client.job(first), client.job(second), client.job(third)
    assert copy["spec"] == original["spec"] and admins["spec"] == original["spec"]
    assert copy["spec"]["input_sandbox"].startswith("sha256:")
    assert (copy["state"], copy["owner"], admins["owner"]) == ("waiting", "alice", "alice")
    assert cli(server, alice, "kill", str(third)).exit_code == 0

    pilots.start(server.url, server.token(Role.PILOT, "p", vo="lhcb"), idle_timeout=5)
    http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {alice}"}, timeout=30)
    with http:
        done = wait_final(http, [second])
    assert done[second]["state"] == "done", done
    out = cli(server, alice, "output", str(second), "--dest", str(tmp_path / "out"))
    assert out.exit_code == 0, out.output
    assert (tmp_path / "out" / "out.txt").read_text() == "from the input sandbox\n"
