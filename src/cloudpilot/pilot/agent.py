"""The pilot's main loop: register, fill the free cores with jobs through long polls, leave with a shutdown code.

Cores are slots: every job takes ``job.cores`` of them from its start until its payload has ended (its output
may still be on the way to the server), and the loop offers whatever is free. With every core busy it waits on
a condition until a job frees some. It leaves when

* :meth:`Agent.stop` is called (SIGTERM): payloads are killed, their leases left to expire — code 100;
* no job has run nor been obtained for ``idle_timeout`` seconds, or the lifetime is over — 200 if it ran at
  least one job, else 300 (running jobs are waited for);
* a shutdown time is known (machine/job features, or the server's answers) and either it has come or, with no
  job running, a match brought nothing — 100 (running jobs are waited for);
* a match answers ``{"halt": {"code", "reason"}}`` — that code (running jobs are waited for);
* the server stayed unreachable for ``give_up_seconds`` — 700;
* the server refuses the pilot itself: 403 — 400 (banned); 401 (its token is wrong) and anything else — 600.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cloudpilot.domain.shutdown import ShutdownCode, shutdown_message
from cloudpilot.pilot.assignment import Assignment, parse_assignment, parse_halt
from cloudpilot.pilot.config import PilotConfig
from cloudpilot.pilot.errors import GaveUp, ProtocolError, RequestRejected, Stopped, TransportError
from cloudpilot.pilot.features import FeatureDirs, FeatureSource
from cloudpilot.pilot.heartbeat import heartbeat_interval
from cloudpilot.pilot.isolation import PRIVATE_DIR, SPARE_DIRS, private_dir, sweep
from cloudpilot.pilot.jobdirs import JobDirs
from cloudpilot.pilot.jobrunner import JobEnd, JobRunner
from cloudpilot.pilot.retry import with_retries
from cloudpilot.pilot.sandbox import JOB_LOG
from cloudpilot.pilot.site import SiteView
from cloudpilot.pilot.transport import Transport

log = logging.getLogger(__name__)

SHUTDOWN_FILE = "shutdown_message"
MACHINEFEATURES_DIR = "machinefeatures"  # the mirror of the machine features, in the workdir
JOBFEATURES_DIR = "jobfeatures"  # the payloads' job features, one directory per payload running at once
MIN_POLL_SECONDS = 0.5  # never ask more often than this, even if the server answers 204 at once
SLOT_RECHECK_SECONDS = 0.5  # how often a loop waiting for a free core looks at its deadlines
MAX_WAIT_SECONDS = 60.0  # the longest long poll the REST contract allows
STOP_CHECK_SECONDS = 0.1  # how quickly the main thread notices stop() during a long poll
LAUNCH_FIRST_SECONDS = 0.05  # the longest the next match waits for the job just obtained to start its payload


@dataclass(frozen=True)
class Shutdown:
    """The pilot's last word: its vacuum-model code and the ``NNN text`` line."""

    code: ShutdownCode
    message: str

    @property
    def exit_status(self) -> int:
        """The process's exit status: 0 for codes below 500 (nothing wrong), 1 otherwise."""
        return 0 if self.code < 500 else 1


@dataclass(frozen=True)
class Registration:
    pilot_id: str
    lease_seconds: float
    heartbeat_seconds: float


class Agent:
    """One pilot. ``clock`` (monotonic seconds), ``wall_clock`` (UNIX seconds, what shutdown times are given in)
    and ``sleep`` (used between retries) are injectable for tests; by default the sleep ends early when the pilot
    is stopped."""

    def __init__(
        self,
        transport: Transport,
        config: PilotConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        self.transport, self.config, self.clock, self.wall_clock = transport, config, clock, wall_clock
        self._stop = threading.Event()
        self.sleep: Callable[[float], object] = sleep or self._stop.wait
        self._cond = threading.Condition(threading.RLock())  # re-entrant: stop() may run in a signal handler
        self._runners: dict[str, JobRunner] = {}
        self._used_cores = 0
        self._used_memory = 0
        self._gave_up: str | None = None
        self._fatal: tuple[ShutdownCode, str] | None = None
        self._leaving: tuple[ShutdownCode, str] | None = None  # a halt ordered by the server or a shutdown time
        self.site = SiteView(
            FeatureSource(config.machinefeatures),
            FeatureSource(config.jobfeatures),
            config.workdir / MACHINEFEATURES_DIR,
        )
        self._feature_dirs = FeatureDirs(config.workdir / JOBFEATURES_DIR)
        self._job_dirs = JobDirs(config.workdir / PRIVATE_DIR / SPARE_DIRS, keep=JOB_LOG)
        self._next_refresh = 0.0
        self._started = clock()
        self._idle_since = self._started
        self.registration: Registration | None = None
        self.jobs_obtained = 0
        self._asked_cores = self.config.cores  # cores offered by the last match that found nothing

    # --- public -----------------------------------------------------------------------------------------------

    def run(self) -> Shutdown:
        """Work until it is time to leave; then write the shutdown message, tell the server, and return it."""
        self.config.workdir.mkdir(parents=True, exist_ok=True)
        sweep(private_dir(self.config.workdir))  # payloads an earlier pilot on this workdir left running
        self.site.load()
        self._next_refresh = self.clock() + self.config.features_refresh
        try:
            self.registration = self._register()
        except GaveUp as exc:
            return self._finish(ShutdownCode.TRANSIENT_PROBLEM, str(exc))
        except Stopped:
            return self._finish(ShutdownCode.SHUTDOWN_AS_REQUESTED)
        except (RequestRejected, ProtocolError) as exc:
            return self._finish(*self._refused("registration", exc))
        self._idle_since = self.clock()
        self._loop()
        if self._stop.is_set():
            self._abort_all("the pilot is stopping")
            self._join_all(self.config.kill_grace_seconds + 5)
            return self._finish(ShutdownCode.SHUTDOWN_AS_REQUESTED)
        self._join_all(None)  # running jobs finish and are delivered (or given up) first
        if self._stop.is_set():
            return self._finish(ShutdownCode.SHUTDOWN_AS_REQUESTED)
        if self._fatal is not None:
            return self._finish(*self._fatal)
        if self._gave_up is not None:
            return self._finish(ShutdownCode.TRANSIENT_PROBLEM, self._gave_up)
        if self._leaving is not None:
            return self._finish(*self._leaving)
        code = ShutdownCode.WORK_COMPLETED if self.jobs_obtained else ShutdownCode.NO_MORE_WORK
        return self._finish(code)

    def stop(self) -> None:
        """Leave as soon as possible (SIGTERM): take no more work and kill the payloads; their leases expire."""
        self._stop.set()
        self._abort_all("the pilot is stopping")
        with self._cond:
            self._cond.notify_all()

    # --- the loop ---------------------------------------------------------------------------------------------

    def _register(self) -> Registration:
        cfg = self.config
        info = {
            "hostname": cfg.hostname,
            "cores": cfg.cores,
            "memory_mb": cfg.memory_mb,
            "site": cfg.site,
            "cloud": cfg.cloud,
            "tags": list(cfg.tags),
        }
        answer = self._retrying("register", lambda: self.transport.register(info))
        if not answer.get("id"):
            raise ProtocolError("the registration answer has no pilot id")
        server_limit = answer.get("max_sandbox_bytes")
        if cfg.max_unpacked_bytes is None and isinstance(server_limit, int) and server_limit > 0:
            self.config = dataclasses.replace(cfg, max_unpacked_bytes=10 * server_limit)
        reg = Registration(
            pilot_id=str(answer["id"]),
            lease_seconds=float(answer.get("lease_seconds") or 90),
            heartbeat_seconds=float(answer.get("heartbeat_seconds") or 30),
        )
        log.info(
            "registered as pilot %s: %d cores, %s MB, site %s, cloud %s, image %s, tags %s; working in %s",
            reg.pilot_id, cfg.cores, cfg.memory_mb, cfg.site, cfg.cloud, cfg.image or "-", ",".join(cfg.tags) or "-",
            cfg.workdir,
        )  # fmt: skip
        return reg

    def _loop(self) -> None:
        while True:
            self._refresh_features()
            with self._cond:
                if self._time_to_leave():
                    return
                offer = self._offer()
                if offer is None:
                    self._cond.wait(SLOT_RECHECK_SECONDS)
                    continue
            asked = self.clock()
            try:
                answer = self._ask(offer)
            except Stopped:
                return
            except GaveUp as exc:
                log.error("%s", exc)
                self._gave_up = str(exc)
                return
            except (RequestRejected, ProtocolError) as exc:
                self._fatal = self._refused("matching", exc)
                return
            if self._stop.is_set():
                return  # a job obtained just now is left to its lease's expiry
            if answer is None:
                self._asked_cores = int(offer["cores"])
                if self._nothing_before_shutdown():
                    return
                elapsed = self.clock() - asked
                if elapsed < MIN_POLL_SECONDS:
                    self._stop.wait(MIN_POLL_SECONDS - elapsed)
                continue
            self._learn(answer)
            try:
                halt = parse_halt(answer)
                if halt is not None:
                    log.info("the server orders this pilot to halt: %d %s", int(halt.code), halt.reason or "-")
                    self._leaving = (halt.code, halt.reason)
                    return
                runner = self._launch(parse_assignment(answer))
            except ProtocolError as exc:
                self._fatal = self._refused("matching", exc)
                return
            # Start the job in hand before asking for more: the next long poll's request, and the server's
            # work on it, would compete with this payload's start for the machine (a few ms on two cores).
            runner.launched.wait(LAUNCH_FIRST_SECONDS)

    def _nothing_before_shutdown(self) -> bool:
        """After a match brought nothing: with a shutdown of the machine scheduled and no job running, time to
        leave. The slot's own end (``shutdowntime_job``: the VM's lifetime) only bounds what it takes."""
        deadline = self.site.machine_deadline()
        with self._cond:
            if deadline is None or self._runners:
                return False
            log.info("no job fits before the shutdown at %s; leaving", deadline.describe())
            self._leaving = (ShutdownCode.SHUTDOWN_AS_REQUESTED, f"nothing to run before {deadline.describe()}")
            return True

    def _time_to_leave(self) -> bool:
        """Whether to stop asking for work (called with the lock held)."""
        if self._stop.is_set() or self._fatal is not None or self._gave_up is not None:
            return True
        deadline = self.site.deadline()
        if deadline is not None and deadline.at - self.wall_clock() < 1:
            log.info("shutdown time %s reached; taking no more work", deadline.describe())
            self._leaving = (ShutdownCode.SHUTDOWN_AS_REQUESTED, f"shutdown time {deadline.describe()} reached")
            return True
        now = self.clock()
        if self._lifetime_left(now) == 0:
            log.info("lifetime of %.0f s over; taking no more work", self.config.lifetime)
            return True
        idle = now - self._idle_since
        if not self._runners and idle >= self.config.idle_timeout:
            if self._asked_cores < self.config.cores:
                # The last "nothing" was for fewer cores than are free now (a long poll made while jobs still
                # ran): ask once more with all of them, at once, before leaving a job that needs them behind.
                return False
            log.info("no work for %.0f s; leaving", idle)
            return True
        return False

    def _lifetime_left(self, now: float) -> int | None:
        if self.config.lifetime is None:
            return None
        return max(0, int(self.config.lifetime - (now - self._started)))

    def _seconds_left(self, now: float) -> int | None:
        """What the offer's ``seconds_left`` says: the lifetime left, cut to the earliest shutdown time known."""
        limits = [self._lifetime_left(now), self.site.seconds_left(self.wall_clock())]
        known = [limit for limit in limits if limit is not None]
        return int(min(known)) if known else None

    def _refresh_features(self) -> None:
        if self.clock() < self._next_refresh:
            return
        self._next_refresh = self.clock() + self.config.features_refresh
        if self.site.refresh():
            self._features_changed()

    def _learn(self, answer: dict[str, Any]) -> None:
        """A server's answer may carry the machine's ``shutdowntime`` (from any thread)."""
        if self.site.learn(answer):
            self._features_changed()

    def _features_changed(self) -> None:
        with self._cond:
            runners = list(self._runners.values())
        for runner in runners:
            runner.refresh_features()

    def _offer(self) -> dict[str, Any] | None:
        """What to offer the matcher now, or ``None`` when no core (or no memory) is free."""
        cfg, reg = self.config, self.registration
        assert reg is not None
        cores = cfg.cores - self._used_cores
        memory = None if cfg.memory_mb is None else cfg.memory_mb - self._used_memory
        if cores < 1 or (memory is not None and memory < 1):
            return None
        now = self.clock()
        # Do not overshoot the idle timeout by a whole long poll (a running job may end any moment).
        idle = now - self._idle_since if not self._runners else 0.0
        wait = min(cfg.wait_seconds, cfg.idle_timeout - idle)
        left = self._seconds_left(now)
        if left is not None:
            wait = min(wait, left)
        offer = {
            "pilot_id": reg.pilot_id,
            "cores": cores,
            "memory_mb": memory,
            "seconds_left": left,
            "tags": list(cfg.tags),
            "site": cfg.site,
            "cloud": cfg.cloud,
            "wait_seconds": round(min(max(wait, 0.0), MAX_WAIT_SECONDS), 3),
        }
        if cfg.image is not None:  # only then: servers without image lists know no such field
            offer["image"] = cfg.image
        return offer

    # --- jobs -------------------------------------------------------------------------------------------------

    def _launch(self, assignment: Assignment) -> JobRunner:
        job, reg = assignment.job, self.registration
        assert reg is not None
        lease_seconds = min(reg.lease_seconds, assignment.lease.seconds or reg.lease_seconds)
        runner = JobRunner(
            assignment,
            transport=self.transport,
            config=self.config,
            site=self.site,
            heartbeat_every=heartbeat_interval(reg.heartbeat_seconds, lease_seconds),
            clock=self.clock,
            wall_clock=self.wall_clock,
            sleep=self.sleep,
            stop=self._stop,
            on_cores_free=self._cores_free,
            on_end=self._ended,
            feature_dirs=self._feature_dirs,
            job_dirs=self._job_dirs,
            on_answer=self._learn,
            next_offer=self._handover_offer,
            on_next=self._take_over,
        )
        with self._cond:
            self._runners[job.label] = runner
            self._used_cores += job.cores
            self._used_memory += self._memory_of(job.cores, job.memory_mb)
            self.jobs_obtained += 1
        runner.start()
        return runner

    def _handover_offer(self, runner: JobRunner) -> dict[str, Any] | None:
        """The offer a final report makes for the cores its job frees: the slot's next job comes back in the
        same round trip (``None``: the pilot takes no more work)."""
        reg = self.registration
        assert reg is not None
        with self._cond:
            if self._stop.is_set() or self._fatal or self._gave_up or self._leaving:
                return None
        deadline = self.site.deadline()
        if deadline is not None and deadline.at - self.wall_clock() < 1:
            return None
        left = self._seconds_left(self.clock())
        if left == 0:
            return None
        cfg, job = self.config, runner.job
        offer: dict[str, Any] = {
            "cores": job.cores,
            "memory_mb": None if cfg.memory_mb is None else self._memory_of(job.cores, job.memory_mb),
            "seconds_left": left,
            "tags": list(cfg.tags),
            "site": cfg.site,
            "cloud": cfg.cloud,
        }
        if cfg.image is not None:
            offer["image"] = cfg.image
        return offer

    def _take_over(self, runner: JobRunner, answer: dict[str, Any]) -> None:
        """A final report's ``next``: the job to start on the cores ``runner`` is about to free, or a halt."""
        self._learn(answer)
        try:
            halt = parse_halt(answer)
            if halt is not None:
                log.info("the server orders this pilot to halt: %d %s", int(halt.code), halt.reason or "-")
                with self._cond:
                    self._leaving = (halt.code, halt.reason)
                    self._cond.notify_all()
                return
            self._launch(parse_assignment(answer))
        except ProtocolError as exc:
            with self._cond:
                self._fatal = self._refused("matching", exc)
                self._cond.notify_all()

    def _memory_of(self, cores: int, memory_mb: int | None) -> int:
        """Memory a job reserves: what it asked for, else its cores' share of the pilot's memory."""
        if self.config.memory_mb is None:
            return 0
        if memory_mb is not None:
            return memory_mb
        return self.config.memory_mb * cores // self.config.cores

    def _cores_free(self, runner: JobRunner) -> None:
        with self._cond:
            self._used_cores -= runner.job.cores
            self._used_memory -= self._memory_of(runner.job.cores, runner.job.memory_mb)
            self._cond.notify_all()

    def _ended(self, runner: JobRunner) -> None:
        with self._cond:
            self._runners.pop(runner.job.label, None)
            if runner.end is JobEnd.GAVE_UP and self._gave_up is None:
                self._gave_up = f"results of {runner.job.label} could not be delivered"
            self._idle_since = self.clock()
            self._cond.notify_all()

    def _abort_all(self, reason: str) -> None:
        with self._cond:
            runners = list(self._runners.values())
        for runner in runners:
            runner.abort(reason)

    def _join_all(self, timeout: float | None) -> None:
        """Wait until every job thread has ended (at most ``timeout`` seconds)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._runners:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    log.warning("leaving %d job thread(s) behind", len(self._runners))
                    return
                self._cond.wait(SLOT_RECHECK_SECONDS if left is None else min(left, SLOT_RECHECK_SECONDS))
                if self._stop.is_set() and deadline is None:
                    deadline = time.monotonic() + self.config.kill_grace_seconds + 5

    # --- helpers ----------------------------------------------------------------------------------------------

    def _ask(self, offer: dict[str, Any]) -> dict[str, Any] | None:
        """One long poll for work, retried while the server is unreachable.

        It runs in a helper thread so that :meth:`stop` is not held up by a poll of up to a minute: the main
        thread then leaves at once, and a job the abandoned poll may still get is left to its lease's expiry.
        """
        outcome: list[tuple[bool, Any]] = []
        done = threading.Event()

        def ask() -> None:
            try:
                outcome.append((True, self._retrying("ask for work", lambda: self.transport.match(offer))))
            except BaseException as exc:  # handed over to the main thread and raised there
                outcome.append((False, exc))
            finally:
                done.set()

        threading.Thread(target=ask, name="match", daemon=True).start()
        while not done.wait(STOP_CHECK_SECONDS):
            if self._stop.is_set():
                raise Stopped("ask for work: the pilot is stopping")
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    def _retrying(self, what: str, call: Callable[[], Any]) -> Any:
        return with_retries(
            call,
            what=what,
            give_up_seconds=self.config.give_up_seconds,
            clock=self.clock,
            sleep=self.sleep,
            stop=self._stop,
        )

    @staticmethod
    def _refused(what: str, exc: Exception) -> tuple[ShutdownCode, str]:
        status = getattr(exc, "status", None)
        if status == 401:  # not a ban: nothing will change until someone gives this pilot a valid token
            detail = f"wrong pilot token: the server does not accept it (unknown, wrong, expired or revoked); {exc}"
            log.error("%s", detail)
            return ShutdownCode.GRID_PROBLEM, detail
        log.error("%s refused: %s", what, exc)
        if status == 403:
            return ShutdownCode.BANNED, f"{what} refused: {exc}"
        return ShutdownCode.GRID_PROBLEM, f"{what} failed: {exc}"

    def _finish(self, code: ShutdownCode, detail: str = "") -> Shutdown:
        message = shutdown_message(code, detail)
        path = self.config.workdir / SHUTDOWN_FILE
        try:
            path.write_text(message + "\n")
        except OSError as exc:
            log.error("cannot write %s: %s", path, exc)
        if self.registration is not None:
            try:
                self.transport.halt(self.registration.pilot_id, int(code), message[:1000])
            except (TransportError, ProtocolError) as exc:
                log.warning("could not tell the server that this pilot halts: %s", exc)
        log.info("halting with shutdown code %d", int(code))
        return Shutdown(code, message)
