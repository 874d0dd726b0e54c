"""The per-job heartbeat: renews the lease and reports usage and progress until the job is delivered."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from cloudpilot.pilot.errors import LeaseLost, ProtocolError, RequestRejected, TransportError
from cloudpilot.pilot.transport import Transport

log = logging.getLogger(__name__)

MIN_INTERVAL = 0.05


def heartbeat_interval(heartbeat_seconds: float, lease_seconds: float) -> float:
    """The server's heartbeat period, but at least three beats per lease so one lost beat costs nothing."""
    interval = heartbeat_seconds if heartbeat_seconds > 0 else 30.0
    if lease_seconds > 0:
        interval = min(interval, lease_seconds / 3)
    return max(MIN_INTERVAL, interval)


class Heartbeater:
    """A daemon thread that beats every ``interval`` seconds until :meth:`stop`.

    ``status()`` gives the body's ``cpu_seconds``, ``max_rss_bytes``, ``progress`` and ``log_tail``. When the
    server answers ``kill``, or the lease turns out lost, or the beat is refused, ``on_abort(reason)`` is called
    once and the beats end. Every answer goes to ``on_answer`` (it may carry the machine's ``shutdowntime``). An
    unreachable server is only logged: the next beat may get through before the lease ends.
    """

    def __init__(
        self,
        transport: Transport,
        job_id: int,
        lease_token: int,
        interval: float,
        status: Callable[[], dict[str, Any]],
        on_abort: Callable[[str], None],
        label: str = "",
        on_answer: Callable[[dict[str, Any]], object] | None = None,
    ) -> None:
        self.transport, self.job_id, self.lease_token = transport, job_id, lease_token
        self.interval, self.status, self.on_abort, self.on_answer = interval, status, on_abort, on_answer
        self.label = label or f"job {job_id}"
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{job_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)

    def _loop(self) -> None:
        while not self._done.wait(self.interval):
            reason = self.beat()
            if reason is not None:
                self._done.set()
                self.on_abort(reason)

    def beat(self) -> str | None:
        """One heartbeat; the reason to stop the job, or ``None`` to carry on."""
        body = {"lease_token": self.lease_token, **self.status()}
        try:
            answer = self.transport.heartbeat(self.job_id, body)
        except (TransportError, ProtocolError) as exc:
            answer, error = {}, exc
        else:
            error = None
        if self._done.is_set():  # the job was delivered (or dropped) meanwhile: the answer is moot
            return None
        if isinstance(error, LeaseLost):
            log.warning("%s: lease lost (%s); dropping the job", self.label, error.message)
            return "lease lost"
        if isinstance(error, RequestRejected):
            log.error("%s: heartbeat refused (%s); dropping the job", self.label, error.message)
            return "heartbeat refused"
        if error is not None:  # unreachable, or a garbled answer: the next beat may do better
            log.warning("%s: heartbeat failed: %s", self.label, error)
            return None
        if self.on_answer is not None:
            self.on_answer(answer)
        if answer.get("action") == "kill":
            log.info("%s: killed by its owner; stopping it", self.label)
            return "killed by the user"
        return None
