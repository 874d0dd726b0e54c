"""``cloudpilot logs ID [--follow]``: the tail of a job's ``job.log`` as its pilot last sent it."""

from __future__ import annotations

import time

import typer

from cloudpilot.cli.common import TokenOption, UrlOption, connect
from cloudpilot.domain.job_states import JobState

FOLLOW_SECONDS = 2.0  # pilots send a tail with each heartbeat: asking more often shows nothing new


def new_text(old: str, new: str) -> str:
    """What ``new`` adds to ``old``, both windows on the end of one growing log: ``new`` past the longest end
    of ``old`` it starts with (all of ``new`` if they share nothing: the window moved past everything seen)."""
    if new.startswith(old):
        return new[len(old) :]
    for start in range(max(0, len(old) - len(new)), len(old)):
        if new.startswith(old[start:]):
            return new[len(old) - start :]
    return new


def logs(
    job_id: int = typer.Argument(..., metavar="ID", help="The job's id."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing what is new until the job ends."),
    url: str | None = UrlOption,
    token: str | None = TokenOption,
) -> None:
    """Print the last lines of a job's job.log (sent by its pilot while it runs; the whole log is in its output)."""
    with connect(url, token) as client:
        answer = client.log_tail(job_id)
        shown = answer["tail"]
        typer.echo(shown, nl=False)
        while follow and not JobState(answer["state"]).is_final:
            time.sleep(FOLLOW_SECONDS)
            answer = client.log_tail(job_id)
            typer.echo(new_text(shown, answer["tail"]), nl=False)
            shown = answer["tail"]
    if not shown:
        typer.echo(f"(no log lines from job {job_id} yet: it is {answer['state']})", err=True)
