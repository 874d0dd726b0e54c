"""The provisioner loop: read the queue and the clouds, let the pure policy decide, carry the actions out.

``tick(now)`` reads everything once into a :class:`ProvisioningSnapshot`, calls
:func:`cloudpilot.policy.provisioning.decide` (the code the simulator runs too), then starts and stops VMs
through the cloud drivers. A VM is recorded (``requested``) before the cloud is asked, with a pilot token
minted for it alone; the cloud's answer moves it to ``booting`` or ``failed`` (which backs the cloud off).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from cloudpilot.clouds.base import CloudDriver, LaunchRequest
from cloudpilot.clouds.errors import CloudConfigError, CloudError
from cloudpilot.config import ServerConfig
from cloudpilot.config.clouds import LibcloudCloudConfig, LibvirtCloudConfig, LocalCloudConfig
from cloudpilot.context.config_drive import config_drive_env
from cloudpilot.context.redact import redact
from cloudpilot.context.userdata import PilotContext, build_user_data
from cloudpilot.domain.auth import Role
from cloudpilot.domain.images import CloudImages
from cloudpilot.domain.matching import TaskQueue
from cloudpilot.domain.provisioning import (
    Action,
    CloudMode,
    CloudView,
    DrainVM,
    PilotView,
    ProvisioningSnapshot,
    StartVMs,
    StopVM,
    VMEnd,
    VMView,
    WorkClass,
)
from cloudpilot.domain.vms import VM_TRANSITIONS, VMState
from cloudpilot.policy.base import DefaultPolicy, ProvisioningPolicy
from cloudpilot.policy.explain import PILOT_WINDOW_SECONDS, explain
from cloudpilot.policy.provisioning import plan
from cloudpilot.services import metrics
from cloudpilot.services.cloud_health import CloudHealth, as_config_error
from cloudpilot.services.images import ImageService
from cloudpilot.services.log_ids import vm_ids
from cloudpilot.services.ssh_context import SshContextualizer
from cloudpilot.services.vm_records import cloud_shutdown_deadline, requested_vm
from cloudpilot.store.jobs import JobRepository
from cloudpilot.store.pilots import PilotRepository
from cloudpilot.store.sites import ScheduledShutdown, SiteRepository, VOSwitch
from cloudpilot.store.tokens import TokenRepository
from cloudpilot.store.vms import VMRepository
from cloudpilot.store.waiting import WaitingReasonRepository

log = logging.getLogger("cloudpilot.provisioner")

CloudSettings = LocalCloudConfig | LibcloudCloudConfig | LibvirtCloudConfig


@dataclass
class Provisioner:
    config: ServerConfig
    jobs: JobRepository
    vms: VMRepository
    tokens: TokenRepository
    drivers: dict[str, CloudDriver]
    sites: SiteRepository
    server_url: Callable[[], str]  # where VMs reach this server (known once it listens)
    on_change: Callable[[], None] = lambda: None
    policy: ProvisioningPolicy | None = None  # default: cloudpilot's own, with config.policy's knobs
    images: ImageService | None = None  # image lists (docs/images.md); None: the per-VO images, unchecked
    health: CloudHealth = field(default_factory=CloudHealth)  # shared with the VM monitor (cloud errors)
    pilots: PilotRepository | None = None  # hand-started pilots, for explanations
    reasons: WaitingReasonRepository | None = None  # where each cycle's explanations go; None: not kept
    ssh_context: SshContextualizer | None = None  # clouds with context: ssh (their VMs are handed to it)

    def __post_init__(self) -> None:
        if self.policy is None:
            self.policy = DefaultPolicy(self.config.policy)
        self._tq_ids: list[int] = []  # the task queue of each work class of the latest snapshot
        self._explained: dict[int, tuple[str, dict[str, object]]] = {}
        self._switches: dict[tuple[str, str], VOSwitch] = {}
        self.due_at: float | None = None  # when deferred work starts a VM anyway: run a cycle then

    @property
    def interval(self) -> float:
        return self.config.provisioner.interval_seconds

    def tick(self, now: float) -> list[Action]:
        assert self.policy is not None
        snapshot = self.snapshot(now)
        outcomes = None
        with metrics.DECIDE_SECONDS.time():
            if isinstance(self.policy, DefaultPolicy):  # one plan serves the decision and its explanation
                made = plan(snapshot, self.policy.knobs, now)
                actions, outcomes = made.actions, made.outcomes
            else:
                actions = self.policy.decide(snapshot, now)
        self._keep_explanations(snapshot, outcomes, now)
        deferred = [o.deferred_until for o in outcomes or () if o.deferred_until is not None]
        self.due_at = min(deferred, default=None)
        if self.drivers:
            self.apply(actions, now)
        return actions

    def _keep_explanations(self, snapshot: ProvisioningSnapshot, outcomes: list | None, now: float) -> None:
        """Store why each class waits (cloudpilot's policy's view; written only when something changed)."""
        if self.reasons is None:
            return
        knobs = self.policy.knobs if isinstance(self.policy, DefaultPolicy) else self.config.policy
        explained = {
            tq_id: (reason.summary, {"clouds": reason.clouds, "pilots": reason.pilots})
            for tq_id, reason in zip(self._tq_ids, explain(snapshot, knobs, now, outcomes), strict=True)
            if reason is not None
        }
        if explained != self._explained:
            self.reasons.replace(explained, now)
            self._explained = explained

    def apply(self, actions: list[Action], now: float) -> None:
        """Carry out the policy's actions (also used by site control and tests)."""
        for action in actions:
            if isinstance(action, StartVMs):
                self._start(action, now)
            elif isinstance(action, StopVM):
                self._stop(action.vm_id, action.reason, now)
            elif isinstance(action, DrainVM):
                self._drain(action.vm_id, action.reason, now)

    # --- reading ----------------------------------------------------------------------------------------

    def snapshot(self, now: float) -> ProvisioningSnapshot:
        waiting = self.jobs.waiting_per_task_queue(cap=self._placeable_jobs())
        work = tuple(WorkClass.of(tq, n, since) for tq, n, since in waiting)
        self._tq_ids = [tq.id for tq, _, _ in waiting]
        images = self._cloud_images(now)
        live = self.vms.list(states={s for s in VMState if not s.is_final})
        busy = self.jobs.active_cores_by_vm()
        by_cloud: dict[str, list[VMView]] = defaultdict(list)
        for vm in live:
            ci = images.get(vm.cloud)
            endorsed = ci.identifier_of(vm.image) if ci is not None else None
            free = vm.cores if vm.state is not VMState.RUNNING else max(0, vm.cores - busy.get(vm.id, 0))
            idle_since = vm.idle_since if busy.get(vm.id, 0) == 0 else None
            if vm.cluster_id is not None:  # a cluster's VM: counts toward quotas, takes no job, never idles
                free, idle_since = 0, None
            by_cloud[vm.cloud].append(
                VMView(
                    vm.id,
                    vm.vo,
                    vm.flavor,
                    vm.state,
                    vm.cores,
                    vm.memory_mb,
                    free,
                    idle_since,
                    created_at=vm.created_at,
                    jobs_run=vm.jobs_run,
                    image=endorsed,
                    image_tags=ci.tags.get(endorsed, frozenset()) if ci is not None and endorsed else frozenset(),
                )
            )
        shutdowns = self.sites.active_shutdowns()
        overrides = self.sites.capacity_overrides()
        self._switches = self.sites.vo_switches()
        clouds = tuple(
            self._cloud_view(name, settings, by_cloud[name], now, shutdowns, overrides, images.get(name))
            for name, settings in self._configured()
        )
        pledges = {
            site: {vo: p.cores for vo, p in s.pledges.items()} for site, s in self.config.sites.items() if s.pledges
        }
        return ProvisioningSnapshot(
            work=work,
            clouds=clouds,
            vo_shares=self.config.vo_shares(),
            default_share=self.config.default_vo_share,
            pledges=pledges,
            pilots=self._hand_started(now),
        )

    def _hand_started(self, now: float) -> tuple[PilotView, ...]:
        if self.pilots is None:
            return ()
        recent = self.pilots.hand_started_since(now - PILOT_WINDOW_SECONDS)
        return tuple(
            PilotView(p.vo, p.cores, p.memory_mb, p.site, p.last_seen_at) for p in recent if p.state == "active"
        )

    def _disabled_vos(self, site: str | None) -> frozenset[str]:
        """VOs switched off at the site (a switch set through the API overrides the configuration)."""
        if site is None:
            return frozenset()
        disabled = set(self.config.site_config(site).disabled_vos)
        for (switch_site, vo), switch in self._switches.items():
            if switch_site == site:
                (disabled.discard if switch.enabled else disabled.add)(vo)
        return frozenset(disabled)

    def _placeable_jobs(self) -> Callable[[TaskQueue], int]:
        """How many waiting jobs of a class to count: more than the clouds could ever hold at once (free slots
        of every VM, plus new VMs), and for short jobs enough to weigh the min-work rule for all those cores.
        Counting beyond this cannot change a decision."""
        cores = sum(c.max_vms * max(f.cores for f in c.flavors.values()) for _, c in self._configured())
        min_work = self.config.policy.min_work_seconds_per_core

        def cap(tq: TaskQueue) -> int:
            return 2 * cores + 1 + math.ceil(cores * min_work / (tq.cores * max(1, tq.wall_seconds)))

        return cap

    def _cloud_images(self, now: float) -> dict[str, CloudImages]:
        """What each cloud may boot now, under the image lists held (read once per cycle)."""
        if self.images is None:
            return {}
        catalog = self.images.catalog()
        return {name: self.images.cloud_images(name, catalog, now) for name, _ in self._configured()}

    def _configured(self) -> list[tuple[str, CloudSettings]]:
        return [(name, settings) for name, settings in self.config.clouds.items() if name in self.drivers]

    def _cloud_view(
        self,
        name: str,
        c: CloudSettings,
        vms: list[VMView],
        now: float,
        shutdowns: list[ScheduledShutdown],
        overrides: dict[str, int],
        images: CloudImages | None = None,
    ) -> CloudView:
        failures, last_failure = self.vms.boot_failures_in_row(name)
        last_error = self.vms.last_failure(name) if failures else None
        boot_seconds = self.vms.boot_stats(name).median_boot_seconds
        image_fields = self.images.view_fields(name, images) if self.images and images else {"vos": c.served_vos()}
        mode = CloudMode(c.mode)
        recent_ends: tuple[VMEnd, ...] = ()
        if mode is CloudMode.VACUUM:
            window = max(3600.0, 4 * c.backoff_seconds + c.fizzle_seconds)
            recent_ends = tuple(
                VMEnd(vm.vo, vm.created_at, vm.terminated_at or vm.updated_at, vm.shutdown_code, vm.jobs_run)
                for vm in self.vms.ended_since(name, now - window)
            )
        return CloudView(
            name=name,
            flavors=c.flavor_list(),
            max_vms=overrides.get(name, c.max_vms_at(now)),
            max_cores=c.max_cores,
            max_memory_mb=c.max_memory_mb,
            start_rate_per_minute=c.start_rate_per_minute,
            starts_last_minute=self.vms.starts_since(name, now - 60),
            price_per_core_hour=c.price_per_core_hour,
            priority=c.priority,
            site=c.site,
            tags=frozenset(c.tags),
            boot_failures_in_row=failures,
            last_boot_failure_at=last_failure,
            vms=tuple(vms),
            mode=mode,
            preemptible=c.preemptible,
            hs06_per_core=c.hs06_per_core,
            target_shares=c.target_shares,
            fizzle_seconds=c.fizzle_seconds,
            backoff_seconds=c.backoff_seconds,
            recent_ends=recent_ends,
            shutdown_pending=any(s.closes(c.site, name) for s in shutdowns),
            misconfigured=self.health.misconfigured(name),
            boot_seconds=boot_seconds if boot_seconds is not None else c.boot_estimate(),
            last_error=last_error.reason if last_error is not None else None,
            disabled_vos=self._disabled_vos(c.site),
            **image_fields,
        )

    # --- acting -----------------------------------------------------------------------------------------

    def _start(self, action: StartVMs, now: float) -> None:
        settings = self.config.clouds[action.cloud]
        flavor = settings.flavors[action.flavor]
        image = settings.images.get(action.vo, settings.images.get("*"))
        endorsed, image_tags = None, frozenset[str]()
        if self.images is not None:
            # Checked again now, whatever the policy saw: an image not endorsed at this moment never boots.
            choice = self.images.boot_choice(action.cloud, action.vo, action.image, now)
            if choice.refused:
                ids = {"cloud": action.cloud, "vo": action.vo}
                log.warning("no VM started on %s for %s: %s", action.cloud, action.vo, choice.refused, extra=ids)
                return
            image, endorsed, image_tags = choice.image_id, choice.identifier, choice.tags
        deadline = cloud_shutdown_deadline(self.sites, action.cloud, settings)
        for _ in range(action.count):
            vm = requested_vm(action.cloud, settings, action.vo, action.flavor, image, deadline, now)
            vm_id, expires = vm.id, vm.expires_at
            self.vms.create(vm, action.reason)
            token = self.tokens.create(Role.PILOT, vm_id, now, vo=action.vo, expires_at=expires, vm_id=vm_id).token
            server_url = self.server_url()
            context = PilotContext(
                server_url=server_url,
                vm_id=vm_id,
                vo=action.vo,
                pilot_token=token,
                cores=flavor.cores,
                memory_mb=flavor.memory_mb,
                site=settings.site,
                cloud=action.cloud,
                tags=(*settings.tags, *sorted(image_tags - set(settings.tags))),
                image=endorsed,
                lifetime_seconds=settings.max_lifetime_seconds,
                idle_timeout_seconds=self.config.provisioner.pilot_idle_timeout_seconds,
                machinefeatures_url=f"{server_url.rstrip('/')}/mjf/{vm_id}/machine",
                jobfeatures_url=f"{server_url.rstrip('/')}/mjf/{vm_id}/job",
                ca_pem=self.config.provisioner.ca_pem,  # a private CA of the server's certificate, if any
            )
            request = LaunchRequest(
                vm_id=vm_id,
                vo=action.vo,
                flavor=action.flavor,
                user_data=boot_data(settings, context),
                image=image,
            )
            try:
                instance = self.drivers[action.cloud].create(request)
            except CloudError as exc:
                reason = redact(str(exc), [token])
                if isinstance(exc, CloudConfigError):
                    reason = as_config_error(reason)
                self.vms.move(vm_id, VMState.FAILED, now, reason, failure_reason=reason)
                metrics.VM_BOOT_FAILURES.labels(action.cloud, "cloud_error").inc()
                self.tokens.revoke_for_vm(vm_id, now)
                if isinstance(exc, CloudConfigError):  # not an outage: the cloud stops until it is fixed
                    self.health.config_error(action.cloud, reason, now, vm_id=vm_id)
                    break
                log.warning("VM %s on %s failed to start: %s", vm_id, action.cloud, reason, extra=vm_ids(vm))
                continue
            self.vms.move(
                vm_id,
                VMState.BOOTING,
                now,
                f"instance {instance.instance_id} created",
                instance_id=instance.instance_id,
            )
            log.info("VM %s (%s) booting on %s for %s", vm_id, action.flavor, action.cloud, action.vo, extra=vm_ids(vm))
            if self.ssh_context is not None and self.ssh_context.handles(action.cloud):
                # No cloud-init on the image: the contextualizer logs in once the VM answers and starts the pilot.
                deadline = now + settings.boot_timeout_seconds
                self.ssh_context.submit(vm_id, action.cloud, instance.instance_id, context, deadline, now)
        self.on_change()

    def _drain(self, vm_id: str, reason: str, now: float) -> None:
        """No new work for the VM; the VM monitor halts it once its jobs are done."""
        vm = self.vms.get(vm_id)
        if VMState.DRAINING in VM_TRANSITIONS[vm.state]:
            self.vms.move(vm_id, VMState.DRAINING, now, f"draining: {reason}")
            log.info("VM %s draining: %s", vm_id, reason, extra=vm_ids(vm))

    def _stop(self, vm_id: str, reason: str, now: float) -> None:
        vm = self.vms.get(vm_id)
        if VMState.HALTED in VM_TRANSITIONS[vm.state]:
            self.vms.move(
                vm_id,
                VMState.HALTED,
                now,
                f"stopped by the provisioner: {reason}",
                shutdown_message=f"stopped by the provisioner: {reason}",
            )
            log.info("VM %s stopped: %s", vm_id, reason, extra=vm_ids(vm))


def boot_data(settings: LocalCloudConfig | LibcloudCloudConfig | LibvirtCloudConfig, context: PilotContext) -> str:
    """What the cloud hands the VM at boot (``LaunchRequest.user_data``): for a libvirt cloud with ``context:
    none`` the config drive's ``cloudpilot.env`` (its image has the pilot baked in and cloud-init disabled), else
    the user-data. Both carry the same files and pilot command."""
    if isinstance(settings, LibvirtCloudConfig) and settings.context == "none":
        return config_drive_env(context)
    return build_user_data(context)
