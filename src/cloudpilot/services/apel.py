"""APEL cloud usage records, message format v0.4 (docs/accounting.md says what each field holds and why).

A message is the header line ``APEL-cloud-message: v0.4``, then records of ``Key: value`` lines, each record
followed by a line ``%%``. ``NULL`` stands for an unknown value. Times are UNIX seconds and durations whole
seconds (APEL's loader reads them as integers); ``CpuCount`` and ``Benchmark`` are decimals.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields

from cloudpilot.domain.accounting import VMUsage

HEADER = "APEL-cloud-message: v0.4"
SEPARATOR = "%%"
NULL = "NULL"
CLOUD_TYPE = "cloudpilot"
BENCHMARK_TYPE = "HEPSPEC"


class ApelFormatError(ValueError):
    """A message that is not an APEL cloud v0.4 message; the text says where."""


@dataclass(frozen=True, slots=True)
class ApelRecord:
    """One cloud usage record; the attributes are the v0.4 fields in message order (``APEL_KEYS``)."""

    vm_uuid: str
    site_name: str
    cloud_compute_service: str | None = None
    machine_name: str | None = None
    local_user_id: str | None = None
    local_group_id: str | None = None
    global_user_name: str | None = None
    fqan: str | None = None
    status: str | None = None
    start_time: int | None = None
    end_time: int | None = None
    suspend_duration: int | None = None
    wall_duration: int | None = None
    cpu_duration: int | None = None
    cpu_count: float | None = None
    network_type: str | None = None
    network_inbound: int | None = None
    network_outbound: int | None = None
    public_ip_count: int | None = None
    memory: int | None = None
    disk: int | None = None
    benchmark_type: str | None = None
    benchmark: float | None = None
    storage_record_id: str | None = None
    image_id: str | None = None
    cloud_type: str | None = None


APEL_KEYS = (
    "VMUUID", "SiteName", "CloudComputeService", "MachineName", "LocalUserId", "LocalGroupId", "GlobalUserName",
    "FQAN", "Status", "StartTime", "EndTime", "SuspendDuration", "WallDuration", "CpuDuration", "CpuCount",
    "NetworkType", "NetworkInbound", "NetworkOutbound", "PublicIPCount", "Memory", "Disk", "BenchmarkType",
    "Benchmark", "StorageRecordId", "ImageId", "CloudType",
)  # fmt: skip
_ATTRS = dict(zip(APEL_KEYS, (f.name for f in fields(ApelRecord)), strict=True))
_INTS = {"StartTime", "EndTime", "SuspendDuration", "WallDuration", "CpuDuration", "NetworkInbound",
         "NetworkOutbound", "PublicIPCount", "Memory", "Disk"}  # fmt: skip
_FLOATS = {"CpuCount", "Benchmark"}
MANDATORY = ("VMUUID", "SiteName")


def to_apel(vm: VMUsage) -> ApelRecord:
    """The APEL record of a VM. ``Benchmark`` is HEPSPEC06 per core (the VM's hs06 / cores, 3 decimals as
    APEL stores it), so WallDuration x CpuCount x Benchmark is the VM's HS06-seconds; NULL when unknown."""
    per_core = round(vm.hs06 / vm.cores, 3) if vm.hs06 > 0 and vm.cores > 0 else None
    return ApelRecord(
        vm_uuid=vm.vm_id,
        site_name=vm.site,
        cloud_compute_service=vm.cloud,
        machine_name=vm.instance_id,
        local_group_id=vm.vo,
        fqan=f"/{vm.vo}/Role=NULL/Capability=NULL",
        status="completed",  # a record is written when its VM is gone
        start_time=round(vm.started_at),
        end_time=round(vm.ended_at),
        suspend_duration=0,  # cloudpilot never suspends a VM
        wall_duration=round(vm.wall_seconds),
        cpu_duration=round(vm.cpu_seconds),
        cpu_count=float(vm.cores),
        memory=vm.memory_mb,
        benchmark_type=BENCHMARK_TYPE if per_core is not None else None,
        benchmark=per_core,
        image_id=vm.image,
        cloud_type=CLOUD_TYPE,
    )


def write_apel(records: Iterable[VMUsage | ApelRecord]) -> str:
    """One message holding every record (just the header when there is none)."""
    lines = [HEADER]
    for record in records:
        apel = to_apel(record) if isinstance(record, VMUsage) else record
        for key in MANDATORY:
            if getattr(apel, _ATTRS[key]) in (None, ""):
                raise ValueError(f"APEL record without {key}: {apel}")
        lines.extend(f"{key}: {_text(getattr(apel, _ATTRS[key]))}" for key in APEL_KEYS)
        lines.append(SEPARATOR)
    return "\n".join(lines) + "\n"


def parse_apel(text: str) -> list[ApelRecord]:
    """The records of a message. Unknown keys, a repeated key, a bad number or a missing mandatory field are
    :class:`ApelFormatError` with the line number; keys left out of a record are ``None``."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != HEADER:
        raise ApelFormatError(f"line 1: expected the header {HEADER!r}")
    records: list[ApelRecord] = []
    current: dict[str, object] = {}
    for number, raw in enumerate(lines[1:], start=2):
        line = raw.strip()
        if line == SEPARATOR:
            records.append(_record(current, number))
            current = {}
            continue
        if not line:
            continue
        key, colon, value = line.partition(":")
        key = key.strip()
        if not colon or key not in _ATTRS:
            raise ApelFormatError(f"line {number}: expected 'Key: value' with a v0.4 key, got {raw!r}")
        if _ATTRS[key] in current:
            raise ApelFormatError(f"line {number}: {key} given twice in one record")
        current[_ATTRS[key]] = _value(key, value.strip(), number)
    if current:  # the last record may lack its closing %%
        records.append(_record(current, len(lines)))
    return records


def _record(values: dict[str, object], number: int) -> ApelRecord:
    for key in MANDATORY:
        if values.get(_ATTRS[key]) is None:
            raise ApelFormatError(f"record ending at line {number}: mandatory {key} is missing or NULL")
    return ApelRecord(**values)  # type: ignore[arg-type]


def _value(key: str, text: str, number: int) -> object:
    if text in ("", NULL, "None"):
        return None
    try:
        if key in _INTS:
            return int(text)
        if key in _FLOATS:
            return float(text)
    except ValueError:
        kind = "a whole number" if key in _INTS else "a number"
        raise ApelFormatError(f"line {number}: {key} must be {kind}, got {text!r}") from None
    return text


def _text(value: object) -> str:
    if value is None:
        return NULL
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    # A value is one line: a newline in a name would start a bogus field.
    return " ".join(value.splitlines()).strip() if isinstance(value, str) else str(value)
