"""``/api/v1/jobs`` and ``/api/v1/sandboxes``: what users do."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import yaml
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cloudpilot.api.bulk import run_bulk
from cloudpilot.api.deps import PrincipalDep, ServicesDep, caller, get_services, store_call
from cloudpilot.api.errors import validation_error
from cloudpilot.api.guard import BAD_TEXT, bad_text_field
from cloudpilot.api.params import MAX_ID, AfterId, JobId
from cloudpilot.api.responses import job_json, json_response
from cloudpilot.api.uploads import receive_sandbox
from cloudpilot.domain.auth import Role
from cloudpilot.domain.jobs import JobSpec, JobState, ParametricSpec, expand_parametric
from cloudpilot.services.auth import require
from cloudpilot.services.errors import BadInput, TooMany

router = APIRouter(prefix="/api/v1", tags=["jobs"])
MAX_EXPANDED_BYTES = 256 << 20  # what a parametric job may expand to, beyond its own body
SMALL_SUBMISSION_BYTES = 8192  # a JSON body this small and not parametric: a few jobs at most


class _NoAliases(yaml.SafeLoader):
    """YAML without aliases: ``*name`` repeats a node without repeating its bytes, so a small body could stand
    for any number of jobs or arguments."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise BadInput("YAML aliases (*name) are not accepted in a submission: write each value out")
        return super().compose_node(parent, index)


def parse_submission(body: bytes, content_type: str, max_jobs: int) -> list[JobSpec]:
    """One job, a list of jobs, or a parametric job, as JSON or YAML. How many jobs the body asks for is
    checked against ``max_jobs`` before anything is expanded or validated (:class:`TooMany`, a 413)."""
    try:
        data: Any = yaml.load(body, Loader=_NoAliases) if "yaml" in content_type else orjson.loads(body)
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        raise BadInput(f"the body is not valid {'YAML' if 'yaml' in content_type else 'JSON'}: {exc}") from exc
    bad = bad_text_field(data)  # JSON is checked by RequestGuard already; YAML escapes (\0) are not
    if bad is not None:
        raise BadInput(f"{bad + ': ' if bad else ''}{BAD_TEXT}", bad or None)
    if isinstance(data, dict) and "job" in data:
        if "parameter_count" not in data:
            raise BadInput("parameter_count: a parametric job {job, parameter_count} needs it", "parameter_count")
        _check_count(data["parameter_count"], max_jobs)
        spec = ParametricSpec.model_validate(data)
        # Expanded, the jobs may not hold more than one body could: the limit a list of them would meet.
        expanded = len(orjson.dumps(spec.job.model_dump(mode="json"))) * spec.parameter_count
        if expanded > MAX_EXPANDED_BYTES:
            raise TooMany(
                f"expanded, these {spec.parameter_count} jobs would take {expanded} bytes, more than "
                f"{MAX_EXPANDED_BYTES}: submit them in parts"
            )
        return expand_parametric(spec)
    if isinstance(data, dict):
        return [JobSpec.model_validate(data)]
    if isinstance(data, list):
        _check_count(len(data), max_jobs)
        specs = []
        for i, item in enumerate(data):
            if not isinstance(item, dict):
                raise BadInput(f"[{i}]: a job must be an object, not {type(item).__name__}", f"[{i}]")
            try:
                specs.append(JobSpec.model_validate(item))
            except ValidationError as exc:
                raise _Indexed(exc, i) from exc
        return specs
    raise BadInput("the body must be a job, a list of jobs, or a parametric job {job, parameter_count}")


def _check_count(count: object, max_jobs: int) -> None:
    if isinstance(count, int) and not isinstance(count, bool) and count > max_jobs:
        raise TooMany(f"{count} jobs in one request; the limit is {max_jobs} (jobs.max_per_request)")


class _Indexed(Exception):
    def __init__(self, exc: ValidationError, index: int) -> None:
        self.exc = exc
        self.index = index


def _submission_schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    """The body of ``POST /jobs`` for /openapi.json, and the named schemas it refers to (JobSpec and what it
    holds): the route reads its raw body itself, so FastAPI cannot describe it."""
    ref = "#/components/schemas/{model}"
    parametric = ParametricSpec.model_json_schema(ref_template=ref)
    named = {**parametric.pop("$defs"), "ParametricSpec": parametric}
    job = {"$ref": ref.format(model="JobSpec")}
    jobs = {"type": "array", "items": job, "minItems": 1, "description": "At most jobs.max_per_request jobs."}
    body = {"oneOf": [job, jobs, {"$ref": ref.format(model="ParametricSpec")}]}
    return body, named


SUBMISSION_BODY, SUBMISSION_SCHEMAS = _submission_schemas()


@router.post(
    "/jobs",
    status_code=201,
    summary="Submit one job, a list, or a parametric job",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": SUBMISSION_BODY},
                "application/yaml": {"schema": SUBMISSION_BODY},
            },
        }
    },
)
async def submit(request: Request) -> Response:
    # Called for every job a user sends: no dependency injection (a fifth of the route's CPU), as the pilots'
    # hot calls; the token is checked the same way.
    services = get_services(request)
    principal = caller(request)
    require(principal, Role.USER)
    body = await request.body()
    max_jobs = services.config.jobs.max_per_request
    content_type = request.headers.get("content-type", "")

    def store() -> tuple[list[int], list[str]]:
        specs = parse_submission(body, content_type, max_jobs)
        now = services.clock.now()
        ids = services.jobs.submit(principal, specs, now)  # refuses a caller without a VO (an admin) first
        assert principal.vo is not None
        return ids, services.waiting.submission_warnings(specs, principal.vo, now)

    # A 100,000-job submission takes seconds to validate: off the event loop (one hop for all of it). A small
    # one is stored as the pilots' hot calls are (store_call: on SQLite without the thread hop, which was a
    # fifth of its latency).
    small = len(body) <= SMALL_SUBMISSION_BYTES and "yaml" not in content_type and b"parameter_count" not in body
    try:
        ids, warnings = await (store_call(services, store) if small else run_bulk(store))
    except _Indexed as wrapped:
        return validation_error(wrapped.exc, prefix=f"[{wrapped.index}]")
    return json_response({"ids": ids, "warnings": warnings}, 201)


@router.get("/jobs", summary="The caller's jobs, oldest first")
def list_jobs(
    principal: PrincipalDep,
    services: ServicesDep,
    state: JobState | None = None,
    limit: int = Query(1000, ge=1, le=10_000),
    after_id: AfterId = 0,
    name: str | None = Query(None, min_length=1, max_length=200, description="Glob: * and ?, case-insensitive."),
) -> Response:
    jobs = services.jobs.list(principal, state, limit, after_id, name)
    next_after = jobs[-1].id if len(jobs) == limit else None
    return json_response({"jobs": [job_json(j) for j in jobs], "next_after_id": next_after})


class ResubmitBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[Annotated[int, Field(ge=1, le=MAX_ID)]] = Field(min_length=1, max_length=10_000)


@router.post("/jobs/resubmit", status_code=201, summary="New jobs from final jobs' specs and input sandboxes")
def resubmit(body: ResubmitBody, principal: PrincipalDep, services: ServicesDep) -> Response:
    ids = services.jobs.resubmit(principal, body.ids, services.clock.now())
    return json_response({"ids": ids}, 201)


@router.get("/jobs/waiting", summary="The caller's waiting jobs grouped by why they wait")
def waiting(principal: PrincipalDep, services: ServicesDep) -> Response:
    return json_response({"reasons": services.waiting.grouped(principal)})


@router.get("/jobs/summary", summary="Counts of the caller's jobs per state")
def summary(principal: PrincipalDep, services: ServicesDep) -> Response:
    return json_response({"counts": services.jobs.counts(principal)})


@router.get("/jobs/{job_id}", summary="One job with its history")
def get_job(job_id: JobId, principal: PrincipalDep, services: ServicesDep) -> Response:
    job = services.jobs.get(principal, job_id)
    body = job_json(job, services.jobs.history(principal, job_id))
    # Why it waits (docs/provisioning.md, "Why a job waits"): one line, then per cloud and for pilots.
    why = services.waiting.why(job, services.clock.now())
    body["blocked_reason"] = why["summary"] if why is not None else None
    body["waiting_reasons"] = why
    return json_response(body)


@router.post("/jobs/{job_id}/kill", summary="Kill a job that is not final yet")
def kill_job(job_id: JobId, principal: PrincipalDep, services: ServicesDep) -> Response:
    return json_response(job_json(services.jobs.kill(principal, job_id, services.clock.now())))


@router.get("/jobs/{job_id}/output", summary="The output sandbox (gzipped tar)")
def get_output(job_id: JobId, principal: PrincipalDep, services: ServicesDep) -> Response:
    sandbox = services.jobs.output_sandbox(principal, job_id)
    return StreamingResponse(services.sandbox_store.open(sandbox), media_type="application/gzip")


@router.get("/jobs/{job_id}/log", summary="The latest tail of a job's job.log, as its pilot sent it")
def get_log(job_id: JobId, principal: PrincipalDep, services: ServicesDep) -> Response:
    return json_response(services.jobs.log_tail(principal, job_id))


@router.get("/jobs/{job_id}/events", summary="The output chunks of a job's finished events")
def list_event_chunks(job_id: JobId, principal: PrincipalDep, services: ServicesDep) -> Response:
    chunks = services.jobs.event_chunks(principal, job_id)
    return json_response({"job_id": job_id, "chunks": chunks})


@router.get("/jobs/{job_id}/events/{first}", summary="One output chunk of finished events (gzipped tar)")
def get_event_chunk(job_id: JobId, first: int, principal: PrincipalDep, services: ServicesDep) -> Response:
    sandbox = services.jobs.event_chunk_sandbox(principal, job_id, first)
    return StreamingResponse(services.sandbox_store.open(sandbox), media_type="application/gzip")


@router.post("/sandboxes", status_code=201, summary="Upload an input sandbox (gzipped tar)")
async def upload_sandbox(request: Request, principal: PrincipalDep, services: ServicesDep) -> Response:
    require(principal, Role.USER)
    sandbox_id, size = await receive_sandbox(request, services, principal)
    return json_response({"id": sandbox_id, "size": size}, 201)
