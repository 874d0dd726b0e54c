"""``cloudpilot clouds|vms|vm show|vm stop``: the configured clouds and the VMs the provisioner started there."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cloudpilot.cli.common import (
    JsonOption,
    TokenOption,
    UrlOption,
    connect,
    emitted_json,
    short_when,
    styled_state,
    text,
    when,
)
from cloudpilot.domain.vms import VMState

VM_STATE_ORDER = [s.value for s in VMState]


def clouds(as_json: bool = JsonOption, url: str | None = UrlOption, token: str | None = TokenOption) -> None:
    """List the configured clouds with their flavors, quotas, prices, VMs per state and health: back-off, failed
    cycles in a row, the last error and when, the last good boot and the median boot time."""
    with connect(url, token) as client:
        found = client.clouds()
    if emitted_json(found, as_json):
        return
    Console().print(clouds_table(found))


def clouds_table(found: list[dict[str, Any]], title: str | None = None) -> Table:
    """The table ``cloudpilot clouds`` prints (the demo shows it too)."""
    # With image lists in force (docs/images.md), a column says which images each cloud may boot and why not.
    with_images = any((c.get("images") or {}).get("endorsed_only") for c in found)
    columns = ["name", "driver", "flavors", "max VMs", "price", "VMs", "health", *(["images"] if with_images else [])]
    table = Table(*columns, title=title or f"{len(found)} clouds")
    for cloud in found:
        flavors = ", ".join(
            f"{escape(name)} ({f['cores']} cores, {f['memory_mb']} MB)" for name, f in cloud["flavors"].items()
        )
        price = cloud["price_per_core_hour"]
        table.add_row(
            escape(cloud["name"]),
            escape(cloud["driver"]),
            flavors,
            str(cloud["max_vms"]),
            f"{price:g} per core-hour" if price else "free",
            vm_counts(cloud["vms"]) or "none",
            health_summary(cloud),
            *([image_summary(cloud.get("images") or {})] if with_images else []),
        )
    return table


def health_summary(cloud: dict[str, Any], now: float | None = None) -> str:
    """Misconfiguration or back-off first, then the last error and the boots, as rich markup."""
    now = time.time() if now is None else now
    lines = []
    if cloud.get("misconfigured"):
        lines.append("[red]misconfigured[/red]: fix the configuration and restart the server")
    elif cloud.get("backoff_until"):
        failed = cloud.get("failures_in_row", 0)
        until = short_when(_epoch(cloud["backoff_until"]), now)
        lines.append(f"[yellow]backing off until {until}[/yellow] ({failed} failed cycle(s) in a row)")
    elif cloud.get("failures_in_row"):
        lines.append(f"[yellow]{cloud['failures_in_row']} failed cycle(s) in a row[/yellow]")
    if cloud.get("last_error"):
        at = short_when(_epoch(cloud.get("last_error_at")), now)
        lines.append(f"last error {at}: [red]{escape(cloud['last_error'])}[/red]")
    if cloud.get("last_boot_at"):
        median = cloud.get("median_boot_seconds")
        boots = f"last boot {short_when(_epoch(cloud['last_boot_at']), now)}"
        lines.append(boots + (f", median {median:.0f} s" if median is not None else ""))
    return "\n".join(lines) or "no VM booted yet"


def _epoch(moment: str | None) -> float | None:
    """An ISO 8601 time of the API as a UNIX time (the tables show local times)."""
    return None if moment is None else datetime.fromisoformat(moment.replace("Z", "+00:00")).timestamp()


def image_summary(images: dict[str, Any]) -> str:
    """Endorsed images the cloud may boot, and those it refuses with why (docs/images.md)."""
    lines = [f"[green]{escape(i)}[/green]" for i in images.get("bootable", {})] or ["[red]none bootable[/red]"]
    lines += [f"[red]{escape(i)}[/red]: {escape(why)}" for i, why in images.get("refused", {}).items()]
    return "\n".join(lines)


def vm_counts(counts: dict[str, int]) -> str:
    """``2 running, 1 booting``: the non-zero counts in the order of the VM life cycle."""
    ordered = sorted(counts, key=lambda s: VM_STATE_ORDER.index(s) if s in VM_STATE_ORDER else len(VM_STATE_ORDER))
    return ", ".join(f"{counts[s]} {styled_state(s)}" for s in ordered if counts[s])


def vms(
    state: VMState | None = typer.Option(None, "--state", help="Only VMs in this state."),
    as_json: bool = JsonOption,
    url: str | None = UrlOption,
    token: str | None = TokenOption,
) -> None:
    """List the VMs, oldest first (admin token)."""
    with connect(url, token) as client:
        found = client.vms(state)
    if emitted_json(found, as_json):
        return
    Console().print(vms_table(found))


def vms_table(found: list[dict[str, Any]], title: str | None = None) -> Table:
    """The table ``cloudpilot vms`` prints (the demo shows it too when VMs are left)."""
    now = time.time()
    table = Table(
        "id", "cloud", "site", "vo", "flavor", "state", "cores", "jobs run", "created", "terminated", "why it ended",
        title=title or f"{len(found)} VMs",
    )  # fmt: skip
    for vm in found:
        table.add_row(
            escape(vm["id"]),
            escape(vm["cloud"]),
            escape(text(vm.get("site"))),
            escape(vm["vo"]),
            escape(vm["flavor"]),
            styled_state(vm["state"]),
            str(vm["cores"]),
            str(vm["jobs_run"]),
            short_when(vm["created_at"], now),
            short_when(vm["terminated_at"], now),
            end_reason(vm),
        )
    return table


def end_reason(vm: dict[str, Any]) -> str:
    """The pilot's shutdown code and message, and the failure reason in red, as rich markup."""
    parts = []
    code, message = vm.get("shutdown_code"), text(vm.get("shutdown_message"))
    shutdown = message if code is None or message.startswith(str(code)) else f"{code} {message}".strip()
    if shutdown:
        parts.append(escape(shutdown))
    if vm.get("failure_reason"):
        parts.append(f"[red]{escape(vm['failure_reason'])}[/red]")
    return "; ".join(parts)


def vm_show(
    vm_id: str = typer.Argument(..., metavar="ID", help="The VM's id (vm-...)."),
    as_json: bool = JsonOption,
    url: str | None = UrlOption,
    token: str | None = TokenOption,
) -> None:
    """Show one VM and its history (admin token)."""
    with connect(url, token) as client:
        found = client.vm(vm_id)
    if emitted_json(found, as_json):
        return
    rows = [
        ("id", escape(found["id"])),
        ("cloud", escape(found["cloud"])),
        ("site", escape(text(found.get("site")))),
        ("instance", escape(text(found["instance_id"]))),
        ("vo", escape(found["vo"])),
        ("flavor", escape(f"{found['flavor']} ({found['cores']} cores, {found['memory_mb']} MB)")),
        ("state", styled_state(found["state"])),
        ("jobs run", str(found["jobs_run"])),
        ("created", when(found["created_at"])),
        ("booted", when(found["booted_at"])),
        ("last seen", when(found["last_seen_at"])),
        ("idle since", when(found["idle_since"])),
        ("expires", when(found["expires_at"])),
        ("shutdown deadline", when(found.get("shutdown_deadline"))),
        ("site policy", escape(text(found.get("permission")))),
        ("terminated", when(found["terminated_at"])),
        ("why it ended", end_reason(found)),
    ]
    details = Table(show_header=False, box=None)
    details.add_column(style="bold")
    details.add_column()
    for key, value in rows:
        details.add_row(key, value)
    history = Table("at", "from", "to", "reason", title="history")
    for event in found.get("history", []):
        history.add_row(
            when(event["at"]),
            styled_state(text(event["from_state"])),
            styled_state(event["to_state"]),
            escape(text(event["reason"])),
        )
    console = Console()
    console.print(details)
    console.print(history)


def vm_stop(
    vm_id: str = typer.Argument(..., metavar="ID", help="The VM's id (vm-...)."),
    url: str | None = UrlOption,
    token: str | None = TokenOption,
) -> None:
    """Stop a VM now (admin token): it is halted, and destroyed by the VM monitor's next cycle."""
    with connect(url, token) as client:
        stopped = client.stop_vm(vm_id)
    typer.echo(f"VM {stopped['id']} is {stopped['state']}")
