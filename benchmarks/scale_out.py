"""Scale-out benchmark: matches/s over HTTP on one PostgreSQL database with 1, 2 and 3 `cloudpilot server`
processes, and the share of the CPU the database takes (docs/deployment.md, "Sizing").

One queue of LHCb-shaped jobs (``cloudpilot.sim.lhcb``) is filled once; then for N = 1, 2, 3 servers the same
pilot clients (separate processes, keep-alive connections, spread evenly over the servers) match as fast as
they can for ``--seconds``. During each step the CPU time of every PostgreSQL process, of the servers and of the
clients is read from /proc, so the figures say how much of the machine went to the database.

    python benchmarks/scale_out.py [--jobs 100000] [--servers 1 2 3] [--seconds 15]

Prints ``FIGURE scale_out_N_servers_rate=...`` lines (and ``_db_cores``, ``_db_cpu_share``, ``_p99_ms``) and the
ratios to one server. Every process runs on this one machine: with few cores the clients, the servers and the
database compete for them, and the ratios say so.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.matcher import _client, drop_database, fill, free_port, make_database, percentile, pg_reachable
from benchmarks.matcher import start_server as start_one
from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import Role
from cloudpilot.services.container import Services
from cloudpilot.sim.lhcb import load_model

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (those gone count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            continue
    return total / TICKS


def per_pid(pids: list[int]) -> dict[int, float]:
    return {pid: cpu_seconds([pid]) for pid in pids}


def postgres_pids() -> list[int]:
    """Every PostgreSQL process of this machine (the benchmark's database is the only busy one)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in ("postgres", "postmaster"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def children(pid: int) -> list[int]:
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    except OSError:
        return []
    return [int(x) for x in out.split()]


def step(ports: list[int], token: str, offers: list[dict], seconds: float, procs: int, threads: int,
         servers: list[int]) -> dict[str, float]:  # fmt: skip
    """The clients matching against the servers in turn; rates, latencies and CPU of each side."""
    ctx = multiprocessing.get_context("spawn")
    ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    clients = [
        ctx.Process(target=_client, args=(ports[k % len(ports)], token, offers, seconds, threads, ready, go, out))
        for k in range(procs)
    ]
    for c in clients:
        c.start()
    for _ in range(procs * threads):  # every client connected and registered before the clock starts
        ready.get(timeout=120)
    client_pids = [c.pid for c in clients if c.pid is not None]
    # Backends the servers open during the step count from 0: read the processes again at its end.
    db0, srv0, cli0 = per_pid(postgres_pids()), cpu_seconds(servers), cpu_seconds(client_pids)
    wall0 = time.perf_counter()
    go.set()
    results, cli = [], 0.0
    for _ in clients:
        cli = max(cli, cpu_seconds(client_pids) - cli0)  # read while they live: a reaped process has no /proc entry
        results.extend(out.get(timeout=seconds + 120))
    elapsed = time.perf_counter() - wall0
    db = sum(t - db0.get(pid, 0.0) for pid, t in per_pid(postgres_pids()).items())
    srv = cpu_seconds(servers) - srv0
    for c in clients:
        c.join()
    ok = [lat for lat, status in results if status in (200, 204)]
    used = db + srv + cli
    return {
        "rate": sum(1 for _, s in results if s == 200) / elapsed,
        "requests": len(ok) / elapsed,
        "p50": percentile(ok, 0.5),
        "p99": percentile(ok, 0.99),
        "errors": len(results) - len(ok),
        "db_cores": db / elapsed,
        "server_cores": srv / elapsed,
        "db_share": db / used if used else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--servers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--client-procs", type=int, default=3)
    parser.add_argument("--client-threads", type=int, default=4)
    args = parser.parse_args()
    if not pg_reachable():
        print("SKIP scale_out: PostgreSQL is not reachable on 127.0.0.1:5432")
        return 0
    data_dir = Path(tempfile.mkdtemp(prefix="cp-bench-scale-"))
    url, pg_name = make_database("postgresql", data_dir)
    config = ServerConfig(database_url=url)
    config_path = data_dir / "config.yaml"
    config_path.write_text(json.dumps({"database_url": url}))
    rows: dict[int, dict[str, float]] = {}
    try:
        services = Services.build(config, data_dir)
        print(f"filling the queue with {args.jobs:,} jobs…", flush=True)
        fill(services, args.jobs, seed=1)
        token = services.tokens.create(Role.PILOT, "bench-scale", time.time(), vo="lhcb").token
        services.close()
        offers = load_model().sample_offers(2000, seed=2)
        for n in args.servers:
            ports = [free_port() for _ in range(n)]
            procs = [start_one(data_dir / f"s{k}", config_path, p) for k, p in enumerate(ports)]
            try:
                pids = [p.pid for p in procs] + [c for p in procs for c in children(p.pid)]
                clients = args.client_procs * args.client_threads
                print(f"{n} server(s), {clients} pilots, {args.seconds:.0f} s…", flush=True)
                rows[n] = step(ports, token, offers, args.seconds, args.client_procs, args.client_threads, pids)
            finally:
                for p in procs:
                    p.terminate()
                for p in procs:
                    p.wait(timeout=30)
    finally:
        drop_database(pg_name)
        subprocess.run(["rm", "-rf", str(data_dir)], check=False)
    header = ("servers", "matches/s", "p50 ms", "p99 ms", "DB cores", "DB share", "ratio")
    print("\n" + " ".join(f"{h:>9}" for h in header))
    base = rows[min(rows)]["rate"]
    for n, r in rows.items():
        ratio = r["rate"] / base if base else float("nan")
        print(f"{n:>9} {r['rate']:>9.0f} {r['p50'] * 1e3:>9.1f} {r['p99'] * 1e3:>9.1f} {r['db_cores']:>9.2f} "
              f"{r['db_share']:>9.0%} {ratio:>9.2f}")  # fmt: skip
    cores = len(os.sched_getaffinity(0))
    for n, r in rows.items():
        key = f"scale_out_{n}_servers"
        print(f"FIGURE {key}_rate={r['rate']:.0f} matches/s")
        print(f"FIGURE {key}_p99_ms={r['p99'] * 1e3:.1f} ms")
        print(f"FIGURE {key}_errors={r['errors']:.0f} requests")
        print(f"FIGURE {key}_db_cores={r['db_cores']:.2f} cores (of {cores})")
        print(f"FIGURE {key}_db_cpu_share={r['db_share'] * 100:.0f} % of the CPU used by database, servers, clients")
        if n != min(rows):
            print(f"FIGURE {key}_ratio={r['rate'] / base:.2f} x one server")
    return 0


if __name__ == "__main__":
    sys.exit(main())
