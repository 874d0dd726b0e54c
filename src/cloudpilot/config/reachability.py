"""Whether the URL VMs are given can reach this server: a loopback one cannot, from a VM on a real cloud.

``cloudpilot server`` checks this at start and stops with the message (docs/configuration.md, provisioner).
Local clouds are fine with loopback: their "VMs" are processes on this host. A libcloud cloud is too when it sets
``allow_loopback_server_url`` (an emulator on this host whose "VMs" are not real machines, as in tests); the
opt-out is explicit because only the operator knows where a cloud's VMs run, and its API endpoint says nothing
about that (a devstack on this host has its API on loopback and VMs that cannot reach it).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from cloudpilot.config.clouds import LocalCloudConfig
from cloudpilot.config.models import ServerConfig


def is_loopback_host(host: str | None) -> bool:
    """A name or address that means "this machine" (``0.0.0.0`` and ``::`` included: they connect here)."""
    if not host:
        return True
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def unreachable_server_url(config: ServerConfig, default_url: str) -> str | None:
    """What to set, when VMs of a non-local cloud would be told a loopback URL; ``None`` when all is well.

    ``default_url`` is what VMs get without ``provisioner.server_url`` (``cloudpilot server``'s own address).
    """
    url = config.provisioner.server_url or default_url
    if not is_loopback_host(urlsplit(url).hostname):
        return None
    clouds = sorted(
        name
        for name, cloud in config.clouds.items()
        # Every cloud but local runs real VMs (libcloud, libvirt): loopback reaches the VM itself, not us. QEMU's
        # user-mode networking is no exception: the guest reaches this host's loopback as 10.0.2.2.
        if not isinstance(cloud, LocalCloudConfig) and not cloud.allow_loopback_server_url
    )
    if not clouds:
        return None
    given = "provisioner.server_url is" if config.provisioner.server_url else "provisioner.server_url is not set, so"
    return (
        f"{given} {url}, a loopback address that VMs of cloud(s) {', '.join(clouds)} cannot reach: set "
        "provisioner.server_url to this server's URL as those VMs see it (e.g. https://cloudpilot.example.org:8443)"
        ", or allow_loopback_server_url: true on a cloud whose VMs run on this host"
    )
