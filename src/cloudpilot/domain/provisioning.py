"""What the provisioning policy sees and what it may decide. Plain data; the decisions are in
:mod:`cloudpilot.policy.provisioning`."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from cloudpilot.domain.jobs import Requirements
from cloudpilot.domain.matching import TaskQueue
from cloudpilot.domain.vms import Flavor, VMState


class CloudOrder(StrEnum):
    PRICE = "price"  # cheapest core-hour first, then higher priority
    PRIORITY = "priority"  # higher priority first, then cheapest


class CloudMode(StrEnum):
    DEMAND = "demand"  # VMs are started for waiting jobs
    VACUUM = "vacuum"  # the site keeps the cloud filled, VO by target share (Vac/Vcycle)


class ProvisioningKnobs(BaseModel):
    """Policy settings (``policy:`` in the server configuration; each documented in docs/provisioning.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_work_seconds_per_core: float = Field(
        300.0, ge=0, description="A VM starts only for at least this much estimated work per core (CPUPerInstance)."
    )
    idle_seconds: float = Field(
        120.0, gt=0, description="A running VM with no job for this long is stopped (docs/simulator.md: why 120 s)."
    )
    backoff_initial_seconds: float = Field(300.0, gt=0, description="Back-off of a cloud after a boot failure.")
    backoff_max_seconds: float = Field(1800.0, gt=0, description="Longest back-off; it doubles per failure.")
    cloud_order: CloudOrder = Field(CloudOrder.PRICE, description="Which clouds are filled first.")
    max_defer_seconds: float = Field(
        60.0, ge=0, description="Work the min-work rule defers starts a VM anyway once it has waited this long."
    )

    def backoff_end(self, failed_cycles: int, last_failure_at: float | None) -> float | None:
        """When a cloud may start VMs again after ``failed_cycles`` failed provisioning cycles in a row (the
        back-off doubles per cycle up to ``backoff_max_seconds``); None: no back-off."""
        if failed_cycles <= 0 or last_failure_at is None:
            return None
        return last_failure_at + min(self.backoff_initial_seconds * 2 ** (failed_cycles - 1), self.backoff_max_seconds)


@dataclass(frozen=True, slots=True)
class WorkClass:
    """Waiting jobs of one VO with identical requirements."""

    vo: str
    cores: int
    memory_mb: int | None
    wall_seconds: int
    tags: frozenset[str]
    sites_allow: frozenset[str]
    sites_deny: frozenset[str]
    waiting: int
    image: str | None = None  # the endorsed image the jobs must run on (docs/images.md)
    waiting_since: float | None = None  # when its oldest waiting job was submitted; None: not known

    @classmethod
    def of(cls, tq: TaskQueue, waiting: int, waiting_since: float | None = None) -> WorkClass:
        """The waiting jobs of a task queue (the server and the simulator build their snapshots with it)."""
        return cls(
            tq.vo,
            tq.cores,
            tq.memory_mb,
            tq.wall_seconds,
            tq.tags,
            tq.sites_allow,
            tq.sites_deny,
            waiting,
            tq.image,
            waiting_since,
        )

    @classmethod
    def of_requirements(cls, vo: str, req: Requirements, wall_seconds: int) -> WorkClass:
        """One job of these requirements (why one job waits, what a submission could ever run on)."""
        return cls(
            vo,
            req.cores,
            req.memory_mb,
            wall_seconds,
            frozenset(req.tags),
            frozenset(req.sites.allow),
            frozenset(req.sites.deny),
            1,
            req.image,
        )

    @classmethod
    def any_of(cls, vo: str) -> WorkClass:
        """The least a VO's job can ask: what "may this cloud run anything of the VO" is asked with."""
        return cls(vo, 1, None, 1, frozenset(), frozenset(), frozenset(), 1)


@dataclass(frozen=True, slots=True)
class VMView:
    id: str
    vo: str
    flavor: str
    state: VMState
    cores: int
    memory_mb: int
    free_cores: int  # cores its pilot has not filled (all of them while booting)
    idle_since: float | None  # since when it has run no job; None while it runs one
    created_at: float = 0.0
    jobs_run: int = 0
    image: str | None = None  # the endorsed image it runs, if any
    image_tags: frozenset[str] = frozenset()  # the tags that image provides


@dataclass(frozen=True, slots=True)
class VMEnd:
    """How a recent VM of a cloud ended (vacuum back-off reads these)."""

    vo: str
    created_at: float
    ended_at: float
    shutdown_code: int | None
    jobs_run: int


@dataclass(frozen=True, slots=True)
class CloudView:
    name: str
    flavors: tuple[Flavor, ...]
    vos: frozenset[str] | None  # VOs it has an image for; None: any
    max_vms: int
    max_cores: int | None = None
    max_memory_mb: int | None = None
    start_rate_per_minute: float = 1.0
    starts_last_minute: int = 0
    price_per_core_hour: float = 0.0
    priority: int = 0
    site: str | None = None
    tags: frozenset[str] = frozenset()  # what its VMs offer (platform, gpu, …)
    boot_failures_in_row: int = 0
    last_boot_failure_at: float | None = None
    vms: tuple[VMView, ...] = ()
    mode: CloudMode = CloudMode.DEMAND
    preemptible: bool = False
    hs06_per_core: float = 10.0
    target_shares: dict[str, float] | None = None  # vacuum: per VO; None: the snapshot's VO shares
    fizzle_seconds: float = 600.0
    backoff_seconds: float = 600.0
    recent_ends: tuple[VMEnd, ...] = ()  # VMs ended within the last few back-off periods, oldest first
    shutdown_pending: bool = False  # a cloud- or site-wide shutdown is scheduled: start nothing
    # Image lists (docs/images.md). ``endorsed_only``: only endorsed images may boot here; ``images``: those that
    # may boot now, with the tags each provides; ``vo_images``: the endorsed image a VO's jobs without an image
    # requirement boot (``"*"``: other VOs; None: the VO's configured image is not endorsed).
    endorsed_only: bool = False
    images: dict[str, frozenset[str]] = field(default_factory=dict)
    vo_images: dict[str, str | None] = field(default_factory=dict)
    # What a boot costs here: the median seconds from request to a running pilot over recent VMs (or the
    # configured expectation before any VM booted); None: not known. The min-work rule is weighed against it.
    boot_seconds: float | None = None
    last_error: str | None = None  # the (redacted) reason of the latest failed boot, for explanations
    disabled_vos: frozenset[str] = frozenset()  # VOs its site has switched off: their pilots would be halted
    # A configuration error the cloud answered with (docs/provisioning.md): it starts nothing until the server
    # restarts with the configuration fixed. None: none seen.
    misconfigured: str | None = None


@dataclass(frozen=True, slots=True)
class PilotView:
    """A pilot started by hand (not in one of our VMs) that asked for work recently: what it offered."""

    vo: str | None
    cores: int
    memory_mb: int | None
    site: str | None
    last_seen_at: float


@dataclass(frozen=True, slots=True)
class ProvisioningSnapshot:
    work: tuple[WorkClass, ...]
    clouds: tuple[CloudView, ...]
    vo_shares: dict[str, float] = field(default_factory=dict)
    default_share: float = 1.0
    pledges: dict[str, dict[str, int]] = field(default_factory=dict)  # site -> VO -> pledged cores
    pilots: tuple[PilotView, ...] = ()  # hand-started pilots seen lately (only explanations read them)


@dataclass(frozen=True, slots=True)
class StartVMs:
    cloud: str
    vo: str
    flavor: str
    count: int
    reason: str
    image: str | None = None  # the endorsed image to boot; None: the VO's configured image


@dataclass(frozen=True, slots=True)
class StopVM:
    vm_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class DrainVM:
    vm_id: str
    reason: str


Action = StartVMs | StopVM | DrainVM
