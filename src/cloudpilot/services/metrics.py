"""The server's Prometheus metrics: the one module that owns the metric objects (docs/rest-api.md, ``/metrics``).

Counters and histograms are counted where things happen (the services, the matcher, the HTTP middleware).
What the store holds (jobs by VO and state, VMs by cloud and state, active pilots, clouds backing off) is not
counted but read at scrape time by :class:`cloudpilot.services.gauges.StoreGauges`, so any server process
answers it right.

Several server processes: with ``PROMETHEUS_MULTIPROC_DIR`` set when the process starts, prometheus_client keeps
every counter and histogram in memory-mapped files in that directory, and :func:`exposition` sums the files of
all processes; the directory must be emptied before the server starts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from cloudpilot.domain.jobs import JobState
from cloudpilot.store.jobs import Requeued

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

disable_created_metrics()  # no *_created series: one process or many, a scrape shows the same metrics
if os.environ.get(MULTIPROC_ENV):  # prometheus_client writes its files there from the first metric on
    os.makedirs(os.environ[MULTIPROC_ENV], exist_ok=True)

# The metrics counted in this process; never exposed directly in multiprocess mode (their files are).
REGISTRY = CollectorRegistry(auto_describe=True)

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_HTTP = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)  # long polls last up to 60 s
_CYCLE = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BOOT = (5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0, 1200.0, 1800.0)

JOBS_SUBMITTED = Counter("cloudpilot_jobs_submitted", "Jobs submitted.", ["vo"], registry=REGISTRY)
MATCHES = Counter("cloudpilot_matches", "Jobs handed to pilots by the matcher.", ["vo"], registry=REGISTRY)
MATCH_SECONDS = Histogram(
    "cloudpilot_match_seconds",
    "Time the matcher takes to answer one match attempt (job: a job was leased; none: nothing fits).",
    ["outcome"],
    buckets=_FAST,
    registry=REGISTRY,
)
LEASE_EXPIRIES = Counter(
    "cloudpilot_lease_expiries", "Leases that ran out without a heartbeat (lease reaper).", registry=REGISTRY
)
REQUEUES = Counter(
    "cloudpilot_jobs_requeued",
    "Jobs sent back to waiting (cause: lease_expired, vm_ended).",
    ["cause"],
    registry=REGISTRY,
)
VM_BOOT_SECONDS = Histogram(
    "cloudpilot_vm_boot_seconds",
    "From a VM's request to its pilot (or cluster agent) reporting in.",
    ["cloud"],
    buckets=_BOOT,
    registry=REGISTRY,
)
VM_BOOT_FAILURES = Counter(
    "cloudpilot_vm_boot_failures",
    "VMs that failed before booting (reason: cloud_error, boot_timeout, instance_error).",
    ["cloud", "reason"],
    registry=REGISTRY,
)
PROVISIONING_CYCLE_SECONDS = Histogram(
    "cloudpilot_provisioning_cycle_seconds",
    "One provisioning cycle: VM monitor, clusters and provisioner.",
    buckets=_CYCLE,
    registry=REGISTRY,
)
DECIDE_SECONDS = Histogram(
    "cloudpilot_provisioning_decide_seconds",
    "The provisioning policy's decide() in one cycle.",
    buckets=_CYCLE,
    registry=REGISTRY,
)
HTTP_REQUESTS = Counter(
    "cloudpilot_http_requests",
    "HTTP requests by method, route template and status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_SECONDS = Histogram(
    "cloudpilot_http_request_seconds",
    "HTTP request latency by method and route template.",
    ["method", "route"],
    buckets=_HTTP,
    registry=REGISTRY,
)


def count_requeues(handled: Sequence[Requeued], cause: str) -> None:
    """Count the jobs sent back to ``waiting`` (not those that failed, out of attempts)."""
    requeued = sum(1 for r in handled if r.new_state is JobState.WAITING)
    if requeued:
        REQUEUES.labels(cause).inc(requeued)


def vm_booted(cloud: str, created_at: float, now: float) -> None:
    """A VM's pilot (or cluster agent) reported in: the VM moved from booting to running."""
    VM_BOOT_SECONDS.labels(cloud).observe(max(0.0, now - created_at))


def vm_failed(cloud: str, reason: str, booted_at: float | None) -> None:
    """A VM failed; it counts as a boot failure if it never booted."""
    if booted_at is None:
        VM_BOOT_FAILURES.labels(cloud, reason).inc()


def observe_match(vo: str | None, seconds: float) -> None:
    """One match attempt: ``vo`` is the leased job's, None when nothing fitted."""
    MATCH_SECONDS.labels("none" if vo is None else "job").observe(seconds)
    if vo is not None:
        MATCHES.labels(vo).inc()


def observe_http(method: str, route: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_SECONDS.labels(method, route).observe(seconds)


class _Registered(Collector):
    """This process's own counters and histograms."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def exposition(*gauges: Collector) -> bytes:
    """The text to answer a scrape with: the counted metrics (of every process, in multiprocess mode) and the
    gauges computed now."""
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get(MULTIPROC_ENV):
        MultiProcessCollector(registry)
    else:
        registry.register(_Registered())
    for collector in gauges:
        registry.register(collector)
    return generate_latest(registry)
