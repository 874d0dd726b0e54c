"""``cloudpilot server``: runs the API and its loops on a data directory (``token create`` is in cli/tokens.py)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cloudpilot.cli.server_transport import CertFile, KeyFile, exit_if_vms_cannot_reach, tls_options_or_exit

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
    workers: int = typer.Option(
        1, min=1, help="Server processes sharing this port (PostgreSQL only; see docs/deployment.md)."
    ),
    tls_cert: Path | None = CertFile,
    tls_key: Path | None = KeyFile,
) -> None:
    """Run the API server with its background loops (provisioner, VM monitor, lease reaper, image lists)."""
    import uvicorn

    from cloudpilot.api.app import create_app
    from cloudpilot.api.http_server import uvicorn_options
    from cloudpilot.api.logs import configure_logging
    from cloudpilot.clouds.errors import CloudConfigError
    from cloudpilot.services.container import Services
    from cloudpilot.storage.base import StorageConfigError

    log_config = configure_logging(log_level, log_format.value)  # docs/operations.md
    tls = tls_options_or_exit(tls_cert, tls_key)
    public_url = f"{'https' if tls else 'http'}://{host}:{port}"
    server_config = load_config_or_exit(config)
    exit_if_vms_cannot_reach(server_config, public_url)
    if not server_config.database_url_for(data_dir).startswith("postgresql"):
        _refuse_sqlite_sharing(data_dir, workers)
    elif workers > 1:
        from cloudpilot.api.workers import APP, prepare_workers, worker_options

        _exit_if_storage_unusable(server_config, data_dir)  # once here, not as a traceback in every worker
        prepare_workers(config, data_dir, public_url, log_level, log_format.value)
        options = worker_options(uvicorn_options(server_config))
        uvicorn.run(APP, factory=True, workers=workers, host=host, port=port, log_level=log_level,
                    access_log=False, log_config=log_config, **options, **tls)  # fmt: skip
        return
    try:
        services = Services.build(server_config, data_dir)
    except (CloudConfigError, StorageConfigError) as exc:  # a bad cloud or bucket: one line naming it
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    services.public_url = public_url
    app = create_app(services)
    options = uvicorn_options(services.config)  # server.*: header and keep-alive timeouts, head size
    uvicorn.run(
        app, host=host, port=port, log_level=log_level, access_log=False, log_config=log_config, **options, **tls
    )


def _exit_if_storage_unusable(server_config: ServerConfig, data_dir: Path) -> None:
    """The sandbox store can be built (storage.kind s3: the bucket answers and takes a write), or exit 2."""
    from cloudpilot.services.sandbox_storage import build_sandbox_store
    from cloudpilot.storage.base import StorageConfigError

    try:
        build_sandbox_store(server_config, data_dir)
    except StorageConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _refuse_sqlite_sharing(data_dir: Path, workers: int) -> None:
    """SQLite: one server process per data directory (it would not share leadership with a second one)."""
    from cloudpilot.services.leadership import DataDirInUse, lock_data_dir

    if workers > 1:
        typer.echo(
            "error: --workers needs a PostgreSQL database (database_url: postgresql+psycopg://...): "
            "SQLite has one writer, and several processes on it would each run the provisioner",
            err=True,
        )
        raise typer.Exit(2)
    try:
        _HELD.append(lock_data_dir(data_dir))  # held until the process ends
    except DataDirInUse as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


_HELD: list[object] = []  # the data directory's lock file, open for the life of the server
