"""What many requirement classes cost the provisioner: one user's submission can make a class per job.

    python benchmarks/waiting_classes.py [--classes 20000] [--backends sqlite postgresql]

For each database, a real server (its provisioning loop idle, so nothing runs beside the measure) gets, through
the REST API, first a backlog shaped like a production one (500 classes of 200 jobs: the LHCb task queue of
2026-03-28 had 501 queues), then one parametric submission of ``--classes`` jobs each with a tag of its own. It
times the provisioner's snapshot (reading every waiting class from the database) and a whole cycle (snapshot,
plan, explanations) after each, 5 times, and prints the medians. No target: this shows how the cost grows with
the number of classes, which ``jobs.max_waiting_classes_per_user`` bounds per user (1,000 by default; raised here
to measure past it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.server import RunningServer, start_server

from benchmarks.matcher import drop_database, make_database, pg_reachable
from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import Role


def median_ms(run: Callable[[], object], times: int = 5) -> float:
    took = []
    for _ in range(times):
        started = time.perf_counter()
        run()
        took.append(time.perf_counter() - started)
    return statistics.median(took) * 1000


def measure(server: RunningServer, label: str, backend: str) -> None:
    services = server.services
    snapshot_ms = median_ms(lambda: services.provisioner.snapshot(services.clock.now()))
    cycle_ms = median_ms(lambda: services.provision(services.clock.now()))
    assert not services.vms.list(), "a timed cycle started VMs: the figure would include their starts"
    print(f"  {label}: snapshot p50 {snapshot_ms:.0f} ms, whole cycle p50 {cycle_ms:.0f} ms")
    print(f"FIGURE classes_{backend}_{label}_snapshot_ms={snapshot_ms:.1f} ms")
    print(f"FIGURE classes_{backend}_{label}_cycle_ms={cycle_ms:.1f} ms")


def run(backend: str, classes: int) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="cp-classes-"))
    url, pg_name = make_database(backend, data_dir)
    flavors = {"small": {"cores": 8, "memory_mb": 16384}}
    config = {
        # Room for 400 cores, so every class of the backlog is counted whole (up to 835 jobs), but no job fits
        # (they ask for tags the cloud does not offer): the cycles start no VM.
        "clouds": {"local": {"driver": "local", "flavors": flavors, "max_vms": 50}},
        "provisioner": {"interval_seconds": 3600},  # cycles run here, timed, not in the server's loop
        "jobs": {"max_waiting_classes_per_user": 1_000_000},
        **({"database_url": url} if url else {}),
    }
    server = start_server(ServerConfig.model_validate(config), data_dir)
    try:
        print(f"{backend}:")
        user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
        backlog = [
            {"executable": "/bin/true", "requirements": {"tags": [f"q{i % 500}"], "wall_seconds": 3600}}
            for i in range(500 * 200)
        ]
        for start in range(0, len(backlog), 50_000):
            assert user.post("/api/v1/jobs", json=backlog[start : start + 50_000], timeout=600).status_code == 201
        measure(server, "500x200", backend)
        one_each = {"job": {"executable": "/bin/true", "requirements": {"tags": ["t{n}"]}}, "parameter_count": classes}
        assert user.post("/api/v1/jobs", json=one_each, timeout=600).status_code == 201
        measure(server, f"plus_{classes}x1", backend)
    finally:
        server.stop()
        drop_database(pg_name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=20_000)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    args = parser.parse_args()
    for backend in args.backends:
        if backend == "postgresql" and not pg_reachable():
            print("PostgreSQL is not reachable on 127.0.0.1:5432: skipping it")
            continue
        run(backend, args.classes)


if __name__ == "__main__":
    main()
