"""The metrics table (rich) and the metrics JSON of one or several runs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from rich.table import Table

from cloudpilot.sim.metrics import HOUR, SimResult

MINUTE = 60.0


def table(results: Sequence[SimResult], title: str) -> Table:
    """One row per run (per policy with ``--compare``)."""
    t = Table(title=title)
    columns = (
        "policy", "makespan h", "wait min p50/p95/max", "failed", "left", "VMs start/fail", "peak VMs",
        "VM-h busy/idle/boot", "idle", "core use", "cost", "events/s",
    )  # fmt: skip
    for name in columns:
        t.add_column(name, justify="left" if name == "policy" else "right")
    for r in results:
        t.add_row(*row(r))
    return t


def row(r: SimResult) -> list[str]:
    waits = "/".join(f"{v / MINUTE:.0f}" for v in (r.wait_p50_seconds, r.wait_p95_seconds, r.wait_max_seconds))
    hours = "/".join(f"{v:.0f}" for v in (r.vm_hours_busy, r.vm_hours_idle, r.vm_hours_booting))
    return [
        r.policy,
        f"{r.makespan_seconds / HOUR:.2f}",
        waits,
        str(r.jobs_failed),
        str(r.jobs_unfinished),
        f"{r.vms_started}/{r.vms_failed}",
        str(r.peak_vms),
        hours,
        f"{100 * r.idle_share:.1f}%",
        f"{100 * r.core_utilisation:.0f}%",
        f"{r.cost:.2f}",
        f"{r.events_per_second:,.0f}",
    ]


def markdown(results: Sequence[SimResult]) -> str:
    """The same table in Markdown (for docs/simulator.md)."""
    head = ["policy", "makespan h", "wait min p50/p95/max", "failed", "VMs start/fail", "peak VMs",
            "VM-h busy/idle/boot", "idle share", "cost"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = row(r)
        lines.append("| " + " | ".join([cells[0], cells[1], cells[2], cells[3], cells[5], cells[6], cells[7],
                                         cells[8], cells[10]]) + " |")  # fmt: skip
    return "\n".join(lines)


def write_json(results: Sequence[SimResult], path: Path) -> None:
    path.write_text(json.dumps([r.summary() for r in results], indent=2) + "\n")
