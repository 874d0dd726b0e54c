"""The pilot's settings and the facts about its host it uses as defaults."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from cloudpilot.pilot.isolation import PayloadUser

MEMINFO = Path("/proc/meminfo")


@dataclass(frozen=True)
class PilotConfig:
    """Everything the agent needs besides its transport; ``cli`` fills it from the command line.

    ``image``: the endorsed image (an image list's dc:identifier) this machine was booted from, if any.
    ``idle_timeout``: seconds without a running job and without obtaining one before the pilot leaves.
    ``lifetime``: seconds this pilot may live (``None``: unlimited); offers say how much of it is left.
    ``wait_seconds``: length of one long poll for work (the server caps it at 60).
    ``give_up_seconds``: how long a call keeps being retried while the server is unreachable.
    ``kill_grace_seconds``: between SIGTERM and SIGKILL when a payload is stopped.
    ``keep_job_dirs``: keep ``workdir/job-<id>-<attempt>`` after the job is delivered (for debugging).
    ``machinefeatures``, ``jobfeatures``: the Machine/Job Features bases (a directory or an http(s) URL) of this
    machine and of its job slot, ``None`` where the site offers none.
    ``features_refresh``: seconds between two readings of the features' dynamic keys (``shutdowntime``, …).
    ``payload_user``, ``container``, ``max_unpacked_bytes``/``max_unpacked_entries``: see docs/pilot.md.
    """

    workdir: Path
    cores: int = 1
    memory_mb: int | None = None
    idle_timeout: float = 600.0
    tags: tuple[str, ...] = ()
    site: str | None = None
    cloud: str | None = None
    image: str | None = None  # the endorsed image this machine runs: jobs requiring it may come here
    lifetime: float | None = None
    wait_seconds: float = 20.0
    give_up_seconds: float = 3600.0
    kill_grace_seconds: float = 5.0
    keep_job_dirs: bool = False
    machinefeatures: str | None = None
    jobfeatures: str | None = None
    features_refresh: float = 60.0
    hostname: str = field(default_factory=socket.gethostname)
    payload_user: PayloadUser | None = None  # None: payloads run as the pilot's own user
    container: str | None = None  # "apptainer:IMAGE": each payload runs in ``apptainer exec IMAGE``
    max_unpacked_bytes: int | None = None  # None: 10x the server's sandbox limit (told at registration)
    max_unpacked_entries: int = 100_000

    def __post_init__(self) -> None:
        if self.cores < 1:
            raise ValueError(f"cores must be at least 1, not {self.cores}")
        if self.memory_mb is not None and self.memory_mb < 1:
            raise ValueError(f"memory_mb must be at least 1, not {self.memory_mb}")
        if not 0 <= self.wait_seconds <= 60:
            raise ValueError(f"wait_seconds must be between 0 and 60, not {self.wait_seconds}")
        if self.container is not None and not self.container.startswith("apptainer:"):
            raise ValueError(f"container must be apptainer:IMAGE, not {self.container!r}")
        for name in ("idle_timeout", "give_up_seconds", "kill_grace_seconds", "features_refresh"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")


def detect_cores() -> int:
    """The cores this process may use (its CPU affinity where the OS tells it), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def detect_memory_mb(meminfo: Path = MEMINFO) -> int | None:
    """``MemTotal`` of ``/proc/meminfo`` in MiB, or ``None`` where there is no such file."""
    try:
        text = meminfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return max(1, int(parts[1]) // 1024)
    return None
