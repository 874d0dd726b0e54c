"""End to end on real VMs: the Debian 12 image of deploy/images/build-debian.sh booted by the libvirt driver.

1. cloud-init: the VM's cloud-init runs our user-data from the NoCloud seed, its pilot registers over QEMU's
   user-mode network (the server listens on 127.0.0.1; the guest reaches it as 10.0.2.2), runs 3 jobs, idles out
   and powers the VM off; the VM monitor destroys the domain.
2. SSH: the same image as a "golden" one (cloud-init disabled, the provisioner's key authorized, no seed): the
   provisioner logs in through the forwarded port, copies the pilot and its credential and starts it; same jobs.
3. context: none: the image with the pilot baked in (cloud-init disabled) reads its credential from the config
   drive the driver attaches, checks its pilot against the server's pinned sha256 and starts it; same jobs.

Slow (a boot under TCG takes ~2.5 min on 2 shared cores); the image is built once and cached under
/var/cache/cloudpilot-images keyed by the build script's hash. Figures are printed (pytest -s to see them).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cloudpilot.config import ServerConfig
from cloudpilot.config.reachability import unreachable_server_url
from cloudpilot.context.pilot_zipapp import pilot_zipapp
from cloudpilot.domain.auth import Role
from tests.helpers.clouds import wait_for
from tests.helpers.libvirt import URI, libvirtd_unavailable, storage_dir
from tests.helpers.pilots import wait_final
from tests.helpers.server import ServerFactory, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[1]
IMAGE_CACHE = Path("/var/cache/cloudpilot-images")
BOOT_TIMEOUT = 600.0


@pytest.fixture(scope="module")
def debian_image() -> Path:
    if (reason := libvirtd_unavailable()) is not None:
        pytest.skip(f"libvirtd cannot run here: {reason}")
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(REPO / "deploy/images/build-debian.sh"), str(IMAGE_CACHE)],
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    image = Path(done.stdout.strip().splitlines()[-1])
    print(f"\nimage {image} ready in {time.monotonic() - started:.0f} s ({(image / 'build.json').read_text()})")
    return image


@pytest.fixture
def vm_files() -> Iterator[Path]:
    path = storage_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def libvirt_cloud(image: Path, files: Path, **extra: object) -> dict:
    return {
        "driver": "libvirt",
        "uri": URI,
        "flavors": {"vm": {"cores": 1, "memory_mb": 1024}},
        "max_vms": 1,
        "start_rate_per_minute": 60,
        "base_image": str(extra.pop("base_image", image / "disk.raw")),
        "kernel": str(image / "vmlinuz"),
        "initrd": str(image / "initrd.img"),
        "storage_dir": str(files),
        "boot_timeout_seconds": BOOT_TIMEOUT,
        **extra,
    }


def server_config(cloud: dict, port: int) -> ServerConfig:
    return ServerConfig.model_validate(
        {
            "clouds": {"kvm-host": cloud},
            "policy": {"idle_seconds": 5, "min_work_seconds_per_core": 0},
            "provisioner": {
                "interval_seconds": 1,
                "pilot_idle_timeout_seconds": 10,
                "lost_after_seconds": 120,
                # What the guest sees as this host on QEMU's user-mode network; the server is on 127.0.0.1.
                "server_url": f"http://10.0.2.2:{port}",
            },
            "lease": {"seconds": 60, "heartbeat_seconds": 5, "reaper_interval_seconds": 2},
        }
    )


def run_three_jobs(make_server: ServerFactory, cloud: dict, what: str) -> None:
    port = free_port()
    config = server_config(cloud, port)
    # A URL of 10.0.2.2 is not loopback: the server's start check lets a libvirt cloud use it without opting out.
    assert unreachable_server_url(config, f"http://127.0.0.1:{port}") is None
    server = make_server(config, port=port)
    driver = server.services.provisioner.drivers["kvm-host"]
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    admin = server.client(server.token(Role.ADMIN, "root"))
    code = "import os, platform; print('job on', platform.node(), 'as uid', os.getuid())"
    body = {"job": {"executable": "/usr/bin/python3", "arguments": ["-c", code],
                    "requirements": {"wall_seconds": 300}}, "parameter_count": 3}  # fmt: skip
    ids = user.post("/api/v1/jobs", json=body).json()["ids"]
    [vm] = wait_for(lambda: vms(admin), timeout=60, what="a VM record")
    instance = wait_for(lambda: vms(admin)[0]["instance_id"], timeout=60, what="the domain")
    print(f"\n[{what}] accel: {driver.accel.name} ({driver.accel.reason})")
    rss = qemu_rss_mb(vm["id"])
    # Stop at once if the VM fails (a failed boot or contextualization), not at the jobs' timeout.
    wait_for(lambda: vms(admin)[0]["booted_at"] or failed(vms(admin)[0]), timeout=BOOT_TIMEOUT, what="registration")
    assert vms(admin)[0]["state"] != "failed", (vms(admin)[0]["failure_reason"], console_tail(driver, instance))
    jobs = wait_final(user, ids, timeout=300)
    assert {j["state"] for j in jobs.values()} == {"done"}, (jobs, console_tail(driver, instance))
    [record] = vms(admin)
    boot = record["booted_at"] - record["created_at"]
    print(f"[{what}] boot to registration {boot:.0f} s; QEMU RSS {rss} MiB at start, {qemu_rss_mb(vm['id'])} MiB "
          f"running (flavor 1024 MiB)")  # fmt: skip
    assert record["jobs_run"] == 3
    # No more work: the pilot idles out, the VM powers itself off and the monitor destroys the domain.
    wait_for(lambda: vms(admin)[0]["state"] == "destroyed", timeout=240, what="the VM destroyed")
    assert driver.list() == []
    assert subprocess.run(["virsh", "-c", URI, "dominfo", instance], capture_output=True, check=False).returncode != 0


def failed(vm: dict) -> bool:
    return vm["state"] == "failed"


def vms(admin: httpx.Client) -> list[dict]:
    time.sleep(0.5)  # polled by wait_for: a request every half second is plenty for a VM booting for minutes
    return admin.get("/api/v1/vms").json()["vms"]


def qemu_rss_mb(vm_id: str) -> int | None:
    """The QEMU process's resident memory, from libvirt's pid file of the domain."""
    for pidfile in Path("/run/libvirt/qemu").glob(f"cloudpilot-kvm-host-{vm_id}*.pid"):
        try:
            status = Path(f"/proc/{pidfile.read_text().strip()}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    return None


def console_tail(driver: object, instance: str) -> str:
    path = driver.console_log(instance)  # type: ignore[attr-defined]
    return path.read_text(errors="replace")[-4000:] if path and path.exists() else "(no console log)"


def test_cloud_init_vm_runs_three_jobs_and_its_domain_goes_away(
    debian_image: Path, vm_files: Path, make_server: ServerFactory
) -> None:
    run_three_jobs(make_server, libvirt_cloud(debian_image, vm_files), "cloud-init")


def test_golden_image_contextualized_over_ssh(debian_image: Path, vm_files: Path, make_server: ServerFactory) -> None:
    key = vm_files / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    golden = vm_files / "golden.raw"
    subprocess.run(["cp", "--sparse=always", str(debian_image / "disk.raw"), str(golden)], check=True)
    subprocess.run(
        ["bash", str(REPO / "deploy/images/golden.sh"), str(golden), f"{key}.pub"], check=True, capture_output=True
    )
    golden.chmod(0o644)
    cloud = libvirt_cloud(
        debian_image, vm_files, base_image=golden, context="ssh", ssh={"key_file": str(key), "retry_seconds": 5}
    )
    run_three_jobs(make_server, cloud, "ssh")


def test_image_with_the_pilot_baked_in_reads_its_config_drive(
    debian_image: Path, vm_files: Path, make_server: ServerFactory
) -> None:
    """context: none: the image has cloud-init disabled and the pilot baked in (deploy/images/golden-baked.sh, built
    from this package, so its sha256 is the server's pin); the driver attaches a config drive instead of a seed."""
    baked = vm_files / "baked.raw"
    subprocess.run(["cp", "--sparse=always", str(debian_image / "disk.raw"), str(baked)], check=True)
    done = subprocess.run(
        ["bash", str(REPO / "deploy/images/golden-baked.sh"), str(baked), sys.executable],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == pilot_zipapp().sha256  # the pilot the server will pin
    baked.chmod(0o644)
    run_three_jobs(make_server, libvirt_cloud(debian_image, vm_files, base_image=baked, context="none"), "context none")
