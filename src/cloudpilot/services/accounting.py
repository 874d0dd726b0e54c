"""Accounting reports: totals of the usage records grouped by VO, site and/or cloud, and core-hours per VO over
time (for the plot). The APEL export is in :mod:`cloudpilot.services.apel`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cloudpilot.domain.accounting import HOUR, JobUsage, VMUsage
from cloudpilot.services.apel import write_apel
from cloudpilot.store.accounting import AccountingRepository

# Bucket widths the time series chooses from: the narrowest that gives at most MAX_BUCKETS bars.
BUCKET_SECONDS = (300.0, 3600.0, 6 * 3600.0, 86400.0, 7 * 86400.0, 30 * 86400.0)
MAX_BUCKETS = 200


@dataclass
class VMTotals:
    vms: int = 0
    core_hours: float = 0.0
    wall_hours: float = 0.0
    cpu_hours: float = 0.0
    hs06_hours: float = 0.0
    cost: float = 0.0
    jobs_run: int = 0

    def add(self, r: VMUsage) -> None:
        self.vms += 1
        self.core_hours += r.core_hours
        self.wall_hours += r.wall_seconds / HOUR
        self.cpu_hours += r.cpu_seconds / HOUR
        self.hs06_hours += r.hs06_hours
        self.cost += r.cost
        self.jobs_run += r.jobs_run


@dataclass
class JobTotals:
    jobs: int = 0
    done: int = 0
    failed: int = 0
    killed: int = 0
    core_hours: float = 0.0
    cpu_hours: float = 0.0

    def add(self, r: JobUsage) -> None:
        self.jobs += 1
        if r.state in ("done", "failed", "killed"):
            setattr(self, r.state, getattr(self, r.state) + 1)
        self.core_hours += r.core_hours
        self.cpu_hours += r.cpu_seconds / HOUR


@dataclass
class ReportRow:
    key: dict[str, str | None]  # the group's value of each ``by`` key
    vms: VMTotals = field(default_factory=VMTotals)
    jobs: JobTotals = field(default_factory=JobTotals)


@dataclass
class Series:
    """Core-hours of VMs per VO in buckets of ``bucket_seconds`` starting at ``starts``; a VM's core-hours are
    spread over the buckets its lifetime overlaps, so every bucket shows what ran then."""

    bucket_seconds: float
    starts: list[float]
    core_hours: dict[str, list[float]]


@dataclass
class Report:
    by: tuple[str, ...]
    since: float | None
    until: float | None
    rows: list[ReportRow]
    total: ReportRow
    series: Series

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def build_report(
    vm_records: Sequence[VMUsage],
    job_records: Sequence[JobUsage],
    by: tuple[str, ...],
    since: float | None = None,
    until: float | None = None,
) -> Report:
    """Group the records by ``by`` (any of vo, site, cloud; empty: one row). Rows are sorted by key; a key a
    job record does not know (a job that never ran on a VM has no site) is ``None``, sorted last."""
    rows: dict[tuple[str | None, ...], ReportRow] = {}
    total = ReportRow(key={})

    def row_of(record: VMUsage | JobUsage) -> ReportRow:
        values = tuple(getattr(record, k) for k in by)
        if values not in rows:
            rows[values] = ReportRow(key=dict(zip(by, values, strict=True)))
        return rows[values]

    for vm in vm_records:
        row_of(vm).vms.add(vm)
        total.vms.add(vm)
    for job in job_records:
        row_of(job).jobs.add(job)
        total.jobs.add(job)
    ordered = [rows[k] for k in sorted(rows, key=lambda k: tuple((v is None, v or "") for v in k))]
    return Report(by, since, until, ordered, total, core_hours_series(vm_records))


def core_hours_series(records: Iterable[VMUsage], bucket_seconds: float | None = None) -> Series:
    """Core-hours per VO and bucket; buckets are aligned on multiples of their width (UTC)."""
    records = list(records)
    if not records:
        return Series(bucket_seconds or BUCKET_SECONDS[1], [], {})
    first = min(r.started_at for r in records)
    last = max(r.ended_at for r in records)
    width = bucket_seconds or _bucket_width(last - first)
    origin = math.floor(first / width) * width
    count = max(1, math.ceil((last - origin) / width))
    per_vo: dict[str, list[float]] = {}
    for r in sorted(records, key=lambda r: r.vo):
        bars = per_vo.setdefault(r.vo, [0.0] * count)
        start, end = r.started_at, r.started_at + r.wall_seconds
        first_bucket = int((start - origin) // width)
        for i in range(first_bucket, count):
            low, high = origin + i * width, origin + (i + 1) * width
            if low >= end:
                break
            bars[i] += max(0.0, min(end, high) - max(start, low)) * r.cores / HOUR
    return Series(width, [origin + i * width for i in range(count)], per_vo)


def _bucket_width(span: float) -> float:
    for width in BUCKET_SECONDS:
        if span / width <= MAX_BUCKETS:
            return width
    return BUCKET_SECONDS[-1]


class AccountingService:
    """The use cases over the usage records; ``records`` is what the VM monitor calls ``record_vm`` on."""

    def __init__(self, records: AccountingRepository) -> None:
        self.records = records

    def report(
        self,
        by: tuple[str, ...],
        since: float | None = None,
        until: float | None = None,
        site: str | None = None,
        vo: str | None = None,
    ) -> Report:
        vms = self.records.vm_records(since, until, site=site, vo=vo)
        jobs = self.records.job_records(since, until, site=site, vo=vo)
        return build_report(vms, jobs, by, since, until)

    def apel(
        self, since: float | None = None, until: float | None = None, site: str | None = None, vo: str | None = None
    ) -> str:
        return write_apel(self.records.vm_records(since, until, site=site, vo=vo))
