"""``cloudpilot submit|jobs|job|kill|output|wait``: a user's jobs, through the REST API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cloudpilot.cli.common import (
    JsonOption,
    TokenOption,
    UrlOption,
    connect,
    emitted_json,
    fail,
    styled_state,
    text,
    when,
)
from cloudpilot.client import WaitTimedOut, load_job_file
from cloudpilot.domain.jobs import JobState

FINAL = [s.value for s in JobState if s.is_final]
NOT_FINAL = [s.value for s in JobState if not s.is_final]


def submit(
    file: Path = typer.Argument(..., help="Job file (JSON or YAML): a job, a list of jobs or a parametric job."),
    url: str | None = UrlOption,
    token: str | None = TokenOption,
) -> None:
    """Submit the jobs of FILE and print their ids, one per line, in the order given.

    input_files are read relative to the directory of FILE, packed and uploaded once per distinct set.
    """
    with connect(url, token) as client:
        document = load_job_file(file)
        ids = client.submit(document, base_dir=file.resolve().parent)
    for job_id in ids:
        typer.echo(job_id)


def jobs(
    state: JobState | None = typer.Option(None, "--state", help="Only jobs in this state."),
    as_json: bool = JsonOption,
    url: str | None = UrlOption,
    token: str | None = TokenOption,
) -> None:
    """List your jobs, oldest first."""
    with connect(url, token) as client:
        found = client.jobs(state)
    if emitted_json(found, as_json):
        return
    table = Table("id", "name", "state", "attempts", "exit code", "failure reason", title=f"{len(found)} jobs")
    for job in found:
        table.add_row(
            str(job["id"]),
            escape(job["name"]),
            styled_state(job["state"]),
            f"{job['attempts']}/{job['max_attempts']}",
            text(job["exit_code"]),
            escape(text(job["failure_reason"])),
        )
    Console().print(table)


def job(
    job_id: int = typer.Argument(..., metavar="ID", help="The job's id."),
    as_json: bool = JsonOption,
    url: str | None = UrlOption,
    token: str | None = TokenOption,
) -> None:
    """Show one job: its description, where it is, and its history."""
    with connect(url, token) as client:
        found = client.job(job_id)
    if emitted_json(found, as_json):
        return
    console = Console()
    console.print(_details(found))
    history = Table("at", "from", "to", "reason", title="history")
    for event in found.get("history", []):
        history.add_row(
            when(event["at"]),
            styled_state(text(event["from_state"])),
            styled_state(event["to_state"]),
            escape(text(event["reason"])),
        )
    console.print(history)


def _details(found: dict[str, Any]) -> Table:
    spec = found.get("spec", {})
    command = " ".join([spec.get("executable", ""), *spec.get("arguments", [])])
    rows = [
        ("id", str(found["id"])),
        ("name", escape(found["name"])),
        ("owner", escape(f"{found['owner']} ({found['vo']})")),
        ("state", styled_state(found["state"])),
        ("command", escape(command)),
        ("attempts", f"{found['attempts']}/{found['max_attempts']}"),
        ("exit code", text(found["exit_code"])),
        ("failure reason", escape(text(found["failure_reason"]))),
        ("pilot", text(found["pilot_id"])),
        ("cores", str(found["cores"])),
        ("wall limit", f"{found['wall_seconds']} s"),
        ("submitted", when(found["submitted_at"])),
        ("started", when(found["started_at"])),
        ("finished", when(found["finished_at"])),
        ("cpu", "" if found["cpu_seconds"] is None else f"{found['cpu_seconds']:.1f} s"),
        ("max rss", "" if found["max_rss_bytes"] is None else f"{found['max_rss_bytes'] / 2**20:.1f} MiB"),
        ("progress", escape(text(found["progress"]))),
        ("output", "yes" if found["has_output"] else "no"),
    ]
    if found.get("blocked_reason"):  # why no VM can be booted for it (docs/images.md)
        rows.insert(4, ("blocked", f"[red]{escape(found['blocked_reason'])}[/red]"))
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    return table


def kill(
    job_id: int = typer.Argument(..., metavar="ID", help="The job's id."),
    url: str | None = UrlOption,
    token: str | None = TokenOption,
) -> None:
    """Kill a job that is not final yet."""
    with connect(url, token) as client:
        killed = client.kill(job_id)
    typer.echo(f"job {killed['id']} is {killed['state']}")


def output(
    job_id: int = typer.Argument(..., metavar="ID", help="The job's id."),
    dest: Path = typer.Option(..., "--dest", help="Directory to extract the outputs into (created if needed)."),
    url: str | None = UrlOption,
    token: str | None = TokenOption,
) -> None:
    """Download a job's outputs (its output_files and job.log) into DEST and print the files written."""
    with connect(url, token) as client:
        paths = client.output(job_id, dest)
    for path in paths:
        typer.echo(path)


def wait(
    ids: list[int] | None = typer.Argument(None, metavar="IDS", help="Jobs to wait for (default: all yours)."),
    poll: float = typer.Option(1.0, "--poll", min=0.1, help="Seconds between polls."),
    timeout: float | None = typer.Option(None, "--timeout", min=0, help="Give up after this many seconds."),
    url: str | None = UrlOption,
    token: str | None = TokenOption,
) -> None:
    """Wait until the jobs are final, then print a count per final state.

    Exit 0 if all are done, 1 if any failed or was killed (or on timeout).
    """
    console = Console(stderr=True)  # the bar goes to stderr so stdout keeps only the counts
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    counts: dict[str, int] = {}
    with connect(url, token) as client, Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("waiting", total=len(ids) if ids else None)

        def show(now: dict[str, int]) -> None:
            finished = sum(now.get(s, 0) for s in FINAL)
            busy = ", ".join(f"{now[s]} {s}" for s in NOT_FINAL if now.get(s))
            progress.update(task, total=sum(now.values()), completed=finished, description=busy or "final")

        try:
            counts = client.wait(ids or None, poll=poll, timeout=timeout, on_progress=show)
        except WaitTimedOut as exc:
            progress.stop()
            _print_counts(exc.counts, with_active=True)
            fail(exc.message)
    _print_counts(counts)
    if counts.get("failed", 0) or counts.get("killed", 0):
        raise typer.Exit(1)


def _print_counts(counts: dict[str, int], with_active: bool = False) -> None:
    for state in (*FINAL, *(NOT_FINAL if with_active else ())):
        typer.echo(f"{state}: {counts.get(state, 0)}")
