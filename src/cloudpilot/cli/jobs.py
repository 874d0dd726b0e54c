"""``cloudpilot submit|jobs|job|kill|resubmit|output|wait``: a user's jobs, through the REST API."""

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
from cloudpilot.client import ClientError, WaitTimedOut, load_job_file
from cloudpilot.domain.job_states import JobState

NameOption = typer.Option(
    None, "--name", help="Only jobs whose name matches: a glob (* and ?, case-insensitive) or an exact name."
)
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
        done = client.submission(document, base_dir=file.resolve().parent)
    for warning in done.warnings:
        typer.echo(f"warning: {warning}", err=True)
    for job_id in done.ids:
        typer.echo(job_id)


def jobs(
    state: JobState | None = typer.Option(None, "--state", help="Only jobs in this state."),
    name: str | None = NameOption,
    limit: int | None = typer.Option(None, "--limit", min=1, help="Show only the first (oldest) N."),
    why: bool = typer.Option(False, "--why", help="Waiting jobs grouped by why they wait, with counts."),
    as_json: bool = JsonOption,
    url: str | None = UrlOption,
    token: str | None = TokenOption,
) -> None:
    """List your jobs, oldest first."""
    if why:
        if state not in (None, JobState.WAITING) or name is not None or limit is not None:
            raise typer.BadParameter("--why groups all your waiting jobs: use it alone or with --state waiting")
        _why_waiting(url, token, as_json)
        return
    with connect(url, token) as client:
        found = client.jobs(state, name=name, limit=limit)
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


def _why_waiting(url: str | None, token: str | None, as_json: bool) -> None:
    with connect(url, token) as client:
        groups = client.waiting_reasons()
    if emitted_json(groups, as_json):
        return
    total = sum(g["jobs"] for g in groups)
    table = Table("jobs", "why they wait", "e.g. job", title=f"{total} waiting jobs")
    for group in groups:
        table.add_row(str(group["jobs"]), escape(group["reason"]), str(group["example_job_id"]))
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
    reasons = found.get("waiting_reasons")
    if reasons:  # why it waits (docs/provisioning.md, "Why a job waits")
        lines = [f"[red]{escape(reasons['summary'])}[/red]"]
        lines += [f"{escape(cloud)}: {escape(why)}" for cloud, why in sorted(reasons.get("clouds", {}).items())]
        if reasons.get("pilots"):
            lines.append(f"pilots: {escape(reasons['pilots'])}")
        rows.insert(4, ("waits because", "\n".join(lines)))
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    return table


def kill(
    ids: list[int] | None = typer.Argument(None, metavar="[ID]...", help="The jobs' ids."),
    state: JobState | None = typer.Option(None, "--state", help="Every job of yours in this state."),
    name: str | None = NameOption,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    url: str | None = UrlOption,
    token: str | None = TokenOption,
) -> None:
    """Kill jobs that are not final yet: the IDs given, or every job matching --state and --name.

    Asks before killing more than one job (unless --yes). Exit 1 if any could not be killed.
    """
    if not ids and state is None and name is None:
        fail("name the jobs to kill: IDs, --state or --name", 2)
    if ids and (state is not None or name is not None):
        fail("give either IDs or --state/--name, not both", 2)
    with connect(url, token) as client:
        if not ids:
            if state is not None and state.is_final:
                fail(f"jobs in state {state.value} are final already; there is nothing to kill", 2)
            chosen = [j["id"] for j in client.jobs(state, name=name) if j["state"] in NOT_FINAL]
            if not chosen:
                typer.echo("no job to kill")
                return
        else:
            chosen = list(dict.fromkeys(ids))
        if len(chosen) > 1 and not yes:
            _confirm(f"kill {len(chosen)} jobs ({_id_list(chosen)})?")
        refused = 0
        for job_id in chosen:
            try:
                killed = client.kill(job_id)
            except ClientError as exc:  # one refusal (a final job, another user's) does not stop the others
                if len(chosen) == 1:
                    raise
                typer.echo(f"error: job {job_id}: {exc.message}", err=True)
                refused += 1
                continue
            typer.echo(f"job {killed['id']} is {killed['state']}")
    if refused:
        raise typer.Exit(1)


def resubmit(
    ids: list[int] = typer.Argument(..., metavar="ID...", help="Final jobs (done, failed or killed)."),
    url: str | None = UrlOption,
    token: str | None = TokenOption,
) -> None:
    """Submit final jobs again as new jobs (same description and input files); print the new ids.

    The new ids come one per line, in the order given; nothing is submitted unless every job can be.
    """
    with connect(url, token) as client:
        new_ids = client.resubmit(ids)
    for job_id in new_ids:
        typer.echo(job_id)


def _confirm(question: str) -> None:
    """Ask on the terminal; anything but yes leaves with exit 1 (no terminal: use --yes)."""
    if not typer.confirm(question, default=False, err=True):
        fail("nothing killed")


def _id_list(ids: list[int], shown: int = 10) -> str:
    head = ", ".join(str(i) for i in ids[:shown])
    return head if len(ids) <= shown else f"{head}, … {len(ids) - shown} more"


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
