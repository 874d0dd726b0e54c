"""What ``/pilots/match`` hands this pilot: a job and the lease it holds on it, or an order to halt."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cloudpilot.domain.shutdown import ShutdownCode
from cloudpilot.pilot.errors import ProtocolError


@dataclass(frozen=True)
class Lease:
    """The fencing ``token`` every call about the job carries, and the lease's length in seconds."""

    token: int
    seconds: float
    expires_at: float | None = None


@dataclass(frozen=True)
class JobOrder:
    """What the pilot needs to run one attempt of a job."""

    id: int
    executable: str
    attempt: int = 1
    name: str = ""
    arguments: tuple[str, ...] = ()
    environment: dict[str, str] = field(default_factory=dict)
    input_sandbox: str | None = None
    output_files: tuple[str, ...] = ()
    cores: int = 1
    memory_mb: int | None = None
    wall_seconds: float | None = None
    events: int | None = None  # the job's events, for a payload that checkpoints them (None: it does not)
    first_event: int = 0  # the first event not finished by an earlier attempt

    @property
    def label(self) -> str:
        """``job-<id>-<attempt>``: the name of its working directory and its tag in the log."""
        return f"job-{self.id}-{self.attempt}"


@dataclass(frozen=True)
class HaltOrder:
    """A match answered ``{"halt": {"code", "reason"}}``: take no more work and leave with that code."""

    code: ShutdownCode
    reason: str


@dataclass(frozen=True)
class Assignment:
    job: JobOrder
    lease: Lease


def parse_assignment(doc: dict[str, Any]) -> Assignment:
    """Read a ``200`` answer of ``/pilots/match``; :class:`ProtocolError` if it lacks what a pilot needs."""
    try:
        job, lease = doc["job"], doc["lease"]
        order = JobOrder(
            id=int(job["id"]),
            executable=str(job["executable"]),
            attempt=int(job.get("attempt") or lease["token"]),
            name=str(job.get("name") or ""),
            arguments=tuple(str(a) for a in job.get("arguments") or ()),
            environment={str(k): str(v) for k, v in (job.get("environment") or {}).items()},
            input_sandbox=job.get("input_sandbox") or None,
            output_files=tuple(str(p) for p in job.get("output_files") or ()),
            cores=max(1, int(job.get("cores") or 1)),
            memory_mb=int(job["memory_mb"]) if job.get("memory_mb") else None,
            wall_seconds=float(job["wall_seconds"]) if job.get("wall_seconds") else None,
            events=int(job["events"]) if job.get("events") is not None else None,
            first_event=max(0, int(job.get("first_event") or 0)),
        )
        held = Lease(
            token=int(lease["token"]),
            seconds=float(lease.get("seconds") or 0),
            expires_at=float(lease["expires_at"]) if lease.get("expires_at") is not None else None,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProtocolError(f"a match answer without a usable job or lease: {type(exc).__name__}: {exc}") from exc
    if not order.executable:
        raise ProtocolError(f"job {order.id} has an empty executable")
    return Assignment(order, held)


def parse_halt(doc: dict[str, Any]) -> HaltOrder | None:
    """The halt order of a ``200`` match answer, ``None`` if it has none; :class:`ProtocolError` if it is garbled."""
    halt = doc.get("halt")
    if halt is None:
        return None
    try:
        code = ShutdownCode(int(halt["code"]))
        reason = str(halt.get("reason") or "")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProtocolError(f"a halt order without a shutdown code (100-700): {halt!r}") from exc
    return HaltOrder(code, reason[:500])
