"""Jobs without one object per job: each class (task queue) holds its submission times in a sorted numpy array and
a FIFO pointer; jobs sent back to the queue (their VM vanished) wait in a small deque before the fresh ones.

A job becomes an object only while it runs (:class:`cloudpilot.sim.pilots.Run`). Durations and failures are drawn
when a job starts, in blocks, from a random stream of its own class, so the n-th job of a class to start gets the
same draw under every policy (common random numbers make policies comparable with few runs).
"""

from __future__ import annotations

from array import array
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cloudpilot.domain.matching import TaskQueue
from cloudpilot.sim.dists import Dist
from cloudpilot.sim.scenario import ArrivalSpec, CloudSpec, JobClassSpec, LhcbSpec, Scenario

if TYPE_CHECKING:
    from cloudpilot.sim.lhcb import QueueClass

DRAW_BLOCK = 4096
INF = float("inf")


# A job that waits: (its submission time, the share of its work already saved by events, attempts spent).
Ticket = tuple[float, float, int]


@dataclass(eq=False, slots=True)
class JobClass:
    """One task queue: identical jobs of one owner."""

    tq: TaskQueue
    name: str
    duration: Dist
    duration_scale: float  # durations are drawn from ``duration`` times this (the wall time for LHCb shares)
    events: int | None
    fail_share: float
    max_attempts: int
    arrivals: np.ndarray
    rng: np.random.Generator
    arrived: int = 0  # submitted so far
    taken: int = 0  # fresh jobs started
    requeued: deque[Ticket] = field(default_factory=deque)
    arrival_list: array = field(default_factory=lambda: array("d"))  # the same times, as Python floats come out
    durations: list[float] = field(default_factory=list)  # drawn ahead, popped from the end
    uniforms: list[float] = field(default_factory=list)
    running: int = 0
    usage: list[float] = field(default_factory=lambda: [0.0, 0.0, 0])  # the owner's, shared (SimMatcher)
    done: int = 0
    failed: int = 0

    @property
    def total(self) -> int:
        return len(self.arrivals)

    @property
    def waiting(self) -> int:
        return self.arrived - self.taken + len(self.requeued)

    @property
    def exhausted(self) -> bool:
        """Nothing waits and nothing more will be submitted (only a requeue can bring work back)."""
        return self.arrived >= len(self.arrivals) and self.taken >= self.arrived and not self.requeued

    def __post_init__(self) -> None:
        self.arrival_list = array("d", self.arrivals.tobytes())

    def refill(self) -> None:
        """Draw the next block of (whole-job durations, uniforms deciding whether and when a job fails), in
        place: the hot path holds these lists."""
        n = int(min(DRAW_BLOCK, max(64, self.total - self.taken)))
        self.durations[:] = (self.duration.draw(self.rng, n) * self.duration_scale).tolist()[::-1]
        self.uniforms[:] = self.rng.random(n).tolist()[::-1]


class Workload:
    """All classes, the merged submission times (to know when new work arrives), and the count of waiting jobs."""

    def __init__(self, classes: list[JobClass]) -> None:
        self.classes = classes
        times = np.concatenate([c.arrivals for c in classes]) if classes else np.empty(0)
        owners = np.concatenate([np.full(c.total, i, dtype=np.int32) for i, c in enumerate(classes)]) if classes else []
        order = np.argsort(times, kind="stable")
        self._times = times[order]
        self._owners = np.asarray(owners, dtype=np.int32)[order]
        self._ptr = 0
        self.next_time = float(self._times[0]) if len(self._times) else INF
        self.total = len(self._times)
        self.waiting_total = 0

    @property
    def first_arrival(self) -> float:
        return float(self._times[0]) if self.total else 0.0

    @property
    def last_arrival(self) -> float:
        return float(self._times[-1]) if self.total else 0.0

    def advance(self, now: float) -> bool:
        """Make every job submitted up to ``now`` visible; whether any was."""
        if now < self.next_time:
            return False
        end = int(np.searchsorted(self._times, now, side="right"))
        counts = np.bincount(self._owners[self._ptr : end], minlength=len(self.classes))
        for i in np.flatnonzero(counts).tolist():
            self.classes[i].arrived += int(counts[i])
        self.waiting_total += end - self._ptr
        self._ptr = end
        self.next_time = float(self._times[end]) if end < self.total else INF
        return True

    def requeue(self, cls: JobClass, ticket: Ticket) -> None:
        cls.requeued.append(ticket)
        self.waiting_total += 1


# --- building the classes of a scenario ------------------------------------------------------------------------


def build_workload(scenario: Scenario, seed: int) -> Workload:
    classes: list[JobClass] = []
    for spec in scenario.workload:
        classes.append(_from_spec(len(classes), spec, scenario, seed))
    if scenario.lhcb is not None:
        classes += _lhcb_classes(len(classes), scenario.lhcb, scenario, seed)
    return Workload(classes)


def _class_rng(seed: int, index: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, 1, index, purpose]))


def arrival_times(arrival: ArrivalSpec, count: int | None, rng: np.random.Generator, base: Path | None) -> np.ndarray:
    """Submission times, sorted."""
    if arrival.kind == "trace":
        path = Path(arrival.file or "")
        if not path.is_absolute() and base is not None:
            path = base / path
        values = [float(line.split(",")[0]) for line in path.read_text().splitlines() if _is_number(line)]
        times = np.sort(np.asarray(values, dtype=np.float64))
        return times if count is None else times[:count]
    n = int(count or 0)
    if arrival.kind == "burst":
        if arrival.spread_seconds <= 0:
            return np.full(n, arrival.at, dtype=np.float64)
        return np.sort(arrival.at + rng.uniform(0.0, arrival.spread_seconds, n))
    if arrival.kind == "poisson":
        gaps = rng.exponential(3600.0 / float(arrival.rate_per_hour or 1.0), n)
        return arrival.start + np.cumsum(gaps)
    every, size = float(arrival.every_seconds or 1.0), int(arrival.size or 1)
    return arrival.start + every * (np.arange(n) // size).astype(np.float64)


def _is_number(line: str) -> bool:
    try:
        float(line.split(",")[0])
    except ValueError:
        return False
    return True


def _from_spec(index: int, spec: JobClassSpec, scenario: Scenario, seed: int) -> JobClass:
    times = arrival_times(spec.arrival, spec.count, _class_rng(seed, index, 0), scenario.base_dir)
    tq = TaskQueue(
        id=index + 1,
        vo=spec.vo,
        owner=spec.owner,
        priority=spec.priority,
        cores=spec.cores,
        memory_mb=spec.memory_mb,
        wall_seconds=spec.wall_seconds,
        tags=frozenset(spec.tags),
        sites_allow=frozenset(spec.sites_allow),
        sites_deny=frozenset(spec.sites_deny),
    )
    return JobClass(
        tq=tq,
        name=spec.name,
        duration=spec.duration,
        duration_scale=1.0,
        events=spec.events,
        fail_share=spec.fail_share,
        max_attempts=spec.max_attempts,
        arrivals=times,
        rng=_class_rng(seed, index, 1),
    )


def _may_run(qc: QueueClass, cloud: CloudSpec, name: str) -> bool:
    site = cloud.site or name
    if not set(qc.tags) <= set(cloud.tags) or site in qc.sites_deny:
        return False
    if qc.sites_allow and site not in qc.sites_allow:
        return False
    return any(f.cores >= qc.cores and (qc.memory_mb or 0) <= f.memory_mb for f in cloud.flavors.values())


def _lhcb_classes(start: int, spec: LhcbSpec, scenario: Scenario, seed: int) -> list[JobClass]:
    # Imported here: ``python -m cloudpilot.sim.lhcb`` must not find the module already loaded by the package.
    from cloudpilot.sim.lhcb import load_model

    model = load_model(Path("/nonexistent/lhcb-snapshot") if spec.data == "embedded" else None)
    # Queues that no cloud of the scenario may run (their sites, their platform) would only wait: left out.
    runnable = [i for i, qc in enumerate(model.classes) if any(_may_run(qc, c, n) for n, c in scenario.clouds.items())]
    counts = model.allocate(spec.jobs, among=runnable)
    # One stream of submissions for the whole backlog, dealt to the classes in a random order.
    rng = _class_rng(seed, start, 0)
    times = arrival_times(spec.arrival, spec.jobs, rng, scenario.base_dir)
    owner_of = rng.permutation(np.repeat(np.arange(len(counts)), counts))
    classes = []
    for k, (qc, n) in enumerate(zip(model.classes, counts, strict=True)):
        if n <= 0:
            continue
        index = start + len(classes)
        wall = max(60, round(qc.wall_seconds / spec.hs06_per_core))
        tq = TaskQueue(
            id=index + 1,
            vo=spec.vo,
            owner=qc.owner,
            priority=qc.priority,
            cores=qc.cores,
            memory_mb=qc.memory_mb,
            wall_seconds=wall,
            tags=frozenset(qc.tags),
            sites_allow=frozenset(qc.sites_allow),
            sites_deny=frozenset(qc.sites_deny),
        )
        mine = np.sort(times[owner_of == k])
        classes.append(
            JobClass(
                tq=tq,
                name=f"tq{qc.tq_id}",
                duration=spec.duration_share_of_wall,
                duration_scale=float(wall),  # a run time is a share of the wall time
                events=spec.events,
                fail_share=0.0,
                max_attempts=3,
                arrivals=mine,
                rng=_class_rng(seed, index, 1),
            )
        )
    return classes
