"""What the provisioning loop learnt about each cloud that no VM record holds, and how it is logged.

- Errors of calls not tied to one VM (listing a cloud, destroying an instance) are kept per cloud (the latest,
  with when) for ``/clouds``, and logged at WARNING: an identical error repeated within
  :data:`REPEAT_WINDOW_SECONDS` is counted, not logged again, and the count is logged once the window is over
  ("… (repeated 12 times in the last 60 s)").
- A :class:`~cloudpilot.clouds.errors.CloudConfigError` is a configuration mistake, not an outage: the cloud is
  marked misconfigured and starts no VM until the server restarts (with the configuration fixed, since it is
  read at start). It is logged once, at ERROR, and is the cloud's last error.

One instance per server process, shared by the provisioner and the VM monitor; the API reads it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from cloudpilot.clouds.errors import CloudConfigError, CloudError
from cloudpilot.store.vms import CONFIG_ERROR_PREFIX

log = logging.getLogger("cloudpilot.clouds")

REPEAT_WINDOW_SECONDS = 60.0
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
            log.error("%s%s; cloud %s is misconfigured: %s", failed, message, cloud, MISCONFIGURED_HINT)

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
        for (_, text), repeats in over:
            if repeats.count:
                log.warning("%s (repeated %d times in the last %.0f s)", text, repeats.count, now - repeats.since)

    def _warn(self, cloud: str, text: str, now: float) -> None:
        with self._lock:
            repeats = self._repeats.get((cloud, text))
            if repeats is not None and now - repeats.since < self.repeat_window:
                repeats.count += 1
                return
            self._repeats[(cloud, text)] = _Repeats(since=now)
        if repeats is None:
            log.warning("%s", text)
        else:  # the window is over: this occurrence and those counted in it, in one line
            log.warning("%s (repeated %d times in the last %.0f s)", text, repeats.count + 1, now - repeats.since)


def as_config_error(message: str) -> str:
    """The message marked as a configuration error (as VM failure reasons are: the back-off skips those)."""
    return message if message.startswith(CONFIG_ERROR_PREFIX) else CONFIG_ERROR_PREFIX + message
