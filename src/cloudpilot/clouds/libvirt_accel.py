"""KVM when it works, TCG otherwise: decided by trying, since a ``/dev/kvm`` that exists may still not work.

Where KVM runs nested on a hypervisor that lacks a feature, ``/dev/kvm`` opens, libvirt's domain capabilities list
``kvm``, and then QEMU aborts as the guest starts (an MSR assertion), or the vCPU spins without the kernel ever
printing a line (seen on this project's CI host: 30 s of CPU, an empty console). So the probe boots a throw-away
transient domain with KVM and the cloud's own kernel and waits for the kernel's first console line ("Linux
version"); without a kernel configured it can only check that the domain keeps running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("cloudpilot.clouds.libvirt")

PROBE_SECONDS = 15.0  # a kernel under working KVM prints its banner within a second
KERNEL_BANNER = b"Linux version"


@dataclass(frozen=True, slots=True)
class Accel:
    domain_type: str  # libvirt's <domain type>: "kvm" or "qemu" (TCG)
    reason: str  # why, for the log and /clouds

    @property
    def name(self) -> str:
        return "KVM" if self.domain_type == "kvm" else "TCG"


TCG_FORCED = Accel("qemu", "accel: tcg in the configuration")
KVM_FORCED = Accel("kvm", "accel: kvm in the configuration")


def probe_accel(
    conn: Any, kernel: Path | None, initrd: Path | None, workdir: Path, seconds: float = PROBE_SECONDS
) -> Accel:
    """Boot a probe domain with KVM: KVM if its kernel prints its banner (without a kernel: if it keeps running)
    within ``seconds``, else TCG with the reason. The probe's console goes to a file in ``workdir``."""
    import libvirt

    if not os.path.exists("/dev/kvm"):
        return Accel("qemu", "/dev/kvm does not exist")
    try:
        caps = conn.getDomainCapabilities(None, "x86_64", None, "kvm", 0)
    except libvirt.libvirtError as exc:
        return Accel("qemu", f"libvirt offers no KVM domains: {exc.get_error_message()}")
    if "<domain>kvm</domain>" not in caps.replace(" ", ""):
        return Accel("qemu", "libvirt offers no KVM domains")
    name = f"cloudpilot-kvm-probe-{uuid.uuid4().hex[:8]}"
    console = workdir / f"{name}.console"
    try:
        dom = conn.createXML(_probe_xml(name, kernel, initrd, console), 0)
    except libvirt.libvirtError as exc:
        return Accel("qemu", f"a KVM domain did not start: {exc.get_error_message()}")
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                state, _reason = dom.state()
            except libvirt.libvirtError:
                return Accel("qemu", f"a KVM domain died within {seconds:.0f} s ({_qemu_log_tail(name)})")
            if state != libvirt.VIR_DOMAIN_RUNNING:
                return Accel("qemu", f"a KVM domain stopped within {seconds:.0f} s ({_qemu_log_tail(name)})")
            if kernel is not None and _printed_banner(console):
                took = seconds - (deadline - time.monotonic())
                return Accel("kvm", f"a KVM domain booted its kernel in {took:.1f} s")
        if kernel is not None:
            return Accel("qemu", f"a KVM domain ran {seconds:.0f} s and its kernel printed nothing (stuck vCPU)")
        return Accel("kvm", f"a KVM domain ran {seconds:.0f} s (no kernel configured to check that it boots)")
    finally:
        console.unlink(missing_ok=True)
        with contextlib.suppress(libvirt.libvirtError):  # gone already: a transient domain ends with QEMU
            dom.destroy()


def _printed_banner(console: Path) -> bool:
    try:
        return KERNEL_BANNER in console.read_bytes()
    except OSError:
        return False


def _probe_xml(name: str, kernel: Path | None, initrd: Path | None, console: Path) -> str:
    domain = ET.Element("domain", type="kvm")
    ET.SubElement(domain, "name").text = name
    ET.SubElement(domain, "memory", unit="MiB").text = "256"
    ET.SubElement(domain, "vcpu").text = "1"
    os_ = ET.SubElement(domain, "os")
    ET.SubElement(os_, "type", arch="x86_64").text = "hvm"
    if kernel is not None:
        ET.SubElement(os_, "kernel").text = str(kernel)
        if initrd is not None:
            ET.SubElement(os_, "initrd").text = str(initrd)
        ET.SubElement(os_, "cmdline").text = "console=ttyS0 panic=0"  # no root disk: it waits, still running
    ET.SubElement(domain, "cpu", mode="host-passthrough")
    devices = ET.SubElement(domain, "devices")
    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path=str(console))
    ET.SubElement(serial, "target", port="0")
    return ET.tostring(domain, encoding="unicode")


def _qemu_log_tail(name: str) -> str:
    """The last line QEMU wrote for the probe (the assertion, typically)."""
    try:
        lines = Path(f"/var/log/libvirt/qemu/{name}.log").read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no QEMU log"
    return lines[-1][-300:] if lines else "empty QEMU log"
