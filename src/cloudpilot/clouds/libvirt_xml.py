"""Domain XML for the libvirt driver, and our tags read back from a domain's metadata (pure, no libvirt calls).

Every domain we define carries a ``<cloudpilot:instance>`` element in its ``<metadata>``: the cloud's name (so two
clouds on one libvirtd, or two test runs, never list each other's domains), our VM id, the flavor, the creation
time and, with user-mode networking, the host port forwarded to the guest's SSH.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from cloudpilot.clouds.base import TAG_MANAGED, TAG_VM_ID

METADATA_NS = "urn:cloudpilot:libvirt:instance:1"  # a URN: it names our schema and points nowhere
METADATA_PREFIX = "cloudpilot"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"  # libvirt's namespace for QEMU command-line passthrough
USER_NETWORK = "user"  # the ``network`` value that means QEMU's user-mode (slirp) networking

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True, slots=True)
class DomainTags:
    """What we keep in a domain's metadata."""

    cloud: str
    vm_id: str
    flavor: str
    created_at: float
    ssh_port: int | None = None  # user-mode networking: 127.0.0.1:ssh_port reaches the guest's port 22


@dataclass(frozen=True, slots=True)
class DomainSpec:
    """One VM's domain: the flavor's size, its disks and how it boots and connects."""

    name: str
    tags: DomainTags
    vcpus: int
    memory_mb: int
    overlay: Path  # qcow2 on top of the base image
    seed: Path | None  # the NoCloud cidata ISO; None: no seed attached
    accel: str  # "kvm" or "qemu" (TCG), libvirt's domain type
    network: str = USER_NETWORK
    kernel: Path | None = None  # direct kernel boot (an image without a boot loader)
    initrd: Path | None = None
    cmdline: str | None = None
    console_log: Path | None = None  # the serial console, written to this file


def domain_name(cloud: str, vm_id: str) -> str:
    """A readable domain name, unique per cloud and VM id (libvirt refuses a second domain of the same name)."""
    return _NAME_UNSAFE.sub("_", f"cloudpilot-{cloud}-{vm_id}")[:200]


def metadata_xml(tags: DomainTags) -> str:
    """The element stored under our namespace with ``virDomainSetMetadata`` / inside ``<metadata>``."""
    element = ET.Element(f"{METADATA_PREFIX}:instance")
    element.set(f"xmlns:{METADATA_PREFIX}", METADATA_NS)
    for key, value in _tag_items(tags):
        child = ET.SubElement(element, f"{METADATA_PREFIX}:tag", name=key)
        child.text = value
    return ET.tostring(element, encoding="unicode")


def _tag_items(tags: DomainTags) -> list[tuple[str, str]]:
    items = [
        (TAG_MANAGED, "true"),
        ("cloudpilot-cloud", tags.cloud),
        (TAG_VM_ID, tags.vm_id),
        ("cloudpilot-flavor", tags.flavor),
        ("cloudpilot-created-at", repr(tags.created_at)),
    ]
    if tags.ssh_port is not None:
        items.append(("cloudpilot-ssh-port", str(tags.ssh_port)))
    return items


def parse_metadata(text: str) -> DomainTags | None:
    """Our tags from the element ``virDomainGetMetadata`` returns; None if it is not one of ours."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return None
    values = {tag.get("name"): tag.text or "" for tag in root.iter() if tag.tag.endswith("tag")}
    if values.get(TAG_MANAGED) != "true" or not values.get(TAG_VM_ID) or not values.get("cloudpilot-cloud"):
        return None
    try:
        created = float(values.get("cloudpilot-created-at", "0"))
        port = int(values["cloudpilot-ssh-port"]) if values.get("cloudpilot-ssh-port") else None
    except ValueError:
        return None
    return DomainTags(values["cloudpilot-cloud"], values[TAG_VM_ID], values.get("cloudpilot-flavor", ""), created, port)


def domain_xml(spec: DomainSpec) -> str:
    """The ``<domain>`` document for ``defineXML``."""
    ET.register_namespace("qemu", QEMU_NS)
    domain = ET.Element("domain", type=spec.accel)
    ET.SubElement(domain, "name").text = spec.name
    metadata = ET.SubElement(domain, "metadata")
    metadata.append(ET.fromstring(metadata_xml(spec.tags)))
    ET.SubElement(domain, "memory", unit="MiB").text = str(spec.memory_mb)
    ET.SubElement(domain, "vcpu").text = str(spec.vcpus)
    os_ = ET.SubElement(domain, "os")
    ET.SubElement(os_, "type", arch="x86_64").text = "hvm"
    if spec.kernel is not None:
        ET.SubElement(os_, "kernel").text = str(spec.kernel)
        if spec.initrd is not None:
            ET.SubElement(os_, "initrd").text = str(spec.initrd)
        if spec.cmdline:
            ET.SubElement(os_, "cmdline").text = spec.cmdline
    else:
        ET.SubElement(os_, "boot", dev="hd")
    features = ET.SubElement(domain, "features")
    ET.SubElement(features, "acpi")  # the guest's poweroff reaches libvirt (shut off, not crashed)
    if spec.accel == "kvm":
        # The host's CPU as is; TCG keeps QEMU's default model, which every host can emulate.
        ET.SubElement(domain, "cpu", mode="host-passthrough")
    ET.SubElement(domain, "on_poweroff").text = "destroy"
    ET.SubElement(domain, "on_reboot").text = "restart"
    ET.SubElement(domain, "on_crash").text = "destroy"
    devices = ET.SubElement(domain, "devices")
    _disk(devices, spec.overlay, "qcow2", "vda", "virtio")
    if spec.seed is not None:
        _disk(devices, spec.seed, "raw", "sdb", "sata", cdrom=True)
    if spec.network != USER_NETWORK:
        iface = ET.SubElement(devices, "interface", type="network")
        ET.SubElement(iface, "source", network=spec.network)
        ET.SubElement(iface, "model", type="virtio")
    elif spec.tags.ssh_port is None:
        iface = ET.SubElement(devices, "interface", type="user")
        ET.SubElement(iface, "model", type="virtio")
    serial = ET.SubElement(devices, "serial", type="file" if spec.console_log else "pty")
    if spec.console_log is not None:
        ET.SubElement(serial, "source", path=str(spec.console_log))
    ET.SubElement(serial, "target", port="0")
    ET.SubElement(devices, "memballoon", model="none")
    if spec.network == USER_NETWORK and spec.tags.ssh_port is not None:
        # libvirt's <interface type='user'> has no port forwards (before passt), so the NIC is given to QEMU
        # directly: the host's 127.0.0.1:PORT reaches the guest's SSH, nothing listens on other addresses.
        commandline = ET.SubElement(domain, f"{{{QEMU_NS}}}commandline")
        netdev = f"user,id=cpnet0,hostfwd=tcp:127.0.0.1:{spec.tags.ssh_port}-:22"
        # A fixed PCI slot far above those libvirt assigns: QEMU would otherwise give this NIC the disk's slot.
        for arg in ("-netdev", netdev, "-device", "virtio-net-pci,netdev=cpnet0,bus=pci.0,addr=0x1e"):
            ET.SubElement(commandline, f"{{{QEMU_NS}}}arg", value=arg)
    return ET.tostring(domain, encoding="unicode")


def _disk(devices: ET.Element, path: Path, fmt: str, target: str, bus: str, *, cdrom: bool = False) -> None:
    disk = ET.SubElement(devices, "disk", type="file", device="cdrom" if cdrom else "disk")
    ET.SubElement(disk, "driver", name="qemu", type=fmt)
    ET.SubElement(disk, "source", file=str(path))
    ET.SubElement(disk, "target", dev=target, bus=bus)
    if cdrom:
        ET.SubElement(disk, "readonly")
