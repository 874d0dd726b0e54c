"""Cloud credentials out of the YAML, and the VM token out of every URL, with real processes and protocols:
``cloudpilot server`` with Libcloud's real drivers against moto's EC2 server (its own process, whose access log
is read) and the fake OpenStack (Keystone v3 + Nova) configured from clouds.yaml."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cloudpilot.clouds.base import TAG_VM_ID
from cloudpilot.config import load_config
from cloudpilot.config.clouds import LibcloudCloudConfig
from cloudpilot.config.reachability import unreachable_server_url
from cloudpilot.config.secrets import is_reference
from cloudpilot.context import TOKEN_FILE, parse_cloud_config
from cloudpilot.context.pilot_zipapp import build_pilot_zipapp
from cloudpilot.domain.auth import Role
from tests.helpers.clouds import wait_for
from tests.helpers.fake_openstack import FakeOpenStack
from tests.helpers.server import free_port
from tests.helpers.server_process import CLI, ServerProcesses, store_token

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")

ACCESS_KEY = "AKIAFROMENVIRONMENT"
SECRET_KEY = "secret-key-from-a-file"
REGION = "us-east-1"
FLAVORS = {"f": {"cores": 1, "memory_mb": 1024}}
JOB = {"executable": "/bin/true", "requirements": {"wall_seconds": 60}}
QUICK = {"interval_seconds": 0.5}
POLICY = {"min_work_seconds_per_core": 0}  # start a VM for one short job


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """moto's EC2 server as a process of its own; its access log (werkzeug's request lines) in a file."""
    port, log = free_port(), tmp_path / "moto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out
        )
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/moto-api/"), timeout=30, what="moto to listen")
        yield port, log
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code < 500
    except httpx.TransportError:
        return False


def ec2_cloud(port: int, ami: str, secret_file: Path) -> dict[str, Any]:
    return {
        "driver": "libcloud",
        "provider": "ec2",
        "ec2_moto_compat": True,
        "allow_loopback_server_url": True,  # moto's "VMs" are records on this host, not machines
        "driver_args": {"key": {"env": "EC2_ACCESS_KEY"}, "secret": {"file": str(secret_file)}},
        "driver_kwargs": {"host": "127.0.0.1", "port": port, "region": REGION},
        "images": {"*": ami},
        "flavors": {"f": {**FLAVORS["f"], "size": "t2.micro"}},
    }


def submit(url: str, data_dir: Path) -> None:
    token = store_token(data_dir, Role.USER, "alice", vo="lhcb")
    answer = httpx.post(f"{url}/api/v1/jobs", json=[JOB], headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 201, answer.text


def test_ec2_credentials_from_environment_and_file_and_no_token_in_any_url(
    tmp_path: Path, moto: tuple[int, Path], server_processes: ServerProcesses
) -> None:
    port, moto_log = moto
    ec2 = boto3.client("ec2", endpoint_url=f"http://127.0.0.1:{port}", region_name=REGION,
                       aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)  # fmt: skip
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    secret_file = tmp_path / "ec2-secret"
    secret_file.write_text(SECRET_KEY + "\n")
    config = tmp_path / "server.yaml"
    doc = {"clouds": {"aws": ec2_cloud(port, ami, secret_file)}, "provisioner": QUICK, "policy": POLICY}
    config.write_text(yaml.safe_dump(doc))
    data_dir = tmp_path / "data"
    server = server_processes.start(data_dir, "--config", str(config), env={"EC2_ACCESS_KEY": ACCESS_KEY})
    submit(server.url, data_dir)

    def booted() -> list[dict[str, Any]]:
        reservations = ec2.describe_instances()["Reservations"]
        return [i for r in reservations for i in r["Instances"] if any(t["Key"] == TAG_VM_ID for t in i["Tags"])]

    [instance] = wait_for(booted, timeout=60, what="the provisioner to start an instance in moto")
    answer = ec2.describe_instance_attribute(InstanceId=instance["InstanceId"], Attribute="userData")
    user_data = base64.b64decode(answer["UserData"]["Value"]).decode()
    files = {f["path"]: f["content"] for f in parse_cloud_config(user_data)["write_files"]}
    vm_token = files[TOKEN_FILE].strip()
    assert build_pilot_zipapp().sha256 in user_data  # the pilot it will download is pinned

    time.sleep(1)  # moto writes a request's log line once it has answered it
    requests = moto_log.read_text(errors="replace")
    assert "POST / HTTP/1.1" in requests  # our driver's calls, RunInstances among them
    assert "GET /?" not in requests  # Libcloud's own EC2 driver sends every action as such a GET
    encoded = base64.b64encode(user_data.encode()).decode()
    secret = vm_token.split("_", 2)[2]  # PREFIX_ID_SECRET; the secret itself may hold "_" (urlsafe base64)
    for leaked in (vm_token, secret, encoded[:40], "UserData", "Action=", SECRET_KEY):
        assert leaked not in requests, leaked
    for leaked in (vm_token, SECRET_KEY):
        assert leaked not in server.log()


def test_a_missing_variable_or_file_stops_the_server_naming_it_not_the_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EC2_ACCESS_KEY", raising=False)
    secret_file = tmp_path / "ec2-secret"
    secret_file.write_text(SECRET_KEY)

    def start(cloud: dict[str, Any], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        config = tmp_path / "server.yaml"
        doc = {"clouds": {"aws": cloud}, "provisioner": {"server_url": "https://cloudpilot.example.org"}}
        config.write_text(yaml.safe_dump(doc))
        cmd = [*CLI, "server", "--data-dir", str(tmp_path / "data"), "--config", str(config)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**os.environ, **env})

    unset = start(ec2_cloud(1, "ami-0123456789abcdef0", secret_file), {})
    assert unset.returncode == 2
    assert "cloud aws: driver_args.key: environment variable EC2_ACCESS_KEY is not set" in unset.stderr
    assert SECRET_KEY not in unset.stdout + unset.stderr

    missing = start(ec2_cloud(1, "ami-0123456789abcdef0", tmp_path / "nowhere"), {"EC2_ACCESS_KEY": ACCESS_KEY})
    assert missing.returncode == 2
    assert f"driver_args.secret: cannot read {tmp_path / 'nowhere'}: No such file or directory" in missing.stderr
    assert ACCESS_KEY not in missing.stdout + missing.stderr

    malformed = {**ec2_cloud(1, "ami-0", secret_file), "driver_args": {"key": {"env": "A", "file": "/b"}}}
    refused = start(malformed, {})
    assert refused.returncode == 2
    assert "driver_args: Value error, key: a secret reference is {env: NAME} or {file: PATH}" in refused.stderr


APP_ID, APP_SECRET, PASSWORD = "ac-0123", "ac-secret-from-clouds-yaml", "password-from-clouds-yaml"


@pytest.mark.parametrize("method", ["application_credential", "password"])
def test_openstack_cloud_from_clouds_yaml(tmp_path: Path, server_processes: ServerProcesses, method: str) -> None:
    fake = FakeOpenStack(password=PASSWORD, app_credentials={APP_ID: APP_SECRET}, regions=("RegionOne", "Two"))
    fake.start()
    try:
        if method == "application_credential":
            auth = {"auth_url": f"{fake.url}/v3", "application_credential_id": APP_ID,
                    "application_credential_secret": APP_SECRET}  # fmt: skip
            entry = {"auth_type": "v3applicationcredential", "auth": auth, "region_name": "Two"}
        else:
            auth = {"auth_url": fake.url, "username": "demo", "password": PASSWORD, "project_name": "physics",
                    "user_domain_name": "Default", "project_domain_name": "Default"}  # fmt: skip
            entry = {"auth": auth, "region_name": "RegionOne", "interface": "public"}
        site = tmp_path / "site"
        site.mkdir()
        # The application credential is found where the openstack CLI looks (./clouds.yaml of the server's working
        # directory); the password one in a file the configuration names.
        clouds_yaml = site / ("clouds.yaml" if method == "application_credential" else "cern-clouds.yaml")
        clouds_yaml.write_text(yaml.safe_dump({"clouds": {"cern": entry}}))
        cloud = {
            "driver": "libcloud",
            "provider": "openstack",
            "openstack_cloud": "cern",
            "allow_loopback_server_url": True,
            "driver_kwargs": {"api_version": "2.2"},
            "images": {"*": "img-alma9"},
            "flavors": {"f": {**FLAVORS["f"], "size": "m1.small"}},
        }
        if method == "password":
            cloud["clouds_yaml"] = str(clouds_yaml)
        config = tmp_path / "server.yaml"
        config.write_text(yaml.safe_dump({"clouds": {"cern": cloud}, "provisioner": QUICK, "policy": POLICY}))
        data_dir = tmp_path / "data"
        server = server_processes.start(data_dir, "--config", str(config), cwd=site)
        submit(server.url, data_dir)

        wait_for(lambda: fake.servers, timeout=60, what="the provisioner to start a server on the fake OpenStack")

        assert set(fake.auth_methods) == {method}
        for secret in (APP_SECRET, PASSWORD):
            assert secret not in server.log()
    finally:
        fake.stop()


def test_the_real_clouds_example_holds_no_secret_and_validates() -> None:
    example = Path(__file__).parents[1] / "examples" / "server-clouds.yaml"
    config = load_config(example)
    for cloud in config.clouds.values():
        assert isinstance(cloud, LibcloudCloudConfig)
        for key in ("key", "secret", "password"):
            value = cloud.driver_args.get(key)
            assert value is None or is_reference(value), (key, value)
    assert unreachable_server_url(config, "http://127.0.0.1:8080") is None
