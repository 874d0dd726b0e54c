"""Simulator benchmark: wall time, events per second and peak memory at scale.

    python benchmarks/simulator.py            # 10^6 jobs over 10^4 VMs (target: under 60 s on 2 cores)
    python benchmarks/simulator.py --full     # and 10^7 jobs over 10^5 VMs (target: under 15 min, 4 GB)
    python benchmarks/simulator.py --quick    # 10^5 jobs over 10^3 VMs, then 10^6 over 10^4: about a minute

Each case runs in a process of its own (so its peak RSS is its own) with cloudpilot's policy. The workload is a
backlog of one-core jobs of four owners (lognormal run time, median 10 min), on ten clouds of 8-core VMs that
start at a tenth of their quota per minute; the provisioning cycle runs every 60 s (a scenario knob: at 10^5 VMs
one decision of the real policy takes ~0.4 s, so a 10 s cycle would be mostly policy time). Prints a line per case
and ``FIGURE name=value unit`` lines for benchmarks/run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloudpilot.sim import Scenario, simulate

CLOUDS = 10
CORES_PER_VM = 8


def scale_scenario(jobs: int, vms: int) -> Scenario:
    per_cloud = vms // CLOUDS
    clouds = {
        f"cloud-{i:02d}": {
            "flavors": {"m8": {"cores": CORES_PER_VM, "memory_mb": 16384}},
            "max_vms": per_cloud,
            "start_rate_per_minute": max(10, per_cloud // 10),
            "price_per_core_hour": 0.01 * (i % 3),
            "boot_seconds": {"dist": "lognormal", "median": 120, "sigma": 0.3},
        }
        for i in range(CLOUDS)
    }
    owners = 4
    workload = [
        {"name": f"prod-{k}", "vo": "lhcb", "owner": f"owner-{k}", "count": jobs // owners + (k < jobs % owners),
         "wall_seconds": 7200, "duration": {"dist": "lognormal", "median": 600, "sigma": 0.5, "min": 30}}
        for k in range(owners)
    ]  # fmt: skip
    return Scenario.model_validate(
        {"name": f"scale-{jobs}-{vms}", "interval_seconds": 60, "clouds": clouds, "workload": workload}
    )


def run_case(jobs: int, vms: int) -> dict[str, Any]:
    r = simulate(scale_scenario(jobs, vms))
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "jobs": jobs,
        "vms": vms,
        "wall_seconds": r.wall_seconds,
        "events": r.events,
        "events_per_second": r.events_per_second,
        "policy_seconds": r.policy_seconds,
        "snapshot_seconds": r.snapshot_seconds,
        "decisions": r.decisions,
        "peak_rss_mb": rss_kb / 1024,
        "jobs_done": r.jobs_done,
        "peak_vms": r.peak_vms,
        "makespan_hours": r.makespan_seconds / 3600,
    }


def tag(n: int) -> str:
    exp = len(str(n)) - 1
    return f"1e{exp}" if n == 10**exp else str(n)


def report(c: dict[str, Any]) -> None:
    print(
        f"{c['jobs']:>12,} jobs over {c['vms']:>7,} VMs: {c['wall_seconds']:7.1f} s wall, "
        f"{c['events']:,} events ({c['events_per_second']:,.0f}/s), {c['decisions']} decisions "
        f"({c['policy_seconds']:.1f} s in the policy, {c['snapshot_seconds']:.1f} s building snapshots), "
        f"peak RSS {c['peak_rss_mb']:,.0f} MB; {c['jobs_done']:,} jobs done, peak {c['peak_vms']:,} VMs, "
        f"makespan {c['makespan_hours']:.1f} h",
        flush=True,
    )
    key = f"sim_{tag(c['jobs'])}_jobs"
    print(f"FIGURE {key}_seconds={c['wall_seconds']:.1f} s")
    print(f"FIGURE {key}_events_per_second={c['events_per_second']:.0f} events/s")
    print(f"FIGURE {key}_peak_rss_mb={c['peak_rss_mb']:.0f} MB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="10^5 jobs / 10^3 VMs, then 10^6 / 10^4")
    group.add_argument("--full", action="store_true", help="also 10^7 jobs over 10^5 VMs")
    parser.add_argument("--case", nargs=2, type=int, metavar=("JOBS", "VMS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:  # the child process: one case, one JSON line
        print(json.dumps(run_case(*args.case)))
        return
    cases = [(10**6, 10**4)]
    if args.quick:
        cases = [(10**5, 10**3), (10**6, 10**4)]
    elif args.full:
        cases.append((10**7, 10**5))
    for jobs, vms in cases:
        out = subprocess.run(
            [sys.executable, __file__, "--case", str(jobs), str(vms)], check=True, capture_output=True, text=True
        )
        report(json.loads(out.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":
    main()
