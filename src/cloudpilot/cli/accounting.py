"""``cloudpilot accounting report|export``: usage totals, a plot of core-hours per VO, and APEL records."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cloudpilot.cli.common import JsonOption, TokenOption, UrlOption, connect, emitted_json, fail, when
from cloudpilot.domain.accounting import parse_group_by, parse_time

app = typer.Typer(help="Usage accounting: reports and APEL export.", no_args_is_help=True)

SinceOption = typer.Option(
    None, "--since", metavar="DATE", help="Records that ended at or after DATE (YYYY-MM-DD[THH:MM], local time)."
)
UntilOption = typer.Option(None, "--until", metavar="DATE", help="Records that ended before DATE (local time).")


def _window(since: str | None, until: str | None) -> tuple[float | None, float | None]:
    """DATEs in local time, like the times the CLI prints; sent to the server as UNIX seconds."""
    try:
        low = None if since is None else parse_time(since, local=True)
        high = None if until is None else parse_time(until, local=True)
    except ValueError as exc:
        fail(str(exc), 2)
    if low is not None and high is not None and high <= low:
        fail("--until must be later than --since", 2)
    return low, high


@app.command("report")
def report(
    by: str = typer.Option("vo", "--by", help="Group by any of vo, site, cloud (comma-separated)."),
    since: str | None = SinceOption,
    until: str | None = UntilOption,
    plot: Path | None = typer.Option(None, "--plot", metavar="FILE.png", help="Draw core-hours per VO over time."),
    as_json: bool = JsonOption,
    url: str | None = UrlOption,
    token: str | None = TokenOption,
) -> None:
    """Totals of the VMs and jobs that ended in the window, grouped by VO, site and/or cloud."""
    try:
        parse_group_by(by)
    except ValueError as exc:
        fail(f"--by: {exc}", 2)
    low, high = _window(since, until)
    with connect(url, token) as client:
        found = client.accounting_report(by, low, high)
    if plot is not None:
        plot_core_hours(found["series"], plot)
    if emitted_json(found, as_json):
        return
    Console().print(report_table(found))
    if plot is not None:
        typer.echo(f"plot written to {plot}")


def report_table(found: dict[str, Any]) -> Table:
    keys = list(found["by"])
    title = "usage" + (f" by {', '.join(keys)}" if keys else "")
    if found["since"] is not None or found["until"] is not None:
        title += f" (ended {when(found['since']) or '…'} to {when(found['until']) or '…'})"
    table = Table(
        *keys, "VMs", "core-h", "wall h", "CPU h", "HS06-h", "cost", "jobs", "done", "failed", "job core-h",
        title=title,
    )  # fmt: skip
    rows = [(row, False) for row in found["rows"]] + [(found["total"], True)]
    for index, (row, is_total) in enumerate(rows):
        if is_total:
            cells = ["total", *[""] * (len(keys) - 1)] if keys else []
        else:
            cells = [escape(str(row["key"][k] or "-")) for k in keys]
        vms, jobs = row["vms"], row["jobs"]
        table.add_row(
            *cells,
            str(vms["vms"]),
            f"{vms['core_hours']:,.2f}",
            f"{vms['wall_hours']:,.2f}",
            f"{vms['cpu_hours']:,.2f}",
            f"{vms['hs06_hours']:,.1f}",
            f"{vms['cost']:,.2f}",
            str(jobs["jobs"]),
            str(jobs["done"]),
            str(jobs["failed"]),
            f"{jobs['core_hours']:,.2f}",
            style="bold" if is_total else None,
            end_section=index == len(rows) - 2,  # a rule above the total
        )
    return table


def plot_core_hours(series: dict[str, Any], path: Path) -> None:
    """Stacked bars of core-hours per VO and time bucket, as a PNG (Agg: no display needed)."""
    from matplotlib import dates
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 5), dpi=100)
    axes = figure.add_subplot()
    starts = [datetime.datetime.fromtimestamp(t) for t in series["starts"]]
    width = series["bucket_seconds"] / 86400.0  # matplotlib dates count days
    bottom = [0.0] * len(starts)
    for vo, bars in sorted(series["core_hours"].items()):
        axes.bar(dates.date2num(starts), bars, width=width, bottom=bottom, align="edge", label=vo)
        bottom = [b + h for b, h in zip(bottom, bars, strict=True)]
    if starts:
        axes.xaxis_date()
        axes.legend(title="VO")
    else:
        axes.text(0.5, 0.5, "no usage in this window", ha="center", va="center", transform=axes.transAxes)
    axes.set_ylabel(f"core-hours per {_duration(series['bucket_seconds'])}")
    axes.set_title("core-hours of VMs per VO")
    figure.autofmt_xdate()
    try:
        figure.savefig(path, format="png")
    except OSError as exc:
        fail(f"cannot write {path}: {exc}")


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


@app.command("export")
def export(
    fmt: str = typer.Option("apel", "--format", help="apel: APEL cloud usage records, message format v0.4."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write here instead of standard output."),
    since: str | None = SinceOption,
    until: str | None = UntilOption,
    url: str | None = UrlOption,
    token: str | None = TokenOption,
) -> None:
    """Export the records of the VMs that ended in the window (APEL: one message, to stdout by default)."""
    if fmt != "apel":
        fail(f"--format {fmt!r} is not known: the only format is apel", 2)
    low, high = _window(since, until)
    with connect(url, token) as client:
        text = client.accounting_apel(low, high)
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {output}: {exc}")
    typer.echo(f"{text.count('%%')} records written to {output}", err=True)
