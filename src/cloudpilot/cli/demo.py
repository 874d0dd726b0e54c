"""``cloudpilot demo``: a server with two local clouds runs the Monte Carlo example end to end through the
provisioner: the queued jobs make it boot VMs, each VM's pilot runs jobs, idle VMs power off and are destroyed.

Nobody starts a pilot by hand. The demo samples jobs and VMs every half second, draws them in a PNG, and exits
0 only if every job is done and every VM is destroyed afterwards.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import pwd
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
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import typer
import yaml
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table

import cloudpilot
from cloudpilot.cli.common import fail, styled_state
from cloudpilot.cli.vms import clouds_table, vm_counts, vms_table
from cloudpilot.client import ClientError, CloudpilotClient, load_job_file
from cloudpilot.client.jobfile import is_parametric
from cloudpilot.domain.job_states import JobState
from cloudpilot.domain.vms import VMState

if TYPE_CHECKING:  # the configuration models are loaded by the demo itself, not by every other command
    from cloudpilot.config import ServerConfig

SERVER_START_SECONDS = 30.0  # a cold start imports FastAPI and migrates a fresh SQLite database
SAMPLE_SECONDS = 0.5  # how often jobs and VMs are sampled (for the live view and the plot)
TEARDOWN_SECONDS = 60.0  # how long the idle VMs get to power off and be destroyed once the jobs are final
STOP_SECONDS = 10.0  # grace between SIGTERM and SIGKILL when stopping the server
PLOT_FILE = "cloudpilot-demo.png"

# The server configuration of the demo: two local clouds, the free one filled first (examples/server.yaml has
# the same clouds, for the README), short idle times so the VMs go away soon after the last job.
DEMO_CONFIG: dict[str, Any] = {
    "clouds": {
        "local-a": {
            "driver": "local",
            "flavors": {"small": {"cores": 2, "memory_mb": 4096}},
            "max_vms": 3,
            "boot_seconds": 1,
            "start_rate_per_minute": 60,
            "tags": ["el9"],
        },
        "local-b": {
            "driver": "local",
            "flavors": {"large": {"cores": 4, "memory_mb": 8192}},
            "max_vms": 1,
            "boot_seconds": 2,
            "start_rate_per_minute": 60,
            "price_per_core_hour": 0.02,
            "tags": ["el9"],
        },
    },
    "policy": {"idle_seconds": 20},
    "provisioner": {"interval_seconds": 1, "pilot_idle_timeout_seconds": 8},
}

JOB_STATES = [s.value for s in JobState]
FINAL_JOB_STATES = [s.value for s in JobState if s.is_final]


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
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file ('' if it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Children:
    """The subprocesses of the demo, each in its own session so that stopping one also stops its children."""

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


def write_config(path: Path) -> ServerConfig:
    """Write the demo's server configuration to ``path`` and read it back the way the server will."""
    from cloudpilot.config import ConfigError, load_config

    # The demo's VMs run its payloads as you: run as root, local clouds would use nobody (payload_user), who
    # cannot reach the demo's private temporary directory.
    me = pwd.getpwuid(os.geteuid()).pw_name
    clouds = {name: {**cloud, "payload_user": me} for name, cloud in DEMO_CONFIG["clouds"].items()}
    path.write_text(yaml.safe_dump({**DEMO_CONFIG, "clouds": clouds}, sort_keys=False))
    try:
        return load_config(path)
    except ConfigError as exc:
        raise DemoFailed(f"the demo's own configuration is refused: {exc}") from exc


def create_tokens(config: ServerConfig, data_dir: Path) -> tuple[str, str]:
    """An admin token (to watch the VMs) and a user token of the VO ``demo``, written straight into the store."""
    from cloudpilot.domain.auth import Role
    from cloudpilot.services.tokens import issue_token
    from cloudpilot.store.database import Database
    from cloudpilot.store.migrations import upgrade
    from cloudpilot.store.tokens import TokenRepository

    db = Database(config.database_url_for(data_dir))
    try:
        upgrade(db)
        tokens = TokenRepository(db)
        now = time.time()
        admin = issue_token(tokens, Role.ADMIN, "demo-admin", now)
        user = issue_token(tokens, Role.USER, "demo", now, vo="demo")
    finally:
        db.dispose()
    return admin.token, user.token


def start_server(
    children: Children, data_dir: Path, config_file: Path, token: str
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``cloudpilot server`` on a free port and wait until it answers; retry if the port was taken meanwhile."""
    log = data_dir / "server.log"
    for _ in range(3):
        port = free_port()
        argv = [sys.executable, "-m", "cloudpilot.cli.main", "server", "--data-dir", str(data_dir)]
        argv += ["--config", str(config_file), "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
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


def destroy_leftovers(config: ServerConfig, data_dir: Path) -> list[str]:
    """Destroy every local VM still under DATA_DIR/clouds/ (the server is stopped by then); return their ids.

    VMs run in sessions of their own, so stopping the server does not stop them; after an aborted demo this is
    what keeps their pilots and payloads from running on.
    """
    from cloudpilot.clouds.errors import CloudError
    from cloudpilot.clouds.local import LocalCloudDriver
    from cloudpilot.config.clouds import LocalCloudConfig

    destroyed: list[str] = []
    for name, settings in config.clouds.items():
        root = data_dir / "clouds" / name
        if not isinstance(settings, LocalCloudConfig) or not root.is_dir():
            continue
        flavors = dict(zip(settings.flavors, settings.flavor_list(), strict=True))
        driver = LocalCloudDriver(name, root, flavors, max_vms=settings.max_vms)
        for instance in driver.list():
            try:
                driver.destroy(instance.instance_id)
            except (CloudError, OSError) as exc:
                typer.echo(f"warning: cannot destroy VM {instance.instance_id} under {root}: {exc}", err=True)
            else:
                destroyed.append(instance.instance_id)
    return destroyed


# -- watching ---------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One look at the system, ``at`` seconds after the submission."""

    at: float
    running_jobs: int
    running_vms: dict[str, int]


@dataclass
class Observed:
    """What the demo saw, for the plot and the summary."""

    clouds: list[str]
    max_vms: dict[str, int]
    total_jobs: int
    samples: list[Sample] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    vms: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    jobs_final_after: float | None = None  # seconds from the submission until every job was final
    vms_gone_after: float | None = None  # ... until every VM was destroyed

    def unfinished(self) -> int:
        return sum(n for state, n in self.counts.items() if state not in FINAL_JOB_STATES)

    def live_vms(self) -> list[dict[str, Any]]:
        return [vm for vm in self.vms if vm["state"] != VMState.DESTROYED.value]


def live_view(seen: Observed, elapsed: float, phase: str) -> RenderableType:
    """Jobs per state with bars, and VMs per state per cloud."""
    total = max(seen.total_jobs, 1)
    final = sum(seen.counts.get(s, 0) for s in FINAL_JOB_STATES)
    jobs = Table(box=None, show_header=False, padding=(0, 1))
    jobs.add_column(justify="right")
    jobs.add_column()
    jobs.add_column(justify="right")
    jobs.add_row("[bold]final[/bold]", ProgressBar(total=total, completed=final, width=40), f"{final}/{total}")
    for state in JOB_STATES:
        n = seen.counts.get(state, 0)
        jobs.add_row(styled_state(state), ProgressBar(total=total, completed=n, width=40), str(n))

    vms = Table(box=None, show_header=False, padding=(0, 1), title="VMs", title_justify="left")
    vms.add_column(justify="right")
    vms.add_column()
    vms.add_column(justify="right")
    vms.add_column()
    per_cloud: dict[str, Counter[str]] = {name: Counter() for name in seen.clouds}
    for vm in seen.vms:
        per_cloud.setdefault(vm["cloud"], Counter())[vm["state"]] += 1
    for name, counts in per_cloud.items():
        most = max(seen.max_vms.get(name, 0), 1)
        running = counts.pop(VMState.RUNNING.value, 0)
        vms.add_row(
            escape(name),
            ProgressBar(total=most, completed=running, width=20),
            f"{running}/{most} {styled_state(VMState.RUNNING.value)}",
            vm_counts(counts),
        )
    return Group(f"[bold]{elapsed:5.0f} s[/bold]  {phase}", jobs, vms)


def watch(
    console: Console,
    user: CloudpilotClient,
    admin: CloudpilotClient,
    server: subprocess.Popen[bytes],
    server_log: Path,
    seen: Observed,
    timeout: float,
) -> None:
    """Sample every SAMPLE_SECONDS until every job is final, then until every VM is destroyed (or time is up)."""
    try:
        with Live(live_view(seen, 0, "running the jobs"), console=console, refresh_per_second=4) as live:
            _sample_until_done(live, user, admin, server, server_log, seen, timeout)
    finally:
        if not console.is_terminal:
            console.line()  # the live view's last picture ends without a newline when not on a terminal


def _sample_until_done(
    live: Live,
    user: CloudpilotClient,
    admin: CloudpilotClient,
    server: subprocess.Popen[bytes],
    server_log: Path,
    seen: Observed,
    timeout: float,
) -> None:
    """The sampling loop of :func:`watch`; each sample is also a new picture of the live view."""
    submitted = time.monotonic()
    phase = "running the jobs"
    while True:
        at = time.monotonic() - submitted
        if server.poll() is not None:
            raise DemoFailed(f"the server exited with code {server.returncode}:\n{log_tail(server_log)}")
        seen.counts = user.summary()
        seen.vms = admin.vms()
        running = Counter(vm["cloud"] for vm in seen.vms if vm["state"] == VMState.RUNNING.value)
        running_jobs = seen.counts.get(JobState.RUNNING.value, 0)
        seen.samples.append(Sample(at, running_jobs, {name: running[name] for name in seen.clouds}))
        if seen.jobs_final_after is None and not seen.unfinished():
            seen.jobs_final_after = at
            phase = "jobs final; waiting for the idle VMs to power off and be destroyed"
        if seen.jobs_final_after is not None and not seen.live_vms():
            seen.vms_gone_after = at
            live.update(live_view(seen, at, "every job final, every VM destroyed"))
            return
        live.update(live_view(seen, at, phase))
        if seen.jobs_final_after is None and at > timeout:
            raise DemoFailed(f"{seen.unfinished()} jobs are not final after {timeout:g} s (--timeout)")
        if seen.jobs_final_after is not None and at - seen.jobs_final_after > TEARDOWN_SECONDS:
            return
        time.sleep(max(0.0, SAMPLE_SECONDS - (time.monotonic() - submitted - at)))


# -- reporting --------------------------------------------------------------------------------------------------


def write_plot(path: Path, seen: Observed, title: str) -> None:
    """Running VMs per cloud (top) and running jobs (bottom) over time, as a PNG drawn with matplotlib's Agg."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    times = [s.at for s in seen.samples]
    figure = Figure(figsize=(9, 6), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True)
    for name in seen.clouds:
        top.step(times, [s.running_vms.get(name, 0) for s in seen.samples], where="post", label=name, linewidth=2)
    top.set_ylabel("running VMs")
    top.set_title("VMs running per cloud")
    bottom.step(times, [s.running_jobs for s in seen.samples], where="post", label="running jobs", color="tab:green")
    bottom.set_ylabel("running jobs")
    bottom.set_xlabel("seconds since submission")
    bottom.set_title("jobs running")
    peaks = (
        max((max(s.running_vms.values(), default=0) for s in seen.samples), default=0),
        max((s.running_jobs for s in seen.samples), default=0),
    )
    for axes, peak in zip((top, bottom), peaks, strict=True):
        if seen.jobs_final_after is not None:
            axes.axvline(seen.jobs_final_after, color="grey", linestyle="--", label="all jobs final")
        axes.set_ylim(0, max(peak, 1) * 1.4)  # room above the lines for the legend
        axes.yaxis.get_major_locator().set_params(integer=True)
        axes.grid(alpha=0.3)
        axes.legend(loc="upper right", ncols=3)
    figure.suptitle(title)
    figure.savefig(path)


def vm_core_seconds(vms: list[dict[str, Any]], now: float) -> float:
    """Cores times seconds from each VM's boot (its pilot's registration) to its end (or now)."""
    return sum(vm["cores"] * max(0.0, (vm["terminated_at"] or now) - vm["booted_at"]) for vm in vms if vm["booted_at"])


def busy_core_seconds(jobs: list[dict[str, Any]]) -> float:
    """Cores times seconds the done jobs ran (their last attempt)."""
    return sum(
        j["cores"] * max(0.0, j["finished_at"] - j["started_at"])
        for j in jobs
        if j["state"] == JobState.DONE.value and j["started_at"] is not None and j["finished_at"] is not None
    )


def summary_table(seen: Observed, now: float) -> Table:
    """Jobs, times, VMs per cloud and how busy the VMs were."""
    done = seen.counts.get(JobState.DONE.value, 0)
    table = Table(title="demo summary", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("jobs done", f"[green]{done}[/green] of {seen.total_jobs}")
    table.add_row("jobs failed", f"[red]{seen.counts.get(JobState.FAILED.value, 0)}[/red]")
    if seen.counts.get(JobState.KILLED.value):
        table.add_row("jobs killed", str(seen.counts[JobState.KILLED.value]))
    wall = seen.jobs_final_after
    table.add_row("wall time (submission → jobs final)", "" if wall is None else f"{wall:.1f} s")
    table.add_row("throughput", f"{done / wall:.2f} jobs/s" if wall else "")
    gone = seen.vms_gone_after
    table.add_row("submission → every VM destroyed", "not yet" if gone is None else f"{gone:.1f} s")
    for name in seen.clouds:
        mine = [vm for vm in seen.vms if vm["cloud"] == name]
        failed = sum(1 for vm in mine if vm["failure_reason"])
        jobs_run = sum(vm["jobs_run"] for vm in mine)
        table.add_row(f"VMs on {escape(name)}", f"{len(mine)} started, {failed} failed, {jobs_run} jobs run")
    vm_seconds = vm_core_seconds(seen.vms, now)
    busy = busy_core_seconds(seen.jobs)
    table.add_row("VM core-seconds (boot → destroyed)", f"{vm_seconds:.0f}")
    table.add_row("busy core-seconds (jobs running)", f"{busy:.0f}")
    table.add_row("idle core-seconds", f"{max(0.0, vm_seconds - busy):.0f}")
    table.add_row("busy share", f"{100 * busy / vm_seconds:.0f} %" if vm_seconds else "")
    failures = [j for j in seen.jobs if j["state"] == JobState.FAILED.value]
    if failures:
        first = failures[0]
        table.add_row("first failure", escape(f"job {first['id']}: {first['failure_reason'] or 'no reason'}"))
    return table


# -- the command ------------------------------------------------------------------------------------------------


def demo(
    jobs: int = typer.Option(200, "--jobs", min=1, max=100_000, help="How many Monte Carlo jobs to run."),
    keep: bool = typer.Option(False, "--keep", help="Keep the data directory (database, sandboxes, logs)."),
    job_file: Path | None = typer.Option(
        None, "--job-file", help="A parametric job file to run instead of the shipped Monte Carlo example."
    ),
    timeout: float = typer.Option(600.0, "--timeout", min=1, help="Give up if the jobs are not final by then (s)."),
) -> None:
    """Run a server with two local clouds, submit the Monte Carlo example, and watch VMs come and go.

    The provisioner boots local VMs for the queued jobs, their pilots run them, and idle VMs are destroyed.
    Exits 0 if every job is done and every VM destroyed. Everything runs in a temporary directory, removed at
    the end (but for the plot) unless --keep.
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
    data_dir = workdir / "data"
    children = Children()
    config: ServerConfig | None = None
    keep_dir = keep
    success = False
    try:
        with sigterm_as_interrupt():
            config = write_config(workdir / "server.yaml")
            success = _run(console, children, workdir, config, document, job_file.resolve().parent, jobs, timeout)
            keep_dir = keep_dir or not success  # the logs say what went wrong
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping the server and its VMs[/yellow]")
        raise typer.Exit(130) from None
    except (DemoFailed, ClientError) as exc:
        keep_dir = True
        fail(f"{exc}\n(the logs are kept in {workdir})")
    finally:
        _clean_up(console, children, config, data_dir, workdir, keep_dir)
    if not success:
        raise typer.Exit(1)


def _clean_up(
    console: Console, children: Children, config: ServerConfig | None, data_dir: Path, workdir: Path, keep: bool
) -> None:
    children.stop_all()
    if config is not None:
        leftovers = destroy_leftovers(config, data_dir)
        if leftovers:
            console.print(f"[yellow]destroyed {len(leftovers)} VM(s) the server left: {', '.join(leftovers)}[/yellow]")
    if keep:
        console.print(f"data directory kept: {workdir}", soft_wrap=True)
        return
    for entry in workdir.iterdir():  # all but the plot
        if entry.name != PLOT_FILE:
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        workdir.rmdir()  # only if there is no plot in it


def _run(
    console: Console,
    children: Children,
    workdir: Path,
    config: ServerConfig,
    document: dict[str, Any],
    base_dir: Path,
    jobs: int,
    timeout: float,
) -> bool:
    data_dir = workdir / "data"
    data_dir.mkdir()
    admin_token, user_token = create_tokens(config, data_dir)
    with console.status("starting the server"):
        server, url = start_server(children, data_dir, workdir / "server.yaml", admin_token)
    console.print(f"server on {url} (data in {data_dir})", soft_wrap=True)

    with CloudpilotClient(url, user_token) as user, CloudpilotClient(url, admin_token) as admin:
        clouds = admin.clouds()
        console.print(clouds_table(clouds, title="clouds"))
        ids = user.submit(document, base_dir=base_dir)
        name = escape(str(document["job"].get("name", "job")))
        console.print(f"submitted {len(ids)} jobs ({name}); the provisioner starts VMs for them")
        seen = Observed([c["name"] for c in clouds], {c["name"]: c["max_vms"] for c in clouds}, len(ids))
        watch(console, user, admin, server, data_dir / "server.log", seen, timeout)
        seen.jobs = [j for j in user.iter_jobs(after_id=ids[0] - 1) if j["id"] <= ids[-1]]
        seen.vms = admin.vms()

    plot = workdir / PLOT_FILE
    write_plot(plot, seen, f"cloudpilot demo: {len(ids)} jobs on {len(clouds)} local clouds")
    console.print(summary_table(seen, time.time()))
    console.print(f"plot: {plot}", soft_wrap=True)
    all_done = seen.counts.get(JobState.DONE.value, 0) == len(ids)
    left = seen.live_vms()
    if left:
        console.print(vms_table(left, title=f"[red]{len(left)} VMs not destroyed after {TEARDOWN_SECONDS:g} s[/red]"))
    if not all_done:
        console.print(f"[red]{len(ids) - seen.counts.get(JobState.DONE.value, 0)} jobs are not done[/red]")
    return all_done and not left
