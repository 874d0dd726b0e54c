"""New work reaches the matcher without a reload of its snapshot, on SQLite and PostgreSQL.

A submission names the task queues its jobs went into; the matcher adds them to the snapshot it ranks with
instead of reading every waiting class, running cores and usage again (three queries on the path of an idle
pilot's next job, and on a busy server a reload per submission). Checked: the job is matched at once, new and
refilled classes both; no reload happens; and a background refresh that read the database before the
submission cannot put its older view over the new work.
"""

from __future__ import annotations

import threading
import time

from cloudpilot.config import ServerConfig
from cloudpilot.domain.jobs import JobSpec
from cloudpilot.domain.matching import Offer, TaskQueue
from cloudpilot.services.matcher import MatchService
from cloudpilot.store.database import Database
from cloudpilot.store.jobs import JobRepository


class CountingRepository(JobRepository):
    """The real store, counting snapshot loads; a load can be held after its read (``hold``)."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.loads = 0
        self.hold: threading.Event | None = None
        self.read_done = threading.Event()

    def waiting_task_queues(self) -> list[TaskQueue]:
        found = super().waiting_task_queues()
        self.loads += 1
        self.read_done.set()
        if self.hold is not None:
            self.hold.wait(10)
        return found


def spec(cores: int = 1, tags: list[str] | None = None) -> JobSpec:
    return JobSpec.model_validate({"executable": "true", "requirements": {"cores": cores, "tags": tags or []}})


def offer(cores: int = 4, tags: tuple[str, ...] = ()) -> Offer:
    return Offer(cores=cores, tags=tags)


def submit(repo: JobRepository, matcher: MatchService, *specs: JobSpec) -> list[int]:
    ids, classes = repo.submit_into_classes("lhcb", "alice", list(specs), time.time(), 600)
    matcher.add_work(classes)
    return ids


def matcher_of(repo: JobRepository) -> MatchService:
    return MatchService(repo, ServerConfig.model_validate({"matcher": {"snapshot_seconds": 3600}}))


def test_a_job_in_a_new_class_is_matched_at_once_without_a_reload(db: Database) -> None:
    repo = CountingRepository(db)
    matcher = matcher_of(repo)
    (first,) = submit(repo, matcher, spec(cores=1))
    assert matcher.match("p1", offer(), "lhcb", time.time()).id == first  # the first match loads the snapshot
    assert repo.loads == 1

    (new_class,) = submit(repo, matcher, spec(cores=2, tags=["el9"]))
    matched = matcher.match("p1", offer(tags=("el9",)), "lhcb", time.time())
    assert matched is not None and matched.id == new_class
    assert repo.loads == 1  # learnt from the submission, not read again

    # The first class was found empty meanwhile (it is skipped from then on); refilled, it is offered again.
    assert matcher.match("p1", offer(), "lhcb", time.time()) is None
    (refill,) = submit(repo, matcher, spec(cores=1))
    assert matcher.match("p1", offer(), "lhcb", time.time()).id == refill
    assert repo.loads == 1


def test_a_refresh_read_before_a_submission_does_not_hide_it(db: Database) -> None:
    repo = CountingRepository(db)
    config = ServerConfig.model_validate({"matcher": {"snapshot_seconds": 0.05}})
    matcher = MatchService(repo, config)
    submit(repo, matcher, spec(cores=1))
    assert matcher.match("p1", offer(), "lhcb", time.time()) is not None
    time.sleep(0.1)  # the snapshot is old: the next match refreshes it in the background...
    repo.hold, repo.read_done = threading.Event(), threading.Event()
    assert matcher.match("p1", offer(), "lhcb", time.time()) is None
    assert repo.read_done.wait(10)  # ...and that refresh has read the database, without the job below
    (late,) = submit(repo, matcher, spec(cores=2, tags=["late"]))
    repo.hold.set()  # the stale refresh completes now
    time.sleep(0.1)
    repo.hold = None
    matched = matcher.match("p1", offer(tags=("late",)), "lhcb", time.time())
    assert matched is not None and matched.id == late
    with matcher._refreshing:  # no background refresh left running when the test database goes
        pass
