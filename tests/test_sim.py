"""The simulator end to end on small scenarios: determinism, consistent metrics, boot failures and back-off,
preemption (with and without events), capacity that shrinks, vacuum clouds' back-off, the LHCb backlog."""

from __future__ import annotations

from typing import Any

import pytest

from cloudpilot.sim import Scenario, load_scenario, simulate
from cloudpilot.sim.metrics import SimResult

SMALL_FLAVOR = {"small": {"cores": 1, "memory_mb": 2048}}


def scenario(**overrides: Any) -> Scenario:
    data: dict[str, Any] = {
        "name": "t",
        "seed": 3,
        "clouds": {
            "a": {"flavors": SMALL_FLAVOR, "max_vms": 10, "boot_seconds": {"dist": "uniform", "low": 60, "high": 120}},
            "b": {"flavors": {"big": {"cores": 4, "memory_mb": 8192}}, "max_vms": 3, "price_per_core_hour": 0.05},
        },
        "workload": [
            {
                "name": "w",
                "vo": "lhcb",
                "count": 150,
                "wall_seconds": 3600,
                "duration": {"dist": "lognormal", "median": 600, "sigma": 0.3},
            },
        ],
    }
    data.update(overrides)
    return Scenario.model_validate(data)


def assert_consistent(r: SimResult) -> None:
    assert r.jobs_done + r.jobs_failed + r.jobs_unfinished == r.jobs_submitted
    assert r.vm_hours_busy + r.vm_hours_idle + r.vm_hours_booting == pytest.approx(r.vm_hours_paid, rel=1e-9)
    for name, c in r.clouds.items():
        parts = c["vm_seconds_busy"] + c["vm_seconds_idle"] + c["vm_seconds_booting"]
        assert parts == pytest.approx(c["vm_seconds_paid"], rel=1e-9, abs=1e-6), name
    assert 0 <= r.idle_share <= 1 and 0 <= r.core_utilisation <= 1
    assert r.wait_p50_seconds <= r.wait_p95_seconds <= r.wait_max_seconds
    assert r.peak_running_vms <= r.peak_vms <= r.vms_started


def test_small_scenario_runs_every_job_and_its_metrics_add_up() -> None:
    r = simulate(scenario())
    assert r.jobs_done == 150 and r.jobs_failed == 0 and r.jobs_unfinished == 0
    assert_consistent(r)
    assert r.vms_started > 0 and r.vms_failed == 0
    assert r.peak_vms <= 13  # the quotas: 10 + 3
    assert r.cost > 0  # cloud b is paid; cloud a, the cheaper, is filled first
    assert r.clouds["a"]["vms_started"] == 10
    assert r.events > 150 and r.events_per_second > 0
    assert r.makespan_seconds > 600


def test_the_same_seed_gives_the_same_outcome_and_another_seed_another() -> None:
    s = scenario()
    first, again, other = simulate(s, seed=5), simulate(s, seed=5), simulate(s, seed=6)
    assert first.outcome() == again.outcome()
    assert list(first.series.times) == list(again.series.times)
    assert first.outcome() != other.outcome()


def test_failing_payloads_and_wall_time_kills_are_final() -> None:
    work = [
        {"name": "flaky", "count": 100, "fail_share": 0.2, "wall_seconds": 3600, "duration": 600},
        {"name": "long", "count": 10, "wall_seconds": 300, "duration": 900},  # every one outlives its wall time
    ]
    r = simulate(scenario(workload=work))
    assert_consistent(r)
    assert r.jobs_unfinished == 0
    assert 10 + 10 <= r.jobs_failed <= 10 + 35
    assert r.jobs_done == r.jobs_submitted - r.jobs_failed


def test_boot_failures_fail_vms_at_the_boot_timeout_and_back_the_cloud_off() -> None:
    clouds = {
        "flaky": {"flavors": SMALL_FLAVOR, "max_vms": 20, "boot_failure_share": 0.5, "boot_timeout_seconds": 300},
        "broken": {"flavors": SMALL_FLAVOR, "max_vms": 20, "create_error_share": 1.0, "price_per_core_hour": 0.1},
    }
    r = simulate(scenario(clouds=clouds, until_seconds=6 * 3600))
    assert_consistent(r)
    assert r.jobs_done == 150
    assert r.clouds["flaky"]["vms_failed"] > 0
    assert r.clouds["flaky"]["vm_seconds_booting"] > 300 * r.clouds["flaky"]["vms_failed"]  # hung until timeout
    broken = r.clouds["broken"]
    assert broken["vms_failed"] == broken["vms_started"] > 0
    # Back-off (300 s, doubling to 1800 s): tries at 0, 300, 900, 2100, 3900, 5700 s, … of at most 10 VMs (the
    # start rate) while the work lasts, where 10 a minute would be hundreds.
    assert broken["vms_started"] <= 10 * (4 + r.makespan_seconds / 1800)


def spot(rate: float, events: int | None, preemptible: bool = True) -> Scenario:
    cloud = {"flavors": SMALL_FLAVOR, "max_vms": 20, "preemptible": preemptible, "preemption_rate_per_hour": rate}
    job = {"name": "sim", "count": 60, "wall_seconds": 20000, "duration": 7200, "max_attempts": 1}
    if events:
        job["events"] = events
    return scenario(clouds={"spot": cloud}, workload=[job])


def test_preempted_jobs_go_back_without_spending_an_attempt() -> None:
    r = simulate(spot(1.0, None))
    assert_consistent(r)
    assert r.vms_preempted > 10
    assert r.jobs_done == 60 and r.jobs_failed == 0  # max_attempts 1, yet nothing failed


def test_a_lost_vm_on_a_cloud_that_is_not_preemptible_spends_the_attempt() -> None:
    r = simulate(spot(1.0, None, preemptible=False))
    assert_consistent(r)
    assert r.jobs_failed > 0


def test_jobs_with_events_resume_from_their_last_event() -> None:
    restart = simulate(spot(1.0, None))
    resume = simulate(spot(1.0, 100))
    assert resume.jobs_done == restart.jobs_done == 60
    assert resume.makespan_seconds < restart.makespan_seconds
    assert resume.vm_hours_busy < restart.vm_hours_busy
    assert resume.vm_hours_busy < 60 * 2 * 1.3  # 120 h of work, little of it done twice


def test_a_shrinking_capacity_is_drained_then_the_site_takes_the_rest() -> None:
    clouds = {
        "farm": {
            "flavors": SMALL_FLAVOR, "max_vms": 20, "capacity": [{"at": 3600, "max_vms": 5}],
            "reclaim_after_seconds": 600, "preemptible": True,
        },
    }  # fmt: skip
    work = [{"name": "w", "count": 200, "events": 10, "wall_seconds": 7200, "duration": 1800}]
    r = simulate(scenario(clouds=clouds, workload=work))
    assert_consistent(r)
    assert r.jobs_done == 200
    times = list(r.series.times)
    vms = list(r.series.vms["farm"])
    later = [v for t, v in zip(times, vms, strict=True) if 3600 + 600 < t < r.makespan_seconds - 3600]
    assert later and max(later) <= 5


def test_a_vacuum_cloud_backs_off_a_vo_without_work() -> None:
    cloud = {
        "flavors": SMALL_FLAVOR, "max_vms": 20, "mode": "vacuum", "target_shares": {"lhcb": 1, "atlas": 1},
        "backoff_seconds": 1800, "fizzle_seconds": 600,
    }  # fmt: skip
    work = [{"name": "w", "vo": "lhcb", "count": 400, "wall_seconds": 7200, "duration": 1200}]
    r = simulate(scenario(clouds={"vac": cloud}, workload=work, pilot={"idle_timeout_seconds": 120}))
    assert_consistent(r)
    assert r.jobs_done == 400
    # atlas gets its half at first; its pilots find nothing and leave with 300 ("no more work"), an abort: it is
    # paused for 30 minutes, then probed with one VM at a time. Without back-off it would get ~half the starts.
    series_hours = r.simulated_seconds / 3600
    assert r.vms_started < 20 + 400 / 6 + 10 * series_hours


def test_the_lhcb_backlog_keeps_the_real_queues_shape() -> None:
    s = load_scenario("scenarios/lhcb-backlog.yaml")
    small = s.model_copy(update={"lhcb": s.lhcb.model_copy(update={"jobs": 800, "data": "embedded"})})  # type: ignore[union-attr]
    r = simulate(small)
    assert_consistent(r)
    assert r.jobs_submitted == 800
    assert r.jobs_done == 800


def test_shipped_scenarios_are_valid() -> None:
    from pathlib import Path

    files = sorted(Path("scenarios").glob("*.yaml"))
    names = {f.stem for f in files}
    assert {"vmdirac-2013", "steady-stream", "bursts", "preemptible", "shrinking-capacity", "lhcb-backlog"} <= names
    for f in files:
        s = load_scenario(f)
        assert s.name == f.stem and s.source


def test_unknown_keys_are_errors() -> None:
    with pytest.raises(ValueError, match="max_vm"):
        scenario(clouds={"a": {"flavors": SMALL_FLAVOR, "max_vm": 3}})
    with pytest.raises(ValueError, match="needs median"):
        scenario(workload=[{"name": "w", "count": 1, "duration": {"dist": "lognormal", "sigma": 1}}])


def test_the_2013_test_is_reproduced_by_the_vmdirac_policy() -> None:
    """Reported: 219 VMs at plateau, no failed jobs, several failed VMs on the OpenStack cloud."""
    from cloudpilot.sim import policies

    if "vmdirac-2013" not in policies.names():
        pytest.skip("the peers' policies are not installed")
    r = simulate(load_scenario("scenarios/vmdirac-2013.yaml"))
    assert r.policy == "vmdirac-2013"
    assert_consistent(r)
    assert 200 <= r.peak_running_vms <= 240
    assert r.jobs_failed == 0 and r.jobs_done == 2000
    assert r.clouds["cc-in2p3-openstack"]["vms_failed"] > 0
    assert r.clouds["pic-opennebula"]["vms_failed"] == r.clouds["usc-cloudstack"]["vms_failed"] == 0


def test_a_vms_view_is_what_the_server_would_build() -> None:
    from cloudpilot.domain.provisioning import VMView
    from cloudpilot.sim.clouds import SimCloud, SimVM

    s = scenario()
    cloud = SimCloud("a", s.clouds["a"], 0, 1)
    vm = SimVM("vm-1", cloud, "lhcb", cloud.flavors[0], 5.0)
    vm.jobs_run = 2
    assert vm.make_view() == VMView("vm-1", "lhcb", "small", vm.state, 1, 2048, 1, None, created_at=5.0, jobs_run=2)
