"""Accounting on SQLite and PostgreSQL: VM records written from what ran (jobs submitted, claimed by a VM's pilot,
reported with their CPU time), report totals equal to the sum of what ran, and the APEL export read back."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloudpilot.domain.accounting import VMUsage, parse_group_by, parse_time
from cloudpilot.domain.jobs import JobSpec, JobState
from cloudpilot.domain.vms import VM, VMState
from cloudpilot.services.accounting import AccountingService, build_report, core_hours_series
from cloudpilot.services.apel import ApelFormatError, ApelRecord, parse_apel, to_apel, write_apel
from cloudpilot.store.accounting import AccountingRepository
from cloudpilot.store.database import Database
from cloudpilot.store.jobs import JobRepository
from cloudpilot.store.migrations import upgrade
from cloudpilot.store.pilots import PilotRecord, PilotRepository
from cloudpilot.store.vms import VMRepository

T0 = 1_800_000_000.0
HOUR = 3600.0


@dataclass(frozen=True)
class RanJob:
    cores: int
    start: float
    end: float | None  # None: still running when its VM ended (its last heartbeat counts)
    cpu: float
    exit_code: int = 0

    @property
    def core_hours(self) -> float:
        return 0.0 if self.end is None else self.cores * (self.end - self.start) / HOUR


@dataclass(frozen=True)
class RanVM:
    vm_id: str
    cloud: str
    site: str
    vo: str
    cores: int
    memory_mb: int
    start: float
    end: float
    hs06: float | None
    price: float
    jobs: tuple[RanJob, ...] = ()

    @property
    def wall(self) -> float:
        return self.end - self.start

    @property
    def cpu(self) -> float:
        return sum(j.cpu for j in self.jobs)

    @property
    def cost(self) -> float:
        return self.wall / HOUR * self.cores * self.price


# What ran: two clouds of site S1 and one of S2, two VOs; vm-c never booted.
# fmt: off
WORKLOAD = (
    RanVM("vm-c", "c1", "S1", "atlas", 8, 16384, T0 + 100, T0 + 1000, 80.0, 0.1),
    RanVM("vm-a", "c1", "S1", "lhcb", 4, 8192, T0, T0 + 2 * HOUR, 40.0, 0.1, (
        RanJob(2, T0 + 100, T0 + 3700, 1000.0),
        RanJob(1, T0 + 200, T0 + 500, 300.0, exit_code=3),
        RanJob(1, T0 + 4000, None, 50.0),
    )),
    RanVM("vm-b", "c2", "S2", "atlas", 2, 4096, T0 + HOUR, T0 + 2.5 * HOUR, None, 0.5, (
        RanJob(2, T0 + 4000, T0 + 8000, 2000.0),
    )),
)
# fmt: on
KILLED_WAITING = ("lhcb", T0 + 50)  # a job killed before it ran: a job record with no site, cloud or VM


def run_workload(db: Database, workload: tuple[RanVM, ...] = WORKLOAD) -> AccountingRepository:
    """Run ``workload`` through the repositories the server uses, and record each VM as the monitor would."""
    vms, jobs, pilots, accounting = VMRepository(db), JobRepository(db), PilotRepository(db), AccountingRepository(db)
    for ran in workload:
        vm = VM(ran.vm_id, ran.cloud, ran.vo, "flavor", ran.cores, ran.memory_mb, VMState.REQUESTED, ran.start,
                ran.start, site=ran.site, image=f"img-{ran.vo}", hs06=ran.hs06)  # fmt: skip
        vms.create(vm, "jobs waiting")
        vms.move(ran.vm_id, VMState.BOOTING, ran.start + 1, "created", instance_id=f"i-{ran.vm_id}")
        if not ran.jobs:
            vm = vms.move(ran.vm_id, VMState.FAILED, ran.end, "boot timeout", failure_reason="boot timeout")
        else:
            vms.move(ran.vm_id, VMState.RUNNING, ran.start + 60, "pilot registered", booted_at=ran.start + 60)
            pilot = f"pilot-{ran.vm_id}"
            pilots.register(PilotRecord(pilot, "tok", ran.vo, ran.site, ran.cloud, "host", ran.cores, None,
                                        ran.start + 60, ran.start + 60, "active", None, None, ran.vm_id))  # fmt: skip
            for job in ran.jobs:
                _run_job(jobs, vms, pilot, ran, job)
            vm = vms.move(ran.vm_id, VMState.HALTED, ran.end, "300 no more work", shutdown_code=300)
        accounting.record_vm(vm, ended_at=ran.end, price_per_core_hour=ran.price, now=ran.end + 1)
    vo, at = KILLED_WAITING
    (killed,) = jobs.submit(vo, "bob", [JobSpec(executable="x")], at, 3600)
    jobs.kill(killed, at + 10, "killed by bob")
    return accounting


def _run_job(jobs: JobRepository, vms: VMRepository, pilot: str, ran: RanVM, job: RanJob) -> None:
    spec = JobSpec.model_validate({"executable": "x", "requirements": {"cores": job.cores}})
    (job_id,) = jobs.submit(ran.vo, "alice", [spec], job.start - 10, 3600)
    claimed = jobs.claim(jobs.waiting_task_queues()[0].id, pilot, job.start - 5, 86400)
    assert claimed is not None and claimed.id == job_id
    vms.increment_jobs(ran.vm_id, job.start - 5)
    jobs.report(job_id, claimed.attempts, JobState.RUNNING, job.start)
    if job.end is None:
        jobs.heartbeat(job_id, claimed.attempts, job.start + 10, 86400, cpu_seconds=job.cpu)
        return
    state = JobState.DONE if job.exit_code == 0 else JobState.FAILED
    jobs.report(job_id, claimed.attempts, state, job.end, exit_code=job.exit_code, cpu_seconds=job.cpu)


# --- the store -----------------------------------------------------------------------------------------------


def test_record_vm_sums_cpu_of_its_jobs_and_prices_its_wall_time(db: Database) -> None:
    records = {r.vm_id: r for r in run_workload(db).vm_records()}
    assert set(records) == {ran.vm_id for ran in WORKLOAD}
    for ran in WORKLOAD:
        r = records[ran.vm_id]
        assert (r.cloud, r.site, r.vo, r.cores, r.memory_mb, r.image) == (
            ran.cloud, ran.site, ran.vo, ran.cores, ran.memory_mb, f"img-{ran.vo}"
        )  # fmt: skip
        assert (r.started_at, r.ended_at, r.instance_id) == (ran.start, ran.end, f"i-{ran.vm_id}")
        assert r.wall_seconds == pytest.approx(ran.wall)
        assert r.cpu_seconds == pytest.approx(ran.cpu)  # finished jobs' reports + the running job's heartbeat
        assert r.cost == pytest.approx(ran.cost)
        assert r.hs06 == (ran.hs06 or 0.0)
        assert r.jobs_run == len(ran.jobs)
        assert r.recorded_at == ran.end + 1
    assert records["vm-a"].cpu_seconds == pytest.approx(1350.0)
    assert records["vm-a"].cost == pytest.approx(2 * 4 * 0.1)
    assert (records["vm-a"].final_state, records["vm-a"].shutdown_code) == ("halted", 300)
    assert (records["vm-c"].final_state, records["vm-c"].cpu_seconds) == ("failed", 0.0)


def test_record_vm_again_replaces_the_record(db: Database) -> None:
    accounting = run_workload(db)
    vm = VMRepository(db).get("vm-b")
    accounting.record_vm(vm, ended_at=T0 + 3 * HOUR, price_per_core_hour=1.0, now=T0 + 4 * HOUR)
    accounting.record_vm(vm, ended_at=T0 + 3 * HOUR, price_per_core_hour=1.0, now=T0 + 4 * HOUR)
    records = [r for r in accounting.vm_records() if r.vm_id == "vm-b"]
    assert len(records) == 1 and len(accounting.vm_records()) == len(WORKLOAD)
    (r,) = records
    assert (r.ended_at, r.wall_seconds, r.price_per_core_hour, r.recorded_at) == (
        T0 + 3 * HOUR,
        2 * HOUR,
        1.0,
        T0 + 4 * HOUR,
    )
    assert r.cost == pytest.approx(2 * 2 * 1.0)
    assert r.cpu_seconds == pytest.approx(2000.0)  # still the same jobs


def test_records_are_selected_by_end_time_site_and_vo(db: Database) -> None:
    accounting = run_workload(db)
    # vm-c ends at T0+1000 (in: since is inclusive), vm-b at T0+9000 (out: until is exclusive).
    assert [r.vm_id for r in accounting.vm_records(T0 + 1000, T0 + 9000)] == ["vm-c", "vm-a"]
    assert [r.vm_id for r in accounting.vm_records(site="S1")] == ["vm-c", "vm-a"]
    assert [r.vm_id for r in accounting.vm_records(vo="atlas")] == ["vm-c", "vm-b"]
    assert [r.vm_id for r in accounting.vm_records(site="S1", vo="atlas", cloud="c1")] == ["vm-c"]
    assert accounting.vm_records(since=T0 + 10 * HOUR) == []
    jobs = accounting.job_records()
    assert len(jobs) == 4  # three finished on VMs, one killed while waiting; the running one has no record yet
    assert {j.vm_id for j in accounting.job_records(site="S1")} == {"vm-a"}
    assert [j.exit_code for j in accounting.job_records(vo="lhcb", site="S1")] == [3, 0]
    killed = [j for j in jobs if j.state == "killed"]
    assert [(j.vo, j.site, j.vm_id, j.wall_seconds) for j in killed] == [("lhcb", None, None, 0.0)]


def test_records_outlive_a_restart(db_url: str) -> None:
    first = Database(db_url)
    upgrade(first)
    before = run_workload(first).vm_records()
    first.dispose()
    again = Database(db_url)
    upgrade(again)
    assert AccountingRepository(again).vm_records() == before
    again.dispose()


# --- reports -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("by", [(), ("vo",), ("site",), ("cloud",), ("vo", "site", "cloud")])
def test_report_totals_equal_what_ran(db: Database, by: tuple[str, ...]) -> None:
    report = AccountingService(run_workload(db)).report(by)
    ran_jobs = [j for ran in WORKLOAD for j in ran.jobs if j.end is not None]
    expected_vms = {
        "vms": len(WORKLOAD),
        "core_hours": sum(r.wall * r.cores for r in WORKLOAD) / HOUR,
        "wall_hours": sum(r.wall for r in WORKLOAD) / HOUR,
        "cpu_hours": sum(r.cpu for r in WORKLOAD) / HOUR,
        "hs06_hours": sum(r.wall * (r.hs06 or 0) for r in WORKLOAD) / HOUR,
        "cost": sum(r.cost for r in WORKLOAD),
        "jobs_run": sum(len(r.jobs) for r in WORKLOAD),
    }
    expected_jobs = {
        "jobs": len(ran_jobs) + 1,
        "done": sum(j.exit_code == 0 for j in ran_jobs),
        "failed": sum(j.exit_code != 0 for j in ran_jobs),
        "killed": 1,
        "core_hours": sum(j.core_hours for j in ran_jobs),
        "cpu_hours": sum(j.cpu for j in ran_jobs) / HOUR,
    }
    for name, value in expected_vms.items():
        assert getattr(report.total.vms, name) == pytest.approx(value), name
        assert sum(getattr(row.vms, name) for row in report.rows) == pytest.approx(value), name
    for name, value in expected_jobs.items():
        assert getattr(report.total.jobs, name) == pytest.approx(value), name
        assert sum(getattr(row.jobs, name) for row in report.rows) == pytest.approx(value), name
    assert all(tuple(row.key) == by for row in report.rows)


def test_report_groups_by_the_keys_asked(db: Database) -> None:
    service = AccountingService(run_workload(db))
    by_vo = {row.key["vo"]: row for row in service.report(("vo",)).rows}
    assert by_vo["lhcb"].vms.core_hours == pytest.approx(8.0)  # 4 cores for 2 h
    assert by_vo["atlas"].vms.core_hours == pytest.approx(2 * 1.5 + 8 * 900 / HOUR)
    assert by_vo["lhcb"].jobs.jobs == 3 and by_vo["lhcb"].jobs.killed == 1
    assert by_vo["atlas"].vms.hs06_hours == pytest.approx(80 * 900 / HOUR)
    by_site = {row.key["site"]: row for row in service.report(("site",)).rows}
    assert set(by_site) == {"S1", "S2", None}  # the job killed while waiting ran nowhere
    assert (by_site[None].vms.vms, by_site[None].jobs.killed) == (0, 1)
    assert by_site["S2"].vms.cost == pytest.approx(1.5 * 2 * 0.5)
    keys = [tuple(row.key.values()) for row in service.report(("cloud", "vo")).rows]
    assert keys == [("c1", "atlas"), ("c1", "lhcb"), ("c2", "atlas"), (None, "lhcb")]
    only_s2 = service.report(("vo",), site="S2")
    assert [row.key for row in only_s2.rows] == [{"vo": "atlas"}] and only_s2.total.vms.vms == 1


def test_core_hours_series_spreads_each_vm_over_its_lifetime(db: Database) -> None:
    records = run_workload(db).vm_records()
    series = core_hours_series(records, bucket_seconds=HOUR)
    assert series.starts[0] == math.floor(T0 / HOUR) * HOUR
    for vo in ("lhcb", "atlas"):
        expected = sum(r.core_hours for r in records if r.vo == vo)
        assert sum(series.core_hours[vo]) == pytest.approx(expected)
    # lhcb: 4 cores from T0 to T0+2h, so 4 core-hours in each hour it overlaps wholly.
    offset = T0 - series.starts[0]
    assert series.core_hours["lhcb"][0] == pytest.approx(4 * (HOUR - offset) / HOUR)
    assert core_hours_series(records).bucket_seconds == 300.0  # 2.5 h of usage fits in 5-minute bars
    assert core_hours_series([]).starts == []
    report = build_report(records, [], ("vo",))
    assert sum(sum(v) for v in report.series.core_hours.values()) == pytest.approx(report.total.vms.core_hours)


def test_group_keys_and_times_are_checked() -> None:
    assert parse_group_by("vo, site") == ("vo", "site")
    assert parse_group_by("") == ()
    with pytest.raises(ValueError, match="'owner'"):
        parse_group_by("vo,owner")
    with pytest.raises(ValueError, match="repeated"):
        parse_group_by("vo,vo")
    assert parse_time("2027-01-15") == 1_800_000_000.0 - 1_800_000_000.0 % 86400
    assert parse_time("2027-01-15T08:00:00+00:00") == parse_time("2027-01-15T08:00")
    assert parse_time(str(T0)) == T0
    with pytest.raises(ValueError, match="not a date"):
        parse_time("yesterday")
    with pytest.raises(ValueError, match="not a time"):
        parse_time("inf")


# --- APEL ----------------------------------------------------------------------------------------------------


def test_apel_export_parses_back_into_the_same_records(db: Database) -> None:
    records = run_workload(db).vm_records()
    text = AccountingService(AccountingRepository(db)).apel()
    lines = text.splitlines()
    assert lines[0] == "APEL-cloud-message: v0.4"
    assert lines.count("%%") == len(records) and lines[-1] == "%%"
    for line in ("Status: completed", "CloudType: cloudpilot", "BenchmarkType: HEPSPEC", "SuspendDuration: 0"):
        assert line in lines
    parsed = parse_apel(text)
    assert len(parsed) == len(records)
    for record, back in zip(records, parsed, strict=True):
        expected = to_apel(record)
        for f in fields(ApelRecord):  # field by field, so a failure names the field
            assert getattr(back, f.name) == getattr(expected, f.name), f.name
        # ... and the fields carry the record's values.
        assert (back.vm_uuid, back.site_name, back.cloud_compute_service) == (record.vm_id, record.site, record.cloud)
        assert (back.machine_name, back.image_id, back.memory) == (record.instance_id, record.image, record.memory_mb)
        assert back.fqan == f"/{record.vo}/Role=NULL/Capability=NULL" and back.local_group_id == record.vo
        assert (back.start_time, back.end_time) == (round(record.started_at), round(record.ended_at))
        assert back.wall_duration == round(record.wall_seconds) and back.cpu_duration == round(record.cpu_seconds)
        assert back.cpu_count == record.cores
        if record.hs06:
            assert back.benchmark * back.cpu_count == pytest.approx(record.hs06)
        else:
            assert (back.benchmark, back.benchmark_type) == (None, None)
    vm_b = next(r for r in parsed if r.vm_uuid == "vm-b")
    assert "VMUUID: vm-b\nSiteName: S2\nCloudComputeService: c2\n" in text
    assert "Benchmark: NULL" in text and vm_b.benchmark is None
    assert write_apel([]) == "APEL-cloud-message: v0.4\n" and parse_apel(write_apel([])) == []


def _names() -> st.SearchStrategy[str]:
    return st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:/=-]{0,30}", fullmatch=True).filter(
        lambda s: s not in ("NULL", "None")
    )


@given(
    uuid=_names(),
    site=_names(),
    image=st.none() | _names(),
    ints=st.lists(st.none() | st.integers(0, 2**40), min_size=4, max_size=4),
    count=st.none() | st.floats(0, 1e4, allow_nan=False),
    bench=st.none() | st.floats(0, 1e6, allow_nan=False),
)
def test_apel_round_trip_of_any_record(
    uuid: str, site: str, image: str | None, ints: list[int | None], count: float | None, bench: float | None
) -> None:
    record = ApelRecord(uuid, site, image_id=image, start_time=ints[0], end_time=ints[1], wall_duration=ints[2],
                        memory=ints[3], cpu_count=count, benchmark=bench, benchmark_type="HEPSPEC")  # fmt: skip
    assert parse_apel(write_apel([record, record])) == [record, record]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("APEL-individual-job-message: v0.3\n", "line 1"),
        ("APEL-cloud-message: v0.4\nVMUUID: a\nSiteName: s\nColour: red\n%%\n", "line 4"),
        ("APEL-cloud-message: v0.4\nVMUUID: a\nSiteName: s\nWallDuration: 1.5\n%%\n", "WallDuration"),
        ("APEL-cloud-message: v0.4\nSiteName: s\n%%\n", "VMUUID"),
        ("APEL-cloud-message: v0.4\nVMUUID: a\nSiteName: NULL\n%%\n", "SiteName"),
        ("APEL-cloud-message: v0.4\nVMUUID: a\nVMUUID: b\nSiteName: s\n%%\n", "twice"),
    ],
)
def test_apel_parser_says_what_is_wrong(text: str, error: str) -> None:
    with pytest.raises(ApelFormatError, match=error):
        parse_apel(text)


def test_apel_reads_a_record_without_its_closing_separator_or_optional_fields() -> None:
    (record,) = parse_apel("APEL-cloud-message: v0.4\nVMUUID: x\nSiteName: s\nCpuCount: 2\n")
    assert record == ApelRecord("x", "s", cpu_count=2.0)
    usage = VMUsage("vm-1", "c", "s", "vo", "f", 0, 1, None, None, T0, T0, 0.0, 0.0, 10.0, 0.0, 0.0, 0, "lost", None,
                    None, T0)  # fmt: skip
    assert to_apel(usage).benchmark is None  # no cores: no per-core benchmark
