"""Messages a person can act on: a wrong pilot token, a wrong server URL, a misspelt configuration key and an
unknown Libcloud provider or argument each get one line that names what is wrong (real server, real processes)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cloudpilot.cli.main import app
from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import Role
from tests.helpers.server import RunningServer, ServerFactory, free_port


def run_pilot(url: str, token: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloudpilot.pilot", "--server", url, "--token", token, "--cores", "1",
         "--idle-timeout", "5", "--give-up-seconds", "1", "--workdir", str(workdir)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture
def server(make_server: ServerFactory) -> RunningServer:
    return make_server()


def test_a_pilot_with_a_wrong_token_says_the_token_is_wrong(server: RunningServer, tmp_path: Path) -> None:
    done = run_pilot(server.url, "cp_0123456789abcdef_not-the-secret", tmp_path / "w")
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1  # not a ban, nothing to wait out: someone must give it a valid token
    assert "wrong pilot token" in last and "banned" not in last
    assert f"POST {server.url}/api/v1/pilots: 401" in last
    assert "not-the-secret" not in done.stderr
    assert (tmp_path / "w" / "shutdown_message").read_text().startswith("600 ")


def test_a_pilot_and_the_cli_name_the_url_they_tried(server: RunningServer, tmp_path: Path) -> None:
    token = server.token(Role.PILOT, "p", vo="lhcb")
    wrong_prefix = f"{server.url}/cloudpilot"
    done = run_pilot(wrong_prefix, token, tmp_path / "a")
    assert done.returncode == 1
    assert f"POST {wrong_prefix}/api/v1/pilots: 404 no_endpoint" in done.stderr.strip().splitlines()[-1]
    nobody = f"http://127.0.0.1:{free_port()}"
    done = run_pilot(nobody, token, tmp_path / "b")
    assert f"POST {nobody}/api/v1/pilots" in done.stderr.strip().splitlines()[-1]
    assert "unreachable" in done.stderr

    user = server.token(Role.USER, "alice", vo="lhcb")
    runner = CliRunner()
    for args in (["jobs"], ["job", "1"]):
        result = runner.invoke(app, args, env={"CLOUDPILOT_URL": wrong_prefix, "CLOUDPILOT_TOKEN": user})
        assert result.exit_code == 1
        assert f"{wrong_prefix}/api/v1/" in result.output and "is the server URL right?" in result.output
    result = runner.invoke(app, ["jobs"], env={"CLOUDPILOT_URL": nobody, "CLOUDPILOT_TOKEN": user})
    assert result.exit_code == 1 and f"cannot reach the server at {nobody}" in result.output


def server_with(config: str, tmp_path: Path) -> Any:
    """``cloudpilot server`` with this configuration; it must refuse it and leave at once."""
    path = tmp_path / "cloudpilot.yaml"
    path.write_text(config)
    return subprocess.run(
        [sys.executable, "-m", "cloudpilot.cli.main", "server", "--data-dir", str(tmp_path / "data"),
         "--config", str(path), "--port", str(free_port())],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


# VMs of a libcloud cloud need a server URL they can reach (never contacted: these servers stop at start).
REACHABLE = "provisioner: {server_url: 'http://cloudpilot.example.org:8080'}\n"
FLAVOR = "flavors: {small: {cores: 2, memory_mb: 4096}}"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            "clouds:\n  a: {driver: local, flavours: {small: {cores: 2, memory_mb: 4096}}}\n",
            "clouds.a.flavours: unknown key (did you mean flavors?); clouds.a.flavors: Field required",
        ),
        ("policy: {idle_secs: 60}\n", "policy.idle_secs: unknown key"),
        (f"clouds:\n  a: {{driver: local, {FLAVOR}, max_vm: 3}}\n", "clouds.a.max_vm: unknown key"),
        (
            f"{REACHABLE}clouds:\n  os: {{driver: libcloud, provider: openstak, {FLAVOR}}}\n",
            "cloud os: Libcloud has no usable compute provider 'openstak'",
        ),
        (
            f"{REACHABLE}clouds:\n  os: {{driver: libcloud, provider: openstack, driver_args: {{key: k, secret: s}},\n"
            f"       driver_kwargs: {{ex_force_auth_url: 'http://127.0.0.1:9', ex_tenant: x}}, {FLAVOR}}}\n",
            "cloud os: driver arguments ['ex_tenant'] are not accepted by provider 'openstack'",
        ),
        (
            f"{REACHABLE}clouds:\n  os: {{driver: libcloud, provider: openstack, options: {{netwrk: x}}, {FLAVOR}}}\n",
            "cloud os: options ['netwrk'] are not accepted for provider 'openstack'",
        ),
    ],
)
def test_configuration_mistakes_are_one_line_naming_the_key(config: str, expected: str, tmp_path: Path) -> None:
    done = server_with(config, tmp_path)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and expected in line


def test_times_in_messages_are_iso_8601(make_server: ServerFactory) -> None:
    cloud = {"driver": "local", "site": "siteA", "grace_secs": 600, "flavors": {"s": {"cores": 1, "memory_mb": 512}}}
    server = make_server(ServerConfig.model_validate({"clouds": {"a1": cloud}}))
    site = server.token(Role.SITE, "site-admin", site="siteA")
    env = {"CLOUDPILOT_URL": server.url, "CLOUDPILOT_TOKEN": site}
    runner = CliRunner()
    for deadline, said in (("1700000000", "the deadline 2023-11-14T22:13:20Z is in the past (now is 20"),
                           ("+60", "of notice: not before 20")):  # fmt: skip
        result = runner.invoke(app, ["site", "drain", "--cloud", "a1", "--deadline", deadline], env=env)
        assert result.exit_code == 1 and said in result.output, result.output
        assert not re.search(r"\b1[0-9]{9}\b", result.output.replace("1700000000", ""))  # no epoch seconds
        assert re.search(r"20\d\d-\d\d-\d\dT\d\d:\d\d:\d\dZ", result.output)
