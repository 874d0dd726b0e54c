"""Matcher benchmark: matches/s and latency with 10^5 and 10^6 waiting jobs shaped like LHCb's task queue.

For each database (SQLite; PostgreSQL when reachable) and each queue size it
1. fills the task queue through the store's bulk submission (and reports jobs/s),
2. measures matches in-process (the service's ``match`` called directly),
3. starts ``cloudpilot server`` and measures matches over HTTP with concurrent pilot clients
   (separate processes, keep-alive connections), each match a full HTTP round trip with token check,
4. measures bulk submission over HTTP (one parametric request, one list request),
then prints a table. Offers and jobs come from ``cloudpilot.sim.lhcb`` (the real 2026-03-28 snapshot when
``../shared`` is there, an embedded model of it otherwise).

    python benchmarks/matcher.py [--sizes 100000 1000000] [--backends sqlite postgresql] [--http-seconds 20]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import Role
from cloudpilot.domain.jobs import JobSpec
from cloudpilot.domain.matching import Offer
from cloudpilot.services.container import Services
from cloudpilot.sim.lhcb import load_model

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- set-up ---------------------------------------------------------------------------------------------


def pg_reachable() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return True
    except Exception:
        return False


def make_database(backend: str, data_dir: Path) -> tuple[str | None, str | None]:
    """The database URL for a fresh store (``None``: SQLite in the data dir) and a PG database to drop."""
    if backend == "sqlite":
        return None, None
    import psycopg

    name = f"cloudpilot_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", name


def drop_database(name: str | None) -> None:
    if name is None:
        return
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fill(services: Services, n_jobs: int, seed: int) -> float:
    """Submit ``n_jobs`` LHCb-shaped jobs through the store's bulk path; return jobs/s."""
    model = load_model()
    by_owner: dict[str, list[JobSpec]] = defaultdict(list)
    started = time.perf_counter()
    submitted = 0

    def flush(owner: str) -> None:
        nonlocal submitted
        batch = by_owner.pop(owner)
        principal = services.tokens.create(Role.USER, owner, time.time(), vo="lhcb").principal
        services.jobs.submit(principal, batch, time.time())
        submitted += len(batch)

    for owner, spec in model.sample_jobs(n_jobs, seed=seed):
        by_owner[owner].append(JobSpec.model_validate(spec))
        if len(by_owner[owner]) >= 50_000:
            flush(owner)
    for owner in list(by_owner):
        flush(owner)
    return submitted / (time.perf_counter() - started)


# --- in-process -----------------------------------------------------------------------------------------


def in_process(services: Services, offers: list[dict], n: int) -> dict[str, float]:
    pilot = services.tokens.create(Role.PILOT, "bench", time.time(), vo="lhcb").principal
    reg = services.pilots.register(pilot, time.time(), hostname="b", cores=8, memory_mb=None, site=None, cloud=None)
    latencies: list[float] = []
    hits = 0
    started = time.perf_counter()
    for i in range(n):
        offer = Offer.model_validate(offers[i % len(offers)])
        t0 = time.perf_counter()
        job = services.pilots.match(pilot, reg.pilot_id, offer, time.time()).job
        latencies.append(time.perf_counter() - t0)
        hits += job is not None
    elapsed = time.perf_counter() - started
    return {"rate": n / elapsed, "p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99), "hit": hits / n}


# --- over HTTP ------------------------------------------------------------------------------------------


def _client(port: int, token: str, offers: list[dict], seconds: float, threads: int, out: multiprocessing.Queue):
    """One client process: ``threads`` pilots, each matching as fast as it can for ``seconds``."""
    import threading

    results: list[tuple[float, int]] = []
    lock = threading.Lock()

    def pilot(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        conn.request("POST", "/api/v1/pilots", json.dumps({"cores": 8}), headers)
        registered = json.loads(conn.getresponse().read())
        pilot_id = registered["id"]
        headers["Authorization"] = f"Bearer {registered['session_token']}"  # pilot calls go with the session
        mine: list[tuple[float, int]] = []
        deadline = time.perf_counter() + seconds
        i = k
        while time.perf_counter() < deadline:
            body = dict(offers[i % len(offers)], pilot_id=pilot_id)
            i += 7
            t0 = time.perf_counter()
            conn.request("POST", "/api/v1/pilots/match", json.dumps(body), headers)
            resp = conn.getresponse()
            resp.read()
            mine.append((time.perf_counter() - t0, resp.status))
        conn.close()
        with lock:
            results.extend(mine)

    workers = [threading.Thread(target=pilot, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.put(results)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, config_path: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cloudpilot.cli.main", "server", "--data-dir", str(data_dir),
           "--config", str(config_path), "--port", str(port), "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/api/v1/health")
            if c.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not start: {proc.stderr.read().decode() if proc.stderr else ''}")


def over_http(port: int, token: str, offers: list[dict], seconds: float, procs: int, threads: int) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue = ctx.Queue()
    workers = [ctx.Process(target=_client, args=(port, token, offers, seconds, threads, out)) for _ in range(procs)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    results = [r for _ in workers for r in out.get(timeout=seconds + 120)]
    elapsed = time.perf_counter() - started
    for w in workers:
        w.join()
    ok = [lat for lat, status in results if status in (200, 204)]
    errors = len(results) - len(ok)
    hits = sum(1 for _, status in results if status == 200)
    return {
        "rate": len(ok) / elapsed,
        "p50": percentile(ok, 0.5),
        "p99": percentile(ok, 0.99),
        "hit": hits / max(1, len(results)),
        "errors": errors,
        "clients": procs * threads,
    }


def bulk_http(port: int, token: str, n: int) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    doc = {"job": {"name": "bulk-{n}", "executable": "/bin/true", "arguments": ["{n}"]}, "parameter_count": n}
    t0 = time.perf_counter()
    conn.request("POST", "/api/v1/jobs", json.dumps(doc), headers)
    resp = conn.getresponse()
    assert resp.status == 201, resp.read()
    resp.read()
    parametric = n / (time.perf_counter() - t0)
    jobs = [{"name": f"list-{i}", "executable": "/bin/true", "arguments": [str(i)]} for i in range(n)]
    t0 = time.perf_counter()
    conn.request("POST", "/api/v1/jobs", json.dumps(jobs), headers)
    resp = conn.getresponse()
    assert resp.status == 201, resp.read()
    resp.read()
    listed = n / (time.perf_counter() - t0)
    return {"parametric": parametric, "list": listed}


# --- driver ---------------------------------------------------------------------------------------------


def run(backend: str, size: int, args: argparse.Namespace) -> dict[str, object]:
    data_dir = Path(tempfile.mkdtemp(prefix=f"cp-bench-{backend}-"))
    url, pg_name = make_database(backend, data_dir)
    config = ServerConfig(database_url=url)
    config_path = data_dir / "config.yaml"
    config_path.write_text(json.dumps(config.model_dump(mode="json", exclude_none=True)))
    row: dict[str, object] = {"backend": backend, "jobs": size}
    try:
        services = Services.build(config, data_dir)
        print(f"[{backend} {size:,}] filling the queue…", flush=True)
        row["fill_jobs_per_s"] = fill(services, size, seed=1)
        offers = load_model().sample_offers(2000, seed=2)
        print(f"[{backend} {size:,}] in-process matches…", flush=True)
        row["inproc"] = in_process(services, offers, args.inproc_matches)
        pilot_token = services.tokens.create(Role.PILOT, "bench-http", time.time(), vo="lhcb").token
        user_token = services.tokens.create(Role.USER, "bulk", time.time(), vo="lhcb").token
        services.close()
        port = free_port()
        server = start_server(data_dir, config_path, port)
        try:
            print(f"[{backend} {size:,}] HTTP matches for {args.http_seconds} s…", flush=True)
            row["http"] = over_http(
                port, pilot_token, offers, args.http_seconds, args.client_procs, args.client_threads
            )
            print(f"[{backend} {size:,}] bulk submission over HTTP…", flush=True)
            row["bulk"] = bulk_http(port, user_token, args.bulk_jobs)
        finally:
            server.terminate()
            server.wait(timeout=30)
    finally:
        drop_database(pg_name)
        if not args.keep:
            subprocess.run(["rm", "-rf", str(data_dir)], check=False)
    return row


def print_table(rows: list[dict[str, object]]) -> None:
    head = (
        f"{'backend':<10} {'waiting':>9} | {'fill/s':>8} | {'in-proc/s':>9} {'p50 ms':>7} {'p99 ms':>7} | "
        f"{'HTTP/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'hit':>5} {'err':>4} | {'bulk param/s':>12} {'bulk list/s':>11}"
    )
    print()
    print(head)
    print("-" * len(head))
    for r in rows:
        ip, h, b = r["inproc"], r["http"], r["bulk"]
        print(
            f"{r['backend']:<10} {r['jobs']:>9,} | {r['fill_jobs_per_s']:>8,.0f} | "  # type: ignore[index]
            f"{ip['rate']:>9,.0f} {ip['p50'] * 1e3:>7.2f} {ip['p99'] * 1e3:>7.2f} | "  # type: ignore[index]
            f"{h['rate']:>7,.0f} {h['p50'] * 1e3:>7.2f} {h['p99'] * 1e3:>7.2f} {h['hit']:>5.0%} {h['errors']:>4} | "  # type: ignore[index]
            f"{b['parametric']:>12,.0f} {b['list']:>11,.0f}"  # type: ignore[index]
        )
    print(f"\nHTTP: {rows[0]['http']['clients']} concurrent pilot clients; hit = share of matches answered with a job.")  # type: ignore[index]
    print(f"workload: {load_model().describe().splitlines()[0]}")


def size_tag(n: int) -> str:
    """``1e6`` for a power of ten, the number otherwise: the size part of a figure's name."""
    exp = len(str(n)) - 1
    return f"1e{exp}" if n == 10**exp else str(n)


def print_figures(r: dict[str, object]) -> None:
    """Machine-readable lines ``FIGURE name=value unit`` for ``benchmarks/run``."""
    ip, h, b = r["inproc"], r["http"], r["bulk"]
    key = f"matcher_{r['backend']}_{size_tag(r['jobs'])}"  # type: ignore[arg-type]
    print(f"FIGURE {key}_fill_rate={r['fill_jobs_per_s']:.0f} jobs/s")
    print(f"FIGURE {key}_inproc_rate={ip['rate']:.0f} matches/s")  # type: ignore[index]
    print(f"FIGURE {key}_inproc_p50_ms={ip['p50'] * 1e3:.2f} ms")  # type: ignore[index]
    print(f"FIGURE {key}_inproc_p99_ms={ip['p99'] * 1e3:.2f} ms")  # type: ignore[index]
    print(f"FIGURE {key}_http_rate={h['rate']:.0f} matches/s")  # type: ignore[index]
    print(f"FIGURE {key}_http_p50_ms={h['p50'] * 1e3:.2f} ms")  # type: ignore[index]
    print(f"FIGURE {key}_http_p99_ms={h['p99'] * 1e3:.2f} ms")  # type: ignore[index]
    print(f"FIGURE {key}_http_errors={h['errors']} requests")  # type: ignore[index]
    print(f"FIGURE {key}_http_clients={h['clients']} clients")  # type: ignore[index]
    print(f"FIGURE {key}_bulk_parametric_rate={b['parametric']:.0f} jobs/s")  # type: ignore[index]
    print(f"FIGURE {key}_bulk_list_rate={b['list']:.0f} jobs/s", flush=True)  # type: ignore[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--http-seconds", type=float, default=20.0)
    parser.add_argument("--inproc-matches", type=int, default=5000)
    parser.add_argument("--client-procs", type=int, default=4)
    parser.add_argument("--client-threads", type=int, default=4)
    parser.add_argument("--bulk-jobs", type=int, default=20_000)
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    args = parser.parse_args()
    backends = [b for b in args.backends if b != "postgresql" or pg_reachable()]
    if len(backends) < len(args.backends):
        print("PostgreSQL is not reachable on 127.0.0.1:5432: skipping it")
    rows = []
    for backend in backends:
        for size in args.sizes:
            rows.append(run(backend, size, args))
            print_figures(rows[-1])
    print_table(rows)
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
