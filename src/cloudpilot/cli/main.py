"""The ``cloudpilot`` command: server, tokens, client commands, pilot and demo."""

from __future__ import annotations

import typer

from cloudpilot.cli import server as server_cmds

app = typer.Typer(help="cloudpilot: batch workloads on clouds without a batch system.", no_args_is_help=True)
token_app = typer.Typer(help="Manage tokens.", no_args_is_help=True)
app.add_typer(token_app, name="token")

app.command("server")(server_cmds.server)
token_app.command("create")(server_cmds.token_create)
