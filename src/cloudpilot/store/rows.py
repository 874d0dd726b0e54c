"""Conversions between table rows and domain objects."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cloudpilot.domain.jobs import Job, JobEvent, JobSpec, JobState
from cloudpilot.domain.matching import TaskQueue


def job_from_row(row: Mapping[str, Any]) -> Job:
    return Job(
        id=row["id"],
        vo=row["vo"],
        owner=row["owner"],
        name=row["name"],
        spec=JobSpec.model_validate_json(row["spec"]),
        state=JobState(row["state"]),
        priority=row["priority"],
        cores=row["cores"],
        wall_seconds=row["wall_seconds"],
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        exit_code=row["exit_code"],
        failure_reason=row["failure_reason"],
        pilot_id=row["pilot_id"],
        lease_expires_at=row["lease_expires_at"],
        submitted_at=row["submitted_at"],
        updated_at=row["updated_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        output_sandbox=row["output_sandbox"],
        cpu_seconds=row["cpu_seconds"],
        max_rss_bytes=row["max_rss_bytes"],
        progress=row["progress"],
        kill_requested=bool(row["kill_requested"]),
        events_done=row.get("events_done") or 0,
    )


def event_from_row(row: Mapping[str, Any]) -> JobEvent:
    return JobEvent(
        at=row["at"],
        from_state=JobState(row["from_state"]) if row["from_state"] else None,
        to_state=JobState(row["to_state"]),
        reason=row["reason"],
    )


def task_queue_from_row(row: Mapping[str, Any]) -> TaskQueue:
    return TaskQueue(
        id=row["id"],
        vo=row["vo"],
        owner=row["owner"],
        priority=row["priority"],
        cores=row["cores"],
        memory_mb=row["memory_mb"],
        wall_seconds=row["wall_seconds"],
        tags=frozenset(json.loads(row["tags"])),
        sites_allow=frozenset(json.loads(row["sites_allow"])),
        sites_deny=frozenset(json.loads(row["sites_deny"])),
        image=row.get("image"),
    )
