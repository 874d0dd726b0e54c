"""The figures behind a pilot's permission check are read once a second and only when a pledge needs them:
counting the cores held per site reads every matched and running job."""

from __future__ import annotations

import time

from cloudpilot.config import ServerConfig
from cloudpilot.domain.jobs import JobSpec
from cloudpilot.services.matcher import MatchService
from cloudpilot.services.site_policy import SitePolicy
from cloudpilot.store.database import Database
from cloudpilot.store.jobs import JobRepository
from cloudpilot.store.sites import SiteRepository


class CountingSites(SiteRepository):
    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.counts = 0

    def running_cores(self) -> dict[tuple[str, str], int]:
        self.counts += 1
        return super().running_cores()


def policy(db: Database, sites: dict) -> tuple[SitePolicy, CountingSites]:
    config = ServerConfig.model_validate({"sites": sites})
    jobs = JobRepository(db)
    jobs.submit("lhcb", "alice", [JobSpec.model_validate({"executable": "true"})], time.time(), 600)
    counting = CountingSites(db)
    return SitePolicy(config, counting, MatchService(jobs, config)), counting


def test_without_a_pledge_the_cores_held_per_site_are_never_counted(db: Database) -> None:
    site_policy, sites = policy(db, {"CERN": {"disabled_vos": ["atlas"]}})
    for _ in range(3):
        assert site_policy.check("lhcb", "CERN", None, None, time.time()).halt is None
        site_policy.invalidate()
    assert sites.counts == 0


def test_with_a_pledge_they_are_counted_once_a_second(db: Database) -> None:
    site_policy, sites = policy(db, {"CERN": {"pledges": {"lhcb": {"cores": 100}}}})
    for _ in range(3):
        assert site_policy.check("lhcb", "CERN", None, None, time.time()).halt is None
    assert sites.counts == 1
    site_policy.invalidate()
    site_policy.check("lhcb", "CERN", None, None, time.time())
    assert sites.counts == 2
