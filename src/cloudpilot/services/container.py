"""Wires the store, storage and use cases together for one server process (or one test)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cloudpilot.config import ServerConfig
from cloudpilot.domain.matching import TaskQueue
from cloudpilot.domain.provisioning import Action
from cloudpilot.services import metrics
from cloudpilot.services.accounting import AccountingService
from cloudpilot.services.auth import Authenticator
from cloudpilot.services.clock import Clock, SystemClock
from cloudpilot.services.cloud_drivers import build_drivers
from cloudpilot.services.cloud_health import CloudHealth
from cloudpilot.services.clusters import ClusterService
from cloudpilot.services.dashboard import DashboardService
from cloudpilot.services.images import ImageService
from cloudpilot.services.jobs import JobService
from cloudpilot.services.leadership import Leadership, SoleLeadership, holder_name, leadership_for
from cloudpilot.services.matcher import MatchService
from cloudpilot.services.pilots import PilotService
from cloudpilot.services.provisioner import Provisioner
from cloudpilot.services.reaper import LeaseReaper
from cloudpilot.services.sandbox_storage import SmallSandboxesInDatabase, build_sandbox_store
from cloudpilot.services.sessions import PilotSessions
from cloudpilot.services.site_control import SiteControl
from cloudpilot.services.site_policy import SitePolicy
from cloudpilot.services.ssh_context import ssh_contextualizer
from cloudpilot.services.vm_activity import VMActivity
from cloudpilot.services.vm_monitor import VMMonitor
from cloudpilot.services.waiting import WaitingService
from cloudpilot.storage.base import SandboxStore
from cloudpilot.store.accounting import AccountingRepository
from cloudpilot.store.clusters import ClusterRepository
from cloudpilot.store.database import Database
from cloudpilot.store.images import ImageRepository
from cloudpilot.store.jobs import JobRepository
from cloudpilot.store.log_tails import LogTailRepository
from cloudpilot.store.migrations import upgrade
from cloudpilot.store.pilots import PilotRepository
from cloudpilot.store.pubsub import PgSignals
from cloudpilot.store.sandboxes import SandboxRepository
from cloudpilot.store.sites import SiteRepository
from cloudpilot.store.stats import StatsRepository
from cloudpilot.store.timeline import TimelineRepository
from cloudpilot.store.tokens import TokenRepository
from cloudpilot.store.vms import VMRepository
from cloudpilot.store.waiting import WaitingReasonRepository


@dataclass
class Services:
    config: ServerConfig
    data_dir: Path
    db: Database
    clock: Clock
    tokens: TokenRepository
    auth: Authenticator
    sandbox_store: SandboxStore
    sandbox_records: SandboxRepository
    jobs: JobService
    pilots: PilotService
    matcher: MatchService
    reaper: LeaseReaper
    vms: VMRepository
    provisioner: Provisioner
    vm_monitor: VMMonitor
    accounting: AccountingService
    sites: SiteControl
    clusters: ClusterService
    images: ImageService
    waiting: WaitingService
    dashboard: DashboardService  # what the web pages (cloudpilot.web) show beyond the REST resources
    work_listeners: list[Callable[[], None]] = field(default_factory=list)
    public_url: str = "http://127.0.0.1:8080"  # where VMs reach this server; set by the server once it listens
    leadership: Leadership = field(default_factory=SoleLeadership)  # who runs the loops (services/leadership.py)
    signals: PgSignals | None = None  # to and from the other server processes (PostgreSQL; start_signals)

    @classmethod
    def build(cls, config: ServerConfig, data_dir: Path, clock: Clock | None = None) -> Services:
        """Open (and migrate) the database named by the configuration, and build every use case on it."""
        data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(config.database_url_for(data_dir))
        upgrade(db)
        job_repo = JobRepository(db)
        tokens = TokenRepository(db)
        vm_repo = VMRepository(db)
        pilot_repo = PilotRepository(db)
        drivers = build_drivers(config.clouds, data_dir)
        health = CloudHealth()  # what the monitor and the provisioner learn of each cloud; /clouds shows it
        sandbox_records = SandboxRepository(db)
        # S3: the bucket is checked now (StorageConfigError); small outputs are held by the database
        sandbox_store = SmallSandboxesInDatabase(build_sandbox_store(config, data_dir), sandbox_records)
        matcher = MatchService(job_repo, config)
        site_repo = SiteRepository(db)
        records = AccountingRepository(db)
        site_policy = SitePolicy(config, site_repo, matcher)
        services: Services
        log_tails = LogTailRepository(db)  # job.log tails: pilots write them, users read them
        job_service = JobService(
            job_repo, sandbox_store, config, on_new_work=lambda classes: services.new_work(classes), log_tails=log_tails
        )

        def drain(actions: list[Action], now: float) -> None:  # a revoked image's VMs
            services.provisioner.apply(actions, now)

        images = ImageService(config, ImageRepository(db), vm_repo, data_dir, drain=drain)
        waiting_reasons = WaitingReasonRepository(db)
        activity = VMActivity(vm_repo)
        auth = Authenticator(tokens, on_reuse=activity.token_reused)  # a VM token presented again is recorded
        services = cls(
            config=config,
            data_dir=data_dir,
            db=db,
            clock=clock or SystemClock(),
            tokens=tokens,
            auth=auth,
            sandbox_store=sandbox_store,
            sandbox_records=sandbox_records,
            jobs=job_service,
            pilots=PilotService(
                job_repo, pilot_repo, matcher, config, PilotSessions(tokens, auth), activity, site_policy, log_tails
            ),
            matcher=matcher,
            reaper=LeaseReaper(job_repo, config, on_requeue=lambda: services.new_work()),
            vms=vm_repo,
            provisioner=Provisioner(
                config,
                job_repo,
                vm_repo,
                tokens,
                drivers,
                site_repo,
                server_url=lambda: services.vm_server_url(),
                images=images,
                health=health,
                pilots=pilot_repo,
                reasons=waiting_reasons,
                ssh_context=ssh_contextualizer(config, vm_repo, tokens, drivers),
            ),
            accounting=AccountingService(records),
            vm_monitor=VMMonitor(
                config,
                vm_repo,
                job_repo,
                pilot_repo,
                tokens,
                drivers,
                on_requeue=lambda: services.new_work(),
                record_usage=lambda vm, now: records.record_vm(
                    vm, ended_at=now, price_per_core_hour=_price_of(config, vm.cloud), now=now
                ),
                health=health,
            ),
            sites=SiteControl(config, site_repo, vm_repo, site_policy),
            clusters=ClusterService(
                config,
                ClusterRepository(db),
                vm_repo,
                tokens,
                drivers,
                site_repo,
                lambda: services.vm_server_url(),
                images=images,
            ),
            images=images,
            waiting=WaitingService(config, job_service, waiting_reasons, images),
            dashboard=DashboardService(
                config, job_service, vm_repo, StatsRepository(db), TimelineRepository(db), health
            ),
            leadership=leadership_for(db),
        )
        return services

    def provision(self, now: float) -> list[object]:
        """One provisioning cycle: the VM monitor settles what happened, clusters are kept at their size (so the
        provisioner's snapshot sees their VMs), then the provisioner decides. Without clouds only the provisioner
        runs, to explain why work waits for pilots: there are no VMs to settle (and VMs recorded for clouds no longer
        configured keep their records)."""
        if not self.provisioner.drivers:
            return list(self.provisioner.tick(now))
        with metrics.PROVISIONING_CYCLE_SECONDS.time():
            ssh = self.provisioner.ssh_context  # VMs of context: ssh clouds, contextualized as they answer
            contextualized = ssh.tick(now) if ssh is not None else []
            return [
                *self.vm_monitor.tick(now),
                *self.clusters.tick(now),
                *self.provisioner.tick(now),
                *contextualized,
            ]

    def vm_server_url(self) -> str:
        return self.config.provisioner.server_url or self.public_url

    def new_work(self, arrived: Sequence[TaskQueue] | None = None) -> None:
        """Jobs became waiting: refresh the matcher's snapshot and wake long-polling pilots, here and (through
        PostgreSQL) in every other server process of the database. Submitted jobs name their task queues
        (``arrived``): this process's snapshot takes them in without a reload."""
        if arrived is None:
            self.work_elsewhere()
        else:
            self.matcher.add_work(arrived)
            self._wake_listeners()
        if self.signals is not None:
            self.signals.send(WORK_CHANNEL)

    def work_elsewhere(self, _payload: str = "") -> None:
        """New work in this or another process: what :meth:`new_work` does here, without telling anyone."""
        self.matcher.invalidate()
        self._wake_listeners()

    def _wake_listeners(self) -> None:
        for listener in self.work_listeners:
            listener()

    def start_signals(self) -> None:
        """On PostgreSQL, hear new work and revoked tokens of the other server processes, and tell them ours
        (a server does this when it starts serving; tests that only build services do not)."""
        if not self.db.is_postgres or self.signals is not None:
            return

        def missed_signals() -> None:  # the listener was disconnected: drop what the lost signals would have
            self.auth.forget()
            self.work_elsewhere()

        channels = {WORK_CHANNEL: self.work_elsewhere, AUTH_CHANNEL: lambda _payload: self.auth.forget()}
        self.signals = PgSignals(self.db.url, holder_name(), channels, on_reconnect=missed_signals)
        self.auth.on_revoke = lambda: self.signals.send(AUTH_CHANNEL) if self.signals is not None else None
        self.signals.start()

    def close(self) -> None:
        if self.signals is not None:
            self.signals.stop()
            self.signals = None
        self.leadership.release()
        self.db.dispose()


WORK_CHANNEL = "cloudpilot_work"  # jobs became waiting (submitted, requeued)
AUTH_CHANNEL = "cloudpilot_auth"  # a token was revoked: drop cached principals


def _price_of(config: ServerConfig, cloud: str) -> float:
    settings = config.clouds.get(cloud)
    return settings.price_per_core_hour if settings is not None else 0.0
