"""Jobs: a list filterable by state, name and VO with paging; a job with its history, why it waits, its usage,
its output and the tail of its job.log."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from cloudpilot.api.params import AfterId, JobId
from cloudpilot.domain.jobs import JobState
from cloudpilot.web.render import render
from cloudpilot.web.routing import PrincipalDep, ServicesDep, WebRoute

router = APIRouter(route_class=WebRoute)  # errors as pages (web/routing.py)
PAGE = 50


@router.get("/jobs")
def job_list(
    request: Request,
    principal: PrincipalDep,
    services: ServicesDep,
    state: str = "",
    name: str = Query("", max_length=200),
    vo: str = Query("", max_length=100),
    after_id: AfterId = 0,
) -> Response:
    chosen = JobState(state) if state in {s.value for s in JobState} else None
    jobs = services.jobs.list(principal, chosen, PAGE + 1, after_id, name.strip() or None, vo.strip() or None)
    more = len(jobs) > PAGE
    jobs = jobs[:PAGE]
    return render(
        request,
        "jobs.html",
        jobs=jobs,
        states=[s.value for s in JobState],
        filters={"state": state if chosen else "", "name": name, "vo": vo},
        after_id=after_id,
        next_after=jobs[-1].id if more and jobs else None,
    )


@router.get("/jobs/{job_id}")
def job_page(job_id: JobId, request: Request, principal: PrincipalDep, services: ServicesDep) -> Response:
    job = services.jobs.get(principal, job_id)
    now = services.clock.now()
    return render(
        request,
        "job.html",
        job=job,
        history=services.jobs.history(principal, job_id),
        why=services.waiting.why(job, now),
        log=services.jobs.log_tail(principal, job_id),
    )


@router.get("/jobs/{job_id}/output")
def job_output(job_id: JobId, principal: PrincipalDep, services: ServicesDep) -> Response:
    sandbox = services.jobs.output_sandbox(principal, job_id)
    disposition = f'attachment; filename="job-{job_id}-output.tar.gz"'
    return StreamingResponse(
        services.sandbox_store.open(sandbox), media_type="application/gzip",
        headers={"Content-Disposition": disposition},
    )  # fmt: skip
