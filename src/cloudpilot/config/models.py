"""Configuration models. Defaults make ``cloudpilot server --data-dir DIR`` work with no file at all."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cloudpilot.config.clouds import CloudConfig, ProvisionerConfig
from cloudpilot.config.errors import describe
from cloudpilot.config.storage import StorageConfig
from cloudpilot.domain.provisioning import ProvisioningKnobs


class ConfigError(Exception):
    """The configuration file cannot be read or does not validate; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VOConfig(_Section):
    share: float = Field(1.0, gt=0, description="Relative share of the VO in fair share between VOs.")


class LeaseConfig(_Section):
    seconds: float = Field(90.0, gt=0, description="A matched job's lease; a heartbeat renews it.")
    heartbeat_seconds: float = Field(30.0, gt=0, description="How often pilots are told to heartbeat.")
    reaper_interval_seconds: float = Field(5.0, gt=0, description="How often expired leases are looked for.")


class MatcherConfig(_Section):
    max_wait_seconds: float = Field(30.0, ge=0, le=60, description="Longest long-poll a pilot may ask for.")
    snapshot_seconds: float = Field(1.0, ge=0, description="How long the cached task-queue snapshot is reused.")
    usage_seconds: float = Field(
        10.0, ge=0, description="How often the fair-share inputs (cores held and recorded usage per user) are re-read."
    )


class FairShareConfig(_Section):
    half_life_seconds: float = Field(
        86400.0, ge=0, description="Half-life of recent usage; a running core counts as one half-life of usage."
    )


class JobsConfig(_Section):
    default_wall_seconds: int = Field(86400, ge=1, description="Wall-time limit of jobs that give none.")
    max_per_request: int = Field(100_000, ge=1, description="Most jobs one submission may create.")
    max_waiting_classes_per_user: int = Field(
        1000,
        ge=1,
        description="Most requirement classes a user's waiting jobs may be in (each costs every provisioning cycle).",
    )


class MetricsConfig(_Section):
    public: bool = Field(False, description="Serve /metrics to anyone; by default it needs an admin token.")


class HTTPServerConfig(_Section):
    """Limits of the HTTP server itself, so one client cannot hold or flood it (docs/configuration.md)."""

    max_body_bytes: int = Field(
        64 << 20, ge=1024, description="Largest request body; sandbox uploads have storage.max_sandbox_bytes."
    )
    header_timeout_seconds: float = Field(
        10.0, gt=0, le=3600, description="A connection must send a whole request head within this long."
    )
    keep_alive_seconds: int = Field(5, ge=1, le=3600, description="An idle keep-alive connection is closed after.")
    shutdown_grace_seconds: float = Field(
        5.0,
        ge=0,
        le=600,
        description="On SIGTERM/SIGINT, requests still open (pilots' long polls) are cut after this, so the server "
        "stops its local VMs and exits rather than wait for every long poll.",
    )
    max_header_bytes: int = Field(16 << 10, ge=1024, le=1 << 20, description="Largest request head (line, headers).")


class ImagesConfig(_Section):
    """Where the server may fetch image lists and images from (docs/images.md, "Fetching safely")."""

    allow_http: bool = Field(False, description="Also fetch over plain http (tests); by default https only.")
    allowed_hosts: list[str] = Field(
        [], description="Hosts that may resolve to loopback, private, link-local or multicast addresses."
    )
    fetch_timeout_seconds: float = Field(60.0, gt=0, le=3600, description="Longest time one fetch may take.")
    max_list_bytes: int = Field(16 << 20, ge=1024, description="Largest image list or signature fetched.")


class PledgeConfig(_Section):
    cores: int = Field(ge=0, description="Cores pledged to the VO at the site (at once).")
    core_hours: float | None = Field(None, ge=0, description="Core-hours the VO may use per period; unset: no cap.")
    period_seconds: float = Field(30 * 86400.0, gt=0, description="The period core_hours counts over.")


class SiteConfig(_Section):
    pledges: dict[str, PledgeConfig] = Field(
        default_factory=dict, description="Per VO: pledged cores (a number), or {cores, core_hours, period_seconds}."
    )
    disabled_vos: list[str] = Field([], description="VOs whose pilots get no job at this site.")

    @field_validator("pledges", mode="before")
    @classmethod
    def _cores_shorthand(cls, value: object) -> object:
        if isinstance(value, dict):
            return {vo: {"cores": p} if isinstance(p, int | float) else p for vo, p in value.items()}
        return value


class ServerConfig(_Section):
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite in the data directory. postgresql+psycopg://… for scale."
    )
    vos: dict[str, VOConfig] = Field(default_factory=dict, description="Known VOs and their shares.")
    default_vo_share: float = Field(1.0, gt=0, description="Share of a VO not listed under vos.")
    lease: LeaseConfig = LeaseConfig()
    matcher: MatcherConfig = MatcherConfig()
    fair_share: FairShareConfig = FairShareConfig()
    jobs: JobsConfig = JobsConfig()
    storage: StorageConfig = StorageConfig()
    sites: dict[str, SiteConfig] = Field(default_factory=dict, description="Sites: pledges, disabled VOs.")
    clouds: dict[str, CloudConfig] = Field(default_factory=dict, description="Clouds VMs are started on.")
    policy: ProvisioningKnobs = ProvisioningKnobs()
    provisioner: ProvisionerConfig = ProvisionerConfig()
    metrics: MetricsConfig = MetricsConfig()
    server: HTTPServerConfig = HTTPServerConfig()
    images: ImagesConfig = ImagesConfig()

    @model_validator(mode="after")
    def _cloud_sites(self) -> ServerConfig:
        for name, cloud in self.clouds.items():
            if cloud.site is None:
                cloud.site = name  # a cloud alone is its own site
        return self

    def site_config(self, site: str) -> SiteConfig:
        return self.sites.get(site) or SiteConfig()

    def known_sites(self) -> list[str]:
        """Sites of the configuration: those under ``sites`` and those of the clouds."""
        return sorted(set(self.sites) | {c.site for c in self.clouds.values() if c.site})

    def database_url_for(self, data_dir: Path) -> str:
        return self.database_url or f"sqlite:///{data_dir.resolve() / 'cloudpilot.db'}"

    def sandbox_dir_for(self, data_dir: Path) -> Path:
        """Where a local store keeps sandboxes (storage.kind local)."""
        return self.storage.path or data_dir / "sandboxes"

    def vo_shares(self) -> dict[str, float]:
        return {name: vo.share for name, vo in self.vos.items()}


def load_config(path: Path | None) -> ServerConfig:
    """Read and validate a YAML file (``None``: all defaults)."""
    if path is None:
        return ServerConfig()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the configuration must be a mapping of keys")
    try:
        return ServerConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe(exc, raw)}") from exc
