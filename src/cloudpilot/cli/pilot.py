"""``cloudpilot pilot``: run the stdlib pilot in this process, with its own options passed through unchanged."""

from __future__ import annotations

import typer

from cloudpilot.cli.common import fail

# The pilot parses its own options (and --help), so the CLI forwards everything after ``pilot`` as it is.
CONTEXT_SETTINGS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def pilot(ctx: typer.Context) -> None:
    """Run a pilot: --server URL --token TOKEN [--cores N] [--memory-mb M] [--idle-timeout S] [--workdir DIR] ...

    Every option goes to the pilot unchanged; `cloudpilot pilot --help` shows them all.
    """
    try:
        # Imported here: the pilot is a separate stdlib-only program that other commands never need.
        from cloudpilot.pilot.cli import main as pilot_main
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("cloudpilot.pilot"):
            raise
        fail(f"the pilot is not available in this installation ({exc.name} is missing)")
    raise typer.Exit(pilot_main(list(ctx.args)))
