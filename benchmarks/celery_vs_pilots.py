"""Many short jobs on a fixed pool of slots: cloudpilot pilots against Celery workers on Redis, in one run.

    python benchmarks/celery_vs_pilots.py [--jobs 5000] [--slots 4] [--pilots one|per-slot] [--idle-jobs 30]
                                          [--redis redis://127.0.0.1:6379] [--redis-db 13]

Both systems run the same payload as a real process: ``/bin/sh -c 'date +%s.%N > DIR/N; echo N'`` (the payload
writes its own start time, UNIX seconds, to a file), on the same number of slots:

* cloudpilot: a real server (uvicorn on 127.0.0.1, SQLite in a temporary directory, started in this process as
  ``tests/helpers/server.py`` does) and pilot processes (``python -m cloudpilot.pilot``). By default one pilot
  with ``--slots`` cores: that is how cloudpilot runs on a machine (one pilot per VM offering all its cores, one
  job per core), and it is the counterpart of one Celery worker with ``--concurrency`` child processes.
  ``--pilots per-slot`` runs ``--slots`` one-core pilots instead (more match loops in parallel).
* Celery: one worker process (``celery worker --pool=prefork --concurrency=SLOTS``, default prefetch) on Redis
  at 127.0.0.1:6379, database ``--redis-db`` (flushed before and after; no other database is touched), results
  in the same Redis; the task runs the payload with ``subprocess.run``.

Each system is started and waits, idle, with its slots free (pilots registered and long-polling; the worker
answering a ping), then:

1. **idle dispatch** (``--idle-jobs``): one job at a time with every slot free; dispatch latency of each.
2. **burst**: all ``--jobs`` jobs submitted at once — cloudpilot in one parametric request (its bulk path),
   Celery by ``apply_async`` in a loop (what ``group`` does too); total time = from the first submission call
   to the moment the submitter sees the last job finished (cloudpilot: ``GET /jobs/summary`` shows every job
   done; Celery: every result is in the result backend), polled every 50 ms in both.

Dispatch latency = the payload's own start time - its submit time, where the submit time of a job is when the
call that submitted it began (for cloudpilot's bulk request: the start of that request, for every job in it;
for Celery: the start of that job's ``apply_async``). In the burst it is mostly time waiting for a free slot,
so its median follows the throughput; the idle figure is the cost of getting one job to a free slot.

It also prints the CPU each system used in the burst (every process of it: server, pilots and payloads; worker,
children, payloads and Redis; and the submitter) and, for cloudpilot, the median time of each step of a job.
Prints both systems' figures, the ratios (cloudpilot / Celery; > 1 means cloudpilot takes longer) and
``FIGURE name=value unit`` lines for ``benchmarks/run``. Every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REDIS_ENV = "CLOUDPILOT_BENCH_REDIS_URL"
TASK_NAME = "cloudpilot_bench.run_payload"
POLL_SECONDS = 0.05

try:  # the worker imports this module for the task; the benchmark itself needs celery only for its half
    from celery import Celery
except ImportError:  # pragma: no cover - reported by main()
    Celery = None  # type: ignore[assignment,misc]

if Celery is not None:
    _url = os.environ.get(REDIS_ENV, "redis://127.0.0.1:6379/13")
    app = Celery("cloudpilot_bench", broker=_url, backend=_url)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        result_expires=3600,
    )

    @app.task(name=TASK_NAME)
    def run_payload(command: str) -> int:
        """The payload as a real process, as a Celery user would run a shell command."""
        return subprocess.run(["/bin/sh", "-c", command], stdout=subprocess.DEVNULL, check=False).returncode


def payload(starts: Path, n: str) -> str:
    """The shell command of job ``n``: write the start time (UNIX seconds) to ``starts/n``, print ``n``."""
    return f"date +%s.%N > {starts}/{n}; echo {n}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


@dataclass
class Result:
    system: str
    slots: int
    jobs: int = 0
    total_s: float = float("nan")
    submit_s: float = float("nan")
    dispatch: list[float] = field(default_factory=list)  # burst: payload start - submit, seconds
    idle_dispatch: list[float] = field(default_factory=list)
    idle_submit: list[float] = field(default_factory=list)  # how long each idle job's submission call took
    failed: int = 0
    note: str = ""
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds spent during the burst, by whom
    phases: dict[str, float] = field(default_factory=dict)  # cloudpilot: median seconds of each step of a job

    @property
    def rate(self) -> float:
        return self.jobs / self.total_s


def read_starts(starts: Path, names: list[str], deadline: float) -> dict[str, float]:
    """The start time written by each payload (waits a little for files not yet visible)."""
    found: dict[str, float] = {}
    while True:
        for n in names:
            if n in found:
                continue
            try:
                text = (starts / n).read_text().strip()
            except FileNotFoundError:
                continue
            if text:
                found[n] = float(text)
        if len(found) == len(names) or time.time() > deadline:
            return found
        time.sleep(POLL_SECONDS)


def tree_cpu(roots: list[int]) -> float:
    """CPU seconds of these processes and every live descendant, each with the children it has waited for (an
    ended payload's time is in its supervisor's or its prefork child's ``cutime``; a supervisor kept for the next
    payload, or a prefork child, is counted while it lives)."""
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    times: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parent[int(entry)] = int(fields[1])
        times[int(entry)] = sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    inside = set(roots)
    for pid in parent:
        if pid not in inside and _descends(pid, parent, inside):
            inside.add(pid)
    return sum(times.get(pid, 0) for pid in inside) / tick


def _descends(pid: int, parent: dict[int, int], roots: set[int]) -> bool:
    seen = 0
    while pid in parent and seen < 64:  # up its ancestors (bounded: a pid reused mid-scan could loop)
        pid = parent[pid]
        if pid in roots:
            return True
        seen += 1
    return False


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def stop_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the process group this benchmark started (``start_new_session``), then SIGKILL what is left."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):  # what is left of the group: payloads, prefork children
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


# --- cloudpilot -----------------------------------------------------------------------------------------


def run_cloudpilot(args: argparse.Namespace, work: Path) -> Result:
    sys.path.insert(0, str(ROOT))
    from tests.helpers.server import start_server

    from cloudpilot.config import ServerConfig
    from cloudpilot.domain.auth import Role

    one = args.pilots == "one"
    note = f"1 pilot, {args.slots} cores" if one else f"{args.slots} pilots, 1 core"
    result = Result("cloudpilot", args.slots, note=note)
    server = start_server(ServerConfig(), work / "server")
    pilots: list[subprocess.Popen] = []
    logs = []
    try:
        user = server.client(server.token(Role.USER, "bench", vo="bench"))
        token_file = work / "pilot.token"
        token_file.write_text(server.token(Role.PILOT, "bench-pilot", vo="bench"))
        layout = [args.slots] if one else [1] * args.slots
        for k, cores in enumerate(layout):
            log = work / f"pilot{k}.log"
            logs.append(log)
            cmd = [sys.executable, "-m", "cloudpilot.pilot", "--server", server.url, "--token-file", str(token_file),
                   "--cores", str(cores), "--memory-mb", "4096", "--idle-timeout", "3600",
                   "--workdir", str(work / f"pilot{k}"), "--log-level", "INFO",
                   # as Celery's tasks: the benchmark's own user (as root the default, nobody, could not write
                   # the start files into this run's private temporary directory)
                   "--payload-user", pwd.getpwuid(os.geteuid()).pw_name]  # fmt: skip
            with log.open("w") as out:
                pilots.append(subprocess.Popen(cmd, stdout=out, stderr=out, start_new_session=True, cwd=work))
        deadline = time.time() + 60
        while not all("registered as pilot" in log.read_text() for log in logs):
            if time.time() > deadline or any(p.poll() is not None for p in pilots):
                raise RuntimeError("pilots did not register: " + " | ".join(log.read_text()[-500:] for log in logs))
            time.sleep(0.05)
        time.sleep(1.0)  # every pilot is in its long poll

        def job(n: str, starts: Path) -> dict:
            return {"name": f"sh-{n}", "executable": "/bin/sh", "arguments": ["-c", payload(starts, n)]}

        def wait_done(expected: int, deadline: float) -> dict[str, int]:
            while True:
                counts = user.get("/api/v1/jobs/summary").json()["counts"]
                if counts.get("done", 0) + counts.get("failed", 0) + counts.get("killed", 0) >= expected:
                    return counts
                if time.time() > deadline:
                    raise RuntimeError(f"cloudpilot: jobs not finished in time: {counts}")
                time.sleep(POLL_SECONDS)

        # 1. idle dispatch
        idle = work / "cp-idle"
        idle.mkdir()
        for i in range(args.idle_jobs):
            n = str(i)
            t_submit = time.time()
            r = user.post("/api/v1/jobs", json=job(n, idle))
            result.idle_submit.append(time.time() - t_submit)
            r.raise_for_status()
            start = read_starts(idle, [n], time.time() + 60).get(n)
            if start is None:
                raise RuntimeError("cloudpilot: an idle-dispatch job did not start within 60 s")
            result.idle_dispatch.append(start - t_submit)
            wait_done(i + 1, time.time() + 60)  # its slot is free again
        # 2. burst
        burst = work / "cp-burst"
        burst.mkdir()
        doc = {"job": job("{n}", burst), "parameter_count": args.jobs}
        cpu0 = self_cpu(), tree_cpu([p.pid for p in pilots])
        t0 = time.time()
        r = user.post("/api/v1/jobs", json=doc)
        r.raise_for_status()
        result.submit_s = time.time() - t0
        counts = wait_done(args.idle_jobs + args.jobs, t0 + args.timeout)
        result.total_s = time.time() - t0
        result.cpu = {
            "server and submitter (one process)": self_cpu() - cpu0[0],
            "pilots and payloads": tree_cpu([p.pid for p in pilots]) - cpu0[1],
        }
        result.jobs = args.jobs
        result.failed = counts.get("failed", 0) + counts.get("killed", 0)
        names = [str(i) for i in range(args.jobs)]
        starts = read_starts(burst, names, time.time() + 10)
        result.dispatch = [starts[n] - t0 for n in names if n in starts]
        result.phases = phases(user, r.json()["ids"], starts)
        return result
    finally:
        for p in pilots:
            stop_group(p)
        server.stop()


def phases(user, ids: list[int], starts: dict[str, float], sample: int = 200) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Median time of each step of a burst job, from the history of ``sample`` of them and their start files."""
    # (A payload that ends within a second is reported once, at its end: its "running" is dated from the pilot's
    # measure, so the steps are taken from the payload's own start time instead.)
    steps: dict[str, list[float]] = {"matched -> payload start": [], "payload start -> done report": []}
    for i in range(0, len(ids), max(1, len(ids) // sample)):
        at = {e["to_state"]: e["at"] for e in user.get(f"/api/v1/jobs/{ids[i]}").json()["history"]}
        start = starts.get(str(i))
        if start is None or not {"matched", "done"} <= at.keys():
            continue
        steps["matched -> payload start"].append(start - at["matched"])
        steps["payload start -> done report"].append(at["done"] - start)
    return {k: statistics.median(v) for k, v in steps.items() if v}


# --- Celery ---------------------------------------------------------------------------------------------


def redis_url(args: argparse.Namespace) -> str:
    return f"{args.redis.rstrip('/')}/{args.redis_db}"


def redis_cpu(db) -> float:  # type: ignore[no-untyped-def]
    """CPU seconds the Redis server has used (all of it: nothing else uses it during the run)."""
    info = db.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def celery_unavailable(args: argparse.Namespace) -> str | None:
    if Celery is None:
        return "celery is not installed (pip install -e '.[dev]')"
    try:
        import redis

        redis.Redis.from_url(redis_url(args), socket_connect_timeout=3).ping()
    except Exception as exc:
        return f"Redis is not reachable at {redis_url(args)}: {exc}"
    return None


def run_celery(args: argparse.Namespace, work: Path) -> Result:
    import redis
    from celery.result import AsyncResult

    url = redis_url(args)
    db = redis.Redis.from_url(url)
    db.flushdb()  # only this benchmark's database
    bench = Celery("cloudpilot_bench", broker=url, backend=url)
    bench.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
    task = bench.signature(TASK_NAME)
    result = Result("celery", args.slots, note=f"1 worker, prefork {args.slots}")
    log = work / "celery.log"
    node = f"cpbench-{uuid.uuid4().hex[:6]}@localhost"
    cmd = [sys.executable, "-m", "celery", "-A", "benchmarks.celery_vs_pilots", "worker", "--pool=prefork",
           f"--concurrency={args.slots}", "--loglevel=WARNING", "-n", node]  # fmt: skip
    env = dict(os.environ, **{REDIS_ENV: url, "PYTHONPATH": str(ROOT)})
    with log.open("w") as out:
        worker = subprocess.Popen(cmd, stdout=out, stderr=out, cwd=ROOT, env=env, start_new_session=True)
    try:
        deadline = time.time() + 60
        while not bench.control.ping(destination=[node], timeout=0.5):
            if time.time() > deadline or worker.poll() is not None:
                raise RuntimeError(f"the Celery worker did not start: {log.read_text()[-2000:]}")
        time.sleep(1.0)
        backend = bench.backend

        def wait_done(results: list[AsyncResult], deadline: float) -> list[bytes]:
            keys = [backend.get_key_for_task(r.id) for r in results]
            metas: list[bytes | None] = [None] * len(keys)
            pending = list(range(len(keys)))
            while pending:
                for i, meta in zip(pending, backend.client.mget([keys[i] for i in pending]), strict=True):
                    metas[i] = meta
                pending = [i for i in pending if metas[i] is None]
                if not pending:
                    break
                if time.time() > deadline:
                    raise RuntimeError(f"celery: {len(pending)} tasks not finished in time")
                time.sleep(POLL_SECONDS)
            return [m for m in metas if m is not None]

        # 1. idle dispatch
        idle = work / "celery-idle"
        idle.mkdir()
        for i in range(args.idle_jobs):
            n = str(i)
            t_submit = time.time()
            r = task.apply_async((payload(idle, n),))
            result.idle_submit.append(time.time() - t_submit)
            start = read_starts(idle, [n], time.time() + 60).get(n)
            if start is None:
                raise RuntimeError("celery: an idle-dispatch task did not start within 60 s")
            result.idle_dispatch.append(start - t_submit)
            wait_done([r], time.time() + 60)
        # 2. burst
        burst = work / "celery-burst"
        burst.mkdir()
        submitted: list[float] = []
        results: list[AsyncResult] = []
        cpu0 = self_cpu(), tree_cpu([worker.pid]), redis_cpu(db)
        t0 = time.time()
        for i in range(args.jobs):
            submitted.append(time.time())
            results.append(task.apply_async((payload(burst, str(i)),)))
        result.submit_s = time.time() - t0
        metas = wait_done(results, t0 + args.timeout)
        result.total_s = time.time() - t0
        result.cpu = {
            "submitter": self_cpu() - cpu0[0],
            "worker and payloads": tree_cpu([worker.pid]) - cpu0[1],
            "Redis": redis_cpu(db) - cpu0[2],
        }
        result.jobs = args.jobs
        result.failed = sum(1 for m in map(json.loads, metas) if m.get("status") != "SUCCESS" or m.get("result") != 0)
        names = [str(i) for i in range(args.jobs)]
        starts = read_starts(burst, names, time.time() + 10)
        result.dispatch = [starts[n] - submitted[i] for i, n in enumerate(names) if n in starts]
        return result
    finally:
        stop_group(worker)
        db.flushdb()
        db.close()


# --- report ---------------------------------------------------------------------------------------------


def report(results: list[Result], args: argparse.Namespace) -> None:
    print()
    print(f"{args.jobs:,} jobs `sh -c 'date > FILE; echo N'` on {args.slots} slots; idle dispatch: {args.idle_jobs}")
    head = (
        f"{'system':<11} {'setup':<18} | {'total s':>8} {'jobs/s':>7} {'submit s':>8} {'failed':>6} | "
        f"{'dispatch p50 ms':>15} {'p95 ms':>8} | {'idle dispatch p50 ms':>20} {'p95 ms':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        print(
            f"{r.system:<11} {r.note:<18} | {r.total_s:>8.2f} {r.rate:>7.0f} {r.submit_s:>8.2f} {r.failed:>6} | "
            f"{percentile(r.dispatch, 0.5) * 1e3:>15.0f} {percentile(r.dispatch, 0.95) * 1e3:>8.0f} | "
            f"{percentile(r.idle_dispatch, 0.5) * 1e3:>20.1f} {percentile(r.idle_dispatch, 0.95) * 1e3:>7.1f}"
        )
    for r in results:
        parts = ", ".join(f"{who} {sec:.1f}" for who, sec in r.cpu.items())
        total = sum(r.cpu.values())
        print(
            f"{r.system} CPU in the burst: {total:.1f} s ({total / r.jobs * 1e3:.1f} ms per job; {parts});"
            f" the {os.cpu_count()} cores offered {r.total_s * (os.cpu_count() or 1):.0f} s"
        )
        if r.phases:
            steps = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in r.phases.items())
            print(f"  a cloudpilot job, median of its steps: {steps}; a slot is taken {r.slots / r.rate * 1e3:.0f} ms"
                  " per job at this rate")  # fmt: skip
    for r in results:
        if r.idle_dispatch and r.idle_submit:
            submit = percentile(r.idle_submit, 0.5)
            after = percentile(r.idle_dispatch, 0.5) - submit
            print(f"{r.system} idle dispatch, median: the submission call returned after {submit * 1e3:.1f} ms, the"
                  f" payload started {after * 1e3:.1f} ms after that")  # fmt: skip
    for r in results:
        if len(r.dispatch) < r.jobs:
            print(f"warning: {r.system}: {r.jobs - len(r.dispatch)} payloads left no start time")
    by = {r.system: r for r in results}
    for r in results:
        key = "pilots" if r.system == "cloudpilot" else "celery"
        print(f"FIGURE {key}_total_s={r.total_s:.2f} s")
        print(f"FIGURE {key}_jobs_per_s={r.rate:.0f} jobs/s")
        print(f"FIGURE {key}_dispatch_p50_ms={percentile(r.dispatch, 0.5) * 1e3:.0f} ms")
        print(f"FIGURE {key}_dispatch_p95_ms={percentile(r.dispatch, 0.95) * 1e3:.0f} ms")
        if r.idle_dispatch:
            print(f"FIGURE {key}_idle_dispatch_p50_ms={percentile(r.idle_dispatch, 0.5) * 1e3:.1f} ms")
        print(f"FIGURE {key}_failed={r.failed} jobs")
        print(f"FIGURE {key}_cpu_ms_per_job={sum(r.cpu.values()) / r.jobs * 1e3:.1f} ms")
    if "cloudpilot" in by and "celery" in by:
        cp, ce = by["cloudpilot"], by["celery"]
        total = cp.total_s / ce.total_s
        p50 = percentile(cp.dispatch, 0.5) / percentile(ce.dispatch, 0.5)
        print(f"\ncloudpilot / Celery: total time x{total:.2f}, median dispatch latency x{p50:.2f}", end="")
        print(f" (burst of {args.jobs:,})", end="")
        if cp.idle_dispatch and ce.idle_dispatch:
            idle = percentile(cp.idle_dispatch, 0.5) / percentile(ce.idle_dispatch, 0.5)
            print(f", idle dispatch x{idle:.2f}")
            print(f"FIGURE ratio_idle_dispatch_p50={idle:.2f} x")
        else:
            print()
        print(f"FIGURE ratio_total_time={total:.2f} x")
        print(f"FIGURE ratio_dispatch_p50={p50:.2f} x")
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--pilots", choices=["one", "per-slot"], default="one",
                        help="one pilot with SLOTS cores (default) or SLOTS one-core pilots")  # fmt: skip
    parser.add_argument("--idle-jobs", type=int, default=30, help="jobs sent one at a time to idle slots first")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    parser.add_argument("--redis-db", type=int, default=13, help="the Redis database used (and flushed)")
    parser.add_argument("--systems", nargs="+", choices=["cloudpilot", "celery"], default=["cloudpilot", "celery"])
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up on a burst after this many seconds")
    args = parser.parse_args()
    if "celery" in args.systems and (why := celery_unavailable(args)):
        print(f"SKIP celery: {why}")
        print("SKIP ratio: no Celery run")
        args.systems = [s for s in args.systems if s != "celery"]
    results = []
    with tempfile.TemporaryDirectory(prefix="cp-celery-vs-pilots-") as tmp:
        for system in args.systems:
            print(f"[{system}] {args.jobs:,} jobs on {args.slots} slots…", flush=True)
            run = run_cloudpilot if system == "cloudpilot" else run_celery
            work = Path(tmp) / system
            work.mkdir()
            results.append(run(args, work))
    report(results, args)


if __name__ == "__main__":
    main()
