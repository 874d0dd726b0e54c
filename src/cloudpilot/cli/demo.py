"""``cloudpilot demo``: a server and N pilots on this machine run the Monte Carlo example end to end."""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

import cloudpilot
from cloudpilot.cli.common import fail
from cloudpilot.client import ClientError, CloudpilotClient, WaitTimedOut, load_job_file
from cloudpilot.client.jobfile import is_parametric

SERVER_START_SECONDS = 30.0  # a cold start imports FastAPI and migrates a fresh SQLite database
PILOT_IDLE_TIMEOUT = 5  # seconds without work after which a demo pilot exits by itself
PILOT_EXIT_SECONDS = 60.0  # how long the pilots get to notice there is no more work
STOP_SECONDS = 10.0  # grace between SIGTERM and SIGKILL when stopping a child


class DemoFailed(Exception):
    """Something the demo depends on broke; the message says what and where its log is."""


def example_dir() -> Path | None:
    """The shipped Monte Carlo example: inside the installed package first, else in the source checkout."""
    with contextlib.suppress(ModuleNotFoundError, OSError):
        packaged = importlib.resources.files("cloudpilot") / "examples" / "montecarlo"
        if isinstance(packaged, Path) and (packaged / "job.yaml").is_file():
            return packaged
    checkout = Path(cloudpilot.__file__).resolve().parents[2] / "examples" / "montecarlo"
    return checkout if (checkout / "job.yaml").is_file() else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Children:
    """The subprocesses of the demo, each in its own session so that stopping one also stops its payloads."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.running.append(proc)
        return proc

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
        # Only while the child is unreaped: then its pid (and group id) cannot belong to anyone else.
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            if hasattr(os, "killpg"):
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        self._signal(proc, signal.SIGTERM)
        try:
            proc.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self._signal(proc, signal.SIGKILL)
            proc.wait()

    def stop_all(self) -> None:
        for proc in reversed(self.running):  # pilots first, the server last
            self._signal(proc, signal.SIGTERM)
        for proc in reversed(self.running):
            self.stop(proc)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Let ``kill <demo pid>`` clean up like Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def create_tokens(data_dir: Path) -> tuple[str, str]:
    """A user token and a pilot token of the VO ``demo``, written straight into the new store."""
    from cloudpilot.config import ServerConfig
    from cloudpilot.domain.auth import Role
    from cloudpilot.services.tokens import issue_token
    from cloudpilot.store.database import Database
    from cloudpilot.store.migrations import upgrade
    from cloudpilot.store.tokens import TokenRepository

    db = Database(ServerConfig().database_url_for(data_dir))
    try:
        upgrade(db)
        tokens = TokenRepository(db)
        now = time.time()
        user = issue_token(tokens, Role.USER, "demo", now, vo="demo")
        pilot = issue_token(tokens, Role.PILOT, "demo-pilots", now, vo="demo")
    finally:
        db.dispose()
    return user.token, pilot.token


def start_server(children: Children, data_dir: Path, token: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``cloudpilot server`` on a free port and wait until it answers; retry if the port was taken meanwhile."""
    log = data_dir / "server.log"
    for _ in range(3):
        port = free_port()
        argv = [sys.executable, "-m", "cloudpilot.cli.main", "server", "--data-dir", str(data_dir)]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        proc = children.start(argv, log)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + SERVER_START_SECONDS
        with CloudpilotClient(url, token, timeout=2) as client:
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    client.health()
                    return proc, url
                except ClientError:
                    time.sleep(0.1)
        if proc.poll() is None:
            raise DemoFailed(f"the server did not answer within {SERVER_START_SECONDS:g} s; see {log}")
        if "address already in use" not in log_tail(log).lower():
            raise DemoFailed(f"the server exited with code {proc.returncode}:\n{log_tail(log)}")
    raise DemoFailed(f"could not find a free port for the server; see {log}")


def demo(
    pilots: int = typer.Option(4, "--pilots", min=1, max=64, help="How many pilots to start (1 core each)."),
    jobs: int = typer.Option(200, "--jobs", min=1, max=100_000, help="How many Monte Carlo jobs to run."),
    keep: bool = typer.Option(False, "--keep", help="Keep the data directory (database, sandboxes, logs)."),
    job_file: Path | None = typer.Option(
        None, "--job-file", help="A parametric job file to run instead of the shipped Monte Carlo example."
    ),
    timeout: float = typer.Option(600.0, "--timeout", min=1, help="Give up if the jobs are not final by then (s)."),
) -> None:
    """Run a server and N pilots here, submit the Monte Carlo example, and show how it goes.

    Exits 0 if every job is done. Everything runs in a temporary directory, removed at the end unless --keep.
    """
    if job_file is None:
        found = example_dir()
        if found is None:
            fail("the Monte Carlo example (examples/montecarlo/job.yaml) is not installed; pass --job-file", 2)
        job_file = found / "job.yaml"
    try:
        document = load_job_file(job_file)
    except ClientError as exc:
        fail(exc.message, 2)
    if not is_parametric(document):
        fail(f"{job_file} is not a parametric job ({{job, parameter_count}})", 2)
    assert isinstance(document, dict)
    document["parameter_count"] = jobs

    console = Console()
    workdir = Path(tempfile.mkdtemp(prefix="cloudpilot-demo-"))
    children = Children()
    keep_dir = keep
    try:
        with sigterm_as_interrupt():
            all_done = _run(console, children, workdir, document, job_file.resolve().parent, pilots, jobs, timeout)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping the pilots and the server[/yellow]")
        raise typer.Exit(130) from None
    except (DemoFailed, ClientError) as exc:
        keep_dir = True  # its logs say what went wrong
        fail(f"{exc}\n(the logs are kept in {workdir})")
    finally:
        children.stop_all()
        if keep_dir:
            console.print(f"data directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if not all_done:
        raise typer.Exit(1)


def _run(
    console: Console,
    children: Children,
    workdir: Path,
    document: dict[str, Any],
    base_dir: Path,
    pilots: int,
    jobs: int,
    timeout: float,
) -> bool:
    data_dir = workdir / "data"
    data_dir.mkdir()
    user_token, pilot_token = create_tokens(data_dir)
    with console.status("starting the server"):
        server, url = start_server(children, data_dir, user_token)
    console.print(f"server on {url} (data in {data_dir})")

    with CloudpilotClient(url, user_token) as client:
        started = time.monotonic()
        ids = client.submit(document, base_dir=base_dir)
        console.print(f"submitted {len(ids)} jobs ({escape(str(document['job'].get('name', 'job')))})")

        pilot_procs = []
        for i in range(pilots):
            # The token goes in the environment (the pilot reads $CLOUDPILOT_TOKEN): argv is visible in ps.
            argv = [sys.executable, "-m", "cloudpilot.pilot", "--server", url]
            argv += ["--cores", "1", "--idle-timeout", str(PILOT_IDLE_TIMEOUT)]
            argv += ["--workdir", str(workdir / f"pilot-{i}")]
            pilot_procs.append(children.start(argv, workdir / f"pilot-{i}.log", {"CLOUDPILOT_TOKEN": pilot_token}))
        console.print(f"started {pilots} pilots (logs: {workdir}/pilot-*.log)")

        columns = (
            TextColumn("{task.description:>9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TextColumn("{task.fields[clock]}"),
        )
        with Progress(*columns, console=console) as progress:
            finished = progress.add_task("finished", total=len(ids), detail="", clock="")
            running = progress.add_task("running", total=pilots, detail="", clock="")

            def show(counts: dict[str, int]) -> None:
                done, failed = counts.get("done", 0), counts.get("failed", 0) + counts.get("killed", 0)
                detail = f"[green]{done} done[/green] [red]{failed} failed[/red]"
                clock = f"{time.monotonic() - started:5.0f} s"
                progress.update(finished, completed=done + failed, detail=detail, clock=clock)
                waiting = counts.get("waiting", 0) + counts.get("matched", 0)
                progress.update(running, completed=counts.get("running", 0), detail=f"{waiting} waiting")
                _check_alive(server, pilot_procs, counts, workdir)

            try:
                counts = client.wait(ids, poll=0.5, timeout=timeout, on_progress=show)
            except WaitTimedOut as exc:
                raise DemoFailed(f"{exc.message} (--timeout)") from exc
        wall = time.monotonic() - started
        final_jobs = [j for j in client.iter_jobs(after_id=ids[0] - 1) if j["id"] <= ids[-1]]

    console.print(_summary(counts, wall, final_jobs))
    with console.status("waiting for the pilots to run out of work and exit"):
        deadline = time.monotonic() + PILOT_EXIT_SECONDS
        for proc in pilot_procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
    codes = [p.poll() for p in pilot_procs]
    console.print(f"pilots exited with codes {', '.join('still running' if c is None else str(c) for c in codes)}")
    children.stop(server)
    return counts.get("done", 0) == len(ids)


def _check_alive(
    server: subprocess.Popen[bytes], pilots: list[subprocess.Popen[bytes]], counts: dict[str, int], workdir: Path
) -> None:
    """Stop waiting when nobody is left to run the jobs, instead of polling until the timeout."""
    if server.poll() is not None:
        raise DemoFailed(f"the server exited with code {server.returncode}:\n{log_tail(workdir / 'data/server.log')}")
    unfinished = sum(counts.get(s, 0) for s in ("waiting", "matched", "running"))
    if unfinished and all(p.poll() is not None for p in pilots):
        raise DemoFailed(
            f"every pilot exited with {unfinished} jobs unfinished; the last pilot's log:\n"
            f"{log_tail(workdir / f'pilot-{len(pilots) - 1}.log')}"
        )


def _summary(counts: dict[str, int], wall: float, jobs: list[dict[str, Any]]) -> Table:
    done = counts.get("done", 0)
    table = Table(title="demo summary", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("jobs done", f"[green]{done}[/green]")
    table.add_row("jobs failed", f"[red]{counts.get('failed', 0)}[/red]")
    if counts.get("killed"):
        table.add_row("jobs killed", str(counts["killed"]))
    table.add_row("wall time", f"{wall:.1f} s")
    table.add_row("throughput", f"{done / wall:.2f} jobs/s" if wall > 0 else "")
    per_pilot = Counter(j["pilot_id"] for j in jobs if j["state"] == "done" and j["pilot_id"])
    for pilot_id, n in sorted(per_pilot.items()):
        table.add_row(f"pilot {escape(pilot_id)}", f"{n} jobs")
    failures = [j for j in jobs if j["state"] == "failed"]
    if failures:
        first = failures[0]
        table.add_row("first failure", escape(f"job {first['id']}: {first['failure_reason'] or 'no reason'}"))
    return table
