"""``/api/v1/pilots`` and the job calls a pilot makes while it holds a lease."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from cloudpilot.api.deps import PrincipalDep, ServicesDep, caller, store_call
from cloudpilot.api.errors import validation_error
from cloudpilot.api.params import MAX_ID, MAX_SECONDS, JobId
from cloudpilot.api.responses import job_for_pilot, json_response
from cloudpilot.api.uploads import INLINE_OUTPUT_CHARS, receive_sandbox, store_inline_output
from cloudpilot.domain.auth import Principal
from cloudpilot.domain.jobs import MAX_INT32, JobState
from cloudpilot.domain.matching import Offer
from cloudpilot.services.container import Services
from cloudpilot.services.pilots import MatchAnswer
from cloudpilot.services.sessions import PilotSessions

router = APIRouter(prefix="/api/v1", tags=["pilots"])

RETRY_SECONDS = 0.5  # how often a long poll looks again for work submitted through another API process


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegisterBody(_Body):
    hostname: str | None = Field(None, max_length=255)
    cores: int = Field(1, ge=1, le=MAX_INT32)
    memory_mb: int | None = Field(None, ge=1, le=MAX_INT32)
    site: str | None = None
    cloud: str | None = None
    tags: list[str] = []


class OfferBody(_Body):
    """Free resources a pilot offers: in a match, or for the slot a final report frees (``next``)."""

    cores: int = Field(1, ge=1, le=MAX_INT32)
    memory_mb: int | None = Field(None, ge=1, le=MAX_INT32)
    seconds_left: int | None = Field(None, ge=0, le=MAX_INT32)
    tags: list[str] = []
    site: str | None = None
    cloud: str | None = None
    image: str | None = Field(None, max_length=200)  # the endorsed image of the pilot's VM (docs/images.md)

    def offer(self) -> Offer:
        return Offer(
            cores=self.cores,
            memory_mb=self.memory_mb,
            seconds_left=self.seconds_left,
            tags=tuple(self.tags),
            site=self.site,
            cloud=self.cloud,
            image=self.image,
        )


class MatchBody(OfferBody):
    pilot_id: str
    wait_seconds: float = Field(0.0, ge=0, le=60)


class HeartbeatBody(_Body):
    lease_token: int = Field(ge=0, le=MAX_ID)
    cpu_seconds: float | None = Field(None, ge=0, le=MAX_SECONDS)
    max_rss_bytes: int | None = Field(None, ge=0, le=MAX_ID)
    progress: str | None = None
    # The last lines of the job's job.log (the pilot sends 4 KiB at most); kept per job for `cloudpilot logs`.
    log_tail: str | None = Field(None, max_length=16384)


class ReportBody(_Body):
    lease_token: int = Field(ge=0, le=MAX_ID)
    state: JobState
    exit_code: int | None = Field(None, ge=-(2**31), le=MAX_INT32)
    reason: str | None = Field(None, max_length=2000)
    cpu_seconds: float | None = Field(None, ge=0, le=MAX_SECONDS)
    max_rss_bytes: int | None = Field(None, ge=0, le=MAX_ID)
    # A final report of a job never reported running (its payload ended within a second) says how long it ran.
    ran_seconds: float | None = Field(None, ge=0, le=MAX_SECONDS)
    # A final report may bring the job's output sandbox inline when it is small (instead of PUT .../output) …
    output: str | None = Field(None, max_length=INLINE_OUTPUT_CHARS)
    # … and ask for the slot's next job: the answer's "next" is then what /pilots/match would have answered.
    next: OfferBody | None = None


class HaltBody(_Body):
    code: int = Field(ge=100, le=799)
    message: str = Field(max_length=1000)


@router.post("/pilots", status_code=201, summary="Register a pilot")
def register(body: RegisterBody, principal: PrincipalDep, services: ServicesDep) -> Response:
    reg = services.pilots.register(
        principal,
        services.clock.now(),
        hostname=body.hostname,
        cores=body.cores,
        memory_mb=body.memory_mb,
        site=body.site,
        cloud=body.cloud,
    )
    answer = {
        "id": reg.pilot_id,
        "lease_seconds": reg.lease_seconds,
        "heartbeat_seconds": reg.heartbeat_seconds,
        # The credential of every later call of this pilot; the registration token is done with.
        "session_token": reg.session_token,
        # The pilot caps what it unpacks of an input sandbox at 10x this (docs/pilot.md).
        "max_sandbox_bytes": services.config.storage.max_sandbox_bytes,
    }
    return json_response(answer, 201)


@router.post(
    "/pilots/match",
    summary="Offer free resources; get a job and its lease (200) or nothing (204)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": MatchBody.model_json_schema(ref_template="{model}")}},
        }
    },
)
async def match(request: Request) -> Response:
    # The hottest call of the server: no dependency injection and no threadpool hop for the token check;
    # the body is validated by the same pydantic model FastAPI would use.
    services: Services = request.app.state.services
    principal = caller(request)
    try:
        body = MatchBody.model_validate_json(await request.body())
    except ValidationError as exc:
        return validation_error(exc)
    offer = body.offer()
    notifier = request.app.state.notifier
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(body.wait_seconds, services.config.matcher.max_wait_seconds)
    while True:
        woken = notifier.current()
        now = services.clock.now()
        answer = await store_call(services, services.pilots.match, principal, body.pilot_id, offer, now)
        if (found := match_json(answer, services)) is not None:
            return json_response(found)
        left = deadline - loop.time()
        if left <= 0 or notifier.draining or await request.is_disconnected():
            return Response(status_code=204)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(woken.wait(), timeout=min(left, RETRY_SECONDS))


@router.get("/jobs/{job_id}/input", summary="The input sandbox of a job this pilot holds")
def get_input(job_id: JobId, principal: PrincipalDep, services: ServicesDep, lease_token: int = Query()) -> Response:
    sandbox = services.pilots.input_sandbox(principal, job_id, lease_token)
    return StreamingResponse(services.sandbox_store.open(sandbox), media_type="application/gzip")


@router.post("/jobs/{job_id}/heartbeat", summary="Renew the lease and report progress")
def heartbeat(job_id: JobId, body: HeartbeatBody, principal: PrincipalDep, services: ServicesDep) -> Response:
    beat = services.pilots.heartbeat(
        principal,
        job_id,
        body.lease_token,
        services.clock.now(),
        body.cpu_seconds,
        body.max_rss_bytes,
        body.progress,
        body.log_tail,
    )
    return json_response(
        {
            "lease_expires_at": beat.lease_expires_at,
            "action": "kill" if beat.kill else "continue",
            "shutdowntime": beat.shutdowntime,
        }
    )


@router.put("/jobs/{job_id}/output", summary="Upload the output sandbox of a job this pilot holds")
async def put_output(
    job_id: JobId, request: Request, principal: PrincipalDep, services: ServicesDep, lease_token: int = Query()
) -> Response:
    # Check the lease before taking the bytes, and again when recording them (it may expire meanwhile).
    await run_in_threadpool(services.pilots.check_holder, principal, job_id, lease_token)
    sandbox_id, size = await receive_sandbox(request, services, principal)
    await run_in_threadpool(
        services.pilots.set_output, principal, job_id, lease_token, sandbox_id, services.clock.now()
    )
    return json_response({"id": sandbox_id, "size": size})


@router.put("/jobs/{job_id}/events", summary="Upload the output of finished events of a job this pilot holds")
async def put_events(
    job_id: JobId,
    request: Request,
    principal: PrincipalDep,
    services: ServicesDep,
    lease_token: int = Query(),
    first: int = Query(ge=0, le=MAX_ID),
    last: int = Query(ge=0, le=MAX_ID),
) -> Response:
    await run_in_threadpool(services.pilots.check_holder, principal, job_id, lease_token)
    sandbox_id, size = await receive_sandbox(request, services, principal)
    job = await run_in_threadpool(
        services.pilots.add_event_chunk, principal, job_id, lease_token, first, last, sandbox_id, services.clock.now()
    )
    return json_response({"id": sandbox_id, "size": size, "events_done": job.events_done})


@router.post("/jobs/{job_id}/report", summary="Report the job running, done or failed (and get the slot's next job)")
async def report(job_id: JobId, body: ReportBody, request: Request) -> Response:
    # One per short job (the final report brings the slot's next job): served as match is.
    services: Services = request.app.state.services
    return await store_call(services, _report, services, caller(request), job_id, body)


def _report(services: Services, principal: Principal, job_id: int, body: ReportBody) -> Response:
    output = None if body.output is None else store_inline_output(body.output, services, principal)
    job = services.pilots.report(
        principal,
        job_id,
        body.lease_token,
        body.state,
        services.clock.now(),
        exit_code=body.exit_code,
        reason=body.reason,
        cpu_seconds=body.cpu_seconds,
        max_rss_bytes=body.max_rss_bytes,
        output=output,
        ran_seconds=body.ran_seconds,
    )
    answer: dict[str, Any] = {"id": job.id, "state": job.state.value}
    if body.next is not None and job.state.is_final:
        # The slot this job freed, matched in the same round trip (no long poll: nothing found is null).
        pilot_id = PilotSessions.pilot_of(principal)
        found = services.pilots.match(principal, pilot_id, body.next.offer(), services.clock.now())
        answer["next"] = match_json(found, services)
    return json_response(answer)


def match_json(answer: MatchAnswer, services: Services) -> dict[str, Any] | None:
    """A match answer's body: a job and its lease, a halt order, or ``None`` (nothing for this offer now)."""
    if answer.halt is not None:
        code, reason = answer.halt
        return {"halt": {"code": code, "reason": reason}, "shutdowntime": answer.shutdowntime}
    if (job := answer.job) is not None:
        lease = {"token": job.lease_token, "expires_at": job.lease_expires_at, "seconds": services.config.lease.seconds}
        return {"job": job_for_pilot(job), "lease": lease, "shutdowntime": answer.shutdowntime}
    return None


@router.post("/pilots/{pilot_id}/halt", summary="The pilot's last word: its shutdown code and message")
def halt(pilot_id: str, body: HaltBody, principal: PrincipalDep, services: ServicesDep) -> Response:
    services.pilots.halt(principal, pilot_id, body.code, body.message, services.clock.now())
    return json_response({"id": pilot_id, "state": "halted"})
