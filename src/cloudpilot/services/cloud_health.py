"""What the provisioning loop learnt about each cloud that no VM record holds, and how it is logged.

- Errors of calls not tied to one VM (listing a cloud, destroying an instance) are kept per cloud (the latest,
  with when) for ``/clouds``, and logged at WARNING: an identical error repeated within
  :data:`REPEAT_WINDOW_SECONDS` is counted, not logged again, and the count is logged once the window is over
  ("… (repeated 12 times in the last 60 s)").
- A :class:`~cloudpilot.clouds.errors.CloudConfigError` is a configuration mistake, not an outage: the cloud is
  marked misconfigured and starts no VM until the server restarts (with the configuration fixed, since it is
  read at start). It is logged once, at ERROR, and is the cloud's last error.

One instance per server process, shared by the provisioner and the VM monitor; :func:`cloud_status` joins it
with what the store knows (failed cycles, boots) for ``/clouds``.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field

from cloudpilot.clouds.errors import CloudConfigError, CloudError
from cloudpilot.domain.provisioning import ProvisioningKnobs
from cloudpilot.store.vms import CONFIG_ERROR_PREFIX, VMRepository

log = logging.getLogger("cloudpilot.clouds")

REPEAT_WINDOW_SECONDS = 60.0
# Object addresses in an SDK's error text ("<HTTPConnection object at 0x7f…>") differ between two identical errors.
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
MISCONFIGURED_HINT = "it starts no VM until the configuration is fixed and the server restarted"


@dataclass
class _Repeats:
    since: float  # when the error was last logged
    count: int = 0  # identical occurrences since, not logged yet


@dataclass
class CloudHealth:
    repeat_window: float = REPEAT_WINDOW_SECONDS
    _errors: dict[str, tuple[str, float]] = field(default_factory=dict)  # cloud -> latest (message, at)
    _misconfigured: dict[str, str] = field(default_factory=dict)
    _repeats: dict[tuple[str, str], _Repeats] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def report(self, cloud: str, exc: CloudError, now: float, doing: str = "") -> None:
        """A call to the cloud failed; ``doing`` says what we tried (``cannot list local-a``)."""
        message = str(exc)
        if isinstance(exc, CloudConfigError):
            self.config_error(cloud, message, now)
            return
        with self._lock:
            self._errors[cloud] = (message, now)
        self._warn(cloud, f"{doing}: {message}" if doing else message, now)

    def config_error(self, cloud: str, message: str, now: float, vm_id: str | None = None) -> None:
        """Mark the cloud misconfigured; logged at ERROR the first time this message is seen for the cloud."""
        message = as_config_error(message)
        with self._lock:
            new = self._misconfigured.get(cloud) != message
            self._misconfigured[cloud] = message
            self._errors[cloud] = (message, now)
        if new:
            failed = f"VM {vm_id} on {cloud} failed to start: " if vm_id else ""
            ids = {"cloud": cloud, "vm_id": vm_id}
            log.error("%s%s; cloud %s is misconfigured: %s", failed, message, cloud, MISCONFIGURED_HINT, extra=ids)

    def misconfigured(self, cloud: str) -> str | None:
        with self._lock:
            return self._misconfigured.get(cloud)

    def last_error(self, cloud: str) -> tuple[str, float] | None:
        with self._lock:
            return self._errors.get(cloud)

    def flush(self, now: float) -> None:
        """Log the counts of errors that repeated and then stopped (called once per cycle)."""
        with self._lock:
            over = [(key, r) for key, r in self._repeats.items() if now - r.since >= self.repeat_window]
            for key, _ in over:
                del self._repeats[key]
        for (cloud, text), repeats in over:  # the key's text: what was logged, addresses aside
            if repeats.count:
                count, seconds = repeats.count, now - repeats.since
                log.warning("%s (repeated %d times in the last %.0f s)", text, count, seconds, extra={"cloud": cloud})

    def _warn(self, cloud: str, text: str, now: float) -> None:
        key = (cloud, _ADDRESS.sub("0x…", text))
        with self._lock:
            repeats = self._repeats.get(key)
            if repeats is not None and now - repeats.since < self.repeat_window:
                repeats.count += 1
                return
            self._repeats[key] = _Repeats(since=now)
        if repeats is None:
            log.warning("%s", text, extra={"cloud": cloud})
        else:  # the window is over: this occurrence and those counted in it, in one line
            count, seconds = repeats.count + 1, now - repeats.since
            log.warning("%s (repeated %d times in the last %.0f s)", key[1], count, seconds, extra={"cloud": cloud})


def as_config_error(message: str) -> str:
    """The message marked as a configuration error (as VM failure reasons are: the back-off skips those)."""
    return message if message.startswith(CONFIG_ERROR_PREFIX) else CONFIG_ERROR_PREFIX + message


@dataclass(frozen=True, slots=True)
class CloudStatus:
    """What ``/clouds`` tells of one cloud's health (docs/rest-api.md)."""

    failures_in_row: int  # failed provisioning cycles since a VM last booted
    backoff_until: float | None  # while the back-off holds; None: it may start VMs (as far as failures go)
    last_error: str | None  # the latest error, of a VM's boot or of a call to the cloud (redacted)
    last_error_at: float | None
    last_boot_at: float | None
    median_boot_seconds: float | None
    misconfigured: str | None  # the configuration error that stopped it until a restart


def cloud_status(
    cloud: str, vms: VMRepository, health: CloudHealth, knobs: ProvisioningKnobs, now: float
) -> CloudStatus:
    failures, last_failure_at = vms.boot_failures_in_row(cloud)
    until = knobs.backoff_end(failures, last_failure_at)
    # The latest of a VM's failed boot (stored) and a failed call to the cloud (this process's memory).
    errors: list[tuple[float, str]] = []
    if (seen := health.last_error(cloud)) is not None:
        errors.append((seen[1], seen[0]))
    if (failure := vms.last_failure(cloud)) is not None:
        errors.append((failure.at, failure.reason))
    last_at, last_error = max(errors) if errors else (None, None)
    boots = vms.boot_stats(cloud)
    return CloudStatus(
        failures_in_row=failures,
        backoff_until=until if until is not None and until > now else None,
        last_error=last_error,
        last_error_at=last_at,
        last_boot_at=boots.last_boot_at,
        median_boot_seconds=boots.median_boot_seconds,
        misconfigured=health.misconfigured(cloud),
    )
