"""Matcher benchmark: matches/s and latency with 10^5 and 10^6 waiting jobs shaped like LHCb's task queue.

For each database (SQLite; PostgreSQL when reachable) and each queue size it
1. fills the task queue through the store's bulk submission (and reports jobs/s),
2. measures matches in-process (the service's ``match`` called directly),
3. starts ``cloudpilot server`` and measures matches over HTTP with concurrent pilot clients
   (separate processes, keep-alive connections), each match a full HTTP round trip with token check; the
   clock starts once every client is connected and registered, and stops ``--http-seconds`` later,
4. on PostgreSQL: counts the database round trips of an in-process match on the wire (benchmarks/pgwire.py),
   and right after the HTTP run measures the ceiling, the bare single-statement claim loop on the same
   database with as many clients (autocommit, no history, no HTTP), and prints the ratio of the two,
5. measures bulk submission over HTTP (one parametric request, one list request),
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
from cloudpilot.domain.auth import Principal, Role
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


def _session(services: Services, pilot: Principal) -> Principal:
    """Register a pilot with ``pilot``'s token; the principal of its session (what every later call needs)."""
    reg = services.pilots.register(pilot, time.time(), hostname="b", cores=8, memory_mb=None, site=None, cloud=None)
    return services.auth.authenticate(f"Bearer {reg.session_token}", time.time())


def in_process(services: Services, offers: list[dict], n: int) -> dict[str, float]:
    pilot = _session(services, services.tokens.create(Role.PILOT, "bench", time.time(), vo="lhcb").principal)
    pilot_id = pilot.pilot_id
    assert pilot_id is not None
    latencies: list[float] = []
    hits = 0
    started = time.perf_counter()
    for i in range(n):
        offer = Offer.model_validate(offers[i % len(offers)])
        t0 = time.perf_counter()
        job = services.pilots.match(pilot, pilot_id, offer, time.time()).job
        latencies.append(time.perf_counter() - t0)
        hits += job is not None
    elapsed = time.perf_counter() - started
    return {"rate": n / elapsed, "p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99), "hit": hits / n}


# --- over HTTP ------------------------------------------------------------------------------------------


def _client(
    port: int, token: str, offers: list[dict], seconds: float, threads: int, ready, go, out: multiprocessing.Queue
) -> None:
    """One client process: ``threads`` pilots, each registered and connected before the clock starts (``go``),
    then matching as fast as it can for ``seconds``."""
    import threading

    results: list[tuple[float, int]] = []
    lock = threading.Lock()

    def pilot(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        conn.request("POST", "/api/v1/pilots", json.dumps({"cores": 8}), headers)
        answer = json.loads(conn.getresponse().read())
        pilot_id = answer["id"]
        headers["Authorization"] = f"Bearer {answer.get('session_token') or token}"
        ready.put(1)
        go.wait()
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


def _bare_client(dsn: str, tq_ids: list[int], seconds: float, threads: int, ready, go, out: multiprocessing.Queue):
    """One process of the bare-PostgreSQL ceiling: ``threads`` connections in autocommit, each running
    cloudpilot's own single-statement claim (no history row, no HTTP, no Python service) for ``seconds``."""
    import random
    import threading

    import psycopg

    counts: list[int] = []
    lock = threading.Lock()

    def loop(k: int) -> None:
        rng = random.Random(k)
        with psycopg.connect(dsn, autocommit=True) as conn:
            ready.put(1)
            go.wait()
            n = 0
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                params = {"tq": rng.choice(tq_ids), "pilot": f"bare{k}", "now": time.time()}
                conn.execute(BARE_CLAIM, params).fetchone()
                n += 1
        with lock:
            counts.append(n)

    workers = [threading.Thread(target=loop, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.put(sum(counts))


BARE_CLAIM = """
UPDATE jobs SET state = 'matched', pilot_id = %(pilot)s, attempts = attempts + 1,
    lease_expires_at = %(now)s + 90, updated_at = %(now)s
WHERE id = (SELECT id FROM jobs WHERE tq_id = %(tq)s AND state = 'waiting' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
    AND state = 'waiting'
RETURNING *
"""


# An offer no job of the workload fits: its match ranks nothing and claims nothing, and answers 204 at once.
NOTHING_FITS = {"cores": 1, "tags": ["cloudpilot-benchmark-no-job-has-this-tag"], "wait_seconds": 0}


def _start_together(ctx, target, args: tuple, procs: int, threads: int, seconds: float) -> tuple[list, float]:
    """Start ``procs`` client processes, wait until each of their ``threads`` is connected and ready, then start
    the clock for all at once; their results and the measured seconds (the clock stops with the last one)."""
    ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=target, args=(*args, seconds, threads, ready, go, out)) for _ in range(procs)]
    for w in workers:
        w.start()
    for _ in range(procs * threads):
        ready.get(timeout=120)
    started = time.perf_counter()
    go.set()
    results = [out.get(timeout=seconds + 120) for _ in workers]
    elapsed = time.perf_counter() - started
    for w in workers:
        w.join()
    return results, elapsed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, config_path: Path, port: int, workers: int = 1) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cloudpilot.cli.main", "server", "--data-dir", str(data_dir),
           "--config", str(config_path), "--port", str(port), "--log-level", "warning"]  # fmt: skip
    if workers > 1:
        cmd += ["--workers", str(workers)]
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
    per_proc, elapsed = _start_together(ctx, _client, (port, token, offers), procs, threads, seconds)
    results = [r for chunk in per_proc for r in chunk]
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


def bare_postgresql(pg_name: str, seconds: float, procs: int, threads: int) -> float:
    """Claims/s of the bare single-statement claim loop on the same database, same number of clients."""
    import psycopg

    dsn = f"postgresql://postgres@127.0.0.1:5432/{pg_name}"
    with psycopg.connect(dsn) as conn:
        tq_ids = [r[0] for r in conn.execute("SELECT DISTINCT tq_id FROM jobs WHERE state = 'waiting'")]
    ctx = multiprocessing.get_context("spawn")
    counts, elapsed = _start_together(ctx, _bare_client, (dsn, tq_ids), procs, threads, seconds)
    return sum(counts) / elapsed


def round_trips_per_match(config: ServerConfig, data_dir: Path, pg_name: str, offers: list[dict], n: int) -> float:
    """Database round trips per in-process match on PostgreSQL, counted on the wire (benchmarks/pgwire.py)."""
    from benchmarks.pgwire import RoundTripCounter

    counter = RoundTripCounter()
    try:
        services = Services.build(config.model_copy(update={"database_url": counter.url(pg_name)}), data_dir)
        pilot = services.tokens.create(Role.PILOT, "rt", time.time(), vo="lhcb").principal
        session = _session(services, pilot)
        reg_id = session.pilot_id
        assert reg_id is not None
        services.pilots.match(session, reg_id, Offer.model_validate(offers[0]), time.time())  # warm
        before = counter.round_trips
        for i in range(n):
            services.pilots.match(session, reg_id, Offer.model_validate(offers[i % len(offers)]), time.time())
        trips = counter.round_trips - before
        services.close()
    finally:
        counter.close()
    return trips / n


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
    config_path.write_text(json.dumps(config.model_dump(mode="json", exclude_none=True, exclude_defaults=True)))
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
        if pg_name is not None:
            print(f"[{backend} {size:,}] database round trips per match…", flush=True)
            row["round_trips"] = round_trips_per_match(config, data_dir, pg_name, offers, 1000)
        port = free_port()
        workers = args.pg_workers if pg_name is not None else 1  # several processes need PostgreSQL
        server = start_server(data_dir, config_path, port, workers)
        try:
            print(f"[{backend} {size:,}] HTTP matches for {args.http_seconds} s…", flush=True)
            row["http"] = over_http(
                port, pilot_token, offers, args.http_seconds, args.client_procs, args.client_threads
            )
            if pg_name is not None:  # the ceiling, right after, on the same database and machine load
                print(f"[{backend} {size:,}] bare PostgreSQL claim loop for {args.http_seconds} s…", flush=True)
                row["bare"] = bare_postgresql(pg_name, args.http_seconds, args.client_procs, args.client_threads)
                # The other bound: the same route and clients with an offer no job fits (token check, parsing,
                # ranking, the answer; no database round trip): what the HTTP side allows at most.
                print(f"[{backend} {size:,}] HTTP matches with nothing to claim for {args.http_seconds} s…")
                row["http_empty"] = over_http(
                    port, pilot_token, [NOTHING_FITS], args.http_seconds, args.client_procs, args.client_threads
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
    if "bare" in r:
        bare = float(r["bare"])  # type: ignore[arg-type]
        print(f"FIGURE {key}_bare_claim_rate={bare:.0f} claims/s")
        print(f"FIGURE {key}_http_vs_bare={h['rate'] / bare:.2f} x")  # type: ignore[index]
    if "http_empty" in r:
        empty = r["http_empty"]["rate"]  # type: ignore[index]
        print(f"FIGURE {key}_http_empty_rate={empty:.0f} requests/s")
        if "bare" in r:
            print(f"FIGURE {key}_http_empty_vs_bare={empty / float(r['bare']):.2f} x")  # type: ignore[arg-type]
    if "round_trips" in r:
        print(f"FIGURE {key}_round_trips_per_match={r['round_trips']:.2f} round trips", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--http-seconds", type=float, default=20.0)
    parser.add_argument("--inproc-matches", type=int, default=5000)
    parser.add_argument("--client-procs", type=int, default=4)
    parser.add_argument("--pg-workers", type=int, default=1,
                        help="server processes on PostgreSQL (cloudpilot server --workers): one per core deployed")
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
