"""The matcher's fair-share inputs (cores held and recorded usage per user) are read every
``matcher.usage_seconds``, not at every snapshot; in between its own matches count at once. On SQLite and
PostgreSQL, with the real store."""

from __future__ import annotations

from collections import Counter

from cloudpilot.config import ServerConfig
from cloudpilot.domain.jobs import JobSpec, JobState
from cloudpilot.domain.matching import Offer
from cloudpilot.services.matcher import MatchService
from cloudpilot.store.database import Database
from cloudpilot.store.jobs import JobRepository

NOW = 1_800_000_000.0
SPEC = JobSpec.model_validate({"executable": "true"})


class CountingRepository(JobRepository):
    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.reads = 0

    def running_cores(self) -> dict[tuple[str, str], int]:
        self.reads += 1
        return super().running_cores()


def test_matches_spread_over_users_between_reads_and_ended_jobs_count_after_one(db: Database) -> None:
    repo = CountingRepository(db)
    for owner in ("alice", "bob"):
        repo.submit("lhcb", owner, [SPEC] * 20, NOW, 600)
    # A new snapshot for every match (as if work arrived before each, read in the match itself: no background
    # refresh racing the test), one read of the inputs per 10 s.
    matcher = MatchService(repo, ServerConfig.model_validate({"matcher": {"snapshot_seconds": 3600}}))

    def match(at: float) -> str:
        matcher.invalidate()
        job = matcher.match("p", Offer(cores=1), None, at)
        assert job is not None
        return job.owner

    owners = Counter(match(NOW + i * 0.1) for i in range(10))
    # Each rebuilt snapshot knew the cores matched since the read: the users took turns.
    assert owners == {"alice": 5, "bob": 5}
    assert repo.reads == 1

    # Bob's five jobs end; seen at the next read (10 s after the first), not before.
    bobs = repo.list("lhcb", "bob", JobState.MATCHED)
    assert len(bobs) == 5
    for job in bobs[:4]:
        repo.report(job.id, job.lease_token, JobState.DONE, NOW + 2, exit_code=0, ran_seconds=1.0)
    picks = [match(NOW + 3 + i * 0.1) for i in range(2)]
    assert picks == ["alice", "bob"] or picks == ["bob", "alice"]  # still 5 each as far as it knows
    assert repo.reads == 1
    late = [match(NOW + 11 + i * 0.1) for i in range(4)]
    assert repo.reads == 2
    assert late[:4] == ["bob"] * 4  # bob held 1 core at the read, alice 6: bob's turn until he catches up
