"""``cloudpilot cluster create|list|status|scale|delete``: clusters of services (docs/clusters.md)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cloudpilot.cli.common import (
    JsonOption,
    TokenOption,
    UrlOption,
    connect,
    emitted_json,
    fail,
    short_when,
    styled_state,
)

app = typer.Typer(help="Clusters of services: create, scale, show, delete.", no_args_is_help=True)

IdArgument = typer.Argument(..., metavar="ID", help="The cluster's id.")


@app.command("create")
def create(
    file: Path = typer.Argument(..., metavar="FILE", help="The cluster definition (YAML or JSON)."),
    as_json: bool = JsonOption,
    url: str | None = UrlOption,
    token: str | None = TokenOption,
) -> None:
    """Instantiate a cluster definition; its services start in dependency order."""
    try:
        definition = yaml.safe_load(file.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {file}: {exc}", 2)
    except yaml.YAMLError as exc:
        fail(f"{file} is not valid YAML: {exc}", 2)
    if not isinstance(definition, dict):
        fail(f"{file} must hold one cluster definition (a mapping with name and services)", 2)
    with connect(url, token) as client:
        cluster = client.create_cluster(definition)
    if emitted_json(cluster, as_json):
        return
    order = " -> ".join(s["name"] for s in cluster["services"])
    typer.echo(f"cluster {cluster['id']} ({cluster['name']}) created; services start in order: {order}")


@app.command("list")
def list_clusters(as_json: bool = JsonOption, url: str | None = UrlOption, token: str | None = TokenOption) -> None:
    """Your clusters (an admin's token: all of them)."""
    with connect(url, token) as client:
        found = client.clusters()
    if emitted_json(found, as_json):
        return
    now = time.time()
    table = Table("id", "name", "vo", "owner", "state", "services", "created", title=f"{len(found)} clusters")
    for cluster in found:
        services = ", ".join(f"{escape(s['name'])} {_live(s)}/{s['desired']}" for s in cluster["services"])
        table.add_row(
            str(cluster["id"]),
            escape(cluster["name"]),
            escape(cluster["vo"]),
            escape(cluster["owner"]),
            styled_state(cluster["state"]),
            services,
            short_when(cluster["created_at"], now),
        )
    Console().print(table)


@app.command("status")
def status(
    cluster_id: int = IdArgument,
    as_json: bool = JsonOption,
    url: str | None = UrlOption,
    token: str | None = TokenOption,
) -> None:
    """Each service of a cluster with its instances and their states."""
    with connect(url, token) as client:
        cluster = client.cluster(cluster_id)
    if emitted_json(cluster, as_json):
        return
    Console().print(status_table(cluster))


def status_table(cluster: dict[str, Any]) -> Table:
    now = time.time()
    title = f"cluster {cluster['id']} {escape(cluster['name'])} ({cluster['vo']}): {styled_state(cluster['state'])}"
    table = Table("service", "instances", "VM", "state", "ready", "endpoint", "created", title=title)
    for service in cluster["services"]:
        head = (
            f"{escape(service['name'])}\n[dim]{service['min']}..{service['max']}"
            + (f", after {escape(', '.join(service['depends_on']))}" if service["depends_on"] else "")
            + "[/dim]"
        )
        count = f"{_live(service)}/{service['desired']}" + (" ready" if service["ready"] else "")
        if service["note"]:
            count += f"\n[yellow]{escape(service['note'])}[/yellow]"
        if not service["instances"]:
            table.add_row(head, count, "", "", "", "", "")
        for index, vm in enumerate(service["instances"]):
            table.add_row(
                head if index == 0 else "",
                count if index == 0 else "",
                escape(vm["vm_id"]),
                styled_state(vm["state"]),
                "yes" if vm["ready"] else "",
                escape(vm["endpoint"] or ""),
                short_when(vm["created_at"], now),
            )
    return table


def _live(service: dict[str, Any]) -> int:
    return sum(vm["state"] in ("requested", "booting", "running") for vm in service["instances"])


@app.command("scale")
def scale(
    cluster_id: int = IdArgument,
    service: str = typer.Argument(..., metavar="SERVICE", help="The service to scale."),
    instances: int = typer.Argument(..., metavar="N", min=0, help="How many instances it should have."),
    url: str | None = UrlOption,
    token: str | None = TokenOption,
) -> None:
    """Scale a service of a cluster to N instances (within its min and max)."""
    with connect(url, token) as client:
        cluster = client.scale_cluster(cluster_id, service, instances)
    typer.echo(f"cluster {cluster['id']}: service {service} scaled to {instances}")


@app.command("delete")
def delete(cluster_id: int = IdArgument, url: str | None = UrlOption, token: str | None = TokenOption) -> None:
    """Tear a cluster down: its services stop in reverse dependency order."""
    with connect(url, token) as client:
        cluster = client.delete_cluster(cluster_id)
    typer.echo(f"cluster {cluster['id']} ({cluster['name']}) is {cluster['state']}")
