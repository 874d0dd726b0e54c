"""Clusters of services: the definition a user posts, its checks, the start order, and context templates.

A cluster definition names services; each has an offering (a flavor, or cores/memory), ``min``/``max``
instances, the services it ``depends_on`` and a context (user-data parts) that may use ``{{ head.address }}``
and the like. :func:`check_definition` refuses what cannot work — an unknown service, a dependency cycle
(named), bounds the wrong way round, a template reference that could never be filled — before anything is
stored. :func:`start_order` is the order services come up in; teardown goes the other way.

Template values are only ever VM ids, IP addresses, port numbers and the names this module validated, so
substituting them into YAML or shell text cannot change its structure.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from cloudpilot.domain.errors import DomainError, IllegalTransition

NAME = r"[A-Za-z][A-Za-z0-9_-]{0,62}"
_NAME = re.compile(NAME)
MAX_INSTANCES = 500  # per service: far beyond any cloud quota, but keeps a typo from asking for millions
RESERVED = frozenset({"self", "cluster"})  # template namespaces, so no service may be called that

# ``{{ head.address }}``: a namespace (a service, ``self`` or ``cluster``) and an attribute.
_BRACES = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_REFERENCE = re.compile(rf"\s*({NAME})\.([a-z_]+)\s*")

SERVICE_ATTRIBUTES = ("id", "ids", "address", "addresses", "port", "ports", "endpoint", "endpoints", "count")
SELF_ATTRIBUTES = ("id", "service", "cluster")  # known when the instance's user-data is built
SELF_REPORTED = ("address", "port", "endpoint")  # known once its agent has reported: only in health_url
CLUSTER_ATTRIBUTES = ("id", "name")


class ClusterDefinitionError(DomainError):
    """A definition that cannot be instantiated; ``field`` is the dotted path of the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContextPart(_Model):
    """One user-data part (rendered as a template), appended after cloudpilot's own part."""

    content_type: str = Field(
        "text/cloud-config", pattern=r"^text/[a-z0-9][a-z0-9.+-]*$", description="text/cloud-config, …"
    )
    content: str = Field(min_length=1, max_length=16384)
    filename: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class ServiceContext(_Model):
    template: str | None = Field(
        None, max_length=16384, description="One part: a '#cloud-config' document or a '#!' script."
    )
    parts: list[ContextPart] = Field([], max_length=20)

    def all_parts(self) -> list[ContextPart]:
        """``template`` as a part of the type its first line says, then ``parts``."""
        found = []
        if self.template is not None:
            kind = "text/x-shellscript" if self.template.startswith("#!") else "text/cloud-config"
            found.append(ContextPart(content_type=kind, content=self.template))
        return found + list(self.parts)


class ServiceDefinition(_Model):
    cloud: str | None = Field(None, description="Default: the cluster's cloud.")
    flavor: str | None = Field(None, description="A flavor of the cloud; or give cores/memory_mb.")
    cores: int | None = Field(None, ge=1, description="Smallest flavor with at least this many cores.")
    memory_mb: int | None = Field(None, ge=1, description="… and at least this much memory.")
    disk_gb: int | None = Field(None, ge=1, description="Recorded; cloud flavors declare no disk to match.")
    min: int = Field(1, ge=0, le=MAX_INSTANCES)
    max: int | None = Field(None, ge=0, le=MAX_INSTANCES, description="Default: min.")
    instances: int | None = Field(None, ge=0, le=MAX_INSTANCES, description="How many to start with; default min.")
    depends_on: list[str] = Field([], max_length=50)
    context: ServiceContext = Field(default_factory=ServiceContext)
    health_url: str | None = Field(None, max_length=2000, description="Ready when it answers 2xx.")

    @property
    def upper(self) -> int:
        return self.min if self.max is None else self.max

    @property
    def initial(self) -> int:
        return self.min if self.instances is None else self.instances


class ClusterDefinition(_Model):
    name: str = Field(pattern=rf"^{NAME}$")
    cloud: str | None = Field(None, description="The cloud of services that name none.")
    vo: str | None = Field(None, description="The VO its VMs are accounted to (a user's token sets it).")
    services: dict[str, ServiceDefinition] = Field(min_length=1, max_length=50)

    def cloud_of(self, service: str) -> str | None:
        return self.services[service].cloud or self.cloud


# --- checks ---------------------------------------------------------------------------------------------------


def check_definition(definition: ClusterDefinition) -> list[str]:
    """Raise :class:`ClusterDefinitionError` for the first problem; return the start order when there is none.

    Clouds and flavors are checked by the caller, which knows the configuration."""
    services = definition.services
    for name, service in services.items():
        where = f"services.{name}"
        if not _NAME.fullmatch(name):
            raise ClusterDefinitionError(where, f"{name!r} is not a service name (letters, digits, '-', '_')")
        if name in RESERVED:
            raise ClusterDefinitionError(where, f"{name!r} is reserved for templates; call the service otherwise")
        if service.min > service.upper:
            raise ClusterDefinitionError(f"{where}.max", f"max ({service.upper}) is below min ({service.min})")
        if not service.min <= service.initial <= service.upper:
            raise ClusterDefinitionError(
                f"{where}.instances", f"{service.initial} is outside min {service.min} and max {service.upper}"
            )
        if service.flavor is not None and (service.cores is not None or service.memory_mb is not None):
            raise ClusterDefinitionError(f"{where}.flavor", "give a flavor or cores/memory_mb, not both")
        if definition.cloud_of(name) is None:
            raise ClusterDefinitionError(f"{where}.cloud", "no cloud: give one for the cluster or for the service")
        for dep in service.depends_on:
            if dep not in services:
                known = ", ".join(services)
                raise ClusterDefinitionError(
                    f"{where}.depends_on", f"unknown service {dep!r} (this cluster has: {known})"
                )
    cycle = find_cycle({name: s.depends_on for name, s in services.items()})
    if cycle:
        raise ClusterDefinitionError(
            f"services.{cycle[0]}.depends_on", f"dependency cycle: {' -> '.join([*cycle, cycle[0]])}"
        )
    for name, service in services.items():
        _check_templates(definition, name, service)
    return start_order(definition)


def _check_templates(definition: ClusterDefinition, name: str, service: ServiceDefinition) -> None:
    upstream = dependencies_of(definition, name)
    where = f"services.{name}"
    texts = []
    if service.context.template is not None:
        if not service.context.template.startswith(("#cloud-config", "#!")):
            raise ClusterDefinitionError(
                f"{where}.context.template", "must start with '#cloud-config' or with a '#!' line"
            )
        texts.append((f"{where}.context.template", service.context.template, False))
    for index, part in enumerate(service.context.parts):
        if part.content_type == "text/x-shellscript" and not part.content.startswith("#!"):
            raise ClusterDefinitionError(f"{where}.context.parts[{index}]", "a shell script must start with '#!'")
        texts.append((f"{where}.context.parts[{index}].content", part.content, False))
    if service.health_url is not None:
        texts.append((f"{where}.health_url", service.health_url, True))
    for field_name, text, reported_ok in texts:
        for space, attribute in references(text, field_name):
            _check_reference(space, attribute, upstream, field_name, reported_ok, definition)
    if service.health_url is not None:
        sample = render(service.health_url, _sample_values(definition, name))
        if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s]*)?", sample):
            raise ClusterDefinitionError(f"{where}.health_url", "must be an http:// or https:// URL")


def _check_reference(
    space: str, attribute: str, upstream: set[str], where: str, reported_ok: bool, definition: ClusterDefinition
) -> None:
    ref = f"{{{{ {space}.{attribute} }}}}"
    if space == "cluster":
        allowed: Sequence[str] = CLUSTER_ATTRIBUTES
    elif space == "self":
        if attribute in SELF_REPORTED and not reported_ok:
            raise ClusterDefinitionError(
                where, f"{ref}: an instance's own address is known only after it boots; use it in health_url"
            )
        allowed = (*SELF_ATTRIBUTES, *SELF_REPORTED) if reported_ok else SELF_ATTRIBUTES
    elif space not in definition.services:
        raise ClusterDefinitionError(where, f"{ref}: unknown service {space!r}")
    elif space not in upstream:
        raise ClusterDefinitionError(
            where, f"{ref}: this service does not depend on {space!r}, so its values are not known yet"
        )
    else:
        allowed = SERVICE_ATTRIBUTES
    if attribute not in allowed:
        raise ClusterDefinitionError(where, f"{ref}: unknown attribute {attribute!r} (known: {', '.join(allowed)})")


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """One dependency cycle as a list of names (``[a, b]`` for a → b → a), or ``[]``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for dep in graph.get(node, ()):
            if state.get(dep) == 1:
                return path[path.index(dep) :]
            if dep in graph and dep not in state:
                found = visit(dep)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return []

    for node in graph:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def start_order(definition: ClusterDefinition) -> list[str]:
    """Services in dependency order (dependencies first; otherwise in the order they are defined)."""
    order: list[str] = []
    placed: set[str] = set()
    pending = list(definition.services)
    while pending:
        ready = [n for n in pending if set(definition.services[n].depends_on) <= placed]
        if not ready:
            raise ClusterDefinitionError("services", "dependency cycle")  # check_definition names it first
        order.append(ready[0])
        placed.add(ready[0])
        pending.remove(ready[0])
    return order


def dependencies_of(definition: ClusterDefinition, name: str) -> set[str]:
    """Every service ``name`` depends on, directly or through others."""
    seen: set[str] = set()
    todo = list(definition.services[name].depends_on)
    while todo:
        dep = todo.pop()
        if dep not in seen:
            seen.add(dep)
            todo.extend(definition.services[dep].depends_on)
    return seen


# --- templates ------------------------------------------------------------------------------------------------


def references(text: str, where: str = "template") -> list[tuple[str, str]]:
    """The ``(namespace, attribute)`` pairs of the ``{{ … }}`` in ``text``; anything else in braces is refused."""
    found = []
    for match in _BRACES.finditer(text):
        ref = _REFERENCE.fullmatch(match.group(1))
        if ref is None:
            raise ClusterDefinitionError(where, f"{match.group(0)!r} is not a reference like {{{{ head.address }}}}")
        found.append((ref.group(1), ref.group(2)))
    return found


def render(text: str, values: Mapping[str, Mapping[str, str]]) -> str:
    """Replace each ``{{ ns.attr }}`` by ``values[ns][attr]`` (checked beforehand: every reference is known)."""

    def value(match: re.Match[str]) -> str:
        ref = _REFERENCE.fullmatch(match.group(1))
        assert ref is not None  # check_definition refused anything else
        return values[ref.group(1)][ref.group(2)]

    return _BRACES.sub(value, text)


def _sample_values(definition: ClusterDefinition, name: str) -> dict[str, dict[str, str]]:
    one = InstanceReport(address="192.0.2.1", port=8080, hostname="example")
    sample = service_values([("vm-000000000000", one)])
    values: dict[str, dict[str, str]] = {dep: sample for dep in definition.services}
    values["cluster"] = {"id": "1", "name": definition.name}
    values["self"] = {"id": "vm-000000000000", "service": name, "cluster": "1", **endpoint_values(one)}
    return values


# --- what instances report ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InstanceReport:
    """What a cluster VM's agent says about itself: the address it has as the VM sees it, and its port."""

    address: str
    port: int
    hostname: str = ""

    def __post_init__(self) -> None:
        # These go into other VMs' user-data: only a real address and port may.
        object.__setattr__(self, "address", str(ipaddress.ip_address(self.address)))
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not a TCP port")

    @property
    def endpoint(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


def endpoint_values(report: InstanceReport) -> dict[str, str]:
    return {"address": report.address, "port": str(report.port), "endpoint": report.endpoint}


def service_values(ready: Sequence[tuple[str, InstanceReport]]) -> dict[str, str]:
    """A dependency's template values from its ready instances, oldest first (``address`` is the oldest's)."""
    first = ready[0][1] if ready else None
    return {
        "id": ready[0][0] if ready else "",
        "ids": ",".join(vm_id for vm_id, _ in ready),
        "address": first.address if first else "",
        "addresses": ",".join(r.address for _, r in ready),
        "port": str(first.port) if first else "",
        "ports": ",".join(str(r.port) for _, r in ready),
        "endpoint": first.endpoint if first else "",
        "endpoints": ",".join(r.endpoint for _, r in ready),
        "count": str(len(ready)),
    }


# --- a cluster's life -----------------------------------------------------------------------------------------


class ClusterState(StrEnum):
    ACTIVE = "active"  # services are kept at their desired number of instances
    DELETING = "deleting"  # services are being torn down, last in the start order first
    DELETED = "deleted"  # every VM of it is destroyed

    @property
    def is_final(self) -> bool:
        return self is ClusterState.DELETED


CLUSTER_TRANSITIONS: dict[ClusterState, frozenset[ClusterState]] = {
    ClusterState.ACTIVE: frozenset({ClusterState.DELETING}),
    ClusterState.DELETING: frozenset({ClusterState.DELETED}),
    ClusterState.DELETED: frozenset(),
}


def check_cluster_transition(cluster_id: object, current: ClusterState | str, target: ClusterState | str) -> None:
    cur, tgt = ClusterState(current), ClusterState(target)
    if tgt not in CLUSTER_TRANSITIONS[cur]:
        raise IllegalTransition("cluster", cluster_id, cur.value, tgt.value)


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """A service of a stored cluster: how many instances are wanted now, its place in the start order, and
    what it waits for (``note``)."""

    name: str
    position: int
    desired: int
    note: str = ""


@dataclass(frozen=True, slots=True)
class Cluster:
    id: int
    name: str
    vo: str
    owner: str
    state: ClusterState
    definition: ClusterDefinition
    created_at: float
    updated_at: float
    services: dict[str, ServiceStatus] = field(default_factory=dict)

    def order(self) -> list[str]:
        """Service names in start order."""
        return [s.name for s in sorted(self.services.values(), key=lambda s: s.position)]


@dataclass(frozen=True, slots=True)
class ClusterInstance:
    """What the agent of one cluster VM reported, and when it became ready."""

    vm_id: str
    cluster_id: int
    service: str
    report: InstanceReport | None = None
    reported_at: float | None = None
    ready_at: float | None = None
