"""``/api/v1/health`` while a 100,000-job parametric submission is being taken in.

    python benchmarks/health_under_submission.py [--jobs 100000] [--interval 0.02]

Starts a real ``cloudpilot server`` process on a fresh data directory (SQLite), submits one parametric job of
``--jobs`` jobs from one thread and, from another connection, asks ``/health`` every ``--interval`` seconds
until the submission is answered. Parsing, expansion and the bulk insert run off the event loop, so health
keeps answering. Target: p99 ≤ 100 ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.server_process import ServerProcesses, store_token

from cloudpilot.domain.auth import Role


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--interval", type=float, default=0.02)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        token = store_token(data_dir, Role.USER, "alice", vo="lhcb")
        servers = ServerProcesses(Path(tmp) / "logs")
        try:
            server = servers.start(data_dir, "--log-level", "warning")
            job = {"executable": "/bin/echo", "arguments": ["{n}"], "name": "p-{n}"}
            result: dict[str, object] = {}

            def submit() -> None:
                started = time.perf_counter()
                with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as c:
                    r = c.post("/api/v1/jobs", json={"job": job, "parameter_count": args.jobs}, timeout=600)
                result["status"], result["seconds"] = r.status_code, time.perf_counter() - started

            latencies: list[float] = []
            worker = threading.Thread(target=submit)
            with httpx.Client(base_url=server.url) as probe:
                probe.get("/api/v1/health")  # the connection is open before the submission starts
                worker.start()
                while worker.is_alive():
                    started = time.perf_counter()
                    probe.get("/api/v1/health", timeout=60).raise_for_status()
                    latencies.append(time.perf_counter() - started)
                    time.sleep(args.interval)
            worker.join()
        finally:
            servers.stop_all()
    assert result["status"] == 201, result
    tag = f"{args.jobs // 1000}k"
    print(f"submission of {args.jobs} jobs: {result['seconds']:.1f} s; {len(latencies)} health probes meanwhile")
    print(f"FIGURE health_p50_ms_during_{tag}_submission={statistics.median(latencies) * 1e3:.1f} ms")
    print(f"FIGURE health_p99_ms_during_{tag}_submission={percentile(latencies, 0.99) * 1e3:.1f} ms")
    print(f"FIGURE health_max_ms_during_{tag}_submission={max(latencies) * 1e3:.1f} ms")
    print(f"FIGURE submission_{tag}_seconds={result['seconds']:.1f} s")


if __name__ == "__main__":
    main()
