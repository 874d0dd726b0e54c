"""``cloudpilot site drain|status``: a site admin's view and control of the site's VMs."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cloudpilot.cli.common import JsonOption, TokenOption, UrlOption, connect, emitted_json, when


def parse_deadline(text: str, now: float) -> float:
    """``+SECONDS`` from now, UNIX seconds, or an ISO 8601 time (UTC when it names no zone)."""
    text = text.strip()
    try:
        if text.startswith("+"):
            return now + float(text[1:])
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r} is not +SECONDS, UNIX seconds or an ISO 8601 time") from exc
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def drain(
    cloud: str | None = typer.Option(None, "--cloud", help="The cloud whose VMs are shut down."),
    vm: str | None = typer.Option(None, "--vm", help="Only this VM."),
    deadline: str | None = typer.Option(
        None, "--deadline", help="ISO 8601 time or +SECONDS; default now + 24 h (never sooner than grace_secs)."
    ),
    site: str | None = typer.Option(None, "--site", help="The site (default: the token's only site)."),
    reason: str = typer.Option("", "--reason", help="Why (shown to VMs' history and site status)."),
    as_json: bool = JsonOption,
    url: str | None = UrlOption,
    token: str | None = TokenOption,
) -> None:
    """Schedule the shutdown of the site's VMs (of one cloud, or one VM) by a deadline: they take no work that
    would not finish in time, halt when idle, and what is left at the deadline is destroyed and requeued."""
    if cloud is None and vm is None and site is None:
        raise typer.BadParameter("name what to drain: --cloud, --vm or --site")
    with connect(url, token) as client:
        target_site = site or _site_of(client, cloud)
        when_ = None if deadline is None else parse_deadline(deadline, time.time())
        shutdown = client.schedule_shutdown(target_site, cloud=cloud, vm_id=vm, deadline=when_, reason=reason)
    if emitted_json(shutdown, as_json):
        return
    scope = f"VM {vm}" if vm else f"cloud {cloud}" if cloud else f"site {target_site}"
    typer.echo(
        f"shutdown {shutdown['id']} of {scope} scheduled by {when(shutdown['deadline'])}: "
        f"{len(shutdown['vms'])} VM(s) affected"
    )


def cancel(
    shutdown_id: int = typer.Argument(..., metavar="ID", help="The shutdown's id (see site status)."),
    site: str | None = typer.Option(None, "--site", help="The site (default: the token's only site)."),
    url: str | None = UrlOption,
    token: str | None = TokenOption,
) -> None:
    """Cancel a scheduled shutdown: VMs keep only the deadlines of other shutdowns, and the clouds it closed
    take new VMs again."""
    with connect(url, token) as client:
        client.cancel_shutdown(site or _site_of(client, None), shutdown_id)
    typer.echo(f"shutdown {shutdown_id} cancelled")


def status(
    site: str | None = typer.Argument(None, help="The site (default: every site this token administers)."),
    as_json: bool = JsonOption,
    url: str | None = UrlOption,
    token: str | None = TokenOption,
) -> None:
    """Show a site: its clouds, pledges and running cores per VO, disabled VOs and pending shutdowns."""
    with connect(url, token) as client:
        found = [client.site(s) for s in ([site] if site else client.sites())]
    if emitted_json(found, as_json):
        return
    console = Console()
    for one in found:
        console.print(site_table(one))
        if one["shutdowns"]:
            console.print(shutdowns_table(one["shutdowns"]))


def site_table(site: dict[str, Any]) -> Table:
    table = Table("VO", "pledged cores", "running cores", "enabled", title=f"site {site['site']}")
    vos = sorted(set(site["pledges"]) | set(site["running_cores"]) | set(site["disabled_vos"]))
    for vo in vos:
        pledge = site["pledges"].get(vo)
        table.add_row(
            escape(vo),
            "-" if pledge is None else str(pledge["cores"]),
            str(site["running_cores"].get(vo, 0)),
            "[red]no[/red]" if vo in site["disabled_vos"] else "yes",
        )
    clouds = ", ".join(
        f"{c['name']} ({c['vms']}/{c['max_vms']} VMs{', vacuum' if c['mode'] == 'vacuum' else ''}"
        f"{', preemptible' if c['preemptible'] else ''})"
        for c in site["clouds"]
    )
    table.caption = f"clouds: {escape(clouds) or 'none'}"
    return table


def shutdowns_table(shutdowns: list[dict[str, Any]]) -> Table:
    table = Table("id", "scope", "deadline", "VMs", "reason", "by", title="pending shutdowns")
    for s in shutdowns:
        scope = f"VM {s['vm_id']}" if s["vm_id"] else f"cloud {s['cloud']}" if s["cloud"] else "whole site"
        table.add_row(
            str(s["id"]),
            escape(scope),
            when(s["deadline"]),
            escape(", ".join(s["vms"]) or "none"),
            escape(s["reason"]),
            escape(s["created_by"]),
        )
    return table


def _site_of(client: Any, cloud: str | None) -> str:
    if cloud is not None:
        for c in client.clouds():
            if c["name"] == cloud:
                return str(c["site"])
        raise typer.BadParameter(f"cloud {cloud} is not configured on the server", param_hint="--cloud")
    mine = client.sites()
    if len(mine) != 1:
        raise typer.BadParameter(f"this token administers {len(mine)} sites: name one with --site")
    return str(mine[0])
