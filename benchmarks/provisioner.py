"""Provisioner benchmark: the time of one ``decide`` cycle at scale.

    python benchmarks/provisioner.py [--vms 10000] [--jobs 100000] [--classes 100] [--clouds 20] [--repeat 20]
                                     [--site-control]

Builds a snapshot with that many VMs spread over the clouds (every state, several VOs), waiting jobs in
requirement classes whose sizes follow the LHCb task queue's shape (``lhcb_workload``: class sizes scaled from
the real queue, cores/wall times from it), and clouds with two to four flavors, quotas, prices and rates; then
times ``cloudpilot.policy.provisioning.decide`` and prints p50/max. Target on a 2-core machine: ≤ 100 ms.
``--site-control`` also puts the clouds on five sites with pledges, makes every fourth cloud a vacuum cloud
with recent VM ends, and shrinks the capacity of every fifth below its VMs (drains, reclaim, back-off).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.lhcb_workload import load_model
from cloudpilot.domain.provisioning import (
    CloudMode,
    CloudView,
    DrainVM,
    ProvisioningKnobs,
    ProvisioningSnapshot,
    StartVMs,
    StopVM,
    VMEnd,
    VMView,
    WorkClass,
)
from cloudpilot.domain.vms import Flavor, VMState
from cloudpilot.policy.explain import explain
from cloudpilot.policy.provisioning import decide, plan

VOS = ["lhcb", "atlas", "cms", "alice"]
FLAVORS = [Flavor("m1.small", 1, 2048), Flavor("m1.medium", 2, 4096), Flavor("m1.large", 4, 8192),
           Flavor("m1.xlarge", 8, 16384)]  # fmt: skip
STATES = [VMState.RUNNING] * 6 + [VMState.BOOTING, VMState.REQUESTED, VMState.DRAINING, VMState.HALTED]


def work_classes(n_jobs: int, n_classes: int, rng: random.Random) -> list[WorkClass]:
    """The ``n_classes`` largest LHCb classes, scaled to ``n_jobs``, dealt over the VOs."""
    model = load_model()
    top = sorted(model.classes, key=lambda c: -c.n_jobs)[:n_classes]
    total = sum(c.n_jobs for c in top)
    return [
        WorkClass(
            vo=VOS[i % len(VOS)],
            cores=rng.choice([1, 1, 1, 2, 4, 8]),
            memory_mb=None,
            wall_seconds=max(600, min(c.wall_seconds, 172_800)),
            tags=frozenset(),
            sites_allow=frozenset(),
            sites_deny=frozenset(),
            waiting=max(1, round(n_jobs * c.n_jobs / total)),
        )
        for i, c in enumerate(top)
    ]


def clouds(n_clouds: int, n_vms: int, rng: random.Random) -> list[CloudView]:
    result = []
    for k in range(n_clouds):
        flavors = tuple(rng.sample(FLAVORS, rng.randint(2, 4)))
        vms = []
        for i in range(n_vms // n_clouds):
            f = rng.choice(flavors)
            state = rng.choice(STATES)
            busy = state is VMState.RUNNING and rng.random() < 0.9
            vms.append(VMView(f"vm-{k}-{i}", rng.choice(VOS), f.name, state, f.cores, f.memory_mb,
                              0 if busy else f.cores, None if busy else time.time() - rng.uniform(0, 600)))  # fmt: skip
        result.append(
            CloudView(
                name=f"cloud{k:02d}",
                flavors=flavors,
                vos=None if k % 3 else frozenset(rng.sample(VOS, 2)),
                max_vms=n_vms // n_clouds + rng.randint(0, 200),
                max_cores=None if k % 2 else 8 * (n_vms // n_clouds + 200),
                start_rate_per_minute=rng.choice([1, 10, 60]),
                price_per_core_hour=rng.uniform(0.005, 0.05),
                priority=rng.randint(0, 3),
                vms=tuple(vms),
            )
        )
    return result


def with_site_control(clouds: list[CloudView], now: float, rng: random.Random) -> list[CloudView]:
    result = []
    for k, c in enumerate(clouds):
        ends = tuple(
            VMEnd(
                rng.choice(VOS), now - 3000, now - rng.uniform(0, 2000), rng.choice([None, 200, 300]), rng.randint(0, 1)
            )
            for _ in range(50)
        )
        result.append(
            dataclasses.replace(
                c,
                site=f"site{k % 5}",
                mode=CloudMode.VACUUM if k % 4 == 0 else CloudMode.DEMAND,
                recent_ends=ends,
                max_vms=len(c.vms) // 2 if k % 5 == 1 else c.max_vms,
            )
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--clouds", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--site-control", action="store_true", help="sites with pledges, vacuum clouds, shrinks")
    args = parser.parse_args()
    rng = random.Random(7)
    now = time.time()
    work = tuple(work_classes(args.jobs, args.classes, rng))
    cloud_views = clouds(args.clouds, args.vms, rng)
    pledges: dict[str, dict[str, int]] = {}
    if args.site_control:
        cloud_views = with_site_control(cloud_views, now, rng)
        pledges = {f"site{s}": {"lhcb": 5000, "atlas": 300, "cms": 200} for s in range(5)}
    snap = ProvisioningSnapshot(
        work=work,
        clouds=tuple(cloud_views),
        vo_shares={"lhcb": 3, "atlas": 3, "cms": 2, "alice": 1},
        pledges=pledges,
    )
    knobs = ProvisioningKnobs()
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        actions = decide(snap, knobs, now)
        times.append(time.perf_counter() - t0)
    started = sum(a.count for a in actions if isinstance(a, StartVMs))
    drained = sum(1 for a in actions if isinstance(a, DrainVM))
    stopped = sum(1 for a in actions if isinstance(a, StopVM))
    n_starts = sum(1 for a in actions if isinstance(a, StartVMs))
    print(f"decide(): {args.vms:,} VMs, {sum(w.waiting for w in snap.work):,} waiting jobs in {len(snap.work)} classes,"
          f" {args.clouds} clouds")  # fmt: skip
    print(f"  p50 {statistics.median(times) * 1e3:.1f} ms, max {max(times) * 1e3:.1f} ms over {args.repeat} cycles"
          f" (target <= 100 ms)")  # fmt: skip
    print(f"  decision: start {started:,} VMs in {n_starts} start actions, stop {stopped} idle VMs, drain {drained}")
    print(f"FIGURE decide_p50_ms={statistics.median(times) * 1e3:.1f} ms")
    print(f"FIGURE decide_max_ms={max(times) * 1e3:.1f} ms")
    # What each cycle adds to explain why work waits, from the plan it already made (services/provisioner.py).
    explain_times = []
    for _ in range(args.repeat):
        made = plan(snap, knobs, now)
        t0 = time.perf_counter()
        explain(snap, knobs, now, made.outcomes)
        explain_times.append(time.perf_counter() - t0)
    print(f"FIGURE explain_p50_ms={statistics.median(explain_times) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
