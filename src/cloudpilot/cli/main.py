"""The ``cloudpilot`` command: server, tokens, client commands (jobs, clouds, VMs), pilot and demo."""

from __future__ import annotations

import typer

import cloudpilot
from cloudpilot.cli import accounting as accounting_cmds
from cloudpilot.cli import clusters as cluster_cmds
from cloudpilot.cli import demo as demo_cmds
from cloudpilot.cli import images as image_cmds
from cloudpilot.cli import jobs as job_cmds
from cloudpilot.cli import logs as log_cmds
from cloudpilot.cli import pilot as pilot_cmds
from cloudpilot.cli import server as server_cmds
from cloudpilot.cli import simulate as simulate_cmds
from cloudpilot.cli import sites as site_cmds
from cloudpilot.cli import tokens as token_cmds
from cloudpilot.cli import vms as vm_cmds

# Every module above imports only typer, rich, the client and the domain at load time; the server, the store,
# the simulator, Libcloud and cryptography are imported inside the commands that use them, so that
# `cloudpilot --help` and the client commands start fast (tests/test_cli_startup.py holds that line).

app = typer.Typer(
    help="cloudpilot: batch workloads on clouds without a batch system.",
    no_args_is_help=True,
    # A traceback with locals would print tokens; expected errors never reach it (they are "error: ...").
    pretty_exceptions_show_locals=False,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"cloudpilot {cloudpilot.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """cloudpilot: batch workloads on clouds without a batch system."""


app.add_typer(token_cmds.app, name="token")
vm_app = typer.Typer(help="Show or stop one VM (admin token).", no_args_is_help=True)
app.add_typer(vm_app, name="vm")
site_app = typer.Typer(help="Site control: drain VMs by a deadline, show a site (site token).", no_args_is_help=True)
app.add_typer(site_app, name="site")
app.add_typer(accounting_cmds.app, name="accounting")
app.add_typer(image_cmds.app, name="image")
app.add_typer(cluster_cmds.app, name="cluster")

app.command("server")(server_cmds.server)

app.command("submit")(job_cmds.submit)
app.command("jobs")(job_cmds.jobs)
app.command("job")(job_cmds.job)
app.command("kill")(job_cmds.kill)
app.command("resubmit")(job_cmds.resubmit)
app.command("output")(job_cmds.output)
app.command("wait")(job_cmds.wait)
app.command("logs")(log_cmds.logs)
app.command("clouds")(vm_cmds.clouds)
app.command("vms")(vm_cmds.vms)
vm_app.command("show")(vm_cmds.vm_show)
vm_app.command("stop")(vm_cmds.vm_stop)
site_app.command("drain")(site_cmds.drain)
site_app.command("status")(site_cmds.status)
site_app.command("cancel")(site_cmds.cancel)
app.command("pilot", context_settings=pilot_cmds.CONTEXT_SETTINGS, add_help_option=False)(pilot_cmds.pilot)
app.command("demo")(demo_cmds.demo)
app.command("simulate")(simulate_cmds.simulate)

if __name__ == "__main__":
    app()
