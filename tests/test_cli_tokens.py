"""`cloudpilot token create|list|revoke` against a real server and a real data directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

from cloudpilot.cli.main import app
from cloudpilot.domain.auth import Role
from tests.helpers.server import ServerFactory

runner = CliRunner()


def cli(url: str, token: str, *args: str) -> Any:
    return runner.invoke(app, list(args), env={"CLOUDPILOT_URL": url, "CLOUDPILOT_TOKEN": token, "COLUMNS": "250"})


def token_create(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloudpilot.cli.main", "token", "create", "--data-dir", str(data_dir), *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_admins_list_tokens_without_secrets_and_revoke_them(make_server: ServerFactory) -> None:
    server = make_server()
    admin = server.token(Role.ADMIN, "root")
    alice = server.token(Role.USER, "alice", vo="lhcb")
    site = server.token(Role.SITE, "site-a-admin", site="siteA")

    listed = cli(server.url, admin, "token", "list", "--json")
    assert listed.exit_code == 0, listed.output
    tokens = json.loads(listed.stdout)
    assert [(t["role"], t["name"], t["vo"], t["site"]) for t in tokens] == [
        ("admin", "root", None, None), ("user", "alice", "lhcb", None), ("site", "site-a-admin", None, "siteA"),
    ]  # fmt: skip
    assert {"id", "created_at", "expires_at", "revoked_at", "vm_id"} <= set(tokens[0])
    table = cli(server.url, admin, "token", "list")
    for secret in (admin, alice, site):  # neither in the table nor in the JSON
        assert secret.split("_", 2)[2] not in table.output + listed.output  # the secret may hold "_"
    alice_id = alice.split("_")[1]
    assert alice_id in table.output and "alice" in table.output and "lhcb" in table.output

    assert cli(server.url, alice, "jobs").exit_code == 0
    revoked = cli(server.url, admin, "token", "revoke", alice_id)
    assert revoked.exit_code == 0 and f"token {alice_id} revoked" in revoked.output
    refused = cli(server.url, alice, "jobs")
    assert refused.exit_code == 1 and "revoked" in refused.output

    active = json.loads(cli(server.url, admin, "token", "list", "--json").stdout)
    assert "alice" not in [t["name"] for t in active]
    everything = json.loads(cli(server.url, admin, "token", "list", "--all", "--json").stdout)
    (gone,) = [t for t in everything if t["name"] == "alice"]
    assert gone["revoked_at"] is not None
    sites = json.loads(cli(server.url, admin, "token", "list", "--role", "site", "--json").stdout)
    assert [t["name"] for t in sites] == ["site-a-admin"]

    again = cli(server.url, admin, "token", "revoke", alice_id)
    assert again.exit_code == 1 and f"no active token {alice_id}" in again.output
    not_admin = cli(server.url, site, "token", "list")
    assert not_admin.exit_code == 1 and "needs an admin token" in not_admin.output
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {site}"}) as http:
        assert http.get("/api/v1/tokens").status_code == 403


def test_token_create_refuses_a_data_dir_without_a_database(tmp_path: Path) -> None:
    data = tmp_path / "data"
    typo = token_create(data, "--role", "admin")
    assert typo.returncode == 2 and typo.stdout == ""
    expected = f"error: {data} holds no cloudpilot database: check --data-dir, or pass --init to create one"
    assert typo.stderr.strip() == expected
    assert not (data / "cloudpilot.db").exists()

    first = token_create(data, "--role", "admin", "--init")
    assert first.returncode == 0 and first.stdout.startswith("cp_"), first.stderr
    second = token_create(data, "--role", "user", "--vo", "lhcb", "--name", "alice")
    assert second.returncode == 0 and second.stdout.startswith("cp_"), second.stderr
    bad = token_create(data, "--role", "user")
    assert bad.returncode == 2 and bad.stderr.strip() == "error: a user token needs a VO (--vo)"
