"""``cloudpilot server``: runs the API and its loops on a data directory (``token create`` is in cli/tokens.py)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from cloudpilot.config import ServerConfig

# uvicorn, the app, the store and the configuration models are imported by the commands that use them:
# ``cloudpilot --help`` and the client commands must not pay for them.

DataDir = typer.Option(..., "--data-dir", help="Directory for the SQLite database and sandboxes.")
ConfigFile = typer.Option(None, "--config", help="YAML configuration file (see docs/configuration.md).")


def load_config_or_exit(path: Path | None) -> ServerConfig:
    """The configuration, or ``error: ...`` and exit 2 when it is unreadable or invalid."""
    from cloudpilot.config import ConfigError, load_config

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
    import uvicorn

    from cloudpilot.api.app import create_app
    from cloudpilot.api.http_server import uvicorn_options
    from cloudpilot.api.logs import configure_logging
    from cloudpilot.clouds.errors import CloudConfigError
    from cloudpilot.services.container import Services

    log_config = configure_logging(log_level, log_format.value)  # docs/operations.md
    try:
        services = Services.build(load_config_or_exit(config), data_dir)
    except CloudConfigError as exc:  # an unknown provider or option: one line naming it, not a traceback
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    services.public_url = f"http://{host}:{port}"
    app = create_app(services)
    options = uvicorn_options(services.config)  # server.*: header and keep-alive timeouts, head size
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, log_config=log_config, **options)

