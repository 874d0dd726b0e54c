"""Job states and the one table of allowed transitions (plain Python: the CLI and the SDK import it without
pydantic, so that they start fast; ``cloudpilot.domain.jobs`` re-exports every name)."""

from __future__ import annotations

from enum import StrEnum

from cloudpilot.domain.errors import IllegalTransition


class JobState(StrEnum):
    WAITING = "waiting"
    MATCHED = "matched"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    KILLED = "killed"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.KILLED})
ACTIVE_STATES = frozenset({JobState.MATCHED, JobState.RUNNING})

# The single source of truth for job state changes. ``waiting`` is re-entered when a lease is lost.
JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.WAITING: frozenset({JobState.MATCHED, JobState.KILLED}),
    JobState.MATCHED: frozenset({JobState.RUNNING, JobState.WAITING, JobState.FAILED, JobState.KILLED}),
    JobState.RUNNING: frozenset({JobState.DONE, JobState.FAILED, JobState.WAITING, JobState.KILLED}),
    JobState.DONE: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.KILLED: frozenset(),
}


def can_transition(current: JobState, target: JobState) -> bool:
    return target in JOB_TRANSITIONS[current]


def check_transition(job_id: object, current: JobState | str, target: JobState | str) -> None:
    """Raise :class:`IllegalTransition` unless the table allows ``current -> target``."""
    cur, tgt = JobState(current), JobState(target)
    if not can_transition(cur, tgt):
        raise IllegalTransition("job", job_id, cur.value, tgt.value)
