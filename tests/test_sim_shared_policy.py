"""The simulator runs the very policy code the server runs: patching one of its functions changes the server's
provisioner decision and the simulator's outcome alike. The same holds for the matcher's ranking."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudpilot.clouds.fake import FakeCloudDriver
from cloudpilot.config import ServerConfig
from cloudpilot.domain.jobs import JobSpec
from cloudpilot.domain.vms import Flavor
from cloudpilot.policy import matching, provisioning
from cloudpilot.services.provisioner import Provisioner
from cloudpilot.sim import Scenario, simulate
from cloudpilot.store.database import Database
from cloudpilot.store.jobs import JobRepository
from cloudpilot.store.migrations import upgrade
from cloudpilot.store.sites import SiteRepository
from cloudpilot.store.tokens import TokenRepository
from cloudpilot.store.vms import VMRepository

T0 = 1_800_000_000.0
CLOUD = {"flavors": {"small": {"cores": 1, "memory_mb": 2048}}, "max_vms": 3, "start_rate_per_minute": 60}
CONFIG = ServerConfig.model_validate(
    {"clouds": {"fake": {"driver": "local", **CLOUD}}, "policy": {"min_work_seconds_per_core": 0}}
)
SCENARIO = Scenario.model_validate(
    {
        "name": "shared",
        "clouds": {"fake": CLOUD},
        "knobs": {"min_work_seconds_per_core": 0},
        "workload": [{"name": "w", "vo": "lhcb", "count": 6, "duration": 300, "wall_seconds": 3600}],
        "until_seconds": 4 * 3600,
    }
)


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'cloudpilot.db'}")
    upgrade(db)
    yield db
    db.dispose()


def server_starts(db: Database, at: float) -> int:
    """VMs the server's provisioner asks the (fake) cloud for, for two waiting jobs."""
    jobs = JobRepository(db)
    jobs.submit("lhcb", "alice", [JobSpec(executable="x")] * 2, at, 3600)
    cloud = FakeCloudDriver("fake", {"small": Flavor("small", 1, 2048)}, max_vms=3)
    Provisioner(
        CONFIG, jobs, VMRepository(db), TokenRepository(db), {"fake": cloud}, SiteRepository(db), lambda: "http://x"
    ).tick(at)
    return sum(1 for call in cloud.calls if call[0] == "create")


def test_patching_the_policy_changes_the_server_and_the_simulator(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert server_starts(database, T0) == 2
    before = simulate(SCENARIO)
    assert before.vms_started > 0 and before.jobs_done == 6

    # No flavor suits any job any more: the one function both callers share.
    monkeypatch.setattr(provisioning, "best_flavor", lambda flavors, wc, jobs: None)
    assert server_starts(database, T0 + 1000) == 0
    after = simulate(SCENARIO)
    assert after.vms_started == 0 and after.jobs_done == 0 and after.jobs_unfinished == 6


def test_patching_decide_reaches_the_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    real = provisioning.decide

    def spy(snapshot, knobs, now):  # type: ignore[no-untyped-def]
        calls.append(now)
        return real(snapshot, knobs, now)

    monkeypatch.setattr(provisioning, "decide", spy)
    r = simulate(SCENARIO)
    assert len(calls) == r.decisions > 0


def test_pilots_get_their_jobs_from_the_matchers_real_ranking(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two owners' classes: the real ``order`` alternates them by fair share; a patched one changes who waits."""
    work = [
        {"name": "alice", "owner": "alice", "vo": "lhcb", "count": 30, "duration": 300, "wall_seconds": 3600},
        {"name": "bob", "owner": "bob", "vo": "lhcb", "count": 30, "duration": 900, "wall_seconds": 3600},
    ]
    s = Scenario.model_validate({**SCENARIO.model_dump(exclude={"base_dir"}), "workload": work})
    calls: list[int] = []
    real = matching.order

    def counting(groups, shares, offer):  # type: ignore[no-untyped-def]
        calls.append(offer.cores)
        return real(groups, shares, offer)

    monkeypatch.setattr(matching, "order", counting)
    fair = simulate(s)
    assert len(calls) >= 60

    def alice_first(groups, shares, offer):  # type: ignore[no-untyped-def]
        for group in sorted(groups, key=lambda g: g.owner):
            yield from (tq for tq in group.task_queues if matching.fits_size(tq, offer))

    monkeypatch.setattr(matching, "order", alice_first)
    unfair = simulate(s)
    assert fair.jobs_done == unfair.jobs_done == 60
    # Alice's short jobs all first: half the jobs start at once, so the median wait drops.
    assert unfair.wait_p50_seconds < fair.wait_p50_seconds
