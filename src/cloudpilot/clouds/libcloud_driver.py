"""A :class:`~cloudpilot.clouds.base.CloudDriver` for any Apache Libcloud compute provider (EC2, OpenStack, …).

Configuration of one cloud (the YAML's ``clouds`` entry maps onto the constructor)::

    provider: openstack                # a Libcloud Provider name, resolved with get_driver()
    driver_args:                       # the credentials; every string here is redacted from errors
      key: demo                        # access key id / user name
      secret: s3cret                   # secret key / password
    driver_kwargs:                     # the rest of the Libcloud driver's constructor arguments
      ex_force_auth_url: https://keystone.example.org:5000
      ex_tenant_name: physics
      api_version: "2.2"
    images: {lhcb: 5f1c…, "*": 0a9e…}  # VO -> image id; "*" is the default
    flavors: {small: m1.small}         # our flavor name -> the provider's size id
    options:                           # see cloudpilot.clouds.libcloud_profiles
      network: 0c4d…
      keypair: ops
      security_groups: [pilots]

Every instance gets the tags ``TAG_MANAGED=true`` and ``TAG_VM_ID=<vm id>`` (EC2 instance tags, Nova server
metadata): ``list`` returns tagged instances only, and ``create`` returns the instance already carrying the
request's VM id instead of starting a second one.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from libcloud.compute.base import Node, NodeDriver, NodeImage, NodeSize
from libcloud.compute.drivers.ec2 import EC2NodeDriver
from libcloud.compute.providers import get_driver
from libcloud.compute.types import NodeState

from cloudpilot.clouds.base import TAG_MANAGED, TAG_VM_ID, Instance, InstanceState, LaunchRequest
from cloudpilot.clouds.errors import CloudConfigError, CloudError, Fatal
from cloudpilot.clouds.libcloud_catalog import endpoint_error
from cloudpilot.clouds.libcloud_ec2 import PostEC2NodeDriver
from cloudpilot.clouds.libcloud_errors import Redactor, config_error, is_not_found, translate
from cloudpilot.clouds.libcloud_moto import MotoEC2NodeDriver
from cloudpilot.clouds.libcloud_profiles import ProviderProfile, profile_for

T = TypeVar("T")

# Libcloud's NodeState -> ours. Libcloud already maps each provider's own states onto NodeState with a table
# per driver; anything missing here is UNKNOWN rather than a guess.
STATE_MAP: Mapping[NodeState, InstanceState] = {
    NodeState.PENDING: InstanceState.PENDING,
    NodeState.STARTING: InstanceState.PENDING,
    NodeState.RUNNING: InstanceState.RUNNING,
    NodeState.REBOOTING: InstanceState.RUNNING,
    NodeState.RECONFIGURING: InstanceState.RUNNING,
    NodeState.MIGRATING: InstanceState.RUNNING,
    NodeState.UPDATING: InstanceState.RUNNING,
    NodeState.NORMAL: InstanceState.RUNNING,
    NodeState.STOPPING: InstanceState.STOPPED,
    NodeState.STOPPED: InstanceState.STOPPED,
    NodeState.SUSPENDED: InstanceState.STOPPED,
    NodeState.PAUSED: InstanceState.STOPPED,
    NodeState.ERROR: InstanceState.ERROR,
    NodeState.TERMINATED: InstanceState.TERMINATED,
    NodeState.UNKNOWN: InstanceState.UNKNOWN,
}

DEFAULT_IMAGE_KEY = "*"
DEFAULT_TIMEOUT = 60.0  # seconds per HTTP request; Libcloud's own default is to wait forever
# driver_kwargs whose values are secrets (e.g. an AWS session token, a pre-issued Keystone token)
_SECRET_KWARG = re.compile(r"secret|password|token|key", re.IGNORECASE)


class LibcloudDriver:
    """One cloud reached through an Apache Libcloud compute driver."""

    def __init__(
        self,
        name: str,
        provider: str,
        driver_args: Mapping[str, Any],
        driver_kwargs: Mapping[str, Any],
        images: Mapping[str, str],
        flavors: Mapping[str, str],
        options: Mapping[str, Any] | None = None,
        ec2_moto_compat: bool = False,
    ) -> None:
        """Make the Libcloud driver; a bad provider name, argument or option is a :class:`CloudConfigError`.

        ``ec2_moto_compat`` selects :class:`~cloudpilot.clouds.libcloud_moto.MotoEC2NodeDriver` (plain HTTP,
        SigV4, moto's XML namespace): for tests against moto's EC2 server only.
        """
        self.name = name
        self.images = dict(images)
        self.flavors = dict(flavors)
        self.options = dict(options or {})
        self._redact = Redactor(_secrets(driver_args, driver_kwargs))
        self._sizes: dict[str, NodeSize] | None = None

        driver_cls = self._driver_class(provider, ec2_moto_compat)
        self._profile: ProviderProfile = profile_for(driver_cls)
        unknown = self._profile.unknown_options(self.options)
        if unknown:
            raise CloudConfigError(
                name,
                f"options {unknown} are not accepted for provider {provider!r} (known: "
                f"{sorted(self._profile.options)}, or an ex_* argument of its create_node the adapter does not set)",
            )
        misspelt = _unknown_extension_args(driver_cls, {**driver_args, **driver_kwargs})
        if misspelt:
            raise CloudConfigError(
                name,
                f"driver arguments {misspelt} are not accepted by provider {provider!r} "
                f"(its ex_* arguments: {sorted(_init_parameters(driver_cls, 'ex_'))})",
            )
        clash = sorted(set(driver_args) & set(driver_kwargs))
        if clash:
            raise CloudConfigError(name, f"{clash} given in both driver_args and driver_kwargs")
        kwargs = {"timeout": DEFAULT_TIMEOUT, **driver_args, **driver_kwargs}
        # Nothing is sent yet (drivers connect on first use): whatever fails here is the configuration's fault.
        try:
            self._driver: NodeDriver = driver_cls(**kwargs)
            self._option_kwargs = self._profile.create_kwargs(self._driver, self.options)
        except Exception as exc:
            raise config_error(exc, name, f"configure the {provider!r} driver", self._redact) from exc

    def create(self, request: LaunchRequest) -> Instance:
        """Start an instance for ``request`` or return the one that already carries its VM id."""
        existing = [i for i in self.list() if i.vm_id == request.vm_id]
        if existing:
            return existing[0]
        image = self._image(request)
        size = self._size(request.flavor)
        tags = {**request.tags, TAG_MANAGED: "true", TAG_VM_ID: request.vm_id}  # ours cannot be overridden
        kwargs: dict[str, Any] = {
            **self._option_kwargs,
            "name": f"cloudpilot-{request.vm_id}",
            "image": image,
            "size": size,
            "ex_userdata": request.user_data,
            "ex_metadata": tags,
        }
        redact = self._redact.with_user_data(request.user_data)
        node = self._call(f"create {request.vm_id}", lambda: self._driver.create_node(**kwargs), redact)
        if not isinstance(node, Node):  # ex_maxcount is reserved, so this is a driver we do not understand
            raise Fatal(self.name, f"create {request.vm_id}: the provider returned {type(node).__name__}, not a node")
        instance = self._instance(node, known_tags=tags)
        return Instance(instance.instance_id, request.vm_id, instance.state, request.flavor, instance.created_at)

    def list(self) -> list[Instance]:
        """Our instances (tagged ``TAG_MANAGED``) in any state but terminated."""
        nodes = self._call("list instances", lambda: self._driver.list_nodes(**self._profile.list_kwargs))
        instances = []
        for node in nodes:
            if self._profile.tags(node.extra).get(TAG_MANAGED) != "true":
                continue
            instance = self._instance(node)
            if instance.state is not InstanceState.TERMINATED:
                instances.append(instance)
        return instances

    def destroy(self, instance_id: str) -> None:
        """Terminate ``instance_id``; one the cloud does not know (any more) is already destroyed."""
        node = Node(
            id=instance_id, name=None, state=NodeState.UNKNOWN, public_ips=[], private_ips=[], driver=self._driver
        )
        try:
            self._driver.destroy_node(node)
        except Exception as exc:
            if is_not_found(exc):
                return
            raise self._error(exc, f"destroy {instance_id}", self._redact) from exc

    # --- internals ---

    def _driver_class(self, provider: str, ec2_moto_compat: bool) -> type[NodeDriver]:
        try:
            cls: type[NodeDriver] = get_driver(provider)
        except Exception as exc:  # AttributeError if unknown; a bare Exception if retired; ImportError
            raise CloudConfigError(self.name, f"Libcloud has no usable compute provider {provider!r}: {exc}") from exc
        if ec2_moto_compat and cls is not EC2NodeDriver:
            raise CloudConfigError(self.name, f"ec2_moto_compat applies to provider 'ec2' only, not {provider!r}")
        if cls is EC2NodeDriver:  # RunInstances as a POST: the user-data, with the VM's token, in no URL
            return MotoEC2NodeDriver if ec2_moto_compat else PostEC2NodeDriver
        return cls

    def _call(self, action: str, fn: Callable[[], T], redact: Redactor | None = None) -> T:
        """Run one Libcloud call, translating whatever it raises."""
        try:
            return fn()
        except Exception as exc:
            raise self._error(exc, action, redact or self._redact) from exc

    def _error(self, exc: Exception, action: str, redact: Redactor) -> CloudError:
        # An endpoint missing from the catalog is the configuration's fault, which translate() cannot tell.
        misconfigured = endpoint_error(exc, getattr(self._driver, "connection", None), self.name, action)
        return misconfigured or translate(exc, self.name, action, redact)

    def _image(self, request: LaunchRequest) -> NodeImage:
        image_id = request.image or self.images.get(request.vo) or self.images.get(DEFAULT_IMAGE_KEY)
        if not image_id:
            raise CloudConfigError(self.name, f"no image configured for VO {request.vo!r} and no '*' default")
        if not self._profile.resolve_by_listing:
            return NodeImage(id=image_id, name=image_id, driver=self._driver)
        images = self._call("list images", self._driver.list_images)
        for image in images:
            if image.id == image_id:
                return image
        raise CloudConfigError(self.name, f"image {image_id!r} (VO {request.vo!r}) is not offered by the cloud")

    def _size(self, flavor: str) -> NodeSize:
        size_id = self.flavors.get(flavor)
        if size_id is None:
            raise CloudConfigError(self.name, f"flavor {flavor!r} is not configured (known: {sorted(self.flavors)})")
        if not self._profile.resolve_by_listing:
            return NodeSize(
                id=size_id, name=size_id, ram=None, disk=None, bandwidth=None, price=None, driver=self._driver
            )
        if self._sizes is None:  # sizes rarely change; one listing per driver lifetime is enough
            self._sizes = {s.id: s for s in self._call("list sizes", self._driver.list_sizes)}
        if size_id not in self._sizes:
            raise CloudConfigError(self.name, f"size {size_id!r} (flavor {flavor!r}) is not offered by the cloud")
        return self._sizes[size_id]

    def _instance(self, node: Node, known_tags: Mapping[str, str] | None = None) -> Instance:
        tags = known_tags if known_tags is not None else self._profile.tags(node.extra)
        size_id = self._profile.size_id(node.extra)
        flavors_by_size = {size: flavor for flavor, size in self.flavors.items()}
        return Instance(
            instance_id=str(node.id),
            vm_id=tags.get(TAG_VM_ID),
            state=STATE_MAP.get(node.state, InstanceState.UNKNOWN),
            flavor=flavors_by_size.get(size_id) if size_id else None,
            created_at=node.created_at.timestamp() if node.created_at else None,
        )


def _secrets(driver_args: Mapping[str, Any], driver_kwargs: Mapping[str, Any]) -> list[str]:
    """Strings to keep out of error messages: every credential, and driver_kwargs named like one."""
    values = [v for v in driver_args.values() if isinstance(v, str)]
    values += [v for k, v in driver_kwargs.items() if isinstance(v, str) and _SECRET_KWARG.search(k)]
    return values


def _init_parameters(driver_cls: type, prefix: str = "") -> set[str]:
    """Named parameters of the constructors along the class's MRO (Libcloud passes ``**kwargs`` up the chain)."""
    names: set[str] = set()
    for klass in driver_cls.__mro__:
        init = vars(klass).get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {n for n in names if n.startswith(prefix)}


def _unknown_extension_args(driver_cls: type, given: Mapping[str, Any]) -> list[str]:
    """``ex_*`` arguments no constructor names: Libcloud would swallow a misspelt one in ``**kwargs`` and
    ignore it. Only ``ex_*`` are checked; other keyword arguments (timeout, proxy_url, …) are read from kwargs."""
    known = _init_parameters(driver_cls, "ex_")
    return sorted(k for k in given if k.startswith("ex_") and k not in known)
