"""Usage records (one per VM, one per job) and the rules of reading them: grouping keys and time windows.

A record is selected by a window ``[since, until)`` when it *ended* in it. Each record is then counted in
exactly one of a run of consecutive windows (monthly reports add up to the year's), as APEL counts a finished
VM once. Records are written when a VM or job ends, so nothing still running appears.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass

HOUR = 3600.0
GROUP_KEYS = ("vo", "site", "cloud")


@dataclass(frozen=True, slots=True)
class VMUsage:
    """What one VM used, from the cloud's request to its destruction."""

    vm_id: str
    cloud: str
    site: str
    vo: str
    flavor: str
    cores: int
    memory_mb: int
    image: str | None
    instance_id: str | None
    started_at: float  # when the cloud was asked for it (the VM's created_at): clouds bill from there
    ended_at: float
    wall_seconds: float
    cpu_seconds: float  # of the jobs it ran, from their heartbeats and final reports
    hs06: float  # the whole VM's HEPSPEC06 (cores x the cloud's hs06_per_core); 0 when unknown
    price_per_core_hour: float
    cost: float
    jobs_run: int
    final_state: str  # the state it was destroyed from (halted, failed, lost)
    shutdown_code: int | None
    shutdown_message: str | None
    recorded_at: float

    @property
    def core_hours(self) -> float:
        return self.wall_seconds * self.cores / HOUR

    @property
    def hs06_hours(self) -> float:
        return self.wall_seconds * self.hs06 / HOUR


@dataclass(frozen=True, slots=True)
class JobUsage:
    """What one job used, written in the transaction that made it final."""

    job_id: int
    vo: str
    owner: str
    state: str
    site: str | None
    cloud: str | None
    vm_id: str | None
    cores: int
    submitted_at: float
    started_at: float | None
    ended_at: float
    wall_seconds: float  # of its last attempt
    cpu_seconds: float
    exit_code: int | None
    attempts: int

    @property
    def core_hours(self) -> float:
        return self.wall_seconds * self.cores / HOUR


def parse_group_by(text: str | None) -> tuple[str, ...]:
    """``"vo,site"`` -> ``("vo", "site")``; empty means one group of everything. Raises ValueError naming the
    unknown key."""
    if text is None or not text.strip():
        return ()
    keys = tuple(k.strip() for k in text.split(",") if k.strip())
    for key in keys:
        if key not in GROUP_KEYS:
            raise ValueError(f"cannot group by {key!r}: choose from {', '.join(GROUP_KEYS)}")
    if len(set(keys)) != len(keys):
        raise ValueError(f"a key is repeated in {text!r}")
    return keys


def parse_time(text: str, local: bool = False) -> float:
    """UNIX seconds from ``1714521600``, ``2024-05-01`` or ``2024-05-01T12:00[:00][+02:00]``.

    A time without a zone is UTC on the server (``local=False``) and local time in the CLI (``local=True``,
    like the times the CLI prints). Raises ValueError with the accepted forms."""
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise ValueError(f"{text!r} is not a time")
        return seconds
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a date: use YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS][+HH:MM] or UNIX seconds"
        ) from None
    if moment.tzinfo is None and not local:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()
