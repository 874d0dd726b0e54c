"""Waiting jobs and pilot offers shaped like LHCb's real DIRAC task queue (snapshot of 2026-03-28).

The simulator's LHCb backlog scenario and the matcher and provisioner benchmarks draw their workload from here instead
of uniform random requirements.

Source: aggregate statistics of LHCb's DIRAC TaskQueueDB on 2026-03-28 (501 task queues, 871,973 waiting jobs,
60 sites, 67 platforms), published in the public repository devlink42/poc-dirac-job-matchmaking (analysis/lhcb/data).
The CSVs are read from ``../shared/data/lhcb-taskqueue-2026-03-28`` beside the project when present; they are never
copied into it. Without them a compact embedded model derived from their figures is used (see ``_EMBEDDED_*``).

Usage::

    model = load_model()
    for owner, spec in model.sample_jobs(1_000_000, seed=1):  # owner: the submitting identity, spec: JobSpec JSON
        ...
    offers = model.sample_offers(1000, seed=1)  # Offer JSON
    model.eligible_share(offers)  # share of offers at least one class fits

What the snapshot holds per queue: id, CPU-time segment, owner group, priority and size. Platforms, sites, bans and
memory are only marginals (how many queues and jobs accept each value). They are handed out to the queues so that
those marginals are met as closely as possible (``_pick``), which gives one ``QueueClass`` per real task queue.

Simplifications (each is explained where it is made):

* Platforms: a job requires exactly one tag, the platform it was built for (e.g. ``x86_64_v2-centos7``), and a pilot
  offers every job platform its host can run. The per-job platforms are recovered from the "accepted platforms"
  marginals by the compatibility rule of ``_job_platforms``; on this snapshot that inversion is exact.
* Sites: queues of the same owner group are allowed at the same kind of sites (MC everywhere, data at the Tier-1s).
* CPU time: DIRAC's segments are normalised CPU seconds; they are used as wall seconds unchanged (at least 60) and
  pilots' ``seconds_left`` is drawn in the same normalised units (wall time left x CPU power).
* Owner: the owner group (``lhcb_mc``, ``lhcb_data``, ...) is the cloudpilot owner; every job is in VO ``lhcb``.
* Priority: DIRAC's float priorities (0.8 .. 73,733) are mapped to cloudpilot's integer range by
  ``round(100 * log10(1 + p))``, which keeps their order.

Figures with the real CSVs: 498 classes (the per-queue table has 498 of the 501 queues), all with distinct
requirements, 871,925 jobs, largest class 0.57% of the jobs, 4 owners, 10 CPU segments, 5 job platforms plus 1 queue
open to every platform, 60 sites. Of 1000 offers from ``sample_offers`` (seed 0) 100% have at least one eligible class
(``eligible_share``): the MC queues run everywhere and every host type has work; an offer fits 167 classes on average,
median 185, at least 4 (``eligible_counts``). ``python -m cloudpilot.sim.lhcb`` prints these figures. The embedded
model gives the same counts, 868,079 jobs, and 100% (mean 161 classes).
"""

from __future__ import annotations

import csv
import math
import random
import statistics
import sys
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VO = "lhcb"
SNAPSHOT = "2026-03-28"
# Beside the project checkout (src/cloudpilot/sim/ -> ../shared); an installed package falls back to the embedded model.
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[4] / "shared/data/lhcb-taskqueue-2026-03-28"
MIN_WALL_SECONDS = 60
ANY_OS = "any"
EXECUTABLE = "/bin/true"

# The model itself is fixed; only sampling depends on the caller's seed.
_BUILD_SEED = 20260328

Row = tuple[str, int, int]  # (value, queues, jobs): the shape of every marginal table of the snapshot

# --------------------------------------------------------------------------------------------------------------------
# Embedded fallback: the aggregates of the 2026-03-28 snapshot (no per-queue rows), from the CSVs' figures.
# --------------------------------------------------------------------------------------------------------------------

# tq_size_histogram: (smallest, largest, queues, jobs); the top bucket is capped at the largest real queue (4,966).
_EMBEDDED_SIZES = (
    (1, 1, 37, 37),
    (2, 10, 42, 194),
    (11, 100, 52, 2023),
    (101, 1000, 131, 55271),
    (1001, 4966, 271, 814385),
)
# cputime_distribution: (segment seconds, queues, jobs)
_EMBEDDED_CPUTIME = (
    (21600, 41, 126768), (43200, 3, 6729), (86400, 11, 29605), (172800, 41, 20088), (259200, 88, 331745),
    (345600, 56, 150206), (518400, 10, 24582), (691200, 27, 12035), (864000, 5, 14249), (1080000, 216, 155890),
)  # fmt: skip
# owner_distribution, by owner group: (group, queues, jobs)
_EMBEDDED_GROUPS = (
    ("lhcb_mc", 269, 708162),
    ("lhcb_data", 210, 162663),
    ("lhcb_mcproc", 10, 1011),
    ("lhcb_user", 9, 23),
)
# jobs_per_tq: the DIRAC priorities of each owner group, with how many queues have each
_EMBEDDED_PRIORITIES: dict[str, tuple[tuple[float, int], ...]] = {
    "lhcb_mc": (
        (78.8586, 57), (15.4148, 50), (71.8274, 33), (7.368, 27), (6.2764, 23), (48.0283, 22), (1.3644, 10),
        (19.2863, 10), (21.831, 10), (2.456, 9), (17.4648, 8), (1.0916, 4), (0.8187, 3), (6.5493, 3),
    ),
    "lhcb_data": (
        (73732.7, 160), (16129.0, 33), (2764.98, 6), (1843.32, 4), (1382.49, 3), (3686.64, 2), (460.829, 1), (1.0, 1),
    ),
    "lhcb_mcproc": ((27272.7, 5), (18181.8, 4), (4545.45, 1)),
    "lhcb_user": ((5000.0, 9),),
}  # fmt: skip
# platform_distribution, one platform per (architecture level, OS): the other names of a level have the same figures
_EMBEDDED_PLATFORMS = (
    ("x86_64-any", 7, 28891), ("x86_64_v2-any", 273, 690953), ("x86_64_v3-any", 319, 746080),
    ("x86_64_v4-any", 319, 746080), ("x86_64_v2-centos7", 257, 661039), ("x86_64_v3-centos7", 257, 661039),
    ("x86_64_v4-centos7", 257, 661039), ("x86_64-slc6", 7, 28891), ("x86_64_v2-slc6", 7, 28891),
    ("x86_64_v3-slc6", 7, 28891), ("x86_64_v4-slc6", 7, 28891), ("x86_64_v2-el9", 9, 1023),
    ("x86_64_v3-el9", 55, 56150), ("x86_64_v4-el9", 55, 56150), ("armv8.1_a-el9", 178, 125777),
    ("armv8.2_a-el9", 178, 125777), ("armv8.3_a-el9", 178, 125777), ("armv8.1_a-any", 178, 125777),
    ("armv8.2_a-any", 178, 125777), ("armv8.3_a-any", 178, 125777),
)  # fmt: skip
# site_distribution: the sites whose figures differ from those of the MC-only sites below
_EMBEDDED_SITES = (
    ("LCG.CERN.cern", 368, 800227), ("LCG.Beijing.cn", 304, 748642), ("LCG.RAL.uk", 301, 743135),
    ("LCG.GRIDKA.de", 307, 739654), ("LCG.CNAF.it", 299, 736038), ("LCG.NCBJ.pl", 297, 732979),
    ("LCG.CSCS.ch", 284, 726210), ("LCG.NIKHEF.nl", 307, 722824), ("LCG.IN2P3.fr", 297, 719944),
    ("LCG.PIC.es", 292, 715230), ("LCG.SARA.nl", 297, 712622), ("LCG.GRIF.fr", 279, 710282),
    ("LCG.RAL-HEP.uk", 279, 709600), ("LCG.UKI-LT2-IC-HEP.uk", 278, 709575), ("LCG.UKI-LT2-QMUL.uk", 281, 709146),
    ("LCG.CPPM.fr", 278, 708532), ("LCG.DESYHH.de", 278, 708377), ("LCG.LZU.cn", 280, 708376),
    ("LCG.NIPNE-07.ro", 277, 708354), ("LCG.Liverpool.uk", 276, 708287), ("LCG.Manchester.uk", 273, 708237),
    ("DIRAC.HLTFarm.lhcb", 270, 708184), ("LCG.ECDF.uk", 268, 707311), ("DIRAC.Snellius.nl", 255, 689854),
)  # fmt: skip
# 36 sites that take exactly the MC queues: 269 queues, 708,182 jobs each
_EMBEDDED_MC_SITES = (
    "LCG.Milano.it", "LCG.LPC.fr", "LCG.Oxford.uk", "LCG.MIT.us", "LCG.NCBJ-CIS.pl", "LCG.WEIZMANN.il", "LCG.PSNC.pl",
    "LCG.Sheffield.uk", "LCG.TAU.il", "LCG.Trieste.it", "LCG.UKI-LT2-Brunel.uk", "LCG.UKI-LT2-RHUL.uk",
    "CLOUD.CERN.cern", "LCG.CBPF.br", "DIRAC.Barcelona.es", "DIRAC.CINECAM100.it", "DIRAC.Exploratory.cn",
    "DIRAC.Kabre.cr", "DIRAC.MareNostrum.es", "DIRAC.Monash.au", "DIRAC.UZH.ch", "DIRAC.Vega.si", "LCG.BEER.cern",
    "LCG.Birmingham.uk", "LCG.Bristol.uk", "LCG.Legnaro.it", "LCG.CESNET.cz", "LCG.CHTC.us", "LCG.Durham.uk",
    "LCG.Frascati.it", "LCG.Glasgow.uk", "LCG.Haifa.il", "LCG.JINR.ru", "LCG.Krakow.pl", "LCG.Lancaster.uk",
    "LCG.LAPP.fr",
)  # fmt: skip
_EMBEDDED_MC_SITE_FIGURES = (269, 708182)
# banned_sites and site_any
_EMBEDDED_BANNED = (
    ("DIRAC.MareNostrum.es", 1, 7), ("DIRAC.SDumont.br", 1, 7), ("LCG.Beijing.cn", 1, 7), ("LCG.GRIDKA.de", 1, 5),
    ("LCG.RAL.uk", 1, 5),
)  # fmt: skip
_EMBEDDED_ANY_SITE = (1, 7)

# --------------------------------------------------------------------------------------------------------------------
# Pilots: what the slots asking for work look like (no pilot data in the snapshot: plausible grid slots).
# --------------------------------------------------------------------------------------------------------------------

_OFFER_CORES = ((1, 0.5), (8, 0.35), (4, 0.1), (2, 0.05))  # single-core and whole-node (8-core) slots dominate
_OFFER_MB_PER_CORE = ((2000, 0.5), (2500, 0.2), (3000, 0.2), (4000, 0.1))
_OFFER_SLOT_HOURS = ((24, 0.2), (48, 0.5), (72, 0.3))  # batch queue length of the slot
_OFFER_USED = (0.0, 0.5)  # share of the slot already used when the pilot asks
_OFFER_CPU_POWER = (10.0, 25.0)  # HS06 per core: turns wall seconds into DIRAC's normalised CPU seconds

# Micro-architecture names of the platforms → (instruction set, level); a higher level runs a lower level's code.
_ARCH_LEVELS: dict[str, tuple[str, int]] = {
    "x86_64": ("x86_64", 1), "core2": ("x86_64", 1),
    "x86_64_v2": ("x86_64", 2), "nehalem": ("x86_64", 2), "westmere": ("x86_64", 2), "sandybridge": ("x86_64", 2),
    "ivybridge": ("x86_64", 2),
    "x86_64_v3": ("x86_64", 3), "haswell": ("x86_64", 3), "broadwell": ("x86_64", 3), "skylake": ("x86_64", 3),
    "x86_64_v4": ("x86_64", 4), "skylake_avx512": ("x86_64", 4), "cannonlake": ("x86_64", 4),
    "armv8.1_a": ("aarch64", 1), "armv8.2_a": ("aarch64", 2), "armv8.3_a": ("aarch64", 3),
}  # fmt: skip
_ARCH_NAMES = {
    ("x86_64", 1): "x86_64", ("x86_64", 2): "x86_64_v2", ("x86_64", 3): "x86_64_v3", ("x86_64", 4): "x86_64_v4",
    ("aarch64", 1): "armv8.1_a", ("aarch64", 2): "armv8.2_a", ("aarch64", 3): "armv8.3_a",
}  # fmt: skip


# --------------------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueClass:
    """One real task queue: jobs that share an owner, a priority and identical requirements."""

    tq_id: int
    owner: str  # the DIRAC owner group, used as the cloudpilot owner
    priority: int  # cloudpilot priority (see ``cloudpilot_priority``)
    dirac_priority: float
    n_jobs: int
    wall_seconds: int
    tags: tuple[str, ...]  # the one job platform required, or () for a queue open to every platform
    sites_allow: tuple[str, ...]  # () means every site
    sites_deny: tuple[str, ...]
    memory_mb: int | None = None
    cores: int = 1

    def requirements(self) -> dict[str, Any]:
        """The ``requirements`` object of a cloudpilot JobSpec (fresh lists: callers may mutate them)."""
        return {
            "cores": self.cores,
            "memory_mb": self.memory_mb,
            "wall_seconds": self.wall_seconds,
            "tags": list(self.tags),
            "sites": {"allow": list(self.sites_allow), "deny": list(self.sites_deny)},
        }

    def key(self) -> tuple[object, ...]:
        """What makes two classes one task queue for cloudpilot's matcher (``task_queue_key`` without the VO)."""
        return (self.owner, self.priority, self.cores, self.memory_mb, self.wall_seconds, self.tags,
                self.sites_allow, self.sites_deny)  # fmt: skip


@dataclass(frozen=True, slots=True)
class HostType:
    """A kind of worker node: its platform and the job platforms it can run (the tags its pilots offer)."""

    platform: str
    serves: tuple[str, ...]
    weight: int  # waiting jobs it could serve: pilots are sent where the work is, as DIRAC's site directors do


@dataclass(frozen=True)
class WorkloadModel:
    classes: tuple[QueueClass, ...]
    hosts: tuple[HostType, ...]
    sites: tuple[tuple[str, int], ...]  # (site, jobs allowed there): pilots come from sites in that proportion
    source: str

    @property
    def total_jobs(self) -> int:
        return sum(c.n_jobs for c in self.classes)

    @property
    def owners(self) -> tuple[str, ...]:
        return tuple(sorted({c.owner for c in self.classes}))

    @property
    def platforms(self) -> tuple[str, ...]:
        return tuple(sorted({t for c in self.classes for t in c.tags}))

    @property
    def largest_share(self) -> float:
        return max(c.n_jobs for c in self.classes) / self.total_jobs

    def allocate(self, n_jobs: int, among: Sequence[int] | None = None) -> list[int]:
        """Jobs per class for a sample of ``n_jobs``: every class keeps at least one job, the rest follows the real
        proportions (largest remainder), so 10^5 and 10^6 jobs have the same classes and shape.

        Below one job per class, the ``n_jobs`` largest classes get one job each. ``among``: only these classes
        (indices) get jobs (the simulator leaves out queues that none of its clouds may run).
        """
        chosen = list(range(len(self.classes))) if among is None else list(among)
        counts = [0] * len(self.classes)
        if n_jobs < len(chosen):
            largest = sorted(chosen, key=lambda i: (-self.classes[i].n_jobs, self.classes[i].tq_id))
            for i in largest[: max(n_jobs, 0)]:
                counts[i] = 1
            return counts
        extra = _apportion(n_jobs - len(chosen), [self.classes[i].n_jobs for i in chosen])
        for i, e in zip(chosen, extra, strict=True):
            counts[i] = 1 + e
        return counts

    def sample_jobs(self, n_jobs: int, seed: int = 0) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield ``(owner, spec)`` pairs: ``spec`` is a cloudpilot JobSpec in JSON form; ``owner`` goes with it because
        cloudpilot takes the owner from the submitting token, not from the spec. The VO of every job is ``VO``.

        The classes' job counts come from ``allocate``; the seed only shuffles the order jobs arrive in.
        """
        order = [i for i, count in enumerate(self.allocate(n_jobs)) for _ in range(count)]
        random.Random(seed).shuffle(order)
        serial = [0] * len(self.classes)
        for i in order:
            cls = self.classes[i]
            serial[i] += 1
            spec = {
                "name": f"tq{cls.tq_id}-{serial[i]}",
                "executable": EXECUTABLE,
                "requirements": cls.requirements(),
                "priority": cls.priority,
            }
            yield cls.owner, spec

    def sample_offers(self, n: int, seed: int = 0) -> list[dict[str, Any]]:
        """``n`` pilot offers (cloudpilot Offer JSON) from the sites and host platforms the work asks for."""
        rng = random.Random(seed)
        site_names = [s for s, _ in self.sites]
        site_weights = [w for _, w in self.sites]
        host_weights = [h.weight for h in self.hosts]
        offers = []
        for _ in range(n):
            host = rng.choices(self.hosts, host_weights)[0]
            cores = _weighted(rng, _OFFER_CORES)
            hours = _weighted(rng, _OFFER_SLOT_HOURS)
            # DIRAC compares normalised CPU seconds, so the slot's wall time left is scaled by its CPU power.
            seconds_left = hours * 3600 * (1 - rng.uniform(*_OFFER_USED)) * rng.uniform(*_OFFER_CPU_POWER)
            offers.append({
                "cores": cores,
                "memory_mb": cores * _weighted(rng, _OFFER_MB_PER_CORE),
                "seconds_left": int(seconds_left),
                "tags": list(host.serves),
                "site": rng.choices(site_names, site_weights)[0],
            })  # fmt: skip
        return offers

    def eligible_share(self, offers: Sequence[Mapping[str, Any]]) -> float:
        """The share of ``offers`` that at least one class fits (``offer_fits``)."""
        if not offers:
            return 0.0
        prepared = [_FitClass.of(c) for c in self.classes]
        return sum(any(p.fits(o) for p in prepared) for o in offers) / len(offers)

    def eligible_counts(self, offers: Sequence[Mapping[str, Any]]) -> list[int]:
        """How many classes fit each offer: the candidates the matcher has to rank for it."""
        prepared = [_FitClass.of(c) for c in self.classes]
        return [sum(p.fits(o) for p in prepared) for o in offers]

    def describe(self) -> str:
        return "\n".join(_describe_lines(self))


def offer_fits(cls: QueueClass, offer: Mapping[str, Any]) -> bool:
    """Whether the jobs of ``cls`` may run in the slot ``offer`` describes (cloudpilot's rule, written out here)."""
    return _FitClass.of(cls).fits(offer)


@dataclass(frozen=True, slots=True)
class _FitClass:
    """A class with set-valued fields, to test many offers against it quickly."""

    cores: int
    memory_mb: int | None
    wall_seconds: int
    tags: frozenset[str]
    allow: frozenset[str]
    deny: frozenset[str]

    @classmethod
    def of(cls, c: QueueClass) -> _FitClass:
        return cls(c.cores, c.memory_mb, c.wall_seconds, frozenset(c.tags), frozenset(c.sites_allow),
                   frozenset(c.sites_deny))  # fmt: skip

    def fits(self, offer: Mapping[str, Any]) -> bool:
        if self.cores > offer.get("cores", 1):
            return False
        memory, seconds, site = offer.get("memory_mb"), offer.get("seconds_left"), offer.get("site")
        if self.memory_mb is not None and memory is not None and self.memory_mb > memory:
            return False
        if seconds is not None and self.wall_seconds > seconds:
            return False
        if not self.tags.issubset(offer.get("tags", ())):
            return False
        if site is not None and site in self.deny:
            return False
        return not self.allow or site in self.allow


def cloudpilot_priority(dirac_priority: float) -> int:
    """DIRAC priorities span five decades; a log scale keeps their order inside cloudpilot's 0..1000."""
    return min(1000, max(0, round(100 * math.log10(1 + max(dirac_priority, 0.0)))))


# --------------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _RawQueue:
    tq_id: int
    cpu_seconds: int
    group: str
    priority: float
    n_jobs: int


@dataclass(frozen=True)
class _Snapshot:
    """The tables the model is built from, whether read from the CSVs or embedded."""

    queues: list[_RawQueue]
    platforms: list[Row]
    sites: list[Row]
    banned: list[Row]
    any_site: tuple[int, int]  # (queues, jobs) open to every site
    ram: list[tuple[int, int, int, int]]  # (MinRAM, MaxRAM, queues, jobs)
    source: str


@dataclass
class _Draft:
    """A queue while its synthesized requirements are handed out."""

    raw: _RawQueue
    tags: tuple[str, ...] = ()
    allow: set[str] = field(default_factory=set)
    deny: set[str] = field(default_factory=set)
    any_site: bool = False
    memory_mb: int | None = None

    def key(self, allow: set[str] | None = None) -> tuple[object, ...]:
        allow = self.allow if allow is None else allow
        return (self.raw.group, cloudpilot_priority(self.raw.priority), self.raw.cpu_seconds, self.memory_mb,
                self.tags, tuple(sorted(allow)), tuple(sorted(self.deny)))  # fmt: skip


def load_model(data_dir: Path | None = None) -> WorkloadModel:
    """The model from the snapshot's CSVs in ``data_dir`` (default ``DEFAULT_DATA_DIR``), or the embedded one if the
    directory does not exist."""
    data_dir = DEFAULT_DATA_DIR if data_dir is None else Path(data_dir)
    snapshot = _read_snapshot(data_dir) if data_dir.is_dir() else _embedded_snapshot()
    return _build(snapshot)


def _read_table(data_dir: Path, name: str) -> list[dict[str, str]]:
    # The files carry the snapshot date: <name>_2026-03-28.csv
    matches = sorted(data_dir.glob(f"{name}_*.csv"))
    if not matches:
        raise FileNotFoundError(f"no {name}_*.csv in {data_dir}")
    with matches[-1].open(newline="") as f:
        return list(csv.DictReader(f))


def _rows(table: list[dict[str, str]], key: str) -> list[Row]:
    return [(r[key], int(r["n_tqs"]), int(r["total_jobs"])) for r in table]


def _read_snapshot(data_dir: Path) -> _Snapshot:
    queues = [
        _RawQueue(int(r["TQId"]), int(r["CPUTime"]), r["OwnerGroup"], float(r["Priority"]), int(r["n_jobs"]))
        for r in _read_table(data_dir, "jobs_per_tq")
        if r.get("Enabled", "1") == "1" and int(r["n_jobs"]) > 0
    ]
    any_site = _read_table(data_dir, "site_any")
    ram = [
        (int(float(r["MinRAM"] or 0)), int(float(r["MaxRAM"] or 0)), int(r["n_tqs"]), int(r["total_jobs"]))
        for r in _read_table(data_dir, "ram_distribution")
    ]
    return _Snapshot(
        queues=queues,
        platforms=_rows(_read_table(data_dir, "platform_distribution"), "platform"),
        sites=_rows(_read_table(data_dir, "site_distribution"), "site"),
        banned=_rows(_read_table(data_dir, "banned_sites"), "banned_site"),
        any_site=(int(any_site[0]["tqs_any_site"]), int(any_site[0]["jobs_any_site"])) if any_site else (0, 0),
        ram=ram,
        source=f"real CSVs in {data_dir}",
    )


def _embedded_snapshot() -> _Snapshot:
    rng = random.Random(_BUILD_SEED)
    n_queues = sum(n for _, n, _ in _EMBEDDED_CPUTIME)
    sizes = _sizes_from_histogram(n_queues, sum(j for _, _, j in _EMBEDDED_CPUTIME))
    ids = list(range(n_queues))
    # Queue sizes are real in shape only, so CPU segments and owner groups are handed out to meet their marginals.
    segment = _partition(ids, sizes, [(str(s), n, j) for s, n, j in _EMBEDDED_CPUTIME], rng)
    group = _partition(ids, sizes, list(_EMBEDDED_GROUPS), rng)
    priority = _embedded_priorities(group, rng)
    queues = [_RawQueue(1 + i, int(segment[i]), group[i], priority[i], sizes[i]) for i in ids]
    mc_sites = [(s, *_EMBEDDED_MC_SITE_FIGURES) for s in _EMBEDDED_MC_SITES]
    return _Snapshot(
        queues=queues,
        platforms=list(_EMBEDDED_PLATFORMS),
        sites=list(_EMBEDDED_SITES) + mc_sites,
        banned=list(_EMBEDDED_BANNED),
        any_site=_EMBEDDED_ANY_SITE,
        ram=[],
        source=f"embedded model derived from the {SNAPSHOT} LHCb snapshot (devlink42/poc-dirac-job-matchmaking)",
    )


def _sizes_from_histogram(n_queues: int, total_jobs: int) -> list[int]:
    """Queue sizes following the size histogram, scaled to ``n_queues`` queues and about ``total_jobs`` jobs."""
    counts = _apportion(n_queues, [n for _, _, n, _ in _EMBEDDED_SIZES])
    sizes: list[float] = []
    for (lo, hi, n, jobs), count in zip(_EMBEDDED_SIZES, counts, strict=True):
        # lo + (hi - lo) * u**a has mean lo + (hi - lo) / (a + 1): choose a to match the bucket's mean size.
        mean = jobs / n
        a = (hi - lo) / (mean - lo) - 1 if mean > lo else 1.0
        sizes += [lo + (hi - lo) * ((k + 0.5) / count) ** a for k in range(count)]
    scale = total_jobs / sum(sizes)
    largest = _EMBEDDED_SIZES[-1][1]
    return [max(1, min(largest, round(s * scale))) for s in sizes]


def _embedded_priorities(group: list[str], rng: random.Random) -> list[float]:
    priority = [0.0] * len(group)
    for name, levels in _EMBEDDED_PRIORITIES.items():
        members = [i for i, g in enumerate(group) if g == name]
        rng.shuffle(members)
        values = [p for p, n in levels for _ in range(n)]
        for k, i in enumerate(members):
            priority[i] = values[k % len(values)]
    return priority


# --------------------------------------------------------------------------------------------------------------------
# Building the classes
# --------------------------------------------------------------------------------------------------------------------


def _build(snapshot: _Snapshot) -> WorkloadModel:
    rng = random.Random(_BUILD_SEED)
    drafts = [_Draft(q) for q in snapshot.queues]
    sizes = [q.n_jobs for q in snapshot.queues]
    job_platforms = _job_platforms(snapshot.platforms)
    _assign_platforms(drafts, sizes, job_platforms, rng)
    _assign_sites(drafts, sizes, snapshot.sites, snapshot.any_site, rng)
    _assign_bans(drafts, sizes, snapshot.banned, rng)
    _assign_memory(drafts, sizes, snapshot.ram, rng)
    _make_distinct(drafts, [s for s, _, _ in sorted(snapshot.sites, key=lambda r: (-r[1], r[0]))])
    classes = tuple(_freeze(d) for d in drafts)
    return WorkloadModel(
        classes=classes,
        hosts=_host_types(snapshot.platforms, job_platforms),
        sites=tuple((s, jobs) for s, _, jobs in snapshot.sites if jobs > 0),
        source=snapshot.source,
    )


def _freeze(d: _Draft) -> QueueClass:
    return QueueClass(
        tq_id=d.raw.tq_id,
        owner=d.raw.group,
        priority=cloudpilot_priority(d.raw.priority),
        dirac_priority=d.raw.priority,
        n_jobs=d.raw.n_jobs,
        wall_seconds=max(MIN_WALL_SECONDS, d.raw.cpu_seconds),
        tags=d.tags,
        sites_allow=tuple(sorted(d.allow)),
        sites_deny=tuple(sorted(d.deny)),
        memory_mb=d.memory_mb,
    )


@dataclass(frozen=True, slots=True)
class _Platform:
    isa: str
    level: int
    os: str

    @property
    def name(self) -> str:
        return f"{_ARCH_NAMES[(self.isa, self.level)]}-{self.os}"

    def runs(self, job: _Platform) -> bool:
        """Whether a host of this platform runs a job built for ``job`` ("any": containers run every OS)."""
        return self.isa == job.isa and job.level <= self.level and self.os in (job.os, ANY_OS)


def _parse_platform(name: str) -> _Platform | None:
    arch, _, os_name = name.partition("-")
    if arch not in _ARCH_LEVELS or not os_name:
        return None
    isa, level = _ARCH_LEVELS[arch]
    return _Platform(isa, level, os_name)


def _platform_marginals(rows: Sequence[Row]) -> dict[_Platform, tuple[int, int]]:
    """(queues, jobs) accepting each host platform; the names of one level and OS collapse into one platform.

    Rows without jobs (legacy names such as x86_64-centos7.avx2, from queues empty at the snapshot) are dropped.
    """
    marginals: dict[_Platform, tuple[int, int]] = {}
    for name, n, jobs in rows:
        platform = _parse_platform(name)
        if platform is not None and jobs > 0:
            marginals[platform] = max(marginals.get(platform, (0, 0)), (n, jobs))
    return marginals


def _job_platforms(rows: Sequence[Row]) -> list[tuple[_Platform, int, int]]:
    """The platforms jobs are built for, with their (queues, jobs), recovered from the accepted-platform marginals.

    The snapshot lists, per host platform, how many queues accept it. A job built for level L of an OS runs on hosts
    of that OS at level >= L, and on container hosts ("any") at level >= L (``_Platform.runs``). So for each
    (instruction set, OS) the accepted counts grow with the level, and the growth at level L is the queues built for
    L. On the 2026-03-28 snapshot this reproduces every marginal exactly, "any" rows included.
    """
    by_os: dict[tuple[str, str], list[tuple[int, int, int]]] = {}
    for p, (n, jobs) in _platform_marginals(rows).items():
        if p.os != ANY_OS:
            by_os.setdefault((p.isa, p.os), []).append((p.level, n, jobs))
    found = []
    for (isa, os_name), levels in sorted(by_os.items()):
        prev_n = prev_jobs = 0
        for level, n, jobs in sorted(levels):
            if n > prev_n and jobs > prev_jobs:
                found.append((_Platform(isa, level, os_name), n - prev_n, jobs - prev_jobs))
            prev_n, prev_jobs = max(prev_n, n), max(prev_jobs, jobs)
    return found


def _host_types(rows: Sequence[Row], job_platforms: Sequence[tuple[_Platform, int, int]]) -> tuple[HostType, ...]:
    hosts = []
    for p, (_, jobs) in sorted(_platform_marginals(rows).items(), key=lambda kv: kv[0].name):
        serves = tuple(sorted(j.name for j, _, _ in job_platforms if p.runs(j)))
        if serves:
            hosts.append(HostType(p.name, serves, jobs))
    return tuple(hosts)


def _assign_platforms(drafts: list[_Draft], sizes: Sequence[int], job_platforms: Sequence[tuple[_Platform, int, int]],
                      rng: random.Random) -> None:  # fmt: skip
    """Give each queue one job platform; the queues left over (here one) accept every platform (no tag)."""
    rows = [(p.name, n, jobs) for p, n, jobs in job_platforms]
    rest_n, rest_jobs = len(drafts) - sum(n for _, n, _ in rows), sum(sizes) - sum(j for _, _, j in rows)
    rows.append(("", max(rest_n, 0), max(rest_jobs, 0)))
    chosen = _partition(list(range(len(drafts))), sizes, rows, rng)
    for i, tag in enumerate(chosen):
        drafts[i].tags = (tag,) if tag else ()


def _assign_sites(drafts: list[_Draft], sizes: Sequence[int], sites: Sequence[Row], any_site: tuple[int, int],
                  rng: random.Random) -> None:  # fmt: skip
    """Give each queue its allowed sites so that every site's (queues, jobs) figures are met closely.

    Owner groups are where the site lists come from in DIRAC (MC runs everywhere, data processing where the data is),
    so a site takes whole groups, largest first, as long as they fit its queue count (sites with 269 queues take
    exactly the 269 MC queues), and the rest of its count from the next groups, preferring queues with few sites
    yet so that every queue gets some. A site smaller than the largest group takes part of that group.
    """
    n = len(drafts)
    tiebreak = [rng.random() for _ in range(n)]
    open_ids = set(_pick(sorted(range(n), key=tiebreak.__getitem__), sizes, *any_site)) if any_site[0] else set()
    for i in open_ids:
        drafts[i].any_site = True
    group_jobs = Counter()
    for d in drafts:
        group_jobs[d.raw.group] += d.raw.n_jobs
    groups = sorted(group_jobs, key=lambda g: (-group_jobs[g], g))
    members = [[i for i in range(n) if drafts[i].raw.group == g and i not in open_ids] for g in groups]
    coverage = [0] * n
    for site, k, jobs in sorted(sites, key=lambda r: (-r[1], -r[2], r[0])):
        full: list[int] = []
        rank = 0
        while rank < len(members) and len(full) + len(members[rank]) <= k:
            full += members[rank]
            rank += 1
        pool = [i for g in members[rank:] for i in g] if full else (members[0] if members else [])
        ordered = sorted(pool, key=lambda i: (coverage[i], tiebreak[i]))
        for i in full + _pick(ordered, sizes, k - len(full), jobs - sum(sizes[i] for i in full)):
            drafts[i].allow.add(site)
            coverage[i] += 1
    # A queue no site took (rare) goes to the busiest site rather than becoming open to all.
    busiest = min(sites, key=lambda r: (-r[1], r[0]))[0] if sites else None
    for i in range(n):
        if busiest and not drafts[i].any_site and not drafts[i].allow:
            drafts[i].allow.add(busiest)


def _assign_bans(drafts: list[_Draft], sizes: Sequence[int], banned: Sequence[Row], rng: random.Random) -> None:
    """Bans go first to queues open to every site or banning already: a ban matters most on an open site list."""
    tiebreak = [rng.random() for _ in drafts]
    for site, k, jobs in banned:
        ordered = sorted(range(len(drafts)),
                         key=lambda i: (not (drafts[i].any_site or drafts[i].deny), tiebreak[i]))  # fmt: skip
        for i in _pick(ordered, sizes, k, jobs):
            drafts[i].deny.add(site)
            drafts[i].allow.discard(site)


def _assign_memory(drafts: list[_Draft], sizes: Sequence[int], ram: Sequence[tuple[int, int, int, int]],
                   rng: random.Random) -> None:  # fmt: skip
    """MinRAM (MB) as the memory requirement; the queues no row names (all of them in 2026-03-28) need none."""
    tiebreak = [rng.random() for _ in drafts]
    for min_ram, max_ram, k, jobs in ram:
        need = min_ram or max_ram
        free = sorted((i for i, d in enumerate(drafts) if d.memory_mb is None), key=tiebreak.__getitem__)
        for i in _pick(free, sizes, k, jobs):
            drafts[i].memory_mb = need or None


def _make_distinct(drafts: list[_Draft], site_order: Sequence[str]) -> None:
    """Keep one class per real queue: DIRAC tells queues apart by fields cloudpilot lacks (job type, ...), so two
    queues whose cloudpilot requirements coincide would merge into one task queue.

    Such a queue's allow list moves one step (``_site_variants``): broad lists (the MC queues) drop a site, narrow
    ones (the data queues) gain one of their owner group's sites, so the sites' figures move little and both ways.
    Sites are taken in turn from the whole list so that no site gains or loses many queues.
    """
    group_sites: dict[str, set[str]] = {}
    for d in drafts:
        group_sites.setdefault(d.raw.group, set()).update(d.allow)
    seen: set[tuple[object, ...]] = set()
    turn = 0
    for d in drafts:
        key = d.key()
        if key in seen and d.allow:
            variants = _site_variants(d.allow, group_sites[d.raw.group], site_order, turn)
            for step, allow in enumerate(variants):
                if (candidate := d.key(allow)) not in seen:
                    d.allow, key, turn = allow, candidate, turn + step + 1
                    break
        seen.add(key)


def _site_variants(allow: set[str], group_sites: set[str], site_order: Sequence[str], turn: int) -> Iterator[set[str]]:
    """Allow lists one step from ``allow``: one site fewer (broad lists) or one more of the group's sites (narrow
    ones), then, as a last resort, one site swapped for another of the group."""
    rotation = [site_order[(turn + k) % len(site_order)] for k in range(len(site_order))]
    drop = [allow - {s} for s in rotation if s in allow]
    add = [allow | {s} for s in rotation if s in group_sites and s not in allow]
    yield from (drop + add) if 2 * len(allow) > len(group_sites) else (add + drop[: len(drop) if len(allow) > 1 else 0])
    for new in rotation:
        if new in group_sites and new not in allow:
            yield from (allow - {old} | {new} for old in sorted(allow))


# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------


def _pick(ordered: Sequence[int], sizes: Sequence[int], k: int, target: int) -> list[int]:
    """``k`` items of ``ordered`` whose sizes sum close to ``target``: the first ``k``, improved by one-for-one swaps.

    Starting from the caller's order keeps its preferences; each swap is the one that closes most of the gap.
    """
    k = max(0, min(k, len(ordered)))
    chosen, rest = list(ordered[:k]), list(ordered[k:])
    gap = target - sum(sizes[i] for i in chosen)
    for _ in range(4 * k):  # every swap shrinks |gap|; the bound only guards the loop
        if gap == 0 or not rest:
            break
        rest.sort(key=sizes.__getitem__)
        rest_sizes = [sizes[i] for i in rest]
        best_left, best_a, best_b = abs(gap), -1, -1
        for a, item in enumerate(chosen):
            want = sizes[item] + gap  # the size that, swapped in for ``item``, closes the gap
            j = bisect_left(rest_sizes, want)
            for b in (j - 1, j):
                if 0 <= b < len(rest) and abs(want - rest_sizes[b]) < best_left:
                    best_left, best_a, best_b = abs(want - rest_sizes[b]), a, b
        if best_a < 0:
            break
        gap -= rest_sizes[best_b] - sizes[chosen[best_a]]
        chosen[best_a], rest[best_b] = rest[best_b], chosen[best_a]
    return chosen


def _partition(ids: Sequence[int], sizes: Sequence[int], rows: Sequence[Row], rng: random.Random) -> list[str]:
    """Give every id one value of ``rows`` so that each value gets about its (count, jobs). Returns the value per
    position of ``sizes`` ("" for positions not in ``ids``).

    Small rows are served first, from the fullest choice, so they are met exactly; the row with the most ids takes
    what is left, where a few jobs more or less matter least.
    """
    value = [""] * len(sizes)
    free = list(ids)
    rng.shuffle(free)
    order = sorted(range(len(rows)), key=lambda r: (rows[r][1], rows[r][2], r))
    for position, r in enumerate(order):
        name, n, jobs = rows[r]
        taken = free if position == len(order) - 1 else _pick(free, sizes, n, jobs)
        for i in taken:
            value[i] = name
        taken_set = set(taken)
        free = [i for i in free if i not in taken_set]
    return value


def _apportion(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` in proportion to ``weights`` by largest remainder (exact integers, ties to the first)."""
    weight_sum = sum(weights)
    if total <= 0 or weight_sum <= 0:
        return [0] * len(weights)
    quotas = [divmod(total * w, weight_sum) for w in weights]
    counts = [q for q, _ in quotas]
    by_remainder = sorted(range(len(weights)), key=lambda i: -quotas[i][1])
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _weighted(rng: random.Random, choices: Sequence[tuple[int, float]]) -> int:
    return rng.choices([v for v, _ in choices], [w for _, w in choices])[0]


def _share_text(counter: Mapping[str, int], total: int, top: int = 4) -> str:
    parts = [f"{name or '(any)'} {100 * n / total:.1f}%" for name, n in Counter(counter).most_common(top)]
    return ", ".join(parts)


def _describe_lines(model: WorkloadModel) -> list[str]:
    classes, total = model.classes, model.total_jobs
    jobs_by = {"owner": Counter(), "platform": Counter(), "segment": Counter()}
    for c in classes:
        jobs_by["owner"][c.owner] += c.n_jobs
        jobs_by["platform"][c.tags[0] if c.tags else ""] += c.n_jobs
        jobs_by["segment"][str(c.wall_seconds)] += c.n_jobs
    allowed = {s for c in classes for s in c.sites_allow}
    banned_only = {s for c in classes for s in c.sites_deny} - allowed
    allow_sizes = [len(c.sites_allow) for c in classes if c.sites_allow]
    biggest = max(classes, key=lambda c: c.n_jobs)
    return [
        f"LHCb task-queue workload model ({model.source})",
        f"  classes: {len(classes)} task queues ({len({c.key() for c in classes})} distinct requirement sets), "
        f"{total:,} waiting jobs, largest class {biggest.n_jobs:,} jobs ({100 * model.largest_share:.2f}%)",
        f"  owners ({VO}): {len(model.owners)}: {_share_text(jobs_by['owner'], total)}",
        f"  CPU segments: {len(jobs_by['segment'])}: {_share_text(jobs_by['segment'], total)} (seconds)",
        f"  job platforms: {len(model.platforms)} + {sum(1 for c in classes if not c.tags)} open queue(s): "
        f"{_share_text(jobs_by['platform'], total)}",
        f"  sites: {len(allowed)} (+{len(banned_only)} only banned); "
        f"allow lists of median {statistics.median(allow_sizes):.0f} sites; "
        f"{sum(1 for c in classes if not c.sites_allow)} queue(s) open to every site, "
        f"{sum(1 for c in classes if c.sites_deny)} with bans",
        f"  memory requirement: {sum(1 for c in classes if c.memory_mb)} queue(s); host types for pilots: "
        f"{len(model.hosts)}",
    ]


def main(argv: Sequence[str] = ()) -> None:
    model = load_model(Path(argv[0]) if argv else None)
    print(model.describe())
    offers = model.sample_offers(1000, seed=0)
    counts = model.eligible_counts(offers)
    print(
        f"  1000 sampled offers: {100 * model.eligible_share(offers):.1f}% have an eligible class; "
        f"eligible classes per offer: mean {statistics.mean(counts):.0f}, median {statistics.median(counts):.0f}, "
        f"min {min(counts)}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
