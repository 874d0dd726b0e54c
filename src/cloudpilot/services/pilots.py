"""Pilots' use cases: register, ask for work, heartbeat, upload, report, halt.

Every call but the registration needs the pilot session the registration answered (services/sessions.py), and
acts for that session's pilot only. Checks run in this order so each refusal names the right cause: the job
exists (404), it belongs to the pilot's VO (403), the lease token is the current one (409: a late report of a
lost pilot), and the lease is held by this session's pilot (403).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import Principal, Role
from cloudpilot.domain.jobs import Job, JobState
from cloudpilot.domain.matching import Offer
from cloudpilot.domain.shutdown import ShutdownCode
from cloudpilot.domain.times import iso
from cloudpilot.services.auth import require
from cloudpilot.services.errors import BadInput, Forbidden
from cloudpilot.services.matcher import MatchService
from cloudpilot.services.sessions import PilotSessions
from cloudpilot.services.site_policy import SitePolicy, VODisabled
from cloudpilot.services.vm_activity import VMActivity
from cloudpilot.store.errors import NotFound
from cloudpilot.store.jobs import JobRepository
from cloudpilot.store.log_tails import LogTailRepository
from cloudpilot.store.pilots import PilotRecord, PilotRepository
from cloudpilot.store.sandboxes import StoredSandbox


@dataclass(frozen=True, slots=True)
class Registration:
    pilot_id: str
    lease_seconds: float
    heartbeat_seconds: float
    session_token: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    lease_expires_at: float | None
    kill: bool
    shutdowntime: float | None = None


@dataclass(frozen=True, slots=True)
class MatchAnswer:
    """A job, or nothing; ``halt``: the site's policy wants the pilot gone (code, reason);
    ``shutdowntime``: a scheduled shutdown of the pilot's VM."""

    job: Job | None = None
    halt: tuple[int, str] | None = None
    shutdowntime: float | None = None


log = logging.getLogger("cloudpilot.pilots")

SEEN_EVERY_SECONDS = 60.0
MAX_LOG_TAIL_CHARS = 8192  # of a job.log tail kept per job (pilots send 4 KiB; a bigger one keeps its end)


class PilotService:
    def __init__(
        self,
        jobs: JobRepository,
        pilots: PilotRepository,
        matcher: MatchService,
        config: ServerConfig,
        sessions: PilotSessions,
        vm_activity: VMActivity | None = None,
        site_policy: SitePolicy | None = None,
        log_tails: LogTailRepository | None = None,
    ) -> None:
        self.sessions = sessions
        self.log_tails = log_tails
        self.vm_activity = vm_activity
        self.site_policy = site_policy
        self.jobs = jobs
        self.pilots = pilots
        self.matcher = matcher
        self.config = config
        self._seen: dict[str, float] = {}  # hand-started pilot id -> when its last_seen_at was written
        self._lock = threading.Lock()

    def register(
        self,
        principal: Principal,
        now: float,
        *,
        hostname: str | None,
        cores: int,
        memory_mb: int | None,
        site: str | None,
        cloud: str | None,
    ) -> Registration:
        require(principal, Role.PILOT)
        pilot_id = secrets.token_hex(8)
        # The token is exchanged first: a second registration with a VM's token is refused even for a dead VM.
        session = self.sessions.open(principal, pilot_id, now)
        if principal.vm_id is not None and self.vm_activity is not None:
            self.vm_activity.pilot_registered(principal.vm_id, now)
        self.pilots.register(
            PilotRecord(
                id=pilot_id,
                token_id=principal.token_id,
                vo=principal.vo,
                site=site,
                cloud=cloud,
                hostname=hostname,
                cores=cores,
                memory_mb=memory_mb,
                registered_at=now,
                last_seen_at=now,
                state="active",
                shutdown_code=None,
                shutdown_message=None,
                vm_id=principal.vm_id,
            )
        )
        ids = {"pilot_id": pilot_id, "vm_id": principal.vm_id, "vo": principal.vo, "cloud": cloud, "site": site}
        log.info("pilot %s registered (%d cores, host %s)", pilot_id, cores, hostname, extra=ids)
        lease = self.config.lease
        return Registration(pilot_id, lease.seconds, min(lease.heartbeat_seconds, lease.seconds / 3), session)

    def match(self, principal: Principal, pilot_id: str, offer: Offer, now: float) -> MatchAnswer:
        """Check the site's permission for the next job, then hand out the best job that fits, if any."""
        self._check_pilot(principal, pilot_id, now)
        activity, vm_id = self.vm_activity, principal.vm_id
        vm = None
        if activity is not None and vm_id is not None:
            vm = activity.vm_for_work(vm_id)
            if vm is None:
                activity.seen(vm_id, now, matched=False)
                return MatchAnswer()
        deadline = vm.shutdown_deadline if vm is not None else None
        site = vm.site if vm is not None else offer.site
        if self.site_policy is not None:
            try:
                permission = self.site_policy.check(principal.vo, site, offer.seconds_left, deadline, now)
            except VODisabled as exc:
                if vm is not None and activity is not None:
                    activity.refused(vm, str(exc), now)
                raise
            if permission.halt is not None:
                if vm is not None and activity is not None:
                    activity.refused(vm, permission.halt[1], now)
                return MatchAnswer(halt=(int(permission.halt[0]), permission.halt[1]), shutdowntime=deadline)
            offer = offer.model_copy(update={"seconds_left": permission.seconds_left})
        job = self.matcher.match(pilot_id, offer, principal.vo, now)
        if vm_id is None:
            self._seen_now(pilot_id, now)
        if activity is not None and vm_id is not None:
            activity.seen(vm_id, now, matched=job is not None)
        if job is None and deadline is not None:
            # A VM to be shut down with nothing that ends in time: it leaves now rather than idle to its end.
            halt = (int(ShutdownCode.SHUTDOWN_AS_REQUESTED), f"the site shuts this VM down by {iso(deadline)}")
            return MatchAnswer(halt=halt, shutdowntime=deadline)
        return MatchAnswer(job, shutdowntime=deadline)

    def _seen_now(self, pilot_id: str, now: float) -> None:
        """Keep a hand-started pilot's ``last_seen_at`` fresh to the minute (explanations of why work waits
        read what such pilots offered lately), without a write per match."""
        with self._lock:
            if now - self._seen.get(pilot_id, 0.0) < SEEN_EVERY_SECONDS:
                return
            self._seen[pilot_id] = now
            if len(self._seen) > 10_000:  # pilots come and go: forget those silent for a while
                self._seen = {p: t for p, t in self._seen.items() if now - t < 10 * SEEN_EVERY_SECONDS}
        self.pilots.seen(pilot_id, now)

    def input_sandbox(self, principal: Principal, job_id: int, lease_token: int) -> str:
        job = self._held(principal, job_id, lease_token)
        if job.spec.input_sandbox is None:
            raise NotFound(f"job {job_id} has no input sandbox")
        return job.spec.input_sandbox

    def heartbeat(
        self,
        principal: Principal,
        job_id: int,
        lease_token: int,
        now: float,
        cpu_seconds: float | None,
        max_rss_bytes: int | None,
        progress: str | None,
        log_tail: str | None = None,
    ) -> Heartbeat:
        self._held(principal, job_id, lease_token, allow_killed=True)
        self.sessions.renew(principal, now)
        shutdowntime = None
        if principal.vm_id is not None and self.vm_activity is not None:
            shutdowntime = self.vm_activity.heartbeat(principal.vm_id, now)
        job = self.jobs.heartbeat(
            job_id, lease_token, now, self.config.lease.seconds, cpu_seconds, max_rss_bytes, progress
        )
        if log_tail is not None and self.log_tails is not None and job.state is not JobState.KILLED:
            self.log_tails.put(job_id, lease_token, log_tail[-MAX_LOG_TAIL_CHARS:], now)
        return Heartbeat(job.lease_expires_at, job.state is JobState.KILLED, shutdowntime)

    def check_holder(self, principal: Principal, job_id: int, lease_token: int) -> None:
        self._held(principal, job_id, lease_token)

    def set_output(self, principal: Principal, job_id: int, lease_token: int, sandbox_id: str, now: float) -> None:
        self._held(principal, job_id, lease_token)
        self.jobs.set_output(job_id, lease_token, sandbox_id, now)

    def add_event_chunk(
        self, principal: Principal, job_id: int, lease_token: int, first: int, last: int, sandbox_id: str, now: float
    ) -> Job:
        """The output of events ``first..last``, finished by the attempt this pilot holds."""
        self._held(principal, job_id, lease_token)
        return self.jobs.add_event_chunk(job_id, lease_token, first, last, sandbox_id, now)

    def report(
        self,
        principal: Principal,
        job_id: int,
        lease_token: int,
        state: JobState,
        now: float,
        *,
        exit_code: int | None,
        reason: str | None,
        cpu_seconds: float | None,
        max_rss_bytes: int | None,
        output: StoredSandbox | None = None,
        ran_seconds: float | None = None,
    ) -> Job:
        if state not in (JobState.RUNNING, JobState.DONE, JobState.FAILED):
            raise BadInput(f"a pilot reports running, done or failed, not {state.value}", "state")
        if state is JobState.DONE and exit_code not in (0, None):
            raise BadInput(f"a job that exited with code {exit_code} is failed, not done", "exit_code")
        if output is not None and state is JobState.RUNNING:
            raise BadInput("an output comes with the job's end (done or failed), not with running", "output")
        if ran_seconds is not None and state is JobState.RUNNING:
            raise BadInput("ran_seconds comes with the job's end (done or failed), not with running", "ran_seconds")
        # The holder's checks run on the row the report locks: one transaction, no read of its own before it.
        return self.jobs.report(
            job_id,
            lease_token,
            state,
            now,
            exit_code=0 if state is JobState.DONE else exit_code,
            reason=reason or "",
            cpu_seconds=cpu_seconds,
            max_rss_bytes=max_rss_bytes,
            half_life=self.config.fair_share.half_life_seconds,
            check=self._holder_check(principal, lease_token),
            output=output,
            ran_seconds=ran_seconds,
        )

    def halt(self, principal: Principal, pilot_id: str, code: int, message: str, now: float) -> None:
        self._check_pilot(principal, pilot_id, now)
        self.pilots.halt(pilot_id, code, message, now)
        self.sessions.close(pilot_id, now)
        if principal.vm_id is not None and self.vm_activity is not None:
            self.vm_activity.pilot_halted(principal.vm_id, code, message, now)

    # --- checks -----------------------------------------------------------------------------------------

    def _check_pilot(self, principal: Principal, pilot_id: str, now: float) -> None:
        own = PilotSessions.pilot_of(principal)
        if own != pilot_id:
            raise Forbidden(f"this session belongs to pilot {own}, not to pilot {pilot_id}")
        self.sessions.renew(principal, now)

    def _held(self, principal: Principal, job_id: int, lease_token: int, allow_killed: bool = False) -> Job:
        check = self._holder_check(principal, lease_token, allow_killed)
        job = self.jobs.get(job_id)
        check(job)
        return job

    @staticmethod
    def _holder_check(principal: Principal, lease_token: int, allow_killed: bool = False) -> Callable[[Job], None]:
        """The checks of a call about a job, in the order of the module's docstring, for the store to run on
        the row it reads (the 404 is the store's)."""
        own = PilotSessions.pilot_of(principal)

        def check(job: Job) -> None:
            if principal.vo is not None and job.vo != principal.vo:
                raise Forbidden(f"job {job.id} belongs to VO {job.vo}, not to this pilot's VO {principal.vo}")
            killed_now = allow_killed and job.state is JobState.KILLED and job.attempts == lease_token
            if not killed_now:
                job.check_lease(lease_token)
            if job.pilot_id != own:
                raise Forbidden(f"job {job.id} is not leased to this pilot ({own})")

        return check
