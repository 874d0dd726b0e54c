"""What the client commands share: the server/token options, the client, and one way of reporting errors."""

from __future__ import annotations

import contextlib
import datetime
import json
from collections.abc import Iterator
from typing import NoReturn

import typer

from cloudpilot.client import ClientError, CloudpilotClient

UrlOption = typer.Option(
    None, "--url", envvar="CLOUDPILOT_URL", show_envvar=True, help="The server, e.g. http://127.0.0.1:8080."
)
TokenOption = typer.Option(
    None, "--token", envvar="CLOUDPILOT_TOKEN", show_envvar=True, help="Your token (better in the environment)."
)
JsonOption = typer.Option(False, "--json", help="Print JSON instead of a table.")

STATE_STYLES = {
    "waiting": "yellow",
    "matched": "blue",
    "running": "cyan",
    "done": "green",
    "failed": "red",
    "killed": "magenta",
    # VM states ("running" and "failed" are shared with jobs)
    "requested": "yellow",
    "booting": "blue",
    "draining": "yellow",
    "halted": "dim",
    "destroyed": "dim",
    "lost": "red",
}


def emitted_json(data: object, as_json: bool) -> bool:
    """With ``--json``, print ``data`` as indented JSON (the one JSON form of every command) and say so."""
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    return as_json


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``error: <message>`` on stderr and leave with ``code`` (1: the request failed, 2: usage)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def connect(url: str | None, token: str | None) -> Iterator[CloudpilotClient]:
    """A client for the body of a command; a :class:`ClientError` in that body becomes ``error: ...``, exit 1."""
    if not url:
        fail("no server given: pass --url or set CLOUDPILOT_URL", 2)
    if not token:
        fail("no token given: pass --token or set CLOUDPILOT_TOKEN", 2)
    try:
        with CloudpilotClient(url, token) as client:
            yield client
    except ClientError as exc:
        fail(exc.message)
    except KeyboardInterrupt:
        fail("interrupted", 130)


def styled_state(state: str) -> str:
    style = STATE_STYLES.get(state)
    return f"[{style}]{state}[/{style}]" if style else state


def when(timestamp: float | None) -> str:
    """A UNIX time as local ``YYYY-mm-dd HH:MM:SS`` (empty for none)."""
    if timestamp is None:
        return ""
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def short_when(timestamp: float | None, now: float | None = None) -> str:
    """A UNIX time as local ``HH:MM:SS`` if it is today, else ``mm-dd HH:MM`` (empty for none)."""
    if timestamp is None:
        return ""
    moment = datetime.datetime.fromtimestamp(timestamp)
    today = datetime.datetime.fromtimestamp(now).date() if now is not None else datetime.date.today()
    return moment.strftime("%H:%M:%S" if moment.date() == today else "%m-%d %H:%M")


def text(value: object) -> str:
    return "" if value is None else str(value)
