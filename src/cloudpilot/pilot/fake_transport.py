"""An in-memory :class:`~cloudpilot.pilot.transport.Transport` for tests of the pilot's logic.

It plays a small task queue (first-come first-served, jobs fit an offer by cores, memory and seconds left),
records every call, and has failure switches: unreachable for the next N calls, a lost lease, a job killed by
its owner, a refused call. Long polls really wait (up to ``wait_seconds``) and end as soon as a job is added.
Like the server it can schedule a shutdown (``shutdowntime`` in match and heartbeat answers), order pilots to
halt, and keep the event chunks of jobs with ``events``.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudpilot.pilot.errors import LeaseLost, RequestRejected, ServerUnreachable, TransportError
from cloudpilot.pilot.transport import REPORT_EXTENSIONS

FINAL = ("done", "failed", "killed")


@dataclass
class FakeJob:
    """A job in the fake queue; ``state`` follows the server's states (plus ``lost`` for a lease taken away)."""

    id: int
    executable: str
    arguments: list[str]
    cores: int = 1
    memory_mb: int | None = None
    wall_seconds: int = 600
    environment: dict[str, str] = field(default_factory=dict)
    input_sandbox: str | None = None
    output_files: list[str] = field(default_factory=list)
    name: str = ""
    events: int | None = None
    state: str = "waiting"
    attempt: int = 0
    events_done: int = 0

    def as_order(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name or f"job-{self.id}",
            "executable": self.executable,
            "arguments": list(self.arguments),
            "environment": dict(self.environment),
            "input_sandbox": self.input_sandbox,
            "input_files": [],
            "output_files": list(self.output_files),
            "cores": self.cores,
            "memory_mb": self.memory_mb,
            "wall_seconds": self.wall_seconds,
            "attempt": self.attempt,
            "events": self.events,
            "first_event": self.events_done,
        }


@dataclass(frozen=True)
class EventChunk:
    """One accepted ``upload_events``: the event range, the attempt that sent it, and the archive."""

    first: int
    last: int
    attempt: int
    data: bytes


@dataclass(frozen=True)
class Call:
    """One call as the fake saw it: its method name, its arguments, when (monotonic), and whether it failed."""

    method: str
    args: dict[str, Any]
    at: float
    failed: bool = False


class FakeTransport:
    """The fake server. All public methods are thread-safe."""

    def __init__(
        self,
        *,
        lease_seconds: float = 90,
        heartbeat_seconds: float = 30,
        pilot_id: str = "pilot-1",
        report_extensions: bool = False,
        old_server: bool = False,
    ):
        self.lease_seconds, self.heartbeat_seconds, self.pilot_id = lease_seconds, heartbeat_seconds, pilot_id
        # Whether the pilot may use inline outputs and slot handovers in final reports (the Transport's flag;
        # off: upload, then report). ``old_server``: refuse them with a 422, as a server that predates them.
        self.report_extensions = report_extensions
        self.old_server = old_server
        self._cond = threading.Condition()
        self.jobs: dict[int, FakeJob] = {}
        self.sandboxes: dict[str, bytes] = {}
        self.outputs: dict[int, bytes] = {}
        self.halts: list[dict[str, Any]] = []
        self.event_chunks: dict[int, list[EventChunk]] = {}
        self.shutdowntime: float | None = None  # a scheduled shutdown (UNIX time), told in answers
        self.halt_order: dict[str, Any] | None = None
        self.calls: list[Call] = []
        self._unreachable = 0
        self._unreachable_methods: frozenset[str] | None = None
        self._rejections: dict[str, int] = {}

    # --- setting the scene ------------------------------------------------------------------------------------

    def add_job(
        self,
        executable: str,
        arguments: Iterable[str] = (),
        *,
        cores: int = 1,
        memory_mb: int | None = None,
        wall_seconds: int = 600,
        environment: dict[str, str] | None = None,
        input_sandbox: str | None = None,
        output_files: Iterable[str] = (),
        name: str = "",
        events: int | None = None,
    ) -> int:
        """Queue a job; its id. A waiting long poll that it fits gets it at once."""
        with self._cond:
            job_id = len(self.jobs) + 1
            self.jobs[job_id] = FakeJob(
                job_id, executable, list(arguments), cores, memory_mb, wall_seconds,
                dict(environment or {}), input_sandbox, list(output_files), name, events,
            )  # fmt: skip
            self._cond.notify_all()
            return job_id

    def add_sandbox(self, data: bytes) -> str:
        """Store an input sandbox; the id to give to :meth:`add_job`."""
        with self._cond:
            sandbox_id = f"sha256:fake{len(self.sandboxes)}"
            self.sandboxes[sandbox_id] = data
            return sandbox_id

    # --- failure switches -------------------------------------------------------------------------------------

    def go_unreachable(self, calls: int, methods: Iterable[str] | None = None) -> None:
        """The next ``calls`` calls (of ``methods`` only, if given) fail with :class:`ServerUnreachable`."""
        with self._cond:
            self._unreachable = calls
            self._unreachable_methods = frozenset(methods) if methods is not None else None

    def lose_lease(self, job_id: int) -> None:
        """As if the reaper had taken the job away: every later call about it gets a 409."""
        with self._cond:
            self.jobs[job_id].state = "lost"

    def kill_job(self, job_id: int) -> None:
        """As if the owner had killed the job: heartbeats answer ``kill``, reports get a 409."""
        with self._cond:
            self.jobs[job_id].state = "killed"

    def requeue(self, job_id: int) -> None:
        """As if the job's VM were lost: it waits again, and its next attempt starts at ``events_done``."""
        with self._cond:
            self.jobs[job_id].state = "waiting"
            self._cond.notify_all()

    def schedule_shutdown(self, at: float | None) -> None:
        """Match and heartbeat answers say ``shutdowntime: at`` from now on (``None``: no shutdown)."""
        with self._cond:
            self.shutdowntime = at

    def order_halt(self, code: int, reason: str) -> None:
        """Every match from now on (a waiting long poll at once) answers ``{"halt": {"code", "reason"}}``."""
        with self._cond:
            self.halt_order = {"code": code, "reason": reason}
            self._cond.notify_all()

    def reject(self, method: str, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` get a 403 (:class:`RequestRejected`)."""
        with self._cond:
            self._rejections[method] = times

    # --- looking at what happened -----------------------------------------------------------------------------

    def calls_of(self, method: str, *, failed: bool | None = False) -> list[Call]:
        """The calls of ``method`` (by default only those that succeeded)."""
        with self._cond:
            return [c for c in self.calls if c.method == method and (failed is None or c.failed == failed)]

    def reports(self, job_id: int) -> list[dict[str, Any]]:
        """The bodies of the accepted reports about ``job_id``, in order."""
        return [c.args["body"] for c in self.calls_of("report") if c.args["job_id"] == job_id]

    def state(self, job_id: int) -> str:
        with self._cond:
            return self.jobs[job_id].state

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Poll ``predicate`` until it holds (``True``) or ``timeout`` seconds pass (``False``)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    # --- the Transport protocol -------------------------------------------------------------------------------

    def register(self, info: dict[str, Any]) -> dict[str, Any]:
        self._enter("register", {"info": info})
        return {"id": self.pilot_id, "lease_seconds": self.lease_seconds, "heartbeat_seconds": self.heartbeat_seconds}

    def match(self, offer: dict[str, Any]) -> dict[str, Any] | None:
        self._enter("match", {"offer": offer})
        deadline = time.monotonic() + float(offer.get("wait_seconds") or 0)
        with self._cond:
            while True:
                found = self._match_now(offer)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def _match_now(self, offer: dict[str, Any]) -> dict[str, Any] | None:
        """A halt order, or a job that fits and its lease, or ``None`` (called with the lock held)."""
        if self.halt_order is not None:
            return {"halt": dict(self.halt_order), "shutdowntime": self.shutdowntime}
        job = next((j for j in self.jobs.values() if j.state == "waiting" and _fits(j, offer)), None)
        if job is None:
            return None
        job.state, job.attempt = "matched", job.attempt + 1
        expires = time.time() + self.lease_seconds
        lease = {"token": job.attempt, "expires_at": expires, "seconds": self.lease_seconds}
        return {"job": job.as_order(), "lease": lease, "shutdowntime": self.shutdowntime}

    def download_input(self, job_id: int, lease_token: int, dest: Path) -> None:
        job = self._job_call("download_input", job_id, lease_token, {})
        with self._cond:
            data = self.sandboxes.get(job.input_sandbox or "")
        if data is None:
            raise RequestRejected(f"job {job_id} has no input sandbox", status=404, code="not_found")
        dest.write_bytes(data)

    def heartbeat(self, job_id: int, body: dict[str, Any]) -> dict[str, Any]:
        job = self._job_call("heartbeat", job_id, body.get("lease_token"), {"body": body}, allow_killed=True)
        action = "kill" if job.state == "killed" else "continue"
        with self._cond:
            shutdowntime = self.shutdowntime
        return {"lease_expires_at": time.time() + self.lease_seconds, "action": action, "shutdowntime": shutdowntime}

    def upload_output(self, job_id: int, lease_token: int, archive: Path) -> dict[str, Any]:
        data = archive.read_bytes()
        self._job_call("upload_output", job_id, lease_token, {"size": len(data)})
        with self._cond:
            self.outputs[job_id] = data
        return {"id": f"sha256:out{job_id}", "size": len(data)}

    def upload_events(self, job_id: int, lease_token: int, first: int, last: int, archive: Path) -> dict[str, Any]:
        data = archive.read_bytes()
        job = self.jobs.get(job_id)

        def in_order() -> None:  # as the server: the chunk must start at the first event not yet done
            if job is not None and (first != job.events_done or last < first):
                raise LeaseLost(f"upload_events: job {job_id} expects event {job.events_done}, not {first}", status=409)

        self._job_call("upload_events", job_id, lease_token, {"first": first, "last": last}, check=in_order)
        assert job is not None
        with self._cond:
            self.event_chunks.setdefault(job_id, []).append(EventChunk(first, last, job.attempt, data))
            job.events_done = last + 1
            return {"events_done": job.events_done}

    def report(self, job_id: int, body: dict[str, Any]) -> dict[str, Any]:
        state = body.get("state")
        if state == "done" and body.get("exit_code") not in (0, None):
            self._record("report", {"job_id": job_id, "body": body}, failed=True)
            raise RequestRejected("a job with a non-zero exit code is failed, not done", status=422, code="invalid")
        extended = REPORT_EXTENSIONS & body.keys()
        if extended and self.old_server:
            self._record("report", {"job_id": job_id, "body": body}, failed=True)
            raise RequestRejected(f"unknown fields {sorted(extended)}", status=422, code="invalid")
        job = self._job_call("report", job_id, body.get("lease_token"), {"body": body})
        if job.state == "matched" and state == "done" and body.get("ran_seconds") is None:
            # as the real server: a job goes through running, said so or carried by ran_seconds
            raise LeaseLost(f"job {job_id} is matched, not running: it cannot be done", status=409)
        answer: dict[str, Any] = {"id": job_id, "state": state}
        with self._cond:
            job.state = str(state)
            if body.get("output") is not None:
                self.outputs[job_id] = base64.b64decode(body["output"])
            if isinstance(body.get("next"), dict):
                answer["next"] = self._match_now(body["next"])
        return answer

    def halt(self, pilot_id: str, code: int, message: str) -> None:
        self._enter("halt", {"pilot_id": pilot_id, "code": code, "message": message})
        with self._cond:
            self.halts.append({"pilot_id": pilot_id, "code": code, "message": message})

    # --- plumbing ---------------------------------------------------------------------------------------------

    def _record(self, method: str, args: dict[str, Any], failed: bool) -> None:
        with self._cond:
            self.calls.append(Call(method, args, time.monotonic(), failed))

    def _enter(self, method: str, args: dict[str, Any], check: Callable[[], None] | None = None) -> None:
        """Apply the failure switches, then ``check``; record the call either way."""
        with self._cond:
            try:
                methods = self._unreachable_methods
                if self._unreachable > 0 and (methods is None or method in methods):
                    self._unreachable -= 1
                    raise ServerUnreachable(f"{method}: the fake server is unreachable")
                if self._rejections.get(method, 0) > 0:
                    self._rejections[method] -= 1
                    raise RequestRejected(f"{method}: refused by the fake server", status=403, code="forbidden")
                if check is not None:
                    check()
            except TransportError:
                self.calls.append(Call(method, args, time.monotonic(), failed=True))
                raise
            self.calls.append(Call(method, args, time.monotonic()))

    def _job_call(
        self,
        method: str,
        job_id: int,
        lease_token: Any,
        args: dict[str, Any],
        allow_killed: bool = False,
        check: Callable[[], None] | None = None,
    ) -> FakeJob:
        """Like a job call on the server: a 409 unless ``lease_token`` is the job's current, live lease (and
        ``check`` passes)."""
        job = self.jobs.get(job_id)
        also = check

        def check_lease() -> None:
            live = ("matched", "running", "killed") if allow_killed else ("matched", "running")
            if job is None or lease_token != job.attempt or job.state not in live:
                raise LeaseLost(f"{method}: job {job_id} is not held with lease {lease_token}", status=409)
            if also is not None:
                also()

        self._enter(method, {"job_id": job_id, **args}, check_lease)
        assert job is not None
        return job


def _fits(job: FakeJob, offer: dict[str, Any]) -> bool:
    if job.cores > int(offer.get("cores") or 1):
        return False
    memory = offer.get("memory_mb")
    if job.memory_mb is not None and memory is not None and job.memory_mb > memory:
        return False
    left = offer.get("seconds_left")
    return left is None or job.wall_seconds <= left
