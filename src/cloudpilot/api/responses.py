"""JSON bodies of API answers, built with orjson (the matcher's hot path cannot afford slower encoders)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Response

from cloudpilot.domain.jobs import Job, JobEvent


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


def job_json(job: Job, history: list[JobEvent] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": job.id,
        "name": job.name,
        "vo": job.vo,
        "owner": job.owner,
        "state": job.state.value,
        "priority": job.priority,
        "cores": job.cores,
        "wall_seconds": job.wall_seconds,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "exit_code": job.exit_code,
        "failure_reason": job.failure_reason,
        "pilot_id": job.pilot_id,
        "submitted_at": job.submitted_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "updated_at": job.updated_at,
        "cpu_seconds": job.cpu_seconds,
        "max_rss_bytes": job.max_rss_bytes,
        "progress": job.progress,
        "events": job.spec.events,
        "events_done": job.events_done,
        "has_output": job.output_sandbox is not None,
        "spec": job.spec.model_dump(mode="json"),
    }
    if history is not None:
        body["history"] = [e.model_dump(mode="json") for e in history]
    return body


def job_for_pilot(job: Job) -> dict[str, Any]:
    """What a pilot needs to run the job, and nothing about other users."""
    spec = job.spec
    return {
        "id": job.id,
        "name": job.name,
        "executable": spec.executable,
        "arguments": spec.arguments,
        "environment": spec.environment,
        "input_sandbox": spec.input_sandbox,
        "input_files": spec.input_files,
        "output_files": spec.output_files,
        "cores": job.cores,
        "memory_mb": spec.requirements.memory_mb,
        "wall_seconds": job.wall_seconds,
        "attempt": job.attempts,
        "events": spec.events,
        "first_event": job.events_done,
    }
