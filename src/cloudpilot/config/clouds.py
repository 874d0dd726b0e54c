"""Configuration of clouds (``clouds:``) and of the provisioner (``provisioner:``)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from cloudpilot.domain.vms import Flavor


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FlavorConfig(_Section):
    cores: int = Field(ge=1)
    memory_mb: int = Field(ge=1)
    size: str | None = Field(None, description="The provider's size/flavor id (libcloud); default: the name.")


class CapacityStep(_Section):
    at: datetime = Field(description="From when (ISO 8601; a time without zone is UTC).")
    max_vms: int = Field(ge=0, description="The cloud's max_vms from then on.")

    @field_validator("at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class _CloudCommon(_Section):
    flavors: dict[str, FlavorConfig] = Field(min_length=1, description="VM sizes cloudpilot may start here.")
    max_vms: int = Field(10, ge=0, description="Most VMs at once (every VM not yet destroyed counts).")
    max_cores: int | None = Field(None, ge=0, description="Most cores at once; unset: only max_vms limits.")
    max_memory_mb: int | None = Field(None, ge=0, description="Most memory at once.")
    start_rate_per_minute: float = Field(10.0, ge=1, description="Most VMs started in any minute.")
    price_per_core_hour: float = Field(0.0, ge=0, description="Cost, for choosing the cheapest cloud first.")
    priority: int = Field(0, description="Higher first when policy.cloud_order is priority (and on price ties).")
    site: str | None = Field(
        None, description="The site its VMs count as (jobs' sites allow/deny, pledges, site admins); default: its name."
    )
    tags: list[str] = Field([], description="Tags its pilots offer (platform, gpu, …).")
    vos: list[str] | None = Field(None, description="VOs it may run VMs for; unset: every VO.")
    images: dict[str, str] = Field({}, description="Image per VO ('*' for any other VO).")
    endorsed_images: dict[str, str] = Field(
        {}, description="Endorsed image (dc:identifier of an image list) -> this cloud's image id (docs/images.md)."
    )
    boot_timeout_seconds: float = Field(600.0, gt=0, description="A VM whose pilot has not registered by then fails.")
    expected_boot_seconds: float | None = Field(
        None,
        ge=0,
        description="What a boot takes here until VMs have booted and their median is known (it weighs the "
        "min-work rule); default: a local cloud's boot_seconds, unknown elsewhere.",
    )
    max_lifetime_seconds: float = Field(172_800.0, gt=0, description="A VM is drained, then destroyed, after this.")
    grace_secs: int = Field(600, ge=0, description="MJF grace_secs: notice a VM gets before a shutdown deadline.")
    hs06_per_core: float = Field(10.0, gt=0, description="HEPSPEC06 of one core (MJF hs06, accounting, vacuum).")
    mode: Literal["demand", "vacuum"] = Field(
        "demand", description="demand: VMs for waiting jobs; vacuum: the site keeps it filled (Vac/Vcycle)."
    )
    target_shares: dict[str, float] | None = Field(
        None, description="vacuum: target share per VO (weighted by HS06); default the VOs' shares."
    )
    fizzle_seconds: float = Field(600.0, ge=0, description="vacuum: a VM ending sooner without a code failed.")
    backoff_seconds: float = Field(600.0, ge=0, description="vacuum: how long a VO whose VMs failed is paused.")
    preemptible: bool = Field(False, description="Its VMs may vanish without warning (spot, volunteer, HLT).")
    capacity_schedule: list[CapacityStep] = Field(
        [], description="max_vms over time: the latest step whose time has come applies."
    )

    @field_validator("endorsed_images")
    @classmethod
    def _one_identifier_per_image(cls, mapping: dict[str, str]) -> dict[str, str]:
        seen: dict[str, str] = {}
        for identifier, image_id in mapping.items():
            if image_id in seen:
                raise ValueError(f"{seen[image_id]} and {identifier} both map to image {image_id}")
            seen[image_id] = identifier
        return mapping

    def served_vos(self) -> frozenset[str] | None:
        """VOs this cloud can start VMs for: those listed in ``vos``, and only those with an image when
        ``images`` names VOs without a ``"*"`` default. ``None``: every VO."""
        allowed = None if self.vos is None else frozenset(self.vos)
        if self.images and "*" not in self.images:
            with_image = frozenset(self.images)
            allowed = with_image if allowed is None else allowed & with_image
        return allowed

    def max_vms_at(self, now: float) -> int:
        """``max_vms`` as the capacity schedule sets it at ``now``."""
        current = self.max_vms
        for step in sorted(self.capacity_schedule, key=lambda s: s.at):
            if step.at.timestamp() <= now:
                current = step.max_vms
        return current

    def flavor_list(self) -> tuple[Flavor, ...]:
        return tuple(Flavor(name, f.cores, f.memory_mb) for name, f in self.flavors.items())

    def boot_estimate(self) -> float | None:
        """What a boot is expected to take before any was observed; None: unknown."""
        return self.expected_boot_seconds


class LocalCloudConfig(_CloudCommon):
    driver: Literal["local"]
    keep_vms_on_stop: bool = Field(
        False,
        description="Leave its VMs running when the server stops (a restart takes them back); by default they "
        "stop with the server and their jobs are requeued without spending an attempt.",
    )
    boot_seconds: float = Field(0.0, ge=0, description="How long a local VM takes to boot.")
    fail_share: float = Field(0.0, ge=0, le=1, description="Share of boots that end in error (tests, demos).")
    hang_share: float = Field(0.0, ge=0, le=1, description="Share of boots that never finish (tests, demos).")
    payload_user: str = Field(
        "nobody", min_length=1, max_length=32, description="The host user a local VM's payloads run as."
    )
    register_images: bool = Field(
        False, description="Fetch and verify every held endorsed image and boot it from that file (docs/images.md)."
    )

    def boot_estimate(self) -> float | None:
        # The boot delay plus a second for the pilot to start and register.
        return self.expected_boot_seconds if self.expected_boot_seconds is not None else self.boot_seconds + 1.0


# A driver_args/driver_kwargs value may be {env: NAME} or {file: PATH} (docs/configuration.md, "Secrets").
SECRET_SOURCES = ("env", "file")


class LibcloudCloudConfig(_CloudCommon):
    driver: Literal["libcloud"]
    provider: str = Field(description="Apache Libcloud provider name: ec2, openstack, gce, azure_arm, …")
    driver_args: dict[str, Any] = Field(
        {}, description="Credentials of the Libcloud driver (key, secret, …); a value may be {env: NAME} or {file: P}."
    )
    driver_kwargs: dict[str, Any] = Field(
        {}, description="Keyword arguments of the Libcloud driver (region, …); values as in driver_args."
    )
    options: dict[str, Any] = Field({}, description="network, subnet, keypair, security_groups, availability_zone.")
    openstack_cloud: str | None = Field(
        None, min_length=1, description="provider openstack: take auth and region from this entry of clouds.yaml."
    )
    clouds_yaml: Path | None = Field(
        None,
        description="The clouds.yaml to read; default the first of ./clouds.yaml, ~/.config/openstack/clouds.yaml, "
        "/etc/openstack/clouds.yaml.",
    )
    allow_loopback_server_url: bool = Field(
        False,
        description="Its VMs reach this host's loopback (a cloud emulator on this host, in tests); otherwise a "
        "loopback provisioner.server_url stops the server at start.",
    )
    ec2_moto_compat: bool = Field(False, description="Talk to a moto EC2 server (tests only).")

    @field_validator("driver_args", "driver_kwargs")
    @classmethod
    def _secret_references(cls, values: dict[str, Any]) -> dict[str, Any]:
        for key, value in values.items():
            if isinstance(value, dict) and set(value) & set(SECRET_SOURCES) and not _one_reference(value):
                raise ValueError(f"{key}: a secret reference is {{env: NAME}} or {{file: PATH}}, one of them")
        return values

    @model_validator(mode="after")
    def _clouds_yaml_for_openstack(self) -> LibcloudCloudConfig:
        if self.openstack_cloud is not None and self.provider != "openstack":
            raise ValueError(f"openstack_cloud applies to provider openstack, not {self.provider!r}")
        if self.clouds_yaml is not None and self.openstack_cloud is None:
            raise ValueError("clouds_yaml needs openstack_cloud (the entry to read)")
        return self


# The kernel command line of a direct kernel boot (deploy/images/build-debian.sh's image: root on the whole disk,
# console on the serial port the driver writes to a file, the NIC named eth0).
LIBVIRT_CMDLINE = "root=/dev/vda rw console=ttyS0 net.ifnames=0"


class SshContextConfig(_Section):
    key_file: Path = Field(description="The private key (OpenSSH or PEM) the provisioner logs in to VMs with.")
    user: str = Field("root", min_length=1, description="The account it logs in as (root, or one with sudo).")
    port: int = Field(22, ge=1, le=65535, description="SSH port on a VM with an address of its own.")
    connect_timeout_seconds: float = Field(10.0, gt=0, description="One connection attempt's timeout.")
    retry_seconds: float = Field(10.0, gt=0, description="Wait between attempts while the VM boots.")


class LibvirtCloudConfig(_CloudCommon):
    driver: Literal["libvirt"]
    uri: str = Field("qemu:///system", description="libvirt connection URI (a libvirtd on this host).")
    base_image: Path = Field(description="The disk every VM's qcow2 overlay is made on (raw or qcow2).")
    kernel: Path | None = Field(None, description="Direct kernel boot: the kernel (images without a boot loader).")
    initrd: Path | None = Field(None, description="Direct kernel boot: the initrd.")
    kernel_cmdline: str = Field(LIBVIRT_CMDLINE, description="Direct kernel boot: the command line.")
    network: str = Field(
        "user",
        min_length=1,
        description="user: QEMU user-mode networking (the host is 10.0.2.2); else a libvirt network's name.",
    )
    storage_dir: Path = Field(
        Path("/var/lib/libvirt/images/cloudpilot"),
        description="Where overlays and seeds go; libvirtd's QEMU user must be able to reach it.",
    )
    accel: Literal["auto", "kvm", "tcg"] = Field(
        "auto", description="auto: KVM if a probe domain boots with it, else TCG (logged at the first VM)."
    )
    context: Literal["cloud-init", "ssh", "none"] = Field(
        "cloud-init",
        description="cloud-init: user-data on a NoCloud seed; ssh: the provisioner logs in and starts the pilot "
        "(golden images without cloud-init); none: the image has the pilot baked in and reads cloudpilot.env from a "
        "config drive (an ISO labelled CLOUDPILOT) attached instead of the seed.",
    )
    ssh: SshContextConfig | None = Field(None, description="context: ssh — how the provisioner logs in.")
    allow_loopback_server_url: bool = Field(
        False, description="As for libcloud clouds; not needed with user networking (give http://10.0.2.2:PORT)."
    )

    @model_validator(mode="after")
    def _ssh_settings(self) -> LibvirtCloudConfig:
        if self.context == "ssh" and self.ssh is None:
            raise ValueError("context: ssh needs an ssh section (key_file at least)")
        if self.initrd is not None and self.kernel is None:
            raise ValueError("initrd needs kernel (a direct kernel boot)")
        return self


CloudConfig = Annotated[LocalCloudConfig | LibcloudCloudConfig | LibvirtCloudConfig, Field(discriminator="driver")]


class ProvisionerConfig(_Section):
    interval_seconds: float = Field(10.0, gt=0, description="How often the provisioner and VM monitor run.")
    server_url: str | None = Field(
        None, description="The URL VMs use to reach this server; default http://HOST:PORT of `cloudpilot server`."
    )
    lost_after_seconds: float = Field(300.0, gt=0, description="A running VM silent this long is lost.")
    pilot_idle_timeout_seconds: float = Field(300.0, gt=0, description="--idle-timeout given to VM pilots.")
    ca_file: Path | None = Field(
        None,
        description="PEM file of the CA that signed the server's certificate when it is not one the VMs' images "
        "trust: it goes into the user-data, for the pilot's download and the pilot (--ca-file).",
    )
    _ca_pem: str | None = PrivateAttr(None)

    @field_validator("ca_file")
    @classmethod
    def _readable_ca(cls, path: Path | None) -> Path | None:
        # Checked when the configuration is loaded: an unusable file stops the server at start, not a VM later.
        if path is not None:
            read_ca_pem(path)
        return path

    @model_validator(mode="after")
    def _keep_ca(self) -> ProvisionerConfig:
        self._ca_pem = read_ca_pem(self.ca_file) if self.ca_file is not None else None
        return self

    @property
    def ca_pem(self) -> str | None:
        """The certificates of ``ca_file`` (PEM text), or None."""
        return self._ca_pem


def _one_reference(value: dict[str, Any]) -> bool:
    [(source, name)] = value.items() if len(value) == 1 else [("", None)]
    return source in SECRET_SOURCES and isinstance(name, str) and bool(name)


MAX_CA_BYTES = 8192  # user-data holds at most 16 KB on EC2: room for a CA chain, not for a whole bundle


def read_ca_pem(path: Path) -> str:
    """The PEM certificates of ``path``; ValueError naming the file and what is wrong with it."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ValueError(f"{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    if len(text.encode()) > MAX_CA_BYTES:
        raise ValueError(f"{path} is larger than {MAX_CA_BYTES} bytes: give only the CA(s) of the server's chain")
    return text
