"""Transport, end to end with real processes: a TLS server, VMs and pilots that verify it, a pinned pilot.pyz,
and a server that will not hand VMs of a real cloud a loopback URL (docs/configuration.md, TLS)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import zipapp
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from cloudpilot.clouds.base import InstanceState, LaunchRequest
from cloudpilot.clouds.local import LocalCloudDriver
from cloudpilot.context import PilotContext, build_user_data
from cloudpilot.context.pilot_zipapp import build_pilot_zipapp
from cloudpilot.domain.auth import Role
from cloudpilot.domain.vms import Flavor
from tests.helpers.clouds import wait_for
from tests.helpers.server import RunningServer, own_user_clouds, this_user
from tests.helpers.server_process import CLI, ServerProcesses, store_token
from tests.helpers.tls import PKI, make_pki

LOCAL = {"driver": "local", "flavors": {"f": {"cores": 1, "memory_mb": 1024}}, "max_vms": 1}
EC2 = {
    "driver": "libcloud",
    "provider": "ec2",
    "flavors": {"f": {"cores": 1, "memory_mb": 1024, "size": "t2.micro"}},
    "driver_args": {"key": "AKIAEXAMPLE", "secret": "not-used-here"},
    "images": {"*": "ami-0123456789abcdef0"},
}


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return make_pki(tmp_path / "pki")


def write_config(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def test_tls_server_boots_a_vm_whose_pilot_checks_the_download_and_runs_a_job(
    tmp_path: Path, server_processes: ServerProcesses, pki: PKI
) -> None:
    data_dir = tmp_path / "data"
    token = store_token(data_dir, Role.USER, "alice", vo="lhcb")
    config = write_config(
        tmp_path / "server.yaml",
        {
            "clouds": own_user_clouds({"local": LOCAL}),
            "policy": {"min_work_seconds_per_core": 0},
            "provisioner": {"interval_seconds": 0.5, "pilot_idle_timeout_seconds": 2, "ca_file": str(pki.ca)},
        },
    )
    server = server_processes.start(data_dir, "--config", str(config), tls=pki)
    assert server.url.startswith("https://")
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{server.url}/api/v1/health")  # the test's own client does not know the CA either
    user = httpx.Client(base_url=server.url, verify=pki.context(), headers={"Authorization": f"Bearer {token}"})
    body = {"executable": "/bin/echo", "arguments": ["over TLS"], "requirements": {"wall_seconds": 60}}
    [job_id] = user.post("/api/v1/jobs", json=[body]).json()["ids"]

    state = wait_for(
        lambda: (s := user.get(f"/api/v1/jobs/{job_id}").json()["state"]) in ("done", "failed") and s,
        timeout=90,
        what="the job run by a local VM's pilot over TLS",
    )

    assert state == "done"
    consoles = "".join(p.read_text(errors="replace") for p in (data_dir / "clouds").rglob("*.log"))
    assert "refusing" not in consoles and "not trusted" not in consoles
    assert "BEGIN CERTIFICATE" not in server.log()


def test_a_pilot_without_the_ca_refuses_the_server_at_once(
    tmp_path: Path, server_processes: ServerProcesses, pki: PKI
) -> None:
    data_dir = tmp_path / "data"
    pilot_token = store_token(data_dir, Role.PILOT, "pilots", vo="lhcb")
    server = server_processes.start(data_dir, tls=pki)
    pilot = [sys.executable, "-m", "cloudpilot.pilot", "--server", server.url, "--token", pilot_token]
    common = ["--workdir", str(tmp_path / "w"), "--idle-timeout", "0", "--payload-user", this_user()]

    started = time.monotonic()
    refused = subprocess.run([*pilot, *common], capture_output=True, text=True, timeout=60)

    assert refused.returncode != 0
    assert time.monotonic() - started < 20  # no retrying for an hour: a certificate does not fix itself
    assert "TLS certificate is not trusted" in refused.stderr
    assert "certificate verify failed: unable to get local issuer certificate" in refused.stderr
    assert "--ca-file" in refused.stderr
    assert pilot_token not in refused.stderr

    trusted = subprocess.run([*pilot, *common, "--ca-file", str(pki.ca)], capture_output=True, text=True, timeout=60)
    assert trusted.returncode == 0, trusted.stderr
    assert "registered as pilot" in trusted.stderr


class _Serve(BaseHTTPRequestHandler):
    content = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.content)))
        self.end_headers()
        self.wfile.write(self.content)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def impostor(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A server whose /pilot.pyz is another program: it would leave a marker file if it ever ran."""
    marker = tmp_path / "impostor-ran"
    source = tmp_path / "impostor"
    source.mkdir()
    (source / "__main__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    archive = tmp_path / "impostor.pyz"
    zipapp.create_archive(source, archive)
    handler = type("Impostor", (_Serve,), {"content": archive.read_bytes()})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", marker
    finally:
        httpd.shutdown()
        httpd.server_close()


def boot_local_vm(tmp_path: Path, ctx: PilotContext) -> str:
    """Boot one local VM from ``ctx``'s user-data; its console once it has stopped."""
    driver = LocalCloudDriver("local", tmp_path / "cloud", {"f": Flavor("f", 1, 1024)}, payload_user=this_user())
    request = LaunchRequest(vm_id=ctx.vm_id, vo=ctx.vo, flavor="f", user_data=build_user_data(ctx))
    instance = driver.create(request)
    wait_for(
        lambda: all(i.state is not InstanceState.RUNNING and i.state is not InstanceState.PENDING
                    for i in driver.list()),
        timeout=60,
        what="the VM to halt",
    )  # fmt: skip
    console = driver.console_path(instance.instance_id).read_text(errors="replace")
    driver.destroy(instance.instance_id)
    return console


def test_a_vm_refuses_a_pilot_zipapp_that_is_not_the_pinned_one(tmp_path: Path, impostor: tuple[str, Path]) -> None:
    url, marker = impostor
    ctx = PilotContext(url, "vm-tampered", "lhcb", "cp_0123abcd_secret", cores=1, idle_timeout_seconds=0)

    console = boot_local_vm(tmp_path, ctx)

    assert not marker.exists()  # the impostor never ran
    assert f"refusing to run {url}/pilot.pyz" in console
    assert f"the user-data pins {build_pilot_zipapp().sha256}" in console
    assert not list((tmp_path / "cloud").rglob("pilot.pyz"))


def test_a_vm_refuses_the_real_zipapp_when_the_user_data_pins_another(tmp_path: Path, server: RunningServer) -> None:
    token = server.token(Role.PILOT, vo="lhcb")
    ctx = PilotContext(server.url, "vm-pin", "lhcb", token, cores=1, idle_timeout_seconds=0, pilot_sha256="0" * 64)

    console = boot_local_vm(tmp_path, ctx)

    assert "the user-data pins " + "0" * 64 in console
    assert "registered as pilot" not in console
    # and with the digest of what the server serves, the same VM boots its pilot
    good = boot_local_vm(tmp_path, PilotContext(server.url, "vm-pin2", "lhcb", token, cores=1, idle_timeout_seconds=0))
    assert "registered as pilot" in good


def run_server(tmp_path: Path, config: dict, *args: str) -> subprocess.CompletedProcess[str]:
    """``cloudpilot server`` expected to stop at start: its exit status and output."""
    path = write_config(tmp_path / "server.yaml", config)
    cmd = [*CLI, "server", "--data-dir", str(tmp_path / "data"), "--config", str(path), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**os.environ, "NO_COLOR": "1"})


def test_a_real_cloud_with_a_loopback_server_url_stops_the_server_at_start(tmp_path: Path) -> None:
    implicit = run_server(tmp_path, {"clouds": {"aws": EC2, "here": LOCAL}}, "--port", "8999")
    assert implicit.returncode == 2
    assert "provisioner.server_url is not set, so http://127.0.0.1:8999" in implicit.stderr
    assert "cloud(s) aws cannot reach" in implicit.stderr  # the local cloud is fine
    assert "set provisioner.server_url" in implicit.stderr

    explicit = run_server(tmp_path, {"clouds": {"aws": EC2}, "provisioner": {"server_url": "https://localhost:8443"}})
    assert explicit.returncode == 2
    assert "provisioner.server_url is https://localhost:8443, a loopback address" in explicit.stderr

    unspecified = run_server(tmp_path, {"clouds": {"aws": EC2}}, "--host", "0.0.0.0")
    assert unspecified.returncode == 2 and "http://0.0.0.0:8080" in unspecified.stderr


def test_tls_files_that_do_not_fit_stop_the_server_naming_them(tmp_path: Path, pki: PKI) -> None:
    other = make_pki(tmp_path / "other")
    mismatched = run_server(tmp_path, {}, "--tls-cert", str(pki.cert), "--tls-key", str(other.key))
    assert mismatched.returncode == 2
    assert f"cannot serve TLS with --tls-cert {pki.cert} and --tls-key {other.key}" in mismatched.stderr
    alone = run_server(tmp_path, {}, "--tls-cert", str(pki.cert))
    assert alone.returncode == 2 and "--tls-cert and --tls-key go together" in alone.stderr
