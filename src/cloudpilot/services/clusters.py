"""Clusters of services: creating, scaling and deleting them (the API's use cases) and the loop that keeps them.

``tick(now)`` runs in the server's provisioning cycle, after the VM monitor and before the provisioner. For each
active cluster, service by service in start order, it

- halts instances above the service's desired count, the newest first (``halted``, as ``vm stop`` does: the VM
  monitor destroys them and writes their usage records);
- starts instances below it once every service it depends on is **ready** (at least ``max(1, min)`` ready
  instances), rendering the service's context templates with their values at that moment;
- polls the health URL of instances whose agent reported but which are not ready yet.

A deleted cluster is torn down the other way: the last service in start order is halted first, and the one
before it only when all of its VMs are destroyed. Cluster VMs are rows of ``vms`` like any VM: the quotas of
their cloud count them, the VM monitor times out their boots and loses them when their agent falls silent.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from cloudpilot.clouds.base import CloudDriver, LaunchRequest
from cloudpilot.clouds.errors import CloudError
from cloudpilot.config import ServerConfig
from cloudpilot.config.clouds import LibcloudCloudConfig, LocalCloudConfig
from cloudpilot.context.cluster import AgentContext, build_cluster_user_data
from cloudpilot.context.errors import ContextError
from cloudpilot.context.redact import redact
from cloudpilot.context.userdata import UserDataPart
from cloudpilot.domain.auth import Principal, Role
from cloudpilot.domain.clusters import (
    Cluster,
    ClusterDefinition,
    ClusterDefinitionError,
    ClusterInstance,
    ClusterState,
    InstanceReport,
    ServiceDefinition,
    check_definition,
    endpoint_values,
    render,
    service_values,
)
from cloudpilot.domain.times import iso
from cloudpilot.domain.vms import VM, VM_TRANSITIONS, VMState
from cloudpilot.services import metrics
from cloudpilot.services.auth import require
from cloudpilot.services.errors import BadInput, Forbidden
from cloudpilot.services.images import ImageService
from cloudpilot.services.vm_records import cloud_shutdown_deadline, requested_vm
from cloudpilot.store.clusters import ClusterRepository
from cloudpilot.store.errors import Conflict, NotFound
from cloudpilot.store.sites import SiteRepository
from cloudpilot.store.tokens import TokenRepository
from cloudpilot.store.vms import VMRepository

log = logging.getLogger("cloudpilot.clusters")

CloudSettings = LocalCloudConfig | LibcloudCloudConfig
LIVE = frozenset({VMState.REQUESTED, VMState.BOOTING, VMState.RUNNING})  # instances that count toward desired
ALIVE = frozenset({VMState.BOOTING, VMState.RUNNING, VMState.DRAINING})  # may report and heartbeat
TAG_CLUSTER = "cloudpilot-cluster"
TAG_SERVICE = "cloudpilot-service"
HEALTH_TIMEOUT_SECONDS = 2.0


class NotYet(Exception):
    """An agent reported before the server recorded that its VM was created: it should report again (503)."""


def agent_vo(cluster_id: int) -> str:
    """The VO of a cluster agent's token: no job carries it, so the token cannot take work as a pilot."""
    return f"cluster:{cluster_id}"


def http_ok(url: str, timeout: float) -> bool:
    """Does ``url`` answer a GET with 2xx within ``timeout`` seconds?"""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return 200 <= answer.status < 300
    except (OSError, ValueError, urllib.error.HTTPError):
        return False


@dataclass(frozen=True, slots=True)
class ClusterView:
    """A cluster with its VMs (oldest first) and what their agents reported."""

    cluster: Cluster
    vms: list[VM]
    instances: dict[str, ClusterInstance]

    def ready(self, service: str) -> list[tuple[str, InstanceReport]]:
        """The ready, running instances of ``service``, oldest first, with their reports."""
        found = []
        for vm in self.vms:
            instance = self.instances.get(vm.id)
            if (
                vm.cluster_service == service
                and vm.state is VMState.RUNNING
                and instance is not None
                and instance.ready_at is not None
                and instance.report is not None
            ):
                found.append((vm.id, instance.report))
        return found

    def service_ready(self, service: str) -> bool:
        return len(self.ready(service)) >= max(1, self.cluster.definition.services[service].min)

    def live(self, service: str) -> list[VM]:
        return [vm for vm in self.vms if vm.cluster_service == service and vm.state in LIVE]


@dataclass
class ClusterService:
    config: ServerConfig
    clusters: ClusterRepository
    vms: VMRepository
    tokens: TokenRepository
    drivers: dict[str, CloudDriver]
    sites: SiteRepository
    server_url: Callable[[], str]  # where VMs reach this server (known once it listens)
    probe: Callable[[str, float], bool] = http_ok  # health checks; tests pass their own
    images: ImageService | None = None  # with image lists in force, cluster VMs boot endorsed images only

    # --- use cases --------------------------------------------------------------------------------------------

    def create(self, principal: Principal, definition: ClusterDefinition, now: float) -> Cluster:
        """Check a definition against the configuration and store it; the next tick starts its first services."""
        require(principal, Role.USER)
        if principal.is_admin:
            if not definition.vo:
                raise BadInput("vo: an admin's cluster must name the VO its VMs are accounted to", "vo")
            vo = definition.vo
        else:
            if principal.vo is None or definition.vo not in (None, principal.vo):
                raise Forbidden(f"a user token of VO {principal.vo!r} creates clusters of that VO only")
            vo = principal.vo
        try:
            order = check_definition(definition)
        except ClusterDefinitionError as exc:
            raise BadInput(str(exc), exc.field) from None
        definition = definition.model_copy(update={"vo": vo})
        for name, service in definition.services.items():
            settings = self._cloud_of(definition, name, vo)
            self._flavor(settings, definition.cloud_of(name) or "", name, service)
            self._check_size(definition, name)
        cluster = self.clusters.create(definition, vo, principal.name, order, now)
        log.info("cluster %d (%s) of %s created: %s", cluster.id, cluster.name, vo, " -> ".join(order))
        return cluster

    def list(self, principal: Principal) -> list[ClusterView]:
        require(principal, Role.USER)
        if principal.is_admin:
            found = self.clusters.list()
        else:
            found = self.clusters.list(vo=principal.vo or "", owner=principal.name)
        return [self.view(c) for c in found]

    def get(self, principal: Principal, cluster_id: int) -> ClusterView:
        return self.view(self._visible(principal, cluster_id))

    def scale(self, principal: Principal, cluster_id: int, service: str, instances: int, now: float) -> ClusterView:
        cluster = self._visible(principal, cluster_id)
        spec = cluster.definition.services.get(service)
        if spec is None:
            raise NotFound(f"cluster {cluster_id} has no service {service!r} (it has: {', '.join(cluster.order())})")
        if not spec.min <= instances <= spec.upper:
            raise BadInput(
                f"instances: {instances} is outside the bounds of service {service!r} "
                f"(min {spec.min}, max {spec.upper})",
                "instances",
            )
        cluster = self.clusters.set_desired(cluster_id, service, instances, now)
        log.info("cluster %d: service %s scaled to %d", cluster_id, service, instances)
        return self.view(cluster)

    def delete(self, principal: Principal, cluster_id: int, now: float) -> ClusterView:
        """Tear the cluster down (in reverse start order, over the next cycles); deleting again is harmless."""
        cluster = self._visible(principal, cluster_id)
        if cluster.state is ClusterState.ACTIVE:
            cluster = self.clusters.move(cluster_id, ClusterState.DELETING, now)
            log.info("cluster %d (%s) is being deleted by %s", cluster_id, cluster.name, principal.name)
        return self.view(cluster)

    def report_ready(
        self, principal: Principal, cluster_id: int, vm_id: str, report: InstanceReport, now: float
    ) -> ClusterInstance:
        """The agent of a cluster VM is up: the VM booted (``running``), and it is ready unless its service
        has a health URL, which is polled from now on."""
        vm = self._agent_vm(principal, cluster_id, vm_id)
        if vm.state is VMState.BOOTING:
            self.vms.move(
                vm_id,
                VMState.RUNNING,
                now,
                f"cluster agent reported in from {report.endpoint}",
                booted_at=now,
                last_seen_at=now,
            )
            metrics.vm_booted(vm.cloud, vm.created_at, now)
        else:
            self.vms.update(vm_id, now, last_seen_at=now)
        cluster = self.clusters.get(cluster_id)
        service = cluster.definition.services.get(vm.cluster_service or "")
        ready = service is None or service.health_url is None
        return self.clusters.report(vm_id, cluster_id, vm.cluster_service or "", report, now, ready)

    def heartbeat(self, principal: Principal, cluster_id: int, vm_id: str, now: float) -> None:
        self._agent_vm(principal, cluster_id, vm_id)
        self.vms.update(vm_id, now, last_seen_at=now)

    def view(self, cluster: Cluster) -> ClusterView:
        return ClusterView(cluster, self.clusters.vms(cluster.id), self.clusters.instances(cluster.id))

    # --- the loop ---------------------------------------------------------------------------------------------

    @property
    def interval(self) -> float:
        return self.config.provisioner.interval_seconds

    def tick(self, now: float) -> list[str]:
        """Bring every cluster one step closer to what is wanted; a line per change (logs, tests)."""
        changes: list[str] = []
        for cluster in self.clusters.list(states={ClusterState.ACTIVE, ClusterState.DELETING}):
            view = self.view(cluster)
            changes += self._settle_requested(view, now)
            if cluster.state is ClusterState.DELETING:
                changes += self._tear_down(view, now)
            else:
                changes += self._poll_health(view, now)
                changes += self._keep(self.view(cluster), now)
        return changes

    def _settle_requested(self, view: ClusterView, now: float) -> list[str]:
        """A VM left ``requested`` (the server stopped between recording it and asking the cloud) is failed:
        ticks launch synchronously, so none is still being created."""
        changes = []
        for vm in view.vms:
            if vm.state is VMState.REQUESTED:
                why = "left requested: the cloud was never asked"
                self.vms.move(vm.id, VMState.FAILED, now, why, failure_reason=why)
                self.tokens.revoke_for_vm(vm.id, now)
                changes.append(f"{vm.id} failed: {why}")
        return changes

    def _poll_health(self, view: ClusterView, now: float) -> list[str]:
        changes = []
        cluster = view.cluster
        for vm in view.vms:
            instance = view.instances.get(vm.id)
            spec = cluster.definition.services.get(vm.cluster_service or "")
            if spec is None or spec.health_url is None or vm.state is not VMState.RUNNING:
                continue
            if instance is None or instance.report is None or instance.ready_at is not None:
                continue
            url = render(spec.health_url, self._values(view, vm.cluster_service or "", vm.id, instance.report))
            if self.probe(url, HEALTH_TIMEOUT_SECONDS):
                self.clusters.mark_ready(vm.id, now)
                changes.append(f"{vm.id} ready: {url} answers")
        return changes

    def _keep(self, view: ClusterView, now: float) -> list[str]:
        cluster = view.cluster
        changes: list[str] = []
        for name in cluster.order():
            status = cluster.services[name]
            live = view.live(name)
            note = ""
            if len(live) > status.desired:
                # Scale down: the newest first (still booting ones are the newest, and the least missed).
                doomed = sorted(live, key=lambda vm: (vm.created_at, vm.id), reverse=True)[: len(live) - status.desired]
                for vm in doomed:
                    changes += self._halt(vm, f"cluster {cluster.id}: service {name} scaled to {status.desired}", now)
            elif len(live) < status.desired:
                note, started = self._grow(view, name, status.desired - len(live), now)
                changes += started
            if note != status.note:
                self.clusters.set_note(cluster.id, name, note)
        return changes

    def _grow(self, view: ClusterView, name: str, missing: int, now: float) -> tuple[str, list[str]]:
        cluster = view.cluster
        spec = cluster.definition.services[name]
        waiting = [dep for dep in spec.depends_on if not view.service_ready(dep)]
        if waiting:
            return f"waiting for {', '.join(waiting)} to be ready", []
        backoff = self._backoff_until(view, name)
        if backoff is not None and now < backoff:
            return f"backing off after failed boots until {iso(backoff)}", []
        cloud = cluster.definition.cloud_of(name) or ""
        settings = self.config.clouds.get(cloud)
        if settings is None or cloud not in self.drivers:
            return f"cloud {cloud!r} is not configured any more", []
        try:
            flavor = self._flavor(settings, cloud, name, spec)
        except BadInput as exc:
            return str(exc), []
        image = settings.images.get(view.cluster.vo, settings.images.get("*"))
        if self.images is not None:  # with image lists in force, only an endorsed image boots
            choice = self.images.boot_choice(cloud, view.cluster.vo, None, now)
            if choice.refused:
                return f"no image may boot on {cloud}: {choice.refused}", []
            image = choice.image_id
        started: list[str] = []
        for _ in range(missing):
            full = self._no_room(cloud, settings, flavor, now)
            if full:
                return full, started
            started.append(self._launch(view, name, cloud, settings, flavor, image, now))
        return "", started

    def _tear_down(self, view: ClusterView, now: float) -> list[str]:
        cluster = view.cluster
        for name in reversed(cluster.order()):
            remaining = [vm for vm in view.vms if vm.cluster_service == name and vm.state is not VMState.DESTROYED]
            if not remaining:
                if cluster.services[name].note:
                    self.clusters.set_note(cluster.id, name, "")
                continue
            changes: list[str] = []
            for vm in remaining:
                changes += self._halt(vm, f"cluster {cluster.id} deleted", now)
            note = f"tearing down: {len(remaining)} VM(s) left"
            if cluster.services[name].note != note:
                self.clusters.set_note(cluster.id, name, note)
            return changes  # the services it depends on go once these are destroyed
        self.clusters.move(cluster.id, ClusterState.DELETED, now)
        log.info("cluster %d (%s) deleted: every VM destroyed", cluster.id, cluster.name)
        return [f"cluster {cluster.id} deleted"]

    # --- acting -----------------------------------------------------------------------------------------------

    def _launch(
        self,
        view: ClusterView,
        name: str,
        cloud: str,
        settings: CloudSettings,
        flavor_name: str,
        image: str | None,
        now: float,
    ) -> str:
        cluster = view.cluster
        deadline = cloud_shutdown_deadline(self.sites, cloud, settings)
        vm = requested_vm(
            cloud, settings, cluster.vo, flavor_name, image, deadline, now, cluster_id=cluster.id, cluster_service=name
        )
        vm_id, expires = vm.id, vm.expires_at
        self.vms.create(vm, f"cluster {cluster.id} ({cluster.name}): service {name}")
        token = self.tokens.create(
            Role.PILOT, f"cluster {cluster.id} agent of {vm_id}", now, vo=agent_vo(cluster.id), expires_at=expires,
            vm_id=vm_id,
        ).token  # fmt: skip
        ids = {"vm_id": vm_id, "cloud": cloud, "vo": cluster.vo}  # for JSON log lines
        try:
            user_data = self._user_data(view, name, vm_id, token)
            instance = self.drivers[cloud].create(
                LaunchRequest(
                    vm_id=vm_id,
                    vo=cluster.vo,
                    flavor=flavor_name,
                    user_data=user_data,
                    image=image,
                    tags={TAG_CLUSTER: str(cluster.id), TAG_SERVICE: name},
                )
            )
        except (CloudError, ContextError) as exc:
            reason = redact(str(exc), [token])
            log.warning("cluster %d: VM %s of %s failed to start: %s", cluster.id, vm_id, name, reason, extra=ids)
            metrics.VM_BOOT_FAILURES.labels(cloud, "cloud_error").inc()
            self.vms.move(vm_id, VMState.FAILED, now, reason, failure_reason=reason)
            self.tokens.revoke_for_vm(vm_id, now)
            return f"{vm_id} ({name}) failed: {reason}"
        self.vms.move(
            vm_id, VMState.BOOTING, now, f"instance {instance.instance_id} created", instance_id=instance.instance_id
        )
        log.info("cluster %d: VM %s (%s, %s) booting on %s", cluster.id, vm_id, name, flavor_name, cloud, extra=ids)
        return f"{vm_id} ({name}) booting on {cloud}"

    def _user_data(self, view: ClusterView, name: str, vm_id: str, token: str) -> str:
        cluster = view.cluster
        values = self._values(view, name, vm_id)
        parts = [
            UserDataPart(p.content_type, render(p.content, values), p.filename)
            for p in cluster.definition.services[name].context.all_parts()
        ]
        lost_after = self.config.provisioner.lost_after_seconds
        ctx = AgentContext(
            server_url=self.server_url(),
            cluster_id=cluster.id,
            vm_id=vm_id,
            service=name,
            agent_token=token,
            heartbeat_seconds=max(1.0, min(30.0, lost_after / 4)),
        )
        return build_cluster_user_data(ctx, parts)

    def _values(
        self, view: ClusterView, name: str, vm_id: str, report: InstanceReport | None = None
    ) -> dict[str, dict[str, str]]:
        """Template values: every service's current ready instances, the cluster, and the instance itself."""
        cluster = view.cluster
        values = {service: service_values(view.ready(service)) for service in cluster.definition.services}
        values["cluster"] = {"id": str(cluster.id), "name": cluster.name}
        values["self"] = {"id": vm_id, "service": name, "cluster": str(cluster.id)}
        if report is not None:
            values["self"].update(endpoint_values(report))
        return values

    def _halt(self, vm: VM, why: str, now: float) -> list[str]:
        if VMState.HALTED in VM_TRANSITIONS[vm.state]:
            self.vms.move(vm.id, VMState.HALTED, now, why, shutdown_message=why)
            return [f"{vm.id} halted: {why}"]
        return []  # failed or lost already: the VM monitor destroys it

    # --- checks -----------------------------------------------------------------------------------------------

    def _no_room(self, cloud: str, settings: CloudSettings, flavor_name: str, now: float) -> str:
        """Why one more VM of ``flavor_name`` may not start on ``cloud`` now ('' if it may): its quotas count
        every VM not yet destroyed, pilot VMs included, as the provisioner's do."""
        if any(s.closes(settings.site, cloud) for s in self.sites.active_shutdowns(settings.site)):
            return f"cloud {cloud} has a shutdown pending"
        held = self.vms.list(states={s for s in VMState if not s.is_final}, cloud=cloud)
        max_vms = self.sites.capacity_overrides().get(cloud, settings.max_vms_at(now))
        if len(held) >= max_vms:
            return f"cloud {cloud} is full ({len(held)} of {max_vms} VMs)"
        flavor = settings.flavors[flavor_name]
        if settings.max_cores is not None and sum(vm.cores for vm in held) + flavor.cores > settings.max_cores:
            return f"cloud {cloud} has no cores left (max_cores {settings.max_cores})"
        memory = sum(vm.memory_mb for vm in held) + flavor.memory_mb
        if settings.max_memory_mb is not None and memory > settings.max_memory_mb:
            return f"cloud {cloud} has no memory left (max_memory_mb {settings.max_memory_mb})"
        return ""

    def _backoff_until(self, view: ClusterView, name: str) -> float | None:
        """After boots of the service that failed in a row, wait as the provisioner does for its clouds."""
        failures, last = 0, 0.0
        for vm in sorted(view.vms, key=lambda v: (v.created_at, v.id), reverse=True):
            if vm.cluster_service != name or vm.state in LIVE:
                continue
            if vm.booted_at is not None or vm.failure_reason is None:
                break  # a VM that booted (or was stopped on purpose) ends the run of failures
            failures += 1
            last = max(last, vm.terminated_at or vm.updated_at)
        return self.config.policy.backoff_end(failures, last if failures else None)

    def _cloud_of(self, definition: ClusterDefinition, name: str, vo: str) -> CloudSettings:
        cloud = definition.cloud_of(name) or ""
        where = f"services.{name}.cloud" if definition.services[name].cloud else "cloud"
        settings = self.config.clouds.get(cloud)
        if settings is None or cloud not in self.drivers:
            known = ", ".join(sorted(self.drivers)) or "none"
            raise BadInput(f"{where}: unknown cloud {cloud!r} (configured: {known})", where)
        served = settings.served_vos()
        if served is not None and vo not in served:
            raise BadInput(f"{where}: cloud {cloud!r} runs no VMs of VO {vo!r}", where)
        return settings

    @staticmethod
    def _flavor(settings: CloudSettings, cloud: str, name: str, spec: ServiceDefinition) -> str:
        """The service's flavor: the one named, or the smallest with the cores and memory it asks for."""
        offered = ", ".join(f"{f} ({v.cores} cores, {v.memory_mb} MB)" for f, v in settings.flavors.items())
        if spec.flavor is not None:
            if spec.flavor not in settings.flavors:
                field = f"services.{name}.flavor"
                raise BadInput(
                    f"{field}: unknown flavor {spec.flavor!r} on cloud {cloud!r} (offered: {offered})", field
                )
            return spec.flavor
        fits = [
            (f.cores, f.memory_mb, n)
            for n, f in settings.flavors.items()
            if f.cores >= (spec.cores or 1) and f.memory_mb >= (spec.memory_mb or 1)
        ]
        if not fits:
            field = f"services.{name}.cores" if spec.cores is not None else f"services.{name}.memory_mb"
            want = f"{spec.cores or 1} cores and {spec.memory_mb or 1} MB"
            raise BadInput(f"{field}: no flavor of cloud {cloud!r} has {want} (offered: {offered})", field)
        return min(fits)[2]

    def _check_size(self, definition: ClusterDefinition, name: str) -> None:
        """Build the user-data once with made-up values, so a context too large for clouds is refused now."""
        fake = Cluster(0, definition.name, definition.vo or "", "", ClusterState.ACTIVE, definition, 0.0, 0.0)
        view = ClusterView(fake, [], {})
        values = self._values(view, name, "vm-000000000000")
        sample = InstanceReport("192.0.2.1", 65535)
        for dep in definition.services:
            values[dep] = service_values([("vm-000000000000", sample)] * max(1, definition.services[dep].upper))
        parts = [
            UserDataPart(p.content_type, render(p.content, values), p.filename)
            for p in definition.services[name].context.all_parts()
        ]
        ctx = AgentContext("http://127.0.0.1:8080", 1, "vm-000000000000", name, "cp_0_sample", 30.0)
        try:
            build_cluster_user_data(ctx, parts)
        except ContextError as exc:
            field = f"services.{name}.context"
            raise BadInput(f"{field}: {exc}", field) from None

    def _visible(self, principal: Principal, cluster_id: int) -> Cluster:
        """The cluster if the caller may see it: an admin any, a user those it created in its VO (404 else)."""
        require(principal, Role.USER)
        cluster = self.clusters.get(cluster_id)
        if not principal.is_admin and (cluster.vo != principal.vo or cluster.owner != principal.name):
            raise NotFound(f"cluster {cluster_id} does not exist")
        return cluster

    def _agent_vm(self, principal: Principal, cluster_id: int, vm_id: str) -> VM:
        """The VM of an agent's call: only the token minted for that VM of that cluster may make it."""
        if principal.role is not Role.PILOT or principal.vm_id != vm_id or principal.vo != agent_vo(cluster_id):
            raise Forbidden(f"only the agent token of VM {vm_id} of cluster {cluster_id} may report for it")
        vm = self.vms.get(vm_id)
        if vm.cluster_id != cluster_id:
            raise Forbidden(f"VM {vm_id} is not part of cluster {cluster_id}")
        if vm.state is VMState.REQUESTED:
            raise NotYet(f"VM {vm_id} is still being created; report again")
        if vm.state not in ALIVE:
            raise Conflict(f"VM {vm_id} is {vm.state.value}: its agent should stop")
        return vm
