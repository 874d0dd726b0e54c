"""``cloudpilot server`` and ``cloudpilot token``: commands that work on the data directory directly."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path

import typer
import uvicorn

from cloudpilot.config import ConfigError, load_config
from cloudpilot.domain.auth import Role
from cloudpilot.services.errors import BadInput
from cloudpilot.services.tokens import issue_token
from cloudpilot.store.database import Database
from cloudpilot.store.migrations import upgrade
from cloudpilot.store.tokens import TokenRepository

DataDir = typer.Option(..., "--data-dir", help="Directory for the SQLite database and sandboxes.")
ConfigFile = typer.Option(None, "--config", help="YAML configuration file (see docs/configuration.md).")


def _config(path: Path | None):  # type: ignore[no-untyped-def]
    try:
        return load_config(path)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


class LogFormat(StrEnum):
    HUMAN = "human"
    JSON = "json"


def server(
    data_dir: Path = DataDir,
    config: Path | None = ConfigFile,
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8080, help="Port to listen on."),
    log_level: str = typer.Option("info", help="Log level (debug, info, warning)."),
    log_format: LogFormat = typer.Option(LogFormat.HUMAN, help="human, or json: one JSON object per line."),
) -> None:
    """Run the API server with its background loops (lease reaper)."""
    from cloudpilot.api.app import create_app
    from cloudpilot.api.logs import configure_logging
    from cloudpilot.services.container import Services

    log_config = configure_logging(log_level, log_format.value)  # docs/operations.md
    services = Services.build(_config(config), data_dir)
    services.public_url = f"http://{host}:{port}"
    app = create_app(services)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, log_config=log_config)


def token_create(
    data_dir: Path = DataDir,
    role: Role = typer.Option(..., "--role", help="admin, user, pilot or site."),
    vo: str | None = typer.Option(None, "--vo", help="The VO of a user or pilot token."),
    site: str | None = typer.Option(None, "--site", help="The site of a site token."),
    name: str | None = typer.Option(None, "--name", help="Who holds it; a user token's name owns its jobs."),
    config: Path | None = ConfigFile,
) -> None:
    """Create a token in the store and print only the token."""
    cfg = _config(config)
    db = Database(cfg.database_url_for(data_dir))
    try:
        upgrade(db)
        issued = issue_token(
            TokenRepository(db), role, name or f"{role.value}-{vo or site or 'any'}", time.time(), vo=vo, site=site
        )
    except BadInput as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    finally:
        db.dispose()
    typer.echo(issued.token)
