"""``GET /pilot.pyz`` serves a stdlib-only pilot, and the user-data's runcmd fetches and runs it."""

from __future__ import annotations

import hashlib
import io
import subprocess
import zipfile
from pathlib import Path

import pytest

import cloudpilot.pilot
from cloudpilot.context import PilotContext, build_user_data, parse_cloud_config
from cloudpilot.domain.auth import Role
from tests.helpers.server import RunningServer

SYSTEM_PYTHON = Path("/usr/bin/python3")  # outside the venv: it has no cloudpilot and no third-party packages


@pytest.fixture
def system_python() -> Path:
    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"{SYSTEM_PYTHON} is missing")
    return SYSTEM_PYTHON


def test_pilot_zipapp_is_served_without_a_token_with_a_stable_etag(server: RunningServer) -> None:
    client = server.client(None)
    first = client.get("/pilot.pyz")
    second = client.get("/pilot.pyz")
    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == "application/zip"
    assert first.headers["etag"] == second.headers["etag"] == f'"{hashlib.sha256(first.content).hexdigest()}"'
    assert first.content == second.content
    assert client.get("/pilot.pyz", headers={"If-None-Match": first.headers["etag"]}).status_code == 304

    body = first.content
    assert body.startswith(b"#!/usr/bin/env python3\n")
    names = {n for n in zipfile.ZipFile(io.BytesIO(body)).namelist() if not n.endswith("/")}
    pilot_modules = {f"cloudpilot/pilot/{p.name}" for p in Path(cloudpilot.pilot.__file__).parent.glob("*.py")}
    assert names == {
        "__main__.py",
        "cloudpilot/__init__.py",
        "cloudpilot/domain/__init__.py",
        "cloudpilot/domain/shutdown.py",
        *pilot_modules,
    }


def test_pilot_zipapp_runs_on_a_bare_python(server: RunningServer, system_python: Path, tmp_path: Path) -> None:
    pyz = tmp_path / "pilot.pyz"
    pyz.write_bytes(server.client(None).get("/pilot.pyz").content)
    # -I: no site-packages, no user site, no PYTHONPATH: only the standard library and the zipapp.
    result = subprocess.run([str(system_python), "-I", str(pyz), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage: cloudpilot pilot" in result.stdout
    assert "--token-file" in result.stdout


def test_user_data_boots_a_pilot_under_a_vm_root(server: RunningServer, system_python: Path, tmp_path: Path) -> None:
    """What the local driver does: write_files under the VM's root, then runcmd with CLOUDPILOT_VM_ROOT set."""
    token = server.token(Role.PILOT, vo="lhcb")
    ctx = PilotContext(
        server.url, "vm-local-1", "lhcb", token, cores=1, memory_mb=512, site="local", cloud="local",
        idle_timeout_seconds=0, machinefeatures_url="/etc/machinefeatures",
    )  # fmt: skip
    config = parse_cloud_config(build_user_data(ctx))
    root = tmp_path / "vm"
    for entry in config["write_files"]:
        path = root / entry["path"].lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(entry["content"])
        path.chmod(int(entry["permissions"], 8))
    env = {"PATH": f"{system_python.parent}:/bin", "CLOUDPILOT_VM_ROOT": str(root), "HOME": str(tmp_path)}
    output = ""
    for command in config["runcmd"]:
        result = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True, timeout=120)
        output += result.stdout + result.stderr
        assert result.returncode == 0, output
    assert (root / "opt/cloudpilot/pilot.pyz").is_file()
    assert (root / "var/lib/cloudpilot").is_dir()
    assert not (root / "etc/cloudpilot/pilot.token").exists()  # a one-time token: the pilot deleted it once read
    assert "no work" in output  # the pilot registered, found nothing to do, and left
    assert token not in output
