"""The domain's rules: job states, job descriptions, parametric expansion, offers."""

import itertools

import pytest
from pydantic import ValidationError

from cloudpilot.domain.errors import IllegalTransition, StaleLease
from cloudpilot.domain.jobs import (
    JOB_TRANSITIONS,
    Job,
    JobSpec,
    JobState,
    ParametricSpec,
    check_transition,
    expand_parametric,
)
from cloudpilot.domain.matching import Offer, TaskQueue, fits


def test_final_states_allow_no_transition() -> None:
    for state in (JobState.DONE, JobState.FAILED, JobState.KILLED):
        for target in JobState:
            with pytest.raises(IllegalTransition):
                check_transition(1, state, target)


def test_life_of_a_job_follows_the_table() -> None:
    path = [JobState.WAITING, JobState.MATCHED, JobState.RUNNING, JobState.WAITING, JobState.MATCHED]
    for current, target in itertools.pairwise(path):
        check_transition(1, current, target)
    with pytest.raises(IllegalTransition, match="'waiting' to 'running'"):
        check_transition(1, JobState.WAITING, JobState.RUNNING)
    with pytest.raises(IllegalTransition):
        check_transition(1, JobState.WAITING, JobState.DONE)


def test_killed_reachable_from_every_non_final_state() -> None:
    for state, allowed in JOB_TRANSITIONS.items():
        assert (JobState.KILLED in allowed) == (not state.is_final)


def test_spec_defaults_and_unknown_field() -> None:
    spec = JobSpec.model_validate({"executable": "echo"})
    assert spec.requirements.cores == 1
    assert spec.max_attempts == 3
    with pytest.raises(ValidationError, match="colour"):
        JobSpec.model_validate({"executable": "echo", "colour": "red"})
    with pytest.raises(ValidationError, match="relative path"):
        JobSpec.model_validate({"executable": "echo", "output_files": ["../../etc/passwd"]})
    with pytest.raises(ValidationError):
        JobSpec.model_validate({"executable": "echo", "requirements": {"cores": 0}})


def test_parametric_expansion_substitutes_every_string() -> None:
    spec = ParametricSpec.model_validate(
        {
            "job": {"name": "mc-{n}", "executable": "mc", "arguments": ["--seed", "{n}"], "environment": {"S": "{n}"}},
            "parameter_start": 10,
            "parameter_count": 3,
            "parameter_step": 5,
        }
    )
    jobs = expand_parametric(spec)
    assert [j.name for j in jobs] == ["mc-10", "mc-15", "mc-20"]
    assert jobs[2].arguments == ["--seed", "20"]
    assert jobs[1].environment == {"S": "15"}


def _tq(**kw: object) -> TaskQueue:
    base = dict(
        id=1,
        vo="lhcb",
        owner="a",
        priority=0,
        cores=1,
        memory_mb=None,
        wall_seconds=3600,
        tags=frozenset(),
        sites_allow=frozenset(),
        sites_deny=frozenset(),
    )
    base.update(kw)
    return TaskQueue(**base)  # type: ignore[arg-type]


def test_fit_rules() -> None:
    offer = Offer(cores=4, memory_mb=8000, seconds_left=7200, tags=("el9",), site="CERN")
    assert fits(_tq(), offer)
    assert not fits(_tq(cores=8), offer)
    assert not fits(_tq(memory_mb=16000), offer)
    assert not fits(_tq(wall_seconds=10000), offer)
    assert not fits(_tq(tags=frozenset({"gpu"})), offer)
    assert fits(_tq(tags=frozenset({"el9"})), offer)
    assert not fits(_tq(sites_deny=frozenset({"CERN"})), offer)
    assert not fits(_tq(sites_allow=frozenset({"RAL"})), offer)
    assert fits(_tq(sites_allow=frozenset({"CERN", "RAL"})), offer)
    assert fits(_tq(wall_seconds=10**9), Offer(cores=1))  # no lifetime given: any wall time fits


def test_stale_lease_is_refused() -> None:
    job = Job(
        id=1,
        vo="v",
        owner="o",
        name="n",
        spec=JobSpec(executable="x"),
        state=JobState.RUNNING,
        priority=0,
        cores=1,
        wall_seconds=60,
        attempts=2,
        max_attempts=3,
        submitted_at=0,
        updated_at=0,
    )
    job.check_lease(2)
    with pytest.raises(StaleLease, match="attempt 2"):
        job.check_lease(1)


# The configuration issue 4 gives, verbatim, plus a capacity schedule.
ISSUE_4_CONFIG = """
vos: {lhcb: {share: 1}, alice: {share: 1}}
sites:
  siteA: {pledges: {lhcb: 4, alice: 2}}
clouds:
  a1: {driver: local, site: siteA, grace_secs: 5, flavors: {small: {cores: 2, memory_mb: 4096}}, max_vms: 3, boot_seconds: 1}
  b1: {driver: local, site: siteB, mode: vacuum, fizzle_seconds: 30, backoff_seconds: 60, flavors: {small: {cores: 2, memory_mb: 4096}}, max_vms: 2, boot_seconds: 1}
  s1: {driver: local, site: siteC, preemptible: true, flavors: {small: {cores: 1, memory_mb: 2048}}, max_vms: 2, boot_seconds: 1}
  lone: {driver: local, flavors: {small: {cores: 1, memory_mb: 2048}},
         capacity_schedule: [{at: "2026-12-01T18:00:00Z", max_vms: 0}, {at: "2026-12-02T06:00:00", max_vms: 4}]}
"""  # noqa: E501


def test_the_site_control_configuration_of_the_issue_is_accepted() -> None:
    import yaml

    from cloudpilot.config import ServerConfig

    config = ServerConfig.model_validate(yaml.safe_load(ISSUE_4_CONFIG))
    assert config.sites["siteA"].pledges["lhcb"].cores == 4
    assert config.clouds["a1"].grace_secs == 5 and config.clouds["s1"].grace_secs == 600
    assert config.clouds["b1"].mode == "vacuum" and config.clouds["s1"].preemptible
    assert config.clouds["lone"].site == "lone"  # a cloud alone is its own site
    assert config.known_sites() == ["lone", "siteA", "siteB", "siteC"]
    lone = config.clouds["lone"]
    december_1 = 1796148000.0  # 2026-12-01T18:00:00Z
    assert [lone.max_vms_at(t) for t in (december_1 - 1, december_1, december_1 + 12 * 3600)] == [10, 0, 4]
