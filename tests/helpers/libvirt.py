"""A libvirtd for the libvirt driver's tests: the running one, or one started here as a daemon.

Inside a container systemd is not PID 1, so ``libvirtd`` and ``virtlogd`` are started directly (``-d``). The tests
skip, saying why, only where libvirtd cannot run at all (not installed, not root, or it exits at once).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

URI = "qemu:///system"
TOOLS = ("libvirtd", "virtlogd", "qemu-system-x86_64", "qemu-img", "genisoimage")


def libvirtd_unavailable() -> str | None:
    """None when a libvirtd answers on qemu:///system (starting one if need be); else why it cannot."""
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "libvirt-python is not installed (pip install libvirt-python; it needs libvirt-dev and pkg-config)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()]
    if missing:
        return f"not installed: {', '.join(missing)} (apt-get install libvirt-daemon-system qemu-utils genisoimage)"
    if _answers():
        return None
    if os.geteuid() != 0:
        return "no libvirtd answers on qemu:///system and starting one needs root"
    for daemon in ("virtlogd", "libvirtd"):
        done = subprocess.run([daemon, "-d"], capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0 and daemon == "libvirtd":
            return f"libvirtd -d failed ({done.returncode}): {done.stderr.strip()[-400:]}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if _answers():
            return None
        time.sleep(0.5)
    return "libvirtd was started but does not answer on qemu:///system within 20 s"


def _answers() -> bool:
    import libvirt

    try:
        conn = libvirt.open(URI)
    except libvirt.libvirtError:
        return False
    conn.close()
    return True


def storage_dir() -> Path:
    """A directory libvirtd's QEMU (user libvirt-qemu) can reach: pytest's tmp dirs are 0700 under root's."""
    path = Path(tempfile.mkdtemp(prefix="cloudpilot-libvirt-", dir="/var/tmp"))
    path.chmod(0o755)
    return path


def blank_image(directory: Path) -> Path:
    """A small empty qcow2: enough for a domain that boots nothing and stays running until destroyed."""
    path = directory / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True, timeout=30)
    path.chmod(0o644)
    return path
