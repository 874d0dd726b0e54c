"""A simulation scenario: clouds, workload, pilot and provisioner settings, the policy. One YAML file.

Every key, its default and meaning is documented in docs/simulator.md; unknown keys are errors. Times are
seconds from the start of the simulation. Cloud keys named like the server's configuration (``max_vms``,
``start_rate_per_minute``, ``mode``, …) mean the same there; the others say what the simulated cloud does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cloudpilot.domain.provisioning import ProvisioningKnobs
from cloudpilot.sim.dists import Dist, fixed

DAY = 86400.0


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FlavorSpec(_Model):
    cores: int = Field(ge=1)
    memory_mb: int = Field(ge=1)


class CapacityStep(_Model):
    at: float = Field(ge=0, description="From when (seconds).")
    max_vms: int = Field(ge=0, description="The cloud's max_vms from then on.")


class CloudSpec(_Model):
    flavors: dict[str, FlavorSpec] = Field(min_length=1)
    max_vms: int = Field(10, ge=0)
    max_cores: int | None = Field(None, ge=0)
    max_memory_mb: int | None = Field(None, ge=0)
    start_rate_per_minute: float = Field(10.0, ge=1)
    price_per_core_hour: float = Field(0.0, ge=0)
    priority: int = 0
    site: str | None = Field(None, description="Default: the cloud's name.")
    tags: list[str] = []
    vos: list[str] | None = None
    boot_timeout_seconds: float = Field(600.0, gt=0)
    max_lifetime_seconds: float = Field(172_800.0, gt=0)
    hs06_per_core: float = Field(10.0, gt=0)
    mode: Literal["demand", "vacuum"] = "demand"
    target_shares: dict[str, float] | None = None
    fizzle_seconds: float = Field(600.0, ge=0)
    backoff_seconds: float = Field(600.0, ge=0)
    preemptible: bool = False
    # What the simulated cloud does:
    boot_seconds: Dist = Field(fixed(120.0), description="Creation to the pilot's registration.")
    boot_failure_share: float = Field(0.0, ge=0, le=1, description="Share of VMs that never boot (boot timeout).")
    create_error_share: float = Field(0.0, ge=0, le=1, description="Share of creates the cloud refuses at once.")
    preemption_rate_per_hour: float = Field(0.0, ge=0, description="Chance per VM-hour that a VM vanishes.")
    capacity: list[CapacityStep] = Field([], description="max_vms over time (the server's capacity_schedule).")
    reclaim_after_seconds: float | None = Field(
        None, ge=0, description="After a capacity step down, the site kills the excess VMs this much later."
    )

    def max_vms_at(self, now: float) -> int:
        current = self.max_vms
        for step in sorted(self.capacity, key=lambda s: s.at):
            if step.at <= now:
                current = step.max_vms
        return current


class ArrivalSpec(_Model):
    """When a class's jobs are submitted."""

    kind: Literal["burst", "poisson", "periodic", "trace"] = "burst"
    at: float = Field(0.0, ge=0, description="burst: submission time.")
    spread_seconds: float = Field(0.0, ge=0, description="burst: submissions spread uniformly over this long.")
    start: float = Field(0.0, ge=0, description="poisson, periodic: first submission.")
    rate_per_hour: float | None = Field(None, gt=0, description="poisson: mean submissions per hour.")
    every_seconds: float | None = Field(None, gt=0, description="periodic: time between bursts.")
    size: int | None = Field(None, ge=1, description="periodic: jobs per burst.")
    file: str | None = Field(None, description="trace: a file with one submission time (seconds) per line.")

    @model_validator(mode="after")
    def _needed(self) -> ArrivalSpec:
        need = {"poisson": ("rate_per_hour",), "periodic": ("every_seconds", "size"), "trace": ("file",)}
        missing = [k for k in need.get(self.kind, ()) if getattr(self, k) is None]
        if missing:
            raise ValueError(f"arrival {self.kind} needs {', '.join(missing)}")
        return self


class JobClassSpec(_Model):
    """Jobs with the same owner and requirements (one task queue)."""

    name: str
    vo: str = "vo"
    owner: str = "user"
    priority: int = 0
    count: int | None = Field(None, ge=0, description="Jobs submitted; a trace gives its own count.")
    cores: int = Field(1, ge=1)
    memory_mb: int | None = Field(None, ge=1)
    wall_seconds: int = Field(86400, ge=1, description="The jobs' wall-time limit; a longer run is killed.")
    tags: list[str] = []
    sites_allow: list[str] = []
    sites_deny: list[str] = []
    events: int | None = Field(None, ge=1, description="Events per job: a lost VM's job resumes, not restarts.")
    duration: Dist = Field(description="Run time of one whole job.")
    fail_share: float = Field(0.0, ge=0, le=1, description="Share of payloads that fail (at a random moment).")
    max_attempts: int = Field(3, ge=1)
    arrival: ArrivalSpec = ArrivalSpec()

    @model_validator(mode="after")
    def _count(self) -> JobClassSpec:
        if self.count is None and self.arrival.kind != "trace":
            raise ValueError(f"class {self.name}: count is required (only a trace gives its own)")
        return self


class LhcbSpec(_Model):
    """A backlog drawn from the model of LHCb's task queue (``cloudpilot.sim.lhcb``), one class per real queue."""

    jobs: int = Field(ge=1, description="Jobs in total, dealt over the real queues in their proportions.")
    vo: str = "lhcb"
    data: Literal["auto", "embedded"] = Field("auto", description="auto: the CSVs when present; else embedded.")
    hs06_per_core: float = Field(10.0, gt=0, description="DIRAC's CPU segments (HS06 s) / this = wall seconds.")
    duration_share_of_wall: Dist = Field(description="A job's run time as a share of its wall time.")
    events: int | None = Field(None, ge=1)
    arrival: ArrivalSpec = ArrivalSpec()


class PilotSpec(_Model):
    idle_timeout_seconds: float = Field(300.0, gt=0, description="provisioner.pilot_idle_timeout_seconds")


class MatcherSpec(_Model):
    snapshot_seconds: float = Field(1.0, ge=0, description="matcher.snapshot_seconds: fair share reread period")
    half_life_seconds: float = Field(86400.0, ge=0, description="fair_share.half_life_seconds")


class VOSpec(_Model):
    share: float = Field(1.0, gt=0)


class Scenario(_Model):
    name: str
    description: str = ""
    source: str = Field("", description="Where the scenario's figures come from.")
    seed: int = 1
    policy: str = Field("cloudpilot", description="cloudpilot, or the name of a peer's policy.")
    knobs: ProvisioningKnobs = Field(ProvisioningKnobs(), description="cloudpilot's policy knobs (policy:).")
    interval_seconds: float = Field(10.0, gt=0, description="provisioner.interval_seconds")
    pilot: PilotSpec = PilotSpec()
    matcher: MatcherSpec = MatcherSpec()
    vos: dict[str, VOSpec] = {}
    default_share: float = Field(1.0, gt=0)
    clouds: dict[str, CloudSpec] = Field(min_length=1)
    workload: list[JobClassSpec] = []
    lhcb: LhcbSpec | None = None
    until_seconds: float = Field(60 * DAY, gt=0, description="The simulation stops here even if work is left.")
    base_dir: Path | None = Field(None, exclude=True, description="Where relative trace files are looked up.")

    @model_validator(mode="after")
    def _work(self) -> Scenario:
        if not self.workload and self.lhcb is None:
            raise ValueError("a scenario needs a workload (classes) or an lhcb backlog")
        return self


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario YAML file (relative trace files are taken from beside it)."""
    path = Path(path)
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a scenario is a mapping")
    return Scenario.model_validate({**data, "base_dir": path.resolve().parent})
