"""``context: none`` without a VM: the config drive's ``cloudpilot.env``, the ISO the libvirt driver makes of it,
and the baked image's boot script run on this host against a directory standing in for the drive."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cloudpilot.clouds.libvirt_files import ConfigDrive, make_config_drive
from cloudpilot.config.clouds import LibvirtCloudConfig
from cloudpilot.context.config_drive import CONFIG_DRIVE_FILE, CONFIG_DRIVE_LABEL, config_drive_env
from cloudpilot.context.userdata import PilotContext, build_user_data, pilot_command
from cloudpilot.services.cloud_drivers import build_driver
from cloudpilot.services.provisioner import boot_data

TOKEN = "cp_pilot_tok3n-very-secret"
BOOT_SCRIPT = Path(__file__).resolve().parents[1] / "deploy/images/baked/boot.sh"
# A stand-in for pilot.pyz: prints what it was given and whether the token file held the token, then deletes it
# as --delete-token-file makes the real pilot do.
FAKE_PILOT = b"""import os, sys
args = sys.argv[1:]
token_file = args[args.index("--token-file") + 1]
held = open(token_file).read().strip() == os.environ["EXPECTED_TOKEN"]
mode = oct(os.stat(token_file).st_mode & 0o777)
os.unlink(token_file)
print("fake pilot:", " ".join(a for a in args if a != os.environ["EXPECTED_TOKEN"]), "token-ok", held, mode)
print("MACHINEFEATURES", os.environ.get("MACHINEFEATURES"))
"""


def context(pilot_sha256: str | None = None) -> PilotContext:
    return PilotContext(
        server_url="http://10.0.2.2:8080",
        vm_id="vm-7",
        vo="lhcb",
        pilot_token=TOKEN,
        cores=2,
        memory_mb=2048,
        lifetime_seconds=3600,
        idle_timeout_seconds=30,
        machinefeatures_url="http://10.0.2.2:8080/mjf/vm-7/machine",
        pilot_sha256=pilot_sha256 or "ab" * 32,
    )


def sourced(env_text: str, tmp_path: Path) -> dict[str, str]:
    """The variables ``cloudpilot.env`` assigns, as sh sees them."""
    path = tmp_path / "cloudpilot.env"
    path.write_text(env_text)
    out = subprocess.run(["sh", "-c", f"set -a; . {path}; env -0"], capture_output=True, check=True, env={})
    items = [item.split("=", 1) for item in out.stdout.decode().split("\0") if item.startswith("CLOUDPILOT_")]
    return dict(items)


def test_the_drive_file_carries_the_user_data_values_and_the_token_only_in_the_token_file(tmp_path: Path) -> None:
    ctx = context()
    text = config_drive_env(ctx)
    assert TOKEN not in repr(ctx)
    [token_line] = [line for line in text.splitlines() if TOKEN in line]  # once, as the token file's content
    values = sourced(text, tmp_path)
    assert values["CLOUDPILOT_PILOT_COMMAND"] == pilot_command(ctx)  # the user-data's command, not a copy of it
    assert "--delete-token-file" in values["CLOUDPILOT_PILOT_COMMAND"]
    assert values["CLOUDPILOT_PILOT_SHA256"] == "ab" * 32
    files = {
        values[f"CLOUDPILOT_FILE_{i}_PATH"]: (
            values[f"CLOUDPILOT_FILE_{i}_MODE"],
            values[f"CLOUDPILOT_FILE_{i}_CONTENT"],
        )
        for i in range(1, int(values["CLOUDPILOT_FILE_COUNT"]) + 1)
    }
    assert files["/etc/cloudpilot/pilot.token"] == ("0600", TOKEN + "\n")
    assert token_line.startswith(f"CLOUDPILOT_FILE_{list(files).index('/etc/cloudpilot/pilot.token') + 1}_CONTENT=")
    assert (
        '"vo": "lhcb"' in files["/etc/cloudpilot/pilot.json"][1] and TOKEN not in files["/etc/cloudpilot/pilot.json"][1]
    )
    assert "MACHINEFEATURES=" in files["/etc/cloudpilot/env"][1]
    assert "--cores 2" in values["CLOUDPILOT_PILOT_COMMAND"] and "--lifetime 3600" in values["CLOUDPILOT_PILOT_COMMAND"]


def test_a_libvirt_cloud_with_context_none_gets_a_config_drive_and_no_user_data(tmp_path: Path) -> None:
    settings = LibvirtCloudConfig.model_validate(
        {
            "driver": "libvirt",
            "base_image": "/nonexistent.raw",
            "context": "none",
            "flavors": {"vm": {"cores": 1, "memory_mb": 512}},
        }
    )
    driver = build_driver("hlt", settings, tmp_path)
    assert driver.config_drive == ConfigDrive(CONFIG_DRIVE_LABEL, CONFIG_DRIVE_FILE)  # type: ignore[attr-defined]
    assert driver.attach_seed  # type: ignore[attr-defined]
    assert boot_data(settings, context()) == config_drive_env(context())
    cloud_init = settings.model_copy(update={"context": "cloud-init"})
    assert boot_data(cloud_init, context()) == build_user_data(context())
    assert build_driver("hlt", cloud_init, tmp_path).config_drive is None  # type: ignore[attr-defined]


@pytest.mark.skipif(shutil.which("genisoimage") is None or shutil.which("isoinfo") is None, reason="no genisoimage")
def test_the_iso_is_labelled_holds_the_file_0600_and_leaves_no_copy(tmp_path: Path) -> None:
    drive = tmp_path / "config-drive.iso"
    make_config_drive(tmp_path, drive, ConfigDrive(CONFIG_DRIVE_LABEL, CONFIG_DRIVE_FILE), config_drive_env(context()))
    info = subprocess.run(["isoinfo", "-d", "-i", str(drive)], capture_output=True, text=True, check=True).stdout
    assert f"Volume id: {CONFIG_DRIVE_LABEL}" in info
    listing = subprocess.run(["isoinfo", "-R", "-l", "-i", str(drive)], capture_output=True, text=True, check=True)
    assert "-rw-------" in listing.stdout and CONFIG_DRIVE_FILE in listing.stdout
    assert [p.name for p in tmp_path.iterdir()] == [drive.name]  # the staged copy is gone
    assert TOKEN.encode() in drive.read_bytes()


def boot(tmp_path: Path, pilot: bytes, pinned: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    root, drive = tmp_path / "root", tmp_path / "drive"
    (root / "opt/cloudpilot").mkdir(parents=True)
    drive.mkdir()
    (root / "opt/cloudpilot/pilot.pyz").write_bytes(pilot)
    (drive / CONFIG_DRIVE_FILE).write_text(config_drive_env(context(pinned)))
    env = {
        "PATH": os.environ["PATH"],
        "CLOUDPILOT_DRIVE_DIR": str(drive),
        "CLOUDPILOT_VM_ROOT": str(root),
        "EXPECTED_TOKEN": TOKEN,
    }
    done = subprocess.run(["sh", str(BOOT_SCRIPT)], capture_output=True, text=True, env=env, timeout=60, check=False)
    return done, root


def test_the_boot_script_starts_the_pinned_pilot_with_the_token_file_and_prints_no_secret(tmp_path: Path) -> None:
    done, root = boot(tmp_path, FAKE_PILOT, hashlib.sha256(FAKE_PILOT).hexdigest())
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert TOKEN not in output
    assert "starting the baked pilot" in output and "VM vm-7 of lhcb" in output
    assert "token-ok True 0o600" in output  # the file it was pointed to held the token, 0600
    assert "--delete-token-file" in output and "--idle-timeout 30" in output
    assert "MACHINEFEATURES http://10.0.2.2:8080/mjf/vm-7/machine" in output  # the MJF environment was sourced
    assert not (root / "etc/cloudpilot/pilot.token").exists()
    assert (root / "etc/cloudpilot/pilot.json").exists()


def test_the_boot_script_refuses_a_baked_pilot_the_server_does_not_pin_and_writes_no_token(tmp_path: Path) -> None:
    done, root = boot(tmp_path, FAKE_PILOT, "cd" * 32)
    assert done.returncode != 0
    actual = hashlib.sha256(FAKE_PILOT).hexdigest()
    assert f"refusing to run the baked pilot: its sha256 is {actual}, the server pins {'cd' * 32}" in done.stderr
    assert "fake pilot" not in done.stdout and TOKEN not in done.stdout + done.stderr
    assert not (root / "etc/cloudpilot").exists()
