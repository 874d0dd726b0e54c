"""Permission for the next job: before a pilot at a site gets work, its request is checked against the site's
policy (docs/site-control.md, "Permission for the next job").

The figures it needs (running cores and core-hours per site and VO, VOs switched off, waiting work) are read
at most once a second and shared by every pilot's check, so a match costs no extra query in the common case.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from cloudpilot.config import ServerConfig
from cloudpilot.domain.shutdown import ShutdownCode
from cloudpilot.services.errors import Forbidden
from cloudpilot.services.matcher import MatchService
from cloudpilot.store.sites import SiteRepository, VOSwitch

REFRESH_SECONDS = 1.0


class VODisabled(Forbidden):
    """The VO may not run at the site: its pilot is refused (403) and halts as banned."""


@dataclass(frozen=True, slots=True)
class Permission:
    """``halt``: the pilot should take no more work and leave with this code and reason."""

    seconds_left: int | None
    halt: tuple[ShutdownCode, str] | None = None


@dataclass
class _Figures:
    read_at: float
    running: dict[tuple[str, str], int]
    switches: dict[tuple[str, str], VOSwitch]
    waiting_vos: dict[str, set[str]]  # site -> VOs with waiting work that may run there
    core_hours: dict[float, dict[tuple[str, str], float]] = field(default_factory=dict)  # period -> (site, vo) -> used


class SitePolicy:
    def __init__(self, config: ServerConfig, sites: SiteRepository, matcher: MatchService) -> None:
        self.config, self.sites, self.matcher = config, sites, matcher
        self._figures: _Figures | None = None
        self._lock = threading.Lock()
        self._pledged_sites = {name for name, s in config.sites.items() if s.pledges}

    def check(
        self, vo: str | None, site: str | None, seconds_left: int | None, deadline: float | None, now: float
    ) -> Permission:
        """Raise :class:`VODisabled`, or say how long the next job may run and whether the pilot should halt."""
        if deadline is not None:
            until_deadline = max(0, int(deadline - now))
            seconds_left = until_deadline if seconds_left is None else min(seconds_left, until_deadline)
        if site is None or vo is None:
            return Permission(seconds_left)
        figures = self._current(now)
        switch = figures.switches.get((site, vo))
        site_config = self.config.site_config(site)
        if switch is not None and not switch.enabled:
            raise VODisabled(f"VO {vo} is disabled at site {site}" + (f": {switch.reason}" if switch.reason else ""))
        if switch is None and vo in site_config.disabled_vos:
            raise VODisabled(f"VO {vo} is disabled at site {site} (sites.{site}.disabled_vos)")
        pledge = site_config.pledges.get(vo)
        if pledge is None:
            return Permission(seconds_left)
        if pledge.core_hours is not None:
            used = self._core_hours(figures, site, vo, pledge.period_seconds, now)
            if used >= pledge.core_hours:
                reason = (
                    f"VO {vo} used {used:.1f} of its {pledge.core_hours:g} core-hours at site {site} "
                    f"in the last {pledge.period_seconds / 86400:g} days"
                )
                return Permission(seconds_left, (ShutdownCode.NO_MORE_WORK, reason))
        held = figures.running.get((site, vo), 0)
        if held >= pledge.cores:
            for other, other_pledge in site_config.pledges.items():
                if other == vo or other not in figures.waiting_vos.get(site, set()):
                    continue
                if figures.running.get((site, other), 0) < other_pledge.cores:
                    reason = (
                        f"VO {vo} holds {held} cores at site {site}, at or above its pledge of {pledge.cores}, "
                        f"while VO {other} waits below its pledge"
                    )
                    return Permission(seconds_left, (ShutdownCode.NO_MORE_WORK, reason))
        return Permission(seconds_left)

    def invalidate(self) -> None:
        """Read the figures afresh at the next check (a site admin changed something)."""
        with self._lock:
            self._figures = None

    def _current(self, now: float) -> _Figures:
        read_at = time.monotonic()
        with self._lock:
            if self._figures is not None and read_at - self._figures.read_at < REFRESH_SECONDS:
                return self._figures
            # Only pledges need the cores held per site: counting them reads every matched and running job
            # (most of a busy server's time spent on this check when it was read with no pledge to use it).
            figures = _Figures(
                read_at=read_at,
                running=self.sites.running_cores() if self._pledged_sites else {},
                switches=self.sites.vo_switches(),
                waiting_vos=self._waiting_vos(now),
            )
            self._figures = figures
            return figures

    def _waiting_vos(self, now: float) -> dict[str, set[str]]:
        """Per site with pledges, the VOs whose waiting jobs may run there."""
        found: dict[str, set[str]] = {site: set() for site in self._pledged_sites}
        if not found:
            return found
        for tq in self.matcher.waiting_task_queues(now):  # the matcher's snapshot: no query of its own
            for site in self._pledged_sites:
                if site in tq.sites_deny or (tq.sites_allow and site not in tq.sites_allow):
                    continue
                found[site].add(tq.vo)
        return found

    def _core_hours(self, figures: _Figures, site: str, vo: str, period: float, now: float) -> float:
        """One query per period for every site and VO, not one per pledge."""
        with self._lock:
            if period not in figures.core_hours:
                figures.core_hours[period] = self.sites.core_hours_since(now - period, now)
            return figures.core_hours[period].get((site, vo), 0.0)
