"""What the pilot knows of its site's plans: the machine features, those of its job slot, and the server's word.

Shutdown times are UNIX epoch seconds. The earliest one known is the pilot's deadline: it offers only the time
left before it, and each payload's ``shutdowntime_job`` is cut to it. The machine features are mirrored into a
directory of files (``WORKDIR/machinefeatures``) that the payloads get as ``$MACHINEFEATURES``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudpilot.pilot.features import (
    DYNAMIC_JOB_KEYS,
    DYNAMIC_MACHINE_KEYS,
    MACHINE_KEYS,
    FeatureDir,
    FeatureSource,
    as_number,
    format_number,
)

log = logging.getLogger(__name__)

FROM_MACHINE = "machine features"
FROM_SLOT = "job features"
FROM_SERVER = "the server"


@dataclass(frozen=True)
class Deadline:
    """A shutdown time (``at``, UNIX seconds) and who announced it."""

    at: float
    source: str

    def describe(self) -> str:
        return f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(self.at))} (from {self.source})"


def _earliest(*deadlines: Deadline | None) -> Deadline | None:
    known = [d for d in deadlines if d is not None]
    return min(known, key=lambda d: d.at) if known else None


class SiteView:
    """Thread-safe: the main loop refreshes it, heartbeat threads tell it what the server said."""

    def __init__(self, machine: FeatureSource, slot: FeatureSource, mirror_dir: Path) -> None:
        self.machine_source, self.slot_source, self.mirror_dir = machine, slot, mirror_dir
        self._mirror = FeatureDir(mirror_dir)
        self._lock = threading.Lock()
        self._machine: dict[str, str | None] = {}
        self._slot: dict[str, str | None] = {}
        self._server_says: float | None = None  # the latest ``shutdowntime`` of a heartbeat or match answer

    # --- learning -----------------------------------------------------------------------------------------------

    def load(self) -> None:
        """Read every machine key (the documented ones and any the base lists) and the slot's dynamic keys."""
        keys = list(dict.fromkeys([*MACHINE_KEYS, *self.machine_source.keys()]))
        self._update(self.machine_source.fetch(keys), self.slot_source.fetch(DYNAMIC_JOB_KEYS))
        known = {k: v for k, v in self._machine.items() if v is not None}
        if self.machine_source.base or self.slot_source.base:
            log.info("machine features from %s: %s", self.machine_source.base or "-", known or "none")

    def refresh(self) -> bool:
        """Re-read the dynamic keys; whether the deadline changed."""
        if self.machine_source.base is None and self.slot_source.base is None:
            return False
        machine = self.machine_source.fetch(DYNAMIC_MACHINE_KEYS)
        return self._update(machine, self.slot_source.fetch(DYNAMIC_JOB_KEYS))

    def learn(self, answer: Mapping[str, Any]) -> bool:
        """Take the ``shutdowntime`` of a server's answer (``null``: none any more); whether the deadline changed."""
        if "shutdowntime" not in answer:
            return False
        raw = answer["shutdowntime"]
        value = None if raw is None or isinstance(raw, bool) else as_number(str(raw))
        if raw is not None and value is None:
            log.warning("ignoring a shutdowntime that is no number: %r", raw)
            return False
        with self._lock:
            if value == self._server_says:  # most answers repeat it: nothing to look at or write
                return False
            before = self._deadline()
            self._server_says = value
            return self._changed(before)

    def _update(self, machine: Mapping[str, str | None], slot: Mapping[str, str | None]) -> bool:
        with self._lock:
            before = self._deadline()
            self._machine.update(machine)
            self._slot.update(slot)
            return self._changed(before)

    def _changed(self, before: Deadline | None) -> bool:
        """Write the mirror (no system call when nothing changed) and say whether the deadline moved; lock held."""
        try:
            self._mirror.write(self._mirror_values(), live=True)  # payloads may read it any time
        except OSError as exc:  # a full disk must not stop the pilot from hearing about its shutdown
            log.error("cannot write the machine features to %s: %s", self.mirror_dir, exc)
        after = self._deadline()
        if after == before:
            return False
        log.info("shutdown time now %s", after.describe() if after else "none")
        return True

    # --- what it knows --------------------------------------------------------------------------------------------

    def deadline(self) -> Deadline | None:
        """The earliest shutdown time known: the machine's, the slot's, the server's."""
        with self._lock:
            return self._deadline()

    def machine_deadline(self) -> Deadline | None:
        """When the machine shuts down: its features' ``shutdowntime`` or the server's, whichever is earlier."""
        with self._lock:
            return self._machine_deadline()

    def number(self, key: str) -> float | None:
        """A machine feature as a number (``None``: unknown)."""
        with self._lock:
            return as_number(self._machine.get(key))

    def seconds_left(self, now: float) -> float | None:
        """Seconds from ``now`` (UNIX time) to the deadline, at least 0; ``None`` without a deadline."""
        deadline = self.deadline()
        return None if deadline is None else max(0.0, deadline.at - now)

    def _machine_deadline(self) -> Deadline | None:
        features = as_number(self._machine.get("shutdowntime"))
        server = self._server_says
        return _earliest(
            None if features is None else Deadline(features, FROM_MACHINE),
            None if server is None else Deadline(server, FROM_SERVER),
        )

    def _deadline(self) -> Deadline | None:
        slot = as_number(self._slot.get("shutdowntime_job"))
        return _earliest(self._machine_deadline(), None if slot is None else Deadline(slot, FROM_SLOT))

    def _mirror_values(self) -> dict[str, str | None]:
        values = dict(self._machine)
        machine = self._machine_deadline()
        values["shutdowntime"] = None if machine is None else format_number(int(machine.at))
        return values

    # --- a payload's job features ---------------------------------------------------------------------------------

    def job_features(
        self,
        *,
        job_id: int,
        cores: int,
        wall_seconds: float | None,
        memory_bytes: int | None,
        started: float,
    ) -> dict[str, str | None]:
        """The ``$JOBFEATURES`` of one payload (docs/site-control.md); ``None`` for a value that is unknown."""
        with self._lock:
            hs06, total = as_number(self._machine.get("hs06")), as_number(self._machine.get("total_cpu"))
            grace = as_number(self._machine.get("grace_secs"))
            deadline = self._deadline()
        ends = [started + wall_seconds] if wall_seconds is not None else []
        if deadline is not None:
            ends.append(deadline.at)

        def num(value: float | None) -> str | None:
            return None if value is None else format_number(value)

        return {
            "allocated_cpu": str(cores),
            "hs06_job": num(None if hs06 is None or not total else hs06 * cores / total),
            "jobstart_secs": num(int(started)),
            "job_id": str(job_id),
            "wall_limit_secs": num(wall_seconds),
            "cpu_limit_secs": num(None if wall_seconds is None else wall_seconds * cores),
            "max_rss_bytes": num(memory_bytes),
            "shutdowntime_job": num(int(min(ends)) if ends else None),
            "grace_secs_job": num(grace),
        }
