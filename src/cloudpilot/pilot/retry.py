"""Retrying calls while the server is unreachable: exponential backoff, a give-up deadline, a stop switch."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from cloudpilot.pilot.errors import GaveUp, ServerUnreachable, Stopped

T = TypeVar("T")
log = logging.getLogger(__name__)

FIRST_DELAY = 1.0
MAX_DELAY = 30.0


class Backoff:
    """Delays of 1 s doubling up to 30 s; :meth:`reset` after a success."""

    def __init__(self, first: float = FIRST_DELAY, cap: float = MAX_DELAY) -> None:
        self.first, self.cap = first, cap
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay


def with_retries(
    call: Callable[[], T],
    *,
    what: str,
    give_up_seconds: float,
    clock: Callable[[], float],
    sleep: Callable[[float], object],
    stop: threading.Event,
) -> T:
    """``call()``, retried with backoff while it raises :class:`ServerUnreachable`.

    Raises :class:`GaveUp` once the server has been unreachable for ``give_up_seconds`` (counted from the first
    failure), and :class:`Stopped` when ``stop`` is set. Every other error goes to the caller at once.
    """
    backoff = Backoff()
    first_failure: float | None = None
    while True:
        if stop.is_set():
            raise Stopped(f"{what}: the pilot is stopping")
        try:
            return call()
        except ServerUnreachable as exc:
            now = clock()
            if first_failure is None:
                first_failure = now
            left = give_up_seconds - (now - first_failure)
            if left <= 0:
                raise GaveUp(f"{what}: server unreachable for {now - first_failure:.0f} s ({exc})") from exc
            delay = min(backoff.next(), left)
            log.warning("%s failed: %s; retrying in %.1f s", what, exc, delay)
            sleep(delay)
