"""Users' use cases: submit, look at, kill jobs and fetch their outputs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import Principal, Role
from cloudpilot.domain.jobs import Job, JobEvent, JobSpec, JobState
from cloudpilot.domain.matching import TaskQueue
from cloudpilot.services import metrics
from cloudpilot.services.auth import require
from cloudpilot.services.errors import BadInput, Forbidden, TooMany
from cloudpilot.storage.base import SandboxStore
from cloudpilot.store.errors import Conflict, NotFound
from cloudpilot.store.jobs import JobRepository
from cloudpilot.store.log_tails import LogTailRepository

log = logging.getLogger("cloudpilot.jobs")


class JobService:
    def __init__(
        self,
        jobs: JobRepository,
        sandboxes: SandboxStore,
        config: ServerConfig,
        on_new_work: Callable[[Sequence[TaskQueue]], None] = lambda _classes: None,
        log_tails: LogTailRepository | None = None,
    ) -> None:
        self.jobs = jobs
        self.log_tails = log_tails
        self.sandboxes = sandboxes
        self.config = config
        self.on_new_work = on_new_work

    def submit(self, principal: Principal, specs: Sequence[JobSpec], now: float) -> list[int]:
        require(principal, Role.USER)
        if principal.vo is None:
            raise Forbidden("submitting needs a token bound to a VO (a user token)")
        if len(specs) > self.config.jobs.max_per_request:
            raise TooMany(
                f"{len(specs)} jobs in one request; the limit is {self.config.jobs.max_per_request} "
                "(jobs.max_per_request)"
            )
        if not specs:
            raise BadInput("the submission holds no job")
        missing = self._first_missing(spec.input_sandbox for spec in specs)
        if missing is not None:
            i, sandbox = missing
            where = f"[{i}].input_sandbox" if len(specs) > 1 else "input_sandbox"
            raise BadInput(f"{where}: sandbox {sandbox} was never uploaded (POST /api/v1/sandboxes)", where)
        jobs_config = self.config.jobs
        ids, classes = self.jobs.submit_into_classes(
            principal.vo,
            principal.name,
            specs,
            now,
            jobs_config.default_wall_seconds,
            jobs_config.max_waiting_classes_per_user,
        )
        metrics.JOBS_SUBMITTED.labels(principal.vo).inc(len(ids))
        what = f"job {ids[0]}" if len(ids) == 1 else f"{len(ids)} jobs {ids[0]}..{ids[-1]}"
        log.info("%s submitted by %s", what, principal.name, extra={"job_id": ids[0], "vo": principal.vo})
        self.on_new_work(classes)
        return ids

    def get(self, principal: Principal, job_id: int) -> Job:
        job = self.jobs.get(job_id)
        self._check_visible(principal, job)
        return job

    def history(self, principal: Principal, job_id: int) -> list[JobEvent]:
        self.get(principal, job_id)
        return self.jobs.history(job_id)

    def list(
        self,
        principal: Principal,
        state: JobState | None,
        limit: int,
        after_id: int,
        name: str | None = None,
        vo: str | None = None,
    ) -> list[Job]:
        """The caller's jobs; ``vo`` narrows them to one VO (a user's other VOs hold none of theirs)."""
        scope_vo, owner = self.scope(principal)
        if vo is not None and scope_vo is not None and vo != scope_vo:
            return []
        return self.jobs.list(scope_vo or vo, owner, state, limit, after_id, name)

    def resubmit(self, principal: Principal, job_ids: Sequence[int], now: float) -> list[int]:
        """New waiting jobs from the stored specs of final jobs (input sandbox included), in the order given (an id
        given twice counts once); each belongs to its original's owner. Nothing is submitted unless every id can
        be resubmitted, but for one limit checked as each owner's jobs are stored (an admin's may belong to
        several): an owner over jobs.max_waiting_classes_per_user is refused after the owners before it."""
        if not job_ids:
            raise BadInput("no job to resubmit", "ids")
        originals = [self.get(principal, job_id) for job_id in dict.fromkeys(job_ids)]
        busy = [f"{j.id} ({j.state.value})" for j in originals if not j.state.is_final]
        if busy:
            raise Conflict(f"only final jobs can be resubmitted; not final yet: {', '.join(busy)}")
        missing = self._first_missing(job.spec.input_sandbox for job in originals)
        if missing is not None:
            i, sandbox = missing
            raise Conflict(f"job {originals[i].id}: its input sandbox {sandbox} is no longer stored")
        # A user's jobs share one owner; an admin's may belong to several, each keeping its own.
        new_ids: dict[int, int] = {}
        by_owner: dict[tuple[str, str], list[Job]] = {}
        for job in originals:
            by_owner.setdefault((job.vo, job.owner), []).append(job)
        for (vo, owner), group in by_owner.items():
            submitter = Principal(token_id=principal.token_id, role=Role.USER, name=owner, vo=vo)
            ids = self.submit(submitter, [j.spec for j in group], now)
            new_ids.update(zip((j.id for j in group), ids, strict=True))
        return [new_ids[job.id] for job in originals]

    def counts(self, principal: Principal) -> dict[str, int]:
        vo, owner = self.scope(principal)
        return self.jobs.counts(vo, owner)

    def kill(self, principal: Principal, job_id: int, now: float) -> Job:
        self.get(principal, job_id)
        return self.jobs.kill(
            job_id, now, f"killed by {principal.name}", half_life=self.config.fair_share.half_life_seconds
        )

    def output_sandbox(self, principal: Principal, job_id: int) -> str:
        job = self.get(principal, job_id)
        if job.output_sandbox is None:
            raise NotFound(f"job {job_id} has no output yet (it is {job.state.value})")
        return job.output_sandbox

    def log_tail(self, principal: Principal, job_id: int) -> dict[str, Any]:
        """The latest tail of the job's ``job.log`` its pilot sent (``tail`` empty if none came yet), with the
        job's state so a follower knows when to stop."""
        job = self.get(principal, job_id)
        stored = self.log_tails.get(job_id) if self.log_tails is not None else None
        return {
            "job_id": job_id,
            "state": job.state.value,
            "attempt": stored.attempt if stored else None,
            "tail": stored.tail if stored else "",
            "updated_at": stored.updated_at if stored else None,
        }

    def event_chunks(self, principal: Principal, job_id: int) -> list[dict[str, Any]]:
        """The output chunks of a job's finished events, in event order."""
        self.get(principal, job_id)
        return self.jobs.event_chunks(job_id)

    def event_chunk_sandbox(self, principal: Principal, job_id: int, first: int) -> str:
        for chunk in self.event_chunks(principal, job_id):
            if chunk["first_event"] == first:
                return str(chunk["sandbox_id"])
        raise NotFound(f"job {job_id} has no output chunk starting at event {first}")

    @staticmethod
    def scope(principal: Principal) -> tuple[str | None, str | None]:
        """(VO, owner) of the jobs the principal may see; (None, None): an admin sees every job."""
        if principal.is_admin:
            return None, None
        require(principal, Role.USER)
        return principal.vo, principal.name

    def _first_missing(self, sandboxes: Iterable[str | None]) -> tuple[int, str] | None:
        """The first sandbox that is not stored, with its position. Each distinct one is looked up once: on S3 a
        look is a request, and the 100,000 jobs of one submission usually share one sandbox."""
        looked: set[str] = set()
        for i, sandbox in enumerate(sandboxes):
            if sandbox is None or sandbox in looked:
                continue
            if not self.sandboxes.exists(sandbox):
                return i, sandbox
            looked.add(sandbox)
        return None

    @staticmethod
    def _check_visible(principal: Principal, job: Job) -> None:
        if principal.is_admin:
            return
        require(principal, Role.USER)
        if job.vo != principal.vo or job.owner != principal.name:
            raise Forbidden(f"job {job.id} belongs to another user; you can only see and kill your own jobs")
