"""A cloud of VMs on a libvirt host (``driver: libvirt``): one persistent domain per VM.

Each VM is a QEMU domain sized by its flavor (vCPUs, memory) that boots a qcow2 overlay on the cloud's base image
and, unless it is contextualized over SSH, a NoCloud seed (cidata ISO) holding its user-data, or for an image with
the pilot baked in (``context: none``) a config drive holding its ``cloudpilot.env``. Our tags live in the
domain's metadata; ``create`` finds an existing domain by our VM id before making one, and ``destroy`` stops and
undefines the domain and removes its files. A guest that powers itself off stays defined, shut off (``stopped``),
until the VM monitor destroys it. KVM is used when a probe shows it works (:mod:`.libvirt_accel`), TCG otherwise.

libvirt-python is imported when the first connection is opened, so the package works without it installed.
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path
from typing import Any

from cloudpilot.clouds.base import Instance, InstanceState, LaunchRequest
from cloudpilot.clouds.errors import BootFailed, CloudConfigError, CloudUnavailable, QuotaExceeded
from cloudpilot.clouds.libvirt_accel import KVM_FORCED, TCG_FORCED, Accel, probe_accel
from cloudpilot.clouds.libvirt_files import (
    ConfigDrive,
    ToolFailed,
    free_local_port,
    image_format,
    make_config_drive,
    make_overlay,
    make_seed,
)
from cloudpilot.clouds.libvirt_xml import (
    METADATA_NS,
    USER_NETWORK,
    DomainSpec,
    DomainTags,
    domain_name,
    domain_xml,
    parse_metadata,
)
from cloudpilot.domain.vms import Flavor

log = logging.getLogger("cloudpilot.clouds.libvirt")

DEFAULT_CMDLINE = "root=/dev/vda rw console=ttyS0 net.ifnames=0"

# libvirt's domain states, one InstanceState each. A domain that shut off because QEMU failed or the guest
# crashed is an error; one the guest powered off is stopped.
_STATES = {
    0: InstanceState.PENDING,  # VIR_DOMAIN_NOSTATE
    1: InstanceState.RUNNING,  # VIR_DOMAIN_RUNNING
    2: InstanceState.RUNNING,  # VIR_DOMAIN_BLOCKED (idle in the guest)
    3: InstanceState.RUNNING,  # VIR_DOMAIN_PAUSED
    4: InstanceState.RUNNING,  # VIR_DOMAIN_SHUTDOWN (being shut down)
    5: InstanceState.STOPPED,  # VIR_DOMAIN_SHUTOFF
    6: InstanceState.ERROR,  # VIR_DOMAIN_CRASHED
    7: InstanceState.RUNNING,  # VIR_DOMAIN_PMSUSPENDED
}
_SHUTOFF, _SHUTOFF_CRASHED, _SHUTOFF_FAILED = 5, 3, 6


class LibvirtDriver:
    """One ``clouds:`` entry with ``driver: libvirt``. Files go to ``storage_dir/<domain name>/``."""

    def __init__(
        self,
        name: str,
        uri: str,
        flavors: dict[str, Flavor],
        base_image: Path,
        storage_dir: Path,
        *,
        max_vms: int = 10,
        network: str = USER_NETWORK,
        kernel: Path | None = None,
        initrd: Path | None = None,
        cmdline: str = DEFAULT_CMDLINE,
        accel: str = "auto",
        attach_seed: bool = True,
        config_drive: ConfigDrive | None = None,
        ssh_forward: bool = False,
    ) -> None:
        self.name = name
        self.uri = uri
        self.flavors = dict(flavors)
        self.base_image = base_image
        self.storage_dir = storage_dir
        self.max_vms = max_vms
        self.network = network
        self.kernel, self.initrd, self.cmdline = kernel, initrd, cmdline
        self.accel_setting = accel
        self.attach_seed = attach_seed  # False for SSH contextualization: the image has no cloud-init to read it
        # context: none: the seed is a config drive holding request.user_data as cloudpilot.env, which the baked
        # pilot's boot script reads (context/config_drive.py), not a cidata volume cloud-init would act on.
        self.config_drive = config_drive
        self.ssh_forward = ssh_forward and network == USER_NETWORK  # a host port to the guest's SSH
        self._conn: Any = None
        self._accel: Accel | None = None
        self._lock = threading.RLock()

    # -- the port ----------------------------------------------------------------------------------------------

    def create(self, request: LaunchRequest) -> Instance:
        flavor = self.flavors.get(request.flavor)
        if flavor is None:
            raise CloudConfigError(self.name, f"unknown flavor {request.flavor!r} (known: {sorted(self.flavors)})")
        base = Path(request.image) if request.image else self.base_image
        if not base.is_file():
            raise CloudConfigError(self.name, f"base image {base} does not exist")
        with self._lock:
            ours = self._ours()
            for dom, tags in ours:
                if tags.vm_id == request.vm_id:
                    return self._instance(dom, tags)
            if len(ours) >= self.max_vms:
                raise QuotaExceeded(self.name, f"{len(ours)} of max_vms {self.max_vms} VMs exist")
            return self._define_and_start(request, flavor, base)

    def list(self) -> list[Instance]:
        with self._lock:
            return [self._instance(dom, tags) for dom, tags in self._ours()]

    def destroy(self, instance_id: str) -> None:
        libvirt = _libvirt()
        with self._lock:
            conn = self._connection()
            try:
                dom = conn.lookupByUUIDString(instance_id)
            except libvirt.libvirtError:
                return  # no such domain (or not a UUID at all): gone is gone
            tags = self._tags(dom)
            if tags is None or tags.cloud != self.name:
                return  # not ours: never touch another cloud's or another program's domain
            self._remove(dom)

    # -- beyond the port ---------------------------------------------------------------------------------------

    @property
    def accel(self) -> Accel:
        """KVM or TCG for this cloud's domains, probed once (and logged) on first use."""
        with self._lock:
            if self._accel is None:
                if self.accel_setting == "tcg":
                    self._accel = TCG_FORCED
                elif self.accel_setting == "kvm":
                    self._accel = KVM_FORCED
                else:
                    self.storage_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
                    self._accel = probe_accel(self._connection(), self.kernel, self.initrd, self.storage_dir)
                log.info("cloud %s: libvirt domains use %s (%s)", self.name, self._accel.name, self._accel.reason)
            return self._accel

    def ssh_endpoint(self, instance_id: str) -> tuple[str, int] | None:
        """Where the VM's SSH server answers: 127.0.0.1 and the forwarded port (user-mode networking), or the
        address of its DHCP lease (a libvirt network); None while it has none (or it is gone)."""
        libvirt = _libvirt()
        with self._lock:
            try:
                dom = self._connection().lookupByUUIDString(instance_id)
            except libvirt.libvirtError:
                return None
            tags = self._tags(dom)
            if tags is None or tags.cloud != self.name:
                return None
            if self.network == USER_NETWORK:
                return ("127.0.0.1", tags.ssh_port) if tags.ssh_port is not None else None
            try:
                interfaces = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0)
            except libvirt.libvirtError:
                return None
        for iface in interfaces.values():
            for addr in iface.get("addrs") or []:
                if addr.get("type") == libvirt.VIR_IP_ADDR_TYPE_IPV4:
                    return (str(addr["addr"]), 22)
        return None

    def console_log(self, instance_id: str) -> Path | None:
        """The serial console file of a VM (for tests and for an operator looking into a failed boot)."""
        for dom, tags in self._ours():
            if dom.UUIDString() == instance_id:
                return self._files(tags.vm_id) / "console.log"
        return None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                finally:
                    self._conn = None

    # -- inside ------------------------------------------------------------------------------------------------

    def _define_and_start(self, request: LaunchRequest, flavor: Flavor, base: Path) -> Instance:
        import time

        libvirt = _libvirt()
        conn = self._connection()
        accel = self.accel
        files = self._files(request.vm_id)
        shutil.rmtree(files, ignore_errors=True)  # left by a create that died half-way
        files.mkdir(mode=0o755, parents=True)
        name = domain_name(self.name, request.vm_id)
        tags = DomainTags(
            self.name,
            request.vm_id,
            request.flavor,
            time.time(),
            free_local_port() if self.ssh_forward else None,
        )
        try:
            make_overlay(base, image_format(base), files / "disk.qcow2")
            seed = None
            if self.attach_seed and self.config_drive is not None:
                seed = files / "config-drive.iso"
                make_config_drive(files, seed, self.config_drive, request.user_data)
            elif self.attach_seed:
                seed = files / "seed.iso"
                make_seed(files, seed, request.user_data, request.vm_id, name[:63])
        except ToolFailed as exc:
            shutil.rmtree(files, ignore_errors=True)
            raise CloudConfigError(self.name, str(exc)) from None
        spec = DomainSpec(
            name=name,
            tags=tags,
            vcpus=flavor.cores,
            memory_mb=flavor.memory_mb,
            overlay=files / "disk.qcow2",
            seed=seed,
            accel=accel.domain_type,
            network=self.network,
            kernel=self.kernel,
            initrd=self.initrd,
            cmdline=self.cmdline if self.kernel is not None else None,
            console_log=files / "console.log",
        )
        try:
            dom = conn.defineXML(domain_xml(spec))
        except libvirt.libvirtError as exc:
            shutil.rmtree(files, ignore_errors=True)
            raise _translate(self.name, exc, "defining the domain") from None
        try:
            dom.create()
        except libvirt.libvirtError as exc:
            self._remove(dom)
            raise BootFailed(self.name, f"domain {name} did not start: {exc.get_error_message()}") from None
        log.info("cloud %s: domain %s started (%s) for VM %s", self.name, name, accel.name, request.vm_id)
        return self._instance(dom, tags)

    def _remove(self, dom: Any) -> None:
        libvirt = _libvirt()
        tags = self._tags(dom)
        try:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise _translate(self.name, exc, "removing the domain") from None
        if tags is not None:
            shutil.rmtree(self._files(tags.vm_id), ignore_errors=True)

    def _ours(self) -> list[tuple[Any, DomainTags]]:
        libvirt = _libvirt()
        try:
            domains = self._connection().listAllDomains(0)
        except libvirt.libvirtError as exc:
            self._conn = None  # reconnect next time (libvirtd restarted?)
            raise _translate(self.name, exc, "listing domains") from None
        ours = []
        for dom in domains:
            tags = self._tags(dom)
            if tags is not None and tags.cloud == self.name:
                ours.append((dom, tags))
        return ours

    @staticmethod
    def _tags(dom: Any) -> DomainTags | None:
        libvirt = _libvirt()
        try:
            text = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS, 0)
        except libvirt.libvirtError:
            return None  # no metadata of ours, or the domain went away meanwhile
        return parse_metadata(text)

    def _instance(self, dom: Any, tags: DomainTags) -> Instance:
        libvirt = _libvirt()
        try:
            state, reason = dom.state()
        except libvirt.libvirtError:
            return Instance(dom.UUIDString(), tags.vm_id, InstanceState.TERMINATED, tags.flavor, tags.created_at)
        mapped = _STATES.get(state, InstanceState.UNKNOWN)
        if state == _SHUTOFF and reason in (_SHUTOFF_CRASHED, _SHUTOFF_FAILED):
            mapped = InstanceState.ERROR
        return Instance(dom.UUIDString(), tags.vm_id, mapped, tags.flavor, tags.created_at)

    def _files(self, vm_id: str) -> Path:
        return self.storage_dir / domain_name(self.name, vm_id)

    def _connection(self) -> Any:
        libvirt = _libvirt()
        if self._conn is not None and self._conn.isAlive():
            return self._conn
        try:
            self._conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise CloudUnavailable(self.name, f"cannot connect to {self.uri}: {exc.get_error_message()}") from None
        return self._conn


def _libvirt() -> Any:
    try:
        import libvirt
    except ImportError:
        raise CloudConfigError("libvirt", "libvirt-python is not installed (pip install libvirt-python)") from None
    return libvirt


def _translate(cloud: str, exc: Any, doing: str) -> Exception:
    """libvirt's error as ours: a lost connection is retryable, anything else is the configuration's."""
    libvirt = _libvirt()
    message = f"{doing}: {exc.get_error_message()}"
    if exc.get_error_code() in (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_RPC):
        return CloudUnavailable(cloud, message)
    return CloudConfigError(cloud, message)
