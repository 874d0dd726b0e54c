"""What differs between Libcloud providers for us: how options become ``ex_*`` arguments, where tags come back.

Every family takes the user-data as ``ex_userdata`` and our tags as ``ex_metadata`` (EC2 turns them into
instance tags, Nova into server metadata). A cloud's ``options`` use our names below; a key starting with
``ex_`` is passed to ``create_node`` unchanged, for the provider arguments this table does not name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from libcloud.compute.base import NodeDriver
from libcloud.compute.drivers.ec2 import BaseEC2NodeDriver, EC2NetworkSubnet, EC2NodeLocation, ExEC2AvailabilityZone
from libcloud.compute.drivers.openstack import OpenStackNetwork, OpenStackNodeDriver, OpenStackSecurityGroup

from cloudpilot.clouds.base import TAG_MANAGED

OptionBuilder = Callable[[NodeDriver, Any], dict[str, Any]]

# create_node arguments an option may not set: the adapter sets the user-data and our tags itself; one request
# starts one instance; and EC2's ClientToken would make AWS answer a relaunch of a destroyed VM id (allowed by
# the CloudDriver contract) with the terminated instance for a day or more, so idempotency rests on our tag.
RESERVED = frozenset({"ex_userdata", "ex_metadata", "ex_clienttoken", "ex_mincount", "ex_maxcount"})


def _names(value: Any) -> list[str]:
    """One name or a list of names, as the YAML may give either."""
    return [str(value)] if isinstance(value, str) else [str(v) for v in value]


def _ec2_zone(driver: NodeDriver, zone: Any) -> dict[str, Any]:
    # Libcloud's EC2 driver takes the zone only inside a location object of its own region.
    region = getattr(driver, "region_name", "")
    location = EC2NodeLocation(
        id=region,
        name=str(zone),
        country=getattr(driver, "country", ""),
        driver=driver,
        availability_zone=ExEC2AvailabilityZone(name=str(zone), zone_state="available", region_name=region),
    )
    return {"location": location}


def _openstack_groups(driver: NodeDriver, value: Any) -> dict[str, Any]:
    # Nova wants security groups by name; the driver reads nothing but .name from these objects.
    return {
        "ex_security_groups": [
            OpenStackSecurityGroup(id=None, tenant_id=None, name=n, description="", driver=driver)
            for n in _names(value)
        ]
    }


def _openstack_networks(driver: NodeDriver, value: Any) -> dict[str, Any]:
    # Nova wants networks by id; the driver reads nothing but .id from these objects.
    return {"networks": [OpenStackNetwork(id=n, name=n, cidr=None, driver=driver) for n in _names(value)]}


@dataclass(frozen=True, slots=True)
class ProviderProfile:
    """How one family of Libcloud drivers takes our launch options and returns our tags."""

    family: str
    tag_keys: tuple[str, ...]  # keys of ``node.extra`` that hold the instance's tags (first present wins)
    size_key: str | None = None  # key of ``node.extra`` that holds the provider's size id
    options: Mapping[str, OptionBuilder] = field(default_factory=dict)
    # Generic drivers may need the provider's own image/size objects; EC2 and Nova take bare ids, and listing
    # every public AMI of a region would take minutes.
    resolve_by_listing: bool = True
    list_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def create_kwargs(self, driver: NodeDriver, options: Mapping[str, Any]) -> dict[str, Any]:
        """The ``create_node`` keyword arguments for a cloud's ``options`` (already validated)."""
        kwargs: dict[str, Any] = {}
        for key, value in options.items():
            kwargs.update({key: value} if key.startswith("ex_") else self.options[key](driver, value))
        return kwargs

    def unknown_options(self, options: Mapping[str, Any]) -> list[str]:
        """Option names this profile does not accept (not in its table, or reserved for the adapter)."""
        return sorted(k for k in options if k in RESERVED or (not k.startswith("ex_") and k not in self.options))

    def size_id(self, extra: Mapping[str, Any]) -> str | None:
        value = extra.get(self.size_key) if self.size_key else None
        return str(value) if value else None

    def tags(self, extra: Mapping[str, Any]) -> dict[str, str]:
        for key in self.tag_keys:
            value = extra.get(key)
            if isinstance(value, Mapping):
                return {str(k): str(v) for k, v in value.items()}
        return {}


EC2 = ProviderProfile(
    family="ec2",
    tag_keys=("tags",),
    size_key="instance_type",
    options={
        "keypair": lambda d, v: {"ex_keyname": str(v)},
        "security_groups": lambda d, v: {"ex_security_groups": _names(v)},
        "security_group_ids": lambda d, v: {"ex_security_group_ids": _names(v)},
        "subnet": lambda d, v: {"ex_subnet": EC2NetworkSubnet(id=str(v), name=str(v), state="available")},
        "availability_zone": _ec2_zone,
        "assign_public_ip": lambda d, v: {"ex_assign_public_ip": bool(v)},
    },
    resolve_by_listing=False,
    # Let EC2 filter by our tag: an account may hold many instances that are not ours.
    list_kwargs={"ex_filters": {"tag-key": TAG_MANAGED}},
)

OPENSTACK = ProviderProfile(
    family="openstack",
    tag_keys=("metadata",),
    size_key="flavorId",
    options={
        "keypair": lambda d, v: {"ex_keyname": str(v)},
        "security_groups": _openstack_groups,
        "network": _openstack_networks,
        "networks": _openstack_networks,
        "availability_zone": lambda d, v: {"ex_availability_zone": str(v)},
        "config_drive": lambda d, v: {"ex_config_drive": bool(v)},
    },
    resolve_by_listing=False,
)

GENERIC = ProviderProfile(
    family="generic",
    tag_keys=("tags", "metadata"),
    options={"keypair": lambda d, v: {"ex_keyname": str(v)}},
)


def profile_for(driver_cls: type[NodeDriver]) -> ProviderProfile:
    """The profile of a driver class; EC2- and OpenStack-derived providers share their parent's."""
    if issubclass(driver_cls, BaseEC2NodeDriver):
        return EC2
    if issubclass(driver_cls, OpenStackNodeDriver):
        return OPENSTACK
    return GENERIC
