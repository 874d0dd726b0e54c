"""The files a libvirt VM boots from: a qcow2 overlay on the base image and a NoCloud seed or config drive ISO.

Both are made with the host's tools (``qemu-img``, ``genisoimage``) in the cloud's storage directory, which
libvirtd's QEMU must be able to read: the driver talks to a libvirtd on this host (``qemu:///system``).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

TOOL_TIMEOUT_SECONDS = 60.0


class ToolFailed(Exception):
    """A host tool is missing or failed; the message names it and its error output (never the user-data)."""


def image_format(path: Path) -> str:
    """``raw``, ``qcow2``, … as ``qemu-img info`` sees the file (a qcow2 overlay must name its backing format)."""
    out = _run(["qemu-img", "info", "--output", "json", str(path)])
    return str(json.loads(out)["format"])


def make_overlay(base: Path, base_format: str, overlay: Path) -> None:
    """A copy-on-write qcow2 on ``base``: the base image is shared and never written."""
    _run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", base_format, str(overlay)])


def make_seed(directory: Path, seed: Path, user_data: str, instance_id: str, hostname: str) -> None:
    """A NoCloud seed: an ISO 9660 volume labelled ``cidata`` holding ``user-data`` and ``meta-data``.

    ``user-data`` holds the pilot's credential, so the files are written 0600 and removed once the ISO exists.
    """
    files = directory / "seed-files"
    files.mkdir(mode=0o700, exist_ok=True)
    try:
        for name, content in (
            ("user-data", user_data),
            ("meta-data", f"instance-id: {instance_id}\nlocal-hostname: {hostname}\n"),
        ):
            target = files / name
            target.touch(mode=0o600)
            target.write_text(content)
        _run(["genisoimage", "-quiet", "-output", str(seed), "-volid", "cidata", "-joliet", "-rock", str(files)])
    finally:
        shutil.rmtree(files, ignore_errors=True)


@dataclass(frozen=True, slots=True)
class ConfigDrive:
    """The config drive an image with the pilot baked in reads (``context: none``): its volume label and the one
    file on it. The wiring fills it from ``cloudpilot.context.config_drive`` (this layer does not import it)."""

    label: str
    file_name: str


def make_config_drive(directory: Path, drive: Path, layout: ConfigDrive, content: str) -> None:
    """An ISO 9660 volume labelled ``layout.label`` holding ``content`` as ``layout.file_name``. It holds the
    pilot's credential, so it is staged 0600 (Rock Ridge keeps that mode on the ISO: only root on the VM reads it)
    and the staging copy is removed once the ISO exists, as for the seed."""
    staging = directory / "drive-files"
    staging.mkdir(mode=0o700, exist_ok=True)
    try:
        target = staging / layout.file_name
        target.touch(mode=0o600)
        target.write_text(content)
        argv = ["genisoimage", "-quiet", "-output", str(drive), "-volid", layout.label, "-joliet", "-rock"]
        _run([*argv, str(staging)])
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def free_local_port() -> int:
    """A TCP port free on 127.0.0.1 now (QEMU binds it for the SSH forward a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT_SECONDS, check=False)
    except FileNotFoundError:
        raise ToolFailed(f"{argv[0]} is not installed on this host") from None
    except subprocess.TimeoutExpired:
        raise ToolFailed(f"{argv[0]} did not finish in {TOOL_TIMEOUT_SECONDS:.0f} s") from None
    if done.returncode != 0:
        raise ToolFailed(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return done.stdout
