"""Jobs: their description and the job record; states and transitions live in job_states.py (re-exported)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cloudpilot.domain.errors import StaleLease
from cloudpilot.domain.job_states import ACTIVE_STATES as ACTIVE_STATES
from cloudpilot.domain.job_states import FINAL_STATES as FINAL_STATES
from cloudpilot.domain.job_states import JOB_TRANSITIONS as JOB_TRANSITIONS
from cloudpilot.domain.job_states import JobState as JobState
from cloudpilot.domain.job_states import can_transition as can_transition
from cloudpilot.domain.job_states import check_transition as check_transition

MAX_INT32 = 2**31 - 1  # memory in MB, wall seconds, counts: far beyond any real value, within every column
MAX_PARAMETER = 2**53  # a parameter value {n} stays exact wherever it goes (JSON numbers are doubles)


class SiteFilter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()


class Requirements(BaseModel):
    """What a job needs from the slot that runs it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cores: int = Field(1, ge=1, le=1024)
    memory_mb: int | None = Field(None, ge=1, le=MAX_INT32)
    wall_seconds: int | None = Field(
        None, ge=1, le=MAX_INT32, description="Wall-time limit; the server's default applies if unset."
    )
    tags: tuple[str, ...] = ()
    sites: SiteFilter = SiteFilter()
    image: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,199}$",
        description="An endorsed image (its dc:identifier in an image list) the job must run on (docs/images.md).",
    )

    @field_validator("tags")
    @classmethod
    def _sorted_tags(cls, tags: tuple[str, ...]) -> tuple[str, ...]:
        if any(not t or not t.strip() for t in tags):
            raise ValueError("tags must be non-empty strings")
        return tuple(sorted(set(tags)))


MAX_NAME = 200
MAX_ITEMS = 10_000  # arguments, files: a bound, so no list in a spec is larger than any real job needs


class JobSpec(BaseModel):
    """A job as a user describes it. Unknown fields are rejected, not ignored."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("job", min_length=1, max_length=MAX_NAME)
    executable: str = Field(min_length=1, max_length=4096)
    arguments: list[str] = Field([], max_length=MAX_ITEMS)
    environment: dict[str, str] = Field({}, max_length=1000)
    input_files: list[str] = Field([], max_length=MAX_ITEMS, description="Names of the files in the input sandbox.")
    input_sandbox: str | None = Field(
        None, description="Content id of the uploaded input sandbox (set by the client when it uploads input_files)."
    )
    output_files: list[str] = Field(
        [], max_length=MAX_ITEMS, description="Globs collected from the working directory after the run."
    )
    requirements: Requirements = Requirements()
    priority: int = Field(0, ge=-1000, le=1000)
    max_attempts: int = Field(3, ge=1, le=100)
    events: int | None = Field(
        None, ge=1, le=10_000_000, description="Events the job processes; it checkpoints them (docs/site-control.md)."
    )

    @field_validator("environment")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for key in env:
            if not key or "=" in key or "\0" in key:
                raise ValueError(f"invalid environment variable name {key!r}")
        return env

    @field_validator("input_files", "output_files")
    @classmethod
    def _relative_paths(cls, paths: list[str]) -> list[str]:
        for p in paths:
            if not p or p.startswith("/") or ".." in p.split("/"):
                raise ValueError(f"{p!r} must be a relative path inside the job's working directory")
        return paths


class ParametricSpec(BaseModel):
    """One description expanded into many jobs: ``{n}`` in any string is replaced by each value of the range."""

    model_config = ConfigDict(extra="forbid")

    job: JobSpec
    parameter_start: int = Field(0, ge=-MAX_PARAMETER, le=MAX_PARAMETER)
    parameter_count: int = Field(ge=1, le=MAX_INT32, description="Checked against jobs.max_per_request first.")
    parameter_step: int = Field(1, ge=-MAX_PARAMETER, le=MAX_PARAMETER)


def expand_parametric(spec: ParametricSpec) -> list[JobSpec]:
    """Substitute ``{n}`` in the string fields of the template for each parameter value."""
    template = spec.job.model_dump(mode="json")
    jobs: list[JobSpec] = []
    for i in range(spec.parameter_count):
        n = str(spec.parameter_start + i * spec.parameter_step)
        jobs.append(JobSpec.model_validate(_substitute(template, n)))
    return jobs


def _substitute(value: object, n: str) -> object:
    if isinstance(value, str):
        return value.replace("{n}", n)
    if isinstance(value, list):
        return [_substitute(v, n) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, n) for k, v in value.items()}
    return value


class JobEvent(BaseModel):
    """One entry of a job's history."""

    at: float
    from_state: JobState | None
    to_state: JobState
    reason: str = ""


class Job(BaseModel):
    """A stored job: its description, where it is in its life, and what happened to it."""

    id: int
    vo: str
    owner: str
    name: str
    spec: JobSpec
    state: JobState
    priority: int
    cores: int
    wall_seconds: int
    attempts: int
    max_attempts: int
    exit_code: int | None = None
    failure_reason: str | None = None
    pilot_id: str | None = None
    lease_expires_at: float | None = None
    submitted_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    output_sandbox: str | None = None
    cpu_seconds: float | None = None
    max_rss_bytes: int | None = None
    progress: str | None = None
    kill_requested: bool = False
    events_done: int = 0  # events reported finished: where the next attempt starts

    @property
    def lease_token(self) -> int:
        """The fencing token of the current lease: the attempt number it was handed out with."""
        return self.attempts

    def unreported_start(self, target: JobState, now: float, ran_seconds: float | None) -> float | None:
        """When a job still ``matched`` that ends now (``target`` final) started running, if its pilot says its
        payload ran ``ran_seconds`` (a payload so short it was reported only at its end): the job then passes
        through ``running`` from that moment, never before it was matched. ``None``: no such implied move."""
        if ran_seconds is None or not target.is_final or self.state is not JobState.MATCHED:
            return None
        return max(self.updated_at, now - ran_seconds)

    def check_lease(self, lease_token: int) -> None:
        """Raise :class:`StaleLease` unless ``lease_token`` is this job's live lease."""
        if self.attempts != lease_token or self.state not in ACTIVE_STATES:
            raise StaleLease(
                f"lease {lease_token} of job {self.id} is no longer valid: the job is {self.state.value} "
                f"at attempt {self.attempts}"
            )
