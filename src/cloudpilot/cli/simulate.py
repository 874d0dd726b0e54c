"""``cloudpilot simulate SCENARIO.yaml``: run a scenario in the discrete-event simulator (docs/simulator.md).

Prints the metrics table and the simulator's speed; writes ``metrics.json`` and PNG plots of VMs and running jobs
per cloud into ``--out``. ``--compare`` runs cloudpilot's policy and every peer's policy on the same scenario and
seed, one row each.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from cloudpilot.cli.common import fail

if TYPE_CHECKING:
    from cloudpilot.sim.metrics import SimResult


def simulate(
    scenario_file: Path = typer.Argument(..., metavar="SCENARIO.yaml", help="The scenario (see scenarios/)."),
    out: Path | None = typer.Option(None, "--out", help="Where plots and metrics.json go [default: ./sim-NAME]."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed [default: the scenario's]."),
    policy: str | None = typer.Option(
        None, "--policy", help="cloudpilot or a peer's policy [default: the scenario's]."
    ),
    compare: bool = typer.Option(False, "--compare", help="Run cloudpilot's and every peer's policy, one row each."),
) -> None:
    """Simulate clouds, pilots and a workload under a provisioning policy; print the metrics, plot the run."""
    # The simulator pulls in numpy and matplotlib (~1 s): only this command pays for them.
    import yaml
    from pydantic import ValidationError

    from cloudpilot.sim import load_scenario, plots, policies, report
    from cloudpilot.sim import simulate as run_scenario

    if compare and policy:
        fail("--compare runs every policy; leave out --policy", 2)
    try:
        scenario = load_scenario(scenario_file)
    except FileNotFoundError:
        fail(f"no scenario file {scenario_file}", 2)
    except (ValidationError, ValueError, yaml.YAMLError) as exc:
        fail(f"{scenario_file}: {exc}", 2)
    names = policies.names() if compare else [policy or scenario.policy]
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # a file or a pipe gets the whole table
    results: list[SimResult] = []
    for name in names:
        try:
            results.append(run_scenario(scenario, seed=seed, policy=name))
        except policies.UnknownPolicy as exc:
            fail(str(exc), 2)
        r = results[-1]
        console.print(
            f"[dim]{r.policy}: {r.events:,} events in {r.wall_seconds:.2f} s — {r.events_per_second:,.0f} events/s "
            f"({r.decisions:,} decisions, {r.policy_seconds:.2f} s in the policy)[/dim]"
        )
    directory = out or Path(f"sim-{scenario.name}")
    directory.mkdir(parents=True, exist_ok=True)
    seed_used = results[0].seed
    console.print(report.table(results, f"{scenario.name} (seed {seed_used})"))
    written = [directory / "metrics.json"]
    report.write_json(results, written[0])
    for r in results:
        written.append(plots.timeline(r, directory / f"{r.policy}.png"))
    if len(results) > 1:
        written.append(plots.comparison(results, directory / "compare.png"))
    console.print("wrote " + ", ".join(str(p) for p in written))
