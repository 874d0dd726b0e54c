"""Gauges of what the store holds, computed when Prometheus scrapes: right from any server process, and never
drifting from the truth as a gauge kept up to date by hand would."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from cloudpilot.config import ServerConfig
from cloudpilot.domain.jobs import JobState
from cloudpilot.domain.vms import VMState
from cloudpilot.services.clock import Clock
from cloudpilot.services.pilots import SEEN_EVERY_SECONDS
from cloudpilot.store.stats import StatsRepository
from cloudpilot.store.vms import VMRepository

ANY_VO = "any"  # the label of pilots bound to no VO
# A hand-started pilot asking for work has its last_seen_at written once a minute (services.pilots).
HAND_STARTED_SEEN_SECONDS = 3 * SEEN_EVERY_SECONDS


class StoreGauges(Collector):
    def __init__(self, stats: StatsRepository, vms: VMRepository, config: ServerConfig, clock: Clock) -> None:
        self.stats = stats
        self.vms = vms
        self.config = config
        self.clock = clock

    def collect(self) -> Iterable[Metric]:
        yield self._jobs()
        yield self._waiting_classes()
        yield self._vms()
        yield self._pilots()
        yield self._backoff()

    def _jobs(self) -> Metric:
        family = GaugeMetricFamily("cloudpilot_jobs", "Jobs by VO and state.", labels=["vo", "state"])
        counts = self.stats.jobs_by_vo_state()
        # Every state of every VO seen, zeros included, so a query for waiting jobs finds 0 rather than nothing.
        for vo in sorted({vo for vo, _ in counts} | set(self.config.vos)):
            for state in JobState:
                family.add_metric([vo, state.value], counts.get((vo, state.value), 0))
        return family

    def _waiting_classes(self) -> Metric:
        family = GaugeMetricFamily(
            "cloudpilot_waiting_classes",
            "Requirement classes with waiting jobs, by VO: each costs every provisioning cycle "
            "(a user may have jobs.max_waiting_classes_per_user).",
            labels=["vo"],
        )
        counts = self.stats.waiting_classes_by_vo()
        for vo in sorted(set(counts) | set(self.config.vos)):
            family.add_metric([vo], counts.get(vo, 0))
        return family

    def _vms(self) -> Metric:
        family = GaugeMetricFamily(
            "cloudpilot_vms", "VMs by cloud and state (destroyed ones left out).", labels=["cloud", "state"]
        )
        counts = self.stats.vms_by_cloud_state()
        for cloud in sorted({cloud for cloud, _ in counts} | set(self.config.clouds)):
            for state in VMState:
                if not state.is_final:
                    family.add_metric([cloud, state.value], counts.get((cloud, state.value), 0))
        return family

    def _pilots(self) -> Metric:
        family = GaugeMetricFamily(
            "cloudpilot_pilots_active",
            "Pilots that may take or hold work: in a live VM, or hand-started and asking for work or holding a job.",
            labels=["vo"],
        )
        active = self.stats.active_pilots_by_vo(self.clock.now() - HAND_STARTED_SEEN_SECONDS)
        for vo, n in sorted(active.items(), key=lambda item: item[0] or ""):
            family.add_metric([vo or ANY_VO], n)
        return family

    def _backoff(self) -> Metric:
        family = GaugeMetricFamily(
            "cloudpilot_cloud_backoff_seconds",
            "Seconds until a cloud backing off after boot failures may start VMs again (0: not backing off).",
            labels=["cloud"],
        )
        now = self.clock.now()
        for name in self.config.clouds:
            # As /clouds computes it (services.cloud_health.cloud_status), without its other queries.
            until = self.config.policy.backoff_end(*self.vms.boot_failures_in_row(name))
            family.add_metric([name], max(0.0, until - now) if until is not None else 0.0)
        return family
